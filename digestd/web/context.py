"""What every route gets: the subscriptions, views and limits; and the request-level errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from digestd.errors import (
    DigestdError,
    InvalidInput,
    NotFound,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from digestd.services import Services
from digestd.subscription import RevokedLink, Subscriptions
from digestd.tokens import ExpiredToken, TokenError
from digestd.web.security import Network, RateLimiter, client_ip, networks
from digestd.web.views import Views, is_api

log = logging.getLogger(__name__)


@dataclass
class Limits:
    requests: RateLimiter  # any route of the web front, per client IP
    subscribe_ip: RateLimiter  # subscribe requests per client IP
    subscribe_address: RateLimiter  # subscribe requests per (hashed) address


@dataclass
class Web:
    services: Services
    subscriptions: Subscriptions
    views: Views
    limits: Limits
    trusted: tuple[Network, ...]

    @classmethod
    def build(cls, services: Services) -> Web:
        cfg = services.config.web
        return cls(
            services=services,
            subscriptions=Subscriptions(services),
            views=Views(services.config),
            limits=Limits(
                requests=RateLimiter(cfg.requests_per_minute, 60),
                subscribe_ip=RateLimiter(cfg.subscribe_per_ip_per_hour, 3600),
                subscribe_address=RateLimiter(cfg.subscribe_per_address_per_day, 86400),
            ),
            trusted=networks(cfg.trusted_proxies),
        )

    def client(self, request: Request) -> str:
        return client_ip(request, self.trusted)


def get_web(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


WebDep = Annotated[Web, Depends(get_web)]


def rate_limit(request: Request) -> None:
    """Dependency of every digestd route: the per-IP request budget."""
    web = get_web(request)
    web.limits.requests.check(web.client(request), "requests")


def install_errors(app: FastAPI, views: Views) -> None:
    """Every failure a request can meet, as one error page (or JSON under /api/)."""

    async def token(request: Request, exc: Exception) -> Response:
        path = request.url.path
        if isinstance(exc, RevokedLink):
            return views.error(path, 403, str(exc), code="revoked_link", hint="fresh-link")
        if isinstance(exc, ExpiredToken):
            title = "This link has expired"
            return views.error(path, 400, str(exc), code="expired_link", title=title,
                               hint="fresh-link")  # fmt: skip
        return views.error(path, 400, str(exc), code="invalid_link",
                           title="This link is not valid", hint="fresh-link")  # fmt: skip

    async def invalid(request: Request, exc: Exception) -> Response:
        path = request.url.path
        status = 422 if is_api(path) else 400
        return views.error(path, status, str(exc), code="invalid_input")

    async def not_found(request: Request, exc: Exception) -> Response:
        return views.error(request.url.path, 404, str(exc))

    async def delivery(request: Request, exc: Exception) -> Response:
        path = request.url.path
        if isinstance(exc, TemporaryDeliveryError):
            message = "we could not send the email just now; please try again in a few minutes"
            return views.error(path, 503, message, code="mail_unavailable",
                               headers={"Retry-After": "300"})  # fmt: skip
        return views.error(path, 400, "the mail server refused this address",
                           code="address_refused")  # fmt: skip

    async def other(request: Request, exc: Exception) -> Response:
        log.error("%s %s: %s", request.method, request.url.path.split("/")[1], exc)
        return views.error(request.url.path, 500, "the request could not be completed")

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else ""
        return views.error(
            request.url.path, exc.status_code, detail, headers=dict(exc.headers or {})
        )

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", ""))
        path = request.url.path
        return views.error(path, 422 if is_api(path) else 400, "; ".join(parts),
                           code="invalid_input")  # fmt: skip

    async def crash(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback and re-raises after this answer is sent.
        return views.error(request.url.path, 500, "the request could not be completed")

    app.add_exception_handler(Exception, crash)
    app.add_exception_handler(TokenError, token)
    app.add_exception_handler(InvalidInput, invalid)
    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(TemporaryDeliveryError, delivery)
    app.add_exception_handler(PermanentDeliveryError, delivery)
    app.add_exception_handler(DigestdError, other)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(RequestValidationError, validation)
