"""Time, and the one encoding timestamps have in the database.

All instants are stored as integer microseconds since the Unix epoch, UTC, and compared only
with each other (the system in the migration guide compared ISO text with SQLite's own
``datetime('now')`` format, so tasks queued today never ran). The API takes and returns
timezone-aware ``datetime`` objects and refuses naive ones.

The clock is injectable: the queue and the worker ask a :class:`Clock` for the time, so tests
move time forward with :class:`FakeClock` instead of sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

from .errors import ValidationError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The first and last instants a datetime can hold, in microseconds since the epoch (UTC).
MIN_US = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
MAX_US = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


class Clock(Protocol):
    """What the queue and the worker need to know about time."""

    def now_us(self) -> int:
        """Wall-clock time as integer microseconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards (for durations)."""
        ...


class SystemClock:
    """The real clock: ``time.time_ns`` for instants, ``time.monotonic`` for durations."""

    def now_us(self) -> int:
        """Wall-clock microseconds since the epoch."""
        return time.time_ns() // 1000

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to. Thread-safe.

    :param start: the initial instant (aware datetime); defaults to 2030-01-01 UTC.
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2030, 1, 1, tzinfo=UTC)
        self._now = to_us(start, "start")
        self._mono = 1000.0
        self._lock = threading.Lock()

    def now_us(self) -> int:
        """The fake wall-clock instant, in microseconds since the epoch."""
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        """The fake monotonic clock (moves only with :meth:`advance`)."""
        with self._lock:
            return self._mono

    def now(self) -> datetime:
        """The current fake instant as an aware datetime."""
        return from_us(self.now_us())

    def advance(self, seconds: float = 0.0, **kwargs: float) -> datetime:
        """Move time forward by ``seconds`` (plus ``timedelta`` keyword arguments)."""
        delta = timedelta(seconds=seconds, **kwargs)
        if delta < timedelta(0):
            raise ValidationError(
                "seconds", seconds, "a FakeClock only moves forward", "use set() to jump"
            )
        with self._lock:
            self._now += delta // timedelta(microseconds=1)
            self._mono += delta.total_seconds()
        return self.now()

    def set(self, instant: datetime) -> None:
        """Jump the wall clock to ``instant`` (backwards too); the monotonic clock is unchanged."""
        with self._lock:
            self._now = to_us(instant, "instant")


def utcnow() -> datetime:
    """The current instant as an aware UTC datetime."""
    return datetime.now(UTC)


def to_us(value: datetime, field: str) -> int:
    """Encode an aware datetime as integer microseconds since the epoch.

    :raises ValidationError: for naive datetimes or anything that is not a datetime.
    """
    if not isinstance(value, datetime):
        raise ValidationError(
            field, value, "must be a datetime", "pass an aware datetime, e.g. datetime.now(UTC)"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            field,
            value,
            "is a naive datetime (no timezone), so the instant it means is ambiguous",
            "pass an aware datetime, e.g. datetime.now(timezone.utc) or dt.replace(tzinfo=...)",
        )
    us = (value - _EPOCH) // timedelta(microseconds=1)
    if not MIN_US <= us <= MAX_US:
        raise ValidationError(
            field,
            value,
            "falls outside the years 1 to 9999 once converted to UTC, which no datetime "
            "can represent",
            "pass an instant between 0001-01-01 and 9999-12-31 UTC",
        )
    return us


def from_us(value: int) -> datetime:
    """Decode integer microseconds since the epoch into an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=value)


def seconds_to_us(seconds: float) -> int:
    """Convert a duration in seconds to whole microseconds."""
    return int(round(seconds * 1_000_000))


#: The units a duration may end with, in seconds (none: seconds).
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The longest duration accepted: longer ones end past datetime's range once added to now.
_MAX_DURATION_SECONDS = 1000 * 365 * 86400


def parse_duration(text: str, field: str = "duration") -> timedelta:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w`` as a timedelta (finite, >= 0, at
    most a thousand years). The command line's options and ``HOOKQUEUE_RETENTION`` read
    durations with this.

    :raises ValidationError: naming ``field``, with what is wrong and the fix.
    """
    raw = text.strip().lower()
    unit = raw[-1] if raw and raw[-1] in _DURATION_UNITS else "s"
    number = raw[:-1] if raw and raw[-1] in _DURATION_UNITS else raw
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        raise ValidationError(
            field, text, "is not a duration", "use e.g. 90, 30s, 15m, 12h, 7d"
        ) from None
    if not math.isfinite(seconds):
        raise ValidationError(field, text, "is not finite", "use e.g. 30s, 12h or 7d")
    if seconds < 0:
        raise ValidationError(field, text, "is negative", "use 0 or more, e.g. 15m")
    if seconds > _MAX_DURATION_SECONDS:
        raise ValidationError(
            field, text, "is longer than a thousand years", "use a shorter duration, e.g. 52w"
        )
    return timedelta(seconds=seconds)
