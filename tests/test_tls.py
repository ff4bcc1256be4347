"""Delivery over TLS (STARTTLS, and TLS from the first byte) on both event loops a send runs
on: asyncio's (the daemon, small sends, the CLI) and the send processes' (uvloop's where
installed, `workers.new_event_loop`). The relay is a real aiosmtpd server with a certificate
made for the test by openssl."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from digestd import config as config_mod
from digestd import pipeline, workers
from digestd.deliver import SmtpMailer
from digestd.errors import TemporaryDeliveryError
from digestd.services import Services
from tests.smtp_server import SmtpServer, ThreadedSmtpServer
from tests.test_pipeline import DAY1, NOW1, subscribe

MESSAGE = (
    b"From: Paper digest <digest@example.org>\r\nTo: reader@example.org\r\n"
    b"Subject: papers\r\nMessage-ID: <tls.1@example.org>\r\n\r\nHello over TLS.\r\n"
)

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "send processes'": workers.new_event_loop,
}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a self-signed certificate for 127.0.0.1 (cert.pem) and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command for the test relay's certificate (apt openssl)")
    where = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(where / "key.pem"), "-out", str(where / "cert.pem"),
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return where


def _server_context(certificate: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    return context


def test_the_send_processes_run_uvloop() -> None:
    # uvloop is a dependency wherever it installs (not on Windows); this machine has it.
    loop = workers.new_event_loop()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_a_digest_goes_out_over_tls_and_an_unproven_relay_gets_nothing(
    certificate: Path, security: str, loop: str
) -> None:
    trusted = ssl.create_default_context(cafile=certificate / "cert.pem")
    untrusted = ssl.create_default_context()  # the system's CAs: they never signed this one
    relay = ThreadedSmtpServer(tls=_server_context(certificate), implicit=security == "tls")
    with relay, asyncio.Runner(loop_factory=LOOPS[loop]) as runner:

        async def send(context: ssl.SSLContext | None, how: str = security) -> str:
            mailer = SmtpMailer(relay.config(security=how), tls_context=context)
            try:
                return await mailer.send(
                    MESSAGE, sender="bounces@example.org", recipients=["reader@example.org"]
                )
            finally:
                await mailer.aclose()

        reply = runner.run(send(trusted))
        assert reply.startswith("250")
        (received,) = relay.handler.messages
        assert relay.handler.encrypted == 1
        assert received.parsed["Subject"] == "papers" and received.rcpt_tos == [
            "reader@example.org"
        ]
        # A relay whose certificate cannot be verified is not sent the digest: a temporary
        # failure (retried later), nothing delivered.
        with pytest.raises(TemporaryDeliveryError, match=r"(?i)certificate"):
            runner.run(send(untrusted))
        assert len(relay.handler.messages) == 1
        # Without STARTTLS the relay takes no mail either: this one requires it.
        if security == "starttls":
            with pytest.raises(TemporaryDeliveryError, match="530"):
                runner.run(send(None, "none"))
            assert len(relay.handler.messages) == 1


async def test_a_split_send_goes_out_over_starttls(
    write_config: Callable[..., Path], certificate: Path
) -> None:
    async with SmtpServer(tls=_server_context(certificate)) as relay:
        # The send processes build their mailer from the configuration alone, which cannot
        # name a test's CA: certificates are checked by the test above, on the same loop.
        path = write_config(smtp__host=relay.host, smtp__port=relay.port,
                            smtp__security="starttls", smtp__validate_certs=False,
                            smtp__pool_size=4, delivery__processes=2)  # fmt: skip
        async with Services.build(config_mod.load(path)) as services:
            for i in range(40):
                subscribe(services, f"reader{i}@example.org", "world models", "agents")
            await pipeline.fetch(services, DAY1, now=NOW1)
            summary = await pipeline.send_period(services, DAY1, now=NOW1, split_above=20)
    assert len(summary.processes) == 2
    assert summary.sent == 40 == len(relay.handler.messages) == relay.handler.encrypted
    assert sorted(r for m in relay.handler.messages for r in m.rcpt_tos) == sorted(
        f"reader{i}@example.org" for i in range(40)
    )
