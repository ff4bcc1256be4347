"""Hugging Face Daily Papers JSON → papers, and the HTTP GET that every source shares."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from digestd import __version__
from digestd.errors import FeedError
from digestd.paper import Paper, fold, normalise_arxiv_id

log = logging.getLogger(__name__)

SOURCE = "hf-daily-papers"
BASE_URL = "https://huggingface.co"
USER_AGENT = f"digestd/{__version__}"
#: per socket operation; a server that answers slowly but steadily is capped by TOTAL_TIMEOUT
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
TOTAL_TIMEOUT = 120.0
#: a whole day of any feed is a few MB; anything far larger is not a feed
MAX_BYTES = 64 * 1024 * 1024


def parse(data: bytes, *, source: str = SOURCE, label: str | None = None) -> list[Paper]:
    """Parse one Daily Papers API response; ``label`` names the document in messages."""
    where = label or source
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise FeedError(f"{where}: not valid JSON ({_one_line(exc)})") from exc
    if not isinstance(doc, list):
        raise FeedError(f"{where}: expected a JSON array of entries, got {type(doc).__name__}")
    papers = []
    for index, entry in enumerate(doc):
        paper = _paper(entry, source)
        if isinstance(paper, str):
            log.warning("%s: skipping entry %d: %s", where, index, paper)
        else:
            papers.append(paper)
    return dedupe(papers)


def _paper(entry: Any, source: str) -> Paper | str:
    """One entry → a Paper, or the reason it cannot be one."""
    paper = entry.get("paper") if isinstance(entry, dict) else None
    if not isinstance(paper, dict):
        return "no paper object"
    raw_id, title = paper.get("id"), paper.get("title")
    if not isinstance(raw_id, str) or not isinstance(title, str) or not fold(title):
        return "no paper id or title"
    try:
        id_ = normalise_arxiv_id(raw_id)
    except ValueError:
        return f"not an arXiv id: {raw_id!r}"
    keywords = paper.get("ai_keywords")
    upvotes = paper.get("upvotes")
    return Paper(
        id=id_,
        title=fold(title),
        abstract=fold(_str(paper.get("summary"))),
        authors=tuple(_authors(paper.get("authors"))),
        published=_utc(paper.get("publishedAt")),
        summary=fold(_str(paper.get("ai_summary"))),
        keywords=tuple(fold(k) for k in keywords if isinstance(k, str) and k.strip())
        if isinstance(keywords, list)
        else (),
        code_url=web_url(paper.get("githubRepo")),
        project_url=web_url(paper.get("projectPage")),
        # bool is an int subclass; a JSON true is not a vote count
        upvotes=upvotes if isinstance(upvotes, int) and not isinstance(upvotes, bool) else 0,
        source=source,
    )


def _authors(raw: Any) -> Iterable[str]:
    for author in raw if isinstance(raw, list) else ():
        if isinstance(author, Mapping) and author.get("hidden") is not True:
            name = fold(_str(author.get("name")))
            if name:
                yield name


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _utc(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(_str(value))
    except ValueError:
        return None
    # the API writes "...Z"; a stamp without an offset is taken as UTC too
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def web_url(value: Any) -> str:
    """``value`` stripped when it is an absolute http(s) URL, else "" (links go into emails)."""
    url = _str(value).strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return ""
    if any(c.isspace() or ord(c) < 32 for c in url):
        return ""
    return url


def dedupe(papers: Iterable[Paper]) -> list[Paper]:
    """Drop papers whose id was already seen; the first one wins."""
    seen: set[str] = set()
    out = []
    for paper in papers:
        if paper.id not in seen:
            seen.add(paper.id)
            out.append(paper)
    return out


async def fetch(client: httpx.AsyncClient, day: date, *, base_url: str = BASE_URL) -> list[Paper]:
    """GET the Daily Papers listing for ``day`` and parse it."""
    url = f"{base_url.rstrip('/')}/api/daily_papers"
    return parse(await get(client, url, source=SOURCE, params={"date": day.isoformat()}))


async def get(
    client: httpx.AsyncClient,
    url: str,
    *,
    source: str,
    params: Mapping[str, str | int] | None = None,
) -> bytes:
    """GET ``url`` and return the body; every failure becomes a one-line ``FeedError``."""
    try:
        request = client.build_request(
            "GET", url, params=params, headers={"User-Agent": USER_AGENT}, timeout=TIMEOUT
        )
    except httpx.InvalidURL as exc:  # not an HTTPError: raised before any request exists
        raise FeedError(f"{source}: invalid URL ({_one_line(exc)})") from exc
    shown = _redact(request.url)
    try:
        async with asyncio.timeout(TOTAL_TIMEOUT):
            response = await client.send(request, stream=True, follow_redirects=True)
            try:
                if not response.is_success:
                    raise FeedError(f"{source}: HTTP {response.status_code} from {shown}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BYTES:
                        raise FeedError(f"{source}: {shown} sent more than {MAX_BYTES} bytes")
            finally:
                await response.aclose()
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise FeedError(f"{source}: timed out fetching {shown}") from exc
    except httpx.HTTPError as exc:
        raise FeedError(f"{source}: cannot fetch {shown}: {_one_line(exc)}") from exc
    return bytes(body)


def _redact(url: httpx.URL) -> str:
    """The URL as it may appear in logs: credentials in a configured base URL stay out."""
    return str(url.copy_with(username=None, password=None)) if url.userinfo else str(url)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
