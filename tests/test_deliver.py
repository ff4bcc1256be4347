"""Delivery against a real aiosmtpd on loopback: pooling, refusals, drops, timeouts, outbox."""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import socket
import time
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import pytest_asyncio

from digestd.config import SmtpConfig
from digestd.deliver import OutboxMailer, SmtpMailer, _transparent, classify
from digestd.dkim import DkimSigner, verify
from digestd.errors import PermanentDeliveryError, TemporaryDeliveryError
from digestd.render import Parts, Wire, mime
from tests.smtp_server import SmtpServer, ThreadedSmtpServer

SENDER = "bounces@digestd.test"
RCPT = "ada@example.org"
HTML = '<p>Three papers on <b>naïve</b> Bayes.</p>\n<a href="https://x.test/u?a=1&amp;b=2">u</a>\n'
TEXT = "Three papers on naïve Bayes.\n.a line that starts with a dot\n"

MakeMailer = Callable[..., SmtpMailer]
DKIM_KEY = Path(__file__).parent / "data" / "dkim" / "test-key.pem"


def make_message(to: str = RCPT, n: int = 1) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Paper digest <digest@digestd.test>"
    message["To"] = to
    message["Subject"] = f"Your digest — {n} papers"
    message["Date"] = "Tue, 04 Mar 2025 07:30:00 +0000"
    message["Message-ID"] = f"<digest-{n}@digestd.test>"
    message["List-Unsubscribe"] = "<https://x.test/u>"
    message.set_content(TEXT)
    message.add_alternative(HTML, subtype="html")
    return message


@pytest_asyncio.fixture
async def make_mailer(smtp_server: SmtpServer) -> AsyncIterator[MakeMailer]:
    """SmtpMailer factory over the test server; closes every mailer it made."""
    made: list[SmtpMailer] = []

    def make(config: SmtpConfig | None = None, **overrides: Any) -> SmtpMailer:
        mailer = SmtpMailer(config or smtp_server.config(**overrides))
        made.append(mailer)
        return mailer

    yield make
    for mailer in made:
        await mailer.aclose()


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def send(mailer: SmtpMailer, n: int = 1, to: str = RCPT) -> str:
    return await mailer.send(make_message(to, n), sender=SENDER, recipients=[to])


async def test_message_arrives_intact(smtp_server: SmtpServer, make_mailer: MakeMailer) -> None:
    message = make_message()
    message["Bcc"] = "hidden@example.org"

    reply = await make_mailer().send(message, sender=SENDER, recipients=[RCPT])

    assert reply == "250 2.0.0 Ok: queued as 1"
    [received] = smtp_server.handler.messages
    assert (received.mail_from, received.rcpt_tos) == (SENDER, [RCPT])
    assert b"\r\n" in received.data and b"\n" not in received.data.replace(b"\r\n", b"")
    parsed = received.parsed
    assert parsed["Subject"] == "Your digest — 1 papers"
    assert parsed["Message-ID"] == "<digest-1@digestd.test>"
    assert parsed["List-Unsubscribe"] == "<https://x.test/u>"
    assert "Bcc" not in parsed
    assert parsed.get_content_type() == "multipart/alternative"
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content() == TEXT  # including the dot-stuffed line
    assert html.get_content() == HTML


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: a\r\n\r\nbody\r\n",  # as digestd builds them: nothing to change
        b"Subject: a\r\n\r\nno final line ending",
        b"Subject: a\n\nbare LF\nlines\n",
        b"Subject: a\r\rlone CR\rand\r\nmixed\n\r",
        b"Subject: a\r\n\r\n.dot\r\n..two\r\n.\r\nend\r\n",
        b".starts with a dot\n.\r.\n",
        b"",
    ],
)
def test_data_payload_is_what_aiosmtplib_would_send(raw: bytes) -> None:
    # SmtpMailer writes DATA's payload itself (the library's version costs two regular
    # expression passes over every message); it must be byte for byte the library's.
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    assert _transparent(raw) == PERIOD_REGEX.sub(b"..", normalize_message_line_endings(raw)) + (
        b".\r\n"
    )


DOTS = f"{'a' * 75}.org\n.starts with a dot\n..\n.\n" + "x" * 74 + "=." * 40 + "\n"


