"""A big send split over real send processes, against a real SMTP server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from digestd import config as config_mod
from digestd import daemon as daemon_mod
from digestd import pipeline, workers
from digestd.daemon import Daemon
from digestd.matcher import Corpus
from digestd.matching import topics
from digestd.models import Delivery, DeliveryStatus, Status, Subscriber
from digestd.services import Services
from digestd.subscribers import make_input
from tests.conftest import POSTGRES
from tests.smtp_server import SmtpServer
from tests.test_pipeline import DAY1, NOW1, subscribe

TOPICS = ("world models", "agents", "reinforcement learning", "protein folding", "diffusion")
N = 60


@pytest.fixture
async def services(
    write_config: Callable[..., Path], smtp_server: SmtpServer
) -> AsyncIterator[Services]:
    path = write_config(smtp__host=smtp_server.host, smtp__port=smtp_server.port,
                        smtp__security="none", smtp__pool_size=4,
                        delivery__processes=2)  # fmt: skip
    async with Services.build(config_mod.load(path)) as s:
        for i in range(N):
            subscribe(s, f"reader{i}@example.org", TOPICS[i % len(TOPICS)], TOPICS[i % 3])
        await pipeline.fetch(s, DAY1, now=NOW1)
        yield s


def _rows(services: Services) -> list[tuple[Delivery, str]]:
    """Every ledger row with its subscriber's address."""
    with services.store.session() as s:
        query = sa.select(Delivery, Subscriber.email).join(Subscriber)
        return [(d, email) for d, email in s.execute(query)]


def _check_once_each(services: Services, smtp_server: SmtpServer) -> list[Delivery]:
    """Every digest the ledger calls sent arrived once; nothing else arrived."""
    received = Counter(r for m in smtp_server.handler.messages for r in m.rcpt_tos)
    assert set(received.values()) <= {1}
    rows = _rows(services)
    assert set(received) == {email for r, email in rows if r.status == DeliveryStatus.SENT}
    return [r for r, _ in rows]


def _previews(services: Services) -> dict[str, set[str]]:
    """What a preview in this process picks for each reader, by address: all previewed
    together (the window loaded once), and the first few one at a time, as `digestd preview`
    does, to the same picks."""
    emails = [f"reader{i}@example.org" for i in range(N)]
    together = pipeline.previews(services, emails, now=NOW1)
    picks = {
        email: {m.paper.id for m in matches}
        for email, (matches, _) in zip(emails, together, strict=True)
    }
    for email in emails[:5]:
        assert {m.paper.id for m in pipeline.preview(services, email, now=NOW1)[0]} == picks[email]
    return picks


def _check_sent_as_previewed(services: Services, expected: dict[str, set[str]]) -> None:
    """Each reader was sent exactly the papers its preview picked."""
    stored = {p.id for p, _ in services.store.papers_seen_since(NOW1 - timedelta(days=60))}
    for email, ids in expected.items():
        sub = services.store.subscriber(email)
        assert sub.id is not None
        assert services.store.sent_paper_ids(sub.id, stored) == ids


async def test_a_big_send_is_split_over_processes_and_sends_each_digest_once(
    services: Services, smtp_server: SmtpServer
) -> None:
    # What each reader would be sent, worked out here, with a corpus built in this process.
    expected = _previews(services)

    summary = await pipeline.send_period(services, DAY1, now=NOW1, split_above=20)

    rows = _check_once_each(services, smtp_server)
    assert len(rows) == N and summary.sent + summary.empty == N
    # The send processes, with the corpus this process handed them, picked the same papers.
    assert sum(map(bool, expected.values())) == summary.sent
    _check_sent_as_previewed(services, expected)
    # Each process reported what it cost.
    assert len(summary.processes) == 2
    assert all(cpu > 0 and rss_kib > 10_000 for cpu, rss_kib in summary.processes)
    assert summary.sent == len(smtp_server.handler.messages) > N / 2
    # Two processes shared the work, and the one that split it sent none itself.
    owners = {r.owner.rsplit(":", 1)[1] for r in rows if r.status == DeliveryStatus.SENT}
    assert len(owners) == 2 and str(os.getpid()) not in owners
    assert summary.stages["match"] > 0 and summary.stages["render"] > 0
    # What the processes counted is on this process's /metrics, as if it had sent them.
    sample = services.metrics.registry.get_sample_value
    assert sample("digestd_digests_sent_total") == summary.sent
    assert sample("digestd_digests_empty_total") == summary.empty
    assert sample("digestd_send_seconds_count") == summary.sent
    assert sample("digestd_send_seconds_bucket", {"le": "+Inf"}) == summary.sent
    assert 0 < sample("digestd_send_seconds_sum") < 60 * summary.sent  # type: ignore[operator]
    rendering = sample("digestd_send_stage_seconds_total", {"stage": "render"})
    assert rendering == pytest.approx(summary.stages["render"])
    # Nothing is left to send: a second split send finds everything done.
    again = await pipeline.send_period(services, DAY1, now=NOW1, split_above=20)
    assert (again.sent, again.failed) == (0, 0)
    assert len(smtp_server.handler.messages) == summary.sent


