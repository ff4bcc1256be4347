"""The Source protocol, one Source class per feed, and ``build_source`` that picks one by type."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Protocol

import httpx

from digestd.paper import Paper
from digestd.sources import arxiv_api, arxiv_rss, hf_daily, jsonfile

__all__ = [
    "ArxivApiSource",
    "ArxivRssSource",
    "HfDailySource",
    "JsonSource",
    "Source",
    "build_source",
]


class Source(Protocol):
    """Anything that yields the papers of one day; failures raise ``FeedError``."""

    name: str

    async def fetch(self, day: date) -> list[Paper]: ...


class HfDailySource:
    """Hugging Face Daily Papers for the asked day."""

    name: str = hf_daily.SOURCE

    def __init__(self, client: httpx.AsyncClient, base_url: str = hf_daily.BASE_URL) -> None:
        self.client = client
        self.base_url = base_url

    async def fetch(self, day: date) -> list[Paper]:
        return await hf_daily.fetch(self.client, day, base_url=self.base_url)


class ArxivRssSource:
    """Today's arXiv listing; the feed has no archive, so ``day`` is not sent."""

    name: str = arxiv_rss.SOURCE

    def __init__(
        self,
        client: httpx.AsyncClient,
        categories: Sequence[str],
        base_url: str = arxiv_rss.BASE_URL,
    ) -> None:
        self.client = client
        self.categories = arxiv_rss.check_categories(categories)
        self.base_url = base_url

    async def fetch(self, day: date) -> list[Paper]:
        return await arxiv_rss.fetch(self.client, self.categories, base_url=self.base_url)


class ArxivApiSource:
    """The newest arXiv submissions by submission time; ``day`` is not sent."""

    name: str = arxiv_api.SOURCE

    def __init__(
        self,
        client: httpx.AsyncClient,
        categories: Sequence[str],
        max_results: int = 200,
        base_url: str = arxiv_api.BASE_URL,
    ) -> None:
        self.client = client
        self.categories = arxiv_rss.check_categories(categories)
        self.max_results = max_results
        self.base_url = base_url

    async def fetch(self, day: date) -> list[Paper]:
        return await arxiv_api.fetch(
            self.client, self.categories, max_results=self.max_results, base_url=self.base_url
        )


class JsonSource:
    """Daily Papers JSON saved on disk: one file, or a folder with one file per day."""

    name: str = jsonfile.SOURCE

    def __init__(self, path: Path) -> None:
        self.path = path

    async def fetch(self, day: date) -> list[Paper]:
        # file reads and JSON parsing block; keep them off the event loop
        return await asyncio.to_thread(jsonfile.load, self.path, day=day)


def build_source(
    type_: str,
    *,
    client: httpx.AsyncClient | None,
    path: Path | None = None,
    categories: Sequence[str] = (),
    base_url: str | None = None,
) -> Source:
    """The Source for a ``[[sources]]`` entry; ``ValueError`` when a needed part is missing."""
    if type_ == jsonfile.SOURCE:
        if path is None:
            raise ValueError("source type json needs a path")
        return JsonSource(path)
    if type_ not in (hf_daily.SOURCE, arxiv_rss.SOURCE, arxiv_api.SOURCE):
        known = ", ".join((hf_daily.SOURCE, arxiv_rss.SOURCE, arxiv_api.SOURCE, jsonfile.SOURCE))
        raise ValueError(f"unknown source type {type_!r}; expected one of {known}")
    if client is None:
        raise ValueError(f"source type {type_} needs an HTTP client")
    if type_ == hf_daily.SOURCE:
        return HfDailySource(client, base_url or hf_daily.BASE_URL)
    if type_ == arxiv_rss.SOURCE:
        return ArxivRssSource(client, categories, base_url or arxiv_rss.BASE_URL)
    return ArxivApiSource(client, categories, base_url=base_url or arxiv_api.BASE_URL)
