"""The attrs records hookqueue passes around.

Values that cross a hook boundary are frozen (``attrs.frozen(kw_only=True)``) and changed with
``attrs.evolve``. Rows become models through ``from_row``; turning models into rows and JSON
is the store's business, not the models'.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import attrs

from .clock import from_us
from .errors import ValidationError


class TaskStatus(enum.StrEnum):
    """The five statuses a task can have. The strings equal the adapter's ``RunStatus`` values.

    A delayed task, and one waiting for its next retry, is ``queued`` with a future
    ``run_after``.
    """

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        """True for ``completed``, ``failed`` and ``cancelled``."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
#: ``TaskStatus`` by its stored string (a dict lookup is several times faster than the enum call).
_STATUS_BY_VALUE: dict[str, TaskStatus] = {s.value: s for s in TaskStatus}


def _aware(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
        raise ValueError(f"{attribute.name} must be an aware datetime, got {value!r}")


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


#: The column order the store selects and ``Task.from_row`` reads.
TASK_COLUMNS = (
    "id",
    "queue",
    "task_type",
    "payload",
    "priority",
    "status",
    "attempts",
    "max_attempts",
    "run_after",
    "idempotency_key",
    "error_message",
    "result",
    "locked_by",
    "lease_expires_at",
    "cancel_requested",
    "timeout_seconds",
    "headers",
    "created_at",
    "started_at",
    "finished_at",
)


def _ts(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


T = TypeVar("T")

_new = object.__new__
_set = object.__setattr__


def _instance(cls: type[T], fields: dict[str, Any]) -> T:
    """An instance of an unslotted frozen attrs class with exactly ``fields`` (every field
    given), without its ``__init__``: for records the hot paths build per task from values
    already checked (SQLite's or the core's). ``tests/core/test_hot_paths.py`` checks each
    such constructor builds what ``__init__`` would."""
    obj = _new(cls)
    _set(obj, "__dict__", fields)
    return obj


def _copy_with(obj: T, changes: Mapping[str, Any]) -> T:
    """``attrs.evolve(obj, **changes)`` without ``__init__`` (see :func:`_instance`)."""
    fields = obj.__dict__.copy()
    fields.update(changes)
    return _instance(type(obj), fields)


_loads = json.loads
_td = timedelta
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Stamps(dict[int, datetime]):
    """Microseconds -> aware datetime, remembered. The rows of one lease share their
    ``started_at`` and ``lease_expires_at``, and a bulk enqueue's share ``created_at``: a hit
    is one dict lookup instead of a timedelta and a datetime. Bounded by clearing."""

    def __missing__(self, us: int) -> datetime:
        if len(self) >= 4096:
            self.clear()
        value = self[us] = _EPOCH + _td(0, 0, us)
        return value


_STAMP = _Stamps()


# Not slotted: the store builds tasks by setting their ``__dict__`` in one call (see
# ``from_row``), several times faster than setting twenty slots one by one.
@attrs.frozen(kw_only=True, slots=False)
class Task:
    """A task as stored: what to run, with what, and where it is in its lifecycle."""

    #: Database id, unique in one database, increasing in enqueue order.
    id: int
    #: Name of the queue the task is in; workers lease from the queues they were given.
    queue: str
    #: The handler name that runs it (``type`` is an alias, as in the migration guide).
    task_type: str
    #: The JSON value given at enqueue (usually a dict).
    payload: Any
    #: Lower numbers run first when the priority scheduler is active.
    priority: int
    #: Where the task is in its lifecycle.
    status: TaskStatus
    #: How many times it has been leased (counted at lease time, so a crash counts).
    attempts: int = attrs.field(validator=_non_negative)
    #: The most attempts it may have; a lease expiry at this count ends it ``failed``.
    max_attempts: int
    #: It is not leased before this instant.
    run_after: datetime = attrs.field(validator=_aware)
    #: When it was enqueued.
    created_at: datetime = attrs.field(validator=_aware)
    #: Optional caller-chosen key; a second enqueue with the same key returns this task.
    idempotency_key: str | None = None
    #: The last failure's message (kept after a successful retry for history).
    error_message: str | None = None
    #: The handler's JSON return value, once completed.
    result: Any = None
    #: Worker id holding the lease while ``running``.
    locked_by: str | None = None
    #: When the current lease runs out unless renewed by a heartbeat.
    lease_expires_at: datetime | None = attrs.field(default=None, validator=_aware)
    #: Somebody asked to cancel it while it was running; the worker acts on it.
    cancel_requested: bool = False
    #: Seconds one attempt may take before it fails with a timeout (None: no limit).
    timeout: float | None = None
    #: Metadata for plugins (trace context, tenant, ...); JSON object.
    headers: Mapping[str, Any] = attrs.field(factory=dict)
    #: When the current or last attempt started.
    started_at: datetime | None = attrs.field(default=None, validator=_aware)
    #: When it reached a terminal status.
    finished_at: datetime | None = attrs.field(default=None, validator=_aware)
    #: True on the answer to an enqueue whose idempotency key named an existing task: this
    #: is that task, and nothing new was written. Not stored; not compared.
    deduplicated: bool = attrs.field(default=False, eq=False)

    @property
    def type(self) -> str:
        """Alias of ``task_type`` (the migration guide's name)."""
        return self.task_type

    @property
    def is_terminal(self) -> bool:
        """True once the task is completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES

    def get_payload_dict(self) -> dict[str, Any]:
        """The payload as a new dict; a payload that is not an object comes as ``{"value": p}``."""
        if isinstance(self.payload, dict):
            return dict(self.payload)
        if self.payload is None:
            return {}
        return {"value": self.payload}

    @classmethod
    def from_row(cls, row: Sequence[Any], known: Task | None = None) -> Task:
        """Build a task from a row selected in ``TASK_COLUMNS`` order.

        :param known: an earlier read of the same task (same id): its decoded payload and
            headers are reused (the objects are shared), since they never change after
            enqueue. Ignored when its id differs.
        """
        (
            id_,
            queue,
            task_type,
            payload,
            priority,
            status,
            attempts,
            max_attempts,
            run_after,
            key,
            error,
            result,
            locked_by,
            lease_expires_at,
            cancel_requested,
            timeout,
            headers,
            created_at,
            started_at,
            finished_at,
        ) = row
        # Rows come from the store's STRICT table (types and CHECK constraints enforced by
        # SQLite), so the attrs __init__ and its validators are skipped and the instance
        # dict is built in one go: this runs for every leased and listed task. Damage that
        # SQLite cannot catch (text that is not JSON, an unknown status, a timestamp out of
        # range) still raises ValueError / KeyError / OverflowError, which the store turns
        # into DamagedRow.
        if known is not None and known.id == id_:
            payload_value = known.payload
            headers_value = known.headers
        else:
            payload_value = _loads(payload)
            headers_value = _loads(headers) if headers else {}
        return _instance(
            cls,
            {
                "id": id_,
                "queue": queue,
                "task_type": task_type,
                "payload": payload_value,
                "priority": priority,
                "status": _STATUS_BY_VALUE[status],
                "attempts": attempts,
                "max_attempts": max_attempts,
                "run_after": _STAMP[run_after],
                "created_at": _STAMP[created_at],
                "idempotency_key": key,
                "error_message": error,
                "result": None if result is None else _loads(result),
                "locked_by": locked_by,
                "lease_expires_at": None if lease_expires_at is None else _STAMP[lease_expires_at],
                "cancel_requested": bool(cancel_requested),
                "timeout": timeout,
                "headers": headers_value,
                "started_at": None if started_at is None else _STAMP[started_at],
                "finished_at": None if finished_at is None else _STAMP[finished_at],
                "deduplicated": False,
            },
        )

    def _replaced(self, changes: dict[str, Any]) -> Task:
        """A copy with ``changes`` applied, unvalidated: for the store's own transitions,
        whose values come from SQLite (one per completed attempt: no ``__init__``)."""
        return _copy_with(self, changes)

    @classmethod
    def _new_queued(
        cls,
        *,
        id: int,
        queue: str,
        task_type: str,
        payload: Any,
        priority: int,
        max_attempts: int,
        run_after_us: int,
        created_at_us: int,
        idempotency_key: str | None,
        timeout: float | None,
        headers: Mapping[str, Any],
    ) -> Task:
        """A just-inserted queued task, from values the queue validated (the enqueue hot
        path: no attrs ``__init__``, as in :meth:`from_row`)."""
        return _instance(
            cls,
            {
                "id": id,
                "queue": queue,
                "task_type": task_type,
                "payload": payload,
                "priority": priority,
                "status": TaskStatus.QUEUED,
                "attempts": 0,
                "max_attempts": max_attempts,
                "run_after": _STAMP[run_after_us],
                "created_at": _STAMP[created_at_us],
                "idempotency_key": idempotency_key,
                "error_message": None,
                "result": None,
                "locked_by": None,
                "lease_expires_at": None,
                "cancel_requested": False,
                "timeout": timeout,
                "headers": headers,
                "started_at": None,
                "finished_at": None,
                "deduplicated": False,
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (datetimes as ISO 8601 strings) for the CLI and status APIs."""
        out: dict[str, Any] = {}
        for field in attrs.fields(Task):
            value = getattr(self, field.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, TaskStatus):
                value = value.value
            elif field.name == "headers":
                value = dict(value)
            out[field.name] = value
        out["type"] = self.task_type
        return out


# Not slotted: built for every task enqueued, and copied by the enqueue wrappers.
@attrs.frozen(kw_only=True, slots=False)
class NewTask:
    """A task on its way into the store, as the ``hookqueue_enqueue`` hook sees it.

    The queue builds it from the caller's arguments after checking their types; plugins may
    return an evolved copy (``attrs.evolve``) or raise to refuse it.
    """

    #: Handler name.
    task_type: str
    #: JSON-serialisable value.
    payload: Any = None
    #: Lower runs first.
    priority: int = 100
    #: Not before this instant (None: now).
    run_after: datetime | None = None
    #: None: the retry plugin or the core default (1) decides.
    max_attempts: int | None = None
    #: A repeated key returns the existing task.
    idempotency_key: str | None = None
    #: Queue name.
    queue: str = "default"
    #: Seconds one attempt may take (None: the handler's setting, else no limit).
    timeout: float | None = None
    #: Plugin metadata (JSON object), e.g. trace context.
    headers: Mapping[str, Any] = attrs.field(factory=dict)


class EventKind(enum.StrEnum):
    """What happened to a task in a :class:`TaskEvent`."""

    ENQUEUED = "enqueued"
    #: leased by a worker; an attempt starts
    STARTED = "started"
    COMPLETED = "completed"
    #: failed for good (no retry left, or the policy gave up)
    FAILED = "failed"
    #: failed, and will run again at ``task.run_after``
    RETRY_SCHEDULED = "retry_scheduled"
    CANCELLED = "cancelled"
    #: cancellation asked for a running task; the worker will act on it
    CANCEL_REQUESTED = "cancel_requested"
    #: the worker holding it stopped renewing its lease; another worker may take it
    LEASE_EXPIRED = "lease_expired"
    #: given back unfinished at shutdown, without counting the attempt
    RELEASED = "released"
    #: put back to ``queued`` by ``Queue.retry`` after it had failed or been cancelled
    REQUEUED = "requeued"


# Not slotted, like Task: two are built per task a worker runs (a frozen slotted class's
# __init__ costs half as much again).
@attrs.frozen(kw_only=True, slots=False)
class TaskEvent:
    """One state transition, sent to every ``hookqueue_event`` implementation."""

    #: What happened.
    kind: EventKind
    #: The task as stored after the transition.
    task: Task
    #: When it happened.
    at: datetime
    #: The worker that caused it, if a worker did.
    worker_id: str | None = None
    #: For ``completed``/``failed``/``retry_scheduled``: how long the attempt ran, in seconds.
    duration: float | None = None
    #: For failures: the error message.
    error: str | None = None
    #: For ``failed``/``retry_scheduled`` after an attempt: the retry policy's reason.
    reason: str | None = None

    @classmethod
    def _make(
        cls,
        kind: EventKind,
        task: Task,
        at: datetime,
        worker_id: str | None = None,
        duration: float | None = None,
        error: str | None = None,
        reason: str | None = None,
    ) -> TaskEvent:
        """The core's own events, built without attrs' ``__init__`` (two per task a worker
        runs); ``tests/core/test_hot_paths.py`` checks it builds what ``__init__`` would."""
        return _instance(
            cls,
            {
                "kind": kind,
                "task": task,
                "at": at,
                "worker_id": worker_id,
                "duration": duration,
                "error": error,
                "reason": reason,
            },
        )


@attrs.frozen(kw_only=True)
class Failure:
    """Why an attempt did not complete, as the ``hookqueue_retry`` hook sees it."""

    #: ``"error"`` (the handler raised), ``"timeout"``, ``"crash"`` (lease expired),
    #: ``"no_handler"`` or ``"bad_result"``.
    kind: str
    #: A one-line message stored on the task.
    message: str
    #: The exception the handler raised, when there is one.
    exception: BaseException | None = None
    #: The formatted traceback, when there is one.
    traceback: str | None = None


@attrs.frozen(kw_only=True)
class RetryDecision:
    """What the ``hookqueue_retry`` hook decided after a failure."""

    #: True: run again at ``run_after``. False: the task ends ``failed``.
    retry: bool
    #: When the next attempt may start (required when ``retry``).
    run_after: datetime | None = None
    #: Why; stored in the event and shown by the CLI.
    reason: str = ""

    @classmethod
    def give_up(cls, reason: str = "no retry policy") -> RetryDecision:
        """The task ends ``failed``."""
        return cls(retry=False, reason=reason)

    @classmethod
    def at(cls, when: datetime, reason: str = "") -> RetryDecision:
        """Run again at ``when`` (aware datetime)."""
        _aware(None, attrs.fields(RetryDecision).run_after, when)
        return cls(retry=True, run_after=when, reason=reason)


@attrs.frozen(kw_only=True)
class LeaseRequest:
    """A worker asks for up to ``limit`` tasks."""

    #: The asking worker's id.
    worker_id: str
    #: The queues it works.
    queues: tuple[str, ...]
    #: How many tasks it can take now (its free slots).
    limit: int
    #: The instant of the request.
    now: datetime
    #: How long the lease lasts unless renewed.
    lease_seconds: float


class SortKey(enum.StrEnum):
    """The ordering vocabulary a lease plan may use; the store turns each into SQL.

    Keeping the vocabulary closed keeps leasing one indexed SQL statement and keeps
    plugin-supplied text out of SQL.
    """

    #: lower ``priority`` first
    PRIORITY = "priority"
    #: ``priority`` improved by one step per ``LeasePlan.aging_seconds`` waited since the
    #: task became due (``run_after``), so a delayed or retried task does not arrive aged
    AGED_PRIORITY = "aged_priority"
    #: earliest ``run_after`` first (due order)
    DUE = "due"
    #: first due first (``run_after``), then enqueue order (id): tasks enqueued without a
    #: delay run in enqueue order
    FIFO = "fifo"
    #: last due first, then newest first (``run_after`` and id descending)
    LIFO = "lifo"


@attrs.frozen(kw_only=True)
class Candidate:
    """A queued, due task offered to a scheduler's ``rerank`` function."""

    id: int
    task_type: str
    priority: int
    queue: str
    created_at_us: int
    run_after_us: int
    #: The value at ``LeasePlan.partition_key`` in the payload, if the plan asked for one.
    partition: Any = None


#: ``rerank(candidates, limit) -> ids to lease, best first`` (at most ``limit``).
Rerank = Callable[[Sequence[Candidate], int], Sequence[int]]

#: What a re-ranking plan's window may be drawn per (``LeasePlan.group_by``): a closed
#: vocabulary, each a column (or, for ``partition``, the payload's value at
#: ``LeasePlan.partition_key``) that the store names in its own SQL.
WINDOW_GROUPS: tuple[str, ...] = ("task_type", "queue", "priority", "partition")


def _group_by(instance: LeasePlan, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if value not in WINDOW_GROUPS:
        raise ValidationError(
            "group_by",
            value,
            "is not a grouping the store knows",
            f"use one of {list(WINDOW_GROUPS)}",
        )
    if value == "partition" and not instance.partition_key:
        raise ValidationError(
            "partition_key",
            instance.partition_key,
            "must name a top-level payload key when group_by='partition'",
            "e.g. partition_key='tenant'",
        )


#: What a limit rule's name may hold: letters, digits and ``_ . : -``, 1 to 100 of them.
_LIMIT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
#: What a partition key may be: one top-level key of the payload or headers object.
_PARTITION_KEY = re.compile(r"[A-Za-z0-9_-]{1,100}")


def _limit_count(rule_field: str, value: Any, fix: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000_000:
        raise ValidationError(rule_field, value, "must be a whole number from 1 to 10^9", fix)


def _weights(value: Any) -> tuple[tuple[Any, int], ...]:
    """``weights`` as sorted ``(value, weight)`` pairs (validated in the rule)."""
    if isinstance(value, Mapping):
        value = value.items()
    try:
        pairs = [(k, w) for k, w in value]
    except (TypeError, ValueError):
        raise ValidationError(
            "weights",
            value,
            "must map partition values to whole numbers",
            "e.g. weights={'premium': 3}",
        ) from None
    return tuple(sorted(pairs, key=lambda kw: (isinstance(kw[0], str), str(kw[0]))))


@attrs.frozen(kw_only=True)
class LimitRule:
    """A limit on when queued tasks may start: at most ``concurrency`` running, at most
    ``rate`` starts per ``period`` (with ``burst``), and/or round-robin turns between
    partitions (``fair``) — for the tasks it matches, counted across every worker process.

    A rule matches the tasks of ``queue`` (None: every queue) and ``task_type`` (None: every
    type). With ``partition_by`` each value of that top-level key of the task's payload
    (``partition_in="payload"``) or headers (``"headers"``) is counted on its own (a
    *bucket*): ``partition_by="tenant", concurrency=2`` lets every tenant run two. A task
    whose value is missing, or is not a string or a number (null, true, an object, a list),
    falls in one shared bucket (shown as ``None``).

    Rates: a start is allowed when it keeps to ``rate`` per ``period`` on average and no
    more than ``burst`` start back to back (a token bucket of ``burst`` tokens refilled at
    ``rate`` per ``period``). With ``burst=1`` (the default) at most ``rate`` tasks start in
    any ``period``-long window; with ``burst=b``, at most ``rate + b - 1``.

    A task held back by a rule stays ``queued`` (no attempt counted) and is leased as soon
    as the rule allows. Rules are validated here: a bad value raises
    :class:`~hookqueue.core.errors.ValidationError` naming the field and the fix.
    """

    #: Unique name (letters, digits, ``_ . : -``).
    name: str
    #: The queue whose tasks it limits (None: every queue).
    queue: str | None = None
    #: The task type it limits (None: every type).
    task_type: str | None = None
    #: A top-level key whose value splits the tasks into buckets limited one by one (None:
    #: one bucket for every task the rule matches).
    partition_by: str | None = None
    #: Where ``partition_by`` is read: ``"payload"`` or ``"headers"``.
    partition_in: str = "payload"
    #: At most this many running at once (None: no concurrency limit).
    concurrency: int | None = None
    #: At most this many starts per ``period`` (None: no rate limit).
    rate: int | None = None
    #: The rate's period in seconds.
    period: float = 1.0
    #: How many may start back to back after a quiet spell (>= 1).
    burst: int = 1
    #: Round-robin between the buckets (requires ``partition_by``): the buckets take turns,
    #: one task each, the one served least (by its weight) first, so a partition with few
    #: tasks never waits behind one with many.
    fair: bool = False
    #: For a fair rule: turns per round of some partitions, by partition value (a string or
    #: an integer); the others have 1. ``{"premium": 3}`` serves three of premium's tasks
    #: for each of another tenant's while both have due tasks. Given as a mapping; kept as
    #: ``((value, weight), ...)`` sorted.
    weights: tuple[tuple[str | int, int], ...] = attrs.field(default=(), converter=_weights)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not _LIMIT_NAME.fullmatch(self.name):
            raise ValidationError(
                "name",
                self.name,
                "must be 1 to 100 letters, digits or _ . : -",
                "name the limit e.g. 'payments-api' or 'tenant.concurrency'",
            )
        for fname in ("queue", "task_type"):
            value = getattr(self, fname)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValidationError(
                    fname, value, "must be a non-empty string or None", f"pass the {fname} name"
                )
        if self.partition_by is not None and (
            not isinstance(self.partition_by, str)
            or not _PARTITION_KEY.fullmatch(self.partition_by)
        ):
            raise ValidationError(
                "partition_by",
                self.partition_by,
                "must be one top-level key name (letters, digits, _ or -)",
                "name a key of the payload, e.g. partition_by='tenant'",
            )
        if self.partition_in not in ("payload", "headers"):
            raise ValidationError(
                "partition_in",
                self.partition_in,
                "is not a place a partition key is read from",
                "use 'payload' or 'headers'",
            )
        _limit_count("concurrency", self.concurrency, "e.g. concurrency=4 (or None for no limit)")
        _limit_count("rate", self.rate, "e.g. rate=10 with period=1.0 (or None for no limit)")
        _limit_count("burst", self.burst, "e.g. burst=1 (starts evenly spaced)")
        if self.burst is None:
            raise ValidationError("burst", None, "must be a whole number >= 1", "e.g. burst=1")
        if (
            isinstance(self.period, bool)
            or not isinstance(self.period, int | float)
            or not 0.000001 <= self.period <= 366 * 86400
        ):
            raise ValidationError(
                "period",
                self.period,
                "must be a number of seconds from 0.000001 to a year",
                "e.g. period=1.0 (per second) or period=60 (per minute)",
            )
        if self.fair and self.partition_by is None:
            raise ValidationError(
                "fair",
                self.fair,
                "round-robin needs partitions to take turns between",
                "set partition_by (e.g. partition_by='tenant') or fair=False",
            )
        for key, weight in self.weights:
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise ValidationError(
                    "weights",
                    key,
                    "is not a partition value (a string or an integer)",
                    "key the weights by the values of the partition key, e.g. {'premium': 3}",
                )
            if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000:
                raise ValidationError(
                    f"weights[{key!r}]",
                    weight,
                    "must be a whole number from 1 to 1000",
                    "e.g. 3 for three turns per round",
                )
        if self.weights and not self.fair:
            raise ValidationError(
                "weights",
                dict(self.weights),
                "weigh the turns of a fair rule, and this rule is not fair",
                "set fair=True (with partition_by), or drop the weights",
            )
        if self.concurrency is None and self.rate is None and not self.fair:
            raise ValidationError(
                "concurrency",
                None,
                f"limit {self.name!r} limits nothing (no concurrency, no rate, not fair)",
                "set concurrency=N, rate=N (with period=) or fair=True",
            )

    @property
    def period_us(self) -> int:
        """The period in microseconds."""
        return max(1, round(self.period * 1_000_000))

    @property
    def interval_us(self) -> int:
        """The rate's spacing between starts in microseconds (``period / rate``, rounded
        up so the rate is never exceeded); 0 without a rate."""
        return 0 if self.rate is None else -(-self.period_us // self.rate)

    def weight_of(self, value: Any) -> int:
        """The turns per round of the partition with this value (1 unless weighted)."""
        for key, weight in self.weights:
            if key == value and isinstance(key, bool) == isinstance(value, bool):
                return weight
        return 1

    def matches(self, queue: str, task_type: str) -> bool:
        """True when the rule applies to a task of ``task_type`` in ``queue``."""
        return (self.queue is None or self.queue == queue) and (
            self.task_type is None or self.task_type == task_type
        )

    def describe(self) -> str:
        """One line for listings: what it limits and how."""
        scope = []
        scope.append(f"queue={self.queue}" if self.queue else "every queue")
        scope.append(f"type={self.task_type}" if self.task_type else "every type")
        if self.partition_by:
            scope.append(f"per {self.partition_in}.{self.partition_by}")
        what = []
        if self.concurrency is not None:
            what.append(f"{self.concurrency} running")
        if self.rate is not None:
            what.append(f"{self.rate}/{self.period:g}s burst {self.burst}")
        if self.fair:
            shown = ", ".join(f"{k}×{w}" for k, w in self.weights)
            what.append("round-robin" + (f" (weights {shown})" if shown else ""))
        return f"{', '.join(scope)}: {', '.join(what)}"


def _limit_rules(value: Iterable[LimitRule]) -> tuple[LimitRule, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class LeasePlan:
    """The answer to ``hookqueue_lease``: how the store picks the next tasks.

    Without ``rerank`` the store leases the first ``limit`` due tasks in ``order`` in one
    ``UPDATE … RETURNING``. With ``rerank`` it selects a window of ``window`` candidates in
    ``order`` and leases the ids ``rerank`` returns, in the same transaction.

    With ``group_by`` as well, the window is drawn per group rather than from the head of
    the queue: each group's first due task in ``order``, then each group's second, and so
    on until ``window`` candidates are taken (offered in ``order``). A group is then never
    left out behind another group's backlog; only when more than ``window`` groups have due
    tasks are some (those whose best task comes last in ``order``) left out of a lease.
    """

    #: Sort keys, most significant first; the store breaks ties by due time, then enqueue
    #: order (``run_after``, id).
    order: tuple[SortKey, ...] = (SortKey.FIFO,)
    #: For ``AGED_PRIORITY``: seconds of waiting that improve priority by one.
    aging_seconds: float = 60.0
    #: Candidate window size for ``rerank``: it is offered up to this many due tasks
    #: (ignored without ``rerank``).
    window: int = 256
    #: Optional Python re-ranking of the window.
    rerank: Rerank | None = None
    #: Top-level payload key whose value is passed as ``Candidate.partition`` (e.g. a tenant).
    partition_key: str | None = None
    #: Draw the window per group (one of :data:`WINDOW_GROUPS`; ``partition`` needs
    #: ``partition_key``); None takes the first ``window`` due tasks in ``order``.
    group_by: str | None = attrs.field(default=None, validator=_group_by)
    #: Name shown by ``hookqueue plugins`` and in benchmarks.
    name: str = "fifo"
    #: Limits the store applies inside the lease transaction (concurrency, rate,
    #: round-robin turns; see :class:`LimitRule`), on top of the order: a due task a rule
    #: holds back stays ``queued`` and spends no attempt.
    limits: tuple[LimitRule, ...] = attrs.field(default=(), converter=_limit_rules)
    #: True: also apply the rules stored in the database (``TaskStore.set_limit``), read
    #: inside the same transaction (the ``limits`` plugin sets it).
    stored_limits: bool = False


@attrs.frozen(kw_only=True)
class HandlerSpec:
    """A task handler, as registered or contributed by a plugin's ``hookqueue_handlers``."""

    #: The task type it runs.
    task_type: str
    #: ``async def handler(task)`` or ``def handler(task)``; returns a JSON value.
    handler: Callable[..., Any]
    #: Shown by the CLI.
    description: str = ""
    #: Seconds one attempt may take (overrides the task's own ``timeout`` when the task has none).
    timeout: float | None = None
    #: Per-type options read by plugins (e.g. ``{"retry": ExponentialBackoff(...)}``).
    options: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class CliCommand:
    """A subcommand contributed to the ``hookqueue`` command by ``hookqueue_cli_commands``."""

    #: The subcommand's name (``hookqueue NAME``).
    name: str
    #: One line of help.
    help: str
    #: ``configure(parser)`` adds the subcommand's arguments to an argparse parser.
    configure: Callable[[Any], None]
    #: ``run(args) -> exit code``; ``args.db`` holds the database path when given.
    run: Callable[[Any], int]


@attrs.frozen(kw_only=True)
class AttemptFailure:
    """One failed attempt of a task, as its history keeps it (``Queue.history``): a retry
    clears the task's last error, but not this."""

    #: The task.
    task_id: int
    #: Which attempt failed (1 for the first).
    attempt: int
    #: When it ended.
    at: datetime
    #: The worker that ran it (None if unknown).
    worker_id: str | None
    #: What the failure led to: ``failed``, ``retry_scheduled``, ``cancelled`` or
    #: ``lease_expired`` (the worker died; the task ran again or ended).
    outcome: str
    #: The error message.
    error: str
    #: The formatted traceback, when the handler raised.
    traceback: str | None = None


@attrs.frozen(kw_only=True)
class WorkerInfo:
    """A worker as recorded in the database (for ``active_workers`` and ``hookqueue workers``)."""

    worker_id: str
    hostname: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None = None
    #: Tasks it has finished (completed, failed or retried) since it started.
    processed: int = 0

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> WorkerInfo:
        """Build a record from a row of a store's workers table: ``worker_id, hostname,
        pid, queues, concurrency, started_at, heartbeat_at, stopped_at, processed``, the
        queues as JSON text and the instants as integer microseconds.

        :raises ValueError: the queues are not a JSON list of names. A value of the wrong
            type raises TypeError, an instant out of range OverflowError.
        """
        worker_id, hostname, pid, queues_json, concurrency, started, beat, stopped, done = row
        queues = json.loads(queues_json)
        if not isinstance(queues, list) or not all(isinstance(q, str) for q in queues):
            raise ValueError(f"queues {queues_json!r} is not a JSON list of queue names")
        return cls(
            worker_id=str(worker_id),
            hostname=str(hostname),
            pid=int(pid),
            queues=tuple(queues),
            concurrency=int(concurrency),
            started_at=from_us(started),
            heartbeat_at=from_us(beat),
            stopped_at=None if stopped is None else from_us(stopped),
            processed=int(done),
        )


def _statuses(value: Any) -> tuple[TaskStatus, ...]:
    if value is None:
        return ()
    if isinstance(value, str | TaskStatus):
        value = (value,)
    out = []
    for item in value:
        try:
            out.append(TaskStatus(item))
        except ValueError:
            raise ValueError(
                f"statuses: {item!r} is not a task status; use {[s.value for s in TaskStatus]}"
            ) from None
    return tuple(dict.fromkeys(out))


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(dict.fromkeys(str(v) for v in value))


def _ints(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(dict.fromkeys(int(v) for v in value))


@attrs.frozen(kw_only=True)
class TaskFilter:
    """Which tasks a listing, a count or a bulk action covers; every field given must match,
    and an empty field matches everything. Strings and single values are accepted where a
    tuple is expected (``TaskFilter(statuses="failed")``).

    Built by the CLI's filter options (``--status --type --queue --older-than --error``), the
    dashboard's filter form and ``Queue``'s ``*_matching`` methods; the store turns it into
    one query.
    """

    #: Any of these statuses.
    statuses: tuple[TaskStatus, ...] = attrs.field(default=(), converter=_statuses)
    #: Any of these task types.
    task_types: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: Any of these queue names.
    queues: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: Any of these ids.
    ids: tuple[int, ...] = attrs.field(default=(), converter=_ints)
    #: Text the task's last error message contains (case-insensitive).
    error_contains: str | None = None
    #: Enqueued at or after this instant.
    created_after: datetime | None = attrs.field(default=None, validator=_aware)
    #: Enqueued before this instant.
    created_before: datetime | None = attrs.field(default=None, validator=_aware)
    #: Finished before this instant (finished tasks only).
    finished_before: datetime | None = attrs.field(default=None, validator=_aware)
    #: Ids up to this one: bounds an action to the tasks that existed when it was confirmed.
    max_id: int | None = None

    @property
    def is_empty(self) -> bool:
        """True when the filter matches every task."""
        return self == TaskFilter()

    def restricted_to(self, statuses: Sequence[TaskStatus]) -> TaskFilter | None:
        """This filter limited to ``statuses`` (what an action can change): the
        intersection, or None when it is empty (the action matches nothing)."""
        chosen = tuple(s for s in statuses if not self.statuses or s in self.statuses)
        return attrs.evolve(self, statuses=chosen) if chosen else None

    def matches(self, task: Task) -> bool:
        """Whether ``task`` passes every field (what the store's query does, in Python)."""
        if self.statuses and task.status not in self.statuses:
            return False
        if self.task_types and task.task_type not in self.task_types:
            return False
        if self.queues and task.queue not in self.queues:
            return False
        if self.ids and task.id not in self.ids:
            return False
        if self.error_contains and (
            task.error_message is None
            or self.error_contains.casefold() not in task.error_message.casefold()
        ):
            return False
        if self.created_after is not None and task.created_at < self.created_after:
            return False
        if self.created_before is not None and task.created_at >= self.created_before:
            return False
        if self.finished_before is not None and (
            task.finished_at is None or task.finished_at >= self.finished_before
        ):
            return False
        return self.max_id is None or task.id <= self.max_id

    def describe(self) -> str:
        """The filter in words, for confirmations: ``status failed; type email``."""
        parts = []
        if self.statuses:
            parts.append("status " + " or ".join(s.value for s in self.statuses))
        if self.task_types:
            parts.append("type " + " or ".join(self.task_types))
        if self.queues:
            parts.append("queue " + " or ".join(self.queues))
        if self.ids:
            parts.append("id " + ", ".join(str(i) for i in self.ids))
        if self.error_contains:
            parts.append(f"error contains {self.error_contains!r}")
        for label, value in (
            ("enqueued from", self.created_after),
            ("enqueued before", self.created_before),
            ("finished before", self.finished_before),
        ):
            if value is not None:
                parts.append(f"{label} {value.isoformat()}")
        if self.max_id is not None:
            parts.append(f"id up to {self.max_id}")
        return "; ".join(parts) or "every task"
