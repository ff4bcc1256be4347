"""The Paper value type that every source produces and the rest of digestd consumes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

_ARXIV_ID = re.compile(r"^(?:\d{4}\.\d{4,5}|[a-z\-]+(?:\.[A-Z]{2})?/\d{7})$")
_VERSION = re.compile(r"v\d+$")
_SPACE = re.compile(r"\s+")


def fold(text: str) -> str:
    """Fold hard line wraps and runs of white space into single spaces.

    Feed text keeps its characters: LaTeX, ``<think>`` and the like stay as text and are
    escaped where they are shown, never interpreted.
    """
    return _SPACE.sub(" ", text).strip()


def normalise_arxiv_id(raw: str) -> str:
    """Return the versionless arXiv id of ``raw`` (an id, ``arXiv:`` id or abs/pdf URL).

    Raises ``ValueError`` when no arXiv id can be read from it.
    """
    text = raw.strip()
    for prefix in ("oai:arXiv.org:", "arXiv:", "arxiv:"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    for marker in ("/abs/", "/pdf/"):
        if marker in text:
            text = text.split(marker, 1)[1]
    text = text.removesuffix(".pdf")
    text = _VERSION.sub("", text)
    if not _ARXIV_ID.match(text):
        raise ValueError(f"not an arXiv id: {raw!r}")
    return text


@dataclass(frozen=True, slots=True)
class Paper:
    """One paper as a feed described it; ``id`` is the versionless arXiv id."""

    id: str
    title: str
    abstract: str
    authors: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    #: arXiv publication time (UTC-aware) when the feed gives it
    published: datetime | None = None
    #: the feed's one-sentence AI summary, when present (Daily Papers ``ai_summary``)
    summary: str = ""
    keywords: tuple[str, ...] = ()
    code_url: str = ""
    project_url: str = ""
    upvotes: int = 0
    #: which source produced it: "hf-daily-papers", "arxiv-rss", "arxiv-api", "json"
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def abs_url(self) -> str:
        return f"https://arxiv.org/abs/{self.id}"

    @property
    def pdf_url(self) -> str:
        return f"https://arxiv.org/pdf/{self.id}"

    @property
    def hf_url(self) -> str:
        return f"https://huggingface.co/papers/{self.id}"
