"""The site's local time: what a time-of-use window, a billing month and an hour of the day mean.

Instants stay timezone-aware UTC everywhere (the clock, Postgres, OCPP); only labels are local:
the hour a tariff window names, the midnight a billing period starts at, the hour of the day and
the weekday history is kept by. A site in a zone with daylight saving time keeps its 16:00-21:00
peak window at 16:00 local all year; counted in UTC it would move by an hour twice a year.
"""

from __future__ import annotations

from datetime import date, datetime
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC_NAME = "UTC"


class UnknownTimezoneError(ValueError):
    pass


@cache
def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` ("Europe/Berlin"); a clear error for a name that is not one."""
    try:
        if name.lower() == "localtime":  # the host's zone, whatever it is: not a site's
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # OSError: a tzdata folder's name ("Europe") reads as a directory, not a zone.
        raise UnknownTimezoneError(f"unknown time zone {name!r} (an IANA name such as 'Europe/Berlin' "
                                   f"or 'UTC')") from exc


def local(when: datetime, tz: str) -> datetime:
    """``when`` on the site's wall clock (a naive ``when`` is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone(UTC_NAME))
    return when.astimezone(zone(tz))


def is_weekend(day: date) -> bool:
    """Saturday or Sunday (of a site's local date): the history kept by day kind splits here."""
    return day.weekday() >= 5


def hour_of_day(when: datetime, tz: str) -> float:
    """Hours since the site's local midnight, as a tariff window counts them."""
    t = local(when, tz)
    return t.hour + t.minute / 60 + t.second / 3600 + t.microsecond / 3.6e9