def _wire() -> Wire:
    """A digest's bytes with lines QP would start with a dot, had mime() not escaped it."""
    text = DOTS
    html = f"<p>{'b' * 72}.org</p>\n<p>.dot</p>\n"
    headers = [("From", "digest@digestd.test"), ("To", RCPT), ("Subject", "Dots"),
               ("Message-ID", "<dots@digestd.test>")]  # fmt: skip
    return mime(Parts(headers, text, html))


@pytest.mark.parametrize("signed", [False, True])
async def test_digest_bytes_go_out_as_they_are(
    smtp_server: SmtpServer, make_mailer: MakeMailer, signed: bool
) -> None:
    # mime() writes what DATA carries unchanged, so the mailer skips transparency for it
    # (a DKIM signature on top is still checked); the server must receive exactly the
    # message, and the fast path must be byte for byte the full one.
    wire = _wire()
    assert b"=2E" in wire and b"\n." not in wire
    signer = DkimSigner("digest2026", "digestd.test", DKIM_KEY.read_bytes())
    flat = signer(wire) if signed else wire
    assert _transparent(flat, len(wire)) == _transparent(bytes(flat))
    mailer = SmtpMailer(smtp_server.config(), sign=signer if signed else None)
    try:
        await mailer.send(wire, sender=SENDER, recipients=[RCPT])
    finally:
        await mailer.aclose()
    [received] = smtp_server.handler.messages
    assert received.data.endswith(wire) and (received.data == wire) != signed
    if signed:
        assert verify(received.data, signer.txt_record)
    body = email.message_from_bytes(received.data, policy=email.policy.default).get_body(("plain",))
    assert body is not None and body.get_content().replace("\r\n", "\n") == DOTS


async def test_bytes_with_bare_line_endings_and_leading_dots_arrive_intact(
    smtp_server: SmtpServer, make_mailer: MakeMailer
) -> None:
    raw = b"Subject: dots\nMessage-ID: <d@digestd.test>\n\n.one\n..two\n.\nlast"
    await make_mailer().send(raw, sender=SENDER, recipients=[RCPT])
    [received] = smtp_server.handler.messages
    assert received.data == raw.replace(b"\n", b"\r\n") + b"\r\n"


async def test_sequential_sends_reuse_one_connection(
    smtp_server: SmtpServer, make_mailer: MakeMailer
) -> None:
    mailer = make_mailer(pool_size=2)
    for n in range(5):
        await send(mailer, n)
    assert len(smtp_server.handler.messages) == 5
    assert smtp_server.handler.connections == 1


async def test_concurrent_sends_stay_within_pool(
    smtp_server: SmtpServer, make_mailer: MakeMailer
) -> None:
    mailer = make_mailer(pool_size=2)
    replies = await asyncio.gather(*(send(mailer, n) for n in range(8)))
    assert all(reply.startswith("250 ") for reply in replies)
    assert len(smtp_server.handler.messages) == 8
    assert smtp_server.handler.connections == 2


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("rcpt", "451 4.3.0 Try later"),
        # A 5xx at MAIL FROM speaks about our sender address: never the subscriber's bounce.
        ("mail", "553 5.7.1 Sender address rejected: not yours"),
    ],
)
async def test_refusal_at_mail_or_rcpt_is_temporary_and_keeps_the_connection(
    smtp_server: SmtpServer, make_mailer: MakeMailer, command: str, reply: str
) -> None:
    mailer = make_mailer()
    setattr(smtp_server.handler, f"{command}_reply", reply)
    with pytest.raises(TemporaryDeliveryError) as caught:
        await send(mailer)
    assert (caught.value.code, caught.value.reply) == (int(reply[:3]), reply)
    assert smtp_server.handler.commands[-1] == "RSET"
    assert smtp_server.handler.commands.count("RCPT") == (command == "rcpt")

    setattr(smtp_server.handler, f"{command}_reply", None)
    assert (await send(mailer)).startswith("250 ")
    [received] = smtp_server.handler.messages
    assert (received.mail_from, received.rcpt_tos) == (SENDER, [RCPT])
    assert smtp_server.handler.connections == 1


