"""The send benchmark's figures: machine CPU use, the per-instance results summed, the table."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

TARGET_RATIO = 0.70
MIB = 1024.0


def cpu_times() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU of the machine so far (Linux /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """How busy the machine's CPUs were between two cpu_times(), 0..1."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else None


def busy_before(threshold: float = 0.15) -> float | None:
    """The share of the CPUs busy over the coming second; a warning when other work would
    skew the figures of the run about to start."""
    before = cpu_times()
    time.sleep(1.0)
    busy = busy_share(before, cpu_times())
    if busy is not None and busy > threshold:
        print(
            f"warning: the machine's CPUs were {100 * busy:.0f}% busy before the run: "
            "other work skews every figure",
            file=sys.stderr,
        )
    return busy


def send_figures(workers: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    counts: dict[str, int] = {}
    stages: dict[str, float] = {}
    for w in workers:
        for k, v in w["counts"].items():
            counts[k] = counts.get(k, 0) + v
        for k, v in w["stages"].items():
            stages[k] = stages.get(k, 0.0) + v
    slowest = max(w["wall"] for w in workers)
    # The stages start once the run has loaded its papers and built the corpus. A send split
    # over processes sums their stages: what came before them is not told apart.
    split = any(w.get("children_peak_rss_kib") for w in workers)
    outside = None if split else max(w["wall"] - sum(w["stages"].values()) for w in workers)
    done = counts.get("sent", 0) + counts.get("empty", 0)
    return {
        "wall_seconds": slowest,
        "bench_wall_seconds": wall,
        "counts": counts,
        "digests_per_second": counts.get("sent", 0) / slowest,
        "subscribers_per_second": done / slowest,
        "cpu_seconds": sum(w["cpu"] for w in workers),
        "stages": stages,
        "outside_stages_seconds": outside if stages else None,
        "peak_rss_mib": max(
            max(w["peak_rss_kib"], w.get("children_peak_rss_kib", 0)) for w in workers
        )
        / MIB,
        "workers": [
            {
                "pid": w["pid"],
                "wall_seconds": w["wall"],
                "cpu_seconds": w["cpu"],
                "counts": w["counts"],
                "peak_rss_mib": w["peak_rss_kib"] / MIB,
                "send_process_peak_rss_mib": w.get("children_peak_rss_kib", 0) / MIB,
                "forkserver_peak_rss_mib": w.get("forkserver_peak_rss_kib", 0) / MIB,
                "tree_peak_pss_mib": w.get("tree_peak_pss_kib", 0) / MIB,
                "tree_peak_rss_mib": w.get("tree_peak_rss_kib", 0) / MIB,
                "sampling_cpu_seconds": w.get("sampling_cpu", 0.0),
                "rss_before_mib": w["rss_before_kib"] / MIB,
                "read_ahead": w.get("read_ahead"),
            }
            for w in workers
        ],
    }


def report(r: dict[str, Any]) -> str:
    s, m, pr = r["send"], r["machine"], r["profiles"]
    c = s["counts"]
    done = c.get("sent", 0) + c.get("empty", 0)
    server = s["server"]
    window = ", ".join(f"{d} ({n})" for d, n in r["papers"]["window_days"].items())
    lines = [
        f"send bench: {r['subscribers']:,} subscribers, {r['instances']} instance(s) x "
        f"{r['pool_size']} connections, up to {r.get('processes', 1)} send processes each, "
        f"{r['server']}, {r['database']}; "
        f"{m['cpus']} CPUs, Python {m['python']}",
        f"papers      {r['papers']['window']} in the digest window ({window}); "
        f"{r['papers']['stored']} stored",
        f"profiles    {pr['topics_per_profile']:.1f} topics each, {pr['distinct_topics']:,} "
        f"distinct (of {pr['vocabulary']:,} keywords); {100 * pr['with_authors']:.0f}% follow "
        f"authors, {100 * pr['with_exclude']:.0f}% exclude",
        f"import      {r['import']['added']:,} in {r['import']['seconds']:.1f} s "
        f"({r['import']['per_second']:,.0f}/s, `digestd import`); "
        f"{r['import']['refused']} refused",
        f"send        {s['wall_seconds']:.1f} s: {c.get('sent', 0):,} sent, "
        f"{c.get('empty', 0):,} empty, {c.get('failed', 0)} failed, "
        f"{c.get('retry', 0)} to retry, {c.get('skipped', 0):,} skipped (done already, or "
        f"another instance's), {c.get('not_due', 0):,} not due that day",
        f"            {s['digests_per_second']:.1f} digests/s end to end "
        f"({s['subscribers_per_second']:.1f} subscribers/s); CPU {s['cpu_seconds']:.1f} s "
        f"({1000 * s['cpu_seconds'] / max(1, done):.1f} ms a subscriber)",
    ]
    if s["machine_cpu_busy"] is not None:
        used = s["machine_cpu_busy"] * m["cpus"] * s["bench_wall_seconds"]
        others = used - s["cpu_seconds"] - (server["cpu_seconds"] or 0.0)
        lines.append(
            f"machine     CPUs {100 * s['machine_cpu_busy']:.0f}% busy during the send; "
            f"{others:.1f} CPU s of it outside the send instances"
            + (
                " and the SMTP sink (database server, other work)"
                if server["cpu_seconds"] is not None
                else " (the MTA, database server, other work)"
            )
        )
    for i, w in enumerate(s["workers"]):
        if a := w.get("read_ahead"):
            lines.append(
                f"read ahead  instance {i}: {a['seconds']:.1f} s before the send (not in its "
                f"time; the daemon does it after each fetch), CPU {a['cpu_seconds']:.1f} s, "
                f"{a['readings']:,} topic readings, {a['kept_bytes'] / 1e6:.1f} MB kept; its "
                f"process at most {a['peak_rss_kib'] / MIB:.0f} MiB, all processes "
                f"{a['tree_peak_pss_kib'] / MIB:.0f} MiB PSS"
            )
        elif r.get("cold"):
            lines.append(f"read ahead  instance {i}: none (--cold): the send read the topics")
    if s["stages"]:
        lines.append(
            "stage           s   ms/subscriber  share (summed over instances and send processes)"
        )
        total = sum(s["stages"].values()) or 1.0
        for k, v in s["stages"].items():
            lines.append(
                f"  {k:<10} {v:7.1f} {1000 * v / max(1, done):11.2f} {100 * v / total:8.0f}%"
            )
        if s["outside_stages_seconds"] is not None:
            lines.append(
                f"  (before)   {s['outside_stages_seconds']:7.1f}   loading the papers and the "
                "corpus, slowest instance"
            )
    else:
        lines.append("stages      (the send summary carries no stage times)")
    for i, w in enumerate(s["workers"]):
        line = (
            f"instance {i}  {w['wall_seconds']:.1f} s, CPU {w['cpu_seconds']:.1f} s, "
            f"{w['counts'].get('sent', 0):,} sent, peak RSS {w['peak_rss_mib']:.0f} MiB "
            f"({w['rss_before_mib']:.0f} MiB before sending)"
        )
        if w.get("send_process_peak_rss_mib"):
            line += (
                f"; split over {r['processes']} send processes, each at most "
                f"{w['send_process_peak_rss_mib']:.0f} MiB"
            )
            if w.get("forkserver_peak_rss_mib"):
                every = (
                    w["peak_rss_mib"]
                    + w["forkserver_peak_rss_mib"]
                    + r["processes"] * w["send_process_peak_rss_mib"]
                )
                line += (
                    f", forked from a forkserver of {w['forkserver_peak_rss_mib']:.0f} MiB "
                    f"(peaks summed: {every:.0f} MiB, pages they share counted in each)"
                )
        if w.get("tree_peak_pss_mib"):
            line += (
                f"\n            all its processes together, sampled every second: peak "
                f"{w['tree_peak_pss_mib']:.0f} MiB PSS (shared pages split between them), "
                f"{w['tree_peak_rss_mib']:.0f} MiB RSS (the sampling: "
                f"{w['sampling_cpu_seconds']:.2f} s of CPU, not in the instance's)"
            )
        lines.append(line)
    if server["messages"]:
        line = (
            f"server      {server['messages']:,} messages received, "
            f"{server['bytes'] / server['messages'] / 1000:.1f} kB mean"
        )
        if server["cpu_seconds"] is not None:
            line += (
                f"; its CPU {server['cpu_seconds']:.1f} s "
                f"({1000 * server['cpu_seconds'] / server['messages']:.2f} ms a message)"
            )
        lines.append(line)
    if "blast" in r:
        b = r["blast"]
        runs = b.get("runs", [b])
        each = " and ".join(
            f"{x['per_second']:.0f} msg/s ({x['messages']:,} in {x['seconds']:.1f} s)" for x in runs
        )
        when = "before and after the send" if len(runs) == 2 else "after the send"
        line = (
            f"blast       {b['per_second']:.1f} msg/s raw: {each} {when}, over "
            f"{b['connections']} connections; {b['sample']} of the digests sent, "
            f"{b['mean_bytes'] / 1000:.1f} kB mean"
        )
        if server["messages"]:
            # A random sample's mean size strays a few percent from the send's, either way:
            # a larger sample slows the blast and flatters the ratio, a smaller one harms it.
            off = b["mean_bytes"] / (server["bytes"] / server["messages"]) - 1
            way = "larger" if off >= 0 else "smaller"
            line += f" ({100 * abs(off):.1f}% {way} than those sent)"
        lines.append(line)
        met = "met" if r["ratio"] >= TARGET_RATIO else "NOT met"
        lines.append(
            f"ratio       end to end = {100 * r['ratio']:.1f}% of the raw rate "
            f"(target >= {100 * TARGET_RATIO:.0f}%: {met})"
        )
    else:
        lines.append("blast       skipped: no digest was sent")
    return "\n".join(lines)
