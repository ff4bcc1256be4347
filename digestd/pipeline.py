"""One digest period: fetch, match, render, deliver; idempotent through the ledger."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import formataddr, parseaddr

from digestd import feedback
from digestd.errors import DigestdError, FeedError, PermanentDeliveryError, TemporaryDeliveryError
from digestd.inbound.addresses import Addresses
from digestd.matcher import Corpus, Match, Profile, rank, select
from digestd.models import DeliveryStatus, Status, Subscriber
from digestd.paper import Paper
from digestd.render import DigestInput
from digestd.schedule import due_period, is_digest_day, zone
from digestd.services import Services

log = logging.getLogger(__name__)

#: papers first seen longer ago than this are never news, whatever the subscriber's history
MAX_AGE = timedelta(days=31)
#: how often a digest waiting for the day's papers looks again
WAIT_STEP = timedelta(minutes=15)
#: relays quote the recipient in their replies ("550 5.1.1 <a@b>: no such user")
_ADDRESS = re.compile(r"[^\s<>@]+@[^\s<>@]+")


def _loggable(text: object) -> str:
    """``text`` without email addresses: logs carry subscriber ids, never addresses."""
    return _ADDRESS.sub("(address)", str(text))


@dataclass
class FetchResult:
    new: int = 0
    seen: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class SendSummary:
    sent: int = 0
    empty: int = 0
    waiting: int = 0
    retry: int = 0
    failed: int = 0
    expired: int = 0
    skipped: int = 0

    def __str__(self) -> str:
        text = (
            f"{self.sent} sent, {self.empty} with nothing to send, {self.retry} to retry, "
            f"{self.failed} failed, {self.skipped} not due or already done"
        )
        if self.waiting:
            text += f", {self.waiting} waiting for papers"
        if self.expired:
            text += f", {self.expired} expired"
        return text

    def add(self, other: SendSummary) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


async def fetch(services: Services, day: date, *, now: datetime | None = None) -> FetchResult:
    """Fetch every configured source for ``day`` and store the papers not seen before.

    A failing source is reported and the others still stored; FeedError only when all fail.
    """
    now = now or datetime.now(UTC)
    result = FetchResult()
    metrics, store = services.metrics, services.store
    for source in services.sources:
        try:
            papers = await source.fetch(day)
        except FeedError as exc:
            log.warning("fetch %s failed: %s", source.name, exc)
            result.errors.append(f"{source.name}: {exc}")
            # Not written to the database: bad input changes nothing. The daemon keeps the
            # last error for /readyz and `digestd status`; metrics count it.
            metrics.fetch_failures.labels(source.name).inc()
            continue
        new = store.add_papers(papers, seen_at=now)
        log.info("fetched %s: %d papers, %d new", source.name, len(papers), new)
        metrics.fetched.labels(source.name).inc(len(papers))
        metrics.new_papers.labels(source.name).inc(new)
        store.record_event("fetch", f"{source.name} {day}: {len(papers)} papers, {new} new")
        result.seen += len(papers)
        result.new += new
    if result.errors and len(result.errors) == len(services.sources):
        raise FeedError("; ".join(result.errors))
    if result.new:
        # Digests that found no match are waiting for the day's papers (WAIT_STEP apart):
        # now that papers came, the next tick looks at them, not a quarter of an hour later.
        store.wake_waiting(now)
    metrics.last_fetch.set(now.timestamp())
    return result


def is_due(sub: Subscriber, period: date) -> bool:
    """Whether ``period`` is one of the subscriber's digest days."""
    return is_digest_day(period, sub.frequency, sub.weekly_day)


def profile_of(
    sub: Subscriber,
    prefs: dict[str, list[str]],
    votes: tuple[tuple[Paper, ...], tuple[Paper, ...]] = ((), ()),
) -> Profile:
    """The matcher's profile; ``votes`` are the (liked, disliked) papers from feedback."""
    return Profile(
        topics=tuple(prefs.get("topic", ())),
        exclude=tuple(prefs.get("exclude", ())),
        authors=tuple(prefs.get("author", ())),
        categories=tuple(prefs.get("category", ())),
        max_papers=sub.max_papers,
        min_score=sub.min_score,
        liked=votes[0],
        disliked=votes[1],
    )


def _domain(services: Services) -> str:
    return parseaddr(services.config.smtp.from_)[1].rpartition("@")[2].lower()


