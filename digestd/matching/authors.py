"""Followed authors matched the way a reader matches names: accents, case and initials aside."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from digestd.matching.text import fold

_PARTS = re.compile(r"[\s.]+")


@dataclass(frozen=True, slots=True)
class Name:
    last: str
    first: str  # first given name, or its initial; "" when only a last name is known

    @classmethod
    def of(cls, name: str) -> Name:
        """'Jiří Matas', 'J. Matas', 'Matas, Jiří', 'Xiao-Yang Liu' ~ 'Xiaoyang Liu'."""
        return _name(name)

    @classmethod
    def parse(cls, name: str) -> Name:
        plain = fold(name)
        if "," in plain:
            last, _, first = plain.partition(",")
            given = [p for p in _PARTS.split(first) if p]
            return cls(last.strip().replace("-", ""), given[0].replace("-", "") if given else "")
        parts = [p for p in _PARTS.split(plain) if p]
        if not parts:
            return cls("", "")
        first = parts[0].replace("-", "") if len(parts) > 1 else ""
        return cls(parts[-1].replace("-", ""), first)

    def is_(self, other: Name) -> bool:
        """Whether two written names can be the same person: same last name, and first names
        equal, or one an initial of the other, or one missing."""
        if not self.last or self.last != other.last:
            return False
        a, b = self.first, other.first
        if not a or not b:
            return True
        if len(a) == 1 or len(b) == 1:
            return a[0] == b[0]
        return a == b


def name_key(name: str) -> tuple[str, str]:
    """(last name, first initial), accent- and case-free: 'Jiří Matas' ~ 'J. Matas'."""
    n = Name.of(name)
    return (n.last, n.first[:1])


@functools.lru_cache(maxsize=65536)
def _name(name: str) -> Name:
    # Papers' author lists are read for every subscriber following someone: parse each once.
    return Name.parse(name)
