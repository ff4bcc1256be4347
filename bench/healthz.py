"""Whether the web front stays responsive while the daemon sends: /healthz latency during a send.

    .venv/bin/python bench/healthz.py                       # 100,000 subscribers
    .venv/bin/python bench/healthz.py --subscribers 10000 --json out.json
    .venv/bin/python bench/healthz.py -n 10000 --keep-alive --py-spy send.raw

The target: "a request to /healthz answers within 200 ms while 100k digests go out".

1. Writes N subscribers as bench/send.py does (same profiles, seed, time zones, frequencies),
   except that each one's send time is the current minute in their zone (and a weekly
   subscriber's day is today there): everyone is due, for their local date, the moment the
   daemon starts. Imports them with `digestd import`.
2. Stores the real days of papers as bench/send.py does, first seen relative to the real now
   (the daemon uses the real clock): the busiest `--window-days` in the digest window.
3. Starts the aiosmtpd sink in its own process, then the real `digestd run` as a subprocess:
   the bench's config plus a free `[web] port`, `[schedule] tick_seconds = 1`,
   `wait_minutes = 0` (an unmatched digest is recorded empty at once, not left waiting for
   the day's papers), a yearly `fetch_cron`, and a source that is an empty folder, so that
   the fetch the daemon makes at start stores nothing and costs nothing.
4. From the moment /healthz first answers, polls `GET /healthz` every `--interval` (50 ms,
   start to start; a poll that overruns is followed at once by the next) with httpx and a
   2 s timeout, over a new connection each time (default, as a health probe does:
   `Connection: close`) or one keep-alive connection (`--keep-alive`; see the note),
   until the ledger (read every 0.5 s from the bench) has every subscriber's digest done
   (sent or empty), then stops the daemon with SIGTERM.

Prints digests sent, the send time (/healthz first answering → the ledger complete, so it
includes the start-up and the send's loading of the papers), digests/s, the number of polls,
latency p50/p90/p99/max, how many polls took over 200 ms (timeouts and errors count as over),
the slowest polls with when they happened, and the verdict: the target is met when every
poll answered within 200 ms (the share over 200 ms is printed too). `--json PATH` writes the
figures and every poll. `--py-spy FILE` records the daemon with py-spy (raw format) during
the send, to find what holds the event loop.

Note: `--keep-alive` reuses one connection, as a reverse proxy does; it showed that the web
front lacked TCP_NODELAY (every poll but the first waited ~40 ms for Nagle and a delayed ACK),
fixed in `digestd run` since.

Everything runs on one machine: the bench's poller competes for the CPUs with the daemon, the
sink and the database, so run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sendkit import figures, profiles, servers, setup  # noqa: E402

TARGET_MS = 200.0
TIMEOUT_S = 2.0
#: ledger statuses that end a digest for the period
DONE = ("sent", "empty")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--subscribers", "-n", type=int, default=100_000, help="N (default 100,000)")
    p.add_argument(
        "--database",
        help="PostgreSQL URL naming a database the bench creates and "
        "drops (default: a SQLite file in the work folder)",
    )
    p.add_argument("--pool-size", type=int, default=8, help="[smtp] pool_size (8)")
    p.add_argument("--window-days", type=int, default=2, help="[digest] lookback, days of news (2)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between polls (0.05)")
    p.add_argument(
        "--keep-alive",
        action="store_true",
        help="poll over one keep-alive connection (default: a new connection each poll)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=7200.0,
        help="give up if the send has not finished after this many seconds (7200)",
    )
    p.add_argument("--py-spy", type=Path, help="record the daemon with py-spy into this file")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the figures to this file")
    p.add_argument("--workdir", type=Path, help="work folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work folder and database")
    args = p.parse_args(argv)
    if args.subscribers < 1 or args.window_days < 1 or args.interval <= 0:
        p.error("--subscribers and --window-days must be at least 1, --interval positive")
    return args


# -- subscribers due now ----------------------------------------------------------------------


def due_now(record: dict[str, Any], now: datetime) -> dict[str, Any]:
    """``record`` with its send time set to the current minute in its zone (so its digest is
    due, for its local date, as soon as the daemon looks) and its digest day made today."""
    local = now.astimezone(ZoneInfo(record["timezone"]))
    record["send_time"] = f"{local:%H:%M}"
    if record.get("frequency") == "weekly":
        record["weekly_day"] = local.weekday()
    elif record.get("frequency") == "weekdays" and local.weekday() >= 5:
        del record["frequency"]  # a weekend there: daily instead, so it is due too
    return record


# -- the daemon -------------------------------------------------------------------------------


def daemon_env() -> dict[str, str]:
    """The bench's environment without what would reconfigure or notify for the daemon."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGESTD_")}
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        env.pop(k, None)
    return env


