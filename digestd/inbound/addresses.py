"""The addresses digestd takes mail at, and the signed tokens some of them carry.

With ``[smtp] from = digest@example.org`` and ``[inbound] domain = example.org``:

- ``digest@…`` and ``digest+subscribe@…``: commands from anyone (a subscribe request);
- ``digest+r-SUB-VER-DELIVERY-MAC@…``: the Reply-To of one digest (replies act on it);
- ``digest+u-SUB-VER-MAC@…``: the ``mailto:`` of List-Unsubscribe;
- ``bounces+SUB-DELIVERY-MAC@…``: the VERP envelope sender of one digest; and ``bounces@…``
  the envelope sender of digestd's own answers, whose bounces are dropped.

Tokens are short (RFC 5321 allows 64 octets of local part; the links' tokens are far longer),
lower case (some MTAs fold the case of local parts) and carry an 80-bit HMAC from
:meth:`digestd.tokens.Signer.mac`, so nobody can make one up. Numbers are base 36.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from email.utils import parseaddr

from digestd.config import Config
from digestd.tokens import Signer

BOUNCE_LOCAL = "bounces"
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_MAX_FIELD = 13  # base-36 digits of a 64-bit number: anything longer is garbage


@dataclass(frozen=True, slots=True)
class Recipient:
    """What one of our addresses is for; ``valid`` is False when its token does not verify."""

    kind: str  # command | subscribe | reply | unsubscribe | bounce | noreply
    subscriber_id: int = 0
    version: int = 0
    delivery_id: int = 0
    valid: bool = True


class Addresses:
    def __init__(self, local: str, domain: str, signer: Signer) -> None:
        self.local = local.lower()
        self.domain = domain.lower()
        self._signer = signer

    @classmethod
    def for_config(cls, config: Config, signer: Signer) -> Addresses:
        local = parseaddr(config.smtp.from_)[1].rpartition("@")[0] or "digest"
        return cls(local, config.inbound.domain, signer)

    @classmethod
    def of(cls, config: Config, signer: Signer) -> Addresses | None:
        """The addresses when ``[inbound]`` is enabled; None when nobody reads mail."""
        return cls.for_config(config, signer) if config.inbound.enabled else None

    # -- making ----------------------------------------------------------------------------

    @property
    def command(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def subscribe(self) -> str:
        return f"{self.local}+subscribe@{self.domain}"

    @property
    def noreply(self) -> str:
        """Envelope sender of our answers: a bounce of an answer is dropped, never answered."""
        return f"{BOUNCE_LOCAL}@{self.domain}"

    def reply(self, subscriber_id: int, version: int, delivery_id: int) -> str:
        token = self._token("reply", subscriber_id, version, delivery_id)
        return f"{self.local}+r-{token}@{self.domain}"

    def unsubscribe(self, subscriber_id: int, version: int) -> str:
        return f"{self.local}+u-{self._token('unsubscribe', subscriber_id, version)}@{self.domain}"

    def bounce(self, subscriber_id: int, delivery_id: int) -> str:
        token = self._token("bounce", subscriber_id, delivery_id)
        return f"{BOUNCE_LOCAL}+{token}@{self.domain}"

    def _token(self, purpose: str, *numbers: int) -> str:
        fields = "-".join(_base36(n) for n in numbers)
        return f"{fields}-{self._mac(purpose, fields)}"

    def _mac(self, purpose: str, fields: str) -> str:
        raw = self._signer.mac(purpose, fields)
        return base64.b32encode(raw).decode().rstrip("=").lower()

    # -- reading ---------------------------------------------------------------------------

    def parse(self, address: str) -> Recipient | None:
        """What ``address`` is for; None when it is not one of ours."""
        local, at, domain = address.strip().strip("<>").lower().rpartition("@")
        if not at or domain != self.domain:
            return None
        base, _, ext = local.partition("+")
        if base == BOUNCE_LOCAL and base != self.local:
            if not ext:
                return Recipient("noreply")
            return self._read("bounce", ext, 2)
        if base != self.local:
            return None
        if not ext:
            return Recipient("command")
        if ext == "subscribe":
            return Recipient("subscribe")
        if ext.startswith("r-"):
            return self._read("reply", ext[2:], 3)
        if ext.startswith("u-"):
            return self._read("unsubscribe", ext[2:], 2)
        return None

    def _read(self, purpose: str, token: str, count: int) -> Recipient:
        *fields, mac = token.split("-")
        numbers = [_number(f) for f in fields]
        if len(fields) != count or None in numbers:
            return Recipient(purpose, valid=False)
        if not hmac.compare_digest(mac, self._mac(purpose, "-".join(fields))):
            return Recipient(purpose, valid=False)
        ints = [n for n in numbers if n is not None]
        if purpose == "reply":
            return Recipient(purpose, ints[0], ints[1], ints[2])
        if purpose == "unsubscribe":
            return Recipient(purpose, ints[0], version=ints[1])
        return Recipient(purpose, ints[0], delivery_id=ints[1])


def _base36(n: int) -> str:
    assert n >= 0
    out = ""
    while True:
        n, digit = divmod(n, 36)
        out = _DIGITS[digit] + out
        if not n:
            return out


def _number(text: str) -> int | None:
    if not text or len(text) > _MAX_FIELD or any(c not in _DIGITS for c in text):
        return None
    return int(text, 36)
