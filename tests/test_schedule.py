"""When digests are due: local send times, frequencies, and catch-up after downtime."""

from __future__ import annotations

from datetime import UTC, date, datetime

from digestd.schedule import due_period, is_digest_day, send_moment


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_send_moment_is_local_time_in_utc() -> None:
    assert send_moment(date(2026, 7, 1), "07:30", "Europe/Berlin") == utc(2026, 7, 1, 5, 30)
    assert send_moment(date(2026, 1, 5), "07:30", "Europe/Berlin") == utc(2026, 1, 5, 6, 30)
    assert send_moment(date(2026, 1, 5), "23:00", "Asia/Tokyo") == utc(2026, 1, 5, 14, 0)


def test_due_once_the_local_time_has_passed() -> None:
    before = utc(2026, 7, 1, 5, 29)
    at = utc(2026, 7, 1, 5, 30)
    assert due_period(before, "07:30", "Europe/Berlin", "daily") == (
        date(2026, 6, 30), utc(2026, 6, 30, 5, 30),
    )  # fmt: skip
    assert due_period(at, "07:30", "Europe/Berlin", "daily") == (date(2026, 7, 1), at)


def test_a_local_date_ahead_of_utc_is_its_own_period() -> None:
    # 2026-07-01 23:30 UTC is already July 2 in Tokyo, where 07:00 passed at 22:00 UTC.
    found = due_period(utc(2026, 7, 1, 23, 30), "07:00", "Asia/Tokyo", "daily")
    assert found == (date(2026, 7, 2), utc(2026, 7, 1, 22, 0))


def test_weekdays_and_weekly() -> None:
    saturday = utc(2026, 8, 22, 12, 0)
    assert due_period(saturday, "07:00", "UTC", "weekdays") == (
        date(2026, 8, 21), utc(2026, 8, 21, 7, 0),
    )  # fmt: skip
    assert is_digest_day(date(2026, 8, 24), "weekly", 0)  # a Monday
    assert not is_digest_day(date(2026, 8, 25), "weekly", 0)
    found = due_period(saturday, "07:00", "UTC", "weekly", 2)  # Wednesdays
    assert found == (date(2026, 8, 19), utc(2026, 8, 19, 7, 0))


def test_after_downtime_only_the_latest_period_is_due() -> None:
    # Down for three days: the current digest is due, not a backlog.
    assert due_period(utc(2026, 8, 20, 9, 0), "07:00", "UTC", "daily") == (
        date(2026, 8, 20), utc(2026, 8, 20, 7, 0),
    )  # fmt: skip


async def test_a_reload_keeps_a_run_that_is_due_sooner() -> None:
    from digestd.config import ScheduleConfig
    from digestd.scheduler import Scheduler

    async def job() -> None:
        return None

    sched = Scheduler(job, job)
    sched.start(ScheduleConfig(fetch_cron="15 3 * * *", tick_seconds=60))
    sched._sched.pause()  # nothing runs while we look
    before = sched._sched.get_job("fetch").next_run_time
    sched.reschedule(ScheduleConfig(fetch_cron="15 4 * * *", tick_seconds=30))
    after = sched._sched.get_job("fetch")
    # The start-up fetch (due now) survives; later runs follow the new cron.
    assert after.next_run_time == before
    assert str(after.trigger) == "cron[month='*', day='*', day_of_week='*', hour='4', minute='15']"
    sched.shutdown()
