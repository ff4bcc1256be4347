"""TOML + environment → frozen config objects; validation with precise messages.

One schema (``SCHEMA``) gives every option its table, key, type, default and help line. The
same schema checks the file, applies ``DIGESTD_<TABLE>_<KEY>`` environment overrides, writes
the example file and prints ``digestd check-config``; nothing else knows the key names.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from digestd.errors import ConfigError

Security = Literal["none", "starttls", "tls"]
SOURCE_TYPES = ("hf-daily-papers", "arxiv-rss", "arxiv-api", "json")
BUNDLED_PAPERS = Path(__file__).parent / "sample"


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str = ""
    port: int = 587
    security: Security = "starttls"
    username: str = ""
    password: str = field(default="", repr=False)
    from_: str = "Paper digest <digest@example.org>"
    #: seconds for one whole send (connect, MAIL, RCPT, DATA), not per socket operation
    timeout: float = 60.0
    #: connections kept open and reused across messages
    pool_size: int = 2
    #: messages per second over all connections; 0 means no limit
    rate_limit: float = 20.0
    validate_certs: bool = True


@dataclass(frozen=True, slots=True)
class SourceConfig:
    type: str
    path: Path | None = None
    categories: tuple[str, ...] = ()
    url: str = ""


@dataclass(frozen=True, slots=True)
class DigestConfig:
    lookback: int = 2
    site_name: str = "Paper digest"
    list_id: str = ""
    unsubscribe_mailto: str = ""
    max_papers: int = 10
    min_score: float = 0.35


@dataclass(frozen=True, slots=True)
class MatchingConfig:
    #: closeness in meaning (digestd[semantic]): "all-MiniLM-L6-v2" or a model folder; "" off
    semantic_model: str = ""


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    #: crontab (UTC) of the fetch job
    fetch_cron: str = "15 * * * *"
    tick_seconds: int = 60
    #: how long after a send time a digest without matches waits for the day's papers
    wait_minutes: int = 240
    #: first delay before fetching again after every source failed; doubles up to 30 minutes
    fetch_retry_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    max_age_hours: float = 20.0
    retry_base_seconds: float = 300.0
    retry_max_seconds: float = 6 * 3600.0
    lease_seconds: float = 600.0
    bounce_limit_no_such_user: int = 1
    bounce_limit: int = 3
    shutdown_grace_seconds: float = 30.0
    #: send processes for a big send; 0: one per core this process may run on
    processes: int = 0


@dataclass(frozen=True, slots=True)
class WebConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str = "http://127.0.0.1:8080"
    secret_key_file: Path = Path("var/secret_key")
    confirm_days: int = 3
    resend_minutes: int = 15
    requests_per_minute: int = 120
    subscribe_per_ip_per_hour: int = 20
    subscribe_per_address_per_day: int = 5
    max_body_bytes: int = 65536
    #: proxies whose X-Forwarded-For names the real client (IPs or networks)
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InboundConfig:
    enabled: bool = False
    #: "HOST:PORT" or "unix:/path/to/socket"
    listen: str = "127.0.0.1:8025"
    #: the mail domain the MTA hands to digestd; resolved from [smtp] from when left empty
    domain: str = "example.org"
    max_message_bytes: int = 1_048_576
    #: answers (confirmations, help) to one sender per hour
    answers_per_hour: int = 5


@dataclass(frozen=True, slots=True)
class DkimConfig:
    selector: str = ""
    #: the d= domain; resolved from [smtp] from when left empty
    domain: str = "example.org"
    private_key_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.selector and self.private_key_file)


@dataclass(frozen=True, slots=True)
class Config:
    database_url: str
    smtp: SmtpConfig
    outbox: Path
    sources: tuple[SourceConfig, ...]
    web: WebConfig
    digest: DigestConfig
    templates: Path | None
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig())
    delivery: DeliveryConfig = field(default_factory=lambda: DeliveryConfig())
    inbound: InboundConfig = field(default_factory=lambda: InboundConfig())
    dkim: DkimConfig = field(default_factory=lambda: DkimConfig())
    matching: MatchingConfig = field(default_factory=lambda: MatchingConfig())
    #: "table.key" → where the effective value came from ("default", "file …", "env …")
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)
    #: "table.key" → the parsed value, as check-config shows it (secrets redacted there)
    values: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


# -- value parsers: each takes the raw TOML or environment value and returns the typed value,
# raising ValueError with a message that completes "… must be …".


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a string")
    if any(c in v for c in "\r\n\0"):
        raise ValueError("must be one line")
    return v


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, str) and re.fullmatch(r"-?\d+", v.strip()):
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"must be a whole number from {lo} to {hi}")
        return v

    return parse


def _float(lo: float, hi: float) -> Callable[[Any], float]:
    def parse(v: Any) -> float:
        if isinstance(v, str):
            with contextlib.suppress(ValueError):
                v = float(v)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise ValueError(f"must be a number from {lo:g} to {hi:g}")
        return float(v)

    return parse


def _bool(v: Any) -> bool:
    if isinstance(v, str) and v.lower() in {"true", "false", "1", "0", "yes", "no"}:
        return v.lower() in {"true", "1", "yes"}
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return cast(str, v)

    return parse


def _url(*schemes: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = _str(v).rstrip("/")
        parts = urlsplit(s)
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError(
                "must be a URL starting with " + " or ".join(f"{x}://" for x in schemes)
            )
        return s

    return parse


def _db_url(v: Any) -> str:
    s = _str(v)
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", s):
        raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
    return s


def _address(v: Any) -> str:
    from email.headerregistry import Address
    from email.utils import parseaddr

    s = _str(v)
    _, addr = parseaddr(s)
    if "@" not in addr:
        raise ValueError('must be an address such as "Paper digest <digest@example.org>"')
    try:
        Address(addr_spec=addr)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"is not a valid address ({exc})") from None
    return s


def _mailto(v: Any) -> str:
    s = _str(v)
    if s and not re.fullmatch(r"mailto:[^\s<>@]+@[^\s<>@]+", s):
        raise ValueError('must be empty or "mailto:address@domain"')
    return s


_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def _domain(v: Any) -> str:
    s = _str(v).strip().lower().rstrip(".")
    if s and not _DOMAIN.fullmatch(s):
        raise ValueError("must be empty or a domain name such as example.org")
    return s


def _selector(v: Any) -> str:
    s = _str(v).strip()
    if s and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*", s):
        raise ValueError("must be empty or a DNS label such as digest2026")
    return s


def _listen(v: Any) -> str:
    s = _str(v).strip()
    if s.startswith("unix:"):
        if not s.removeprefix("unix:").startswith("/"):
            raise ValueError('must be "unix:/absolute/path" or "HOST:PORT"')
        return s
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError('must be "HOST:PORT" (e.g. "127.0.0.1:8025") or "unix:/path"')
    return s


def _cron(v: Any) -> str:
    from apscheduler.triggers.cron import CronTrigger

    s = _str(v)
    try:
        CronTrigger.from_crontab(s)
    except ValueError as exc:
        raise ValueError(f"must be a crontab line such as '15 * * * *' ({exc})") from None
    return s


def _path(v: Any) -> str:
    return _str(v)


def _networks(v: Any) -> str:
    import ipaddress

    s = _str(v)
    for part in filter(None, (p.strip() for p in s.split(","))):
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ValueError(f"holds {part!r}, which is not an IP address or network") from None
    return s


def _categories(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError('must be a list of arXiv categories such as ["cs.LG"]')
    for c in v:
        if not re.fullmatch(r"[a-z\-]+(\.[A-Za-z\-]+)?", c):
            raise ValueError(f"holds {c!r}, which is not an arXiv category such as cs.LG")
    return tuple(v)


@dataclass(frozen=True, slots=True)
class Option:
    table: str
    key: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    secret: bool = False

    @property
    def name(self) -> str:
        return f"{self.table}.{self.key}"

    @property
    def env(self) -> str:
        return f"DIGESTD_{self.table}_{self.key}".upper()


SCHEMA: tuple[Option, ...] = (
    Option(
        "database",
        "url",
        "sqlite:///var/digestd.db",
        _db_url,
        "SQLAlchemy URL: sqlite:///relative/path.db or postgresql+psycopg://user@host/db",
    ),
    Option(
        "smtp",
        "host",
        "",
        _str,
        "relay host name; empty writes every message to [outbox].path instead",
    ),
    Option("smtp", "port", 587, _int(1, 65535), "relay port (587 starttls, 465 tls, 25 none)"),
    Option(
        "smtp",
        "security",
        "starttls",
        _choice("none", "starttls", "tls"),
        "none | starttls | tls; never downgraded silently",
    ),
    Option("smtp", "username", "", _str, "user for SMTP AUTH; empty: no login"),
    Option(
        "smtp",
        "password_file",
        "",
        _path,
        "file holding the SMTP password (or set DIGESTD_SMTP_PASSWORD)",
    ),
    Option(
        "smtp",
        "password",
        "",
        _str,
        "the SMTP password itself; prefer password_file or DIGESTD_SMTP_PASSWORD",
        secret=True,
    ),
    Option(
        "smtp",
        "from",
        "Paper digest <digest@example.org>",
        _address,
        "From header of every digest; its domain names Message-IDs",
    ),
    Option("smtp", "timeout", 60.0, _float(1, 3600), "seconds allowed for one whole send"),
    Option("smtp", "pool_size", 2, _int(1, 64), "SMTP connections kept open and reused"),
    Option(
        "smtp",
        "rate_limit",
        20.0,
        _float(0, 10000),
        "messages per second over all connections; 0: no limit",
    ),
    Option("smtp", "validate_certs", True, _bool, "check the relay's TLS certificate"),
    Option(
        "outbox",
        "path",
        "var/outbox",
        _path,
        "folder for .eml (and .html) files when [smtp].host is empty",
    ),
    Option("web", "host", "127.0.0.1", _str, "address the web front listens on"),
    Option("web", "port", 8080, _int(1, 65535), "port the web front listens on"),
    Option(
        "web",
        "base_url",
        "http://127.0.0.1:8080",
        _url("http", "https"),
        "public URL of the web front, used in every link in every email",
    ),
    Option(
        "web",
        "secret_key_file",
        "var/secret_key",
        _path,
        "file with the key that signs links; created (mode 0600) when missing",
    ),
    Option("web", "confirm_days", 3, _int(1, 30), "days a confirmation link stays valid"),
    Option("web", "resend_minutes", 15, _int(0, 1440),
           "at most one confirmation or manage-link email per address per this many minutes"),
    Option("web", "requests_per_minute", 120, _int(1, 100000),
           "requests one client IP may make per minute (counted per process)"),
    Option("web", "subscribe_per_ip_per_hour", 20, _int(1, 100000),
           "subscribe requests one client IP may make per hour (counted per process)"),
    Option("web", "subscribe_per_address_per_day", 5, _int(1, 1000),
           "subscribe requests for one email address per day (counted per process)"),
    Option("web", "max_body_bytes", 65536, _int(1024, 10_000_000),
           "largest request body accepted; larger ones get 413"),
    Option("web", "trusted_proxies", "", _networks,
           "comma-separated proxy IPs/networks whose X-Forwarded-For names the client"),
    Option(
        "digest",
        "lookback",
        2,
        _int(0, 60),
        "days of papers a new subscriber's first digest may include",
    ),
    Option("digest", "site_name", "Paper digest", _str, "name shown in subjects and pages"),
    Option(
        "digest",
        "list_id",
        "",
        _str,
        "List-Id header; empty: '<site_name> <digest.DOMAIN>' from [smtp].from",
    ),
    Option(
        "digest",
        "unsubscribe_mailto",
        "",
        _mailto,
        "optional mailto: address added to List-Unsubscribe",
    ),
    Option("digest", "max_papers", 10, _int(1, 100), "default papers per digest"),
    Option(
        "digest",
        "min_score",
        0.35,
        _float(0, 1),
        "default minimum score (0 to 1) for a paper to be sent",
    ),
    Option(
        "matching",
        "semantic_model",
        "",
        _str,
        "also match by closeness in meaning with this sentence-embedding model: "
        "all-MiniLM-L6-v2 or a folder holding a model (needs digestd[semantic]); empty: off",
    ),
    Option(
        "templates",
        "path",
        "",
        _path,
        "folder whose templates override the built-in ones of the same name",
    ),
    Option("schedule", "fetch_cron", "15 * * * *", _cron,
           "when to fetch papers: a crontab line in UTC (minute hour day month weekday)"),
    Option("schedule", "tick_seconds", 60, _int(1, 3600),
           "how often the daemon looks for digests that are due"),
    Option("schedule", "wait_minutes", 240, _int(0, 1440),
           "after a send time, how long a digest with no match waits for the day's papers"),
    Option("schedule", "fetch_retry_seconds", 60.0, _float(0.1, 86400),
           "when every source failed, fetch again after this; doubles up to 30 minutes"),
    Option("delivery", "max_age_hours", 20.0, _float(0.01, 168),
           "a digest not delivered this long after its send time is recorded as expired"),
    Option("delivery", "retry_base_seconds", 300.0, _float(0.1, 86400),
           "first retry delay after a temporary failure; doubles each attempt, with jitter"),
    Option("delivery", "retry_max_seconds", 21600.0, _float(0.1, 86400),
           "longest delay between two attempts"),
    Option("delivery", "lease_seconds", 600.0, _float(1, 86400),
           "how long a worker owns a claimed digest before another may take it over"),
    Option("delivery", "bounce_limit_no_such_user", 1, _int(1, 100),
           "permanent 5.1.x ('no such user') failures before a subscriber is marked bounced"),
    Option("delivery", "bounce_limit", 3, _int(1, 100),
           "other permanent failures before a subscriber is marked bounced"),
    Option("delivery", "shutdown_grace_seconds", 30.0, _float(0, 3600),
           "on SIGTERM, how long in-flight sends may take before the daemon exits"),
    Option("delivery", "processes", 0, _int(0, 64),
           "processes a big send is split over (they share [smtp] pool_size and rate_limit);"
           " 0: one per CPU core"),
    Option("inbound", "enabled", False, _bool,
           "listen for mail (LMTP behind the MTA): commands, replies, bounces, complaints"),
    Option("inbound", "listen", "127.0.0.1:8025", _listen,
           'LMTP listener: "HOST:PORT" or "unix:/path/to/socket" (changes need a restart)'),
    Option("inbound", "domain", "", _domain,
           "mail domain the MTA hands to digestd; empty: the domain of [smtp].from"),
    Option("inbound", "max_message_bytes", 1_048_576, _int(65536, 50_000_000),
           "largest message accepted over LMTP; larger ones are refused (552)"),
    Option("inbound", "answers_per_hour", 5, _int(1, 1000),
           "answers (confirmations, help) one sender may get per hour"),
    Option("dkim", "selector", "", _selector,
           "DKIM selector; with private_key_file set, every outgoing message is signed"),
    Option("dkim", "domain", "", _domain,
           "DKIM signing domain (d=); empty: the domain of [smtp].from"),
    Option("dkim", "private_key_file", "", _path,
           "PEM RSA private key (2048 bits) for DKIM signing; check-config prints the TXT record"),
)  # fmt: skip

SOURCE_KEYS: dict[str, str] = {
    "type": "hf-daily-papers | arxiv-rss | arxiv-api | json",
    "path": "json: a Daily Papers JSON file or a folder of them",
    "categories": 'arxiv-rss / arxiv-api: arXiv categories, e.g. ["cs.LG", "cs.CL"]',
    "url": "optional base URL of the feed (a mirror, or a test server)",
}
DEFAULT_SOURCE = {"type": "json", "path": str(BUNDLED_PAPERS)}


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (None: no file, the embedded default) and the environment into a Config.

    Raises ConfigError with one line naming the file, table and key at the first bad value.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    known_tables = {o.table for o in SCHEMA} | {"sources"}
    for table, body in raw.items():
        if table not in known_tables:
            raise ConfigError(f"{where}: unknown table [{table}]")
        if table != "sources" and not isinstance(body, dict):
            raise ConfigError(f"{where}: [{table}] must be a table")
        if table != "sources":
            known = {o.key for o in SCHEMA if o.table == table}
            for key in body:
                if key not in known:
                    raise ConfigError(f"{where}: [{table}] unknown key {key!r}")

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for opt in SCHEMA:
        value, origin = opt.default, "default"
        if opt.key in raw.get(opt.table, {}):
            value, origin = raw[opt.table][opt.key], f"file {where}"
        if opt.env in env:
            value, origin = env[opt.env], f"env {opt.env}"
        try:
            values[opt.name] = opt.parse(value)
        except ValueError as exc:
            src = f"environment {opt.env}" if origin.startswith("env") else where
            raise ConfigError(f"{src}: [{opt.table}] {opt.key} {exc}") from None
        origins[opt.name] = origin

    password = values["smtp.password"]
    if values["smtp.password_file"] and "DIGESTD_SMTP_PASSWORD" not in env:
        pw_path = Path(values["smtp.password_file"])
        try:
            password = pw_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{where}: [smtp] password_file {pw_path}: cannot read ({exc.strerror})"
            ) from None
        origins["smtp.password"] = f"file {pw_path}"

    if bool(values["dkim.selector"]) != bool(values["dkim.private_key_file"]):
        raise ConfigError(f"{where}: [dkim] selector and private_key_file must be set together")
    from_domain = _address_domain(values["smtp.from"])

    sources = _sources(raw.get("sources"), where)
    origins["sources"] = f"file {where}" if "sources" in raw else "default (bundled papers)"

    return Config(
        database_url=values["database.url"],
        smtp=SmtpConfig(
            host=values["smtp.host"],
            port=values["smtp.port"],
            security=values["smtp.security"],
            username=values["smtp.username"],
            password=password,
            from_=values["smtp.from"],
            timeout=values["smtp.timeout"],
            pool_size=values["smtp.pool_size"],
            rate_limit=values["smtp.rate_limit"],
            validate_certs=values["smtp.validate_certs"],
        ),
        outbox=Path(values["outbox.path"]),
        sources=sources,
        web=WebConfig(
            host=values["web.host"],
            port=values["web.port"],
            base_url=values["web.base_url"],
            secret_key_file=Path(values["web.secret_key_file"]),
            confirm_days=values["web.confirm_days"],
            resend_minutes=values["web.resend_minutes"],
            requests_per_minute=values["web.requests_per_minute"],
            subscribe_per_ip_per_hour=values["web.subscribe_per_ip_per_hour"],
            subscribe_per_address_per_day=values["web.subscribe_per_address_per_day"],
            max_body_bytes=values["web.max_body_bytes"],
            trusted_proxies=tuple(
                p.strip() for p in values["web.trusted_proxies"].split(",") if p.strip()
            ),
        ),
        digest=DigestConfig(
            lookback=values["digest.lookback"],
            site_name=values["digest.site_name"],
            list_id=values["digest.list_id"],
            unsubscribe_mailto=values["digest.unsubscribe_mailto"],
            max_papers=values["digest.max_papers"],
            min_score=values["digest.min_score"],
        ),
        templates=Path(values["templates.path"]) if values["templates.path"] else None,
        schedule=ScheduleConfig(
            fetch_cron=values["schedule.fetch_cron"],
            tick_seconds=values["schedule.tick_seconds"],
            wait_minutes=values["schedule.wait_minutes"],
            fetch_retry_seconds=values["schedule.fetch_retry_seconds"],
        ),
        delivery=DeliveryConfig(
            max_age_hours=values["delivery.max_age_hours"],
            retry_base_seconds=values["delivery.retry_base_seconds"],
            retry_max_seconds=values["delivery.retry_max_seconds"],
            lease_seconds=values["delivery.lease_seconds"],
            bounce_limit_no_such_user=values["delivery.bounce_limit_no_such_user"],
            bounce_limit=values["delivery.bounce_limit"],
            shutdown_grace_seconds=values["delivery.shutdown_grace_seconds"],
            processes=values["delivery.processes"],
        ),
        inbound=InboundConfig(
            enabled=values["inbound.enabled"],
            listen=values["inbound.listen"],
            domain=values["inbound.domain"] or from_domain,
            max_message_bytes=values["inbound.max_message_bytes"],
            answers_per_hour=values["inbound.answers_per_hour"],
        ),
        dkim=DkimConfig(
            selector=values["dkim.selector"],
            domain=values["dkim.domain"] or from_domain,
            private_key_file=(
                Path(values["dkim.private_key_file"]) if values["dkim.private_key_file"] else None
            ),
        ),
        matching=MatchingConfig(semantic_model=values["matching.semantic_model"]),
        origins=origins,
        values=values,
    )


def _address_domain(address: str) -> str:
    from email.utils import parseaddr

    return parseaddr(address)[1].rpartition("@")[2].lower()


def _sources(raw: Any, where: str) -> tuple[SourceConfig, ...]:
    if raw is None:
        raw = [DEFAULT_SOURCE]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: [[sources]] must be one or more [[sources]] tables")
    out = []
    for i, body in enumerate(raw, 1):
        label = f"{where}: [[sources]] #{i}"
        if not isinstance(body, dict):
            raise ConfigError(f"{label} must be a table")
        for key in body:
            if key not in SOURCE_KEYS:
                raise ConfigError(f"{label} unknown key {key!r}")
        type_ = body.get("type")
        if type_ not in SOURCE_TYPES:
            raise ConfigError(f"{label} type must be one of " + ", ".join(SOURCE_TYPES))
        try:
            categories = _categories(body.get("categories", []))
            url = _url("http", "https")(body["url"]) if body.get("url") else ""
            path = Path(_path(body["path"])) if "path" in body else None
        except ValueError as exc:
            raise ConfigError(f"{label} {exc}") from None
        if type_ == "json" and path is None:
            raise ConfigError(f"{label} path is required for type json")
        if type_ in ("arxiv-rss", "arxiv-api") and not categories:
            raise ConfigError(f"{label} categories is required for type {type_}")
        out.append(SourceConfig(type=type_, path=path, categories=categories, url=url))
    return tuple(out)


def check_timezone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ValueError for anything else (used for subscribers' zones)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin"
        ) from None


def describe(config: Config) -> list[tuple[str, str, str]]:
    """(key, effective value, origin) for every option, secrets redacted."""
    rows = []
    for opt in SCHEMA:
        if opt.name == "smtp.password_file":
            continue
        value = config.values.get(opt.name, opt.default)
        if opt.secret:
            value = "(set, redacted)" if value else "(not set)"
        elif opt.name == "database.url":
            value = _redact_url(value)
        rows.append((opt.name, str(value), config.origins.get(opt.name, "default")))
    for i, s in enumerate(config.sources, 1):
        desc = s.type + (f" path={s.path}" if s.path else "")
        desc += f" categories={','.join(s.categories)}" if s.categories else ""
        desc += f" url={s.url}" if s.url else ""
        rows.append((f"sources[{i}]", desc, config.origins.get("sources", "default")))
    return rows


def _redact_url(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def example_toml() -> str:
    """The annotated example configuration, generated from SCHEMA so it never drifts."""
    lines = [
        "# digestd configuration. Every key is optional; shown with its default.",
        "# Any key may be overridden by the environment as DIGESTD_<TABLE>_<KEY>,",
        "# e.g. DIGESTD_SMTP_PASSWORD or DIGESTD_DATABASE_URL.",
        "# Relative paths are relative to the working directory.",
    ]
    table = ""
    for opt in SCHEMA:
        if opt.secret:
            continue
        if opt.table != table:
            table = opt.table
            lines += ["", f"[{table}]"]
        lines.append(f"# {opt.help}")
        lines.append(f"{opt.key} = {toml_value(opt.default)}")
    lines += [
        "",
        "# Where papers come from; repeat [[sources]] for several. Without any [[sources]]",
        "# table digestd reads the few days of Daily Papers bundled with it.",
        "[[sources]]",
    ]
    for key, help_ in SOURCE_KEYS.items():
        lines.append(f"# {key}: {help_}")
    lines += [
        'type = "hf-daily-papers"',
        "",
        "# [[sources]]",
        '# type = "arxiv-rss"',
        '# categories = ["cs.LG", "cs.CL"]',
        "",
    ]
    return "\n".join(lines)


def toml_value(v: Any) -> str:
    """``v`` written as a TOML value (bool, number or basic string)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a TOML basic string
