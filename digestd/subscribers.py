"""Validated subscriber input: the one path every front (CLI, import, web, mail) goes through."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, validate_email

from digestd.config import check_timezone
from digestd.errors import InvalidAddress, InvalidInput
from digestd.matcher import DEFAULT_MAX_PAPERS, DEFAULT_MIN_SCORE
from digestd.models import Frequency, PrefKind

MAX_ITEMS = 20  # per kind of preference
MAX_LENGTH = 200  # per phrase
#: more would push the HTML past Gmail's ~102 KB clipping point (and nobody reads 50)
MAX_PAPERS = 30
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_CATEGORY = re.compile(r"^[a-z\-]+(\.[A-Za-z\-]+)?$")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def normalise_email(raw: str) -> str:
    """The normalised form of an address, or InvalidAddress with email-validator's reason."""
    if not isinstance(raw, str) or any(c in raw for c in "\r\n\0"):
        raise InvalidAddress("invalid email address: must be one line of text")
    try:
        # No DNS look-up: a subscription must not depend on the resolver, and the
        # confirmation mail proves the address anyway. Lower-cased whole, as listmonk does:
        # Alice@ and alice@ are one person at every real provider, and must be one row.
        return validate_email(raw.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise InvalidAddress(f"invalid email address {raw.strip()!r}: {exc}") from None


def _phrases(kind: str, values: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    seen: set[str] = set()
    for raw in values:
        if len(out) > MAX_ITEMS:
            break  # refused below; never spend time on the rest of a flood
        if not isinstance(raw, str):
            raise InvalidInput(f"{kind}: each value must be text")
        v = " ".join(raw.split())
        if not v:
            continue
        if len(v) > MAX_LENGTH:
            raise InvalidInput(f"{kind} {v[:30]!r}…: longer than {MAX_LENGTH} characters")
        if kind == "category" and not _CATEGORY.match(v):
            raise InvalidInput(f"category {v!r}: not an arXiv category such as cs.LG")
        if v.casefold() not in seen:
            seen.add(v.casefold())
            out.append(v)
    if len(out) > MAX_ITEMS:
        raise InvalidInput(f"at most {MAX_ITEMS} values for {kind}")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SubscriberInput:
    email: str
    topics: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    send_time: str = "07:00"
    timezone: str = "UTC"
    frequency: str = Frequency.DAILY
    weekly_day: int = 0
    max_papers: int = DEFAULT_MAX_PAPERS
    min_score: float = DEFAULT_MIN_SCORE
    #: a short "nothing matched" note on days without a match, instead of silence
    empty_note: bool = False

    def preferences(self) -> list[tuple[PrefKind, tuple[str, ...]]]:
        return [
            (PrefKind.TOPIC, self.topics),
            (PrefKind.EXCLUDE, self.exclude),
            (PrefKind.AUTHOR, self.authors),
            (PrefKind.CATEGORY, self.categories),
        ]


def make_input(
    email: str,
    *,
    topics: Iterable[str] = (),
    exclude: Iterable[str] = (),
    authors: Iterable[str] = (),
    categories: Iterable[str] = (),
    send_time: str = "07:00",
    timezone: str = "UTC",
    frequency: str = "daily",
    weekly_day: int | str = 0,
    max_papers: int = DEFAULT_MAX_PAPERS,
    min_score: float = DEFAULT_MIN_SCORE,
    empty_note: bool = False,
) -> SubscriberInput:
    """Validate everything a person typed; InvalidInput/InvalidAddress names the bad field."""
    address = normalise_email(email)
    t = _phrases("topic", topics)
    a = _phrases("author", authors)
    c = _phrases("category", categories)
    if not (t or a or c):
        raise InvalidInput("give at least one topic, author or category")
    if not isinstance(send_time, str) or not _TIME.match(send_time.strip()):
        raise InvalidInput(f"send time {send_time!r}: use HH:MM, 24-hour, e.g. 07:30")
    try:
        check_timezone(timezone)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if frequency not in {f.value for f in Frequency}:
        raise InvalidInput(f"frequency {frequency!r}: use daily, weekdays or weekly")
    if isinstance(weekly_day, str):
        day = weekly_day.strip().lower()
        if day[:3] not in {d[:3] for d in _DAYS}:
            raise InvalidInput(f"weekly day {weekly_day!r}: use a day name such as monday")
        weekly_day = [d[:3] for d in _DAYS].index(day[:3])
    if (
        isinstance(max_papers, bool)
        or not isinstance(max_papers, int)
        or not 1 <= max_papers <= MAX_PAPERS
    ):
        raise InvalidInput(f"max papers: a whole number from 1 to {MAX_PAPERS}")
    if not isinstance(empty_note, bool):
        raise InvalidInput("empty note: true or false")
    if not isinstance(min_score, int | float) or not 0 <= min_score <= 1:
        raise InvalidInput("minimum score: a number from 0 to 1")
    return SubscriberInput(
        email=address,
        topics=t,
        exclude=_phrases("exclude", exclude),
        authors=a,
        categories=c,
        send_time=send_time.strip(),
        timezone=timezone,
        frequency=frequency,
        weekly_day=weekly_day,
        max_papers=max_papers,
        min_score=float(min_score),
        empty_note=empty_note,
    )


IMPORT_KEYS = {
    "email",
    "topics",
    "authors",
    "exclude",
    "categories",
    "send_time",
    "timezone",
    "frequency",
    "weekly_day",
    "max_papers",
    "min_score",
    "empty_note",
}


def from_record(record: Mapping[str, Any]) -> SubscriberInput:
    """A SubscriberInput from one JSON Lines import record."""
    if not isinstance(record, Mapping):
        raise InvalidInput("each line must be a JSON object")
    unknown = set(record) - IMPORT_KEYS
    if unknown:
        raise InvalidInput("unknown field(s): " + ", ".join(sorted(unknown)))
    if "email" not in record:
        raise InvalidInput("missing field: email")
    lists = {}
    for key in ("topics", "authors", "exclude", "categories"):
        v = record.get(key, [])
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list):
            raise InvalidInput(f"{key} must be a list of strings")
        lists[key] = v
    return make_input(
        record["email"],
        topics=lists["topics"],
        authors=lists["authors"],
        exclude=lists["exclude"],
        categories=lists["categories"],
        send_time=record.get("send_time", "07:00"),
        timezone=record.get("timezone", "UTC"),
        frequency=record.get("frequency", "daily"),
        weekly_day=record.get("weekly_day", 0),
        max_papers=record.get("max_papers", DEFAULT_MAX_PAPERS),
        min_score=record.get("min_score", DEFAULT_MIN_SCORE),
        empty_note=record.get("empty_note", False),
    )