async def test_the_tick_splits_a_big_send_too(services: Services, smtp_server: SmtpServer) -> None:
    now = datetime(2026, 8, 14, 7, 5, tzinfo=UTC)  # just after everyone's 07:00 UTC send time
    summary = await pipeline.send_due(services, now=now, split_above=20)

    rows = _check_once_each(services, smtp_server)
    assert {r.period for r in rows} == {DAY1} and len(rows) == N
    assert summary.sent == len(smtp_server.handler.messages) > N / 2


async def test_a_small_send_stays_in_one_process(
    services: Services, smtp_server: SmtpServer
) -> None:
    summary = await pipeline.send_period(services, DAY1, now=NOW1)  # N is below SPLIT_ABOVE

    rows = _check_once_each(services, smtp_server)
    assert summary.sent == len(smtp_server.handler.messages)
    assert {r.owner.rsplit(":", 1)[1] for r in rows} == {str(os.getpid())}


async def test_a_stopped_split_send_is_finished_by_the_next_with_no_digest_twice(
    services: Services, smtp_server: SmtpServer
) -> None:
    stop = asyncio.Event()
    stop.set()  # as if the daemon were told to stop just as the send started
    first = await pipeline.send_period(services, DAY1, now=NOW1, stop=stop, split_above=20)
    assert first.sent < N

    later = NOW1 + timedelta(minutes=1)
    second = await pipeline.send_period(services, DAY1, now=later, split_above=20)

    rows = _check_once_each(services, smtp_server)
    assert len(rows) == N
    assert first.sent + second.sent == len(smtp_server.handler.messages)
    assert all(r.status in (DeliveryStatus.SENT, DeliveryStatus.EMPTY) for r in rows)


def test_the_corpus_handed_to_send_processes_is_theirs_while_the_papers_stay_the_same(
    services: Services,
) -> None:
    pipeline.preview(services, "reader1@example.org", now=NOW1)  # some readings to hand on
    built, handed = pipeline.handed_corpus(services, NOW1)
    assert built is pipeline._Run.load(services, NOW1)[1]  # what this process built and kept
    corpus = pipeline.adopt_corpus(services.config, handed)  # as a send process does
    assert corpus is not built and corpus == built  # size, rarity, acronyms, case
    assert list(corpus.docs) == list(built.docs) and corpus.postings == built.postings
    # and what was worked out on them (evidence as plain tuples, made evidence again as used)
    assert corpus.memo and corpus.memo == dict(topics.portable(built.memo.items()))

    papers, used = pipeline._Run.load(services, NOW1)
    assert used is corpus  # not analysed again
    assert all(p is corpus.docs[p.id].paper for p, _ in papers)

    # A paper stored since: the handed corpus is out of date, and the run builds its own.
    adopted = pipeline.adopt_corpus(services.config, handed)
    later = NOW1 + timedelta(hours=1)
    newer = dataclasses.replace(papers[0][0], id="2408.99999", title="A paper stored later")
    services.store.add_papers([newer], seen_at=later)
    papers, rebuilt = pipeline._Run.load(services, later)
    assert rebuilt is not corpus and "2408.99999" in rebuilt.docs
    assert len(papers) == corpus.size + 1
    # What that run reads belongs to another corpus: none of it goes back as the handed one's.
    pipeline.preview(services, "reader2@example.org", now=later)
    assert pipeline.new_readings(services.config, adopted, frozenset(adopted.memo)) == (0, [])


