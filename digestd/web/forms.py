"""HTML form fields ⇄ :func:`digestd.subscribers.make_input` keywords; validation stays there."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from functools import cache
from typing import Any

from starlette.datastructures import FormData

from digestd.errors import InvalidInput

#: list fields, named as make_input's keywords
LISTS = ("topics", "exclude", "authors", "categories")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_SPLIT_CATEGORIES = re.compile(r"[\s,;]+")


@cache
def timezones() -> tuple[str, ...]:
    """IANA zone names for the form's suggestions, UTC first."""
    zones = sorted(z for z in zoneinfo.available_timezones() if "/" in z and "Etc/" not in z)
    return ("UTC", *zones)


def _text(form: FormData, name: str) -> list[str]:
    values = []
    for v in form.getlist(name):
        if not isinstance(v, str):  # a file upload where text belongs
            raise InvalidInput(f"{name} must be text")
        values.append(v)
    return values


def preferences(form: FormData, *, max_papers: int, min_score: float) -> dict[str, Any]:
    """make_input keywords (all but the address) from a subscribe or manage form.

    Lists come one per line (categories may also be separated by commas or spaces);
    numbers are parsed here so a bad one gets make_input's own message. Fields the form
    leaves out or empty take the defaults given.
    """
    fields: dict[str, Any] = {}
    for key in LISTS:
        raw = "\n".join(_text(form, key))
        parts = _SPLIT_CATEGORIES.split(raw) if key == "categories" else raw.splitlines()
        fields[key] = [p.strip() for p in parts if p.strip()]
    for key, default in (("send_time", "07:00"), ("timezone", "UTC"), ("frequency", "daily")):
        fields[key] = (_text(form, key) or [default])[-1].strip() or default
    day = (_text(form, "weekly_day") or ["0"])[-1].strip()
    fields["weekly_day"] = int(day) if day.isdigit() and int(day) < 7 else day
    fields["max_papers"] = _number(form, "max_papers", int, max_papers,
                                   "max papers: a whole number from 1 to 30")  # fmt: skip
    fields["min_score"] = _number(form, "min_score", float, min_score,
                                  "minimum score: a number from 0 to 1")  # fmt: skip
    fields["empty_note"] = (_text(form, "empty_note") or [""])[-1] == "yes"
    return fields


def _number(form: FormData, name: str, kind: type[Any], default: Any, message: str) -> Any:
    raw = (_text(form, name) or [""])[-1].strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise InvalidInput(message) from None


def values(fields: Mapping[str, Any]) -> dict[str, Any]:
    """What the form fields show, from make_input keywords (stored or as submitted)."""
    out = dict(fields)
    for key in LISTS:
        v = fields.get(key, ())
        out[key] = "\n".join(v) if key != "categories" else ", ".join(v)
    return out


def submitted(form: FormData) -> dict[str, str]:
    """The raw submitted text, to show a refused form again as it was typed."""
    out: dict[str, str] = {}
    for key in form:
        texts = [v for v in form.getlist(key) if isinstance(v, str)]
        out[key] = "\n".join(texts)[:20_000]
    return out
