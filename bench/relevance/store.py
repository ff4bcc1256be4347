"""Does the collection stand in for what a running daemon has stored? The default install's
digests, with each day ranked against three stores of papers.

    .venv/bin/python bench/relevance/store.py --daily ../shared/data/hf-daily-papers

`evaluate.py` ranks every day against the collection's 15 days (`digestd rank --corpus`):
284 papers spread over two and a half years. The daemon ranks a day against the papers it
stored in the month before (`pipeline.MAX_AGE`): 86-708 of them on the collection's days,
dense in time. Term rarity, the acronyms papers define, the compounds a word hides in and
what the papers clearly about a topic also talk about are all learned from that store, so the
figures could depend on it. This ranks each day the way `digestd rank` does (the same
`Corpus.of` and `pipeline.rank_papers`, default threshold and cap) against:

- ``collection``: the collection's days, as `evaluate.py` does;
- ``month``: the Daily Papers of the 31 days up to the day, from ``--daily`` (the day's own
  papers included), as the daemon would hold them;
- ``everything``: every day in ``--daily`` and the collection (9,000 papers and more: a
  store that never forgot).

``--daily`` is a folder of Daily Papers responses named by day (``shared/data``'s
`hf-daily-papers/`, 56 MB, not copied into the repository). Days the folder lacks (the
collection's July 2026 days) are ranked against what the folder has of their month.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.relevance.collection import JUDGES, Collection, load  # noqa: E402
from bench.relevance.evaluate import SPLITS, Sent, digest_summary  # noqa: E402
from digestd import pipeline  # noqa: E402
from digestd.matcher import Corpus, Profile  # noqa: E402
from digestd.paper import Paper  # noqa: E402
from digestd.sources import jsonfile  # noqa: E402

STORES = ("collection", "month", "everything")


def daily_files(folder: Path) -> dict[date, Path]:
    out = {}
    for f in folder.glob("*.json"):
        try:
            out[date.fromisoformat(f.stem)] = f
        except ValueError:
            continue
    if not out:
        raise SystemExit(f"{folder}: no Daily Papers files named by day (YYYY-MM-DD.json)")
    return out


def stored(col: Collection, store: str, day: str, files: dict[date, Path]) -> list[Paper]:
    """The papers a daemon ranking ``day`` would hold, under ``store``: the collection's own
    copies first, as `digestd rank` puts the papers it ranks before its corpus (a paper the
    daily files hold too is then the same object the matcher is given)."""
    if store == "month":
        end = date.fromisoformat(day)
        start = end - pipeline.MAX_AGE
        dated = sorted((d, f) for d, f in files.items() if start < d <= end)
        return col.days[day] + [p for _, f in dated for p in jsonfile.load(f)]
    collection = [p for ps in col.days.values() for p in ps]
    if store == "collection":
        return collection
    return collection + [p for f in sorted(files.values()) for p in jsonfile.load(f)]


def digests(col: Collection, store: str, files: dict[date, Path]) -> tuple[Sent, list[int]]:
    """What each profile would be sent each day, and the size of each day's store."""
    sent: Sent = {}
    sizes = []
    same: Corpus | None = None  # one store for every day but under "month"
    for day, papers in col.days.items():
        corpus = same if same is not None else Corpus.of(stored(col, store, day, files))
        if store != "month":
            same = corpus
        sizes.append(len(corpus.docs))
        for prof in col.profiles:
            profile = Profile(prof.topics, prof.exclude, prof.authors)
            chosen = pipeline.rank_papers(papers, profile, corpus=corpus)
            sent[(prof.id, day)] = frozenset(m.paper.id for m in chosen)
    return sent, sizes


def main(argv: Iterable[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--daily", type=Path, required=True, help="folder of Daily Papers by day")
    ap.add_argument("--judge", choices=sorted(JUDGES), default="a")
    args = ap.parse_args(list(argv) if argv is not None else None)
    col = load(args.judge)
    files = daily_files(args.daily)
    head = f"{'store':<11} {'papers':>9} {'split':<9} {'P':>5} {'R':>5} {'F1':>5} {'macroF1':>7} "
    head += f"{'quiet ok':>8}"
    print(f"judge {args.judge}; digestd default install, threshold and cap as a new subscriber")
    print(head)
    print("-" * len(head))
    for store in STORES:
        start = time.perf_counter()
        sent, sizes = digests(col, store, files)
        took = time.perf_counter() - start
        size = f"{min(sizes)}-{max(sizes)}" if min(sizes) != max(sizes) else str(sizes[0])
        for split in SPLITS:
            s = digest_summary(col, sent, split)
            print(
                f"{store if split == 'all' else '':<11} {size if split == 'all' else '':>9} "
                f"{split:<9} {s.micro_p:>5.2f} {s.micro_r:>5.2f} {s.micro_f1:>5.3f} "
                f"{s.macro_f1:>7.2f} {s.silent:>8.0%}"
            )
        print(f"{'':<11} ({took:.0f} s)")


if __name__ == "__main__":
    main()
