"""Signed links: tokens bound to a purpose, a subscriber and that subscriber's link version."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, int_to_bytes

from digestd.errors import ConfigError, DigestdError

PURPOSES = ("confirm", "manage", "unsubscribe", "feedback")
#: characters json.dumps writes as they are
_PLAIN = re.compile(r"[A-Za-z0-9 .:_/+-]*")
#: seconds a token of each purpose stays valid; links in digests must outlive the inbox
MAX_AGE = {
    "confirm": 3 * 86400,
    "manage": 90 * 86400,
    "unsubscribe": 365 * 86400,
    "feedback": 90 * 86400,
}


class TokenError(DigestdError):
    """A link that is tampered with, expired or meant for something else."""

    exit_code = 2


class ExpiredToken(TokenError):
    pass


@dataclass(frozen=True, slots=True)
class Claim:
    subscriber_id: int
    version: int
    extra: str = ""


class Signer:
    def __init__(self, secret: bytes | str) -> None:
        self._s = URLSafeTimedSerializer(secret, salt="digestd-links")
        self._key = secret.encode() if isinstance(secret, str) else secret
        # make() is called ~two dozen times a digest; itsdangerous derives the key again for
        # every signature. The same token, from the same parts, with the key derived once.
        signer = self._s.make_signer()
        self._derived = signer.derive_key()
        self._digest = signer.digest_method
        self._sep = signer.sep
        self._keyed = hmac.new(self._derived, b"", self._digest)  # copied: no key set-up
        self._stamp: tuple[int, bytes] = (-1, b"")

    def mac(self, purpose: str, text: str, size: int = 10) -> bytes:
        """A short HMAC of ``text`` for ``purpose``: the signature of tokens that must fit in a
        mail address (digestd.inbound.addresses), where links' tokens are far too long."""
        key = hmac.new(self._key, f"digestd-mail:{purpose}".encode(), hashlib.sha256).digest()
        return hmac.new(key, text.encode(), hashlib.sha256).digest()[:size]

    def make(self, purpose: str, subscriber_id: int, version: int, extra: str = "") -> str:
        assert purpose in PURPOSES, purpose
        # URLSafeTimedSerializer.dumps, step by step (tests compare the two), but for its try
        # at zlib-compressing the payload: half the cost of a token, ~20 of them a digest,
        # and it never shortens payloads this short. loads() reads either form.
        if type(subscriber_id) is int and type(version) is int and _PLAIN.fullmatch(extra):
            # what json.dumps writes for these, without its encoder's set-up
            payload = f'["{purpose}",{subscriber_id},{version},"{extra}"]'
        else:
            payload = json.dumps(
                [purpose, subscriber_id, version, extra], ensure_ascii=False, separators=(",", ":")
            )
        now = int(time.time())
        if self._stamp[0] != now:  # a digest's two dozen tokens share their second
            self._stamp = (now, self._sep + base64_encode(int_to_bytes(now)))
        value = base64_encode(payload.encode()) + self._stamp[1]
        mac = self._keyed.copy()
        mac.update(value)
        return (value + self._sep + base64_encode(mac.digest())).decode("ascii")

    def load(self, token: str, purpose: str, *, max_age: int | None = None) -> Claim:
        age = MAX_AGE[purpose] if max_age is None else max_age
        try:
            data = self._s.loads(token, max_age=age)
        except SignatureExpired:
            raise ExpiredToken("this link has expired") from None
        except BadSignature:
            raise TokenError("this link is not valid") from None
        if not (isinstance(data, list) and len(data) == 4 and data[0] == purpose):
            raise TokenError("this link is not meant for this page")
        _, sub, version, extra = data
        if not isinstance(sub, int) or not isinstance(version, int) or not isinstance(extra, str):
            raise TokenError("this link is not valid")
        return Claim(sub, version, extra)


def load_secret(path: Path) -> bytes:
    """The key in ``path``; created with 32 random bytes and mode 0600 when missing."""
    try:
        data = path.read_bytes().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32).encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race: use its key
            return load_secret(path)
        with os.fdopen(fd, "wb") as f:
            f.write(key + b"\n")
        return key
    except OSError as exc:
        raise ConfigError(f"[web] secret_key_file {path}: cannot read ({exc.strerror})") from None
    if len(data) < 16:
        raise ConfigError(f"[web] secret_key_file {path}: key shorter than 16 bytes")
    return data
