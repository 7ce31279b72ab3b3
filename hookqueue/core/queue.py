"""``Queue``: the user's API — enqueue, read, cancel, retry, prune.

A queue owns a store, a plugin manager and a handler registry, held in its
:class:`~hookqueue.core.runtime.QueueRuntime` (``queue.runtime``), which also carries what
workers call (lease, settle, heartbeat). The queue calls hooks in protocol order and owns no
policy: what to validate, which task runs next, whether to retry and what to measure are all
answered by plugins (the core's own defaults included). Every operation has a sync form and an
``*_async`` form; the async forms never block the event loop on the store.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import Any, NamedTuple, TypeVar

import attrs

from .clock import Clock, SystemClock, from_us, parse_duration, seconds_to_us, to_us
from .defaults import validate_changes, validate_new_task
from .encoding import IMMUTABLE_JSON, encode_json, flat_copy
from .errors import PluginError, TaskNotFound, ValidationError
from .groupcommit import GroupCommitter
from .handlers import TaskHandlerRegistry
from .inline import InlineRunner
from .models import AttemptFailure, NewTask, Task, TaskFilter, TaskStatus, WorkerInfo
from .plugins import Hooks, make_plugin_manager
from .runtime import QueueRuntime
from .storage import Durability, InsertRow, TaskStore
from .store import user_database_path
from .waiting import TaskHandle, Waiters, wait_sync
from .waiting import wait_async as _wait_async

log = logging.getLogger("hookqueue.queue")

T = TypeVar("T")

#: Default largest payload (its JSON text), in bytes. Larger payloads belong in a file or
#: blob store, with their address in the payload.
MAX_PAYLOAD_BYTES = 1024 * 1024

_DEFAULT = object()
#: How long finished tasks are kept when neither ``retention`` nor ``HOOKQUEUE_RETENTION``
#: says otherwise.
DEFAULT_RETENTION = timedelta(days=7)
#: Any delay longer than this ends past datetime's range (year 9999) once added to now.
_MAX_DELAY_US = 1000 * 365 * 86400 * 1_000_000


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


def _retention_from_environment() -> timedelta:
    """``HOOKQUEUE_RETENTION`` as a duration (unset or empty: :data:`DEFAULT_RETENTION`).

    :raises ValidationError: naming the variable, when it does not hold a duration.
    """
    text = os.environ.get("HOOKQUEUE_RETENTION", "")
    if not text.strip():
        return DEFAULT_RETENTION
    try:
        return parse_duration(text, "HOOKQUEUE_RETENTION")
    except ValidationError as exc:
        raise ValidationError(
            "HOOKQUEUE_RETENTION",
            text,
            exc.problem,
            "set it to how long finished tasks are kept, e.g. HOOKQUEUE_RETENTION=3d or 12h "
            "(or unset it for 7 days)",
        ) from None


class _Prepared(NamedTuple):
    """A task ready to insert: as the enqueue hooks left it, encoded for the store, and the
    payload the returned :class:`Task` will own."""

    new_task: NewTask
    row: InsertRow
    payload: Any


class Queue:
    """A persistent task queue: a store, a plugin manager and a handler registry.

    :param db_or_path: a store (:class:`QueueDatabase`, or any
        :class:`~hookqueue.core.storage.TaskStore`), a file path or a store URL (opened by the
        ``hookqueue_store`` hook: ``postgresql://...`` with ``hookqueue[postgres]``), or None
        for ``$HOOKQUEUE_DB``, else the per-user data directory.
    :param plugins: plugin objects to register after the entry points (a configured
        ``ExponentialBackoff(...)``, your own module of ``@hookimpl`` functions, ...).
    :param block: plugin names not to load (added to ``HOOKQUEUE_DISABLE_PLUGINS``).
    :param load_entrypoints: load plugins from the ``hookqueue`` entry-point group.
    :param clock: where time comes from (tests pass a ``FakeClock``).
    :param durability: ``"full"`` or ``"normal"`` when a path is given (see QueueDatabase).
    :param idempotency_window: how long after a task finished its idempotency key still
        deduplicates (a timedelta or seconds); None (default) keeps the key until the task is
        pruned.
    :param retention: how long finished tasks — their results, errors and history — are kept
        (a timedelta or seconds): what :meth:`prune`, ``hookqueue prune`` and a worker's
        ``prune_interval`` delete by default. None (default) reads ``HOOKQUEUE_RETENTION`` (a
        duration such as ``3d`` or ``12h``), else 7 days.
    :param max_payload_bytes: the largest payload, as UTF-8 JSON (default 1 MiB).
    :param create: create the database when it does not exist (default); False refuses a
        missing one (tools that only read must not create a database at a mistyped path).
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
        retention: timedelta | float | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        inline: bool = False,
        vfs: str | None = None,
        create: bool = True,
    ) -> None:
        self.db: TaskStore
        # The plugin manager first: the store itself may come from a plugin (hookqueue_store).
        pm = make_plugin_manager(load_entrypoints=load_entrypoints, block=block, plugins=plugins)
        if db_or_path is None or isinstance(db_or_path, str | os.PathLike):
            location = (
                os.fspath(db_or_path)
                if db_or_path is not None
                else os.environ.get("HOOKQUEUE_DB") or str(user_database_path())
            )
            options = {
                "durability": durability,
                "busy_timeout": busy_timeout,
                "vfs": vfs,
                "create": create,
            }
            self.db = Hooks(pm).open_store(location, options)
            self._owns_db = True
        elif isinstance(db_or_path, TaskStore):
            self.db = db_or_path
            self._owns_db = False
        else:
            raise ValidationError(
                "db_or_path",
                db_or_path,
                "is not a database path or a task store",
                "pass a file path, a store URL, QueueDatabase(path), or None for the default",
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
        #: How long finished tasks (their results, errors and history) are kept: what
        #: :meth:`prune` deletes by default.
        self.retention = timedelta(
            microseconds=_as_us(
                "retention", retention if retention is not None else _retention_from_environment()
            )
        )
        #: The store, hooks, handlers and clock this queue shares with its workers, and the
        #: worker-facing protocol (lease, settle, heartbeat, retry decisions, wake-ups).
        self.runtime = QueueRuntime(self, self.db, pm, clock or SystemClock())
        #: The plugin manager.
        self.pm = pm
        #: The typed hook facade (the runtime's).
        self.hooks = self.runtime.hooks
        #: The handlers workers of this queue run (plugins' ``hookqueue_handlers`` included).
        self.handlers = self.runtime.handlers
        #: Where time comes from.
        self.clock: Clock = self.runtime.clock
        self._executor: ThreadPoolExecutor | None = None
        self._committer: GroupCommitter[_Prepared, Task] | None = None
        self._waiter: Waiters | None = None
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
        if run_after is None and delay is not None:
            run_after = from_us(now_us + _as_us("delay", delay))
        return validate_new_task(
            NewTask(
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
        )

    def _through_hooks(self, new_tasks: list[NewTask], *, batch: bool) -> list[NewTask]:
        """Run ``hookqueue_enqueue`` once for the batch, then check every task a plugin
        changed (the caller's were checked already): a plugin that returns an invalid task,
        or not one task per task, is refused naming it, before anything is written."""
        result = self.hooks.enqueue(self, new_tasks)
        if _wrong_shape(result, new_tasks):
            raise self._bad_enqueue_answer(result, new_tasks)
        for index, after in enumerate(result):
            before = new_tasks[index]
            if after is before:
                continue
            try:
                validate_changes(before, after)
            except ValidationError as exc:
                where = f"tasks[{index}].{exc.field}" if batch else exc.field

                def sets_it(answer: Any, index: int = index, field: str = exc.field) -> bool:
                    if _wrong_shape(answer, new_tasks) or answer[index] is new_tasks[index]:
                        return False
                    try:
                        validate_changes(new_tasks[index], answer[index])
                    except ValidationError as again:
                        return again.field == field
                    return False

                raise PluginError(
                    f"hookqueue_enqueue: {self._enqueue_plugins(new_tasks, sets_it)} set "
                    f"{where}={_short_repr(exc.value)}, which {exc.problem}. Nothing was "
                    f"written. Fix: correct the plugin ({exc.fix}), or block it "
                    "(HOOKQUEUE_DISABLE_PLUGINS)"
                ) from None
        return result

    def _bad_enqueue_answer(self, result: Any, new_tasks: list[NewTask]) -> PluginError:
        def wrong(answer: Any) -> bool:
            return _wrong_shape(answer, new_tasks)

        return PluginError(
            f"hookqueue_enqueue: {self._enqueue_plugins(new_tasks, wrong)} returned "
            f"{_describe(result)} for a batch of {len(new_tasks)} task(s). Nothing was written. "
            "Fix: return a list with one NewTask per task, in order: "
            "[attrs.evolve(t, ...) for t in (yield)]"
        )

    def _enqueue_plugins(
        self, new_tasks: list[NewTask], is_wrong: Callable[[list[NewTask]], bool]
    ) -> str:
        """Who gave the refused answer: the plugin that gives it on its own when one does,
        else every enqueue plugin."""
        names = self.hooks.enqueue_culprits(self, new_tasks, is_wrong) or (
            self.hooks.enqueue_plugins()
        )
        if len(names) == 1:
            return f"plugin {names[0]!r}"
        return "one of the plugins " + ", ".join(repr(n) for n in names) if names else "a plugin"

    def _prepare(self, nt: NewTask, now_us: int) -> _Prepared:
        """Encode a validated task for the store, and the payload the returned :class:`Task`
        will own — everything that can refuse the task runs here, before anything is
        written."""
        payload_json = encode_json("payload", nt.payload, self.max_payload_bytes)
        payload = nt.payload
        if type(payload) not in IMMUTABLE_JSON:
            # The returned task owns its payload: decoding the JSON about to be written is a
            # deep copy (and shows what is stored, e.g. tuples as lists). Immutable values
            # are shared as they are, and a flat dict of them is copied as it is.
            payload = flat_copy(payload)
            if payload is None:
                try:
                    payload = json.loads(payload_json)
                except RecursionError:
                    raise ValidationError(
                        "payload",
                        "<deeply nested value>",
                        "is nested too deeply to be read back on this thread's stack",
                        "flatten it",
                    ) from None
        row = InsertRow(
            queue=nt.queue,
            task_type=nt.task_type,
            payload_json=payload_json,
            priority=nt.priority,
            max_attempts=1 if nt.max_attempts is None else nt.max_attempts,
            run_after_us=now_us if nt.run_after is None else to_us(nt.run_after, "run_after"),
            idempotency_key=nt.idempotency_key,
            timeout=None if nt.timeout is None else float(nt.timeout),
            headers_json=encode_json("headers", dict(nt.headers)) if nt.headers else None,
        )
        return _Prepared(nt, row, payload)

    @staticmethod
    def _task_from(task_id: int, item: _Prepared, now_us: int) -> Task:
        """The just-inserted task (from checked values: nothing here can raise)."""
        nt, row, payload = item
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

    def _write_new(self, items: Sequence[_Prepared], now_us: int) -> builtins.list[Task]:
        tasks = self._insert(items, now_us)
        if self.inline:
            return InlineRunner.for_runtime(self.runtime).run(tasks)
        return tasks

    def _insert(self, items: Sequence[_Prepared], now_us: int) -> builtins.list[Task]:
        """Write prepared tasks in one transaction; after it committed, build the returned
        tasks, send ``enqueued`` events and wake this process's workers (none of which can
        raise: observers' errors are logged)."""
        if len(items) == 1 and items[0].row.idempotency_key is None:
            # The commonest write, one task without a key (every plain enqueue()): the same
            # statement without insert()'s lists and key look-up.
            task = self._task_from(self.db.insert_one(items[0].row, now_us), items[0], now_us)
            self.runtime.enqueued((task,), now_us)
            return [task]
        results = self.db.insert(
            [item.row for item in items], now_us, key_window_us=self.key_window_us
        )
        tasks: builtins.list[Task] = []
        created: builtins.list[Task] = []
        for item, (task_id, existing) in zip(items, results, strict=True):
            if existing is not None:
                tasks.append(existing._replaced({"deduplicated": True}))
            else:
                task = self._task_from(task_id, item, now_us)
                tasks.append(task)
                created.append(task)
        if created:
            self.runtime.enqueued(created, now_us)
        return tasks

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
        [nt] = self._through_hooks([nt], batch=False)
        return self._write_new([self._prepare(nt, now_us)], now_us)[0]

    def _prepare_many(
        self, tasks: Iterable[Mapping[str, Any] | NewTask], now_us: int
    ) -> builtins.list[_Prepared]:
        built: builtins.list[NewTask] = []
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
                built.append(self._build(now_us=now_us, **{**defaults, **kwargs}))
            except ValidationError as exc:
                raise ValidationError(
                    f"tasks[{index}].{exc.field}", exc.value, exc.problem, exc.fix
                ) from None
        if not built:
            return []
        items: builtins.list[_Prepared] = []
        for index, nt in enumerate(self._through_hooks(built, batch=True)):
            try:
                items.append(self._prepare(nt, now_us))
            except ValidationError as exc:
                raise ValidationError(
                    f"tasks[{index}].{exc.field}", exc.value, exc.problem, exc.fix
                ) from None
        return items

    def prepare_rows(
        self, tasks: Iterable[Mapping[str, Any] | NewTask]
    ) -> builtins.list[InsertRow]:
        """The rows :meth:`enqueue_many` would write for ``tasks`` — validated, passed through
        ``hookqueue_enqueue`` and encoded — without writing them.

        For plugins that write tasks inside a store transaction of their own (the periodic
        plugin's ticks, with their marks): what they write is what an enqueue would have
        written. Nothing is written and no event is sent; a row's ``run_after_us`` is the
        queue's now unless the task asked for later.

        :raises ValidationError: naming the index and field of the first bad task.
        :raises PluginError: an enqueue plugin returned something invalid.
        """
        return [item.row for item in self._prepare_many(tasks, self.clock.now_us())]

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
            [item.row for item in items],
            now_us,
            key_window_us=self.key_window_us,
            claim=(worker_id, lease_until),
        )
        out: builtins.list[Task] = []
        created: builtins.list[Task] = []
        at = from_us(now_us)
        for item, (task_id, existing) in zip(items, results, strict=True):
            if existing is not None:
                out.append(existing._replaced({"deduplicated": True}))
                continue
            task = self._task_from(task_id, item, now_us)._replaced(
                {
                    "status": TaskStatus.RUNNING,
                    "attempts": 1,
                    "locked_by": worker_id,
                    "lease_expires_at": from_us(lease_until),
                    "started_at": at,
                }
            )
            out.append(task)
            created.append(task)
        self.runtime.enqueued(created, now_us, worker_id=worker_id)
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
        [nt] = self._through_hooks([nt], batch=False)
        item = self._prepare(nt, now_us)
        waiter: asyncio.Future[builtins.list[Task]] = asyncio.get_running_loop().create_future()
        self._group_committer().submit_async([item], now_us, waiter)
        tasks = await waiter
        if self.inline:
            tasks = await InlineRunner.for_runtime(self.runtime).run_async(tasks)
        return tasks[0]

    async def enqueue_many_async(
        self, tasks: Iterable[Mapping[str, Any] | NewTask]
    ) -> builtins.list[Task]:
        """:meth:`enqueue_many` for coroutines (one transaction, all or none)."""
        now_us = self.clock.now_us()
        items = self._prepare_many(tasks, now_us)
        if not items:
            return []
        written = await self._in_thread(self._insert, items, now_us)
        if self.inline:
            # on the caller's loop, so async handlers run where the caller's objects live
            return await InlineRunner.for_runtime(self.runtime).run_async(written)
        return written

    def _group_committer(self) -> GroupCommitter[_Prepared, Task]:
        with self._lock:
            if self._committer is None:
                self._committer = GroupCommitter(self._insert, "hookqueue-group-commit")
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
        filter: TaskFilter | None = None,
    ) -> builtins.list[Task]:
        """Tasks matching the filters, by id; page with ``after_id`` (the last id seen).

        :param filter: a :class:`~hookqueue.core.models.TaskFilter` for anything the other
            arguments cannot say (error text, an enqueue time range, several types ...);
            combined with them.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise ValidationError("limit", limit, "must be an integer from 1 to 100000", "e.g. 100")
        if filter is not None:
            flt = self.filter(filter, status=status, task_type=task_type, queue=queue)
            return self.db.list_matching(
                flt, limit=limit, after_id=after_id, newest_first=newest_first
            )
        if status is None:
            statuses: builtins.list[TaskStatus] = []
        elif isinstance(status, str | TaskStatus):
            statuses = [_status(status)]
        else:
            statuses = [_status(s) for s in status]
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
        self.runtime.emit([(kind, task)], now_us)
        if kind == "cancel_requested":
            self.runtime.wake("cancel")
        return task

    def retry(self, task_id: int | str) -> Task:
        """Put a failed or cancelled task back to ``queued`` now, with a fresh attempt count.

        :raises TaskNotFound: unknown id. :raises InvalidTransition: it is not failed or
            cancelled.
        """
        now_us = self.clock.now_us()
        task = self.db.requeue(_task_id(task_id), now_us)
        self.runtime.emit([("requeued", task)], now_us)
        self.runtime.wake()
        return task

    def prune(
        self,
        older_than: timedelta | float | None = None,
        statuses: Iterable[TaskStatus | str] = ("completed", "failed", "cancelled"),
    ) -> int:
        """Delete finished tasks that finished more than ``older_than`` ago (default: the
        queue's ``retention``), with their results and history.

        :returns: how many were deleted. Their idempotency keys are forgotten with them.
        """
        keep = self.retention if older_than is None else older_than
        cutoff = self.clock.now_us() - _as_us("older_than", keep)
        return self.db.prune(older_than_us=cutoff, statuses=[_status(s) for s in statuses])

    # -- many tasks at once --------------------------------------------------------------------

    def filter(
        self,
        base: TaskFilter | None = None,
        *,
        status: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
        task_type: str | Iterable[str] | None = None,
        queue: str | Iterable[str] | None = None,
        ids: int | Iterable[int] | None = None,
        error_contains: str | None = None,
        older_than: timedelta | float | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> TaskFilter:
        """A :class:`~hookqueue.core.models.TaskFilter` from keyword arguments (added to
        ``base``'s fields): ``older_than`` means enqueued more than that long ago (by the
        queue's clock).

        :raises ValidationError: naming the argument that is not what it should be.
        """
        changes: dict[str, Any] = {}
        try:
            if status is not None:
                changes["statuses"] = status
            if task_type is not None:
                changes["task_types"] = task_type
            if queue is not None:
                changes["queues"] = queue
            if ids is not None:
                changes["ids"] = _filter_ids(ids)
            if error_contains is not None:
                changes["error_contains"] = error_contains
            if created_after is not None:
                to_us(created_after, "created_after")
                changes["created_after"] = created_after
            if created_before is not None:
                to_us(created_before, "created_before")
                changes["created_before"] = created_before
            if older_than is not None:
                cutoff = from_us(self.clock.now_us() - _as_us("older_than", older_than))
                before = changes.get("created_before")
                changes["created_before"] = cutoff if before is None else min(before, cutoff)
            return attrs.evolve(base, **changes) if base is not None else TaskFilter(**changes)
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                raise
            raise ValidationError("filter", changes, str(exc), "see TaskFilter's fields") from None

    def count(self, filter: TaskFilter | None = None, **fields: Any) -> int:
        """How many tasks match (:meth:`filter`'s arguments, or a TaskFilter)."""
        return self.db.count_matching(self.filter(filter, **fields))

    def cancel_matching(self, filter: TaskFilter | None = None, **fields: Any) -> int:
        """Cancel every task that matches (:meth:`filter`'s arguments, or a TaskFilter): the
        queued ones end ``cancelled`` now, the running ones are flagged for their workers (as
        :meth:`cancel` does one). Finished tasks are left alone; tasks enqueued while it runs
        too.

        :returns: how many tasks it cancelled or flagged — a damaged task (a stored row that
            cannot be read) included: it is changed like the others, logged, and sends no
            event.
        """
        now_us = self.clock.now_us()
        done = self.db.cancel_matching(self.filter(filter, **fields), now_us)
        self.runtime.emit(done.changed, now_us)
        # A damaged task may be a running one flagged: its worker is told too.
        if done.damaged or any(kind == "cancel_requested" for kind, _ in done.changed):
            self.runtime.wake("cancel")
        return done.count

    def retry_matching(self, filter: TaskFilter | None = None, **fields: Any) -> int:
        """Queue again every failed or cancelled task that matches, now, with a fresh attempt
        count and no error (their history of failed attempts stays: :meth:`history`).

        :returns: how many tasks were queued again, damaged ones included (as
            :meth:`cancel_matching` counts them).
        """
        now_us = self.clock.now_us()
        done = self.db.requeue_matching(self.filter(filter, **fields), now_us)
        self.runtime.emit([("requeued", t) for t in done.changed], now_us)
        if done.count:
            self.runtime.wake()
        return done.count

    def purge(self, filter: TaskFilter | None = None, **fields: Any) -> int:
        """Delete the *queued* tasks that match (they never run). Running and finished tasks
        are left alone (cancel them, or prune the finished ones).

        :returns: how many were deleted.
        """
        flt = self.filter(filter, **fields)
        scoped = flt.restricted_to([TaskStatus.QUEUED])
        return 0 if scoped is None else self.db.delete_matching(scoped)

    def delete_matching(self, filter: TaskFilter | None = None, **fields: Any) -> int:
        """Delete the queued and finished tasks that match, with their history (never a
        running task).

        :returns: how many were deleted.
        """
        return self.db.delete_matching(self.filter(filter, **fields))

    def history(self, task_id: int | str) -> builtins.list[AttemptFailure]:
        """The failed attempts of a task, oldest first, each with its error, its traceback
        and the worker that ran it (kept after a retry clears the task's error).

        :raises TaskNotFound: unknown id.
        """
        tid = _task_id(task_id)
        failures = self.db.task_failures(tid)
        if not failures:
            self.db.get(tid)  # an unknown id raises TaskNotFound
        return failures

    # -- queues --------------------------------------------------------------------------------

    def pause(self, queue: str) -> bool:
        """Stop every worker (of every process) leasing from ``queue``; running tasks finish.
        Persisted in the database: it stays paused across restarts until :meth:`resume`.

        :returns: False if it was paused already.
        """
        _check_queue_name(queue)
        return self.db.pause_queue(queue, self.clock.now_us())

    def resume(self, queue: str) -> bool:
        """Let workers lease from ``queue`` again. :returns: False if it was not paused."""
        _check_queue_name(queue)
        resumed = self.db.resume_queue(queue)
        if resumed:
            self.runtime.wake()
        return resumed

    def paused_queues(self) -> dict[str, datetime]:
        """The paused queues and when each was paused."""
        return self.db.paused_queues()

    # -- waiting -------------------------------------------------------------------------------

    def _waiters(self) -> Waiters:
        with self._lock:
            if self._waiter is None:
                self._waiter = Waiters(self.db)
            return self._waiter

    def wait(self, task_id: int | str, timeout: float | None = None) -> Task:
        """Block until the task finished, woken by the store's change notification (another
        process's commit wakes it at once; nothing polls the task).

        :param timeout: seconds to wait at most (None: no limit).
        :returns: the task, if it completed (its ``result`` is the handler's return value).
        :raises TaskFailed: it ended ``failed`` (``.task`` holds it, with its error).
        :raises TaskWasCancelled: it ended ``cancelled``.
        :raises WaitTimeout: it has not finished in time; it is left as it is.
        :raises TaskNotFound: unknown id (or it was deleted meanwhile).
        """
        tid = _task_id(task_id)
        limit = None if timeout is None else _as_us("timeout", timeout) / 1e6
        return wait_sync(self._waiters(), tid, limit, lambda: self.get(tid).status.value)

    async def wait_async(self, task_id: int | str, timeout: float | None = None) -> Task:
        """:meth:`wait` for coroutines: the event loop never blocks, and a thousand waiting
        coroutines share one thread."""
        tid = _task_id(task_id)
        limit = None if timeout is None else _as_us("timeout", timeout) / 1e6

        async def status() -> str:
            return (await self.get_async(tid)).status.value

        return await _wait_async(self._waiters(), tid, limit, status)

    def handle(self, task: Task | int | str) -> TaskHandle:
        """A :class:`~hookqueue.core.waiting.TaskHandle` on a task (or an id), to wait for
        it and read its result: ``queue.handle(queue.enqueue(...)).result(timeout=30)``."""
        return TaskHandle(self, task.id if isinstance(task, Task) else _task_id(task))

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
        older_than: timedelta | float | None = None,
        statuses: Iterable[TaskStatus | str] = ("completed", "failed", "cancelled"),
    ) -> int:
        """:meth:`prune` for coroutines."""
        return await self._in_thread(self.prune, older_than, list(statuses))

    async def count_async(self, filter: TaskFilter | None = None, **fields: Any) -> int:
        """:meth:`count` for coroutines."""
        return await self._in_thread(self.count, filter, **fields)

    async def cancel_matching_async(self, filter: TaskFilter | None = None, **fields: Any) -> int:
        """:meth:`cancel_matching` for coroutines."""
        return await self._in_thread(self.cancel_matching, filter, **fields)

    async def retry_matching_async(self, filter: TaskFilter | None = None, **fields: Any) -> int:
        """:meth:`retry_matching` for coroutines."""
        return await self._in_thread(self.retry_matching, filter, **fields)

    async def purge_async(self, filter: TaskFilter | None = None, **fields: Any) -> int:
        """:meth:`purge` for coroutines."""
        return await self._in_thread(self.purge, filter, **fields)

    async def delete_matching_async(self, filter: TaskFilter | None = None, **fields: Any) -> int:
        """:meth:`delete_matching` for coroutines."""
        return await self._in_thread(self.delete_matching, filter, **fields)

    async def history_async(self, task_id: int | str) -> builtins.list[AttemptFailure]:
        """:meth:`history` for coroutines."""
        return await self._in_thread(self.history, task_id)

    async def workers_async(self) -> builtins.list[WorkerInfo]:
        """:meth:`workers` for coroutines."""
        return await self._in_thread(self.workers)

    async def check_async(self) -> builtins.list[str]:
        """:meth:`check` for coroutines."""
        return await self._in_thread(self.check)

    async def enqueue_claimed_async(
        self, worker_id: str, *, lease_seconds: float = 10.0, task_type: str, **kwargs: Any
    ) -> Task:
        """:meth:`enqueue_claimed` for coroutines."""
        return await self._in_thread(
            self.enqueue_claimed,
            worker_id,
            lease_seconds=lease_seconds,
            task_type=task_type,
            **kwargs,
        )

    async def enqueue_claimed_many_async(
        self,
        worker_id: str,
        *,
        lease_seconds: float = 10.0,
        tasks: Iterable[Mapping[str, Any] | NewTask],
    ) -> builtins.list[Task]:
        """:meth:`enqueue_claimed_many` for coroutines."""
        return await self._in_thread(
            self.enqueue_claimed_many, worker_id, lease_seconds=lease_seconds, tasks=list(tasks)
        )

    async def pause_async(self, queue: str) -> bool:
        """:meth:`pause` for coroutines."""
        return await self._in_thread(self.pause, queue)

    async def resume_async(self, queue: str) -> bool:
        """:meth:`resume` for coroutines."""
        return await self._in_thread(self.resume, queue)

    async def paused_queues_async(self) -> dict[str, datetime]:
        """:meth:`paused_queues` for coroutines."""
        return await self._in_thread(self.paused_queues)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the background threads, tell plugins, and close the store if this queue
        opened it (a QueueDatabase passed in stays open). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.hooks.queue_close(self)
        InlineRunner.close_for(self.runtime)
        if self._waiter is not None:
            self._waiter.close()
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


def _describe(value: Any) -> str:
    """What a plugin returned, briefly, for an error."""
    if isinstance(value, list):
        kinds = sorted({type(v).__name__ for v in value})
        return f"a list of {len(value)} ({', '.join(kinds) or 'nothing'})"
    return f"a {type(value).__name__}"


def _wrong_shape(answer: Any, new_tasks: list[NewTask]) -> bool:
    """Not one :class:`NewTask` per task (the enqueue hook's answer)."""
    return (
        type(answer) is not list
        or len(answer) != len(new_tasks)
        or not all(isinstance(t, NewTask) for t in answer)
    )


def _short_repr(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _filter_ids(ids: Any) -> list[int]:
    values = [ids] if isinstance(ids, int | str) else list(ids)
    out = []
    for value in values:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValidationError("ids", value, "must be task ids (integers >= 1)", "e.g. [12, 13]")
        out.append(value)
    return out


def _check_queue_name(queue: Any) -> None:
    if not isinstance(queue, str) or not queue:
        raise ValidationError("queue", queue, "must be a queue name", "e.g. 'default'")
