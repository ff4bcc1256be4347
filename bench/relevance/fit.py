"""Fit the topic model's weights (digestd/matching/topics.py WEIGHTS, BIAS) on the dev split.

    .venv/bin/python bench/relevance/fit.py

Each (dev profile, dev-day paper) gives one example per topic: the paper's readings for that
topic, labelled with the judges' grade (relevant when >= 1). A relevant paper is credited to
the topic that explains it best under the current weights (a paper about RLVR is not evidence
that "reinforcement learning for LLM reasoning" must match it too); papers by a followed
author are left out, the author explains them. Held-out days and profiles are never seen.
The fit is a plain L2-regularised logistic regression; it prints the weights to paste.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.relevance.collection import load  # noqa: E402
from digestd.matching.authors import Name  # noqa: E402
from digestd.matching.corpus import Corpus  # noqa: E402
from digestd.matching.topics import FEATURES, compile_topic, evidence  # noqa: E402


def examples() -> tuple[list[tuple[float, ...]], list[int]]:
    col = load()
    corpus = Corpus.of(col.papers.values())
    xs: list[tuple[float, ...]] = []
    ys: list[int] = []
    for prof in col.profiles:
        if prof.heldout or not prof.topics:
            continue
        topics = [compile_topic(t, corpus) for t in prof.topics]
        followed = [Name.of(a) for a in prof.authors]
        for day, papers in col.days.items():
            if day in col.heldout_days:
                continue
            for paper in papers:
                if any(n.is_(Name.of(a)) for n in followed for a in paper.authors):
                    continue
                doc = corpus.doc(paper)
                readings = [evidence(doc, t, corpus) for t in topics]
                if col.grade(prof.id, paper.id) >= 1:
                    best = max(readings, key=lambda e: e.score)
                    xs.append(best.features)
                    ys.append(1)
                else:
                    for e in readings:
                        xs.append(e.features)
                        ys.append(0)
    return xs, ys


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    xs, ys = examples()
    model = LogisticRegression(C=1.0, max_iter=1000)
    model.fit(xs, ys)
    print(f"{len(ys)} examples, {sum(ys)} relevant")
    for name, w in zip(FEATURES, model.coef_[0], strict=True):
        print(f"  {name:<18} {w:+.2f}")
    weights = ", ".join(f"{w:.2f}" for w in model.coef_[0])
    print(f"WEIGHTS = ({weights})\nBIAS = {model.intercept_[0]:.2f}")


if __name__ == "__main__":
    main()
