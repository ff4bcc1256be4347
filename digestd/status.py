"""`digestd status`: the database's and the running daemon's account of the service."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import httpx

from digestd.config import Config
from digestd.pipeline import MAX_AGE
from digestd.store import Store


def report(config: Config, period: date, *, now: datetime | None = None) -> str:
    store = Store.open(config.database_url)
    try:
        lines = ["subscribers: " + _counts(store.subscriber_counts())]
        fetch = store.last_event("fetch")
        papers = store.count_papers()
        lines.append(f"papers stored: {papers}")
        model = config.matching.semantic_model
        if model:
            # what fetches embed and sends read: the papers of the window (pipeline.MAX_AGE)
            since = (now or datetime.now(UTC)) - MAX_AGE
            window = [p.id for p, _ in store.papers_seen_since(since)]
            lines.append(
                f"papers of the last {MAX_AGE.days} days embedded ({model}): "
                f"{len(store.meaning_ids(model, window))} of {len(window)}"
            )
            failed = store.last_event("embed")
            if failed is not None and (fetch is None or failed.created_at >= fetch.created_at):
                lines.append(f"  last fetch's embedding failed: {failed.reason}")
        lines.append(
            "last successful fetch: "
            + (f"{fetch.created_at:%Y-%m-%d %H:%M} UTC ({fetch.reason})" if fetch else "never")
        )
        for day in (period, period - timedelta(days=1)):
            lines.append(f"digests for {day}: " + _counts(store.delivery_counts(day)))
        reasons = store.unsent_reasons(period)
        if reasons:
            lines.append(f"not sent for {period} (subscriber id: status, reason):")
            lines += [f"  {sid}: {status}, {reply or '-'}" for sid, status, reply in reasons]
    finally:
        store.close()
    lines += _daemon(config)
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _daemon(config: Config) -> list[str]:
    host = "127.0.0.1" if config.web.host in ("0.0.0.0", "::", "") else config.web.host  # noqa: S104
    url = f"http://{host}:{config.web.port}/readyz"
    try:
        body = httpx.get(url, timeout=3.0).json()
    except (httpx.HTTPError, ValueError):
        return [f"daemon: not answering on {host}:{config.web.port}"]
    lines = [f"daemon: {'ready' if body.get('ready') else 'NOT ready'} (up since "
             f"{body.get('started', '?')})"]  # fmt: skip
    if body.get("problems"):
        lines.append("  problems: " + "; ".join(body["problems"]))
    if body.get("last_fetch_error"):
        lines.append(f"  last fetch error: {body['last_fetch_error']}")
    if body.get("last_tick"):
        lines.append(f"  last send tick: {body['last_tick']}")
    return lines
