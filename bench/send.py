"""How fast digestd sends one period's digests to N subscribers, end to end, against a real server.

    .venv/bin/python bench/send.py --subscribers 10000
    .venv/bin/python bench/send.py --subscribers 100000 --instances 2 \\
        --database postgresql+psycopg://postgres:postgres@127.0.0.1:5432/digestd_bench
    .venv/bin/python bench/send.py --subscribers 10000 --server postfix --json out.json

1. Writes N realistic subscribers as JSON Lines (1-4 topics drawn from the AI keywords of the
   real Daily Papers days in bench/relevance/data, weighted by frequency; 20% follow 1-2 of
   their authors, 15% exclude a keyword; 15 time zones; every one due for the period sent) and
   imports them with `digestd import`, as an operator would.
2. Stores the real days of papers: the busiest `--window-days` within the digest window
   (`[digest] lookback`), the others over the month before it, as a running daemon has them.
3. Starts the SMTP server in its own processes: an aiosmtpd server that counts and discards
   (default), or a private Postfix instance that discards (`--server postfix`, needs root).
4. Runs `pipeline.send_period` for one period in `--instances` worker processes at once on the
   same database (sharing the work through the ledger), each with `[smtp] pool_size`
   connections, and measures digests/s over the slowest worker, the time per stage the send
   summary reports, each worker's peak RSS and that of its largest send process, and the
   PSS and RSS of all its processes together, sampled every second (what the sampling
   itself takes is printed beside it and left out of the worker's CPU).
5. In the same run, as the reference: the raw rate of a blast of a sample of the very digests
   sent, pre-built, over as many aiosmtplib connections, to the same server.

Prints a table; `--json PATH` writes the figures (bench/plot_send.py plots several runs). The
target is an end-to-end rate of at least 70% of the raw blast rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from multiprocessing import get_context
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sendkit import blast, figures, profiles, servers, setup  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--subscribers", "-n", type=int, default=10_000, help="N (default 10,000)")
    p.add_argument("--instances", type=int, default=1, help="send processes at once (1)")
    p.add_argument(
        "--database",
        help="PostgreSQL URL naming a database the bench creates and "
        "drops (default: a SQLite file in the work folder)",
    )
    p.add_argument("--server", choices=("aiosmtpd", "postfix"), default="aiosmtpd")
    p.add_argument(
        "--pool-size",
        type=int,
        default=16,
        help="[smtp] pool_size (16: 8 per send process on 2 cores; the blast uses as many)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="[delivery] processes: each instance splits its send over this many (0: one per "
        "CPU core, the default; 1: no split)",
    )
    p.add_argument(
        "--window-days",
        type=int,
        default=2,
        help="days of papers a digest draws from, = [digest] lookback (2)",
    )
    p.add_argument("--blast-seconds", type=float, default=10.0)
    p.add_argument("--blast-messages", type=int, default=10_000)
    p.add_argument(
        "--cold",
        action="store_true",
        help="no reading ahead before the send: its processes read the topics themselves",
    )
    p.add_argument(
        "--semantic",
        metavar="MODEL",
        default="",
        help="[matching] semantic_model (the semantic extra): the papers are embedded "
        "before the send, as the daemon's fetches do",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the figures to this file")
    p.add_argument("--workdir", type=Path, help="work folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work folder and database")
    args = p.parse_args(argv)
    if args.subscribers < 1 or args.instances < 1 or args.window_days < 1:
        p.error("--subscribers, --instances and --window-days must be at least 1")
    return args


def run_workers(
    config: Path,
    instances: int,
    period: date,
    now: datetime,
    work: Path,
    before_go: Callable[[list[Path]], None],
    *,
    cold: bool = False,
) -> tuple[list[dict[str, Any]], float, float | None, list[Path]]:
    """Start the send workers, call ``before_go`` with their sample files once all are
    ready, let them go together, and collect what each reports."""
    samples = [work / f"sample-{i}.json" for i in range(instances)]
    logs = [work / f"worker-{i}.log" for i in range(instances)]
    procs: list[subprocess.Popen[str]] = []
    ok = False
    worker = [sys.executable, "-m", "bench.sendkit.worker"]
    for sample, log in zip(samples, logs, strict=True):
        with log.open("w") as err:
            done = subprocess.run(
                [*worker, "--sample", str(config), now.isoformat(), str(sample)],
                cwd=ROOT, stderr=err, check=False,
            )  # fmt: skip
        if done.returncode:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"rendering the blast's sample failed ({done.returncode}):\n{tail}")
    try:
        for log in logs:
            args = [str(config), period.isoformat(), now.isoformat(), *(["--cold"] * cold)]
            with log.open("a") as err:  # the child keeps its own copy of the descriptor
                procs.append(
                    subprocess.Popen(
                        [*worker, *args],
                        cwd=ROOT,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                    )
                )
        ready = [_line(p, log) for p, log in zip(procs, logs, strict=True)]
        before_go(samples)
        start, cpu = time.perf_counter(), figures.cpu_times()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.close()
        results = [_line(p, log) for p, log in zip(procs, logs, strict=True)]
        wall, busy = time.perf_counter() - start, figures.busy_share(cpu, figures.cpu_times())
        ok = True
    finally:
        for p in procs:
            if not ok and p.poll() is None:
                p.kill()
            p.wait(60)
            for stream in (p.stdin, p.stdout):
                if stream is not None:
                    stream.close()
    for r, before in zip(results, ready, strict=True):
        r["rss_before_kib"] = before["rss_kib"]
    return results, wall, busy, samples


def _line(proc: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(30)
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"send worker {proc.pid} exited ({proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(line)
    return result


def run_blast(port: int, sample: list[blast.Message], args: argparse.Namespace) -> dict[str, Any]:
    """The same messages over as many connections and processes as the send used."""
    ctx = get_context("spawn")
    go = blast.Go(ctx.Queue(), ctx.Event())
    results: Queue[blast.Result] = ctx.Queue()
    per_process = -(-args.blast_messages // args.instances)
    procs = [
        ctx.Process(
            target=blast.blast,
            args=(port, sample, args.pool_size, args.blast_seconds, per_process, go, results),
        )
        for _ in range(args.instances)
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            go.ready.get(timeout=120)
        go.start.set()
        done = [results.get(timeout=args.blast_seconds + 120) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    sent = sum(r.sent for r in done)
    seconds = max(r.ended for r in done) - min(r.began for r in done)
    return {
        "messages": sent,
        "failed": sum(r.failed for r in done),
        "seconds": seconds,
        "per_second": sent / seconds if seconds > 0 else 0.0,
        "connections": args.pool_size * args.instances,
        "sample": len(sample),
        "mean_bytes": sum(len(m.data) for m in sample) / max(1, len(sample)),
    }


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    busy = figures.busy_before()
    now = datetime.now(UTC).replace(microsecond=0)
    period = now.date()
    days = profiles.load_days()
    plan = profiles.schedule(days, args.window_days, now)
    window = [d for at, d in plan if (now - at).days < args.window_days]
    vocab = profiles.Vocabulary.of(p for d in days for p in d.papers)
    out: dict[str, Any] = {
        "bench": "send",
        "subscribers": args.subscribers,
        "instances": args.instances,
        "server": args.server,
        "pool_size": args.pool_size,
        "cold": args.cold,
        "processes": args.processes or os.cpu_count(),
        "period": period.isoformat(),
        "papers": {
            "window_days": {d.name: len(d.papers) for d in window},
            "window": sum(len(d.papers) for d in window),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "busy_before": busy,
        },
        "started": now.isoformat(),
    }
    jsonl = work / "subscribers.jsonl"
    t = time.perf_counter()
    tally = profiles.Tally()
    rows = profiles.records(vocab, args.subscribers, period, args.seed)
    profiles.write_jsonl(jsonl, map(tally.add, rows))
    out["profiles"] = tally.figures(vocab)
    out["profiles_seconds"] = time.perf_counter() - t
    with (
        setup.database(args.database, work, keep=args.keep) as url,
        contextlib.closing(servers.start(args.server)) as server,
    ):
        out["database"] = url.split(":", 1)[0].split("+", 1)[0]
        if out["database"] == "sqlite" and args.instances > 1:
            print(
                "warning: several instances on one SQLite file take turns at its write "
                "lock; use --database postgresql+psycopg://…",
                file=sys.stderr,
            )
        config = work / "digestd.toml"
        setup.write_config(
            config,
            url=url,
            port=server.port,
            pool_size=args.pool_size,
            lookback=args.window_days,
            papers=profiles.DATA,
            extra={
                "delivery": {"processes": args.processes},
                **({"matching": {"semantic_model": args.semantic}} if args.semantic else {}),
            },
        )
        out["papers"]["stored"] = setup.store_papers(url, plan, args.semantic)
        out["semantic_model"] = args.semantic
        imported = setup.import_subscribers(config, jsonl)
        out["import"] = {
            "added": imported.added,
            "refused": imported.refused,
            "seconds": imported.seconds,
            "per_second": imported.added / imported.seconds,
        }
        blasts: list[dict[str, Any]] = []

        def blast_now(files: list[Path]) -> None:
            if sample := blast.load_sample(files):
                start = server.stats()
                result = run_blast(server.port, sample, args)
                end = server.stats()
                result["server_cpu_seconds"] = (
                    None if end.cpu is None or start.cpu is None else end.cpu - start.cpu
                )
                blasts.append(result)

        stats: list[servers.Stats] = []

        def before_go(files: list[Path]) -> None:
            # The reference is measured just before the send (the workers are ready and idle)
            # and again just after it: this shared machine's speed drifts by 10-20% over
            # minutes, and the mean of the two brackets the send.
            blast_now(files)
            stats.append(server.stats())  # the send's server figures start here

        workers, wall, busy, sample_files = run_workers(
            config, args.instances, period, now, work, before_go, cold=args.cold
        )
        before, after = stats[0], server.stats()
        out["send"] = figures.send_figures(workers, wall)
        out["send"]["machine_cpu_busy"] = busy
        out["send"]["server"] = {
            "messages": after.messages - before.messages,
            "bytes": after.bytes - before.bytes,
            "cpu_seconds": None
            if after.cpu is None or before.cpu is None
            else after.cpu - before.cpu,
        }
        blast_now(sample_files)
        if blasts:
            out["blast"] = blast.mean(blasts)
            out["ratio"] = out["send"]["digests_per_second"] / out["blast"]["per_second"]
        out["target_ratio"] = figures.TARGET_RATIO
    return out


def main() -> None:
    args = parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="digestd-bench-send-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = bench(args, work)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        elif args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(figures.report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
