"""Signed links: purpose-bound, subscriber-bound, expiring, and the key file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from digestd.errors import ConfigError
from digestd.tokens import ExpiredToken, Signer, TokenError, load_secret


def test_round_trip_and_purpose() -> None:
    s = Signer(b"k" * 32)
    token = s.make("unsubscribe", 7, 2)
    claim = s.load(token, "unsubscribe")
    assert (claim.subscriber_id, claim.version) == (7, 2)
    with pytest.raises(TokenError, match="not meant for this page"):
        s.load(token, "manage")


def test_tampered_foreign_and_expired_tokens_fail() -> None:
    s = Signer(b"k" * 32)
    token = s.make("manage", 7, 0)
    with pytest.raises(TokenError, match="not valid"):
        s.load(token[:-2] + ("AA" if not token.endswith("AA") else "BB"), "manage")
    with pytest.raises(TokenError):
        Signer(b"other" * 8).load(token, "manage")
    with pytest.raises(ExpiredToken):
        s.load(token, "manage", max_age=-1)


def test_secret_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "secret_key"
    key = load_secret(path)
    assert len(key) >= 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(path) == key
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        load_secret(path)
