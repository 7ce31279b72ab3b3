"""``PostgresStore``: the :class:`~hookqueue.core.storage.TaskStore` operations on PostgreSQL,
each running named statements (:mod:`.statements`) through the connection layer
(:mod:`.connection`) in one transaction or one statement.

Leasing is the SQLite store's single transaction: settlements, the sweep of expired leases
(rows locked with ``FOR UPDATE SKIP LOCKED``, decided by ``decide_expired`` in Python,
applied by one guarded statement) and the lease itself (``FOR UPDATE SKIP LOCKED`` again,
so concurrent workers pass over each other's rows instead of waiting) commit together or not
at all. Rows are fetched as tuples inside the transaction and decoded into :class:`Task`
records after COMMIT.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import attrs
import psycopg

from hookqueue.core import limitwalk
from hookqueue.core.clock import from_us, to_us
from hookqueue.core.errors import (
    DamagedRow,
    DatabaseBusy,
    InvalidTransition,
    NotAHookqueueDatabase,
    SchemaTooNew,
    StoreError,
    TaskNotFound,
    ValidationError,
)
from hookqueue.core.models import (
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
from hookqueue.core.storage import (
    BulkResult,
    ChangeWatcher,
    Durability,
    ExpiryDecider,
    FinishedSample,
    FireOutcome,
    InsertRow,
    LimitUsage,
    QueueGauge,
    ScheduleDefinition,
    ScheduleRow,
    Settlement,
    TickFire,
    Transition,
    decode_workers,
)

from . import limiting
from . import statements as q
from .connection import Connections, describe, parse_location
from .schema import APPLICATION, MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger("hookqueue.store.postgres")

#: What decoding a damaged row raises (see the SQLite store).
_UNDECODABLE = (ValueError, TypeError, OverflowError, KeyError, IndexError, RecursionError)
#: The event kind of each settled outcome, by settlement kind and the status it left.
_EVENT = {
    ("complete", "completed"): "completed",
    ("fail", "failed"): "failed",
    ("cancelled", "cancelled"): "cancelled",
    ("release", "queued"): "released",
    ("retry", "queued"): "retry_scheduled",
    ("retry", "cancelled"): "cancelled",
    ("retry", "failed"): "failed",
}
_ID = TASK_COLUMNS.index("id")
_PRIORITY = TASK_COLUMNS.index("priority")
_RUN_AFTER = TASK_COLUMNS.index("run_after")
_N = len(TASK_COLUMNS)
#: Rows per statement when copying rows in (``import_rows``).
IMPORT_CHUNK = 2000
#: Tasks changed per transaction by a bulk action (cancel, retry, delete by filter).
BULK_BATCH = 500


def _clean(text: str | None) -> str | None:
    """Text PostgreSQL can store: NUL characters (which ``text`` refuses, and an exception's
    message may hold) written as ``\\x00``."""
    if text is not None and "\x00" in text:
        return text.replace("\x00", "\\x00")
    return text


def _channel(schema: str) -> str:
    """The schema's notification channel: ``<schema>_work``, or a digest of the schema's
    name where that would pass PostgreSQL's 63-byte limit on names."""
    name = f"{schema}_work"
    if len(name.encode()) <= 63:
        return name
    return "hookqueue_" + hashlib.sha256(schema.encode()).hexdigest()[:24] + "_work"


def _done_channel(schema: str) -> str:
    """The schema's channel for the ends of waited tasks: ``<schema>_done``, or a digest of
    the schema's name where a waiter's own channel (this, ``_`` and a backend pid of up to
    ten digits) would pass PostgreSQL's 63-byte limit on names. Tasks ended by hand are
    told on it; a settlement tells each waiting session on ``<this>_<its pid>``."""
    name = f"{schema}_done"
    if len(name.encode()) + 11 <= 63:
        return name
    return "hookqueue_" + hashlib.sha256(schema.encode()).hexdigest()[:24] + "_done"


