"""Fault tests against real processes (issue 4 §6): `digestd run` and the relay as subprocesses.

Time is made short by configuration only (a 1 s tick, retry delays and leases of seconds);
the daemon reads the real clock. Subscribers live in a fixed-offset zone where it is about
noon, so the digest period (a local date) cannot change while a test runs. Every wait polls
with a deadline; every process is killed at teardown. What counts is what the relay accepted
and what the ledger says, never log lines (except that logs must not carry addresses).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from digestd import config as config_mod
from digestd import pipeline, workers
from digestd.config import toml_value
from digestd.models import Status
from digestd.schedule import due_period, send_moment
from digestd.services import Services
from digestd.sources import jsonfile
from digestd.subscribers import make_input
from tests.conftest import HF_DAYS
from tests.daemons import (
    DAY1_IDS,
    DAY2_IDS,
    POOL,
    TOPIC,
    Processes,
    Setup,
    add_subscribers,
    assert_clean_log,
    assert_each_exactly_once,
    by_address,
    emails,
    free_port,
    ledger,
    ledger_rows,
    local_today,
    noon_zone,
    start_daemon,
    start_feed,
    start_relay,
    wait_until,
    write_feed,
)

#: digests in the kill -9 test (issue 4 §6a): enough that the kill lands mid-send (the
#: daemon sends a few hundred a second on two cores; the test takes ~11 s).
KILL_TEST_DIGESTS = 2000


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    db = tmp_path / "digestd.db"
    return Setup(
        tmp=tmp_path,
        db=db,
        db_url=f"sqlite:///{db}",
        feed=write_feed(tmp_path / "feed" / "papers.json", "2026-08-14", DAY1_IDS),
        web_port=free_port(),
    )


# -- (a) kill -9 mid-send ------------------------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "split-send"])
def test_kill_9_while_sending_then_restart(procs: Processes, setup: Setup, processes: int) -> None:
    # Split: more digests than workers.SPLIT_ABOVE, so the daemon hands the send to two send
    # processes; killed, it leaves them orphans, which stop taking work at once (their pipe
    # from it closes) and end after their in-flight digests.
    n = KILL_TEST_DIGESTS if processes == 1 else workers.SPLIT_ABOVE + 500
    relay = start_relay(procs, setup.tmp, "--slow", "0.002")
    tz = noon_zone()
    period = local_today(tz)
    readers = emails(n)
    add_subscribers(setup.db_url, readers, tz)
    cfg = setup.config(relay.port, delivery__processes=processes)

    first = start_daemon(procs, cfg, setup.web_port)
    wait_until(
        lambda: relay.count() >= 300, 300, "sending to be under way", every=0.02, details=first.tail
    )
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(timeout=10) == -signal.SIGKILL
    at_kill = ledger(setup.db, period)
    assert 0 < at_kill["sent"] < n, at_kill
    # At most two chunks per process were claimed (one sent, the next matched meanwhile).
    assert at_kill["claimed"] <= 2 * pipeline.CHUNK * processes, at_kill

    second = start_daemon(procs, cfg, setup.web_port)
    # The dead process's claims are taken over once their 3 s lease has run out.
    wait_until(
        lambda: ledger(setup.db, period)["sent"] == n,
        600,
        "every digest sent",
        every=0.25,
        details=lambda: f" (ledger {ledger(setup.db)})" + second.tail(),
    )
    rc, _ = second.stop(timeout=60)
    assert rc == 0, second.tail()

    assert ledger(setup.db) == {"sent": n}
    accepted = relay.accepted()
    got = by_address(accepted)
    assert set(got) == set(readers), f"{len(set(readers) - set(got))} got nothing"
    twice = {a: ids for a, ids in got.items() if len(ids) > 1}
    # Only a message in flight at the kill, or accepted by the relay and not yet recorded
    # (sent digests are recorded FLUSH at a time), may arrive twice, and then as the same
    # message: the resend carries the same Message-ID.
    assert len(twice) <= pipeline.FLUSH + POOL, twice  # the split's processes share POOL
    for address, ids in twice.items():
        assert len(ids) == 2 and ids[0] == ids[1], (address, ids)
    assert len({ids[0] for ids in got.values()}) == n  # one Message-ID per delivery
    assert len(accepted) == n + len(twice)
    assert_clean_log(first)
    assert_clean_log(second)


# -- (b) relay down at send time, back a few seconds later ----------------------------------


def test_relay_down_then_back(procs: Processes, setup: Setup) -> None:
    n = 50
    port = free_port()  # nothing listens here yet: every connection is refused
    tz = noon_zone()
    period = local_today(tz)
    readers = emails(n)
    add_subscribers(setup.db_url, readers, tz)
    daemon = start_daemon(procs, setup.config(port), setup.web_port)

    # Every digest tried and failed (connection refused) at least once.
    wait_until(
        lambda: len([r for r in ledger_rows(setup.db) if r[3] >= 1]) == n,
        90,
        "every digest to fail once",
        details=daemon.tail,
    )
    time.sleep(3)  # the relay stays down for a few seconds of retries
    assert daemon.proc.poll() is None
    assert ledger(setup.db, period)["sent"] == 0
    relay = start_relay(procs, setup.tmp, port=port)

    wait_until(
        lambda: ledger(setup.db, period)["sent"] == n,
        180,
        "every digest sent",
        details=lambda: f" (ledger {ledger(setup.db)})" + daemon.tail(),
    )
    rc, _ = daemon.stop(timeout=60)
    assert rc == 0
    assert_each_exactly_once(relay.accepted(), readers)
    assert all(attempts >= 2 for _, _, _, attempts, _ in ledger_rows(setup.db))
    assert_clean_log(daemon)


# -- (c) 451 for a tenth of the recipients ---------------------------------------------------


def test_451_for_every_tenth_recipient_is_retried(procs: Processes, setup: Setup) -> None:
    n = 100
    relay = start_relay(procs, setup.tmp, "--refuse-451-every", "10")
    tz = noon_zone()
    period = local_today(tz)
    readers = emails(n)
    add_subscribers(setup.db_url, readers, tz)
    daemon = start_daemon(procs, setup.config(relay.port), setup.web_port)

    wait_until(
        lambda: ledger(setup.db, period)["sent"] == n,
        180,
        "every digest sent",
        details=lambda: f" (ledger {ledger(setup.db)})" + daemon.tail(),
    )
    rc, _ = daemon.stop(timeout=60)
    assert rc == 0
    refused = relay.refused()
    assert len(refused) == n // 10
    assert all(r["reply"].startswith("451 ") for r in refused)
    assert_each_exactly_once(relay.accepted(), readers)
    attempts = {email: a for email, _, _, a, _ in ledger_rows(setup.db)}
    assert {attempts[r["rcpt"]] for r in refused} == {2}
    assert Counter(attempts.values()) == {1: n - n // 10, 2: n // 10}
    assert_clean_log(daemon)


# -- (d) 550 5.1.1: bounced, and nothing the next day ---------------------------------------


def test_550_no_such_user_marks_bounced_and_stops_digests(procs: Processes, setup: Setup) -> None:
    n = 30
    readers = emails(n)
    gone = readers[3::10]  # three addresses that do not exist
    relay = start_relay(procs, setup.tmp, "--refuse-550", ",".join(gone))
    tz = noon_zone()
    day1 = local_today(tz)
    add_subscribers(setup.db_url, readers, tz)
    cfg = setup.config(relay.port)
    daemon = start_daemon(procs, cfg, setup.web_port)

    wait_until(
        lambda: ledger(setup.db, day1) == {"sent": n - 3, "failed": 3},
        180,
        "every digest sent or refused",
        details=lambda: f" (ledger {ledger(setup.db)})" + daemon.tail(),
    )
    rc, _ = daemon.stop(timeout=60)
    assert rc == 0
    assert_clean_log(daemon)

    listed = procs.cli(cfg, "list")
    assert listed.returncode == 0, listed.stderr
    status = dict(line.split("\t")[:2] for line in listed.stdout.splitlines())
    assert {a for a, s in status.items() if s == "bounced"} == set(gone)
    assert {s for a, s in status.items() if a not in gone} == {"active"}

    # The next day: new papers, and a relay that would now accept anything, so a digest to a
    # bounced address would show up instead of being refused again.
    relay.behave(refuse_550=[])
    write_feed(setup.feed, "2026-08-20", DAY2_IDS)
    fetched = procs.cli(cfg, "fetch")
    assert fetched.returncode == 0, fetched.stderr
    day2 = day1 + timedelta(days=1)
    sent = procs.cli(cfg, "send", "--period", day2.isoformat(), "--no-fetch")
    assert sent.returncode == 0, sent.stderr
    assert ledger(setup.db, day2) == {"sent": n - 3}

    got = by_address(relay.accepted())
    assert not set(gone) & set(got)
    assert {a: len(ids) for a, ids in got.items()} == {a: 2 for a in readers if a not in gone}
    assert all(ids[0] != ids[1] for ids in got.values())  # two digests, two Message-IDs


# -- (e) SIGTERM during a send ---------------------------------------------------------------


def test_sigterm_during_send_drains_and_loses_nothing(procs: Processes, setup: Setup) -> None:
    n = 100
    grace = 10.0
    relay = start_relay(procs, setup.tmp, "--slow", "0.05")  # sends are in flight 50 ms each
    tz = noon_zone()
    period = local_today(tz)
    readers = emails(n)
    add_subscribers(setup.db_url, readers, tz)
    cfg = setup.config(relay.port, delivery__shutdown_grace_seconds=grace)
    first = start_daemon(procs, cfg, setup.web_port)

    wait_until(
        lambda: relay.count() >= 25, 180, "sending to be under way", every=0.02, details=first.tail
    )
    rc, took = first.stop(timeout=grace + 10)
    assert rc == 0, first.tail()
    assert took < grace, f"took {took:.1f} s"
    at_stop = ledger(setup.db, period)
    assert 0 < at_stop["sent"] < n, at_stop
    # Every send that started was finished and recorded: no claim left behind, and the
    # relay has exactly what the ledger says was sent.
    assert set(at_stop) == {"sent"}, at_stop
    assert relay.count() == at_stop["sent"]
    assert "did not finish" not in first.log_text()

    second = start_daemon(procs, cfg, setup.web_port)
    wait_until(
        lambda: ledger(setup.db, period)["sent"] == n, 180, "every digest sent", details=second.tail
    )
    rc, _ = second.stop(timeout=60)
    assert rc == 0
    assert_each_exactly_once(relay.accepted(), readers)
    assert_clean_log(first)
    assert_clean_log(second)


def test_sigterm_with_a_hung_send_exits_after_the_grace_period(
    procs: Processes, setup: Setup
) -> None:
    """A send that outlives the grace period does not hold the exit; its claim expires and
    the next start sends it (possibly again, with the same Message-ID)."""
    n = 8
    grace = 1.0
    relay = start_relay(procs, setup.tmp, "--slow", "10")  # every send hangs for 10 s
    tz = noon_zone()
    period = local_today(tz)
    readers = emails(n)
    add_subscribers(setup.db_url, readers, tz)
    cfg = setup.config(relay.port, delivery__shutdown_grace_seconds=grace)
    first = start_daemon(procs, cfg, setup.web_port)
    wait_until(
        lambda: len([e for e in relay.events() if e["event"] == "rcpt"]) == POOL,
        90,
        "sends in flight",
        details=first.tail,
    )
    rc, took = first.stop(timeout=grace + 10)
    assert rc == 0, first.tail()
    assert took < grace + 5, f"took {took:.1f} s"  # not the 10 s of the hung sends
    assert ledger(setup.db, period)["sent"] == 0

    relay.behave(slow=0)
    second = start_daemon(procs, cfg, setup.web_port)
    wait_until(
        lambda: ledger(setup.db, period)["sent"] == n, 180, "every digest sent", details=second.tail
    )
    rc, _ = second.stop(timeout=60)
    assert rc == 0
    got = by_address(relay.accepted())
    assert set(got) == set(readers)
    assert all(len(set(ids)) == 1 for ids in got.values())  # a resend is the same message
    assert_clean_log(second)


# -- (f) the feed answers 500, then garbage, then good data ---------------------------------


def test_feed_500_then_garbage_then_good(procs: Processes, setup: Setup) -> None:
    n = 20
    relay = start_relay(procs, setup.tmp)
    feed = start_feed(procs, setup.tmp, setup.feed, "500")
    tz = noon_zone()
    local = datetime.now(ZoneInfo(tz)) - timedelta(minutes=1)
    period = local.date()
    readers = emails(n)
    # Due a minute ago, and willing to wait half an hour for the day's papers.
    add_subscribers(setup.db_url, readers, tz, send_time=f"{local:%H:%M}")
    cfg = setup.config(
        relay.port,
        sources=[{"type": "hf-daily-papers", "url": f"http://127.0.0.1:{feed.port}"}],
        schedule__wait_minutes=30,
        schedule__fetch_retry_seconds=0.5,
    )
    daemon = start_daemon(procs, cfg, setup.web_port)

    def fetch_error() -> str:
        return str(daemon.get("/readyz").json()["last_fetch_error"])

    wait_until(
        lambda: len(feed.requests()) >= 2 and "HTTP 500" in fetch_error(),
        60,
        "two fetches answered 500",
        details=daemon.tail,
    )
    assert daemon.proc.poll() is None
    assert daemon.get("/healthz").status_code == 200
    # Due, but no papers yet: the digests wait for them.
    wait_until(lambda: ledger(setup.db, period) == {"waiting": n}, 30, "digests waiting")
    feed.mode("garbage")
    wait_until(
        lambda: "not valid JSON" in fetch_error(),
        60,
        "a fetch answered with garbage",
        details=daemon.tail,
    )
    assert daemon.get("/healthz").status_code == 200
    assert ledger(setup.db, period) == {"waiting": n}
    assert relay.count() == 0
    feed.mode("good")

    wait_until(
        lambda: ledger(setup.db, period)["sent"] == n,
        90,
        "every digest sent",
        details=lambda: f" (ledger {ledger(setup.db)})" + daemon.tail(),
    )
    ready = daemon.get("/readyz").json()
    assert ready["last_fetch_error"] == "" and ready["last_fetch_ok"] is not None
    rc, _ = daemon.stop(timeout=60)
    assert rc == 0
    assert_each_exactly_once(relay.accepted(), readers)

    # Retried with backoff: each gap between fetches at least doubles (0.5 s, 1 s, 2 s, …).
    asked = [r for r in feed.requests() if r["path"].startswith("/api/daily_papers")]
    modes = [r["mode"] for r in asked]
    assert modes[:2] == ["500", "500"] and "garbage" in modes and modes[-1] == "good"
    assert modes.count("good") == 1  # no fetch after the good one: the retries stopped
    gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(asked)]
    for i, gap in enumerate(gaps):
        assert gap >= 0.5 * 2**i * 0.9, gaps
    assert_clean_log(daemon)


# -- several daemons on one database ---------------------------------------------------------


def test_two_daemons_on_one_database_send_each_digest_once(procs: Processes, setup: Setup) -> None:
    """DESIGN: several instances claiming from one database never send a digest twice —
    also when the second starts while the first's tick has been running longer than a lease
    (a big list at the measured send rate takes longer than the default 10 min lease)."""
    n = 300
    relay = start_relay(procs, setup.tmp)
    tz = noon_zone()
    period = local_today(tz)
    readers = emails(n)
    add_subscribers(setup.db_url, readers, tz)
    cfg_a = setup.config(relay.port)
    a = start_daemon(procs, cfg_a, setup.web_port, name="a")
    # B's first tick starts more than a lease (3 s) after A's tick began: 2 s here, then B's
    # start-up and the second until its first tick. Meanwhile a slow relay holds A back, so
    # that A cannot finish alone however long B takes to start.
    wait_until(lambda: relay.count() >= 20, 90, "the first daemon to send", details=a.tail)
    relay.behave(slow=0.5)
    time.sleep(2)
    cfg_b = setup.tmp / "b.toml"
    port_b = free_port()
    cfg_b.write_text(
        cfg_a.read_text(encoding="utf-8").replace(f"port = {setup.web_port}", f"port = {port_b}"),
        encoding="utf-8",
    )
    b = start_daemon(procs, cfg_b, port_b, name="b")

    def owners() -> int:
        with closing(sqlite3.connect(setup.db)) as conn:
            return len(conn.execute("SELECT DISTINCT owner FROM deliveries").fetchall())

    # The relay stays slow (0.5 s a message over 4 connections: A has more than 30 s of work
    # left) until B has claimed, however long B takes to start on a loaded machine; then
    # the rest goes out at a test's pace.
    wait_until(lambda: owners() == 2, 60, "the second daemon to claim", details=b.tail)
    relay.behave(slow=0.1)

    wait_until(
        lambda: ledger(setup.db, period)["sent"] == n,
        300,
        "every digest sent",
        every=0.2,
        details=lambda: f" (ledger {ledger(setup.db)})" + a.tail() + b.tail(),
    )
    for d in (a, b):
        rc, _ = d.stop(timeout=60)
        assert rc == 0
    assert_each_exactly_once(relay.accepted(), readers)
    assert owners() == 2  # both sent their share
    assert_clean_log(a)
    assert_clean_log(b)


# -- (g) daylight-saving changes ---------------------------------------------------------------

# 2026: America/New_York springs forward on 8 March (02:00 → 03:00) and falls back on
# 1 November (02:00 → 01:00); Europe/Berlin on 29 March (02:00 → 03:00) and 25 October
# (03:00 → 02:00). 02:30 falls into each spring gap; 01:30 (New York) and 02:30 (Berlin)
# happen twice in the autumn.
DST_DAYS = {
    ("America/New_York", date(2026, 3, 8)): {"01:30": "06:30", "02:30": "07:30", "03:30": "07:30"},
    ("America/New_York", date(2026, 11, 1)): {"01:30": "05:30", "02:30": "07:30", "03:30": "08:30"},
    ("Europe/Berlin", date(2026, 3, 29)): {"01:30": "00:30", "02:30": "01:30", "03:30": "01:30"},
    ("Europe/Berlin", date(2026, 10, 25)): {"01:30": "-23:30", "02:30": "00:30", "03:30": "02:30"},
}
SEND_TIMES = ("00:00", "01:30", "02:30", "03:30", "23:30")


def _utc(day: date, hhmm: str) -> datetime:
    """``hhmm`` UTC on ``day``; a leading "-" means the evening before."""
    if hhmm.startswith("-"):
        return _utc(day - timedelta(days=1), hhmm[1:])
    h, m = map(int, hhmm.split(":"))
    return datetime(day.year, day.month, day.day, h, m, tzinfo=UTC)


def _minutes(start: datetime, end: datetime, step: int = 1) -> Iterator[datetime]:
    t = start
    while t <= end:
        yield t
        t += timedelta(minutes=step)


@pytest.mark.parametrize(("tz", "day"), list(DST_DAYS), ids=lambda v: str(v))
def test_dst_weekend_each_local_date_due_exactly_once(tz: str, day: date) -> None:
    """Ticks every minute from Friday noon to Tuesday noon (UTC) around the change."""
    start = _utc(day - timedelta(days=2), "12:00")
    end = _utc(day + timedelta(days=2), "12:00")
    schedules = [(t, "daily", 0) for t in SEND_TIMES] + [
        ("02:30", "weekly", 6),  # Sundays, the day of the change
        ("01:30", "weekdays", 0),  # not on the weekend, then Monday after the change
    ]
    for send_time, frequency, weekly_day in schedules:
        first_due: dict[date, datetime] = {}
        last: date | None = None
        for now in _minutes(start, end):
            found = due_period(now, send_time, tz, frequency, weekly_day)
            assert found is not None
            period, moment = found
            assert moment <= now and moment == send_moment(period, send_time, tz)
            # Periods only move forward, a day at a time: none skipped, none come back.
            if last is not None and period != last:
                assert period > last, (send_time, now, period, last)
            last = period
            first_due.setdefault(period, now)
        dated = sorted(first_due)[1:]  # the first one was due before the window opened
        if frequency == "daily":
            assert dated == [dated[0] + timedelta(days=i) for i in range(len(dated))]
            assert day in dated
        elif frequency == "weekly":
            assert dated == [day]
        else:
            assert all(d.weekday() < 5 for d in dated) and day + timedelta(days=1) in dated
        for period in dated:
            # Due at the first tick at or after its one send moment.
            assert first_due[period] == send_moment(period, send_time, tz), (send_time, period)
        if frequency == "daily" and send_time in DST_DAYS[tz, day]:
            assert send_moment(day, send_time, tz) == _utc(day, DST_DAYS[tz, day][send_time])
        moments = [send_moment(d, send_time, tz) for d in dated]
        for a, b in itertools.pairwise(moments):
            # 24 h apart, or 23 / 25 h across the change (never 0, never 2 days).
            assert timedelta(hours=22) <= b - a <= timedelta(hours=26), (send_time, a, b)


def test_dst_changes_through_the_ledger(tmp_path: Path) -> None:
    """The real send tick (pipeline.send_due) with a fixed clock, every 30 minutes from noon
    the day before to noon the day after each of the four 2026 changes: each subscriber's
    local date gets exactly one ledger row, at the first tick at or after its send moment."""
    db = tmp_path / "d.db"
    (tmp_path / "digestd.toml").write_text(
        f"[database]\nurl = {toml_value(f'sqlite:///{db}')}\n"
        f"[outbox]\npath = {toml_value(tmp_path / 'outbox')}\n"
        f"[web]\nsecret_key_file = {toml_value(tmp_path / 'key')}\n"
        "[schedule]\nwait_minutes = 0\n",
        encoding="utf-8",
    )
    config = config_mod.load(tmp_path / "digestd.toml")
    schedules = [
        (tz, t) for tz in ("America/New_York", "Europe/Berlin") for t in ("01:30", "02:30")
    ]
    windows = [
        (_utc(day - timedelta(days=1), "12:00"), _utc(day + timedelta(days=1), "12:00"))
        for _, day in sorted(DST_DAYS, key=lambda k: k[1])
    ]
    step = timedelta(minutes=30)

    async def simulate() -> dict[tuple[str, date], datetime]:
        """(subscriber email, period) → the tick at which its ledger row appeared."""
        appeared: dict[tuple[str, date], datetime] = {}
        async with Services.build(config) as services:
            for i, (tz, t) in enumerate(schedules):
                data = make_input(f"dst{i}@example.net", topics=(TOPIC,), send_time=t, timezone=tz)
                services.store.add_subscriber(data, status=Status.ACTIVE)
            # Subscribed long before: no digest is owed for a period before the subscription.
            with closing(sqlite3.connect(db)) as conn, conn:
                conn.execute(
                    "UPDATE subscribers SET created_at = ?1, confirmed_at = ?1",
                    ("2025-01-01 00:00:00.000000",),
                )
            services.store.add_papers(
                jsonfile.load(HF_DAYS / "2026-08-14.json"), seen_at=windows[0][0] - step
            )
            for start, end in windows:
                now = start
                while now <= end:
                    await pipeline.send_due(services, now=now)
                    for email, period, _, _, _ in ledger_rows(db):
                        appeared.setdefault((email, date.fromisoformat(period)), now)
                    now += step
        return appeared

    appeared = asyncio.run(simulate())
    for i, (tz, t) in enumerate(schedules):
        email = f"dst{i}@example.net"
        for start, end in windows:
            got = {p: at for (e, p), at in appeared.items() if e == email and start <= at <= end}
            # Exactly the local dates whose send moment falls inside the window, each created
            # at that moment (on the half hour, so a tick), plus the catch-up of the
            # period that was due when the window opened.
            due = {}
            day = (start - timedelta(days=1)).date()
            while day <= end.date() + timedelta(days=1):
                if start < send_moment(day, t, tz) <= end:
                    due[day] = send_moment(day, t, tz)
                day += timedelta(days=1)
            catch_up = {p: at for p, at in got.items() if p not in due}
            assert due and {p: got.get(p) for p in due} == due, (tz, t, start)
            assert list(catch_up.values()) in ([], [start]), (tz, t, start, catch_up)
    # One row per subscriber and date, never a second one: the unique key would refuse it,
    # and the statuses are all final.
    rows = ledger_rows(db)
    assert len(rows) == len(appeared) == len({(r[0], r[1]) for r in rows})
    assert {r[2] for r in rows} <= {"sent", "empty", "expired"}
    assert Counter(r[2] for r in rows)["sent"] == len(list((tmp_path / "outbox").glob("*.eml")))
