"""Feedback as a learned component: papers like the ones a subscriber voted on move.

Similarity is the cosine of tf-idf vectors of title (twice), abstract and the feed's AI
summary and keywords, rarity taken over the papers being ranked. Measured on real Daily
Papers days, unrelated pairs score about 0.05 and clearly related ones 0.13-0.2; near
duplicates (a paper and its follow-up) 0.3 and more. The ramp reaches full strength there:
replaying the judged days with a subscriber who votes on every paper sent
(`bench/relevance/feedback.py`), a ramp full at 0.2 let likes pull in more noise than they
found (development digest F1 0.72 without votes, 0.70 with them); full at 0.3, votes help
(0.73; held-out 0.71 -> 0.74). A liked paper lifts its neighbours that meet a topic in part;
on its own it lifts one over the default threshold only when it is nearly the same subject.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from digestd.matching.corpus import Doc
from digestd.paper import Paper

SIM_FLOOR, SIM_FULL = 0.06, 0.30
PULL = 0.4  # at full similarity a liked paper alone lifts a neighbour over the default 0.35
PUSH = 0.6  # at full similarity a disliked paper takes 60 % off a neighbour's score
VOTED_TERMS = 40  # the most distinctive terms of a voted paper are enough to compare

Vector = Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Space:
    """Rarity over the papers being ranked, for comparing them with voted papers."""

    idf: Mapping[str, float]
    unseen: float  # a word none of them has is as rare as can be

    @classmethod
    def of(cls, docs: Sequence[Doc]) -> Space:
        df: Counter[str] = Counter()
        for d in docs:
            df.update(d.vocabulary)
        n = max(len(docs), 1)
        return cls({w: math.log(1 + n / c) for w, c in df.items()}, math.log(1 + n))

    def vector(self, doc: Doc, terms: int = 0) -> Vector:
        v = {
            w: (1 + math.log(c)) * self.idf.get(w, self.unseen)
            for w, c in doc.counts.items()
            if len(w) > 1
        }
        if terms:
            v = dict(sorted(v.items(), key=lambda kv: -kv[1])[:terms])
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}


@dataclass(frozen=True, slots=True)
class Voted:
    paper: Paper
    vector: Vector


def voted(docs: Sequence[Doc], space: Space) -> list[Voted]:
    return [Voted(d.paper, space.vector(d, VOTED_TERMS)) for d in docs]


def closest(vector: Vector, paper_id: str, votes: Sequence[Voted]) -> tuple[float, Paper | None]:
    """The strength (0..1) of the most similar voted paper, and that paper."""
    best, which = 0.0, None
    for v in votes:
        if v.paper.id == paper_id:  # a paper is not "similar to" itself
            continue
        sim = sum(x * vector.get(w, 0.0) for w, x in v.vector.items())
        if sim > best:
            best, which = sim, v.paper
    strength = (best - SIM_FLOOR) / (SIM_FULL - SIM_FLOOR)
    return (min(strength, 1.0), which) if strength > 0 else (0.0, None)


def short(title: str, limit: int = 60) -> str:
    t = " ".join(title.split())
    return t if len(t) <= limit else t[:limit].rsplit(" ", 1)[0] + "…"
