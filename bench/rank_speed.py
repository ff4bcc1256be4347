"""How long ranking one day's papers for one profile takes, after the one-time work per paper.

    .venv/bin/python bench/rank_speed.py [--semantic all-MiniLM-L6-v2]

The corpus (term rarity, acronyms, each paper analysed once) is built first, as the daemon
does once per run; then every profile of bench/relevance ranks every judged day, repeatedly.
Prints the median and the 95th percentile per (profile, day) ranking; the target is < 20 ms.
With --semantic (the extra installed), the papers are embedded first, once, as a fetch does;
the rankings then include the closeness in meaning.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.relevance.collection import load  # noqa: E402
from digestd.matcher import Corpus, Profile, rank  # noqa: E402

TARGET_MS = 20.0
ROUNDS = 5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--semantic", metavar="MODEL", help="embed the papers with this model first")
    args = ap.parse_args()
    col = load()
    meanings = None
    if args.semantic:
        from digestd.matching import semantic

        model = semantic.model(args.semantic)
        t = time.perf_counter()
        meanings = semantic.vectors(model.encode(col.papers.values()))
        took = time.perf_counter() - t
        print(f"{len(meanings)} papers embedded in {took:.1f} s ({took / len(meanings) * 1000:.0f}"
              " ms a paper, once, at fetch)")  # fmt: skip
    start = time.perf_counter()
    corpus = Corpus.of(col.papers.values(), meanings)
    built = time.perf_counter() - start
    profiles = [Profile(p.topics, p.exclude, p.authors) for p in col.profiles]
    times: list[float] = []
    for _ in range(ROUNDS):
        for profile in profiles:
            for papers in col.days.values():
                t = time.perf_counter()
                rank(papers, profile, corpus=corpus)
                times.append((time.perf_counter() - t) * 1000)
    times.sort()
    median, p95 = statistics.median(times), times[int(0.95 * len(times))]
    sizes = [len(ps) for ps in col.days.values()]
    print(
        f"corpus of {corpus.size} papers built in {built:.2f} s "
        f"({built / corpus.size * 1000:.1f} ms a paper, once)"
    )
    print(
        f"rank one day ({min(sizes)}-{max(sizes)} papers) for one profile: median "
        f"{median:.1f} ms, p95 {p95:.1f} ms, max {times[-1]:.1f} ms over {len(times)} rankings"
        f" — target < {TARGET_MS:.0f} ms: {'met' if p95 < TARGET_MS else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
