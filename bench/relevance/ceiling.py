"""How much digest F1 the matcher's readings hold: can a better combination of them reach more?

    python bench/relevance/ceiling.py [--judge b] [--semantic all-MiniLM-L6-v2]

The matcher reads each (topic, paper) into a few numbers (`topics.FEATURES`: the phrase in the
title, its words close together in the abstract, the share of its rarity covered, likeness to
the topic's papers ...) and combines them with a fitted logistic model (`fit.py`). If a better
combination of the same readings existed, a model learned on the judged answers would find it.
This script gives the readings to such models, each profile scored by a model learned on the
other profiles only (leave-profiles-out, five folds), and prints the F1 each reaches with its
best single threshold (chosen on the answers: generous), beside the shipped model's on the same
pairs. With ``--semantic``, the paper's cosine to the topic's papers (`semantic.centroid`, the
reading the semantic extra lifts by) is one more reading.

The pairs: each profile with topics and each paper of the collection, papers by a followed
author left out (the author explains them); a pair is sent when its best topic reaches the
threshold. No cap and no exclusions: these are the readings' figures; the digests' are
`evaluate.py`'s.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.relevance.collection import Collection, load  # noqa: E402
from digestd.matcher import DEFAULT_MIN_SCORE  # noqa: E402
from digestd.matching.authors import Name  # noqa: E402
from digestd.matching.corpus import Corpus  # noqa: E402
from digestd.matching.topics import compile_topic, evidence  # noqa: E402

FOLDS = 5
#: below this the shipped model found no reading worth a mention: no word of any topic
NO_WORDS = 0.05


@dataclass(frozen=True, slots=True)
class Pair:
    profile: str
    paper: str
    grade: int
    dev: bool  # a development profile on a development day (what fit.py may see)
    readings: tuple[tuple[float, ...], ...]  # per topic
    scores: tuple[float, ...]  # per topic, the shipped model's

    @property
    def best(self) -> int:
        """The topic that explains the paper best under the shipped model."""
        return max(range(len(self.scores)), key=self.scores.__getitem__)


def pairs(col: Collection, corpus: Corpus, *, near: bool = False) -> list[Pair]:
    """The collection's (profile with topics, paper) pairs, papers by a followed author left
    out. ``near``: each topic's readings end with the cosine to its papers (needs the corpus's
    meanings)."""
    from digestd.matching import semantic

    out = []
    for prof in col.profiles:
        if not prof.topics:
            continue
        topics = [compile_topic(t, corpus) for t in prof.topics]
        centroids = [semantic.centroid(t, corpus) for t in topics] if near else []
        followed = [Name.of(a) for a in prof.authors]
        for day, papers in col.days.items():
            dev = not prof.heldout and day not in col.heldout_days
            for paper in papers:
                if any(n.is_(Name.of(a)) for n in followed for a in paper.authors):
                    continue
                doc = corpus.doc(paper)
                found = [evidence(doc, t, corpus) for t in topics]
                readings = [e.features for e in found]
                if near:
                    v = corpus.meanings[paper.id]
                    readings = [
                        (*r, float(v @ c.vector) if c.vector is not None else 0.0)
                        for r, c in zip(readings, centroids, strict=True)
                    ]
                grade = col.grade(prof.id, paper.id)
                scores = tuple(e.score for e in found)
                out.append(Pair(prof.id, paper.id, grade, dev, tuple(readings), scores))
    return out


def examples(ps: Iterable[Pair]) -> tuple[list[tuple[float, ...]], list[int]]:
    """Training examples, one per topic: a relevant paper is credited to the topic that
    explains it best (a paper about RLVR is not evidence that "reinforcement learning for LLM
    reasoning" must match it too); an irrelevant one counts against each topic."""
    xs: list[tuple[float, ...]] = []
    ys: list[int] = []
    for p in ps:
        if p.grade >= 1:
            xs.append(p.readings[p.best])
            ys.append(1)
        else:
            xs.extend(p.readings)
            ys.extend([0] * len(p.readings))
    return xs, ys


def f1_at(ps: Sequence[Pair], scores: Sequence[float], threshold: float) -> float:
    tp = sum(1 for p, s in zip(ps, scores, strict=True) if s >= threshold and p.grade >= 1)
    sent = sum(1 for s in scores if s >= threshold)
    relevant = sum(1 for p in ps if p.grade >= 1)
    return 2 * tp / (sent + relevant) if sent + relevant else 0.0


def best_f1(ps: Sequence[Pair], scores: Sequence[float]) -> tuple[float, float]:
    """The F1 at the best single threshold (0.01 steps), and that threshold."""
    return max((f1_at(ps, scores, t / 100), t / 100) for t in range(1, 100))


def cross_validated(ps: Sequence[Pair], make: Callable[[], Any]) -> list[float]:
    """Each pair's score (best topic) from a model learned on the other folds' profiles."""
    import numpy as np

    profiles = sorted({p.profile for p in ps})
    out = [0.0] * len(ps)
    for k in range(FOLDS):
        fold = set(profiles[k::FOLDS])
        xs, ys = examples(p for p in ps if p.profile not in fold)
        model = make().fit(np.array(xs), np.array(ys))
        scored = [i for i, p in enumerate(ps) if p.profile in fold]
        rows = [r for i in scored for r in ps[i].readings]
        probs = iter(model.predict_proba(np.array(rows))[:, 1])  # one call: a forest's is slow
        for i in scored:
            out[i] = max(float(next(probs)) for _ in ps[i].readings)
    return out


def models() -> dict[str, Callable[[], Any]]:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    return {
        "logistic regression (as fit.py)": lambda: LogisticRegression(C=1.0, max_iter=3000),
        "gradient-boosted trees, depth 3": lambda: HistGradientBoostingClassifier(
            max_depth=3,
            max_iter=200,
            learning_rate=0.05,
            min_samples_leaf=20,
            early_stopping=False,
            random_state=0,
        ),
        "random forest, 300 trees": lambda: RandomForestClassifier(
            n_estimators=300, min_samples_leaf=5, random_state=0, n_jobs=2
        ),
    }


def bands(ps: Sequence[Pair], threshold: float) -> list[str]:
    """Where the relevant pairs sit under the shipped model's scores."""
    edges = [(0.0, NO_WORDS), (NO_WORDS, threshold), (threshold, 1.01)]
    lines = [f"  {'shipped score':<14} {'relevant':>8} {'irrelevant':>10}"]
    for lo, hi in edges:
        inside = [p for p in ps if lo <= max(p.scores) < hi]
        rel = sum(1 for p in inside if p.grade >= 1)
        label = f"{lo:.2f}-{min(hi, 1.0):.2f}"
        lines.append(f"  {label:<14} {rel:>8} {len(inside) - rel:>10}")
    return lines


def meaning_alone(ps: Sequence[Pair]) -> list[str]:
    """The pairs with no word of a topic: could closeness in meaning find the relevant
    ones among them?"""
    wordless = [p for p in ps if max(p.scores) < NO_WORDS]
    lines = [f"  {'cosine >=':<10} {'relevant':>8} {'irrelevant':>10}"]
    for cut in (0.5, 0.6, 0.7, 0.8):
        near = [p for p in wordless if max(r[-1] for r in p.readings) >= cut]
        rel = sum(1 for p in near if p.grade >= 1)
        lines.append(f"  {cut:<10} {rel:>8} {len(near) - rel:>10}")
    return lines


def main(argv: Iterable[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--judge", choices=("a", "b"), default="a", help="whose grades (default a)")
    ap.add_argument("--semantic", metavar="MODEL", help="add the cosine to the topic's papers")
    args = ap.parse_args(list(argv) if argv is not None else None)

    col = load(args.judge)
    meanings = None
    if args.semantic:
        from digestd.matching import semantic

        meanings = semantic.vectors(semantic.model(args.semantic).encode(col.papers.values()))
    corpus = Corpus.of(col.papers.values(), meanings)
    ps = pairs(col, corpus, near=bool(args.semantic))
    relevant = sum(1 for p in ps if p.grade >= 1)
    print(f"{len(ps)} pairs, {relevant} relevant (judge {args.judge})")
    shipped = [max(p.scores) for p in ps]
    f1, t = best_f1(ps, shipped)
    print(f"{'the shipped model':<44} F1 {f1:.3f} at {t:.2f}")
    for name, make in models().items():
        f1, t = best_f1(ps, cross_validated(ps, make))
        print(f"{name + ', learned':<44} F1 {f1:.3f} at {t:.2f}")
    print("\nthe shipped model's scores:")
    print("\n".join(bands(ps, DEFAULT_MIN_SCORE)))
    if args.semantic:
        print(f"\ncloseness in meaning to the topic's papers, pairs scored below {NO_WORDS}:")
        print("\n".join(meaning_alone(ps)))


if __name__ == "__main__":
    main()
