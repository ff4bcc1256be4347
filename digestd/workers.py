"""A big send split over processes, so that it uses every core.

One process sends a few hundred digests a second, all of it CPU in one event loop (matching,
templates, MIME, the SMTP client). A send of more than ``SPLIT_ABOVE`` digests is therefore
handed to ``[delivery] processes`` send processes, each taking one share of the subscribers
by id (``Share``) and running the same send path on the same database: the ledger's claims
still decide who sends what, as between instances, so a share a process did not finish
(it crashed, or the daemon stopped) is sent by the next tick's processes. The process that
split the send only waits for them; in the daemon, its event loop keeps serving the web.

The processes share the relay's limits: each gets its part of ``[smtp] pool_size`` and
``rate_limit``; a rate limit one process can keep up with is not split at all.

Starting them is cheap, as it has to be for a send of a few thousand digests to gain from the
split. They are forked from a *forkserver*: a process that has imported the send path and
done nothing else (no event loop, threads or sockets to inherit), started by `warm` when the
daemon starts or ``digestd send`` begins with a list big enough to split; spawning each from
scratch cost it about a second of imports. And they are handed the corpus (the window's
papers analysed, a quarter of a second of CPU for a month of papers), which the splitting
process builds once, or has kept since the last tick, instead of each building its own;
with it, the subscribers' topics read against the papers (most of a small send's matching):
read ahead by the daemon after each fetch (`read_ahead`), or worked out and handed back by
earlier split sends' processes, so that no split send reads the same topics again.

A send process runs uvloop's event loop where it is installed (the default install on Linux
and macOS): its loop and transports are C, and a process that does little but talk SMTP
spends about 3% less CPU on a digest than on asyncio's. The daemon's own loop, which also
serves the web front and the inbound LMTP listener, stays asyncio's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import resource
import signal
from dataclasses import dataclass
from datetime import date, datetime
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from digestd.config import Config
from digestd.metrics import SendTally
from digestd.models import Status
from digestd.store import Share

if TYPE_CHECKING:
    from digestd.matcher import Corpus
    from digestd.pipeline import Handed, SendSummary
    from digestd.services import Services

#: what a send process hands back: its summary, what it counted for /metrics, its CPU
#: seconds and peak RSS (KiB), and what it worked out on the corpus it was handed, pickled
#: in pieces (`pipeline.new_readings`)
Report = tuple["SendSummary", SendTally, tuple[float, int], list[bytes]]

log = logging.getLogger(__name__)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop a send process runs: uvloop's where installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:  # not on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


#: digests due at once above which a send is split (a process takes about a second to start)
SPLIT_ABOVE = 2000
#: digests a second one process keeps up with for sure: a lower rate limit is not split
PROCESS_RATE = 200.0
_LOG_FORMAT = "%(levelname)s %(name)s[%(processName)s]: %(message)s"
#: what a send process runs, imported once by the forkserver rather than by every process
PRELOAD = ["digestd.workers", "digestd.pipeline", "digestd.services", "uvloop"]  # if installed


@dataclass(frozen=True, slots=True)
class Job:
    """What each process sends: the due digests at ``now`` (the daemon's tick), or every
    digest of ``period`` (``digestd send``)."""

    now: datetime
    period: date | None = None


def processes(config: Config) -> int:
    """How many processes a big send is split over (1: it is not)."""
    n = config.delivery.processes or _cores()
    rate = config.smtp.rate_limit
    if rate:  # a relay's rate limit caps the send whatever the CPU
        n = min(n, math.ceil(rate / PROCESS_RATE))
    return max(1, n)


def _cores() -> int:
    """The cores this process may run on (a systemd CPUAffinity= or taskset counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _context() -> ForkServerContext | SpawnContext:
    """Forked from the forkserver where there is one (Linux, macOS), else spawned: either way
    nothing is inherited from the daemon (event loop, sockets, locks). Only pipes between
    them and the forkserver's AF_UNIX socket, no shared memory or semaphores, which a
    hardened unit may not provide."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def warm(config: Config, subscribers: int) -> None:
    """Start the forkserver now if a list of ``subscribers`` (active ones) is big enough to
    be split, so that its imports are done before the first big send. Returns at once: the
    server imports in its own process. A smaller list is spared the forkserver (about 80 MiB
    that would never fork); if it grows, the first split send starts it."""
    if subscribers > SPLIT_ABOVE and processes(config) > 1:
        context = _context()
        if context.get_start_method() == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()


def share_config(config: Config, n: int) -> Config:
    """``config`` for one of ``n`` send processes: its part of the connections and the rate."""
    smtp = dataclasses.replace(
        config.smtp,
        pool_size=max(1, math.ceil(config.smtp.pool_size / n)),
        rate_limit=config.smtp.rate_limit / n,
    )
    return dataclasses.replace(config, smtp=smtp)


async def split(services: Services, job: Job, n: int, stop: asyncio.Event) -> SendSummary:
    """Run ``job`` in ``n`` send processes, one share each; their summaries added up, and
    what they counted added to ``services.metrics``.

    ``stop`` asks them to finish their in-flight digests and take no new ones. A process
    that dies leaves its share to the next send (the ledger's leases bring back what it
    had claimed); the summary then counts only what the others did.
    """
    from digestd.pipeline import SendSummary, handed_corpus, keep_readings

    context = _context()
    child_config = share_config(services.config, n)
    source, corpus = await asyncio.to_thread(handed_corpus, services, job.now)
    level = logging.getLogger().getEffectiveLevel()
    started: list[tuple[BaseProcess, Connection, Connection]] = []
    try:
        for number in range(n):
            receive, result = context.Pipe(duplex=False)
            listen, halt = context.Pipe(duplex=False)
            process: BaseProcess = context.Process(
                target=_main,
                args=(child_config, job, Share(number, n), corpus, listen, result, level),
                name=f"send-{number + 1}of{n}",
                daemon=True,  # never outlives the daemon
            )
            started.append((process, receive, halt))
            await _start(process)
            result.close()  # the child holds the only writer: its exit means EOF here
            listen.close()  # and ours is the only writer of its halt pipe
        log.info("send split over %d processes", n)
        results = await _results(started, stop)
    except BaseException:
        # Cancelled (the daemon's shutdown grace ran out) or failed: the processes stop too;
        # what they had claimed comes back when their leases end.
        for process, _, _ in started:
            if process.pid is not None:  # started
                process.terminate()
        raise
    finally:
        for _, _, halt in started:
            halt.close()
    total = SendSummary()
    stages: dict[str, float] = {}
    usage: list[tuple[float, int]] = []
    kept = 0
    for (ended, _, _), report in zip(started, results, strict=True):
        if report is None:
            log.error(
                "send process %s exited with code %s before it finished; its share is sent "
                "by the next send",
                ended.name, ended.exitcode,
            )  # fmt: skip
            continue
        summary, tally, used, readings = report
        kept = keep_readings(services, source, readings)
        services.metrics.add(tally)
        total.add(summary)
        usage.append(used)
        for name, seconds in summary.stages.items():
            stages[name] = stages.get(name, 0.0) + seconds
    total.stages = stages
    total.processes = tuple(usage)
    if usage:
        log.info(
            "send processes: %.1f s of CPU, peak RSS %d MiB (largest); %d topic readings "
            "worked out, kept for the next send (%.1f MB in all)",
            sum(cpu for cpu, _ in usage), max(kib for _, kib in usage) // 1024,
            total.readings, kept / 1e6,
        )  # fmt: skip
    return total


@dataclass(frozen=True, slots=True)
class Ahead:
    """What `read_ahead` did: topic readings worked out, bytes of readings now kept for the
    send processes, and the CPU seconds and peak RSS (KiB) of its process."""

    readings: int
    kept: int
    cpu: float
    peak_rss_kib: int


async def read_ahead(
    services: Services, now: datetime, stop: asyncio.Event, *, split_above: int = SPLIT_ABOVE
) -> Ahead | None:
    """Read the topics the day's split sends will read, once, now (after a fetch): in one
    process, against the papers a digest at ``now`` can hold; what it read is kept as the
    send processes' readings are (`pipeline.keep_readings`) and handed to them.

    Without it the first split send after the papers change reads them, in every one of its
    processes (each reads the topics of its own share, and most topics are shared), before
    its first digests can go; with it they are read once, by one process, hours before most
    of the day's sends (a fetch comes before them). At most ``READ_AHEAD`` phrases, those most
    subscribers hold: a send reads a rarer one itself, once, in the process whose subscriber
    holds it. ``stop`` ends it early; nothing is lost but the time. None: not done (the list
    is not big enough to be split, it was stopped, or its process failed).
    """
    from digestd.pipeline import handed_corpus, keep_readings

    active = await asyncio.to_thread(services.store.subscriber_counts)
    if active.get(Status.ACTIVE.value, 0) <= split_above or processes(services.config) < 2:
        return None
    source, corpus = await asyncio.to_thread(handed_corpus, services, now)
    context = _context()
    receive, result = context.Pipe(duplex=False)
    level = logging.getLogger().getEffectiveLevel()
    process = context.Process(
        target=_read_main,
        args=(services.config, now, corpus, result, level),
        name="read-ahead",
        daemon=True,
    )
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await _start(process)
        result.close()
        waiting = asyncio.ensure_future(asyncio.to_thread(_result, process, receive))
        await asyncio.wait((waiting, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            process.terminate()  # it only reads: nothing is lost
        report: tuple[int, list[bytes], tuple[float, int]] | None = await waiting
    except BaseException:
        if process.pid is not None:  # started
            process.terminate()
        raise
    finally:
        stopping.cancel()
    if report is None:
        if not stop.is_set():
            log.error(
                "reading ahead failed (exit code %s): the sends read the topics themselves",
                process.exitcode,
            )
        return None
    count, pieces, (cpu, peak) = report
    ahead = Ahead(count, keep_readings(services, source, pieces), cpu, peak)
    log.info(
        "read ahead: %d topic readings worked out in %.1f s of CPU (%.1f MB kept)",
        count, cpu, ahead.kept / 1e6,
    )  # fmt: skip
    return ahead


#: phrases `read_ahead` reads at most: about 1 ms of CPU and 2 KB kept each
READ_AHEAD = 10_000


def _read_main(
    config: Config, now: datetime, corpus: Handed, result: Connection, level: int
) -> None:
    """The process of `read_ahead`: the corpus the parent pickled, the phrases the active
    subscribers hold read against it, and what that worked out sent back."""
    _child(level)
    from digestd.pipeline import new_readings, read_topics
    from digestd.services import Services

    adopted = _adopt(config, corpus)
    known = frozenset(adopted.memo)
    services = Services.build(config)
    try:
        phrases = services.store.common_phrases(READ_AHEAD)
        read_topics(services, now, phrases)
    finally:
        asyncio.run(services.aclose())
    count, pieces = new_readings(config, adopted, known)
    used = resource.getrusage(resource.RUSAGE_SELF)
    try:
        result.send((count, pieces, (used.ru_utime + used.ru_stime, used.ru_maxrss)))
    except BrokenPipeError:  # the parent is gone
        pass
    finally:
        result.close()


async def _start(process: BaseProcess) -> None:
    """``process.start()`` in a thread: it waits for the forkserver, which may still be
    importing (in a daemon just started, 0.3 s that the web front's event loop waited), and
    pickles the corpus to it. Cancelled meanwhile, it still waits for the start to end, so
    that the caller knows whether there is a process to stop."""
    starting = asyncio.ensure_future(asyncio.to_thread(process.start))
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await starting
        raise


async def _results(
    started: list[tuple[BaseProcess, Connection, Connection]], stop: asyncio.Event
) -> list[Report | None]:
    """Each process's report (None: it died first); ``stop`` is passed on to them."""
    halts = [halt for _, _, halt in started]
    relay = asyncio.create_task(_relay_stop(stop, halts))
    try:
        results = await asyncio.gather(*(asyncio.to_thread(_result, p, r) for p, r, _ in started))
    finally:
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay
    return results


async def _relay_stop(stop: asyncio.Event, halts: list[Connection]) -> None:
    await stop.wait()
    for halt in halts:
        with contextlib.suppress(OSError):  # that process has ended already
            halt.send("stop")


def _result(process: BaseProcess, receive: Connection) -> Any:
    """What ``process`` sent through ``receive`` (None: it died without a word)."""
    try:
        report = receive.recv()
    except EOFError:
        report = None
    finally:
        receive.close()
    process.join()
    return report


def _main(
    config: Config,
    job: Job,
    share: Share,
    corpus: Handed,
    halt: Connection,
    result: Connection,
    level: int,
) -> None:
    """A send process: one share of the job, with the corpus the parent pickled (`corpus`);
    stops early on a word (or EOF: the parent is gone) from ``halt``; its summary goes back
    through ``result``."""
    _child(level)
    from digestd.pipeline import new_readings

    adopted = _adopt(config, corpus)
    known = frozenset(adopted.memo)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        summary, tally = runner.run(_send(config, job, share, halt))
    # What this process read (topics against papers) goes back, so that the next split
    # send's processes do not read it again.
    summary.readings, readings = new_readings(config, adopted, known)
    used = resource.getrusage(resource.RUSAGE_SELF)
    usage = (used.ru_utime + used.ru_stime, used.ru_maxrss)
    report: Report = (summary, tally, usage, readings)
    try:
        result.send(report)
    except BrokenPipeError:  # the parent died: the ledger has what this process did
        log.warning("the process that started this send is gone; stopped after what was sent")
    finally:
        result.close()


def _adopt(config: Config, handed: Handed) -> Corpus:
    """The corpus handed to this process, adopted (`pipeline.adopt_corpus`), and the pickled
    pieces it came in let go: the process's arguments hold them until it ends otherwise (the
    readings alone are some megabytes)."""
    from digestd.pipeline import adopt_corpus

    corpus = adopt_corpus(config, handed)
    handed.docs.clear()
    handed.readings.clear()
    return corpus


def _child(level: int) -> None:
    """What every process started here does first: its signals and its logging."""
    # Ctrl-C reaches the whole process group: the parent decides (through ``halt``).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=level, format=stamp + _LOG_FORMAT)
    for noisy in ("alembic", "aiosmtplib", "httpx"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


async def _send(
    config: Config, job: Job, share: Share, halt: Connection
) -> tuple[SendSummary, SendTally]:
    from digestd import pipeline
    from digestd.services import Services

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    watcher = asyncio.create_task(_watch(halt, stop))
    try:
        async with Services.build(config) as services:
            if job.period is None:
                summary = await pipeline.send_due(services, now=job.now, stop=stop, share=share)
            else:
                summary = await pipeline.send_period(
                    services, job.period, now=job.now, stop=stop, share=share
                )
            return summary, services.metrics.tally()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _watch(halt: Connection, stop: asyncio.Event) -> None:
    """Stop when the parent says so, or when it is gone (its end of the pipe closed)."""
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(halt.fileno(), ready.set)
    try:
        await ready.wait()
    finally:
        loop.remove_reader(halt.fileno())
    stop.set()
