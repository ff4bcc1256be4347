"""The web front: FastAPI app factory for the pages and the JSON API."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI

from digestd import __version__
from digestd.services import Services
from digestd.web import api, manage, pages
from digestd.web.context import Web, install_errors
from digestd.web.security import BodyLimit, SecurityHeaders

DESCRIPTION = """Subscribe to a personal digest of the day's research papers, confirm, change
preferences, pause, unsubscribe, delete your data and vote on papers. Every call but
`/subscribe` is authenticated by the token of a link from one of our emails, sent as
`Authorization: Bearer <token>`; a token works only for its own purpose (confirm, manage,
unsubscribe, feedback). Errors are `{"error": code, "message": text}`."""


def create_app(services: Services, *, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The app over ``services``; ``routers`` adds operational routes (health, metrics)."""
    # No Swagger UI: it loads scripts from a CDN, which the Content-Security-Policy forbids;
    # the schema itself is at /openapi.json.
    app = FastAPI(
        title="digestd",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
    )
    web = Web.build(services)
    app.state.services = services
    app.state.web = web
    for router in (pages.static, pages.router, manage.router, api.router, *routers):
        app.include_router(router)
    install_errors(app, web.views)
    cfg = services.config.web
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes, error=web.views.error)
    # Added last, so outermost: every answer, errors and 413s included, carries the headers.
    app.add_middleware(SecurityHeaders, hsts=cfg.base_url.startswith("https://"))
    return app
