"""One send instance of the benchmark: a process that runs digestd's send path for one period.

    python -m bench.sendkit.worker --sample CONFIG NOW SAMPLE_FILE
    python -m bench.sendkit.worker CONFIG PERIOD NOW [--cold]

Builds ``Services`` from CONFIG as ``digestd send`` does (and, if the send will be split, has
the send processes' forkserver import, as the daemon does when it starts), reads the
subscribers' topics ahead as the daemon does after each fetch (`workers.read_ahead`; not
with ``--cold``: the send then reads them, as the first after a restart of an earlier
version did), prints one JSON line when ready,
waits for a line on stdin (so that several instances start sending together), runs
``pipeline.send_period(services, PERIOD, now=NOW)`` and prints one JSON line with the
summary, the wall and CPU seconds of the send (with those of the send processes it split the
send over, if it did: see digestd.workers), the stage times the summary carries and the peak
RSS of the process, of its largest send process (as each reported it) and of the forkserver.

With ``--sample``, it writes instead the digests of SAMPLE random subscribers, rendered as
the send is about to, to SAMPLE_FILE, for the bench's raw blast of messages like the ones
sent. The bench runs that as a process of its own before the send instances start: as a
child of an instance, its peak RSS would be taken for a send process's (a process's
RUSAGE_CHILDREN peak covers every child it waited for).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import multiprocessing
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from digestd import config as config_mod
from digestd import pipeline, workers
from digestd.models import Status, Subscriber
from digestd.services import Services

#: A random sample of the digests. Their sizes vary about fourfold (one paper to ten): the
#: mean of 512 strayed up to 8% from the send's, that of 2,048 is about twice as close.
SAMPLE = 2048


def sample_digests(config_path: Path, now: datetime, size: int, out: Path) -> None:
    """Render the digests of ``size`` random subscribers as the send is about to, for the
    blast (sampled before the send: after it, their papers count as sent). Run in a process
    of its own, so that what it loads does not count in the send instance's memory."""
    config = config_mod.load(config_path)
    services = Services.build(config)
    try:
        with services.store.session() as s:
            query = (
                sa.select(Subscriber.email)
                .where(Subscriber.status == Status.ACTIVE)
                .order_by(sa.func.random())
                .limit(2 * size)  # a quarter of the digests are empty: room to spare
            )
            emails = list(s.execute(query).scalars())
        sender = pipeline.envelope_sender(services)
        kept = []
        digests = pipeline.previews(services, emails, now=now)
        for email, (_, digest) in zip(emails, digests, strict=True):
            if digest is not None:
                data = services.renderer.render_bytes(digest)  # as the send puts it on the wire
                kept.append({"sender": sender, "recipients": [email],
                             "data": base64.b64encode(data).decode()})  # fmt: skip
            if len(kept) == size:
                break
    finally:
        services.store.close()
    out.write_text(json.dumps(kept), encoding="utf-8")


