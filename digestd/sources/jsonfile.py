"""Daily Papers JSON files on disk (one file, or a folder of YYYY-MM-DD.json) → papers."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

from digestd.errors import FeedError
from digestd.paper import Paper
from digestd.sources import hf_daily

log = logging.getLogger(__name__)

SOURCE = "json"


def load(path: Path, *, day: date | None = None) -> list[Paper]:
    """Papers of the file ``path``, or of the ``*.json`` files in the folder ``path``.

    In a folder holding ``<day>.json`` only that file is read; otherwise every file, in name
    order. A paper listed twice (the archive has re-submissions on later days) is kept once,
    as the first file has it.
    """
    papers: list[Paper] = []
    for file in _files(path, day):
        papers += hf_daily.parse(_read(file), source=SOURCE, label=f"{SOURCE}: {file}")
    return hf_daily.dedupe(papers)


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except FileNotFoundError as exc:
        raise FeedError(f"{SOURCE}: {file} does not exist") from exc
    except OSError as exc:
        raise FeedError(f"{SOURCE}: cannot read {file}: {exc.strerror or exc}") from exc


def _files(path: Path, day: date | None) -> list[Path]:
    try:
        if not path.is_dir():
            return [path]
        daily = path / f"{day.isoformat()}.json" if day else None
        if daily and daily.is_file():
            return [daily]
        files = sorted(f for f in path.glob("*.json") if f.is_file())
    except OSError as exc:
        raise FeedError(f"{SOURCE}: cannot read {path}: {exc.strerror or exc}") from exc
    if not files:
        log.warning("%s: no *.json files in %s", SOURCE, path)
    return files
