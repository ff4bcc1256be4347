"""Real processes for end-to-end tests: `digestd run`, the recording relay and the feed server
as subprocesses, the waits that poll them with a deadline, and the checks on what they did.

Shared by the fault tests (tests/test_faults.py) and the several-instances test
(tests/test_instances.py). Nothing here mocks digestd: a test talks to the daemon over HTTP
and SMTP, and reads the database it writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx

from digestd.config import toml_value
from digestd.models import Status
from digestd.store import Store
from digestd.subscribers import make_input
from tests.conftest import HF_DAYS

ROOT = Path(__file__).parent.parent
TOPIC = "world models"
POOL = 4
T = TypeVar("T")

# A small feed: five papers of 2026-08-14 that match TOPIC and two that do not (the fault
# tests are about delivery; a short feed keeps matching and rendering cheap), and the two
# matching papers of 2026-08-20 and one other, as the next day's news.
DAY1_IDS = (
    "2608.13049",
    "2608.13489",
    "2608.13552",
    "2608.13546",
    "2608.10538",
    "2608.06867",
    "2608.12149",
)
DAY2_IDS = ("2608.18746", "2608.18423", "2608.16590")


# -- helpers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], T],
    timeout: float,
    what: str,
    *,
    every: float = 0.05,
    details: Callable[[], str] = lambda: "",
) -> T:
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{details()}")
        time.sleep(every)


def noon_zone() -> str:
    """A fixed-offset IANA zone where it is now between 12:00 and 13:00."""
    offset = 12 - datetime.now(UTC).hour  # -11 … +12, all real Etc/GMT zones
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"  # Etc/GMT-3 is UTC+3


def local_today(tz: str) -> date:
    return datetime.now(ZoneInfo(tz)).date()


def emails(n: int, prefix: str = "reader") -> list[str]:
    # example.net: the From address is at example.org, so "@example.net" in a log is a leak.
    return [f"{prefix}{i:04d}@example.net" for i in range(n)]


def write_feed(path: Path, day: str, ids: tuple[str, ...]) -> Path:
    entries = json.loads((HF_DAYS / f"{day}.json").read_text(encoding="utf-8"))
    keep = [e for e in entries if e["paper"]["id"] in ids]
    assert len(keep) == len(ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keep), encoding="utf-8")
    return path


def ledger(db: Path, period: date | None = None) -> Counter[str]:
    """Delivery rows by status (of one period, or all)."""
    sql = "SELECT status, count(*) FROM deliveries"
    args: tuple[str, ...] = ()
    if period is not None:
        sql, args = sql + " WHERE period = ?", (period.isoformat(),)
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        return Counter(dict(conn.execute(sql + " GROUP BY status", args).fetchall()))


def ledger_rows(db: Path) -> list[tuple[str, str, str, int, str | None]]:
    """(email, period, status, attempts, message_id) of every delivery."""
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        return conn.execute(
            "SELECT s.email, d.period, d.status, d.attempts, d.message_id FROM deliveries d "
            "JOIN subscribers s ON s.id = d.subscriber_id ORDER BY s.email, d.period"
        ).fetchall()


def add_subscribers(db_url: str, addresses: list[str], tz: str, send_time: str = "00:00") -> None:
    """Through Store.add_subscribers, the batch path `digestd import` takes (the daemon then
    opens the same database)."""
    store = Store.open(db_url)
    try:
        batch = [
            make_input(address, topics=(TOPIC,), send_time=send_time, timezone=tz)
            for address in addresses
        ]
        assert store.add_subscribers(batch, status=Status.ACTIVE) == [None] * len(batch)
    finally:
        store.close()


def by_address(accepted: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Recipient → Message-IDs of the messages the relay accepted for it, in order."""
    out: dict[str, list[str]] = {}
    for m in accepted:
        for rcpt in m["rcpt"]:
            out.setdefault(rcpt, []).append(m["message_id"])
    return out


def assert_each_exactly_once(accepted: list[dict[str, Any]], addresses: list[str]) -> None:
    got = by_address(accepted)
    missing = sorted(set(addresses) - set(got))
    twice = {a: ids for a, ids in got.items() if len(ids) > 1}
    assert not missing, f"{len(missing)} never received a digest, e.g. {missing[:3]}"
    assert not twice, f"{len(twice)} received more than one, e.g. {list(twice.items())[:3]}"
    assert set(got) == set(addresses)
    assert len({m["message_id"] for m in accepted}) == len(accepted)


# -- processes -----------------------------------------------------------------------------


