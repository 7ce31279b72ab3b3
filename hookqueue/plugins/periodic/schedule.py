"""``Schedule``: what a periodic schedule enqueues, when, and what happens to missed ticks.

A :class:`Schedule` is declared in code on a handler registration
(``options={"periodic": Schedule(...)}``) or added from the command line
(``hookqueue schedules add``); either way it is stored in the database as JSON
(:meth:`Schedule.definition_json`) beside the state the store keeps (next tick, paused,
counts), and every worker's scheduler reads it back from there (:meth:`Schedule.from_row`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

import attrs

from hookqueue.core.clock import from_us
from hookqueue.core.encoding import encode_json
from hookqueue.core.errors import ValidationError
from hookqueue.core.handlers import check_task_type
from hookqueue.core.storage import ScheduleRow

from . import timing as _timing

#: What happens to ticks that fell while no scheduler fired them (see :class:`Schedule`).
Misfire = Literal["skip", "latest", "all"]
MISFIRE_POLICIES: tuple[str, ...] = ("skip", "latest", "all")
#: The definition format's version (in the stored JSON).
DEFINITION_VERSION = 1
#: The longest schedule name.
MAX_NAME_LENGTH = 200
#: The largest ``catch_up``: ticks one catch-up may enqueue.
MAX_CATCH_UP = 100_000


def _grace(value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValidationError(
            "grace",
            value,
            "must be seconds >= 0 (or a timedelta)",
            "e.g. 600 or timedelta(minutes=10)",
        )
    return float(value)


def _check_name(instance: Any, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LENGTH:
        raise ValidationError(
            "name",
            value,
            f"must be a non-empty string of at most {MAX_NAME_LENGTH} characters",
            "e.g. 'nightly-cleanup'",
        )


def _check_misfire(instance: Any, attribute: Any, value: Any) -> None:
    if value not in MISFIRE_POLICIES:
        raise ValidationError(
            "misfire",
            value,
            "is not a misfire policy",
            "use 'latest' (the newest missed tick, within grace), 'skip' or 'all'",
        )


def _check_catch_up(instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CATCH_UP:
        raise ValidationError(
            "catch_up", value, f"must be an integer from 1 to {MAX_CATCH_UP}", "e.g. 100"
        )


def _check_int(field: str, value: Any, low: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        raise ValidationError(
            field, value, "must be an integer" + (f" >= {low}" if low is not None else ""), "e.g. 1"
        )


@attrs.frozen(kw_only=True)
class Schedule:
    """A periodic schedule: enqueue a task of ``task_type`` at each tick of ``when``.

    :param when: a five-field cron expression (``"*/5 * * * *"``, ``"0 3 * * MON-FRI"``), a
        nickname (``"@hourly"``, ``"@daily"``, ``"@weekly"``, ``"@monthly"``, ``"@yearly"``)
        or an interval (``"every 30s"``, ``"every 5m"``, ``"every 250ms"``, ``"every 2h"``).
        Cron expressions need ``pip install 'hookqueue[periodic]'`` (cronsim).
    :param name: unique among schedules (default: the task type, so one schedule per type
        needs no name).
    :param tz: the IANA time zone a cron expression is read in (default ``"UTC"``); ticks
        follow Debian cron across daylight-saving changes (docs/periodic.md).
    :param task_type: the handler to run; on a handler registration it is that handler's
        type (leave it out).
    :param payload: the JSON payload of every tick's task. The tick itself is in the task's
        headers (:func:`~hookqueue.plugins.periodic.tick_of`).
    :param queue: the queue name of the tasks.
    :param priority: their priority (lower runs first).
    :param max_attempts: their attempt budget (None: the retry plugin's default).
    :param timeout: seconds one attempt may take (None: the handler's setting).
    :param misfire: what happens to ticks that fell while no scheduler ran, or that came due
        together: ``"latest"`` (default) fires only the newest of them, and only if it is at
        most ``grace`` old; ``"skip"`` fires a tick only when it is the only one due and at
        most ``grace`` old (a missed tick is never made up); ``"all"`` fires every one, oldest
        first, at most ``catch_up`` (the newest) at once.
    :param grace: seconds (or a timedelta) a tick may be late and still fire under ``latest``
        and ``skip`` (default 600: ten minutes).
    :param catch_up: the most ticks ``misfire="all"`` fires at once (default 100).
    :param overlap: False skips a tick while the task of the schedule's previous tick is
        still queued or running (the check and the enqueue are one transaction).

    Every field is checked when the schedule is made: a bad cron expression or time zone is
    a :class:`~hookqueue.core.errors.ValidationError` at import time, not at 3 a.m.
    """

    when: str = attrs.field(kw_only=False)
    name: str | None = attrs.field(default=None, validator=_check_name)
    tz: str = "UTC"
    task_type: str | None = None
    payload: Any = None
    queue: str = "default"
    priority: int = 100
    max_attempts: int | None = None
    timeout: float | None = None
    misfire: Misfire = attrs.field(default="latest", validator=_check_misfire)
    grace: float = attrs.field(default=600.0, converter=_grace)
    catch_up: int = attrs.field(default=100, validator=_check_catch_up)
    overlap: bool = True
    #: The parsed ``when`` (checked at construction).
    timing: _timing.Timing = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "timing", _timing.parse(self.when, self.tz))
        if self.task_type is not None:
            check_task_type(self.task_type)
        if not isinstance(self.queue, str) or not self.queue:
            raise ValidationError("queue", self.queue, "must be a queue name", "e.g. 'default'")
        _check_int("priority", self.priority)
        if self.max_attempts is not None:
            _check_int("max_attempts", self.max_attempts, 1)
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, int | float)
            or not math.isfinite(self.timeout)
            or self.timeout <= 0
        ):
            raise ValidationError("timeout", self.timeout, "must be seconds > 0", "e.g. 30")
        if not isinstance(self.overlap, bool):
            raise ValidationError("overlap", self.overlap, "must be True or False", "e.g. False")
        encode_json("payload", self.payload)

    @property
    def key(self) -> str:
        """The schedule's name: ``name``, else its task type."""
        name = self.name or self.task_type
        if name is None:
            raise ValidationError(
                "task_type", None, "is missing", "declare the schedule on a handler registration"
            )
        return name

    def for_handler(self, task_type: str) -> Schedule:
        """This schedule declared on the handler of ``task_type``.

        :raises ValidationError: it names another task type.
        """
        if self.task_type not in (None, task_type):
            raise ValidationError(
                "task_type",
                self.task_type,
                f"differs from the handler it is declared on ({task_type!r})",
                "leave task_type out: a schedule on a handler enqueues that handler's tasks",
            )
        return attrs.evolve(self, task_type=task_type)

    def timing_key(self) -> str:
        """What decides where ticks fall: the expression and the time zone (stored; when it
        changes the next tick is computed again)."""
        return json.dumps({"when": self.timing.text, "tz": self.tz}, sort_keys=True)

    def definition_json(self) -> str:
        """The schedule as the JSON text stored for it (canonical: equal schedules give
        equal text, so a redeclaration that changes nothing changes nothing stored)."""
        return json.dumps(
            {
                "version": DEFINITION_VERSION,
                "when": self.when,
                "name": self.key,
                "tz": self.tz,
                "task_type": self.task_type,
                "payload": self.payload,
                "queue": self.queue,
                "priority": self.priority,
                "max_attempts": self.max_attempts,
                "timeout": self.timeout,
                "misfire": self.misfire,
                "grace": self.grace,
                "catch_up": self.catch_up,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_row(cls, row: ScheduleRow) -> Schedule:
        """The schedule a stored row holds.

        :raises ValidationError: the stored definition is not one this version reads.
        """
        try:
            data: Mapping[str, Any] = json.loads(row.definition_json)
            version = data.get("version")
        except (ValueError, AttributeError):
            version = None
        if version != DEFINITION_VERSION:
            raise ValidationError(
                f"schedule {row.name!r}",
                row.definition_json[:60],
                "has a definition this hookqueue cannot read",
                "upgrade hookqueue, or remove and add the schedule again",
            )
        fields = {k: v for k, v in data.items() if k != "version"}
        return cls(overlap=row.overlap, **fields)

    def next_tick_after(self, after_us: int) -> int | None:
        """The first tick after ``after_us`` (UTC microseconds), or None."""
        return self.timing.next_after(after_us)


@attrs.frozen(kw_only=True)
class ScheduleInfo:
    """A stored schedule as ``hookqueue schedules ls`` and :func:`list_schedules` show it."""

    #: The definition.
    schedule: Schedule
    #: Who declared it: ``"code"`` (a handler's options, at worker start) or ``"cli"``.
    source: str
    paused: bool
    #: The next tick (None: none ahead), and the newest tick that fired with its task.
    next_tick: datetime | None
    last_tick: datetime | None
    last_task_id: int | None
    #: Ticks fired, and ticks skipped (misfire policy or overlap).
    fired: int
    skipped: int
    revision: int
    created_at: datetime
    updated_at: datetime
    #: When code last declared it (a worker start); None for one added from the CLI.
    declared_at: datetime | None

    @classmethod
    def from_row(cls, row: ScheduleRow) -> ScheduleInfo:
        """The view of a stored row."""

        def at(value: int | None) -> datetime | None:
            return None if value is None else from_us(value)

        return cls(
            schedule=Schedule.from_row(row),
            source=row.source,
            paused=row.paused,
            next_tick=at(row.next_tick_us),
            last_tick=at(row.last_tick_us),
            last_task_id=row.last_task_id,
            fired=row.fired,
            skipped=row.skipped,
            revision=row.revision,
            created_at=from_us(row.created_us),
            updated_at=from_us(row.updated_us),
            declared_at=at(row.declared_us),
        )

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready data (``--json``); instants in ISO 8601, UTC."""
        s = self.schedule

        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "name": s.key,
            "when": s.when,
            "tz": s.tz,
            "task_type": s.task_type,
            "payload": s.payload,
            "queue": s.queue,
            "priority": s.priority,
            "max_attempts": s.max_attempts,
            "timeout": s.timeout,
            "misfire": s.misfire,
            "grace": s.grace,
            "catch_up": s.catch_up,
            "overlap": s.overlap,
            "source": self.source,
            "paused": self.paused,
            "next_tick": iso(self.next_tick),
            "last_tick": iso(self.last_tick),
            "last_task_id": self.last_task_id,
            "fired": self.fired,
            "skipped": self.skipped,
            "revision": self.revision,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "declared_at": iso(self.declared_at),
        }


__all__ = ["MISFIRE_POLICIES", "Misfire", "Schedule", "ScheduleInfo"]