def envelope_sender(
    services: Services, subscriber_id: int | None = None, delivery_id: int | None = None
) -> str:
    """MAIL FROM: for a digest with [inbound] enabled, a VERP address whose signed token names
    the subscriber and the delivery, so a later bounce is matched to both; else From's."""
    addresses = Addresses.of(services.config, services.signer)
    if addresses is not None and subscriber_id is not None and delivery_id is not None:
        return addresses.bounce(subscriber_id, delivery_id)
    return parseaddr(services.config.smtp.from_)[1]


class _Run:
    """State of one send run: the papers window loaded once, shared by every subscriber."""

    def __init__(
        self,
        services: Services,
        now: datetime,
        *,
        stop: asyncio.Event | None = None,
        wait: timedelta | None = None,
    ) -> None:
        self.services = services
        self.now = now
        self._started = time.monotonic()
        self.papers = services.store.papers_seen_since(now - MAX_AGE)
        # Term rarity and acronyms over the stored papers, once per run for every subscriber.
        self.corpus = Corpus.of(p for p, _ in self.papers)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.stop = stop or asyncio.Event()
        d = services.config.delivery
        self.lease = timedelta(seconds=d.lease_seconds)
        self.max_age = timedelta(hours=d.max_age_hours)
        self.wait = (
            timedelta(minutes=services.config.schedule.wait_minutes) if wait is None else wait
        )

    def clock(self) -> datetime:
        """``now`` moved on by the time this run has taken. Leases start from it: a run
        longer than a lease (a big list) must not hand out claims that are born expired,
        which another worker would take over and send a second time."""
        return self.now + timedelta(seconds=time.monotonic() - self._started)

    def matches_for(self, sub: Subscriber, prefs: dict[str, list[str]]) -> list[Match]:
        assert sub.id is not None
        store = self.services.store
        since = store.last_sent_at(sub.id) or (
            self.now - timedelta(days=self.services.config.digest.lookback)
        )
        fresh = [p for p, seen in self.papers if seen > since]
        sent = store.sent_paper_ids(sub.id, (p.id for p in fresh))
        profile = profile_of(sub, prefs, feedback.voted_papers(store, sub.id))
        return select(rank(fresh, profile, sent=sent, corpus=self.corpus), profile)


def digest_input(
    services: Services,
    sub: Subscriber,
    period: date,
    matches: Sequence[Match],
    message_id: str,
    now: datetime,
    delivery_id: int | None = None,
) -> DigestInput:
    assert sub.id is not None
    cfg = services.config
    base = cfg.web.base_url
    signer = services.signer
    site = cfg.digest.site_name
    # With [inbound] on, replies go to an address naming this delivery ("more 3" means its
    # third paper) and List-Unsubscribe's mailto unsubscribes on receipt.
    reply_to, mailto = "", cfg.digest.unsubscribe_mailto
    addresses = Addresses.of(cfg, signer)
    if addresses is not None:
        mailto = f"mailto:{addresses.unsubscribe(sub.id, sub.token_version)}?subject=unsubscribe"
        if delivery_id is not None:
            reply_to = formataddr((site, addresses.reply(sub.id, sub.token_version, delivery_id)))
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
        unsubscribe_mailto=mailto,
        reply_to=reply_to,
        date=now,
        site_name=site,
        feedback_urls=feedback.urls(signer, base, sub.id, sub.token_version, matches),
    )


async def send_period(
    services: Services, period: date, *, now: datetime | None = None, concurrency: int = 0
) -> SendSummary:
    """Send every digest of ``period`` now, whatever the send times (``digestd send``).

    Only the ledger decides: a period already sent, empty or given up is not sent again.
    """
    now = now or datetime.now(UTC)
    # A manual send does not wait for papers: what is stored now is what there is.
    run = _Run(services, now, wait=timedelta(0))
    summary = SendSummary()
    for batch in services.store.subscribers(status=Status.ACTIVE):
        due = [s for s in batch if is_due(s, period)]
        summary.skipped += len(batch) - len(due)
        summary.add(await _send_batch(run, [(s, period, now) for s in due], concurrency))
    log.info("period %s: %s", period, summary)
    return summary