async def test_what_send_processes_read_is_kept_for_the_next_split_send(
    services: Services, smtp_server: SmtpServer
) -> None:
    first = await pipeline.send_period(services, DAY1, now=NOW1, split_above=20)

    # The processes read the subscribers' topics against the papers and handed that back:
    # this process keeps it with its corpus for the next split send, each reading the same
    # as one worked out here.
    assert first.sent > 0 and first.readings > 0
    kept, handed = pipeline.handed_corpus(services, NOW1)
    memo = pipeline.adopt_corpus(services.config, handed).memo
    fresh = Corpus.of(kept.docs[pid].paper for pid in kept.docs)
    evidence = {k: v for k, v in memo.items() if isinstance(k, tuple) and k[0] == "evidence"}
    assert len(evidence) > len(TOPICS)
    for (_, text, pid), found in evidence.items():
        expected = topics.evidence(fresh.docs[pid], topics.compile_topic(text, fresh), fresh)
        assert found == (expected.score, expected.why)  # handed as a plain tuple

    # The next split send (the next day's digests, from the same papers) is handed all of
    # it: its processes read nothing again.
    later = NOW1 + timedelta(days=1)
    second = await pipeline.send_period(services, DAY1 + timedelta(days=1), now=later,
                                        split_above=20)  # fmt: skip
    assert second.sent + second.empty == N and second.readings == 0
    _check_once_each(services, smtp_server)

    # Papers change: what was kept is dropped with the corpus it was worked out on.
    later = NOW1 + timedelta(hours=1)
    newer = dataclasses.replace(kept.docs[next(iter(kept.docs))].paper, id="2408.99999")
    services.store.add_papers([newer], seen_at=later)
    rebuilt, handed = pipeline.handed_corpus(services, later)
    assert rebuilt is not kept and not handed.readings


async def test_topics_read_ahead_are_all_the_next_split_send_reads(
    services: Services, smtp_server: SmtpServer
) -> None:
    # As the daemon after a fetch: the active subscribers' topics read once, in a process of
    # their own, and kept here, each reading the same as one worked out in this process.
    ahead = await workers.read_ahead(services, NOW1, asyncio.Event(), split_above=20)
    assert ahead is not None and ahead.readings > len(TOPICS) and ahead.kept > 0
    kept, handed = pipeline.handed_corpus(services, NOW1)
    memo = pipeline.adopt_corpus(services.config, handed).memo
    fresh = Corpus.of(kept.docs[pid].paper for pid in kept.docs)
    evidence = {k: v for k, v in memo.items() if isinstance(k, tuple) and k[0] == "evidence"}
    # (no paper of the day speaks of protein folding: nothing to read it against)
    assert {text for _, text, _ in evidence} == set(TOPICS) - {"protein folding"}
    for (_, text, pid), found in evidence.items():
        expected = topics.evidence(fresh.docs[pid], topics.compile_topic(text, fresh), fresh)
        assert found == (expected.score, expected.why)

    # The split send that follows is handed all of it: its processes read nothing, and send
    # what they would have sent reading it themselves.
    expected = _previews(services)
    summary = await pipeline.send_period(services, DAY1, now=NOW1, split_above=20)
    assert summary.sent + summary.empty == N and summary.readings == 0
    _check_once_each(services, smtp_server)
    _check_sent_as_previewed(services, expected)

    # Reading ahead again on the same papers finds nothing left to read.
    again = await workers.read_ahead(services, NOW1, asyncio.Event(), split_above=20)
    assert again is not None and again.readings == 0


async def test_reading_ahead_is_skipped_for_a_small_list_and_ends_on_a_stop(
    services: Services,
) -> None:
    # N subscribers are never split (the default threshold): nothing to read ahead for.
    assert await workers.read_ahead(services, NOW1, asyncio.Event()) is None
    # Stopped (the daemon is shutting down): its process ends at once, nothing is kept.
    stop = asyncio.Event()
    stop.set()
    assert await workers.read_ahead(services, NOW1, stop, split_above=20) is None
    _, handed = pipeline.handed_corpus(services, NOW1)
    assert not handed.readings


