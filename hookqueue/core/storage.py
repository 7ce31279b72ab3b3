"""The store contract: what every store engine gives the rest of hookqueue.

:class:`TaskStore` is the interface :class:`~hookqueue.Queue`, the worker and plugins use to
reach the tasks; nothing else touches the database. The embedded SQLite store
(:class:`hookqueue.core.store.QueueDatabase`) is the default and the only one the core needs;
other engines (the PostgreSQL store) implement the same protocol and pass the same contract
test suite (:mod:`hookqueue.contrib.contracts.store`).

Rules every implementation keeps:

- **Atomic operations.** Each method commits entirely or not at all. A method that reads and
  then writes does both in one transaction that excludes other writers of the same rows, so
  two processes never both act on what they read (two workers never lease one task).
- **Time comes from the caller.** Instants are integer microseconds since the epoch (UTC),
  passed in (``now_us``); a store never reads a clock of its own, so tests move time. A
  queued task is *due* when its ``run_after`` is at most ``max(now_us, the newest
  task's created_at)``: after a caller's wall clock steps back, tasks that were ready stay ready
  (delayed tasks still wait for their instant; leases expire by ``now_us`` alone).
- **JSON only.** Payloads, results and headers travel as JSON text; nothing is unpickled.
- **Parameters are bound.** No value is ever formatted into a statement.
- **Nothing raises after it committed.** An error means the change is not stored — except
  :class:`~hookqueue.core.errors.CommitOutcomeUnknown`, which says exactly that it may be.
  Rows that cannot be decoded are reported (a :class:`~hookqueue.core.errors.DamagedRow`
  for a single read; skipped and logged, or ended ``failed`` with the reason, where a batch
  goes on) so one damaged row never stops a worker or a listing.
- **Errors are hookqueue's.** A store raises :class:`~hookqueue.core.errors.StoreError` and
  its subclasses (``DatabaseBusy``, ``DatabaseFull``, ``NotAHookqueueDatabase``,
  ``SchemaTooNew``, ``CommitOutcomeUnknown``, ``DamagedRow``), ``TaskNotFound`` and
  ``InvalidTransition`` — never its driver's exceptions — each naming the store and the fix.
- **Threads.** Every method may be called from any thread; a store keeps whatever
  per-thread state its driver needs.

The records that cross this boundary are defined here (:class:`InsertRow`,
:class:`Settlement`, :class:`QueueGauge`, :class:`FinishedSample`) or in
:mod:`hookqueue.core.models` (:class:`~hookqueue.core.models.Task`,
:class:`~hookqueue.core.models.LeasePlan`, :class:`~hookqueue.core.models.WorkerInfo`).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from .models import LeasePlan, Task, TaskStatus, WorkerInfo, _instance

#: ``"full"``: an acknowledged write survives power loss; ``"normal"``: it survives an
#: application crash, and power loss may take the last commits (see docs/concepts.md).
Durability = Literal["full", "normal"]

#: Decides what happens to a task whose lease expired: ``task -> (requeue_at_us, message)``;
#: ``requeue_at_us`` None ends the task (``failed``, or ``cancelled`` if that was requested).
ExpiryDecider = Callable[[Task], tuple[int | None, str]]

#: One task exactly as stored, its values in :data:`~hookqueue.core.models.TASK_COLUMNS`
#: order: JSON as the text stored, instants as integer microseconds, ``cancel_requested`` a
#: bool (what :meth:`TaskStore.export_rows` gives and :meth:`TaskStore.import_rows` takes).
RawRow = tuple[Any, ...]

#: ``(event kind, task after the change)``: what a write did to one task. Kinds are
#: ``completed``, ``failed``, ``retry_scheduled``, ``cancelled``, ``released``,
#: ``lease_expired`` and ``cancel_requested`` (the :class:`~hookqueue.core.models.EventKind`
#: values).
Transition = tuple[str, Task]


# Not slotted: one per task enqueued (see TaskEvent in models).
@attrs.frozen(kw_only=True, slots=False)
class InsertRow:
    """One task to insert, already validated and JSON-encoded by the queue."""

    #: Queue name.
    queue: str
    #: Handler name.
    task_type: str
    #: The payload as JSON text.
    payload_json: str
    #: Lower runs first.
    priority: int
    #: The most attempts it may have (>= 1).
    max_attempts: int
    #: Not leased before this instant; 0 means the insert's ``now_us``.
    run_after_us: int
    #: A repeated key returns the existing task instead of inserting.
    idempotency_key: str | None
    #: Seconds one attempt may take (None: no limit of its own).
    timeout: float | None
    #: The headers as JSON text (None when there are none).
    headers_json: str | None

    def params(self, now_us: int) -> tuple[Any, ...]:
        """The values in the order the stores' insert statements bind them (``run_after_us``
        0 becomes ``now_us``)."""
        return (
            self.queue,
            self.task_type,
            self.payload_json,
            self.priority,
            self.max_attempts,
            self.run_after_us or now_us,
            self.idempotency_key,
            self.timeout,
            self.headers_json,
            now_us,
        )


# Not slotted: one is built per finished attempt (see TaskEvent).
@attrs.frozen(kw_only=True, slots=False)
class Settlement:
    """What a worker reports about one finished attempt.

    ``kind`` is ``complete`` (with ``result_json``), ``fail`` (with ``error``), ``retry``
    (with ``error`` and ``run_after_us``), ``cancelled`` or ``release`` (given back
    unfinished; the attempt is not counted).
    """

    #: The task the attempt was of.
    task_id: int
    #: The outcome.
    kind: Literal["complete", "fail", "retry", "cancelled", "release"]
    #: For ``complete``: the handler's result as JSON text (None: no result).
    result_json: str | None = None
    #: For ``fail``, ``retry`` and ``cancelled``: the message stored on the task.
    error: str | None = None
    #: For ``retry``: when the next attempt may start.
    run_after_us: int | None = None
    #: How long the attempt ran, in seconds (for events; not stored).
    duration: float | None = None
    #: Why the retry policy decided as it did (for events; not stored).
    reason: str | None = None
    #: The task as the worker leased it, when at hand: the event's task then reuses its
    #: decoded payload and headers (they never change after enqueue) instead of decoding
    #: the row's JSON again. Not stored; not compared.
    task: Task | None = attrs.field(default=None, eq=False, repr=False)

    @classmethod
    def completed(cls, task: Task, result_json: str | None, duration: float | None) -> Settlement:
        """The common outcome of an attempt of ``task``, built without attrs' ``__init__``
        (one per task a worker completes; every field comes from checked values)."""
        return _instance(
            cls,
            {
                "task_id": task.id,
                "kind": "complete",
                "result_json": result_json,
                "error": None,
                "run_after_us": None,
                "duration": duration,
                "reason": None,
                "task": task,
            },
        )


@attrs.frozen(kw_only=True)
class QueueGauge:
    """One queue name's active tasks, as exporters and the health summary read them."""

    #: The queue name.
    queue: str
    #: Queued tasks that may run now.
    due: int
    #: Queued tasks waiting for a future ``run_after`` (delayed, or backing off).
    delayed: int
    #: Running tasks.
    running: int
    #: ``run_after`` of the longest-waiting due task (None when none is due).
    oldest_due_us: int | None


