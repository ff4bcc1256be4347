"""A recording aiosmtpd server on 127.0.0.1 for tests, in the test's loop or in its own thread."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from email.message import EmailMessage
from typing import Any, NamedTuple

import pytest
import pytest_asyncio
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from digestd.config import SmtpConfig

__all__ = [
    "Received",
    "RecordingHandler",
    "SmtpServer",
    "ThreadedSmtpServer",
    "smtp_server",
    "smtp_server_thread",
]


class Received(NamedTuple):
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # as received after the final dot, CRLF line endings, dot-stuffing undone
    parsed: EmailMessage  # ``data`` with LF line endings, parsed with ``policy.default``


class RecordingHandler:
    """aiosmtpd handler that records accepted messages and can be told to refuse or misbehave.

    Set the attributes at any time, also from another thread:

    - ``mail_reply`` / ``rcpt_reply`` / ``data_reply``: answer every MAIL / RCPT / end of DATA
      with this reply
      (e.g. ``"451 4.3.0 Try later"``) instead of accepting;
    - ``rcpt_replies``: the same, per recipient address (checked before ``rcpt_reply``);
    - ``data_delay``: seconds to sleep before answering the end of DATA;
    - ``drop_after``: after this many messages on one connection, hang up when the next
      MAIL FROM arrives, without replying (a relay closing a reused connection);
    - ``drop_at_data``: hang up at the end of DATA instead of replying (the message is lost).
    """

    # aiosmtpd treats every handler attribute named handle_* as a hook and auth_* as an AUTH
    # mechanism, so plain attributes here must avoid those prefixes.

    def __init__(self) -> None:
        self.messages: list[Received] = []
        #: how many of ``messages`` arrived over TLS (STARTTLS or implicit)
        self.encrypted = 0
        self.commands: list[str] = []  # EHLO, MAIL, RCPT, DATA, RSET, QUIT as they arrive
        self.connections = 0
        self.logins: list[str] = []
        self.mail_reply: str | None = None
        self.rcpt_reply: str | None = None
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply: str | None = None
        self.data_delay = 0.0
        self.drop_after: int | None = None
        self.drop_at_data = False
        self._per_session: dict[object, int] = {}

    async def handle_EHLO(
        self, server: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.commands.append("EHLO")
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.commands.append("MAIL")
        if self.drop_after is not None and self._per_session.get(session, 0) >= self.drop_after:
            assert server.transport is not None
            server.transport.close()
            return "421 4.4.2 closing (never seen by the client)"
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.commands.append("RCPT")
        reply = self.rcpt_replies.get(address, self.rcpt_reply)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.commands.append("DATA")
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.drop_at_data:
            assert server.transport is not None
            server.transport.close()
            return "451 4.4.2 closing (never seen by the client)"
        if self.data_reply is not None:
            return self.data_reply
        data = bytes(envelope.original_content)
        # Parsed from LF text, as a mail reader would show it: 8bit parts keep their line
        # endings, and tests compare them with Python strings.
        lf = data.replace(b"\r\n", b"\n")
        parsed = email.message_from_bytes(lf, policy=email.policy.default)
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), data, parsed))
        self.encrypted += server.transport is not None and bool(
            server.transport.get_extra_info("ssl_object")
        )
        self._per_session[session] = self._per_session.get(session, 0) + 1
        return f"250 2.0.0 Ok: queued as {len(self.messages)}"

    async def handle_RSET(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.commands.append("RSET")
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.commands.append("QUIT")
        self._per_session.pop(session, None)
        return "221 2.0.0 Bye"


class SmtpServer:
    """aiosmtpd on 127.0.0.1, an OS-chosen port, in the running event loop.

    ``credentials=(user, password)`` offers AUTH PLAIN/LOGIN over plain TCP (loopback only)
    and accepts exactly that pair; logging in stays optional for the client.
    ``smtputf8=True`` offers SMTPUTF8 (non-ASCII addresses); aiosmtpd's default is off.
    ``tls=context`` requires STARTTLS with that server context before MAIL, or, with
    ``implicit=True``, speaks TLS from the first byte (port 465 style).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        handler: RecordingHandler | None = None,
        *,
        credentials: tuple[str, str] | None = None,
        smtputf8: bool = False,
        tls: ssl.SSLContext | None = None,
        implicit: bool = False,
    ) -> None:
        self.handler = handler or RecordingHandler()
        self.port = 0
        self._credentials = credentials
        self._smtputf8 = smtputf8
        self._tls = tls
        self._implicit = implicit
        self._server: asyncio.Server | None = None
        self._protocols: list[SMTP] = []

    def config(self, **overrides: Any) -> SmtpConfig:
        """An ``SmtpConfig`` pointing here: plain SMTP, short timeout, no rate limit."""
        base = SmtpConfig(
            host=self.host,
            port=self.port,
            security="none",
            from_="Paper digest <digest@digestd.test>",
            timeout=5.0,
            rate_limit=0,
        )
        return replace(base, **overrides)

    def _authenticate(
        self, server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (
            (auth_data.login.decode(), auth_data.password.decode()) == self._credentials
        )
        if ok:
            self.handler.logins.append(auth_data.login.decode())
        # handled=False: aiosmtpd then sends the 235/535 itself (True would leave the client
        # waiting for a reply that never comes).
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    def _protocol(self) -> SMTP:
        self.handler.connections += 1
        extra: dict[str, Any] = {}
        if self._credentials is not None:
            # Loopback only; without TLS there is no other way to exercise AUTH here.
            extra = {"authenticator": self._authenticate, "auth_require_tls": False}
        if self._tls is not None and not self._implicit:
            extra |= {"tls_context": self._tls, "require_starttls": True}
        protocol = SMTP(
            self.handler,
            hostname="smtp.digestd.test",
            ident="digestd test server",
            enable_SMTPUTF8=self._smtputf8,
            loop=asyncio.get_running_loop(),
            **extra,
        )
        self._protocols.append(protocol)
        return protocol

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Not aiosmtpd's Controller: with port=0 it probes port 0 to check readiness and fails.
        ssl_context = self._tls if self._implicit else None
        self._server = await loop.create_server(self._protocol, self.host, 0, ssl=ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    def drop_connections(self) -> None:
        """Hang up on every open connection, as a relay does with idle clients."""
        for protocol in self._protocols:
            if protocol.transport is not None:
                protocol.transport.close()

    async def wait_for(self, count: int) -> list[Received]:
        """Wait until at least ``count`` messages arrived (for senders running as background
        tasks); gives up after 5 s, wrap in ``asyncio.timeout`` to give up sooner."""
        async with asyncio.timeout(5):
            # Polling, not an asyncio.Event: the handler may serve a loop in another thread.
            while len(self.handler.messages) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return self.handler.messages

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self.drop_connections()
        # Let each session's task see its cancellation, so none is left pending at loop close.
        tasks = [p._handler_coroutine for p in self._protocols if p._handler_coroutine]
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> SmtpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class ThreadedSmtpServer:
    """The same server in a thread with its own loop, for code that runs its own event loop
    (a CLI under CliRunner, ``asyncio.run``, plain ``smtplib``). Use as a context manager."""

    def __init__(
        self,
        handler: RecordingHandler | None = None,
        *,
        credentials: tuple[str, str] | None = None,
        smtputf8: bool = False,
        tls: ssl.SSLContext | None = None,
        implicit: bool = False,
    ) -> None:
        self.server = SmtpServer(
            handler, credentials=credentials, smtputf8=smtputf8, tls=tls, implicit=implicit
        )
        self._thread = threading.Thread(target=self._run, name="smtp-test-server", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def handler(self) -> RecordingHandler:
        return self.server.handler

    def config(self, **overrides: Any) -> SmtpConfig:
        return self.server.config(**overrides)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.server.start()
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._ready.set()  # also on failure, so __enter__ does not wait forever
            try:
                await self._stop.wait()
            finally:
                await self.server.stop()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test thread by __enter__/__exit__
            self._error = self._error or exc

    def drop_connections(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.server.drop_connections)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Block until at least ``count`` messages arrived (for senders in a subprocess)."""
        deadline = time.monotonic() + timeout
        while len(self.handler.messages) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.handler.messages)} of {count} messages arrived")
            time.sleep(0.01)
        return self.handler.messages

    def __enter__(self) -> ThreadedSmtpServer:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError("test SMTP server did not start") from self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        if self._error is not None:
            raise RuntimeError("test SMTP server failed") from self._error


@pytest_asyncio.fixture
async def smtp_server() -> AsyncIterator[SmtpServer]:
    """A started recording server in the test's event loop."""
    async with SmtpServer() as server:
        yield server


@pytest.fixture
def smtp_server_thread() -> Iterator[ThreadedSmtpServer]:
    """A started recording server in its own thread, for synchronous callers."""
    with ThreadedSmtpServer() as server:
        yield server
