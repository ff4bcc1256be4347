"""Web hygiene: security headers, the request body limit, rate limits and token-free logs."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No script may run, styles only from our own static file, forms only post back to us, and no
# page may be framed (clickjacking a "delete my data" button).
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS: tuple[tuple[bytes, bytes], ...] = tuple(
    (k.encode(), v.encode())
    for k, v in (
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        # Tokens live in URLs: never leak them to another site through the Referer header.
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        ("permissions-policy", "camera=(), microphone=(), geolocation=(), interest-cohort=()"),
    )
)


class SecurityHeaders:
    """Adds HEADERS to every response, and ``Cache-Control: no-store`` unless one is set:
    pages carry personal data and links that must not sit in shared caches."""

    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        self.extra = [(b"strict-transport-security", b"max-age=31536000")] if hsts else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in (*HEADERS, *self.extra) if k not in present]
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413: by Content-Length before the app
    runs, and by counting while the body streams in (chunked uploads have no length)."""

    def __init__(
        self, app: ASGIApp, *, limit: int, error: Callable[[str, int, str], Response]
    ) -> None:
        self.app = app
        self.limit = limit
        self.error = error  # (path, status, message) → the error page or JSON

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body larger than {self.limit} bytes"
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self.error(scope["path"], 413, message)(scope, receive, send)
            return
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    # Raised where the app reads its body: its error handlers answer.
                    raise HTTPException(413, message)
            return msg

        await self.app(scope, counting, send)


class RateLimiter:
    """Token buckets by key: ``capacity`` requests at once, refilled over ``per_seconds``.

    In-process: each daemon process counts on its own. The oldest keys are forgotten past
    ``max_keys`` so a flood of distinct clients cannot grow memory without bound.
    """

    def __init__(
        self,
        capacity: int,
        per_seconds: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / per_seconds
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def hit(self, key: str) -> float:
        """Take one token for ``key``: 0 when allowed, else seconds until one is available."""
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def check(self, key: str, what: str) -> None:
        """HTTPException 429 with Retry-After when ``key`` has no token left."""
        wait = self.hit(key)
        if wait > 0:
            raise HTTPException(
                429,
                f"too many {what}; try again in {_duration(wait)}",
                headers={"Retry-After": str(int(wait) + 1)},
            )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{int(seconds) + 1} seconds"
    if seconds < 5400:
        return f"{round(seconds / 60)} minutes"
    return f"{round(seconds / 3600)} hours"


def address_key(address: str) -> str:
    """A rate-limit key for an address that does not keep the address in memory."""
    return hashlib.sha256(address.encode()).hexdigest()[:32]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(specs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(s, strict=False) for s in specs)


def client_ip(request: Request, trusted: tuple[Network, ...]) -> str:
    """The client's address; behind a trusted proxy, the first untrusted hop of
    X-Forwarded-For read from the right (the left end is whatever the client wrote)."""
    peer = request.client.host if request.client else "unknown"
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


_TOKEN_PATH = re.compile(r"/(confirm|manage|unsubscribe|feedback)/[A-Za-z0-9_\-.]+")


class RedactTokens(logging.Filter):
    """For access logs (e.g. ``uvicorn.access``): signed links are capabilities, so their
    tokens are replaced by ``…`` before a line is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_PATH.sub(r"/\1/…", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = _TOKEN_PATH.sub(r"/\1/…", record.msg)
        return True
