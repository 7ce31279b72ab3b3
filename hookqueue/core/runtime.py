"""``QueueRuntime``: what a queue's users and its workers share, and the worker-facing protocol.

A :class:`~hookqueue.Queue` is the user's API (enqueue, read, cancel, retry, prune). Behind it,
its runtime holds the parts everything else is built on — the store, the plugin manager and
its typed hook facade, the handler registry, the clock — and the operations workers (and
code that runs work itself, such as the ``BackgroundTaskManager`` adapter) call in protocol
order:

1. :meth:`QueueRuntime.lease` — ask the scheduler (``hookqueue_lease``) for a plan, then in one
   store transaction write finished attempts, take over expired leases (asking
   ``hookqueue_retry`` about each) and lease new tasks; send the events;
2. :meth:`QueueRuntime.heartbeat` — renew the leases of running tasks, learn of cancellations;
3. :meth:`QueueRuntime.decide_retry` — after a failed attempt, ask ``hookqueue_retry``;
4. :meth:`QueueRuntime.settle` — write outcomes that did not ride on the next lease.

It also carries the in-process wake-ups (*wakers*): after an enqueue, a retry or a cancel made
in this process, workers of this process act at once instead of at their next look.
"""

from __future__ import annotations

import builtins
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import pluggy

from .clock import Clock, from_us, seconds_to_us, to_us
from .handlers import TaskHandlerRegistry
from .models import (
    EventKind,
    Failure,
    HandlerSpec,
    LeasePlan,
    LeaseRequest,
    Task,
    TaskEvent,
    WorkerInfo,
)
from .plugins import Hooks
from .storage import Settlement, TaskStore, Transition

log = logging.getLogger("hookqueue.queue")

_KIND_TO_EVENT = {
    "completed": EventKind.COMPLETED,
    "failed": EventKind.FAILED,
    "retry_scheduled": EventKind.RETRY_SCHEDULED,
    "cancelled": EventKind.CANCELLED,
    "released": EventKind.RELEASED,
    "lease_expired": EventKind.LEASE_EXPIRED,
    "cancel_requested": EventKind.CANCEL_REQUESTED,
}

#: Transitions whose event carries no error message (the task's last one is history).
_NO_ERROR_KINDS = frozenset({"completed", "requeued", "cancel_requested"})


