"""Rendering one digest into an email: Jinja2 templates → plain text + inlined HTML → EmailMessage.

Templates get ``site_name``, ``subject``, ``date_label``, ``count``, ``count_label``, ``preheader``,
``recipient``, ``manage_url``, ``unsubscribe_url``, ``reply_commands`` (replies are read) and
``items`` (:class:`Item`), all plain text (escaped by the HTML template only); every URL in them
is http(s).
"""

from __future__ import annotations

import binascii
import email
import email.policy
import functools
import re
import secrets
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import css_inline
import jinja2

from digestd.errors import ConfigError, InvalidInput
from digestd.matcher import Match
from digestd.paper import Paper, fold

_HERE = Path(__file__).resolve().parent
# A wheel ships the templates inside the package; a source tree keeps them at the top, where
# operators find them to copy and override.
TEMPLATES_DIR = (
    _HERE / "templates" if (_HERE / "templates").is_dir() else _HERE.parent / "templates"
)

_AUTHORS_SHOWN = 3
_BLURB_CHARS = 300
_TEXT_WIDTH = 76
# Any of these in a header value could start a new header line (injection) or corrupt one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
# ASCII only ([!-;=?A-~] is printable ASCII but <, > and @): the stdlib would RFC 2047-encode
# anything else, turning the id into something no client matches.
_MESSAGE_ID = re.compile(r"<[!-;=?A-~]+@[!-;=?A-~]+>")
_LIST_ID = re.compile(r"[ -;=?A-~]*<[!-;=?A-~]+\.[!-;=?A-~]+>")  # RFC 2919: phrase <label.domain>
_URL_UNSAFE = re.compile(r"[\s<>\"\\]")


class _UriListHeader(UnstructuredHeader):
    """List-Unsubscribe, folded only between its URIs and never RFC 2047-encoded.

    The stdlib folds long values containing ``<``/``:`` as encoded-words, which mail clients do
    not decode in this header, so a signed unsubscribe URL longer than a line would break.
    """

    name: str  # set by BaseHeader; declared for mypy

    def fold(self, *, policy: email.policy.Policy) -> str:
        return f"{self.name}: " + f",{policy.linesep} ".join(str(self).split(", ")) + policy.linesep


class _Registry(HeaderRegistry):
    # The stdlib builds a new class with type() for every header it stores (~40 µs each, about a
    # tenth of building a message); the classes hold no state, so one per name is enough.
    @functools.cache  # noqa: B019 - one module-level instance, never freed anyway
    def __getitem__(self, name: str) -> type[BaseHeader]:
        return super().__getitem__(name)


_HEADERS = _Registry()
# The registry mixes BaseHeader in itself, as it does for its own header classes.
_HEADERS.map_to_type("list-unsubscribe", cast("type[BaseHeader]", _UriListHeader))
# CRLF and 78-column folding as SMTP wants; only List-Unsubscribe folds differently.
POLICY = email.policy.SMTP.clone(header_factory=_HEADERS)


@dataclass(frozen=True, slots=True)
class DigestInput:
    """Everything one digest email is made from; headers are validated when it is rendered."""

    to: str
    sender: str
    period: date
    matches: Sequence[Match]
    message_id: str
    list_id: str
    manage_url: str
    unsubscribe_url: str
    unsubscribe_mailto: str = ""
    #: where replies go (inbound mail: "more 3", "stop"); empty: no Reply-To
    reply_to: str = ""
    date: datetime | None = None
    site_name: str = "Paper digest"
    #: paper id → (more-like-this url, less-like-this url)
    feedback_urls: Mapping[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Link:
    label: str
    url: str


@dataclass(frozen=True, slots=True)
class Item:
    """One numbered paper as the templates show it (readers reply "more 3" by number)."""

    number: int
    id: str
    title: str
    url: str
    authors: str
    blurb: str
    why: str
    links: tuple[Link, ...]
    feedback: tuple[Link, ...]


def email_environment(template_dir: Path | None) -> jinja2.Environment:
    """The Jinja2 set-up of every email (digests and notices): one place, one behaviour.

    Operator templates come first, so any one of them (even a partial) overrides by name;
    HTML is autoescaped, text is not; a missing variable is an error, not an empty string.
    """
    if template_dir is not None and not template_dir.is_dir():
        raise ConfigError(f"template directory {template_dir} does not exist")
    search = [TEMPLATES_DIR] if template_dir is None else [template_dir, TEMPLATES_DIR]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # partials are included per paper: no stat() calls per render
    )
    env.filters["wrap"] = wrap
    return env