@attrs.frozen(kw_only=True)
class FinishedSample:
    """One recently finished task, as the health summary samples them."""

    #: ``completed``, ``failed`` or ``cancelled``.
    status: str
    task_type: str
    attempts: int
    max_attempts: int
    #: When its last attempt started (None if it never ran: cancelled while queued).
    started_us: int | None
    #: When it reached its final status.
    finished_us: int


@runtime_checkable
class ChangeWatcher(Protocol):
    """Tells a waiting thread that another connection may have committed.

    Made by :meth:`TaskStore.watch_changes`; used from one thread (``wait`` and ``close``),
    with :meth:`interrupt` callable from any thread. A watcher may report a change that
    turns out to concern nobody (callers then look and find nothing); it must not miss one
    for longer than the ``timeout`` given to ``wait``.
    """

    def wait(self, timeout: float) -> bool:
        """Block until a change is seen or ``timeout`` seconds pass.

        :returns: True when something may have changed since the previous call (or since
            the watcher was made), False on timeout or interrupt.
        """
        ...

    def interrupt(self) -> None:
        """Make a ``wait`` in progress (or the next one) return at once."""
        ...

    def close(self) -> None:
        """Release the watcher's resources (from the waiting thread)."""
        ...


@runtime_checkable
class TaskStore(Protocol):
    """The operations of a task store. See the module docs for the rules every method keeps.

    A store is opened by its constructor and creates or migrates its schema on first use;
    a store written by a newer hookqueue is refused
    (:class:`~hookqueue.core.errors.SchemaTooNew`) and left untouched.
    """

    #: ``"full"`` or ``"normal"`` (see :data:`Durability`).
    durability: Durability

    @property
    def location(self) -> str:
        """Where the store lives, for messages: a file path, or a URL without its password."""
        ...

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        ...

    # -- lifecycle ---------------------------------------------------------------------------

    def initialize_schema(self) -> None:
        """Create or migrate the schema. Idempotent; safe when several processes call it at
        once (one migrates, the others see the result)."""
        ...

    def schema_version(self) -> int:
        """The schema version stored."""
        ...

    def check(self) -> builtins.list[str]:
        """Integrity and consistency problems (empty when healthy): the engine's own check,
        then hookqueue's invariants (a running task has a lease owner and expiry; attempts
        never exceed max_attempts; ``finished_at`` is set exactly for final statuses)."""
        ...

    def close(self) -> None:
        """Close every connection this store opened, in any thread. Idempotent; later calls
        raise :class:`~hookqueue.core.errors.StoreError`."""
        ...

    # -- enqueue -----------------------------------------------------------------------------

    def insert(
        self,
        rows: Sequence[InsertRow],
        now_us: int,
        *,
        key_window_us: int | None = None,
        claim: tuple[str, int] | None = None,
    ) -> builtins.list[tuple[int, Task | None]]:
        """Insert tasks in one transaction: all are stored, or none.

        :param rows: the tasks, validated and encoded.
        :param now_us: the enqueue instant (``created_at``).
        :param key_window_us: how long after it finished a task's idempotency key keeps
            deduplicating; None keeps it until the task is pruned. Once the window has
            passed, the old task lets go of its key (keeping its history) and a new task is
            inserted.
        :param claim: ``(worker_id, lease_expires_at_us)``: the new tasks start ``running``,
            leased to that worker with their first attempt counted, in the same transaction.
        :returns: per row, ``(id, None)`` for a new task or ``(id, existing task)`` when a
            task with the same idempotency key is remembered (race-free across processes).
        """
        ...

    def insert_one(self, row: InsertRow, now_us: int) -> int:
        """Insert one task without an idempotency key in its own transaction; its id.

        :raises ValueError: the row has an idempotency key (use :meth:`insert`).
        """
        ...

    # -- reads -------------------------------------------------------------------------------

    def get(self, task_id: int) -> Task:
        """The task with this id.

        :raises TaskNotFound: there is none. :raises DamagedRow: it cannot be decoded.
        """
        ...

    def get_many(self, task_ids: Sequence[int]) -> builtins.list[Task]:
        """The tasks with these ids that exist, in the order of ``task_ids`` (one snapshot
        per chunk of ids). A task that cannot be decoded is left out and logged."""
        ...

    def find_by_key(self, key: str) -> Task | None:
        """The task holding this idempotency key, or None."""
        ...

    def list(
        self,
        *,
        statuses: Iterable[TaskStatus] = (),
        task_type: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
        newest_first: bool = False,
    ) -> builtins.list[Task]:
        """Tasks matching every given filter, ordered by id, at most ``limit``; page with
        ``after_id`` (the last id of the previous page). Rows that cannot be decoded are
        left out and logged, so one damaged task does not hide the others."""
        ...

    def counts(self, *, by_type: bool = False) -> dict[str, Any]:
        """Tasks per status, every status present (``{"queued": n, ...}``), in one snapshot;
        with ``by_type``, ``{task_type: {status: n}}``."""
        ...

    def oldest_due_queued_us(self, now_us: int) -> int | None:
        """``run_after`` of the longest-waiting due queued task, or None."""
        ...

    def queue_gauges(self, now_us: int) -> builtins.list[QueueGauge]:
        """Per queue name with active tasks: due, delayed and running counts and the oldest
        due task's ``run_after``, in one snapshot; ordered by queue name."""
        ...

    def finished_count_since(self, since_us: int) -> int:
        """How many tasks reached a final status at or after ``since_us``."""
        ...

    def recent_finished(self, since_us: int, limit: int) -> builtins.list[FinishedSample]:
        """The most recently finished tasks (at or after ``since_us``), newest first, at
        most ``limit``."""
        ...

    def waiting_retry_count(self) -> int:
        """Queued tasks that already had an attempt (waiting to run again)."""
        ...

    def due_queue_names(self, now_us: int) -> builtins.list[str]:
        """Queue names that have a due queued task or a running task whose lease expired,
        sorted."""
        ...

    def workers(self) -> builtins.list[WorkerInfo]:
        """Every recorded worker, oldest first."""
        ...

    # -- what workers call -------------------------------------------------------------------

    def has_work(
        self, queues: Sequence[str], now_us: int, task_types: Sequence[str] | None = None
    ) -> bool:
        """True if a task of ``task_types`` (None: any) is due in one of ``queues``, or a
        lease has expired in any queue (a lease takes those over). A read: takes no write
        lock."""
        ...

    def next_wakeup_delay_us(self, queues: Sequence[str], now_us: int) -> int | None:
        """Microseconds until a delayed task in ``queues`` becomes due or a lease expires;
        None when nothing is scheduled."""
        ...

    def watch_changes(
        self, poll_interval: float = 0.001, *, sleep_while_idle: bool = True
    ) -> ChangeWatcher:
        """A :class:`ChangeWatcher` for this store (for a worker's wake-ups).

        :param poll_interval: where the engine has to poll, how often while writes are
            happening (an engine with notifications ignores it).
        :param sleep_while_idle: an engine that polls may sleep while the store is idle when
            it has a cheap signal of writes (SQLite: inotify on its log); False polls all
            the time. Engines with notifications ignore it."""
        ...

    def lease(
        self,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        now_us: int,
        lease_us: int,
        plan: LeasePlan,
        decide_expired: ExpiryDecider,
        settlements: Sequence[Settlement] = (),
        want_transitions: bool = True,
        task_types: Sequence[str] | None = None,
    ) -> tuple[builtins.list[Task], builtins.list[Transition]]:
        """Settle finished attempts, sweep expired leases, and lease new tasks — in one
        transaction.

        :param worker_id: written to ``locked_by``.
        :param queues: lease only from these queues.
        :param limit: lease at most this many (0: only settle and sweep).
        :param now_us: the current instant; ``lease_expires_at = now_us + lease_us``.
        :param plan: the scheduler's plan (``hookqueue_lease``): the order, or a window of
            candidates and a ``rerank`` function that picks among them.
        :param decide_expired: asked about each task whose lease expired (at most 256 per
            call, oldest expiry first; the rest on the next calls). A task whose
            cancellation was requested ends ``cancelled`` whatever it answers, and one with
            no attempts left ends ``failed``.
        :param settlements: finished attempts to write first, as :meth:`settle` does.
        :param want_transitions: False: the settled tasks are not decoded for events
            (expired leases are still reported).
        :param task_types: lease only tasks of these types (the worker's handlers); None:
            any type. Tasks of other types stay queued for a worker that has them.
        :returns: ``(leased tasks in the plan's order, transitions)``. Leased tasks are
            ``running`` with ``attempts`` counting this attempt; a leased row that cannot be
            decoded is ended ``failed`` with the reason instead of being returned.
        """
        ...

    def settle(
        self, worker_id: str, settlements: Sequence[Settlement], now_us: int
    ) -> builtins.list[Transition]:
        """Write the outcomes of finished attempts in one transaction.

        An outcome is written only while ``worker_id`` still holds the task (it is running
        and locked by that worker — also past ``lease_expires_at`` when nobody has taken it
        over yet); one for a lease that was lost (taken over, or the task ended) is dropped
        and logged, so a slow worker never overwrites a newer attempt. A ``retry`` of a task
        whose cancellation was requested ends it ``cancelled``; one with no attempts left
        ends it ``failed``.
        """
        ...

    def renew(
        self, worker_id: str, task_ids: Sequence[int], now_us: int, lease_us: int
    ) -> tuple[set[int], set[int]]:
        """Extend the leases ``worker_id`` holds and record its heartbeat.

        :returns: ``(ids still held, ids whose cancellation was requested)``; an id missing
            from the first set was lost.
        """
        ...

    def register_worker(self, info: WorkerInfo) -> None:
        """Record a starting worker, replacing an earlier record with the same id."""
        ...

    def worker_stopped(self, worker_id: str, now_us: int) -> None:
        """Record that a worker shut down cleanly."""
        ...

    # -- user actions ------------------------------------------------------------------------

    def cancel(self, task_id: int, now_us: int) -> Transition:
        """Cancel a queued task at once, or flag a running one for its worker.

        :returns: ``("cancelled" | "cancel_requested", task after the change)``.
        :raises TaskNotFound: unknown id. :raises InvalidTransition: it already finished.
        """
        ...

    def requeue(self, task_id: int, now_us: int) -> Task:
        """Put a failed or cancelled task back to ``queued`` at ``now_us`` with a fresh
        attempt count.

        :raises TaskNotFound: unknown id. :raises InvalidTransition: not failed/cancelled.
        """
        ...

    def prune(self, *, older_than_us: int, statuses: Iterable[TaskStatus]) -> int:
        """Delete finished tasks in ``statuses`` that finished before ``older_than_us``, in
        batches that each commit (so workers are never locked out for long), and worker
        records silent since then. Their idempotency keys go with them.

        :returns: how many tasks were deleted.
        :raises ValidationError: a status that is not final.
        """
        ...

    def vacuum(self) -> None:
        """Give the space of deleted rows back to the file system (may lock the store)."""
        ...

    # -- moving a queue between stores (hookqueue copy) -----------------------------------------

    def export_rows(self, *, after_id: int = 0, limit: int = 1000) -> builtins.list[RawRow]:
        """Tasks exactly as stored (see :data:`RawRow`), with ids above ``after_id``, by id,
        at most ``limit`` (one snapshot per call; page with the last id). Nothing is
        decoded, so a row the models would refuse is exported as it is."""
        ...

    def import_rows(self, rows: Iterable[RawRow]) -> int:
        """Insert tasks exactly as given (see :data:`RawRow`), ids and every column
        included, in one transaction: all are stored, or none. New tasks inserted later get
        ids above every imported one. Sends no wake-ups (start workers after an import).

        :returns: how many tasks were imported.
        :raises StoreError: an id or idempotency key is already present, or a row breaks
            the store's constraints (nothing is stored).
        """
        ...


__all__ = [
    "ChangeWatcher",
    "Durability",
    "ExpiryDecider",
    "FinishedSample",
    "InsertRow",
    "QueueGauge",
    "RawRow",
    "Settlement",
    "TaskStore",
    "Transition",
]
