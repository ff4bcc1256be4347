"""One message for one of our addresses: what it is, what it changes, whether it is answered.

Every change goes through :class:`digestd.subscription.Subscriptions` or the store's named
queries, and only on proof: a signed token in the address the mail was sent to (and, for
replies, the subscriber's own address in From). Commands from strangers only ever lead to the
double opt-in confirmation. Answers go to a confirmed subscriber's stored address only, at most
``[inbound] answers_per_hour`` per address, and never to automatic mail. Whatever the
message, the result is an LMTP reply: 250 (done or deliberately ignored, with a log line),
550 (not ours, or not parseable as mail), 451 (our own trouble: try again later). Bounces
and complaints are handed to :mod:`digestd.inbound.reporting`.
"""

from __future__ import annotations

import email
import email.policy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import sqlalchemy.exc

from digestd.errors import DeliveryError, DigestdError, InvalidInput, NotFound
from digestd.feedback import VOTES
from digestd.inbound import commands, replies, reporting, reports
from digestd.inbound.addresses import Addresses, Recipient
from digestd.inbound.reporting import loggable
from digestd.models import Delivery, Status, Subscriber
from digestd.paper import fold
from digestd.services import Services
from digestd.subscription import Subscriptions, schedule_label, validated
from digestd.tokens import MAX_AGE
from digestd.web.security import RateLimiter, address_key

log = logging.getLogger(__name__)

OK = "250 2.0.0 Ok"
TEMPORARY = "451 4.3.0 Temporary failure, please try again later"
#: replies act on a digest as long as its feedback links work
REPLY_WINDOW = timedelta(seconds=MAX_AGE["feedback"])
_LISTS = {"topic": "topics", "author": "authors", "category": "categories", "exclude": "exclude"}


@dataclass(frozen=True, slots=True)
class Mail:
    mail_from: str
    recipient: Recipient
    raw: bytes
    msg: EmailMessage


