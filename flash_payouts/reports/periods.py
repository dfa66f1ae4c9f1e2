"""Report periods in a store's time zone: days, ISO weeks (from Monday) and calendar months.

A period runs from local midnight to local midnight, so a day in a zone with daylight saving
lasts 23 or 25 hours twice a year. Its report falls due on the day the period ends, at the
schedule's local time of day (``send_at``, 00:00 by default). A schedule reports the periods
that fall due after it was added; after a stop, the periods that fell due meanwhile (the last
``CATCH_UP`` at most) are due at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ledger.reports import FREQUENCIES

# At most this many missed periods of one schedule are sent after a stop: a week of daily
# reports, seven weeks or seven months. Older ones are left to the exports.
CATCH_UP = 7


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError naming it when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin)"
        ) from None


@dataclass(frozen=True)
class Period:
    frequency: str
    start: date  # inclusive, local
    end: date  # exclusive, local

    def previous(self) -> Period:
        return period_of(self.frequency, self.start - timedelta(days=1))

    def following(self) -> Period:
        return period_of(self.frequency, self.end)

    def bounds(self, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """The period as UTC instants: [start, end)."""
        return local_instant(self.start, time(0), tz), local_instant(self.end, time(0), tz)

    def due_at(self, tz: ZoneInfo, send_at: int) -> datetime:
        """When the period's report falls due (UTC): its end day at ``send_at`` seconds."""
        return local_instant(self.end, seconds_to_time(send_at), tz)

    @property
    def label(self) -> str:
        if self.frequency == "daily":
            return self.start.isoformat()
        if self.frequency == "weekly":
            year, week, _ = self.start.isocalendar()
            last = self.end - timedelta(days=1)
            return f"week {year}-W{week:02d} ({self.start.isoformat()} to {last.isoformat()})"
        return self.start.strftime("%B %Y")


def period_of(frequency: str, day: date) -> Period:
    """The period of ``frequency`` that contains the local ``day``."""
    if frequency == "daily":
        return Period(frequency, day, day + timedelta(days=1))
    if frequency == "weekly":
        monday = day - timedelta(days=day.weekday())
        return Period(frequency, monday, monday + timedelta(days=7))
    if frequency == "monthly":
        first = day.replace(day=1)
        nxt = (first + timedelta(days=32)).replace(day=1)
        return Period(frequency, first, nxt)
    raise ValueError(f"unknown frequency {frequency!r}; choose from {', '.join(FREQUENCIES)}")


def local_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """``day`` at the local time ``at`` in ``tz``, as UTC. A time that the clocks skip (a
    spring-forward gap) is read with the offset before the change, as ``zoneinfo`` does."""
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


def seconds_to_time(seconds: int) -> time:
    return time(seconds // 3600, seconds % 3600 // 60, seconds % 60)


def parse_time_of_day(text: str) -> int:
    """``HH:MM`` or ``HH:MM:SS`` as seconds after midnight; ValueError otherwise."""
    try:
        parsed = time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time of day such as 08:00") from None
    if parsed.tzinfo is not None or parsed.microsecond:
        raise ValueError(f"{text!r} is not a time of day such as 08:00")
    return parsed.hour * 3600 + parsed.minute * 60 + parsed.second


def latest_due(frequency: str, tz: ZoneInfo, send_at: int, now: datetime) -> Period:
    """The most recent period whose report is due at ``now``."""
    period = period_of(frequency, now.astimezone(tz).date())
    while period.due_at(tz, send_at) > now:
        period = period.previous()
    return period


def due_periods(
    frequency: str,
    tz: ZoneInfo,
    send_at: int,
    *,
    since: datetime,
    now: datetime,
    catch_up: int = CATCH_UP,
) -> list[Period]:
    """The periods due at ``now`` that fell due after ``since`` (the schedule's creation),
    oldest first, at most ``catch_up`` of them."""
    found: list[Period] = []
    period = latest_due(frequency, tz, send_at, now)
    while len(found) < catch_up and period.due_at(tz, send_at) > since:
        found.append(period)
        period = period.previous()
    return found[::-1]
