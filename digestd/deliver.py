"""Mail delivery: a pooled, rate-limited SMTP client, failure classification, an outbox writer."""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import functools
import hashlib
import logging
import os
import re
import ssl
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib
from aiosmtplib.email import flatten_message, parse_address

from digestd.config import SmtpConfig
from digestd.errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from digestd.render import Wire

log = logging.getLogger(__name__)
#: turns the serialised message into the one to send, e.g. with a DKIM signature on top
Sign = Callable[[bytes], bytes]


def _unsigned(data: bytes) -> bytes:
    return data


class Mailer(Protocol):
    async def send(
        self, message: EmailMessage | bytes, *, sender: str, recipients: Sequence[str]
    ) -> str:
        """Deliver ``message`` (an EmailMessage, or the bytes of one, CRLF) to ``recipients``
        with envelope ``sender``; return a one-line description of the success; raise
        Temporary- or PermanentDeliveryError."""
        ...

    async def aclose(self) -> None: ...


# Replies to these commands speak about our own setup (credentials, sender address, the relay
# itself), not about the recipient: a 5xx there must not be counted as the subscriber's bounce,
# or one wrong password would mark every subscriber as bounced.
_NOT_ABOUT_RECIPIENT = (
    aiosmtplib.SMTPAuthenticationError,
    aiosmtplib.SMTPConnectResponseError,
    aiosmtplib.SMTPHeloError,
    aiosmtplib.SMTPSenderRefused,
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def classify(exc: BaseException) -> DeliveryError:
    """Translate an aiosmtplib or socket failure into a Temporary or Permanent delivery error."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reply = _one_line(f"{exc.code} {exc.message}")
        if 500 <= exc.code < 600 and not isinstance(exc, _NOT_ABOUT_RECIPIENT):
            return PermanentDeliveryError(
                f"SMTP server refused: {reply}", code=exc.code, reply=reply
            )
        return TemporaryDeliveryError(f"SMTP server answered: {reply}", code=exc.code, reply=reply)
    if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is one
        return TemporaryDeliveryError(_one_line(f"SMTP timed out: {exc or 'no answer'}"))
    if isinstance(exc, OSError | aiosmtplib.SMTPException):
        return TemporaryDeliveryError(_one_line(f"SMTP connection failed: {exc}"))
    return TemporaryDeliveryError(_one_line(f"SMTP failed: {type(exc).__name__}: {exc}"))


@functools.lru_cache(maxsize=256)  # the envelope sender is the same for every digest
def _is_bare(address: str) -> bool:
    # aiosmtplib sends whatever parseaddr makes of a malformed address, which may be another
    # mailbox than the caller meant; accept only what survives parsing unchanged.
    try:
        return parse_address(address) == address
    except ValueError:
        return False


class _Pacer:
    """Spaces message starts 1/rate seconds apart, across every connection of one mailer."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = asyncio.get_running_loop().time()
        # Reserve the slot before sleeping so concurrent callers queue up behind each other.
        at = max(now, self._next)
        self._next = at + self._interval
        if at > now:
            await asyncio.sleep(at - now)


_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def _transparent(message: bytes, ready: int = 0) -> bytes:
    """``message`` as DATA carries it (RFC 5321 4.5.2): CRLF line endings, a line starting
    with a dot doubled, the end-of-data line. ``ready``: the length of a tail known to be so
    already, as `render.mime` writes (a `Wire`), which is then not looked at (the checks
    cost 64 µs for a 29 KB digest that had a line starting with a dot, 0.7 µs skipped)."""
    if ready and (ready == len(message) or message[-ready - 1 : -ready] == b"\n"):
        head = message[:-ready]
        return (_transparent(head)[:-3] if head else b"") + message[-ready:] + b".\r\n"
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _LINE_ENDINGS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b".") or b"\n." in message:
        message = _LEADING_DOT.sub(b"..", message)
    return message + b".\r\n"


#: the per-reply timeout of the commands a send runs inside its own bound (`SmtpMailer.send`):
#: none, since aiosmtplib waits for a reply with asyncio.wait_for, which with a timeout sets a
#: timer and adds two loop iterations to every reply (2 µs of its 4; four replies a digest)
_NO_TIMEOUT = None


