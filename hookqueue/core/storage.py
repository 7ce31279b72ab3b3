"""The store contract: what every store engine gives the rest of hookqueue.

:class:`TaskStore` is the interface :class:`~hookqueue.Queue`, the worker and plugins use to
reach the tasks; nothing else touches the database. The embedded SQLite store
(:class:`hookqueue.core.store.QueueDatabase`) is the default and the only one the core needs;
other engines (the PostgreSQL store) implement the same protocol and pass the same contract
test suite (:mod:`hookqueue.contrib.contracts.store`).

Rules every implementation keeps:

- **Atomic operations.** Each method commits entirely or not at all, except those that say
  they work in batches that each commit (:meth:`TaskStore.prune` and the bulk actions by
  filter). A method that reads and then writes does both in one transaction that excludes
  other writers of the same rows, so two processes never both act on what they read (two
  workers never lease one task).
- **Time comes from the caller.** Instants are integer microseconds since the epoch (UTC),
  passed in (``now_us``); a store never reads a clock of its own, so tests move time. A
  queued task is *due* when its ``run_after`` is at most ``max(now_us, the newest
  task's created_at)``: after a caller's wall clock steps back, tasks that were ready stay ready
  (delayed tasks still wait for their instant; leases expire by ``now_us`` alone).
- **JSON only.** Payloads, results and headers travel as JSON text; nothing is unpickled.
- **Parameters are bound.** No value is ever formatted into a statement.
- **Nothing raises after it committed.** An error means the change is not stored — except
  :class:`~hookqueue.core.errors.CommitOutcomeUnknown`, which says exactly that it may be,
  and where a member says otherwise (the batches a bulk action committed before its error;
  the write that ends a damaged leased row ``failed`` after :meth:`TaskStore.lease`
  committed). Rows that cannot be decoded are reported, and never by an error raised after
  a commit: a single read or change raises :class:`~hookqueue.core.errors.DamagedRow` (a
  change decodes its row before it commits, so it then changes nothing); where a batch goes
  on, the row is left out of the answer and logged (listings, settlements, worker
  records), ended ``failed`` with the reason (a lease), or changed like the others and
  reported by id (a bulk action's :attr:`BulkResult.damaged`). One damaged row never stops
  a worker, a listing or a bulk action.
- **Errors are hookqueue's.** A store raises the *store-wide errors* —
  :class:`~hookqueue.core.errors.StoreError` and its subclasses (``DatabaseBusy``,
  ``DatabaseFull``, ``NotAHookqueueDatabase``, ``SchemaTooNew``, ``CommitOutcomeUnknown``,
  ``DamagedRow``), defined in :class:`TaskStore` — and the errors each member names
  (``TaskNotFound``, ``InvalidTransition``, ``ValidationError``; ``ValueError`` for a call
  the protocol forbids), never its driver's exceptions. A ``StoreError`` names the store and
  the fix.
- **Threads.** Every method may be called from any thread; a store keeps whatever
  per-thread state its driver needs.

The records that cross this boundary are defined here (:class:`InsertRow`,
:class:`Settlement`, :class:`QueueGauge`, :class:`FinishedSample`, and for periodic schedules
:class:`ScheduleDefinition`, :class:`ScheduleRow`, :class:`TickFire`, :class:`FireOutcome`, and
for limits :class:`LimitUsage`) or in :mod:`hookqueue.core.models`
(:class:`~hookqueue.core.models.Task`, :class:`~hookqueue.core.models.LeasePlan`,
:class:`~hookqueue.core.models.LimitRule`, :class:`~hookqueue.core.models.WorkerInfo`).

**Limits** (the store's limit vocabulary, used by the ``limits`` plugin): a
:class:`~hookqueue.core.models.LeasePlan` may carry :class:`~hookqueue.core.models.LimitRule`
records (``plan.limits``) and/or ask for the rules stored with :meth:`TaskStore.set_limit`
(``plan.stored_limits``). The store applies them inside the lease's one transaction:

- *concurrency*: a task starts only while fewer than ``concurrency`` running tasks share its
  bucket (a task whose worker died counts as running until its lease expires and the lease
  sweep, earlier in the same transaction, takes it back);
- *rate*: per bucket, a token bucket of ``burst`` tokens refilled at ``rate`` per ``period``
  (the state — the bucket's theoretical arrival time — is stored and written in the lease
  transaction). State ahead of the caller's ``now_us`` by up to :data:`CLOCK_SLACK_US` more
  than a start could write is honoured (workers' clocks disagree a little: the caller waits
  by its own clock and its wake-up delay says how long); state further ahead was written by
  a clock that reads far ahead and is ignored, so one wrong clock cannot hold a bucket;
- *fair*: the buckets of a fair rule take turns — each lease serves first the bucket served
  least, a task costing a bucket one turn divided by its weight (``LimitRule.weights``); a
  bucket new or back after a quiet spell starts level with the latest turn. The positions
  are stored, so turns hold across leases and processes;
- *re-ranking plans* (``plan.rerank``): the window is drawn as without limits (per group with
  ``plan.group_by``, else the head of the queue), less the tasks of buckets full now, and
  the choice is walked through the rules start by start. With a fair rule the first tasks of
  every bucket follow the choice, so the turns reach a bucket the window or the choice left
  out (``hookqueue.core.limitwalk.LimitWalk.ranked``).

A task held back stays ``queued`` with its attempts unchanged. ``has_work`` and
``next_wakeup_delay_us`` take the same plan: a worker whose only due tasks are held back has
no work, and its wake-up delay includes the next instant a rate allows a start. Capacity
freed by a settlement, cancel or expiry reaches waiting workers through the store's normal
change notification. A store that does not implement limits refuses a plan that carries
rules and :meth:`TaskStore.set_limit` with a :class:`~hookqueue.core.errors.StoreError`
naming the gap (and has no stored rules, so ``stored_limits`` asks for nothing there).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

import attrs

from .models import (
    AttemptFailure,
    LeasePlan,
    LimitRule,
    Task,
    TaskFilter,
    TaskStatus,
    WorkerInfo,
    _instance,
)

_log = logging.getLogger("hookqueue.store")

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
    #: For ``fail``, ``retry`` and ``cancelled``: the formatted traceback of the failure, kept
    #: in the task's history of failed attempts.
    traceback: str | None = None
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
                "traceback": None,
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


@attrs.frozen(kw_only=True)
class ScheduleDefinition:
    """A periodic schedule as its owner declares it: what :meth:`TaskStore.upsert_schedules`
    writes. The store keeps ``definition_json`` and ``timing`` as text it compares but never
    reads inside (the periodic plugin owns their meaning)."""

    #: The schedule's unique name.
    name: str
    #: The owner's whole definition (what to enqueue, misfire policy, ...) as JSON text.
    definition_json: str
    #: The part of the definition that decides when ticks fall (expression and time zone):
    #: when it changes, ``next_tick_us`` replaces the stored next tick.
    timing: str
    #: False: a tick is skipped while the task of the schedule's previous tick is queued or
    #: running (see :meth:`TaskStore.fire_ticks`).
    overlap: bool = True
    #: Who declared it, for listings: ``"code"`` (a program, at worker start; sets
    #: ``declared_us``) or ``"added"`` (by hand: the command line or the API).
    source: str = "code"
    #: The first tick after the upsert's instant under this timing (UTC microseconds); None
    #: when the timing has no tick ahead. Stored for a new schedule and when ``timing``
    #: changed.
    next_tick_us: int | None
    #: A new schedule starts paused (an existing one keeps its pause state).
    paused: bool = False


@attrs.frozen(kw_only=True)
class ScheduleRow:
    """A stored schedule: its definition and the state the store keeps for it."""

    name: str
    definition_json: str
    timing: str
    overlap: bool
    source: str
    #: True while paused: no tick fires (``fire_ticks`` refuses it).
    paused: bool
    #: Increases each time the definition or the pause state changes.
    revision: int
    #: The next tick to fire (UTC microseconds); None: no tick ahead.
    next_tick_us: int | None
    #: The newest tick that fired, and the task it enqueued (None before the first).
    last_tick_us: int | None
    last_task_id: int | None
    #: Ticks fired, and ticks skipped (misfire policy, or overlap), since it was created.
    fired: int
    skipped: int
    created_us: int
    #: When the definition or pause state last changed.
    updated_us: int
    #: When code last declared it (:meth:`TaskStore.upsert_schedules` with
    #: ``source="code"``); None if code never did.
    declared_us: int | None


@attrs.frozen(kw_only=True)
class TickFire:
    """One step of one schedule for :meth:`TaskStore.fire_ticks`: the due ticks to fire, and
    where the schedule goes next, computed from the schedule as read (``expect_*``)."""

    #: The schedule's name.
    schedule: str
    #: The schedule's ``next_tick_us`` and ``revision`` as read: the step applies only if
    #: they are unchanged and the schedule is not paused (otherwise another process got
    #: there first, or the schedule changed).
    expect_next_tick_us: int
    expect_revision: int
    #: ``(tick_us, task row)`` per tick to fire, oldest first.
    ticks: tuple[tuple[int, InsertRow], ...] = ()
    #: The schedule's next tick after this step (None: no tick ahead).
    next_tick_us: int | None
    #: Due ticks this step passes over without firing (the misfire policy), for the counts.
    skipped: int = 0


@attrs.frozen(kw_only=True)
class FireOutcome:
    """What :meth:`TaskStore.fire_ticks` did with one :class:`TickFire`."""

    schedule: str
    #: False: the schedule was fired, changed, paused or removed since it was read; nothing
    #: was written for it.
    applied: bool
    #: ``(tick_us, task id)`` of each tick that fired, in order.
    fired: tuple[tuple[int, int], ...] = ()
    #: Ticks not fired because the previous tick's task was still queued or running.
    overlapped: tuple[int, ...] = ()
    #: Ticks not fired because they had fired before (their mark exists).
    already: tuple[int, ...] = ()


_T = TypeVar("_T")


@attrs.frozen(kw_only=True)
class BulkResult(Generic[_T]):
    """What a bulk action by filter (:meth:`TaskStore.cancel_matching`,
    :meth:`TaskStore.requeue_matching`) changed, over all its batches."""

    #: Per task changed whose row could be decoded, what the action answers for it (a
    #: transition, or the task after the change).
    changed: tuple[_T, ...] = ()
    #: The ids of the tasks the action changed like the others whose stored rows cannot be
    #: decoded (damaged): they have no answer in ``changed``, and each was logged.
    damaged: tuple[int, ...] = ()

    @property
    def count(self) -> int:
        """How many tasks the action changed, damaged ones included."""
        return len(self.changed) + len(self.damaged)


def decode_workers(rows: Iterable[Sequence[Any]], where: str) -> builtins.list[WorkerInfo]:
    """Worker records from rows of a store's workers table (in
    :meth:`~hookqueue.core.models.WorkerInfo.from_row`'s order), as :meth:`TaskStore.workers`
    answers them: a record that cannot be decoded is left out and logged (``hookqueue.store``),
    naming ``where`` (the store's location) and the worker, so it hides no other worker."""
    workers: builtins.list[WorkerInfo] = []
    for row in rows:
        try:
            workers.append(WorkerInfo.from_row(row))
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            _log.error(
                "%s: the record of worker %r is damaged and cannot be read (%s: %s); it is "
                "left out. Fix: 'hookqueue prune' forgets it once it has been silent past the "
                "cut-off, or delete its row from the workers table",
                where,
                row[0] if row else "?",
                type(exc).__name__,
                exc,
            )
    return workers


#: How far stored rate state may lie beyond what a start at the caller's ``now_us`` could
#: write and still be honoured (60 s): workers' clocks disagree a little; state further ahead
#: was written by a clock that reads wrong and is ignored.
CLOCK_SLACK_US = 60_000_000


@attrs.frozen(kw_only=True)
class LimitUsage:
    """One bucket of one limit rule, as :meth:`TaskStore.limit_usage` reports it."""

    #: The rule's name.
    rule: str
    #: The bucket's partition value (None: the rule has no partitions, or the tasks have no
    #: string or number value at its key).
    partition: Any = None
    #: Running tasks counted against the rule in this bucket.
    running: int = 0
    #: Due queued tasks in this bucket.
    due: int = 0
    #: Due queued tasks held back by this rule now (the bucket is at its concurrency, or
    #: its rate allows no start yet): 0 when the bucket has room.
    waiting: int = 0
    #: When the rate next allows a start in this bucket (UTC microseconds); None without a
    #: rate or when a start is allowed now.
    next_start_us: int | None = None


@runtime_checkable
class ChangeWatcher(Protocol):
    """Tells a waiting thread that another connection may have committed.

    Made by :meth:`TaskStore.watch_changes`; used from one thread (``wait``,
    ``watch_tasks`` and ``close``), with :meth:`interrupt` callable from any thread. A watcher
    may report a change that turns out to concern nobody (callers then look and find
    nothing); it must not miss one for longer than the ``timeout`` given to ``wait``. Its
    errors are its store's *store-wide errors* (see :class:`TaskStore`), where a member says
    it raises any.
    """

    def wait(self, timeout: float) -> bool:
        """Block until a change is seen or ``timeout`` seconds pass.

        :returns: True when something may have changed since the previous call (or since
            the watcher was made), False on timeout or interrupt.

        A watcher that reads the store to wait raises only the store-wide errors (the SQLite
        store's raises :class:`~hookqueue.core.errors.StoreError` once its store is closed,
        for one). A watcher that listens on a connection of its own (the PostgreSQL store's)
        raises nothing: it reconnects when that connection is lost, and reports a change
        once it listens again.
        """
        ...

    def interrupt(self) -> None:
        """Make a ``wait`` in progress (or the next one) return at once. Harmless after
        :meth:`close`.

        :raises: nothing, not even the store-wide errors.
        """
        ...

    def watch_tasks(self, task_ids: Collection[int]) -> None:
        """Tell the watcher which tasks' ends its holder waits for (the whole set, replacing
        the previous one; empty: none). Called from the waiting thread, before it looks at
        those tasks.

        From then on a ``wait`` must report the end (a final status, or the task deleted) of
        any of these tasks that commits after this call — also one already in flight
        during it. It may stop reporting other changes (a waiter needs no word of new work).
        A store whose notification already covers every commit may ignore the call (the
        SQLite store does); one that notifies only what someone listens for registers the
        set (the PostgreSQL store: a row per task and listening session). A lost connection
        is not an error there: the next ``wait`` registers the set again.

        :raises StoreError: (a store that registers the set) the registration failed, with
            one of the store-wide errors; the next call that changes the set, or a
            reconnection, registers it again. A store that ignores the call raises nothing.
        """
        ...

    def close(self) -> None:
        """Release the watcher's resources (from the waiting thread); a store that
        registered the tasks of :meth:`watch_tasks` forgets them (a failure to is logged:
        the store sweeps them later). Idempotent, also after the store was closed.

        :raises: nothing, not even the store-wide errors.
        """
        ...


@runtime_checkable
class TaskStore(Protocol):
    """The operations of a task store. See the module docs for the rules every method keeps.

    A store is opened by its constructor and creates or migrates its schema on first use;
    a store written by a newer hookqueue is refused
    (:class:`~hookqueue.core.errors.SchemaTooNew`) and left untouched.

    **Errors.** Each member says which errors are its own (a ``:raises X: when ...`` line).
    Besides those, any member but :meth:`close`, :attr:`closed` and :attr:`location` may
    raise the **store-wide errors** — all :class:`~hookqueue.core.errors.StoreError`, so
    ``except StoreError`` catches each of them, and each names the store and the fix:

    - :class:`~hookqueue.core.errors.StoreError` itself: the store was closed (every later
      call raises it); it cannot be opened or reached (a file that cannot be created, a
      server that is down, permission denied, a read-only server); or the engine refused a
      value (an integer beyond 64 bits, text PostgreSQL cannot hold, a broken constraint).
      Nothing was written.
    - :class:`~hookqueue.core.errors.NotAHookqueueDatabase`,
      :class:`~hookqueue.core.errors.SchemaTooNew`: from the first call, which opens the store
      and creates or migrates its schema (see :meth:`initialize_schema`). Nothing was changed.
    - :class:`~hookqueue.core.errors.DatabaseBusy`: what the call needed stayed locked by
      another connection or transaction for longer than the store's busy timeout (or no
      pooled connection came free in that time, or the engine broke a deadlock). Nothing
      was written; the call may be repeated.
    - :class:`~hookqueue.core.errors.DatabaseFull`: a write found the disk, or the store's
      size limit, full. It was rolled back.
    - :class:`~hookqueue.core.errors.CommitOutcomeUnknown`: from a call that writes, only (a
      first call that creates the schema writes too): the disk or the connection failed while
      committing, so the change may or may not be stored.
    - :class:`~hookqueue.core.errors.DamagedRow`: a stored row whose text the engine cannot
      read at all (SQLite: bytes that are not valid UTF-8; PostgreSQL stores none) — except
      where a member says it leaves damaged rows out, reports them or ends them ``failed``,
      which it does instead.

    A member that raises nothing more says so ("raises only the store-wide errors"). An
    error raised by the caller's own code that a member calls (a plan's ``rerank``, a
    ``decide_expired``) reaches the caller, and nothing of the call is written.
    """

    #: ``"full"`` or ``"normal"`` (see :data:`Durability`); set by the constructor. Reading
    #: it raises nothing.
    durability: Durability

    @property
    def location(self) -> str:
        """Where the store lives, for messages: a file path, or a URL without its password.

        :raises: nothing, not even the store-wide errors (also after :meth:`close`).
        """
        ...

    @property
    def closed(self) -> bool:
        """True after :meth:`close`.

        :raises: nothing, not even the store-wide errors.
        """
        ...

    # -- lifecycle ---------------------------------------------------------------------------

    def initialize_schema(self) -> None:
        """Create or migrate the schema, in one transaction (all or none). Idempotent; safe
        when several processes call it at once (one migrates, the others wait for it and see
        the result). Any first call does the same; this one does it explicitly.

        :raises NotAHookqueueDatabase: the file or schema holds something that is not a
            hookqueue store; it was not changed.
        :raises SchemaTooNew: a newer hookqueue wrote it; it was not changed.

        Otherwise raises only the store-wide errors.
        """
        ...

    def schema_version(self) -> int:
        """The schema version stored.

        Before the store's first use the engines differ: one that brings the schema up to
        date as it opens (SQLite) does that first and answers the current version; one that
        does not (PostgreSQL) answers the version it finds — 0 where there is no schema yet
        — and changes nothing. After :meth:`initialize_schema` (or any other first call) both
        answer the current version.

        Raises only the store-wide errors (a schema that is not hookqueue's, or too new, is
        refused as on the first call).
        """
        ...

    def check(self) -> builtins.list[str]:
        """Integrity and consistency problems (empty when healthy): the engine's own check,
        then hookqueue's invariants (a running task has a lease owner and expiry; attempts
        never exceed max_attempts; ``finished_at`` is set exactly for final statuses). A read.

        Raises only the store-wide errors (a file too damaged for the engine's check is a
        :class:`~hookqueue.core.errors.NotAHookqueueDatabase`).
        """
        ...

    def close(self) -> None:
        """Close every connection this store opened, in any thread. Idempotent; every later
        call of another member raises :class:`~hookqueue.core.errors.StoreError` (a watcher
        from :meth:`watch_changes` is closed by its own ``close``).

        :raises: nothing, not even the store-wide errors.
        """
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
        :raises StoreError: the engine refuses a row (``max_attempts`` below 1, an integer
            beyond 64 bits); none of the rows is stored.
        :raises DamagedRow: the task holding a row's idempotency key cannot be decoded; none
            of the rows is stored.

        Otherwise raises only the store-wide errors.
        """
        ...

    def insert_one(self, row: InsertRow, now_us: int) -> int:
        """Insert one task without an idempotency key in its own transaction; its id.

        :raises ValueError: the row has an idempotency key (use :meth:`insert`); nothing is
            written.
        :raises StoreError: the engine refuses the row, as :meth:`insert`; nothing is
            stored.

        Otherwise raises only the store-wide errors.
        """
        ...

    # -- reads -------------------------------------------------------------------------------

    def get(self, task_id: int) -> Task:
        """The task with this id (one statement).

        :raises TaskNotFound: there is none.
        :raises DamagedRow: it cannot be decoded (a payload that is not JSON, an unknown
            status, an instant out of range); ``task_id`` names it.

        Otherwise raises only the store-wide errors.
        """
        ...

    def get_many(self, task_ids: Sequence[int]) -> builtins.list[Task]:
        """The tasks with these ids that exist, in the order of ``task_ids``, each chunk of
        ids read in one snapshot (an engine may read them all in one). A task that cannot be
        decoded is left out and logged.

        Raises only the store-wide errors.
        """
        ...

    def find_by_key(self, key: str) -> Task | None:
        """The task holding this idempotency key, or None (one statement).

        :raises DamagedRow: the task holding it cannot be decoded.

        Otherwise raises only the store-wide errors.
        """
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
        """Tasks matching every given filter, ordered by id, at most ``limit``, in one
        snapshot; page with ``after_id`` (the last id of the previous page). Rows that cannot
        be decoded are left out and logged, so one damaged task does not hide the others.

        :raises ValueError: a status that is not a :class:`~hookqueue.core.models.TaskStatus`
            value.

        Otherwise raises only the store-wide errors.
        """
        ...

    def counts(self, *, by_type: bool = False) -> dict[str, Any]:
        """Tasks per status, every status present (``{"queued": n, ...}``), in one snapshot;
        with ``by_type``, ``{task_type: {status: n}}``. Damaged rows are counted too.

        Raises only the store-wide errors.
        """
        ...

    def oldest_due_queued_us(self, now_us: int) -> int | None:
        """``run_after`` of the longest-waiting due queued task, or None (one statement).

        Raises only the store-wide errors.
        """
        ...

    def queue_gauges(self, now_us: int) -> builtins.list[QueueGauge]:
        """Per queue name with active tasks: due, delayed and running counts and the oldest
        due task's ``run_after``, in one snapshot; ordered by queue name.

        Raises only the store-wide errors.
        """
        ...

    def finished_count_since(self, since_us: int) -> int:
        """How many tasks reached a final status at or after ``since_us`` (one statement).

        Raises only the store-wide errors.
        """
        ...

    def recent_finished(self, since_us: int, limit: int) -> builtins.list[FinishedSample]:
        """The most recently finished tasks (at or after ``since_us``), newest first, at
        most ``limit`` (one statement).

        Raises only the store-wide errors.
        """
        ...

    def waiting_retry_count(self) -> int:
        """Queued tasks that already had an attempt (waiting to run again; one statement).

        Raises only the store-wide errors.
        """
        ...

    def due_queue_names(self, now_us: int) -> builtins.list[str]:
        """Queue names that have a due queued task or a running task whose lease expired,
        sorted (one statement).

        Raises only the store-wide errors.
        """
        ...

    def workers(self) -> builtins.list[WorkerInfo]:
        """Every recorded worker, oldest first (one statement). A record that cannot be
        decoded (queues that are not a JSON list of names, an instant out of range) is left
        out and logged, naming the worker.

        Raises only the store-wide errors.
        """
        ...

    def list_matching(
        self,
        flt: TaskFilter,
        *,
        limit: int = 100,
        after_id: int | None = None,
        newest_first: bool = False,
    ) -> builtins.list[Task]:
        """Tasks a :class:`~hookqueue.core.models.TaskFilter` matches, ordered by id, at
        most ``limit``, in one snapshot; page with ``after_id`` (ids above it, or below it
        with ``newest_first``). Damaged rows are left out and logged.

        Raises only the store-wide errors.
        """
        ...

    def count_matching(self, flt: TaskFilter) -> int:
        """How many tasks a filter matches (one snapshot; damaged rows count too).

        Raises only the store-wide errors.
        """
        ...

    def finished_buckets(
        self, since_us: int, bucket_us: int
    ) -> builtins.list[tuple[int, str, int]]:
        """Tasks that reached a final status since ``since_us``, per ``bucket_us``-long
        interval and status: ``(bucket start, status, count)``, oldest first (one
        statement).

        :raises ValidationError: ``bucket_us`` is not positive; nothing is read.

        Otherwise raises only the store-wide errors.
        """
        ...

    def task_failures(self, task_id: int) -> builtins.list[AttemptFailure]:
        """The failed attempts of a task (each settlement of kind ``fail``, ``retry`` or
        ``cancelled``, with its traceback, and each expired lease), oldest first; they go
        when the task goes. Empty for a task without any, or an unknown id (one statement).

        Raises only the store-wide errors.
        """
        ...

    def paused_queues(self) -> dict[str, datetime]:
        """The paused queue names and when each was paused (one statement).

        Raises only the store-wide errors.
        """
        ...

    def queued_queue_names(self) -> builtins.list[str]:
        """The names of the queues that have queued tasks (due or not), sorted (a worker of
        every queue leases from these; one statement).

        Raises only the store-wide errors.
        """
        ...

    # -- what workers call -------------------------------------------------------------------

    def has_work(
        self,
        queues: Sequence[str],
        now_us: int,
        task_types: Sequence[str] | None = None,
        *,
        plan: LeasePlan | None = None,
    ) -> bool:
        """True if a task of ``task_types`` (None: any) is due in one of ``queues``, or a
        lease has expired in any queue (a lease takes those over). A read: takes no write
        lock, statement by statement (a commit in between makes the answer stale, and that commit
        is reported to the watchers again).

        :param plan: the plan a lease would use: with limits (``plan.limits``,
            ``plan.stored_limits``) a due task the limits hold back is not work.
        :raises ValidationError: the limits that concern ``queues`` and ``task_types`` read
            more than 16 distinct partition keys (:data:`~hookqueue.core.limitwalk.MAX_PARTS`),
            as :meth:`lease` refuses them.
        :raises StoreError: a store that does not implement limits, given a plan carrying
            rules (neither built-in store).

        Otherwise raises only the store-wide errors.
        """
        ...

    def next_wakeup_delay_us(
        self, queues: Sequence[str], now_us: int, *, plan: LeasePlan | None = None
    ) -> int | None:
        """Microseconds until a delayed task in ``queues`` becomes due or a lease expires
        — and, with a ``plan`` carrying rate limits, until a rate next allows a start of a
        held bucket (such a wake-up may find nothing to do); None when nothing is
        scheduled. A read: takes no write lock, statement by statement.

        :raises ValidationError: the plan carries a rate limit and its rules that concern
            ``queues`` read more than 16 distinct partition keys (as :meth:`has_work`).
        :raises StoreError: a store that does not implement limits, given a plan carrying
            rules.

        Otherwise raises only the store-wide errors.
        """
        ...

    def watch_changes(
        self, poll_interval: float = 0.001, *, sleep_while_idle: bool = True
    ) -> ChangeWatcher:
        """A :class:`ChangeWatcher` for this store (for a worker's wake-ups). Its resources
        (a connection of its own, an inotify watch) are the caller's to release with its
        ``close``.

        :param poll_interval: where the engine has to poll, how often while writes are
            happening (an engine with notifications ignores it).
        :param sleep_while_idle: an engine that polls may sleep while the store is idle when
            it has a cheap signal of writes (SQLite: inotify on its log); False polls all
            the time. Engines with notifications ignore it.

        Raises only the store-wide errors.
        """
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
        transaction: all of it is written, or none.

        :param worker_id: written to ``locked_by``.
        :param queues: lease only from these queues.
        :param limit: lease at most this many (0: only settle and sweep).
        :param now_us: the current instant; ``lease_expires_at = now_us + lease_us``.
        :param plan: the scheduler's plan (``hookqueue_lease``): the order, or a window of
            candidates and a ``rerank`` function that picks among them, and the limits the
            lease keeps (see the module docs: a task a limit holds back stays queued and is
            not leased; a ``rerank`` is offered only tasks the limits allow now).
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
            ``running`` with ``attempts`` counting this attempt. A leased or expired row that
            cannot be decoded is ended ``failed`` with the reason (and logged) instead of
            being returned: inside the transaction, or — a leased row the engine could read
            but not decode — in a transaction of its own right after it. Should that second
            write fail, its store-wide error is raised although the lease committed (the
            leased tasks come back when their leases expire).
        :raises ValidationError: the limits that concern ``queues`` and ``task_types`` read
            more than 16 distinct partition keys (:data:`~hookqueue.core.limitwalk.MAX_PARTS`);
            nothing is written.
        :raises StoreError: a store that does not implement limits, given a plan carrying
            rules; nothing is written.
        :raises Exception: whatever ``plan.rerank`` or ``decide_expired`` raises reaches
            the caller; nothing is written.

        Otherwise raises only the store-wide errors.
        """
        ...

    def settle(
        self, worker_id: str, settlements: Sequence[Settlement], now_us: int
    ) -> builtins.list[Transition]:
        """Write the outcomes of finished attempts in one transaction (all or none).

        An outcome is written only while ``worker_id`` still holds the task (it is running
        and locked by that worker — also past ``lease_expires_at`` when nobody has taken it
        over yet); one for a lease that was lost (taken over, or the task ended) is dropped
        and logged, so a slow worker never overwrites a newer attempt — and so is a second
        outcome for one task in one call. A ``retry`` of a task whose cancellation was
        requested ends it ``cancelled``; one with no attempts left ends it ``failed``.

        :returns: ``(event kind, task after the change)`` per outcome written. An outcome
            whose task cannot be decoded is written all the same; it only has no transition
            (logged).

        Raises only the store-wide errors.
        """
        ...

    def renew(
        self, worker_id: str, task_ids: Sequence[int], now_us: int, lease_us: int
    ) -> tuple[set[int], set[int]]:
        """Extend the leases ``worker_id`` holds and record its heartbeat, in one
        transaction.

        :returns: ``(ids still held, ids whose cancellation was requested)``; an id missing
            from the first set was lost.

        Raises only the store-wide errors.
        """
        ...

    def register_worker(self, info: WorkerInfo) -> None:
        """Record a starting worker, replacing an earlier record with the same id (one
        statement).

        Raises only the store-wide errors.
        """
        ...

    def worker_stopped(self, worker_id: str, now_us: int) -> None:
        """Record that a worker shut down cleanly (one statement; an unknown id changes
        nothing).

        Raises only the store-wide errors.
        """
        ...

    # -- periodic schedules ------------------------------------------------------------------

    def upsert_schedules(
        self,
        schedules: Sequence[ScheduleDefinition],
        now_us: int,
        *,
        replace: bool = True,
    ) -> builtins.list[str]:
        """Create or update schedules by name, in one transaction (all or none).

        A new name is created (revision 1, paused as asked, next tick ``next_tick_us``). An
        existing one whose ``definition_json``, ``timing``, ``overlap`` or ``source`` differs
        is updated and its revision increases; its next tick is replaced only when
        ``timing`` changed. Its pause state, counts and marks are never changed here.
        ``source="code"`` records ``now_us`` as the schedule's ``declared_us``.

        :param replace: False leaves an existing schedule untouched (answered ``"exists"``).
        :returns: per schedule, ``"created"``, ``"updated"``, ``"unchanged"`` or ``"exists"``.
        :raises DatabaseBusy: also when another process deleted one of the schedules while
            this call declared it (PostgreSQL); nothing is written, and the call may be
            repeated.

        Otherwise raises only the store-wide errors.
        """
        ...

    def list_schedules(
        self,
        *,
        names: Sequence[str] | None = None,
        due_by_us: int | None = None,
    ) -> builtins.list[ScheduleRow]:
        """Schedules by name (all, or those named), in one snapshot; with ``due_by_us`` only
        those not paused whose next tick is at or before it, oldest next tick first.

        Raises only the store-wide errors.
        """
        ...

    def next_schedule_tick_us(self) -> int | None:
        """The earliest next tick of the schedules that are not paused, or None (a read).

        Raises only the store-wide errors.
        """
        ...

    def set_schedule_paused(
        self, name: str, paused: bool, now_us: int, *, next_tick_us: int | None = None
    ) -> ScheduleRow | None:
        """Pause or resume a schedule, in one transaction; the revision increases when the
        state changes. Resuming sets the next tick to ``next_tick_us`` (the first tick after
        now, so ticks that fell while paused never fire; None: no tick ahead). Pausing a
        paused schedule or resuming a running one changes nothing.

        :returns: the schedule after the call, or None when no schedule has that name.

        Raises only the store-wide errors.
        """
        ...

    def delete_schedule(self, name: str) -> bool:
        """Delete a schedule and its tick marks in one transaction (tasks it enqueued stay).

        :returns: False when no schedule had that name.

        Raises only the store-wide errors.
        """
        ...

    def fire_ticks(self, fires: Sequence[TickFire], now_us: int) -> builtins.list[FireOutcome]:
        """Fire due ticks: per tick, its task and its mark in one transaction for the whole
        call (all or none), so each tick of a schedule enqueues exactly one task however many
        processes fire at once.

        For each :class:`TickFire`, only if the schedule exists, is not paused and still has
        the ``expect_next_tick_us`` and ``expect_revision`` it was read with (else nothing is
        written for it: ``applied=False``): each tick in order gets a mark, unique per
        (schedule, tick), and its task row is inserted (queued, ``created_at = now_us``). A
        tick whose mark exists inserts nothing (``already``); with ``overlap`` off, a tick
        while the schedule's previous task is queued or running inserts nothing
        (``overlapped``). Then the schedule's next tick becomes ``next_tick_us``, its
        ``last_tick_us``/``last_task_id`` the newest fired tick, and its counts grow by the
        ticks fired and the ticks skipped (``skipped``, overlapped).

        :returns: one :class:`FireOutcome` per :class:`TickFire`, in order.
        :raises ValueError: two steps of one schedule in a call, or a task row with an
            idempotency key (a tick's mark is what makes it unique); nothing is written.
        :raises StoreError: the engine refuses a tick's task row (as :meth:`insert`);
            nothing of the call is written.

        Otherwise raises only the store-wide errors.
        """
        ...

    # -- limits ------------------------------------------------------------------------------

    def set_limit(self, rule: LimitRule, now_us: int) -> str:
        """Store a limit rule by name, in one transaction: created, or replaced as a whole.
        Workers' next leases apply it (they read the stored rules inside each lease
        transaction). A rate's stored state is kept when the rule is replaced; a bucket's
        state goes when the rule is deleted.

        :returns: ``"created"``, ``"updated"`` or ``"unchanged"``.
        :raises ValidationError: ``rule`` is not a :class:`~hookqueue.core.models.LimitRule`;
            nothing is stored.
        :raises StoreError: the store does not implement limits (nothing is stored).

        Otherwise raises only the store-wide errors.
        """
        ...

    def delete_limit(self, name: str) -> bool:
        """Delete a stored rule with its rate state and turns, in one transaction; tasks it
        held back become leasable by the next lease (the deletion is a change workers
        are notified of).

        :returns: False when no rule had that name.

        Raises only the store-wide errors.
        """
        ...

    def list_limits(self) -> builtins.list[LimitRule]:
        """The stored rules, by name (one snapshot).

        Raises only the store-wide errors.
        """
        ...

    def limit_usage(
        self, now_us: int, rules: Sequence[LimitRule] | None = None
    ) -> builtins.list[LimitUsage]:
        """Per rule (the stored ones, or ``rules``) and bucket with running or due tasks,
        its counts and whether it holds tasks back now, in one snapshot; ordered by rule
        name, then most waiting first. A read: takes no write lock.

        :raises ValidationError: the rules read more than 16 distinct partition keys
            (:data:`~hookqueue.core.limitwalk.MAX_PARTS`).

        Otherwise raises only the store-wide errors.
        """
        ...

    # -- user actions ------------------------------------------------------------------------

    def cancel(self, task_id: int, now_us: int) -> Transition:
        """Cancel a queued task at once, or flag a running one for its worker, in one
        transaction.

        :returns: ``("cancelled" | "cancel_requested", task after the change)``.
        :raises TaskNotFound: unknown id.
        :raises InvalidTransition: it already finished; nothing is changed.
        :raises DamagedRow: the task cannot be decoded; nothing is changed (delete it
            with :meth:`delete_matching`, which needs no decoding).

        Otherwise raises only the store-wide errors.
        """
        ...

    def requeue(self, task_id: int, now_us: int) -> Task:
        """Put a failed or cancelled task back to ``queued`` at ``now_us`` with a fresh
        attempt count and no error (its history of failed attempts stays), in one
        transaction.

        :raises TaskNotFound: unknown id.
        :raises InvalidTransition: it is not failed or cancelled; nothing is changed.
        :raises DamagedRow: the task cannot be decoded; nothing is changed.

        Otherwise raises only the store-wide errors.
        """
        ...

    def cancel_matching(
        self, flt: TaskFilter, now_us: int, message: str = "cancelled by request"
    ) -> BulkResult[Transition]:
        """Cancel the queued tasks a filter matches at once and flag its running ones for
        their workers (as :meth:`cancel` does one), in batches that each commit, up to the
        newest task that existed when it started (tasks enqueued meanwhile are left alone;
        ``flt.max_id`` bounds it explicitly). A task that cannot be decoded is changed like
        the others (the write needs no decoding): its id is in the answer's ``damaged``, not
        in ``changed``, and it is logged. No damaged row stops the call or raises.

        An error ends the call; the batches committed before it stay.

        :returns: ``changed``: ``("cancelled" | "cancel_requested", task after the change)``
            per task; ``damaged``: the ids of the damaged tasks changed.

        Raises only the store-wide errors.
        """
        ...

    def requeue_matching(self, flt: TaskFilter, now_us: int) -> BulkResult[Task]:
        """Put the failed and cancelled tasks a filter matches back to ``queued`` at
        ``now_us`` with a fresh attempt count and no error, in batches as
        :meth:`cancel_matching` does (their history of failed attempts stays; a task that
        cannot be decoded is requeued too, and reported in ``damaged`` as there).

        An error ends the call; the batches committed before it stay.

        :returns: ``changed``: the tasks after the change; ``damaged``: the ids of the
            damaged tasks requeued.

        Raises only the store-wide errors.
        """
        ...

    def delete_matching(self, flt: TaskFilter) -> int:
        """Delete the queued and finished tasks a filter matches (never a running one), with
        their history and idempotency keys, in batches as :meth:`cancel_matching` does (a
        damaged task is deleted like any other).

        An error ends the call; the batches committed before it stay.

        :returns: how many were deleted.
        :raises ValidationError: the filter names running tasks only; nothing is deleted.

        Otherwise raises only the store-wide errors.
        """
        ...

    def pause_queue(self, queue: str, now_us: int) -> bool:
        """Stop every worker of every process leasing from ``queue`` (running tasks finish;
        leases, ``has_work`` and wake-up delays leave it out). Persisted, in one statement.

        :returns: False if it was paused already.

        Raises only the store-wide errors.
        """
        ...

    def resume_queue(self, queue: str) -> bool:
        """Let workers lease from ``queue`` again (one statement).

        :returns: False if it was not paused.

        Raises only the store-wide errors.
        """
        ...

    def prune(self, *, older_than_us: int, statuses: Iterable[TaskStatus]) -> int:
        """Delete finished tasks in ``statuses`` that finished before ``older_than_us``, in
        batches that each commit (so workers are never locked out for long), then in one
        more transaction worker records silent since then, and periodic tick marks fired
        before then. Their idempotency keys go with them.

        An error ends the call; the batches committed before it stay.

        :returns: how many tasks were deleted.
        :raises ValidationError: a status that is not final; nothing is deleted.
        :raises ValueError: a status that is not a :class:`~hookqueue.core.models.TaskStatus`
            value; nothing is deleted.

        Otherwise raises only the store-wide errors.
        """
        ...

    def vacuum(self) -> None:
        """Give the space of deleted rows back to the file system (may lock the store while
        it runs).

        Raises only the store-wide errors.
        """
        ...

    # -- moving a queue between stores (hookqueue copy) -----------------------------------------

    def export_rows(self, *, after_id: int = 0, limit: int = 1000) -> builtins.list[RawRow]:
        """Tasks exactly as stored (see :data:`RawRow`), with ids above ``after_id``, by id,
        at most ``limit`` (one snapshot per call; page with the last id). Nothing is
        decoded, so a row the models would refuse is exported as it is.

        Raises only the store-wide errors.
        """
        ...

    def import_rows(self, rows: Iterable[RawRow]) -> int:
        """Insert tasks exactly as given (see :data:`RawRow`), ids and every column
        included, in one transaction: all are stored, or none. Nothing is decoded, so a row
        the models would refuse is stored as it is. New tasks inserted later get ids above
        every imported one. Sends no wake-ups (start workers after an import).

        :returns: how many tasks were imported.
        :raises ValidationError: a row does not have one value per column of
            :data:`~hookqueue.core.models.TASK_COLUMNS`; nothing is stored.
        :raises StoreError: an id or idempotency key is already present, or a row breaks
            the store's constraints; nothing is stored.

        Otherwise raises only the store-wide errors.
        """
        ...


__all__ = [
    "BulkResult",
    "ChangeWatcher",
    "Durability",
    "ExpiryDecider",
    "FinishedSample",
    "FireOutcome",
    "CLOCK_SLACK_US",
    "InsertRow",
    "LimitUsage",
    "QueueGauge",
    "ScheduleDefinition",
    "ScheduleRow",
    "RawRow",
    "Settlement",
    "TaskStore",
    "TickFire",
    "Transition",
    "decode_workers",
]
