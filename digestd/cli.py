"""The ``digestd`` command: parse input, call one function, translate the outcome."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from digestd import __version__, pipeline, workers
from digestd import config as config_mod
from digestd.errors import DigestdError, InvalidInput
from digestd.matcher import DEFAULT_MAX_PAPERS, DEFAULT_MIN_SCORE, Profile
from digestd.models import Delivery, Status
from digestd.services import Services
from digestd.sources import jsonfile
from digestd.store import Store
from digestd.subscribers import SubscriberInput, from_record, make_input, normalise_email

T = TypeVar("T")
log = logging.getLogger(__name__)
DEMO_ADDRESS = "reader@example.org"
DEMO_TOPICS = ("LLM agents", "reinforcement learning", "video generation")


class Context:
    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self._config: config_mod.Config | None = None

    @property
    def config(self) -> config_mod.Config:
        if self._config is None:
            self._config = config_mod.load(self.config_path)
        return self._config

    def store(self) -> Store:
        return Store.open(self.config.database_url)

    def run(self, fn: Callable[[Services], Awaitable[T]]) -> T:
        async def go() -> T:
            async with Services.build(self.config) as services:
                return await fn(services)

        return asyncio.run(go())


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DIGESTD_CONFIG",
    help="TOML configuration file (or DIGESTD_CONFIG). None: the embedded default.",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(__version__, prog_name="digestd")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: int) -> None:
    """digestd emails each subscriber a personal digest of the day's research papers."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    if ctx.invoked_subcommand == "run":
        level = min(level, logging.INFO)  # a daemon says what it does
    # Under systemd the journal stamps every line already.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=level, format=stamp + "%(levelname)s %(name)s: %(message)s")
    # aiosmtpd's "mail.log" names every sender and recipient at INFO (logs carry ids only);
    # flufl.bounce logs each of its detectors at INFO.
    for noisy in ("alembic", "apscheduler", "httpx", "uvicorn.error", "aiosmtplib", "mail.log",
                  "flufl.bounce"):  # fmt: skip
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    ctx.obj = Context(config_path)


@cli.command("check-config")
@pass_ctx
def check_config(ctx: Context) -> None:
    """Print the effective configuration and where each value came from (secrets redacted)."""
    rows = config_mod.describe(ctx.config)
    width = max(len(k) for k, _, _ in rows)
    for key, value, origin in rows:
        click.echo(f"{key:<{width}}  {value}  ({origin})")
    if ctx.config.dkim.enabled:
        from digestd.dkim import DkimSigner

        signer = DkimSigner.load(ctx.config.dkim)
        assert signer is not None
        click.echo(f"\nDKIM: publish this TXT record ({signer.bits}-bit RSA key):")
        click.echo(signer.zone_entry())


@cli.command("example-config")
def example_config() -> None:
    """Print an annotated configuration file with every key and its default."""
    click.echo(config_mod.example_toml(), nl=False)


@cli.command()
@pass_ctx
def migrate(ctx: Context) -> None:
    """Create or upgrade the database schema (other commands do this on first use too)."""
    store = ctx.store()
    click.echo(f"database at revision {store.revision()}")
    store.close()


