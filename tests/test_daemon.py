"""`digestd run` as operators run it: a real process, loopback SMTP, signals and sd_notify."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from digestd import config as config_mod
from digestd.models import Status
from digestd.store import Store
from digestd.subscribers import make_input
from tests.daemons import noon_zone
from tests.smtp_server import ThreadedSmtpServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    def __init__(self, config: Path, port: int, log: Path, env: dict[str, str]) -> None:
        self.config, self.port, self.log = config, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "digestd.cli", "--config", str(self.config), "run"],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.config.parent,
            )  # fmt: skip
        wait_until(self.healthy, what="the daemon to serve /healthz")
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log.read_text()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def daemon_factory(
    write_config: Callable[..., Path], smtp_server_thread: ThreadedSmtpServer, tmp_path: Path
) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(env: dict[str, str] | None = None, **overrides: Any) -> Daemon:
        port = free_port()
        cfg = write_config(
            web__port=port, smtp__host=smtp_server_thread.host, smtp__port=smtp_server_thread.port,
            smtp__security="none", schedule__tick_seconds=1, schedule__wait_minutes=0,
            **overrides,
        )  # fmt: skip
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGESTD_", "NOTIFY"))}
        full_env.update(env or {})
        d = Daemon(cfg, port, tmp_path / "daemon.log", full_env)
        made.append(d)
        return d

    yield make
    for d in made:
        d.kill()


def subscribe(config: Path, email: str, topic: str = "world models") -> None:
    store = Store.open(config_mod.load(config).database_url)
    try:
        # Due a minute ago: a fixed 00:00 made the digest older than [delivery] max_age_hours
        # (20) from 20:00 UTC on, and it expired instead of going out. And where it is about
        # noon: a minute before 00:00:30 is yesterday's 23:59, a period that ended before the
        # subscription began, so nothing went out (a run of the suite at midnight UTC).
        tz = noon_zone()
        due = (datetime.now(ZoneInfo(tz)) - timedelta(minutes=1)).strftime("%H:%M")
        data = make_input(email, topics=[topic], send_time=due, timezone=tz)
        store.add_subscriber(data, status=Status.ACTIVE)
    finally:
        store.close()


def test_daemon_serves_sends_and_stops_cleanly(
    daemon_factory: Callable[..., Daemon], smtp_server_thread: ThreadedSmtpServer
) -> None:
    d = daemon_factory()
    subscribe(d.config, "ada@example.org")
    subscribe(d.config, "bob@example.org", topic="protein folding")
    d.start()
    [msg] = smtp_server_thread.wait_for(1, timeout=60)
    assert msg.rcpt_tos == ["ada@example.org"]

    ready = wait_until(lambda: httpx.get(d.url + "/readyz").json()["ready"], what="readiness")
    assert ready is True
    body = httpx.get(d.url + "/readyz").json()
    assert body["database"] == "ok" and body["scheduler_running"] and body["last_fetch_ok"]
    metrics = httpx.get(d.url + "/metrics").text
    assert "digestd_digests_sent_total 1.0" in metrics
    assert 'digestd_subscribers{status="active"} 2.0' in metrics
    assert "digestd_digests_empty_total 1.0" in metrics

    assert d.stop() == 0
    log = d.log.read_text()
    assert "ada@example.org" not in log  # ids in logs, never addresses
    assert "digestd stopped" in log

    # Restarted, it knows from the ledger that today's digests are done.
    d.start()
    time.sleep(3)
    assert len(smtp_server_thread.handler.messages) == 1
    assert d.stop() == 0


def test_sd_notify_ready_watchdog_and_stopping(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    for address in (str(tmp_path / "notify.sock"), f"@digestd-test-{os.getpid()}"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address if not address.startswith("@") else "\0" + address[1:])
        sock.settimeout(20)
        d = daemon_factory(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        d.start()
        seen: list[str] = []
        while seen.count("WATCHDOG=1") < 2:
            seen.append(sock.recv(4096).decode())
        assert seen[0].startswith("READY=1")
        assert d.stop() == 0
        rest = []
        sock.settimeout(1)
        try:
            while True:
                rest.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest
        sock.close()


def test_sighup_reloads_and_a_bad_config_keeps_the_running_one(
    daemon_factory: Callable[..., Daemon], smtp_server_thread: ThreadedSmtpServer
) -> None:
    d = daemon_factory().start()
    text = d.config.read_text(encoding="utf-8")
    d.config.write_text(text.replace("[outbox]", '[digest]\nsite_name = "Reloaded"\n[outbox]'))
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in d.log.read_text(), what="the reload")
    subscribe(d.config, "ada@example.org")
    try:
        [msg] = smtp_server_thread.wait_for(1, timeout=60)
    except TimeoutError:
        raise AssertionError(d.log.read_text()) from None
    assert msg.parsed["Subject"].startswith("Reloaded")

    d.config.write_text(text + "\n[smtp]\nport = 'not a port'\n", encoding="utf-8")
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in d.log.read_text(), what="the refusal")
    assert d.healthy()
    assert d.stop() == 0


def test_a_taken_port_is_a_clear_error(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", d.port))
        blocker.listen()
        r = subprocess.run(
            [sys.executable, "-m", "digestd.cli", "--config", str(d.config), "run"],
            capture_output=True, text=True, env=d.env, timeout=60, check=False,
        )  # fmt: skip
    assert r.returncode != 0
    assert f"cannot serve the web front on 127.0.0.1:{d.port}" in r.stderr
    assert "Traceback" not in r.stderr
