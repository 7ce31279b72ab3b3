"""``Run`` and ``RunStatus``: the records the ``BackgroundTaskManager`` API speaks, and the
adapter's errors.

``Run`` is mutable (``attrs.define``) because the code it serves changes runs in place
(``run.status = RunStatus.RUNNING`` and then ``registry.update_run(run)``); every assignment
is converted and validated, as the pydantic model it replaces did.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from hookqueue.core.errors import HookqueueError


class RunStatus(enum.StrEnum):
    """Where a run is. The strings equal :class:`hookqueue.TaskStatus`'s, one to one."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for ``completed``, ``failed`` and ``cancelled``."""
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


#: Statuses of runs that are not finished.
ACTIVE_RUN_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})


class RunHistoryError(HookqueueError):
    """The run history file cannot be read. It was not modified.

    :param path: the file.
    :param problem: what is wrong, naming the entry and field when one is at fault.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"run history {str(path)!r}: {problem}. The file was left as it is. Fix: repair "
            "it, restore it from a backup, or move it aside (mv it to a .bad name) to start "
            "with an empty history"
        )


class RunAlreadyActive(HookqueueError, ValueError):
    """``start_task`` was given a run whose ``run_id`` this manager is still running."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"run_id={run_id!r} is already active in this task manager; starting it again "
            "would lose track of the first one. Fix: give each run a unique run_id (for "
            f"example uuid4().hex), or await cancel_task({run_id!r}) first"
        )


class NoRunningLoop(HookqueueError, RuntimeError):
    """``start_task`` was called where no asyncio event loop is running."""

    def __init__(self, method: str) -> None:
        super().__init__(
            f"{method}() needs a running asyncio event loop: it schedules the coroutine on it "
            "and returns at once. The coroutine was closed, nothing was started or recorded. "
            f"Fix: call {method}() from async code (inside asyncio.run(...) or an async "
            "framework's request handler)"
        )


def _to_status(value: Any) -> RunStatus:
    if isinstance(value, RunStatus):
        return value
    try:
        return RunStatus(value.value if isinstance(value, enum.Enum) else value)
    except ValueError:
        raise ValueError(
            f"status={value!r} is not a run status; use one of "
            f"{[s.value for s in RunStatus]} (or RunStatus.X)"
        ) from None


def _aware(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None and attribute.name != "created_at":
        return
    if not isinstance(value, datetime):
        raise TypeError(
            f"{attribute.name}={value!r} must be a datetime; pass an aware one, e.g. "
            "datetime.now(timezone.utc)"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{attribute.name}={value!r} is a naive datetime (no timezone), so the instant it "
            "means is ambiguous; pass an aware one, e.g. datetime.now(timezone.utc)"
        )


def _optional(kind: type | tuple[type, ...], what: str) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"{attribute.name}={value!r} must be {what} or None")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{attribute.name}={value!r} must be a finite number or None")

    return check


def _non_empty_str(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{attribute.name}={value!r} must be a non-empty string")


def _mapping(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{attribute.name}={value!r} must be a dict of JSON values, e.g. {{'max_age_hours': 24}}"
        )


@attrs.define(kw_only=True, eq=True)
class Run:
    """One execution of a module, as the ``RunRegistry`` records it.

    Keyword construction as in the migration guide::

        Run(run_id="task-123", module_id="cleanup", module_name="Cleanup",
            status=RunStatus.QUEUED, created_at=datetime.now(timezone.utc),
            parameters={"max_age_hours": 24})

    Datetimes must be timezone-aware; ``status`` accepts a :class:`RunStatus` or its string.
    """

    #: Unique id of this run; the queue's idempotency key for the task that records it.
    run_id: str = attrs.field(validator=_non_empty_str)
    #: What runs; the queue's task type, so a worker's handler for it can rerun the run.
    module_id: str = attrs.field(validator=_non_empty_str)
    #: Human-readable name of the module.
    module_name: str = attrs.field(validator=attrs.validators.instance_of(str))
    #: Where the run is.
    status: RunStatus = attrs.field(converter=_to_status)
    #: When the run was created.
    created_at: datetime = attrs.field(validator=_aware)
    #: When its coroutine (or a worker's attempt) started.
    started_at: datetime | None = attrs.field(default=None, validator=_aware)
    #: When it reached a terminal status.
    completed_at: datetime | None = attrs.field(default=None, validator=_aware)
    #: ``completed_at - started_at`` in seconds, once finished.
    duration_seconds: float | None = attrs.field(
        default=None, validator=_optional((int, float), "a number of seconds")
    )
    #: Progress reported by the module, 0–100.
    progress_percent: float | None = attrs.field(
        default=None, validator=_optional((int, float), "a number from 0 to 100")
    )
    #: Items done so far, as reported by the module.
    items_processed: int | None = attrs.field(default=None, validator=_optional(int, "an integer"))
    #: Items in all, as reported by the module.
    items_total: int | None = attrs.field(default=None, validator=_optional(int, "an integer"))
    #: 0 when the run completed.
    exit_code: int | None = attrs.field(default=None, validator=_optional(int, "an integer"))
    #: ``str(exception)`` when it failed, or why it was cancelled or interrupted.
    error_message: str | None = attrs.field(default=None, validator=_optional(str, "a string"))
    #: The run's arguments (JSON values); the payload a worker reruns it from.
    parameters: dict[str, Any] = attrs.field(factory=dict, validator=_mapping)

    @property
    def is_active(self) -> bool:
        """True while the run is queued or running."""
        return self.status in ACTIVE_RUN_STATUSES


__all__ = [
    "ACTIVE_RUN_STATUSES",
    "NoRunningLoop",
    "Run",
    "RunAlreadyActive",
    "RunHistoryError",
    "RunStatus",
]
