"""Words of titles, abstracts and topics: folded, stemmed, positioned, traceable to the text.

A `Field` is one piece of a paper (its title, its abstract, its AI keywords and summary) as
the matcher reads it: content words only (stop words drop out, so "learning with verifiable
rewards" and "learning from verifiable rewards" are the same phrase), each with its stem,
its position among the content words, and where it sits in the original text, so that an
explanation can quote the paper's own wording.
"""

from __future__ import annotations

import copy
import functools
import re
import unicodedata
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import snowballstemmer

_STOPWORDS = (
    "a an and are as at be by for from in into is it its of on or the to with via use using "
    "used towards toward new our we this that these those their can which while than"
)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
#: "LLMs", "VLAs", "MLLMs": an acronym's plural s is not part of it
ACRONYM_PLURAL = re.compile(r"^([0-9]*[A-Z][A-Z0-9]*[A-Z0-9])s$")
_STEMMER = snowballstemmer.stemmer("english")
#: stems of words that say nothing about a subject ("tool use" is about tools)
STOP = frozenset(str(_STEMMER.stemWord(w)) for w in _STOPWORDS.split())


def fold(text: str) -> str:
    """Accents off and case folded: 'Björn' and 'bjorn' read the same."""
    if text.isascii():  # most words: no accents, and ASCII folds as it lowers
        return text.lower()
    plain = unicodedata.normalize("NFKD", text)
    return "".join(c for c in plain if not unicodedata.combining(c)).casefold()


@functools.lru_cache(maxsize=131072)
def stem(word: str) -> str:
    """Porter2 (Snowball) stem of a folded word, cached: papers repeat a few thousand words.
    snowballstemmer runs PyStemmer's C when it is installed (a dependency): the same stems
    (a test compares them) at a microsecond a word instead of about 18."""
    return str(_STEMMER.stemWord(word))


class Token(NamedTuple):  # a tuple: a month of papers makes a few hundred thousand
    stem: str
    start: int  # character offsets in the field's text
    end: int
    #: written with two or more capitals ("RLVR", "MoE", "KV"): likely an acronym
    caps: bool


def tokens(text: str) -> list[Token]:
    """Every word of ``text`` (stop words included), stemmed, with its offsets."""
    out = []
    for m in _WORD.finditer(text):
        stem_, length, caps = _word(m.group())
        start = m.start()
        out.append(Token(stem_, start, start + length, caps))
    return out


@functools.lru_cache(maxsize=131072)
def _word(raw: str) -> tuple[str, int, bool]:
    """A word's stem, its length without an acronym's plural s, and whether it has two
    capitals; cached, as `stem` is."""
    plural = ACRONYM_PLURAL.match(raw)
    if plural:
        raw = plural.group(1)
    caps = not raw.islower() and sum(c.isupper() for c in raw) >= 2
    return stem(fold(raw)), len(raw), caps


def terms(text: str) -> list[str]:
    """Stemmed, case-folded words of ``text`` (stop words kept)."""
    return [t.stem for t in tokens(text)]


@dataclass(frozen=True, slots=True)
class Span:
    start: int  # content-word positions, end exclusive
    end: int


