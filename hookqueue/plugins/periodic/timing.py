"""When a schedule's ticks fall: cron expressions (through cronsim) and plain intervals.

A *timing* answers one question, :meth:`Timing.next_after`: the first tick strictly after an
instant (integer microseconds since the epoch, UTC), or None when there is none. Everything
else — which due ticks fire after an outage — is built on it by :func:`step`.

- **Cron** (``"*/5 * * * *"``, ``"0 3 * * MON-FRI"``, ``"@daily"``): five fields, evaluated
  by `cronsim <https://pypi.org/project/cronsim/>`_ in the schedule's time zone, with Debian
  cron's behaviour across daylight-saving changes: a job at a fixed time (minute and hour
  fields not starting with ``*``) whose time is skipped when clocks go forward runs once, at
  the first minute after the change, and once only in the hour repeated when clocks go back;
  a job whose minute or hour field starts with ``*`` runs by the real elapsed time. cronsim
  is imported only for a cron expression (``pip install 'hookqueue[periodic]'``).
- **Intervals** (``"every 30s"``, ``"every 5m"``, ``"every 250ms"``, ``"every 2h"``,
  ``"every 1d"``): elapsed time, aligned to the Unix epoch in UTC, so every process computes
  the same ticks: ``every 5m`` falls at :00, :05, …; ``every 7m`` at multiples of seven
  minutes since 1970-01-01T00:00Z. An interval has no time zone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from hookqueue.core.clock import from_us, to_us
from hookqueue.core.errors import ValidationError

#: cron's nicknames, as the five-field expressions they stand for.
NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: Interval units, in microseconds.
UNITS = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_INTERVAL = re.compile(r"every\s+(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
#: The shortest interval (1 ms) and the longest (ten years).
MIN_INTERVAL_US = 1_000
MAX_INTERVAL_US = 10 * 365 * UNITS["d"]
#: Ticks one :func:`step` enumerates at most before it passes over the oldest (cron only).
STEP_BUDGET = 5000

_WHEN_FIX = (
    "use five cron fields ('*/5 * * * *', '0 3 * * MON-FRI'), a nickname ('@hourly', "
    "'@daily', '@weekly', '@monthly', '@yearly') or an interval ('every 30s', 'every 5m', "
    "'every 250ms', 'every 2h', 'every 1d')"
)


class Timing(Protocol):
    """When a schedule's ticks fall."""

    @property
    def text(self) -> str:
        """The expression (normalised: nicknames expanded, single spaces)."""
        ...

    def next_after(self, after_us: int) -> int | None:
        """The first tick strictly after ``after_us``; None when there is none."""
        ...


