"""The delivery ledger in batches: what a send does to the database for many digests at once.

A send of a hundred thousand digests cannot afford several transactions per digest. Here a
chunk of digests is claimed in one transaction, its subscribers' history read in three
queries, and its outcomes recorded in one transaction. Claims are safe across processes: new
rows are inserted claimed (``ON CONFLICT DO NOTHING``: a row another worker inserted first is
theirs), and existing rows are taken over with ``SELECT … FOR UPDATE SKIP LOCKED`` (PostgreSQL;
SQLite has one writer at a time and needs no row locks) and a conditional UPDATE, so two
workers never hold the same digest. `digestd.store` keeps the one-row forms of these
operations for the web, the CLI and the tests.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from digestd.models import Delivery, DeliveryStatus, Feedback, PaperRow, SentPaper, Subscriber

_DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
_SENT = SentPaper.__table__  # type: ignore[attr-defined]
_SUBSCRIBERS = Subscriber.__table__  # type: ignore[attr-defined]
_FEEDBACK = Feedback.__table__  # type: ignore[attr-defined]
_PAPERS = PaperRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery row this worker holds until its lease runs out."""

    id: int
    subscriber_id: int
    period: date
    attempts: int
    message_id: str
    reply: str
    lease_until: datetime
    #: the row was inserted by this claim (no earlier attempt): releasing it deletes it
    fresh: bool
    owner: str = ""


@dataclass(slots=True)
class Outcome:
    """What became of one claimed digest, to be recorded with the others of its chunk."""

    claim: Claim
    status: DeliveryStatus
    reply: str = ""
    #: RETRY / WAITING: when to look again
    at: datetime | None = None
    #: SENT: the papers, in digest order, with their scores
    papers: Sequence[tuple[str, float]] = ()
    message_id: str = ""
    #: FAILED: the relay's reply code (a bounce to count against the subscriber)
    code: int = 0
    #: counted as skipped (the subscriber left), not as a digest outcome
    skipped: bool = False


@dataclass(slots=True)
class History:
    """What a chunk of subscribers received before, for the matcher."""

    #: subscriber → ids of the given papers already sent to them
    sent: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    #: subscriber → (paper id, vote) newest first
    votes: dict[int, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))


_SENT_STATUS = sa.func.coalesce(_DELIVERIES.c.status, "") == DeliveryStatus.SENT.value


def _driver_sql(engine: sa.Engine, sql: str) -> str:
    """``sql``, written with ``?`` placeholders, in the placeholders of the engine's driver."""
    style = engine.dialect.paramstyle
    if style == "qmark":
        return sql
    assert style in ("format", "pyformat"), style
    return sql.replace("?", "%s")


def _claim(row: Any, fresh: bool) -> Claim:
    return Claim(
        row.id, row.subscriber_id, row.period, row.attempts, row.message_id or "",
        row.reply or "", row.lease_until, fresh, row.owner,
    )  # fmt: skip


@functools.cache
def _claim_insert(dialect: str) -> Any:
    """The INSERT of new claimed rows, built once per dialect."""
    insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
    return (
        insert(_DELIVERIES)
        .on_conflict_do_nothing(index_elements=["subscriber_id", "period"])
        # only what the database chose: the rest is what was inserted
        .returning(_DELIVERIES.c.id, _DELIVERIES.c.subscriber_id)
    )