def css_inliner() -> css_inline.CSSInliner:
    # Media queries stay in a <style> (nothing else can express them); minified inline
    # styles keep 25 papers well under Gmail's ~102 KB clipping; remote stylesheets are
    # never fetched: rendering is a pure step.
    return css_inline.CSSInliner(keep_at_rules=True, minify_css=True, load_remote_stylesheets=False)


class Renderer:
    """Templates loaded and CSS inliner built once; renders any number of digests."""

    def __init__(self, template_dir: Path | None = None) -> None:
        self._env = email_environment(template_dir)
        # Loaded now so a broken override fails at start-up, not at the first delivery.
        self._html = self._load("digest.html")
        self._text = self._load("digest.txt")
        self._inliner = css_inliner()

    def _load(self, name: str) -> jinja2.Template:
        try:
            return self._env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"template {exc.filename}:{exc.lineno}: {exc.message}") from exc
        except jinja2.TemplateNotFound as exc:
            raise ConfigError(f"template {exc}") from exc

    def render_html(self, d: DigestInput) -> str:
        return self._render_html(_prepare(d)[1])

    def render_text(self, d: DigestInput) -> str:
        return self._text.render(_prepare(d)[1])

    def render(self, d: DigestInput) -> EmailMessage:
        """The complete message: multipart/alternative, text/plain first, then text/html."""
        message = email.message_from_bytes(mime(self.render_parts(d)), policy=POLICY)
        assert isinstance(message, EmailMessage)
        return message

    def render_bytes(self, d: DigestInput) -> bytes:
        """The message as it goes on the wire (CRLF): what the send path delivers."""
        return mime(self.render_parts(d))

    def render_parts(self, d: DigestInput) -> Parts:
        """Validated headers and both bodies; `mime` puts them together."""
        headers, context = _prepare(d)
        return Parts(headers, self._text.render(context), self._render_html(context))

    def _render_html(self, context: Mapping[str, Any]) -> str:
        return str(self._inliner.inline(self._html.render(context)))


@dataclass(frozen=True, slots=True)
class Parts:
    headers: Sequence[tuple[str, str | Address]]
    text: str
    html: str


def mime(parts: Parts) -> bytes:
    """multipart/alternative with quoted-printable text and HTML, assembled directly.

    The stdlib's EmailMessage costs ~5 ms a digest to build and serialise, ten times the
    templates; this writes the same structure in a fraction of that. Headers whose value is
    short ASCII are written as they are; any other goes through the stdlib's folding and RFC
    2047 encoding (POLICY), so the result reads back exactly as an EmailMessage would write
    it. Quoted-printable never writes ``=_``, so the boundary cannot occur in a body.
    """
    utf8 = any(isinstance(v, Address) and not v.addr_spec.isascii() for _, v in parts.headers)
    out = [_header(name, value, utf8) for name, value in parts.headers]
    boundary = f"=_{secrets.token_hex(12)}"
    out.append("MIME-Version: 1.0\r\n")
    out.append(f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n')
    head = "".join(out).encode("utf-8" if utf8 else "ascii")
    chunks = [head]
    for subtype, body in (("plain", parts.text), ("html", parts.html)):
        chunks.append(
            f'--{boundary}\r\nContent-Type: text/{subtype}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii")
        )
        chunks.append(_qp(body))
        chunks.append(b"\r\n")  # the line break before a boundary belongs to the boundary
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks)