def _preferences(f: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(
        [
            click.option("--topic", "topics", multiple=True, help="A topic phrase (repeatable)."),
            click.option("--exclude", multiple=True, help="A phrase to exclude (repeatable)."),
            click.option("--author", "authors", multiple=True, help="An author to follow."),
            click.option("--category", "categories", multiple=True, help="An arXiv category."),
        ]
    ):
        f = decorator(f)
    return f


@cli.command()
@click.argument("email")
@_preferences
@click.option("--at", "send_time", default="07:00", show_default=True, help="Local send time.")
@click.option("--tz", "timezone", default="UTC", show_default=True, help="IANA time zone.")
@click.option(
    "--frequency",
    type=click.Choice(["daily", "weekdays", "weekly"]),
    default="daily",
    show_default=True,
)
@click.option("--day", "weekly_day", default="monday", show_default=True, help="Weekly: which day.")
@click.option("--max-papers", type=int, default=DEFAULT_MAX_PAPERS, show_default=True)
@click.option("--min-score", type=float, default=DEFAULT_MIN_SCORE, show_default=True)
@click.option("--empty-note", is_flag=True, help="Send a short note on days nothing matches.")
@pass_ctx
def subscribe(ctx: Context, /, email: str, **options: Any) -> None:
    """Add an active subscriber (the admin path: no confirmation email)."""
    data = make_input(email, **options)
    store = ctx.store()
    try:
        sub = store.add_subscriber(data, status=Status.ACTIVE)
    finally:
        store.close()
    click.echo(f"subscribed {sub.email} (id {sub.id})")


@cli.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@pass_ctx
def import_(ctx: Context, file: Any) -> None:
    """Add active subscribers from JSON Lines (one object per line: email, topics, …)."""
    store = ctx.store()
    added = refused = 0
    batch: list[tuple[int, SubscriberInput]] = []

    def flush() -> None:
        nonlocal added, refused
        reasons = store.add_subscribers([d for _, d in batch], status=Status.ACTIVE)
        for (n, _), reason in zip(batch, reasons, strict=True):
            if reason is None:
                added += 1
            else:
                refused += 1
                click.echo(f"line {n}: refused: {reason}", err=True)
        batch.clear()

    try:
        for n, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidInput(f"not JSON ({exc.msg})") from None
                batch.append((n, from_record(record)))
            except DigestdError as exc:
                refused += 1
                click.echo(f"line {n}: refused: {exc}", err=True)
            if len(batch) >= 1000:
                flush()
        if batch:
            flush()
    finally:
        store.close()
    click.echo(f"imported {added}, refused {refused}")
    if refused:
        sys.exit(1)


@cli.command("list")
@click.option("--status", type=click.Choice([s.value for s in Status]), help="Only this status.")
@pass_ctx
def list_(ctx: Context, status: str | None) -> None:
    """One line per subscriber: address, status, topics."""
    store = ctx.store()
    try:
        for batch in store.subscribers(status=Status(status) if status else None):
            prefs = store.preferences([s.id for s in batch if s.id is not None])
            for s in batch:
                assert s.id is not None
                p = prefs[s.id]
                what = "; ".join(p["topic"])
                what += "".join(f"; author: {a}" for a in p["author"])
                what += "".join(f"; category: {c}" for c in p["category"])
                what += "".join(f"; not: {x}" for x in p["exclude"])
                click.echo(f"{s.email}\t{s.status}\t{what}")
    finally:
        store.close()


@cli.command()
@click.argument("email")
@pass_ctx
def unsubscribe(ctx: Context, email: str) -> None:
    """Unsubscribe an address: it receives nothing more."""
    store = ctx.store()
    try:
        store.set_status(normalise_email(email), Status.UNSUBSCRIBED, reason="admin")
    finally:
        store.close()
    click.echo(f"unsubscribed {normalise_email(email)}")


def _day(value: str | None) -> date:
    if value is None:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date such as 2026-08-21") from None


@cli.command()
@click.option("--date", "day", help="Which day's papers (YYYY-MM-DD); default: today (UTC).")
@pass_ctx
def fetch(ctx: Context, day: str | None) -> None:
    """Fetch the day's papers from every configured source and store the new ones."""
    result = ctx.run(lambda s: pipeline.fetch(s, _day(day)))
    if result.skipped:
        click.echo("another digestd instance is fetching now; its papers will be used")
        return
    click.echo(f"fetched {result.seen} papers, {result.new} new")
    for error in result.errors:
        click.echo(f"source failed: {error}", err=True)
    if result.errors:
        sys.exit(1)


@cli.command()
@click.option("--papers", "paths", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A Daily Papers JSON file or folder (repeatable).")  # fmt: skip
@_preferences
@click.option("--limit", type=click.IntRange(1, 1000), default=DEFAULT_MAX_PAPERS,
              show_default=True, help="At most this many papers.")  # fmt: skip
@click.option("--min-score", type=click.FloatRange(0, 1), default=DEFAULT_MIN_SCORE,
              show_default=True, help="Only papers at least this; 0 lists all.")  # fmt: skip
@click.option("--corpus", "corpus_paths", multiple=True, type=click.Path(path_type=Path),
              help="Daily Papers JSON (file or folder, repeatable) that stands for the stored "
              "papers: term rarity and acronyms. Default: the ranked papers and the bundled "
              "sample days.")  # fmt: skip
@click.option("--semantic", "semantic_model", metavar="MODEL",
              help="Also rank by closeness in meaning with this sentence-embedding model: "
              "all-MiniLM-L6-v2 or a model folder (needs digestd[semantic]).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def rank(
    paths: tuple[Path, ...],
    topics: tuple[str, ...],
    exclude: tuple[str, ...],
    authors: tuple[str, ...],
    categories: tuple[str, ...],
    limit: int,
    min_score: float,
    corpus_paths: tuple[Path, ...],
    semantic_model: str | None,
    as_json: bool,
) -> None:
    """Rank the papers of Daily Papers JSON for a profile: what such a subscriber would get."""
    from digestd.matcher import Corpus

    if not (topics or authors or categories):
        raise InvalidInput("give at least one --topic, --author or --category")
    papers = [p for path in paths for p in jsonfile.load(path)]
    background = corpus_paths or (config_mod.BUNDLED_PAPERS,)
    stored = [*papers, *(p for path in background for p in jsonfile.load(path))]
    meanings = None
    if semantic_model:
        from digestd.matching import semantic

        meanings = semantic.vectors(semantic.model(semantic_model).encode(stored))
    corpus = Corpus.of(stored, meanings)
    profile = Profile(topics, exclude, authors, categories, max_papers=limit, min_score=min_score)
    if min_score == 0:
        # --min-score 0 lists every paper, matched or not, with its score.
        from digestd.matcher import Match
        from digestd.matcher import rank as rank_all

        ranked = rank_all(papers, profile, corpus=corpus)
        seen = {m.paper.id for m in ranked}
        ranked += [Match(p, 0.0, "No match") for p in papers if p.id not in seen]
        ranked = ranked[:limit]
    else:
        ranked = pipeline.rank_papers(papers, profile, corpus=corpus)
    if as_json:
        out = [
            {
                "id": m.paper.id,
                "title": m.paper.title,
                "score": m.score,
                "why": m.why,
                "url": m.paper.abs_url,
            }
            for m in ranked
        ]
        click.echo(json.dumps(out, ensure_ascii=False, indent=2))
        return
    if not ranked:
        click.echo("nothing matched (try --min-score 0 to see every score)")
    for i, m in enumerate(ranked, 1):
        click.echo(f"{i:>2}. {m.score:.2f}  {m.paper.id}  {m.paper.title}")
        click.echo(f"          {m.why}")


@cli.command()
@click.argument("email")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the .eml (an .html is written beside it).")  # fmt: skip
@pass_ctx
def preview(ctx: Context, email: str, output: Path | None) -> None:
    """Write the digest EMAIL would receive now to a file; send nothing."""
    address = normalise_email(email)

    async def go(services: Services) -> None:
        matches, message = pipeline.preview(services, address)
        if message is None:
            click.echo(f"nothing would be sent to {address} now: no paper matched")
            return
        target = output or Path(f"preview-{address.split('@')[0]}.eml")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bytes(message))
        html = message.get_body(("html",))
        if html is not None:
            target.with_suffix(".html").write_text(str(html.get_content()), encoding="utf-8")
        click.echo(f"{len(matches)} papers; wrote {target} and {target.with_suffix('.html')}")

    ctx.run(go)


async def _send(services: Services, period: date, fetch_first: bool) -> pipeline.SendSummary:
    now = datetime.now(UTC)
    # a big send is split over processes (`workers`): their forkserver imports meanwhile
    workers.warm(services.config, services.store.subscriber_counts().get(Status.ACTIVE.value, 0))
    if fetch_first and not services.store.papers_seen_since(now - timedelta(hours=20)):
        result = await pipeline.fetch(services, period, now=now)
        click.echo(f"fetched {result.seen} papers, {result.new} new")
    return await pipeline.send_period(services, period, now=now)


@cli.command()
@click.option("--period", help="The digest day (YYYY-MM-DD); default: today (UTC).")
@click.option("--no-fetch", is_flag=True, help="Do not fetch, even when no recent papers exist.")
@pass_ctx
def send(ctx: Context, period: str | None, no_fetch: bool) -> None:
    """Send every digest due for the period now (fetching first when no recent papers exist)."""
    summary = ctx.run(lambda s: _send(s, _day(period), not no_fetch))
    click.echo(str(summary))
    if summary.retry or summary.failed:
        sys.exit(1)


@cli.command()
@pass_ctx
def demo(ctx: Context) -> None:
    """Subscribe a sample reader, and send today's digest from the bundled papers."""

    async def go(services: Services) -> Delivery | None:
        store = services.store
        try:
            sub = store.subscriber(DEMO_ADDRESS)
        except DigestdError:
            sub = store.add_subscriber(
                make_input(DEMO_ADDRESS, topics=DEMO_TOPICS), status=Status.ACTIVE
            )
            click.echo(f"subscribed {DEMO_ADDRESS}, topics: {', '.join(DEMO_TOPICS)}")
        period = datetime.now(UTC).date()
        summary = await _send(services, period, fetch_first=True)
        click.echo(str(summary))
        assert sub.id is not None
        return store.delivery(sub.id, period)

    row = ctx.run(go)
    if row is not None and row.reply.startswith("outbox: "):
        eml = Path(row.reply.removeprefix("outbox: ")).absolute()
        click.echo(f"\nToday's digest for {DEMO_ADDRESS}: {row.paper_count} papers.")
        click.echo(f"Open it in a browser: {eml.with_suffix('.html').as_uri()}")
        click.echo(f"The email itself:     {eml}")
    elif row is not None:
        click.echo(f"today's digest: {row.status} ({row.reply})")


@cli.command()
@pass_ctx
def run(ctx: Context) -> None:
    """Run the daemon: the web front, the fetch job and the send tick, until SIGTERM."""
    from digestd import daemon

    sys.exit(asyncio.run(daemon.run(ctx.config, ctx.config_path)))


@cli.command()
@click.option("--period", help="Show this digest day (YYYY-MM-DD); default: today (UTC).")
@pass_ctx
def status(ctx: Context, period: str | None) -> None:
    """What the database and a running daemon say: subscribers, fetches, today's digests."""
    from digestd import status as status_mod

    click.echo(status_mod.report(ctx.config, _day(period)))


@cli.command("revoke-links")
@click.argument("email")
@pass_ctx
def revoke_links(ctx: Context, email: str) -> None:
    """Invalidate every confirm, manage, unsubscribe and feedback link sent to EMAIL so far.

    The next digest (or a subscribe request for the address) carries fresh links.
    """
    address = normalise_email(email)
    store = ctx.store()
    try:
        sub = store.subscriber(address)
        assert sub.id is not None
        store.revoke_links(sub.id)
    finally:
        store.close()
    click.echo(f"revoked every link sent to {address} so far")


def main() -> None:
    """Entry point: every DigestdError becomes one line on stderr and its exit status."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DigestdError as exc:
        click.echo(f"digestd: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except ValueError as exc:
        click.echo(f"digestd: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
