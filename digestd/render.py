"""Rendering one digest into an email: Jinja2 templates → plain text + inlined HTML → EmailMessage.

Templates get ``site_name``, ``subject``, ``date_label``, ``count``, ``count_label``, ``preheader``,
``recipient``, ``manage_url``, ``unsubscribe_url``, ``reply_commands`` (replies are read) and
``items`` (:class:`Item`), all plain text (escaped by the HTML template only); every URL in them
is http(s).
"""

from __future__ import annotations

import binascii
import dataclasses
import email
import email.policy
import functools
import itertools
import logging
import re
import secrets
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
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

log = logging.getLogger(__name__)

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
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=^_`{|}~-]+"  # RFC 5322 atext but "?": no "=?" encoded word
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
# "local@domain" or "Plain Name <local@domain>": read exactly as getaddresses() reads them.
_PLAIN_ADDRESS = re.compile(rf"(?:({_ATEXT}(?: {_ATEXT})*) <)?({_DOT_ATOM})@({_DOT_ATOM})(?(1)>)")
_NOT_DOT_OR_AT = re.compile(r"[^.@]")
# What urlsplit() reads as http(s) with a host whatever follows: most URLs, checked quickly.
_PLAIN_URL = re.compile(r'https?://[A-Za-z0-9.-]+(?:[/?#][^\s<>"\\]*)?')


class _UriListHeader(UnstructuredHeader):
    """List-Unsubscribe, folded only between its URIs and never RFC 2047-encoded.

    The stdlib folds long values containing ``<``/``:`` as encoded-words, which mail clients do
    not decode in this header, so a signed unsubscribe URL longer than a line would break.
    """

    name: str  # set by BaseHeader; declared for mypy

    def fold(self, *, policy: email.policy.Policy) -> str:
        return _uri_list(self.name, str(self), policy.linesep)


def _uri_list(name: str, value: str, linesep: str) -> str:
    return f"{name}: " + f",{linesep} ".join(value.split(", ")) + linesep


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
        if self._pre is not None:
            try:
                html = self._pre.html(context)
            except _Unfit:
                html = self._full_html(context)  # raises if the digest itself cannot render
                self._give_up_prerendering()
            if html is not None:
                return html
        return self._full_html(context)

    def _full_html(self, context: Mapping[str, Any]) -> str:
        return str(self._inliner.inline(self._html.render(context)))

    @functools.cached_property
    def _pre(self) -> _Prerendered | None:
        """Pre-rendering if it gives what full renders give for digests of every shape (with
        blocks and frames reused at other positions and with other values), else None.

        Checked at the first digest rather than at start-up: most processes never send one.
        """
        pre = _Prerendered(self._env, self._inliner)
        try:
            fits = all(
                pre.html(context) == self._full_html(context)
                for context in (_prepare(d)[1] for d in _samples())
            )
        except Exception:  # e.g. an override that cannot render the samples at all
            fits = False
        if fits:
            return pre
        self._give_up_prerendering()
        return None

    def _give_up_prerendering(self) -> None:
        log.warning(
            "digest.html or _paper.html does not fit pre-rendering (see digestd/render.py): "
            "every digest's HTML is rendered and inlined in full, several times the CPU"
        )
        self.__dict__["_pre"] = None


class _Unfit(Exception):
    """The HTML templates use a per-digest value other than by printing or testing it."""


class _Slot:
    """A per-digest value in a template rendered once for many digests.

    Printed, it writes a marker, filled in per digest; tested, it has the value's truth. Any
    other use (a filter, comparison, arithmetic, ``~``) raises, as its result would hold for
    one digest only.
    """

    __slots__ = ("_marker", "_truth")

    def __init__(self, marker: str, truth: bool) -> None:
        self._marker = marker
        self._truth = truth

    def __html__(self) -> str:
        return self._marker

    def __bool__(self) -> bool:
        return self._truth

    def __str__(self) -> str:
        raise _Unfit(self._marker)

    def __eq__(self, other: object) -> bool:
        raise _Unfit(self._marker)


class _Items:
    """A digest's items as pre-rendering shows them: iterated or tested, never counted or
    indexed, so the frame cannot depend on how many there are but through the loop."""

    __slots__ = ("_items",)

    def __init__(self, items: Sequence[Item]) -> None:
        self._items = items

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)


class _MarkedLoader(jinja2.BaseLoader):
    """The templates as loaded, with each output of ``_paper.html`` between two comments."""

    _REAL = "digestd:_paper.html"

    def __init__(self, loader: jinja2.BaseLoader, begin: str, end: str) -> None:
        self._loader = loader
        self._begin = begin
        self._end = end

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        if template == "_paper.html":
            return f'{self._begin}{{% include "{self._REAL}" %}}{self._end}', None, None
        name = "_paper.html" if template == self._REAL else template
        return self._loader.get_source(environment, name)


# Literal text, then per slot (value name, in an attribute?) and the literal text after it.
_Piece = tuple[str, tuple[tuple[str, bool, str], ...]]
# What the inliner's HTML parser drops or rewrites (NUL, CR) or cannot take (lone surrogates):
# a digest with a value holding one is rendered in full.
_UNFILLABLE = re.compile(r"[\x00\r\ud800-\udfff]")
_BLOCKS_KEPT = 4096


class _Prerendered:
    """Digest HTML assembled from pieces rendered and inlined once.

    Inlining is most of a digest's cost and its input mostly repeats: a paper's block is the
    same in every digest that has it but for the subscriber's number, why line and feedback
    links, and the frame (head, footer) but for the digest's own values. Each is rendered
    with those values as `_Slot` markers in a whole document and inlined there, so that CSS
    selectors apply as in a full render (`Renderer._pre` checks the templates for any that
    look at a block's position or a value); a digest is then the pieces with its values
    filled in, escaped as the inliner's serializer escapes text and attribute values.
    """

    def __init__(self, env: jinja2.Environment, inliner: css_inline.CSSInliner) -> None:
        token = secrets.token_hex(8)
        self._token = token
        self._begin = f"<!--{token}[-->"
        self._end = f"<!--]{token}-->"
        assert env.loader is not None
        loader = _MarkedLoader(env.loader, self._begin, self._end)
        self._template = env.overlay(loader=loader).get_template("digest.html")
        self._inliner = inliner
        # A marker ends in &lt;&#34; (< and " as entities). Inlined, that reads &lt;" where the
        # marker is text and <&quot; where it is an attribute value: how to escape its value.
        self._slot = re.compile(rf'{token}\.(\w+)\.(&lt;"|<&quot;)\.')
        self._frames: dict[tuple[int, tuple[str, ...]], tuple[_Piece, ...]] = {}
        self._blocks: dict[tuple[object, ...], tuple[tuple[object, ...], _Piece]] = {}

    def html(self, context: Mapping[str, Any]) -> str | None:
        """The inlined HTML of the digest, or None if a value has a character it cannot fill in.

        Raises `_Unfit` if the templates use a per-digest value in a way pieces cannot show.
        """
        items: Sequence[Item] = context["items"]
        flags = tuple(name for name, value in context.items() if value is True)
        common = {
            name: str(value)
            for name, value in context.items()
            if name != "items" and not isinstance(value, bool)
        }
        own: list[dict[str, str]] = []
        filled = list(common.values())
        for item in items:
            values = {**common, "item_number": str(item.number), "item_why": item.why}
            for n, link in enumerate(item.feedback):
                values[f"item_feedback{n}"] = link.url
            filled += (item.why, *(link.url for link in item.feedback))
            own.append(values)
        if _UNFILLABLE.search("".join(filled)):
            return None
        frame = self._frames.get((min(len(items), 2), flags))
        blocks = [self._block(item, flags) for item in items]
        if frame is None or None in blocks:
            frame, blocks = self._render(context, flags)
        out: list[str] = []
        _fill(out, frame[0], common)
        between = _fill([], frame[1], common) if len(items) > 1 else []
        for n, (block, values) in enumerate(zip(blocks, own, strict=True)):
            assert block is not None
            if n:
                out += between
            _fill(out, block, values)
        if items:
            _fill(out, frame[-1], common)
        return "".join(out)

    def _block(self, item: Item, flags: tuple[str, ...]) -> _Piece | None:
        entry = self._blocks.get(_block_key(item, flags))
        if entry is None or entry[0] != _block_source(item):
            return None
        return entry[1]

    def _render(
        self, context: Mapping[str, Any], flags: tuple[str, ...]
    ) -> tuple[tuple[_Piece, ...], list[_Piece | None]]:
        """Render and inline the digest with markers; keep its frame and blocks."""
        items: Sequence[Item] = context["items"]
        marked: dict[str, Any] = {
            name: value if isinstance(value, bool) else self._marker(name, value)
            for name, value in context.items()
            if name != "items"
        }
        marked["items"] = _Items([self._marked(item) for item in items])
        try:
            html = str(self._inliner.inline(self._template.render(marked)))
        except Exception as exc:  # whatever a template does with a marker, it does not fit
            raise _Unfit(str(exc)) from exc
        first, *rest = html.split(self._begin)
        outside, inside = [first], []
        for chunk in rest:
            block, end, after = chunk.partition(self._end)
            if not end:
                raise _Unfit("a paper's block is not where digest.html includes it")
            inside.append(self._piece(block))
            outside.append(after)
        if len(inside) != len(items):
            raise _Unfit("digest.html does not include _paper.html once per item")
        if len(set(outside[1:-1])) > 1:
            raise _Unfit("digest.html separates items differently")
        if any(name not in context for name, _ in self._slot.findall("".join(outside))):
            raise _Unfit("digest.html shows an item's values outside _paper.html")
        frame = tuple(self._piece(text) for text in (outside[:2] + outside[2:][-1:]))
        self._frames[(min(len(items), 2), flags)] = frame
        if len(self._blocks) + len(items) > _BLOCKS_KEPT:
            self._blocks.clear()
        for item, piece in zip(items, inside, strict=True):
            self._blocks[_block_key(item, flags)] = (_block_source(item), piece)
        return frame, list(inside)

    def _marker(self, name: str, value: object) -> Any:
        return _Slot(f"{self._token}.{name}.&lt;&#34;.", bool(value))

    def _marked(self, item: Item) -> Item:
        return dataclasses.replace(
            item,
            number=self._marker("item_number", item.number),
            why=self._marker("item_why", item.why),
            feedback=tuple(
                Link(link.label, self._marker(f"item_feedback{n}", link.url))
                for n, link in enumerate(item.feedback)
            ),
        )

    def _piece(self, text: str) -> _Piece:
        parts = self._slot.split(text)
        if any(self._token in literal for literal in parts[::3]):
            raise _Unfit("a per-digest value is inside a <style>, a comment or a style attribute")
        slots = zip(parts[1::3], parts[2::3], parts[3::3], strict=True)
        return parts[0], tuple((name, probe == "<&quot;", after) for name, probe, after in slots)


def _block_key(item: Item, flags: tuple[str, ...]) -> tuple[object, ...]:
    return item.id, bool(item.why), tuple([link.label for link in item.feedback]), flags


def _block_source(item: Item) -> tuple[object, ...]:
    return item.title, item.url, item.authors, item.blurb, item.links


def _fill(out: list[str], piece: _Piece, values: Mapping[str, str]) -> list[str]:
    first, slots = piece
    out.append(first)
    for name, attribute, after in slots:
        out.append(_inlined_escape(values[name], attribute))
        out.append(after)
    return out


def _inlined_escape(value: str, attribute: bool) -> str:
    """``value`` escaped as css_inline writes text, or an attribute value (always in "")."""
    value = value.replace("&", "&amp;").replace("\xa0", "&nbsp;")
    if attribute:
        return value.replace('"', "&quot;")
    return value.replace("<", "&lt;").replace(">", "&gt;")


def _samples() -> Iterator[DigestInput]:
    """Digests of every shape pre-rendering has; most reuse blocks and frames that earlier
    ones left, at other positions and with other values. All have markup in their text."""
    papers = [
        Paper(
            id=f"2501.0{i}001",
            title=f"Paper {i}: <b>bold</b> & \"quoted\" 'title'",
            abstract="An abstract with <tags> & entities &amp; in it. " * 8,
            authors=tuple(f"Author {a}" for a in range(3 * i)),
            summary="" if i % 2 else f"A summary of paper {i} & <i>more</i>.",
            code_url="https://github.com/org/repo?a=1&b=2" if i % 2 else "",
            project_url="" if i == 1 else f"https://project.example.org/{i}",
        )
        for i in range(4)
    ]
    shapes = [
        (True, (0, 1, 2)), (False, (3, 0, 1, 2)), (True, (2, 0, 1)), (False, (1, 2, 3, 0, 1)),
        (True, (1,)), (True, (0,)), (False, (3,)), (False, (2,)), (True, ()), (False, ()),
        (False, (0, 1, 2, 3) * 2 + (0, 1, 2)),
    ]  # fmt: skip
    for n, (reply, order) in enumerate(shapes):
        why = ["", f'Matches "<script>{n}" & <b>co</b>', f"By Author {n}", f"'{n}' > 'b'"]
        more = f"https://digest.example.org/more?n={n}&x=1"
        less = f"https://digest.example.org/less?n={n}&x=2"
        yield DigestInput(
            to=f"reader{n}@example.org",
            sender="Papers <digest@example.org>",
            period=date(2026, 1, 1 + n),
            matches=[Match(papers[i], 0.5, why[(i + 1) % 4]) for i in order],
            message_id=f"<sample.{n}@example.org>",
            list_id="Papers <papers.example.org>",
            manage_url=f"https://digest.example.org/manage?t={n}&x=1",
            unsubscribe_url=f"https://digest.example.org/unsubscribe/{n}",
            reply_to="replies@example.org" if reply else "",
            date=datetime(2026, 1, 1, tzinfo=UTC),
            site_name=f"Papers & <more> {n}",
            feedback_urls={
                papers[0].id: (more, less),
                papers[1].id: (more, ""),
                papers[3].id: ("", less),
            },
        )


@dataclass(frozen=True, slots=True)
class Parts:
    headers: Sequence[tuple[str, str | Address]]
    text: str
    html: str


# A boundary needs only to be absent from the bodies, which "=_" guarantees (see mime); the
# random part is a courtesy to readers. Drawn per process: os.urandom per digest was 2% of a
# send's CPU.
_BOUNDARY_SALT = secrets.token_hex(8)
_BOUNDARY_SERIAL = itertools.count()


class Wire(bytes):
    """A message as `mime` writes it: CRLF line endings only, ending with one, and no line
    starting with a dot. SMTP's DATA carries it as it is (`deliver` checks nothing in it)."""

    __slots__ = ()


def mime(parts: Parts) -> Wire:
    """multipart/alternative with quoted-printable text and HTML, assembled directly.

    The stdlib's EmailMessage costs ~5 ms a digest to build and serialise, ten times the
    templates; this writes the same structure in a fraction of that. Headers whose value is
    short ASCII are written as they are; any other goes through the stdlib's folding and RFC
    2047 encoding (POLICY), so the result reads back exactly as an EmailMessage would write
    it. Quoted-printable never writes ``=_``, so the boundary cannot occur in a body.
    """
    utf8 = any(isinstance(v, Address) and not v.addr_spec.isascii() for _, v in parts.headers)
    out = [_header(name, value, utf8) for name, value in parts.headers]
    boundary = f"=_{_BOUNDARY_SALT}.{next(_BOUNDARY_SERIAL):x}"
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
    return Wire(b"".join(chunks))


_UTF8_POLICY = POLICY.clone(utf8=True)


def _header(name: str, value: str | Address, utf8: bool) -> str:
    text = str(value)
    plain = text.isascii() and not _CONTROL.search(text)
    if plain and len(name) + 2 + len(text) <= 78:
        return f"{name}: {text}\r\n"
    if plain and name == "List-Unsubscribe" and "=?" not in text:  # as _UriListHeader folds
        return _uri_list(name, text, "\r\n")
    if isinstance(value, Address) and _PLAIN_ADDRESS.fullmatch(text):
        # The stdlib folds an address header only at the spaces in and after the display name,
        # so its folding is the same for any address of that length with dots in the same
        # places: the folding of such a stand-in is cached (a Reply-To differs per digest).
        spec = value.addr_spec
        stand_in = _NOT_DOT_OR_AT.sub("x", spec)
        return _folded(name, text.replace(spec, stand_in), utf8).replace(stand_in, spec)
    return _folded(name, text, utf8)


@functools.lru_cache(maxsize=1024)
def _folded(name: str, value: str, utf8: bool) -> str:
    # Cached: From, Subject and List-Id repeat across a send's digests. An Address's str()
    # (quoted where it must be) parses back to the same address.
    policy = _UTF8_POLICY if utf8 else POLICY
    return str(policy.fold(*policy.header_store_parse(name, value)))


# Lines, mostly a paper's (title, abstract, links), recur in many digests of a send; ~12 MB.
_QP_LINES: dict[str, bytes] = {}
_QP_LINES_KEPT = 20_000
_HARD_BREAK = re.compile(rb"\n(?<!=\n)")  # "=" is always escaped: "=\n" is a soft line break


def _qp(body: str) -> bytes:
    """``body`` quoted-printable with CRLF, each distinct line encoded once (QP encodes a line
    independently of the others, and encoding is most of `mime`'s cost)."""
    if "\r" in body:
        body = body.replace("\r\n", "\n").replace("\r", "\n")
    lines = body.removesuffix("\n").split("\n")
    if len(_QP_LINES) + len(lines) > _QP_LINES_KEPT:
        _QP_LINES.clear()
    if new := [line for line in lines if line not in _QP_LINES]:
        # One call for all of them: most are this digest's own (feedback links, footer).
        data = "\n".join(new).encode() + b"\n"
        encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
        split = _HARD_BREAK.split(encoded.removesuffix(b"\n"))
        _QP_LINES.update(
            zip(
                new,
                (
                    (_undotted(x) if x[:1] == b"." or b"\n." in x else x).replace(b"\n", b"\r\n")
                    + b"\r\n"
                    for x in split
                ),
                strict=True,
            )
        )
    return b"".join([_QP_LINES[line] for line in lines])


_QP_UNIT = re.compile(rb"=[0-9A-F]{2}|[^\n]")
_QP_WIDTH = 76


def _undotted(encoded: bytes) -> bytes:
    """One line's quoted-printable (soft line breaks as ``=\\n``) with no physical line
    starting with a dot: SMTP would have to double it (RFC 5321 4.5.2), a pass over every
    message. From the first such line on, the line is broken again, a dot that would start
    one written ``=2E`` (in a digest: where a break falls before ".org" of an address)."""
    start = 0 if encoded[:1] == b"." else encoded.index(b"\n.") + 1
    out: list[bytes] = []
    line = b""
    for unit in _QP_UNIT.findall(encoded[start:].replace(b"=\n", b"")):
        if len(line) + len(unit) > _QP_WIDTH - 1:  # room for the soft break's "="
            out.append(line + b"=")
            line = b""
        line += b"=2E" if not line and unit == b"." else unit
    out.append(line)
    return encoded[:start] + b"\n".join(out)


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


def _headers(d: DigestInput, subject: str) -> list[tuple[str, str | Address]]:
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
        ("Subject", subject),
        ("Date", _date(when, when.utcoffset())),
        ("Message-ID", d.message_id),
        ("List-Id", d.list_id),
        ("List-Unsubscribe", unsubscribe),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]


@functools.lru_cache(maxsize=16)
def _date(when: datetime, offset: timedelta | None) -> str:
    # Cached: a send dates its digests alike. The offset is in the key as datetimes of one
    # instant are equal whatever their offset.
    return format_datetime(when)


def _prepare(d: DigestInput) -> tuple[list[tuple[str, str | Address]], dict[str, Any]]:
    """Validated headers and the template context; bodies are never rendered from bad input."""
    subject = _subject(d)
    headers = _headers(d, subject)
    items = [_item(n, m, d.feedback_urls.get(m.paper.id)) for n, m in enumerate(d.matches, 1)]
    return headers, {
        "site_name": d.site_name,
        "subject": subject,
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
    return tuple(Link(label, safe) for label, url in pairs if (safe := _safe_url(url)))


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
    if _PLAIN_URL.fullmatch(url):
        return url
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
    if plain := _PLAIN_ADDRESS.fullmatch(value):  # most are; parsing is most of _prepare
        display_name, username, domain = plain.groups()
        return Address(display_name=display_name or "", username=username, domain=domain)
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
