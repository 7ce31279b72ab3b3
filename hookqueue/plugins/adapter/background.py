"""``BackgroundTaskManager``: the in-memory manager, kept for the ``USE_QUEUE_SYSTEM=false``
rollback path.

It runs each coroutine as an asyncio task in this process and keeps the ``RunRegistry``
current. Nothing is persisted: a run whose process stops is lost (use
:class:`~hookqueue.plugins.adapter.QueuedTaskManager` for that). Differences from the
original, each a fix: ``started_at``/``completed_at``/``duration_seconds`` are set; a task
cancelled before its first step still ends CANCELLED and untracked; starting a ``run_id``
that is still active is refused; outside a running loop ``start_task`` raises at once and
leaks no coroutine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from functools import partial
from typing import Any

from hookqueue.core.clock import Clock, SystemClock

from ._common import (
    check_start_arguments,
    close_awaitable,
    ensure_task,
    finish_run,
    mark_started,
    running_loop_for,
)
from .models import Run, RunAlreadyActive
from .registry import RunRegistry


class BackgroundTaskManager:
    """Runs coroutines in the background of this process and tracks them as runs.

    :param registry: where runs are recorded (default: a new in-memory ``RunRegistry``).
    :param clock: where time comes from (tests pass a ``FakeClock``).
    """

    def __init__(self, registry: RunRegistry | None = None, *, clock: Clock | None = None) -> None:
        #: The registry runs are recorded in.
        self.registry = registry if registry is not None else RunRegistry()
        #: ``run_id`` → asyncio task, for coroutines still running.
        self.tasks: dict[str, asyncio.Future[Any]] = {}
        self.clock: Clock = clock or SystemClock()

    def __repr__(self) -> str:
        return f"BackgroundTaskManager({len(self.tasks)} active)"

    def start_task(self, run: Run, coro: Awaitable[Any]) -> str:
        """Run ``coro`` as a background asyncio task; the run goes RUNNING now, then
        COMPLETED (``exit_code=0``), FAILED (``error_message=str(exc)``; the exception is
        logged, never raised) or CANCELLED.

        Synchronous, but needs a running event loop.

        :returns: ``run.run_id``.
        :raises NoRunningLoop: no loop is running (``coro`` is closed, nothing starts).
        :raises RunAlreadyActive: a run with this ``run_id`` is still running here.
        :raises ValidationError: ``run`` is not a Run or ``coro`` is not awaitable.
        """
        loop = running_loop_for("start_task", coro)
        check_start_arguments(run, coro)
        if run.run_id in self.tasks:
            close_awaitable(coro)
            raise RunAlreadyActive(run.run_id)
        mark_started(run, self.clock)
        self.registry.update_run(run)
        task = ensure_task(loop, coro, name=f"run-{run.run_id}")
        self.tasks[run.run_id] = task
        task.add_done_callback(partial(self._done, run, self.clock.monotonic()))
        return run.run_id

    def _done(self, run: Run, started: float, task: asyncio.Future[Any]) -> None:
        # A done callback, not code around ``await coro``: it also runs for a task cancelled
        # before its first step, which the original left QUEUED and "active" forever.
        if self.tasks.get(run.run_id) is task:
            del self.tasks[run.run_id]
        finish_run(run, task, self.clock, started, "BackgroundTaskManager")
        self.registry.update_run(run)

    async def cancel_task(self, run_id: str) -> bool:
        """Cancel a running run and wait for it to stop.

        :returns: True if it ended CANCELLED; False if ``run_id`` is unknown or finished, or
            if the coroutine caught the cancellation and finished otherwise.
        """
        task = self.tasks.get(run_id)
        if task is None or task.done():
            return False
        task.cancel()
        await asyncio.wait([task])
        return task.cancelled()

    async def wait_all(self, timeout: float | None = None) -> bool:
        """Wait until every run started here has finished (runs started meanwhile too).

        Never raises the runs' exceptions.

        :param timeout: seconds to wait at most; None waits as long as it takes.
        :returns: True when none is active, False if ``timeout`` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.tasks:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            await asyncio.wait(list(self.tasks.values()), timeout=remaining)
        return True

    def get_active_task_count(self) -> int:
        """How many runs are running."""
        return sum(1 for t in self.tasks.values() if not t.done())

    def get_active_task_ids(self) -> list[str]:
        """The ``run_id`` of every running run."""
        return [rid for rid, t in self.tasks.items() if not t.done()]

    def is_task_active(self, run_id: str) -> bool:
        """True while the run is running."""
        task = self.tasks.get(run_id)
        return task is not None and not task.done()