def claim(
    engine: sa.Engine,
    keys: Iterable[tuple[int, date]],
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
) -> list[Claim]:
    """Claim the (subscriber, period) rows given, in one transaction; return those won.

    A row is won when it is new, due for a retry or a second look (``next_attempt_at``
    passed), or claimed under a lease that ran out (its worker died). Rows another worker
    holds, or has locked at this moment, are skipped: they are that worker's to send. (A row
    another worker is inserting in a transaction still open is waited for, briefly, by the
    INSERT, and then not won.)
    """
    by_period: dict[date, list[int]] = defaultdict(list)
    for subscriber_id, period in keys:
        by_period[period].append(subscriber_id)
    until = now + lease
    c = _DELIVERIES.c
    won: list[Claim] = []
    with engine.begin() as conn:
        for period, ids in sorted(by_period.items()):
            rows = [
                {
                    "subscriber_id": i,
                    "period": period,
                    "status": DeliveryStatus.CLAIMED.value,
                    "attempts": 0,
                    "owner": owner,
                    "lease_until": until,
                    "message_id": "",
                    "paper_count": 0,
                    "reply": "",
                    "created_at": now,
                }
                for i in sorted(set(ids))
            ]
            # Parameters as a list (executemany): SQLAlchemy batches them into multi-row
            # INSERTs from one cached statement; .values(rows) compiled a new one each time.
            new = conn.execute(_claim_insert(engine.dialect.name), rows).all()
            won += (Claim(r.id, r.subscriber_id, period, 0, "", "", until, True, owner)
                    for r in new)  # fmt: skip
            inserted = {r.subscriber_id for r in new}
            rest = [i for i in ids if i not in inserted]
            if not rest:
                continue
            due = sa.or_(
                sa.and_(
                    c.status.in_([DeliveryStatus.RETRY.value, DeliveryStatus.WAITING.value]),
                    c.next_attempt_at <= now,
                ),
                sa.and_(c.status == DeliveryStatus.CLAIMED.value, c.lease_until < now),
            )
            free = (
                sa.select(c.id)
                .where(c.subscriber_id.in_(rest), c.period == period, due)
                .with_for_update(skip_locked=True)  # SQLite leaves FOR UPDATE out
            )
            # The conditions again in the UPDATE: on SQLite nothing was locked by the SELECT.
            taken = conn.execute(
                _DELIVERIES.update()
                .where(c.id.in_(free.scalar_subquery()), due)
                .values(status=DeliveryStatus.CLAIMED.value, owner=owner, lease_until=until)
                .returning(*c)
            ).all()
            won += (_claim(r, False) for r in taken)
    won.sort(key=lambda w: w.subscriber_id)
    return won


def release(engine: sa.Engine, claims: Sequence[Claim], *, owner: str, now: datetime) -> None:
    """Give back claims that were never attempted (shutdown, or a lease too far gone to start
    a send in): a row this worker created goes, any other is due again at once."""
    c = _DELIVERIES.c
    mine = sa.and_(c.owner == owner, c.status == DeliveryStatus.CLAIMED.value)
    with engine.begin() as conn:
        if new := [x.id for x in claims if x.fresh]:
            conn.execute(_DELIVERIES.delete().where(c.id.in_(new), mine))
        if old := [x.id for x in claims if not x.fresh]:
            conn.execute(
                _DELIVERIES.update()
                .where(c.id.in_(old), mine)
                .values(status=DeliveryStatus.RETRY.value, next_attempt_at=now, lease_until=None)
            )


def subscribers(engine: sa.Engine, ids: Sequence[int]) -> dict[int, Subscriber]:
    """The subscribers as they are now (an unsubscribe may have landed since the batch was
    read): loaded after the claim, so it takes effect before anything is rendered."""
    if not ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(_SUBSCRIBERS_BY_ID, {"ids": ids}).all()
    return {r.id: Subscriber.model_construct(**r._asdict()) for r in rows}


_SUBSCRIBERS_BY_ID = sa.select(_SUBSCRIBERS).where(
    _SUBSCRIBERS.c.id.in_(sa.bindparam("ids", expanding=True))
)


def last_sent(engine: sa.Engine, ids: Sequence[int]) -> dict[int, datetime]:
    """When each of the subscribers was last sent a digest (absent: never)."""
    if not ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(_LAST_SENT, {"ids": ids})
        return {i: at for i, at in rows if at is not None}


# The statements a send runs for every chunk are built once: building one, with its IN list,
# cost SQLAlchemy more than the database its query.
_LAST_SENT = (
    sa.select(_DELIVERIES.c.subscriber_id, sa.func.max(_DELIVERIES.c.sent_at))
    # coalesce(): not an indexable condition, so the planner takes the index on
    # (subscriber_id, period). SQLite without statistics otherwise picks the one on
    # status and reads every sent row of the table for each chunk: a million-
    # subscriber send slowed down as it went (100 ms a chunk by the half-way mark).
    .where(_DELIVERIES.c.subscriber_id.in_(sa.bindparam("ids", expanding=True)), _SENT_STATUS)
    .group_by(_DELIVERIES.c.subscriber_id)
)


def history(engine: sa.Engine, ids: Sequence[int], paper_ids: Iterable[str]) -> History:
    """Which of ``paper_ids`` each subscriber already had, and their votes (newest first) on
    papers still stored."""
    out = History()
    if not ids:
        return out
    papers = sorted(set(paper_ids))
    with engine.connect() as conn:
        if papers:
            for i, pid in conn.execute(_SENT_OF, {"ids": ids, "papers": papers}):
                out.sent[i].add(pid)
        for i, pid, vote in conn.execute(_VOTES_OF, {"ids": ids}):
            out.votes[i].append((pid, vote))
    return out


