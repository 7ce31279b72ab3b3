"""The two threads behind a ``QueuedTaskManager``, so its event loop never waits on SQLite.

- :class:`StoreThread` does the manager's writes in order on its own connection: registering
  the manager as a worker, recording each started run as a task leased to it, and writing
  finished runs' outcomes (all outcomes waiting when it is free go in one transaction).
- :class:`Watcher` renews the leases of the runs' tasks (so a blocked event loop does not lose
  them: the lease stands for "this process is alive") and notices other connections' commits
  by polling ``PRAGMA data_version`` — a counter in shared memory, no table read — re-reading
  only the tasks the manager follows when it changes.

Neither holds a reference to the manager: it talks to them through callbacks built on a
weak reference, so a forgotten manager is collected and ``weakref.finalize`` stops them.
"""

from __future__ import annotations

import logging
import queue as stdlib_queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from hookqueue.core.models import Task
from hookqueue.core.queue import Queue
from hookqueue.core.storage import Settlement

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


class Watcher:
    """Renews held leases every ``heartbeat_interval`` and re-reads followed tasks when the
    database changed (checked every ``watch_interval``)."""

    def __init__(
        self,
        queue: Queue,
        worker_id: str,
        *,
        lease_seconds: float,
        heartbeat_interval: float,
        watch_interval: float,
        alive: Callable[[list[int]], list[int]],
        on_beat: Callable[[set[int], set[int]], None],
        on_tasks: Callable[[list[Task], list[int]], None],
        name: str,
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.heartbeat_interval = heartbeat_interval
        self.watch_interval = watch_interval
        self._alive = alive
        self._on_beat = on_beat
        self._on_tasks = on_tasks
        self._name = name
        self._lock = threading.Lock()
        self._held: set[int] = set()
        self._watched: set[int] = set()
        self._force_read = False
        self._beat_now = False
        self._stop = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: How many heartbeats and re-reads were made (for tests and diagnostics).
        self.beats = 0
        self.reads = 0

    def _changed(self, *, read: bool = False, beat: bool = False) -> None:
        if read:
            self._force_read = True
        if beat:
            self._beat_now = True
        if self._thread is None and not self._stop:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._wake.set()

    def hold(self, task_id: int) -> None:
        """Renew this task's lease from now on."""
        with self._lock:
            self._held.add(task_id)
            self._changed()

    def release(self, task_id: int) -> None:
        """Stop renewing this task's lease."""
        with self._lock:
            self._held.discard(task_id)

    def watch(self, ids: Iterable[int]) -> None:
        """Follow these tasks; they are read at once, then whenever the database changes."""
        with self._lock:
            self._watched.update(ids)
            self._changed(read=True)

    def unwatch(self, task_id: int) -> None:
        """Stop following this task."""
        with self._lock:
            self._watched.discard(task_id)

    def refresh(self) -> None:
        """Re-read the followed tasks now."""
        with self._lock:
            self._changed(read=True)

    def beat_now(self) -> None:
        """Renew leases (and pick up cancellation requests) now."""
        with self._lock:
            if self._held:
                self._changed(beat=True)

    def stop(self) -> None:
        """End the thread. Idempotent."""
        with self._lock:
            self._stop = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def _run(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_interval
        last_version: int | None = None
        while True:
            self._wake.clear()
            with self._lock:
                if self._stop:
                    return
                held = sorted(self._held)
                watched = sorted(self._watched)
                force, self._force_read = self._force_read, False
                beat, self._beat_now = self._beat_now, False
            now = time.monotonic()
            failed = False
            if not held:
                next_beat = now + self.heartbeat_interval
            elif beat or now >= next_beat:
                next_beat = now + self.heartbeat_interval
                failed = not self._heartbeat(held)
            if watched:
                version = self._read_if_changed(watched, last_version, force)
                failed = failed or version is None
                last_version = version
            timeouts = []
            if held:
                timeouts.append(max(0.0, next_beat - time.monotonic()))
            if watched:
                timeouts.append(self.watch_interval)
            timeout = min(timeouts) if timeouts else None
            if failed and timeout is not None:
                # The database is unreachable (locked for long, closed, disk gone): retry
                # each second rather than flooding the log every watch_interval.
                timeout = max(timeout, 1.0)
            self._wake.wait(timeout)

    def _heartbeat(self, held: list[int]) -> bool:
        """Renew ``held``; returns False if the database could not be reached."""
        # Tasks whose coroutine can no longer finish (its event loop closed) are not renewed:
        # their leases run out and a worker reruns them, as after a crash.
        alive = self._alive(held)
        dropped = set(held) - set(alive)
        if dropped:
            with self._lock:
                self._held -= dropped
        if not alive:
            return True
        try:
            kept, cancel = self.queue.runtime.heartbeat(self.worker_id, alive, self.lease_seconds)
        except Exception:
            log.exception(
                "task manager %s: renewing leases failed; retrying at the next beat", self.worker_id
            )
            return False
        self.beats += 1
        lost = set(alive) - kept
        if lost or cancel:
            self._on_beat(lost, cancel)
        return True

    def _read_if_changed(self, watched: list[int], last: int | None, force: bool) -> int | None:
        try:
            version = self.queue.db.data_version()
            if not force and version == last:
                return last
            tasks, missing = read_tasks(self.queue, watched)
        except Exception:
            log.exception(
                "task manager %s: reading followed tasks failed; retrying", self.worker_id
            )
            return None
        self.reads += 1
        self._on_tasks(tasks, missing)
        return version
