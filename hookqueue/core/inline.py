"""Inline mode and in-process runs: work tasks in the caller, through the same hooks as a worker.

``Queue(path, inline=True)`` calls :func:`run_inline` after each enqueue commits: every new task
that is due runs at once, in the caller, before ``enqueue`` returns. :func:`run_due` runs
whatever is due now (delayed tasks whose time came, retries waiting for their backoff, leases
that expired) — in tests, after moving a ``FakeClock``; in scripts, instead of a worker.

Both lease one task at a time with a dedicated worker id (:data:`INLINE_WORKER_ID`) and run it
with the worker's own attempt code (:mod:`hookqueue.core.attempt`), so the lease goes through
``hookqueue_lease``, the handler through ``hookqueue_execute``, failures through
``hookqueue_retry``, and the outcome is settled in the store with the same statuses, attempt
counts and events a separate worker would give; a :class:`~hookqueue.core.leasekeeper.LeaseKeeper`
renews the running task's lease meanwhile.
The database is the real one; nothing is mocked. Tasks run one at a time, in the order the
scheduler leases them; a retry that is due at once runs again in the same call, a retry with
a backoff waits for the next :func:`run_due` after the clock has moved.

Where the work runs:

- from synchronous code with no running event loop: on a private event loop in the calling
  thread (async handlers run there; sync handlers in the worker's handler thread, as always);
- from synchronous code called inside a running event loop (a sync ``enqueue`` in a
  coroutine): that loop cannot run anything until the call returns, so the work runs on a
  private loop in a helper thread while the caller waits;
- from :func:`run_inline_async` / :func:`run_due_async`: on the caller's own loop, so async
  handlers can use objects bound to it.

Context variables of the caller are visible to the handlers in every case. A handler that
enqueues into an inline queue runs the new task at once, nested (at most
:data:`MAX_INLINE_DEPTH` levels: the enqueue that goes deeper cancels its tasks and raises,
failing the handler that called it, so a task that enqueues itself ends instead of running
for ever).

Store calls of these runs go through one long-lived thread per queue (one store connection),
so thousands of inline enqueues do not open thousands of connections.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from .attempt import WorkerStats, no_handler, run_attempt
from .clock import from_us, to_us
from .errors import InvalidTransition, TaskNotFound, WorkerError
from .execution import Execution
from .hookspecs import hookimpl
from .leasekeeper import LeaseKeeper
from .models import Failure, Task, TaskStatus, WorkerInfo
from .runtime import QueueRuntime
from .storage import Settlement

if TYPE_CHECKING:
    from .queue import Queue

T = TypeVar("T")

#: The worker id in-process runs use (``Task.locked_by`` while running, ``TaskEvent.worker_id``).
#: Nested runs (a handler enqueueing into an inline queue) use ``inline-2``, ``inline-3``, ...
INLINE_WORKER_ID = "inline"

#: How deep handlers may nest inline enqueues before the innermost enqueue is refused.
MAX_INLINE_DEPTH = 50

#: The lease of an in-process attempt, renewed every quarter of it while the attempt runs.
INLINE_LEASE_SECONDS = 10.0

_depth: contextvars.ContextVar[int] = contextvars.ContextVar("hookqueue_inline_depth", default=0)


@attrs.frozen(kw_only=True)
class InlineRun:
    """What one in-process run did (returned by :func:`run_due`)."""

    #: The worker id that leased the tasks.
    worker_id: str
    #: Each attempt's task as it was leased (``running``, ``attempts`` counting this attempt),
    #: in the order the attempts started; a task retried in the same run appears again.
    attempts: tuple[Task, ...]
    #: Every task that had an attempt, once, in the order of its first attempt, as stored
    #: after the run.
    tasks: tuple[Task, ...]
    #: The worker's counts (completed, failed, retried, ...).
    stats: WorkerStats
    #: For each task id, the failures of its attempts in this run (with exception and
    #: traceback), in order.
    failures: Mapping[int, tuple[Failure, ...]] = attrs.field(factory=dict)

    @property
    def task_ids(self) -> list[int]:
        """Ids of :attr:`tasks`, in the order of their first attempt."""
        return [t.id for t in self.tasks]

    @property
    def completed(self) -> list[Task]:
        """The tasks that ended ``completed``."""
        return [t for t in self.tasks if t.status is TaskStatus.COMPLETED]

    @property
    def failed(self) -> list[Task]:
        """The tasks that ended ``failed``."""
        return [t for t in self.tasks if t.status is TaskStatus.FAILED]

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def task(self, task_id: int) -> Task:
        """The task with this id as stored after the run.

        :raises KeyError: naming the ids that did run.
        """
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise KeyError(
            f"task {task_id} did not run in this run; the tasks that ran are {self.task_ids}"
        )

    def assert_all_completed(self) -> None:
        """Raise ``AssertionError`` unless every task that ran ended ``completed``.

        The message lists each other task with its status, its error and the traceback of
        its last failure in this run, so a failing handler shows why in the test report.
        """
        __tracebackhide__ = True
        bad = [t for t in self.tasks if t.status is not TaskStatus.COMPLETED]
        if not bad:
            return
        lines = [f"{len(bad)} of {len(self.tasks)} task(s) that ran did not complete:"]
        for t in bad:
            lines.append(
                f"- task {t.id} ({t.task_type}) is {t.status.value} after attempt "
                f"{t.attempts} of {t.max_attempts}: {t.error_message}"
            )
            failures = self.failures.get(t.id, ())
            if failures and failures[-1].traceback:
                lines.append("  " + failures[-1].traceback.rstrip().replace("\n", "\n  "))
        raise AssertionError("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------


class _StoreThread:
    """One long-lived thread doing the store calls of a queue's in-process runs.

    A :class:`WorkerEngine` starts a fresh store thread per run, and the store keeps one
    connection per thread until it closes; an inline queue starts a run per enqueue, so
    without this every enqueue would leave a connection (two file descriptors) open.
    """

    def __init__(self) -> None:
        self.ident: int | None = None
        self.executor = ThreadPoolExecutor(
            1, thread_name_prefix="hookqueue-inline-store", initializer=self._mark
        )

    def _mark(self) -> None:
        self.ident = threading.get_ident()

    def is_current(self) -> bool:
        """True when called on this store thread."""
        return self.ident == threading.get_ident()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the store thread without blocking the running loop."""
        return await asyncio.wrap_future(self.executor.submit(partial(fn, *args, **kwargs)))