class Field:
    """One text of a paper, indexed by the stems of its content words.

    Every word has a position; stop words are not indexed, but a phrase may name one
    (an empty set of stems in a form: "learning with rewards" ~ "learning from rewards").
    Kept compact: a send holds a month of papers' fields in each process.
    """

    __slots__ = ("_hidden", "_joined", "_spans", "_stems", "index", "length", "stops", "text")

    def __init__(self, segments: Iterable[str]) -> None:
        parts: list[str] = []
        #: per position, where it sits in text: start and end character offsets, flat
        self._spans = array("i")
        #: per position, its content stem (None for a stop word or the gap between segments)
        self._stems: list[str | None] = []
        self.index: dict[str, list[int]] = {}
        self.stops: set[int] = set()
        #: (stem, start) -> end of the stems spanning two positions ("pretrain" for "pre-train")
        self._joined: dict[tuple[str, int], int] = {}
        #: positions not read as their word (`without`)
        self._hidden: frozenset[int] = frozenset()
        pos = 0
        base = 0
        for segment in segments:
            previous: Token | None = None
            for tok in tokens(segment):
                self._spans.extend((base + tok.start, base + tok.end))
                if tok.stem in STOP or not tok.stem:
                    self._stems.append(None)
                    self.stops.add(pos)
                    previous = None
                    pos += 1
                    continue
                self._stems.append(tok.stem)
                self.index.setdefault(tok.stem, []).append(pos)
                # "pre-training" is also "pretraining", "multi-agent" also "multiagent"
                if previous is not None and segment[previous.end : tok.start] == "-":
                    joined = stem(fold(segment[previous.start : tok.end].replace("-", "")))
                    self.index.setdefault(joined, []).append(pos - 1)
                    self._joined[(joined, pos - 1)] = pos + 1
                previous = tok
                pos += 1
            parts.append(segment)
            base += len(segment) + 3
            pos += 2  # a gap: no phrase runs from one keyword (or segment) into the next
            self._spans.extend((base - 3, base - 3) * 2)
            self._stems += (None, None)
        self.text = " | ".join(parts)
        self.length = pos

    def compounds(self) -> Iterator[tuple[str, str, str]]:
        """Each hyphenated compound here, once per place: (joined stem, first part, last
        part), "real-world" as ("realworld", "real", "world")."""
        for (joined, start), end in self._joined.items():
            first, last = self._stems[start], self._stems[end - 1]
            if first is not None and last is not None:
                yield joined, first, last

    def without(self, parts: Mapping[str, frozenset[str]]) -> Field:
        """This field with the stems of ``parts`` (stem -> compounds) not read where they are
        a part of one of those compounds: "world" only in "real-world" is not the word."""
        drop: dict[str, set[int]] = {}
        for stem_, compounds in parts.items():
            for compound in compounds:
                for start in self.index.get(compound, ()):
                    end = self._joined.get((compound, start))
                    if end is None:
                        continue
                    for at in (start, end - 1):
                        if self._stems[at] == stem_:
                            drop.setdefault(stem_, set()).add(at)
        if not drop:
            return self
        out = copy.copy(self)
        index = dict(self.index)
        for stem_, positions in drop.items():
            kept = [at for at in index[stem_] if at not in positions]
            if kept:
                index[stem_] = kept
            else:
                del index[stem_]
        out.index = index
        out._hidden = self._hidden.union(*drop.values())
        return out

    def _end(self, stem_: str, at: int) -> int | None:
        """Where ``stem_`` starting at position ``at`` ends, if it starts there."""
        end = self._joined.get((stem_, at))
        if end is not None:
            return end
        if at < self.length and self._stems[at] == stem_ and at not in self._hidden:
            return at + 1
        return None

    def __contains__(self, stem_: str) -> bool:
        return stem_ in self.index

    def count(self, stems: Iterable[str]) -> int:
        return sum(len(self.index.get(s, ())) for s in stems)

    def holds(self, form: Sequence[frozenset[str]]) -> bool:
        """Whether every word of ``form`` is here somewhere (one of its stems): what a phrase
        or a window of it needs, and what most forms a paper is read for miss."""
        index = self.index
        for alternatives in form:
            if alternatives and not any(s in index for s in alternatives):
                return False
        return True

    def phrases(self, form: Sequence[frozenset[str]]) -> list[Span]:
        """Where the words of ``form`` stand one after the other (each word any of its stems):
        one span per place, the shortest. "Skill-based" is "skill" and the compound "skillbas",
        both stems of the topic "skills", and is still one mention of it, quoted "Skill"."""
        if not form:
            return []
        ends: dict[int, int] = {}
        for first in form[0]:
            for start in self.index.get(first, ()):
                at = self._end(first, start)
                end = self._follow(form, 1, at) if at is not None else None
                if end is not None and (start not in ends or end < ends[start]):
                    ends[start] = end
        return [Span(start, ends[start]) for start in sorted(ends)]

    def _follow(self, form: Sequence[frozenset[str]], i: int, at: int) -> int | None:
        """Where the rest of ``form`` (from word ``i``) ends if it starts at ``at``: the
        nearest end, whichever of a word's stems leads there (not the first tried, which
        would follow the order of a set, and so change with the interpreter's hash seed)."""
        if i == len(form):
            return at
        if not form[i]:  # any stop word
            return self._follow(form, i + 1, at + 1) if at in self.stops else None
        nearest: int | None = None
        for s in form[i]:
            after = self._end(s, at)
            if after is not None:
                end = self._follow(form, i + 1, after)
                if end is not None and (nearest is None or end < nearest):
                    nearest = end
        return nearest

    def window(self, form: Sequence[frozenset[str]]) -> Span | None:
        """The shortest stretch holding every word of ``form`` in any order, if any."""
        if not self.holds(form):
            return None
        index = self.index
        lists = [sorted(p for s in a for p in index.get(s, ())) for a in form if a]
        events = sorted((p, i) for i, ps in enumerate(lists) for p in ps)
        need = len(lists)
        have: dict[int, int] = {}
        best: Span | None = None
        left = 0
        for right in range(len(events)):
            have[events[right][1]] = have.get(events[right][1], 0) + 1
            while len(have) == need:
                span = Span(events[left][0], events[right][0] + 1)
                if best is None or span.end - span.start < best.end - best.start:
                    best = span
                w = events[left][1]
                have[w] -= 1
                if not have[w]:
                    del have[w]
                left += 1
        return best

    def quote(self, span: Span, limit: int = 60) -> str:
        """The field's own words for a span of content positions."""
        start = self._spans[2 * span.start]
        end = self._spans[2 * (span.end - 1) + 1]
        words = " ".join(self.text[start:end].split())
        return words if len(words) <= limit else words[:limit].rsplit(" ", 1)[0] + "…"
