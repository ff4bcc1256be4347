"""`digestd run` with [inbound] enabled: the LMTP listener starts and stops with the daemon."""

from __future__ import annotations

import contextlib
import signal
import smtplib
import socket
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from digestd import config as config_mod
from digestd.models import Status
from digestd.store import Store
from digestd.subscribers import make_input
from tests.smtp_server import ThreadedSmtpServer
from tests.test_daemon import Daemon, daemon_factory, free_port, wait_until
from tests.webtools import BASE, a_digest, site
from tests.webtools import Site as WebSite

__all__ = ["daemon_factory", "site"]


def subscribe_mail(to: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Grace <grace@example.com>"
    msg["To"] = to
    msg["Subject"] = "subscribe"
    msg.set_content("topic: world models\ntime: 07:30 Europe/Berlin\n")
    return msg.as_bytes().replace(b"\n", b"\r\n")


def lmtp(where: str, to: str) -> tuple[int, bytes]:
    host, port = (where, 0) if where.startswith("/") else ("127.0.0.1", int(where))
    with smtplib.LMTP(host, port) as client:
        client.ehlo("mx.test")
        client.mail("grace@example.com")
        client.rcpt(to)
        return client.data(subscribe_mail(to))


def listening(where: str) -> bool:
    try:
        host, port = (where, 0) if where.startswith("/") else ("127.0.0.1", int(where))
        with smtplib.LMTP(host, port, timeout=2) as client:
            return client.ehlo("mx.test")[0] == 250
    except OSError:
        return False


def status_of(config: Path, email: str) -> str:
    store = Store.open(config_mod.load(config).database_url)
    try:
        return store.subscriber(email).status
    finally:
        store.close()


@pytest.mark.parametrize("unix", [False, True])
def test_the_daemon_takes_mail_over_lmtp(
    daemon_factory: Callable[..., Daemon],
    smtp_server_thread: ThreadedSmtpServer,
    tmp_path: Path,
    unix: bool,
) -> None:
    where = str(tmp_path / "run" / "lmtp.sock") if unix else str(free_port())
    listen = f"unix:{where}" if unix else f"127.0.0.1:{where}"
    d = daemon_factory(inbound__enabled=True, inbound__listen=listen)
    d.start()
    wait_until(lambda: listening(where), what="the LMTP listener")
    assert lmtp(where, "digest+subscribe@example.org")[0] == 250
    assert status_of(d.config, "grace@example.com") == Status.PENDING
    [confirmation] = smtp_server_thread.wait_for(1)
    assert confirmation.rcpt_tos == ["grace@example.com"]
    assert d.stop(signal.SIGTERM) == 0
    log = d.log.read_text()
    assert "LMTP listening on" in log and "LMTP listener stopped" in log
    assert "grace@example.com" not in log  # logs name ids, never addresses
    assert not listening(where)
    if unix:
        assert not Path(where).exists()


def test_a_taken_lmtp_port_stops_start_up_with_a_clear_error(
    daemon_factory: Callable[..., Daemon],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = daemon_factory(inbound__enabled=True, inbound__listen=f"127.0.0.1:{port}")
        # The web front may answer /healthz for a moment before the LMTP bind fails.
        with contextlib.suppress(AssertionError):
            d.start()
        assert d.proc is not None and d.proc.wait(timeout=20) != 0
    assert f"cannot listen for mail on 127.0.0.1:{port}" in d.log.read_text()


async def test_without_inbound_digests_keep_the_from_address(site: WebSite) -> None:
    data = make_input("ada@example.org", topics=["world models"])
    site.services.store.add_subscriber(data, status=Status.ACTIVE)
    await a_digest(site)
    [digest] = [m for m in site.messages if m.rcpt_tos == ["ada@example.org"]]
    d = digest.parsed
    assert digest.mail_from == "digest@example.org"
    assert d["Reply-To"] is None
    assert str(d["List-Unsubscribe"]).startswith(f"<{BASE}/unsubscribe/")
    assert "mailto:" not in str(d["List-Unsubscribe"])
