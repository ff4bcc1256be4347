"""DKIM: what the SMTP server receives (and the outbox holds) verifies with the published key."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dkim
import pytest

from digestd import config as config_mod
from digestd import pipeline
from digestd.config import DkimConfig
from digestd.dkim import DkimSigner, verify
from digestd.errors import ConfigError
from digestd.models import Status
from digestd.services import Services
from digestd.subscribers import make_input
from digestd.subscription import Subscriptions
from tests.smtp_server import SmtpServer
from tests.test_cli import Run, digestd
from tests.webtools import DAY1

__all__ = ["digestd"]

KEYS = Path(__file__).parent / "data" / "dkim"


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "dkim.pem"
    shutil.copy(KEYS / "test-key.pem", path)
    return path


def signature_tags(data: bytes) -> dict[str, str]:
    header = re.search(rb"^DKIM-Signature:(.*?)\r?\n(?! )", data, re.S | re.M)
    assert header is not None, "no DKIM-Signature"
    text = " ".join(header.group(1).decode().split())
    return dict(
        (k.strip(), v.strip()) for k, _, v in (t.partition("=") for t in text.split(";") if t)
    )


async def test_every_message_sent_is_signed_and_verifies(
    write_config: Callable[..., Path], smtp_server: SmtpServer, key: Path
) -> None:
    path = write_config(
        smtp__host=smtp_server.host, smtp__port=smtp_server.port, smtp__security="none",
        dkim__selector="digest2026", dkim__private_key_file=str(key), inbound__enabled=True,
    )  # fmt: skip
    config = config_mod.load(path)
    signer = DkimSigner.load(config.dkim)
    assert signer is not None and signer.bits == 2048
    async with Services.build(config) as services:
        # A confirmation notice, then a digest.
        await Subscriptions(services).request(make_input("grace@example.com", topics=["x"]))
        services.store.add_subscriber(make_input("ada@example.com", topics=["world models"]),
                                      status=Status.ACTIVE)  # fmt: skip
        now = datetime.now(UTC)
        await pipeline.fetch(services, DAY1, now=now - timedelta(minutes=1))
        assert (await pipeline.send_period(services, DAY1, now=now)).sent == 1
    notice, digest = smtp_server.handler.messages
    for received in (notice, digest):
        assert verify(received.data, signer.txt_record)
        tags = signature_tags(received.data)
        assert (tags["d"], tags["s"], tags["c"], tags["a"]) == (
            "example.org", "digest2026", "relaxed/relaxed", "rsa-sha256",
        )  # fmt: skip
    signed = [h.strip() for h in signature_tags(digest.data)["h"].split(":")]
    for name in (
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "reply-to",
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "mime-version",
        "content-type",
    ):
        assert name in signed
    # Signed once more than present: a second one cannot be added (RFC 8058 §4 asks that
    # both unsubscribe headers be covered).
    assert signed.count("list-unsubscribe") == 2 and signed.count("from") == 2
    # What a receiver checks: any change breaks it.
    body_changed = digest.data.replace(b"Paper digest", b"Paper digesT", 1)
    assert b"Paper digesT" in body_changed and not verify(body_changed, signer.txt_record)
    added = digest.data.replace(
        b"\r\nList-Id:", b"\r\nList-Unsubscribe: <https://evil.example/>\r\nList-Id:", 1
    )
    assert not verify(added, signer.txt_record)
    other = DkimSigner("digest2026", "example.org", (KEYS / "test-key.pem").read_bytes())
    assert other.txt_record == signer.txt_record
    # A DNS answer with another key does not verify it.
    assert not dkim.verify(digest.data, dnsfunc=lambda *_a, **_k: b"v=DKIM1; k=rsa; p=AAAA")


async def test_the_outbox_holds_signed_messages(
    write_config: Callable[..., Path], tmp_path: Path, key: Path
) -> None:
    config = config_mod.load(write_config(dkim__selector="s1", dkim__private_key_file=str(key)))
    signer = DkimSigner.load(config.dkim)
    assert signer is not None
    async with Services.build(config) as services:
        await Subscriptions(services).request(make_input("grace@example.com", topics=["x"]))
    [eml] = (tmp_path / "outbox").glob("*.eml")
    data = eml.read_bytes()
    assert data.startswith(b"DKIM-Signature:") and b"\r\n" not in data  # LF on disk
    assert verify(data, signer.txt_record)


def test_check_config_prints_the_txt_record(
    digestd: Run, write_config: Callable[..., Path], key: Path
) -> None:
    r = digestd("check-config", config=write_config(dkim__selector="digest2026",
                                                    dkim__private_key_file=str(key)))  # fmt: skip
    assert r.returncode == 0, r.stderr
    signer = DkimSigner("digest2026", "example.org", key.read_bytes())
    assert "DKIM: publish this TXT record (2048-bit RSA key):" in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("digest2026._domainkey."))
    assert line.startswith('digest2026._domainkey.example.org. IN TXT ( "v=DKIM1; k=rsa; p=')
    strings = re.findall(r'"([^"]*)"', line)
    assert all(len(s) <= 255 for s in strings) and "".join(strings) == signer.txt_record
    assert "dkim.private_key_file" in r.stdout and "BEGIN" not in r.stdout  # the key stays put


@pytest.mark.parametrize(
    ("key_file", "message"),
    [
        ("missing.pem", "cannot read"),
        ("weak-key.pem", "512 bits"),
        ("README.md", "not a PEM RSA private key"),
    ],
)
def test_bad_keys_are_refused(key_file: str, message: str) -> None:
    config = DkimConfig(selector="s", domain="example.org", private_key_file=KEYS / key_file)
    with pytest.raises(ConfigError, match=f"\\[dkim\\] private_key_file .*{message}"):
        DkimSigner.load(config)


def test_selector_and_key_go_together(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[dkim]\nselector = "s1"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[dkim\] selector and private_key_file"):
        config_mod.load(path, environ={})
    path.write_text('[dkim]\nselector = "bad selector"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[dkim\] selector must be"):
        config_mod.load(path, environ={})


def test_nothing_is_signed_without_dkim() -> None:
    assert DkimSigner.load(config_mod.load(None, environ={}).dkim) is None
