"""The store over a real SQLite file: migrations, papers stored once, and ledger claims."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from digestd.errors import InvalidInput, NotFound
from digestd.matcher import Match
from digestd.models import DeliveryStatus, Status
from digestd.paper import Paper
from digestd.store import Store
from digestd.subscribers import make_input
from tests.conftest import POSTGRES

HEAD = sorted(
    p.name[:4]
    for p in (Path(__file__).parent.parent / "digestd" / "migrations" / "versions").glob("0*.py")
)[-1]

T0 = datetime(2026, 8, 14, 8, 0, tzinfo=UTC)
DAY = date(2026, 8, 14)
LEASE = timedelta(minutes=10)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


def add(store: Store, email: str = "a@example.org") -> int:
    sub = store.add_subscriber(make_input(email, topics=["x"]), status=Status.ACTIVE)
    assert sub.id is not None
    return sub.id


def test_open_migrates_a_new_database_to_the_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    assert store.revision() == HEAD
    tables = set(sa.inspect(store.engine).get_table_names())
    assert {"subscribers", "preferences", "papers", "deliveries", "sent_papers", "feedback",
            "events", "alembic_version"} <= tables  # fmt: skip
    # The migrations build exactly what the models declare: no drift either way.
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
    Store.open(store.url).close()  # migrating again is a no-op


@pytest.mark.skipif(bool(POSTGRES), reason="SQLite only")
def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'new' / 'digestd.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    store.close()


def test_papers_are_stored_once_with_first_seen(store: Store) -> None:
    p = Paper(id="2608.13558", title="OmniScientist", abstract="a", authors=("Jiří",))
    assert store.add_papers([p, p], seen_at=T0) == 1
    later = Paper(id="2608.13558", title="changed", abstract="b")
    assert store.add_papers([later], seen_at=T0 + timedelta(days=6)) == 0
    [(stored, seen)] = store.papers_seen_since(T0 - timedelta(seconds=1))
    assert stored.title == "OmniScientist" and stored.authors == ("Jiří",)
    assert seen == T0 and seen.tzinfo is UTC
    assert store.papers_seen_since(T0) == []


def test_duplicate_address_is_refused(store: Store) -> None:
    add(store, "a@example.org")
    with pytest.raises(InvalidInput, match="already subscribed"):
        add(store, "a@example.org")
    with pytest.raises(NotFound):
        store.set_status("nobody@example.org", Status.PAUSED)


def test_a_claimed_row_is_not_claimed_again_until_its_lease_runs_out(store: Store) -> None:
    sub = add(store)
    first = store.claim(sub, DAY, owner="w1", now=T0, lease=LEASE)
    assert first is not None and first.status == DeliveryStatus.CLAIMED
    assert store.claim(sub, DAY, owner="w2", now=T0 + timedelta(minutes=5), lease=LEASE) is None
    # w1 died: after the lease, another worker takes the row over.
    taken = store.claim(sub, DAY, owner="w2", now=T0 + timedelta(minutes=11), lease=LEASE)
    assert taken is not None and taken.id == first.id and taken.owner == "w2"


def test_terminal_rows_are_never_claimed(store: Store) -> None:
    sub = add(store)
    row = store.claim(sub, DAY, owner="w1", now=T0, lease=LEASE)
    assert row is not None
    p = Paper(id="2608.00001", title="t", abstract="a")
    store.mark_sent(row, [Match(p, 0.9, "why")], reply="250 ok", now=T0)
    assert store.claim(sub, DAY, owner="w2", now=T0 + timedelta(days=1), lease=LEASE) is None
    assert store.sent_paper_ids(sub, ["2608.00001", "2608.00002"]) == {"2608.00001"}
    assert store.last_sent_at(sub) == T0


def test_retry_rows_wait_for_their_time(store: Store) -> None:
    sub = add(store)
    row = store.claim(sub, DAY, owner="w1", now=T0, lease=LEASE)
    assert row is not None
    store.mark_retry(row, reply="451 later", at=T0 + timedelta(minutes=30))
    assert store.claim(sub, DAY, owner="w1", now=T0 + timedelta(minutes=29), lease=LEASE) is None
    again = store.claim(sub, DAY, owner="w1", now=T0 + timedelta(minutes=31), lease=LEASE)
    assert again is not None and again.attempts == 1


def test_concurrent_claims_have_one_winner(store: Store) -> None:
    subs = [add(store, f"s{i}@example.org") for i in range(20)]
    winners: list[tuple[str, int]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        other = Store(store.url)
        for sub in subs:
            if other.claim(sub, DAY, owner=name, now=T0, lease=LEASE) is not None:
                with lock:
                    winners.append((name, sub))
        other.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s for _, s in winners) == subs


def test_bounces_mark_the_subscriber_after_the_limit(store: Store) -> None:
    sub = add(store)
    assert not store.record_bounce(sub, hard=True, reason="554 rejected", limit=3)
    assert not store.record_bounce(sub, hard=False, reason="452 full", limit=3)
    assert not store.record_bounce(sub, hard=True, reason="554 rejected", limit=3)
    assert store.subscriber("a@example.org").status == Status.ACTIVE
    assert store.record_bounce(sub, hard=True, reason="554 rejected", limit=3)
    assert store.subscriber("a@example.org").status == Status.BOUNCED


def test_subscribers_come_in_batches(store: Store) -> None:
    for i in range(7):
        add(store, f"s{i}@example.org")
    store.set_status("s3@example.org", Status.PAUSED)
    batches = list(store.subscribers(status=Status.ACTIVE, batch=3))
    assert [len(b) for b in batches] == [3, 3]
    assert "s3@example.org" not in {s.email for b in batches for s in b}


def test_the_phrases_active_subscribers_hold_most_come_first(store: Store) -> None:
    def sub(email: str, topics: list[str], exclude: list[str] = []) -> None:  # noqa: B006
        data = make_input(email, topics=topics, exclude=exclude, authors=["Ada Lovelace"])
        store.add_subscriber(data, status=Status.ACTIVE)

    sub("a@example.org", ["agents", "world models"], exclude=["robotics"])
    sub("b@example.org", ["agents", "robotics"])
    sub("c@example.org", ["agents", "diffusion"])
    sub("d@example.org", ["protein folding"])
    store.set_status("d@example.org", Status.PAUSED)  # paused: not read for

    # topics and exclusions alike, by how many hold them, then by text; never authors
    assert store.common_phrases(10) == ["agents", "robotics", "diffusion", "world models"]
    assert store.common_phrases(2) == ["agents", "robotics"]


def test_naive_datetimes_are_refused(store: Store) -> None:
    p = Paper(id="2608.00001", title="t", abstract="a")
    with pytest.raises(Exception, match="naive datetime"):
        store.add_papers([p], seen_at=datetime(2026, 8, 14, 8, 0))


def test_a_digest_recorded_by_another_worker_is_not_recorded_twice(store: Store) -> None:
    sub = add(store)
    first = store.claim(sub, DAY, owner="w1", now=T0, lease=LEASE)
    # w1's lease runs out mid-send; w2 takes over, sends and records first.
    second = store.claim(sub, DAY, owner="w2", now=T0 + timedelta(minutes=11), lease=LEASE)
    assert first is not None and second is not None
    p = Paper(id="2608.00001", title="t", abstract="a")
    assert store.mark_sent(second, [Match(p, 0.9, "why")], reply="250 w2", now=T0)
    assert not store.mark_sent(first, [Match(p, 0.9, "why")], reply="250 w1", now=T0)
    row = store.delivery(sub, DAY)
    assert row is not None and row.reply == "250 w2" and row.attempts == 1


def test_instances_started_together_on_a_new_database_all_migrate(database_url: str) -> None:
    # Several `digestd run` started at once against an empty database: each migrates. On
    # PostgreSQL (an advisory lock) and SQLite (a lock file) they take turns, else their
    # CREATE TABLEs collide.
    code = "import sys; from digestd.store import Store; Store.open(sys.argv[1]).close()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, database_url], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    store = Store(database_url)
    try:
        assert store.revision() is not None
    finally:
        store.close()
