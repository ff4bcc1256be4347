"""One digest period: fetch, match, render, deliver; idempotent through the ledger."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import parseaddr

from digestd.errors import DigestdError, FeedError, PermanentDeliveryError, TemporaryDeliveryError
from digestd.matcher import Match, Profile, rank, select
from digestd.models import DeliveryStatus, Frequency, Status, Subscriber
from digestd.paper import Paper
from digestd.render import DigestInput
from digestd.services import Services

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=10)
#: papers first seen longer ago than this are never news, whatever the subscriber's history
MAX_AGE = timedelta(days=31)
#: hard bounces ("no such user", 5.1.x) before a subscriber is marked bounced; other 5xx: 3
HARD_BOUNCE_LIMIT = 1
OTHER_BOUNCE_LIMIT = 3


@dataclass
class FetchResult:
    new: int = 0
    seen: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class SendSummary:
    sent: int = 0
    empty: int = 0
    retry: int = 0
    failed: int = 0
    skipped: int = 0

    def __str__(self) -> str:
        return (
            f"{self.sent} sent, {self.empty} with nothing to send, {self.retry} to retry, "
            f"{self.failed} failed, {self.skipped} not due or already done"
        )


async def fetch(services: Services, day: date, *, now: datetime | None = None) -> FetchResult:
    """Fetch every configured source for ``day`` and store the papers not seen before.

    A failing source is reported and the others still stored; FeedError only when all fail.
    """
    now = now or datetime.now(UTC)
    result = FetchResult()
    for source in services.sources:
        try:
            papers = await source.fetch(day)
        except FeedError as exc:
            log.warning("fetch %s failed: %s", source.name, exc)
            result.errors.append(f"{source.name}: {exc}")
            continue
        new = services.store.add_papers(papers, seen_at=now)
        log.info("fetched %s: %d papers, %d new", source.name, len(papers), new)
        result.seen += len(papers)
        result.new += new
    if result.errors and len(result.errors) == len(services.sources):
        raise FeedError("; ".join(result.errors))
    return result


def is_due(sub: Subscriber, period: date) -> bool:
    """Whether ``period`` is one of the subscriber's digest days."""
    if sub.frequency == Frequency.WEEKDAYS:
        return period.weekday() < 5
    if sub.frequency == Frequency.WEEKLY:
        return period.weekday() == sub.weekly_day
    return True


def profile_of(sub: Subscriber, prefs: dict[str, list[str]]) -> Profile:
    return Profile(
        topics=tuple(prefs.get("topic", ())),
        exclude=tuple(prefs.get("exclude", ())),
        authors=tuple(prefs.get("author", ())),
        categories=tuple(prefs.get("category", ())),
        max_papers=sub.max_papers,
        min_score=sub.min_score,
    )


def _domain(services: Services) -> str:
    return parseaddr(services.config.smtp.from_)[1].rpartition("@")[2].lower()


def envelope_sender(services: Services) -> str:
    return parseaddr(services.config.smtp.from_)[1]


class _Run:
    """State of one send run: the papers window loaded once, shared by every subscriber."""

    def __init__(self, services: Services, period: date, now: datetime) -> None:
        self.services = services
        self.period = period
        self.now = now
        self.papers = services.store.papers_seen_since(now - MAX_AGE)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    def matches_for(self, sub: Subscriber, prefs: dict[str, list[str]]) -> list[Match]:
        assert sub.id is not None
        store = self.services.store
        since = store.last_sent_at(sub.id) or (
            self.now - timedelta(days=self.services.config.digest.lookback)
        )
        fresh = [p for p, seen in self.papers if seen > since]
        sent = store.sent_paper_ids(sub.id, (p.id for p in fresh))
        profile = profile_of(sub, prefs)
        return select(rank(fresh, profile, sent=sent), profile)


def digest_input(
    services: Services,
    sub: Subscriber,
    period: date,
    matches: Sequence[Match],
    message_id: str,
    now: datetime,
) -> DigestInput:
    assert sub.id is not None
    cfg = services.config
    base = cfg.web.base_url
    signer = services.signer
    site = cfg.digest.site_name
    return DigestInput(
        to=sub.email,
        sender=cfg.smtp.from_,
        period=period,
        matches=matches,
        message_id=message_id,
        list_id=cfg.digest.list_id or f"{site} <digest.{_domain(services)}>",
        manage_url=f"{base}/manage/{signer.make('manage', sub.id, sub.token_version)}",
        unsubscribe_url=f"{base}/unsubscribe/"
        + signer.make("unsubscribe", sub.id, sub.token_version),
        unsubscribe_mailto=cfg.digest.unsubscribe_mailto,
        date=now,
        site_name=site,
    )