_UTF8_POLICY = POLICY.clone(utf8=True)


def _header(name: str, value: str | Address, utf8: bool) -> str:
    text = str(value)
    if text.isascii() and len(name) + 2 + len(text) <= 78 and not _CONTROL.search(text):
        return f"{name}: {text}\r\n"
    return _folded(name, text, utf8)


@functools.lru_cache(maxsize=1024)
def _folded(name: str, value: str, utf8: bool) -> str:
    # Cached: From, Subject and List-Id repeat across a send's digests. An Address's str()
    # (quoted where it must be) parses back to the same address.
    policy = _UTF8_POLICY if utf8 else POLICY
    return str(policy.fold(*policy.header_store_parse(name, value)))


def _qp(body: str) -> bytes:
    if "\r" in body:
        body = body.replace("\r\n", "\n").replace("\r", "\n")
    if not body.endswith("\n"):
        body += "\n"
    encoded = binascii.b2a_qp(body.encode("utf-8"), quotetabs=False, istext=True, header=False)
    return encoded.replace(b"\n", b"\r\n")


def _subject(d: DigestInput) -> str:
    # %b is English: Python never calls setlocale() for LC_TIME unless asked to.
    day = d.period
    if not d.matches:  # the "nothing matched" note a subscriber can ask for
        return f"{d.site_name} — nothing new matched on {day:%b} {day.day}, {day.year}"
    return f"{d.site_name} — {_papers(len(d.matches))} for {day:%b} {day.day}, {day.year}"


def _papers(n: int) -> str:
    return f"{n} paper{'' if n == 1 else 's'}"