async def send_due(
    services: Services,
    *,
    now: datetime | None = None,
    stop: asyncio.Event | None = None,
    concurrency: int = 0,
) -> SendSummary:
    """Send every digest whose local send time has passed and that the ledger has not done.

    This is the daemon's tick. Subscribers are grouped by schedule (zone, time, frequency,
    day), so the due period is computed once per group, not once per subscriber.
    """
    now = now or datetime.now(UTC)
    run = _Run(services, now, stop=stop)
    by_period: dict[date, tuple[datetime, list[tuple[str, str, str, int]]]] = {}
    for group in services.store.schedule_groups():
        due = due_period(now, group[1], group[0], group[2], group[3])
        if due is not None:
            period, moment = due
            by_period.setdefault(period, (moment, []))[1].append(group)
    summary = SendSummary()
    # Whoever just confirmed on the web gets a first digest now, not at tomorrow's send time.
    welcome = services.store.awaiting_first_digest(since=now - timedelta(days=1))
    work = [(s, now.astimezone(zone(s.timezone)).date(), now) for s in welcome]
    summary.add(await _send_batch(run, work, concurrency))
    for period, (_, groups) in sorted(by_period.items()):
        for batch in services.store.due_subscribers(period, groups, now=now):
            if run.stop.is_set():
                return summary
            work = []
            for sub in batch:
                # No digest for a period that ended before the subscription began.
                start = sub.confirmed_at or sub.created_at
                if period < start.astimezone(zone(sub.timezone)).date():
                    continue
                found = due_period(now, sub.send_time, sub.timezone, sub.frequency, sub.weekly_day)
                assert found is not None and found[0] == period
                work.append((sub, period, found[1]))
            summary.add(await _send_batch(run, work, concurrency))
    if summary.sent or summary.retry or summary.failed:
        log.info("tick: %s", summary)
    return summary


async def _send_batch(
    run: _Run, work: Sequence[tuple[Subscriber, date, datetime]], concurrency: int
) -> SendSummary:
    services = run.services
    summary = SendSummary()
    if not work:
        return summary
    prefs = services.store.preferences([s.id for s, _, _ in work if s.id is not None])
    limit = asyncio.Semaphore(concurrency or max(1, services.config.smtp.pool_size))

    async def one(sub: Subscriber, period: date, due_at: datetime) -> str:
        async with limit:
            if run.stop.is_set():  # shutting down: take no new work
                return "skipped"
            return await _send_one(run, sub, prefs[sub.id or 0], period, due_at)

    for outcome in await asyncio.gather(*(one(*w) for w in work)):
        setattr(summary, outcome, getattr(summary, outcome) + 1)
    return summary