class _FailureCapture:
    """Registered for the length of a :func:`run_due` call: notes each failure with its
    exception and traceback (the store keeps only the message)."""

    #: Hides this helper from hook-call recorders' plugin lists.
    hookqueue_testing_internal = True

    def __init__(self) -> None:
        self.failures: dict[int, list[Failure]] = {}
        self._lock = threading.Lock()

    @hookimpl(wrapper=True)
    def hookqueue_retry(self, task: Task, failure: Failure) -> Any:
        with self._lock:
            self.failures.setdefault(task.id, []).append(failure)
        return (yield)


@attrs.define
class InlineWorker:
    """An in-process run as the worker lifecycle hooks see it (``hookqueue_worker_start`` and
    ``hookqueue_worker_stop``): the attributes of a :class:`~hookqueue.WorkerEngine` that
    plugins read."""

    #: The run's worker id (:data:`INLINE_WORKER_ID`, ``inline-2`` when nested, ...).
    worker_id: str
    #: The queue it works.
    queue: Any
    #: The queue's runtime.
    runtime: QueueRuntime
    #: The queue names it works.
    queues: tuple[str, ...]
    #: Counts of what it did.
    stats: WorkerStats = attrs.field(factory=WorkerStats)
    #: In-process runs work one task at a time.
    concurrency: int = 1


