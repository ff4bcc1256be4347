"""digestd's answers to command mail: short plain-text messages, marked as automatic.

``Auto-Submitted: auto-replied`` (RFC 3834 §5) keeps vacation responders and other robots —
digestd among them — from answering an answer. Nothing the sender wrote reaches a header but
their subject, cleaned of control characters and cut short.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from digestd.render import POLICY

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_MESSAGE_ID = re.compile(r"<[!-;=?A-~]+@[!-;=?A-~]+>")
_SUBJECT_CHARS = 120

HELP = """\
Reply to any digest with one command per line:

  more 3              more papers like number 3 of that digest
  less 5              fewer papers like number 5
  add topic X         follow a topic (also: add author X, add category cs.LG,
                      add exclude X)
  remove topic X      stop following it (also for author, category, exclude)
  pause               no digests until you reply "resume"
  resume              digests again
  stop                unsubscribe
  help                this list

Only the text above the quoted digest is read."""


def answer(
    *,
    sender: str,
    to: str,
    domain: str,
    reply_to: str = "",
    subject: str,
    in_reply_to: str,
    lines: Sequence[str],
    manage_url: str = "",
    now: datetime | None = None,
) -> EmailMessage:
    """A plain-text answer to ``to`` saying ``lines``, threaded under the message it answers."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender
    msg["To"] = Address(addr_spec=to)
    if reply_to:  # replying to an answer works like replying to the digest
        msg["Reply-To"] = Address(addr_spec=reply_to)
    msg["Subject"] = _subject(subject)
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    msg["Message-ID"] = f"<answer.{secrets.token_hex(12)}@{domain}>"
    original = in_reply_to.strip()
    if _MESSAGE_ID.fullmatch(original):
        msg["In-Reply-To"] = original
        msg["References"] = original
    msg["Auto-Submitted"] = "auto-replied"
    msg["MIME-Version"] = "1.0"
    body = "\n".join(lines).rstrip() + "\n"
    if manage_url:
        body += f"\nYour settings: {manage_url}\n"
    msg.set_content(body, subtype="plain", charset="utf-8", cte="quoted-printable")
    return msg


def _subject(original: str) -> str:
    text = " ".join(_CONTROL.sub(" ", original).split())
    if not text:
        return "Your digest commands"
    if len(text) > _SUBJECT_CHARS:
        text = text[:_SUBJECT_CHARS].rstrip() + "…"
    return text if text.lower().startswith("re:") else f"Re: {text}"
