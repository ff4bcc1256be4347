"""Shared fixtures: temp config and SQLite file, the bundled feed data, a loopback SMTP server."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.smtp_server import smtp_server, smtp_server_thread

__all__ = ["smtp_server", "smtp_server_thread"]

DATA = Path(__file__).parent / "data"
HF_DAYS = DATA / "hf-daily-papers"


@pytest.fixture
def feed_dir(tmp_path: Path) -> Path:
    """A folder source holding one real day of Daily Papers (2026-08-14); tests add more."""
    folder = tmp_path / "feed"
    folder.mkdir()
    shutil.copy(HF_DAYS / "2026-08-14.json", folder)
    return folder


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture
def write_config(tmp_path: Path, feed_dir: Path) -> Callable[..., Path]:
    """Write a config file over temp paths; keyword ``table__key=value`` overrides a value."""

    def write(**overrides: Any) -> Path:
        tables: dict[str, dict[str, Any]] = {
            "database": {"url": f"sqlite:///{tmp_path / 'digestd.db'}"},
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
            lines += [f"{k} = {_toml(v)}" for k, v in body.items()]
        lines += ["[[sources]]", 'type = "json"', f"path = {_toml(feed_dir)}"]
        path = tmp_path / "digestd.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write
