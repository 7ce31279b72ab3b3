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
    #: The cancellation token (see :attr:`cancel_event`); created on first use, since most
    #: attempts are never cancelled and an Event costs a Condition and two locks.
    _cancel_event: threading.Event | None = attrs.field(default=None, alias="cancel_event")
    #: Why it was cancelled, once it was.
    cancel_reason: str | None = None

    @property
    def cancel_event(self) -> threading.Event:
        """Set when the task is cancelled (by request, timeout or shutdown); a sync handler
        may ``wait`` on it."""
        event = self._cancel_event
        if event is None:
            # The handler's thread and the worker's loop may both ask first: one Event wins.
            with _EVENT_LOCK:
                event = self._cancel_event
                if event is None:
                    event = self._cancel_event = threading.Event()
        return event

    @property
    def cancelled(self) -> bool:
        """True once cancellation was asked for."""
        event = self._cancel_event
        return event is not None and event.is_set()

    def cancel(self, reason: str) -> None:
        """Ask the handler to stop (sets the token; the worker also cancels async handlers)."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.cancel_event.set()

    def check_cancelled(self) -> None:
        """Raise :class:`~hookqueue.core.errors.TaskCancelled` if cancellation was asked for."""
        event = self._cancel_event
        if event is not None and event.is_set():
            raise TaskCancelled(self.cancel_reason or "cancelled")


_EVENT_LOCK = threading.Lock()


_current: contextvars.ContextVar[Execution | None] = contextvars.ContextVar(
    "hookqueue_execution", default=None
)


def current_execution_or_none() -> Execution | None:
    """The attempt running in this context, or None outside a handler (for code, such as an
    execute hook, that runs both inside and outside one)."""
    return _current.get()


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
