"""SQLModel tables: subscribers, preferences, papers, the delivery ledger, sent papers, events."""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite (no zones) and PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; digestd stores aware UTC datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


class Status(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    PAUSED = "paused"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"


class Frequency(StrEnum):
    DAILY = "daily"
    WEEKDAYS = "weekdays"
    WEEKLY = "weekly"


class PrefKind(StrEnum):
    TOPIC = "topic"
    EXCLUDE = "exclude"
    AUTHOR = "author"
    CATEGORY = "category"


class DeliveryStatus(StrEnum):
    CLAIMED = "claimed"  # a worker holds it until lease_until
    RETRY = "retry"  # temporary failure; try again at next_attempt_at
    WAITING = "waiting"  # nothing matched yet; look again at next_attempt_at (day's papers)
    SENT = "sent"  # the relay (or outbox) accepted it: terminal
    EMPTY = "empty"  # nothing matched this period: terminal, nothing sent
    FAILED = "failed"  # permanent failure (bounce): terminal
    EXPIRED = "expired"  # retried until too old to be useful: terminal


TERMINAL = frozenset(
    {DeliveryStatus.SENT, DeliveryStatus.EMPTY, DeliveryStatus.FAILED, DeliveryStatus.EXPIRED}
)


def _dt(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


class Subscriber(SQLModel, table=True):
    __tablename__ = "subscribers"

    id: int | None = Field(default=None, primary_key=True)
    #: normalised by email-validator; unique
    email: str = Field(max_length=320, unique=True, index=True)
    status: str = Field(default=Status.PENDING, max_length=16, index=True)
    send_time: str = Field(default="07:00", max_length=5)  # local HH:MM
    timezone: str = Field(default="UTC", max_length=64)
    frequency: str = Field(default=Frequency.DAILY, max_length=16)
    weekly_day: int = 0  # 0 = Monday, used by weekly
    max_papers: int = 10
    min_score: float = 0.35
    #: bumped to invalidate every signed link issued before
    token_version: int = 0
    #: send a short "nothing matched today" note instead of silence
    empty_note: bool = False
    #: last confirmation / manage-link email, to resend at most once per interval
    notice_sent_at: datetime | None = _dt(default=None, nullable=True)
    created_at: datetime = _dt(default_factory=_now)
    confirmed_at: datetime | None = _dt(default=None, nullable=True)


class Preference(SQLModel, table=True):
    __tablename__ = "preferences"
    __table_args__ = (sa.UniqueConstraint("subscriber_id", "kind", "value"),)

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(
        sa_column=sa.Column(
            sa.Integer,
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            index=True,
            nullable=False,
        )
    )
    kind: str = Field(max_length=16)
    value: str = Field(max_length=200)


class PaperRow(SQLModel, table=True):
    __tablename__ = "papers"

    id: str = Field(primary_key=True, max_length=32)  # versionless arXiv id
    title: str
    abstract: str
    authors: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    categories: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    published: datetime | None = _dt(default=None, nullable=True)
    summary: str = ""
    keywords: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    code_url: str = ""
    project_url: str = ""
    upvotes: int = 0
    source: str = Field(default="", max_length=32)
    #: when digestd first stored it: decides which digests it is new for
    first_seen: datetime = _dt(default_factory=_now, index=True)


class PaperMeaning(SQLModel, table=True):
    """A paper's sentence embedding under one model (the semantic extra): worked out once,
    when the paper is fetched, and read with the papers for every send."""

    __tablename__ = "paper_meanings"

    paper_id: str = Field(
        sa_column=sa.Column(
            sa.String(32), sa.ForeignKey("papers.id", ondelete="CASCADE"), primary_key=True
        )
    )
    model: str = Field(primary_key=True, max_length=200)
    #: float32, unit length, as numpy's tobytes() writes it
    vector: bytes = Field(sa_type=sa.LargeBinary)


class Delivery(SQLModel, table=True):
    """The ledger: one row per subscriber and digest period, the truth of what was sent."""

    __tablename__ = "deliveries"
    __table_args__ = (sa.UniqueConstraint("subscriber_id", "period"),)

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=False
        )
    )
    period: date = Field(index=True)
    status: str = Field(default=DeliveryStatus.CLAIMED, max_length=16, index=True)
    attempts: int = 0
    owner: str = Field(default="", max_length=64)
    lease_until: datetime | None = _dt(default=None, nullable=True)
    next_attempt_at: datetime | None = _dt(default=None, nullable=True)
    message_id: str = Field(default="", max_length=255)
    paper_count: int = 0
    #: the last SMTP reply or reason, one line
    reply: str = ""
    created_at: datetime = _dt(default_factory=_now)
    sent_at: datetime | None = _dt(default=None, nullable=True)


class SentPaper(SQLModel, table=True):
    __tablename__ = "sent_papers"

    subscriber_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
        )
    )
    paper_id: str = Field(primary_key=True, max_length=32)
    delivery_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False
        )
    )
    position: int = 0  # 1-based number in that digest
    score: float = 0.0


class Feedback(SQLModel, table=True):
    __tablename__ = "feedback"

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(
        sa_column=sa.Column(
            sa.Integer,
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            index=True,
            nullable=False,
        )
    )
    paper_id: str = Field(max_length=32)
    vote: int  # +1 more like this, -1 less like this
    created_at: datetime = _dt(default_factory=_now)


class Event(SQLModel, table=True):
    """Bounces, complaints, unsubscribes and other subscription events, with time and reason."""

    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    #: kept NULL after a subscriber is deleted, so counts survive
    subscriber_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.Integer,
            sa.ForeignKey("subscribers.id", ondelete="SET NULL"),
            index=True,
            nullable=True,
        ),
    )
    kind: str = Field(max_length=32)  # bounce | soft-bounce | unsubscribe | subscribe | …
    reason: str = ""
    created_at: datetime = _dt(default_factory=_now)
