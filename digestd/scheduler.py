"""APScheduler wiring only: one fetch job and one send tick, never a job per subscriber."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from digestd.config import ScheduleConfig

Job = Callable[[], Awaitable[None]]


class Scheduler:
    """The daemon's two jobs. The ledger, not this schedule, decides what is due: a missed or
    late run only delays work to the next tick, and a crash mid-job is redone by the ledger
    (APScheduler advances next_run_time before a job runs and never retries it)."""

    def __init__(self, fetch: Job, tick: Job) -> None:
        self._fetch, self._tick = fetch, tick
        self._sched = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={
                # A late or piled-up job runs once, never in parallel with itself, and is not
                # silently dropped for being more than the default 1 s late.
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": 3600,
            },
        )

    def start(self, cfg: ScheduleConfig) -> None:
        now = datetime.now(UTC)
        # Fetch at start-up too: a daemon started after downtime catches up at once.
        self._sched.add_job(
            self._fetch,
            _cron(cfg),
            id="fetch",
            name="fetch papers",
            replace_existing=True,
            next_run_time=now,
        )
        self._sched.add_job(
            self._tick,
            _interval(cfg),
            id="send",
            name="send due digests",
            replace_existing=True,
            next_run_time=now + timedelta(seconds=1),
        )
        self._sched.start()

    def retry_fetch(self, delay: timedelta) -> None:
        """One extra fetch after ``delay`` (the feed failed); replaces a pending retry."""
        self._sched.add_job(
            self._fetch,
            DateTrigger(datetime.now(UTC) + delay),
            id="fetch-retry",
            name="retry fetch",
            replace_existing=True,
        )

    def reschedule(self, cfg: ScheduleConfig) -> None:
        """New triggers after a reload, keeping a run that is already due sooner.

        reschedule_job() would recompute the next run from the new trigger alone, so a
        reload right after start-up would drop the start-up fetch until the next cron time.
        """
        now = datetime.now(UTC)
        for job_id, trigger in (("fetch", _cron(cfg)), ("send", _interval(cfg))):
            job = self._sched.get_job(job_id)
            upcoming = [trigger.get_next_fire_time(None, now)]
            if job is not None and job.next_run_time is not None:
                upcoming.append(job.next_run_time)
            soonest = min(t for t in upcoming if t is not None)
            self._sched.modify_job(job_id, trigger=trigger, next_run_time=soonest)

    @property
    def running(self) -> bool:
        return bool(self._sched.running)

    def shutdown(self) -> None:
        # wait=False: the daemon has already drained its own work (the asyncio executor
        # would cancel a running coroutine job, not wait for it).
        if self._sched.running:
            self._sched.shutdown(wait=False)


def _cron(cfg: ScheduleConfig) -> CronTrigger:
    return CronTrigger.from_crontab(cfg.fetch_cron, timezone=UTC)


def _interval(cfg: ScheduleConfig) -> IntervalTrigger:
    return IntervalTrigger(seconds=cfg.tick_seconds, timezone=UTC)
