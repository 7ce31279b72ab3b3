"""The context of one running attempt, visible to handlers through :func:`current_execution`.

Async handlers are cancelled the asyncio way (``CancelledError`` at their next ``await``).
Sync handlers run in a thread that cannot be interrupted, so cancellation is cooperative: a
long-running sync handler calls ``current_execution().check_cancelled()`` now and then (or
reads ``.cancelled``) and stops when asked.
"""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import attrs

from .errors import TaskCancelled

if TYPE_CHECKING:
    from .models import Task


@attrs.define
class Execution:
    """One attempt of one task in a worker."""

    #: The task being run.
    task: Task
    #: The worker running it.
    worker_id: str
    #: Where sync handlers run (the worker's thread pool); None runs them in asyncio's default.
    executor: Executor | None = None
    #: Set when the task is cancelled (by request, timeout or shutdown).
    cancel_event: threading.Event = attrs.field(factory=threading.Event)
    #: Why it was cancelled, once it was.
    cancel_reason: str | None = None

    @property
    def cancelled(self) -> bool:
        """True once cancellation was asked for."""
        return self.cancel_event.is_set()

    def cancel(self, reason: str) -> None:
        """Ask the handler to stop (sets the token; the worker also cancels async handlers)."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.cancel_event.set()

    def check_cancelled(self) -> None:
        """Raise :class:`~hookqueue.core.errors.TaskCancelled` if cancellation was asked for."""
        if self.cancel_event.is_set():
            raise TaskCancelled(self.cancel_reason or "cancelled")


_current: contextvars.ContextVar[Execution | None] = contextvars.ContextVar(
    "hookqueue_execution", default=None
)


def current_execution() -> Execution:
    """The attempt running in this context (inside a handler, sync or async).

    :raises LookupError: outside a handler.
    """
    execution = _current.get()
    if execution is None:
        raise LookupError("current_execution() is only available inside a task handler")
    return execution


def set_current_execution(execution: Execution | None) -> contextvars.Token[Execution | None]:
    """Set the current attempt for this context (the worker does this)."""
    return _current.set(execution)
