"""Periodic (cron) tasks: each tick of a schedule enqueues exactly one task, across any number
of worker processes (docs/periodic.md).

Declare a schedule on a handler registration, like any per-type setting::

    from hookqueue.plugins.periodic import Schedule

    @queue.handlers.handler(
        "cleanup", options={"periodic": Schedule("0 3 * * *", tz="Europe/Paris")}
    )
    def cleanup(task):
        tick = tick_of(task)          # the tick this task is for
        ...

or add one from the shell: ``hookqueue schedules add nightly "0 3 * * *" --type cleanup``.
Schedules live in the database; every worker runs a scheduler that fires due ticks (no
leader), and the store writes each tick's task and its mark — unique per schedule and tick —
in one transaction.

Public names: :class:`Schedule`, :class:`ScheduleInfo`, :class:`Tick`, :func:`tick_of`,
:data:`HEADER`, :class:`Scheduler`, :class:`ScheduleNotFound` and the management functions
(:func:`list_schedules`, :func:`add_schedule`, :func:`pause_schedule`,
:func:`resume_schedule`, :func:`remove_schedule`, :func:`get_schedule`).

The package is also the ``periodic`` plugin (entry point ``hookqueue.periodic``; block it
with ``HOOKQUEUE_DISABLE_PLUGINS=periodic``): its hooks are in :mod:`.plugin`. Where a web
dashboard is built, it adds the *Schedules* page (:mod:`.dashboard`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from hookqueue.core.models import Task

from .manage import (
    ADDED,
    CODE,
    OPTION,
    ScheduleNotFound,
    add_schedule,
    declared_schedules,
    get_schedule,
    list_schedules,
    pause_schedule,
    remove_schedule,
    resume_schedule,
)
from .plugin import (
    hookqueue_cli_commands,
    hookqueue_dashboard_pages,
    hookqueue_worker_start,
    hookqueue_worker_stop,
)
from .schedule import MISFIRE_POLICIES, Schedule, ScheduleInfo
from .scheduler import HEADER, PassReport, Scheduler


@attrs.frozen
class Tick:
    """The tick a periodic task was enqueued for."""

    #: The schedule's name.
    schedule: str
    #: The tick, in the schedule's time zone.
    at: datetime
    #: The tick in microseconds since the epoch (UTC): unique per schedule.
    at_us: int


def tick_of(task: Task) -> Tick | None:
    """The tick ``task`` was enqueued for (from its ``hookqueue_periodic`` header), or None
    for a task no schedule enqueued."""
    header: Any = task.headers.get(HEADER)
    if not isinstance(header, Mapping):
        return None
    return Tick(
        schedule=header["schedule"],
        at=datetime.fromisoformat(header["tick"]),
        at_us=int(header["tick_us"]),
    )


__all__ = [
    "ADDED",
    "CODE",
    "HEADER",
    "MISFIRE_POLICIES",
    "OPTION",
    "PassReport",
    "Schedule",
    "ScheduleInfo",
    "ScheduleNotFound",
    "Scheduler",
    "Tick",
    "add_schedule",
    "declared_schedules",
    "get_schedule",
    "hookqueue_cli_commands",
    "hookqueue_dashboard_pages",
    "hookqueue_worker_start",
    "hookqueue_worker_stop",
    "list_schedules",
    "pause_schedule",
    "remove_schedule",
    "resume_schedule",
    "tick_of",
]
