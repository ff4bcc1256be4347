"""A recording SMTP relay in its own process, for fault tests that run the real daemon.

    python -m tests.relay --port 0 --record FILE.jsonl --ready-file F
        [--refuse-451-every N] [--refuse-550 a@x,b@y] [--slow SECONDS] [--control FILE]

It binds 127.0.0.1 (``--port 0``: a port the OS picks), writes the port to the ready file
once it accepts connections, and appends one JSON line to the record file per event, flushed
at once so another process reads it while the relay runs:

- ``{"event": "accepted", "message_id", "rcpt", "mail_from", "ts", "size"}`` per message;
- ``{"event": "refused", "rcpt", "reply", "ts"}`` per recipient it refused.

Behaviour comes from the flags, and is replaced by the JSON object in the control file
(keys ``refuse_451_every``, ``refuse_550``, ``slow``) whenever that file changes, so a test can
change it while the relay runs. ``refuse_451_every: N`` refuses the *first* attempt of every
N-th distinct recipient (in order of first appearance) with 451; later attempts are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import IO, Any

from aiosmtpd.smtp import SMTP


@dataclass
class Behaviour:
    refuse_451_every: int = 0
    refuse_550: frozenset[str] = field(default_factory=frozenset)
    slow: float = 0.0

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Behaviour:
        return cls(
            refuse_451_every=int(doc.get("refuse_451_every", 0)),
            refuse_550=frozenset(a.lower() for a in doc.get("refuse_550", ())),
            slow=float(doc.get("slow", 0.0)),
        )


class Relay:
    """aiosmtpd handler: accept, refuse or slow down as the behaviour says; record it all."""

    def __init__(self, record: IO[str], behaviour: Behaviour, control: Path | None) -> None:
        self.record = record
        self.behaviour = behaviour
        self.control = control
        self._control_mtime: int | None = None
        self._order: dict[str, int] = {}  # recipient → index of first appearance
        self._attempts: dict[str, int] = {}  # recipient → RCPT commands seen
        self._headers = BytesHeaderParser(policy=compat32)

    def _reload(self) -> None:
        if self.control is None:
            return
        try:
            mtime = self.control.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._control_mtime:
            return
        try:
            doc = json.loads(self.control.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # half-written: the next command reads it again
        self._control_mtime = mtime
        self.behaviour = Behaviour.from_json(doc)

    def _write(self, **entry: Any) -> None:
        entry["ts"] = time.time()
        self.record.write(json.dumps(entry) + "\n")
        self.record.flush()

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self._reload()
        addr = address.lower()
        index = self._order.setdefault(addr, len(self._order))
        attempt = self._attempts[addr] = self._attempts.get(addr, 0) + 1
        b = self.behaviour
        reply = None
        if addr in b.refuse_550:
            reply = f"550 5.1.1 <{address}>: Recipient address rejected: no such user"
        elif b.refuse_451_every and index % b.refuse_451_every == 0 and attempt == 1:
            reply = f"451 4.3.0 <{address}>: try again later"
        if reply is not None:
            self._write(event="refused", rcpt=addr, reply=reply)
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        self._write(event="rcpt", rcpt=addr)  # a send under way (tests wait for these)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        if self.behaviour.slow:
            await asyncio.sleep(self.behaviour.slow)  # the relay's own processing time
        data = bytes(envelope.original_content)
        headers = self._headers.parsebytes(data)
        # Recorded before the 250 goes out, as a real relay queues before it answers: a
        # client killed now never learns the message was accepted.
        self._write(
            event="accepted",
            message_id=str(headers.get("Message-ID", "")).strip(),
            rcpt=[a.lower() for a in envelope.rcpt_tos],
            mail_from=envelope.mail_from,
            size=len(data),
        )
        return "250 2.0.0 Ok: queued"


async def serve(args: argparse.Namespace, record: IO[str]) -> None:
    behaviour = Behaviour(
        refuse_451_every=args.refuse_451_every,
        refuse_550=frozenset(a.strip().lower() for a in args.refuse_550.split(",") if a.strip()),
        slow=args.slow,
    )
    loop = asyncio.get_running_loop()
    relay = Relay(record, behaviour, args.control)
    # Not aiosmtpd's Controller: with port=0 it probes port 0 for readiness and fails.
    server = await loop.create_server(
        lambda: SMTP(relay, hostname="relay.digestd.test", ident="digestd test relay"),
        "127.0.0.1",
        args.port,
    )
    port = server.sockets[0].getsockname()[1]
    tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
    tmp.write_text(str(port), encoding="utf-8")
    os.replace(tmp, args.ready_file)  # readers never see a half-written port
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2):
            await server.wait_closed()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.relay", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--record", type=Path, required=True)
    p.add_argument("--ready-file", type=Path, required=True)
    p.add_argument("--refuse-451-every", type=int, default=0)
    p.add_argument("--refuse-550", default="", help="comma-separated addresses")
    p.add_argument("--slow", type=float, default=0.0, help="seconds before answering DATA")
    p.add_argument("--control", type=Path, help="JSON file re-read when it changes")
    args = p.parse_args(argv)
    with open(args.record, "a", encoding="utf-8") as record:
        asyncio.run(serve(args, record))


if __name__ == "__main__":
    main()
