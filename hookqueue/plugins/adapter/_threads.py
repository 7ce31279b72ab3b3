"""The threads behind a ``QueuedTaskManager``, so its event loop never waits on the store.

- :class:`StoreThread` does the manager's writes in order on its own connection: registering
  the manager as a worker, recording each started run as a task leased to it, and writing
  finished runs' outcomes (all outcomes waiting when it is free go in one transaction).
- the core's :class:`~hookqueue.core.leasekeeper.LeaseKeeper` renews the leases of the runs'
  tasks — the same keeper a worker uses (a blocked event loop does not lose them: the lease
  stands for "this process is alive");
- :class:`TaskFollower` re-reads the tasks the manager follows whenever another connection
  commits, noticed through the store's change watcher (``TaskStore.watch_changes``).

None holds a reference to the manager: they talk to it through callbacks built on a weak
reference, so a forgotten manager is collected and ``weakref.finalize`` stops them.
"""

from __future__ import annotations

import logging
import queue as stdlib_queue
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from hookqueue.core.models import Task
from hookqueue.core.queue import Queue
from hookqueue.core.storage import ChangeWatcher, Settlement

log = logging.getLogger("hookqueue.adapter")


def read_tasks(queue: Queue, ids: Sequence[int]) -> tuple[list[Task], list[int]]:
    """The tasks with these ids, and the ids that no longer exist."""
    found = queue.db.get_many(ids)
    seen = {t.id for t in found}
    return found, [i for i in ids if i not in seen]


class StoreThread:
    """Runs store calls one after another on a thread of its own; batches settlements."""

    def __init__(self, queue: Queue, worker_id: str, name: str) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self._name = name
        self._requests: stdlib_queue.SimpleQueue[Any] = stdlib_queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self.register: Callable[[], None] | None = None
        self._registered = False

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on the store thread, after the requests before it."""
        future: Future[Any] = Future()
        with self._lock:
            if self._stopped:
                future.set_exception(RuntimeError("the task manager was closed"))
                return future
            self._start()
            self._requests.put(("call", (fn, args, kwargs), future))
        return future

    def settle(self, settlement: Settlement) -> Future[Any]:
        """Write one outcome; outcomes queued together share one transaction."""
        future: Future[Any] = Future()
        with self._lock:
            if self._stopped:
                future.set_exception(RuntimeError("the task manager was closed"))
                return future
            self._start()
            self._requests.put(("settle", settlement, future))
        return future

    def ensure_registered(self) -> None:
        """Record the manager as a worker before its first lease (on the store thread)."""
        if not self._registered and self.register is not None:
            self.register()
            self._registered = True

    def _run(self) -> None:
        while True:
            first = self._requests.get()
            batch = [first]
            while True:
                try:
                    batch.append(self._requests.get_nowait())
                except stdlib_queue.Empty:
                    break
            stop = False
            settles: list[tuple[Settlement, Future[Any]]] = []
            for item in batch:
                if item is None:
                    stop = True
                    continue
                kind, body, future = item
                if kind == "settle":
                    settles.append((body, future))
                    continue
                fn, args, kwargs = body
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # handed to the caller through the future
                    future.set_exception(exc)
            if settles:
                self._write_settles(settles)
            if stop:
                return

    def _write_settles(self, settles: list[tuple[Settlement, Future[Any]]]) -> None:
        try:
            written = self.queue.runtime.settle(self.worker_id, [s for s, _ in settles])
        except BaseException as exc:
            log.error(
                "task manager %s: writing %d outcome(s) failed: %s",
                self.worker_id,
                len(settles),
                exc,
            )
            for _, future in settles:
                future.set_exception(exc)
            return
        by_id = {t.id: t for t in written}
        for settlement, future in settles:
            future.set_result(by_id.get(settlement.task_id))

    def stop(self) -> None:
        """Finish the requests already queued, then end the thread. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread = self._thread
            if thread is not None:
                self._requests.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)


class TaskFollower:
    """Re-reads the followed tasks whenever another connection commits, on a thread of its
    own (``watch_interval``: how often the store's change watcher looks while writes are
    happening, where it has to poll)."""

    def __init__(
        self,
        queue: Queue,
        worker_id: str,
        *,
        watch_interval: float,
        on_tasks: Callable[[list[Task], list[int]], None],
        name: str,
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.watch_interval = watch_interval
        self._on_tasks = on_tasks
        self._name = name
        self._lock = threading.Lock()
        self._watched: set[int] = set()
        self._force_read = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._changes: ChangeWatcher | None = None
        self._kick = threading.Event()
        #: How many times the followed tasks were read (for tests and diagnostics).
        self.reads = 0

    def _changed(self) -> None:
        if self._thread is None and not self._stop:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._kick.set()
        changes = self._changes
        if changes is not None:
            changes.interrupt()

    def watch(self, ids: Iterable[int]) -> None:
        """Follow these tasks; they are read at once, then whenever the store changes."""
        with self._lock:
            self._watched.update(ids)
            self._force_read = True
            self._changed()

    def unwatch(self, task_id: int) -> None:
        """Stop following this task."""
        with self._lock:
            self._watched.discard(task_id)

    def refresh(self) -> None:
        """Re-read the followed tasks now."""
        with self._lock:
            self._force_read = True
            self._changed()

    def stop(self) -> None:
        """End the thread. Idempotent."""
        with self._lock:
            self._stop = True
            thread = self._thread
            self._changed()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def _run(self) -> None:
        changes = self.queue.db.watch_changes(self.watch_interval)
        self._changes = changes
        try:
            failing = False  # the last read failed: read again at the next look
            while True:
                with self._lock:
                    if self._stop:
                        return
                    watched = sorted(self._watched)
                    force, self._force_read = self._force_read, False
                if not watched:
                    self._kick.wait()
                    self._kick.clear()
                    continue
                changed = force or changes.wait(1.0)
                self._kick.clear()
                if changed or force or failing:
                    failing = not self._read(watched)
        finally:
            self._changes = None
            changes.close()

    def _read(self, watched: list[int]) -> bool:
        try:
            tasks, missing = read_tasks(self.queue, watched)
        except Exception:
            log.exception(
                "task manager %s: reading followed tasks failed; retrying", self.worker_id
            )
            return False
        self.reads += 1
        self._on_tasks(tasks, missing)
        return True