class InlineRunner:
    """Runs a queue's due tasks in the caller, one at a time.

    One per queue runtime (:meth:`for_runtime`): it owns the store thread its runs share, a
    sync-handler thread per nesting level, and the lease keepers of its worker ids.
    """

    _runners: weakref.WeakKeyDictionary[QueueRuntime, InlineRunner] = weakref.WeakKeyDictionary()
    _runners_lock = threading.Lock()

    def __init__(self, runtime: QueueRuntime) -> None:
        self.runtime = runtime
        self.store = _StoreThread()
        self._handler_threads: dict[int, ThreadPoolExecutor] = {}
        self._keepers: dict[str, LeaseKeeper] = {}
        #: The attempts running now, by task id: (their loop, their asyncio task, execution).
        self._running: dict[
            int, tuple[asyncio.AbstractEventLoop, asyncio.Task[Any], Execution]
        ] = {}
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def for_runtime(cls, runtime: QueueRuntime) -> InlineRunner:
        """The runner of ``runtime``, made on first use."""
        with cls._runners_lock:
            runner = cls._runners.get(runtime)
            if runner is None or runner._closed:
                runner = cls._runners[runtime] = cls(runtime)
                # A queue that is never closed still lets the threads go when collected.
                weakref.finalize(runtime, runner._shutdown_threads)
            return runner

    @classmethod
    def close_for(cls, runtime: QueueRuntime) -> None:
        """Close ``runtime``'s runner, if it has one. Idempotent."""
        with cls._runners_lock:
            runner = cls._runners.pop(runtime, None)
        if runner is not None:
            runner.close()

    def close(self) -> None:
        """Stop the runner's threads (the store thread last). Idempotent."""
        self._closed = True
        self._shutdown_threads()

    def _shutdown_threads(self) -> None:
        with self._lock:
            keepers, self._keepers = list(self._keepers.values()), {}
            pools, self._handler_threads = list(self._handler_threads.values()), {}
        for keeper in keepers:
            keeper.stop()
        for pool in pools:
            pool.shutdown(wait=False)
        self.store.executor.shutdown(wait=not self.store.is_current())

    # -- the public entry points ---------------------------------------------------------------

    def run(self, tasks: Sequence[Task]) -> list[Task]:
        """:func:`run_inline`."""
        queues = self._due_queues_of(tasks)
        if not queues:
            return list(tasks)
        self._refuse_if_too_deep(tasks)

        async def work() -> list[Task]:
            await self.work(queues, INLINE_WORKER_ID)
            return await self._reread(t.id for t in tasks)

        return _run_sync(work)

    async def run_async(self, tasks: Sequence[Task]) -> list[Task]:
        """:func:`run_inline_async`."""
        queues = self._due_queues_of(tasks)
        if not queues:
            return list(tasks)
        self._refuse_if_too_deep(tasks)
        await self.work(queues, INLINE_WORKER_ID)
        return await self._reread(t.id for t in tasks)

    # -- one run -------------------------------------------------------------------------------

    async def _store_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.store.is_current():
            # Called from the store thread itself (an event observer enqueued into an inline
            # queue): queueing our store call behind the one we run in would wait forever.
            return fn(*args, **kwargs)
        return await self.store.call(fn, *args, **kwargs)

    def _keeper(self, worker_id: str) -> LeaseKeeper:
        with self._lock:
            keeper = self._keepers.get(worker_id)
            if keeper is None:
                keeper = self._keepers[worker_id] = LeaseKeeper(
                    self.runtime,
                    worker_id,
                    lease_seconds=INLINE_LEASE_SECONDS,
                    interval=INLINE_LEASE_SECONDS / 4,
                    on_lost=partial(self._stop_attempts, "lease lost"),
                    on_cancel=partial(self._stop_attempts, "cancel requested"),
                    name=f"hookqueue-inline-leases-{worker_id}",
                )
            return keeper

    def _handler_thread(self, depth: int) -> ThreadPoolExecutor:
        # One thread per nesting level: a sync handler that enqueues inline waits for the
        # nested run, whose sync handlers need a thread of their own.
        with self._lock:
            pool = self._handler_threads.get(depth)
            if pool is None:
                pool = self._handler_threads[depth] = ThreadPoolExecutor(
                    1, thread_name_prefix=f"hookqueue-inline-handler-{depth}"
                )
            return pool

    def _stop_attempts(self, reason: str, task_ids: set[int]) -> None:
        """Cancel running attempts (called on a lease keeper's thread)."""
        for task_id in task_ids:
            entry = self._running.get(task_id)
            if entry is None:
                continue
            loop, atask, execution = entry
            execution.cancel(reason)
            try:
                loop.call_soon_threadsafe(atask.cancel)
            except RuntimeError:  # its loop already closed: the attempt is over
                pass

    async def work(self, queues: Sequence[str], worker_id: str) -> tuple[list[Task], WorkerStats]:
        """Lease and run due tasks of ``queues`` one at a time until none is due.

        :returns: each attempt's task as leased, in order, and the run's counts.
        """
        depth = _depth.get()
        token = _depth.set(depth + 1)
        wid = worker_id if depth == 0 else f"{worker_id}-{depth + 1}"
        runtime = self.runtime
        keeper = self._keeper(wid)
        leased_all: list[Task] = []
        worker = InlineWorker(
            worker_id=wid, queue=runtime.queue, runtime=runtime, queues=tuple(queues)
        )
        stats = worker.stats
        pending: list[Settlement] = []
        loop = asyncio.get_running_loop()
        now = from_us(runtime.clock.now_us())
        await self._store_call(
            runtime.register_worker,
            WorkerInfo(
                worker_id=wid,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                queues=tuple(queues),
                concurrency=1,
                started_at=now,
                heartbeat_at=now,
            ),
        )
        runtime.hooks.worker_start(worker)
        try:
            while True:
                leased = await self._store_call(
                    runtime.lease,
                    wid,
                    queues=queues,
                    limit=1,
                    lease_seconds=INLINE_LEASE_SECONDS,
                    settlements=pending,
                )
                keeper.release(s.task_id for s in pending)
                stats.count(pending)
                pending = []
                if not leased:
                    # Nothing is due (or the scheduler declined what is: leasing again
                    # would spin), so the run ends here.
                    break
                task = leased[0]
                leased_all.append(task)
                spec = runtime.handlers.find(task.task_type)
                if spec is None:
                    pending.append(no_handler(runtime, task, wid))
                    keeper.hold([task.id])
                    continue
                execution = Execution(
                    task=task, worker_id=wid, executor=self._handler_thread(depth)
                )
                # Its own asyncio task, so it has its own context (current_execution) and
                # can be cancelled by the lease keeper without cancelling this run.
                attempt = loop.create_task(run_attempt(runtime, task, spec, execution))
                self._running[task.id] = (loop, attempt, execution)
                keeper.hold([task.id])
                try:
                    settlement = await attempt
                finally:
                    self._running.pop(task.id, None)
                if settlement is None:
                    stats.lost += 1
                    keeper.release([task.id])
                else:
                    pending.append(settlement)
        finally:
            _depth.reset(token)
            if pending:
                # Interrupted before the outcomes were written (the run's own task was
                # cancelled): write them now, so no finished attempt is left running.
                await self._store_call(runtime.settle, wid, pending)
                keeper.release(s.task_id for s in pending)
                stats.count(pending)
            await self._store_call(runtime.worker_stopped, wid)
            runtime.hooks.worker_stop(worker)
        return leased_all, stats

    # -- helpers -------------------------------------------------------------------------------

    def _due_queues_of(self, tasks: Sequence[Task]) -> list[str]:
        now = self.runtime.clock.now_us()
        return sorted(
            {
                t.queue
                for t in tasks
                if t.status is TaskStatus.QUEUED and to_us(t.run_after, "run_after") <= now
            }
        )

    def _refuse_if_too_deep(self, tasks: Sequence[Task]) -> None:
        depth = _depth.get()
        if depth < MAX_INLINE_DEPTH:
            return
        # Left queued, the tasks would be picked up by the enclosing run and enqueue again,
        # for ever: cancel them, so the chain ends with this error in the handler that
        # enqueued.
        queue = self.runtime.queue
        now = self.runtime.clock.now_us()
        for t in tasks:
            if t.status is TaskStatus.QUEUED and to_us(t.run_after, "run_after") <= now:
                try:
                    queue.cancel(t.id)
                except (InvalidTransition, TaskNotFound):
                    pass
        raise WorkerError(
            f"inline mode: handlers enqueued tasks {depth} levels deep (a task that enqueues "
            f"itself?); the limit is MAX_INLINE_DEPTH={MAX_INLINE_DEPTH}, and the tasks of "
            f"this enqueue ({', '.join(str(t.id) for t in tasks)}) were cancelled. Fix: end the "
            "chain, or test it on a queue without inline=True, stepping with run_due()"
        )

    async def _reread(self, ids: Iterator[int] | Sequence[int]) -> list[Task]:
        wanted = list(ids)
        found = {t.id: t for t in await self._store_call(self.runtime.db.get_many, wanted)}
        return [found[i] for i in wanted if i in found]


