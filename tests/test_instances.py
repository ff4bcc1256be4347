"""Several `digestd run` processes on one PostgreSQL database share the work (the issue's
acceptance test): each digest goes out once, one instance at a time fetches, all serve the web.

Three real daemons, a real recording SMTP relay and a real HTTP feed server run as
subprocesses; subscribers come in through the bulk import path. What counts is what the
relay accepted, what the feed server was asked and what the ledger says.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import POSTGRES
from tests.daemons import (
    DAY1_IDS,
    Processes,
    Setup,
    add_subscribers,
    assert_clean_log,
    assert_each_exactly_once,
    by_address,
    emails,
    free_port,
    local_today,
    noon_zone,
    spawn_daemon,
    start_feed,
    start_relay,
    wait_healthy,
    wait_until,
    write_feed,
)

READERS = 5000
INSTANCES = 3
SKIPPING = "another instance is fetching now"

pytestmark = pytest.mark.skipif(
    not POSTGRES,
    reason="several instances share one PostgreSQL database (row locks, advisory lock); "
    "set DIGESTD_TEST_POSTGRES to run",
)


class Ledger:
    """Reads the shared database the daemons write, as an operator's psql would."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)

    def statuses(self, period: date | None = None) -> Counter[str]:
        """Delivery rows by status (of one period, or all)."""
        sql, args = "SELECT status, count(*) FROM deliveries", {}
        if period is not None:
            sql, args = sql + " WHERE period = :period", {"period": period}
        with self.engine.connect() as conn:
            return Counter(dict(conn.execute(sa.text(sql + " GROUP BY 1"), args).all()))

    def sent_by_owner(self) -> Counter[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT owner, count(*) FROM deliveries WHERE status = 'sent' GROUP BY 1")
            )
            return Counter(dict(rows.all()))

    def message_ids(self) -> dict[str, str]:
        """Address → Message-ID recorded for its sent digest."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT s.email, d.message_id FROM deliveries d "
                    "JOIN subscribers s ON s.id = d.subscriber_id WHERE d.status = 'sent'"
                )
            )
            return dict(rows.all())  # type: ignore[arg-type]

    def papers(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM papers")).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def db(database_url: str) -> Iterator[Ledger]:
    # No schema yet: the three daemons migrate the new database themselves, at once.
    ledger = Ledger(database_url)
    try:
        yield ledger
    finally:
        ledger.close()


def hold_until_opened(gate: Path, data: bytes) -> threading.Thread:
    """Feed ``data`` through the FIFO ``gate``: the feed server's read of its data file blocks
    until this runs, so the fetch that asked holds the fetch lock until then."""

    def write() -> None:
        with gate.open("wb") as f:
            f.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_three_instances_share_5000_digests_each_sent_once(
    procs: Processes, tmp_path: Path, database_url: str, db: Ledger
) -> None:
    """The issue: "Any number of `digestd run` processes pointed at one PostgreSQL database
    share the work [...] A test runs 3 processes against 5,000 subscribers and counts at the
    SMTP server: zero duplicates, zero missing." Also: one instance fetched (the others
    skipped while it held the fetch lock), and every instance served the web meanwhile."""
    t_start = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - t_start, 1)

    relay = start_relay(procs, tmp_path)
    # The feed's data file is a FIFO: the one fetch that reaches the feed server hangs, with
    # the fetch lock held, until the test has seen the other instances skip their fetch.
    papers = write_feed(tmp_path / "papers.json", "2026-08-14", DAY1_IDS).read_bytes()
    gate = tmp_path / "feed-gate.json"
    os.mkfifo(gate)
    feed = start_feed(procs, tmp_path, gate, "good")
    # One key for every instance, as an operator deploys it: a link signed by one opens on all.
    (tmp_path / "secret_key").write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
    ports = [free_port() for _ in range(INSTANCES)]
    setup = Setup(
        tmp=tmp_path,
        db=tmp_path / "unused.db",  # the fault tests' SQLite file; PostgreSQL here
        db_url=database_url,
        feed=tmp_path / "papers.json",
        web_port=ports[0],
    )
    configs = []
    for i, port in enumerate(ports):
        path = setup.config(
            relay.port,
            sources=[{"type": "hf-daily-papers", "url": f"http://127.0.0.1:{feed.port}"}],
            web__port=port,
            # One send process each, so that the ledger's owners are the instances themselves
            # (a send split over processes is tests/test_workers.py's).
            delivery__processes=1,
        )
        configs.append(path.rename(tmp_path / f"instance-{i}.toml"))
    lap("relay, feed server, configs")

    daemons = [
        spawn_daemon(procs, cfg, port, name=f"instance-{i}")
        for i, (cfg, port) in enumerate(zip(configs, ports, strict=True))
    ]
    for d in daemons:
        wait_healthy(d)
    lap("3 daemons serving")

    # -- one instance at a time fetches -------------------------------------------------------
    def logs() -> str:
        return "".join(d.tail() for d in daemons)

    wait_until(
        lambda: (
            len(feed.requests()) == 1
            and sum(SKIPPING in d.log_text() for d in daemons) == INSTANCES - 1
        ),
        60,
        "one instance to fetch while the others skip",
        details=lambda: f" (feed requests {feed.requests()})" + logs(),
    )
    writer = hold_until_opened(gate, papers)
    wait_until(lambda: db.papers() == len(DAY1_IDS), 30, "the papers stored", details=logs)
    writer.join(timeout=10)
    assert not writer.is_alive()
    lap("fetched once")

    # -- 5,000 readers through the import path, due now -------------------------------------
    tz = noon_zone()
    period = local_today(tz)
    readers = emails(READERS)
    add_subscribers(database_url, readers, tz)
    lap("5000 subscribers imported")

    health: list[tuple[int, int, float]] = []  # (port, status, seconds) during the send
    pages: list[tuple[int, int]] = []

    def all_sent() -> bool:
        counts = db.statuses()
        if 0 < counts["sent"] < READERS:
            for d in daemons:
                asked = time.monotonic()
                status = d.get("/healthz").status_code
                health.append((d.port, status, time.monotonic() - asked))
                if len(health) <= INSTANCES:
                    pages.append((d.port, d.get("/").status_code))
        return counts["sent"] == READERS

    wait_until(
        all_sent,
        180,
        f"{READERS} digests sent",
        every=0.25,
        details=lambda: f" (ledger {db.statuses()}, relay {relay.count()})" + logs(),
    )
    lap("all sent")
    for d in daemons:
        rc, _ = d.stop(timeout=30)
        assert rc == 0, d.tail()
    lap("all stopped")

    # -- zero duplicates, zero missing, at the SMTP server -----------------------------------
    accepted = relay.accepted()
    assert_each_exactly_once(accepted, readers)
    assert len(accepted) == READERS
    # Each reader's one message is the one the ledger recorded for them.
    recorded = db.message_ids()
    got = {address: ids[0] for address, ids in by_address(accepted).items()}
    assert got == recorded
    assert db.statuses(period) == db.statuses() == {"sent": READERS}
    assert all(m["mail_from"] == "digest@example.org" for m in accepted)

    # -- the work was shared --------------------------------------------------------------------
    by_owner = db.sent_by_owner()
    pids = {str(d.proc.pid) for d in daemons}
    assert {owner.rpartition(":")[2] for owner in by_owner} <= pids, by_owner
    assert len(by_owner) >= 2, f"one instance sent everything: {by_owner}"

    # -- the web front answered on every instance while they sent --------------------------------
    assert {port for port, _, _ in health} == set(ports), health
    assert {status for _, status, _ in health} == {200}, health
    assert sorted(pages) == sorted((port, 200) for port in ports), pages

    # -- fetched by one instance only ----------------------------------------------------------
    asked = feed.requests()
    assert [r["path"].partition("?")[0] for r in asked] == ["/api/daily_papers"], asked
    fetched = [d for d in daemons if "fetched hf-daily-papers" in d.log_text()]
    skipped = [d for d in daemons if SKIPPING in d.log_text()]
    assert len(fetched) == 1 and len(skipped) == INSTANCES - 1
    assert {d.port for d in fetched}.isdisjoint(d.port for d in skipped)
    for d in daemons:
        assert_clean_log(d)
        assert "another worker recorded this digest first" not in d.log_text(), d.tail()

    # Measured figures, shown with -s (runtime budget: ~90 s on two cores).
    latencies = sorted(s for _, _, s in health)
    report = {
        "seconds": timings,
        "sent_by_instance": {
            f"instance-{i}": sum(n for o, n in by_owner.items() if o.endswith(f":{d.proc.pid}"))
            for i, d in enumerate(daemons)
        },
        "healthz_polls": len(latencies),
        "healthz_p50_p90_max_s": [
            round(latencies[len(latencies) // 2], 3),
            round(latencies[len(latencies) * 9 // 10], 3),
            round(latencies[-1], 3),
        ],
    }
    print(json.dumps(report))
