"""``Queue``: the facade over the store, the plugin manager and the handler registry.

The queue calls hooks in protocol order and owns no policy: what to validate, which task runs
next, whether to retry and what to measure are all answered by plugins (the core's own
defaults included). Every operation has a sync form and an ``*_async`` form; the async forms
never block the event loop on SQLite.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import queue as stdlib_queue
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import attrs

from .clock import Clock, SystemClock, from_us, seconds_to_us, to_us
from .errors import TaskNotFound, ValidationError
from .handlers import TaskHandlerRegistry
from .models import (
    EventKind,
    Failure,
    HandlerSpec,
    LeaseRequest,
    NewTask,
    Task,
    TaskEvent,
    TaskStatus,
    WorkerInfo,
)
from .plugins import Hooks, make_plugin_manager
from .storage import Durability, InsertRow, Settlement, TaskStore
from .store import QueueDatabase

log = logging.getLogger("hookqueue.queue")

T = TypeVar("T")

#: Default largest payload (its JSON text), in bytes. Larger payloads belong in a file or
#: blob store, with their address in the payload.
MAX_PAYLOAD_BYTES = 1024 * 1024

_DEFAULT = object()
#: Any delay longer than this ends past datetime's range (year 9999) once added to now.
_MAX_DELAY_US = 1000 * 365 * 86400 * 1_000_000

_KIND_TO_EVENT = {
    "completed": EventKind.COMPLETED,
    "failed": EventKind.FAILED,
    "retry_scheduled": EventKind.RETRY_SCHEDULED,
    "cancelled": EventKind.CANCELLED,
    "released": EventKind.RELEASED,
    "lease_expired": EventKind.LEASE_EXPIRED,
    "cancel_requested": EventKind.CANCEL_REQUESTED,
}


#: ``json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)``, with
#: the encoder built once (json.dumps builds one per call when given options).
_ENCODE = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode
#: Payload types whose decoded JSON is the value itself (nothing to copy).
_IMMUTABLE_JSON = frozenset({type(None), str, int, float, bool})


#: Transitions whose event carries no error message (the task's last one is history).
_NO_ERROR_KINDS = frozenset({"completed", "requeued", "cancel_requested"})


def _encode_json(field: str, value: Any, limit: int | None = None) -> str:
    """``value`` as compact JSON text, or a ValidationError naming ``field``.

    Refused: what JSON cannot hold (sets, bytes, objects, NaN and infinities), dict keys that
    are not strings (``json`` would turn ``1`` into ``"1"`` and silently merge it with a
    ``"1"`` key), text that is not valid Unicode (lone surrogates), nesting too deep to
    encode, and text over ``limit`` UTF-8 bytes.
    """
    fix = (
        "pass dicts with string keys, lists, strings, finite numbers, booleans and None only "
        "(convert datetimes to ISO strings, sets to lists, objects to dicts)"
    )
    try:
        text = _ENCODE(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(field, value, f"is not JSON-serialisable ({exc})", fix) from None
    except RecursionError:
        raise ValidationError(
            field, "<deeply nested value>", "is nested too deeply to encode", "flatten it"
        ) from None
    if not text.isascii():
        try:
            size = len(text.encode())
        except UnicodeEncodeError as exc:
            raise ValidationError(
                field,
                value,
                f"contains text that is not valid Unicode ({exc.reason})",
                "remove lone surrogates (decode bytes with errors='replace')",
            ) from None
    else:
        size = len(text)
    if size > 2 and _has_non_string_key(value):
        raise ValidationError(
            field, value, "has a dict key that is not a string", "convert keys to strings yourself"
        )
    if limit is not None and size > limit:
        raise ValidationError(
            field,
            f"<{size} bytes of JSON>",
            f"is larger than max_payload_bytes={limit}",
            "store large data elsewhere and put its path or URL in the payload, or raise "
            "Queue(max_payload_bytes=...)",
        )
    return text


def _flat_copy(value: Any) -> dict[str, Any] | None:
    """A copy of ``value`` if it is a dict of str keys and immutable JSON values (exact types:
    a str or int subclass, such as an enum, is stored as its plain value) — equal to what
    decoding its JSON gives, for a fraction of the cost; else None."""
    if type(value) is not dict:
        return None
    immutable = _IMMUTABLE_JSON
    for key, item in value.items():
        if type(key) is not str or type(item) not in immutable:
            return None
    return value.copy()


def _has_non_string_key(value: Any) -> bool:
    """True if any dict inside ``value`` has a key that is not a str (iterative: no recursion
    limit, and the payload already encoded, so it is finite)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return True
                if isinstance(child, dict | list | tuple):
                    stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(child for child in item if isinstance(child, dict | list | tuple))
    return False


