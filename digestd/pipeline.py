"""One digest period: fetch, match, render, deliver; idempotent through the ledger."""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import functools
import gc
import logging
import os
import pickle
import random
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import formataddr, parseaddr
from typing import Any, ClassVar, NamedTuple

from digestd import feedback, ledger, workers
from digestd.config import Config
from digestd.errors import (
    ConfigError,
    DigestdError,
    FeedError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from digestd.inbound.addresses import Addresses
from digestd.matcher import Corpus, Match, Profile, match, rank
from digestd.matching import semantic
from digestd.matching.topics import portable
from digestd.models import DeliveryStatus, Status, Subscriber
from digestd.paper import Paper
from digestd.render import DigestInput, mime
from digestd.schedule import due_period, is_digest_day, zone
from digestd.services import Services
from digestd.store import Share, Store

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
    #: another instance held the fetch lock; nothing was fetched here
    skipped: bool = False
    #: papers given a sentence embedding (the semantic extra)
    embedded: int = 0


@dataclass
class SendSummary:
    sent: int = 0
    empty: int = 0
    waiting: int = 0
    retry: int = 0
    failed: int = 0
    expired: int = 0
    #: claims not taken (done already, another worker's, a retry not yet due), digests given
    #: back on a stop, subscribers gone since their claim
    skipped: int = 0
    #: subscribers of a manual send (`send_period`) whose digest days the period is not
    not_due: int = 0
    #: seconds per stage of the send (see Stages), filled in at the end of a run
    stages: dict[str, float] = field(default_factory=dict)
    #: CPU seconds and peak RSS (KiB) of each process a split send ran in (`workers`)
    processes: tuple[tuple[float, int], ...] = ()
    #: what those processes worked out anew (topics read against papers) and handed back
    readings: int = 0

    def __str__(self) -> str:
        text = (
            f"{self.sent} sent, {self.empty} with nothing to send, {self.retry} to retry, "
            f"{self.failed} failed, {self.skipped} skipped (done already, another worker's, "
            "or a retry not yet due)"
        )
        if self.not_due:
            text += f", {self.not_due} not due that day"
        if self.waiting:
            text += f", {self.waiting} waiting for papers"
        if self.expired:
            text += f", {self.expired} expired"
        return text

    def add(self, other: SendSummary) -> None:
        for name in self.__dataclass_fields__:
            if name not in ("stages", "processes"):
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def count(self, outcome: ledger.Outcome) -> None:
        name = "skipped" if outcome.skipped else _COUNTED[outcome.status]
        setattr(self, name, getattr(self, name) + 1)


#: the lock (`Store.exclusive`) that one instance at a time holds while it fetches
FETCH_LOCK = "fetch"


async def fetch(services: Services, day: date, *, now: datetime | None = None) -> FetchResult:
    """Fetch every configured source for ``day`` and store the papers not seen before.

    A failing source is reported and the others still stored; FeedError only when all fail.
    """
    now = now or datetime.now(UTC)
    with services.store.exclusive(FETCH_LOCK) as mine:
        if not mine:
            # Several instances on one database: one fetches, the others use what it stores.
            log.info("another instance is fetching now; not fetching here")
            return FetchResult(skipped=True)
        return await _fetch(services, day, now)


async def _fetch(services: Services, day: date, now: datetime) -> FetchResult:
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
    if services.config.matching.semantic_model:
        try:
            result.embedded = await asyncio.to_thread(embed, services, now)
        except Exception as exc:  # a model that fails must not stop fetches
            # Matching goes on by words alone; the papers are embedded at a later fetch.
            log.error("papers not embedded: %s", exc, exc_info=not isinstance(exc, ConfigError))
            store.record_event("embed", f"papers not embedded: {exc}")
    if result.new:
        # Digests that found no match are waiting for the day's papers (WAIT_STEP apart):
        # now that papers came, the next tick looks at them, not a quarter of an hour later.
        store.wake_waiting(now)
    metrics.last_fetch.set(now.timestamp())
    return result


def embed(services: Services, now: datetime) -> int:
    """Work out and store the sentence embeddings (the semantic extra) that the papers of
    the window at ``now`` lack under the configured model; how many were stored. Once per
    paper: a paper embedded before is not embedded again."""
    name = services.config.matching.semantic_model
    store = services.store
    papers = [p for p, _ in store.papers_seen_since(now - MAX_AGE)]
    have = store.meaning_ids(name, [p.id for p in papers])
    todo = [p for p in papers if p.id not in have]
    if not todo:
        return 0
    stored = store.save_meanings(name, semantic.model(name).encode(todo))
    log.info("embedded %d papers with %s", stored, name)
    return stored


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
    return _addr_spec(services.config.smtp.from_).rpartition("@")[2].lower()


def envelope_sender(
    services: Services, subscriber_id: int | None = None, delivery_id: int | None = None
) -> str:
    """MAIL FROM: for a digest with [inbound] enabled, a VERP address whose signed token names
    the subscriber and the delivery, so a later bounce is matched to both; else From's."""
    addresses = Addresses.of(services.config, services.signer)
    if addresses is not None and subscriber_id is not None and delivery_id is not None:
        return addresses.bounce(subscriber_id, delivery_id)
    return _addr_spec(services.config.smtp.from_)


@functools.lru_cache(maxsize=8)
def _addr_spec(address: str) -> str:
    # Cached: the same From for every digest (envelope, Message-ID, List-Id), and parsing it
    # was 4% of a send's CPU.
    return parseaddr(address)[1]


class Stages:
    """Seconds a send spends in each stage, for the send benchmark and the metrics.

    ``select`` (claims, subscribers, history), ``match``, ``render`` (templates and CSS),
    ``serialise`` (the MIME bytes), ``ledger`` (recording outcomes) are timed where they
    run; ``deliver`` is the rest of the run's wall time: the SMTP client and the relay.
    """

    NAMES = ("select", "match", "render", "serialise", "deliver", "ledger")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.NAMES, 0.0)

    @contextmanager
    def timing(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started


class _Pauses:
    """The garbage collector paused while any of several threads needs it to be: a thread
    done first does not switch it back on under another that still needs it paused (a
    cancelled read-ahead's load finishing in its thread while a send's load builds a corpus).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._was_enabled = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        with self._lock:
            if not self._count:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1
                if not self._count and self._was_enabled:
                    gc.enable()


_COLLECTOR = _Pauses()


class _Run:
    """State of one send run: the papers window loaded once, shared by every subscriber."""

    def __init__(
        self,
        services: Services,
        now: datetime,
        papers: list[tuple[Paper, datetime]],
        corpus: Corpus,
        *,
        stop: asyncio.Event | None = None,
        wait: timedelta | None = None,
    ) -> None:
        self.services = services
        self.now = now
        self._started = time.monotonic()
        self.papers = papers  # oldest first (`Store.papers_seen_since`)
        self.by_id = {p.id: p for p, _ in papers}
        # the papers seen after a time are a tail of these, found by bisection (`seen_after`)
        self._seen = [seen for _, seen in papers]
        self._in_order = [p for p, _ in papers]
        self.corpus = corpus
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.stop = stop or asyncio.Event()
        self.stages = Stages()
        self._settled = 0
        d = services.config.delivery
        self.lease = timedelta(seconds=d.lease_seconds)
        self.max_age = timedelta(hours=d.max_age_hours)
        self.wait = (
            timedelta(minutes=services.config.schedule.wait_minutes) if wait is None else wait
        )

    #: the last corpus built, by database and by the papers it was built from
    _corpora: ClassVar[dict[str, tuple[tuple[object, ...], Corpus]]] = {}
    #: by database: a corpus, and what send processes worked out on it (`keep_readings`)
    _returned: ClassVar[dict[str, tuple[Corpus, list[bytes]]]] = {}

    @classmethod
    def load(cls, services: Services, now: datetime) -> tuple[list[tuple[Paper, datetime]], Corpus]:
        """The papers of the window and their corpus (term rarity and acronyms, shared by
        every subscriber). The corpus is kept between runs while the papers stay the same
        (the daemon's tick runs every minute; the papers change once or twice a day), and
        with it what it has worked out: topics read against papers for earlier sends.

        No garbage collection meanwhile, and a corpus built kept out of later full ones
        (until a run's end unfreezes it, `finish`). Reading and analysing a month of papers
        allocates enough to set off a full collection, which scans every object of the
        process holding the GIL: 70 ms in a daemon just started, up to 220 ms while the
        forkserver imported beside it, with the web front's event loop waiting meanwhile
        (this runs in a thread of its own, and may run in several at once)."""
        with _COLLECTOR.paused():
            return cls._load(services, now)

    @classmethod
    def _load(
        cls, services: Services, now: datetime
    ) -> tuple[list[tuple[Paper, datetime]], Corpus]:
        papers = services.store.papers_seen_since(now - MAX_AGE)
        key: tuple[object, ...] = (
            len(papers),
            *((p.id, seen) for p, seen in papers[:1] + papers[-1:]),
        )
        name = services.config.matching.semantic_model
        if name:  # papers embedded since (the model set, or a fetch that failed to) count
            key += (name, len(services.store.meaning_ids(name, [p.id for p, _ in papers])))
        url = services.config.database_url
        known = cls._corpora.get(url)
        if known is not None and known[0] == key and _same(known[1], papers):
            corpus = known[1]
            # the corpus's own paper objects: the matcher tells its papers by identity first
            return [(corpus.docs[p.id].paper, seen) for p, seen in papers], corpus
        meanings = None
        if name:
            meanings = semantic.vectors(services.store.meanings(name, [p.id for p, _ in papers]))
        corpus = Corpus.of((p for p, _ in papers), meanings)
        gc.freeze()
        cls._corpora[url] = (key, corpus)
        cls._returned.pop(url, None)  # worked out on the papers as they were
        return papers, corpus

    @classmethod
    async def start(
        cls,
        services: Services,
        now: datetime,
        *,
        stop: asyncio.Event | None = None,
        wait: timedelta | None = None,
    ) -> _Run:
        # Seconds of CPU for a month of papers: in a thread, so the web front (same event
        # loop in the daemon) keeps answering meanwhile.
        papers, corpus = await asyncio.to_thread(cls.load, services, now)
        run = cls(services, now, papers, corpus, stop=stop, wait=wait)
        run.settle()
        return run

    def settle(self) -> None:
        """Move what lives through the run (the corpus, what it has worked out, the app)
        out of the garbage collector's sight until the run ends: a full collection scans
        every tracked object, and over the corpus and its memo one took up to 180 ms, every
        few seconds of a big send, with the web front's event loop waiting. Called again as
        the memo grows while the first subscribers' topics are read."""
        size = len(self.corpus.memo)
        if size >= self._settled * 1.25 or not self._settled:
            gc.freeze()
            self._settled = max(size, 1)

    def clock(self) -> datetime:
        """``now`` moved on by the time this run has taken. Leases start from it: a run
        longer than a lease (a big list) must not hand out claims that are born expired,
        which another worker would take over and send a second time."""
        return self.now + timedelta(seconds=time.monotonic() - self._started)

    def finish(self) -> dict[str, float]:
        """Seconds per stage; ``deliver`` takes the wall time the timed stages leave."""
        gc.unfreeze()  # collectable again once the run lets go of them
        seconds = dict(self.stages.seconds)
        timed = sum(v for k, v in seconds.items() if k != "deliver")
        seconds["deliver"] = max(0.0, time.monotonic() - self._started - timed)
        for name, value in seconds.items():
            self.services.metrics.stage_seconds.labels(name).inc(value)
        return seconds

    def since(self, last_sent: datetime | None) -> datetime:
        return last_sent or self.now - timedelta(days=self.services.config.digest.lookback)

    def seen_after(self, since: datetime) -> list[Paper]:
        """The run's papers first seen after ``since``, oldest first."""
        return self._in_order[bisect.bisect_right(self._seen, since) :]

    def matches(
        self,
        sub: Subscriber,
        prefs: dict[str, list[str]],
        since: datetime,
        sent: Collection[str],
        votes: tuple[tuple[Paper, ...], tuple[Paper, ...]],
    ) -> list[Match]:
        fresh = self.seen_after(since)
        if sent:
            fresh = [p for p in fresh if p.id not in sent]
        profile = profile_of(sub, prefs, votes)
        return match(fresh, profile, corpus=self.corpus)

    def matches_for(self, sub: Subscriber, prefs: dict[str, list[str]]) -> list[Match]:
        """One subscriber's matches now, read from the store (previews)."""
        assert sub.id is not None
        store = self.services.store
        since = self.since(store.last_sent_at(sub.id))
        fresh = [p.id for p in self.seen_after(since)]
        sent = store.sent_paper_ids(sub.id, fresh)
        votes = feedback.voted_papers(store, sub.id)
        return self.matches(sub, prefs, since, sent, votes)


class Handed(NamedTuple):
    """A corpus as `handed_corpus` pickles it for the send processes of a split send, in
    pieces: its statistics, its papers, and what it has worked out (`readings`)."""

    head: bytes
    docs: list[bytes]
    readings: list[bytes]


def handed_corpus(services: Services, now: datetime) -> tuple[Corpus, Handed]:
    """The corpus of the window at ``now``, and the same pickled for the send processes of
    a split send (`workers`): built here once (or kept from the last run), not once per
    process; with what has been worked out on it here and what earlier split sends'
    processes worked out and handed back (`keep_readings`), so that no topic is read
    against the same papers twice.

    In pieces (its statistics, then the papers 16 at a time, the readings 512 at a time):
    pickling holds the GIL, and in the daemon the web front's event loop waits for it; the
    whole corpus took 50-100 ms.
    """
    _Run.load(services, now)
    url = services.config.database_url
    key, corpus = _Run._corpora[url]
    docs = list(corpus.docs.values())
    own = portable(list(corpus.memo.items()))  # list(): a snapshot
    back = _Run._returned.get(url)
    handed = Handed(
        _pickled((key, dataclasses.replace(corpus, docs={}, memo={}))),
        _pieces(docs, _HANDED_DOCS),
        _pieces(own, _HANDED_READINGS) + (back[1] if back and back[0] is corpus else []),
    )
    return corpus, handed


_HANDED_DOCS = 16
_HANDED_READINGS = 512


def _pickled(value: object) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _pieces(items: Sequence[object], size: int) -> list[bytes]:
    return [_pickled(items[i : i + size]) for i in range(0, len(items), size)]


def _unpickled(piece: bytes) -> Any:
    # Only ever from this program's own processes: the parent's arguments to a send
    # process, or a send process's report through its pipe (as multiprocessing's own).
    return pickle.loads(piece)  # noqa: S301


def adopt_corpus(config: Config, handed: Handed) -> Corpus:
    """Take the corpus `handed_corpus` pickled in the process that split the send as this
    process's last built one: its run uses it if the window still holds exactly those papers,
    and builds its own if not."""
    key, bare = _unpickled(handed.head)
    docs = {d.paper.id: d for part in handed.docs for d in _unpickled(part)}
    memo = {k: v for part in handed.readings for k, v in _unpickled(part)}
    corpus = dataclasses.replace(bare, docs=docs, memo=memo)
    assert isinstance(corpus, Corpus)
    _Run._corpora[config.database_url] = (key, corpus)
    return corpus


def new_readings(
    config: Config, corpus: Corpus, known: Collection[object]
) -> tuple[int, list[bytes]]:
    """What this process's runs worked out on the handed ``corpus`` beyond what it was
    handed (``known``: its memo's keys then): how many, and pickled in pieces for the
    process that split the send; nothing if the window changed and a run built a corpus
    of its own."""
    kept = _Run._corpora.get(config.database_url)
    if kept is None or kept[1] is not corpus:
        return 0, []
    fresh = portable((k, v) for k, v in corpus.memo.items() if k not in known)
    return len(fresh), _pieces(fresh, _HANDED_READINGS)


def read_topics(services: Services, now: datetime, phrases: Sequence[str]) -> None:
    """Read each of ``phrases`` (topics, exclusions) against the papers a digest at ``now``
    can hold, into the memo of the window's corpus, as a send's matching would. Done ahead
    of the sends by `workers.read_ahead`."""
    papers, corpus = _Run.load(services, now)
    since = now - timedelta(days=services.config.digest.lookback)
    fresh = [p for p, seen in papers if seen > since]
    for phrase in phrases:
        # a profile of the phrase alone reads it against every paper holding one of its words:
        # the papers any profile holding it, as a topic or as an exclusion, can read it for
        rank(fresh, Profile(topics=(phrase,)), corpus=corpus)


def keep_readings(services: Services, corpus: Corpus, pieces: Sequence[bytes]) -> int:
    """Keep what send processes worked out on ``corpus`` (`new_readings`), as they pickled
    it, to hand on with it to the next split send's processes (`handed_corpus`): the first
    split send after the papers change reads the subscribers' topics, later ones do not.

    Kept pickled: never unpickled in this process, whose event loop the web front shares.
    Only for the kept corpus, and up to ``RETURNED_BYTES``; the bytes kept in all."""
    url = services.config.database_url
    kept = _Run._corpora.get(url)
    if kept is None or kept[1] is not corpus:
        return 0
    back = _Run._returned.get(url)
    pieces_now = back[1] if back and back[0] is corpus else []
    size = sum(map(len, pieces_now))
    for piece in pieces:
        if size + len(piece) > RETURNED_BYTES:
            break
        pieces_now.append(piece)
        size += len(piece)
    _Run._returned[url] = (corpus, pieces_now)
    return size


#: readings kept for the next split send (from its send processes, or read ahead), at most
#: (all of 1,527 distinct topics against 56 papers: 3.3 MB)
RETURNED_BYTES = 64 * 2**20


def _same(corpus: Corpus, papers: Sequence[tuple[Paper, datetime]]) -> bool:
    """The corpus was built from exactly these papers (as they are now)."""
    docs = corpus.docs
    return len(docs) == len(papers) and all(
        (d := docs.get(p.id)) is not None and d.paper == p for p, _ in papers
    )


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
    services: Services,
    period: date,
    *,
    now: datetime | None = None,
    concurrency: int = 0,
    stop: asyncio.Event | None = None,
    share: Share | None = None,
    split_above: int = workers.SPLIT_ABOVE,
) -> SendSummary:
    """Send every digest of ``period`` now, whatever the send times (``digestd send``).

    Only the ledger decides: a period already sent, empty or given up is not sent again.
    More than ``split_above`` subscribers: the send is split over processes (`workers`).
    """
    now = now or datetime.now(UTC)
    n = workers.processes(services.config) if share is None else 1
    if n > 1:
        counts = await asyncio.to_thread(services.store.subscriber_counts)
        if counts.get(Status.ACTIVE.value, 0) > split_above:
            job = workers.Job(now, period)
            summary = await workers.split(services, job, n, stop or asyncio.Event())
            log.info("period %s: %s", period, summary)
            return summary
    # A manual send does not wait for papers: what is stored now is what there is.
    run = await _Run.start(services, now, stop=stop, wait=timedelta(0))
    summary = SendSummary()

    async def work() -> AsyncIterator[list[_Work]]:
        async for batch in _in_thread(
            services.store.subscribers(status=Status.ACTIVE, share=share)
        ):
            due = [s for s in batch if is_due(s, period)]
            summary.not_due += len(batch) - len(due)
            yield [(s, period, now) for s in due]

    summary.add(await _send_work(run, work(), concurrency))
    summary.stages = run.finish()
    log.info("period %s: %s", period, summary)
    return summary


async def send_due(
    services: Services,
    *,
    now: datetime | None = None,
    stop: asyncio.Event | None = None,
    concurrency: int = 0,
    share: Share | None = None,
    split_above: int = workers.SPLIT_ABOVE,
) -> SendSummary:
    """Send every digest whose local send time has passed and that the ledger has not done.

    This is the daemon's tick. Subscribers are grouped by schedule (zone, time, frequency,
    day), so the due period is computed once per group, not once per subscriber. More than
    ``split_above`` digests due: the send is split over processes (`workers`).
    """
    now = now or datetime.now(UTC)
    store = services.store
    by_period: dict[date, tuple[datetime, list[tuple[str, str, str, int]]]] = {}
    for group in await asyncio.to_thread(store.schedule_groups):
        due = due_period(now, group[1], group[0], group[2], group[3])
        if due is not None:
            period, moment = due
            by_period.setdefault(period, (moment, []))[1].append(group)
    n = workers.processes(services.config) if share is None else 1
    if n > 1:
        pending = await asyncio.to_thread(_count_due, store, by_period, now, split_above + 1)
        if pending > split_above:
            summary = await workers.split(services, workers.Job(now), n, stop or asyncio.Event())
            log.info("tick: %s", summary)
            return summary
    run = await _Run.start(services, now, stop=stop)

    async def work() -> AsyncIterator[list[_Work]]:
        # Whoever just confirmed on the web gets a first digest now, not at tomorrow's time.
        since = now - timedelta(days=1)
        welcome = await asyncio.to_thread(store.awaiting_first_digest, since=since)
        yield [
            (s, now.astimezone(zone(s.timezone)).date(), now)
            for s in welcome
            if share is None or share.has(s.id or 0)
        ]
        for period, (_, groups) in sorted(by_period.items()):
            due_now = store.due_subscribers(period, groups, now=now, share=share)
            async for batch in _in_thread(due_now):
                due = []
                for sub in batch:
                    # No digest for a period that ended before the subscription began.
                    start = sub.confirmed_at or sub.created_at
                    if period < start.astimezone(zone(sub.timezone)).date():
                        continue
                    found = due_period(
                        now, sub.send_time, sub.timezone, sub.frequency, sub.weekly_day
                    )
                    assert found is not None and found[0] == period
                    due.append((sub, period, found[1]))
                yield due

    summary = await _send_work(run, work(), concurrency)
    summary.stages = run.finish()
    if summary.sent or summary.retry or summary.failed:
        log.info("tick: %s", summary)
    return summary


def _count_due(
    store: Store,
    by_period: Mapping[date, tuple[datetime, Sequence[tuple[str, str, str, int]]]],
    now: datetime,
    at_most: int,
) -> int:
    """Digests due now over every period, counted no further than ``at_most``."""
    total = 0
    for period, (_, groups) in by_period.items():
        if total >= at_most:
            break
        total += store.due_count(period, groups, now=now, at_most=at_most - total)
    return total


async def _in_thread(batches: Iterator[list[Subscriber]]) -> AsyncIterator[list[Subscriber]]:
    """Each batch of a store query read in a thread, off the event loop the web front uses."""
    while (batch := await asyncio.to_thread(next, batches, None)) is not None:
        yield batch


#: one digest to send: the subscriber, the period and when it fell due
_Work = tuple[Subscriber, date, datetime]


async def _send_work(
    run: _Run, source: AsyncIterator[list[_Work]], concurrency: int
) -> SendSummary:
    """Send what ``source`` yields (batches of a store query) in chunks: each chunk claimed,
    matched, sent and recorded together.

    The next chunk is claimed and matched while this one's digests go out: the database
    work runs in a thread and matching fills the event loop's waits for the relay, so
    neither the CPU nor the connections sit idle between chunks, nor between the batches
    of the query, whose next one is read as part of the next chunk. Digests a chunk gave
    back unsent (its lease ran too short: a slow relay) are claimed again at once; each
    round sends at least a pool's worth, so this ends. Once ``run.stop`` is set no more
    work is taken.
    """
    summary = SendSummary()
    todo: list[_Work] = []
    sizes = _chunk_sizes()
    more = True

    async def next_chunk() -> _Chunk | None:
        nonlocal todo, more
        size = next(sizes)
        while more and len(todo) < size and not run.stop.is_set():
            batch = await anext(source, None)
            if batch is None:
                more = False
            else:
                todo += batch
        work, todo = todo[:size], todo[size:]
        return await _prepare_chunk(run, work, summary) if work else None

    ahead: asyncio.Task[_Chunk | None] | None = None
    chunk = await next_chunk()
    try:
        while chunk is not None:
            if not run.stop.is_set():  # shutting down: take no new work
                ahead = asyncio.create_task(next_chunk())
            # A prepared chunk is always delivered: on a stop, that gives its claims back.
            todo = await _deliver_chunk(run, chunk, concurrency, summary) + todo
            chunk, ahead = (await ahead if ahead is not None else None), None
            if chunk is None and todo and not run.stop.is_set():
                chunk = await next_chunk()
    finally:
        if ahead is not None:  # cancelled mid-chunk: its claims come back with their lease
            ahead.cancel()
    return summary


def _chunk_sizes() -> Iterator[int]:
    """Subscribers per chunk: a few at first, so that the first digests go out while the
    next chunk is matched (the first subscribers' topics are all new to the run, and take
    longest to read), then CHUNK."""
    size = FIRST_CHUNK
    while size < CHUNK:
        yield size
        size *= 2
    while True:
        yield CHUNK


@dataclass(slots=True)
class _Digest:
    """One claimed digest on its way: the subscriber, their matches, the message."""

    claim: ledger.Claim
    sub: Subscriber
    period: date
    matches: list[Match]
    message_id: str
    data: bytes = b""
    started: float = 0.0


@dataclass(slots=True)
class _Chunk:
    """A claimed and matched chunk: digests to send and outcomes already decided."""

    work: Sequence[_Work]
    ready: list[_Digest]
    outcomes: list[ledger.Outcome]


async def _prepare_chunk(run: _Run, work: Sequence[_Work], summary: SendSummary) -> _Chunk:
    """Claim one chunk and match it."""
    stages = run.stages
    due_at = {(s.id or 0, period): at for s, period, at in work}
    # The database work of a chunk runs in a thread: the web front shares this event loop.
    claims, subs, prefs, last_sent, history = await asyncio.to_thread(_select, run, due_at)
    summary.skipped += len(work) - len(claims)
    chunk = _Chunk(work, [], [])
    turn = time.perf_counter()
    for claim in claims:
        with stages.timing("match"):
            sub = subs.get(claim.subscriber_id)
            since = run.since(last_sent.get(claim.subscriber_id))
            due = due_at[claim.subscriber_id, claim.period]
            decided = _decide(run, claim, sub, prefs, history, since, due)
        if isinstance(decided, _Digest):
            chunk.ready.append(decided)
        else:
            chunk.outcomes.append(decided)
        if time.perf_counter() - turn > YIELD_EVERY:
            # The web front shares this event loop: it answers in between, and the chunk
            # being sent meanwhile gets its relay's replies. (Matching the first subscribers
            # of a send, whose topics are new to the run, takes longest.)
            await asyncio.sleep(0)
            turn = time.perf_counter()
    return chunk


async def _deliver_chunk(
    run: _Run, chunk: _Chunk, concurrency: int, summary: SendSummary
) -> list[_Work]:
    """Send and record one prepared chunk; return the work given back unsent."""
    services, stages = run.services, run.stages
    engine = services.store.engine
    # Twice the connections: while a digest is on the wire, the next one for that connection
    # is being rendered, and is ready when it frees up.
    limit = asyncio.Semaphore(concurrency or 2 * max(1, services.config.smtp.pool_size))
    pending: list[ledger.Outcome] = []

    def flush() -> None:
        # run.now, not the clock: papers stored after the run loaded its window stay new.
        with stages.timing("ledger"):
            done = pending[:]
            pending.clear()
            lost = ledger.record(engine, done, now=run.now)
            for o in done:
                summary.count(o)
                if o.status == DeliveryStatus.FAILED and o.code:
                    _count_bounce(run, o)
        for o in lost:
            log.warning(
                "subscriber %d period %s: another worker recorded this digest first (its "
                "lease ran out mid-send); the relay may have it twice, with one Message-ID",
                o.claim.subscriber_id, o.claim.period,
            )  # fmt: skip

    released: list[_Digest] = []

    async def deliver(digest: _Digest) -> None:
        outcome = await _deliver(run, digest, limit)
        if outcome is None:
            released.append(digest)
            return
        pending.append(outcome)
        # Accepted digests are recorded a few at a time, not at the end of the chunk: a
        # crash can then leave at most FLUSH + pool_size digests sent but unrecorded
        # (sent again after the lease, with the same Message-ID).
        if len(pending) >= FLUSH:
            flush()

    await asyncio.gather(*(deliver(d) for d in chunk.ready))
    pending += chunk.outcomes
    flush()
    run.settle()
    if not released:
        return []
    with stages.timing("ledger"):
        ledger.release(engine, [d.claim for d in released], owner=run.owner, now=run.clock())
    if run.stop.is_set():
        summary.skipped += len(released)
        return []
    again = {(d.claim.subscriber_id, d.period) for d in released}
    return [w for w in chunk.work if (w[0].id, w[1]) in again]


def _select(
    run: _Run, due_at: Mapping[tuple[int, date], datetime]
) -> tuple[
    list[ledger.Claim],
    dict[int, Subscriber],
    dict[int, dict[str, list[str]]],
    dict[int, datetime],
    ledger.History,
]:
    """Claim a chunk and read what matching it needs: its subscribers as they are now (read
    after the claim, so an unsubscribe that landed since takes effect before anything is
    rendered: invariant 5), their preferences, last digests and history."""
    engine = run.services.store.engine
    with run.stages.timing("select"):
        claims = ledger.claim(engine, due_at, owner=run.owner, now=run.clock(), lease=run.lease)
        ids = [c.subscriber_id for c in claims]
        subs = ledger.subscribers(engine, ids)
        prefs = run.services.store.preferences(ids)
        last_sent = ledger.last_sent(engine, ids)
        oldest = min((run.since(last_sent.get(i)) for i in ids), default=run.now)
        history = ledger.history(engine, ids, (p.id for p in run.seen_after(oldest)))
    return claims, subs, prefs, last_sent, history


def _decide(
    run: _Run,
    claim: ledger.Claim,
    sub: Subscriber | None,
    prefs: dict[int, dict[str, list[str]]],
    history: ledger.History,
    since: datetime,
    due_at: datetime,
) -> ledger.Outcome | _Digest:
    """What to do with one claimed digest: an outcome already, or a digest to send."""
    metrics = run.services.metrics
    if sub is None or sub.status != Status.ACTIVE:
        status = sub.status if sub is not None else "deleted"
        return ledger.Outcome(claim, DeliveryStatus.EMPTY, f"subscriber {status}", skipped=True)
    if run.now - due_at > run.max_age:
        metrics.failed.labels("expired").inc()
        log.warning("subscriber %d period %s: expired", sub.id, claim.period)
        return ledger.Outcome(
            claim, DeliveryStatus.EXPIRED, f"not delivered within {run.max_age} of its send "
            f"time; last reply: {claim.reply or 'none'}"
        )  # fmt: skip
    assert sub.id is not None
    votes = feedback.split_votes(
        (run.by_id.get(pid) or run.services.store.paper(pid), vote)
        for pid, vote in history.votes.get(sub.id, ())
    )
    matches = run.matches(sub, prefs[sub.id], since, history.sent.get(sub.id, ()), votes)
    if not matches and run.now < due_at + run.wait:
        at = min(run.now + WAIT_STEP, due_at + run.wait)
        return ledger.Outcome(
            claim, DeliveryStatus.WAITING, "no match yet; waiting for the day's papers", at=at
        )
    if not matches and not sub.empty_note:
        metrics.empty.inc()
        log.info("subscriber %d period %s: nothing matched", sub.id, claim.period)
        return ledger.Outcome(claim, DeliveryStatus.EMPTY, "no paper matched")
    # The same id on every attempt, so a resend after a crash is recognisable.
    message_id = claim.message_id or (
        f"<digest.{claim.period:%Y%m%d}.{claim.id}@{_domain(run.services)}>"
    )
    return _Digest(claim, sub, claim.period, matches, message_id)


async def _deliver(run: _Run, digest: _Digest, limit: asyncio.Semaphore) -> ledger.Outcome | None:
    """Render and send one digest; the outcome to record, or None when it was not started
    (shutting down, or too little of the claim's lease left to start a send in)."""
    services, stages, metrics = run.services, run.stages, run.services.metrics
    claim, sub, period = digest.claim, digest.sub, digest.period
    assert sub.id is not None
    delivery_cfg = services.config.delivery
    async with limit:
        # A send starts only in the first half of its lease: a claim is never used near the
        # time another worker may take it over (a relay slow enough to hold a chunk that
        # long has the rest of the chunk claimed again, with a new lease).
        if run.stop.is_set() or run.clock() > claim.lease_until - run.lease / 2:
            return None
        started = time.perf_counter()
        try:
            with stages.timing("render"):
                parts = services.renderer.render_parts(
                    digest_input(
                        services, sub, period, digest.matches, digest.message_id, run.now, claim.id
                    )
                )
            with stages.timing("serialise"):
                data = mime(parts)
            reply = await services.mailer.send(
                data, sender=envelope_sender(services, sub.id, claim.id), recipients=[sub.email]
            )
        except TemporaryDeliveryError as exc:
            base = delivery_cfg.retry_base_seconds * 2 ** min(claim.attempts, 20)
            delay = min(base, delivery_cfg.retry_max_seconds) * random.uniform(0.8, 1.2)
            metrics.retried.labels(str(exc.code or "connection")).inc()
            log.warning(
                "subscriber %d period %s: temporary failure: %s", sub.id, period, _loggable(exc)
            )
            return ledger.Outcome(
                claim, DeliveryStatus.RETRY, exc.reply or str(exc),
                at=run.clock() + timedelta(seconds=delay), message_id=digest.message_id,
            )  # fmt: skip
        except PermanentDeliveryError as exc:
            metrics.failed.labels("bounce").inc()
            return ledger.Outcome(
                claim, DeliveryStatus.FAILED, exc.reply or str(exc), code=exc.code or 550,
                message_id=digest.message_id,
            )  # fmt: skip
        except DigestdError as exc:
            metrics.failed.labels("error").inc()
            log.error("subscriber %d period %s: %s", sub.id, period, _loggable(exc))
            return ledger.Outcome(claim, DeliveryStatus.FAILED, str(exc))
        except Exception:
            # Top of a job: an unexpected error leaves the digest for a later attempt.
            log.exception("subscriber %d period %s: unexpected error", sub.id, period)
            metrics.retried.labels("internal").inc()
            return ledger.Outcome(
                claim, DeliveryStatus.RETRY, "internal error", at=run.now + timedelta(minutes=15)
            )
    metrics.sent.inc()
    metrics.latency.observe(time.perf_counter() - started)
    log.debug(
        "subscriber %d period %s: sent %d papers: %s",
        sub.id, period, len(digest.matches), _loggable(reply),
    )  # fmt: skip
    return ledger.Outcome(
        claim, DeliveryStatus.SENT, reply, message_id=digest.message_id,
        papers=[(m.paper.id, m.score) for m in digest.matches],
    )  # fmt: skip


def _count_bounce(run: _Run, outcome: ledger.Outcome) -> None:
    """A relay refused the digest for good: count it against the subscriber."""
    delivery_cfg = run.services.config.delivery
    reply = outcome.reply
    sid, period = outcome.claim.subscriber_id, outcome.claim.period
    no_such_user = " 5.1." in f" {reply}"
    bounced = run.services.store.record_bounce(
        sid,
        hard=True,
        reason=reply,
        limit=delivery_cfg.bounce_limit_no_such_user if no_such_user else delivery_cfg.bounce_limit,
    )
    log.warning(
        "subscriber %d period %s: bounced%s: %s",
        sid, period, " (now marked bounced)" if bounced else "", _loggable(reply),
    )  # fmt: skip


#: digests claimed and matched together: one transaction claims them all
CHUNK = 100
#: the first chunk of a run (see _chunk_sizes)
FIRST_CHUNK = 10
#: seconds of matching before the event loop gets a turn (the web front shares it)
YIELD_EVERY = 0.02
#: sent digests recorded together (one transaction); see _deliver_chunk
FLUSH = 16

_COUNTED = {
    DeliveryStatus.SENT: "sent",
    DeliveryStatus.EMPTY: "empty",
    DeliveryStatus.WAITING: "waiting",
    DeliveryStatus.RETRY: "retry",
    DeliveryStatus.FAILED: "failed",
    DeliveryStatus.EXPIRED: "expired",
}


def preview(
    services: Services, email: str, *, now: datetime | None = None
) -> tuple[list[Match], EmailMessage | None]:
    """The digest ``email`` would receive now, rendered but neither sent nor recorded."""
    matches, digest = next(previews(services, [email], now=now))
    return matches, None if digest is None else services.renderer.render(digest)


def previews(
    services: Services, emails: Iterable[str], *, now: datetime | None = None
) -> Iterator[tuple[list[Match], DigestInput | None]]:
    """For each of ``emails``, what its digest would hold now (None: nothing matched), ready
    to render; nothing is sent or recorded. The papers' window is loaded once for all."""
    now = now or datetime.now(UTC)
    run = _Run(services, now, *_Run.load(services, now))
    for email in emails:
        sub = services.store.subscriber(email)
        assert sub.id is not None
        prefs = services.store.preferences([sub.id])[sub.id]
        matches = run.matches_for(sub, prefs)
        if not matches:
            yield [], None
            continue
        message_id = f"<preview.{now:%Y%m%d%H%M%S}.{sub.id}@{_domain(services)}>"
        yield matches, digest_input(services, sub, now.date(), matches, message_id, now)


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
    return match(papers, profile), len(papers)


def _preview_window(services: Services) -> timedelta:
    # The window a new subscriber's first digest draws from, at least a day.
    return timedelta(days=max(1, services.config.digest.lookback))


def rank_papers(
    papers: Sequence[Paper], profile: Profile, *, corpus: Corpus | None = None
) -> list[Match]:
    """What ``digestd rank`` prints: the matcher's selection for ``profile``."""
    return match(papers, profile, corpus=corpus)
