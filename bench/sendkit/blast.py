"""The reference rate: pre-built messages sent as fast as the SMTP client and server allow.

Same client library as digestd (aiosmtplib) on the same event loop as its send processes
(uvloop's where installed), same commands (MAIL with SIZE and BODY=8BITMIME, RCPT, DATA), same
number of connections, same messages (a sample of the digests just sent); nothing else. One
call runs in one process; the bench starts one per send instance.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import aiosmtplib

from digestd.workers import new_event_loop


@dataclass(frozen=True)
class Message:
    sender: str
    recipients: tuple[str, ...]
    data: bytes


@dataclass(frozen=True)
class Result:
    sent: int
    failed: int
    #: wall-clock time (time.time) this process sent its first message
    began: float
    #: wall-clock time (time.time) the last message of this process was accepted
    ended: float


def load_sample(files: list[Path]) -> list[Message]:
    """The messages the send workers kept (``bench.sendkit.worker`` writes them)."""
    out: list[Message] = []
    for file in files:
        for item in json.loads(file.read_text(encoding="utf-8")):
            out.append(
                Message(item["sender"], tuple(item["recipients"]), base64.b64decode(item["data"]))
            )
    return out


async def _blast(
    port: int, messages: list[Message], connections: int, seconds: float, limit: int, go: Go
) -> Result:
    clients = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=False, start_tls=False)
        for _ in range(connections)
    ]
    await asyncio.gather(*(c.connect() for c in clients))
    await asyncio.gather(*(c.ehlo() for c in clients))
    sent = failed = 0
    go.ready.put(os.getpid())
    await asyncio.to_thread(go.start.wait)
    began = ended = time.time()
    until = began + seconds

    async def loop(client: aiosmtplib.SMTP, first: int) -> None:
        nonlocal sent, failed, ended
        i = first
        while sent + failed < limit and time.time() < until:
            m = messages[i % len(messages)]
            i += connections
            options = [f"SIZE={len(m.data)}", "BODY=8BITMIME"]
            try:
                await client.sendmail(m.sender, m.recipients, m.data, mail_options=options)
            except aiosmtplib.SMTPResponseException:
                failed += 1
                continue
            sent += 1
            ended = time.time()

    await asyncio.gather(*(loop(c, n) for n, c in enumerate(clients)))
    await asyncio.gather(*(c.quit() for c in clients), return_exceptions=True)
    return Result(sent, failed, began, ended)


@dataclass(frozen=True)
class Go:
    """How the bench starts several blast processes together: each says it is connected on
    ``ready``; all start sending when ``start`` is set."""

    ready: Queue[int]
    start: Event


def blast(
    port: int,
    messages: list[Message],
    connections: int,
    seconds: float,
    limit: int,
    go: Go,
    results: Queue[Result],
) -> None:
    """Once ``go`` says so, send ``messages`` round-robin over ``connections`` connections
    until ``seconds`` have passed or ``limit`` messages went out; put the Result."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        results.put(runner.run(_blast(port, messages, connections, seconds, limit, go)))


def mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One reference from the blasts before and after a send: their mean rate, each kept."""
    out = dict(runs[-1])
    out["per_second"] = sum(r["per_second"] for r in runs) / len(runs)
    out["runs"] = [{k: v for k, v in r.items() if k != "runs"} for r in runs]
    return out
