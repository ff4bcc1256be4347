"""Ranking and digest metrics over the judged collection."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def ndcg_at(ranked: Sequence[str], grades: dict[str, int], k: int = 10) -> float | None:
    """nDCG@k with exponential gain (2^grade - 1); None when nothing in the pool is relevant."""
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    if not ideal:
        return None
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    dcg = sum((2 ** grades.get(p, 0) - 1) / math.log2(i + 2) for i, p in enumerate(ranked[:k]))
    return dcg / idcg


@dataclass
class Digest:
    """What one subscriber got on one day, against what was relevant that day."""

    sent: frozenset[str]
    relevant: frozenset[str]
    #: the clearly relevant ones (grade 2): a subscriber must not miss these
    must: frozenset[str] = frozenset()

    @property
    def tp(self) -> int:
        return len(self.sent & self.relevant)

    @property
    def quiet(self) -> bool:
        """A day with nothing relevant for this subscriber."""
        return not self.relevant

    def prf(self) -> tuple[float, float, float]:
        """Precision, recall, F1 of this digest. Sending nothing on a quiet day is a full
        success (1, 1, 1); anything sent on a quiet day, or nothing sent on a day that had
        something, scores 0."""
        if not self.relevant:
            return (1.0, 1.0, 1.0) if not self.sent else (0.0, 1.0, 0.0)
        if not self.sent:
            return (0.0, 0.0, 0.0)
        p, r = self.tp / len(self.sent), self.tp / len(self.relevant)
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)


@dataclass
class DigestSummary:
    micro_p: float
    micro_r: float
    micro_f1: float
    macro_p: float
    macro_r: float
    macro_f1: float
    #: quiet (profile, day) pairs where nothing was sent / all quiet pairs
    silent: float
    quiet: int
    mean_sent: float
    #: recall of the clearly relevant papers only
    must_r: float = 0.0

    @classmethod
    def of(cls, digests: Iterable[Digest]) -> DigestSummary:
        ds = list(digests)
        tp = sum(d.tp for d in ds)
        sent = sum(len(d.sent) for d in ds)
        rel = sum(len(d.relevant) for d in ds)
        mp = tp / sent if sent else 0.0
        mr = tp / rel if rel else 0.0
        prf = [d.prf() for d in ds]
        quiet = [d for d in ds if d.quiet]
        n = max(len(ds), 1)
        must = sum(len(d.must) for d in ds)
        return cls(
            micro_p=mp,
            micro_r=mr,
            micro_f1=2 * mp * mr / (mp + mr) if mp + mr else 0.0,
            macro_p=sum(x[0] for x in prf) / n,
            macro_r=sum(x[1] for x in prf) / n,
            macro_f1=sum(x[2] for x in prf) / n,
            silent=sum(1 for d in quiet if not d.sent) / max(len(quiet), 1),
            quiet=len(quiet),
            mean_sent=sent / n,
            must_r=sum(len(d.sent & d.must) for d in ds) / must if must else 0.0,
        )
