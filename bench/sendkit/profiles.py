"""Subscribers and paper days for the send benchmark, drawn from real Daily Papers days."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any

from digestd.paper import Paper
from digestd.sources import jsonfile

DATA = Path(__file__).resolve().parent.parent / "relevance" / "data"
#: where the subscribers live: every continent, both sides of the date line, half-hour zones
ZONES = (
    "America/Los_Angeles",
    "America/Denver",
    "America/Chicago",
    "America/New_York",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Helsinki",
    "Africa/Lagos",
    "Asia/Kolkata",
    "Asia/Shanghai",
    "Asia/Seoul",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
)
DOMAINS = ("example.org", "example.com", "example.net", "mail.example.edu")
AUTHOR_SHARE = 0.20
EXCLUDE_SHARE = 0.15


@dataclass(frozen=True)
class Day:
    """One Daily Papers file: its date and its papers."""

    name: str
    papers: list[Paper]


def load_days(folder: Path = DATA) -> list[Day]:
    """Every ``YYYY-MM-DD.json`` of ``folder``, oldest first, parsed as the json source does."""
    return [Day(f.stem, jsonfile.load(f)) for f in sorted(folder.glob("*.json"))]


def schedule(days: list[Day], window: int, now: datetime) -> list[tuple[datetime, Day]]:
    """When each day's papers were first seen, oldest first.

    The ``window`` busiest days (a conservative load) fall within the last ``window`` days, so
    they are what a digest with ``[digest] lookback = window`` draws from; the other days are
    spread over the month before, where they are no longer news but still teach the matcher
    term rarity and acronyms, as a month of stored papers does in a running daemon.
    """
    busiest = sorted(days, key=lambda d: (-len(d.papers), d.name))[:window]
    older = [d for d in days if d not in busiest]
    recent = sorted(busiest, key=lambda d: d.name)
    # Older days 2 days apart before the window; all stay inside the run's 31-day horizon.
    step = min(2.0, (28.0 - window) / max(1, len(older)))
    out = [
        (now - timedelta(days=window + 0.5 + step * (len(older) - i - 1)), d)
        for i, d in enumerate(older)
    ]
    out += [(now - timedelta(days=len(recent) - i - 0.5), d) for i, d in enumerate(recent)]
    return out


@dataclass(frozen=True)
class Vocabulary:
    """What profiles are made of: the papers' AI keywords (by frequency) and their authors."""

    topics: tuple[str, ...]
    cum_weights: tuple[int, ...]
    authors: tuple[str, ...]

    @classmethod
    def of(cls, papers: Iterable[Paper]) -> Vocabulary:
        counts: Counter[str] = Counter()
        forms: dict[str, Counter[str]] = {}
        authors: dict[str, None] = {}
        for p in {p.id: p for p in papers}.values():
            for k in p.keywords:
                key = " ".join(k.split()).casefold()
                counts[key] += 1
                forms.setdefault(key, Counter())[" ".join(k.split())] += 1
            authors.update(dict.fromkeys(a for a in p.authors if a.strip()))
        keys = sorted(counts, key=lambda k: (-counts[k], k))
        if not keys or not authors:
            raise ValueError("no AI keywords or authors in the papers")
        # The spelling the papers use most for each keyword, as a reader would type it.
        topics = tuple(forms[k].most_common(1)[0][0] for k in keys)
        return cls(topics, tuple(accumulate(counts[k] for k in keys)), tuple(authors))

    def record(self, rng: random.Random, n: int, period: date) -> dict[str, Any]:
        """Subscriber ``n``'s import record; every one of them is due on ``period``."""
        topics = _distinct(rng.choices(self.topics, cum_weights=self.cum_weights, k=4))
        rec: dict[str, Any] = {
            "email": f"reader{n}@{DOMAINS[n % len(DOMAINS)]}",
            "topics": topics[: rng.randint(1, 4)],
            "timezone": rng.choice(ZONES),
            "send_time": f"{rng.randint(5, 9):02d}:{rng.choice((0, 15, 30, 45)):02d}",
        }
        if rng.random() < AUTHOR_SHARE:
            rec["authors"] = rng.sample(self.authors, rng.randint(1, 2))
        if rng.random() < EXCLUDE_SHARE:
            taken = {t.casefold() for t in topics}
            drawn = rng.choices(self.topics, cum_weights=self.cum_weights, k=3)
            other = [t for t in drawn if t.casefold() not in taken]
            rec["exclude"] = other[:1]
        r = rng.random()
        if r < 0.05:
            rec |= {"frequency": "weekly", "weekly_day": period.weekday()}
        elif r < 0.15 and period.weekday() < 5:
            rec["frequency"] = "weekdays"
        r = rng.random()
        if r < 0.15:
            rec["max_papers"] = 5
        elif r < 0.25:
            rec["max_papers"] = 20
        if rng.random() < 0.03:
            rec["empty_note"] = True
        return rec


def _distinct(values: Iterable[str]) -> list[str]:
    seen: dict[str, str] = {}
    for v in values:
        seen.setdefault(v.casefold(), v)
    return list(seen.values())


def records(vocab: Vocabulary, n: int, period: date, seed: int) -> Iterator[dict[str, Any]]:
    """``n`` import records, one at a time, the same ones for the same seed."""
    rng = random.Random(seed)
    for i in range(1, n + 1):
        yield vocab.record(rng, i, period)


class Tally:
    """What the written profiles hold, counted as they stream past (memory: the vocabulary)."""

    def __init__(self) -> None:
        self.count = self.topics = self.with_authors = self.with_exclude = 0
        self.distinct: set[str] = set()

    def add(self, rec: dict[str, Any]) -> dict[str, Any]:
        self.count += 1
        self.topics += len(rec["topics"])
        self.distinct.update(t.casefold() for t in rec["topics"])
        self.with_authors += "authors" in rec
        self.with_exclude += "exclude" in rec
        return rec

    def figures(self, vocab: Vocabulary) -> dict[str, Any]:
        n = max(1, self.count)
        return {
            "topics_per_profile": self.topics / n,
            "distinct_topics": len(self.distinct),
            "vocabulary": len(vocab.topics),
            "with_authors": self.with_authors / n,
            "with_exclude": self.with_exclude / n,
        }


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Stream ``rows`` to ``path`` as JSON Lines (what ``digestd import`` reads)."""
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
