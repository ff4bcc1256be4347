"""The judged collection: days of papers, subscriber profiles, and the judges' grades.

`python bench/relevance/collection.py` rebuilds `qrels.tsv` from `judgments/*.txt` (the first
judge) and `qrels-b.tsv` from `judgments-b/*.txt` (the second), checks that every paper of
every day carries a judgment line (a missing line would silently count as "not relevant" for
every profile), and prints how far the two judges agree.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from digestd.paper import Paper  # noqa: E402
from digestd.sources import jsonfile  # noqa: E402

DATA = HERE / "data"
#: judge -> (their judgments folder, the qrels built from it); "a" made the matcher's
#: development judgments, "b" judged later, from the rules and the papers alone
JUDGES = {
    "a": (HERE / "judgments", HERE / "qrels.tsv"),
    "b": (HERE / "judgments-b", HERE / "qrels-b.tsv"),
}
_GRADE = re.compile(r"(p\d\d)=([012])")


@dataclass(frozen=True)
class Profile:
    id: str
    topics: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    heldout: bool = False
    note: str = ""

    def cli_args(self) -> list[str]:
        """The profile as `digestd rank` options."""
        args: list[str] = []
        for flag, values in (("--topic", self.topics), ("--exclude", self.exclude),
                             ("--author", self.authors)):  # fmt: skip
            for v in values:
                args += [flag, v]
        return args

    def phrases(self) -> tuple[str, ...]:
        """What a peer's query box would hold: the topics and the followed names."""
        return self.topics + self.authors


@dataclass
class Collection:
    days: dict[str, list[Paper]]
    profiles: list[Profile]
    #: (profile id, paper id) -> grade 0/1/2; every pair is present
    qrels: dict[tuple[str, str], int]
    heldout_days: frozenset[str] = field(default_factory=frozenset)

    @property
    def papers(self) -> dict[str, Paper]:
        return {p.id: p for ps in self.days.values() for p in ps}

    def day_of(self) -> dict[str, str]:
        """Paper id -> the first day it appeared on."""
        out: dict[str, str] = {}
        for day, ps in self.days.items():
            for p in ps:
                out.setdefault(p.id, day)
        return out

    def grade(self, profile: str, paper: str) -> int:
        return self.qrels.get((profile, paper), 0)

    def relevant(self, profile: str, papers: list[Paper], minimum: int = 1) -> set[str]:
        return {p.id for p in papers if self.grade(profile, p.id) >= minimum}

    def is_heldout(self, profile: Profile, day: str) -> bool:
        return profile.heldout or day in self.heldout_days


def load_profiles() -> list[Profile]:
    raw = json.loads((HERE / "profiles.json").read_text(encoding="utf-8"))
    return [
        Profile(
            id=r["id"],
            topics=tuple(r.get("topics", ())),
            exclude=tuple(r.get("exclude", ())),
            authors=tuple(r.get("authors", ())),
            heldout=bool(r.get("heldout", False)),
            note=r.get("note", ""),
        )
        for r in raw
    ]


def load_days() -> tuple[list[str], frozenset[str]]:
    raw = json.loads((HERE / "days.json").read_text(encoding="utf-8"))
    days = sorted(raw["dev"] + raw["heldout"])
    return days, frozenset(raw["heldout"])


def _judgment_lines(folder: Path, day: str) -> Iterator[tuple[str, dict[str, int]]]:
    for n, line in enumerate((folder / f"{day}.txt").read_text().splitlines(), 1):
        body = line.split("#", 1)[0].split()
        if not body:
            continue
        grades: dict[str, int] = {}
        for token in body[1:]:
            m = _GRADE.fullmatch(token)
            if not m:
                raise ValueError(f"{folder.name}/{day}.txt:{n}: bad grade {token!r}")
            grades[m[1]] = int(m[2])
        yield body[0], grades


