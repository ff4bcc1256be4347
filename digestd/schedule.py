"""When a digest is due: periods are local dates; pure functions of the subscriber and a clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from digestd.models import Frequency


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def is_digest_day(day: date, frequency: str, weekly_day: int = 0) -> bool:
    """Whether ``day`` (a local date) is one of this schedule's digest days."""
    if frequency == Frequency.WEEKDAYS:
        return day.weekday() < 5
    if frequency == Frequency.WEEKLY:
        return day.weekday() == weekly_day
    return True


def send_moment(day: date, send_time: str, tz: str) -> datetime:
    """The UTC instant of ``send_time`` on local ``day``.

    A time that does not exist that day (skipped by a daylight-saving jump) resolves with the
    offset from before the jump (PEP 495, fold=0), i.e. just after the gap; a repeated time
    resolves to its first occurrence. Either way each local date has exactly one moment, and
    the ledger keys digests by local date, so a DST change neither skips nor doubles one.
    """
    hour, minute = (int(x) for x in send_time.split(":"))
    local = datetime.combine(day, time(hour, minute), tzinfo=zone(tz))
    return local.astimezone(UTC)


def due_period(
    now: datetime, send_time: str, tz: str, frequency: str, weekly_day: int = 0
) -> tuple[date, datetime] | None:
    """The latest period whose send moment is at or before ``now``, with that moment.

    Earlier periods are not returned: after downtime a subscriber gets the current digest,
    not a backlog of stale ones (the ledger records those as expired if they were started).
    """
    today = now.astimezone(zone(tz)).date()
    for back in range(8):
        day = today - timedelta(days=back)
        if not is_digest_day(day, frequency, weekly_day):
            continue
        moment = send_moment(day, send_time, tz)
        if moment <= now:
            return day, moment
    return None
