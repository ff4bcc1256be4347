"""Subscription operations: request, confirm, change, pause, resume, unsubscribe, delete, votes.

Every front (web pages, JSON API, later inbound mail) parses its input, calls one of these and
translates the outcome; the rules live here. A link proves who is asking: ``holder`` checks
the signature, purpose, age and the subscriber's current link version.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from digestd import feedback
from digestd.errors import DigestdError, InvalidInput, NotFound
from digestd.models import Feedback, Status, Subscriber
from digestd.notices import Notice, Notices
from digestd.paper import Paper
from digestd.pipeline import envelope_sender
from digestd.services import Services
from digestd.subscribers import MAX_ITEMS, SubscriberInput, make_input
from digestd.tokens import Claim, TokenError

log = logging.getLogger(__name__)

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
#: statuses in which nobody receives anything and the address is not (or no longer) proven
_UNPROVEN = (Status.PENDING, Status.UNSUBSCRIBED, Status.BOUNCED)
#: make_input keyword → the name its messages use
_LISTS = {"topics": "topic", "exclude": "exclude", "authors": "author", "categories": "category"}


class RevokedLink(TokenError):
    """A genuine link whose subscriber is gone or whose links were revoked since."""


@dataclass(frozen=True, slots=True)
class Links:
    manage: str
    unsubscribe: str


def validated(email: str, fields: Mapping[str, Any]) -> SubscriberInput:
    """:func:`make_input` for input from strangers: over-long lists are refused first, with
    make_input's own message, because its duplicate check is quadratic (10,000 topics must
    cost a quick refusal, not seconds of CPU)."""
    for key, name in _LISTS.items():
        values = fields.get(key) or ()
        many = isinstance(values, list | tuple) and len(values) > MAX_ITEMS
        if many and sum(1 for v in values if not isinstance(v, str) or v.strip()) > MAX_ITEMS:
            raise InvalidInput(f"at most {MAX_ITEMS} values for {name}")
    return make_input(email, **fields)


def schedule_label(sub: Subscriber) -> str:
    """'daily at 07:00 (UTC)', 'on weekdays at …', 'every Monday at …'."""
    when = {"daily": "daily", "weekdays": "on weekdays"}.get(
        sub.frequency, f"every {_DAYS[sub.weekly_day % 7]}"
    )
    return f"{when} at {sub.send_time} ({sub.timezone})"


class Subscriptions:
    """The operations over one set of services; built once per process."""

    def __init__(self, services: Services, notices: Notices | None = None) -> None:
        self.services = services
        self.store = services.store
        cfg = services.config
        self.notices = notices or Notices(
            sender=cfg.smtp.from_, site_name=cfg.digest.site_name, template_dir=cfg.templates
        )
        self.resend = timedelta(minutes=cfg.web.resend_minutes)
        self.confirm_age = cfg.web.confirm_days * 86400

    # -- who is asking -------------------------------------------------------------------

    def holder(self, token: str, purpose: str) -> tuple[Subscriber, Claim]:
        """The subscriber a link was made for; TokenError (or RevokedLink) otherwise."""
        age = self.confirm_age if purpose == "confirm" else None
        claim = self.services.signer.load(token, purpose, max_age=age)
        try:
            sub = self.store.subscriber_by_id(claim.subscriber_id)
        except NotFound:
            raise RevokedLink("this link is no longer valid") from None
        if sub.token_version != claim.version:
            raise RevokedLink("this link is no longer valid: newer links were sent since")
        return sub, claim

    def links(self, sub: Subscriber) -> Links:
        assert sub.id is not None
        base, make = self.services.config.web.base_url, self.services.signer.make
        return Links(
            manage=f"{base}/manage/{make('manage', sub.id, sub.token_version)}",
            unsubscribe=f"{base}/unsubscribe/{make('unsubscribe', sub.id, sub.token_version)}",
        )

    # -- subscribing ---------------------------------------------------------------------

    async def request(self, data: SubscriberInput, *, now: datetime | None = None) -> str:
        """A subscribe request from someone who may or may not own ``data.email``.

        New address: a pending subscriber and a confirmation email. Pending, unsubscribed or
        bounced: the request's preferences replace the stored ones (nobody receives anything
        until the link is used) and the confirmation goes out again. Active or paused: nothing
        changes; the owner gets a "manage your subscription" email. At most one email per
        address per resend interval. The caller answers the same in every case.
        Returns what happened, for logs and tests: "confirm", "manage" or "throttled".
        """
        now = now or datetime.now(UTC)
        sub = self.store.find_subscriber(data.email)
        if sub is None:
            try:
                sub = self.store.add_subscriber(data, status=Status.PENDING)
            except InvalidInput:  # the same address, submitted twice at once
                sub = self.store.find_subscriber(data.email)
                if sub is None:
                    raise
        elif sub.status in _UNPROVEN:
            assert sub.id is not None
            sub = self.store.update_subscriber(sub.id, data)
        assert sub.id is not None
        kind = "confirm" if sub.status in _UNPROVEN else "manage"
        if not self.store.claim_notice(sub.id, now=now, interval=self.resend):
            log.info("subscriber %d: %s email not sent: one went out recently", sub.id, kind)
            return "throttled"
        try:
            await self._send(sub, kind, now)
        except DigestdError as exc:
            self.store.release_notice(sub.id)
            log.warning("subscriber %d: %s email failed: %s", sub.id, kind, exc)
            raise
        log.info("subscriber %d: %s email sent", sub.id, kind)
        return kind

    async def _send(self, sub: Subscriber, kind: str, now: datetime) -> None:
        assert sub.id is not None
        prefs = self.store.preferences([sub.id])[sub.id]
        if kind == "confirm":
            token = self.services.signer.make("confirm", sub.id, sub.token_version)
            action, unsubscribe = f"{self.services.config.web.base_url}/confirm/{token}", ""
        else:
            links = self.links(sub)
            action, unsubscribe = links.manage, links.unsubscribe
        message = self.notices.render(
            Notice(
                kind=kind,
                to=sub.email,
                action_url=action,
                unsubscribe_url=unsubscribe,
                topics=prefs["topic"],
                authors=prefs["author"],
                categories=prefs["category"],
                exclude=prefs["exclude"],
                schedule=schedule_label(sub),
                expires_days=self.services.config.web.confirm_days,
                status=sub.status,
            ),
            now=now,
        )
        sender = envelope_sender(self.services)
        await self.services.mailer.send(message, sender=sender, recipients=[sub.email])

    def confirm(self, token: str, *, now: datetime | None = None) -> tuple[Subscriber, bool]:
        """Activate the subscriber of a confirmation link; (subscriber, whether it changed)."""
        sub, _ = self.holder(token, "confirm")
        if sub.status in (Status.ACTIVE, Status.PAUSED):
            return sub, False
        assert sub.id is not None
        sub = self.store.change_status(
            sub.id, Status.ACTIVE, reason="link", confirmed_at=now or datetime.now(UTC)
        )
        log.info("subscriber %d: confirmed", sub.id)
        return sub, True

    def purge_unconfirmed(self, *, now: datetime | None = None) -> int:
        """Forget pending subscribers whose confirmation link has expired; how many.

        For the daemon to call now and then (e.g. with each fetch): a request nobody
        confirmed leaves no address behind, only the anonymous "deleted" count.
        """
        now = now or datetime.now(UTC)
        purged = self.store.purge_unconfirmed(before=now - timedelta(seconds=self.confirm_age))
        if purged:
            log.info("forgot %d unconfirmed subscription request(s)", purged)
        return purged

    # -- the manage page -----------------------------------------------------------------

    def settings(self, sub: Subscriber) -> dict[str, Any]:
        """The current preferences as :func:`make_input` keywords (the address left out)."""
        assert sub.id is not None
        prefs = self.store.preferences([sub.id])[sub.id]
        return {
            "topics": prefs["topic"],
            "exclude": prefs["exclude"],
            "authors": prefs["author"],
            "categories": prefs["category"],
            "send_time": sub.send_time,
            "timezone": sub.timezone,
            "frequency": sub.frequency,
            "weekly_day": sub.weekly_day,
            "max_papers": sub.max_papers,
            "min_score": sub.min_score,
            "empty_note": sub.empty_note,
        }

    def update(self, sub: Subscriber, fields: Mapping[str, Any]) -> Subscriber:
        """Replace the preferences with ``fields`` (make_input keywords), all validated."""
        assert sub.id is not None
        data = validated(sub.email, fields)
        sub = self.store.update_subscriber(sub.id, data)
        log.info("subscriber %d: preferences changed", sub.id)
        return sub

    def set_status(self, sub: Subscriber, status: Status, *, via: str) -> Subscriber:
        """Pause, resume or unsubscribe; doing what is already so changes nothing.

        Resuming works from any state: whoever holds a genuine link received our email, which
        is the proof a confirmation asks for.
        """
        assert sub.id is not None and status in (Status.ACTIVE, Status.PAUSED, Status.UNSUBSCRIBED)
        if sub.status == status:
            return sub
        if status == Status.PAUSED and sub.status != Status.ACTIVE:
            raise InvalidInput(
                f"only an active subscription can be paused (this one is {sub.status})"
            )
        confirmed = datetime.now(UTC) if status == Status.ACTIVE and not sub.confirmed_at else None
        sub = self.store.change_status(sub.id, status, reason=via, confirmed_at=confirmed)
        log.info("subscriber %d: %s (%s)", sub.id, status.value, via)
        return sub

    def delete(self, sub: Subscriber, *, via: str) -> None:
        """Remove the subscriber and everything about them; only an anonymous count stays."""
        assert sub.id is not None
        self.store.delete_subscriber(sub.id, reason=via)
        log.info("subscriber %d: deleted with all their data (%s)", sub.id, via)

    # -- feedback ------------------------------------------------------------------------

    def feedback_target(self, token: str) -> tuple[Subscriber, str, int, Paper | None]:
        """(subscriber, paper id, vote, the paper if stored) of a feedback link."""
        sub, claim = self.holder(token, "feedback")
        paper_id, vote = feedback.parse_extra(claim.extra)
        return sub, paper_id, vote, self.store.paper(paper_id)

    def vote(self, token: str, *, now: datetime | None = None) -> tuple[Subscriber, str, int]:
        sub, paper_id, vote, _ = self.feedback_target(token)
        assert sub.id is not None
        self.store.set_vote(sub.id, paper_id, vote, now=now or datetime.now(UTC))
        log.info("subscriber %d: voted %s on %s", sub.id, feedback.vote_name(vote), paper_id)
        return sub, paper_id, vote

    def cast_vote(
        self, sub: Subscriber, paper_id: str, vote: int, *, via: str, now: datetime | None = None
    ) -> None:
        """A vote from a front that proved who asks in its own way (a reply to a digest, sent
        from the subscriber's address to that digest's signed Reply-To)."""
        assert sub.id is not None and vote in (1, -1)
        self.store.set_vote(sub.id, paper_id, vote, now=now or datetime.now(UTC))
        log.info(
            "subscriber %d: voted %s on %s (%s)", sub.id, feedback.vote_name(vote), paper_id, via
        )

    def votes(self, sub: Subscriber) -> list[tuple[Feedback, Paper | None]]:
        assert sub.id is not None
        return self.store.votes(sub.id)

    def undo_vote(self, sub: Subscriber, paper_id: str) -> bool:
        assert sub.id is not None
        return self.store.remove_vote(sub.id, paper_id)
