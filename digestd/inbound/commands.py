"""Reading mail written by people: whether it is automatic, who sent it, the new text of a
reply (above its quote), the commands in it, and the fields of a subscribe request. Pure."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from email import errors
from email.message import EmailMessage, Message
from email.utils import getaddresses
from html.parser import HTMLParser
from typing import Any

from digestd.errors import InvalidAddress
from digestd.subscribers import normalise_email

MAX_LINES = 40  # lines of new text read; a reply's commands come first
MAX_COMMANDS = 10
_MAX_TEXT = 20_000

#: RFC 3834 §2: never answer these senders (list software, daemons, no-reply robots)
_ROBOTS = re.compile(
    r"^(mailer-daemon|postmaster|listserv|majordomo|owner-.*|.*-request|.*-owner"
    r"|no-?reply|do-?not-?reply|bounces?(\+.*)?)$"
)
# Where the quoted message starts, in the replies of common clients.
_QUOTE_INTRO = re.compile(
    r"^(on\b.*|am\b.*|le\b.*|el\b.*)(wrote|schrieb|a écrit|escribió)\s*:\s*$", re.IGNORECASE
)
_QUOTE_START = re.compile(r"^\s*(on|am|le|el)\s.+", re.IGNORECASE)
_SEPARATORS = re.compile(
    r"^(-{2,}\s*(original message|forwarded message|ursprüngliche nachricht)\s*-{2,}"
    r"|_{10,}|-- ?|from:\s.*|sent from my .*|get outlook for .*)$",
    re.IGNORECASE,
)
_VOTE = re.compile(
    r"^(more|less)(?:\s+like(?:\s+this)?)?\s*(?::|of)?\s*"
    r"(#?\d{1,4}(?:(?:\s*(?:,|and|&)\s*|\s+)#?\d{1,4})*)$"
)
_CHANGE = re.compile(
    r"^(add|remove|delete|drop)\s+(topic|author|category|exclude|exclusion)s?\s*:?\s+(.+)$",
    re.IGNORECASE,
)
_WORDS = {
    "pause": "pause",
    "resume": "resume",
    "unpause": "resume",
    "stop": "stop",
    "unsubscribe": "stop",
    "cancel": "stop",
    "help": "help",
    "?": "help",
    "commands": "help",
}
VERBS = frozenset({*_WORDS, "more", "less", "add", "remove", "delete", "drop"})
_KINDS = {"exclusion": "exclude"}
_QUOTES = "\"'\u201c\u201d\u2018\u2019"  # straight and curly quotes around a value
_FIELDS = {
    "topic": "topics", "topics": "topics",
    "exclude": "exclude", "not": "exclude", "excludes": "exclude",
    "author": "authors", "authors": "authors",
    "category": "categories", "categories": "categories",
    "time": "time", "at": "time", "send time": "time",
    "timezone": "timezone", "time zone": "timezone", "tz": "timezone",
    "frequency": "frequency", "day": "weekly_day", "papers": "max_papers",
    "max papers": "max_papers",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Command:
    verb: str  # more | less | add | remove | pause | resume | stop | help
    kind: str = ""  # add / remove: topic | author | category | exclude
    value: str = ""
    numbers: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Commands:
    commands: tuple[Command, ...]
    unknown: tuple[str, ...]  # lines that are no command, as written (for the answer)


def header(msg: Message, name: str) -> str:
    """A header as one line of text; "" when absent or beyond what the parser can read."""
    try:
        return " ".join(str(msg.get(name, "") or "").split())
    except Exception:  # the stdlib's header parser raises on some malformed values
        return ""


def automatic(msg: Message, mail_from: str) -> str:
    """Why ``msg`` must not be answered or acted on as a person's words ("" if it may):
    bounces, auto-replies and list mail (RFC 3834 §2), reports."""
    if mail_from in ("", "<>"):
        return "empty envelope sender"
    local = mail_from.rpartition("@")[0].lower()
    if _ROBOTS.match(local):
        return "sent by a robot address"
    auto = header(msg, "Auto-Submitted").lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto.split(';')[0]}"
    precedence = header(msg, "Precedence").lower()
    if precedence in ("bulk", "list", "junk", "auto_reply"):
        return f"Precedence: {precedence}"
    for name in ("List-Id", "List-Unsubscribe", "List-Post", "X-Autoreply", "X-Autorespond"):
        if header(msg, name):
            return f"{name} header"
    suppress = header(msg, "X-Auto-Response-Suppress").lower()
    if any(w in suppress for w in ("all", "autoreply", "oof")):
        return "X-Auto-Response-Suppress"
    if msg.get_content_type() == "multipart/report":
        return "a report"
    return ""


#: defects that leave the text of a message unknowable: it is not read as commands
_BROKEN = (
    errors.NoBoundaryInMultipartDefect,
    errors.StartBoundaryNotFoundDefect,
    errors.MultipartInvariantViolationDefect,
    errors.InvalidBase64CharactersDefect,
    errors.InvalidBase64LengthDefect,
    errors.InvalidBase64PaddingDefect,
)


def broken(msg: Message) -> str:
    """Why the text of ``msg`` cannot be trusted to say what its writer wrote ("" if it can):
    broken MIME structure, undecodable base64, an unknown charset."""
    for part in msg.walk():
        if not part.is_multipart() and part.get_content_maintype() == "text":
            part.get_payload(decode=True)  # decoding is what records encoding defects
            try:
                codecs.lookup(part.get_content_charset() or "us-ascii")
            except LookupError:
                return "unknown charset"
        for defect in part.defects:
            if isinstance(defect, _BROKEN):
                return type(defect).__name__
    return ""


def sender(msg: Message) -> str:
    """The From address, normalised; "" unless there is exactly one valid address."""
    try:
        pairs = getaddresses([header(msg, "From")])
    except Exception:
        return ""
    if len(pairs) != 1 or "@" not in pairs[0][1]:
        return ""
    try:
        return normalise_email(pairs[0][1])
    except InvalidAddress:
        return ""


def new_text(msg: EmailMessage) -> list[str]:
    """The lines a person wrote in this message: the text part (or the HTML one as text),
    up to where the quoted message or the signature starts, blank lines dropped."""
    lines = []
    for line in _body(msg).splitlines():
        text = line.strip()
        if text.startswith(">") or _SEPARATORS.match(text) or _QUOTE_INTRO.match(text):
            break
        lines.append(text)
    lines = _drop_wrapped_intro(lines)
    return [line for line in lines if line][:MAX_LINES]


def _drop_wrapped_intro(lines: list[str]) -> list[str]:
    # Gmail wraps a long "On …, Name <address> wrote:" over two lines; the first survives the
    # loop above (the second, a quote intro's tail, does not match alone), so cut it here.
    for i, line in enumerate(lines):
        if _QUOTE_START.match(line) and i + 1 < len(lines):
            joined = f"{line} {lines[i + 1]}"
            if _QUOTE_INTRO.match(joined):
                return lines[:i]
    if lines and _QUOTE_START.match(lines[-1]) and lines[-1].endswith("<"):
        return lines[:-1]
    return lines


def _body(msg: EmailMessage) -> str:
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
    except Exception:
        return ""
    if part is None:
        return ""
    try:
        text = str(part.get_content())
    except Exception:  # an unknown charset or a broken encoding: read what can be read
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    text = text[:_MAX_TEXT]
    if part.get_content_type() == "text/html":
        return _html_text(text)
    return text


class _Text(HTMLParser):
    """HTML to lines, leaving out quoted parts and everything after a reply header."""

    _QUOTES = ("gmail_quote", "moz-cite-prefix", "yahoo_quoted", "divrplyfwdmsg", "appendonsend")
    _BLOCKS = ("p", "div", "br", "li", "tr", "h1", "h2", "h3", "pre")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.depth = 0  # inside <blockquote>
        self.done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        marks = " ".join(v or "" for k, v in attrs if k in ("class", "id")).lower()
        if tag == "hr" or any(q in marks for q in self._QUOTES):
            self.done = True
        if tag == "blockquote":
            self.depth += 1
        if tag in self._BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "blockquote":
            self.depth = max(0, self.depth - 1)
        if tag in self._BLOCKS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.done and not self.depth:
            self.out.append(data)


def _html_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    parser.close()
    return "".join(parser.out)


def parse_commands(lines: list[str]) -> Commands:
    """The commands in a reply's new text, one per line; other lines are listed as unknown."""
    commands: list[Command] = []
    unknown: list[str] = []
    for line in lines:
        command = _command(line)
        if command is None:
            unknown.append(line)
        elif len(commands) < MAX_COMMANDS:
            commands.append(command)
    return Commands(tuple(commands), tuple(unknown))


