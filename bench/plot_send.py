"""Plot send benchmark results: time, rate and peak memory against the number of subscribers.

    .venv/bin/python bench/plot_send.py bench/results/send-*.json --out docs/send-scaling.png

Each RESULTS.json is what `bench/send.py --json` wrote; runs with the same instances, server
and database form one line, N on a log axis.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def series(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Results grouped by set-up, each group ordered by N."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        n = r["instances"]
        label = f"{n} instance{'s' if n > 1 else ''}, {r['database']}, {r['server']}"
        groups[label].append(r)
    return {k: sorted(v, key=lambda r: r["subscribers"]) for k, v in sorted(groups.items())}


def plot(results: list[dict[str, Any]], out: Path) -> None:
    fig, (time_ax, rate_ax, mem_ax) = plt.subplots(1, 3, figsize=(15, 4.6))
    for label, runs in series(results).items():
        n = [r["subscribers"] for r in runs]
        line = time_ax.plot(n, [r["send"]["wall_seconds"] for r in runs], "o-", label=label)
        color = line[0].get_color()
        time_ax.plot(n, [r["import"]["seconds"] for r in runs], "s:", color=color, alpha=0.6)
        rate_ax.plot(n, [r["send"]["digests_per_second"] for r in runs], "o-", color=color)
        blasted = [(r["subscribers"], r["blast"]["per_second"]) for r in runs if "blast" in r]
        if blasted:
            rate_ax.plot(*zip(*blasted, strict=True), "x--", color=color, alpha=0.6)
        mem_ax.plot(n, [r["send"]["peak_rss_mib"] for r in runs], "o-", color=color)
        together = [
            (r["subscribers"], sum(w.get("tree_peak_pss_mib", 0) for w in r["send"]["workers"]))
            for r in runs
        ]
        if any(mib for _, mib in together):  # runs since the bench samples all processes
            mem_ax.plot(*zip(*together, strict=True), "x--", color=color, alpha=0.6)
    time_ax.set(
        xscale="log", yscale="log", ylabel="seconds", title="send one period (—), import (···)"
    )
    rate_ax.set(
        xscale="log", ylabel="messages / s", title="digests/s end to end (—), raw blast (- -)"
    )
    rate_ax.set_ylim(bottom=0)
    mem_ax.set(
        xscale="log", ylabel="MiB",
        title="peak RSS, largest process (—); PSS, all processes (- -)",
    )  # fmt: skip
    mem_ax.set_ylim(bottom=0)
    for ax in (time_ax, rate_ax, mem_ax):
        ax.set_xlabel("subscribers")
        ax.grid(True, which="both", alpha=0.3)
    machine = results[0]["machine"]
    fig.suptitle(f"digestd send benchmark ({machine['cpus']} CPUs, Python {machine['python']})")
    fig.legend(*time_ax.get_legend_handles_labels(), loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="JSON files from bench/send.py --json")
    p.add_argument("--out", type=Path, default=Path("docs/send-scaling.png"))
    args = p.parse_args()
    results = [json.loads(f.read_text(encoding="utf-8")) for f in args.results]
    plot(results, args.out)
    print(f"wrote {args.out} ({len(results)} runs)")


if __name__ == "__main__":
    main()
