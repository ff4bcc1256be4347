"""Transactional emails: the subscription confirmation and the "manage your subscription" link.

Nothing a visitor typed reaches a header: the subject is fixed text with the site name, the
recipient is the address as validated by :func:`digestd.subscribers.make_input`, and their
topics appear only in the bodies, escaped by Jinja2 in the HTML part.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any

import jinja2

from digestd.errors import ConfigError
from digestd.render import POLICY, css_inliner, email_environment

#: (template stem, subject format); the subject takes the site name only
KINDS: Mapping[str, str] = {
    "confirm": "Confirm your subscription to {site}",
    "manage": "Your {site} subscription",
}


@dataclass(frozen=True, slots=True)
class Notice:
    """What one notice is made from; ``topics`` etc. are shown as text only."""

    kind: str  # a key of KINDS
    to: str  # a normalised address (subscribers.normalise_email)
    action_url: str  # confirm link, or manage link
    unsubscribe_url: str = ""
    topics: Sequence[str] = ()
    authors: Sequence[str] = ()
    categories: Sequence[str] = ()
    exclude: Sequence[str] = ()
    schedule: str = ""  # e.g. "daily at 07:00 (Europe/Berlin)"
    expires_days: int = 0
    status: str = ""


class Notices:
    """Templates loaded once; renders any number of notices."""

    def __init__(self, *, sender: str, site_name: str, template_dir: Path | None = None) -> None:
        env = email_environment(template_dir)
        try:
            self._templates = {
                (kind, ext): env.get_template(f"notice_{kind}.{ext}")
                for kind in KINDS
                for ext in ("txt", "html")
            }
        except jinja2.TemplateError as exc:
            raise ConfigError(f"notice template: {exc}") from exc
        self._inliner = css_inliner()
        self.sender = sender
        self.site_name = site_name
        self.domain = parseaddr(sender)[1].rpartition("@")[2].lower() or "localhost"

    def render(self, notice: Notice, *, now: datetime | None = None) -> EmailMessage:
        """The notice as multipart/alternative (text first), ready to send."""
        when = now or datetime.now(UTC)
        context: dict[str, Any] = {
            "site_name": self.site_name,
            "subject": KINDS[notice.kind].format(site=self.site_name),
            "notice": notice,
        }
        msg = EmailMessage(policy=POLICY)
        msg["From"] = self.sender
        msg["To"] = Address(addr_spec=notice.to)
        msg["Subject"] = context["subject"]
        msg["Date"] = format_datetime(when)
        msg["Message-ID"] = f"<notice.{secrets.token_hex(12)}@{self.domain}>"
        # RFC 3834: an automatic message; vacation responders must not answer it.
        msg["Auto-Submitted"] = "auto-generated"
        msg["MIME-Version"] = "1.0"
        msg.make_alternative()
        text = self._templates[notice.kind, "txt"].render(context)
        html = str(self._inliner.inline(self._templates[notice.kind, "html"].render(context)))
        for body, subtype in ((text, "plain"), (html, "html")):
            part = EmailMessage(policy=POLICY)
            part.set_content(body, subtype=subtype, charset="utf-8", cte="quoted-printable")
            del part["MIME-Version"]
            msg.attach(part)
        return msg
