"""``QueuedTaskManager``: ``BackgroundTaskManager``'s API on a persistent queue.

``start_task(run, coro)`` runs the coroutine now, in this process, exactly as the in-memory
manager does, and also records it in the queue as a task of type ``run.module_id`` with
payload ``run.parameters`` and idempotency key ``run.run_id``, inserted already ``running``
and leased to this manager. While the coroutine runs, a thread renews the lease; when it ends,
its outcome is written to the task. If the process dies, the lease runs out and a
:class:`~hookqueue.WorkerEngine` with a handler for ``run.module_id`` runs it again from its
payload (the adapter plugin's ``hookqueue_retry`` asks for that); with no handler the task
ends ``failed`` with an error naming the type.

Guarantee and its limit: the record is written on a store thread right after ``start_task``
returns (typically within milliseconds; one transaction). If the process dies before that
commit, the run is not in the queue and cannot be recovered. ``durable_start=True`` closes
that gap: the coroutine's first step then waits for the commit.

The manager also follows tasks it does not run itself — tasks it scheduled, runs whose lease
it lost, and runs left active in the registry's history file by a process that died — and
copies their progress into the ``RunRegistry`` as workers in any process report it.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import attrs

from hookqueue.core.clock import Clock, from_us
from hookqueue.core.encoding import encode_json
from hookqueue.core.errors import (
    HookqueueError,
    InvalidTransition,
    TaskNotFound,
    ValidationError,
)
from hookqueue.core.handlers import TaskHandlerRegistry, check_task_type
from hookqueue.core.leasekeeper import LeaseKeeper
from hookqueue.core.models import Task, TaskStatus, WorkerInfo
from hookqueue.core.queue import Queue
from hookqueue.core.storage import Settlement, TaskStore

from ._common import (
    check_start_arguments,
    close_awaitable,
    ensure_task,
    finish_run,
    mark_started,
    running_loop_for,
)
from ._threads import StoreThread, TaskFollower, read_tasks
from .models import Run, RunAlreadyActive, RunStatus
from .plugin import ADAPTER_HEADER
from .registry import RunRegistry

log = logging.getLogger("hookqueue.adapter")

#: The default lease of a run's task: a process that dies holds its runs at most this long
#: before a worker may take them over.
DEFAULT_LEASE_SECONDS = 5.0


class RecordError(HookqueueError):
    """A run could not be recorded in the queue (only raised into the run with
    ``durable_start=True``; otherwise logged, and the run goes on in memory)."""


class _Stage(enum.Enum):
    RECORDING = "recording"
    RECORDED = "recorded"
    UNRECORDED = "unrecorded"


@attrs.define(eq=False)
class _Local:
    """A run whose coroutine this manager runs."""

    run: Run
    started: float
    nonce: str
    coro: Any
    task: asyncio.Future[Any] | None = None
    record: Future[Any] | None = None
    stage: _Stage = _Stage.RECORDING
    task_id: int | None = None
    #: Why the coroutine was cancelled, when the manager or the queue asked.
    cancel_reason: str | None = None
    #: The lease was lost: a worker owns the task now and the run follows the queue.
    lost: bool = False
    #: What to write once recorded (set when the coroutine ended; ``task_id`` filled in then).
    outcome: Settlement | None = None
    done: bool = False
    settling: bool = False
    #: Resolved when nothing more will be written for this run.
    settled: Future[Any] = attrs.field(factory=Future)


@attrs.define(eq=False)
class _Followed:
    """A task this manager follows in the database (a worker runs it)."""

    task_id: int
    #: The id callers know it by: the run_id, or the task id as a string.
    key: str
    run: Run | None
    status: TaskStatus


_TASK_TO_RUN = {
    TaskStatus.QUEUED: RunStatus.QUEUED,
    TaskStatus.RUNNING: RunStatus.RUNNING,
    TaskStatus.COMPLETED: RunStatus.COMPLETED,
    TaskStatus.FAILED: RunStatus.FAILED,
    TaskStatus.CANCELLED: RunStatus.CANCELLED,
}


def apply_task_to_run(run: Run, task: Task) -> bool:
    """Copy a task's state onto its run. :returns: True if the run changed."""
    before = attrs.asdict(run, recurse=False)
    run.status = _TASK_TO_RUN[task.status]
    if task.started_at is not None:
        run.started_at = task.started_at
    if task.is_terminal:
        run.completed_at = task.finished_at
        if task.finished_at is not None and run.started_at is not None:
            run.duration_seconds = max(0.0, (task.finished_at - run.started_at).total_seconds())
        run.exit_code = 0 if task.status is TaskStatus.COMPLETED else None
        run.error_message = None if task.status is TaskStatus.COMPLETED else task.error_message
    else:
        run.completed_at = None
        run.duration_seconds = None
        run.exit_code = None
        if task.status is TaskStatus.QUEUED and task.error_message:
            run.error_message = task.error_message
    return attrs.asdict(run, recurse=False) != before