async def _send_one(
    run: _Run, sub: Subscriber, prefs: dict[str, list[str]], period: date, due_at: datetime
) -> str:
    """Claim, match, render and deliver one digest; return the SendSummary field to count."""
    services, store, metrics = run.services, run.services.store, run.services.metrics
    delivery_cfg = services.config.delivery
    assert sub.id is not None
    delivery = store.claim(sub.id, period, owner=run.owner, now=run.clock(), lease=run.lease)
    if delivery is None:
        return "skipped"
    assert delivery.id is not None
    # Re-read after the claim: an unsubscribe (or revoked links) that landed since the batch
    # was loaded takes effect before anything is rendered (invariant 5).
    current = store.subscriber_by_id(sub.id)
    if current.status != Status.ACTIVE:
        store.mark_final(delivery, DeliveryStatus.EMPTY, reply=f"subscriber {current.status}")
        return "skipped"
    sub = current
    assert sub.id is not None
    if run.now - due_at > run.max_age:
        store.mark_final(
            delivery, DeliveryStatus.EXPIRED, reply=f"not delivered within {run.max_age} "
            f"of its send time; last reply: {delivery.reply or 'none'}"
        )  # fmt: skip
        metrics.failed.labels("expired").inc()
        log.warning("subscriber %d period %s: expired", sub.id, period)
        return "expired"
    started = time.perf_counter()
    try:
        matches = run.matches_for(sub, prefs)
        if not matches and run.now < due_at + run.wait:
            at = min(run.now + WAIT_STEP, due_at + run.wait)
            store.mark_waiting(delivery, reply="no match yet; waiting for the day's papers", at=at)
            return "waiting"
        if not matches and not sub.empty_note:
            store.mark_final(delivery, DeliveryStatus.EMPTY, reply="no paper matched")
            metrics.empty.inc()
            log.info("subscriber %d period %s: nothing matched", sub.id, period)
            return "empty"
        # The same id on every attempt, so a resend after a crash is recognisable.
        message_id = delivery.message_id or (
            f"<digest.{period:%Y%m%d}.{delivery.id}@{_domain(services)}>"
        )
        if not delivery.message_id:
            store.set_message_id(delivery.id, message_id)
        message = services.renderer.render(
            digest_input(services, sub, period, matches, message_id, run.now, delivery.id)
        )
        reply = await services.mailer.send(
            message, sender=envelope_sender(services, sub.id, delivery.id), recipients=[sub.email]
        )
    except TemporaryDeliveryError as exc:
        base = delivery_cfg.retry_base_seconds * 2 ** min(delivery.attempts, 20)
        delay = min(base, delivery_cfg.retry_max_seconds) * random.uniform(0.8, 1.2)
        store.mark_retry(
            delivery, reply=exc.reply or str(exc), at=run.clock() + timedelta(seconds=delay)
        )
        metrics.retried.labels(str(exc.code or "connection")).inc()
        log.warning(
            "subscriber %d period %s: temporary failure: %s", sub.id, period, _loggable(exc)
        )
        return "retry"
    except PermanentDeliveryError as exc:
        reply = exc.reply or str(exc)
        store.mark_final(delivery, DeliveryStatus.FAILED, reply=reply)
        no_such_user = " 5.1." in f" {reply}"
        bounced = store.record_bounce(
            sub.id,
            hard=True,
            reason=reply,
            limit=delivery_cfg.bounce_limit_no_such_user
            if no_such_user
            else delivery_cfg.bounce_limit,
        )
        metrics.failed.labels("bounce").inc()
        log.warning(
            "subscriber %d period %s: bounced%s: %s",
            sub.id, period, " (now marked bounced)" if bounced else "", _loggable(reply),
        )  # fmt: skip
        return "failed"
    except DigestdError as exc:
        store.mark_final(delivery, DeliveryStatus.FAILED, reply=str(exc))
        metrics.failed.labels("error").inc()
        log.error("subscriber %d period %s: %s", sub.id, period, _loggable(exc))
        return "failed"
    except Exception:
        # Top of a job: an unexpected error leaves the digest for a later attempt.
        log.exception("subscriber %d period %s: unexpected error", sub.id, period)
        store.mark_retry(delivery, reply="internal error", at=run.now + timedelta(minutes=15))
        metrics.retried.labels("internal").inc()
        return "retry"
    # run.now, not the clock: papers stored after the run loaded its window stay new.
    if not store.mark_sent(delivery, matches, reply=reply, now=run.now):
        log.warning(
            "subscriber %d period %s: another worker recorded this digest first (its lease "
            "ran out mid-send); the relay may have it twice, with one Message-ID",
            sub.id, period,
        )  # fmt: skip
    metrics.sent.inc()
    metrics.latency.observe(time.perf_counter() - started)
    log.info(
        "subscriber %d period %s: sent %d papers: %s",
        sub.id, period, len(matches), _loggable(reply),
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
    run = _Run(services, now)
    matches = run.matches_for(sub, prefs)
    if not matches:
        return [], None
    message_id = f"<preview.{now:%Y%m%d%H%M%S}.{sub.id}@{_domain(services)}>"
    return matches, services.renderer.render(
        digest_input(services, sub, now.date(), matches, message_id, now)
    )


def preview_profile(
    services: Services, sub: Subscriber, *, now: datetime | None = None
) -> tuple[list[Match], int]:
    """What the manage page shows: the recent papers this profile picks, and how many papers
    were looked at. Unlike a digest it ignores what was already sent, so changing topics
    always shows their effect on the same papers."""
    now = now or datetime.now(UTC)
    assert sub.id is not None
    store = services.store
    papers = [p for p, _ in store.papers_seen_since(now - _preview_window(services))]
    prefs = store.preferences([sub.id])[sub.id]
    profile = profile_of(sub, prefs, feedback.voted_papers(store, sub.id))
    return select(rank(papers, profile), profile), len(papers)


def _preview_window(services: Services) -> timedelta:
    # The window a new subscriber's first digest draws from, at least a day.
    return timedelta(days=max(1, services.config.digest.lookback))


def rank_papers(
    papers: Sequence[Paper], profile: Profile, *, corpus: Corpus | None = None
) -> list[Match]:
    """What ``digestd rank`` prints: the matcher's selection for ``profile``."""
    return select(rank(papers, profile, corpus=corpus), profile)