class Inbox:
    """Handles what the LMTP listener receives; follows the daemon's services across reloads."""

    def __init__(self, services: Callable[[], Services]) -> None:
        self._services = services
        self._subscriptions: tuple[Services, Subscriptions] | None = None
        per_hour = services().config.inbound.answers_per_hour
        self.answers = RateLimiter(per_hour, 3600)  # per address; survives reloads

    @property
    def services(self) -> Services:
        return self._services()

    def subscriptions(self) -> Subscriptions:
        services = self.services
        if self._subscriptions is None or self._subscriptions[0] is not services:
            self._subscriptions = (services, Subscriptions(services))
        return self._subscriptions[1]

    def addresses(self) -> Addresses:
        return Addresses.for_config(self.services.config, self.services.signer)

    def accepts(self, address: str) -> bool:
        """Whether ``address`` is one of ours (RCPT time: its token is checked later)."""
        return self.addresses().parse(address) is not None

    async def deliver(
        self, mail_from: str, rcpt: str, data: bytes, *, now: datetime | None = None
    ) -> str:
        """Handle ``data`` for ``rcpt``; the LMTP reply for that recipient."""
        recipient = self.addresses().parse(rcpt)
        if recipient is None:
            return "550 5.1.1 No such mailbox here"
        try:
            msg = email.message_from_bytes(data, policy=email.policy.default)
        except Exception:  # the stdlib parser is lenient; whatever still breaks it is refused
            log.warning("inbound %s mail could not be parsed; refused", recipient.kind)
            return "550 5.6.0 Message could not be parsed"
        if not isinstance(msg, EmailMessage) or not msg.keys():
            log.warning("inbound %s mail has no header; refused", recipient.kind)
            return "550 5.6.0 Message has no header"
        try:
            mail = Mail(mail_from, recipient, data, msg)
            return await self._handle(mail, now or datetime.now(UTC))
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.error("inbound %s mail: database: %s", recipient.kind, loggable(exc))
            return TEMPORARY

    async def _handle(self, mail: Mail, now: datetime) -> str:
        recipient, msg = mail.recipient, mail.msg
        report = reports.classify(mail.raw, msg, mail.mail_from)
        if report.kind == "complaint":
            reporting.record_complaint(self.services, self.subscriptions(), recipient, report)
            return OK
        if recipient.kind == "bounce" and recipient.valid and report.kind in ("dsn", "bounce"):
            reporting.record_bounce(self.services, recipient, report, now)
            return OK
        if recipient.kind in ("bounce", "noreply") or report.kind != "none":
            log.info("inbound %s mail ignored: %s", recipient.kind, _what(report, recipient))
            return OK
        if not recipient.valid:
            log.info("inbound %s mail ignored: its token does not verify", recipient.kind)
            return OK
        if recipient.kind == "unsubscribe":
            return self._unsubscribe(recipient)
        why = commands.automatic(msg, mail.mail_from) or commands.broken(msg)
        if why:
            log.info("inbound %s mail ignored: %s", recipient.kind, why)
            return OK
        sender = commands.sender(msg)
        if not sender or sender.rpartition("@")[2] == self.addresses().domain:
            log.info("inbound %s mail ignored: no usable From address", recipient.kind)
            return OK
        if recipient.kind == "reply":
            return await self._reply(mail, sender, now)
        return await self._command(mail, sender, now)

    # -- the unsubscribe address -------------------------------------------------------------

    def _unsubscribe(self, recipient: Recipient) -> str:
        sub = self._holder(recipient)
        if sub is None:
            return OK
        if sub.status in (Status.ACTIVE, Status.PAUSED):
            self.subscriptions().set_status(sub, Status.UNSUBSCRIBED, via="mailto")
        else:
            log.info("subscriber %d: mailto unsubscribe; already %s", sub.id, sub.status)
        return OK  # RFC 8058 spirit: unsubscribed on receipt, nothing sent back

    def _holder(self, recipient: Recipient) -> Subscriber | None:
        """The subscriber a token names, if its links were not revoked since."""
        try:
            sub = self.services.store.subscriber_by_id(recipient.subscriber_id)
        except NotFound:
            log.info("inbound %s mail for a deleted subscriber; ignored", recipient.kind)
            return None
        if sub.token_version != recipient.version:
            log.info("subscriber %d: %s token revoked; ignored", sub.id, recipient.kind)
            return None
        return sub

    # -- commands --------------------------------------------------------------------------

    async def _command(self, mail: Mail, sender: str, now: datetime) -> str:
        """Mail to the command address: a subscribe request, or a subscriber asking for help."""
        lines = commands.new_text(mail.msg)
        fields = commands.parse_subscription(lines)
        store = self.services.store
        if mail.recipient.kind == "subscribe" or fields:
            try:
                data = validated(sender, fields)
            except InvalidInput as exc:
                # Not answered: the sender is not proven, and an answer would be backscatter.
                log.info("subscribe request by mail refused: %s", loggable(exc))
                return OK
            if not self._may_answer(sender):
                log.info("subscribe request by mail not handled: too many from one address")
                return OK
            try:
                outcome = await self.subscriptions().request(data, now=now)
            except DigestdError:
                return TEMPORARY  # the confirmation could not go out: let the MTA try again
            log.info("subscribe request by mail: %s", outcome)
            return OK
        sub = store.find_subscriber(sender)
        if sub is None or not _answerable(sub):
            log.info("mail to the command address from a stranger; ignored")
            return OK
        intro = ["To change your digest, reply to one of them (not to this address)."]
        await self._answer(sub, mail, [*intro, "", replies.HELP], None, now)
        return OK

    async def _reply(self, mail: Mail, sender: str, now: datetime) -> str:
        """A reply to a digest: act on its commands, then say what changed."""
        sub = self._holder(mail.recipient)
        if sub is None:
            return OK
        if sender != sub.email:
            log.info("subscriber %d: reply from another address; ignored", sub.id)
            return OK
        if not _answerable(sub):
            log.info("subscriber %d: reply while %s; ignored", sub.id, sub.status)
            return OK
        delivery = self.services.store.delivery_by_id(mail.recipient.delivery_id)
        if delivery is None or delivery.subscriber_id != sub.id:
            log.info("subscriber %d: reply to a digest no longer stored; ignored", sub.id)
            return OK
        if now - (delivery.sent_at or delivery.created_at) > REPLY_WINDOW:
            lines = ["That digest is too old to act on; reply to a recent one.", "", replies.HELP]
        else:
            parsed = commands.parse_commands(commands.new_text(mail.msg))
            sub, lines = self._execute(sub, delivery, parsed, now)
        await self._answer(sub, mail, lines, delivery, now)
        return OK

    def _execute(
        self, sub: Subscriber, delivery: Delivery, parsed: commands.Commands, now: datetime
    ) -> tuple[Subscriber, list[str]]:
        if not parsed.commands:
            return sub, ["digestd found no command in your reply.", "", replies.HELP]
        out: list[str] = []
        subs = self.subscriptions()
        for command in parsed.commands:
            if command.verb in VOTES:
                out += self._vote(sub, delivery, command, now)
            elif command.verb in ("add", "remove"):
                sub, line = self._change(sub, command)
                out.append(line)
            elif command.verb == "pause":
                if sub.status == Status.ACTIVE:
                    sub = subs.set_status(sub, Status.PAUSED, via="mail")
                    out.append('Paused: no digests until you reply "resume".')
                else:
                    out.append(f"Nothing to pause: your subscription is {sub.status}.")
            elif command.verb == "resume":
                sub = subs.set_status(sub, Status.ACTIVE, via="mail")
                out.append(f"Digests are on: {schedule_label(sub)}.")
            elif command.verb == "stop":
                sub = subs.set_status(sub, Status.UNSUBSCRIBED, via="mail")
                out.append('You are unsubscribed: no more digests. Reply "resume" to undo.')
            else:
                out += ["", replies.HELP]
        # Greetings and names around the commands are not worth a word; a line that starts
        # like a command but is not one ("more three") is.
        garbled = [u for u in parsed.unknown if u.split()[0].lower() in commands.VERBS]
        if garbled:
            shown = "; ".join(f"“{line[:60]}”" for line in garbled[:3])
            out.append(f'Not understood: {shown}. Reply "help" for the commands.')
        return sub, out

    def _vote(
        self, sub: Subscriber, delivery: Delivery, command: commands.Command, now: datetime
    ) -> list[str]:
        assert delivery.id is not None
        papers = self.services.store.delivery_papers(delivery.id)
        out = []
        for number in command.numbers:
            paper_id = papers.get(number)
            if paper_id is None:
                out.append(f"That digest has no paper {number} (it had {len(papers)}).")
                continue
            self.subscriptions().cast_vote(sub, paper_id, VOTES[command.verb], via="mail", now=now)
            paper = self.services.store.paper(paper_id)
            title = fold(paper.title) if paper is not None else paper_id
            what = "More" if command.verb == "more" else "Fewer"
            out.append(f"{what} papers like {number}, “{title}”.")
        return out

    def _change(self, sub: Subscriber, command: commands.Command) -> tuple[Subscriber, str]:
        subs = self.subscriptions()
        fields = subs.settings(sub)
        key, value = _LISTS[command.kind], command.value
        values = list(fields[key])
        present = [v for v in values if v.casefold() == value.casefold()]
        if command.verb == "add" and present:
            return sub, f"{command.kind.capitalize()} “{value}” was there already."
        if command.verb == "remove" and not present:
            return sub, f"“{value}” is not among your {key}."
        if command.verb == "add":
            fields[key] = [*values, value]
        else:
            fields[key] = [v for v in values if v not in present]
        try:
            sub = subs.update(sub, fields)
        except InvalidInput as exc:
            return sub, f"Not changed: {exc}."
        done = "Added" if command.verb == "add" else "Removed"
        return sub, f"{done} {command.kind} “{value}”."

    # -- answers ---------------------------------------------------------------------------

    def _may_answer(self, address: str) -> bool:
        return self.answers.hit(address_key(address)) == 0

    async def _answer(
        self,
        sub: Subscriber,
        mail: Mail,
        lines: list[str],
        delivery: Delivery | None,
        now: datetime,
    ) -> None:
        assert sub.id is not None
        if not self._may_answer(sub.email):
            log.info("subscriber %d: answer not sent: the hourly limit is reached", sub.id)
            return
        services, addresses = self.services, self.addresses()
        reply_to = ""
        if delivery is not None and delivery.id is not None:
            reply_to = addresses.reply(sub.id, sub.token_version, delivery.id)
        message = replies.answer(
            sender=services.config.smtp.from_,
            to=sub.email,
            reply_to=reply_to,
            domain=addresses.domain,
            subject=commands.header(mail.msg, "Subject"),
            in_reply_to=commands.header(mail.msg, "Message-ID"),
            lines=lines,
            manage_url=self.subscriptions().links(sub).manage,
            now=now,
        )
        try:
            await services.mailer.send(message, sender=addresses.noreply, recipients=[sub.email])
        except DeliveryError as exc:
            log.warning("subscriber %d: answer not sent: %s", sub.id, loggable(exc))
            return
        log.info("subscriber %d: answered (%d lines)", sub.id, len(lines))


def _answerable(sub: Subscriber) -> bool:
    """A confirmed address that still takes mail (a bounced one does not)."""
    ok = (Status.ACTIVE, Status.PAUSED, Status.UNSUBSCRIBED)
    return sub.confirmed_at is not None and sub.status in ok


def _what(report: reports.Report, recipient: Recipient) -> str:
    if report.kind == "none":
        return "not a delivery report" if recipient.kind == "bounce" else "an answer bounced"
    if not recipient.valid:
        return f"a {report.kind} for a token that does not verify"
    return f"a {report.kind} sent to the {recipient.kind} address, not the VERP one"