async def test_550_for_one_recipient_is_permanent(
    smtp_server: SmtpServer, make_mailer: MakeMailer
) -> None:
    smtp_server.handler.rcpt_replies["gone@example.org"] = "550 5.1.1 No such user"
    mailer = make_mailer()
    with pytest.raises(PermanentDeliveryError) as caught:
        await send(mailer, to="gone@example.org")
    assert (caught.value.code, caught.value.reply) == (550, "550 5.1.1 No such user")
    # One refused recipient aborts the message for all: nothing half-delivered.
    message = make_message()
    with pytest.raises(PermanentDeliveryError):
        await mailer.send(message, sender=SENDER, recipients=[RCPT, "gone@example.org"])
    assert smtp_server.handler.messages == []
    assert (await send(mailer)).startswith("250 ")
    assert smtp_server.handler.connections == 1


@pytest.mark.parametrize(
    ("reply", "error", "code"),
    [
        ("451 4.7.1 Greylisted", TemporaryDeliveryError, 451),
        ("554 5.7.1 Message rejected as spam", PermanentDeliveryError, 554),
    ],
)
async def test_refusal_at_end_of_data(
    smtp_server: SmtpServer,
    make_mailer: MakeMailer,
    reply: str,
    error: type[Exception],
    code: int,
) -> None:
    mailer = make_mailer()
    smtp_server.handler.data_reply = reply
    with pytest.raises(error) as caught:
        await send(mailer)
    assert getattr(caught.value, "code", None) == code
    assert getattr(caught.value, "reply", None) == reply

    smtp_server.handler.data_reply = None
    assert (await send(mailer)).startswith("250 ")
    assert smtp_server.handler.connections == 1


async def test_nothing_listening_is_temporary() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mailer = SmtpMailer(SmtpConfig(host="127.0.0.1", port=port, security="none", rate_limit=0))
    with pytest.raises(TemporaryDeliveryError) as caught:
        await send(mailer)
    assert caught.value.code is None
    assert "\n" not in str(caught.value)
    await mailer.aclose()


async def test_connection_closed_while_idle_is_replaced(
    smtp_server: SmtpServer, make_mailer: MakeMailer
) -> None:
    mailer = make_mailer()
    await send(mailer, 1)
    smtp_server.drop_connections()
    await asyncio.sleep(0.05)  # let the client see the hang-up
    assert (await send(mailer, 2)).startswith("250 ")
    assert len(smtp_server.handler.messages) == 2
    assert smtp_server.handler.connections == 2


async def test_hang_up_at_mail_on_reused_connection_is_retried_once(
    smtp_server: SmtpServer, make_mailer: MakeMailer
) -> None:
    smtp_server.handler.drop_after = 1
    mailer = make_mailer()
    await send(mailer, 1)
    assert (await send(mailer, 2)).startswith("250 ")
    assert [m.parsed["Message-ID"] for m in smtp_server.handler.messages] == [
        "<digest-1@digestd.test>",
        "<digest-2@digestd.test>",
    ]
    assert smtp_server.handler.connections == 2
    assert smtp_server.handler.commands.count("MAIL") == 3  # one refused by hanging up


async def test_hang_up_on_fresh_connection_is_not_retried(
    smtp_server: SmtpServer, make_mailer: MakeMailer
) -> None:
    smtp_server.handler.drop_after = 0
    with pytest.raises(TemporaryDeliveryError):
        await send(make_mailer())
    assert smtp_server.handler.connections == 1


async def test_hang_up_after_data_is_never_retried(
    smtp_server: SmtpServer, make_mailer: MakeMailer
) -> None:
    mailer = make_mailer()
    await send(mailer, 1)
    smtp_server.handler.drop_at_data = True
    with pytest.raises(TemporaryDeliveryError) as caught:
        await send(mailer, 2)
    assert caught.value.code is None
    # The relay may have queued the message before hanging up: a resend could duplicate it.
    assert smtp_server.handler.commands.count("DATA") == 2

    smtp_server.handler.drop_at_data = False
    assert (await send(mailer, 3)).startswith("250 ")


async def test_whole_send_timeout(smtp_server: SmtpServer, make_mailer: MakeMailer) -> None:
    mailer = make_mailer(timeout=0.3)
    smtp_server.handler.data_delay = 10
    started = time.monotonic()
    with pytest.raises(TemporaryDeliveryError, match=r"within 0\.3 s") as caught:
        await send(mailer)
    assert time.monotonic() - started < 2
    assert caught.value.code is None

    smtp_server.handler.data_delay = 0
    assert (await send(mailer)).startswith("250 ")
    assert smtp_server.handler.connections == 2  # the timed-out connection was discarded


