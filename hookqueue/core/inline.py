"""Inline mode and in-process runs: work tasks in the caller, through the same hooks as a worker.

``Queue(path, inline=True)`` calls :func:`run_inline` after each enqueue commits: every new task
that is due runs at once, in the caller, before ``enqueue`` returns. :func:`run_due` runs
whatever is due now (delayed tasks whose time came, retries waiting for their backoff, leases
that expired) — in tests, after moving a ``FakeClock``; in scripts, instead of a worker.

Both run a real :class:`~hookqueue.WorkerEngine` with ``concurrency=1`` and a dedicated worker
id (:data:`INLINE_WORKER_ID`), so the lease goes through ``hookqueue_lease``, the handler
through ``hookqueue_execute``, failures through ``hookqueue_retry``, and the outcome is settled
in the store with the same statuses, attempt counts and events a separate worker would give.
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

Store calls of these runs go through one long-lived thread per queue (one SQLite connection),
so thousands of inline enqueues do not open thousands of connections.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import attrs

from .clock import to_us
from .errors import InvalidTransition, TaskNotFound, WorkerError
from .hookspecs import hookimpl
from .models import Failure, Task, TaskStatus
from .queue import Queue
from .worker import WorkerEngine, WorkerStats

T = TypeVar("T")

#: The worker id in-process runs use (``Task.locked_by`` while running, ``TaskEvent.worker_id``).
#: Nested runs (a handler enqueueing into an inline queue) use ``inline-2``, ``inline-3``, ...
INLINE_WORKER_ID = "inline"

#: How deep handlers may nest inline enqueues before the innermost enqueue is refused.
MAX_INLINE_DEPTH = 50

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
# The store thread shared by a queue's in-process runs
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


_store_threads: weakref.WeakKeyDictionary[Queue, _StoreThread] = weakref.WeakKeyDictionary()
_store_threads_lock = threading.Lock()


def _store_thread(queue: Queue) -> _StoreThread:
    with _store_threads_lock:
        store = _store_threads.get(queue)
        if store is None:
            store = _StoreThread()
            _store_threads[queue] = store
            # A queue that is never closed through close_runner still lets its thread go
            # when it is garbage-collected.
            weakref.finalize(queue, store.executor.shutdown, False)
        return store


def close_runner(queue: Queue) -> None:
    """Stop the store thread of ``queue``'s in-process runs, if it has one. Idempotent.

    ``Queue.close`` should call this; until it does, call it before closing a queue you ran
    inline (the pytest fixtures do), or let garbage collection stop the thread.
    """
    with _store_threads_lock:
        store = _store_threads.pop(queue, None)
    if store is not None:
        store.executor.shutdown(wait=not store.is_current())


# ---------------------------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------------------------


class _InProcessWorker(WorkerEngine):
    """A :class:`WorkerEngine` with one slot whose store calls go to the queue's shared store
    thread, and which notes what it leases."""

    def __init__(
        self, queue: Queue, worker_id: str, queues: Sequence[str], store: _StoreThread | None
    ) -> None:
        super().__init__(queue, worker_id, queues=queues, concurrency=1)
        self._shared_store = store
        #: Tasks as leased, in order.
        self.leased: list[Task] = []

    async def _store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._shared_store is None:
            result = await super()._store(fn, *args, **kwargs)
        else:
            result = await self._shared_store.call(fn, *args, **kwargs)
        if fn == self.queue.lease:
            self.leased.extend(result)  # type: ignore[arg-type]
        return result


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


async def _work(queue: Queue, queues: Sequence[str], worker_id: str) -> _InProcessWorker:
    depth = _depth.get()
    store: _StoreThread | None = _store_thread(queue)
    assert store is not None
    if store.is_current():
        # Called from the store thread itself (an event observer enqueued into an inline
        # queue): queueing our store calls behind the call we run in would wait forever.
        store = None
    token = _depth.set(depth + 1)
    try:
        wid = worker_id if depth == 0 else f"{worker_id}-{depth + 1}"
        worker = _InProcessWorker(queue, wid, queues, store)
        await worker.run_until_idle_async()
    finally:
        _depth.reset(token)
    return worker


def _refuse_if_too_deep(queue: Queue, tasks: Sequence[Task]) -> None:
    depth = _depth.get()
    if depth < MAX_INLINE_DEPTH:
        return
    # Left queued, the tasks would be picked up by the enclosing run and enqueue again, for
    # ever: cancel them, so the chain ends with this error in the handler that enqueued.
    now = queue.clock.now_us()
    for t in tasks:
        if t.status is TaskStatus.QUEUED and to_us(t.run_after, "run_after") <= now:
            try:
                queue.cancel(t.id)
            except (InvalidTransition, TaskNotFound):
                pass
    raise WorkerError(
        f"inline mode: handlers enqueued tasks {depth} levels deep (a task that enqueues "
        f"itself?); the limit is MAX_INLINE_DEPTH={MAX_INLINE_DEPTH}, and the tasks of this "
        f"enqueue ({', '.join(str(t.id) for t in tasks)}) were cancelled. Fix: end the chain, or "
        "test it on a queue without inline=True, stepping with run_due()"
    )


async def _reread(queue: Queue, ids: Iterable[int]) -> list[Task]:
    ids = list(ids)
    store = _store_thread(queue)
    if store.is_current():
        return [queue.get(i) for i in ids]
    return await store.call(lambda: [queue.get(i) for i in ids])


def _due_queue_names(queue: Queue) -> list[str]:
    return queue.db.due_queue_names(queue.clock.now_us())


def _due_queues_of(queue: Queue, tasks: Sequence[Task]) -> list[str]:
    now = queue.clock.now_us()
    return sorted(
        {
            t.queue
            for t in tasks
            if t.status is TaskStatus.QUEUED and to_us(t.run_after, "run_after") <= now
        }
    )


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


def run_inline(queue: Queue, tasks: Sequence[Task]) -> list[Task]:
    """Run the due tasks among ``tasks`` (just enqueued) at once, in the caller.

    Called by ``Queue.enqueue`` and ``Queue.enqueue_many`` on a queue built with
    ``inline=True``, after the enqueue committed. If at least one of ``tasks`` is queued and
    due, a worker with one slot works each of their queues until nothing in it is due —
    the new tasks, what their handlers enqueue there, and anything else already due there.
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
    queues = _due_queues_of(queue, tasks)
    if not queues:
        return list(tasks)
    _refuse_if_too_deep(queue, tasks)

    async def work() -> list[Task]:
        await _work(queue, queues, INLINE_WORKER_ID)
        return await _reread(queue, (t.id for t in tasks))

    return _run_sync(work)


