"""Waiting for tasks to finish: ``Queue.wait``, ``Queue.wait_async`` and :class:`TaskHandle`.

A queue has at most one *waiter thread*, started by the first wait. It re-reads the tasks
someone waits for (all of them, in one store call) whenever another connection commits —
noticed through the store's change watcher (``TaskStore.watch_changes``: SQLite's commit
counter and log writes, or PostgreSQL's notifications), not by polling the tasks — and
resolves the waits whose task reached a final status. Whenever the set of tasks waited for
changes, the thread hands it to the watcher (``ChangeWatcher.watch_tasks``) before it looks:
on PostgreSQL that registers them, so that their ends — and only theirs — notify this
waiter. A thousand coroutines waiting cost one
thread and one read per commit, not a thread each.

A wait that times out only stops waiting: the task is left as it is.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .errors import TaskFailed, TaskNotFound, TaskWasCancelled, WaitTimeout
from .models import Task, TaskStatus
from .storage import ChangeWatcher, TaskStore

if TYPE_CHECKING:
    from .queue import Queue

log = logging.getLogger("hookqueue.queue")

#: The longest the waiter thread sleeps between looks when no commit wakes it (a safety
#: net: a watcher must not miss a commit for longer than this).
SAFETY_LOOK = 1.0


def outcome(task: Task) -> Task:
    """``task`` if it completed; else raise what a wait for it raises."""
    if task.status is TaskStatus.COMPLETED:
        return task
    if task.status is TaskStatus.FAILED:
        raise TaskFailed(task)
    raise TaskWasCancelled(task)


class Waiters:
    """The waits of one queue's store, served by one thread (see the module docs).

    :param db: the store.
    :param poll_interval: passed to the store's change watcher.
    """

    def __init__(self, db: TaskStore, poll_interval: float = 0.001) -> None:
        self.db = db
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._waits: dict[int, list[Future[Task]]] = {}
        self._kick = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._watcher: ChangeWatcher | None = None

    def wait_for(self, task_id: int) -> Future[Task]:
        """A future resolved with the task once it reached a final status (or with
        :class:`~hookqueue.core.errors.TaskNotFound` if it is gone). Never blocks: safe to
        call on an event loop."""
        future: Future[Task] = Future()
        with self._lock:
            if self._stopped:
                future.set_exception(RuntimeError("the queue was closed"))
                return future
            self._waits.setdefault(task_id, []).append(future)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="hookqueue-waiters", daemon=True
                )
                self._thread.start()
        # No commit is missed: the thread looks at every wait once its watcher exists, and
        # the watcher reports any commit after that look.
        self._poke()
        return future

    def forget(self, task_id: int, future: Future[Task]) -> None:
        """Stop waiting with ``future`` (a timed-out or cancelled wait)."""
        with self._lock:
            futures = self._waits.get(task_id)
            if futures and future in futures:
                futures.remove(future)
                if not futures:
                    del self._waits[task_id]

    def close(self) -> None:
        """Stop the thread; pending waits fail with RuntimeError. Idempotent."""
        with self._lock:
            self._stopped = True
            waits, self._waits = self._waits, {}
            thread = self._thread
        for futures in waits.values():
            for future in futures:
                if not future.done():
                    future.set_exception(RuntimeError("the queue was closed while waiting"))
        self._poke()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _poke(self) -> None:
        self._kick.set()
        watcher = self._watcher
        if watcher is not None:
            watcher.interrupt()

    def _run(self) -> None:
        try:
            watcher = self.db.watch_changes(self.poll_interval)
        except Exception:
            log.exception("waiting for tasks: cannot watch the store for changes")
            self._fail_all()
            return
        self._watcher = watcher
        watched: frozenset[int] = frozenset()
        try:
            while True:
                with self._lock:
                    if self._stopped:
                        return
                    ids = list(self._waits)
                current = frozenset(ids)
                if current != watched:
                    # Before the look: an end committed after it is then reported.
                    self._watch(watcher, current)
                    watched = current
                if not ids:
                    self._kick.wait()
                    self._kick.clear()
                    continue
                self._kick.clear()
                self._look(ids)
                watcher.wait(SAFETY_LOOK)
        finally:
            self._watcher = None
            watcher.close()

    def _watch(self, watcher: ChangeWatcher, ids: frozenset[int]) -> None:
        """Tell the watcher the tasks waited for (a store that notifies only what someone
        listens for needs them). A failure is logged: the safety look still finds the ends."""
        try:
            watcher.watch_tasks(ids)
        except Exception:
            log.warning(
                "waiting for tasks: cannot register them with the store's watcher; "
                "looking every %.1fs instead",
                SAFETY_LOOK,
                exc_info=True,
            )

    def _look(self, ids: list[int]) -> None:
        try:
            found = {t.id: t for t in self.db.get_many(ids)}
        except Exception:
            log.warning("waiting for tasks: reading them failed; retrying", exc_info=True)
            return
        done: list[tuple[int, Future[Task], Task | None]] = []
        with self._lock:
            for task_id in ids:
                task = found.get(task_id)
                if task is not None and not task.is_terminal:
                    continue
                for future in self._waits.pop(task_id, []):
                    done.append((task_id, future, task))
        for task_id, future, task in done:
            if future.done():
                continue
            if task is None:
                future.set_exception(TaskNotFound(task_id))
            else:
                future.set_result(task)

    def _fail_all(self) -> None:
        with self._lock:
            waits, self._waits = self._waits, {}
        for futures in waits.values():
            for future in futures:
                if not future.done():
                    future.set_exception(RuntimeError("cannot watch the store for changes"))


def wait_sync(
    waiters: Waiters, task_id: int, timeout: float | None, status: Callable[[], str]
) -> Task:
    """Block until the task finished; raise as :func:`outcome` does, or
    :class:`~hookqueue.core.errors.WaitTimeout` (the task left alone)."""
    future = waiters.wait_for(task_id)
    try:
        task = future.result(timeout)
    except TimeoutError:
        waiters.forget(task_id, future)
        raise WaitTimeout(task_id, timeout or 0.0, status()) from None
    return outcome(task)


async def wait_async(
    waiters: Waiters, task_id: int, timeout: float | None, status: Callable[[], Any]
) -> Task:
    """:func:`wait_sync` for coroutines (the event loop never blocks)."""
    future = waiters.wait_for(task_id)
    try:
        async with asyncio.timeout(timeout):
            task = await asyncio.wrap_future(future)
    except TimeoutError:
        waiters.forget(task_id, future)
        raise WaitTimeout(task_id, timeout or 0.0, await status()) from None
    except asyncio.CancelledError:
        waiters.forget(task_id, future)
        raise
    return outcome(task)


class TaskHandle:
    """A handle on one task of a queue: wait for it and read its result.

    Made by :meth:`Queue.handle` (from a task or an id)::

        handle = queue.handle(queue.enqueue("report", {"month": "2026-11"}))
        rows = handle.result(timeout=60)          # or: await handle.result_async(timeout=60)
    """

    def __init__(self, queue: Queue, task_id: int) -> None:
        self.queue = queue
        #: The task's id.
        self.id = task_id

    def __repr__(self) -> str:
        return f"TaskHandle({self.id})"

    def task(self) -> Task:
        """The task as stored now."""
        return self.queue.get(self.id)

    @property
    def status(self) -> TaskStatus:
        """The task's status now."""
        return self.task().status

    def wait(self, timeout: float | None = None) -> Task:
        """:meth:`Queue.wait` for this task."""
        return self.queue.wait(self.id, timeout=timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The task's result once it completed (waiting up to ``timeout`` seconds).

        :raises TaskFailed: it failed. :raises TaskWasCancelled: it was cancelled.
        :raises WaitTimeout: it has not finished in time (it is left alone).
        """
        return self.wait(timeout).result

    async def wait_async(self, timeout: float | None = None) -> Task:
        """:meth:`wait` for coroutines."""
        return await self.queue.wait_async(self.id, timeout=timeout)

    async def result_async(self, timeout: float | None = None) -> Any:
        """:meth:`result` for coroutines."""
        return (await self.wait_async(timeout)).result

    def cancel(self) -> Task:
        """:meth:`Queue.cancel` for this task."""
        return self.queue.cancel(self.id)


__all__ = ["TaskHandle", "Waiters", "outcome", "wait_async", "wait_sync"]
