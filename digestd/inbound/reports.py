"""What a delivery report or complaint says: RFC 3464 DSNs, RFC 5965 ARF, and the rest.

RFC 3464 reports are read here with the stdlib email package, because acting on them needs
what each recipient block says (Action, Status, Diagnostic-Code: 5.1.1 "no such user" counts
differently from 5.7.1 or 4.2.2), and flufl.bounce returns only the failing addresses.
flufl.bounce reads what is not RFC 3464: the free-text bounces of older Exim, qmail, Yahoo and
others, which only say "permanent" or "temporary". Pure functions; nothing here trusts the
report: matching it to a subscriber is the caller's job, by the signed tokens it carries.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, HeaderParser

from flufl.bounce import all_failures

log = logging.getLogger(__name__)

#: RFC 3463 enhanced status code; Exchange uses three-digit details (5.1.351)
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
#: feedback types that mean "the recipient does not want this mail" (RFC 5965 §7.3 and the
#: opt-out type some providers send); not-spam and auth-failure (RFC 6591) do not
COMPLAINTS = frozenset({"abuse", "fraud", "virus", "other", "opt-out", "unsubscribe"})
_DAEMONS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon")
_DIAGNOSTIC_CHARS = 300


@dataclass(frozen=True, slots=True)
class Failure:
    """One recipient block of a report."""

    recipient: str
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # "5.1.1", or "" when the report gives none
    diagnostic: str = ""

    @property
    def failed(self) -> bool:
        """Delivery was given up (RFC 3464 §2.3.3 "failed"), whatever the status class: a
        message that expired in a queue after days of 4.x.x replies was not delivered either."""
        return self.action == "failed"

    @property
    def no_such_user(self) -> bool:
        """A 5.1.x address status: the mailbox or its domain does not exist."""
        return self.status.startswith("5.1.")


@dataclass(frozen=True, slots=True)
class Report:
    """``kind``: "dsn" (RFC 3464), "bounce" (another format, read by flufl.bounce),
    "complaint" (RFC 5965 ARF), or "none" (not a report: a person, an auto-reply)."""

    kind: str
    failures: tuple[Failure, ...] = ()
    feedback_type: str = ""
    user_agent: str = ""
    original_mail_from: str = ""
    #: the headers of the message the report is about (returned or reported), when included
    original: Message | None = None

    @property
    def worst(self) -> Failure | None:
        """The failure to act on: a given-up delivery before a delay, "no such user" first."""
        failed = [f for f in self.failures if f.failed]
        if failed:
            return next((f for f in failed if f.no_such_user), failed[0])
        return next((f for f in self.failures if f.action == "delayed"), None)


def classify(raw: bytes, msg: EmailMessage, mail_from: str) -> Report:
    """Read ``msg`` (parsed from ``raw``) as a report; never raises on malformed input."""
    try:
        if msg.get_content_type() == "multipart/report":
            kind = str(msg.get_param("report-type", "")).lower()
            payload = msg.get_payload()
            if isinstance(payload, list):
                parts = [p for p in payload if isinstance(p, Message)]
                if kind == "feedback-report" or _part(parts, "message/feedback-report"):
                    return _arf(parts)
                status = _part(parts, "message/delivery-status")
                if status is not None:
                    return Report("dsn", _dsn(status), original=_original(parts))
        if _from_daemon(msg, mail_from):
            return _other_bounce(raw)
    except Exception:  # malformed in some way the parser let through: not a report we use
        log.warning("a report could not be read; ignored", exc_info=True)
    return Report("none")


def _part(parts: list[Message], content_type: str) -> Message | None:
    return next((p for p in parts if p.get_content_type() == content_type), None)


def _dsn(part: Message) -> tuple[Failure, ...]:
    failures = []
    for block in _blocks(part):
        action = str(block.get("Action", "")).strip().lower().split(" ")[0]
        if not action:
            continue  # the per-message block (Reporting-MTA, Arrival-Date)
        if action == "error":  # OpenSMTPD's non-standard word for "failed"
            action = "failed"
        recipient = _address_field(block.get("Final-Recipient")) or _address_field(
            block.get("Original-Recipient")
        )
        diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
        failures.append(
            Failure(recipient, action, _status(str(block.get("Status", "")), diagnostic),
                    diagnostic[:_DIAGNOSTIC_CHARS])
        )  # fmt: skip
    return tuple(failures)


def _blocks(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status part. The stdlib parses them into a list
    of header-only messages; a part it left as text (e.g. base64-encoded) is split here."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, Message)]
    raw = part.get_payload(decode=True)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
    chunks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [HeaderParser(policy=email.policy.default).parsestr(c) for c in chunks if c.strip()]


def _status(status: str, diagnostic: str) -> str:
    """The enhanced status; a generic x.0.0 (Exim writes 5.0.0) refined by the remote
    server's own code in the diagnostic when that has one of the same class."""
    found = _STATUS.search(status)
    code = found.group(0) if found else ""
    detail = _STATUS.search(diagnostic)
    if detail and (not code or (code.endswith(".0.0") and detail.group(1) == code[0])):
        return detail.group(0)
    return code


def _address_field(value: object) -> str:
    """``rfc822; someone@example.org`` → ``someone@example.org``."""
    text = str(value or "").strip()
    if ";" in text:
        kind, _, text = text.partition(";")
        if kind.strip().lower() != "rfc822":
            return ""
    return text.strip().strip("<>").strip().lower()


def _original(parts: list[Message]) -> Message | None:
    """Headers of the returned message: a message/rfc822 or text/rfc822-headers part."""
    for part in parts[2:] or parts[1:]:
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0]
        if ctype in ("text/rfc822-headers", "message/global-headers"):
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                return BytesHeaderParser(policy=email.policy.default).parsebytes(raw)
    return None


def _arf(parts: list[Message]) -> Report:
    report = _part(parts, "message/feedback-report")
    fields = _blocks(report)[0] if report is not None and _blocks(report) else Message()
    return Report(
        "complaint",
        feedback_type=str(fields.get("Feedback-Type", "")).strip().lower(),
        user_agent=" ".join(str(fields.get("User-Agent", "")).split())[:100],
        original_mail_from=str(fields.get("Original-Mail-From", "")).strip(),
        original=_original(parts),
    )


def _from_daemon(msg: EmailMessage, mail_from: str) -> bool:
    """A bounce comes from the null sender or a mailer daemon (RFC 5321 §4.5.5); only such
    mail is given to flufl.bounce's heuristics, which would otherwise read an out-of-office
    note saying "could not be delivered" as a bounce."""
    if mail_from in ("", "<>"):
        return True
    sender = str(msg.get("From", "")).lower()
    return any(d in mail_from.lower() or d in sender for d in _DAEMONS)


def _other_bounce(raw: bytes) -> Report:
    # flufl.bounce wants a compat32 message parsed from bytes, as Mailman gives it.
    legacy = email.message_from_bytes(raw)
    temporary, permanent = all_failures(legacy)
    if not (temporary or permanent):
        return Report("none")
    text = _first_text(legacy)
    found = _STATUS.search(text)
    code = found.group(0) if found else ""
    failures = [
        Failure(a.decode("ascii", "replace").lower(), "failed", code if code[:1] == "5" else "")
        for a in sorted(permanent)
    ] + [
        Failure(a.decode("ascii", "replace").lower(), "delayed", code if code[:1] == "4" else "")
        for a in sorted(temporary - permanent)
    ]
    return Report("bounce", tuple(failures), original=None)


def _first_text(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                return raw.decode("utf-8", "replace")[:20000]
    return ""