def _result_json(value: Any) -> str | None:
    """A run's result as the task's result JSON (the queue's one encoder and its rules); a
    result that cannot be stored is left out, as the original manager kept no result."""
    if value is None:
        return None
    try:
        return encode_json("result", value)
    except ValidationError:
        log.debug("a run's result is not JSON; the task records none", exc_info=True)
        return None


def _positive(field: str, value: Any, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValidationError(
            field, value, "must be a positive number of seconds", f"e.g. {example}"
        )
    return float(value)


class QueuedTaskManager:
    """``BackgroundTaskManager``'s API, recorded in and recoverable through a queue.

    :param queue_db: a :class:`~hookqueue.QueueDatabase` (its shared :class:`~hookqueue.Queue`
        is used, so a ``WorkerEngine(queue_db)`` in this process shares the handlers) or a
        ``Queue``.
    :param registry: where runs are recorded (default: a new in-memory ``RunRegistry``).
    :param lease_seconds: how long a run's task stays leased without renewal; after a crash
        a worker takes the run over this long after the last renewal (default 5).
    :param heartbeat_interval: how often leases are renewed and cancellation requests picked
        up (default ``lease_seconds / 4``).
    :param watch_interval: how often the database is checked for other processes' commits
        while tasks are followed (a shared-memory counter read; default 0.01 s).
    :param max_attempts: attempts a run's task gets in all, the in-process one included;
        at least 2 so a crashed run can be rerun (default 3).
    :param queue_name: the queue runs' tasks go to (workers must lease from it).
    :param worker_id: the id the manager leases runs' tasks under (default
        ``adapter-<host>-<pid>-<random>``).
    :param durable_start: wait for a run's record to commit before its coroutine's first step,
        so no run can start unrecorded (costs one commit of latency per run).
    """

    def __init__(
        self,
        queue_db: TaskStore | Queue,
        registry: RunRegistry | None = None,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        heartbeat_interval: float | None = None,
        watch_interval: float = 0.01,
        max_attempts: int = 3,
        queue_name: str = "default",
        worker_id: str | None = None,
        durable_start: bool = False,
    ) -> None:
        #: The queue facade the manager works through.
        self.queue = Queue.for_database(queue_db)
        #: The registry runs are recorded in.
        self.registry = registry if registry is not None else RunRegistry()
        self.lease_seconds = _positive("lease_seconds", lease_seconds, "5")
        self.heartbeat_interval = (
            self.lease_seconds / 4
            if heartbeat_interval is None
            else _positive("heartbeat_interval", heartbeat_interval, "1.25")
        )
        if self.heartbeat_interval >= self.lease_seconds:
            raise ValidationError(
                "heartbeat_interval",
                heartbeat_interval,
                f"must be shorter than lease_seconds={lease_seconds}, or leases lapse between renewals",
                "use about a quarter of lease_seconds",
            )
        self.watch_interval = _positive("watch_interval", watch_interval, "0.01")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 2:
            raise ValidationError(
                "max_attempts",
                max_attempts,
                "must be an integer >= 2: the first attempt is the in-process coroutine, a rerun "
                "after a crash needs another",
                "e.g. 3",
            )
        self.max_attempts = max_attempts
        if not isinstance(queue_name, str) or not queue_name:
            raise ValidationError(
                "queue_name", queue_name, "must be a non-empty string", "e.g. 'default'"
            )
        self.queue_name = queue_name
        if worker_id is not None and (not isinstance(worker_id, str) or not worker_id):
            raise ValidationError(
                "worker_id", worker_id, "must be a non-empty string", "e.g. 'api-1'"
            )
        self.worker_id = (
            worker_id or f"adapter-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.durable_start = bool(durable_start)
        #: ``run_id`` → asyncio task, for coroutines running in this process.
        self.tasks: dict[str, asyncio.Future[Any]] = {}
        self._local: dict[str, _Local] = {}
        self._unsettled: set[_Local] = set()
        self._held: dict[int, _Local] = {}
        self._followed: dict[int, _Followed] = {}
        self._followed_by_key: dict[str, _Followed] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._adoption: str = "pending"  # pending -> running -> done
        self._closed = False

        ref = weakref.ref(self)
        self._store = StoreThread(
            self.queue, self.worker_id, name=f"hookqueue-adapter-store-{self.worker_id}"
        )
        self._store.register = partial(
            _register_worker, self.queue, self.worker_id, self.queue_name
        )
        self._leases = LeaseKeeper(
            self.queue.runtime,
            self.worker_id,
            lease_seconds=self.lease_seconds,
            interval=self.heartbeat_interval,
            on_lost=partial(_post_to, ref, "_on_lost"),
            on_cancel=partial(_post_to, ref, "_on_cancel_requested"),
            still_running=partial(_call_alive, ref),
            name=f"hookqueue-adapter-leases-{self.worker_id}",
        )
        self._follower = TaskFollower(
            self.queue,
            self.worker_id,
            watch_interval=self.watch_interval,
            on_tasks=partial(_post_to, ref, "_on_tasks"),
            name=f"hookqueue-adapter-follow-{self.worker_id}",
        )
        self._waker = self.queue.runtime.add_waker(partial(_wake_keeper, weakref.ref(self._leases)))
        self._finalizer = weakref.finalize(
            self, _shutdown, self._store, self._leases, self._follower, self.queue, self._waker
        )

    def __repr__(self) -> str:
        return (
            f"QueuedTaskManager({self.queue.db!r}, worker_id={self.worker_id!r}, "
            f"{len(self.tasks)} running here, {len(self._followed)} followed)"
        )

    @property
    def handler_registry(self) -> TaskHandlerRegistry:
        """The handlers workers of this queue run (shared with ``WorkerEngine(queue_db)`` in
        this process)."""
        return self.queue.handlers

    @property
    def clock(self) -> Clock:
        """The queue's clock (timestamps and durations of runs come from it)."""
        return self.queue.clock

    # -- event loop ----------------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise HookqueueError(
                "this QueuedTaskManager was closed. Fix: create a new one "
                "(create_queued_task_manager())"
            )
        if self._loop is loop:
            return loop
        old = self._loop
        if old is not None and not old.is_closed() and old.is_running():
            raise HookqueueError(
                "this QueuedTaskManager is in use by another running event loop; its runs and "
                "waiters belong to that loop. Fix: create one manager per event loop"
            )
        self._loop = loop
        self._waiters = []
        self._drop_orphans()
        if self._followed:
            self._follower.refresh()
        if self._adoption == "pending":
            interrupted = self.registry.interrupted_run_ids()
            if not interrupted:
                self._adoption = "done"
            else:
                self._adoption = "running"
                self._store.call(self._find_interrupted, interrupted).add_done_callback(
                    partial(_post_future_to, weakref.ref(self), "_adopt")
                )
        return loop

    def _post(self, fn: Callable[..., Any], *args: Any) -> bool:
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed meanwhile
            return False
        return True

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _drop_orphans(self) -> None:
        """Coroutines of an event loop that closed without finishing them never end: stop
        tracking them here; their leases lapse and workers rerun them, as after a crash."""
        for run_id, entry in list(self._local.items()):
            task = entry.task
            if task is not None and not task.done() and task.get_loop().is_closed():
                log.warning(
                    "run %s: its event loop closed while it ran; a worker reruns it once its "
                    "lease runs out",
                    run_id,
                )
                self.tasks.pop(run_id, None)
                entry.lost = True
                self._close_bookkeeping(entry, follow=True)

    # -- start ---------------------------------------------------------------------------------

    def start_task(self, run: Run, coro: Awaitable[Any]) -> str:
        """Run ``coro`` now, in this process, record it in the queue, and keep the run current.

        The run goes RUNNING at once (``started_at`` set), then COMPLETED (``exit_code=0``),
        FAILED (``error_message=str(exc)``; the exception is logged, never raised) or
        CANCELLED, with ``completed_at`` and ``duration_seconds``. A cancellation that did
        not come from :meth:`cancel_task` or the queue (for example the event loop shutting
        down) is an interruption: the task goes back to ``queued`` for a worker to rerun
        from ``run.parameters``, and the run shows QUEUED.

        Synchronous, but needs a running event loop; it never waits on the database.

        :returns: ``run.run_id``.
        :raises NoRunningLoop: no loop is running (``coro`` is closed, nothing starts).
        :raises RunAlreadyActive: this manager is running or following that ``run_id``.
        :raises ValidationError: ``run.parameters`` is not JSON, ``run.module_id`` is not a
            usable task type, or ``coro`` is not awaitable (``coro`` is closed).
        """
        running_loop_for("start_task", coro)
        check_start_arguments(run, coro)
        try:
            loop = self._bind_loop()
            if run.run_id in self.tasks or run.run_id in self._followed_by_key:
                raise RunAlreadyActive(run.run_id)
            check_task_type(run.module_id, "run.module_id")
            try:
                # A snapshot: the coroutine may change run.parameters before the record commits.
                payload = json.loads(encode_json("run.parameters", run.parameters))
            except ValidationError as exc:
                raise ValidationError(
                    exc.field,
                    exc.value,
                    exc.problem,
                    f"{exc.fix}; a worker reruns the run from them after a crash",
                ) from None
        except BaseException:
            close_awaitable(coro)
            raise
        mark_started(run, self.clock)
        self.registry.update_run(run)
        entry = _Local(run=run, started=self.clock.monotonic(), nonce=uuid.uuid4().hex, coro=coro)
        self._local[run.run_id] = entry
        self._unsettled.add(entry)
        entry.record = self._store.call(
            self._record, run.run_id, run.module_id, run.module_name, payload, entry.nonce
        )
        entry.record.add_done_callback(partial(self._on_recorded, entry))
        awaitable = self._after_record(entry, coro) if self.durable_start else coro
        task = ensure_task(loop, awaitable, name=f"run-{run.run_id}")
        entry.task = task
        self.tasks[run.run_id] = task
        task.add_done_callback(partial(self._on_coroutine_done, entry))
        return run.run_id

    async def _after_record(self, entry: _Local, coro: Awaitable[Any]) -> Any:
        assert entry.record is not None
        await asyncio.wrap_future(entry.record)
        if entry.stage is not _Stage.RECORDED:
            close_awaitable(coro)
            raise RecordError(
                entry.run.error_message or "the run could not be recorded in the queue"
            )
        return await coro

    def _record(
        self, run_id: str, module_id: str, module_name: str, payload: Any, nonce: str
    ) -> Task:
        """On the store thread: insert the run's task, leased to this manager."""
        self._store.ensure_registered()
        return self.queue.enqueue_claimed(
            self.worker_id,
            lease_seconds=self.lease_seconds,
            task_type=module_id,
            payload=payload,
            idempotency_key=run_id,
            max_attempts=self.max_attempts,
            queue=self.queue_name,
            headers={
                ADAPTER_HEADER: {
                    "run_id": run_id,
                    "module_name": module_name,
                    "worker_id": self.worker_id,
                    "start": nonce,
                }
            },
        )

    def _on_recorded(self, entry: _Local, future: Future[Any]) -> None:
        """The record committed (or failed); runs on the store thread, or at once."""
        try:
            task: Task = future.result()
        except BaseException as exc:
            log.warning(
                "run %s could not be recorded in the queue (%s); it runs in memory only and "
                "cannot be recovered after a crash",
                entry.run.run_id,
                exc,
            )
            with self._lock:
                entry.stage = _Stage.UNRECORDED
            if self.durable_start:
                entry.run.error_message = f"could not be recorded in the queue: {exc}"
            self._advance(entry)
            return
        header = task.headers.get(ADAPTER_HEADER) if isinstance(task.headers, Mapping) else None
        claimed = isinstance(header, Mapping) and header.get("start") == entry.nonce
        with self._lock:
            if claimed:
                entry.stage = _Stage.RECORDED
                entry.task_id = task.id
            else:
                entry.stage = _Stage.UNRECORDED
        if not claimed:
            message = (
                f"run_id {entry.run.run_id!r} is already recorded in the queue as task "
                f"{task.id} ({task.status.value}); this run is not recorded again and cannot be "
                "recovered after a crash. Fix: give every run a unique run_id, e.g. uuid4().hex"
            )
            log.warning("%s", message)
            if self.durable_start:
                entry.run.error_message = message
        self._advance(entry)

    def _advance(self, entry: _Local) -> None:
        """Move a run's bookkeeping on; called when its record committed and when its
        coroutine ended, in either order, from either thread."""
        with self._lock:
            if entry.stage is _Stage.RECORDING or entry.settling:
                return
            task_id = entry.task_id if entry.stage is _Stage.RECORDED else None
            if not entry.done:
                if task_id is not None and task_id not in self._held:
                    self._held[task_id] = entry
                    self._leases.hold([task_id])
                return
            entry.settling = True
            outcome = (
                attrs.evolve(entry.outcome, task_id=task_id)
                if task_id is not None and entry.outcome is not None
                else None
            )
        if outcome is None:
            self._settled(entry, None)
            return
        self._store.settle(outcome).add_done_callback(partial(self._settled, entry))

    def _settled(self, entry: _Local, future: Future[Any] | None) -> None:
        if future is not None and future.exception() is not None:
            log.error(
                "run %s: its outcome could not be written to task %s: %s; a worker may rerun "
                "it after the lease runs out",
                entry.run.run_id,
                entry.task_id,
                future.exception(),
            )
        with self._lock:
            if entry.task_id is not None and self._held.get(entry.task_id) is entry:
                del self._held[entry.task_id]
                self._leases.release([entry.task_id])
        if not entry.settled.done():
            entry.settled.set_result(None)
        if self._on_loop_thread() or not self._post(self._finish_local, entry):
            self._finish_local(entry)

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _finish_local(self, entry: _Local) -> None:
        """Bookkeeping of a run is over (on the loop thread, or with no loop left)."""
        self._unsettled.discard(entry)
        if self._local.get(entry.run.run_id) is entry:
            del self._local[entry.run.run_id]
        if (
            entry.outcome is not None
            and entry.outcome.kind == "release"
            and entry.task_id is not None
        ):
            # Interrupted: the task is queued again; the run follows it as a worker reruns it.
            self._follow(entry.task_id, entry.run.run_id, entry.run, TaskStatus.QUEUED)
        self._notify()

    def _on_coroutine_done(self, entry: _Local, task: asyncio.Future[Any]) -> None:
        run = entry.run
        if self.tasks.get(run.run_id) is task:
            del self.tasks[run.run_id]
        if self.durable_start:
            close_awaitable(entry.coro)  # it never started if the gate failed or was cancelled
        if entry.lost:
            self._close_bookkeeping(entry, follow=True)
            return
        if task.cancelled() and entry.cancel_reason is None:
            # Not asked for through cancel_task() or the queue: the event loop is shutting
            # down, or someone cancelled the asyncio task directly. The work is not done, so
            # give the task back to the queue for a worker to rerun.
            run.status = RunStatus.QUEUED
            run.error_message = "interrupted before it finished; queued again for a worker"
            run.completed_at = None
            self.registry.update_run(run)
            entry.outcome = Settlement(task_id=0, kind="release")
        else:
            status, result = finish_run(run, task, self.clock, entry.started, "QueuedTaskManager")
            if status is RunStatus.CANCELLED:
                run.error_message = f"cancelled: {entry.cancel_reason}"
            self.registry.update_run(run)
            entry.outcome = _settlement_for(status, result, run, entry)
        with self._lock:
            entry.done = True
        self._advance(entry)
        self._notify()

    def _close_bookkeeping(self, entry: _Local, *, follow: bool) -> None:
        """Stop renewing a run's lease and, if it was recorded, follow its task instead."""
        with self._lock:
            entry.done = True
            entry.settling = True
            task_id = entry.task_id
            if task_id is not None and self._held.get(task_id) is entry:
                del self._held[task_id]
                self._leases.release([task_id])
        if not entry.settled.done():
            entry.settled.set_result(None)
        self._unsettled.discard(entry)
        if self._local.get(entry.run.run_id) is entry:
            del self._local[entry.run.run_id]
        if follow and task_id is not None:
            self._follow(task_id, entry.run.run_id, entry.run, TaskStatus.RUNNING)
        self._notify()

    def _alive(self, ids: list[int]) -> list[int]:
        """Held ids whose coroutine can still finish (called by the watcher thread)."""
        alive = []
        with self._lock:
            for task_id in ids:
                entry = self._held.get(task_id)
                task = entry.task if entry is not None else None
                if task is not None and (task.done() or task.get_loop().is_closed()):
                    continue
                alive.append(task_id)
        return alive

    def _on_lost(self, lost: set[int]) -> None:
        self._on_heartbeat(lost, set())

    def _on_cancel_requested(self, cancel: set[int]) -> None:
        self._on_heartbeat(set(), cancel)

    def _on_heartbeat(self, lost: set[int], cancel: set[int]) -> None:
        for task_id in lost | cancel:
            entry = self._held.get(task_id)
            if entry is None or entry.task is None or entry.task.done():
                continue
            if task_id in lost:
                log.warning(
                    "run %s lost the lease of task %d (it lapsed and a worker took the task "
                    "over); stopping the coroutine here, the run follows the queue",
                    entry.run.run_id,
                    task_id,
                )
                entry.lost = True
            else:
                entry.cancel_reason = "cancel requested through the queue"
            entry.task.cancel()

    # -- following tasks workers run -----------------------------------------------------------

    def _follow(self, task_id: int, key: str, run: Run | None, status: TaskStatus) -> None:
        followed = _Followed(task_id=task_id, key=key, run=run, status=status)
        self._followed[task_id] = followed
        self._followed_by_key[key] = followed
        self._follower.watch([task_id])

    def _unfollow(self, followed: _Followed) -> None:
        self._followed.pop(followed.task_id, None)
        if self._followed_by_key.get(followed.key) is followed:
            del self._followed_by_key[followed.key]
        self._follower.unwatch(followed.task_id)

    def _on_tasks(self, tasks: list[Task], missing: list[int]) -> None:
        for task in tasks:
            followed = self._followed.get(task.id)
            if followed is None:
                continue
            self._apply(followed, task)
        for task_id in missing:
            followed = self._followed.get(task_id)
            if followed is None:
                continue
            run = followed.run
            if run is not None and run.is_active:
                run.status = RunStatus.FAILED
                run.error_message = (
                    f"its task {task_id} is no longer in the queue (it was pruned or deleted)"
                )
                run.completed_at = from_us(self.clock.now_us())
                self.registry.update_run(run)
            self._unfollow(followed)
        self._notify()

    def _apply(self, followed: _Followed, task: Task) -> None:
        followed.status = task.status
        if followed.run is not None and apply_task_to_run(followed.run, task):
            self.registry.update_run(followed.run)
        if task.is_terminal:
            self._unfollow(followed)

    def _find_interrupted(self, run_ids: list[str]) -> dict[str, Task | None]:
        """On the store thread: the tasks of runs a previous process left active."""
        return {run_id: self.queue.find(run_id) for run_id in run_ids}

    def _adopt(self, future: Future[Any]) -> None:
        self._adoption = "done"
        try:
            found: dict[str, Task | None] = future.result()
        except Exception as exc:
            log.error("looking up runs left active by a previous process failed: %s", exc)
            self._notify()
            return
        for run_id, task in found.items():
            run = self.registry.get_run(run_id)
            if (
                run is None
                or not run.is_active
                or run_id in self._local
                or run_id in self._followed_by_key
            ):
                continue
            if task is None:
                run.status = RunStatus.FAILED
                run.error_message = (
                    "interrupted: the process running it stopped before it was recorded in the "
                    "queue, so it cannot be rerun"
                )
                run.completed_at = from_us(self.clock.now_us())
                self.registry.update_run(run)
                continue
            followed = _Followed(task_id=task.id, key=run_id, run=run, status=task.status)
            self._apply(followed, task)
            if not task.is_terminal:
                self._follow(task.id, run_id, run, task.status)
        self._notify()

    # -- the rest of BackgroundTaskManager's API -----------------------------------------------

    async def cancel_task(self, run_id: str) -> bool:
        """Cancel a run (or a scheduled task, by its id).

        A run whose coroutine runs here is cancelled and awaited; its task is stored
        ``cancelled``. A task a worker runs is cancelled in the queue: at once if queued,
        within the worker's heartbeat if running (its handler is interrupted cooperatively).

        :returns: True if it was cancelled (or, for a task a worker runs, cancellation was
            recorded); False if unknown or already finished, or if the coroutine caught the
            cancellation and finished otherwise.
        """
        self._bind_loop()
        key = str(run_id)
        entry = self._local.get(key)
        if entry is not None and entry.task is not None and not entry.task.done():
            entry.cancel_reason = "cancel_task() was called"
            entry.task.cancel()
            await asyncio.wait([entry.task])
            await asyncio.wrap_future(entry.settled)
            return entry.task.cancelled() and not entry.lost
        followed = self._followed_by_key.get(key)
        task_id = followed.task_id if followed is not None else None
        if task_id is None:
            task = await self._lookup(key)
            if task is None or task.is_terminal:
                return False
            task_id = task.id
        try:
            task = await self.queue.cancel_async(task_id)
        except (TaskNotFound, InvalidTransition):
            return False
        if followed is not None:
            self._apply(followed, task)
            self._notify()
        return True

    async def wait_all(self, timeout: float | None = None) -> bool:
        """Wait until nothing this manager started or follows is queued or running, and
        every outcome is written to the queue.

        That covers coroutines running here, tasks scheduled with :meth:`schedule_task`
        (they need a worker) and runs whose task a worker took over. Wakes on the events
        themselves, not on a timer. Never raises the runs' exceptions.

        :param timeout: seconds to wait at most; None waits as long as it takes.
        :returns: True when idle, False if ``timeout`` passed first.
        """
        loop = self._bind_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._idle():
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return self._idle()
        return True

    def _idle(self) -> bool:
        if self.tasks or self._unsettled or self._adoption == "running":
            return False
        return not any(not f.status.is_terminal for f in self._followed.values())

    def get_active_task_count(self) -> int:
        """How many runs and tasks of this manager are queued or running."""
        return len(self.get_active_task_ids())

    def get_active_task_ids(self) -> list[str]:
        """The ids of runs and tasks of this manager that are queued or running: ``run_id``
        for runs, the task id for tasks from :meth:`schedule_task`."""
        ids = [run_id for run_id, task in self.tasks.items() if not task.done()]
        seen = set(ids)
        ids += [
            f.key for f in self._followed.values() if not f.status.is_terminal and f.key not in seen
        ]
        return ids

    def is_task_active(self, run_id: str) -> bool:
        """True while the run (or scheduled task) is queued or running."""
        key = str(run_id)
        task = self.tasks.get(key)
        if task is not None and not task.done():
            return True
        followed = self._followed_by_key.get(key)
        return followed is not None and not followed.status.is_terminal

    # -- queue features ------------------------------------------------------------------------

    async def register_task(
        self,
        task_type: str,
        handler: Callable[..., Any],
        description: str = "",
        *,
        allow_override: bool = False,
        timeout: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Register the handler workers of this queue run for ``task_type`` (an async or
        sync callable taking the :class:`~hookqueue.Task`). Registering the same callable
        again is a no-op.

        :raises HandlerAlreadyRegistered: another handler has this type and
            ``allow_override`` is False.
        """
        existing = self.handler_registry.find(task_type)
        if existing is not None and existing.handler is handler and not allow_override:
            return
        self.handler_registry.register_handler(
            task_type,
            handler,
            description,
            allow_override=allow_override,
            timeout=timeout,
            options=options,
        )

    async def schedule_task(
        self,
        task_type: str,
        payload: Any = None,
        priority: int = 100,
        run_after: datetime | None = None,
        idempotency_key: str | None = None,
        *,
        delay: timedelta | float | None = None,
        max_attempts: int | None = None,
        queue: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Enqueue a task for a worker (no coroutine, no run).

        :param priority: lower runs first; default 100.
        :param run_after: not before this aware datetime (or ``delay`` seconds from now).
        :param idempotency_key: a repeated key returns the existing task's id.
        :returns: the task id, as a string. The manager follows the task until it ends.
        """
        self._bind_loop()
        task = await self.queue.enqueue_async(
            task_type,
            payload,
            priority=priority,
            run_after=run_after,
            delay=delay,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            queue=queue or self.queue_name,
            timeout=timeout,
        )
        key = str(task.id)
        if not task.is_terminal and task.id not in self._followed:
            self._follow(task.id, key, None, task.status)
        return key

    async def _lookup(self, key: str) -> Task | None:
        """The task for a task id, or else a run_id / idempotency key."""
        entry = self._local.get(key)
        if entry is not None and entry.record is not None:
            await _quietly(entry.settled if entry.done else entry.record)
            if entry.task_id is not None:
                return await self.queue.get_async(entry.task_id)
        followed = self._followed_by_key.get(key)
        if followed is not None:
            try:
                return await self.queue.get_async(followed.task_id)
            except TaskNotFound:
                return None
        if key.isdigit():
            try:
                return await self.queue.get_async(int(key))
            except TaskNotFound:
                pass
        return await self.queue.find_async(key)

    async def get_task_status(self, task_id: str | int) -> dict[str, Any]:
        """A task's state, by task id, else by ``run_id`` / idempotency key.

        :returns: the task as a dict: ``task_id`` (str), ``status`` (a ``RunStatus`` string),
            ``type``, ``attempts``, ``max_attempts``, ``error_message``, ``created_at``,
            ``started_at``, ``finished_at`` (ISO 8601), ``locked_by``, ``priority``,
            ``payload``, ``result``, ``run_after``, ``idempotency_key``, ``run_id`` (for
            runs); for an unknown id ``{"status": "not_found", "task_id": ..., "error": ...}``.
        """
        key = str(task_id)
        task = await self._lookup(key)
        if task is None:
            return {
                "status": "not_found",
                "task_id": key,
                "error": (
                    f"no task has id, run_id or idempotency key {key!r} (never scheduled, "
                    "recorded under another id, or pruned)"
                ),
            }
        status = task.to_dict()
        status["task_id"] = str(task.id)
        header = task.headers.get(ADAPTER_HEADER) if isinstance(task.headers, Mapping) else None
        status["run_id"] = header.get("run_id") if isinstance(header, Mapping) else None
        return status

    async def refresh(self) -> None:
        """Re-read every followed task now and update the registry (normally this happens
        within ``watch_interval`` of each commit)."""
        self._bind_loop()
        ids = list(self._followed)
        if ids:
            tasks, missing = await asyncio.wrap_future(
                self._store.call(read_tasks, self.queue, ids)
            )
            self._on_tasks(tasks, missing)

    async def flush(self) -> None:
        """Wait until the queue holds every record and finished outcome of runs started so
        far (running coroutines are not waited for), and the registry's history is written."""
        self._bind_loop()
        pending = [e.record for e in self._unsettled if e.record is not None]
        pending += [e.settled for e in self._unsettled if e.done]
        for future in pending:
            await _quietly(future)
        await asyncio.to_thread(self.registry.flush)

    # -- lifecycle -----------------------------------------------------------------------------

    async def aclose(self, grace: float | None = None) -> None:
        """Shut down: wait up to ``grace`` seconds (None: forever) for running coroutines,
        interrupt the rest (their tasks go back to ``queued`` for a worker), write every
        outcome, and stop the background threads."""
        if self._closed:
            return
        self._bind_loop()
        deadline = None if grace is None else time.monotonic() + grace
        pending = [t for t in self.tasks.values() if not t.done()]
        if pending:
            await asyncio.wait(
                pending, timeout=None if deadline is None else max(0.0, deadline - time.monotonic())
            )
        for task in list(self.tasks.values()):
            task.cancel()  # no cancel_reason: an interruption, released for a worker
        remaining = [t for t in self.tasks.values() if not t.done()]
        if remaining:
            await asyncio.wait(remaining, timeout=5)
        for entry in list(self._unsettled):
            if entry.done:
                await _quietly(entry.settled)
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Stop the background threads after writing queued outcomes, and mark the manager's
        worker record stopped. Coroutines still running are not waited for: their leases lapse
        and workers rerun them, as after a crash (use :meth:`aclose` to shut down cleanly).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.tasks:
            log.warning(
                "QueuedTaskManager closed with %d run(s) still running; workers rerun them "
                "once their leases lapse",
                len(self.tasks),
            )
        self._finalizer()

    async def __aenter__(self) -> QueuedTaskManager:
        self._bind_loop()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _settlement_for(status: RunStatus, result: Any, run: Run, entry: _Local) -> Settlement:
    task_id = 0  # filled in once the record committed
    if status is RunStatus.COMPLETED:
        return Settlement(task_id=task_id, kind="complete", result_json=_result_json(result))
    if status is RunStatus.FAILED:
        exc = result
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return Settlement(task_id=task_id, kind="fail", error=message)
    return Settlement(task_id=task_id, kind="cancelled", error=run.error_message)


async def _quietly(future: Future[Any]) -> None:
    """Wait for a store-thread future, ignoring its error (reported where it happened)."""
    await asyncio.wait([asyncio.wrap_future(future)])


def _register_worker(queue: Queue, worker_id: str, queue_name: str) -> None:
    now = queue.now()
    queue.runtime.register_worker(
        WorkerInfo(
            worker_id=worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=(queue_name,),
            concurrency=1,
            started_at=now,
            heartbeat_at=now,
        )
    )


def _call_alive(ref: weakref.ref[QueuedTaskManager], ids: list[int]) -> list[int]:
    manager = ref()
    return [] if manager is None else manager._alive(ids)


def _post_to(ref: weakref.ref[QueuedTaskManager], method: str, *args: Any) -> None:
    manager = ref()
    if manager is not None:
        manager._post(getattr(manager, method), *args)


def _post_future_to(ref: weakref.ref[QueuedTaskManager], method: str, future: Future[Any]) -> None:
    manager = ref()
    if manager is not None and not manager._post(getattr(manager, method), future):
        manager._adoption = "pending"  # the loop is gone; look again on the next one


def _wake_keeper(ref: weakref.ref[LeaseKeeper], reason: str) -> None:
    keeper = ref()
    if keeper is not None and reason == "cancel":
        keeper.beat_now()


def _shutdown(
    store: StoreThread, leases: LeaseKeeper, follower: TaskFollower, queue: Queue, waker: int
) -> None:
    queue.runtime.remove_waker(waker)
    leases.stop()
    follower.stop()
    store.stop()
    if store._registered:
        try:
            queue.runtime.worker_stopped(store.worker_id)
        except Exception:  # the database may be closed already at interpreter exit
            log.debug("recording the task manager's stop failed", exc_info=True)


__all__ = ["DEFAULT_LEASE_SECONDS", "QueuedTaskManager", "RecordError", "apply_task_to_run"]
