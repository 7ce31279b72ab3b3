"""``WorkerEngine``: an asyncio worker that leases tasks, runs their handlers, renews its leases
and shuts down without losing work.

One worker is one event loop plus two thread pools:

- a single *store thread* does every database call of the worker, in order, on its own
  connection: leasing, settling finished attempts (written in the same transaction as the next
  lease, so a busy worker commits once per batch, not once per task), heartbeats;
- a *handler pool* of ``concurrency`` threads runs sync handlers; async handlers run on the
  loop.

Waking up: an enqueue in the same process wakes the worker at once; a commit by another
process is noticed by a watcher thread polling ``PRAGMA data_version`` (a counter in shared
memory, no table read) every ``wake_poll_interval`` seconds while the database's log is being
written — on Linux it sleeps while nobody writes (see ``hookqueue.core.walwatch``); a delayed
task or an expiring lease wakes it by timer at its instant.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import traceback
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import attrs

from .errors import HandlerNotFound, StoreError, TaskCancelled, ValidationError, WorkerError
from .execution import Execution, set_current_execution
from .handlers import TaskHandlerRegistry
from .models import Failure, HandlerSpec, Task, WorkerInfo
from .queue import Queue, _encode_json
from .storage import ChangeWatcher, Settlement
from .store import QueueDatabase

log = logging.getLogger("hookqueue.worker")


T = TypeVar("T")


@attrs.define
class WorkerStats:
    """Counts of what a worker did since it started."""

    #: attempts finished (any outcome)
    processed: int = 0
    completed: int = 0
    failed: int = 0
    #: attempts that failed and were scheduled to run again
    retried: int = 0
    cancelled: int = 0
    #: leases given back unfinished at shutdown
    released: int = 0
    #: leases lost to another worker (this worker was too slow to renew)
    lost: int = 0


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _check_positive(field: str, value: Any, fix: str, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValidationError(field, value, "must be a positive number", fix)


class WorkerEngine:
    """Works tasks from a queue until stopped.

    :param queue_or_db: a :class:`~hookqueue.Queue`, a
        :class:`~hookqueue.QueueDatabase` (its shared Queue is used) or None (the default
        database).
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
    """

    def __init__(
        self,
        queue_or_db: Queue | QueueDatabase | None = None,
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
    ) -> None:
        if queue_or_db is None:
            queue_or_db = QueueDatabase()
        self.queue = Queue.for_database(queue_or_db)
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
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValidationError("concurrency", concurrency, "must be an integer >= 1", "e.g. 10")
        self.concurrency = concurrency
        _check_positive("lease_seconds", lease_seconds, "e.g. 10")
        _check_positive("heartbeat_interval", heartbeat_interval, "e.g. 2.5", allow_none=True)
        _check_positive("wake_poll_interval", wake_poll_interval, "e.g. 0.001")
        _check_positive("idle_poll_interval", idle_poll_interval, "e.g. 1.0")
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
        self.stats = WorkerStats()
        self._running: dict[int, tuple[asyncio.Task[None], Execution]] = {}
        self._pending: list[Settlement] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._force = False
        self._maybe_more = True
        self._declined = False
        self._check_cancels = False
        #: The commit watcher found due work: the next step leases without looking first.
        self._work_seen = False
        self._started = threading.Event()
        self._own_loop = False
        self._change_watcher: ChangeWatcher | None = None

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
        within ``shutdown_grace`` (``force``: at once), release the rest."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._stopping = True
            self._force = self._force or force
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
            self._check_cancels = True
        else:
            self._maybe_more = True
            if reason == "work":
                self._work_seen = True
        if self._wake is not None:
            self._wake.set()

    async def _store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a database call off the event loop (on the store thread) — or, when the worker
        owns its loop (``run``, ``run_until_idle``) and no task is running, on the loop
        itself. Then nothing can be kept waiting: no handler is running, and nothing else
        runs on a loop the worker created; the worker itself waits for the call's answer
        either way (a stop request, too, takes effect when it returns). That saves two
        thread hand-offs per batch (about 6 µs per task when a batch of short tasks
        finishes before the next lease). ``run_async`` shares the caller's loop and always
        uses the store thread."""
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
        self._loop = asyncio.get_running_loop()
        self._own_loop = own_loop
        self._wake = asyncio.Event()
        self._store_exec = ThreadPoolExecutor(
            1, thread_name_prefix=f"hookqueue-store-{self.worker_id}"
        )
        self._handler_exec = ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="hookqueue-handler"
        )
        waker = self.queue.add_waker(self._wake_from_queue)
        watcher_stop = threading.Event()
        watcher: threading.Thread | None = None
        installed: list[int] = []
        heartbeat: asyncio.Task[None] | None = None
        try:
            now = self.queue.now()
            await self._store(
                self.queue.register_worker,
                WorkerInfo(
                    worker_id=self.worker_id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    queues=self.queues,
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
            self.queue.hooks.worker_start(self)
            heartbeat = asyncio.create_task(self._heartbeat_loop())
            self._started.set()
            await self._work(until_idle)
        finally:
            try:
                await self._shutdown()
            finally:
                if heartbeat is not None:
                    heartbeat.cancel()
                    await asyncio.gather(heartbeat, return_exceptions=True)
                watcher_stop.set()
                change_watcher = self._change_watcher
                if change_watcher is not None:
                    change_watcher.interrupt()
                if watcher is not None:
                    watcher.join(timeout=5)
                for sig in installed:
                    self._loop.remove_signal_handler(sig)
                self.queue.remove_waker(waker)
                try:
                    await self._store(self.queue.worker_stopped, self.worker_id)
                    self.queue.hooks.worker_stop(self)
                finally:
                    self._handler_exec.shutdown(wait=False, cancel_futures=True)
                    self._store_exec.shutdown(wait=True)
                    self._loop = None
                    self._started.clear()
        return self.stats

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
        db = self.queue.db
        clock = self.queue.clock
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
                    if not db.has_work(self.queues, clock.now_us()):
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
                # memory, back off and try again, like the heartbeat does. The leases of the
                # running tasks are renewed by the heartbeat meanwhile.
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
        assert self._wake is not None
        clock = self.queue.clock
        if self._check_cancels:
            self._check_cancels = False
            await self._beat()
        free = self.concurrency - len(self._running)
        want = free if self._maybe_more else 0
        # A wake-up that arrives while we await the store sets _maybe_more again; clearing it
        # before the call (never after) keeps that wake-up from being overwritten and lost.
        if want > 0:
            self._maybe_more = False
        seen, self._work_seen = self._work_seen, False
        if want > 0 and not settlements and not seen:
            # A read (no write lock) first: a wake-up from another process's commit
            # often has nothing for us.
            if not await self._store(self.queue.db.has_work, self.queues, clock.now_us()):
                want = 0
        if settlements or want > 0:
            leased = await self._store(
                self.queue.lease,
                self.worker_id,
                queues=self.queues,
                limit=want,
                lease_seconds=self.lease_seconds,
                settlements=settlements,
            )
            self._count(settlements)
            for task in leased:
                self._start(task)
            if want > 0:
                if len(leased) == want:
                    self._maybe_more = True  # a full lease: there may be more
                self._declined = not leased
            return False
        if until_idle and not self._running and not self._pending:
            if not await self._store(self.queue.db.has_work, self.queues, clock.now_us()):
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
            delay = await self._store(
                self.queue.db.next_wakeup_delay_us, self.queues, clock.now_us()
            )
            if delay is not None:
                timeout = min(timeout, max(0.0, delay / 1e6))
        try:
            # asyncio.timeout, not wait_for: no extra task per wait (one wait per batch).
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            self._maybe_more = True
        return False

    def _count(self, settlements: Sequence[Settlement]) -> None:
        for s in settlements:
            if s.kind == "release":
                self.stats.released += 1
                continue
            self.stats.processed += 1
            if s.kind == "complete":
                self.stats.completed += 1
            elif s.kind == "fail":
                self.stats.failed += 1
            elif s.kind == "retry":
                self.stats.retried += 1
            elif s.kind == "cancelled":
                self.stats.cancelled += 1

    def _finish(self, settlement: Settlement | None) -> None:
        if settlement is not None:
            self._pending.append(settlement)
        if self._wake is not None:
            self._wake.set()

    def _start(self, task: Task) -> None:
        spec = self.handler_registry.find(task.task_type)
        if spec is None:
            error = HandlerNotFound(task.task_type, self.handler_registry.get_registered_types())
            log.error("worker %s: task %d: %s", self.worker_id, task.id, error)
            failure = Failure(kind="no_handler", message=str(error), exception=error)
            self._finish(self.queue.decide_retry(task, failure, None))
            return
        execution = Execution(task=task, worker_id=self.worker_id, executor=self._handler_exec)
        assert self._loop is not None
        atask = self._loop.create_task(self._run_one(task, spec, execution))
        self._running[task.id] = (atask, execution)

    async def _run_one(self, task: Task, spec: HandlerSpec, execution: Execution) -> None:
        set_current_execution(execution)  # this asyncio task's own context
        clock = self.queue.clock
        started = clock.monotonic()
        timeout = task.timeout if task.timeout is not None else spec.timeout
        settlement: Settlement | None = None
        failure: Failure | None = None
        deadline: asyncio.Timeout | None = None
        try:
            awaitable = self.queue.hooks.execute(task, spec, self.worker_id)
            if timeout is None:  # most tasks: no timeout context to enter and leave
                result = await awaitable
            else:
                async with asyncio.timeout(timeout) as deadline:
                    result = await awaitable
        except asyncio.CancelledError:
            reason = execution.cancel_reason or "cancelled"
            if reason == "shutdown":
                settlement = Settlement(task_id=task.id, kind="release")
            elif reason == "lease lost":
                settlement = None  # another worker owns the task now; write nothing
            else:
                settlement = Settlement(
                    task_id=task.id, kind="cancelled", error=f"cancelled: {reason}"
                )
        except TimeoutError as exc:
            if deadline is not None and deadline.expired() and timeout is not None:
                execution.cancel("timeout")  # sync handlers can see it through the token
                failure = Failure(
                    kind="timeout",
                    message=f"timed out after {timeout:g}s (attempt {task.attempts} of {task.max_attempts})",
                    exception=exc,
                )
            else:  # the handler's own TimeoutError (a socket, a lock): an ordinary error
                failure = _error_failure(exc)
        except TaskCancelled as exc:
            reason = execution.cancel_reason or str(exc)
            if reason == "shutdown":
                settlement = Settlement(task_id=task.id, kind="release")
            else:
                settlement = Settlement(
                    task_id=task.id, kind="cancelled", error=f"cancelled: {reason}"
                )
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                log.error(
                    "worker %s: the handler of task %d (%s) raised %s; the task fails and the worker goes on",
                    self.worker_id,
                    task.id,
                    task.task_type,
                    type(exc).__name__,
                )
            failure = _error_failure(exc)
        else:
            try:
                result_json = None if result is None else _encode_json("result", result)
                # The common outcome is built once, with its duration (no attrs.evolve).
                self._running.pop(task.id, None)
                self._finish(Settlement.completed(task, result_json, clock.monotonic() - started))
                return
            except ValidationError as exc:
                failure = Failure(
                    kind="bad_result",
                    message=f"the handler returned a value that is not JSON: {exc.problem}",
                    exception=exc,
                )
        if failure is not None:
            try:
                settlement = self.queue.decide_retry(task, failure, spec)
            except Exception as exc:  # a broken retry plugin: fail the task, keep the worker
                log.exception(
                    "worker %s: hookqueue_retry raised for task %d", self.worker_id, task.id
                )
                settlement = Settlement(
                    task_id=task.id,
                    kind="fail",
                    error=f"{failure.message} (the retry policy raised {type(exc).__name__}: {exc})",
                )
            if settlement.kind == "fail":
                log.warning(
                    "worker %s: task %d (%s) failed: %s",
                    self.worker_id,
                    task.id,
                    task.task_type,
                    failure.message,
                )
        duration = clock.monotonic() - started
        if settlement is not None:
            settlement = attrs.evolve(settlement, duration=duration)
        self._running.pop(task.id, None)
        self._finish(settlement)

    # -- heartbeats ----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self._beat()
            except Exception:
                log.exception(
                    "worker %s: heartbeat failed; retrying at the next beat", self.worker_id
                )

    async def _beat(self) -> None:
        ids = list(self._running)
        held, to_cancel = await self._store(
            self.queue.heartbeat, self.worker_id, ids, self.lease_seconds
        )
        for tid in ids:
            entry = self._running.get(tid)
            if entry is None:
                continue
            atask, execution = entry
            if tid not in held:
                log.warning(
                    "worker %s lost the lease of task %d (it expired and was taken over); "
                    "stopping its attempt here",
                    self.worker_id,
                    tid,
                )
                self.stats.lost += 1
                execution.cancel("lease lost")
                atask.cancel()
            elif tid in to_cancel:
                execution.cancel("cancel requested")
                atask.cancel()

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
                await self._store(self.queue.settle, self.worker_id, settlements)
            except StoreError as exc:
                log.error(
                    "worker %s: %d finished attempt(s) could not be written at shutdown (%s); "
                    "their leases expire and the tasks run again",
                    self.worker_id,
                    len(settlements),
                    exc,
                )
                return
            self._count(settlements)


def _error_failure(exc: BaseException) -> Failure:
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return Failure(
        kind="error",
        message=message,
        exception=exc,
        traceback="".join(traceback.format_exception(exc)),
    )


def describe_stats(stats: WorkerStats) -> str:
    """One line for logs and the CLI."""
    return (
        f"{stats.processed} processed: {stats.completed} completed, {stats.failed} failed, "
        f"{stats.retried} retried, {stats.cancelled} cancelled; {stats.released} released"
    )


__all__ = ["WorkerEngine", "WorkerStats", "describe_stats"]