_SENT_OF = sa.select(_SENT.c.subscriber_id, _SENT.c.paper_id).where(
    _SENT.c.subscriber_id.in_(sa.bindparam("ids", expanding=True)),
    _SENT.c.paper_id.in_(sa.bindparam("papers", expanding=True)),
)
_VOTES_OF = (
    sa.select(_FEEDBACK.c.subscriber_id, _FEEDBACK.c.paper_id, _FEEDBACK.c.vote)
    .join(_PAPERS, _PAPERS.c.id == _FEEDBACK.c.paper_id)
    .where(_FEEDBACK.c.subscriber_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(_FEEDBACK.c.subscriber_id, _FEEDBACK.c.created_at.desc(), _FEEDBACK.c.id.desc())
)


#: built once: a statement built per flush cost SQLAlchemy more than the database its work
_MARK_SENT = (
    _DELIVERIES.update()
    .where(
        _DELIVERIES.c.id.in_(sa.bindparam("ids", expanding=True)),
        _DELIVERIES.c.status != DeliveryStatus.SENT.value,
    )
    .values(
        status=DeliveryStatus.SENT.value,
        sent_at=sa.bindparam("now"),
        lease_until=None,
        attempts=_DELIVERIES.c.attempts + 1,
    )
    .returning(_DELIVERIES.c.id)
)


def record(engine: sa.Engine, outcomes: Sequence[Outcome], *, now: datetime) -> list[Outcome]:
    """Record a chunk's outcomes in one transaction; return the SENT outcomes that another
    worker had recorded first (its lease ran out mid-send; the relay may have the digest
    twice, with one Message-ID) — those rows are left as that worker wrote them."""
    c = _DELIVERIES.c
    sent = [o for o in outcomes if o.status == DeliveryStatus.SENT]
    others = [o for o in outcomes if o.status != DeliveryStatus.SENT]
    lost: list[Outcome] = []
    with engine.begin() as conn:
        if sent:
            # First the rows we win (locked until commit on PostgreSQL), then their details.
            won = set(
                conn.execute(_MARK_SENT, {"ids": [o.claim.id for o in sent], "now": now}).scalars()
            )
            lost = [o for o in sent if o.claim.id not in won]
            mine = [o for o in sent if o.claim.id in won]
            if mine:
                # Per-row statements at the driver: through SQLAlchemy, building each row's
                # parameters cost more than the database's work (ints and text only here).
                conn.exec_driver_sql(
                    _driver_sql(
                        engine,
                        "UPDATE deliveries SET reply = ?, paper_count = ?, message_id = ? "
                        "WHERE id = ?",
                    ),
                    [(o.reply[:500], len(o.papers), o.message_id, o.claim.id) for o in mine],
                )
                papers = [
                    (o.claim.subscriber_id, pid, o.claim.id, n, score)
                    for o in mine
                    for n, (pid, score) in enumerate(o.papers, 1)
                ]
                if papers:
                    conn.exec_driver_sql(
                        _driver_sql(
                            engine,
                            "INSERT INTO sent_papers "
                            "(subscriber_id, paper_id, delivery_id, position, score) "
                            "VALUES (?, ?, ?, ?, ?) "
                            "ON CONFLICT (subscriber_id, paper_id) DO NOTHING",
                        ),
                        papers,
                    )
        if others:
            # Only rows still claimed by the worker that decided: one whose lease ran out may
            # have been taken over, and even sent, by another worker meanwhile.
            conn.execute(
                _DELIVERIES.update()
                .where(
                    c.id == sa.bindparam("b_id"),
                    c.owner == sa.bindparam("b_owner"),
                    c.status == DeliveryStatus.CLAIMED.value,
                )
                .values(
                    status=sa.bindparam("b_status"),
                    reply=sa.bindparam("b_reply"),
                    next_attempt_at=sa.bindparam("b_at"),
                    lease_until=None,
                    attempts=sa.bindparam("b_attempts"),
                    message_id=sa.bindparam("b_message_id"),
                ),
                [
                    {
                        "b_id": o.claim.id,
                        "b_owner": o.claim.owner,
                        "b_status": o.status.value,
                        "b_reply": o.reply[:500],
                        "b_at": o.at,
                        "b_message_id": o.message_id or o.claim.message_id,
                        "b_attempts": o.claim.attempts
                        + (o.status in (DeliveryStatus.RETRY, DeliveryStatus.FAILED)),
                    }
                    for o in others
                ],
            )
    return lost
