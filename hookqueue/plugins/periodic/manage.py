"""Managing stored schedules from Python: what ``hookqueue schedules`` does, as functions.

Every function takes a :class:`~hookqueue.Queue` (its store and clock) and works through the
store's named methods; the changes are seen by every worker's scheduler at its next pass
(within half a second).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hookqueue.core.errors import HookqueueError, ValidationError
from hookqueue.core.handlers import TaskHandlerRegistry

from .schedule import Schedule, ScheduleInfo
from .scheduler import definition

#: The key of a handler registration's ``options`` that declares its schedules.
OPTION = "periodic"
#: ``source`` of schedules added by hand (command line, :func:`add_schedule`).
ADDED = "added"
#: ``source`` of schedules declared by code on handler registrations.
CODE = "code"


class ScheduleNotFound(HookqueueError, LookupError):
    """No schedule has the given name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"no schedule is named {name!r}. Fix: see the names with 'hookqueue schedules ls'"
        )


def declared_schedules(registry: TaskHandlerRegistry) -> list[Schedule]:
    """The schedules declared on ``registry``'s handlers (``options={"periodic": ...}``: a
    :class:`Schedule` or a list of them), each bound to its handler's task type.

    :raises ValidationError: an option that is not a schedule, or two schedules with one
        name.
    """
    found: dict[str, Schedule] = {}
    for spec in registry.specs():
        value = spec.options.get(OPTION)
        if value is None:
            continue
        items: Iterable[Any] = value if isinstance(value, list | tuple) else (value,)
        for item in items:
            if not isinstance(item, Schedule):
                raise ValidationError(
                    f"options[{OPTION!r}] of task type {spec.task_type!r}",
                    item,
                    "is not a Schedule",
                    "pass Schedule('*/5 * * * *', ...) or a list of them",
                )
            schedule = item.for_handler(spec.task_type)
            if schedule.key in found:
                raise ValidationError(
                    "name",
                    schedule.key,
                    "is the name of two schedules (task types "
                    f"{found[schedule.key].task_type!r} and {spec.task_type!r})",
                    "give each schedule its own name=",
                )
            found[schedule.key] = schedule
    return list(found.values())


def list_schedules(queue: Any) -> list[ScheduleInfo]:
    """Every stored schedule, by name."""
    return [ScheduleInfo.from_row(row) for row in queue.db.list_schedules()]


def get_schedule(queue: Any, name: str) -> ScheduleInfo:
    """The stored schedule named ``name``. :raises ScheduleNotFound:"""
    rows = queue.db.list_schedules(names=[name])
    if not rows:
        raise ScheduleNotFound(name)
    return ScheduleInfo.from_row(rows[0])


def add_schedule(
    queue: Any, schedule: Schedule, *, paused: bool = False, replace: bool = False
) -> ScheduleInfo:
    """Store a schedule by hand (``source="added"``); it fires from its next tick on.

    :param paused: store it paused (``resume`` starts it).
    :param replace: replace a schedule of the same name (its pause state is kept);
        otherwise a taken name is refused.
    :raises ValidationError: the schedule has no task type, or the name is taken.
    """
    if schedule.task_type is None:
        raise ValidationError(
            "task_type", None, "is missing", "name the handler the schedule enqueues"
        )
    now_us = queue.clock.now_us()
    [answer] = queue.db.upsert_schedules(
        [definition(schedule, now_us, source=ADDED, paused=paused)], now_us, replace=replace
    )
    if answer == "exists":
        raise ValidationError(
            "name",
            schedule.key,
            "is taken by another schedule",
            "choose another name, remove that schedule first, or replace it (--replace)",
        )
    return get_schedule(queue, schedule.key)


def pause_schedule(queue: Any, name: str) -> ScheduleInfo:
    """Pause a schedule: no tick fires until it is resumed, across restarts and redeploys
    (declaring it again in code keeps it paused). :raises ScheduleNotFound:"""
    row = queue.db.set_schedule_paused(name, True, queue.clock.now_us())
    if row is None:
        raise ScheduleNotFound(name)
    return ScheduleInfo.from_row(row)


def resume_schedule(queue: Any, name: str) -> ScheduleInfo:
    """Resume a paused schedule from its next tick after now (ticks that fell while it was
    paused never fire). :raises ScheduleNotFound:"""
    info = get_schedule(queue, name)
    now_us = queue.clock.now_us()
    row = queue.db.set_schedule_paused(
        name, False, now_us, next_tick_us=info.schedule.next_tick_after(now_us)
    )
    if row is None:
        raise ScheduleNotFound(name)
    return ScheduleInfo.from_row(row)


def remove_schedule(queue: Any, name: str, *, force: bool = False) -> None:
    """Delete a schedule and its tick marks (the tasks it enqueued stay).

    :param force: also remove a schedule declared in code, which the next worker start
        declares again (pause it to stop it for good, or remove it from the code).
    :raises ScheduleNotFound: :raises ValidationError: a code-declared schedule without
        ``force``.
    """
    info = get_schedule(queue, name)
    if info.source == CODE and not force:
        raise ValidationError(
            "name",
            name,
            "is declared in code: the next worker start declares it again",
            "remove it from the code, or pause it (hookqueue schedules pause); --force "
            "removes it until then",
        )
    if not queue.db.delete_schedule(name):
        raise ScheduleNotFound(name)


__all__ = [
    "ADDED",
    "CODE",
    "OPTION",
    "ScheduleNotFound",
    "add_schedule",
    "declared_schedules",
    "get_schedule",
    "list_schedules",
    "pause_schedule",
    "remove_schedule",
    "resume_schedule",
]
