"""What the subscriber's votes do: the collection's days replayed in order, with votes.

    .venv/bin/python bench/relevance/feedback.py

Each profile is sent its digests day by day, oldest first, exactly as a send selects them
(`digestd.matcher.match`, default threshold and cap, the collection as the stored corpus). After
each digest the simulated subscriber votes on some of what they were sent: "more like this" on
a paper the judges graded relevant, "less like this" on one graded 0, and the next day's
digest is chosen with every vote so far. Papers they were never sent get no vote (they never
saw them). The votes are exact (a judge's grade), so this is the best case of each vote rate;
a vote rate below 1 picks the voted papers by a hash of (profile, paper), the same every run.

Printed per vote rate, next to the same replay without votes: the digest P/R/F1 over every
day but the first (which no vote can change), in all, development and held-out pairs.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.relevance.collection import JUDGES, Collection, Profile, load  # noqa: E402
from bench.relevance.evaluate import SPLITS, Sent, digest_summary  # noqa: E402
from digestd.matcher import Corpus, match  # noqa: E402
from digestd.matcher import Profile as Wanted  # noqa: E402
from digestd.paper import Paper  # noqa: E402

#: (name, share of sent papers voted on, vote on relevant ones, vote on noise)
POLICIES = (
    ("no votes", 0.0, True, True),
    ("votes on every paper sent", 1.0, True, True),
    ("votes on half the papers sent", 0.5, True, True),
    ("only 'less like this', every noise paper", 1.0, False, True),
    ("only 'more like this', every relevant paper", 1.0, True, False),
)


def _votes_on(profile: str, paper: str, rate: float) -> bool:
    if rate >= 1:
        return True
    digest = hashlib.sha256(f"{profile} {paper}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < rate


def replay(
    col: Collection, corpus: Corpus, prof: Profile, rate: float, up: bool, down: bool
) -> dict[str, frozenset[str]]:
    """Day -> ids sent to ``prof`` that day, voting after each digest as the policy says."""
    liked: list[Paper] = []
    disliked: list[Paper] = []
    out: dict[str, frozenset[str]] = {}
    for day in sorted(col.days):
        wanted = Wanted(
            prof.topics,
            prof.exclude,
            prof.authors,
            liked=tuple(reversed(liked)),  # newest first, as the store gives them
            disliked=tuple(reversed(disliked)),
        )
        chosen = match(col.days[day], wanted, corpus=corpus)
        out[day] = frozenset(m.paper.id for m in chosen)
        for m in chosen:
            if not _votes_on(prof.id, m.paper.id, rate):
                continue
            if col.grade(prof.id, m.paper.id) >= 1:
                if up:
                    liked.append(m.paper)
            elif down:
                disliked.append(m.paper)
    return out


def main(argv: Iterable[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument(
        "--judge", choices=sorted(JUDGES), default="a", help="whose grades vote and score"
    )
    args = ap.parse_args(list(argv) if argv is not None else None)
    col = load(args.judge)
    corpus = Corpus.of(list(col.papers.values()))
    first = min(col.days)
    later = [d for d in col.days if d != first]
    print(
        f"{len(col.profiles)} profiles x {len(col.days)} days replayed in order; scored on "
        f"every day after {first}\n"
    )
    columns = ("P", "R", "F1", "macroF1", "quiet ok")
    header = f"{'votes':<44} {'split':<9} " + " ".join(f"{c:>5}" for c in columns)
    print(header)
    print("-" * len(header))
    for name, rate, up, down in POLICIES:
        sent: Sent = {}
        for prof in col.profiles:
            for day, ids in replay(col, corpus, prof, rate, up, down).items():
                sent[(prof.id, day)] = ids
        for split in SPLITS:
            s = digest_summary(col, sent, split, days=later)
            print(
                f"{name:<44} {split:<9} {s.micro_p:>5.2f} {s.micro_r:>5.2f} {s.micro_f1:>5.2f} "
                f"{s.macro_f1:>7.2f} {s.silent:>8.0%}"
            )


if __name__ == "__main__":
    main()
