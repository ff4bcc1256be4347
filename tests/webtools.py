"""Web test kit: the real app over a temp SQLite store and a loopback SMTP server, and helpers
to read the links out of the emails it received."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from fastapi import FastAPI

from digestd import config as config_mod
from digestd import pipeline
from digestd.services import Services
from digestd.web import create_app
from tests.conftest import dump_database
from tests.smtp_server import Received, SmtpServer

BASE = "https://digest.example.org"
CLIENT_IP = "203.0.113.7"
DAY1 = date(2026, 8, 14)
NOW1 = datetime(2026, 8, 14, 8, 0, tzinfo=UTC)
_URL = re.compile(re.escape(BASE) + r"/[^\s<>\"']+")


@dataclass
class Site:
    """One app under test: its services, an HTTP client and the SMTP server it mails."""

    services: Services
    app: FastAPI
    client: httpx.AsyncClient
    smtp: SmtpServer

    @property
    def messages(self) -> list[Received]:
        return self.smtp.handler.messages

    def client_from(self, ip: str) -> httpx.AsyncClient:
        """Another client, as seen from ``ip``; close it after use."""
        return site_client(self.app, ip)

    async def subscribe(self, email: str, **fields: Any) -> httpx.Response:
        data = {"email": email, "topics": "world models", **fields}
        return await self.client.post("/subscribe", data=data)

    def dump(self) -> str:
        """Every row of every table: equal dumps mean nothing changed."""
        return dump_database(self.services.store.url)


def site_client(app: FastAPI, ip: str = CLIENT_IP) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url=BASE)


def make_site(write_config: Callable[..., Path], smtp: SmtpServer, **overrides: Any) -> Services:
    path = write_config(
        smtp__host=smtp.host, smtp__port=smtp.port, smtp__security="none", **overrides
    )
    return Services.build(config_mod.load(path))


@pytest_asyncio.fixture
async def site(write_config: Callable[..., Path], smtp_server: SmtpServer) -> AsyncIterator[Site]:
    async with make_site(write_config, smtp_server) as services:
        app = create_app(services)
        async with site_client(app, CLIENT_IP) as client:
            yield Site(services, app, client, smtp_server)


async def confirmed(site: Site, email: str = "ada@example.org") -> str:
    """Subscribe and confirm ``email`` through the pages; the manage page's path."""
    await site.subscribe(email)
    r = await site.client.post(link(site.messages[-1].parsed, "confirm"))
    return str(r.headers["location"]).split("?")[0]


async def a_digest(site: Site) -> None:
    """Fetch the feed and send today's digests now."""
    now = datetime.now(UTC)
    await pipeline.fetch(site.services, DAY1, now=now)
    await pipeline.send_period(site.services, DAY1, now=now)


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def html_of(msg: EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def links(msg: EmailMessage, kind: str) -> list[str]:
    """Paths (``/confirm/…`` etc.) of our links of one kind in a message's text part."""
    found = [u.removeprefix(BASE) for u in _URL.findall(text_of(msg))]
    return [p for p in dict.fromkeys(found) if p.startswith(f"/{kind}/")]


def link(msg: EmailMessage, kind: str) -> str:
    [path] = links(msg, kind)[:1]
    return path


def token(path: str) -> str:
    return path.split("/")[2]