async def send_period(
    services: Services, period: date, *, now: datetime | None = None, concurrency: int = 0
) -> SendSummary:
    """Send every digest of ``period`` that is due and not yet in the ledger as done."""
    now = now or datetime.now(UTC)
    run = _Run(services, period, now)
    summary = SendSummary()
    limit = asyncio.Semaphore(concurrency or max(1, services.config.smtp.pool_size))
    for batch in services.store.subscribers(status=Status.ACTIVE):
        prefs = services.store.preferences([s.id for s in batch if s.id is not None])
        due = [s for s in batch if is_due(s, period)]
        summary.skipped += len(batch) - len(due)

        async def one(sub: Subscriber, prefs: dict[str, list[str]]) -> str:
            async with limit:
                return await _send_one(run, sub, prefs)

        outcomes = await asyncio.gather(*(one(s, prefs[s.id or 0]) for s in due))
        for outcome in outcomes:
            setattr(summary, outcome, getattr(summary, outcome) + 1)
    log.info("period %s: %s", period, summary)
    return summary


async def _send_one(run: _Run, sub: Subscriber, prefs: dict[str, list[str]]) -> str:
    """Claim, match, render and deliver one digest; return the SendSummary field to count."""
    services, store = run.services, run.services.store
    assert sub.id is not None
    delivery = store.claim(sub.id, run.period, owner=run.owner, now=run.now, lease=LEASE)
    if delivery is None:
        return "skipped"
    assert delivery.id is not None
    try:
        matches = run.matches_for(sub, prefs)
        if not matches:
            store.mark_final(delivery, DeliveryStatus.EMPTY, reply="no paper matched")
            log.info("subscriber %d period %s: nothing matched", sub.id, run.period)
            return "empty"
        # The same id on every attempt, so a resend after a crash is recognisable.
        message_id = delivery.message_id or (
            f"<digest.{run.period:%Y%m%d}.{delivery.id}@{_domain(services)}>"
        )
        if not delivery.message_id:
            store.set_message_id(delivery.id, message_id)
        message = services.renderer.render(
            digest_input(services, sub, run.period, matches, message_id, run.now)
        )
        reply = await services.mailer.send(
            message, sender=envelope_sender(services), recipients=[sub.email]
        )
    except TemporaryDeliveryError as exc:
        delay = timedelta(minutes=5) * 2 ** min(delivery.attempts, 6)
        at = run.now + delay * random.uniform(0.8, 1.2)
        store.mark_retry(delivery, reply=exc.reply or str(exc), at=at)
        log.warning("subscriber %d period %s: temporary failure: %s", sub.id, run.period, exc)
        return "retry"
    except PermanentDeliveryError as exc:
        reply = exc.reply or str(exc)
        store.mark_final(delivery, DeliveryStatus.FAILED, reply=reply)
        no_such_user = " 5.1." in f" {reply}"
        bounced = store.record_bounce(
            sub.id,
            hard=True,
            reason=reply,
            limit=HARD_BOUNCE_LIMIT if no_such_user else OTHER_BOUNCE_LIMIT,
        )
        log.warning(
            "subscriber %d period %s: bounced%s: %s",
            sub.id, run.period, " (now marked bounced)" if bounced else "", reply,
        )  # fmt: skip
        return "failed"
    except DigestdError as exc:
        store.mark_final(delivery, DeliveryStatus.FAILED, reply=str(exc))
        log.error("subscriber %d period %s: %s", sub.id, run.period, exc)
        return "failed"
    except Exception:
        # Top of a job: an unexpected error leaves the digest for a later attempt.
        log.exception("subscriber %d period %s: unexpected error", sub.id, run.period)
        store.mark_retry(delivery, reply="internal error", at=run.now + timedelta(minutes=15))
        return "retry"
    # run.now, not the clock: papers stored after the run loaded its window stay new.
    store.mark_sent(delivery, matches, reply=reply, now=run.now)
    log.info(
        "subscriber %d period %s: sent %d papers: %s",
        sub.id, run.period, len(matches), reply,
    )  # fmt: skip
    return "sent"


def preview(
    services: Services, email: str, *, now: datetime | None = None
) -> tuple[list[Match], EmailMessage | None]:
    """The digest ``email`` would receive now, rendered but neither sent nor recorded."""
    now = now or datetime.now(UTC)
    sub = services.store.subscriber(email)
    assert sub.id is not None
    prefs = services.store.preferences([sub.id])[sub.id]
    run = _Run(services, now.date(), now)
    matches = run.matches_for(sub, prefs)
    if not matches:
        return [], None
    message_id = f"<preview.{now:%Y%m%d%H%M%S}.{sub.id}@{_domain(services)}>"
    return matches, services.renderer.render(
        digest_input(services, sub, now.date(), matches, message_id, now)
    )


def rank_papers(papers: Sequence[Paper], profile: Profile) -> list[Match]:
    """What ``digestd rank`` prints: the matcher's selection for ``profile``."""
    return select(rank(papers, profile), profile)
