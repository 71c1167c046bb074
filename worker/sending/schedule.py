"""Local wall-clock times of scheduled sends and weekly slots, and the UTC instants they mean.

Pure: no database. Zones are IANA names read with ``zoneinfo`` (PEP 615). A time is given in
local time and stored as a UTC instant plus the zone's name. Around a daylight-saving change a
local time may not exist (the clocks jump over it) or exist twice (the clocks go back); a
one-off send at such a time is refused, because either guess could mail readers an hour off.
A weekly slot computes each firing in local time first, so "monday 09:00" stays 09:00 local
across the change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class ScheduleError(ValueError):
    """A time, zone or slot that cannot be used; the message says what and why."""


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (e.g. ``Europe/Minsk``); raises ``ScheduleError`` if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r} (an IANA name, e.g. Europe/Minsk)"
        ) from None


def _exact(day: date, at: time, tz: ZoneInfo) -> datetime:
    """``day`` at ``at`` in ``tz`` as an aware datetime; raises ``ScheduleError`` when that local
    time does not exist or exists twice (a daylight-saving change)."""
    first = datetime.combine(day, at, tzinfo=tz)
    second = first.replace(fold=1)
    if first.utcoffset() != second.utcoffset():
        # fold changes the offset only at a transition: either a gap or an overlap
        back = first.astimezone(UTC).astimezone(tz)
        if back.replace(tzinfo=None) != first.replace(tzinfo=None):
            raise ScheduleError(
                f"{day} {at:%H:%M} does not exist in {tz.key}: the clocks jump over it "
                "(daylight saving); choose another time"
            )
        raise ScheduleError(
            f"{day} {at:%H:%M} happens twice in {tz.key}: the clocks go back over it "
            "(daylight saving); choose another time"
        )
    return first


def local_instant(text: str, zone_name: str) -> datetime:
    """``"2024-07-15 09:00"`` in ``zone_name`` → the aware UTC instant.

    Raises ``ScheduleError`` for a malformed text, an unknown zone, or a local time that does
    not exist or is ambiguous in that zone.
    """
    tz = zone(zone_name)
    try:
        naive = datetime.strptime(text.strip(), "%Y-%m-%d %H:%M")
    except ValueError:
        raise ScheduleError(f"time {text!r}: expected YYYY-MM-DD HH:MM") from None
    return _exact(naive.date(), naive.time(), tz).astimezone(UTC)


@dataclass(frozen=True)
class WeeklyTime:
    """A weekday and a local time: ``weekday`` 0 = Monday (``datetime.weekday``), ``at`` HH:MM."""

    weekday: int
    at: time

    @classmethod
    def parse(cls, text: str) -> WeeklyTime:
        """``"monday 09:00"`` (case-insensitive; a day's first three letters do); raises
        ``ScheduleError`` otherwise."""
        match = re.fullmatch(r"\s*([A-Za-z]+)\s+(\d{1,2}):(\d{2})\s*", text)
        days = [
            d for d in WEEKDAYS if match and len(match[1]) >= 3 and d.startswith(match[1].lower())
        ]
        if not match or len(days) != 1 or int(match[2]) > 23 or int(match[3]) > 59:
            raise ScheduleError(f"slot {text!r}: expected a weekday and HH:MM, e.g. 'monday 09:00'")
        return cls(WEEKDAYS.index(days[0]), time(int(match[2]), int(match[3])))

    def __str__(self) -> str:
        return f"{WEEKDAYS[self.weekday]} {self.at:%H:%M}"

    def next_after(self, after: datetime, zone_name: str) -> datetime:
        """The first firing strictly after the aware instant ``after``, as a UTC instant.

        Computed in local time: the next local date with this weekday at this time, then
        converted. A local time the clocks jump over fires one hour later by the wall clock
        (fold 0 reads it with the offset before the jump); a time that happens twice fires at
        its first occurrence.
        """
        tz = zone(zone_name)
        local = after.astimezone(tz)
        day = local.date() + timedelta(days=(self.weekday - local.weekday()) % 7)
        for _ in range(3):
            candidate = datetime.combine(day, self.at, tzinfo=tz)
            instant = candidate.astimezone(UTC)
            if instant > after:
                return instant
            day += timedelta(days=7)
        raise AssertionError("unreachable: a week later is always after")


def describe(instant: datetime, zone_name: str | None) -> str:
    """``"2024-07-15 09:00 Europe/Minsk (06:00 UTC)"`` for listings."""
    utc = instant.astimezone(UTC)
    if not zone_name or zone_name == "UTC":
        return f"{utc:%Y-%m-%d %H:%M} UTC"
    local = instant.astimezone(zone(zone_name))
    return f"{local:%Y-%m-%d %H:%M} {zone_name} ({utc:%Y-%m-%d %H:%M} UTC)"
