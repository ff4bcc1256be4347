"""Inbound mail test kit: the samples in tests/data/mail, an LMTP client, and a mail room: the
real LMTP listener over a temp store, with a loopback SMTP server receiving what it sends."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import smtplib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest_asyncio

from digestd import config as config_mod
from digestd.inbound.addresses import Addresses
from digestd.inbound.lmtp import InboundServer
from digestd.models import Status, Subscriber
from digestd.services import Services
from digestd.subscribers import make_input
from tests.conftest import dump_database
from tests.smtp_server import Received, SmtpServer

MAIL = Path(__file__).parent / "data" / "mail"
DOMAIN = "example.org"


def sample(name: str, **values: str) -> bytes:
    """A sample with its ``{{PLACEHOLDERS}}`` filled (keyword ``verp`` fills ``{{VERP}}``),
    with CRLF line endings as it travels over LMTP."""
    text = (MAIL / name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key.upper() + "}}", value)
    assert "{{" not in text, f"{name}: a placeholder is left unfilled"
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def lmtp_send(
    port: int, mail_from: str, rcpts: list[str], data: bytes, *, size: bool = False
) -> dict[str, tuple[int, str]]:
    """Deliver ``data`` over LMTP as an MTA does: recipient → (code, text) of its own reply,
    at RCPT when refused there, else at the end of DATA (one reply per accepted recipient)."""
    replies: dict[str, tuple[int, str]] = {}
    # On the wire every line ends in CRLF; smtplib sends bytes as they are.
    data = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    with smtplib.LMTP("127.0.0.1", port) as client:
        client.ehlo("mx.test")  # LMTP's ehlo() says LHLO
        options = [f"SIZE={len(data)}"] if size else []
        code, text = client.mail(mail_from, options)
        if code != 250:
            return {r: (code, text.decode()) for r in rcpts}
        accepted = []
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code == 250:
                accepted.append(rcpt)
            else:
                replies[rcpt] = (code, text.decode())
        if not accepted:
            return replies
        code, text = client.data(data)
        replies[accepted[0]] = (code, text.decode())
        for rcpt in accepted[1:]:  # smtplib reads one reply; LMTP sends one per recipient
            code, text = client.getreply()
            replies[rcpt] = (code, text.decode())
    return replies


@dataclass
class Room:
    services: Services
    server: InboundServer
    smtp: SmtpServer
    addresses: Addresses

    @property
    def port(self) -> int:
        return int(self.server.address.rpartition(":")[2])

    @property
    def sent(self) -> list[Received]:
        """What digestd sent: digests, confirmations, answers."""
        return self.smtp.handler.messages

    async def deliver(
        self, mail_from: str, rcpts: str | list[str], data: bytes, **kw: Any
    ) -> dict[str, tuple[int, str]]:
        targets = [rcpts] if isinstance(rcpts, str) else rcpts
        return await asyncio.to_thread(lmtp_send, self.port, mail_from, targets, data, **kw)

    async def deliver_one(self, mail_from: str, rcpt: str, data: bytes) -> tuple[int, str]:
        return (await self.deliver(mail_from, rcpt, data))[rcpt]

    def dump(self) -> str:
        return dump_database(self.services.store.url)

    def subscriber(self, email_address: str) -> Subscriber:
        return self.services.store.subscriber(email_address)

    def add(self, email_address: str = "ada@example.com", **fields: Any) -> Subscriber:
        """An active, confirmed subscriber (as after the double opt-in)."""
        store = self.services.store
        fields.setdefault("topics", ["world models"])
        sub = store.add_subscriber(make_input(email_address, **fields), status=Status.PENDING)
        assert sub.id is not None
        return store.change_status(
            sub.id, Status.ACTIVE, reason="test", confirmed_at=datetime.now(UTC)
        )


def room_config(write_config: Callable[..., Path], smtp: SmtpServer, **overrides: Any) -> Path:
    return write_config(
        smtp__host=smtp.host,
        smtp__port=smtp.port,
        smtp__security="none",
        inbound__enabled=True,
        **overrides,
    )


@pytest_asyncio.fixture
async def room(write_config: Callable[..., Path], smtp_server: SmtpServer) -> AsyncIterator[Room]:
    config = config_mod.load(room_config(write_config, smtp_server))
    async with Services.build(config) as services:
        # Port 0: the OS picks a free one (the config's checked value is a real port).
        inbound = replace(config.inbound, listen="127.0.0.1:0")
        server = InboundServer(inbound, lambda: services)
        await server.start()
        try:
            yield Room(services, server, smtp_server, Addresses.for_config(config, services.signer))
        finally:
            await server.stop()
