"""``QueueDatabase``: the SQLite store — the :class:`~hookqueue.core.storage.TaskStore`
operations, each running named statements (:mod:`.statements`) on the connection layer
(:mod:`.connection`) in one transaction.

Rows are fetched as tuples inside a transaction and decoded into :class:`Task` records after
it commits wherever possible, so the write lock every other process waits for is held for the
statements alone.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import apsw
import attrs

from .. import limitwalk
from ..clock import from_us, to_us
from ..errors import DamagedRow, InvalidTransition, TaskNotFound, ValidationError
from ..models import (
    _STAMP,
    TASK_COLUMNS,
    AttemptFailure,
    Candidate,
    LeasePlan,
    LimitRule,
    SortKey,
    Task,
    TaskFilter,
    TaskStatus,
    WorkerInfo,
)
from ..storage import (
    BulkResult,
    ChangeWatcher,
    Durability,
    ExpiryDecider,
    FinishedSample,
    FireOutcome,
    InsertRow,
    LimitUsage,
    QueueGauge,
    RawRow,
    ScheduleDefinition,
    ScheduleRow,
    Settlement,
    TickFire,
    Transition,
    decode_workers,
)
from . import limiting
from .connection import SYNCHRONOUS, Connections, default_database_path
from .limiting import (
    SQL_LIMIT_DELETE,
    SQL_LIMIT_GET,
    SQL_LIMIT_INSERT,
    SQL_LIMIT_RATES_DELETE,
    SQL_LIMIT_TURNS_DELETE,
    SQL_LIMIT_UPDATE,
    SQL_RATE_AHEAD,
    SQL_RATE_PRUNE,
    SQL_RATE_PUT,
)
from .schema import SCHEMA_VERSION, migrate
from .statements import (
    FINAL_STATUSES,
    SQL_ANY_EXPIRED,
    SQL_ATTEMPTS_OVER,
    SQL_CANCEL_IF_REQUESTED,
    SQL_CANCEL_QUEUED,
    SQL_CANCEL_RUNNING,
    SQL_CANCELLED_BY_WORKER,
    SQL_CLAIM_NEW,
    SQL_COMPLETE,
    SQL_COUNTS,
    SQL_COUNTS_BY_TYPE,
    SQL_DUE_QUEUES,
    SQL_EXPIRE_FAIL,
    SQL_EXPIRE_REQUEUE,
    SQL_EXPIRED_IDS,
    SQL_EXPORT,
    SQL_FAIL,
    SQL_FAIL_DAMAGED,
    SQL_FINISHED_BUCKETS,
    SQL_FINISHED_MISMATCH,
    SQL_FINISHED_SINCE,
    SQL_FORGET_KEY,
    SQL_GET,
    SQL_GET_BY_KEY,
    SQL_IMPORT,
    SQL_INSERT_ID,
    SQL_INSERT_KEYED,
    SQL_INTEGRITY,
    SQL_LATEST_CREATED,
    SQL_NEWEST_ID,
    SQL_NEXT_EXPIRY,
    SQL_OLDEST_QUEUED,
    SQL_PAUSE_QUEUE,
    SQL_PAUSED_QUEUES,
    SQL_PRUNE_BATCH,
    SQL_PRUNE_TICKS,
    SQL_PRUNE_WORKERS,
    SQL_QUEUED_BY_QUEUE,
    SQL_QUEUED_QUEUE_NAMES,
    SQL_RECENT_FINISHED,
    SQL_RECORD_FAILURE,
    SQL_RELEASE,
    SQL_RENEW,
    SQL_REQUEUE,
    SQL_RESUME_QUEUE,
    SQL_RETRY_LATER,
    SQL_RUNNING_BY_QUEUE,
    SQL_RUNNING_UNOWNED,
    SQL_SCHEDULE_CLAIM,
    SQL_SCHEDULE_DECLARED,
    SQL_SCHEDULE_DELETE,
    SQL_SCHEDULE_FIRED,
    SQL_SCHEDULE_GET,
    SQL_SCHEDULE_INSERT,
    SQL_SCHEDULE_NEXT,
    SQL_SCHEDULE_PAUSE,
    SQL_SCHEDULE_REDEFINE,
    SQL_SCHEDULE_RESUME,
    SQL_SCHEDULE_STATE,
    SQL_SCHEDULE_TICKS_DELETE,
    SQL_SCHEDULES_ALL,
    SQL_SCHEDULES_DUE,
    SQL_TASK_ACTIVE,
    SQL_TASK_FAILURES,
    SQL_TICK_EXISTS,
    SQL_TICK_INSERT,
    SQL_VACUUM,
    SQL_WAITING_RETRY,
    SQL_WORKER_BEAT,
    SQL_WORKER_BY_ROWID,
    SQL_WORKER_ROWIDS,
    SQL_WORKER_STOP,
    SQL_WORKER_UPSERT,
    SQL_WORKERS,
    sql_any_due_in_queue,
    sql_cancel_queued_ids,
    sql_complete_held,
    sql_delete_ids,
    sql_flag_running_ids,
    sql_get_many,
    sql_lease,
    sql_lease_chosen,
    sql_lease_window,
    sql_lease_window_grouped,
    sql_list,
    sql_matching,
    sql_next_due,
    sql_requeue_ids,
)

log = logging.getLogger("hookqueue.store")

#: What decoding a damaged row raises: text that is not JSON, an unknown status, a timestamp
#: out of datetime's range, a value nested deeper than the decoder's recursion limit.
_UNDECODABLE = (ValueError, TypeError, OverflowError, KeyError, IndexError, RecursionError)

#: A context that changes nothing (a lease that carries outcomes commits synced).
_NO_CHANGE = contextlib.nullcontext()

#: Ids per statement when reading many tasks at once (below SQLite's parameter limit).
READ_CHUNK = 500
#: Tasks changed per transaction by a bulk action (cancel, retry, delete by filter).
BULK_BATCH = 500


def _completes_held(s: Settlement) -> bool:
    """A completion of a task the worker holds in memory (written by
    :func:`sql_complete_held`, its event built from that task)."""
    return s.kind == "complete" and s.task is not None and s.task.id == s.task_id


class _HeldComplete(NamedTuple):
    """A completion of a task the worker holds (:func:`sql_complete_held`), to be applied to
    that task after COMMIT instead of decoding a whole row."""

    result_json: str | None
    finished_us: int
    cancel_requested: int

    def apply(self, held: Task) -> Task:
        """``held`` as the completion left it in the table."""
        result = self.result_json
        return held._replaced(
            {
                "status": TaskStatus.COMPLETED,
                "result": None if result is None else json.loads(result),
                "finished_at": _STAMP[self.finished_us],
                "locked_by": None,
                "lease_expires_at": None,
                "cancel_requested": bool(self.cancel_requested),
            }
        )


class QueueDatabase:
    """The SQLite store: schema, migrations and every statement hookqueue runs.

    :param path: the database file; default :func:`default_database_path`. Parent directories
        are created; a new file is created readable and writable by its owner only (0600).
    :param db_path: the same as ``path`` (the migration guide's keyword).
    :param durability: ``"full"`` (default) makes every acknowledged write (an enqueue, an
        outcome) survive power loss (``synchronous=FULL``; a lease that carries no outcome
        is not synced — losing it only runs the task again); ``"normal"`` may lose the last
        transactions on power loss but never on an application crash, and is several times
        faster per commit.
    :param busy_timeout: seconds to wait for another connection's write lock before raising
        :class:`~hookqueue.core.errors.DatabaseBusy`.
    :param vfs: the name of a registered SQLite VFS to open the file through (None: default).
    :param create: create the file when it does not exist (default); False refuses a missing
        file with a :class:`~hookqueue.core.errors.StoreError` naming the path (tools that only
        read must not create a database at a mistyped path).

    The schema is created or migrated on first use; :meth:`initialize_schema` does it
    explicitly and is idempotent. A file that is not a hookqueue database, or was written by
    a newer hookqueue, is refused and left untouched.
    """

    #: The schema version this hookqueue writes (older files are migrated to it).
    SCHEMA_VERSION = SCHEMA_VERSION

    @staticmethod
    def default_path() -> Path:
        """Where a store opened without a path lives (see :func:`.default_database_path`)."""
        return default_database_path()

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        db_path: str | os.PathLike[str] | None = None,
        durability: Durability = "full",
        busy_timeout: float = 10.0,
        vfs: str | None = None,
        create: bool = True,
    ) -> None:
        if path is not None and db_path is not None and Path(path) != Path(db_path):
            raise ValidationError(
                "db_path", db_path, f"conflicts with path={str(path)!r}", "pass only one of them"
            )
        chosen = path if path is not None else db_path
        if chosen is not None and not isinstance(chosen, str | os.PathLike):
            raise ValidationError(
                "path", chosen, "must be a file path (str or os.PathLike)", "pass a file path"
            )
        if chosen is not None and "://" in os.fspath(chosen):
            raise ValidationError(
                "path",
                chosen,
                "is a URL, not a file path (a QueueDatabase is always a SQLite file)",
                "pass the URL to Queue(...) (or --db), which opens the store that serves it",
            )
        if durability not in SYNCHRONOUS:
            raise ValidationError(
                "durability", durability, "is not a durability level", "use 'full' or 'normal'"
            )
        if not isinstance(busy_timeout, int | float) or busy_timeout < 0:
            raise ValidationError(
                "busy_timeout", busy_timeout, "must be a number of seconds >= 0", "e.g. 10.0"
            )
        self.path = Path(chosen).expanduser() if chosen is not None else default_database_path()
        if str(self.path) == ":memory:":
            raise ValidationError(
                "path",
                ":memory:",
                "an in-memory database is private to one connection, and hookqueue uses one "
                "connection per thread",
                "use a file (a temporary one in tests: the pytest plugin's hq_queue fixture)",
            )
        self.durability: Durability = durability
        self.busy_timeout = float(busy_timeout)
        #: The SQLite VFS to open the file through (None: the default), e.g. for tests that
        #: inject I/O faults or for encryption VFSes.
        self.vfs = vfs
        self._schema_ready = False
        self._cx = Connections(
            self.path,
            durability=durability,
            busy_timeout=self.busy_timeout,
            vfs=vfs,
            create=create,
            prepare=self._prepare_connection,
        )

    # -- rows ----------------------------------------------------------------------------------

    def _task(self, row: Any) -> Task:
        """Decode a row, turning damage (a payload that is not JSON, an unknown status, a
        timestamp out of range) into a StoreError naming the database and the task."""
        try:
            return Task.from_row(row)
        except _UNDECODABLE as exc:
            task_id = row[0] if row else "?"
            raise DamagedRow(
                f"{self.path}: task {task_id} is damaged and cannot be read "
                f"({self._task_error(row, exc)}). Fix: run 'hookqueue check', then cancel or "
                "delete the task, or restore the database from a backup",
                task_id=task_id,
            ) from exc

    @staticmethod
    def _task_error(row: Any, exc: BaseException) -> str:
        """What was wrong with a row ``Task.from_row`` refused, for logs and errors."""
        if isinstance(exc, KeyError) and len(row) > 5:
            return f"ValueError: {row[5]!r} is not a valid TaskStatus"
        return f"{type(exc).__name__}: {exc}"

    # -- lifecycle -----------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"QueueDatabase({str(self.path)!r}, durability={self.durability!r})"

    def __enter__(self) -> QueueDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def location(self) -> str:
        """The database file's path, for messages."""
        return str(self.path)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._cx.closed

    def close(self) -> None:
        """Close every connection this object opened (in any thread). Idempotent."""
        self._cx.close()

    def _prepare_connection(self, conn: apsw.Connection) -> None:
        """Bring the schema up to date through the first connection opened."""
        if not self._schema_ready:
            self._migrate(conn)

    def _migrate(self, conn: apsw.Connection) -> None:
        with self._cx.errors:
            if conn.pragma("user_version") < SCHEMA_VERSION:
                # BEGIN IMMEDIATE takes the write lock, so of several processes initialising
                # at once, one migrates and the others see the new version when they get it.
                with self._cx.write() as locked:
                    migrate(locked, self.path)
        self._schema_ready = True

    def initialize_schema(self) -> None:
        """Create or migrate the schema. Idempotent; safe when several processes call it at once."""
        conn = self._cx.conn()
        if not self._schema_ready:
            self._migrate(conn)

    def schema_version(self) -> int:
        """The schema version stored in the file."""
        with self._cx.errors:
            return int(self._cx.conn().pragma("user_version"))

    def check(self) -> builtins.list[str]:
        """Run SQLite's integrity check and hookqueue's own consistency checks.

        :returns: a list of problems; empty when the database is healthy.
        """
        conn = self._cx.conn()
        with self._cx.errors:
            problems = [row[0] for row in conn.execute(SQL_INTEGRITY) if row[0] != "ok"]
            problems += [
                f"task {tid} is running without a lease owner"
                for (tid,) in conn.execute(SQL_RUNNING_UNOWNED)
            ]
            problems += [
                f"task {tid} has attempts={a} above max_attempts={m}"
                for tid, a, m in conn.execute(SQL_ATTEMPTS_OVER)
            ]
            # counts() and the history index (tasks_terminal) rely on this.
            problems += [
                f"task {tid} is {status} but its finished_at "
                + ("is missing" if finished is None else "is set")
                for tid, status, finished in conn.execute(SQL_FINISHED_MISMATCH, FINAL_STATUSES)
            ]
        return problems

    # -- enqueue -------------------------------------------------------------------------------

    def insert(
        self,
        rows: Sequence[InsertRow],
        now_us: int,
        *,
        key_window_us: int | None = None,
        claim: tuple[str, int] | None = None,
    ) -> builtins.list[tuple[int, Task | None]]:
        """Insert tasks in one transaction (all or none).

        :param rows: the tasks, validated and JSON-encoded.
        :param now_us: the enqueue instant (``created_at``; also ``run_after`` when it is 0).
        :param key_window_us: how long after it finished a task's idempotency key keeps
            deduplicating (None: until the task is pruned).
        :param claim: ``(worker_id, lease_expires_at_us)``: the new tasks start ``running``,
            leased to that worker with their first attempt counted, in the same transaction
            (no other worker can lease them first). Existing tasks are returned unchanged.
        :returns: per row, ``(id, None)`` for a new task, or ``(id, existing task)`` when a
            task with the same idempotency key exists and is still remembered.
        """
        out: builtins.list[tuple[int, Task | None]] = []
        with self._cx.errors:
            conn = self._cx.begin()
            try:
                self._insert(conn, rows, now_us, key_window_us, claim, out)
            except BaseException:
                self._cx.rollback(conn)
                raise
            self._cx.commit(conn)
        return out

    def insert_one(self, row: InsertRow, now_us: int) -> int:
        """Insert one task without an idempotency key in its own transaction; its id.

        :meth:`insert` for the commonest write, one task without a key (every plain
        ``Queue.enqueue``): no key to look up, no list to build.
        """
        if row.idempotency_key is not None:
            raise ValueError("insert_one takes rows without an idempotency key; use insert()")
        with self._cx.errors:
            conn = self._cx.begin()
            try:
                conn.execute(SQL_INSERT_ID, row.params(now_us))
                task_id: int = conn.last_insert_rowid()
            except BaseException:
                self._cx.rollback(conn)
                raise
            self._cx.commit(conn)
        return task_id

    def _insert(
        self,
        conn: apsw.Connection,
        rows: Sequence[InsertRow],
        now_us: int,
        key_window_us: int | None,
        claim: tuple[str, int] | None,
        out: builtins.list[tuple[int, Task | None]],
    ) -> None:
        for row in rows:
            params = row.params(now_us)
            if row.idempotency_key is None:
                conn.execute(SQL_INSERT_ID, params)
                out.append((self._claimed(conn, conn.last_insert_rowid(), now_us, claim), None))
                continue
            got = conn.execute(SQL_INSERT_KEYED, params).get
            if got is not None:
                out.append((self._claimed(conn, got, now_us, claim), None))
                continue
            existing = self._task(conn.execute(SQL_GET_BY_KEY, (row.idempotency_key,)).get)
            if (
                key_window_us is not None
                and existing.finished_at is not None
                and _us(existing.finished_at) + key_window_us <= now_us
            ):
                # The key's window has passed: the old task keeps its history but lets
                # go of the key, and the new task takes it.
                conn.execute(SQL_FORGET_KEY, (existing.id,))
                conn.execute(SQL_INSERT_ID, params)
                out.append((self._claimed(conn, conn.last_insert_rowid(), now_us, claim), None))
            else:
                out.append((existing.id, existing))

    @staticmethod
    def _claimed(
        conn: apsw.Connection, task_id: int, now_us: int, claim: tuple[str, int] | None
    ) -> int:
        """Lease a just-inserted task to the claiming worker (before a later row of the same
        batch may read it back as an existing task); returns its id."""
        if claim is not None:
            worker_id, lease_until = claim
            conn.execute(SQL_CLAIM_NEW, (worker_id, lease_until, now_us, task_id))
        return task_id

    # -- reads ---------------------------------------------------------------------------------

    def get(self, task_id: int) -> Task:
        """The task with this id. :raises TaskNotFound: if there is none."""
        with self._cx.errors:
            row = self._cx.conn().execute(SQL_GET, (task_id,)).get
        if row is None:
            raise TaskNotFound(task_id)
        return self._task(row)

    def find_by_key(self, key: str) -> Task | None:
        """The task holding this idempotency key, or None."""
        with self._cx.errors:
            row = self._cx.conn().execute(SQL_GET_BY_KEY, (key,)).get
        return None if row is None else self._task(row)

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
        """Tasks matching every given filter, ordered by id, at most ``limit``.

        Paging is by id: pass the last id of a page as ``after_id`` to get the next one (with
        ``newest_first`` the next page holds smaller ids).
        """
        filter_params: builtins.list[Any] = [
            v for v in (task_type, queue, after_id) if v is not None
        ]
        wanted = dict.fromkeys(TaskStatus(s) for s in statuses)
        final = [s.value for s in wanted if s.is_terminal]
        queued, running = TaskStatus.QUEUED in wanted, TaskStatus.RUNNING in wanted
        params = (
            (filter_params if queued else [])
            + (filter_params if running else [])
            + ((final + filter_params) if final else [])
            + (filter_params if not wanted else [])
            + [limit]
        )
        shape = {
            "queued": queued,
            "running": running,
            "n_final": len(final),
            "any_status": not wanted,
            "by_type": task_type is not None,
            "by_queue": queue is not None,
            "after_id": after_id is not None,
            "newest": newest_first,
        }
        conn = self._cx.conn()
        with self._cx.errors:
            try:
                rows = conn.execute(sql_list(**shape), params).fetchall()
            except UnicodeDecodeError:  # a row whose text is not UTF-8: find it by id
                ids = [r[0] for r in conn.execute(sql_list(**shape, ids_only=True), params)]
                rows = self._fetch_one_by_one(conn, ids)
        return self._decode_tolerant(rows)

    def _decode_tolerant(self, rows: Iterable[Any]) -> builtins.list[Task]:
        """Fetched rows as tasks, leaving out (and logging) those that cannot be decoded,
        so one damaged task never hides the others."""
        tasks: builtins.list[Task] = []
        for row in rows:
            try:
                tasks.append(self._task(row))
            except DamagedRow as exc:
                log.error("%s; it is left out", exc)
        return tasks

    def _fetch_one_by_one(self, conn: apsw.Connection, ids: Iterable[int]) -> builtins.list[Any]:
        """The rows with these ids fetched one at a time, leaving out (and logging) those
        whose text cannot be decoded."""
        rows: builtins.list[Any] = []
        for task_id in ids:
            try:
                row = conn.execute(SQL_GET, (task_id,)).get
            except UnicodeDecodeError as exc:
                log.error(
                    "%s: task %d is damaged and cannot be read (%s); it is left out. Fix: run "
                    "'hookqueue check', then cancel the task or restore a backup",
                    self.path,
                    task_id,
                    exc,
                )
                continue
            if row is not None:
                rows.append(row)
        return rows

    # -- filters and bulk actions --------------------------------------------------------------

    @staticmethod
    def _shape(flt: TaskFilter, page: int = 0, page_id: int | None = None) -> tuple[Any, Any]:
        """The statement shape and bound values of a filter (see ``sql_matching``)."""
        final = [s.value for s in flt.statuses if s.is_terminal]
        queued = TaskStatus.QUEUED in flt.statuses
        running = TaskStatus.RUNNING in flt.statuses
        any_status = not flt.statuses
        conditions: builtins.list[Any] = [*flt.task_types, *flt.queues, *flt.ids]
        if flt.error_contains:
            conditions.append(flt.error_contains)
        for instant in (flt.created_after, flt.created_before, flt.finished_before):
            if instant is not None:
                conditions.append(_us(instant))
        if flt.max_id is not None:
            conditions.append(flt.max_id)
        if page:
            conditions.append(page_id)
        params = (
            (conditions if queued else [])
            + (conditions if running else [])
            + ((final + conditions) if final else [])
            + (conditions if any_status else [])
        )
        shape = (
            queued,
            running,
            len(final),
            any_status,
            len(flt.task_types),
            len(flt.queues),
            len(flt.ids),
            bool(flt.error_contains),
            flt.created_after is not None,
            flt.created_before is not None,
            flt.finished_before is not None,
            flt.max_id is not None,
            page,
        )
        return shape, params

    def list_matching(
        self,
        flt: TaskFilter,
        *,
        limit: int = 100,
        after_id: int | None = None,
        newest_first: bool = False,
    ) -> builtins.list[Task]:
        """Tasks a filter matches, ordered by id, at most ``limit``; page with ``after_id``
        (ids above it, or below it with ``newest_first``). Damaged rows are left out and
        logged."""
        page = 0 if after_id is None else (-1 if newest_first else 1)
        shape, params = self._shape(flt, page, after_id)
        tail = "newest" if newest_first else "oldest"
        conn = self._cx.conn()
        with self._cx.errors:
            try:
                rows = conn.execute(sql_matching(shape, "tasks", tail), [*params, limit]).fetchall()
            except UnicodeDecodeError:  # a row whose text is not UTF-8: find it by id
                ids = [
                    r[0] for r in conn.execute(sql_matching(shape, "ids", tail), [*params, limit])
                ]
                rows = self._fetch_one_by_one(conn, ids)
        return self._decode_tolerant(rows)

    def count_matching(self, flt: TaskFilter) -> int:
        """How many tasks a filter matches (one snapshot)."""
        shape, params = self._shape(flt)
        with self._cx.errors:
            return int(self._cx.conn().execute(sql_matching(shape, "count", ""), params).get)

    def _matching_ids(self, flt: TaskFilter, after_id: int, limit: int) -> builtins.list[int]:
        shape, params = self._shape(flt, 1, after_id)
        rows = self._cx.conn().execute(sql_matching(shape, "ids", "oldest"), [*params, limit])
        return [r[0] for r in rows]

    def _newest_id(self) -> int:
        return int(self._cx.conn().execute(SQL_NEWEST_ID).get or 0)

    def _in_batches(
        self,
        flt: TaskFilter,
        act: Callable[[apsw.Connection, builtins.list[int]], builtins.list[Any]],
    ) -> builtins.list[Any]:
        """Apply ``act`` to the matching ids, :data:`BULK_BATCH` at a time, each batch in its
        own transaction (so workers are never locked out for long), up to the newest id that
        existed at the start (tasks enqueued meanwhile are left alone)."""
        out: builtins.list[Any] = []
        with self._cx.errors:
            bounded = flt if flt.max_id is not None else attrs.evolve(flt, max_id=self._newest_id())
            last = 0
            while True:
                ids = self._matching_ids(bounded, last, BULK_BATCH)
                if not ids:
                    return out
                with self._cx.write() as conn:
                    out += act(conn, ids)
                last = ids[-1]
                if len(ids) < BULK_BATCH:
                    return out

    def cancel_matching(
        self, flt: TaskFilter, now_us: int, message: str = "cancelled by request"
    ) -> BulkResult[Transition]:
        """Cancel the queued tasks a filter matches and flag its running ones for their
        workers, in batches (see :meth:`_in_batches`).

        :returns: ``("cancelled" | "cancel_requested", task)`` per task changed, and the
            ids of the damaged tasks changed (logged).
        """
        scoped = flt.restricted_to((TaskStatus.QUEUED, TaskStatus.RUNNING))
        if scoped is None:
            self._cx.check_open()
            return BulkResult()

        def act(conn: apsw.Connection, ids: builtins.list[int]) -> builtins.list[Any]:
            cancelled = [
                r[0] for r in conn.execute(sql_cancel_queued_ids(len(ids)), (message, now_us, *ids))
            ]
            flagged = [r[0] for r in conn.execute(sql_flag_running_ids(len(ids)), ids)]
            rows = self._changed_rows(conn, cancelled + flagged)
            return [("cancelled", i, rows.get(i)) for i in cancelled] + [
                ("cancel_requested", i, rows.get(i)) for i in flagged
            ]

        changed, damaged = self._bulk_answer(self._in_batches(scoped, act), "cancelled")
        return BulkResult(changed=tuple(changed), damaged=tuple(damaged))

    def requeue_matching(self, flt: TaskFilter, now_us: int) -> BulkResult[Task]:
        """Put the failed and cancelled tasks a filter matches back to ``queued`` at
        ``now_us`` with a fresh attempt count (their last error cleared), in batches.

        :returns: the tasks after the change, and the ids of the damaged tasks requeued
            (logged).
        """
        scoped = flt.restricted_to((TaskStatus.FAILED, TaskStatus.CANCELLED))
        if scoped is None:
            self._cx.check_open()
            return BulkResult()

        def act(conn: apsw.Connection, ids: builtins.list[int]) -> builtins.list[Any]:
            requeued = [r[0] for r in conn.execute(sql_requeue_ids(len(ids)), (now_us, *ids))]
            rows = self._changed_rows(conn, requeued)
            return [("requeued", i, rows.get(i)) for i in requeued]

        changed, damaged = self._bulk_answer(self._in_batches(scoped, act), "requeued")
        return BulkResult(changed=tuple(task for _, task in changed), damaged=tuple(damaged))

    def _changed_rows(self, conn: apsw.Connection, ids: builtins.list[int]) -> dict[int, Any]:
        """The rows of the tasks a bulk batch changed, read in its transaction; a row whose
        text is not UTF-8 is missing (:meth:`_bulk_answer` reports it)."""
        if not ids:
            return {}
        try:
            rows: builtins.list[Any] = conn.execute(sql_get_many(len(ids)), ids).fetchall()
        except UnicodeDecodeError:  # find the damaged row(s) one by one
            rows = []
            for task_id in ids:
                with contextlib.suppress(UnicodeDecodeError):
                    rows.append(conn.execute(SQL_GET, (task_id,)).get)
        return {row[0]: row for row in rows if row is not None}

    def _bulk_answer(
        self, changes: Iterable[tuple[str, int, Any]], done: str
    ) -> tuple[builtins.list[Transition], builtins.list[int]]:
        """``(kind, id, row or None)`` per task a bulk action changed, decoded after its
        batches committed: the transitions, and the ids of the tasks that cannot be decoded
        (each logged; nothing raises, since the change is stored)."""
        changed: builtins.list[Transition] = []
        damaged: builtins.list[int] = []
        for kind, task_id, row in changes:
            if row is not None:
                try:
                    changed.append((kind, self._task(row)))
                    continue
                except DamagedRow as exc:
                    reason = str(exc)
            else:
                reason = (
                    f"{self.path}: task {task_id} is damaged and cannot be read (text that "
                    "is not valid UTF-8). Fix: run 'hookqueue check', then delete the task, "
                    "or restore the database from a backup"
                )
            log.error("%s. It was %s like the others and is left out of the answer", reason, done)
            damaged.append(task_id)
        return changed, damaged

    def delete_matching(self, flt: TaskFilter) -> int:
        """Delete the tasks a filter matches, in batches — queued and finished ones only (a
        running task belongs to its worker: cancel it first). Their idempotency keys go
        with them.

        :returns: how many were deleted.
        :raises ValidationError: the filter asks for running tasks only.
        """
        scoped = flt.restricted_to(
            (TaskStatus.QUEUED, TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
        )
        if scoped is None:
            raise ValidationError(
                "statuses",
                [s.value for s in flt.statuses],
                "names only running tasks, which cannot be deleted",
                "cancel them first (their workers stop them), then delete",
            )

        def act(conn: apsw.Connection, ids: builtins.list[int]) -> builtins.list[Any]:
            conn.execute(sql_delete_ids(len(ids)), ids)
            return [conn.changes()]

        return sum(self._in_batches(scoped, act))

    def finished_buckets(
        self, since_us: int, bucket_us: int
    ) -> builtins.list[tuple[int, str, int]]:
        """Tasks that reached a final status since ``since_us``, per ``bucket_us``-long
        interval and status: ``(bucket start, status, count)``, oldest first."""
        if bucket_us <= 0:
            raise ValidationError("bucket_us", bucket_us, "must be positive", "e.g. 60_000_000")
        with self._cx.errors:
            rows: builtins.list[Any] = (
                self._cx.conn()
                .execute(SQL_FINISHED_BUCKETS, (since_us, bucket_us, since_us))
                .fetchall()
            )
        return [(since_us + int(b) * bucket_us, str(s), int(n)) for b, s, n in rows]

    def counts(self, *, by_type: bool = False) -> dict[str, Any]:
        """Tasks per status (every status present, zero when none); with ``by_type`` a
        ``{task_type: {status: n}}`` mapping instead."""
        conn = self._cx.conn()
        with self._cx.errors:
            if not by_type:
                out = {s.value: 0 for s in TaskStatus}
                for status, n in conn.execute(SQL_COUNTS):
                    out[status] = n
                return out
            nested: dict[str, dict[str, int]] = {}
            for task_type, status, n in conn.execute(SQL_COUNTS_BY_TYPE):
                nested.setdefault(task_type, {s.value: 0 for s in TaskStatus})[status] = n
            return nested

    def oldest_due_queued_us(self, now_us: int) -> int | None:
        """``run_after`` of the longest-waiting due queued task, or None."""
        with self._cx.errors:
            value: int | None = self._cx.conn().execute(SQL_OLDEST_QUEUED, (now_us,)).get
        return value

    def get_many(self, task_ids: Sequence[int]) -> builtins.list[Task]:
        """The tasks with these ids that exist, in the order of ``task_ids``, read in chunks
        of :data:`READ_CHUNK`; a damaged one is left out and logged."""
        self._cx.check_open()
        found: dict[int, Task] = {}
        ids = list(task_ids)
        for start in range(0, len(ids), READ_CHUNK):
            chunk = ids[start : start + READ_CHUNK]
            conn = self._cx.conn()
            with self._cx.errors:
                try:
                    rows = conn.execute(sql_get_many(len(chunk)), chunk).fetchall()
                except UnicodeDecodeError:  # a row whose text is not UTF-8: one by one
                    rows = self._fetch_one_by_one(conn, chunk)
            for task in self._decode_tolerant(rows):
                found[task.id] = task
        return [found[i] for i in ids if i in found]

    def queue_gauges(self, now_us: int) -> builtins.list[QueueGauge]:
        """Per queue name: due, delayed and running tasks and the oldest due ``run_after``
        (read in one transaction, so the figures are of one snapshot)."""
        with self._cx.read() as conn:  # one snapshot for both statements, no write lock
            running: dict[str, int] = dict(conn.execute(SQL_RUNNING_BY_QUEUE).fetchall())  # type: ignore[arg-type]
            queued: builtins.list[Any] = conn.execute(
                SQL_QUEUED_BY_QUEUE, (now_us, now_us, now_us)
            ).fetchall()
        gauges: dict[str, QueueGauge] = {}
        for name, due, delayed, oldest in queued:
            gauges[name] = QueueGauge(
                queue=name,
                due=int(due or 0),
                delayed=int(delayed or 0),
                running=running.pop(name, 0),
                oldest_due_us=oldest,
            )
        for name, n in running.items():
            gauges[name] = QueueGauge(queue=name, due=0, delayed=0, running=n, oldest_due_us=None)
        return [gauges[name] for name in sorted(gauges)]

    def finished_count_since(self, since_us: int) -> int:
        """How many tasks reached a final status at or after ``since_us``."""
        with self._cx.errors:
            return int(self._cx.conn().execute(SQL_FINISHED_SINCE, (since_us,)).get)

    def recent_finished(self, since_us: int, limit: int) -> builtins.list[FinishedSample]:
        """The most recently finished tasks since ``since_us``, newest first, at most ``limit``."""
        with self._cx.errors:
            rows: builtins.list[Any] = (
                self._cx.conn().execute(SQL_RECENT_FINISHED, (since_us, limit)).fetchall()
            )
        return [
            FinishedSample(
                status=status,
                task_type=task_type,
                attempts=attempts,
                max_attempts=max_attempts,
                started_us=started,
                finished_us=finished,
            )
            for status, task_type, attempts, max_attempts, started, finished in rows
        ]

    def waiting_retry_count(self) -> int:
        """Queued tasks that already had an attempt."""
        with self._cx.errors:
            return int(self._cx.conn().execute(SQL_WAITING_RETRY).get)

    def due_queue_names(self, now_us: int) -> builtins.list[str]:
        """Queue names with a due queued task or an expired lease, sorted."""
        with self._cx.errors:
            return [row[0] for row in self._cx.conn().execute(SQL_DUE_QUEUES, (now_us, now_us))]

    def data_version(self) -> int:
        """A number that changes whenever another connection commits (cheap: no table read).

        Per thread: it tells this thread's connection about other connections' commits.
        """
        with self._cx.errors:
            return int(self._cx.conn().pragma("data_version"))

    def watch_changes(
        self, poll_interval: float = 0.001, *, sleep_while_idle: bool = True
    ) -> ChangeWatcher:
        """A watcher of other connections' commits (see :class:`.watch.CommitWatcher`).

        :param poll_interval: how often ``PRAGMA data_version`` is read while the log is
            being written.
        :param sleep_while_idle: on Linux, sleep while nobody writes the database and wake
            when its write-ahead log is written (inotify), instead of polling all the time.
        """
        from .watch import CommitWatcher

        self._cx.check_open()
        return CommitWatcher(self, poll_interval, sleep_while_idle=sleep_while_idle)

    def _due_us(self, conn: apsw.Connection, now_us: int) -> int:
        """The instant that due times are compared with: ``now``, or the newest task's
        enqueue instant if that is later — after the wall clock steps back, tasks that were
        ready stay ready instead of waiting for the clock to catch up. (Leases keep using
        ``now``; delayed tasks still wait for their own instant.)"""
        latest: int | None = conn.execute(SQL_LATEST_CREATED).get
        return now_us if latest is None or latest <= now_us else latest

    def next_wakeup_delay_us(
        self, queues: Sequence[str], now_us: int, *, plan: LeasePlan | None = None
    ) -> int | None:
        """Microseconds until a delayed task becomes due, a lease expires or (with a plan
        carrying rate limits) a held rate bucket allows a start again; None when nothing is
        scheduled."""
        conn = self._cx.conn()
        with self._cx.errors:
            due_us = self._due_us(conn, now_us)
            due = conn.execute(sql_next_due(len(queues)), (*queues, due_us)).get
            expiry = conn.execute(SQL_NEXT_EXPIRY).get
            start = None
            rules = limiting.plan_rules(conn, plan, queues, None)
            if any(r.rate is not None for r in rules):
                start = limiting.Selection(conn, rules, now_us, load_turns=False).next_start_us(
                    due_us
                )
        delays = []
        if due is not None:
            delays.append(due - due_us)
        if expiry is not None:
            delays.append(max(0, expiry - now_us))
        if start is not None:
            delays.append(max(0, start - now_us))
        return min(delays) if delays else None

    def has_work(
        self,
        queues: Sequence[str],
        now_us: int,
        task_types: Sequence[str] | None = None,
        *,
        plan: LeasePlan | None = None,
    ) -> bool:
        """True if a task (of ``task_types``, None: any) is due in one of ``queues`` and the
        plan's limits allow it to start, or a lease has expired (a read; no lock)."""
        conn = self._cx.conn()
        types = () if task_types is None else tuple(task_types)
        sql = sql_any_due_in_queue(None if task_types is None else len(types))
        with self._cx.errors:
            due_us = self._due_us(conn, now_us)
            rules = limiting.plan_rules(conn, plan, queues, task_types)
            if rules and queues:
                assert plan is not None
                # Statement by statement, without a transaction (a read must not take the
                # write lock): a commit in between makes the answer stale, and that commit
                # notifies the watchers again, so the worker looks again.
                sel = limiting.Selection(conn, rules, now_us, load_turns=False)
                rows = sel.candidates(
                    plan,
                    queues,
                    due_us,
                    task_types,
                    self._order_params(plan, due_us),
                    16,
                    fair=False,
                )
                if sel.pick(rows, 1):
                    return True
            else:
                for q in queues:
                    if conn.execute(sql, (q, due_us, *types)).get is not None:
                        return True
            return conn.execute(SQL_ANY_EXPIRED, (now_us,)).get is not None

    # -- lease ---------------------------------------------------------------------------------

    def _order_params(self, plan: LeasePlan, now_us: int) -> tuple[Any, ...]:
        if SortKey.AGED_PRIORITY in plan.order:
            return (now_us, max(1, int(plan.aging_seconds * 1_000_000)))
        return ()

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
        """Settle finished attempts, sweep expired leases, and lease new tasks — one transaction.

        :param worker_id: the leasing worker; its id is written to ``locked_by``.
        :param queues: lease only from these queues.
        :param limit: lease at most this many (0: only settle and sweep).
        :param now_us: the current instant.
        :param lease_us: lease length; ``lease_expires_at = now + lease_us``.
        :param plan: the scheduler's plan (from ``hookqueue_lease``).
        :param decide_expired: called for each task whose lease expired; returns
            ``(requeue_at_us, message)`` to requeue it or ``(None, message)`` to end it.
        :param settlements: finished attempts to write first (see :meth:`settle`).
        :param want_transitions: False skips decoding the settled tasks (the caller has no
            event observer); expired leases are still reported.
        :param task_types: lease only tasks of these types (None: any type).
        :returns: ``(leased tasks in plan order, transitions)`` where each transition is
            ``(event kind, task after the change)``.
        """
        # Only SQL runs inside the transaction: the rows are fetched as tuples and decoded
        # into Tasks after COMMIT, so the write lock (which every other worker process waits
        # for) is held for the statements alone. The rare paths decode inside: expired leases
        # (decide_expired needs the task) and damaged rows.
        settled: builtins.list[tuple[str, Any, Task | None]] = []
        rows: builtins.list[Any] = []

        # A lease that carries no outcome is a claim, not an acknowledgement: if a power cut
        # loses it, the task runs again — exactly what the lease's expiry would bring about.
        # So at durability="full" it commits without waiting for the disk (the next synced
        # commit, by any connection, syncs it too); enqueues and outcomes still wait.
        #
        # The claim gives way to other writers (Connections.begin_yielding): while another
        # connection holds the write lock it backs off instead of racing a producer's enqueue
        # for it, and when it finds the lock taken it looks again (a read) whether anything
        # is left to claim — often another worker's claim just took it (issue #22).
        def still_wanted() -> bool:
            if settlements:
                return True
            if limit > 0:
                return self.has_work(queues, now_us, task_types)
            # A sweep (limit 0): wanted while a lease has expired.
            return self._cx.conn().execute(SQL_ANY_EXPIRED, (now_us,)).get is not None

        with self._cx.errors, self._cx.unsynced() if not settlements else _NO_CHANGE:
            begun = self._cx.begin_yielding(still_wanted)
            if begun is None:
                return [], []
            conn = begun
            try:
                if settlements:
                    settled = self._settle(conn, worker_id, settlements, now_us)
                expired = self._expire(conn, now_us, decide_expired)
                if limit > 0:
                    rows = self._lease_rows(
                        conn, worker_id, queues, limit, now_us, lease_us, plan, task_types
                    )
            except BaseException:
                self._cx.rollback(conn)
                raise
            self._cx.commit(conn)
        leased = self._decode_leased(rows, now_us)
        transitions = self._decode_settled(settled) if want_transitions else []
        return leased, transitions + expired

    def _expire(
        self, conn: apsw.Connection, now_us: int, decide_expired: ExpiryDecider
    ) -> builtins.list[tuple[str, Task]]:
        """Requeue or end the tasks whose lease expired (inside the lease transaction)."""
        transitions: builtins.list[tuple[str, Task]] = []
        expired_ids = _ids(conn.execute(SQL_EXPIRED_IDS, (now_us,)))
        for task in self._read_or_fail(conn, expired_ids, now_us):
            requeue_at, message = decide_expired(task)
            # A requested cancellation is honoured whatever the decider says; attempts are
            # never exceeded.
            if (
                requeue_at is not None
                and task.attempts < task.max_attempts
                and not task.cancel_requested
            ):
                got = conn.execute(SQL_EXPIRE_REQUEUE, (requeue_at, message, task.id, now_us)).get
                if got is not None:
                    transitions.append(("lease_expired", self._task(got)))
            else:
                got = conn.execute(SQL_EXPIRE_FAIL, (message, now_us, task.id, now_us)).get
                if got is not None:
                    done = self._task(got)
                    transitions.append((done.status.value, done))
            if got is not None:
                conn.execute(
                    SQL_RECORD_FAILURE,
                    (
                        task.id,
                        task.attempts,
                        now_us,
                        task.locked_by,
                        "lease_expired",
                        message,
                        None,
                    ),
                )
        return transitions

    def _decode_leased(self, rows: Sequence[Any], now_us: int) -> builtins.list[Task]:
        """Leased rows as Tasks (after COMMIT). A row that cannot be decoded (damaged) is
        ended ``failed`` with the reason in a transaction of its own, so one bad row cannot
        stop every lease: the queue goes on with the others."""
        tasks: builtins.list[Task] = []
        from_row = Task.from_row
        damaged: builtins.list[tuple[int, str]] = []
        for row in rows:
            try:
                tasks.append(from_row(row))
            except _UNDECODABLE as exc:
                damaged.append(
                    (
                        row[0],
                        f"the stored task is damaged and cannot be read ({self._task_error(row, exc)})",
                    )
                )
        if damaged:
            for task_id, message in damaged:
                log.error("%s: task %d: %s; it is ended failed", self.path, task_id, message)
            with self._cx.write() as conn:
                for task_id, message in damaged:
                    conn.execute(SQL_FAIL_DAMAGED, (message[:2000], now_us, task_id))
        return tasks

    def _decode_settled(
        self, settled: Sequence[tuple[str, Any, Task | None]]
    ) -> builtins.list[tuple[str, Task]]:
        """Settled rows as ``(kind, Task)`` (after COMMIT). The outcome is stored either way;
        a row that cannot be decoded loses only its event, and says so in the log."""
        out: builtins.list[tuple[str, Task]] = []
        from_row = Task.from_row
        for kind, row, held in settled:
            if type(row) is _HeldComplete and held is not None:
                out.append((kind, row.apply(held)))
                continue
            try:
                out.append((kind, from_row(row, held)))
            except _UNDECODABLE as exc:
                log.error(
                    "%s: task %s was settled (%s) but is damaged and cannot be read (%s); "
                    "no event is sent for it",
                    self.path,
                    row[0],
                    kind,
                    self._task_error(row, exc),
                )
        return out

    def _lease_rows(
        self,
        conn: apsw.Connection,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        now_us: int,
        lease_us: int,
        plan: LeasePlan,
        task_types: Sequence[str] | None,
    ) -> builtins.list[Any]:
        """Lease up to ``limit`` rows in the plan's order; returns them as fetched (tuples
        in ``TASK_COLUMNS`` order), for :meth:`_decode_leased` after COMMIT."""
        keys = tuple(plan.order)
        types = () if task_types is None else tuple(task_types)
        n_types = None if task_types is None else len(types)
        due_us = self._due_us(conn, now_us)
        order_params = self._order_params(plan, due_us)
        set_params = (worker_id, now_us + lease_us, now_us)
        rules = limiting.plan_rules(conn, plan, queues, task_types)
        if rules:
            return self._lease_limited(
                conn, rules, queues, limit, now_us, due_us, plan, task_types, set_params
            )
        if plan.rerank is None:
            sql = sql_lease(keys, len(queues), n_types)
            params = (*set_params, *queues, due_us, *types, *order_params, limit)
            rows = self._read_rows(conn, _ids(conn.execute(sql, params)), now_us)
            rows.sort(key=_row_order(plan, due_us))
            return rows
        # A bounded window, re-ranked in Python, leased in the same transaction.
        part_params: tuple[Any, ...] = (
            ("$." + json.dumps(plan.partition_key),) if plan.partition_key else ()
        )
        if plan.group_by is None:
            window_sql = sql_lease_window(keys, len(queues), n_types, bool(plan.partition_key))
            window_params: tuple[Any, ...] = (
                *part_params,
                *queues,
                due_us,
                *types,
                *order_params,
                plan.window,
                *order_params,
            )
        else:
            # Drawn per group, so no group is left out behind another group's backlog.
            window_sql = sql_lease_window_grouped(
                keys, len(queues), n_types, bool(plan.partition_key), plan.group_by
            )
            window_params = (
                *part_params,
                *queues,
                due_us,
                *types,
                *order_params,
                *order_params,
                plan.window,
                *order_params,
            )
        window = [
            Candidate(
                id=r[0],
                task_type=r[1],
                priority=r[2],
                queue=r[3],
                created_at_us=r[4],
                run_after_us=r[5],
                partition=None if r[6] is None else json.loads(r[6]),
            )
            for r in conn.execute(window_sql, window_params)
        ]
        if not window:
            return []
        offered = {c.id for c in window}
        # Each id once (a rerank that repeats one must not lease it twice), offered ones only.
        chosen = list(dict.fromkeys(i for i in plan.rerank(window, limit) if i in offered))
        chosen = chosen[:limit]
        if not chosen:
            return []
        chosen_ids = _ids(conn.execute(sql_lease_chosen(len(chosen)), (*set_params, *chosen)))
        by_id = {r[0]: r for r in self._read_rows(conn, chosen_ids, now_us)}
        return [by_id[i] for i in chosen if i in by_id]

    def _lease_limited(
        self,
        conn: apsw.Connection,
        rules: Sequence[LimitRule],
        queues: Sequence[str],
        limit: int,
        now_us: int,
        due_us: int,
        plan: LeasePlan,
        task_types: Sequence[str] | None,
        set_params: tuple[Any, ...],
    ) -> builtins.list[Any]:
        """A lease that keeps ``rules`` (see :mod:`.limiting`): the candidates no full bucket
        holds, walked in order (or in turns), counted against every rule they match."""
        sel = limiting.Selection(conn, rules, now_us)
        order_params = self._order_params(plan, due_us)
        if plan.rerank is None:
            # A little more than asked when a start may fill a bucket half-way through the
            # batch (its later tasks are then skipped); exactly the batch when none can.
            window = limit if sel.roomy(limit) else limitwalk.with_spare(limit)
            rows = sel.candidates(plan, queues, due_us, task_types, order_params, window)
            chosen = sel.pick(rows, limit)
        else:
            # The plan's window drawn as without limits (per group with group_by), its held
            # tasks left out before the re-ranking, and the choice walked again (one start
            # may fill a bucket for the next); with a fair rule, its buckets' first tasks
            # follow the choice, so the turns reach every bucket (LimitWalk.ranked).
            window_rows = sel.window(plan, queues, due_us, task_types, order_params)
            allowed = {row[0]: row for row in window_rows if sel.allowed_alone(row)}
            heads = []
            if sel.fair is not None:
                heads = sel.candidates(
                    plan, queues, due_us, task_types, order_params, limitwalk.with_spare(limit)
                )
            choice: Sequence[int] = ()
            if allowed:
                choice = plan.rerank(self._window(conn, plan, list(allowed), due_us), limit)
            chosen = sel.pick(sel.ranked(choice, allowed, heads), limit)
        if not chosen:
            return []
        chosen_ids = _ids(conn.execute(sql_lease_chosen(len(chosen)), (*set_params, *chosen)))
        sel.write()
        by_id = {r[0]: r for r in self._read_rows(conn, chosen_ids, now_us)}
        return [by_id[i] for i in chosen if i in by_id]

    def _window(
        self, conn: apsw.Connection, plan: LeasePlan, ids: Sequence[int], due_us: int
    ) -> builtins.list[Candidate]:
        """The re-ranking candidates of these ids, in the plan's order."""
        rows = self._read_rows(conn, ids, due_us)
        rows.sort(key=_row_order(plan, due_us))
        out = []
        for row in rows:
            partition = None
            if plan.partition_key:
                try:
                    payload = json.loads(row[TASK_COLUMNS.index("payload")])
                    if isinstance(payload, dict):
                        partition = payload.get(plan.partition_key)
                except ValueError:
                    partition = None
            out.append(
                Candidate(
                    id=row[_ID],
                    task_type=row[TASK_COLUMNS.index("task_type")],
                    priority=row[_PRIORITY],
                    queue=row[TASK_COLUMNS.index("queue")],
                    created_at_us=row[TASK_COLUMNS.index("created_at")],
                    run_after_us=row[_RUN_AFTER],
                    partition=partition,
                )
            )
        return out

    def _read_rows(
        self, conn: apsw.Connection, ids: Sequence[int], now_us: int
    ) -> builtins.list[Any]:
        """The rows with these ids, fetched (not decoded) in one statement. A row whose text
        is not valid UTF-8 cannot even be fetched: it is ended ``failed`` with the reason
        here, inside the transaction, and the others are fetched one by one."""
        if not ids:
            return []
        sql = sql_get_many(len(ids))
        try:
            return conn.execute(sql, ids).fetchall()
        except UnicodeDecodeError:
            pass  # find the damaged row(s) one by one
        rows: builtins.list[Any] = []
        for task_id in ids:
            try:
                row = conn.execute(SQL_GET, (task_id,)).get
            except UnicodeDecodeError as exc:
                message = f"the stored task is damaged and cannot be read ({exc})"
                log.error("%s: task %d: %s; it is ended failed", self.path, task_id, message)
                conn.execute(SQL_FAIL_DAMAGED, (message[:2000], now_us, task_id))
                continue
            if row is not None:
                rows.append(row)
        return rows

    def _read_or_fail(
        self, conn: apsw.Connection, ids: Sequence[int], now_us: int
    ) -> builtins.list[Task]:
        """The tasks with these ids, read in one statement. A row that cannot be decoded
        (damaged) is ended ``failed`` with the reason instead, so one bad row cannot stop
        every lease: the queue goes on with the others."""
        if not ids:
            return []
        sql = sql_get_many(len(ids))
        try:
            by_id = {t.id: t for t in (self._task(r) for r in conn.execute(sql, ids))}
            return [by_id[i] for i in ids if i in by_id]
        except (DamagedRow, UnicodeDecodeError):
            pass  # find the damaged row(s) one by one
        tasks: builtins.list[Task] = []
        for task_id in ids:
            try:
                row = conn.execute(SQL_GET, (task_id,)).get
                if row is not None:
                    tasks.append(self._task(row))
            except (DamagedRow, UnicodeDecodeError) as exc:
                message = f"the stored task is damaged and cannot be read ({exc})"
                log.error("%s: task %d: %s; it is ended failed", self.path, task_id, message)
                conn.execute(SQL_FAIL_DAMAGED, (message[:2000], now_us, task_id))
        return tasks

    # -- settle --------------------------------------------------------------------------------

    def settle(
        self, worker_id: str, settlements: Sequence[Settlement], now_us: int
    ) -> builtins.list[tuple[str, Task]]:
        """Write the outcome of finished attempts in one transaction.

        An outcome is written only while ``worker_id`` still holds the task's lease; an
        outcome for a lease that was lost (it expired and another worker took the task) is
        dropped and logged, so a slow worker can never overwrite a newer attempt.

        :returns: ``(event kind, task after the change)`` for each outcome written.
        """
        with self._cx.errors:
            conn = self._cx.begin()
            try:
                settled = self._settle(conn, worker_id, settlements, now_us)
            except BaseException:
                self._cx.rollback(conn)
                raise
            self._cx.commit(conn)
        return self._decode_settled(settled)

    def _settle(
        self,
        conn: apsw.Connection,
        worker_id: str,
        settlements: Sequence[Settlement],
        now_us: int,
    ) -> builtins.list[tuple[str, Any, Task | None]]:
        """Write the outcomes; returns ``(event kind, row after the change, the worker's
        task)`` per outcome written, rows not yet decoded (see :meth:`_decode_settled`)."""
        out: builtins.list[tuple[str, Any, Task | None]] = []
        # Completions of tasks the worker holds (the common outcome) go in one statement.
        held_params: builtins.list[Any] = [now_us]
        for s in settlements:
            if _completes_held(s):
                held_params += (s.task_id, s.result_json)
        completed: dict[int, int] = {}
        if len(held_params) > 1:
            held_params.append(worker_id)
            completed = dict(
                conn.execute(sql_complete_held((len(held_params) - 2) // 2), held_params)
            )
        for s in settlements:
            if s.kind == "complete":
                if _completes_held(s):
                    flag = completed.pop(s.task_id, None)
                    row = None if flag is None else _HeldComplete(s.result_json, now_us, flag)
                else:
                    row = conn.execute(
                        SQL_COMPLETE, (s.result_json, now_us, s.task_id, worker_id)
                    ).get
                kind = "completed"
            elif s.kind == "fail":
                row = conn.execute(SQL_FAIL, (s.error, now_us, s.task_id, worker_id)).get
                kind = "failed"
            elif s.kind == "retry":
                row = conn.execute(
                    SQL_RETRY_LATER, (s.error, s.run_after_us, s.task_id, worker_id)
                ).get
                kind = "retry_scheduled"
                if row is None:  # cancel was requested meanwhile: cancelling wins over a retry
                    row = conn.execute(
                        SQL_CANCEL_IF_REQUESTED, (s.error, now_us, s.task_id, worker_id)
                    ).get
                    kind = "cancelled"
                if row is None:  # no attempts left: the store keeps attempts <= max_attempts
                    error = f"{s.error} (gave up: no attempts left)"
                    row = conn.execute(SQL_FAIL, (error, now_us, s.task_id, worker_id)).get
                    kind = "failed"
            elif s.kind == "cancelled":
                row = conn.execute(
                    SQL_CANCELLED_BY_WORKER,
                    (s.error or "cancelled by request", now_us, s.task_id, worker_id),
                ).get
                kind = "cancelled"
            else:
                row = conn.execute(SQL_RELEASE, (s.task_id, worker_id)).get
                kind = "released"
            if row is None:
                log.warning(
                    "worker %s no longer holds the lease of task %d; its %s outcome is dropped "
                    "(the lease expired and the task was taken over or ended)",
                    worker_id,
                    s.task_id,
                    s.kind,
                )
                continue
            out.append((kind, row, s.task))
            if kind in _FAILURE_KINDS:
                failed: Any = row  # a fetched row (a held completion is never a failure)
                conn.execute(
                    SQL_RECORD_FAILURE,
                    (
                        s.task_id,
                        failed[_ATTEMPTS],
                        now_us,
                        worker_id,
                        kind,
                        (failed[_ERROR] or s.error or kind)[:10_000],
                        s.traceback,
                    ),
                )
        if out:
            finished = sum(1 for kind, _, _ in out if kind != "released")
            conn.execute(SQL_WORKER_BEAT, (now_us, finished, worker_id))
        return out

    def renew(
        self, worker_id: str, task_ids: Sequence[int], now_us: int, lease_us: int
    ) -> tuple[set[int], set[int]]:
        """Extend the leases ``worker_id`` holds and record its heartbeat.

        :returns: ``(ids still held, ids whose cancellation was requested)``; a running id
            missing from the first set was lost (its lease expired and was taken over).
        """
        held: set[int] = set()
        cancel: set[int] = set()
        with self._cx.write() as conn:
            for tid in task_ids:
                row = conn.execute(SQL_RENEW, (now_us + lease_us, tid, worker_id)).get
                if row is not None:
                    held.add(row[0])
                    if row[1]:
                        cancel.add(row[0])
            conn.execute(SQL_WORKER_BEAT, (now_us, 0, worker_id))
        return held, cancel

    # -- user actions --------------------------------------------------------------------------

    def cancel(self, task_id: int, now_us: int) -> tuple[str, Task]:
        """Cancel a queued task at once, or mark a running one for cancellation.

        :returns: ``("cancelled" | "cancel_requested", task)``.
        :raises TaskNotFound: unknown id.
        :raises InvalidTransition: the task already finished.
        """
        with self._cx.errors:
            conn = self._cx.begin()
            try:
                row = conn.execute(SQL_CANCEL_QUEUED, ("cancelled by request", now_us, task_id)).get
                if row is not None:
                    kind, task = "cancelled", self._task(row)
                else:
                    row = conn.execute(SQL_CANCEL_RUNNING, (task_id,)).get
                    if row is not None:
                        kind, task = "cancel_requested", self._task(row)
                    else:
                        current = conn.execute(SQL_GET, (task_id,)).get
            except BaseException:
                self._cx.rollback(conn)
                raise
            self._cx.commit(conn)
        if row is not None:
            return kind, task
        if current is None:
            raise TaskNotFound(task_id)
        task = self._task(current)
        raise InvalidTransition(task.id, task.status.value, "cancel", "a queued or running task")

    def requeue(self, task_id: int, now_us: int) -> Task:
        """Put a failed or cancelled task back to ``queued`` with a fresh attempt budget."""
        with self._cx.write() as conn:
            row = conn.execute(SQL_REQUEUE, (now_us, task_id)).get
            if row is not None:
                return self._task(row)
            current = conn.execute(SQL_GET, (task_id,)).get
        if current is None:
            raise TaskNotFound(task_id)
        task = self._task(current)
        raise InvalidTransition(task.id, task.status.value, "retry", "a failed or cancelled task")

    def prune(self, *, older_than_us: int, statuses: Iterable[TaskStatus]) -> int:
        """Delete tasks in ``statuses`` (terminal only) that finished before ``older_than_us``.

        Deletes in batches of 5,000, each its own transaction, so workers are never locked
        out for long. Stale worker records (no heartbeat since the cut-off) go too.

        :returns: how many tasks were deleted.
        """
        chosen = [TaskStatus(s) for s in statuses]
        for s in chosen:
            if not s.is_terminal:
                raise ValidationError(
                    "statuses",
                    s.value,
                    "only finished tasks can be pruned",
                    "use completed, failed and/or cancelled",
                )
        total = 0
        for status in chosen:
            while True:
                with self._cx.write() as conn:
                    conn.execute(SQL_PRUNE_BATCH, (older_than_us, status.value))
                    n = conn.changes()
                total += n
                if n < 5000:
                    break
        with self._cx.write() as conn:
            conn.execute(SQL_PRUNE_WORKERS, (older_than_us,))
            conn.execute(SQL_PRUNE_TICKS, (older_than_us,))
            # Rate state that ran out before the cut-off allows a full burst: as if none.
            conn.execute(SQL_RATE_PRUNE, (older_than_us,))
        return total

    def vacuum(self) -> None:
        """Give the space of deleted rows back to the file system (takes an exclusive lock)."""
        with self._cx.errors:
            self._cx.conn().execute(SQL_VACUUM)

    # -- history and paused queues ------------------------------------------------------------

    def task_failures(self, task_id: int) -> builtins.list[AttemptFailure]:
        """The failed attempts of a task, oldest first (empty for none, or an unknown id)."""
        with self._cx.errors:
            rows: builtins.list[Any] = (
                self._cx.conn().execute(SQL_TASK_FAILURES, (task_id,)).fetchall()
            )
        return [
            AttemptFailure(
                task_id=r[0],
                attempt=r[1],
                at=from_us(r[2]),
                worker_id=r[3],
                outcome=r[4],
                error=r[5],
                traceback=r[6],
            )
            for r in rows
        ]

    def pause_queue(self, queue: str, now_us: int) -> bool:
        """Stop every worker leasing from ``queue`` (running tasks finish). Persisted.

        :returns: False if it was paused already.
        """
        with self._cx.write() as conn:
            conn.execute(SQL_PAUSE_QUEUE, (queue, now_us))
            return conn.changes() > 0

    def resume_queue(self, queue: str) -> bool:
        """Let workers lease from ``queue`` again. :returns: False if it was not paused."""
        with self._cx.write() as conn:
            conn.execute(SQL_RESUME_QUEUE, (queue,))
            return conn.changes() > 0

    def queued_queue_names(self) -> builtins.list[str]:
        """The names of the queues that have queued tasks (due or not), sorted."""
        with self._cx.errors:
            return [r[0] for r in self._cx.conn().execute(SQL_QUEUED_QUEUE_NAMES)]

    def paused_queues(self) -> dict[str, datetime]:
        """The paused queue names and when each was paused."""
        with self._cx.errors:
            rows: builtins.list[Any] = self._cx.conn().execute(SQL_PAUSED_QUEUES).fetchall()
        return {name: from_us(at) for name, at in rows}

    # -- periodic schedules --------------------------------------------------------------------

    def upsert_schedules(
        self,
        schedules: Sequence[ScheduleDefinition],
        now_us: int,
        *,
        replace: bool = True,
    ) -> builtins.list[str]:
        """Create or update schedules by name in one transaction (see
        :meth:`~hookqueue.core.storage.TaskStore.upsert_schedules`).

        :returns: per schedule, ``"created"``, ``"updated"``, ``"unchanged"`` or ``"exists"``.
        """
        out: builtins.list[str] = []
        with self._cx.write() as conn:
            for d in schedules:
                row = conn.execute(SQL_SCHEDULE_GET, (d.name,)).get
                declared = now_us if d.source == "code" else None
                if row is None:
                    conn.execute(
                        SQL_SCHEDULE_INSERT,
                        (
                            d.name,
                            d.definition_json,
                            d.timing,
                            int(d.overlap),
                            d.source,
                            int(d.paused),
                            d.next_tick_us,
                            now_us,
                            now_us,
                            declared,
                        ),
                    )
                    out.append("created")
                    continue
                if not replace:
                    out.append("exists")
                    continue
                current = _schedule(row)
                if (
                    current.definition_json,
                    current.timing,
                    current.overlap,
                    current.source,
                ) != (d.definition_json, d.timing, bool(d.overlap), d.source):
                    next_tick = (
                        current.next_tick_us if current.timing == d.timing else d.next_tick_us
                    )
                    conn.execute(
                        SQL_SCHEDULE_REDEFINE,
                        (
                            d.definition_json,
                            d.timing,
                            int(d.overlap),
                            d.source,
                            next_tick,
                            now_us,
                            d.name,
                        ),
                    )
                    out.append("updated")
                else:
                    out.append("unchanged")
                if declared is not None:
                    conn.execute(SQL_SCHEDULE_DECLARED, (declared, d.name))
        return out

    def list_schedules(
        self,
        *,
        names: Sequence[str] | None = None,
        due_by_us: int | None = None,
    ) -> builtins.list[ScheduleRow]:
        """Schedules by name, or the due ones (not paused, next tick at or before
        ``due_by_us``) oldest next tick first; one snapshot."""
        conn = self._cx.conn()
        with self._cx.errors:  # one statement: one snapshot
            if due_by_us is not None:
                rows = conn.execute(SQL_SCHEDULES_DUE, (due_by_us,)).fetchall()
            else:
                rows = conn.execute(SQL_SCHEDULES_ALL).fetchall()
        found = [_schedule(r) for r in rows]
        if names is not None:
            wanted = set(names)
            found = [r for r in found if r.name in wanted]
        return found

    def next_schedule_tick_us(self) -> int | None:
        """The earliest next tick of the unpaused schedules, or None."""
        with self._cx.errors:
            value: int | None = self._cx.conn().execute(SQL_SCHEDULE_NEXT).get
        return value

    def set_schedule_paused(
        self, name: str, paused: bool, now_us: int, *, next_tick_us: int | None = None
    ) -> ScheduleRow | None:
        """Pause or resume a schedule (resuming from ``next_tick_us``); the schedule after
        the change, or None when there is none of that name."""
        with self._cx.write() as conn:
            if paused:
                row = conn.execute(SQL_SCHEDULE_PAUSE, (now_us, name)).get
            else:
                row = conn.execute(SQL_SCHEDULE_RESUME, (next_tick_us, now_us, name)).get
            if row is None:
                row = conn.execute(SQL_SCHEDULE_GET, (name,)).get
        return None if row is None else _schedule(row)

    def delete_schedule(self, name: str) -> bool:
        """Delete a schedule and its tick marks; False when there was none."""
        with self._cx.write() as conn:
            conn.execute(SQL_SCHEDULE_DELETE, (name,))
            deleted = conn.changes() > 0
            conn.execute(SQL_SCHEDULE_TICKS_DELETE, (name,))
        return deleted

    def fire_ticks(self, fires: Sequence[TickFire], now_us: int) -> builtins.list[FireOutcome]:
        """Fire due ticks, each tick's task and mark in one transaction for the whole call
        (see :meth:`~hookqueue.core.storage.TaskStore.fire_ticks`)."""
        if len({f.schedule for f in fires}) != len(fires):
            raise ValueError("fire_ticks takes at most one step per schedule per call")
        for f in fires:
            for _, row in f.ticks:
                if row.idempotency_key is not None:
                    raise ValueError(
                        f"schedule {f.schedule!r}: a tick's task row has an idempotency key; "
                        "a tick's mark is what makes it unique"
                    )
        conn = self._cx.conn()
        # A read first, without the write lock: when several processes fire the same ticks
        # at once, those that read after the first one committed write nothing. (A hint
        # only: the claim inside the write transaction decides.)
        with self._cx.errors:
            live = [
                f
                for f in fires
                if conn.execute(SQL_SCHEDULE_STATE, (f.schedule,)).get
                == (f.expect_next_tick_us, f.expect_revision, 0)
            ]
        outcomes = {f.schedule: FireOutcome(schedule=f.schedule, applied=False) for f in fires}
        if live:
            with self._cx.write() as conn:
                for f in live:
                    outcomes[f.schedule] = self._fire_one(conn, f, now_us)
        return [outcomes[f.schedule] for f in fires]

    @staticmethod
    def _fire_one(conn: apsw.Connection, f: TickFire, now_us: int) -> FireOutcome:
        """One schedule's step inside the ``fire_ticks`` transaction."""
        claimed = conn.execute(
            SQL_SCHEDULE_CLAIM,
            (f.next_tick_us, f.schedule, f.expect_next_tick_us, f.expect_revision),
        ).get
        if claimed is None:
            return FireOutcome(schedule=f.schedule, applied=False)
        overlap, last_task = claimed
        fired: builtins.list[tuple[int, int]] = []
        overlapped: builtins.list[int] = []
        already: builtins.list[int] = []
        for tick, row in f.ticks:
            if conn.execute(SQL_TICK_EXISTS, (f.schedule, tick)).get is not None:
                already.append(tick)
                continue
            if (
                not overlap
                and last_task is not None
                and conn.execute(SQL_TASK_ACTIVE, (last_task,)).get is not None
            ):
                overlapped.append(tick)
                continue
            conn.execute(SQL_INSERT_ID, row.params(now_us))
            task_id = conn.last_insert_rowid()
            # The primary key (schedule, tick) refuses a second mark: the transaction, and
            # with it the task, is then rolled back.
            conn.execute(SQL_TICK_INSERT, (f.schedule, tick, task_id, now_us))
            fired.append((tick, task_id))
            last_task = task_id
        newest = fired[-1] if fired else (None, None)
        conn.execute(
            SQL_SCHEDULE_FIRED,
            (newest[0], newest[1], len(fired), f.skipped + len(overlapped), f.schedule),
        )
        return FireOutcome(
            schedule=f.schedule,
            applied=True,
            fired=tuple(fired),
            overlapped=tuple(overlapped),
            already=tuple(already),
        )

    # -- limits ----------------------------------------------------------------------------------

    def set_limit(self, rule: LimitRule, now_us: int) -> str:
        """Store a limit rule by name (created, or replaced as a whole), in one transaction.

        :returns: ``"created"``, ``"updated"`` or ``"unchanged"``.
        """
        if not isinstance(rule, LimitRule):
            raise ValidationError(
                "rule",
                rule,
                "is not a LimitRule",
                "build one: LimitRule(name=..., concurrency=...)",
            )
        values = limiting.rule_values(rule)
        with self._cx.write() as conn:
            row = conn.execute(SQL_LIMIT_GET, (rule.name,)).get
            if row is None:
                conn.execute(SQL_LIMIT_INSERT, (rule.name, *values, now_us, now_us))
                return "created"
            before = limitwalk.rule_from_row(row)
            if before == rule:
                return "unchanged"
            conn.execute(SQL_LIMIT_UPDATE, (*values, now_us, rule.name))
            if (before.rate, before.interval_us) != (rule.rate, rule.interval_us):
                owed = limitwalk.rate_state_after_change(
                    before, rule, conn.execute(SQL_RATE_AHEAD, (rule.name, now_us)), now_us
                )
                conn.execute(SQL_LIMIT_RATES_DELETE, (rule.name,))
                conn.executemany(SQL_RATE_PUT, [(rule.name, b, tat) for b, tat in owed])
            return "updated"

    def delete_limit(self, name: str) -> bool:
        """Delete a stored rule with its rate state and turns, in one transaction.

        :returns: False when no rule had that name.
        """
        with self._cx.write() as conn:
            conn.execute(SQL_LIMIT_DELETE, (name,))
            found = conn.changes() > 0
            conn.execute(SQL_LIMIT_RATES_DELETE, (name,))
            conn.execute(SQL_LIMIT_TURNS_DELETE, (name,))
        return found

    def list_limits(self) -> builtins.list[LimitRule]:
        """The stored rules, by name."""
        with self._cx.errors:
            return limiting.stored_rules(self._cx.conn())

    def limit_usage(
        self, now_us: int, rules: Sequence[LimitRule] | None = None
    ) -> builtins.list[LimitUsage]:
        """Per rule (the stored ones, or ``rules``) and bucket with running or due tasks:
        counts and what is held back now (a read of one snapshot; no lock)."""
        with self._cx.read() as conn:
            chosen = limiting.stored_rules(conn) if rules is None else list(rules)
            chosen.sort(key=lambda r: r.name)
            due_us = self._due_us(conn, now_us)
            sel = limiting.Selection(conn, chosen, now_us, load_turns=False)
            return sel.usage(due_us)

    # -- raw rows (hookqueue copy) ---------------------------------------------------------------

    def export_rows(self, *, after_id: int = 0, limit: int = 1000) -> builtins.list[RawRow]:
        """Tasks exactly as stored, ids above ``after_id``, by id, at most ``limit`` (values
        in ``TASK_COLUMNS`` order; ``cancel_requested`` as a bool)."""
        with self._cx.errors:
            rows = self._cx.conn().execute(SQL_EXPORT, (after_id, limit)).fetchall()
        flag = _CANCEL_REQUESTED
        return [(*r[:flag], bool(r[flag]), *r[flag + 1 :]) for r in rows]

    def import_rows(self, rows: Iterable[RawRow]) -> int:
        """Insert tasks exactly as given, ids included, in one transaction (all or none);
        an id or idempotency key already present refuses the whole import."""
        width = len(TASK_COLUMNS)
        count = 0
        with self._cx.write() as conn:
            for row in rows:
                if len(row) != width:
                    raise ValidationError(
                        "rows", row, f"must have {width} values (TASK_COLUMNS)", "use export_rows()"
                    )
                conn.execute(SQL_IMPORT, tuple(row))
                count += 1
        return count

    # -- workers -------------------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        """Record a starting worker (replacing an earlier record with the same id)."""
        with self._cx.write() as conn:
            conn.execute(
                SQL_WORKER_UPSERT,
                (
                    info.worker_id,
                    info.hostname,
                    info.pid,
                    json.dumps(list(info.queues)),
                    info.concurrency,
                    _us(info.started_at),
                    _us(info.heartbeat_at),
                ),
            )

    def worker_stopped(self, worker_id: str, now_us: int) -> None:
        """Record that a worker shut down cleanly."""
        with self._cx.write() as conn:
            conn.execute(SQL_WORKER_STOP, (now_us, now_us, worker_id))

    def workers(self) -> builtins.list[WorkerInfo]:
        """Every recorded worker, oldest first; a record that cannot be decoded is left out
        and logged (:func:`~hookqueue.core.storage.decode_workers`)."""
        with self._cx.read() as conn:
            try:
                rows: builtins.list[Any] = conn.execute(SQL_WORKERS).fetchall()
            except UnicodeDecodeError:  # a record whose text is not UTF-8: one by one
                rows = []
                for (rowid,) in conn.execute(SQL_WORKER_ROWIDS).fetchall():
                    try:
                        rows.append(conn.execute(SQL_WORKER_BY_ROWID, (rowid,)).get)
                    except UnicodeDecodeError as exc:
                        log.error(
                            "%s: a worker record (rowid %d) is damaged and cannot be read "
                            "(%s); it is left out. Fix: delete it from the workers table",
                            self.path,
                            rowid,
                            exc,
                        )
        return decode_workers(rows, self.location)


def _schedule(row: Any) -> ScheduleRow:
    """A schedules row (``SCHEDULE_COLS`` order) as a record."""
    return ScheduleRow(
        name=row[0],
        definition_json=row[1],
        timing=row[2],
        overlap=bool(row[3]),
        source=row[4],
        paused=bool(row[5]),
        revision=row[6],
        next_tick_us=row[7],
        last_tick_us=row[8],
        last_task_id=row[9],
        fired=row[10],
        skipped=row[11],
        created_us=row[12],
        updated_us=row[13],
        declared_us=row[14],
    )


def _ids(cursor: Iterable[Any]) -> builtins.list[int]:
    """The first column of every row, as ints (all of a statement's rows are fetched)."""
    return [int(row[0]) for row in cursor]


def _us(value: Any) -> int:
    return to_us(value, "timestamp")


def _row_order(plan: LeasePlan, now_us: int) -> Callable[[Any], tuple[Any, ...]]:
    """The plan's order as a Python sort key over fetched rows (``RETURNING`` does not keep
    the ORDER BY); it reads the integer columns, so rows are sorted before being decoded."""
    aging = max(1, int(plan.aging_seconds * 1_000_000))
    order = tuple(plan.order)
    if order == (SortKey.FIFO,):
        return _fifo_key
    if order == (SortKey.PRIORITY,):
        return _priority_key  # the priority plugin's plan: no loop over the keys per row

    def key(row: Any) -> tuple[Any, ...]:
        task_id, priority, run_after = row[_ID], row[_PRIORITY], row[_RUN_AFTER]
        parts: builtins.list[Any] = []
        for k in order:
            if k is SortKey.PRIORITY:
                parts.append(priority)
            elif k is SortKey.AGED_PRIORITY:
                parts.append(priority - (now_us - run_after) / aging)
            elif k is SortKey.DUE:
                parts.append(run_after)
            elif k is SortKey.LIFO:
                parts += [-run_after, -task_id]
            else:
                parts += [run_after, task_id]
        parts += [run_after, task_id]
        return tuple(parts)

    return key


def _priority_key(row: Any) -> tuple[Any, ...]:
    return (row[_PRIORITY], row[_RUN_AFTER], row[_ID])


_ID = TASK_COLUMNS.index("id")
_ATTEMPTS = TASK_COLUMNS.index("attempts")
_ERROR = TASK_COLUMNS.index("error_message")
#: The outcomes of an attempt that enter the history of failed attempts.
_FAILURE_KINDS = frozenset({"failed", "retry_scheduled", "cancelled"})
_PRIORITY = TASK_COLUMNS.index("priority")
_RUN_AFTER = TASK_COLUMNS.index("run_after")
_CANCEL_REQUESTED = TASK_COLUMNS.index("cancel_requested")


def _fifo_key(row: Any) -> tuple[int, int]:
    return (row[_RUN_AFTER], row[_ID])