@attrs.frozen
class Interval:
    """Ticks every ``every_us`` microseconds, at the multiples of it since the epoch (UTC)."""

    #: The expression as given.
    text: str
    #: The interval in microseconds.
    every_us: int

    def next_after(self, after_us: int) -> int | None:
        """The next multiple of the interval after ``after_us``."""
        return (after_us // self.every_us + 1) * self.every_us


@attrs.frozen
class Cron:
    """Ticks where a five-field cron expression matches, in a time zone (cronsim)."""

    #: The five fields (a nickname already expanded).
    text: str
    #: The time zone the fields are read in.
    tz: ZoneInfo = attrs.field(eq=False)

    def next_after(self, after_us: int) -> int | None:
        """The first matching instant strictly after ``after_us`` (cronsim, Debian cron's
        daylight-saving behaviour); None when nothing matches within 50 years."""
        from cronsim import CronSim

        start = from_us(after_us).astimezone(self.tz)
        try:
            for candidate in CronSim(self.text, start):
                tick = to_us(candidate, "tick")
                # For a fixed-time job cronsim walks the local wall clock, so from the second
                # pass through a repeated hour it can answer a time of the first pass,
                # which is before ``after_us``: such a tick already fell.
                if tick > after_us:
                    return tick
        except (StopIteration, RuntimeError):  # pragma: no cover - cronsim's "no match"
            return None
        return None  # pragma: no cover - the iterator ended


def parse(when: Any, tz: Any = "UTC") -> Timing:
    """The timing ``when`` describes, read in time zone ``tz`` (cron only).

    :raises ValidationError: naming ``when`` or ``tz`` and the fix.
    """
    if not isinstance(when, str) or not when.strip():
        raise ValidationError("when", when, "is not a schedule", _WHEN_FIX)
    text = " ".join(when.split())
    zone = _zone(tz)
    interval = _INTERVAL.fullmatch(text)
    if interval is not None:
        if zone.key != "UTC":
            raise ValidationError(
                "tz",
                tz,
                "applies to cron expressions; an interval measures elapsed time",
                "leave tz out, or use a cron expression such as '0 0 * * *' for local midnights",
            )
        number, unit = interval.groups()
        every_us = round(float(number) * UNITS[unit.lower()])
        if not MIN_INTERVAL_US <= every_us <= MAX_INTERVAL_US:
            raise ValidationError(
                "when", when, "must be an interval from 1ms to ten years", "e.g. 'every 30s'"
            )
        return Interval(f"every {number}{unit.lower()}", every_us)
    if text.lower().startswith("every"):
        raise ValidationError("when", when, "is not an interval", _WHEN_FIX)
    expression = NICKNAMES.get(text.lower(), text)
    if expression.startswith("@"):
        raise ValidationError("when", when, "is not a cron nickname hookqueue knows", _WHEN_FIX)
    fields = expression.split()
    if len(fields) != 5:
        raise ValidationError(
            "when",
            when,
            f"has {len(fields)} fields; a cron expression has five (minute hour day month weekday)",
            "use 'every 30s' for intervals under a minute; " + _WHEN_FIX,
        )
    try:
        from cronsim import CronSim, CronSimError
    except ImportError:
        raise ValidationError(
            "when",
            when,
            "is a cron expression, and evaluating one needs the cronsim package",
            "pip install 'hookqueue[periodic]', or use an interval such as 'every 5m'",
        ) from None
    try:
        CronSim(expression, datetime.now(UTC).astimezone(zone))
    except CronSimError as exc:
        raise ValidationError(
            "when", when, f"is not a valid cron expression ({exc})", _WHEN_FIX
        ) from None
    return Cron(expression, zone)


def _zone(tz: Any) -> ZoneInfo:
    if not isinstance(tz, str) or not tz:
        raise ValidationError("tz", tz, "is not a time zone name", "e.g. 'Europe/Paris' or 'UTC'")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            "tz",
            tz,
            "is not a time zone of the IANA database",
            "e.g. 'Europe/Paris', 'America/New_York' or 'UTC' (pip install tzdata where the "
            "system has no zone database)",
        ) from None


@attrs.frozen
class Step:
    """Due ticks from a schedule's next tick up to now, as :func:`step` found them."""

    #: How many due ticks this step covers (fired or passed over).
    covered: int
    #: The newest ``keep`` of them (oldest first); empty when more are due after this step.
    newest: tuple[int, ...]
    #: The schedule's next tick after this step (None: no tick ahead).
    next_us: int | None
    #: False when more ticks are due after the ones covered (the step passed over the
    #: oldest :data:`STEP_BUDGET` and the schedule is still due).
    complete: bool


def step(timing: Timing, first_us: int, now_us: int, keep: int) -> Step:
    """The due ticks of a schedule whose next tick is ``first_us`` (<= ``now_us``).

    An interval is computed in closed form, whatever the number of ticks due. A cron
    expression is walked tick by tick, at most :data:`STEP_BUDGET` + ``keep`` of them: when
    more are due, the oldest :data:`STEP_BUDGET` are covered (at least ``keep`` newer ticks
    are due, so none of them is among the newest) and the next step goes on from there.
    """
    if isinstance(timing, Interval):
        every = timing.every_us
        n = (now_us - first_us) // every + 1
        last = first_us + (n - 1) * every
        newest = tuple(last - i * every for i in range(min(keep, n) - 1, -1, -1))
        return Step(covered=n, newest=newest, next_us=last + every, complete=True)
    due: list[int] = []
    tick: int | None = first_us
    while tick is not None and tick <= now_us and len(due) < STEP_BUDGET + keep:
        due.append(tick)
        tick = timing.next_after(tick)
    if tick is not None and tick <= now_us:
        return Step(covered=STEP_BUDGET, newest=(), next_us=due[STEP_BUDGET], complete=False)
    return Step(covered=len(due), newest=tuple(due[-keep:]), next_us=tick, complete=True)


def local_iso(tick_us: int, tz: str) -> str:
    """A tick as ISO 8601 text in the schedule's time zone (with its UTC offset)."""
    return from_us(tick_us).astimezone(_zone(tz)).isoformat()


__all__ = [
    "MAX_INTERVAL_US",
    "MIN_INTERVAL_US",
    "NICKNAMES",
    "STEP_BUDGET",
    "Cron",
    "Interval",
    "Step",
    "Timing",
    "local_iso",
    "parse",
    "step",
]
