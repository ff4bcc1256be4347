"""The LMTP listener (aiosmtpd) the MTA hands our domain's mail to; started by ``digestd run``.

LMTP (RFC 2033) answers the end of DATA once per accepted recipient, so the MTA knows the fate
of each: the handler returns one line per recipient, and the size and line-length refusals
aiosmtpd makes itself are repeated per recipient too. Recipients that are not ours are refused
at RCPT; everything after is :class:`digestd.inbound.receive.Inbox`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosmtpd.lmtp import LMTP

from digestd.config import InboundConfig
from digestd.errors import DigestdError
from digestd.inbound.receive import TEMPORARY, Inbox
from digestd.services import Services

log = logging.getLogger(__name__)
_PER_RECIPIENT = ("552 ", "500 Line too long")
_SIZE_REPLY = "552 5.3.4 Message too big for this system"
_CLOSE_GRACE = 5.0  # seconds in-flight sessions get to finish when the daemon stops


class _LMTP(LMTP):
    """aiosmtpd's LMTP, with its own DATA refusals answered once per recipient."""

    async def push(self, status: Any) -> None:
        envelope = self.envelope
        if isinstance(status, str) and status.startswith(_PER_RECIPIENT) and envelope is not None:
            # aiosmtpd refuses an oversized DATA with one line; LMTP owes one per recipient,
            # or the MTA would wait for the rest and then count the message as lost.
            line = _SIZE_REPLY if status.startswith("552 ") else status
            status = "\r\n".join([line] * max(1, len(envelope.rcpt_tos)))
        await super().push(status)


class Handler:
    """aiosmtpd hooks: refuse strangers at RCPT, hand each recipient's copy to the inbox."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if not self.inbox.accepts(address):
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = bytes(envelope.original_content or b"")
        sender = str(envelope.mail_from or "")
        sender = "" if sender in ("<>", "") else sender
        replies = []
        for rcpt in envelope.rcpt_tos:
            try:
                replies.append(await self.inbox.deliver(sender, rcpt, data))
            except Exception:  # top of a request: log, and let the MTA try again later
                log.exception("inbound mail: unexpected error")
                replies.append(TEMPORARY)
        return "\r\n".join(replies)


class InboundServer:
    """The listening socket and its sessions."""

    def __init__(self, config: InboundConfig, services: Callable[[], Services]) -> None:
        self.config = config
        self.inbox = Inbox(services)
        self.handler = Handler(self.inbox)
        self._server: asyncio.Server | None = None
        self._sessions: set[_LMTP] = set()
        self._path: Path | None = None

    def _protocol(self) -> _LMTP:
        protocol = _LMTP(
            self.handler,
            data_size_limit=self.config.max_message_bytes,
            enable_SMTPUTF8=True,  # subscribers' addresses may be international
            hostname=self.config.domain,  # not socket.getfqdn(): no DNS look-up per session
            ident="digestd LMTP",
            loop=asyncio.get_running_loop(),
        )
        # Forget finished sessions, so a long-running daemon does not keep every one.
        self._sessions = {p for p in self._sessions if not _finished(p)}
        self._sessions.add(protocol)
        return protocol

    @property
    def address(self) -> str:
        """Where it listens: the socket path, or HOST:PORT with the port actually bound."""
        if self._path is not None:
            return f"unix:{self._path}"
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        try:
            if listen.startswith("unix:"):
                self._path = Path(listen.removeprefix("unix:"))
                _remove_stale_socket(self._path)
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._server = await loop.create_unix_server(self._protocol, str(self._path))
                # What arrives here is what any local user could send through the MTA, and
                # every change it asks for needs a signed token: let the MTA's user connect.
                os.chmod(self._path, 0o666)  # noqa: S103
            else:
                host, _, port = listen.rpartition(":")
                host = host.strip("[]")
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                self._server = await loop.create_server(
                    self._protocol, host, int(port), family=family
                )
        except OSError as exc:
            raise DigestdError(
                f"cannot listen for mail on {listen}: {exc.strerror or exc}"
            ) from None
        log.info("LMTP listening on %s for @%s", self.address, self.config.domain)

    async def stop(self) -> None:
        """Stop listening; sessions get a moment to finish, then are closed (the MTA retries
        whatever was not answered)."""
        if self._server is None:
            return
        self._server.close()
        tasks = [p._handler_coroutine for p in self._sessions if p._handler_coroutine]
        pending = [t for t in tasks if not t.done()]
        if pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_GRACE):
                    await _idle(self._sessions)
        for protocol in self._sessions:
            if protocol.transport is not None:
                protocol.transport.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        log.info("LMTP listener stopped")


def _finished(protocol: _LMTP) -> bool:
    task = protocol._handler_coroutine
    return task is not None and task.done()


async def _idle(sessions: set[_LMTP]) -> None:
    # A session is busy while it holds an envelope with recipients (between RCPT and the end
    # of DATA); idle ones can be closed at once.
    while any(p.envelope is not None and p.envelope.rcpt_tos for p in sessions):  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # aiosmtpd has no event for "transaction done"


def _remove_stale_socket(path: Path) -> None:
    """A socket left by a crashed daemon would make binding fail; anything else is kept."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(mode):
        path.unlink()


async def start(config: InboundConfig, services: Callable[[], Services]) -> InboundServer | None:
    """The listener ``[inbound]`` asks for, started; None when it is disabled."""
    if not config.enabled:
        return None
    server = InboundServer(config, services)
    await server.start()
    return server