async def test_a_read_ahead_that_dies_costs_the_send_nothing_but_its_own_reading(
    services: Services, smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Its process killed mid-way (as the kernel's OOM killer would): the read-ahead says it
    # failed and keeps nothing; the split send that follows reads the topics itself and
    # sends every digest once, with the papers it would have sent anyway.
    async def kill_it() -> None:
        while True:
            for child in multiprocessing.active_children():
                if child.name == "read-ahead" and child.pid is not None:
                    os.kill(child.pid, signal.SIGKILL)
                    return
            await asyncio.sleep(0.002)

    killer = asyncio.create_task(kill_it())
    ahead = await workers.read_ahead(services, NOW1, asyncio.Event(), split_above=20)
    assert killer.done()
    assert ahead is None
    assert "reading ahead failed (exit code -9)" in caplog.text
    _, handed = pipeline.handed_corpus(services, NOW1)
    assert not handed.readings

    expected = _previews(services)
    summary = await pipeline.send_period(services, DAY1, now=NOW1, split_above=20)
    assert summary.sent + summary.empty == N and summary.failed == 0
    _check_once_each(services, smtp_server)
    _check_sent_as_previewed(services, expected)


async def test_reading_ahead_cancelled_at_any_moment_leaves_no_process_behind(
    services: Services,
) -> None:
    # The daemon's shutdown cancels what its grace did not let finish: whether that lands
    # while the corpus is pickled, while the process starts or while it reads, no process
    # may be left running. (multiprocessing.active_children() also reaps ended ones.)
    for delay in (0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4):
        task = asyncio.create_task(
            workers.read_ahead(services, NOW1, asyncio.Event(), split_above=20)
        )
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for _ in range(100):
            if not multiprocessing.active_children():
                break
            await asyncio.sleep(0.05)
        assert multiprocessing.active_children() == [], delay


@contextlib.asynccontextmanager
async def _split_list_daemon(
    write_config: Callable[..., Path], smtp_server: SmtpServer
) -> AsyncIterator[Daemon]:
    """A daemon, not running, whose list is just big enough to be split."""
    path = write_config(smtp__host=smtp_server.host, smtp__port=smtp_server.port,
                        smtp__security="none", delivery__processes=2)  # fmt: skip
    daemon = Daemon(config_mod.load(path), path)
    try:
        daemon.services.store.add_subscribers(
            [
                make_input(f"reader{i}@example.org", topics=[TOPICS[i % len(TOPICS)]])
                for i in range(workers.SPLIT_ABOVE + 1)
            ],
            status=Status.ACTIVE,
        )
        yield daemon
    finally:
        await daemon.services.aclose()


def _topics_kept(daemon: Daemon, now: datetime) -> set[str]:
    """The topics whose readings the daemon keeps for its next split send at ``now``."""
    _, handed = pipeline.handed_corpus(daemon.services, now)
    readings = pipeline.adopt_corpus(daemon.services.config, handed).memo
    return {k[1] for k in readings if isinstance(k, tuple) and k[0] == "evidence"}


async def test_the_daemon_reads_ahead_after_each_fetch(
    write_config: Callable[..., Path], smtp_server: SmtpServer
) -> None:
    # The daemon's fetch job reads the topics ahead and keeps the readings for the first
    # split send (no paper of the day speaks of protein folding).
    async with _split_list_daemon(write_config, smtp_server) as daemon:
        await daemon.fetch_job()
        assert daemon.state.last_fetch_ok is not None
        kept = _topics_kept(daemon, daemon.state.last_fetch_ok)
        assert kept == set(TOPICS) - {"protein folding"}


@pytest.mark.skipif(not POSTGRES, reason="several instances share PostgreSQL only")
async def test_an_instance_whose_fetch_is_skipped_reads_ahead_once_the_other_has_stored(
    write_config: Callable[..., Path], smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another instance holds the fetch lock: this one's fetch is skipped, and it reads the
    # topics ahead only once the other has stored its papers and let go, not at once against
    # the papers as they were (readings it would have dropped with that corpus).
    monkeypatch.setattr(daemon_mod, "FETCH_WAIT_STEP", 0.05)
    async with _split_list_daemon(write_config, smtp_server) as daemon:
        store = daemon.services.store
        with store.exclusive(pipeline.FETCH_LOCK) as mine:  # the other instance, fetching
            assert mine
            job = asyncio.create_task(daemon.fetch_job())
            await asyncio.sleep(0.5)
            assert not job.done()  # waiting for the other instance
            assert not daemon._busy.locked()  # and not keeping the sends waiting meanwhile
            now = datetime.now(UTC)
            papers = await daemon.services.sources[0].fetch(now.date())
            store.add_papers(papers, seen_at=now)
        await asyncio.wait_for(job, 60)
        corpus, _ = pipeline.handed_corpus(daemon.services, datetime.now(UTC))
        assert set(corpus.docs) == {p.id for p in papers}
        assert _topics_kept(daemon, datetime.now(UTC)) == set(TOPICS) - {"protein folding"}

        # The other instance's fetch outlasts FETCH_WAIT: the wait ends there, and the topics
        # are read against what it has stored by then, rather than the job waiting on it.
        monkeypatch.setattr(daemon_mod, "FETCH_WAIT", timedelta(seconds=0.3))
        extra = dataclasses.replace(papers[0], id="2612.00001")
        with store.exclusive(pipeline.FETCH_LOCK):
            store.add_papers([extra], seen_at=datetime.now(UTC))
            await asyncio.wait_for(daemon.fetch_job(), 10)
            corpus, _ = pipeline.handed_corpus(daemon.services, datetime.now(UTC))
            assert extra.id in corpus.docs
            assert _topics_kept(daemon, datetime.now(UTC)) == set(TOPICS) - {"protein folding"}

        # Stopping while it waits ends the job at once, without reading ahead.
        with store.exclusive(pipeline.FETCH_LOCK):
            job = asyncio.create_task(daemon.fetch_job())
            await asyncio.sleep(0.2)
            daemon.stop_sending.set()
            await asyncio.wait_for(job, 5)


def test_building_the_corpus_sets_off_no_garbage_collection(services: Services) -> None:
    # A full collection scans every object of the process holding the GIL: while the corpus
    # is built in a thread (read ahead, a split send), the web front's event loop would wait.
    # With each generation collected as soon as it may be, building it unpaused would start
    # thousands of collections (one per allocation, some full ones among them, as enough
    # objects are promoted); paused, only the few allocations before the pause takes hold can.
    started: Counter[int] = Counter()

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[info["generation"]] += 1

    pipeline._Run._corpora.pop(services.config.database_url, None)  # built anew
    threshold = gc.get_threshold()
    gc.set_threshold(1, 1, 1)
    gc.callbacks.append(seen)
    try:
        _, corpus = pipeline._Run.load(services, NOW1)
    finally:
        gc.callbacks.remove(seen)
        gc.set_threshold(*threshold)
        gc.unfreeze()
    assert len(corpus.docs) == 23
    assert sum(started.values()) <= 10, started


def test_the_collector_stays_paused_until_the_last_load_that_paused_it_ends() -> None:
    # Loads run in threads, several at once at times (a cancelled read-ahead's load goes on
    # in its thread while a send's starts): the first to end must not switch the collector
    # back on under one still building a corpus.
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with pipeline._COLLECTOR.paused():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with pipeline._COLLECTOR.paused():
            second_in.set()
            first_out.wait(5)
            seen.append(gc.isenabled())

    assert gc.isenabled()
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [False]  # still paused after the first ended
    assert gc.isenabled()  # and on again after the last


_FORKSERVERS = """
import os, sys, time
from pathlib import Path
from digestd import config, workers
workers.warm(config.load(Path(sys.argv[1])), int(sys.argv[2]))
time.sleep(0.2)
me = str(os.getpid())
found = 0
for stat in Path("/proc").glob("[0-9]*/stat"):
    try:
        ppid = stat.read_text().rsplit(")", 1)[1].split()[1]
        cmdline = (stat.parent / "cmdline").read_bytes()
    except (OSError, IndexError):
        continue
    found += ppid == me and b"forkserver" in cmdline
print(found)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize(
    ("subscribers", "forkservers"), [(workers.SPLIT_ABOVE, 0), (workers.SPLIT_ABOVE + 1, 1)]
)
def test_a_forkserver_is_started_ahead_only_for_a_list_big_enough_to_split(
    write_config: Callable[..., Path], subscribers: int, forkservers: int
) -> None:
    # A fresh interpreter, as the daemon starting: with 2 processes configured, a list of
    # 2,000 is never split and keeps no forkserver; one more and it is ready ahead.
    path = write_config(delivery__processes=2)
    run = subprocess.run(
        [sys.executable, "-c", _FORKSERVERS, str(path), str(subscribers)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert int(run.stdout) == forkservers


def test_processes_follow_the_config_and_the_rate_limit(
    write_config: Callable[..., Path],
) -> None:
    def n(**overrides: object) -> int:
        return workers.processes(config_mod.load(write_config(**overrides)))

    assert n(delivery__processes=3, smtp__rate_limit=0) == 3
    assert n(delivery__processes=0, smtp__rate_limit=0) == len(os.sched_getaffinity(0))
    # 20 digests a second is well within one process: splitting would only cost memory.
    assert n(delivery__processes=4, smtp__rate_limit=20) == 1
    assert n(delivery__processes=4, smtp__rate_limit=500) == 3
    shared = workers.share_config(
        config_mod.load(write_config(smtp__pool_size=5, smtp__rate_limit=500)), 2
    )
    assert (shared.smtp.pool_size, shared.smtp.rate_limit) == (3, 250.0)


async def test_a_send_process_that_dies_is_reported_and_the_split_send_returns(
    services: Services, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The processes are told of a database that cannot be opened: each fails as it starts.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("", encoding="utf-8")
    url = f"sqlite:///{blocked}/digestd.db"
    broken = dataclasses.replace(
        services, config=dataclasses.replace(services.config, database_url=url)
    )

    summary = await workers.split(broken, workers.Job(NOW1, DAY1), 2, asyncio.Event())

    assert (summary.sent, summary.empty, summary.failed) == (0, 0, 0)
    died = [r for r in caplog.records if "exited with code 1 before it finished" in r.message]
    assert len(died) == 2
