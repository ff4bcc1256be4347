"""Shared fixtures: temp config and SQLite file, the bundled feed data, a loopback SMTP server."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from digestd.config import toml_value
from tests.smtp_server import smtp_server, smtp_server_thread

__all__ = ["smtp_server", "smtp_server_thread"]

DATA = Path(__file__).parent / "data"
HF_DAYS = DATA / "hf-daily-papers"
#: a PostgreSQL server URL (any database on it); when set, every test runs on PostgreSQL,
#: each in a database of its own, instead of a SQLite file. `.ci/run` runs the suite both ways.
POSTGRES = os.environ.get("DIGESTD_TEST_POSTGRES", "")


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test: a SQLite file, or a new PostgreSQL database."""
    if not POSTGRES:
        yield f"sqlite:///{tmp_path / 'digestd.db'}"
        return
    name = f"digestd_test_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def dump_database(url: str) -> str:
    """Every row of every table, in a stable order: equal dumps mean nothing changed."""
    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        lines = []
        with engine.connect() as conn:
            for name in sorted(meta.tables):
                table = meta.tables[name]
                rows = conn.execute(sa.select(table)).all()
                lines += sorted(f"{name}: {tuple(row)}" for row in rows)
        return "\n".join(lines)
    finally:
        engine.dispose()


@pytest.fixture
def feed_dir(tmp_path: Path) -> Path:
    """A folder source holding one real day of Daily Papers (2026-08-14); tests add more."""
    folder = tmp_path / "feed"
    folder.mkdir()
    shutil.copy(HF_DAYS / "2026-08-14.json", folder)
    return folder


@pytest.fixture
def write_config(tmp_path: Path, feed_dir: Path, database_url: str) -> Callable[..., Path]:
    """Write a config file over temp paths; keyword ``table__key=value`` overrides a value."""

    def write(**overrides: Any) -> Path:
        tables: dict[str, dict[str, Any]] = {
            "database": {"url": database_url},
            "outbox": {"path": str(tmp_path / "outbox")},
            "web": {
                "base_url": "https://digest.example.org",
                "secret_key_file": str(tmp_path / "secret_key"),
            },
            "smtp": {"from": "Paper digest <digest@example.org>", "rate_limit": 0},
        }
        for name, value in overrides.items():
            table, key = name.split("__")
            tables.setdefault(table, {})[key] = value
        lines = []
        for table, body in tables.items():
            lines.append(f"[{table}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
        lines += ["[[sources]]", 'type = "json"', f"path = {toml_value(feed_dir)}"]
        path = tmp_path / "digestd.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Any]:
    """Subprocesses a test starts (daemons, relay, feed server), all stopped at its end."""
    from tests.daemons import Processes  # here, not at the top: tests.daemons imports this

    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.close()
