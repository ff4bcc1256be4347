"""arXiv API Atom responses (export.arxiv.org/api/query) → papers, in both serialisations."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import httpx

from digestd.errors import FeedError
from digestd.paper import Paper, fold, normalise_arxiv_id
from digestd.sources.arxiv_rss import check_categories, published, read_feed, terms
from digestd.sources.hf_daily import dedupe, get

log = logging.getLogger(__name__)

SOURCE = "arxiv-api"
BASE_URL = "https://export.arxiv.org"
#: the API hands out at most 2,000 results per request
MAX_RESULTS = 2000
# entry element → Paper.extra key, for the optional arXiv fields worth showing
_EXTRA = {"arxiv_doi": "doi", "arxiv_journal_ref": "journal_ref", "arxiv_comment": "comment"}


def parse(data: bytes) -> list[Paper]:
    """Parse one API response (legacy or 2025 serialisation; feedparser reads both alike)."""
    feed = read_feed(data, source=SOURCE, kind="atom")
    papers = []
    for index, entry in enumerate(feed.entries):
        if "/api/errors" in entry.get("id", ""):
            # a bad query is answered 200 with one "Error" entry that explains it
            reason = fold(entry.get("summary", ""))
            raise FeedError(f"{SOURCE}: the API reported an error: {reason}")
        paper = _paper(entry)
        if isinstance(paper, str):
            log.warning("%s: skipping entry %d: %s", SOURCE, index, paper)
        else:
            papers.append(paper)
    return dedupe(papers)


def _paper(entry: Any) -> Paper | str:
    """One ``<entry>`` → a Paper, or the reason it cannot be one."""
    title = fold(entry.get("title", ""))
    if not title:
        return "no title"
    try:
        id_ = normalise_arxiv_id(entry.get("id", ""))
    except ValueError as exc:
        return str(exc)
    primary = entry.get("arxiv_primary_category") or {}
    return Paper(
        id=id_,
        title=title,
        # the legacy serialisation wraps lines and indents abstracts by two spaces
        abstract=fold(entry.get("summary", "")),
        authors=tuple(n for n in (fold(a.get("name", "")) for a in entry.get("authors", ())) if n),
        categories=terms(entry.get("tags", ()), first=fold(primary.get("term") or "")),
        published=published(entry),
        source=SOURCE,
        extra={key: fold(entry[name]) for name, key in _EXTRA.items() if entry.get(name)},
    )


async def fetch(
    client: httpx.AsyncClient,
    categories: Sequence[str],
    *,
    max_results: int = 200,
    base_url: str = BASE_URL,
) -> list[Paper]:
    """GET the newest submissions in ``categories`` and parse them."""
    query = " OR ".join(f"cat:{c}" for c in check_categories(categories))
    if isinstance(max_results, bool) or not 1 <= max_results <= MAX_RESULTS:
        raise ValueError(f"max_results must be between 1 and {MAX_RESULTS}, not {max_results!r}")
    params: dict[str, str | int] = {
        "search_query": query,
        "sortBy": "submittedDate",
        "sortOrder": "descending",
        "max_results": max_results,
    }
    url = f"{base_url.rstrip('/')}/api/query"
    return parse(await get(client, url, source=SOURCE, params=params))