def rss_kib() -> int:
    """The current resident set size, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _jsonable(stages: Any) -> dict[str, float]:
    if dataclasses.is_dataclass(stages) and not isinstance(stages, type):
        stages = dataclasses.asdict(stages)
    if not isinstance(stages, dict):
        return {}
    return {str(k): float(v) for k, v in stages.items() if isinstance(v, int | float)}


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


@dataclass
class Sent:
    summary: Any
    wall: float
    #: CPU seconds of this process and of the send processes it split the send over
    cpu: float
    #: the largest peak RSS of those send processes, KiB (0: the send was not split)
    children_peak_rss_kib: int
    #: the peak RSS of the forkserver they were forked from, KiB (0: none)
    forkserver_peak_rss_kib: int
    #: sampled peaks of this process and its descendants together (TreeMemory), KiB
    tree_peak_pss_kib: int
    tree_peak_rss_kib: int
    #: CPU seconds the sampling of those peaks took (in this process; not in ``cpu``)
    sampling_cpu: float
    #: reading ahead before the send (None: not done): wall seconds, CPU seconds and peak
    #: RSS (KiB) of its process, readings worked out and bytes kept, peak PSS of all
    ahead: dict[str, float] | None


def _forkserver_up(services: Services) -> None:
    """Start the send processes' forkserver, if the send will be split, and wait until it has
    imported what they run, as a daemon's has long before its first big send (and
    ``digestd send``'s, while it fetches and counts): one trivial process forked from it
    returns only then."""
    config = services.config
    active = services.store.subscriber_counts().get(Status.ACTIVE.value, 0)
    workers.warm(config, active)
    split = active > workers.SPLIT_ABOVE and workers.processes(config) > 1
    if split and "forkserver" in multiprocessing.get_all_start_methods():
        probe = multiprocessing.get_context("forkserver").Process(target=os.getpid)
        probe.start()
        probe.join()


class TreeMemory:
    """The memory of this process and all its descendants (forkserver, send processes),
    sampled every ``every`` seconds in a thread: the peak of their summed PSS (a page that n
    of them share counts 1/n in each) and of their summed RSS (counted in each).

    It runs beside the timed send and takes CPU from it: a sample reads every process's stat
    to find the tree and each member's smaps_rollup, whose cost grows with its memory (about
    10 ms for the 500 MiB of a split send). ``cpu_seconds`` is what it took, for the caller
    to leave out of the send's account. Every second rather than every half: the peak of a
    big send is a plateau of minutes, and sampling twice as often took 2% of a core."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.peak_pss_kib = self.peak_rss_kib = 0
        self.cpu_seconds = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        started = time.thread_time()
        while True:
            pss = rss = 0
            for pid in _tree(os.getpid()):
                try:
                    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                        text = f.read()
                except OSError:  # it ended meanwhile
                    continue
                for line in text.splitlines():
                    if line.startswith(b"Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith(b"Rss:"):
                        rss += int(line.split()[1])
            self.peak_pss_kib = max(self.peak_pss_kib, pss)
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.cpu_seconds = time.thread_time() - started
            if self._done.wait(self.every):
                return


def _tree(root: int) -> list[int]:
    """``root`` and every process descending from it (from each process's stat: this kernel
    has no /proc/PID/task/TID/children; plain reads, no Path or glob, as this runs during the
    timed send)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                parent = int(f.read().rsplit(b")", 1)[1].split(None, 2)[1])
        except (OSError, IndexError, ValueError):  # it ended meanwhile
            continue
        children.setdefault(parent, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _forkserver_peak_kib() -> int:
    """The peak RSS of this process's forkserver child (0: it has none)."""
    me = str(os.getpid())
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
            cmdline = (status.parent / "cmdline").read_bytes()
        except OSError:  # it ended meanwhile
            continue
        if fields.get("PPid", "").strip() == me and b"forkserver" in cmdline:
            return int(fields["VmHWM"].split()[0])
    return 0


async def run(config_path: Path, period: date, now: datetime, *, cold: bool = False) -> Sent:
    """Build the services, read ahead (unless ``cold``), say ready, wait for the go, and send,
    timing the send alone."""
    config = config_mod.load(config_path)
    services = Services.build(config)
    _forkserver_up(services)
    ahead = None if cold else await _read_ahead(services, now)
    _say(ready=True, pid=os.getpid(), rss_kib=rss_kib())
    await asyncio.to_thread(sys.stdin.readline)
    cpu, start = time.process_time(), time.perf_counter()
    try:
        with TreeMemory() as memory:
            summary = await pipeline.send_period(services, period, now=now)
    finally:
        await services.aclose()
    wall = time.perf_counter() - start
    # the send processes' own account (they are the forkserver's children, not this one's);
    # not the memory sampling's, which is the bench's, in a thread of this process
    cpu = time.process_time() - cpu - memory.cpu_seconds
    cpu += sum(seconds for seconds, _ in summary.processes)
    children_rss = max((kib for _, kib in summary.processes), default=0)
    return Sent(
        summary, wall, cpu, children_rss, _forkserver_peak_kib(),
        memory.peak_pss_kib, memory.peak_rss_kib, memory.cpu_seconds, ahead,
    )  # fmt: skip


async def _read_ahead(services: Services, now: datetime) -> dict[str, float] | None:
    """What the daemon does after a fetch, timed: `workers.read_ahead`."""
    start = time.perf_counter()
    with TreeMemory() as memory:
        done = await workers.read_ahead(services, now, asyncio.Event())
    if done is None:
        return None
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": done.cpu,
        "peak_rss_kib": done.peak_rss_kib,
        "readings": done.readings,
        "kept_bytes": done.kept,
        "tree_peak_pss_kib": memory.peak_pss_kib,
    }


def main() -> None:
    # What `digestd send` logs by default: warnings only, not a line per digest.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiosmtplib").setLevel(logging.WARNING)
    if sys.argv[1] == "--sample":
        config_path, now, sample_file = sys.argv[2:5]
        sample_digests(Path(config_path), datetime.fromisoformat(now), SAMPLE, Path(sample_file))
        return
    config_path, period, now = sys.argv[1:4]
    when, cold = datetime.fromisoformat(now), "--cold" in sys.argv[4:]
    sent = asyncio.run(run(Path(config_path), date.fromisoformat(period), when, cold=cold))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = sent.summary
    counts = {
        f.name: getattr(summary, f.name)
        for f in dataclasses.fields(summary)
        if isinstance(getattr(summary, f.name), int)
    }
    stages = _jsonable(getattr(summary, "stages", {}))
    _say(
        pid=os.getpid(),
        wall=sent.wall,
        cpu=sent.cpu,
        counts=counts,
        stages=stages,
        peak_rss_kib=peak,
        children_peak_rss_kib=sent.children_peak_rss_kib,
        forkserver_peak_rss_kib=sent.forkserver_peak_rss_kib,
        tree_peak_pss_kib=sent.tree_peak_pss_kib,
        tree_peak_rss_kib=sent.tree_peak_rss_kib,
        sampling_cpu=sent.sampling_cpu,
        read_ahead=sent.ahead,
    )


if __name__ == "__main__":
    main()