@contextlib.contextmanager
def daemon(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`digestd --config CONFIG run`, its output to ``log``; killed if still running after."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*setup.digestd_command(), "--config", str(config), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=daemon_env(),
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def stop(proc: subprocess.Popen[bytes], timeout: float = 120.0) -> tuple[int | None, float]:
    """SIGTERM; (exit status or None if it had to be killed, seconds it took)."""
    started = time.perf_counter()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        rc: int | None = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)
        rc = None
    return rc, time.perf_counter() - started


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


# -- the ledger, watched from a thread ---------------------------------------------------------


@dataclass
class Ledger:
    """Delivery rows by status, read every ``every`` seconds until every digest is done."""

    url: str
    expected: int
    every: float = 0.5
    counts: dict[str, int] = field(default_factory=dict)
    #: perf_counter() when the reader first saw every digest done
    done_at: float | None = None
    #: perf_counter() when the reader first saw a delivery row (the first claim)
    first_row_at: float | None = None
    error: BaseException | None = None
    _quit: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        engine = sa.create_engine(self.url)
        query = sa.text("SELECT status, count(*) FROM deliveries GROUP BY status")
        try:
            while not self._quit.is_set():
                with engine.connect() as conn:
                    counts = {str(s): int(n) for s, n in conn.execute(query)}
                seen = time.perf_counter()
                self.counts = counts
                if counts and self.first_row_at is None:
                    self.first_row_at = seen
                if sum(counts.get(s, 0) for s in DONE) >= self.expected:
                    self.done_at = seen
                    return
                self._quit.wait(self.every)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            engine.dispose()

    def quit(self) -> None:
        self._quit.set()


# -- the poller -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Poll:
    #: perf_counter() when the request started
    at: float
    #: seconds to the whole response (TIMEOUT_S for a timeout)
    latency: float
    #: HTTP status, or 0 for a timeout or a connection error
    status: int
    error: str = ""


def get(client: httpx.Client, url: str) -> Poll:
    started = time.perf_counter()
    try:
        response = client.get(url)
        return Poll(started, time.perf_counter() - started, response.status_code)
    except httpx.TimeoutException as exc:
        return Poll(started, time.perf_counter() - started, 0, type(exc).__name__)
    except httpx.TransportError as exc:
        return Poll(started, time.perf_counter() - started, 0, type(exc).__name__)


