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

from bench.relevance.ceiling import examples, pairs  # noqa: E402
from bench.relevance.collection import load  # noqa: E402
from digestd.matching.corpus import Corpus  # noqa: E402
from digestd.matching.topics import FEATURES  # noqa: E402


def dev_examples() -> tuple[list[tuple[float, ...]], list[int]]:
    col = load()
    corpus = Corpus.of(col.papers.values())
    return examples(p for p in pairs(col, corpus) if p.dev)


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    xs, ys = dev_examples()
    model = LogisticRegression(C=1.0, max_iter=1000)
    model.fit(xs, ys)
    print(f"{len(ys)} examples, {sum(ys)} relevant")
    for name, w in zip(FEATURES, model.coef_[0], strict=True):
        print(f"  {name:<18} {w:+.2f}")
    weights = ", ".join(f"{w:.2f}" for w in model.coef_[0])
    print(f"WEIGHTS = ({weights})\nBIAS = {model.intercept_[0]:.2f}")


if __name__ == "__main__":
    main()