def build_qrels(
    days: list[str], profiles: list[Profile], folder: Path
) -> list[tuple[str, str, int]]:
    """Every (profile, paper) pair of the collection with its grade as the judgments in
    ``folder`` give it; checks completeness."""
    ids = {p.id for p in profiles}
    rows: dict[tuple[str, str], int] = {}
    for day in days:
        papers = {p.id for p in jsonfile.load(DATA / f"{day}.json")}
        judged: set[str] = set()
        for paper, grades in _judgment_lines(folder, day):
            if paper not in papers:
                raise ValueError(f"{folder.name}/{day}.txt: {paper} is not a paper of {day}")
            if paper in judged:
                raise ValueError(f"{folder.name}/{day}.txt: {paper} judged twice")
            judged.add(paper)
            if unknown := set(grades) - ids:
                raise ValueError(f"{folder.name}/{day}.txt: unknown profiles {sorted(unknown)}")
            for pid in ids:
                rows[(pid, paper)] = max(rows.get((pid, paper), 0), grades.get(pid, 0))
        if missing := papers - judged:
            raise ValueError(f"{folder.name}/{day}.txt: no line for {sorted(missing)}")
    return sorted((p, q, g) for (p, q), g in rows.items())


def read_qrels(judge: str = "a") -> dict[tuple[str, str], int]:
    """(profile id, paper id) -> grade, as ``judge`` gave them (see JUDGES)."""
    qrels: dict[tuple[str, str], int] = {}
    for line in JUDGES[judge][1].read_text(encoding="utf-8").splitlines()[1:]:
        profile, paper, grade = line.split("\t")
        qrels[(profile, paper)] = int(grade)
    return qrels


def load(judge: str = "a") -> Collection:
    """The collection with ``judge``'s grades."""
    days, heldout = load_days()
    profiles = load_profiles()
    papers = {day: jsonfile.load(DATA / f"{day}.json") for day in days}
    return Collection(papers, profiles, read_qrels(judge), heldout)


@dataclass(frozen=True)
class Agreement:
    """How far two judges agree on "relevant" (grade >= 1) over every (profile, paper)."""

    pairs: int
    first: int  # pairs the first judge graded relevant
    second: int
    both: int
    both_clearly: int  # pairs both graded 2
    first_clearly: int
    second_clearly: int

    @classmethod
    def of(cls, a: dict[tuple[str, str], int], b: dict[tuple[str, str], int]) -> Agreement:
        if set(a) != set(b):
            raise ValueError("the two judges graded different pairs")
        return cls(
            pairs=len(a),
            first=sum(g >= 1 for g in a.values()),
            second=sum(g >= 1 for g in b.values()),
            both=sum(a[k] >= 1 and b[k] >= 1 for k in a),
            both_clearly=sum(a[k] == 2 and b[k] == 2 for k in a),
            first_clearly=sum(g == 2 for g in a.values()),
            second_clearly=sum(g == 2 for g in b.values()),
        )

    @property
    def f1(self) -> float:
        """F1 of either judge's relevant pairs against the other's (it is symmetric)."""
        return 2 * self.both / (self.first + self.second)

    @property
    def f1_clearly(self) -> float:
        return 2 * self.both_clearly / (self.first_clearly + self.second_clearly)

    @property
    def kappa(self) -> float:
        """Cohen's kappa of relevant / not relevant."""
        n = self.pairs
        observed = (n - self.first - self.second + 2 * self.both) / n
        pa, pb = self.first / n, self.second / n
        chance = pa * pb + (1 - pa) * (1 - pb)
        return (observed - chance) / (1 - chance)

    def describe(self) -> str:
        return (
            f"judges a and b: {self.first} and {self.second} of {self.pairs} pairs relevant, "
            f"{self.both} by both; agreement F1 {self.f1:.3f} (grade 2: "
            f"{self.f1_clearly:.3f}), Cohen's kappa {self.kappa:.3f}"
        )


def main() -> None:
    days, _ = load_days()
    profiles = load_profiles()
    for folder, qrels in JUDGES.values():
        rows = build_qrels(days, profiles, folder)
        lines = ["profile_id\tpaper_id\tgrade"] + [f"{p}\t{q}\t{g}" for p, q, g in rows]
        qrels.write_text("\n".join(lines) + "\n", encoding="utf-8")
        graded = [r for r in rows if r[2]]
        print(
            f"{qrels.name}: {len(rows)} judgments ({len({r[1] for r in rows})} papers x "
            f"{len(profiles)} profiles), {sum(r[2] == 2 for r in graded)} graded 2, "
            f"{sum(r[2] == 1 for r in graded)} graded 1"
        )
    print(Agreement.of(read_qrels("a"), read_qrels("b")).describe())


if __name__ == "__main__":
    main()