async def test_rate_limit_spaces_messages(smtp_server: SmtpServer, make_mailer: MakeMailer) -> None:
    mailer = make_mailer(rate_limit=20, pool_size=3)
    started = time.monotonic()
    await asyncio.gather(*(send(mailer, n) for n in range(10)))
    # Ten starts 1/20 s apart: the last one begins 9 intervals after the first.
    assert time.monotonic() - started >= 0.44
    assert len(smtp_server.handler.messages) == 10


async def test_login_and_a_refused_login() -> None:
    async with SmtpServer(credentials=("digest", "s3cret")) as server:
        mailer = SmtpMailer(server.config(username="digest", password="s3cret"))
        assert (await send(mailer)).startswith("250 ")
        await mailer.aclose()
        assert server.handler.logins == ["digest"]

        mailer = SmtpMailer(server.config(username="digest", password="wr0ng-pass"))
        # A bad password is our problem, not the subscriber's: never a bounce.
        with pytest.raises(TemporaryDeliveryError) as caught:
            await send(mailer)
        await mailer.aclose()
        assert caught.value.code == 535
        assert "wr0ng-pass" not in f"{caught.value} {caught.value.reply}"
        assert len(server.handler.messages) == 1


async def test_unsafe_address_is_permanent_and_sends_nothing(
    smtp_server: SmtpServer, make_mailer: MakeMailer
) -> None:
    hostile = "ada@example.org>\r\nRCPT TO:<eve@example.org"
    with pytest.raises(PermanentDeliveryError):
        await make_mailer().send(make_message(), sender=SENDER, recipients=[hostile])
    assert smtp_server.handler.connections == 0


async def test_non_ascii_address_needs_smtputf8(
    smtp_server: SmtpServer, make_mailer: MakeMailer
) -> None:
    mailer = make_mailer()
    with pytest.raises(PermanentDeliveryError, match="SMTPUTF8"):
        await send(mailer, to="zoë@example.org")
    assert (await send(mailer)).startswith("250 ")
    assert smtp_server.handler.connections == 1

    async with SmtpServer(smtputf8=True) as server:
        mailer = SmtpMailer(server.config())
        assert (await send(mailer, to="zoë@exämple.org")).startswith("250 ")
        await mailer.aclose()
        [received] = server.handler.messages
        assert received.rcpt_tos == ["zoë@exämple.org"]
        assert received.parsed["To"] == "zoë@exämple.org"


async def test_aclose_quits_idle_connections(
    smtp_server: SmtpServer, make_mailer: MakeMailer
) -> None:
    mailer = make_mailer(pool_size=2)
    await asyncio.gather(send(mailer, 1), send(mailer, 2))
    await mailer.aclose()
    assert smtp_server.handler.commands.count("QUIT") == 2
    with pytest.raises(RuntimeError):
        await send(mailer)


def _refused(code: int, text: str) -> aiosmtplib.SMTPRecipientRefused:
    return aiosmtplib.SMTPRecipientRefused(code, text, RCPT)


