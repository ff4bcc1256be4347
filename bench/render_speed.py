"""CPU time of turning one digest into wire bytes: the send's render and serialise stages.

    .venv/bin/python bench/render_speed.py [--digests 3000] [--rounds 3]

The digests are a send's: 5-12 papers each from the busiest real day of bench/relevance, a
why line naming one of the paper's keywords, and per subscriber its own address, signed
links, feedback links and reply address, so caches meet what they meet in a send (the
first digests of a round fill them). Each round renders all of them in full (Jinja renders
digest.html and css_inline inlines the whole document, as for a template override that does
not fit pre-rendering), then all of them pre-rendered (the default), each from empty caches.
Prints the best round's ms per digest for each path, by stage.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, date, datetime
from email.utils import formataddr
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.relevance.collection import load  # noqa: E402
from digestd import render  # noqa: E402
from digestd.matcher import Match  # noqa: E402
from digestd.paper import Paper  # noqa: E402
from digestd.render import DigestInput, Parts, Renderer, _prepare, mime  # noqa: E402

BASE = "https://digest.example.org"
STAGES = ("prepare", "text", "html", "mime")


def digests(papers: list[Paper], count: int, rng: random.Random) -> list[DigestInput]:
    def token() -> str:  # a signed token is about 90 characters
        return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789-_", k=90))

    out = []
    for n in range(count):
        chosen = rng.sample(papers, rng.randint(5, 12))
        matches = [
            Match(p, 0.5, f'Title matches "{rng.choice(p.keywords or ("agents",))}"')
            for p in chosen
        ]
        out.append(
            DigestInput(
                to=f"reader{n}@example.org",
                sender="Paper digest <digest@example.org>",
                period=date(2026, 8, 21),
                matches=matches,
                message_id=f"<digest.20260821.{n}@digest.example.org>",
                list_id="Paper digest <digest.example.org>",
                manage_url=f"{BASE}/manage/{token()}",
                unsubscribe_url=f"{BASE}/unsubscribe/{token()}",
                unsubscribe_mailto=f"mailto:unsubscribe+{n}.{token()[:40]}@digest.example.org",
                reply_to=formataddr(("Paper digest", f"reply+{n}.{token()[:40]}@example.org")),
                date=datetime(2026, 8, 21, 7, 0, tzinfo=UTC),
                feedback_urls={
                    p.id: (f"{BASE}/feedback/{token()}", f"{BASE}/feedback/{token()}")
                    for p in chosen
                },
            )
        )
    return out


def cold() -> None:
    """Empty the module's caches, so that neither path starts with what the other left."""
    for value in vars(render).values():
        if hasattr(value, "cache_clear"):
            value.cache_clear()
    render._QP_LINES.clear()


def run(renderer: Renderer, batch: list[DigestInput]) -> list[float]:
    """Seconds spent in each stage over the batch, as `Renderer.render_parts` and `mime` run."""
    spent = [0.0] * len(STAGES)
    clock = time.perf_counter
    for d in batch:
        t0 = clock()
        headers, context = _prepare(d)
        t1 = clock()
        text = renderer._text.render(context)
        t2 = clock()
        html = renderer._render_html(context)
        t3 = clock()
        mime(Parts(headers, text, html))
        t4 = clock()
        for i, t in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            spent[i] += t
    return spent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--digests", type=int, default=3000, help="digests per round (3000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the best is shown (3)")
    args = p.parse_args()
    papers = max(load().days.values(), key=len)
    batch = digests(papers, args.digests, random.Random(20260821))
    best: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for path in ("full", "pre-rendered"):
            cold()
            renderer = Renderer()  # caches start empty, as at the start of a send
            if path == "full":
                renderer._pre = None
            spent = run(renderer, batch)
            if path not in best or sum(spent) < sum(best[path]):
                best[path] = spent
    sizes = [len(d.matches) for d in batch]
    print(
        f"{len(batch)} digests of {min(sizes)}-{max(sizes)} papers (mean "
        f"{sum(sizes) / len(sizes):.1f}) from {len(papers)}; ms per digest, best of {args.rounds}:"
    )
    print(f"{'':14}" + "".join(f"{s:>9}" for s in STAGES) + f"{'total':>9}")
    for path, spent in best.items():
        ms = [s / len(batch) * 1000 for s in spent]
        print(f"{path:14}" + "".join(f"{m:9.3f}" for m in ms) + f"{sum(ms):9.3f}")
    full, pre = (sum(best[path]) for path in ("full", "pre-rendered"))
    print(f"pre-rendered takes {pre / full:.0%} of the full render's time")


if __name__ == "__main__":
    main()
