"""The web front's defences: security headers, input validation, body and rate limits, privacy."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from digestd.web import create_app
from digestd.web.security import RateLimiter, RedactTokens
from tests.smtp_server import SmtpServer
from tests.webtools import (
    CLIENT_IP,
    Site,
    a_digest,
    confirmed,
    link,
    links,
    make_site,
    site,
    site_client,
)

__all__ = ["site"]
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


# -- headers -----------------------------------------------------------------------------


async def test_every_answer_carries_the_security_headers(site: Site) -> None:
    manage = await confirmed(site)
    answers = [
        await site.client.get("/"),
        await site.client.get(manage),
        await site.client.get("/no/such/page"),
        await site.client.post("/manage/bad-token"),
        await site.client.get("/openapi.json"),
        await site.client.post(
            "/subscribe",
            content=b"x" * 70_000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
    ]
    assert [a.status_code for a in answers] == [200, 200, 404, 400, 200, 413]
    for a in answers:
        for name, value in SECURITY_HEADERS.items():
            assert a.headers[name] == value
        csp = a.headers["content-security-policy"]
        for directive in (
            "default-src 'none'",
            "frame-ancestors 'none'",
            "style-src 'self'",
            "form-action 'self'",
            "base-uri 'none'",
        ):
            assert directive in csp
        assert "unsafe-inline" not in csp and "script-src" not in csp
        assert a.headers["cache-control"] == "no-store"
    assert "max-age" in (await site.client.get("/static/site.css")).headers["cache-control"]


# -- input -------------------------------------------------------------------------------

INVALID = [
    ({"email": "not-an-address"}, "invalid email address"),
    ({"email": "a@b.org\r\nBcc: x@y.org"}, "must be one line"),
    ({"email": "a@b.org\nBcc: x@y.org"}, "must be one line"),
    ({"email": ""}, "invalid email address"),
    ({"timezone": "Mars/Olympus_Mons"}, "unknown time zone"),
    ({"topics": "\n".join(f"topic {i}" for i in range(10_000))}, "at most 20 values for topic"),
    (
        {"authors": "\n".join(f"A. Person{i}" for i in range(10_000))},
        "at most 20 values for author",
    ),
    ({"topics": "x" * 201}, "longer than 200 characters"),
    ({"topics": ""}, "give at least one topic, author or category"),
    ({"send_time": "25:00"}, "use HH:MM"),
    ({"frequency": "hourly"}, "use daily, weekdays or weekly"),
    ({"max_papers": "lots"}, "max papers: a whole number from 1 to 30"),
    ({"max_papers": "0"}, "max papers: a whole number from 1 to 30"),
    ({"categories": "cs.LG, not a category!"}, "not an arXiv category"),
    ({"weekly_day": "someday"}, "use a day name"),
]


@pytest.mark.parametrize(("fields", "message"), INVALID, ids=[m for _, m in INVALID])
async def test_invalid_input_is_refused_clearly_and_changes_nothing(
    write_config: Callable[..., Path],
    smtp_server: SmtpServer,
    fields: dict[str, str],
    message: str,
) -> None:
    # A body limit above the default, so that 10,000 topics reach the validation.
    async with make_site(write_config, smtp_server, web__max_body_bytes=500_000) as services:
        app = create_app(services)
        async with site_client(app) as client:
            s = Site(services, app, client, smtp_server)
            before = s.dump()
            started = time.monotonic()
            r = await s.subscribe(fields.pop("email", "ada@example.org"), **fields)
            assert time.monotonic() - started < 1.0
            assert r.status_code == 400
            text = r.text.replace("&#39;", "'").lower()
            assert message.lower() in text and 'role="alert"' in text
            assert s.dump() == before and s.messages == []


async def test_a_refused_form_is_shown_again_as_typed_and_escaped(site: Site) -> None:
    r = await site.subscribe('"><b>bold</b>@x', topics="diffusion\n<i>models</i>")
    assert r.status_code == 400
    assert "&lt;i&gt;models&lt;/i&gt;</textarea>" in r.text and "<b>bold" not in r.text


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_one_megabyte_body_gets_413(site: Site, chunked: bool) -> None:
    body = b"email=a%40b.org&topics=" + b"x" * 1_000_000

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    r = await site.client.post("/subscribe", content=stream() if chunked else body, headers=headers)
    assert r.status_code == 413 and "request body larger than 65536 bytes" in r.text.lower()
    assert site.messages == []


# -- rate limits -------------------------------------------------------------------------


async def test_subscribe_requests_are_limited_per_client_ip(site: Site) -> None:
    for _ in range(20):  # the default budget per hour; invalid requests count too
        assert (await site.subscribe("not-an-address")).status_code == 400
    r = await site.subscribe("ada@example.org")
    assert r.status_code == 429 and "too many subscribe requests" in r.text.lower()
    assert int(r.headers["retry-after"]) > 60
    assert site.messages == []
    async with site.client_from("198.51.100.9") as other:
        r = await other.post("/subscribe", data={"email": "ada@example.org", "topics": "x"})
        assert r.status_code == 303


async def test_subscribe_requests_are_limited_per_address(site: Site) -> None:
    for i in range(5):
        async with site.client_from(f"198.51.100.{i}") as c:
            r = await c.post("/subscribe", data={"email": "Ada@example.org", "topics": "x"})
            assert r.status_code == 303
    async with site.client_from("198.51.100.99") as c:
        r = await c.post("/subscribe", data={"email": "ada@EXAMPLE.org", "topics": "x"})
    assert r.status_code == 429 and "too many requests for this address" in r.text.lower()
    # One email, not five: the resend interval held the others back.
    assert len(site.messages) == 1


async def test_all_requests_are_limited_per_client_ip(
    write_config: Callable[..., Path], smtp_server: SmtpServer
) -> None:
    async with make_site(write_config, smtp_server, web__requests_per_minute=5) as services:
        transport = httpx.ASGITransport(app=create_app(services), client=(CLIENT_IP, 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            codes = [(await c.get("/")).status_code for _ in range(6)]
            assert codes == [200] * 5 + [429]
            assert (await c.get("/static/site.css")).status_code == 200  # not counted


def test_rate_limiter_refills_over_time() -> None:
    now = [0.0]
    limiter = RateLimiter(2, 60, clock=lambda: now[0], max_keys=2)
    assert [limiter.hit("a"), limiter.hit("a")] == [0, 0]
    assert limiter.hit("a") == pytest.approx(30)
    now[0] = 30
    assert limiter.hit("a") == 0
    limiter.hit("b")
    limiter.hit("c")  # "a" is the oldest key and is forgotten
    assert limiter.hit("a") == 0


async def test_client_ip_comes_from_a_trusted_proxy_only(
    write_config: Callable[..., Path], smtp_server: SmtpServer
) -> None:
    async with make_site(
        write_config, smtp_server, web__requests_per_minute=1, web__trusted_proxies="127.0.0.1, ::1"
    ) as services:
        app = create_app(services)

        async def get(peer: str, forwarded: str) -> int:
            transport = httpx.ASGITransport(app=app, client=(peer, 1))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return (await c.get("/", headers={"X-Forwarded-For": forwarded})).status_code

        # Behind the proxy, each client has its own budget…
        assert await get("127.0.0.1", "198.51.100.1") == 200
        assert await get("127.0.0.1", "198.51.100.2") == 200
        assert await get("127.0.0.1", "6.6.6.6, 198.51.100.1") == 429  # spoofed left end
        # …and an untrusted peer cannot pick one by sending the header itself.
        assert await get("203.0.113.5", "198.51.100.3") == 200
        assert await get("203.0.113.5", "198.51.100.4") == 429


# -- privacy -----------------------------------------------------------------------------


async def test_no_address_in_urls_or_logs(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    manage = await confirmed(site, "ada@example.org")
    saved = await site.client.post(manage, data={"topics": "world models"})
    await a_digest(site)
    digest = site.messages[-1].parsed
    await site.client.post(link(digest, "feedback"))
    await site.client.post(link(digest, "unsubscribe"))
    paths = [manage, saved.headers["location"]] + [
        path for m in site.messages for kind in ("confirm", "manage", "unsubscribe", "feedback")
        for path in links(m.parsed, kind)
    ]  # fmt: skip
    assert len(paths) > 10
    assert not any(x in p for p in paths for x in ("@", "%40", "example.org"))
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("digestd"))
    assert "subscriber 1: confirmed" in logged and "ada@" not in logged


def test_access_log_filter_hides_tokens() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4", "GET", "/manage/WyJtYW5hZ2UiLDFd.abc.def?done=saved", "1.1", 200),
        None,
    )
    RedactTokens().filter(record)
    assert "/manage/…?done=saved" in record.getMessage() and "WyJ" not in record.getMessage()