def _command(line: str) -> Command | None:
    text = " ".join(line.split())[:300].strip(" .!")
    lower = text.lower()
    if lower in _WORDS:
        return Command(_WORDS[lower])
    vote = _VOTE.match(lower)
    if vote:
        numbers = tuple(int(n) for n in re.findall(r"\d+", vote.group(2)))
        return Command(vote.group(1), numbers=numbers[:MAX_COMMANDS])
    change = _CHANGE.match(text)
    if change:
        verb = "add" if change.group(1).lower() == "add" else "remove"
        kind = change.group(2).lower()
        value = change.group(3).strip().strip(_QUOTES).strip()
        return Command(verb, _KINDS.get(kind, kind), value) if value else None
    return None


def parse_subscription(lines: list[str]) -> dict[str, Any]:
    """A subscribe request's ``key: value`` lines as :func:`make_input` keywords (the address
    left out); other lines are ignored. Lists may repeat a key or separate values with ";"."""
    fields: dict[str, Any] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        name = _FIELDS.get(" ".join(key.lower().split()))
        value = value.strip()
        if not sep or name is None or not value:
            continue
        if name in ("topics", "exclude", "authors", "categories"):
            split = r"[;,\s]+" if name == "categories" else r"\s*;\s*"
            fields.setdefault(name, []).extend(v for v in re.split(split, value) if v)
        elif name == "time":
            when, _, zone = value.partition(" ")
            fields["send_time"] = when
            if zone.strip():
                fields["timezone"] = zone.strip()
        elif name == "max_papers":
            fields[name] = int(value) if value.isdigit() else value
        elif name == "frequency":
            fields[name] = value.lower()
        else:
            fields[name] = value
    return fields
