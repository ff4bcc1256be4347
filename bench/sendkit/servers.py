"""The SMTP servers the send benchmark delivers to, each in processes of its own.

``Sink`` is an aiosmtpd server that accepts every message and counts messages, bytes and its
own CPU time, storing nothing. ``Postfix`` is a private Postfix instance (its own config and
queue under a temporary folder, smtpd on a loopback port) that discards what it accepts:
a real MTA's receiving cost, queue writes included, without delivering anything.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP

POSTFIX = Path("/usr/sbin/postfix")


@dataclass(frozen=True)
class Stats:
    """What the server has accepted so far; ``cpu`` is its own CPU seconds (None: unknown)."""

    messages: int
    bytes: int
    cpu: float | None = None


class Server(Protocol):
    name: str
    port: int

    def stats(self) -> Stats: ...

    def close(self) -> None: ...


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class _Counting:
    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.messages += 1
        self.bytes += len(envelope.original_content or b"")
        return "250 2.0.0 Ok: accepted"


async def _serve(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    handler = _Counting()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.localhost", ident="digestd bench sink"),
        "127.0.0.1",
        0,
    )
    conn.send(server.sockets[0].getsockname()[1])
    done = asyncio.Event()

    def command() -> None:
        try:
            what = conn.recv()
        except EOFError:  # the bench went away
            what = "stop"
        if what == "stats":
            conn.send((handler.messages, handler.bytes, time.process_time()))
        else:
            loop.remove_reader(conn.fileno())
            done.set()

    loop.add_reader(conn.fileno(), command)
    await done.wait()
    server.close()


def _sink_main(conn: Connection) -> None:
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # one INFO line per command
    asyncio.run(_serve(conn))


class Sink:
    """An aiosmtpd server in a process of its own on a free 127.0.0.1 port."""

    name = "aiosmtpd"

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_sink_main, args=(child,), name="smtp-sink", daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(30):
            self._proc.kill()
            raise RuntimeError("the SMTP sink did not start")
        self.port: int = self._conn.recv()

    def stats(self) -> Stats:
        self._conn.send("stats")
        messages, size, cpu = self._conn.recv()
        return Stats(messages, size, cpu)

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send("stop")
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()

    def __enter__(self) -> Sink:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
syslog_name = postfix-digestd-bench
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = relay.bench.localdomain
mydestination =
mynetworks = 127.0.0.0/8
relay_domains =
default_transport = discard
relay_transport = discard
local_transport = discard
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
alias_maps =
alias_database =
biff = no
"""
# chroot "n" everywhere: nothing to copy into a jail, and the instance lives only for a run.
_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """A private Postfix instance that accepts mail on a free loopback port and discards it.

    Needs root (Postfix's master starts as root and runs its daemons as user ``postfix``).
    Counts come from its log: the queue manager logs each message it took, with its size.
    """

    name = "postfix"

    def __init__(self) -> None:
        if not POSTFIX.exists():
            raise RuntimeError(f"{POSTFIX} is not installed (apt-get install postfix)")
        if os.geteuid() != 0:
            raise RuntimeError("a private Postfix instance needs root")
        self.root = Path(tempfile.mkdtemp(prefix="digestd-bench-postfix-"))
        self.port = free_port()
        conf = self.root / "conf"
        conf.mkdir()
        (self.root / "queue").mkdir()
        data = self.root / "data"
        data.mkdir()
        shutil.chown(data, "postfix")
        self.root.chmod(0o755)  # postfix's daemons must reach their queue
        (conf / "main.cf").write_text(_MAIN_CF.format(root=self.root))
        (conf / "master.cf").write_text(_MASTER_CF.format(port=self.port))
        self._conf = conf
        self._postfix("start")
        wait_listening(self.port)

    def _postfix(self, command: str) -> None:
        done = subprocess.run(
            [str(POSTFIX), "-c", str(self._conf), command], capture_output=True, text=True
        )
        if done.returncode:
            log = self.root / "maillog"
            tail = log.read_text().splitlines()[-5:] if log.exists() else []
            raise RuntimeError(
                f"postfix {command} failed: {done.stderr.strip()} {' / '.join(tail)}".strip()
            )

    def stats(self) -> Stats:
        log = self.root / "maillog"
        # The queue manager logs a message just after smtpd accepted it: wait for the log to
        # settle, so that every accepted message is counted.
        size, deadline = -1, time.monotonic() + 10
        while log.exists() and log.stat().st_size != size and time.monotonic() < deadline:
            size = log.stat().st_size
            time.sleep(0.5)
        messages = total = 0
        if log.exists():
            with log.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    if "/qmgr[" in line and " size=" in line:
                        messages += 1
                        total += int(line.split(" size=", 1)[1].split(",", 1)[0])
        return Stats(messages, total)

    def close(self) -> None:
        try:
            self._postfix("stop")
            pid_file = self.root / "queue" / "pid" / "master.pid"
            deadline = time.monotonic() + 15
            while pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Postfix:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def start(kind: str) -> Server:
    """A running server of ``kind`` ("aiosmtpd" or "postfix")."""
    return Postfix() if kind == "postfix" else Sink()
