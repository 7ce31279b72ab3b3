"""The exceptions hookqueue raises.

Every error that reaches a user names the thing at fault, the value it had and the fix.
All of them derive from :class:`HookqueueError`, so ``except HookqueueError`` catches
everything the library raises on purpose.
"""

from __future__ import annotations

from typing import Any


class HookqueueError(Exception):
    """Base class of every error hookqueue raises on purpose."""


class ValidationError(HookqueueError, ValueError):
    """A value given to hookqueue is not acceptable. Nothing was written.

    :param field: the name of the argument or field at fault
    :param value: the value that was refused (shown shortened in the message)
    :param problem: what is wrong with it
    :param fix: what to do instead
    """

    def __init__(self, field: str, value: Any, problem: str, fix: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        self.fix = fix
        try:
            shown = repr(value)
        except ValueError:  # e.g. an int beyond Python's str-conversion limit
            shown = f"<{type(value).__name__} too large to show>"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}={shown}: {problem}. Fix: {fix}")


class TaskNotFound(HookqueueError, LookupError):
    """No task has the given id (or idempotency key)."""

    def __init__(self, task_id: object) -> None:
        self.task_id = task_id
        super().__init__(
            f"task {task_id!r} does not exist (it was never enqueued, or it was pruned)"
        )


class InvalidTransition(HookqueueError):
    """A task cannot go from its current status to the one asked for."""

    def __init__(self, task_id: int, status: str, action: str, allowed: str) -> None:
        self.task_id = task_id
        self.status = status
        self.action = action
        super().__init__(
            f"cannot {action} task {task_id}: it is {status}; {action} needs {allowed}"
        )


class HandlerNotFound(HookqueueError, LookupError):
    """No handler is registered for a task type."""

    def __init__(self, task_type: str, registered: list[str]) -> None:
        self.task_type = task_type
        self.registered = registered
        listed = ", ".join(sorted(registered)) if registered else "none"
        super().__init__(
            f"no handler is registered for task type {task_type!r} (registered: {listed}). "
            f"Fix: register one with register_handler({task_type!r}, handler) in the worker's "
            "process, or enqueue one of the registered types"
        )


class HandlerAlreadyRegistered(HookqueueError):
    """A handler for this task type exists and ``allow_override`` was not given."""

    def __init__(self, task_type: str) -> None:
        self.task_type = task_type
        super().__init__(
            f"a handler for task type {task_type!r} is already registered. "
            "Fix: pass allow_override=True to replace it, or unregister_handler() it first"
        )


class StoreError(HookqueueError):
    """The database could not be used. The message names the path and the cause."""


class NotAHookqueueDatabase(StoreError):
    """The file exists but is not a hookqueue database (or not SQLite at all). It was not changed."""


class CommitOutcomeUnknown(StoreError):
    """An I/O error struck while committing: the change may or may not be stored."""


class DamagedRow(StoreError):
    """A stored row cannot be decoded (damaged by a tool, a manual edit or the disk).

    :param task_id: the task's id when it is known.
    """

    def __init__(self, message: str, *, task_id: object = None) -> None:
        self.task_id = task_id
        super().__init__(message)


class SchemaTooNew(StoreError):
    """The database was written by a newer hookqueue. It was not changed."""


class DatabaseBusy(StoreError):
    """Another connection held the database lock for longer than the busy timeout."""


class DatabaseFull(StoreError):
    """The disk, or the database's size limit, is full. The transaction was rolled back."""


class PluginError(HookqueueError):
    """A plugin could not be loaded, registered or called as its hook requires."""


class WorkerError(HookqueueError):
    """A worker cannot start or go on (for example: no handler registry, a bad option)."""


class TaskCancelled(HookqueueError):
    """Raised inside a sync handler's cancellation token check when the task was cancelled."""


class RetryLater(HookqueueError):
    """Raise from a handler to ask for another attempt at a given time.

    The retry policy still applies ``max_attempts``; it only takes the time from here.

    :param delay: seconds from now, or
    :param run_after: an aware datetime
    """

    def __init__(
        self,
        message: str = "handler asked to retry later",
        *,
        delay: float | None = None,
        run_after: Any = None,
    ) -> None:
        self.delay = delay
        self.run_after = run_after
        super().__init__(message)


class TaskDidNotComplete(HookqueueError):
    """A task someone waits for ended without completing (``Queue.wait``, a handle's
    ``result``); :attr:`task` is the task as it ended."""

    def __init__(self, task: Any, how: str) -> None:
        self.task = task
        error = f": {task.error_message}" if task.error_message else ""
        super().__init__(
            f"task {task.id} ({task.task_type}) {how} after {task.attempts} attempt(s){error}"
        )


class TaskFailed(TaskDidNotComplete):
    """The task waited for ended ``failed``."""

    def __init__(self, task: Any) -> None:
        super().__init__(task, "failed")


class TaskWasCancelled(TaskDidNotComplete):
    """The task waited for ended ``cancelled``."""

    def __init__(self, task: Any) -> None:
        super().__init__(task, "was cancelled")


class WaitTimeout(HookqueueError, TimeoutError):
    """A wait for a task ran out of time; the task is left as it is (still queued or
    running)."""

    def __init__(self, task_id: int, timeout: float, status: str) -> None:
        self.task_id = task_id
        #: How long the wait lasted, in seconds.
        self.timeout = timeout
        #: The task's status when the wait gave up (``queued`` or ``running``).
        self.status = status
        super().__init__(
            f"task {task_id} is still {status} after {timeout:g}s of waiting; it was left "
            "alone. Fix: wait longer, or look at it later (hookqueue show)"
        )
