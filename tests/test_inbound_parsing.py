"""The pure parts of mail in: addresses and their tokens, reports from real MTAs, replies."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from digestd import config as config_mod
from digestd.errors import ConfigError
from digestd.inbound import commands, reports
from digestd.inbound.addresses import Addresses
from digestd.inbound.commands import Command
from digestd.tokens import Signer
from tests.inboundtools import parse, sample

VERP = "bounces+1-2-aaaaaaaaaaaaaaaa@digest.example.org"
FILL = {
    "verp": VERP,
    "subscriber": "ada@example.com",
    "message_id": "<digest.20260814.2@digest.example.org>",
    "reply_to": "digest+r-1-2-3-aaaaaaaaaaaaaaaa@digest.example.org",
    "unsubscribe_mailto": "mailto:digest+u-1-2-aaaaaaaaaaaaaaaa@digest.example.org",
    "unsubscribe_url": "https://digest.example.org/unsubscribe/token",
    "fbl": "bounces@digest.example.org",
}


def addresses(secret: str = "k" * 32) -> Addresses:
    return Addresses("digest", "digest.example.org", Signer(secret))


# -- addresses -------------------------------------------------------------------------------


def test_tokens_round_trip_and_fit_in_a_local_part() -> None:
    a = addresses()
    big = 2**31 - 1
    reply = a.reply(123456, big, 98765432)
    bounce = a.bounce(123456, 98765432)
    unsubscribe = a.unsubscribe(123456, big)
    for address in (reply, bounce, unsubscribe):
        local = address.rpartition("@")[0]
        assert len(local) <= 64 and local == local.lower()  # RFC 5321; case-folding MTAs
    r = a.parse(reply)
    assert r is not None and (r.kind, r.subscriber_id, r.version, r.delivery_id, r.valid) == (
        "reply", 123456, big, 98765432, True,
    )  # fmt: skip
    b = a.parse(bounce.upper())  # some MTAs upper-case what they return
    assert b is not None and (b.kind, b.subscriber_id, b.delivery_id, b.valid) == (
        "bounce", 123456, 98765432, True,
    )  # fmt: skip
    u = a.parse(f"<{unsubscribe}>")
    assert u is not None and (u.kind, u.subscriber_id, u.version) == ("unsubscribe", 123456, big)


def test_tampered_or_foreign_tokens_do_not_verify() -> None:
    a = addresses()
    reply = a.reply(1, 2, 3)
    other = addresses("x" * 32).reply(1, 2, 3)  # another installation's key
    moved = reply.replace("+r-1-", "+r-7-")  # someone else's subscriber id
    for address in (
        other,
        moved,
        "digest+r-1-2-3-zzzz@digest.example.org",
        "digest+r-x@digest.example.org",
    ):
        parsed = a.parse(address)
        assert parsed is not None and parsed.kind == "reply" and not parsed.valid
    # A reply token is no bounce token, even with the same numbers.
    token = a.reply(1, 2, 3).split("+r-")[1]
    bounce = a.parse(f"bounces+{token}@digest.example.org")
    assert bounce is None or not bounce.valid


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("digest@digest.example.org", "command"),
        ("Digest+Subscribe@Digest.Example.org", "subscribe"),
        ("bounces@digest.example.org", "noreply"),
        ("someone@digest.example.org", None),
        ("digest@example.com", None),
        ("digest+whatever@digest.example.org", None),
        ("not an address", None),
    ],
)
def test_which_addresses_are_ours(address: str, kind: str | None) -> None:
    parsed = addresses().parse(address)
    assert (parsed.kind if parsed else None) == kind


# -- reports from real MTAs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "action", "status", "no_such_user"),
    [
        ("postfix-user-unknown.eml", "dsn", "failed", "5.1.1", True),
        ("postfix-delayed.eml", "dsn", "delayed", "4.2.2", False),
        ("exim-dsn.eml", "dsn", "failed", "5.1.1", True),  # Status 5.0.0 refined by the 550
        ("exim-legacy.eml", "bounce", "failed", "5.1.1", True),  # plain text: flufl.bounce
        ("gmail-no-such-user.eml", "dsn", "failed", "5.1.1", True),
        ("exchange-online-not-found.eml", "dsn", "failed", "5.1.10", True),
        ("hotmail-mailbox-full.eml", "dsn", "failed", "5.2.2", False),
    ],
)
def test_delivery_reports_from_several_mtas(
    name: str, kind: str, action: str, status: str, no_such_user: bool
) -> None:
    raw = sample(name, **FILL)
    report = reports.classify(raw, parse(raw), "")
    assert report.kind == kind
    worst = report.worst
    assert worst is not None
    assert (worst.recipient, worst.action, worst.status) == ("ada@example.com", action, status)
    assert worst.no_such_user is no_such_user and worst.failed is (action == "failed")
    assert "\n" not in worst.diagnostic and len(worst.diagnostic) <= 300


@pytest.mark.parametrize(
    ("name", "agent"),
    [
        ("yahoo-arf.eml", "Yahoo!-Mail-Feedback/1.0"),
        ("microsoft-jmrp-arf.eml", "Microsoft JMRP/2.0"),
    ],
)
def test_complaints_in_arf(name: str, agent: str) -> None:
    raw = sample(name, **FILL)
    report = reports.classify(raw, parse(raw), "staff@hotmail.com")
    assert (report.kind, report.feedback_type, report.user_agent) == ("complaint", "abuse", agent)
    assert report.original is not None
    assert FILL["reply_to"] in str(report.original["Reply-To"])


def test_yahoo_names_the_verp_sender() -> None:
    raw = sample("yahoo-arf.eml", **FILL)
    assert VERP in reports.classify(raw, parse(raw), "x@yahoo.com").original_mail_from


def test_an_out_of_office_to_the_envelope_sender_is_no_bounce() -> None:
    raw = sample("vacation-to-verp.eml", **FILL)
    assert reports.classify(raw, parse(raw), "ada@example.com").kind == "none"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b"Content-Type: multipart/report; report-type=delivery-status\r\n\r\nno parts",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
        b"--x\r\nContent-Type: message/delivery-status\r\n\r\nAction\r\n\r\n--x",
        b"Content-Type: multipart/report; report-type=feedback-report; boundary=x\r\n\r\n--x--",
        b"From: MAILER-DAEMON@x\r\nContent-Type: text/plain; charset=bogus-8\r\n\r\n\xff\xfe",
    ],
)
def test_malformed_reports_never_raise(raw: bytes) -> None:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert reports.classify(raw, msg, "").kind in ("none", "dsn", "complaint", "bounce")


# -- what people write ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "lines"),
    [
        ("gmail-reply.eml", ["more 2", "less 1", "add topic world models", "Thanks!"]),
        ("outlook-reply.eml", ["Pause", "Ada"]),
    ],
)
def test_only_the_new_text_above_the_quote_is_read(name: str, lines: list[str]) -> None:
    msg = parse(sample(name, **FILL))
    assert commands.new_text(msg) == lines  # the quoted "stop" below is never read
    html = msg.get_body(("html",))
    assert html is not None
    only_html = EmailMessage()
    only_html.set_content(html.get_content(), subtype="html")  # type: ignore[attr-defined]
    assert commands.new_text(only_html) == lines


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("more 3", Command("more", numbers=(3,))),
        ("More 3, 5 and 7.", Command("more", numbers=(3, 5, 7))),
        ("less #2", Command("less", numbers=(2,))),
        ("more like this 4", Command("more", numbers=(4,))),
        ('add topic "world models"', Command("add", "topic", "world models")),
        ("Remove author: Tri Dao", Command("remove", "author", "Tri Dao")),
        ("add exclusion medical imaging", Command("add", "exclude", "medical imaging")),
        ("Stop!", Command("stop")),
        ("unsubscribe", Command("stop")),
        ("PAUSE", Command("pause")),
        ("resume", Command("resume")),
        ("help", Command("help")),
        ("more", None),
        ("more three", None),
        ("more " + "1" * 5000 + "x", None),
        ("thanks!", None),
    ],
)
def test_commands(line: str, command: Command | None) -> None:
    parsed = commands.parse_commands([line])
    assert (parsed.commands[0] if parsed.commands else None) == command


def test_a_subscribe_request() -> None:
    lines = [
        "Hello, please sign me up",
        "topic: diffusion language models",
        "Topic: KV cache; world models",
        "exclude: medical imaging",
        "author: Tri Dao",
        "categories: cs.LG, cs.CL",
        "time: 07:30 Europe/Berlin",
        "papers: 5",
    ]
    assert commands.parse_subscription(lines) == {
        "topics": ["diffusion language models", "KV cache", "world models"],
        "exclude": ["medical imaging"],
        "authors": ["Tri Dao"],
        "categories": ["cs.LG", "cs.CL"],
        "send_time": "07:30",
        "timezone": "Europe/Berlin",
        "max_papers": 5,
    }


@pytest.mark.parametrize(
    ("headers", "mail_from", "automatic"),
    [
        ({}, "ada@example.com", False),
        ({"Auto-Submitted": "no"}, "ada@example.com", False),
        ({}, "", True),
        ({}, "MAILER-DAEMON@example.com", True),
        ({}, "list-request@example.com", True),
        ({}, "noreply@example.com", True),
        ({"Auto-Submitted": "auto-replied"}, "ada@example.com", True),
        ({"Auto-Submitted": "auto-generated"}, "ada@example.com", True),
        ({"Precedence": "bulk"}, "ada@example.com", True),
        ({"Precedence": "list"}, "ada@example.com", True),
        ({"Precedence": "junk"}, "ada@example.com", True),
        ({"List-Id": "<papers.lists.example.com>"}, "ada@example.com", True),
        ({"X-Autoreply": "yes"}, "ada@example.com", True),
        ({"X-Auto-Response-Suppress": "All"}, "ada@example.com", True),
    ],
)
def test_automatic_mail_is_recognised(
    headers: dict[str, str], mail_from: str, automatic: bool
) -> None:
    msg = EmailMessage()
    msg["From"] = "Ada <ada@example.com>"
    for name, value in headers.items():
        msg[name] = value
    msg.set_content("stop")
    assert bool(commands.automatic(msg, mail_from)) is automatic


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("Ada <Ada@Example.COM>", "ada@example.com"),
        ("ada@example.com, eve@example.com", ""),
        ("undisclosed-recipients:;", ""),
        ("<@broken", ""),
        ("", ""),
    ],
)
def test_sender(value: str, address: str) -> None:
    raw = f"From: {value}\r\nSubject: x\r\n\r\nbody\r\n".encode()
    assert commands.sender(parse(raw)) == address


# -- configuration ---------------------------------------------------------------------------


def test_inbound_and_dkim_default_to_the_from_domain(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[smtp]\nfrom = "Digest <Digest@Mail.Example.ORG>"\n[inbound]\nenabled = true\n',
        encoding="utf-8",
    )
    config = config_mod.load(path, environ={})
    assert (config.inbound.domain, config.dkim.domain) == ("mail.example.org", "mail.example.org")
    a = Addresses.for_config(config, Signer("k" * 32))
    assert (a.subscribe, a.noreply) == (
        "digest+subscribe@mail.example.org",
        "bounces@mail.example.org",
    )


@pytest.mark.parametrize(
    ("table", "key", "value", "message"),
    [
        ("inbound", "listen", '"8025"', "must be"),
        ("inbound", "listen", '"unix:relative.sock"', "absolute"),
        ("inbound", "domain", '"not a domain"', "domain name"),
        ("inbound", "max_message_bytes", "10", "from 65536"),
        ("dkim", "selector", '"a b"', "DNS label"),
    ],
)
def test_bad_inbound_settings_name_table_and_key(
    tmp_path: Path, table: str, key: str, value: str, message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[{table}]\n{key} = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"\[{table}\] {key} .*{message}"):
        config_mod.load(path, environ={})
