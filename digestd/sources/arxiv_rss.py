"""arXiv RSS listings → papers, and the feed and category checks both arXiv sources share."""

from __future__ import annotations

import calendar
import io
import logging
import re
import xml.sax
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import feedparser
import httpx

from digestd.errors import FeedError, InvalidInput
from digestd.paper import Paper, fold, normalise_arxiv_id
from digestd.sources.hf_daily import dedupe, get

log = logging.getLogger(__name__)

SOURCE = "arxiv-rss"
BASE_URL = "https://rss.arxiv.org"
#: an archive (math, q-bio) and maybe a subject class (cs.LG, cond-mat.mes-hall)
_CATEGORY = re.compile(r"[a-z]+(?:-[a-z]+)*(?:\.[A-Za-z]+(?:-[a-z]+)*)?")
# the description opens "arXiv:2609.26811v1 Announce Type: new \nAbstract: " before the text
_HEADER = re.compile(r"\s*(?:arXiv:\S+\s+)?(?:Announce Type:\s*([\w-]+)\s+)?Abstract:")
_REPLACEMENTS = frozenset({"replace", "replace-cross"})
_AND = re.compile(r"\s+and\s+")
_KINDS = {"rss": "an RSS", "atom": "an Atom"}
# the XML parsed strictly after all; feedparser only notes the declared encoding was off
_HARMLESS = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)


def parse(data: bytes, *, include_replacements: bool = False) -> list[Paper]:
    """Parse one RSS listing; replaced (updated old) papers are dropped unless asked for."""
    feed = read_feed(data, source=SOURCE, kind="rss")
    papers = []
    for index, entry in enumerate(feed.entries):
        paper = _paper(entry)
        if isinstance(paper, str):
            log.warning("%s: skipping item %d: %s", SOURCE, index, paper)
        elif include_replacements or paper.extra["announce_type"] not in _REPLACEMENTS:
            papers.append(paper)
    return dedupe(papers)


def _paper(entry: Any) -> Paper | str:
    """One ``<item>`` → a Paper, or the reason it cannot be one."""
    title = fold(entry.get("title", ""))
    if not title:
        return "no title"
    try:
        id_ = normalise_arxiv_id(entry.get("id") or entry.get("link", ""))
    except ValueError as exc:
        return str(exc)
    description = entry.get("summary", "")
    header = _HEADER.match(description)
    abstract = description[header.end() :] if header else description
    announce = entry.get("arxiv_announce_type") or (header and header.group(1)) or ""
    return Paper(
        id=id_,
        title=title,
        abstract=fold(abstract),
        authors=tuple(_authors(entry)),
        categories=terms(entry.get("tags", ())),
        published=published(entry),
        source=SOURCE,
        extra={"announce_type": fold(announce).lower()}
        | ({"doi": fold(entry["arxiv_doi"])} if entry.get("arxiv_doi") else {}),
    )


def _authors(entry: Any) -> Iterable[str]:
    """Names from ``dc:creator``: one string "A, B, C" (some feeds write "A, B and C")."""
    for creator in entry.get("authors") or [{"name": entry.get("author", "")}]:
        pieces = [fold(p) for p in creator.get("name", "").split(",")]
        if pieces:
            pieces[-1:] = _AND.split(pieces[-1].removeprefix("and "))
        yield from (p for p in pieces if p)


def terms(tags: Iterable[Any], *, first: str = "") -> tuple[str, ...]:
    """Category terms in document order, ``first`` (the primary) leading, each once."""
    out = [first] if first else []
    for tag in tags:
        term = fold(tag.get("term") or "")
        if term and term not in out:
            out.append(term)
    return tuple(out)


def published(entry: Any) -> datetime | None:
    """The entry's publication time as UTC (feedparser has already converted it)."""
    parsed = entry.get("published_parsed")
    return datetime.fromtimestamp(calendar.timegm(parsed), UTC) if parsed else None


def read_feed(data: bytes, *, source: str, kind: Literal["rss", "atom"]) -> Any:
    """Run feedparser over ``data`` and check that it is a whole ``kind`` feed.

    Feed text is plain text, so feedparser's HTML sanitiser stays off: it would delete
    ``<think>``-style words and everything after a ``<`` in ``$x<y$``. XML entities are
    still decoded exactly once by the XML parser.
    """
    # bytes, not str: feedparser would treat a str as a URL or file name and open it
    feed = feedparser.parse(io.BytesIO(data), sanitize_html=False, resolve_relative_uris=False)
    version = feed.get("version") or ""
    problem = feed.get("bozo_exception") if feed.get("bozo") else None
    if problem is not None and not isinstance(problem, _HARMLESS):
        # arXiv serves well-formed XML; a break means a truncated body or an error page, and a
        # partial listing would silently lose papers where a retry would get them all
        raise FeedError(f"{source}: not a well-formed feed ({_describe(problem)})")
    if not version.startswith(kind):
        got = f"feed type {version}" if version else "no feed"
        raise FeedError(f"{source}: expected {_KINDS[kind]} feed, found {got}")
    if problem is not None:
        log.warning("%s: %s", source, _describe(problem))
    return feed


def _describe(problem: BaseException) -> str:
    if isinstance(problem, xml.sax.SAXParseException):
        return f"{problem.getMessage()} at line {problem.getLineNumber()}"
    return " ".join(str(problem).split()) or type(problem).__name__


def check_categories(categories: Sequence[str]) -> tuple[str, ...]:
    """Return ``categories`` as a tuple, or raise ``InvalidInput`` before any URL is built."""
    if isinstance(categories, str):
        categories = [categories]
    if not categories:
        raise InvalidInput("at least one arXiv category is needed, such as cs.LG")
    for category in categories:
        if not isinstance(category, str) or not _CATEGORY.fullmatch(category):
            raise InvalidInput(f"{category!r} is not an arXiv category such as cs.LG")
    return tuple(categories)


async def fetch(
    client: httpx.AsyncClient,
    categories: Sequence[str],
    *,
    base_url: str = BASE_URL,
    include_replacements: bool = False,
) -> list[Paper]:
    """GET today's combined listing of ``categories`` and parse it."""
    path = "+".join(check_categories(categories))
    data = await get(client, f"{base_url.rstrip('/')}/rss/{path}", source=SOURCE)
    return parse(data, include_replacements=include_replacements)