# ---------------------------------------------------------------------------------------------
# Running coroutines from synchronous callers
# ---------------------------------------------------------------------------------------------


def _run_private_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    # A loop of our own, never installed as the thread's current loop, so the caller's loop
    # setup (pytest-asyncio's, an application's) is left as it was.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(make())
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    ctx = contextvars.copy_context()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return ctx.run(_run_private_loop, make)
    # The caller blocks a running loop, which cannot run our work until we return: run it
    # on a private loop in a helper thread, in a copy of the caller's context, and wait.
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = ctx.run(_run_private_loop, make)
        except BaseException as exc:  # handed to the waiting caller, whatever it is
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="hookqueue-inline", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result: T = outcome["result"]
    return result


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def close_runner(queue: Queue) -> None:
    """Stop the threads of ``queue``'s in-process runs, if it has any. Idempotent.

    ``Queue.close`` calls this; a queue never closed lets them go when it is collected.
    """
    InlineRunner.close_for(queue.runtime)


def run_inline(queue: Queue, tasks: Sequence[Task]) -> list[Task]:
    """Run the due tasks among ``tasks`` (just enqueued) at once, in the caller.

    Called by ``Queue.enqueue`` and ``Queue.enqueue_many`` on a queue built with
    ``inline=True``, after the enqueue committed. If at least one of ``tasks`` is queued and
    due, each of their queues is worked one task at a time until nothing in it is due — the
    new tasks, what their handlers enqueue there, and anything else already due there.
    Delayed tasks stay queued for a later :func:`run_due`. A handler's exception does not
    propagate: the task ends ``failed`` (or waits for its retry) exactly as under a worker.

    :param queue: the queue the tasks were enqueued into.
    :param tasks: the tasks as the enqueue returned them (existing ones for repeated
        idempotency keys included; they run only if they are still queued and due).
    :returns: the same tasks, in the same order, as stored after running.
    :raises WorkerError: handlers nested inline enqueues more than :data:`MAX_INLINE_DEPTH`
        deep; the due tasks of this enqueue are cancelled, so a task that enqueues itself
        ends instead of running for ever.
    """
    return InlineRunner.for_runtime(queue.runtime).run(tasks)