class QueueRuntime:
    """The store, hooks, handlers and clock of one queue, and the worker-facing protocol.

    Built by :class:`~hookqueue.Queue` (``queue.runtime``); workers and in-process runners
    use it. All methods are thread-safe; the store calls block, so async code runs them in
    a thread.

    :param queue: the :class:`~hookqueue.Queue` it serves (held weakly; hooks receive it).
    :param db: the store.
    :param pm: the plugin manager (``make_plugin_manager``).
    :param clock: where time comes from.
    """

    def __init__(self, queue: Any, db: TaskStore, pm: pluggy.PluginManager, clock: Clock) -> None:
        self._queue = weakref.ref(queue)
        self.db = db
        self.pm = pm
        self.clock = clock
        #: The typed facade through which every hook is called.
        self.hooks = Hooks(pm)
        #: The handlers workers run (plugins' ``hookqueue_handlers`` included).
        self.handlers = TaskHandlerRegistry()
        for spec in self.hooks.handlers():
            self.handlers.add(spec)
        self._wakers: dict[int, Callable[[str], None]] = {}
        self._lock = threading.Lock()
        self._last_plan: LeasePlan | None = None

    def __repr__(self) -> str:
        return f"QueueRuntime({self.db!r})"

    @property
    def queue(self) -> Any:
        """The :class:`~hookqueue.Queue` this runtime serves (what hooks receive as
        ``queue``)."""
        queue = self._queue()
        if queue is None:  # pragma: no cover - a runtime outliving its queue is a bug
            raise RuntimeError("the Queue of this runtime was garbage-collected")
        return queue

    # -- wake-ups ------------------------------------------------------------------------------

    def add_waker(self, waker: Callable[[str], None]) -> int:
        """Call ``waker(reason)`` after each enqueue or retry (``"enqueue"``) and each cancel of
        a running task (``"cancel"``) made in this process; in-process workers use it to act
        at once instead of at their next look. Returns a handle for :meth:`remove_waker`."""
        handle = id(waker)
        with self._lock:
            self._wakers[handle] = waker
        return handle

    def remove_waker(self, handle: int) -> None:
        """Stop calling a waker."""
        with self._lock:
            self._wakers.pop(handle, None)

    def wake(self, reason: str = "enqueue") -> None:
        """Call every waker with ``reason`` (a waker's error is logged and ignored)."""
        for waker in list(self._wakers.values()):
            try:
                waker(reason)
            except Exception:  # a worker's loop closed under us: nothing to wake
                log.debug("waker failed", exc_info=True)

    # -- events --------------------------------------------------------------------------------

    def emit(
        self,
        transitions: Sequence[Transition],
        now_us: int,
        *,
        worker_id: str | None = None,
        settlements: Sequence[Settlement] = (),
    ) -> None:
        """Send one event per committed transition to ``hookqueue_event`` (nothing when no
        plugin observes). ``settlements`` supply durations and retry reasons."""
        if not transitions or not self.hooks.has_event_observers():
            return
        found = {s.task_id: s for s in settlements}.get
        at = from_us(now_us)
        events = []
        for kind, task in transitions:
            settlement = found(task.id)
            events.append(
                TaskEvent._make(
                    _KIND_TO_EVENT.get(kind) or EventKind(kind),
                    task,
                    at,
                    worker_id if kind != "lease_expired" else task.locked_by,
                    duration=None if settlement is None else settlement.duration,
                    error=None if kind in _NO_ERROR_KINDS else task.error_message,
                    reason=None if settlement is None else settlement.reason,
                )
            )
        self.hooks.event(events)

    def enqueued(self, created: Sequence[Task], now_us: int, worker_id: str | None = None) -> None:
        """After new tasks committed: their ``enqueued`` events (and ``started`` for tasks
        inserted already leased to ``worker_id``), then wake this process's workers."""
        if created and self.hooks.has_event_observers():
            at = from_us(now_us)
            events = [TaskEvent._make(EventKind.ENQUEUED, t, at, worker_id) for t in created]
            if worker_id is not None:
                events += [TaskEvent._make(EventKind.STARTED, t, at, worker_id) for t in created]
            self.hooks.event(events)
        if worker_id is None:
            self.wake()

    # -- what workers call ---------------------------------------------------------------------

    def lease(
        self,
        worker_id: str,
        *,
        queues: Sequence[str] = ("default",),
        limit: int = 1,
        lease_seconds: float = 10.0,
        settlements: Sequence[Settlement] = (),
        task_types: Sequence[str] | None = None,
    ) -> builtins.list[Task]:
        """Write finished attempts, take over expired leases and lease up to ``limit`` tasks,
        in one transaction; the scheduler (``hookqueue_lease``) picks which.

        Attempts are counted here, at lease time, so a task whose worker dies still runs
        out of attempts.

        :param task_types: lease only tasks of these types (the caller's handlers); None:
            any type.
        """
        now_us = self.clock.now_us()
        now = from_us(now_us)
        request = LeaseRequest(
            worker_id=worker_id,
            queues=tuple(queues),
            limit=limit,
            now=now,
            lease_seconds=lease_seconds,
        )
        plan = self.hooks.lease(self.queue, request)
        self._last_plan = plan
        observed = self.hooks.has_event_observers()
        leased, transitions = self.db.lease(
            worker_id=worker_id,
            queues=request.queues,
            limit=limit,
            now_us=now_us,
            lease_us=seconds_to_us(lease_seconds),
            plan=plan,
            decide_expired=partial(self._decide_expired, now),
            settlements=settlements,
            want_transitions=observed,
            task_types=task_types,
        )
        self.emit(transitions, now_us, worker_id=worker_id, settlements=settlements)
        if leased and observed:
            self.hooks.event(
                [TaskEvent._make(EventKind.STARTED, t, now, worker_id) for t in leased]
            )
        return leased

    def _decide_expired(self, now: datetime, task: Task) -> tuple[int | None, str]:
        message = (
            f"worker {task.locked_by} stopped renewing its lease during attempt "
            f"{task.attempts} of {task.max_attempts} (it died, hung or lost the database)"
        )
        if task.cancel_requested:
            return None, message + "; cancellation had been requested"
        failure = Failure(kind="crash", message=message)
        decision = self.hooks.retry(task, failure, self.handlers.find(task.task_type), now)
        if decision.retry and decision.run_after is not None and task.attempts < task.max_attempts:
            return to_us(decision.run_after, "run_after"), message
        return None, message

    def settle(self, worker_id: str, settlements: Sequence[Settlement]) -> builtins.list[Task]:
        """Write finished attempts (complete, fail, retry, cancelled, release) in one
        transaction; outcomes for leases this worker no longer holds are dropped.

        :returns: the tasks as the outcomes left them.
        """
        now_us = self.clock.now_us()
        transitions = self.db.settle(worker_id, settlements, now_us)
        self.emit(transitions, now_us, worker_id=worker_id, settlements=settlements)
        return [t for _, t in transitions]

    def heartbeat(
        self, worker_id: str, task_ids: Sequence[int], lease_seconds: float
    ) -> tuple[set[int], set[int]]:
        """Renew the worker's leases; returns ``(held ids, ids to cancel)``."""
        return self.db.renew(worker_id, task_ids, self.clock.now_us(), seconds_to_us(lease_seconds))

    def decide_retry(self, task: Task, failure: Failure, handler: HandlerSpec | None) -> Settlement:
        """Ask ``hookqueue_retry`` about a failed attempt and turn the answer into a settlement.

        A decision to retry is overruled when the task has used all its attempts.
        """
        now = from_us(self.clock.now_us())
        decision = self.hooks.retry(task, failure, handler, now)
        if decision.retry and task.attempts < task.max_attempts:
            run_after = decision.run_after or now
            return Settlement(
                task_id=task.id,
                kind="retry",
                error=failure.message,
                run_after_us=to_us(run_after, "run_after"),
                reason=decision.reason,
                traceback=failure.traceback,
            )
        message = failure.message
        if decision.retry:
            message += f" (gave up: all {task.max_attempts} attempts used)"
        return Settlement(
            task_id=task.id,
            kind="fail",
            error=message,
            reason=decision.reason,
            traceback=failure.traceback,
        )

    def register_worker(self, info: WorkerInfo) -> None:
        """Record a starting worker."""
        self.db.register_worker(info)

    def worker_stopped(self, worker_id: str) -> None:
        """Record a worker's clean shutdown."""
        self.db.worker_stopped(worker_id, self.clock.now_us())

    @property
    def last_plan(self) -> LeasePlan | None:
        """The plan the scheduler gave the latest lease (None before the first one).
        ``has_work`` and the wake-up delay use it, so they see what a lease would — above
        all its limits: a due task a limit holds back is not work. Before the first lease
        they see every due task as work, and that lease asks the scheduler."""
        return self._last_plan

    def has_work(self, queues: Sequence[str], task_types: Sequence[str] | None = None) -> bool:
        """True if a task of ``task_types`` (None: any) is due in ``queues`` and the plan's
        limits let it start, or a lease expired (a read; takes no lock)."""
        return self.db.has_work(queues, self.clock.now_us(), task_types, plan=self._last_plan)

    def next_wakeup_delay(self, queues: Sequence[str]) -> float | None:
        """Seconds until a delayed task in ``queues`` is due, a lease expires or a rate
        limit allows a held task to start; None when nothing is scheduled."""
        delay = self.db.next_wakeup_delay_us(queues, self.clock.now_us(), plan=self._last_plan)
        return None if delay is None else delay / 1e6


__all__ = ["QueueRuntime"]