class Processes:
    """Every subprocess a test starts; all are killed (if still running) at teardown."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: list[subprocess.Popen[bytes]] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGESTD_")}
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
            env.pop(k, None)
        env["PYTHONPATH"] = str(ROOT)  # for python -m tests.relay from the temp folder
        self.env = env

    def spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env=self.env,
            )
        self.started.append(proc)
        return proc

    def cli(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "digestd.cli", "--config", str(config), *args],
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=self.env,
            timeout=60,
            check=False,
        )

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@dataclass
class Relay:
    proc: subprocess.Popen[bytes]
    port: int
    record: Path
    control: Path

    def events(self) -> list[dict[str, Any]]:
        try:
            text = self.record.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        # Only whole lines: the relay may be writing the next one right now.
        return [json.loads(line) for line in text.splitlines(keepends=True) if line[-1] == "\n"]

    def accepted(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == "accepted"]

    def refused(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == "refused"]

    def count(self) -> int:
        try:
            return self.record.read_text(encoding="utf-8").count('"event": "accepted"')
        except FileNotFoundError:
            return 0

    def behave(self, **behaviour: Any) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps(behaviour), encoding="utf-8")
        os.replace(tmp, self.control)


def start_relay(procs: Processes, tmp: Path, *flags: str, port: int = 0) -> Relay:
    ready = tmp / f"relay-{len(procs.started)}.port"
    record, control = tmp / "relay.jsonl", tmp / "relay-control.json"
    proc = procs.spawn(
        [
            sys.executable,
            "-m",
            "tests.relay",
            "--port",
            str(port),
            "--record",
            str(record),
            "--ready-file",
            str(ready),
            "--control",
            str(control),
            *flags,
        ],
        tmp / "relay.log",
    )

    def started() -> bool:
        assert proc.poll() is None, (tmp / "relay.log").read_text(encoding="utf-8")
        return ready.exists()

    wait_until(started, 60, "the relay to listen")
    return Relay(proc, int(ready.read_text(encoding="utf-8")), record, control)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def tail(self) -> str:
        return "\n--- daemon log (tail) ---\n" + "\n".join(self.log_text().splitlines()[-25:])

    def stop(self, timeout: float) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running {timeout:g} s after SIGTERM") from None
        return rc, time.monotonic() - started


def start_daemon(procs: Processes, config: Path, web_port: int, name: str = "daemon") -> Daemon:
    daemon = spawn_daemon(procs, config, web_port, name)
    wait_healthy(daemon)
    return daemon


def spawn_daemon(procs: Processes, config: Path, web_port: int, name: str = "daemon") -> Daemon:
    """Start `digestd run` without waiting for it (several daemons start side by side)."""
    log = config.parent / f"{name}-{len(procs.started)}.log"
    proc = procs.spawn([sys.executable, "-m", "digestd.cli", "--config", str(config), "run"], log)
    return Daemon(proc, web_port, log)


def wait_healthy(daemon: Daemon, timeout: float = 90) -> None:
    def healthy() -> bool:
        assert daemon.proc.poll() is None, (
            f"daemon exited with {daemon.proc.returncode}{daemon.tail()}"
        )
        try:
            return daemon.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, timeout, "the daemon to serve /healthz", every=0.1)


def assert_clean_log(daemon: Daemon) -> None:
    text = daemon.log_text()
    assert "Traceback" not in text, daemon.tail()
    assert "@example.net" not in text, "a subscriber's address reached the log" + daemon.tail()


@dataclass
class Setup:
    tmp: Path
    db: Path
    db_url: str
    feed: Path
    web_port: int

    def config(
        self, relay_port: int, *, sources: list[dict[str, Any]] | None = None, **overrides: Any
    ) -> Path:
        """The daemon's test config; ``table__key=value`` overrides a value."""
        tables: dict[str, dict[str, Any]] = {
            "database": {"url": self.db_url},
            "outbox": {"path": str(self.tmp / "outbox")},
            "web": {
                "port": self.web_port,
                "base_url": "https://digest.example.org",
                "secret_key_file": str(self.tmp / "secret_key"),
            },
            "smtp": {
                "host": "127.0.0.1",
                "port": relay_port,
                "security": "none",
                "rate_limit": 0,
                "pool_size": POOL,
                "timeout": 10,
                "from": "Paper digest <digest@example.org>",
            },
            # The daemon fetches at start; the cron (yearly) never fires during a test.
            "schedule": {"tick_seconds": 1, "wait_minutes": 0, "fetch_cron": "0 0 1 1 *"},
            "delivery": {
                "retry_base_seconds": 1,
                "retry_max_seconds": 2,
                "lease_seconds": 3,
                "shutdown_grace_seconds": 10,
            },
        }
        for name, value in overrides.items():
            table, key = name.split("__")
            tables.setdefault(table, {})[key] = value
        lines = []
        for table, body in tables.items():
            lines.append(f"[{table}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
        for source in sources or [{"type": "json", "path": str(self.feed)}]:
            lines.append("[[sources]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in source.items()]
        path = self.tmp / "digestd.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


# -- the feed server ------------------------------------------------------------------------


@dataclass
class Feed:
    proc: subprocess.Popen[bytes]
    port: int
    control: Path
    log: Path

    def mode(self, mode: str) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"mode": mode}), encoding="utf-8")
        os.replace(tmp, self.control)

    def requests(self) -> list[dict[str, Any]]:
        try:
            text = self.log.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines(keepends=True) if line[-1] == "\n"]


def start_feed(procs: Processes, tmp: Path, data: Path, mode: str) -> Feed:
    ready, control, log = tmp / "feed.port", tmp / "feed-control.json", tmp / "feed.jsonl"
    proc = procs.spawn(
        [
            sys.executable,
            "-m",
            "tests.feed_server",
            "--ready-file",
            str(ready),
            "--data",
            str(data),
            "--mode",
            mode,
            "--control",
            str(control),
            "--log",
            str(log),
        ],
        tmp / "feed-server.log",
    )
    wait_until(ready.exists, 60, "the feed server to listen")
    return Feed(proc, int(ready.read_text(encoding="utf-8")), control, log)