async def run_inline_async(queue: Queue, tasks: Sequence[Task]) -> list[Task]:
    """:func:`run_inline` on the caller's running loop (for ``enqueue_async``): async handlers
    run on this loop, and the loop is never blocked on the store."""
    return await InlineRunner.for_runtime(queue.runtime).run_async(tasks)


def run_due(
    queue: Queue, *, queues: Sequence[str] | None = None, worker_id: str = INLINE_WORKER_ID
) -> InlineRun:
    """Run every task that is due now, one at a time, in the caller, until none is due.

    "Due" is the queue clock's now: move a ``FakeClock`` forward first to bring delayed tasks,
    backed-off retries and expired leases due. Tasks run in the order the scheduler
    (``hookqueue_lease``) leases them, each through the same hooks as under a worker; tasks
    that handlers enqueue and that are due run in the same call, and so do retries that are
    due at once. Works from synchronous code (also inside a running event loop, see the
    module docs); in coroutines prefer :func:`run_due_async`.

    :param queue: the queue to work.
    :param queues: the queue names to work; None works every queue name that has due tasks
        (looked up again after each round, so tasks enqueued into new names run too).
    :param worker_id: the worker id to lease with.
    :returns: what ran, in order, with the outcome of each task and its failures.
    """
    return _run_sync(lambda: run_due_async(queue, queues=queues, worker_id=worker_id))


async def run_due_async(
    queue: Queue, *, queues: Sequence[str] | None = None, worker_id: str = INLINE_WORKER_ID
) -> InlineRun:
    """:func:`run_due` on the caller's running loop (async handlers run on it)."""
    if isinstance(queues, str):
        queues = (queues,)
    runner = InlineRunner.for_runtime(queue.runtime)
    db = queue.runtime.db
    clock = queue.runtime.clock
    capture = _FailureCapture()
    queue.pm.register(capture, name=f"hookqueue-run-due-{id(capture)}")
    attempts: list[Task] = []
    stats = WorkerStats()
    try:
        while True:
            if queues is not None:
                names = list(queues)
            else:
                names = await runner._store_call(db.due_queue_names, clock.now_us())
            if not names:
                break
            leased, round_stats = await runner.work(names, worker_id)
            attempts += leased
            for field in attrs.fields(WorkerStats):
                setattr(
                    stats,
                    field.name,
                    getattr(stats, field.name) + getattr(round_stats, field.name),
                )
            # Given names were worked until idle. Otherwise look again, since handlers may
            # have enqueued into other names, unless this round leased nothing.
            if queues is not None or not leased:
                break
    finally:
        queue.pm.unregister(capture)
    ids = list(dict.fromkeys(t.id for t in attempts))
    ran = set(ids)
    tasks = await runner._reread(ids)
    return InlineRun(
        worker_id=worker_id,
        attempts=tuple(attempts),
        tasks=tuple(tasks),
        stats=stats,
        failures={tid: tuple(fs) for tid, fs in capture.failures.items() if tid in ran},
    )


__all__ = [
    "INLINE_WORKER_ID",
    "MAX_INLINE_DEPTH",
    "InlineRun",
    "InlineRunner",
    "InlineWorker",
    "close_runner",
    "run_due",
    "run_due_async",
    "run_inline",
    "run_inline_async",
]