def _as_us(field: str, value: datetime | timedelta | float | int) -> int:
    """A delay (seconds or timedelta) as microseconds, validated."""
    if isinstance(value, timedelta):
        us = value // timedelta(microseconds=1)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValidationError(field, value, "must be finite", "e.g. 30 or timedelta(minutes=5)")
        us = seconds_to_us(value)
    else:
        raise ValidationError(
            field,
            value,
            "must be seconds (a number) or a timedelta",
            "e.g. 30 or timedelta(minutes=5)",
        )
    if us < 0:
        raise ValidationError(field, value, "must not be negative", "use 0 or a positive delay")
    if us > _MAX_DELAY_US:
        raise ValidationError(
            field, value, "is longer than a thousand years", "use a delay that ends before 9999"
        )
    return us


class Queue:
    """A persistent task queue: a store, a plugin manager and a handler registry.

    :param db_or_path: a store (:class:`QueueDatabase`, or any
        :class:`~hookqueue.core.storage.TaskStore`), a file path, or None for the default path
        (``HOOKQUEUE_DB``, else the per-user data directory).
    :param plugins: plugin objects to register after the entry points (a configured
        ``ExponentialBackoff(...)``, your own module of ``@hookimpl`` functions, ...).
    :param block: plugin names not to load (added to ``HOOKQUEUE_DISABLE_PLUGINS``).
    :param load_entrypoints: load plugins from the ``hookqueue`` entry-point group.
    :param clock: where time comes from (tests pass a ``FakeClock``).
    :param durability: ``"full"`` or ``"normal"`` when a path is given (see QueueDatabase).
    :param idempotency_window: how long after a task finished its idempotency key still
        deduplicates (a timedelta or seconds); None (default) keeps the key until the task is
        pruned.
    :param max_payload_bytes: the largest payload, as UTF-8 JSON (default 1 MiB).
    :param inline: run each task in the caller, through the same hooks, as soon as it is
        enqueued (for unit tests and scripts; see ``hookqueue.core.inline``). Delayed tasks
        wait for an explicit ``run_due()``.
    """

    def __init__(
        self,
        db_or_path: TaskStore | str | os.PathLike[str] | None = None,
        *,
        plugins: Iterable[Any] = (),
        block: Iterable[str] = (),
        load_entrypoints: bool = True,
        clock: Clock | None = None,
        durability: Durability = "full",
        busy_timeout: float = 10.0,
        idempotency_window: timedelta | float | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        inline: bool = False,
        vfs: str | None = None,
    ) -> None:
        self.db: TaskStore
        if db_or_path is None or isinstance(db_or_path, str | os.PathLike):
            self.db = QueueDatabase(
                db_or_path, durability=durability, busy_timeout=busy_timeout, vfs=vfs
            )
            self._owns_db = True
        elif isinstance(db_or_path, TaskStore):
            self.db = db_or_path
            self._owns_db = False
        else:
            raise ValidationError(
                "db_or_path",
                db_or_path,
                "is not a database path or a task store",
                "pass a file path, QueueDatabase(path), or None for the default database",
            )
        if (
            isinstance(max_payload_bytes, bool)
            or not isinstance(max_payload_bytes, int)
            or max_payload_bytes < 2
        ):
            raise ValidationError(
                "max_payload_bytes", max_payload_bytes, "must be an integer >= 2", "e.g. 1048576"
            )
        self.max_payload_bytes = max_payload_bytes
        self.key_window_us = (
            None if idempotency_window is None else _as_us("idempotency_window", idempotency_window)
        )
        self.clock: Clock = clock or SystemClock()
        self.pm = make_plugin_manager(
            load_entrypoints=load_entrypoints, block=block, plugins=plugins
        )
        self.hooks = Hooks(self.pm)
        #: The handlers workers of this queue run (plugins' ``hookqueue_handlers`` included).
        self.handlers = TaskHandlerRegistry()
        for spec in self.hooks.handlers():
            self.handlers.add(spec)
        self._wakers: dict[int, Callable[[str], None]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._committer: _GroupCommitter | None = None
        self._lock = threading.Lock()
        self._closed = False
        #: Run tasks in the caller as they are enqueued (see ``hookqueue.core.inline``).
        self.inline = bool(inline)
        self.db.initialize_schema()
        self.hooks.queue_open(self)

    @classmethod
    def for_database(cls, db: TaskStore | Queue) -> Queue:
        """The queue to use for ``db``: ``db`` itself if it is a Queue, else one shared Queue
        per store object (so a manager and a worker built from the same database share one
        handler registry)."""
        if isinstance(db, Queue):
            return db
        if not isinstance(db, TaskStore):
            raise ValidationError(
                "queue_db",
                db,
                "is neither a Queue nor a QueueDatabase (or another task store)",
                "pass QueueDatabase(path) or Queue(path)",
            )
        existing = getattr(db, "_hookqueue_queue", None)
        queue = existing() if existing is not None else None
        if queue is None or queue._closed:
            queue = cls(db)
            db._hookqueue_queue = weakref.ref(queue)  # type: ignore[attr-defined]
        return queue

    def __repr__(self) -> str:
        return f"Queue({self.db!r})"

    @property
    def handler_registry(self) -> TaskHandlerRegistry:
        """Alias of :attr:`handlers` (the migration guide's name)."""
        return self.handlers

    def now(self) -> datetime:
        """The queue clock's current instant."""
        return from_us(self.clock.now_us())

    # -- enqueue -------------------------------------------------------------------------------

    def _build(
        self,
        task_type: str,
        payload: Any,
        *,
        priority: int,
        run_after: datetime | None,
        delay: timedelta | float | None,
        max_attempts: int | None,
        idempotency_key: str | None,
        queue: str,
        timeout: float | None,
        headers: Mapping[str, Any] | None,
        now_us: int,
    ) -> NewTask:
        if run_after is not None and delay is not None:
            raise ValidationError(
                "delay",
                delay,
                "cannot be combined with run_after",
                "pass one of run_after or delay",
            )
        if run_after is not None:
            to_us(run_after, "run_after")
        elif delay is not None:
            run_after = from_us(now_us + _as_us("delay", delay))
        new_task = NewTask(
            task_type=task_type,
            payload=payload,
            priority=priority,
            run_after=run_after,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            queue=queue,
            timeout=timeout,
            headers=headers if headers is not None else {},
        )
        result = self.hooks.enqueue(self, new_task)
        if not isinstance(result, NewTask):
            raise ValidationError(
                "hookqueue_enqueue",
                result,
                "a plugin returned something that is not a NewTask",
                "return attrs.evolve(result, ...) from enqueue wrappers",
            )
        return result

    def _row(self, nt: NewTask, now_us: int) -> InsertRow:
        return InsertRow(
            queue=nt.queue,
            task_type=nt.task_type,
            payload_json=_encode_json("payload", nt.payload, self.max_payload_bytes),
            priority=nt.priority,
            max_attempts=1 if nt.max_attempts is None else nt.max_attempts,
            run_after_us=now_us if nt.run_after is None else to_us(nt.run_after, "run_after"),
            idempotency_key=nt.idempotency_key,
            timeout=None if nt.timeout is None else float(nt.timeout),
            headers_json=_encode_json("headers", dict(nt.headers)) if nt.headers else None,
        )

    def _task_from(self, task_id: int, nt: NewTask, row: InsertRow, now_us: int) -> Task:
        payload = nt.payload
        if type(payload) not in _IMMUTABLE_JSON:
            # The returned task owns its payload: decoding the JSON just written is a deep
            # copy (and shows what is stored, e.g. tuples as lists). Immutable values are
            # shared as they are, and a flat dict of them is copied as it is.
            payload = _flat_copy(payload)
            if payload is None:
                payload = json.loads(row.payload_json)
        return Task._new_queued(
            id=task_id,
            queue=nt.queue,
            task_type=nt.task_type,
            payload=payload,
            priority=nt.priority,
            max_attempts=row.max_attempts,
            run_after_us=row.run_after_us,
            created_at_us=now_us,
            idempotency_key=nt.idempotency_key,
            timeout=row.timeout,
            headers=dict(nt.headers),
        )

    def _write_new(
        self, items: Sequence[tuple[NewTask, InsertRow]], now_us: int
    ) -> builtins.list[Task]:
        if len(items) == 1 and items[0][1].idempotency_key is None:
            # The commonest write, one task without a key (every plain enqueue()): the same
            # statement without insert()'s lists and key look-up (~5 us less; W1).
            nt, row = items[0]
            task = self._task_from(self.db.insert_one(row, now_us), nt, row, now_us)
            self._enqueued((task,), now_us)
            tasks = [task]
        else:
            results = self.db.insert(
                [row for _, row in items], now_us, key_window_us=self.key_window_us
            )
            tasks = self._after_insert(items, results, now_us)
        if self.inline:
            from .inline import run_inline

            return run_inline(self, tasks)
        return tasks

    def _insert_only(
        self, items: Sequence[tuple[NewTask, InsertRow]], now_us: int
    ) -> builtins.list[Task]:
        results = self.db.insert(
            [row for _, row in items], now_us, key_window_us=self.key_window_us
        )
        return self._after_insert(items, results, now_us)

    def _after_insert(
        self,
        items: Sequence[tuple[NewTask, InsertRow]],
        results: Sequence[tuple[int, Task | None]],
        now_us: int,
    ) -> builtins.list[Task]:
        tasks: builtins.list[Task] = []
        created: builtins.list[Task] = []
        for (nt, row), (task_id, existing) in zip(items, results, strict=True):
            if existing is not None:
                tasks.append(existing)
            else:
                task = self._task_from(task_id, nt, row, now_us)
                tasks.append(task)
                created.append(task)
        if created:
            self._enqueued(created, now_us)
        return tasks

    def _enqueued(self, created: Sequence[Task], now_us: int) -> None:
        """After new tasks committed: their ``enqueued`` events, and wake this process's
        workers."""
        if self.hooks.has_event_observers():
            at = from_us(now_us)
            self.hooks.event([TaskEvent._make(EventKind.ENQUEUED, t, at) for t in created])
        self._wake()

    def enqueue(
        self,
        task_type: str,
        payload: Any = None,
        *,
        priority: int = 100,
        run_after: datetime | None = None,
        delay: timedelta | float | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        queue: str = "default",
        timeout: float | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> Task:
        """Add a task; it is durable when this returns.

        :param task_type: the handler name (1–200 characters).
        :param payload: any JSON value (usually a dict), at most ``max_payload_bytes``.
        :param priority: lower runs first (with the priority scheduler); default 100.
        :param run_after: not before this aware datetime; or
        :param delay: not before this many seconds (or this timedelta) from now.
        :param max_attempts: the most attempts (>= 1); None lets the retry plugin choose
            (5 with the default policy; 1 with the core alone).
        :param idempotency_key: a repeated key returns the existing task instead of adding a
            second one — race-free across threads and processes.
        :param queue: the queue name workers lease from.
        :param timeout: seconds one attempt may take.
        :param headers: metadata for plugins (JSON object).
        :returns: the new task, or the existing one for a repeated idempotency key.
        :raises ValidationError: a bad argument, naming it; nothing is written.
        """
        now_us = self.clock.now_us()
        nt = self._build(
            task_type,
            payload,
            priority=priority,
            run_after=run_after,
            delay=delay,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            queue=queue,
            timeout=timeout,
            headers=headers,
            now_us=now_us,
        )
        return self._write_new([(nt, self._row(nt, now_us))], now_us)[0]

    def _prepare_many(
        self, tasks: Iterable[Mapping[str, Any] | NewTask], now_us: int
    ) -> builtins.list[tuple[NewTask, InsertRow]]:
        items: builtins.list[tuple[NewTask, InsertRow]] = []
        defaults = _ENQUEUE_DEFAULTS
        for index, spec in enumerate(tasks):
            if type(spec) is dict:  # the common case, before the slower ABC check
                kwargs: Mapping[str, Any] = spec
            elif isinstance(spec, NewTask):
                kwargs = attrs.asdict(spec, recurse=False)
            elif isinstance(spec, Mapping):
                kwargs = spec
            else:
                raise ValidationError(
                    f"tasks[{index}]",
                    spec,
                    "must be a dict of enqueue() arguments or a NewTask",
                    "e.g. {'task_type': 'email', 'payload': {...}}",
                )
            if "task_type" not in kwargs:
                raise ValidationError(
                    f"tasks[{index}].task_type", None, "is missing", "every task needs a task_type"
                )
            unknown = kwargs.keys() - _ENQUEUE_ARGS
            if unknown:
                raise ValidationError(
                    f"tasks[{index}]",
                    sorted(unknown),
                    "has unknown keys",
                    f"use only {sorted(_ENQUEUE_ARGS)}",
                )
            try:
                # Every key is one of _build's arguments (checked above): one merge with
                # the defaults instead of a lookup per argument.
                nt = self._build(now_us=now_us, **{**defaults, **kwargs})
                items.append((nt, self._row(nt, now_us)))
            except ValidationError as exc:
                raise ValidationError(
                    f"tasks[{index}].{exc.field}", exc.value, exc.problem, exc.fix
                ) from None
        return items

    def enqueue_many(self, tasks: Iterable[Mapping[str, Any] | NewTask]) -> builtins.list[Task]:
        """Add many tasks in one transaction: all are stored, or none.

        :param tasks: dicts of :meth:`enqueue`'s arguments (``task_type`` required), or
            :class:`NewTask` records.
        :returns: the tasks in the same order (existing ones for repeated idempotency keys).
        :raises ValidationError: naming the index and field of the first bad task; nothing
            is written.
        """
        now_us = self.clock.now_us()
        items = self._prepare_many(tasks, now_us)
        if not items:
            return []
        return self._write_new(items, now_us)

    def enqueue_claimed(
        self, worker_id: str, *, lease_seconds: float = 10.0, task_type: str, **kwargs: Any
    ) -> Task:
        """Enqueue a task that ``worker_id`` runs itself, already leased to it.

        For code that runs the work in-process but wants it recorded and recoverable (the
        ``BackgroundTaskManager`` adapter): the task is inserted ``running`` with its first
        attempt counted and a lease the caller renews with :meth:`heartbeat` and ends with
        :meth:`settle`. If the caller dies, the lease expires and a worker with a handler for
        ``task_type`` runs it again. Takes :meth:`enqueue`'s keyword arguments. A repeated
        idempotency key returns the existing task, not claimed.
        """
        return self.enqueue_claimed_many(
            worker_id, lease_seconds=lease_seconds, tasks=[{"task_type": task_type, **kwargs}]
        )[0]

    def enqueue_claimed_many(
        self,
        worker_id: str,
        *,
        lease_seconds: float = 10.0,
        tasks: Iterable[Mapping[str, Any] | NewTask],
    ) -> builtins.list[Task]:
        """:meth:`enqueue_claimed` for a batch, in one transaction (all or none)."""
        now_us = self.clock.now_us()
        items = self._prepare_many(tasks, now_us)
        if not items:
            return []
        lease_until = now_us + seconds_to_us(lease_seconds)
        results = self.db.insert(
            [row for _, row in items],
            now_us,
            key_window_us=self.key_window_us,
            claim=(worker_id, lease_until),
        )
        out: builtins.list[Task] = []
        events: builtins.list[TaskEvent] = []
        at = from_us(now_us)
        for (nt, row), (task_id, existing) in zip(items, results, strict=True):
            if existing is not None:
                out.append(existing)
                continue
            task = attrs.evolve(
                self._task_from(task_id, nt, row, now_us),
                status=TaskStatus.RUNNING,
                attempts=1,
                locked_by=worker_id,
                lease_expires_at=from_us(lease_until),
                started_at=at,
            )
            out.append(task)
            events.append(TaskEvent(kind=EventKind.ENQUEUED, task=task, at=at, worker_id=worker_id))
            events.append(TaskEvent(kind=EventKind.STARTED, task=task, at=at, worker_id=worker_id))
        if events and self.hooks.has_event_observers():
            self.hooks.event(events)
        return out

    async def enqueue_async(
        self,
        task_type: str,
        payload: Any = None,
        *,
        priority: int = 100,
        run_after: datetime | None = None,
        delay: timedelta | float | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        queue: str = "default",
        timeout: float | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> Task:
        """:meth:`enqueue` for coroutines. Concurrent calls share one commit (group commit),
        so many coroutines enqueueing at once pay for one fsync, not one each."""
        now_us = self.clock.now_us()
        nt = self._build(
            task_type,
            payload,
            priority=priority,
            run_after=run_after,
            delay=delay,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            queue=queue,
            timeout=timeout,
            headers=headers,
            now_us=now_us,
        )
        row = self._row(nt, now_us)
        waiter: asyncio.Future[builtins.list[Task]] = asyncio.get_running_loop().create_future()
        self._group_committer().submit_async([(nt, row)], now_us, waiter)
        tasks = await waiter
        if self.inline:
            from .inline import run_inline_async

            tasks = await run_inline_async(self, tasks)
        return tasks[0]

    async def enqueue_many_async(
        self, tasks: Iterable[Mapping[str, Any] | NewTask]
    ) -> builtins.list[Task]:
        """:meth:`enqueue_many` for coroutines (one transaction, all or none)."""
        now_us = self.clock.now_us()
        items = self._prepare_many(tasks, now_us)
        if not items:
            return []
        written = await self._in_thread(self._insert_only, items, now_us)
        if self.inline:
            from .inline import run_inline_async

            # on the caller's loop, so async handlers run where the caller's objects live
            return await run_inline_async(self, written)
        return written

    def _group_committer(self) -> _GroupCommitter:
        with self._lock:
            if self._committer is None:
                self._committer = _GroupCommitter(self)
            return self._committer

    # -- reads ---------------------------------------------------------------------------------

    def get(self, task_id: int | str) -> Task:
        """The task with this id. :raises TaskNotFound:"""
        return self.db.get(_task_id(task_id))

    def find(self, idempotency_key: str) -> Task | None:
        """The task holding this idempotency key, or None."""
        return self.db.find_by_key(idempotency_key)

    def list(
        self,
        *,
        status: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
        task_type: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
        newest_first: bool = False,
    ) -> builtins.list[Task]:
        """Tasks matching the filters, by id; page with ``after_id`` (the last id seen)."""
        if status is None:
            statuses: builtins.list[TaskStatus] = []
        elif isinstance(status, str | TaskStatus):
            statuses = [_status(status)]
        else:
            statuses = [_status(s) for s in status]
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise ValidationError("limit", limit, "must be an integer from 1 to 100000", "e.g. 100")
        return self.db.list(
            statuses=statuses,
            task_type=task_type,
            queue=queue,
            limit=limit,
            after_id=after_id,
            newest_first=newest_first,
        )

    def counts(self, *, by_type: bool = False) -> dict[str, Any]:
        """Tasks per status (``{"queued": n, ...}``), or per type and status."""
        return self.db.counts(by_type=by_type)

    def workers(self) -> builtins.list[WorkerInfo]:
        """Every worker recorded in the database."""
        return self.db.workers()

    def check(self) -> builtins.list[str]:
        """Integrity and consistency problems of the database; empty when healthy."""
        return self.db.check()

    # -- user actions --------------------------------------------------------------------------

    def cancel(self, task_id: int | str) -> Task:
        """Cancel a task: a queued one ends ``cancelled`` now; a running one is marked, and its
        worker cancels it within a heartbeat (at once when the worker is in this process).

        :returns: the task after the change (``cancel_requested`` set for a running task).
        :raises TaskNotFound: unknown id. :raises InvalidTransition: it already finished.
        """
        now_us = self.clock.now_us()
        kind, task = self.db.cancel(_task_id(task_id), now_us)
        self._emit([(kind, task)], now_us)
        if kind == "cancel_requested":
            self._wake("cancel")
        return task

    def retry(self, task_id: int | str) -> Task:
        """Put a failed or cancelled task back to ``queued`` now, with a fresh attempt count.

        :raises TaskNotFound: unknown id. :raises InvalidTransition: it is not failed or
            cancelled.
        """
        now_us = self.clock.now_us()
        task = self.db.requeue(_task_id(task_id), now_us)
        self._emit([("requeued", task)], now_us)
        self._wake()
        return task

    def prune(
        self,
        older_than: timedelta | float = timedelta(days=7),
        statuses: Iterable[TaskStatus | str] = ("completed", "failed", "cancelled"),
    ) -> int:
        """Delete finished tasks that finished more than ``older_than`` ago.

        :returns: how many were deleted. Their idempotency keys are forgotten with them.
        """
        cutoff = self.clock.now_us() - _as_us("older_than", older_than)
        return self.db.prune(older_than_us=cutoff, statuses=[_status(s) for s in statuses])

    # -- what workers call ---------------------------------------------------------------------

    def lease(
        self,
        worker_id: str,
        *,
        queues: Sequence[str] = ("default",),
        limit: int = 1,
        lease_seconds: float = 10.0,
        settlements: Sequence[Settlement] = (),
    ) -> builtins.list[Task]:
        """Write finished attempts, take over expired leases and lease up to ``limit`` tasks,
        in one transaction; the scheduler (``hookqueue_lease``) picks which.

        Attempts are counted here, at lease time, so a task whose worker dies still runs
        out of attempts.
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
        plan = self.hooks.lease(self, request)
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
        )
        self._emit(transitions, now_us, worker_id=worker_id, settlements=settlements)
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
        transaction; outcomes for leases this worker no longer holds are dropped."""
        now_us = self.clock.now_us()
        transitions = self.db.settle(worker_id, settlements, now_us)
        self._emit(transitions, now_us, worker_id=worker_id, settlements=settlements)
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
        now = self.now()
        decision = self.hooks.retry(task, failure, handler, now)
        if decision.retry and task.attempts < task.max_attempts:
            run_after = decision.run_after or now
            return Settlement(
                task_id=task.id,
                kind="retry",
                error=failure.message,
                run_after_us=to_us(run_after, "run_after"),
                reason=decision.reason,
            )
        message = failure.message
        if decision.retry:
            message += f" (gave up: all {task.max_attempts} attempts used)"
        return Settlement(task_id=task.id, kind="fail", error=message, reason=decision.reason)

    def register_worker(self, info: WorkerInfo) -> None:
        """Record a starting worker."""
        self.db.register_worker(info)

    def worker_stopped(self, worker_id: str) -> None:
        """Record a worker's clean shutdown."""
        self.db.worker_stopped(worker_id, self.clock.now_us())

    def add_waker(self, waker: Callable[[str], None]) -> int:
        """Call ``waker(reason)`` after each enqueue or retry (``"enqueue"``) and each cancel of
        a running task (``"cancel"``) made in this process; in-process workers use it to act
        at once instead of at their next poll. Returns a handle for :meth:`remove_waker`."""
        handle = id(waker)
        with self._lock:
            self._wakers[handle] = waker
        return handle

    def remove_waker(self, handle: int) -> None:
        """Stop calling a waker."""
        with self._lock:
            self._wakers.pop(handle, None)

    def _wake(self, reason: str = "enqueue") -> None:
        for waker in list(self._wakers.values()):
            try:
                waker(reason)
            except Exception:  # a worker's loop closed under us: nothing to wake
                log.debug("waker failed", exc_info=True)

    def _emit(
        self,
        transitions: Sequence[tuple[str, Task]],
        now_us: int,
        *,
        worker_id: str | None = None,
        settlements: Sequence[Settlement] = (),
    ) -> None:
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

    # -- async forms ---------------------------------------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=4, thread_name_prefix="hookqueue-io"
                )
            return self._executor

    async def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), partial(fn, *args, **kwargs))

    async def get_async(self, task_id: int | str) -> Task:
        """:meth:`get` for coroutines."""
        return await self._in_thread(self.get, task_id)

    async def find_async(self, idempotency_key: str) -> Task | None:
        """:meth:`find` for coroutines."""
        return await self._in_thread(self.find, idempotency_key)

    async def list_async(self, **filters: Any) -> builtins.list[Task]:
        """:meth:`list` for coroutines."""
        return await self._in_thread(self.list, **filters)

    async def counts_async(self, *, by_type: bool = False) -> dict[str, Any]:
        """:meth:`counts` for coroutines."""
        return await self._in_thread(self.counts, by_type=by_type)

    async def cancel_async(self, task_id: int | str) -> Task:
        """:meth:`cancel` for coroutines."""
        return await self._in_thread(self.cancel, task_id)

    async def retry_async(self, task_id: int | str) -> Task:
        """:meth:`retry` for coroutines."""
        return await self._in_thread(self.retry, task_id)

    async def prune_async(
        self,
        older_than: timedelta | float = timedelta(days=7),
        statuses: Iterable[TaskStatus | str] = ("completed", "failed", "cancelled"),
    ) -> int:
        """:meth:`prune` for coroutines."""
        return await self._in_thread(self.prune, older_than, list(statuses))

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the background threads, tell plugins, and close the store if this queue
        opened it (a QueueDatabase passed in stays open). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.hooks.queue_close(self)
        if self.inline:
            from .inline import close_runner

            close_runner(self)
        if self._committer is not None:
            self._committer.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._owns_db:
            self.db.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: enqueue()'s defaults, for the dicts given to enqueue_many.
