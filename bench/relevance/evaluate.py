"""Judge `digestd rank` and the peers' approaches on the judged collection; print one table.

    .venv/bin/python bench/relevance/evaluate.py            # the real CLI, in subprocesses
    .venv/bin/python bench/relevance/evaluate.py --in-process   # same CLI code, faster

Ranking: nDCG@10 of each profile's ranking of all the papers of the split's days pooled
(`digestd rank --min-score 0 --limit 1000`), averaged over profiles. Digest: per profile and
day, what would be sent (`digestd rank` with its defaults: --min-score and --limit as a new
subscriber has them) against the papers judged relevant (grade >= 1): micro P/R/F1 pooled
over all digests, and macro F1 averaged over (profile, day) pairs where a day with nothing
relevant counts 1 when nothing was sent and 0 otherwise. Baselines send either their top 5
papers a day, or everything above their best single threshold (tuned on the whole collection,
held-out included, to be generous), capped like digestd at 10.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.relevance import baselines  # noqa: E402
from bench.relevance.collection import (  # noqa: E402
    DATA,
    JUDGES,
    Agreement,
    Collection,
    Profile,
    load,
    read_qrels,
)
from bench.relevance.metrics import Digest, DigestSummary, ndcg_at  # noqa: E402
from digestd.matcher import DEFAULT_MAX_PAPERS  # noqa: E402

SPLITS = ("all", "dev", "held-out")
#: the model of digestd's semantic row (`digestd rank --semantic`)
SEMANTIC = "all-MiniLM-L6-v2"
CAP = DEFAULT_MAX_PAPERS
#: pairs of (profile id, day) -> ids sent that day
Sent = dict[tuple[str, str], frozenset[str]]


def in_split(col: Collection, prof: Profile, day: str, split: str) -> bool:
    if split == "all":
        return True
    return col.is_heldout(prof, day) == (split == "held-out")


# ---------------------------------------------------------------- running digestd rank


@dataclass
class CliRun:
    rankings: dict[str, list[str]]  # profile id -> every paper, best first
    sent: Sent
    calls: int
    seconds: float
    #: profile id -> paper id -> score, from the ranking of every paper
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


def _cli(args: list[str], in_process: bool) -> list[dict[str, object]]:
    if in_process:
        from click.testing import CliRunner

        from digestd.cli import cli

        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        if result.exit_code:
            raise RuntimeError(f"digestd {' '.join(args)}: {result.output}")
        out = result.stdout
    else:
        exe = Path(sys.executable).parent / "digestd"
        proc = subprocess.run(
            [str(exe), *args], capture_output=True, text=True, check=False, cwd=ROOT
        )
        if proc.returncode:
            raise RuntimeError(f"digestd {' '.join(args)}: {proc.stderr}")
        out = proc.stdout
    data = json.loads(out)
    assert isinstance(data, list)
    return data


def run_digestd(
    col: Collection, in_process: bool, corpus: bool, semantic: str | None = None
) -> CliRun:
    days = list(col.days)
    extra = ["--corpus", str(DATA)] if corpus else []
    if semantic:
        extra += ["--semantic", semantic]
    jobs: list[tuple[str, str | None, list[str]]] = []
    for prof in col.profiles:
        papers = [a for d in days for a in ("--papers", str(DATA / f"{d}.json"))]
        ranked = ["rank", *papers, *prof.cli_args(), *extra, "--json"]
        jobs.append((prof.id, None, [*ranked, "--min-score", "0", "--limit", "1000"]))
        for d in days:
            args = ["rank", "--papers", str(DATA / f"{d}.json"), *prof.cli_args(), *extra]
            jobs.append((prof.id, d, [*args, "--json"]))
    start = time.perf_counter()
    if in_process:
        results = [_cli(args, True) for _, _, args in jobs]
    else:
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda job: _cli(job[2], False), jobs))
    seconds = time.perf_counter() - start
    run = CliRun({}, {}, len(jobs), seconds)
    for (pid, day, _), rows in zip(jobs, results, strict=True):
        ids = [str(r["id"]) for r in rows]
        if day is None:
            run.rankings[pid] = ids
            run.scores[pid] = {str(r["id"]): float(str(r["score"])) for r in rows}
        else:
            run.sent[(pid, day)] = frozenset(ids)
    return run


# ---------------------------------------------------------------- baselines' digests


def _by_day(col: Collection, scores: baselines.Scores) -> dict[tuple[str, str], list[float]]:
    """(profile, day) -> positive scores of that day, best first (for threshold tuning)."""
    out = {}
    for prof in col.profiles:
        s = scores[prof.id]
        for day, ps in col.days.items():
            out[(prof.id, day)] = sorted((s[p.id] for p in ps if s[p.id] > 0), reverse=True)
    return out


def top_k(col: Collection, scores: baselines.Scores, k: int) -> Sent:
    sent: Sent = {}
    for prof in col.profiles:
        s = scores[prof.id]
        for day, ps in col.days.items():
            ranked = baselines.ranking(s, [p.id for p in ps])
            sent[(prof.id, day)] = frozenset(i for i in ranked[:k] if s[i] > 0)
    return sent


def above(col: Collection, scores: baselines.Scores, threshold: float) -> Sent:
    sent: Sent = {}
    for prof in col.profiles:
        s = scores[prof.id]
        for day, ps in col.days.items():
            ranked = [i for i in baselines.ranking(s, [p.id for p in ps]) if s[i] > 0]
            sent[(prof.id, day)] = frozenset(i for i in ranked[:CAP] if s[i] >= threshold)
    return sent


def other_judge(col: Collection, judge: str) -> Row:
    """``judge``'s grades as if they were a system: every paper they graded relevant sent
    (best grade first, capped like digestd), ranked by their grade. Scored against the
    collection's judge, it shows how far two careful readers agree: the most any system can
    expect to reach."""
    qrels = read_qrels(judge)
    scores: baselines.Scores = {
        prof.id: {p: float(qrels[(prof.id, p)]) for p in col.papers} for prof in col.profiles
    }
    rankings = {p: baselines.ranking(s, list(col.papers)) for p, s in scores.items()}
    return Row(f"judge {judge}'s grades (human agreement)", rankings, above(col, scores, 1.0))


def hindsight(
    col: Collection, scores: baselines.Scores, rounds: int = 3
) -> tuple[float, dict[str, float]]:
    """Digest F1 (all pairs) with a threshold for each profile chosen on the answers
    (coordinate ascent over the profiles): about the most any calibration of these scores
    could give; and the thresholds chosen (above every score: send nothing)."""
    counts: dict[str, dict[float, tuple[int, int, int]]] = {}  # profile -> t -> tp, sent, rel
    for prof in col.profiles:
        s = scores[prof.id]
        options = sorted({v for v in s.values() if v > 0} | {2.0})
        counts[prof.id] = {}
        for t in options:
            tp = sent = rel = 0
            for ps in col.days.values():
                ranked = [i for i in baselines.ranking(s, [p.id for p in ps]) if s[i] >= t]
                chosen = set(ranked[:CAP])
                relevant = col.relevant(prof.id, ps)
                tp, sent, rel = tp + len(chosen & relevant), sent + len(chosen), rel + len(relevant)
            counts[prof.id][t] = (tp, sent, rel)
    chosen_t = {p: max(c) for p, c in counts.items()}  # send nothing, to start

    def f1(choice: dict[str, float]) -> float:
        tp = sum(counts[p][t][0] for p, t in choice.items())
        sent = sum(counts[p][t][1] for p, t in choice.items())
        rel = sum(counts[p][t][2] for p, t in choice.items())
        return 2 * tp / (sent + rel) if sent + rel else 0.0

    for _ in range(rounds):
        for p in counts:
            chosen_t[p] = max(counts[p], key=lambda t: (f1({**chosen_t, p: t}), t))
    return f1(chosen_t), chosen_t


def best_threshold(col: Collection, scores: baselines.Scores) -> float:
    """The single threshold with the best mean of micro and macro digest F1 on the whole
    collection (generous: tuned on the data it is judged on)."""
    values = sorted({v for s in scores.values() for v in s.values() if v > 0})
    step = max(len(values) // 300, 1)
    candidates = [*values[::step], values[-1] + 1.0]
    best, best_t = -1.0, candidates[0]
    for t in candidates:
        summary = digest_summary(col, above(col, scores, t), "all")
        f = (summary.micro_f1 + summary.macro_f1) / 2
        if f > best:
            best, best_t = f, t
    return best_t


# ---------------------------------------------------------------- metrics per split


def digest_summary(
    col: Collection, sent: Sent, split: str, days: Iterable[str] | None = None
) -> DigestSummary:
    """The digests ``sent`` of the split's (profile, day) pairs, on ``days`` (default all)."""
    on = set(col.days if days is None else days)
    digests = []
    for prof in col.profiles:
        for day, ps in col.days.items():
            if day in on and in_split(col, prof, day, split):
                rel = frozenset(col.relevant(prof.id, ps))
                must = frozenset(col.relevant(prof.id, ps, 2))
                digests.append(Digest(sent[(prof.id, day)], rel, must))
    return DigestSummary.of(digests)


