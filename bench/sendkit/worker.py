"""One send instance of the benchmark: a process that runs digestd's send path for one period.

    python -m bench.sendkit.worker CONFIG PERIOD NOW SAMPLE_FILE

Builds ``Services`` from CONFIG as ``digestd send`` does, prints one JSON line when ready,
waits for a line on stdin (so that several instances start sending together), runs
``pipeline.send_period(services, PERIOD, now=NOW)`` and prints one JSON line with the
summary, the wall and CPU seconds of the send, the stage times the summary carries and the
process's peak RSS. A reservoir sample of the messages it sent (at most SAMPLE of them, a few
MB held during the send) goes to SAMPLE_FILE, for the bench's raw blast of the same messages.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtplib.email import flatten_message

from digestd import config as config_mod
from digestd import pipeline
from digestd.deliver import Mailer
from digestd.services import Services

SAMPLE = 128


class SamplingMailer:
    """Passes every send through to the real mailer and keeps a uniform sample of what was
    accepted (reservoir sampling: a reference per kept message, nothing more)."""

    def __init__(self, inner: Mailer, size: int = SAMPLE) -> None:
        self.inner = inner
        self.size = size
        self.seen = 0
        self.kept: list[tuple[EmailMessage | bytes, str, list[str]]] = []
        self._rng = random.Random(os.getpid())

    async def send(
        self, message: EmailMessage | bytes, *, sender: str, recipients: Sequence[str]
    ) -> str:
        reply = await self.inner.send(message, sender=sender, recipients=recipients)
        self.seen += 1
        item = (message, sender, list(recipients))
        if len(self.kept) < self.size:
            self.kept.append(item)
        elif (j := self._rng.randrange(self.seen)) < self.size:
            self.kept[j] = item
        return reply

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def dump(self) -> list[dict[str, Any]]:
        out = []
        for message, sender, recipients in self.kept:
            data = message if isinstance(message, bytes) else flatten_message(message)
            out.append(
                {
                    "sender": sender,
                    "recipients": recipients,
                    "data": base64.b64encode(data).decode(),
                }
            )
        return out


def rss_kib() -> int:
    """The current resident set size, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _jsonable(stages: Any) -> dict[str, float]:
    if dataclasses.is_dataclass(stages) and not isinstance(stages, type):
        stages = dataclasses.asdict(stages)
    if not isinstance(stages, dict):
        return {}
    return {str(k): float(v) for k, v in stages.items() if isinstance(v, int | float)}


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


@dataclass
class Sent:
    summary: Any
    sampler: SamplingMailer
    wall: float
    cpu: float


async def run(config_path: Path, period: date, now: datetime) -> Sent:
    """Build the services, say ready, wait for the go, and send, timing the send alone."""
    config = config_mod.load(config_path)
    services = Services.build(config)
    sampler = SamplingMailer(services.mailer)
    services.mailer = sampler
    _say(ready=True, pid=os.getpid(), rss_kib=rss_kib())
    await asyncio.to_thread(sys.stdin.readline)
    cpu, start = time.process_time(), time.perf_counter()
    try:
        summary = await pipeline.send_period(services, period, now=now)
    finally:
        await services.aclose()
    return Sent(summary, sampler, time.perf_counter() - start, time.process_time() - cpu)


def main() -> None:
    config_path, period, now, sample_file = sys.argv[1:5]
    # What `digestd send` logs by default: warnings only, not a line per digest.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiosmtplib").setLevel(logging.WARNING)
    sent = asyncio.run(
        run(Path(config_path), date.fromisoformat(period), datetime.fromisoformat(now))
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(sample_file).write_text(json.dumps(sent.sampler.dump()), encoding="utf-8")
    summary = sent.summary
    counts = {
        f.name: getattr(summary, f.name)
        for f in dataclasses.fields(summary)
        if isinstance(getattr(summary, f.name), int)
    }
    stages = _jsonable(getattr(summary, "stages", {}))
    _say(
        pid=os.getpid(),
        wall=sent.wall,
        cpu=sent.cpu,
        counts=counts,
        stages=stages,
        peak_rss_kib=peak,
    )


if __name__ == "__main__":
    main()