_ENQUEUE_DEFAULTS: dict[str, Any] = {
    "payload": None,
    "priority": 100,
    "run_after": None,
    "delay": None,
    "max_attempts": None,
    "idempotency_key": None,
    "queue": "default",
    "timeout": None,
    "headers": None,
}
#: The keys a dict given to enqueue_many may have.
_ENQUEUE_ARGS = frozenset({"task_type", *_ENQUEUE_DEFAULTS})


def _task_id(value: int | str) -> int:
    if isinstance(value, bool):
        raise ValidationError("task_id", value, "must be an integer id", "pass Task.id")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise TaskNotFound(value)


def _status(value: TaskStatus | str) -> TaskStatus:
    try:
        return TaskStatus(value)
    except ValueError:
        raise ValidationError(
            "status", value, "is not a task status", f"use one of {[s.value for s in TaskStatus]}"
        ) from None


class _GroupCommitter:
    """Commits concurrent ``enqueue_async`` calls together: one writer thread takes every
    request waiting when it is free and writes them in one transaction (one fsync)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._requests: stdlib_queue.SimpleQueue[Any] = stdlib_queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="hookqueue-group-commit", daemon=True
        )
        self._thread.start()

    def submit(
        self, items: Sequence[tuple[NewTask, InsertRow]], now_us: int
    ) -> Future[builtins.list[Task]]:
        future: Future[builtins.list[Task]] = Future()
        self._requests.put((items, now_us, future))
        return future

    def submit_async(
        self,
        items: Sequence[tuple[NewTask, InsertRow]],
        now_us: int,
        waiter: asyncio.Future[builtins.list[Task]],
    ) -> None:
        """Like :meth:`submit`, resolving an asyncio future of the caller's loop: the writer
        resolves every waiter of one loop in one ``call_soon_threadsafe`` per batch, where
        a concurrent Future per request costs a loop wake-up and two locks each."""
        self._requests.put((items, now_us, waiter))

    def stop(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while True:
                try:
                    nxt = self._requests.get_nowait()
                except stdlib_queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: builtins.list[Any]) -> None:
        queue = self.queue
        items = [item for items, _, _ in batch for item in items]
        now_us = max(n for _, n, _ in batch)
        try:
            results = queue.db.insert(
                [row for _, row in items], now_us, key_window_us=queue.key_window_us
            )
        except Exception:
            if len(batch) == 1:
                _settle_waiters([(batch[0][2], None, _current_exception())])
                return
            # One request spoiled the batch: write each on its own so only it fails.
            for request in batch:
                self._commit([request])
            return
        tasks = queue._after_insert(items, results, now_us)
        offset = 0
        outcomes: builtins.list[tuple[Any, Any, BaseException | None]] = []
        for request_items, _, future in batch:
            n = len(request_items)
            outcomes.append((future, tasks[offset : offset + n], None))
            offset += n
        _settle_waiters(outcomes)


def _settle_waiters(outcomes: Sequence[tuple[Any, Any, BaseException | None]]) -> None:
    """Give each request its result or exception: concurrent Futures directly, asyncio
    futures with one ``call_soon_threadsafe`` per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, builtins.list[Any]] = {}
    for future, result, exc in outcomes:
        if isinstance(future, asyncio.Future):
            by_loop.setdefault(future.get_loop(), []).append((future, result, exc))
        elif exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    for loop, pending in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve_on_loop, pending)
        except RuntimeError:  # the caller's loop closed: nobody is waiting any more
            pass


def _resolve_on_loop(pending: Sequence[tuple[Any, Any, BaseException | None]]) -> None:
    for future, result, exc in pending:
        if future.done():  # the awaiting coroutine was cancelled
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


def _current_exception() -> BaseException:
    import sys

    exc = sys.exc_info()[1]
    assert exc is not None
    return exc
