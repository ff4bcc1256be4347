"""Operational routes of the daemon: /healthz, /readyz and Prometheus /metrics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from digestd.services import Services


@dataclass
class DaemonState:
    """What the running daemon knows about itself; shown by /readyz and `digestd status`."""

    started: datetime
    services: Services
    scheduler_running: bool = False
    last_fetch_ok: datetime | None = None
    last_fetch_error: str = ""
    last_fetch_attempt: datetime | None = None
    last_tick: datetime | None = None
    stopping: bool = False
    #: a fetch older than this makes /readyz report not ready
    fetch_stale_seconds: float = 26 * 3600


def router(state: DaemonState) -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/healthz")
    async def healthz() -> dict[str, str]:
        # Liveness only: answers while the event loop runs, touches nothing else.
        return {"status": "stopping" if state.stopping else "ok"}

    @r.get("/readyz")
    async def readyz() -> JSONResponse:
        body = await readiness(state)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @r.get("/metrics")
    async def metrics() -> Response:
        registry = state.services.metrics.registry
        data = await asyncio.to_thread(generate_latest, registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    return r


async def readiness(state: DaemonState) -> dict[str, Any]:
    now = datetime.now(UTC)
    problems = []
    try:
        await asyncio.to_thread(state.services.store.ping)
        database = "ok"
    except Exception as exc:  # any driver error means "not reachable"
        database = f"error: {type(exc).__name__}"
        problems.append("database unreachable")
    if not state.scheduler_running:
        problems.append("scheduler not running")
    age = (now - state.last_fetch_ok).total_seconds() if state.last_fetch_ok else None
    if age is None and (now - state.started).total_seconds() > 600:
        problems.append("no successful fetch since start")
    elif age is not None and age > state.fetch_stale_seconds:
        problems.append(f"last successful fetch {age / 3600:.1f} h ago")
    if state.stopping:
        problems.append("stopping")
    return {
        "ready": not problems,
        "problems": problems,
        "database": database,
        "scheduler_running": state.scheduler_running,
        "last_fetch_ok": state.last_fetch_ok.isoformat() if state.last_fetch_ok else None,
        "last_fetch_age_seconds": round(age) if age is not None else None,
        "last_fetch_error": state.last_fetch_error,
        "last_tick": state.last_tick.isoformat() if state.last_tick else None,
        "started": state.started.isoformat(),
    }
