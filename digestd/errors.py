"""The DigestdError tree: every failure the project expects, translated at the edges."""

from __future__ import annotations


class DigestdError(Exception):
    """Base of every error digestd raises on purpose; the message is meant for a person."""

    #: exit status when this error reaches ``digestd``'s command line
    exit_code = 1


class ConfigError(DigestdError):
    """The configuration file, an environment override or a command-line value is invalid."""

    exit_code = 2


class InvalidInput(DigestdError, ValueError):
    """A value given by a person (an address, a time zone, a topic) is not acceptable."""

    exit_code = 2


class InvalidAddress(InvalidInput):
    """An email address that email-validator rejects."""


class NotFound(DigestdError, LookupError):
    """A subscriber or other named thing does not exist."""


class FeedError(DigestdError):
    """A feed could not be fetched or did not parse; nothing from it was stored."""


class DeliveryError(DigestdError):
    """Sending one message failed; ``code`` and ``reply`` carry the SMTP answer, if any."""

    def __init__(self, message: str, *, code: int | None = None, reply: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reply = reply


class TemporaryDeliveryError(DeliveryError):
    """4xx reply, timeout or lost connection: the same message may succeed later."""


class PermanentDeliveryError(DeliveryError):
    """5xx reply: retrying will not help; counted as a bounce."""