def wait_healthy(
    client: httpx.Client, url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> float:
    """perf_counter() when /healthz first answered 200."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"digestd run exited ({proc.returncode}):\n{tail(log)}")
        poll = get(client, url)
        if poll.status == 200:
            return poll.at + poll.latency
        time.sleep(0.05)
    raise SystemExit(f"digestd run did not serve /healthz within {timeout:g} s:\n{tail(log)}")


def poll_until_done(
    client: httpx.Client,
    url: str,
    interval: float,
    ledger: Ledger,
    proc: subprocess.Popen[bytes],
    deadline: float,
) -> list[Poll]:
    """GET ``url`` every ``interval`` seconds (start to start) until the ledger is done."""
    polls: list[Poll] = []
    due = time.perf_counter()
    while ledger.done_at is None:
        if ledger.error is not None:
            raise SystemExit(f"reading the ledger failed: {ledger.error!r}")
        if proc.poll() is not None:
            raise SystemExit(f"digestd run exited ({proc.returncode}) before the send ended")
        if time.perf_counter() > deadline:
            raise SystemExit(f"the send did not finish in time; ledger: {ledger.counts}")
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        polls.append(get(client, url))
        due = max(due + interval, polls[-1].at)  # an overrun poll is followed at once
    return polls


# -- figures ----------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return math.nan
    return values[max(0, math.ceil(share * len(values)) - 1)]


def poll_figures(polls: list[Poll], ready: float) -> dict[str, Any]:
    ms = sorted(1000 * p.latency for p in polls)
    over = [p for p in polls if p.status != 200 or 1000 * p.latency > TARGET_MS]
    slowest = sorted(polls, key=lambda p: -p.latency)[:10]
    return {
        "count": len(polls),
        "p50_ms": percentile(ms, 0.50),
        "p90_ms": percentile(ms, 0.90),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": ms[-1] if ms else math.nan,
        "mean_ms": sum(ms) / len(ms) if ms else math.nan,
        "over_target": len(over),
        "over_target_share": len(over) / len(polls) if polls else math.nan,
        "failed": sum(p.status != 200 for p in polls),
        "errors": sorted({p.error for p in polls if p.error}),
        "slowest": [
            {"at_s": p.at - ready, "ms": 1000 * p.latency, "status": p.status} for p in slowest
        ],
        "target_met": bool(polls) and not over,
    }


def report(r: dict[str, Any]) -> str:
    s, p, m = r["send"], r["polls"], r["machine"]
    c = s["ledger"]
    mode = "one keep-alive connection" if r["keep_alive"] else "a new connection each"
    verdict = "met" if p["target_met"] else "NOT met"
    lines = [
        f"healthz bench: {r['subscribers']:,} subscribers all due at once, digestd run "
        f"(pool {r['pool_size']}), aiosmtpd sink, {r['database']}; {m['cpus']} CPUs, "
        f"Python {m['python']}",
        f"papers      {r['papers']['window']} in the digest window; "
        f"{r['papers']['stored']} stored; import {r['import']['added']:,} in "
        f"{r['import']['seconds']:.1f} s ({r['import']['refused']} refused)",
        f"send        {s['sent']:,} digests sent, {c.get('empty', 0):,} empty "
        f"({', '.join(f'{k} {v}' for k, v in sorted(c.items()))}) in {s['seconds']:.1f} s "
        f"(/healthz up → ledger complete; first claim at +{s['first_claim_s']:.1f} s)",
        f"            {s['digests_per_second']:.1f} digests/s; server received "
        f"{s['server_messages']:,}; daemon CPU {s['daemon_cpu_seconds']:.1f} s; machine "
        f"CPUs {100 * (s['machine_cpu_busy'] or 0):.0f}% busy",
        f"/healthz    {p['count']:,} polls every {1000 * r['interval']:.0f} ms over {mode}, "
        f"{TIMEOUT_S:g} s timeout; {p['failed']} failed"
        + (f" ({', '.join(p['errors'])})" if p["errors"] else ""),
        f"latency     p50 {p['p50_ms']:.1f} ms, p90 {p['p90_ms']:.1f} ms, "
        f"p99 {p['p99_ms']:.1f} ms, max {p['max_ms']:.1f} ms (mean {p['mean_ms']:.1f})",
        f"over 200 ms {p['over_target']:,} of {p['count']:,} polls "
        f"({100 * p['over_target_share']:.2f}%)",
        "slowest     "
        + ", ".join(f"{x['ms']:.0f} ms at +{x['at_s']:.1f} s" for x in p["slowest"][:5]),
        f"target      every /healthz within {TARGET_MS:.0f} ms during the send: {verdict}",
        f"stop        SIGTERM → exit {r['stop']['exit']} in {r['stop']['seconds']:.1f} s",
    ]
    return "\n".join(lines)


# -- the run ----------------------------------------------------------------------------------


def daemon_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    busy = figures.busy_before()
    now = datetime.now(UTC).replace(microsecond=0)
    days = profiles.load_days()
    plan = profiles.schedule(days, args.window_days, now)
    window = [d for at, d in plan if (now - at).days < args.window_days]
    vocab = profiles.Vocabulary.of(p for d in days for p in d.papers)
    out: dict[str, Any] = {
        "bench": "healthz",
        "subscribers": args.subscribers,
        "pool_size": args.pool_size,
        "interval": args.interval,
        "keep_alive": args.keep_alive,
        "target_ms": TARGET_MS,
        "papers": {"window": sum(len(d.papers) for d in window)},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "busy_before": busy,
        },
        "started": now.isoformat(),
    }
    jsonl = work / "subscribers.jsonl"
    rows = profiles.records(vocab, args.subscribers, now.date(), args.seed)
    profiles.write_jsonl(jsonl, (due_now(r, now) for r in rows))
    feed = work / "feed"  # the daemon's source: empty, so its start-up fetch stores nothing
    feed.mkdir(exist_ok=True)
    web_port = servers.free_port()
    with (
        setup.database(args.database, work, keep=args.keep) as url,
        contextlib.closing(servers.start("aiosmtpd")) as server,
    ):
        out["database"] = url.split(":", 1)[0].split("+", 1)[0]
        config = work / "digestd.toml"
        setup.write_config(
            config,
            url=url,
            port=server.port,
            pool_size=args.pool_size,
            lookback=args.window_days,
            papers=feed,
            extra={
                "web": {"port": web_port},
                "schedule": {"tick_seconds": 1, "wait_minutes": 0, "fetch_cron": "0 0 1 1 *"},
            },
        )
        out["papers"]["stored"] = setup.store_papers(url, plan)
        imported = setup.import_subscribers(config, jsonl)
        out["import"] = {
            "added": imported.added,
            "refused": imported.refused,
            "seconds": imported.seconds,
        }
        ledger = Ledger(url, imported.added)
        health = f"http://127.0.0.1:{web_port}/healthz"
        headers = {} if args.keep_alive else {"Connection": "close"}
        before = server.stats()
        log = work / "daemon.log"
        with (
            daemon(config, log) as proc,
            httpx.Client(timeout=TIMEOUT_S, headers=headers) as client,
        ):
            ready = wait_healthy(client, health, proc, log, timeout=120)
            cpu_before, machine_before = daemon_cpu(proc.pid), figures.cpu_times()
            reader = threading.Thread(target=ledger.run, name="ledger", daemon=True)
            reader.start()
            spy = start_py_spy(args.py_spy, proc.pid, work) if args.py_spy else None
            try:
                polls = poll_until_done(
                    client, health, args.interval, ledger, proc, ready + args.timeout
                )
            finally:
                ledger.quit()
                if spy is not None:
                    stop_py_spy(spy)
            assert ledger.done_at is not None
            cpu_used = daemon_cpu(proc.pid) - cpu_before
            machine_busy = figures.busy_share(machine_before, figures.cpu_times())
            rc, stop_seconds = stop(proc)
        after = server.stats()
        seconds = ledger.done_at - ready
        sent = ledger.counts.get("sent", 0)
        out["send"] = {
            "sent": sent,
            "ledger": ledger.counts,
            "seconds": seconds,
            "first_claim_s": (ledger.first_row_at or ready) - ready,
            "digests_per_second": sent / seconds,
            "server_messages": after.messages - before.messages,
            "daemon_cpu_seconds": cpu_used,
            "machine_cpu_busy": machine_busy,
        }
        out["polls"] = poll_figures(polls, ready)
        out["stop"] = {"exit": rc, "seconds": stop_seconds}
        out["poll_log"] = [[round(p.at - ready, 4), round(p.latency, 5), p.status] for p in polls]
        if "Traceback" in log.read_text(encoding="utf-8", errors="replace"):
            print(f"warning: the daemon logged a traceback:\n{tail(log)}", file=sys.stderr)
    return out


def start_py_spy(out: Path, pid: int, work: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["record", "--nonblocking", "--threads", "-p", str(pid), "-r", "200"]
    with (work / "py-spy.log").open("wb") as log:
        return subprocess.Popen(
            [str(exe), *args, "-f", "raw", "-o", str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def main() -> None:
    args = parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="digestd-bench-healthz-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = bench(args, work)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        elif args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