def mean_ndcg(col: Collection, rankings: dict[str, list[str]], split: str) -> float:
    day_of = col.day_of()
    values = []
    for prof in col.profiles:
        pool = [p for p in rankings[prof.id] if in_split(col, prof, day_of[p], split)]
        grades = {p: col.grade(prof.id, p) for p in pool}
        v = ndcg_at(pool, grades, 10)
        if v is not None:
            values.append(v)
    return sum(values) / len(values)


@dataclass
class Row:
    name: str
    rankings: dict[str, list[str]]
    sent: Sent
    note: str = ""


def table(col: Collection, rows: list[Row], split: str) -> list[str]:
    head = (
        f"{'system':<38} {'nDCG@10':>7} {'P':>5} {'R':>5} {'F1':>5} {'macroF1':>7} "
        f"{'R(2)':>5} {'quiet ok':>8} {'sent/d':>6}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        s = digest_summary(col, row.sent, split)
        nd = mean_ndcg(col, row.rankings, split)
        lines.append(
            f"{row.name:<38} {nd:>7.3f} {s.micro_p:>5.2f} {s.micro_r:>5.2f} {s.micro_f1:>5.2f} "
            f"{s.macro_f1:>7.2f} {s.must_r:>5.2f} {s.silent:>8.0%} {s.mean_sent:>6.2f}"
        )
    return lines


def per_day(col: Collection, row: Row) -> list[str]:
    lines = [
        f"per day, {row.name}:",
        f"  {'day':<11} {'papers':>6} {'P':>5} {'R':>5} {'F1':>5} {'quiet':>5} "
        f"{'silent':>6} {'noise':>5}",
    ]
    for day, ps in col.days.items():
        ds = [
            Digest(row.sent[(prof.id, day)], frozenset(col.relevant(prof.id, ps)))
            for prof in col.profiles
        ]
        s = DigestSummary.of(ds)
        noise = sum(1 for d in ds if d.quiet and d.sent)
        mark = "*" if day in col.heldout_days else " "
        lines.append(
            f" {mark}{day:<11} {len(ps):>6} {s.micro_p:>5.2f} {s.micro_r:>5.2f} "
            f"{s.micro_f1:>5.2f} {s.quiet:>5} {s.quiet - noise:>6} {noise:>5}"
        )
    lines.append("  (* held-out day; quiet: profiles with nothing relevant that day; silent: of")
    lines.append("   those, how many got nothing; noise: how many got a digest anyway)")
    return lines


def targets(col: Collection, ours: Row, peers: list[Row], split: str) -> list[str]:
    mine = digest_summary(col, ours.sent, split)
    best_nd = max(mean_ndcg(col, r.rankings, split) for r in peers)
    best_mi = max(digest_summary(col, r.sent, split).micro_f1 for r in peers)
    best_ma = max(digest_summary(col, r.sent, split).macro_f1 for r in peers)
    nd = mean_ndcg(col, ours.rankings, split)

    def check(label: str, value: float, best: float, margin: float) -> str:
        ok = "met" if value >= best + margin else "NOT met"
        return f"  {label:<14} {value:.3f} vs best peer {best:.3f} + {margin:.2f}: {ok}"

    return [
        f"targets ({split}), {ours.name}:",
        check("nDCG@10", nd, best_nd, 0.05),
        check("digest F1", mine.micro_f1, best_mi, 0.15),
        check("digest macroF1", mine.macro_f1, best_ma, 0.15),
    ]


def main(argv: Iterable[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="run the digestd CLI in this process (same code, no start-up cost)",
    )
    ap.add_argument(
        "--no-corpus",
        action="store_true",
        help="do not pass the collection as --corpus (term rarity from the day)",
    )
    ap.add_argument(
        "--judge",
        choices=sorted(JUDGES),
        default="a",
        help="whose grades to score against (a: the development judge; b: the second judge)",
    )
    ap.add_argument("--skip-minilm", action="store_true", help="leave out the MiniLM baselines")
    ap.add_argument("--only-digestd", action="store_true", help="no baselines")  # fmt: skip
    args = ap.parse_args(list(argv) if argv is not None else None)
    col = load(args.judge)
    n_papers = len(col.papers)
    print(
        f"collection: {len(col.days)} days ({len(col.heldout_days)} held out), {n_papers} "
        f"papers, {len(col.profiles)} profiles ({sum(p.heldout for p in col.profiles)} held "
        f"out), {len(col.qrels)} judgments by judge {args.judge}"
    )
    print(Agreement.of(read_qrels("a"), read_qrels("b")).describe())

    timings: list[str] = []
    ours_run = run_digestd(col, args.in_process, corpus=not args.no_corpus)
    ours = Row("digestd rank (default install)", ours_run.rankings, ours_run.sent)
    extra: list[Row] = []
    semantic_took = ""
    semantic_runs: list[tuple[CliRun, str]] = []
    why_not = baselines.minilm_available()
    if not (why_not or args.skip_minilm):
        # In process whatever --in-process says: each subprocess would load the model and
        # embed the collection again (a minute a call); the CLI code is the same.
        sem_run = run_digestd(col, True, corpus=not args.no_corpus, semantic=SEMANTIC)
        extra.append(Row("digestd rank + semantic extra", sem_run.rankings, sem_run.sent))
        semantic_runs.append((sem_run, extra[-1].name))
        semantic_took = f"; digestd rank --semantic {sem_run.seconds:.1f} s, in process"
    peers: list[Row] = []
    ids = list(col.papers)
    if not args.only_digestd:
        computed: dict[str, baselines.Scores] = {}
        makers: dict[str, Callable[[Collection], baselines.Scores]] = dict(baselines.LEXICAL)
        if why_not or args.skip_minilm:
            print(why_not or "MiniLM baselines skipped (--skip-minilm)")
        else:
            makers["all-MiniLM-L6-v2"] = baselines.minilm
        for name, make in makers.items():
            t = time.perf_counter()
            computed[name] = make(col)
            timings.append(f"{name} {time.perf_counter() - t:.1f} s")
        if "all-MiniLM-L6-v2" in computed:
            computed["BM25 + MiniLM fusion"] = baselines.fusion(
                computed["BM25"], computed["all-MiniLM-L6-v2"]
            )
        for name, scores in computed.items():
            rankings = {p: baselines.ranking(s, ids) for p, s in scores.items()}
            peers.append(Row(f"{name}, top 5/day", rankings, top_k(col, scores, 5)))
            if name == "keyword substring":
                peers.append(Row(f"{name}, every match", rankings, above(col, scores, 1e-9)))
            else:
                t = best_threshold(col, scores)
                peers.append(Row(f"{name}, best threshold", rankings, above(col, scores, t)))

    others = [other_judge(col, j) for j in sorted(JUDGES) if j != args.judge]
    rows = [*peers, ours, *extra, *others]
    print(
        "\nP, R, F1: pooled over every digest (relevant: grade >= 1); macroF1: mean over "
        "(profile, day),\na quiet day (nothing relevant) counting 1 when nothing was sent; "
        "R(2): recall of the\nclearly relevant (grade 2); quiet ok: quiet (profile, day) "
        "pairs where nothing was sent;\nsent/d: papers per digest."
    )
    for split in SPLITS:
        print(f"\n== {split} ==")
        print("\n".join(table(col, rows, split)))
        if peers:
            for row in (ours, *extra):
                print("\n".join(targets(col, row, peers, split)))
    print()
    for run, name in ((ours_run, ours.name), *((r, n) for r, n in semantic_runs)):
        f1, chosen = hindsight(col, run.scores)
        print(
            f"{name}, a threshold per profile chosen with hindsight (about the most any "
            f"calibration of its scores could give): digest F1 {f1:.3f} on all pairs; the "
            "thresholds (the highest where several give the same; - sends nothing):"
        )
        ordered = sorted(chosen.items(), key=lambda pt: (pt[1], pt[0]))
        print("  " + ", ".join(f"{p} {t:.2f}" if t <= 1 else f"{p} -" for p, t in ordered))
    for row in (ours, *extra):
        print()
        print("\n".join(per_day(col, row)))
    print(
        f"\nruntime: digestd rank {ours_run.calls} calls in {ours_run.seconds:.1f} s "
        f"({ours_run.seconds / ours_run.calls * 1000:.0f} ms a call"
        f"{', in process' if args.in_process else ', with process start-up'})"
        + semantic_took
        + (f"; baselines: {', '.join(timings)}" if timings else "")
    )


if __name__ == "__main__":
    main()