@pytest.mark.parametrize(
    ("exc", "kind", "code", "reply"),
    [
        (_refused(451, "4.3.0 Try later"), "T", 451, "451 4.3.0 Try later"),
        (_refused(550, "5.1.1 no such user"), "P", 550, "550 5.1.1 no such user"),
        (
            aiosmtplib.SMTPRecipientsRefused([_refused(552, "5.2.2 full")]),
            "P",
            552,
            "552 5.2.2 full",
        ),
        (aiosmtplib.SMTPDataError(554, "5.7.1 spam\n see x"), "P", 554, "554 5.7.1 spam see x"),
        (aiosmtplib.SMTPDataError(452, "4.3.1 disk full"), "T", 452, "452 4.3.1 disk full"),
        (aiosmtplib.SMTPResponseException(421, "4.4.2 bye"), "T", 421, "421 4.4.2 bye"),
        # Replies about our credentials, sender or the relay itself are never a bounce.
        (
            aiosmtplib.SMTPSenderRefused(553, "5.7.1 not yours", SENDER),
            "T",
            553,
            "553 5.7.1 not yours",
        ),
        (
            aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad login"),
            "T",
            535,
            "535 5.7.8 bad login",
        ),
        (aiosmtplib.SMTPConnectResponseError(554, "no service"), "T", 554, "554 no service"),
        (aiosmtplib.SMTPConnectError("Error connecting to h on port 25"), "T", None, ""),
        (aiosmtplib.SMTPServerDisconnected("Connection lost"), "T", None, ""),
        (aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server"), "T", None, ""),
        (aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported"), "T", None, ""),
        (ConnectionResetError(104, "Connection reset by peer"), "T", None, ""),
        (OSError(101, "Network is unreachable"), "T", None, ""),
        (TimeoutError(), "T", None, ""),
    ],
)
def test_classify(exc: BaseException, kind: str, code: int | None, reply: str) -> None:
    error = classify(exc)
    expected = TemporaryDeliveryError if kind == "T" else PermanentDeliveryError
    assert type(error) is expected
    assert (error.code, error.reply) == (code, reply)
    assert str(error) and "\n" not in str(error)


async def test_outbox_writes_eml_and_html(tmp_path: Path) -> None:
    outbox = OutboxMailer(tmp_path / "outbox")
    result = await outbox.send(make_message(), sender=SENDER, recipients=[RCPT])

    eml = Path(result.removeprefix("outbox: "))
    assert eml.parent == tmp_path / "outbox"
    assert eml.name.startswith("20250304-073000-ada-") and eml.suffix == ".eml"
    data = await asyncio.to_thread(eml.read_bytes)
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["Subject"] == "Your digest — 1 papers"
    body = parsed.get_body(("plain",))
    assert body is not None and body.get_content() == TEXT
    html = await asyncio.to_thread(eml.with_suffix(".html").read_text, encoding="utf-8")
    assert html == HTML
    assert _names(eml.parent) == [eml.name, eml.stem + ".html"]


async def test_outbox_is_idempotent_per_message_id(tmp_path: Path) -> None:
    outbox = OutboxMailer(tmp_path)
    first = await outbox.send(make_message(), sender=SENDER, recipients=[RCPT])
    again = make_message()
    del again["Date"]  # even a re-rendered copy with another date lands in the same file
    again["Date"] = "Wed, 05 Mar 2025 07:30:00 +0000"
    second = await outbox.send(again, sender=SENDER, recipients=[RCPT])
    assert first == second
    assert len(_names(tmp_path)) == 2  # one .eml, one .html
    other = await outbox.send(make_message(n=2), sender=SENDER, recipients=[RCPT])
    assert other != first and len(_names(tmp_path)) == 4


async def test_outbox_filename_is_safe_for_hostile_recipients(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    message = make_message(to="x@y.test")
    message.replace_header("Message-ID", "<../../../etc/passwd>")
    result = await OutboxMailer(outbox).send(message, sender=SENDER, recipients=["../../x@y"])
    eml = Path(result.removeprefix("outbox: "))
    assert eml.parent == outbox
    assert "/" not in eml.name and ".." not in eml.name
    assert _names(tmp_path) == ["outbox"]


async def test_outbox_unwritable_is_temporary(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TemporaryDeliveryError, match="outbox"):
        await OutboxMailer(blocker).send(make_message(), sender=SENDER, recipients=[RCPT])


def test_threaded_server_from_sync_code(smtp_server_thread: ThreadedSmtpServer) -> None:
    smtp_server_thread.handler.rcpt_replies["gone@example.org"] = "550 5.1.1 No such user"
    with smtplib.SMTP(smtp_server_thread.host, smtp_server_thread.port, timeout=5) as client:
        client.send_message(make_message(), from_addr=SENDER, to_addrs=[RCPT])
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.send_message(make_message(), from_addr=SENDER, to_addrs=["gone@example.org"])
    [received] = smtp_server_thread.wait_for(1)
    assert received.rcpt_tos == [RCPT]
    assert received.parsed["Subject"] == "Your digest — 1 papers"


def test_threaded_server_serves_a_mailer_in_another_loop(
    smtp_server_thread: ThreadedSmtpServer,
) -> None:
    async def main() -> str:
        mailer = SmtpMailer(smtp_server_thread.config())
        try:
            return await send(mailer)
        finally:
            await mailer.aclose()

    assert asyncio.run(main()).startswith("250 ")
    assert len(smtp_server_thread.handler.messages) == 1
