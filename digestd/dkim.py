"""DKIM: signing every outgoing message (dkimpy, relaxed/relaxed) and the DNS record to publish.

The signature is made over the bytes the mailer is about to send, so nothing re-serialises the
message after it is signed. It covers the headers a reader and a mailbox provider rely on,
List-Unsubscribe and List-Unsubscribe-Post among them (RFC 8058 §4); the ones a forwarder could
add to change what the reader sees are signed once more than they occur, so adding another
one breaks the signature.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import dkim
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from digestd.config import DkimConfig
from digestd.errors import ConfigError

log = logging.getLogger(__name__)

#: signed when present, and their absence is signed too (nobody can add them afterwards)
SIGNED = (
    "From", "To", "Subject", "Date", "Message-ID", "Reply-To", "In-Reply-To", "References",
    "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post", "Auto-Submitted",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
)  # fmt: skip
#: signed one extra time: a second From, Subject or unsubscribe header cannot be slipped in
OVERSIGNED = ("From", "Subject", "Reply-To", "List-Unsubscribe", "List-Unsubscribe-Post")
_MIN_BITS = 1024  # what verifiers accept (RFC 8301); 2048 is what to publish
_RSA_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 rsaEncryption


class DkimSigner:
    """Signs serialised messages with one key; callable, as the mailers take it."""

    def __init__(self, selector: str, domain: str, private_key: bytes) -> None:
        try:
            key = parse_pem_private_key(private_key)
        except (UnparsableKeyError, ValueError, IndexError) as exc:
            raise ConfigError(f"not a PEM RSA private key ({exc})") from None
        self.bits = int(key["modulus"]).bit_length()
        if self.bits < _MIN_BITS:
            raise ConfigError(f"the key has {self.bits} bits; DKIM verifiers need 1024 or more")
        self.selector = selector
        self.domain = domain
        self._key = private_key
        self._public = _spki(int(key["modulus"]), int(key["publicExponent"]))
        self._headers = [h.encode() for h in (*SIGNED, *OVERSIGNED)]

    @classmethod
    def load(cls, config: DkimConfig) -> DkimSigner | None:
        """The signer [dkim] asks for, or None when it is not configured."""
        if not config.enabled or config.private_key_file is None:
            return None
        path = config.private_key_file
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"[dkim] private_key_file {path}: cannot read ({exc.strerror})"
            ) from None
        try:
            signer = cls(config.selector, config.domain, pem)
        except ConfigError as exc:
            raise ConfigError(f"[dkim] private_key_file {path}: {exc}") from None
        if signer.bits < 2048:
            log.warning("DKIM key %s has %d bits; use 2048", Path(path).name, signer.bits)
        return signer

    def __call__(self, message: bytes) -> bytes:
        """``message`` with a DKIM-Signature header on top, in its own line endings."""
        linesep = b"\r\n" if b"\r\n" in message[: message.find(b"\n") + 1] else b"\n"
        try:
            header = dkim.sign(
                message,
                self.selector.encode(),
                self.domain.encode(),
                self._key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=self._headers,
                linesep=linesep,
            )
        except dkim.DKIMException as exc:  # a message we built ourselves: a bug, not input
            raise RuntimeError(f"DKIM signing failed: {exc}") from exc
        return bytes(header) + message

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def txt_record(self) -> str:
        """The TXT record's text: ``v=DKIM1; k=rsa; p=…``."""
        return f"v=DKIM1; k=rsa; p={base64.b64encode(self._public).decode()}"

    def zone_entry(self) -> str:
        """The record as a zone-file line, its text cut into strings of at most 255 bytes."""
        text = self.txt_record
        chunks = " ".join(f'"{text[i : i + 250]}"' for i in range(0, len(text), 250))
        return f"{self.record_name}. IN TXT ( {chunks} )"


def verify(message: bytes, txt_record: str) -> bool:
    """Whether ``message``'s first DKIM signature verifies against ``txt_record``: what a
    receiver does, with the DNS answer given instead of looked up (tests, check-config)."""

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return txt_record.encode()

    return bool(dkim.verify(message, dnsfunc=lookup))


def _spki(modulus: int, exponent: int) -> bytes:
    """The DER SubjectPublicKeyInfo of an RSA public key: what ``p=`` holds."""
    rsa_key = _der(0x30, _der_int(modulus) + _der_int(exponent))
    algorithm = _der(0x30, _der(0x06, _RSA_OID) + _der(0x05, b""))
    return _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_key))


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + body


def _der_int(n: int) -> bytes:
    # Positive INTEGER: a leading zero byte when the top bit is set (two's complement).
    return _der(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big"))
