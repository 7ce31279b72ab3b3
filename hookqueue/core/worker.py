"""``WorkerEngine``: an asyncio worker that leases tasks, runs their handlers, keeps their leases
and shuts down without losing work.

One worker is one event loop plus a few threads:

- a single *store thread* does the worker's leases and settlements, in order, on its own
  connection (a batch of finished attempts is written in the same transaction as the next
  lease, so a busy worker commits once per batch, not once per task);
- a :class:`~hookqueue.core.leasekeeper.LeaseKeeper` renews the leases of running tasks and
  records the worker's heartbeat from a thread of its own, so an async handler that blocks
  the loop cannot make its own lease (or its neighbours') expire; the keeper also notices
  when the loop is blocked and says which tasks are running;
- :class:`~hookqueue.core.handlerthreads.HandlerThreads` run sync handlers (``concurrency``
  daemon threads: a handler that never returns cannot keep the process alive after
  shutdown); async handlers run on the loop.

Waking up: an enqueue in the same process wakes the worker at once; a commit by another
process is noticed by a watcher thread through the store's change watcher
(:meth:`~hookqueue.core.storage.TaskStore.watch_changes`), which looks for due work on its
own connection before waking the loop; a delayed task or an expiring lease wakes it by timer
at its instant.

A worker leases only task types it has handlers for: tasks of other types stay queued for a
worker that has them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from .attempt import WorkerStats, describe_stats, no_handler, run_attempt
from .errors import StoreError, ValidationError, WorkerError
from .execution import Execution
from .handlers import TaskHandlerRegistry
from .handlerthreads import HandlerThreads
from .leasekeeper import LeaseKeeper
from .models import Task, WorkerInfo
from .queue import Queue
from .storage import ChangeWatcher, Settlement, TaskStore

log = logging.getLogger("hookqueue.worker")

T = TypeVar("T")

#: How long an all-queues worker keeps the list of queue names before looking again.
QUEUE_NAMES_TTL = 1.0
#: How often the event loop reports that it is alive to the lease keeper's thread.
LOOP_TICK = 0.25
#: A loop that has not run for this long (seconds) is reported as blocked (then every
#: :data:`BLOCKED_REPEAT` seconds while it stays blocked).
BLOCKED_AFTER = 1.0
BLOCKED_REPEAT = 10.0


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _check_positive(field: str, value: Any, fix: str, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValidationError(field, value, "must be a positive number", fix)


class WorkerEngine:
    """Works tasks from a queue until stopped.

    :param queue_or_db: a :class:`~hookqueue.Queue`, a store (its shared Queue is used) or
        None (the default database).
    :param worker_id: a unique name for this worker (default ``host-pid-random``).
    :param handler_registry: where handlers are looked up (default: the queue's).
    :param queues: the queue names to lease from.
    :param concurrency: how many tasks run at once.
    :param lease_seconds: how long a lease lasts without renewal. A worker that dies holds its
        tasks at most this long before another worker takes them over.
    :param heartbeat_interval: how often leases are renewed and cancellations picked up
        (default ``lease_seconds / 4``).
    :param shutdown_grace: seconds running tasks get to finish on shutdown before they are
        cancelled and their leases released (the attempt is not counted).
    :param wake_poll_interval: how often other processes' commits are looked for while the
        database is being written.
    :param wake_on_wal_writes: on Linux, sleep while nobody writes the database and wake
        when its write-ahead log is written (inotify), instead of polling all the time.
    :param all_queues: lease from every queue that has tasks (``queues`` is then ignored);
        the names are looked up again at most every :data:`QUEUE_NAMES_TTL` seconds.
    :param max_tasks: stop (gracefully) after this many finished attempts — for recycling
        worker processes (``hookqueue worker --max-tasks-per-child``); None: no limit.
    :param scheduler: whether this worker takes part in periodic schedules (the
        ``periodic`` plugin declares its handlers' schedules and fires due ticks in every
        worker where this is True; ``hookqueue worker --no-scheduler`` sets it False). The
        core itself only carries the switch, as :attr:`scheduler`, for plugins to read.
    :param prune_interval: prune as the worker starts and then this often (seconds or a
        timedelta): delete the tasks that finished longer ago than the queue's ``retention``
        (:meth:`Queue.prune`), on the queue's I/O threads, never on the event loop, and log
        how many went. None (default): the worker never prunes (``hookqueue prune`` does).

    Every run method (:meth:`run`, :meth:`run_async`, :meth:`run_until_idle`,
    :meth:`run_until_idle_async`) may be called again on the same worker once the previous
    run returned.
    """

    def __init__(
        self,
        queue_or_db: Queue | TaskStore | None = None,
        worker_id: str | None = None,
        *,
        handler_registry: TaskHandlerRegistry | None = None,
        queues: Sequence[str] = ("default",),
        concurrency: int = 10,
        lease_seconds: float = 10.0,
        heartbeat_interval: float | None = None,
        shutdown_grace: float = 30.0,
        wake_poll_interval: float = 0.001,
        idle_poll_interval: float = 1.0,
        wake_on_wal_writes: bool = True,
        all_queues: bool = False,
        max_tasks: int | None = None,
        scheduler: bool = True,
        prune_interval: float | timedelta | None = None,
    ) -> None:
        if queue_or_db is None:
            queue_or_db = Queue()  # HOOKQUEUE_DB or the default file; a URL opens its store
        self.queue = Queue.for_database(queue_or_db)
        #: The queue's runtime: the store, hooks and clock, and the protocol workers call.
        self.runtime = self.queue.runtime
        if worker_id is not None and (not isinstance(worker_id, str) or not worker_id):
            raise ValidationError(
                "worker_id", worker_id, "must be a non-empty string", "e.g. 'worker-1'"
            )
        self.worker_id = worker_id or _default_worker_id()
        self.handler_registry = (
            handler_registry if handler_registry is not None else self.queue.handlers
        )
        if isinstance(queues, str):
            queues = (queues,)
        if not queues or not all(isinstance(q, str) and q for q in queues):
            raise ValidationError(
                "queues", queues, "must be a non-empty list of queue names", "e.g. ('default',)"
            )
        self.queues = tuple(queues)
        #: Lease from every queue that has tasks.
        self.all_queues = bool(all_queues)
        if max_tasks is not None and (
            isinstance(max_tasks, bool) or not isinstance(max_tasks, int) or max_tasks < 1
        ):
            raise ValidationError("max_tasks", max_tasks, "must be an integer >= 1", "e.g. 1000")
        self.max_tasks = max_tasks
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValidationError("concurrency", concurrency, "must be an integer >= 1", "e.g. 10")
        self.concurrency = concurrency
        _check_positive("lease_seconds", lease_seconds, "e.g. 10")
        _check_positive("heartbeat_interval", heartbeat_interval, "e.g. 2.5", allow_none=True)
        _check_positive("wake_poll_interval", wake_poll_interval, "e.g. 0.001")
        _check_positive("idle_poll_interval", idle_poll_interval, "e.g. 1.0")
        if isinstance(prune_interval, timedelta):
            prune_interval = prune_interval.total_seconds()
        _check_positive("prune_interval", prune_interval, "e.g. 3600", allow_none=True)
        #: Seconds between two prunes by this worker (None: it never prunes).
        self.prune_interval = None if prune_interval is None else float(prune_interval)
        if (
            isinstance(shutdown_grace, bool)
            or not isinstance(shutdown_grace, int | float)
            or shutdown_grace < 0
        ):
            raise ValidationError(
                "shutdown_grace", shutdown_grace, "must be seconds >= 0", "e.g. 30"
            )
        self.lease_seconds = float(lease_seconds)
        self.heartbeat_interval = float(heartbeat_interval or lease_seconds / 4)
        if self.heartbeat_interval >= self.lease_seconds:
            raise ValidationError(
                "heartbeat_interval",
                heartbeat_interval,
                f"must be shorter than lease_seconds={lease_seconds}, or leases expire between beats",
                "use about a quarter of lease_seconds",
            )
        self.shutdown_grace = float(shutdown_grace)
        self.wake_poll_interval = float(wake_poll_interval)
        self.wake_on_wal_writes = bool(wake_on_wal_writes)
        self.idle_poll_interval = float(idle_poll_interval)
        #: Whether periodic schedules run in this worker (read by the ``periodic`` plugin).
        self.scheduler = bool(scheduler)
        self.stats = WorkerStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stop_requested = False
        self._force_requested = False
        self._reset()

    def _reset(self) -> None:
        """The state of one run (a new run starts from scratch; the stats accumulate)."""
        self._running: dict[int, tuple[asyncio.Task[Settlement | None], Execution]] = {}
        self._pending: list[Settlement] = []
        self._wake: asyncio.Event | None = None
        self._stopping = self._stop_requested
        self._force = self._force_requested
        self._stop_requested = self._force_requested = False
        self._maybe_more = True
        self._declined = False
        #: The commit watcher found due work: the next step leases without looking first.
        self._work_seen = False
        self._own_loop = False
        self._change_watcher: ChangeWatcher | None = None
        self._keeper: LeaseKeeper | None = None
        self._loop_seen = time.monotonic()
        self._blocked_reported = 0.0
        self._queue_names: tuple[float, tuple[str, ...]] = (0.0, self.queues)

    def __repr__(self) -> str:
        return f"WorkerEngine({self.worker_id!r}, queues={list(self.queues)}, concurrency={self.concurrency})"

    # -- public API ----------------------------------------------------------------------------

    def run(self) -> WorkerStats:
        """Work until SIGINT or SIGTERM, then shut down gracefully (a second signal stops at
        once, still releasing leases). Blocks; returns the worker's counts."""
        return asyncio.run(self._main(until_idle=False, signals=True, own_loop=True))

    async def run_async(self) -> WorkerStats:
        """Work inside the running event loop until :meth:`stop` is called."""
        return await self._main(until_idle=False, signals=False)

    def run_until_idle(self) -> WorkerStats:
        """Work until no task is due and none is running, then return (for scripts and
        tests). Tasks delayed into the future are left for later."""
        return asyncio.run(self._main(until_idle=True, signals=False, own_loop=True))

    async def run_until_idle_async(self) -> WorkerStats:
        """:meth:`run_until_idle` inside the running event loop."""
        return await self._main(until_idle=True, signals=False)

    def stop(self, *, force: bool = False) -> None:
        """Ask the worker to shut down (thread-safe): stop leasing, let running tasks finish
        within ``shutdown_grace`` (``force``: at once), release the rest. Asked before a run
        starts, the next run stops at once."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._stop_requested = True
            self._force_requested = self._force_requested or force
            return
        try:
            loop.call_soon_threadsafe(self._request_stop, force)
        except RuntimeError:  # the loop closed meanwhile
            pass

    @property
    def running_task_ids(self) -> list[int]:
        """Ids of the tasks running now."""
        return list(self._running)

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the worker has registered and begun leasing (for threads and tests)."""
        return self._started.wait(timeout)

    # -- the loop ------------------------------------------------------------------------------

    def _request_stop(self, force: bool = False) -> None:
        if self._stopping:
            force = True  # a second request: stop at once
        self._stopping = True
        self._force = self._force or force
        if self._force:
            for atask, execution in self._running.values():
                execution.cancel("shutdown")
                atask.cancel()
        if self._wake is not None:
            self._wake.set()

    def _wake_from_queue(self, reason: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._on_wake, reason)

    def _on_wake(self, reason: str) -> None:
        if reason == "cancel":
            if self._keeper is not None:
                self._keeper.beat_now()
            return
        self._maybe_more = True
        if reason == "work":
            self._work_seen = True
        if self._wake is not None:
            self._wake.set()

    def _task_types(self) -> list[str]:
        """The task types this worker leases: those it has handlers for."""
        return self.handler_registry.get_registered_types()

    def _queues(self) -> tuple[str, ...]:
        """The queues to lease from now (every queue with tasks, for an all-queues worker;
        the names are kept :data:`QUEUE_NAMES_TTL` seconds)."""
        if not self.all_queues:
            return self.queues
        fetched, names = self._queue_names
        now = time.monotonic()
        if now - fetched > QUEUE_NAMES_TTL or self._work_seen:
            names = tuple(self.runtime.db.queued_queue_names()) or self.queues
            self._queue_names = (now, names)
        return names

    async def _store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call off the event loop (on the store thread) — or, when the worker
        owns its loop (``run``, ``run_until_idle``) and no task is running, on the loop
        itself. Then nothing can be kept waiting: no handler is running, and nothing else
        runs on a loop the worker created; the worker itself waits for the call's answer
        either way (a stop request, too, takes effect when it returns). ``run_async`` shares
        the caller's loop and always uses the store thread."""
        # Two thread hand-offs less per batch when a batch of short tasks finishes before the
        # next lease (docs/performance.md).
        assert self._loop is not None
        if self._own_loop and not self._running:
            return fn(*args, **kwargs)
        return await self._loop.run_in_executor(self._store_exec, lambda: fn(*args, **kwargs))

    async def _main(
        self, *, until_idle: bool, signals: bool, own_loop: bool = False
    ) -> WorkerStats:
        if self._loop is not None:
            raise WorkerError(
                f"worker {self.worker_id} is already running; create another WorkerEngine"
            )
        self._reset()
        self._loop = loop = asyncio.get_running_loop()
        self._own_loop = own_loop
        self._wake = asyncio.Event()
        self._store_exec = ThreadPoolExecutor(
            1, thread_name_prefix=f"hookqueue-store-{self.worker_id}"
        )
        self._handler_exec = HandlerThreads(self.concurrency, "hookqueue-handler")
        if not self._task_types():
            log.warning(
                "worker %s has no handlers, so it leases nothing: register handlers on its "
                "queue (queue.handlers.register_handler) before tasks can run here",
                self.worker_id,
            )
        waker = self.runtime.add_waker(self._wake_from_queue)
        watcher_stop = threading.Event()
        watcher: threading.Thread | None = None
        installed: list[int] = []
        keeper = self._keeper = LeaseKeeper(
            self.runtime,
            self.worker_id,
            lease_seconds=self.lease_seconds,
            interval=self.heartbeat_interval,
            on_lost=self._lost_from_thread,
            on_cancel=self._cancel_from_thread,
            beat_when_idle=True,
            on_beat=self._check_loop,
            name=f"hookqueue-leases-{self.worker_id}",
        )
        tick = loop.call_later(LOOP_TICK, self._tick)
        pruner: asyncio.Task[None] | None = None
        try:
            now = self.queue.now()
            await self._store(
                self.runtime.register_worker,
                WorkerInfo(
                    worker_id=self.worker_id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    queues=("*",) if self.all_queues else self.queues,
                    concurrency=self.concurrency,
                    started_at=now,
                    heartbeat_at=now,
                ),
            )
            if signals:
                installed = self._install_signals()
            if not until_idle:
                watcher = threading.Thread(
                    target=self._watch_commits,
                    args=(watcher_stop,),
                    name=f"hookqueue-watch-{self.worker_id}",
                    daemon=True,
                )
                watcher.start()
            self.runtime.hooks.worker_start(self)
            keeper.start()
            if self.prune_interval is not None:
                pruner = loop.create_task(self._prune_regularly(self.prune_interval))
            self._started.set()
            await self._work(until_idle)
        finally:
            try:
                await self._shutdown()
            finally:
                tick.cancel()
                if pruner is not None:
                    pruner.cancel()
                keeper.stop()
                watcher_stop.set()
                change_watcher = self._change_watcher
                if change_watcher is not None:
                    change_watcher.interrupt()
                if watcher is not None:
                    watcher.join(timeout=5)
                for sig in installed:
                    loop.remove_signal_handler(sig)
                self.runtime.remove_waker(waker)
                try:
                    await self._store(self.runtime.worker_stopped, self.worker_id)
                    self.runtime.hooks.worker_stop(self)
                finally:
                    self._handler_exec.shutdown(wait=False, cancel_futures=True)
                    self._store_exec.shutdown(wait=True)
                    self._keeper = None
                    self._loop = None
                    self._started.clear()
        return self.stats

    async def _prune_regularly(self, interval: float) -> None:
        """Prune now and then every ``interval`` seconds until cancelled. A failed prune is
        logged and tried again at the next turn: it must not stop the worker."""
        while True:
            try:
                removed = await self.queue.prune_async()
            except Exception as exc:
                log.warning(
                    "worker %s: pruning finished tasks failed (%s); trying again in %gs",
                    self.worker_id,
                    exc,
                    interval,
                    exc_info=not isinstance(exc, StoreError),
                )
            else:
                log.info(
                    "worker %s pruned %d task(s) finished more than %s ago (retention); "
                    "next prune in %gs",
                    self.worker_id,
                    removed,
                    self.queue.retention,
                    interval,
                    extra={"pruned": removed},
                )
            await asyncio.sleep(interval)

    def _install_signals(self) -> list[int]:
        if threading.current_thread() is not threading.main_thread():
            return []
        assert self._loop is not None
        installed: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
                pass
        return installed

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._stopping:
            log.warning("worker %s: second %s, stopping now", self.worker_id, name)
        else:
            log.info(
                "worker %s: %s, finishing %d running task(s) within %.0fs (send again to stop now)",
                self.worker_id,
                name,
                len(self._running),
                self.shutdown_grace,
            )
        self._request_stop()

    def _watch_commits(self, stop: threading.Event) -> None:
        """Notice other processes' commits (the store's change watcher) and wake the loop
        when one brings due work for this worker."""
        db = self.runtime.db
        watcher = db.watch_changes(
            self.wake_poll_interval, sleep_while_idle=self.wake_on_wal_writes
        )
        self._change_watcher = watcher
        try:
            while not stop.is_set():
                if not watcher.wait(1.0) or stop.is_set():
                    continue
                # Look for due work here, on this thread's own connection: a commit with
                # nothing for this worker (another worker's lease, an outcome) then costs
                # the event loop nothing, and one that has work saves the loop its own look
                # (two hops through the store thread).
                if len(self._running) >= self.concurrency:
                    # No free slot: nothing to lease now; the loop looks when one frees.
                    self._wake_from_queue("commit")
                    continue
                try:
                    queues = db.queued_queue_names() if self.all_queues else self.queues
                    if not self.runtime.has_work(queues, self._task_types()):
                        continue
                except StoreError:
                    self._wake_from_queue("commit")  # the loop looks, and handles it
                    continue
                self._wake_from_queue("work")
        except Exception:
            log.exception(
                "worker %s: the commit watcher stopped; falling back to polling", self.worker_id
            )
        finally:
            self._change_watcher = None
            watcher.close()

    async def _work(self, until_idle: bool) -> None:
        assert self._wake is not None
        failures = 0
        while not self._stopping:
            self._wake.clear()
            settlements, self._pending = self._pending, []
            try:
                done = await self._step(until_idle, settlements)
                failures = 0
            except StoreError as exc:
                # The database is locked, full or failing: keep the finished attempts in
                # memory (their leases are still renewed), back off and try again.
                self._pending = settlements + self._pending
                failures += 1
                delay = min(5.0, 0.05 * 2**failures)
                log.warning(
                    "worker %s: the database failed (%s); retrying in %.2fs",
                    self.worker_id,
                    exc,
                    delay,
                )
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                continue
            if done:
                return

    async def _step(self, until_idle: bool, settlements: list[Settlement]) -> bool:
        """One turn of the loop; returns True when ``run_until_idle`` has nothing left to do."""
        assert self._wake is not None and self._keeper is not None
        free = self.concurrency - len(self._running)
        want = free if self._maybe_more else 0
        # A wake-up that arrives while we await the store sets _maybe_more again; clearing it
        # before the call (never after) keeps that wake-up from being overwritten and lost.
        if want > 0:
            self._maybe_more = False
        queues = await self._store(self._queues) if self.all_queues else self.queues
        seen, self._work_seen = self._work_seen, False
        task_types = self._task_types()
        if self.max_tasks is not None:
            left = self.max_tasks - self.stats.processed - len(self._running) - len(settlements)
            want = min(want, max(0, left))
        if want > 0 and not settlements and not seen:
            # A read (no write lock) first: a wake-up from another process's commit
            # often has nothing for us.
            if not await self._store(self.runtime.has_work, queues, task_types):
                want = 0
        if settlements or want > 0:
            leased = await self._store(
                self.runtime.lease,
                self.worker_id,
                queues=queues,
                limit=want,
                lease_seconds=self.lease_seconds,
                settlements=settlements,
                task_types=task_types,
            )
            # Written (or dropped as lost): their leases need no more renewing.
            self._keeper.release(s.task_id for s in settlements)
            self.stats.count(settlements)
            for task in leased:
                self._start(task)
            if want > 0:
                if len(leased) == want:
                    self._maybe_more = True  # a full lease: there may be more
                self._declined = not leased
            return False
        if (
            self.max_tasks is not None
            and self.stats.processed >= self.max_tasks
            and not self._running
            and not self._pending
        ):
            log.info(
                "worker %s finished its %d tasks (max_tasks); stopping",
                self.worker_id,
                self.max_tasks,
            )
            return True
        if until_idle and not self._running and not self._pending:
            if not await self._store(self.runtime.has_work, queues, task_types):
                return True
            if self._declined:
                # Tasks are due but the scheduler's plan leased none of them (a rerank that
                # declines): leasing again would spin, so an idle run ends here.
                log.warning(
                    "worker %s: tasks are due but the scheduler leased none; stopping the idle run",
                    self.worker_id,
                )
                return True
            self._maybe_more = True
            return False
        timeout = self.idle_poll_interval
        if free > 0 and not self._maybe_more:
            delay = await self._store(self.runtime.next_wakeup_delay, queues)
            if delay is not None:
                timeout = min(timeout, max(0.0, delay))
        try:
            # asyncio.timeout, not wait_for: no extra task per wait (one wait per batch).
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            self._maybe_more = True
        return False

    def _finish(self, settlement: Settlement | None) -> None:
        if settlement is not None:
            self._pending.append(settlement)
        if self._wake is not None:
            self._wake.set()

    def _start(self, task: Task) -> None:
        assert self._loop is not None and self._keeper is not None
        self._keeper.hold([task.id])
        spec = self.handler_registry.find(task.task_type)
        if spec is None:  # unregistered since the lease was asked for
            self._finish(no_handler(self.runtime, task, self.worker_id))
            return
        execution = Execution(task=task, worker_id=self.worker_id, executor=self._handler_exec)
        # The attempt is the task's own coroutine (not awaited by another one): an exception
        # thrown into an awaiting coroutine as GeneratorExit would close the attempt instead
        # of reaching its handling.
        atask = self._loop.create_task(run_attempt(self.runtime, task, spec, execution))
        atask.add_done_callback(partial(self._attempt_done, task))
        self._running[task.id] = (atask, execution)

    def _attempt_done(self, task: Task, atask: asyncio.Task[Settlement | None]) -> None:
        self._running.pop(task.id, None)
        settlement: Settlement | None
        if atask.cancelled():  # cancelled before it started: given back unfinished
            settlement = Settlement(task_id=task.id, kind="release")
        elif (exc := atask.exception()) is not None:  # pragma: no cover - run_attempt's bug
            log.error(
                "worker %s: attempt of task %d crashed", self.worker_id, task.id, exc_info=exc
            )
            settlement = Settlement(
                task_id=task.id,
                kind="fail",
                error=f"the worker failed: {type(exc).__name__}: {exc}",
            )
        else:
            settlement = atask.result()
        if settlement is None and self._keeper is not None:
            self._keeper.release([task.id])  # the lease was lost: nothing to write
        self._finish(settlement)

    # -- what the lease keeper reports (on its thread) -------------------------------------------

    def _lost_from_thread(self, task_ids: set[int]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stop_attempts, task_ids, "lease lost")

    def _cancel_from_thread(self, task_ids: set[int]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stop_attempts, task_ids, "cancel requested")

    def _stop_attempts(self, task_ids: set[int], reason: str) -> None:
        for tid in task_ids:
            entry = self._running.get(tid)
            if entry is None:
                continue
            atask, execution = entry
            if reason == "lease lost":
                log.warning(
                    "worker %s lost the lease of task %d (it expired and was taken over); "
                    "stopping its attempt here",
                    self.worker_id,
                    tid,
                )
                self.stats.lost += 1
            execution.cancel(reason)
            atask.cancel()

    def _tick(self) -> None:
        """Runs on the loop every :data:`LOOP_TICK` seconds: the loop is alive."""
        self._loop_seen = time.monotonic()
        loop = self._loop
        if loop is not None:
            loop.call_later(LOOP_TICK, self._tick)

    def _check_loop(self) -> None:
        """On the lease keeper's thread: warn when the event loop has not run for a while —
        an async handler that blocks it (``time.sleep``, heavy CPU work) stops every other
        task of this worker."""
        blocked = time.monotonic() - self._loop_seen
        if blocked < BLOCKED_AFTER or self._loop is None or not self._running:
            # (With nothing running, the loop may be in a store call of its own.)
            self._blocked_reported = 0.0
            return
        if self._blocked_reported and blocked - self._blocked_reported < BLOCKED_REPEAT:
            return
        self._blocked_reported = blocked
        running = [
            f"{tid} ({execution.task.task_type})"
            for tid, (_, execution) in list(self._running.items())
        ]
        log.warning(
            "worker %s: its event loop has been blocked for %.1fs; running: %s. An async "
            "handler is blocking it (time.sleep or CPU work in 'async def'): every other task "
            "of this worker waits meanwhile. Their leases are still renewed. Fix: make the "
            "handler a plain 'def' (it then runs in a thread), or await "
            "asyncio.to_thread(...) for the blocking part",
            self.worker_id,
            blocked,
            ", ".join(running) or "none",
        )

    # -- shutdown ------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._running and not self._force and self.shutdown_grace > 0:
            pending = [atask for atask, _ in self._running.values()]
            await asyncio.wait(pending, timeout=self.shutdown_grace)
        for atask, execution in list(self._running.values()):
            execution.cancel("shutdown")
            atask.cancel()
        remaining = [atask for atask, _ in self._running.values()]
        if remaining:
            await asyncio.wait(remaining, timeout=5)
        settlements, self._pending = self._pending, []
        if settlements:
            try:
                await self._store(self.runtime.settle, self.worker_id, settlements)
            except StoreError as exc:
                log.error(
                    "worker %s: %d finished attempt(s) could not be written at shutdown (%s); "
                    "their leases expire and the tasks run again",
                    self.worker_id,
                    len(settlements),
                    exc,
                )
                return
            self.stats.count(settlements)


__all__ = ["WorkerEngine", "WorkerStats", "describe_stats"]
