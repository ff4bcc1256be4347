"""Engine, migrations and named queries: the only module that writes SQL."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlmodel import Session, col, select

from digestd.errors import ConfigError, InvalidInput, NotFound
from digestd.matcher import Match
from digestd.models import (
    TERMINAL,
    Delivery,
    DeliveryStatus,
    Event,
    Feedback,
    PaperMeaning,
    PaperRow,
    Preference,
    PrefKind,
    SentPaper,
    Status,
    Subscriber,
)
from digestd.paper import Paper
from digestd.subscribers import SubscriberInput

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


class Share(NamedTuple):
    """Share ``number`` of ``total`` disjoint shares of the subscribers (by id), for a send
    split over processes; the ledger still arbitrates, the shares only keep them apart."""

    number: int
    total: int

    def holds(self, column: Any) -> Any:
        """The SQL condition for a subscriber id ``column`` in this share."""
        return column % self.total == self.number

    def has(self, subscriber_id: int) -> bool:
        return subscriber_id % self.total == self.number


def create_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite connections get WAL, foreign keys and a busy timeout."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"[database] url is not a database URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


_PREF_KINDS = tuple(k.value for k in PrefKind)
_PREF = Preference.__table__.c  # type: ignore[attr-defined]
#: built once: a send reads it for every chunk, and building it cost more than the query
_PREFERENCES_OF = (
    sa.select(_PREF.subscriber_id, _PREF.kind, _PREF.value)
    .where(_PREF.subscriber_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(_PREF.id)
)


class Store:
    """The database: subscribers, papers and the delivery ledger."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)

    @classmethod
    def open(cls, url: str) -> Store:
        """Open the database at ``url`` and bring its schema up to date."""
        store = cls(url)
        store.migrate()
        return store

    def migrate(self) -> None:
        """Bring the schema to the newest revision. Instances started together on a new
        database take turns (PostgreSQL: an advisory lock held for the transaction; SQLite: a
        lock file), or their CREATE TABLEs would collide."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._sqlite_file_lock(), self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key("migrate"))))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def _sqlite_file_lock(self) -> Iterator[None]:
        # SQLite runs the migrations' DDL outside a transaction (pysqlite), so processes
        # migrating one file at once take turns on a lock file beside it.
        database = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- subscribers ---------------------------------------------------------------------

    def add_subscriber(
        self, data: SubscriberInput, *, status: Status, now: datetime | None = None
    ) -> Subscriber:
        """Insert a subscriber with preferences; InvalidInput when the address exists."""
        now = now or datetime.now(UTC)
        sub = Subscriber(
            email=data.email,
            status=status,
            send_time=data.send_time,
            timezone=data.timezone,
            frequency=data.frequency,
            weekly_day=data.weekly_day,
            max_papers=data.max_papers,
            min_score=data.min_score,
            empty_note=data.empty_note,
            created_at=now,
            confirmed_at=now if status == Status.ACTIVE else None,
            # Random, not 0: SQLite reuses the id of a deleted last row, and a link signed for
            # the deleted subscriber must not open the new one.
            token_version=secrets.randbelow(2**31),
        )
        with self.session() as s:
            s.add(sub)
            try:
                s.flush()
            except sa.exc.IntegrityError:
                raise InvalidInput(f"{data.email} is already subscribed") from None
            assert sub.id is not None
            for kind, values in data.preferences():
                for v in values:
                    s.add(Preference(subscriber_id=sub.id, kind=kind, value=v))
            s.add(Event(subscriber_id=sub.id, kind="subscribe", reason=status.value))
            s.commit()
        return sub

    def add_subscribers(
        self, batch: Sequence[SubscriberInput], *, status: Status, now: datetime | None = None
    ) -> list[str | None]:
        """Insert many subscribers in one transaction (the import path).

        Returns, per input, None when added or the reason it was refused (the address is
        already subscribed, or repeated within the batch). Core inserts with RETURNING keep
        this at tens of thousands of rows per second, where one ORM transaction per
        subscriber manages a few hundred.
        """
        now = now or datetime.now(UTC)
        refused: list[str | None] = [None] * len(batch)
        seen: set[str] = set()
        with self.engine.begin() as conn:
            emails = [d.email for d in batch]
            subs = Subscriber.__table__  # type: ignore[attr-defined]
            existing = set(
                conn.execute(sa.select(subs.c.email).where(subs.c.email.in_(emails))).scalars()
            )
            rows = []
            for i, d in enumerate(batch):
                if d.email in existing or d.email in seen:
                    refused[i] = f"{d.email} is already subscribed"
                    continue
                seen.add(d.email)
                rows.append(
                    {
                        "email": d.email, "status": status.value, "send_time": d.send_time,
                        "timezone": d.timezone, "frequency": d.frequency,
                        "weekly_day": d.weekly_day, "max_papers": d.max_papers,
                        "min_score": d.min_score, "token_version": secrets.randbelow(2**31),
                        "empty_note": d.empty_note, "created_at": now,
                        "confirmed_at": now if status == Status.ACTIVE else None,
                    }
                )  # fmt: skip
            if not rows:
                return refused
            result = conn.execute(subs.insert().returning(subs.c.email, subs.c.id), rows)
            ids = {email: sid for email, sid in result.all()}
            prefs, events = [], []
            for d in batch:
                sid = ids.get(d.email)
                if sid is None:
                    continue
                prefs += [
                    {"subscriber_id": sid, "kind": kind.value, "value": v}
                    for kind, values in d.preferences()
                    for v in values
                ]
                events.append(
                    {"subscriber_id": sid, "kind": "subscribe", "reason": status.value,
                     "created_at": now}
                )  # fmt: skip
            if prefs:
                conn.execute(Preference.__table__.insert(), prefs)  # type: ignore[attr-defined]
            conn.execute(Event.__table__.insert(), events)  # type: ignore[attr-defined]
        return refused

    def subscriber(self, email: str) -> Subscriber:
        with self.session() as s:
            sub = s.exec(select(Subscriber).where(Subscriber.email == email)).first()
        if sub is None:
            raise NotFound(f"no subscriber {email}")
        return sub

    def preferences(self, subscriber_ids: Sequence[int]) -> dict[int, dict[str, list[str]]]:
        out: dict[int, dict[str, list[str]]] = {
            i: {k: [] for k in _PREF_KINDS} for i in subscriber_ids
        }
        if not subscriber_ids:
            return out
        # Rows, not ORM objects: a send reads this for every subscriber, and building the
        # objects was most of its cost.
        with self.engine.connect() as conn:
            rows = conn.execute(_PREFERENCES_OF, {"ids": list(subscriber_ids)})
            for subscriber_id, kind, value in rows:
                out[subscriber_id][kind].append(value)
        return out

    def common_phrases(self, limit: int) -> list[str]:
        """The topics and exclusions of active subscribers, those most of them hold first
        (ties by text), at most ``limit``: what the day's sends will read the papers for."""
        t = Preference.__table__.c  # type: ignore[attr-defined]
        u = Subscriber.__table__.c  # type: ignore[attr-defined]
        held = sa.func.count()
        query = (
            sa.select(t.value)
            .join_from(Preference.__table__, Subscriber.__table__, t.subscriber_id == u.id)  # type: ignore[attr-defined]
            .where(
                u.status == Status.ACTIVE.value,
                t.kind.in_([PrefKind.TOPIC.value, PrefKind.EXCLUDE.value]),
            )
            .group_by(t.value)
            .order_by(held.desc(), t.value)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def subscribers(
        self, *, status: Status | None = None, batch: int = 1000, share: Share | None = None
    ) -> Iterator[list[Subscriber]]:
        """All subscribers (optionally of one status, or one share of them), in batches by
        id, never a whole table."""
        last = 0
        while True:
            with self.session() as s:
                q = select(Subscriber).where(col(Subscriber.id) > last)
                if status is not None:
                    q = q.where(Subscriber.status == status)
                if share is not None:
                    q = q.where(share.holds(col(Subscriber.id)))
                rows = list(s.exec(q.order_by(col(Subscriber.id)).limit(batch)))
            if not rows:
                return
            yield rows
            last = rows[-1].id or 0

    def set_status(self, email: str, status: Status, *, reason: str = "") -> Subscriber:
        with self.session() as s:
            sub = s.exec(select(Subscriber).where(Subscriber.email == email)).first()
            if sub is None:
                raise NotFound(f"no subscriber {email}")
            sub.status = status
            s.add(sub)
            s.add(Event(subscriber_id=sub.id, kind=_event_kind(status), reason=reason))
            s.commit()
        return sub

    def record_bounce(self, subscriber_id: int, *, hard: bool, reason: str, limit: int) -> bool:
        """Record a bounce; mark the subscriber bounced after ``limit`` of them. True if so."""
        kind = "bounce" if hard else "soft-bounce"
        with self.session() as s:
            s.add(Event(subscriber_id=subscriber_id, kind=kind, reason=reason))
            s.flush()
            count = s.exec(
                select(sa.func.count())
                .select_from(Event)
                .where(Event.subscriber_id == subscriber_id, col(Event.kind).in_(["bounce"]))
            ).one()
            bounced = hard and count >= limit
            if bounced:
                sub = s.get(Subscriber, subscriber_id)
                if sub is not None and sub.status == Status.ACTIVE:
                    sub.status = Status.BOUNCED
                    s.add(sub)
            s.commit()
        return bounced

    def has_event(self, subscriber_id: int, kind: str, reason_prefix: str) -> bool:
        """Whether an event of ``kind`` whose reason starts with ``reason_prefix`` is recorded
        (inbound mail: a report delivered twice must not count twice)."""
        with self.session() as s:
            row = s.exec(
                select(Event.id)
                .where(
                    Event.subscriber_id == subscriber_id,
                    Event.kind == kind,
                    col(Event.reason).startswith(reason_prefix, autoescape=True),
                )
                .limit(1)
            ).first()
        return row is not None

    # -- papers --------------------------------------------------------------------------

    def add_papers(self, papers: Iterable[Paper], *, seen_at: datetime) -> int:
        """Store papers not stored before (by arXiv id); return how many were new."""
        rows = [_paper_row(p, seen_at) for p in {p.id: p for p in papers}.values()]
        return self._insert_new(PaperRow.__table__, rows)  # type: ignore[attr-defined]

    def _insert_new(self, table: sa.Table, rows: list[dict[str, Any]]) -> int:
        """Insert the rows whose key is not stored yet, 500 at a time; how many were."""
        if not rows:
            return 0
        ins: Any = sqlite.insert if self.engine.dialect.name == "sqlite" else postgresql.insert
        key = next(iter(table.primary_key.columns))
        new = 0
        with self.engine.begin() as conn:
            for i in range(0, len(rows), 500):
                stmt = ins(table).values(rows[i : i + 500]).on_conflict_do_nothing()
                # RETURNING, not rowcount: psycopg reports -1 for multi-row inserts.
                new += len(conn.execute(stmt.returning(key)).all())
        return new

    def papers_seen_since(self, since: datetime) -> list[tuple[Paper, datetime]]:
        """Papers first stored after ``since``, with that time, oldest first."""
        with self.session() as s:
            rows = s.exec(
                select(PaperRow)
                .where(col(PaperRow.first_seen) > since)
                .order_by(col(PaperRow.first_seen), col(PaperRow.id))
            )
            return [(_paper(r), r.first_seen) for r in rows]

    def meanings(self, model: str, paper_ids: Iterable[str]) -> dict[str, bytes]:
        """Paper id -> its stored sentence embedding under ``model``, for those that have one."""
        return {pid: bytes(v) for pid, v in self._meanings(model, paper_ids, "paper_id", "vector")}

    def meaning_ids(self, model: str, paper_ids: Iterable[str]) -> set[str]:
        """Which of ``paper_ids`` have an embedding stored under ``model``."""
        return {pid for (pid,) in self._meanings(model, paper_ids, "paper_id")}

    def _meanings(self, model: str, paper_ids: Iterable[str], *columns: str) -> Iterator[Any]:
        ids = list(dict.fromkeys(paper_ids))
        table = PaperMeaning.__table__  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                yield from conn.execute(
                    sa.select(*(table.c[c] for c in columns)).where(
                        table.c.model == model, table.c.paper_id.in_(ids[i : i + 500])
                    )
                )

    def save_meanings(self, model: str, vectors: dict[str, bytes]) -> int:
        """Store embeddings not stored before for ``model``; return how many were new."""
        rows = [{"paper_id": k, "model": model, "vector": v} for k, v in vectors.items()]
        return self._insert_new(PaperMeaning.__table__, rows)  # type: ignore[attr-defined]

    def count_papers(self) -> int:
        with self.session() as s:
            return s.exec(select(sa.func.count()).select_from(PaperRow)).one()

    def sent_paper_ids(self, subscriber_id: int, paper_ids: Iterable[str]) -> set[str]:
        ids = list(paper_ids)
        if not ids:
            return set()
        with self.session() as s:
            rows = s.exec(
                select(SentPaper.paper_id).where(
                    SentPaper.subscriber_id == subscriber_id, col(SentPaper.paper_id).in_(ids)
                )
            )
            return set(rows)

    # -- the delivery ledger -------------------------------------------------------------

    def delivery(self, subscriber_id: int, period: date) -> Delivery | None:
        with self.session() as s:
            return s.exec(
                select(Delivery).where(
                    Delivery.subscriber_id == subscriber_id, Delivery.period == period
                )
            ).first()

    def last_sent_at(self, subscriber_id: int) -> datetime | None:
        with self.session() as s:
            return s.exec(
                select(sa.func.max(Delivery.sent_at)).where(
                    Delivery.subscriber_id == subscriber_id,
                    # not indexable: the (subscriber_id, period) index, never the status one
                    # (see ledger.last_sent)
                    sa.func.coalesce(Delivery.status, "") == DeliveryStatus.SENT,
                )
            ).one()

    def claim(
        self, subscriber_id: int, period: date, *, owner: str, now: datetime, lease: timedelta
    ) -> Delivery | None:
        """Claim the (subscriber, period) row for sending, or None when it is not ours to send.

        New rows are inserted claimed; a row due for retry or whose lease has run out (its
        worker died) is taken over with a conditional UPDATE, so two workers never both win.
        """
        until = now + lease
        with self.session() as s:
            row = Delivery(
                subscriber_id=subscriber_id,
                period=period,
                status=DeliveryStatus.CLAIMED,
                owner=owner,
                lease_until=until,
                created_at=now,
            )
            s.add(row)
            try:
                s.commit()
                return row
            except sa.exc.IntegrityError:
                s.rollback()
            table = Delivery.__table__  # type: ignore[attr-defined]
            c = table.c
            due = sa.or_(
                sa.and_(
                    c.status.in_([DeliveryStatus.RETRY, DeliveryStatus.WAITING]),
                    c.next_attempt_at <= now,
                ),
                sa.and_(c.status == DeliveryStatus.CLAIMED, c.lease_until < now),
            )
            result = s.execute(
                table.update()
                .where(c.subscriber_id == subscriber_id, c.period == period, due)
                .values(status=DeliveryStatus.CLAIMED, owner=owner, lease_until=until)
            )
            s.commit()
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return s.exec(
                select(Delivery).where(
                    Delivery.subscriber_id == subscriber_id, Delivery.period == period
                )
            ).one()

    def delivery_by_id(self, delivery_id: int) -> Delivery | None:
        with self.session() as s:
            return s.get(Delivery, delivery_id)

    def delivery_papers(self, delivery_id: int) -> dict[int, str]:
        """Number in the digest → paper id, for the papers one delivery sent."""
        with self.session() as s:
            rows = s.exec(
                select(SentPaper.position, SentPaper.paper_id).where(
                    SentPaper.delivery_id == delivery_id
                )
            )
            return {position: paper_id for position, paper_id in rows}

    def mark_sent(
        self, delivery: Delivery, matches: Sequence[Match], *, reply: str, now: datetime
    ) -> bool:
        """Record a sent digest and its papers in one transaction.

        False when another worker recorded it first (its lease had run out while this one
        was sending, so the digest went out twice with one Message-ID): nothing is changed.
        """
        assert delivery.id is not None
        with self.session() as s:
            row = s.get(Delivery, delivery.id)
            assert row is not None
            if row.status == DeliveryStatus.SENT:
                return False
            row.status = DeliveryStatus.SENT
            row.sent_at = now
            row.reply = reply[:500]
            row.attempts += 1
            row.paper_count = len(matches)
            row.lease_until = None
            s.add(row)
            for i, m in enumerate(matches, 1):
                s.add(
                    SentPaper(
                        subscriber_id=row.subscriber_id,
                        paper_id=m.paper.id,
                        delivery_id=delivery.id,
                        position=i,
                        score=m.score,
                    )
                )
            try:
                s.commit()
            except sa.exc.IntegrityError:  # the other worker's papers are in: it won
                s.rollback()
                return False
        return True

    def mark_retry(self, delivery: Delivery, *, reply: str, at: datetime) -> None:
        assert delivery.id is not None
        self._update(
            delivery.id,
            status=DeliveryStatus.RETRY,
            reply=reply[:500],
            next_attempt_at=at,
            lease_until=None,
            attempts=delivery.attempts + 1,
        )

    def wake_waiting(self, now: datetime) -> int:
        """New papers arrived: digests waiting for them are due again at once."""
        table = Delivery.__table__  # type: ignore[attr-defined]
        c = table.c
        with self.engine.begin() as conn:
            result = conn.execute(
                table.update()
                .where(c.status == DeliveryStatus.WAITING, c.next_attempt_at > now)
                .values(next_attempt_at=now)
            )
            return int(result.rowcount or 0)

    def schedule_groups(self) -> list[tuple[str, str, str, int]]:
        """Distinct (timezone, send_time, frequency, weekly_day) of active subscribers."""
        with self.session() as s:
            rows = s.exec(
                select(
                    Subscriber.timezone,
                    Subscriber.send_time,
                    Subscriber.frequency,
                    Subscriber.weekly_day,
                )
                .where(Subscriber.status == Status.ACTIVE)
                .distinct()
            )
            return [tuple(r) for r in rows]  # type: ignore[misc]

    def due_subscribers(
        self,
        period: date,
        groups: Sequence[tuple[str, str, str, int]],
        *,
        now: datetime,
        batch: int = 1000,
        share: Share | None = None,
    ) -> Iterator[list[Subscriber]]:
        """Active subscribers of ``groups`` (or of one share of them) whose ``period`` digest
        is not done, by id batches.

        Rows in flight (claimed under a live lease) or waiting for a later attempt are left
        out here; claim() is still the arbiter when two workers race.
        """
        where = self._due(period, groups, now, share)
        last = 0
        while groups:
            with self.session() as s:
                rows = list(
                    s.exec(
                        select(Subscriber)
                        .where(*where, col(Subscriber.id) > last)
                        .order_by(col(Subscriber.id))
                        .limit(batch)
                    )
                )
            if not rows:
                return
            yield rows
            last = rows[-1].id or 0

    def due_count(
        self,
        period: date,
        groups: Sequence[tuple[str, str, str, int]],
        *,
        now: datetime,
        at_most: int,
    ) -> int:
        """How many subscribers ``due_subscribers`` would list, counting no further than
        ``at_most`` (whether a send is big is all it is asked)."""
        if not groups:
            return 0
        with self.session() as s:
            ids = select(Subscriber.id).where(*self._due(period, groups, now, None))
            inner = ids.limit(at_most).subquery()
            return int(s.exec(select(sa.func.count()).select_from(inner)).one())

    @staticmethod
    def _due(
        period: date,
        groups: Sequence[tuple[str, str, str, int]],
        now: datetime,
        share: Share | None,
    ) -> list[Any]:
        d = Delivery.__table__.alias("d")  # type: ignore[attr-defined]
        open_row = sa.exists().where(
            d.c.subscriber_id == Subscriber.id,
            d.c.period == period,
            sa.or_(
                d.c.status.in_([s.value for s in TERMINAL]),
                sa.and_(d.c.status == DeliveryStatus.CLAIMED, d.c.lease_until >= now),
                sa.and_(
                    d.c.status.in_([DeliveryStatus.RETRY, DeliveryStatus.WAITING]),
                    d.c.next_attempt_at > now,
                ),
            ),
        )
        in_groups = sa.tuple_(
            col(Subscriber.timezone),
            col(Subscriber.send_time),
            col(Subscriber.frequency),
            col(Subscriber.weekly_day),
        ).in_(list(groups))
        where = [Subscriber.status == Status.ACTIVE, in_groups, ~open_row]
        if share is not None:
            where.append(share.holds(col(Subscriber.id)))
        return where

    def awaiting_first_digest(self, *, since: datetime, limit: int = 1000) -> list[Subscriber]:
        """Active subscribers who confirmed a subscription since ``since`` and got nothing yet.

        Only confirmations after sign-up count (the web's double opt-in); subscribers added
        by an operator start at their next send time.
        """
        with self.session() as s:
            any_row = sa.exists().where(col(Delivery.subscriber_id) == col(Subscriber.id))
            return list(
                s.exec(
                    select(Subscriber)
                    .where(
                        Subscriber.status == Status.ACTIVE,
                        col(Subscriber.confirmed_at) >= since,
                        col(Subscriber.confirmed_at) > col(Subscriber.created_at),
                        ~any_row,
                    )
                    .order_by(col(Subscriber.id))
                    .limit(limit)
                )
            )

    def record_event(self, kind: str, reason: str, *, subscriber_id: int | None = None) -> None:
        with self.session() as s:
            s.add(Event(subscriber_id=subscriber_id, kind=kind, reason=reason[:1000]))
            s.commit()

    def last_event(self, *kinds: str) -> Event | None:
        with self.session() as s:
            return s.exec(
                select(Event)
                .where(col(Event.kind).in_(kinds))
                .order_by(col(Event.created_at).desc(), col(Event.id).desc())
                .limit(1)
            ).first()

    def subscriber_counts(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.exec(select(Subscriber.status, sa.func.count()).group_by(Subscriber.status))
            return {status: n for status, n in rows}

    def delivery_counts(self, period: date) -> dict[str, int]:
        with self.session() as s:
            rows = s.exec(
                select(Delivery.status, sa.func.count())
                .where(Delivery.period == period)
                .group_by(Delivery.status)
            )
            return {status: n for status, n in rows}

    def unsent_reasons(self, period: date, limit: int = 20) -> list[tuple[int, str, str]]:
        """(subscriber id, status, reply) of the period's deliveries that were not sent."""
        with self.session() as s:
            rows = s.exec(
                select(Delivery.subscriber_id, Delivery.status, Delivery.reply)
                .where(Delivery.period == period, Delivery.status != DeliveryStatus.SENT)
                .order_by(col(Delivery.subscriber_id))
                .limit(limit)
            )
            return [tuple(r) for r in rows]  # type: ignore[misc]

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Whether this process may do the job ``name`` now, several instances sharing the
        database: a PostgreSQL advisory lock, held on its own connection while the block
        runs and freed when it ends (or when the process dies with its connection). SQLite
        serves one machine's single instance; there it is always True."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        key = _lock_key(name)
        with self.engine.connect() as conn:
            got = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                    conn.commit()

    def held(self, name: str) -> bool:
        """Whether another instance holds ``name`` (`exclusive`) at this moment. Asked by
        taking it and letting go at once; never on SQLite (one instance only)."""
        with self.exclusive(name) as mine:
            return not mine

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def _update(self, delivery_id: int, **values: Any) -> None:
        with self.session() as s:
            row = s.get(Delivery, delivery_id)
            if row is None:
                raise NotFound(f"no delivery {delivery_id}")
            for k, v in values.items():
                setattr(row, k, v)
            s.add(row)
            s.commit()

    # -- subscriptions: what the web front (digestd.subscription) asks ---------------------

    def subscriber_by_id(self, subscriber_id: int) -> Subscriber:
        with self.session() as s:
            sub = s.get(Subscriber, subscriber_id)
        if sub is None:
            raise NotFound(f"no subscriber {subscriber_id}")
        return sub

    def find_subscriber(self, email: str) -> Subscriber | None:
        with self.session() as s:
            return s.exec(select(Subscriber).where(Subscriber.email == email)).first()

    def update_subscriber(self, subscriber_id: int, data: SubscriberInput) -> Subscriber:
        """Replace settings and preferences (never the address) in one transaction."""
        with self.session() as s:
            sub = s.get(Subscriber, subscriber_id)
            if sub is None:
                raise NotFound(f"no subscriber {subscriber_id}")
            for name in ("send_time", "timezone", "frequency", "weekly_day", "max_papers",
                         "min_score", "empty_note"):  # fmt: skip
                setattr(sub, name, getattr(data, name))
            s.add(sub)
            s.exec(sa.delete(Preference).where(col(Preference.subscriber_id) == subscriber_id))
            for kind, values in data.preferences():
                for v in values:
                    s.add(Preference(subscriber_id=subscriber_id, kind=kind, value=v))
            s.add(Event(subscriber_id=subscriber_id, kind="update", reason=""))
            s.commit()
        return sub

    def change_status(
        self, subscriber_id: int, status: Status, *, reason: str, confirmed_at: datetime | None
    ) -> Subscriber:
        """Set the status (and confirmation time, when given) and record the event."""
        with self.session() as s:
            sub = s.get(Subscriber, subscriber_id)
            if sub is None:
                raise NotFound(f"no subscriber {subscriber_id}")
            sub.status = status
            if confirmed_at is not None:
                sub.confirmed_at = confirmed_at
            s.add(sub)
            kind = "confirm" if confirmed_at is not None else _event_kind(status)
            s.add(Event(subscriber_id=subscriber_id, kind=kind, reason=reason))
            s.commit()
        return sub

    def claim_notice(self, subscriber_id: int, *, now: datetime, interval: timedelta) -> bool:
        """Take the right to email this subscriber a notice now: at most one per ``interval``.

        A conditional UPDATE, so two requests racing for one address send one email.
        """
        table = Subscriber.__table__  # type: ignore[attr-defined]
        c = table.c
        with self.engine.begin() as conn:
            result = conn.execute(
                table.update()
                .where(
                    c.id == subscriber_id,
                    sa.or_(c.notice_sent_at.is_(None), c.notice_sent_at <= now - interval),
                )
                .values(notice_sent_at=now)
            )
            return result.rowcount == 1

    def release_notice(self, subscriber_id: int) -> None:
        """The notice could not be sent: let the next request try again at once."""
        with self.session() as s:
            sub = s.get(Subscriber, subscriber_id)
            if sub is not None:
                sub.notice_sent_at = None
                s.add(sub)
                s.commit()

    def revoke_links(self, subscriber_id: int) -> int:
        """Invalidate every link signed for this subscriber so far; the new version."""
        with self.session() as s:
            sub = s.get(Subscriber, subscriber_id)
            if sub is None:
                raise NotFound(f"no subscriber {subscriber_id}")
            sub.token_version = (sub.token_version + 1) % 2**31
            s.add(sub)
            s.add(Event(subscriber_id=subscriber_id, kind="revoke-links", reason=""))
            s.commit()
            return sub.token_version

    def delete_subscriber(self, subscriber_id: int, *, reason: str) -> bool:
        """Remove the subscriber and every row about them; keep one anonymous "deleted" event.

        Child rows are deleted explicitly rather than left to ON DELETE CASCADE, so nothing
        survives on a connection without foreign keys; their events go too (bounce replies
        quote the address), and only the count of deletions remains.
        """
        with self.session() as s:
            if s.get(Subscriber, subscriber_id) is None:
                return False
            for model in (SentPaper, Delivery, Feedback, Preference, Event):
                table = model.__table__  # type: ignore[union-attr]
                s.exec(sa.delete(table).where(table.c.subscriber_id == subscriber_id))
            s.exec(sa.delete(Subscriber).where(col(Subscriber.id) == subscriber_id))
            s.add(Event(subscriber_id=None, kind="deleted", reason=reason))
            s.commit()
        return True

    def purge_unconfirmed(self, *, before: datetime) -> int:
        """Delete pending subscribers whose last confirmation link was sent before ``before``
        (it has expired): an address nobody confirmed is not kept. Returns how many."""
        last_link = sa.func.coalesce(col(Subscriber.notice_sent_at), col(Subscriber.created_at))
        with self.session() as s:
            stale = list(
                s.exec(
                    select(Subscriber.id).where(
                        Subscriber.status == Status.PENDING, last_link < before
                    )
                )
            )
        purged = sum(self.delete_subscriber(i, reason="unconfirmed") for i in stale if i)
        return purged

    def count_events(self, kind: str) -> int:
        with self.session() as s:
            return s.exec(
                select(sa.func.count()).select_from(Event).where(Event.kind == kind)
            ).one()

    def set_vote(self, subscriber_id: int, paper_id: str, vote: int, *, now: datetime) -> None:
        """One vote per subscriber and paper: a new vote replaces the old one."""
        assert vote in (1, -1)
        with self.session() as s:
            s.exec(
                sa.delete(Feedback).where(
                    col(Feedback.subscriber_id) == subscriber_id, col(Feedback.paper_id) == paper_id
                )
            )
            s.add(
                Feedback(subscriber_id=subscriber_id, paper_id=paper_id, vote=vote, created_at=now)
            )
            s.commit()

    def remove_vote(self, subscriber_id: int, paper_id: str) -> bool:
        with self.session() as s:
            result = s.exec(
                sa.delete(Feedback).where(
                    col(Feedback.subscriber_id) == subscriber_id, col(Feedback.paper_id) == paper_id
                )
            )
            s.commit()
            return bool(result.rowcount)

    def votes(self, subscriber_id: int, *, limit: int = 200) -> list[tuple[Feedback, Paper | None]]:
        """The subscriber's votes, newest first, with the paper when it is still stored."""
        with self.session() as s:
            rows = s.exec(
                select(Feedback, PaperRow)
                .join(PaperRow, col(PaperRow.id) == col(Feedback.paper_id), isouter=True)
                .where(Feedback.subscriber_id == subscriber_id)
                .order_by(col(Feedback.created_at).desc(), col(Feedback.id).desc())
                .limit(limit)
            )
            return [(f, _paper(p) if p is not None else None) for f, p in rows]

    def paper(self, paper_id: str) -> Paper | None:
        with self.session() as s:
            row = s.get(PaperRow, paper_id)
            return _paper(row) if row is not None else None


def _lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit number) for a job of digestd's."""
    digest = hashlib.sha256(f"digestd:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _event_kind(status: Status) -> str:
    return {
        Status.UNSUBSCRIBED: "unsubscribe",
        Status.PAUSED: "pause",
        Status.ACTIVE: "resume",
        Status.BOUNCED: "bounce",
        Status.PENDING: "pending",
    }[status]


def _paper_row(p: Paper, seen_at: datetime) -> dict[str, Any]:
    return {
        "id": p.id,
        "title": p.title,
        "abstract": p.abstract,
        "authors": list(p.authors),
        "categories": list(p.categories),
        "published": p.published,
        "summary": p.summary,
        "keywords": list(p.keywords),
        "code_url": p.code_url,
        "project_url": p.project_url,
        "upvotes": p.upvotes,
        "source": p.source,
        "first_seen": seen_at,
    }


def _paper(r: PaperRow) -> Paper:
    return Paper(
        id=r.id,
        title=r.title,
        abstract=r.abstract,
        authors=tuple(r.authors),
        categories=tuple(r.categories),
        published=r.published,
        summary=r.summary,
        keywords=tuple(r.keywords),
        code_url=r.code_url,
        project_url=r.project_url,
        upvotes=r.upvotes,
        source=r.source,
    )