class PostgresStore:
    """The PostgreSQL store: schema, migrations and every statement hookqueue runs there.

    :param dsn: a ``postgresql://`` (or ``postgres://``) URL or a libpq conninfo string. A
        ``schema`` query parameter of the URL names the schema (libpq never sees it).
    :param durability: ``"full"`` (default): an acknowledged enqueue or outcome is flushed to
        the server's WAL before the call returns (``synchronous_commit = on``); a lease that
        carries no outcome is not waited for (losing it in a server crash only runs the task
        again, as its expiry would). ``"normal"``: ``synchronous_commit = off`` — a server
        crash may lose the last few hundred milliseconds of commits, an application crash
        never loses any.
    :param schema: the PostgreSQL schema the tables live in (default ``hookqueue``, or the
        URL's ``schema`` parameter); one database can hold several.
    :param busy_timeout: seconds to wait for another transaction's locks (``lock_timeout``)
        or for a free pooled connection before raising
        :class:`~hookqueue.core.errors.DatabaseBusy`.
    :param pool_min: connections the pool keeps open (per process).
    :param pool_max: connections the pool opens at most (per process); the server's
        ``max_connections`` must leave room for every process's pool plus one listening
        connection per worker.
    :param connect_timeout: seconds to wait for the server when connecting.
    :param create: create the schema when it does not exist (default); False refuses a
        database without one (tools that only read must not create a queue by a typo).

    The schema is created or migrated on first use; :meth:`initialize_schema` does it
    explicitly and is idempotent. A schema that is not hookqueue's, or was written by a newer
    hookqueue, is refused and left untouched. Safe to share between threads; a process
    forked after the store was used opens its own connections.
    """

    #: The schema version this hookqueue writes.
    SCHEMA_VERSION = SCHEMA_VERSION

    def __init__(
        self,
        dsn: str,
        *,
        durability: Durability = "full",
        schema: str | None = None,
        busy_timeout: float = 10.0,
        pool_min: int = 1,
        pool_max: int = 8,
        connect_timeout: float = 10.0,
        create: bool = True,
    ) -> None:
        conninfo, own = parse_location(dsn)
        chosen = schema if schema is not None else own.get("schema", "hookqueue")
        if "schema" in own and schema is not None and own["schema"] != schema:
            raise ValidationError(
                "schema",
                schema,
                f"conflicts with the URL's schema={own['schema']!r}",
                "pass only one of them",
            )
        if (
            not isinstance(chosen, str)
            or not chosen
            or len(chosen.encode()) > 63
            or "\x00" in chosen
        ):
            raise ValidationError(
                "schema",
                chosen,
                "must be a PostgreSQL name of 1 to 63 bytes",
                "e.g. 'hookqueue' or 'myapp_queue'",
            )
        if durability not in ("full", "normal"):
            raise ValidationError(
                "durability", durability, "is not a durability level", "use 'full' or 'normal'"
            )
        if not isinstance(busy_timeout, int | float) or busy_timeout <= 0:
            raise ValidationError(
                "busy_timeout", busy_timeout, "must be a number of seconds > 0", "e.g. 10.0"
            )
        for name, value, low in (("pool_min", pool_min, 0), ("pool_max", pool_max, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValidationError(name, value, f"must be an integer >= {low}", "e.g. 8")
        if pool_min > pool_max:
            raise ValidationError(
                "pool_min", pool_min, f"is above pool_max={pool_max}", "lower pool_min"
            )
        #: The PostgreSQL schema the tables live in.
        self.schema: str = chosen
        self.durability: Durability = durability
        self.busy_timeout = float(busy_timeout)
        self.create = bool(create)
        self._location = describe(conninfo, chosen)
        self._sql = q.Statements(chosen)
        self._channel = _channel(chosen)
        self._done = _done_channel(chosen)
        self._cx = Connections(
            conninfo,
            location=self._location,
            durability=durability,
            busy_timeout=self.busy_timeout,
            pool_min=pool_min,
            pool_max=pool_max,
            connect_timeout=float(connect_timeout),
        )
        self._schema_ready = False

    # -- lifecycle -----------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"PostgresStore({self._location!r}, durability={self.durability!r})"

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def location(self) -> str:
        """The store's URL without its password, with its schema."""
        return self._location

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._cx.closed

    def close(self) -> None:
        """Close every pooled connection this store opened. Idempotent. (A watcher from
        :meth:`watch_changes` has a connection of its own, closed by its ``close``.)"""
        self._cx.close()

    def _ready(self) -> None:
        """Create or migrate the schema on first use; refuse a closed store."""
        if self._cx.closed:
            raise StoreError(f"{self._location}: this PostgresStore was closed; open a new one")
        if not self._schema_ready:
            self.initialize_schema()

    def initialize_schema(self) -> None:
        """Create or migrate the schema (see :mod:`.schema`). Idempotent; several processes
        may call it at once: one migrates under an advisory lock, the others wait for it and
        find the schema done."""
        if self._cx.closed:
            raise StoreError(f"{self._location}: this PostgresStore was closed; open a new one")
        if self._schema_ready:
            return
        meta = self._read_meta()
        if meta is not None and self._verify(meta) == SCHEMA_VERSION:
            self._schema_ready = True
            return
        if not self.create and meta is None:
            raise StoreError(
                f"{self._location}: no hookqueue schema there. Fix: check the URL and its "
                "schema (--db, HOOKQUEUE_DB); commands that only read never create one"
            )
        sql = self._sql
        with self._cx.transaction() as conn:
            conn.execute(q.SET_LOCK_TIMEOUT, {"timeout": f"{int(self.busy_timeout * 1000)}ms"})
            conn.execute(sql(q.LOCK_SCHEMA), {"lock": f"hookqueue:{self.schema}"})
            tables = [r[0] for r in conn.execute(q.SCHEMA_TABLES, {"schema": self.schema})]
            version = 0
            if "meta" in tables:
                rows = dict(conn.execute(sql(q.READ_META)).fetchall())
                version = self._verify(rows)
            elif tables:
                raise NotAHookqueueDatabase(
                    f"{self._location}: schema {self.schema!r} holds tables that are not "
                    f"hookqueue's ({', '.join(tables[:5])}). It was not modified. Fix: give "
                    "hookqueue a schema of its own (?schema=name in the URL)"
                )
            if version < SCHEMA_VERSION:
                conn.execute(sql(q.CREATE_SCHEMA))
                for step in range(version, SCHEMA_VERSION):
                    log.info("migrating %s from schema %d to %d", self._location, step, step + 1)
                    conn.execute(sql(MIGRATIONS[step]))
                conn.execute(sql(q.UPSERT_META), {"version": str(SCHEMA_VERSION)})
        self._schema_ready = True

    def _read_meta(self) -> dict[str, str] | None:
        """The ``meta`` rows, or None when there is no such table (a new schema)."""
        with self._cx.read() as conn:
            exists = conn.execute(
                q.META_EXISTS, {"name": self._sql.identifier(self.schema, "meta")}
            ).fetchone()
            if not exists or not exists[0]:
                return None
            return dict(conn.execute(self._sql(q.READ_META)).fetchall())

    def _verify(self, meta: dict[str, str]) -> int:
        """The version a ``meta`` table records; refuses a foreign or newer schema."""
        if meta.get("application") != APPLICATION:
            raise NotAHookqueueDatabase(
                f"{self._location}: schema {self.schema!r} has a meta table that is not "
                "hookqueue's. It was not modified. Fix: give hookqueue a schema of its own "
                "(?schema=name in the URL)"
            )
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise NotAHookqueueDatabase(
                f"{self._location}: schema {self.schema!r} records no readable schema "
                "version. It was not modified. Fix: restore it from a backup, or use another "
                "schema"
            ) from None
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self._location}: schema version {version} was written by a newer hookqueue "
                f"(this one understands up to {SCHEMA_VERSION}). It was not modified. "
                "Fix: upgrade hookqueue (pip install -U 'hookqueue[postgres]')"
            )
        return version

    def schema_version(self) -> int:
        """The schema version stored (0 when there is no schema yet)."""
        if self._cx.closed:
            raise StoreError(f"{self._location}: this PostgresStore was closed; open a new one")
        meta = self._read_meta()
        return 0 if meta is None else self._verify(meta)

    def check(self) -> builtins.list[str]:
        """Hookqueue's consistency checks (normally empty: the CHECK constraints refuse what
        they look for) and indexes left invalid by an interrupted build.

        :returns: a list of problems; empty when the store is healthy.
        """
        self._ready()
        sql = self._sql
        with self._cx.read() as conn:
            problems = [
                f"index {name} is invalid (an interrupted build); REINDEX it"
                for (name,) in conn.execute(q.INVALID_INDEXES, {"schema": self.schema})
            ]
            problems += [
                f"task {tid} is running without a lease owner"
                for (tid,) in conn.execute(sql(q.RUNNING_UNOWNED))
            ]
            problems += [
                f"task {tid} has attempts={a} above max_attempts={m}"
                for tid, a, m in conn.execute(sql(q.ATTEMPTS_OVER))
            ]
            problems += [
                f"task {tid} is {status} but its finished_at "
                + ("is missing" if finished is None else "is set")
                for tid, status, finished in conn.execute(sql(q.FINISHED_MISMATCH))
            ]
        return problems

    # -- rows ----------------------------------------------------------------------------------

    def _task(self, row: Any, known: Task | None = None) -> Task:
        """Decode a row; damage becomes :class:`DamagedRow` naming the store and the task."""
        try:
            return Task.from_row(row, known)
        except _UNDECODABLE as exc:
            task_id = row[0] if row else "?"
            raise DamagedRow(
                f"{self._location}: task {task_id} is damaged and cannot be read "
                f"({type(exc).__name__}: {exc}). Fix: run 'hookqueue check', then cancel or "
                "delete the task",
                task_id=task_id,
            ) from exc

    def _decode_tolerant(self, rows: Iterable[Any]) -> builtins.list[Task]:
        """Rows as tasks, leaving out (and logging) those that cannot be decoded."""
        tasks: builtins.list[Task] = []
        for row in rows:
            try:
                tasks.append(self._task(row))
            except DamagedRow as exc:
                log.error("%s; it is left out", exc)
        return tasks

    # -- enqueue -------------------------------------------------------------------------------

    def insert(
        self,
        rows: Sequence[InsertRow],
        now_us: int,
        *,
        key_window_us: int | None = None,
        claim: tuple[str, int] | None = None,
    ) -> builtins.list[tuple[int, Task | None]]:
        """Insert tasks in one transaction (all or none); see
        :meth:`~hookqueue.core.storage.TaskStore.insert`.

        One statement inserts the whole batch in order; the unique index on idempotency
        keys makes a key already held (by an earlier task, another process's concurrent
        insert once it commits, or an earlier row of this batch) insert nothing, and the
        holders are then read in the same transaction.
        """
        self._ready()
        if not rows:
            return []
        sql = self._sql
        params: dict[str, Any] = {
            "queue": [r.queue for r in rows],
            "task_type": [r.task_type for r in rows],
            "payload": [r.payload_json for r in rows],
            "priority": [r.priority for r in rows],
            "max_attempts": [r.max_attempts for r in rows],
            "run_after": [r.run_after_us or now_us for r in rows],
            "key": [r.idempotency_key for r in rows],
            "timeout": [r.timeout for r in rows],
            "headers": [r.headers_json for r in rows],
            "now": now_us,
            "claim": None if claim is None else claim[0],
            "until": None if claim is None else claim[1],
            "channel": self._channel,
        }
        keys = sorted({r.idempotency_key for r in rows if r.idempotency_key is not None})
        holders: dict[str, Any] = {}
        # Not pipelined: statement by statement, the store knows whether COMMIT was sent
        # when a connection breaks, so a producer is told "nothing was written" (safe to
        # repeat) rather than "may be stored" whenever it can be (see CommitOutcomeUnknown).
        with self._cx.transaction() as conn:
            if keys and key_window_us is not None:
                conn.execute(
                    sql(q.FORGET_KEYS), {"keys": keys, "window": key_window_us, "now": now_us}
                )
            inserted = conn.execute(sql(q.INSERT_BATCH), params).fetchall()
            if keys:
                for row in conn.execute(sql(q.GET_BY_KEYS), {"keys": keys}):
                    holders[row[TASK_COLUMNS.index("idempotency_key")]] = row
            # The answer is built (the key holders decoded) before COMMIT: a holder that
            # cannot be decoded raises DamagedRow and none of the batch is stored.
            return self._inserted(rows, inserted, holders)

    def _inserted(
        self, rows: Sequence[InsertRow], inserted: builtins.list[Any], holders: dict[str, Any]
    ) -> builtins.list[tuple[int, Task | None]]:
        """:meth:`insert`'s answer: per row, its new id, or the task holding its key.

        :raises DamagedRow: a holder cannot be decoded.
        """
        new_keys = {key for _, key, _ in inserted if key is not None}
        ids = iter(inserted)
        seen: set[str] = set()
        out: builtins.list[tuple[int, Task | None]] = []
        for r in rows:
            key = r.idempotency_key
            if key is None or (key in new_keys and key not in seen):
                tid, got_key, _ = next(ids)
                if got_key != key:  # ids are drawn in row order; anything else is a bug
                    raise StoreError(f"{self._location}: inserted rows came back out of order")
                if key is not None:
                    seen.add(key)
                out.append((int(tid), None))
            else:
                holder = self._task(holders[key])
                out.append((holder.id, holder))
        return out

    def insert_one(self, row: InsertRow, now_us: int) -> int:
        """Insert one task without an idempotency key in its own transaction; its id."""
        if row.idempotency_key is not None:
            raise ValueError("insert_one takes rows without an idempotency key; use insert()")
        self._ready()
        params = self._insert_params(row, now_us)
        with self._cx.write() as (conn, state):
            state.sent = True
            got = conn.execute(self._sql(q.INSERT_ONE), params).fetchone()
        assert got is not None
        return int(got[0])

    def _insert_params(self, row: InsertRow, now_us: int) -> dict[str, Any]:
        """``INSERT_ONE``'s values for a row without an idempotency key."""
        return {
            "queue": row.queue,
            "task_type": row.task_type,
            "payload": row.payload_json,
            "priority": row.priority,
            "max_attempts": row.max_attempts,
            "run_after": row.run_after_us or now_us,
            "timeout": row.timeout,
            "headers": row.headers_json,
            "now": now_us,
            "channel": self._channel,
        }

    # -- reads ---------------------------------------------------------------------------------

    def get(self, task_id: int) -> Task:
        """The task with this id. :raises TaskNotFound: if there is none."""
        self._ready()
        with self._cx.read() as conn:
            row = conn.execute(self._sql(q.GET), {"id": task_id}).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        return self._task(row)

    def get_many(self, task_ids: Sequence[int]) -> builtins.list[Task]:
        """The tasks with these ids that exist, in the order of ``task_ids`` (one
        statement, one snapshot); a damaged one is left out and logged."""
        self._ready()
        ids = list(task_ids)
        if not ids:
            return []
        with self._cx.read() as conn:
            rows = conn.execute(self._sql(q.GET_MANY), {"ids": ids}).fetchall()
        found = {t.id: t for t in self._decode_tolerant(rows)}
        return [found[i] for i in ids if i in found]

    def find_by_key(self, key: str) -> Task | None:
        """The task holding this idempotency key, or None."""
        self._ready()
        with self._cx.read() as conn:
            row = conn.execute(self._sql(q.GET_BY_KEY), {"key": key}).fetchone()
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
        """Tasks matching every given filter, ordered by id, at most ``limit``; page with
        ``after_id``. Damaged rows are left out and logged."""
        self._ready()
        wanted = sorted({TaskStatus(s).value for s in statuses})
        sql = q.sql_list(
            by_status=bool(wanted),
            by_type=task_type is not None,
            by_queue=queue is not None,
            after=after_id is not None,
            newest=newest_first,
        )
        params = {
            "statuses": wanted,
            "task_type": task_type,
            "queue": queue,
            "after": after_id,
            "limit": limit,
        }
        with self._cx.read() as conn:
            rows = conn.execute(self._sql(sql), params).fetchall()
        return self._decode_tolerant(rows)

    def counts(self, *, by_type: bool = False) -> dict[str, Any]:
        """Tasks per status, every status present, in one snapshot; with ``by_type``,
        ``{task_type: {status: n}}``."""
        self._ready()
        with self._cx.read() as conn:
            if not by_type:
                out = {s.value: 0 for s in TaskStatus}
                for status, n in conn.execute(self._sql(q.COUNTS)):
                    out[status] = int(n)
                return out
            nested: dict[str, dict[str, int]] = {}
            for task_type, status, n in conn.execute(self._sql(q.COUNTS_BY_TYPE)):
                nested.setdefault(task_type, {s.value: 0 for s in TaskStatus})[status] = int(n)
            return nested

    def oldest_due_queued_us(self, now_us: int) -> int | None:
        """``run_after`` of the longest-waiting due queued task, or None."""
        self._ready()
        with self._cx.read() as conn:
            row = conn.execute(self._sql(q.OLDEST_QUEUED), {"now": now_us}).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def queue_gauges(self, now_us: int) -> builtins.list[QueueGauge]:
        """Per queue name with active tasks: due, delayed, running, oldest due (one
        statement, so one snapshot), by name."""
        self._ready()
        with self._cx.read() as conn:
            rows = conn.execute(self._sql(q.QUEUE_GAUGES), {"now": now_us}).fetchall()
        return [
            QueueGauge(
                queue=name,
                due=int(due),
                delayed=int(delayed),
                running=int(running),
                oldest_due_us=None if oldest is None else int(oldest),
            )
            for name, due, delayed, running, oldest in rows
        ]

    def finished_count_since(self, since_us: int) -> int:
        """How many tasks reached a final status at or after ``since_us``."""
        self._ready()
        with self._cx.read() as conn:
            row = conn.execute(self._sql(q.FINISHED_SINCE), {"since": since_us}).fetchone()
        return int(row[0]) if row else 0

    def recent_finished(self, since_us: int, limit: int) -> builtins.list[FinishedSample]:
        """The most recently finished tasks since ``since_us``, newest first, at most
        ``limit``."""
        self._ready()
        with self._cx.read() as conn:
            rows = conn.execute(
                self._sql(q.RECENT_FINISHED), {"since": since_us, "limit": limit}
            ).fetchall()
        return [
            FinishedSample(
                status=status,
                task_type=task_type,
                attempts=int(attempts),
                max_attempts=int(max_attempts),
                started_us=None if started is None else int(started),
                finished_us=int(finished),
            )
            for status, task_type, attempts, max_attempts, started, finished in rows
        ]

    def waiting_retry_count(self) -> int:
        """Queued tasks that already had an attempt."""
        self._ready()
        with self._cx.read() as conn:
            row = conn.execute(self._sql(q.WAITING_RETRY)).fetchone()
        return int(row[0]) if row else 0

    def due_queue_names(self, now_us: int) -> builtins.list[str]:
        """Queue names with a due queued task or an expired lease, sorted."""
        self._ready()
        with self._cx.read() as conn:
            return [r[0] for r in conn.execute(self._sql(q.DUE_QUEUES), {"now": now_us})]

    def workers(self) -> builtins.list[WorkerInfo]:
        """Every recorded worker, oldest first; a record that cannot be decoded is left out
        and logged (:func:`~hookqueue.core.storage.decode_workers`)."""
        self._ready()
        with self._cx.read() as conn:
            rows = conn.execute(self._sql(q.WORKERS)).fetchall()
        return decode_workers(rows, self._location)

    # -- filters, history, paused queues -------------------------------------------------------

    @staticmethod
    def _filter(
        flt: TaskFilter, page: int = 0, page_id: int | None = None
    ) -> tuple[q.FilterShape, dict[str, Any]]:
        """The statement shape and bound values of a filter (see ``sql_matching``)."""
        params: dict[str, Any] = {
            "statuses": [s.value for s in flt.statuses],
            "types": list(flt.task_types),
            "queues": list(flt.queues),
            "ids": list(flt.ids),
            "error": flt.error_contains,
            "created_after": _us_or_none(flt.created_after),
            "created_before": _us_or_none(flt.created_before),
            "finished_before": _us_or_none(flt.finished_before),
            "max_id": flt.max_id,
            "page": page_id,
        }
        shape: q.FilterShape = (
            bool(flt.statuses),
            bool(flt.task_types),
            bool(flt.queues),
            bool(flt.ids),
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
        self._ready()
        page = 0 if after_id is None else (-1 if newest_first else 1)
        shape, params = self._filter(flt, page, after_id)
        params["limit"] = limit
        sql = q.sql_matching(shape, "newest" if newest_first else "tasks")
        with self._cx.read() as conn:
            rows = conn.execute(self._sql(sql), params).fetchall()
        return self._decode_tolerant(rows)

    def count_matching(self, flt: TaskFilter) -> int:
        """How many tasks a filter matches (one statement, one snapshot)."""
        self._ready()
        shape, params = self._filter(flt)
        with self._cx.read() as conn:
            row = conn.execute(self._sql(q.sql_matching(shape, "count")), params).fetchone()
        return int(row[0]) if row else 0

    def finished_buckets(
        self, since_us: int, bucket_us: int
    ) -> builtins.list[tuple[int, str, int]]:
        """Tasks that reached a final status since ``since_us``, per ``bucket_us``-long
        interval and status: ``(bucket start, status, count)``, oldest first."""
        if bucket_us <= 0:
            raise ValidationError("bucket_us", bucket_us, "must be positive", "e.g. 60_000_000")
        self._ready()
        with self._cx.read() as conn:
            rows = conn.execute(
                self._sql(q.FINISHED_BUCKETS), {"since": since_us, "bucket": bucket_us}
            ).fetchall()
        return [(since_us + int(b) * bucket_us, str(st), int(n)) for b, st, n in rows]

    def task_failures(self, task_id: int) -> builtins.list[AttemptFailure]:
        """The failed attempts of a task, in the order they ended (empty for none, or an
        unknown id)."""
        self._ready()
        with self._cx.read() as conn:
            rows = conn.execute(self._sql(q.TASK_FAILURES), {"id": task_id}).fetchall()
        return [
            AttemptFailure(
                task_id=int(r[0]),
                attempt=int(r[1]),
                at=from_us(r[2]),
                worker_id=r[3],
                outcome=r[4],
                error=r[5],
                traceback=r[6],
            )
            for r in rows
        ]

    def paused_queues(self) -> dict[str, datetime]:
        """The paused queue names and when each was paused."""
        self._ready()
        with self._cx.read() as conn:
            rows = conn.execute(self._sql(q.PAUSED_QUEUES)).fetchall()
        return {name: from_us(at) for name, at in rows}

    def queued_queue_names(self) -> builtins.list[str]:
        """The names of the queues that have queued tasks (due or not), sorted."""
        self._ready()
        with self._cx.read() as conn:
            return [r[0] for r in conn.execute(self._sql(q.QUEUED_QUEUE_NAMES))]

    # -- what workers call ---------------------------------------------------------------------

    def _stored_rules(self, conn: psycopg.Connection[Any]) -> builtins.list[LimitRule]:
        """The stored rules, by name."""
        return limitwalk.decode_rules(conn.execute(self._sql(q.LIMITS_ALL)).fetchall())

    def _plan_rules(
        self,
        conn: psycopg.Connection[Any],
        plan: LeasePlan | None,
        queues: Sequence[str] | None,
        task_types: Sequence[str] | None,
        stored: builtins.list[LimitRule] | None = None,
    ) -> builtins.list[LimitRule]:
        """The rules a lease with ``plan`` keeps that can concern ``queues`` and
        ``task_types`` (the stored ones read unless given as ``stored``)."""
        if plan is None or (not plan.limits and not plan.stored_limits):
            return []
        rules = list(plan.limits)
        if plan.stored_limits:
            rules += self._stored_rules(conn) if stored is None else stored
        return limitwalk.concerning(rules, queues, task_types)

    def has_work(
        self,
        queues: Sequence[str],
        now_us: int,
        task_types: Sequence[str] | None = None,
        *,
        plan: LeasePlan | None = None,
    ) -> bool:
        """True if a task (of ``task_types``; None: any) is due in one of ``queues`` and the
        plan's limits allow it to start, or a lease has expired. A read: takes no lock (with
        limits, statement by statement: a commit in between makes the answer stale, and that
        commit notifies the watchers again)."""
        self._ready()
        params = {
            "queues": list(queues),
            "now": now_us,
            "types": None if task_types is None else list(task_types),
        }
        with self._cx.read() as conn:
            rules = self._plan_rules(conn, plan, queues, task_types)
            if rules and queues:
                assert plan is not None
                sel = limiting.Selection(conn, self._sql, rules, now_us, load_turns=False)
                rows = sel.candidates(plan, queues, now_us, task_types, 16, fair=False, lock=False)
                if sel.pick(rows, 1):
                    return True
                row = conn.execute(self._sql(q.ANY_EXPIRED), {"now": now_us}).fetchone()
            else:
                sql = q.sql_has_work(task_types is not None)
                row = conn.execute(self._sql(sql), params).fetchone()
        return bool(row and row[0])

    def next_wakeup_delay_us(
        self, queues: Sequence[str], now_us: int, *, plan: LeasePlan | None = None
    ) -> int | None:
        """Microseconds until a delayed task in ``queues`` becomes due, a lease expires or
        (with a plan carrying rate limits) a held rate bucket allows a start again; None
        when nothing is scheduled."""
        self._ready()
        start = None
        with self._cx.read() as conn:
            row = conn.execute(
                self._sql(q.NEXT_WAKEUP), {"queues": list(queues), "now": now_us}
            ).fetchone()
            rules = self._plan_rules(conn, plan, queues, None)
            if any(r.rate is not None for r in rules):
                sel = limiting.Selection(conn, self._sql, rules, now_us, load_turns=False)
                start = sel.next_start_us()
        assert row is not None
        due_at, due, expiry = row
        delays = []
        if due is not None:
            delays.append(int(due) - int(due_at))
        if expiry is not None:
            delays.append(max(0, int(expiry) - now_us))
        if start is not None:
            delays.append(max(0, start - now_us))
        return min(delays) if delays else None

    def watch_changes(
        self, poll_interval: float = 0.001, *, sleep_while_idle: bool = True
    ) -> ChangeWatcher:
        """A watcher that wakes on the store's work notifications (LISTEN/NOTIFY; see
        :mod:`.watch`) — or, once given tasks to watch (``watch_tasks``), on the ends of
        those tasks only. It polls nothing, so ``poll_interval`` and ``sleep_while_idle`` do
        not apply. Close it with its ``close``."""
        from .watch import ListenWatcher, WaitChannels

        self._ready()
        sql = self._sql
        waits = WaitChannels(
            work=self._channel,
            done=self._done,
            register=sql(q.WAITS_SET),
            settle=sql(q.WAITS_SETTLE),
            clear=sql(q.WAITS_CLEAR),
            sweep=sql(q.WAITS_SWEEP),
            lock_timeout=f"{int(self.busy_timeout * 1000)}ms",
        )
        return ListenWatcher(self._cx, "LISTEN " + sql.identifier(self._channel), waits)

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
        transaction; see :meth:`~hookqueue.core.storage.TaskStore.lease`.

        A lease that carries no outcome commits without waiting for the WAL flush: losing it
        in a server crash only runs the tasks again, as their leases' expiry would.

        A plan with limits (``plan.limits``, ``plan.stored_limits``) is kept inside the same
        transaction (see :mod:`.limiting`): the rules' advisory locks serialise the leases they
        concern; a lease no rule concerns takes no lock.
        """
        self._ready()
        settled: builtins.list[Any] = []
        expired: builtins.list[Transition] = []
        fetch_leased: Callable[[], builtins.list[Any]] = list
        # One round trip for the settlements and the look for expired leases, one for the
        # lease and COMMIT (and one more only when leases expired, or for a re-ranking plan).
        with self._cx.pipeline(unsynced=not settlements) as conn:
            settle = (
                self._settle_send(conn, worker_id, settlements, now_us) if settlements else None
            )
            # The stored rules travel in the same round trip as the look for expired leases.
            stored = None
            if plan.stored_limits and limit > 0 and queues:
                stored = conn.execute(self._sql(q.LIMITS_ALL))
            expired = self._expire(conn, now_us, decide_expired)
            if settle is not None:
                settled = settle()
            if limit > 0 and queues:
                rules: builtins.list[LimitRule] = []
                if plan.limits or stored is not None:
                    known = None if stored is None else limitwalk.decode_rules(stored.fetchall())
                    rules = self._plan_rules(conn, plan, queues, task_types, known)
                if rules:
                    fetch_leased = self._lease_limited(
                        conn, rules, worker_id, queues, limit, now_us, lease_us, plan, task_types
                    )
                else:
                    fetch_leased = self._lease_rows(
                        conn, worker_id, queues, limit, now_us, lease_us, plan, task_types
                    )
        rows = fetch_leased()
        leased = self._decode_leased(rows, now_us)
        transitions = self._decode_settled(settled) if want_transitions else []
        return leased, transitions + expired

    def _settle(
        self,
        conn: psycopg.Connection[Any],
        worker_id: str,
        settlements: Sequence[Settlement],
        now_us: int,
    ) -> builtins.list[tuple[str, Any, Task | None]]:
        """Write the outcomes in one statement; ``(event kind, row, the worker's task)`` per
        outcome written, in the order given, rows not yet decoded."""
        return self._settle_send(conn, worker_id, settlements, now_us)()

    def _settle_send(
        self,
        conn: psycopg.Connection[Any],
        worker_id: str,
        settlements: Sequence[Settlement],
        now_us: int,
    ) -> Callable[[], builtins.list[tuple[str, Any, Task | None]]]:
        """Send the outcomes' statement; returns what reads its answer (:meth:`_settle`'s),
        so that in a pipeline the next statements go in the same round trip."""
        chosen: builtins.list[Settlement] = []
        seen: set[int] = set()
        for s in settlements:
            if s.task_id in seen:  # a second outcome for one attempt: the first counts
                log.warning(
                    "worker %s reported two outcomes for task %d; the second (%s) is dropped",
                    worker_id,
                    s.task_id,
                    s.kind,
                )
                continue
            seen.add(s.task_id)
            chosen.append(s)
        held = [s.task if s.task is not None and s.task.id == s.task_id else None for s in chosen]
        params = {
            "ids": [s.task_id for s in chosen],
            "kinds": [s.kind for s in chosen],
            "results": [s.result_json for s in chosen],
            "errors": [_clean(s.error) for s in chosen],
            "run_after": [s.run_after_us for s in chosen],
            "held": [h is not None for h in held],
            "tracebacks": [_clean(s.traceback) for s in chosen],
            "worker": worker_id,
            "now": now_us,
            "channel": self._channel,
            "done": self._done + "_",
        }
        cursor = conn.execute(self._sql(q.SETTLE), params)
        by_id = {s.task_id: (s, h) for s, h in zip(chosen, held, strict=True)}

        def finish() -> builtins.list[tuple[str, Any, Task | None]]:
            out: builtins.list[tuple[str, Any, Task | None]] = []
            written: set[int] = set()
            for row in cursor.fetchall():
                kind, task_row = row[0], row[2 : 2 + _N]
                status = task_row[TASK_COLUMNS.index("status")]
                tid = task_row[_ID]
                written.add(tid)
                out.append((_EVENT[(kind, status)], task_row, by_id[tid][1]))
            for s in chosen:
                if s.task_id not in written:
                    log.warning(
                        "worker %s no longer holds the lease of task %d; its %s outcome is "
                        "dropped (the lease expired and the task was taken over or ended)",
                        worker_id,
                        s.task_id,
                        s.kind,
                    )
            return out

        return finish

    def _expire(
        self, conn: psycopg.Connection[Any], now_us: int, decide_expired: ExpiryDecider
    ) -> builtins.list[Transition]:
        """Requeue or end the tasks whose lease expired (inside the lease transaction)."""
        sql = self._sql
        rows = conn.execute(sql(q.EXPIRED), {"now": now_us}).fetchall()
        if not rows:
            return []
        ids: builtins.list[int] = []
        requeue: builtins.list[bool] = []
        run_after: builtins.list[int | None] = []
        messages: builtins.list[str | None] = []
        workers: builtins.list[str | None] = []
        for row in rows:
            try:
                task = self._task(row)
            except DamagedRow as exc:
                message = f"the stored task is damaged and cannot be read ({exc.__cause__})"
                log.error("%s: task %s: %s; it is ended failed", self._location, row[0], message)
                conn.execute(
                    sql(q.FAIL_DAMAGED),
                    {
                        "message": message[:2000],
                        "now": now_us,
                        "id": row[0],
                        "done": self._done + "_",
                    },
                )
                continue
            at, message = decide_expired(task)
            # A requested cancellation is honoured whatever the decider says; attempts are
            # never exceeded.
            again = at is not None and task.attempts < task.max_attempts
            again = again and not task.cancel_requested
            ids.append(task.id)
            requeue.append(again)
            run_after.append(at if again else None)
            messages.append(_clean(message))
            workers.append(task.locked_by)
        if not ids:
            return []
        done = conn.execute(
            sql(q.EXPIRE),
            {
                "ids": ids,
                "requeue": requeue,
                "run_after": run_after,
                "messages": messages,
                "workers": workers,
                "now": now_us,
                "channel": self._channel,
                "done": self._done + "_",
            },
        ).fetchall()
        out: builtins.list[Transition] = []
        for row in done:
            task = self._task(row[:_N])
            kind = "lease_expired" if task.status is TaskStatus.QUEUED else task.status.value
            out.append((kind, task))
        return out

    def _lease_rows(
        self,
        conn: psycopg.Connection[Any],
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        now_us: int,
        lease_us: int,
        plan: LeasePlan,
        task_types: Sequence[str] | None,
    ) -> Callable[[], builtins.list[Any]]:
        """Lease up to ``limit`` rows in the plan's order; returns what fetches them, in that
        order — after COMMIT, in the same round trip (they are decoded after it)."""
        keys = tuple(plan.order)
        several = len(queues) > 1
        typed = task_types is not None
        params: dict[str, Any] = {
            "worker": worker_id,
            "until": now_us + lease_us,
            "now": now_us,
            "queue": queues[0],
            "queues": list(queues),
            "types": None if task_types is None else list(task_types),
            "aging": max(1, int(plan.aging_seconds * 1_000_000)),
            "limit": limit,
        }
        if SortKey.AGED_PRIORITY not in keys:
            params.pop("aging")
        if plan.rerank is None:
            order = _row_order(plan, self._due_us(conn, now_us, keys))
            cursor = conn.execute(self._sql(q.sql_lease(keys, several, typed)), params)

            def fetch() -> builtins.list[Any]:
                rows = cursor.fetchall()
                rows.sort(key=order)
                return rows

            return fetch
        # A bounded window, locked, re-ranked in Python, leased in the same transaction.
        params.pop("limit")
        params["window"] = plan.window
        partition = bool(plan.partition_key)
        if partition:
            params["pkey"] = plan.partition_key
        if plan.group_by is None:
            window_sql = q.sql_lease_window(keys, several, typed, partition)
        else:
            # Drawn per group, so no group is left out behind another group's backlog; read
            # without locks, the chosen tasks are locked (skipping held ones) as they are leased.
            window_sql = q.sql_lease_window_grouped(keys, typed, partition, plan.group_by)
        fetched = conn.execute(self._sql(window_sql), params).fetchall()
        if not fetched:
            return list
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
            for r in fetched
        ]
        due_us = self._due_us(conn, now_us, keys)
        window.sort(key=_candidate_order(plan, due_us))
        offered = {c.id for c in window}
        # Each id once (a rerank that repeats one must not lease it twice), offered ones only.
        chosen = list(dict.fromkeys(i for i in plan.rerank(window, limit) if i in offered))
        chosen = chosen[:limit]
        if not chosen:
            return list
        lease_sql = q.LEASE_CHOSEN if plan.group_by is None else q.LEASE_CHOSEN_SKIP_LOCKED
        cursor = conn.execute(
            self._sql(lease_sql),
            {"ids": chosen, "worker": worker_id, "until": now_us + lease_us, "now": now_us},
        )

        def fetch_chosen() -> builtins.list[Any]:
            by_id = {r[_ID]: r for r in cursor.fetchall()}
            return [by_id[i] for i in chosen if i in by_id]

        return fetch_chosen

    def _lease_limited(
        self,
        conn: psycopg.Connection[Any],
        rules: Sequence[LimitRule],
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        now_us: int,
        lease_us: int,
        plan: LeasePlan,
        task_types: Sequence[str] | None,
    ) -> Callable[[], builtins.list[Any]]:
        """A lease that keeps ``rules`` (see :mod:`.limiting`): under the rules' locks, the
        candidates no full bucket holds, walked in order (or in turns), counted against every
        rule they match; the picks leased and the rate state and turns written."""
        # A little more than asked: a start may fill a bucket half-way through a batch.
        window = limitwalk.with_spare(limit)
        sel = limiting.Selection(
            conn,
            self._sql,
            rules,
            now_us,
            lock_schema=self.schema,
            ahead=(plan, queues, task_types, window) if plan.rerank is None else None,
        )
        if plan.rerank is None:
            rows = sel.candidates(plan, queues, now_us, task_types, window)
            chosen = sel.pick(rows, limit) if sel.fair is None else sel.pick_locked(rows, limit)
        else:
            # The plan's window drawn as without limits (per group with group_by), its held
            # tasks left out before the re-ranking, and the choice walked again (one start
            # may fill a bucket for the next); with a fair rule, its buckets' first tasks
            # follow the choice, so the turns reach every bucket (LimitWalk.ranked). Rows
            # read without locks (the grouped window, the fair heads) are locked as picked.
            window_rows = sel.window(plan, queues, now_us, task_types)
            allowed = {row[0]: row for row in window_rows if sel.allowed_alone(row)}
            heads: builtins.list[tuple[Any, ...]] = []
            if sel.fair is not None:
                heads = sel.candidates(plan, queues, now_us, task_types, window)
            offered = [
                Candidate(
                    id=row[0],
                    task_type=row[2],
                    priority=row[-4],
                    queue=row[1],
                    created_at_us=row[-2],
                    run_after_us=row[-3],
                    partition=None if row[-1] is None else json.loads(row[-1]),
                )
                for row in allowed.values()
            ]
            offered.sort(key=_candidate_order(plan, self._due_us(conn, now_us, tuple(plan.order))))
            allowed = {c.id: allowed[c.id] for c in offered}  # in the plan's order
            choice = plan.rerank(offered, limit) if offered else ()
            ranked = sel.ranked(choice, allowed, heads)
            if plan.group_by is None and sel.fair is None:
                chosen = sel.pick(ranked, limit)
            else:
                chosen = sel.pick_locked(ranked, limit)
        if not chosen:
            return list
        cursor = conn.execute(
            self._sql(q.LEASE_CHOSEN),
            {"ids": chosen, "worker": worker_id, "until": now_us + lease_us, "now": now_us},
        )
        sel.write()

        def fetch_chosen() -> builtins.list[Any]:
            by_id = {r[_ID]: r for r in cursor.fetchall()}
            return [by_id[i] for i in chosen if i in by_id]

        return fetch_chosen

    def _due_us(self, conn: psycopg.Connection[Any], now_us: int, keys: tuple[SortKey, ...]) -> int:
        """The instant due times were compared with (``now``, or the newest task's enqueue
        instant if later), for ordering fetched rows as the statement did: only aging reads
        it (read again in the same transaction, which inserted nothing since)."""
        if SortKey.AGED_PRIORITY not in keys:
            return now_us
        row = conn.execute(self._sql(q.DUE_NOW), {"now": now_us}).fetchone()
        return int(row[0]) if row else now_us

    def _decode_leased(self, rows: Sequence[Any], now_us: int) -> builtins.list[Task]:
        """Leased rows as Tasks (after COMMIT). A row that cannot be decoded is ended
        ``failed`` with the reason in a transaction of its own, so one bad row never stops
        every lease."""
        tasks: builtins.list[Task] = []
        damaged: builtins.list[tuple[int, str]] = []
        from_row = Task.from_row
        for row in rows:
            try:
                tasks.append(from_row(row))
            except _UNDECODABLE as exc:
                damaged.append(
                    (
                        row[0],
                        "the stored task is damaged and cannot be read "
                        f"({type(exc).__name__}: {exc})",
                    )
                )
        if damaged:
            with self._cx.transaction() as conn:
                for task_id, message in damaged:
                    log.error(
                        "%s: task %d: %s; it is ended failed", self._location, task_id, message
                    )
                    conn.execute(
                        self._sql(q.FAIL_DAMAGED),
                        {
                            "message": message[:2000],
                            "now": now_us,
                            "id": task_id,
                            "done": self._done + "_",
                        },
                    )
        return tasks

    def _decode_settled(
        self, settled: Sequence[tuple[str, Any, Task | None]]
    ) -> builtins.list[Transition]:
        """Settled rows as ``(kind, Task)`` (after COMMIT); a row that cannot be decoded
        loses only its event, and says so in the log."""
        out: builtins.list[Transition] = []
        from_row = Task.from_row
        for kind, row, held in settled:
            try:
                out.append((kind, from_row(row, held)))
            except _UNDECODABLE as exc:
                log.error(
                    "%s: task %s was settled (%s) but is damaged and cannot be read (%s); "
                    "no event is sent for it",
                    self._location,
                    row[0],
                    kind,
                    exc,
                )
        return out

    def settle(
        self, worker_id: str, settlements: Sequence[Settlement], now_us: int
    ) -> builtins.list[Transition]:
        """Write the outcomes of finished attempts in one transaction; an outcome for a lease
        the worker no longer holds is dropped and logged."""
        self._ready()
        with self._cx.transaction() as conn:
            settled = self._settle(conn, worker_id, settlements, now_us) if settlements else []
        return self._decode_settled(settled)

    def renew(
        self, worker_id: str, task_ids: Sequence[int], now_us: int, lease_us: int
    ) -> tuple[set[int], set[int]]:
        """Extend the leases ``worker_id`` holds and record its heartbeat (one statement).

        :returns: ``(ids still held, ids whose cancellation was requested)``.
        """
        self._ready()
        params = {
            "ids": list(task_ids),
            "until": now_us + lease_us,
            "now": now_us,
            "worker": worker_id,
        }
        with self._cx.write() as (conn, state):
            state.sent = True
            rows = conn.execute(self._sql(q.RENEW), params).fetchall()
        held = {int(r[0]) for r in rows}
        return held, {int(r[0]) for r in rows if r[1]}

    def register_worker(self, info: WorkerInfo) -> None:
        """Record a starting worker, replacing an earlier record with the same id."""
        self._ready()
        params = {
            "worker": info.worker_id,
            "hostname": info.hostname,
            "pid": info.pid,
            "queues": json.dumps(list(info.queues)),
            "concurrency": info.concurrency,
            "started": to_us(info.started_at, "started_at"),
            "beat": to_us(info.heartbeat_at, "heartbeat_at"),
        }
        with self._cx.write() as (conn, state):
            state.sent = True
            conn.execute(self._sql(q.WORKER_UPSERT), params)

    def worker_stopped(self, worker_id: str, now_us: int) -> None:
        """Record that a worker shut down cleanly."""
        self._ready()
        with self._cx.write() as (conn, state):
            state.sent = True
            conn.execute(self._sql(q.WORKER_STOP), {"now": now_us, "worker": worker_id})

    # -- user actions --------------------------------------------------------------------------

    def cancel(self, task_id: int, now_us: int) -> Transition:
        """Cancel a queued task at once, or flag a running one for its worker (the row is
        locked first, so a concurrent lease or outcome is waited for, never raced).

        :raises TaskNotFound: unknown id. :raises InvalidTransition: it already finished.
        """
        self._ready()
        sql = self._sql
        row: Any = None
        with self._cx.transaction() as conn:
            status = conn.execute(sql(q.LOCK_ONE), {"id": task_id}).fetchone()
            if status is not None and status[0] == "queued":
                row = conn.execute(
                    sql(q.CANCEL_QUEUED), {"id": task_id, "now": now_us, "done": self._done}
                ).fetchone()
                row = None if row is None else row[:_N]
                kind = "cancelled"
            elif status is not None and status[0] == "running":
                row = conn.execute(sql(q.CANCEL_RUNNING), {"id": task_id}).fetchone()
                kind = "cancel_requested"
            elif status is not None:
                row = conn.execute(sql(q.GET), {"id": task_id}).fetchone()
                kind = ""
            # Decoded before COMMIT: a damaged task raises DamagedRow with nothing changed.
            task = None if row is None else self._task(row)
        if task is None:
            raise TaskNotFound(task_id)
        if not kind:
            raise InvalidTransition(
                task.id, task.status.value, "cancel", "a queued or running task"
            )
        return kind, task

    def requeue(self, task_id: int, now_us: int) -> Task:
        """Put a failed or cancelled task back to ``queued`` at ``now_us`` with a fresh
        attempt count (and wake the workers of its queue)."""
        self._ready()
        with self._cx.transaction() as conn:
            row = conn.execute(
                self._sql(q.REQUEUE), {"id": task_id, "now": now_us, "channel": self._channel}
            ).fetchone()
            if row is not None:
                # Decoded before the block's COMMIT: a damaged task raises DamagedRow and
                # the requeue is rolled back.
                return self._task(row[:_N])
            current = conn.execute(self._sql(q.GET), {"id": task_id}).fetchone()
        if current is None:
            raise TaskNotFound(task_id)
        task = self._task(current)
        raise InvalidTransition(task.id, task.status.value, "retry", "a failed or cancelled task")

    def prune(self, *, older_than_us: int, statuses: Iterable[TaskStatus]) -> int:
        """Delete finished tasks in ``statuses`` that finished before ``older_than_us`` (their
        history goes with them), in batches of 5,000 that each commit, worker records silent
        since then, and periodic tick marks fired before then.

        :returns: how many tasks were deleted. :raises ValidationError: a status that is not
            final.
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
        self._ready()
        total = 0
        for status in chosen:
            while True:
                with self._cx.write() as (conn, state):
                    state.sent = True
                    cur = conn.execute(
                        self._sql(q.PRUNE_BATCH), {"before": older_than_us, "status": status.value}
                    )
                    n = cur.rowcount
                total += n
                if n < 5000:
                    break
        with self._cx.write() as (conn, state):
            state.sent = True
            conn.execute(self._sql(q.PRUNE_WORKERS), {"before": older_than_us})
            conn.execute(self._sql(q.PRUNE_TICKS), {"before": older_than_us})
            # Rate state that ran out before the cut-off allows a full burst: as if none;
            # a turn not served since is as if never served (first in line either way).
            conn.execute(self._sql(q.RATE_PRUNE), {"before": older_than_us})
            conn.execute(self._sql(q.TURN_PRUNE), {"before": older_than_us})
        return total

    def _newest_id(self) -> int:
        with self._cx.read() as conn:
            row = conn.execute(self._sql(q.NEWEST_ID)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _in_batches(
        self,
        flt: TaskFilter,
        act: Callable[[psycopg.Connection[Any], builtins.list[int]], builtins.list[Any]],
    ) -> builtins.list[Any]:
        """Apply ``act`` to the matching ids, :data:`BULK_BATCH` at a time, each batch read
        and changed in a transaction of its own (so workers are never held up for long), up
        to the newest id that existed at the start (tasks enqueued meanwhile are left
        alone). ``act``'s statements re-check each row's status under its row lock, so a
        task a worker took meanwhile is left to that worker's rules."""
        self._ready()
        bounded = flt if flt.max_id is not None else attrs.evolve(flt, max_id=self._newest_id())
        select = self._sql(q.sql_matching(self._filter(bounded, 1, 0)[0], "ids"))
        out: builtins.list[Any] = []
        last = 0
        while True:
            params = self._filter(bounded, 1, last)[1]
            params["limit"] = BULK_BATCH
            with self._cx.transaction() as conn:
                ids = [int(r[0]) for r in conn.execute(select, params)]
                if ids:
                    out += act(conn, ids)
            if len(ids) < BULK_BATCH:
                return out
            last = ids[-1]

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
            self._ready()
            return BulkResult()
        cancel, flag = self._sql(q.CANCEL_QUEUED_IDS), self._sql(q.FLAG_RUNNING_IDS)
        text = _clean(message)

        def act(conn: psycopg.Connection[Any], ids: builtins.list[int]) -> builtins.list[Any]:
            params = {"ids": ids, "message": text, "now": now_us, "done": self._done}
            cancelled = [r[:_N] for r in conn.execute(cancel, params).fetchall()]
            flagged = conn.execute(flag, {"ids": ids}).fetchall()
            return [("cancelled", r) for r in cancelled] + [
                ("cancel_requested", r) for r in flagged
            ]

        changed, damaged = self._bulk_answer(self._in_batches(scoped, act), "cancelled")
        return BulkResult(changed=tuple(changed), damaged=tuple(damaged))

    def requeue_matching(self, flt: TaskFilter, now_us: int) -> BulkResult[Task]:
        """Put the failed and cancelled tasks a filter matches back to ``queued`` at
        ``now_us`` with a fresh attempt count and no error (their history stays), in
        batches, waking the workers of their queues.

        :returns: the tasks after the change, and the ids of the damaged tasks requeued
            (logged).
        """
        scoped = flt.restricted_to((TaskStatus.FAILED, TaskStatus.CANCELLED))
        if scoped is None:
            self._ready()
            return BulkResult()
        sql = self._sql(q.REQUEUE_IDS)

        def act(conn: psycopg.Connection[Any], ids: builtins.list[int]) -> builtins.list[Any]:
            params = {"ids": ids, "now": now_us, "channel": self._channel}
            return [("requeued", r[:_N]) for r in conn.execute(sql, params).fetchall()]

        changed, damaged = self._bulk_answer(self._in_batches(scoped, act), "requeued")
        return BulkResult(changed=tuple(task for _, task in changed), damaged=tuple(damaged))

    def _bulk_answer(
        self, changes: Iterable[tuple[str, Any]], done: str
    ) -> tuple[builtins.list[Transition], builtins.list[int]]:
        """``(kind, row)`` per task a bulk action changed, decoded after its batches
        committed: the transitions, and the ids of the tasks that cannot be decoded (each
        logged; nothing raises, since the change is stored)."""
        changed: builtins.list[Transition] = []
        damaged: builtins.list[int] = []
        for kind, row in changes:
            try:
                changed.append((kind, self._task(row)))
            except DamagedRow as exc:
                log.error("%s. It was %s like the others and is left out of the answer", exc, done)
                damaged.append(int(row[0]))
        return changed, damaged

    def delete_matching(self, flt: TaskFilter) -> int:
        """Delete the tasks a filter matches, in batches — queued and finished ones only (a
        running task belongs to its worker: cancel it first), with their history and
        idempotency keys.

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
        sql = self._sql(q.DELETE_IDS)

        def act(conn: psycopg.Connection[Any], ids: builtins.list[int]) -> builtins.list[Any]:
            row = conn.execute(sql, {"ids": ids, "done": self._done}).fetchone()
            return [int(row[0]) if row else 0]

        return sum(self._in_batches(scoped, act))

    def pause_queue(self, queue: str, now_us: int) -> bool:
        """Stop every worker of every process leasing from ``queue`` (running tasks finish).
        Persisted. :returns: False if it was paused already."""
        self._ready()
        with self._cx.write() as (conn, state):
            state.sent = True
            cur = conn.execute(self._sql(q.PAUSE_QUEUE), {"queue": queue, "now": now_us})
            return cur.rowcount > 0

    def resume_queue(self, queue: str) -> bool:
        """Let workers lease from ``queue`` again, and wake those of every process.
        :returns: False if it was not paused."""
        self._ready()
        with self._cx.write() as (conn, state):
            state.sent = True
            rows = conn.execute(
                self._sql(q.RESUME_QUEUE), {"queue": queue, "channel": self._channel}
            ).fetchall()
        return bool(rows)

    # -- periodic schedules --------------------------------------------------------------------

    def upsert_schedules(
        self,
        schedules: Sequence[ScheduleDefinition],
        now_us: int,
        *,
        replace: bool = True,
    ) -> builtins.list[str]:
        """Create or update schedules by name in one transaction (see
        :meth:`~hookqueue.core.storage.TaskStore.upsert_schedules`). Names are taken in
        sorted order, so processes declaring the same schedules at once lock them in the
        same order (no deadlock); a name being created by another process is waited for.

        :returns: per schedule, ``"created"``, ``"updated"``, ``"unchanged"`` or ``"exists"``.
        """
        self._ready()
        sql = self._sql
        answers: dict[int, str] = {}
        order = sorted(range(len(schedules)), key=lambda i: schedules[i].name)
        with self._cx.transaction() as conn:
            for i in order:
                d = schedules[i]
                declared = now_us if d.source == "code" else None
                params: dict[str, Any] = {
                    "name": d.name,
                    "definition": d.definition_json,
                    "timing": d.timing,
                    "overlap": bool(d.overlap),
                    "source": d.source,
                    "paused": bool(d.paused),
                    "next_tick": d.next_tick_us,
                    "now": now_us,
                    "declared": declared,
                }
                if conn.execute(sql(q.SCHEDULE_CREATE), params).fetchone() is not None:
                    answers[i] = "created"
                    continue
                if not replace:
                    answers[i] = "exists"
                    continue
                row = conn.execute(sql(q.SCHEDULE_LOCK), {"name": d.name}).fetchone()
                if row is None:  # deleted meanwhile by a transaction that just committed
                    raise DatabaseBusy(
                        f"{self._location}: schedule {d.name!r} was deleted while being "
                        "declared. Nothing was written. Fix: retry"
                    )
                current = _schedule(row)
                if (
                    current.definition_json,
                    current.timing,
                    current.overlap,
                    current.source,
                ) != (d.definition_json, d.timing, bool(d.overlap), d.source):
                    if current.timing == d.timing:
                        params["next_tick"] = current.next_tick_us
                    conn.execute(sql(q.SCHEDULE_REDEFINE), params)
                    answers[i] = "updated"
                else:
                    answers[i] = "unchanged"
                if declared is not None:
                    conn.execute(sql(q.SCHEDULE_DECLARED), {"name": d.name, "now": declared})
        return [answers[i] for i in range(len(schedules))]

    def list_schedules(
        self,
        *,
        names: Sequence[str] | None = None,
        due_by_us: int | None = None,
    ) -> builtins.list[ScheduleRow]:
        """Schedules by name (all, or those named), or the due ones (not paused, next tick
        at or before ``due_by_us``) oldest next tick first; one statement, one snapshot."""
        self._ready()
        with self._cx.read() as conn:
            if due_by_us is not None:
                rows = conn.execute(self._sql(q.SCHEDULES_DUE), {"due": due_by_us}).fetchall()
            elif names is not None:
                rows = conn.execute(self._sql(q.SCHEDULES_NAMED), {"names": list(names)}).fetchall()
            else:
                rows = conn.execute(self._sql(q.SCHEDULES_ALL)).fetchall()
        found = [_schedule(r) for r in rows]
        if names is not None and due_by_us is not None:
            wanted = set(names)
            found = [r for r in found if r.name in wanted]
        return found

    def next_schedule_tick_us(self) -> int | None:
        """The earliest next tick of the unpaused schedules, or None."""
        self._ready()
        with self._cx.read() as conn:
            row = conn.execute(self._sql(q.SCHEDULE_NEXT)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def set_schedule_paused(
        self, name: str, paused: bool, now_us: int, *, next_tick_us: int | None = None
    ) -> ScheduleRow | None:
        """Pause or resume a schedule (resuming from ``next_tick_us``); the schedule after
        the change, or None when there is none of that name."""
        self._ready()
        sql = self._sql
        params = {"name": name, "now": now_us, "next_tick": next_tick_us}
        with self._cx.transaction() as conn:
            change = q.SCHEDULE_PAUSE if paused else q.SCHEDULE_RESUME
            row = conn.execute(sql(change), params).fetchone()
            if row is None:
                row = conn.execute(sql(q.SCHEDULE_GET), {"name": name}).fetchone()
        return None if row is None else _schedule(row)

    def delete_schedule(self, name: str) -> bool:
        """Delete a schedule and its tick marks (one statement); False when there was none."""
        self._ready()
        with self._cx.write() as (conn, state):
            state.sent = True
            row = conn.execute(self._sql(q.SCHEDULE_DELETE), {"name": name}).fetchone()
        return bool(row and row[0])

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
        self._ready()
        outcomes = {f.schedule: FireOutcome(schedule=f.schedule, applied=False) for f in fires}
        if not fires:
            return []
        # A read first, outside a transaction: when several processes fire the same ticks
        # at once, those that read after the first one committed write nothing. (A hint
        # only: the claim inside the transaction decides.)
        with self._cx.read() as conn:
            states = {
                r[0]: (r[1], r[2], r[3])
                for r in conn.execute(
                    self._sql(q.SCHEDULE_STATES), {"names": [f.schedule for f in fires]}
                )
            }
        live = [
            f
            for f in fires
            if states.get(f.schedule) == (f.expect_next_tick_us, f.expect_revision, False)
        ]
        if live:
            with self._cx.transaction() as conn:
                for f in live:
                    outcomes[f.schedule] = self._fire_one(conn, f, now_us)
        return [outcomes[f.schedule] for f in fires]

    def _fire_one(self, conn: psycopg.Connection[Any], f: TickFire, now_us: int) -> FireOutcome:
        """One schedule's step inside the ``fire_ticks`` transaction."""
        sql = self._sql
        claimed = conn.execute(
            sql(q.SCHEDULE_CLAIM),
            {
                "next_tick": f.next_tick_us,
                "name": f.schedule,
                "expect_tick": f.expect_next_tick_us,
                "expect_revision": f.expect_revision,
            },
        ).fetchone()
        if claimed is None:
            return FireOutcome(schedule=f.schedule, applied=False)
        overlap, last_task = bool(claimed[0]), claimed[1]
        fired: builtins.list[tuple[int, int]] = []
        overlapped: builtins.list[int] = []
        already: builtins.list[int] = []
        for tick, row in f.ticks:
            mark = {"name": f.schedule, "tick": tick}
            if conn.execute(sql(q.TICK_EXISTS), mark).fetchone() is not None:
                already.append(tick)
                continue
            if (
                not overlap
                and last_task is not None
                and conn.execute(sql(q.TASK_ACTIVE), {"id": last_task}).fetchone() is not None
            ):
                overlapped.append(tick)
                continue
            got = conn.execute(sql(q.INSERT_ONE), self._insert_params(row, now_us)).fetchone()
            assert got is not None
            task_id = int(got[0])
            # The primary key (schedule, tick) refuses a second mark: the transaction, and
            # with it the task, is then rolled back.
            conn.execute(sql(q.TICK_INSERT), {**mark, "task": task_id, "now": now_us})
            fired.append((tick, task_id))
            last_task = task_id
        newest = fired[-1] if fired else (None, None)
        conn.execute(
            sql(q.SCHEDULE_FIRED),
            {
                "last_tick": newest[0],
                "last_task": newest[1],
                "fired": len(fired),
                "skipped": f.skipped + len(overlapped),
                "name": f.schedule,
            },
        )
        return FireOutcome(
            schedule=f.schedule,
            applied=True,
            fired=tuple(fired),
            overlapped=tuple(overlapped),
            already=tuple(already),
        )

    # -- limits ------------------------------------------------------------------------------

    def set_limit(self, rule: LimitRule, now_us: int) -> str:
        """Store a limit rule by name (created, or replaced as a whole), in one transaction;
        workers are notified (a looser rule may let held tasks start).

        :returns: ``"created"``, ``"updated"`` or ``"unchanged"``.
        """
        if not isinstance(rule, LimitRule):
            raise ValidationError(
                "rule",
                rule,
                "is not a LimitRule",
                "build one: LimitRule(name=..., concurrency=...)",
            )
        self._ready()
        params = limiting.rule_params(rule, now_us)
        changed = {"channel": self._channel, "queue": rule.queue or ""}
        sql = self._sql
        with self._cx.transaction() as conn:
            # The name taken: lock that row and compare (deleted meanwhile: create again).
            while conn.execute(sql(q.LIMIT_CREATE), params).fetchone() is None:
                row = conn.execute(sql(q.LIMIT_LOCK), {"name": rule.name}).fetchone()
                if row is None:
                    continue
                before = limitwalk.rule_from_row(row)
                if before == rule:
                    return "unchanged"
                conn.execute(sql(q.LIMIT_UPDATE), params)
                if (before.rate, before.interval_us) != (rule.rate, rule.interval_us):
                    ahead = conn.execute(sql(q.RATE_AHEAD), {"rule": rule.name, "now": now_us})
                    owed = limitwalk.rate_state_after_change(before, rule, ahead.fetchall(), now_us)
                    conn.execute(sql(q.RATES_DELETE), {"rule": rule.name})
                    if owed:
                        conn.execute(
                            sql(q.RATE_PUT),
                            {
                                "rule": rule.name,
                                "buckets": [b for b, _ in owed],
                                "values": [tat for _, tat in owed],
                            },
                        )
                conn.execute(q.LIMIT_CHANGED, changed)
                return "updated"
            conn.execute(q.LIMIT_CHANGED, changed)
            return "created"

    def delete_limit(self, name: str) -> bool:
        """Delete a stored rule with its rate state and turns, in one transaction; workers
        are notified (the tasks it held may start).

        :returns: False when no rule had that name.
        """
        self._ready()
        with self._cx.transaction() as conn:
            row = conn.execute(self._sql(q.LIMIT_DELETE), {"name": name}).fetchone()
            if row is not None:
                conn.execute(q.LIMIT_CHANGED, {"channel": self._channel, "queue": row[0]})
        return row is not None

    def list_limits(self) -> builtins.list[LimitRule]:
        """The stored rules, by name (one statement)."""
        self._ready()
        with self._cx.read() as conn:
            return self._stored_rules(conn)

    def limit_usage(
        self, now_us: int, rules: Sequence[LimitRule] | None = None
    ) -> builtins.list[LimitUsage]:
        """Per rule (the stored ones, or ``rules``) and bucket with running or due tasks:
        counts and what is held back now — read in one REPEATABLE READ snapshot, so the
        counts agree with each other (a read; no lock)."""
        self._ready()
        with self._cx.snapshot() as conn:
            chosen = self._stored_rules(conn) if rules is None else list(rules)
            chosen.sort(key=lambda r: r.name)
            sel = limiting.Selection(conn, self._sql, chosen, now_us, load_turns=False)
            return sel.usage()

    def vacuum(self) -> None:
        """``VACUUM (ANALYZE)`` the task table: dead row versions become reusable space
        (PostgreSQL gives it back to the file system only at the end of the table)."""
        self._ready()
        with self._cx.read() as conn:
            conn.execute(self._sql(q.VACUUM))

    # -- raw rows ------------------------------------------------------------------------------

    def export_rows(
        self, *, after_id: int = 0, limit: int = 1000
    ) -> builtins.list[tuple[Any, ...]]:
        """Tasks exactly as stored, by id, after ``after_id``, at most ``limit``; see
        :meth:`~hookqueue.core.storage.TaskStore.export_rows`."""
        self._ready()
        with self._cx.read() as conn:
            rows = conn.execute(self._sql(q.EXPORT), {"after": after_id, "limit": limit}).fetchall()
        return [tuple(r) for r in rows]

    def import_rows(self, rows: Iterable[Sequence[Any]]) -> int:
        """Insert tasks exactly as given, ids included, in one transaction (all or none);
        see :meth:`~hookqueue.core.storage.TaskStore.import_rows`."""
        self._ready()
        sql = self._sql
        table = sql.identifier(self.schema, "tasks")
        total = 0
        with self._cx.transaction() as conn:
            chunk: builtins.list[Sequence[Any]] = []
            for row in rows:
                if len(row) != _N:
                    raise ValidationError(
                        "rows", row, f"must have {_N} values (TASK_COLUMNS)", "use export_rows()"
                    )
                chunk.append(row)
                if len(chunk) >= IMPORT_CHUNK:
                    total += self._import_chunk(conn, chunk)
                    chunk = []
            if chunk:
                total += self._import_chunk(conn, chunk)
            if total:
                seq = conn.execute(q.SEQUENCE_NAME, {"table": table}).fetchone()
                assert seq is not None
                seqname = seq[0].rsplit(".", 1)[-1].strip('"')
                conn.execute(
                    sql(q.BUMP_IDS), {"table": table, "schema": self.schema, "seqname": seqname}
                )
        return total

    def _import_chunk(self, conn: psycopg.Connection[Any], chunk: Sequence[Sequence[Any]]) -> int:
        columns = list(zip(*chunk, strict=True))
        params = dict(zip(TASK_COLUMNS, (list(c) for c in columns), strict=True))
        params["cancel_requested"] = [bool(v) for v in params["cancel_requested"]]
        params["error_message"] = [_clean(v) for v in params["error_message"]]
        conn.execute(self._sql(q.IMPORT), params)
        return len(chunk)


def _us_or_none(value: datetime | None) -> int | None:
    return None if value is None else to_us(value, "instant")


def _schedule(row: Any) -> ScheduleRow:
    """A schedules row (``SCHEDULE_COLS`` order) as a record."""
    return ScheduleRow(
        name=row[0],
        definition_json=row[1],
        timing=row[2],
        overlap=bool(row[3]),
        source=row[4],
        paused=bool(row[5]),
        revision=int(row[6]),
        next_tick_us=None if row[7] is None else int(row[7]),
        last_tick_us=None if row[8] is None else int(row[8]),
        last_task_id=None if row[9] is None else int(row[9]),
        fired=int(row[10]),
        skipped=int(row[11]),
        created_us=int(row[12]),
        updated_us=int(row[13]),
        declared_us=None if row[14] is None else int(row[14]),
    )


def _row_order(plan: LeasePlan, due_us: int) -> Any:
    """The plan's order as a sort key over fetched rows (``RETURNING`` keeps no order)."""
    aging = max(1, int(plan.aging_seconds * 1_000_000))
    order = tuple(plan.order)

    def key(row: Any) -> tuple[Any, ...]:
        return _order_key(order, aging, due_us, row[_ID], row[_PRIORITY], row[_RUN_AFTER])

    return key


def _candidate_order(plan: LeasePlan, due_us: int) -> Any:
    """The plan's order over window candidates (``FOR UPDATE`` may return a row that a
    concurrent update moved out of order)."""
    aging = max(1, int(plan.aging_seconds * 1_000_000))
    order = tuple(plan.order)

    def key(c: Candidate) -> tuple[Any, ...]:
        return _order_key(order, aging, due_us, c.id, c.priority, c.run_after_us)

    return key


def _order_key(
    order: tuple[SortKey, ...], aging: int, due_us: int, task_id: int, priority: int, run_after: int
) -> tuple[Any, ...]:
    parts: builtins.list[Any] = []
    for k in order:
        if k is SortKey.PRIORITY:
            parts.append(priority)
        elif k is SortKey.AGED_PRIORITY:
            parts.append(priority - (due_us - run_after) / aging)
        elif k is SortKey.DUE:
            parts.append(run_after)
        elif k is SortKey.LIFO:
            parts += [-run_after, -task_id]
        else:
            parts += [run_after, task_id]
    parts += [run_after, task_id]
    return tuple(parts)


__all__ = ["PostgresStore"]
