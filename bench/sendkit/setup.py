"""The send benchmark's database, configuration, papers and subscriber import."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import sqlalchemy as sa

from bench.sendkit.profiles import Day
from digestd.config import toml_value
from digestd.store import Store


@contextmanager
def database(url: str | None, workdir: Path, *, keep: bool) -> Iterator[str]:
    """The URL of an empty database for one run: a SQLite file in ``workdir`` by default, or
    the PostgreSQL database named in ``url``, created here and dropped afterwards."""
    if url is None or url.startswith("sqlite"):
        yield url or f"sqlite:///{workdir / 'digestd.db'}"
        return
    target = sa.make_url(url)
    name = target.database
    if not name or not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise SystemExit(f"--database: name a database (letters, digits, _) in {url!r}")
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if exists:
                raise SystemExit(
                    f"database {name} exists; the bench creates its own. Drop it "
                    f'(DROP DATABASE "{name}") or name another.'
                )
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield target.render_as_string(hide_password=False)
        finally:
            if not keep:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def write_config(
    path: Path,
    *,
    url: str,
    port: int,
    pool_size: int,
    lookback: int,
    papers: Path,
    extra: dict[str, dict[str, object]] | None = None,
) -> None:
    """A digestd config file: the bench's database, the server on loopback, no rate limit;
    ``extra`` adds or overrides settings, table by table (``{"schedule": {...}}``)."""
    work = path.parent
    tables: dict[str, dict[str, object]] = {
        "database": {"url": url},
        "smtp": {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "from": "Paper digest <digest@example.org>",
            "pool_size": pool_size,
            "rate_limit": 0,
        },
        "outbox": {"path": str(work / "outbox")},
        "web": {
            "base_url": "https://digest.example.org",
            "secret_key_file": str(work / "secret_key"),
        },
        "digest": {"lookback": lookback},
    }
    for table, body in (extra or {}).items():
        tables[table] = {**tables.get(table, {}), **body}
    lines: list[str] = []
    for table, body in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
    lines += ["[[sources]]", 'type = "json"', f"path = {toml_value(str(papers))}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def store_papers(url: str, plan: list[tuple[datetime, Day]], semantic_model: str = "") -> int:
    """Store each day's papers as first seen at its planned time (migrating the schema), and
    with ``semantic_model`` their embeddings, as the daemon's fetches would have."""
    store = Store.open(url)
    try:
        stored = sum(store.add_papers(day.papers, seen_at=at) for at, day in plan)
    finally:
        store.close()
    if semantic_model:
        # In a process of its own: the model's 0.5 GB would otherwise stay in this one, and
        # the send workers it starts would report it as their peak RSS (kept across exec).
        embedder = get_context("spawn").Process(target=_embed, args=(url, semantic_model))
        embedder.start()
        embedder.join()
        if embedder.exitcode:
            raise SystemExit(f"embedding the papers failed ({embedder.exitcode})")
    return stored


def _embed(url: str, model: str) -> None:
    from digestd.matching import semantic

    store = Store.open(url)
    try:
        papers = [p for p, _ in store.papers_seen_since(datetime.min.replace(tzinfo=UTC))]
        store.save_meanings(model, semantic.model(model).encode(papers))
    finally:
        store.close()


@dataclass(frozen=True)
class Imported:
    added: int
    refused: int
    seconds: float


def digestd_command() -> list[str]:
    script = Path(sys.executable).with_name("digestd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "digestd.cli"]


def import_subscribers(config: Path, jsonl: Path) -> Imported:
    """``digestd --config CONFIG import JSONL``, timed from process start to exit."""
    start = time.perf_counter()
    done = subprocess.run(
        [*digestd_command(), "--config", str(config), "import", str(jsonl)],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    m = re.search(r"imported (\d+), refused (\d+)", done.stdout)
    if m is None:
        raise RuntimeError(f"digestd import failed ({done.returncode}): {done.stderr[-2000:]}")
    return Imported(int(m[1]), int(m[2]), seconds)