class SmtpMailer:
    """Sends through one relay over at most ``pool_size`` reused connections."""

    def __init__(
        self,
        config: SmtpConfig,
        *,
        tls_context: ssl.SSLContext | None = None,
        sign: Sign | None = None,
    ) -> None:
        self._config = config
        self._sign = sign or _unsigned
        self._tls_context = tls_context
        self._slots = asyncio.Semaphore(max(1, config.pool_size))
        self._idle: list[aiosmtplib.SMTP] = []  # LIFO: the most recently used is least stale
        self._pacer = _Pacer(config.rate_limit)
        self._closed = False

    async def send(
        self, message: EmailMessage | bytes, *, sender: str, recipients: Sequence[str]
    ) -> str:
        if self._closed:
            raise RuntimeError("SmtpMailer.send() after aclose()")
        if not recipients:
            raise PermanentDeliveryError("message has no recipients")
        if not all(map(_is_bare, (sender, *recipients))):
            # No address in the message: errors get logged, addresses must not be.
            raise PermanentDeliveryError("envelope address is not a bare addr-spec")
        utf8 = not (sender + "".join(recipients)).isascii()
        # Serialising costs more CPU than the send; do it before holding a connection.
        raw = message if isinstance(message, bytes) else flatten_message(message, utf8=utf8)
        flat = self._sign(raw)
        # What render.mime wrote needs nothing done for DATA; a signature on top still may.
        ready = len(raw) if isinstance(raw, Wire) and flat.endswith(raw) else 0
        await self._pacer.wait()
        try:
            # This bounds the whole send; MAIL, RCPT and DATA wait for their replies without
            # aiosmtplib's own timeout (`_NO_TIMEOUT`), which only connecting and RSET keep.
            async with asyncio.timeout(self._config.timeout):
                response = await self._send_pooled(message, flat, sender, recipients, utf8, ready)
        except TimeoutError as exc:
            if isinstance(exc, aiosmtplib.SMTPException):
                raise classify(exc) from exc
            raise TemporaryDeliveryError(
                f"SMTP send did not finish within {self._config.timeout:g} s"
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise classify(exc) from exc
        return _one_line(str(response))

    async def _send_pooled(
        self,
        message: EmailMessage | bytes,
        flat: bytes,
        sender: str,
        recipients: Sequence[str],
        utf8: bool,
        ready: int,
    ) -> aiosmtplib.SMTPResponse:
        async with self._slots:
            client, reused = await self._checkout()
            try:
                if utf8 and not client.supports_extension("smtputf8"):
                    raise PermanentDeliveryError(
                        "the relay does not offer SMTPUTF8 (needed for a non-ASCII address)"
                    )
                if not client.supports_extension("8bitmime") and not flat.isascii():
                    if isinstance(message, bytes):  # built 7-bit unless an address is UTF-8
                        raise PermanentDeliveryError("the relay does not offer 8BITMIME")
                    flat = self._sign(flatten_message(message, utf8=utf8, cte_type="7bit"))
                    ready = 0
                try:
                    await self._mail(client, flat, sender, utf8)
                except aiosmtplib.SMTPServerDisconnected:
                    if not reused:
                        raise
                    # A relay may close an idle connection at any moment, crossing our MAIL
                    # FROM. Nothing was accepted yet, so one try on a fresh connection is safe.
                    log.info("SMTP connection went stale; reconnecting")
                    client = await self._connect()
                    await self._mail(client, flat, sender, utf8)
                # One refused recipient aborts the whole transaction: a message is delivered
                # to everyone or to no one, so the caller can record a single outcome.
                for recipient in recipients:
                    await self._rcpt(client, recipient, utf8)
                return await self._data(client, flat, ready)
            except aiosmtplib.SMTPResponseException:
                await self._reset(client)
                raise
            except DeliveryError:
                raise  # refused before any command: the connection is fine
            except BaseException:
                # Timeout, cancellation or a broken stream: the protocol state is unknown.
                client.close()
                raise
            finally:
                self._checkin(client)

    @staticmethod
    async def _mail(client: aiosmtplib.SMTP, flat: bytes, sender: str, utf8: bool) -> None:
        options: list[str] = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(flat)}")  # lets the relay refuse a too-big message now
        if client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if utf8:
            options.append("SMTPUTF8")
        # aiosmtplib's mail() and rcpt() parse the address again on every call; send() has
        # made sure each is a bare addr-spec that parses to itself, so it goes as it is.
        address = f"<{sender}>".encode("utf-8" if utf8 else "ascii")
        response = await client.execute_command(
            b"MAIL", b"FROM:" + address, *(o.encode("ascii") for o in options), timeout=_NO_TIMEOUT
        )
        if response.code != 250:
            raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)

    @staticmethod
    async def _rcpt(client: aiosmtplib.SMTP, recipient: str, utf8: bool) -> None:
        address = f"<{recipient}>".encode("utf-8" if utf8 else "ascii")
        response = await client.execute_command(b"RCPT", b"TO:" + address, timeout=_NO_TIMEOUT)
        if response.code not in (250, 251):
            raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)

    @staticmethod
    async def _data(
        client: aiosmtplib.SMTP, flat: bytes, ready: int = 0
    ) -> aiosmtplib.SMTPResponse:
        """DATA, then the message. What aiosmtplib's ``data()`` does, less its two regular
        expression passes over every message (line endings, leading dots), 7% of a send's
        CPU: a digest is a `Wire` (``ready`` is its length), which needs neither; other
        messages are checked with byte counts first (39 against 132 µs for 20 KB)."""
        payload = _transparent(flat, ready)
        start = await client.execute_command(b"DATA", timeout=_NO_TIMEOUT)
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol = client.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        try:
            # No await between the write and read_response(), which marks a reply as
            # expected: the reply cannot arrive before it is waited for.
            protocol.write(payload)
            response = await protocol.read_response(timeout=_NO_TIMEOUT)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            client.close()  # as aiosmtplib does: the protocol state is unknown
            raise
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

    @staticmethod
    async def _reset(client: aiosmtplib.SMTP) -> None:
        if not client.is_connected:  # aiosmtplib drops the connection itself after a 421
            return
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError):
            client.close()  # the original reply is what the caller needs; drop this one
        except BaseException:
            client.close()  # cancelled mid-RSET: a reply may still be in flight
            raise

    async def _checkout(self) -> tuple[aiosmtplib.SMTP, bool]:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client, True
            client.close()  # the relay hung up while the connection was idle
        return await self._connect(), False

    def _checkin(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected and not self._closed:
            self._idle.append(client)
        else:
            client.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        config = self._config
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            username=config.username or None,
            password=config.password if config.username else None,
            timeout=config.timeout,
            # Explicit both ways: start_tls=None would be opportunistic and downgradable.
            use_tls=config.security == "tls",
            start_tls=config.security == "starttls",
            validate_certs=config.validate_certs,
            tls_context=self._tls_context,
        )
        await client.connect()
        try:
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()  # MAIL options depend on the advertised extensions
        except BaseException:
            client.close()
            raise
        return client

    async def aclose(self) -> None:
        """QUIT every idle connection; connections in use are closed when their send ends."""
        self._closed = True
        idle, self._idle = self._idle, []

        async def quit_one(client: aiosmtplib.SMTP) -> None:
            try:
                async with asyncio.timeout(self._config.timeout):
                    await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                pass  # we are leaving anyway; close() below frees the socket
            finally:
                client.close()

        await asyncio.gather(*(quit_one(client) for client in idle))


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


