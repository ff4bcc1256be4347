"""The web front: FastAPI app factory for the pages and the JSON API."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI

from digestd import __version__
from digestd.services import Services


def create_app(services: Services, *, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The app over ``services``; ``routers`` adds operational routes (health, metrics)."""
    app = FastAPI(title="digestd", version=__version__)
    app.state.services = services
    for router in routers:
        app.include_router(router)
    return app