@functools.lru_cache(maxsize=8192)
def wrap(text: str, indent: int = 0, first: str | None = None) -> str:
    """Jinja filter: fill ``text`` to the text width; URLs and long words are never broken.

    Cached: a paper's title, authors and blurb are the same in every digest that has it.
    """
    pad = " " * indent
    return textwrap.fill(
        text,
        width=_TEXT_WIDTH,
        initial_indent=pad if first is None else first,
        subsequent_indent=pad,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _headers(d: DigestInput) -> list[tuple[str, str | Address]]:
    for name in ("to", "sender", "message_id", "list_id", "site_name", "manage_url",
                 "unsubscribe_url", "unsubscribe_mailto", "reply_to"):  # fmt: skip
        if _CONTROL.search(getattr(d, name)):
            raise InvalidInput(f"{name} must not contain line breaks, NUL or control characters")
    if not _MESSAGE_ID.fullmatch(d.message_id):
        raise InvalidInput("message_id must look like <unique@domain>")
    if not _LIST_ID.fullmatch(d.list_id):
        raise InvalidInput("list_id must look like 'Name <label.example.org>' (RFC 2919)")
    unsubscribe = f"<{_web_url('unsubscribe_url', d.unsubscribe_url)}>"
    mailto = d.unsubscribe_mailto
    if mailto:
        if not mailto.startswith("mailto:") or _URL_UNSAFE.search(mailto):
            raise InvalidInput("unsubscribe_mailto must be a mailto: URL without spaces or <>")
        unsubscribe += f", <{mailto}>"
    if not unsubscribe.isascii():  # written verbatim, see _UriListHeader
        raise InvalidInput("unsubscribe_url and _mailto must be ASCII (percent-encode them)")
    when = d.date if d.date is not None else datetime.now(UTC)
    if when.utcoffset() is None:
        raise InvalidInput("date must be timezone-aware")
    reply_to = [("Reply-To", _address("reply_to", d.reply_to))] if d.reply_to else []
    return [
        ("From", _address("sender", d.sender)),
        ("To", _address("to", d.to)),
        *reply_to,
        ("Subject", _subject(d)),
        ("Date", format_datetime(when)),
        ("Message-ID", d.message_id),
        ("List-Id", d.list_id),
        ("List-Unsubscribe", unsubscribe),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]


def _prepare(d: DigestInput) -> tuple[list[tuple[str, str | Address]], dict[str, Any]]:
    """Validated headers and the template context; bodies are never rendered from bad input."""
    headers = _headers(d)
    items = [_item(n, m, d.feedback_urls.get(m.paper.id)) for n, m in enumerate(d.matches, 1)]
    return headers, {
        "site_name": d.site_name,
        "subject": _subject(d),
        "date_label": f"{d.period:%B} {d.period.day}, {d.period.year}",
        "count": len(items),
        "count_label": _papers(len(items)),
        # Shown by mail clients next to the subject; the first titles say more than "Hi".
        "preheader": _trim(" · ".join(i.title for i in items[:3]), 150) or "No papers today.",
        "recipient": d.to,
        "reply_commands": bool(d.reply_to),
        "manage_url": _web_url("manage_url", d.manage_url),
        "unsubscribe_url": _web_url("unsubscribe_url", d.unsubscribe_url),
        "items": items,
    }


def _item(number: int, match: Match, feedback: tuple[str, str] | None) -> Item:
    p = match.paper
    title, url, authors, blurb, links = _shown(p)
    more, less = feedback or ("", "")
    return Item(
        number=number,
        id=p.id,
        title=title,
        url=url,
        authors=authors,
        blurb=blurb,
        why=fold(match.why),
        links=links,
        feedback=_links((("More like this", more), ("Less like this", less))),
    )


@functools.lru_cache(maxsize=4096)
def _shown(p: Paper) -> tuple[str, str, str, str, tuple[Link, ...]]:
    """What a digest shows of a paper whoever it is for: worked out once per paper in a send."""
    links = (
        ("arXiv", p.abs_url),
        ("PDF", p.pdf_url),
        ("Hugging Face", p.hf_url),
        ("Code", p.code_url),
        ("Project page", p.project_url),
    )
    blurb = fold(p.summary) or _trim(fold(p.abstract), _BLURB_CHARS)
    return fold(p.title), _safe_url(p.abs_url), _authors(p.authors), blurb, _links(links)


def _links(pairs: Sequence[tuple[str, str]]) -> tuple[Link, ...]:
    # Feed URLs are untrusted: anything but http(s) (javascript:, data:, relative) is dropped.
    return tuple(Link(label, _safe_url(url)) for label, url in pairs if _safe_url(url))


def _authors(names: Sequence[str]) -> str:
    names = [fold(n) for n in names if n.strip()]
    if len(names) <= _AUTHORS_SHOWN + 1:  # "and 1 more" is longer than the name
        return ", ".join(names)
    return f"{', '.join(names[:_AUTHORS_SHOWN])} and {len(names) - _AUTHORS_SHOWN} more"


def _trim(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    cut = head.rsplit(" ", 1)[0] if " " in head else text[:limit]
    return cut.rstrip(" ,;:.-\u2013\u2014") + "…"


def _safe_url(url: str) -> str:
    url = url.strip()
    if not url or _URL_UNSAFE.search(url):
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return ""
    return url if parts.scheme in ("http", "https") and parts.netloc else ""


def _web_url(name: str, url: str) -> str:
    if not (safe := _safe_url(url)):
        raise InvalidInput(f"{name} must be an http(s) URL without spaces or <>")
    return safe


def _address(name: str, value: str) -> Address:
    # The value itself is not repeated: it may be a subscriber's address, and errors get logged.
    pairs = getaddresses([value])
    try:
        if len(pairs) != 1:  # "a@x.org, b@y.org" must not quietly become the first of them
            raise ValueError(value)
        address = Address(display_name=pairs[0][0], addr_spec=pairs[0][1])
    except (ValueError, IndexError) as exc:
        raise InvalidInput(f"{name} is not a single valid email address") from exc
    if not address.username or not address.domain:
        raise InvalidInput(f"{name} is not a single valid email address")
    return address