class OutboxMailer:
    """Writes each message into a folder as ``.eml`` plus its HTML part as ``.html``."""

    def __init__(self, path: Path, *, sign: Sign | None = None) -> None:
        self._path = path
        self._sign = sign or _unsigned

    async def send(
        self, message: EmailMessage | bytes, *, sender: str, recipients: Sequence[str]
    ) -> str:
        try:
            eml = await asyncio.to_thread(self._write, message, recipients)
        except OSError as exc:
            raise TemporaryDeliveryError(
                _one_line(f"cannot write to outbox {self._path}: {exc.strerror or exc}")
            ) from exc
        return f"outbox: {eml}"

    async def aclose(self) -> None:
        return None

    def _write(self, message: EmailMessage | bytes, recipients: Sequence[str]) -> Path:
        if isinstance(message, bytes):
            data = self._sign(message.replace(b"\r\n", b"\n"))  # LF: friendlier on disk
            parsed = email.message_from_bytes(data, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            message = parsed
        else:
            data = self._sign(message.as_bytes(policy=email.policy.default))
        key = str(message.get("Message-ID", "")).strip().encode() or data
        digest = hashlib.sha256(key).hexdigest()[:16]
        self._path.mkdir(parents=True, exist_ok=True)
        # Idempotent per Message-ID: reuse the name of an earlier write of the same message.
        existing = sorted(self._path.glob(f"*-{digest}.eml"))
        if existing:
            stem = existing[0].stem
        else:
            stem = f"{_timestamp(message)}-{_slug(recipients)}-{digest}"
        html = message.get_body(preferencelist=("html",))
        if isinstance(html, EmailMessage):
            _write_atomic(self._path / f"{stem}.html", str(html.get_content()).encode("utf-8"))
        eml = self._path / f"{stem}.eml"
        _write_atomic(eml, data)
        return eml


def _timestamp(message: EmailMessage) -> str:
    # The Date header, not the clock, so that rewriting a message keeps its name.
    try:
        when = email.utils.parsedate_to_datetime(str(message["Date"]))
    except (TypeError, ValueError):
        when = datetime.now(UTC)
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y%m%d-%H%M%S")


def _slug(recipients: Sequence[str]) -> str:
    # A recipient is untrusted text: keep a short, tame local part and never a path separator.
    local = recipients[0].rpartition("@")[0] if recipients else ""
    return _UNSAFE.sub("-", local)[:24].strip(".-") or "message"


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