async def run_inline_async(queue: Queue, tasks: Sequence[Task]) -> list[Task]:
    """:func:`run_inline` on the caller's running loop (for ``enqueue_async``): async handlers
    run on this loop, and the loop is never blocked on SQLite."""
    queues = _due_queues_of(queue, tasks)
    if not queues:
        return list(tasks)
    _refuse_if_too_deep(queue, tasks)
    await _work(queue, queues, INLINE_WORKER_ID)
    return await _reread(queue, (t.id for t in tasks))


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
    capture = _FailureCapture()
    queue.pm.register(capture, name=f"hookqueue-run-due-{id(capture)}")
    attempts: list[Task] = []
    stats = WorkerStats()
    try:
        store = _store_thread(queue)
        while True:
            if queues is not None:
                names = list(queues)
            elif store.is_current():
                names = _due_queue_names(queue)
            else:
                names = await store.call(_due_queue_names, queue)
            if not names:
                break
            worker = await _work(queue, names, worker_id)
            attempts += worker.leased
            for field in attrs.fields(WorkerStats):
                setattr(
                    stats,
                    field.name,
                    getattr(stats, field.name) + getattr(worker.stats, field.name),
                )
            # Given names were worked until idle. Otherwise look again, since handlers may
            # have enqueued into other names, unless this round leased nothing.
            if queues is not None or not worker.leased:
                break
    finally:
        queue.pm.unregister(capture)
    ids = list(dict.fromkeys(t.id for t in attempts))
    ran = set(ids)
    tasks = await _reread(queue, ids)
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
    "close_runner",
    "run_due",
    "run_due_async",
    "run_inline",
    "run_inline_async",
]
