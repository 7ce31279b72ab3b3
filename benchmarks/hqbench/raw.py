"""The raw-apsw baseline: hookqueue's own schema and statements, without hookqueue around them.

"The same SQL work" is meant literally. The schema is ``store.MIGRATIONS``; inserts, settles,
reads and cancels use the store's named statements; the lease statement is captured from a
real ``QueueRuntime.lease`` call (apsw's ``exec_trace``), because the store assembles it at run time.
:func:`check_same_sql` replays each operation both ways on scratch databases and compares the
statement sequences, so the baseline cannot silently drift from what hookqueue executes.

Connections are configured as the store configures its own: WAL, the same ``synchronous``,
``BEGIN IMMEDIATE`` transactions, the same busy handler (short sleeps, bounded by the same
busy timeout), the same WAL checkpoint hook and apsw best-practice settings — so a raw figure
is the limit of the same SQL and the same lock waiting, not of a worse lock strategy.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw
import apsw.bestpractice

from hookqueue.core.models import TASK_COLUMNS
from hookqueue.core.store import connection as _connection
from hookqueue.core.store import schema as _schema
from hookqueue.core.store import statements as _store

from .common import SYNCHRONOUS


def _named(*names: str) -> str:
    """The store's statement under the first of ``names`` it defines (the store is free to
    rename; :func:`capture_and_check` then shows whether the baseline still matches)."""
    for name in names:
        value = getattr(_store, name, None)
        if isinstance(value, str):
            return value
    raise RuntimeError(
        f"hookqueue.core.store.statements defines none of {names}: its statements changed. Fix: update "
        "benchmarks/hqbench/raw.py (RawQueue) to run what QueueDatabase runs now"
    )


APPLICATION_ID: int = _schema.APPLICATION_ID
MIGRATIONS: tuple[str, ...] = _schema.MIGRATIONS
SCHEMA_VERSION: int = _schema.SCHEMA_VERSION
SQL_INSERT_ID = _named("SQL_INSERT_ID")
#: The worker completes the tasks it holds in memory (``Settlement.task``) in one statement.
sql_complete_held: Callable[[int], str] = _store.sql_complete_held
SQL_RELEASE = _named("SQL_RELEASE")
SQL_WORKER_BEAT = _named("SQL_WORKER_BEAT")
SQL_WORKER_UPSERT = _named("SQL_WORKER_UPSERT")
SQL_EXPIRED_IDS = _named("SQL_EXPIRED_IDS", "SQL_EXPIRED")
SQL_LATEST_CREATED = _named("SQL_LATEST_CREATED")
SQL_GET = _named("SQL_GET")
SQL_CANCEL_QUEUED = _named("SQL_CANCEL_QUEUED")
#: ``_read_or_fail``: the leased rows, read back by id in one statement.
_READ_BY_IDS = f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks WHERE id IN ({{}})"  # noqa: S608


#: The lease length every benchmark uses, in microseconds (the worker's default, 10 s).
LEASE_US = 10_000_000
#: The prefix that identifies the lease statement in a trace.
_LEASE_PREFIX = "UPDATE tasks SET status = 'running', attempts = attempts + 1"


def open_conn(path: Path | str, durability: str, busy_timeout: float = 10.0) -> apsw.Connection:
    """A connection set up exactly as ``QueueDatabase`` sets up its own."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    busy = _connection.busy_handler(busy_timeout)
    conn.set_busy_handler(busy)
    apsw.bestpractice.connection_dqs(conn)
    apsw.bestpractice.connection_recursive_triggers(conn)
    apsw.bestpractice.connection_enable_foreign_keys(conn)
    apsw.bestpractice.connection_wal(conn)
    conn.pragma("synchronous", SYNCHRONOUS[durability])
    conn.transaction_mode = "IMMEDIATE"
    # The store's own checkpoint (RESTART without waiting, past the same threshold).
    conn.set_wal_hook(_connection.WalCheckpointer(busy))
    return conn


def create_schema(conn: apsw.Connection) -> None:
    """Apply ``store.MIGRATIONS`` and stamp the file as hookqueue's (so a Queue can open it)."""
    with conn:
        for step in MIGRATIONS:
            conn.execute(step)
        conn.pragma("user_version", SCHEMA_VERSION)
        conn.pragma("application_id", APPLICATION_ID)


def insert_params(i: int, now_us: int, t_ns: int = 0) -> tuple[Any, ...]:
    """The bindings ``InsertRow.params`` produces for ``enqueue("noop", {"i": i, "t": t_ns})``
    (payload JSON as hookqueue encodes it: compact separators)."""
    payload = f'{{"i":{i},"t":{t_ns}}}' if t_ns else f'{{"i":{i}}}'
    return ("default", "noop", payload, 100, 1, now_us, None, None, None, now_us)


def now_us() -> int:
    """The current instant as the store encodes it (integer UTC microseconds)."""
    return time.time_ns() // 1000


class RawQueue:
    """The baseline's operations on one connection, each the statements hookqueue runs."""

    def __init__(self, conn: apsw.Connection, lease_sql: str, worker_id: str = "raw") -> None:
        self.conn = conn
        self.lease_sql = lease_sql
        self.worker_id = worker_id

    def register_worker(self, pid: int = 0) -> None:
        """``SQL_WORKER_UPSERT``, as a starting worker does."""
        t = now_us()
        with self.conn:
            self.conn.execute(
                SQL_WORKER_UPSERT, (self.worker_id, "bench", pid, '["default"]', 32, t, t)
            )

    def insert(self, params: tuple[Any, ...]) -> int:
        """One task, one transaction (``Queue.enqueue``)."""
        conn = self.conn
        with conn:
            conn.execute(SQL_INSERT_ID, params)
            return int(conn.last_insert_rowid())

    def insert_many(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Many tasks, one transaction (``Queue.enqueue_many``)."""
        conn = self.conn
        with conn:
            for params in rows:
                conn.execute(SQL_INSERT_ID, params)

    def lease(
        self, limit: int, done: Sequence[int] = (), release: Sequence[int] = ()
    ) -> list[tuple[Any, ...]]:
        """Settle finished attempts, sweep expired leases and lease ``limit`` tasks in one
        transaction — the statements of ``QueueDatabase.lease`` with FIFO order: each
        outcome, the worker's beat, the expired-lease sweep, the due instant, the lease
        (``RETURNING id``) and the leased rows read back by id."""
        conn = self.conn
        worker = self.worker_id
        t = now_us()
        with conn:
            settled = 0
            if done:
                params: list[Any] = [t]
                for task_id in done:
                    params += (task_id, None)
                params.append(worker)
                settled += len(conn.execute(sql_complete_held(len(done)), params).fetchall())
            for task_id in release:
                if conn.execute(SQL_RELEASE, (task_id, worker)).get is not None:
                    settled += 1
            if settled:
                conn.execute(SQL_WORKER_BEAT, (t, settled, worker))
            conn.execute(SQL_EXPIRED_IDS, (t,)).fetchall()
            if limit <= 0:
                return []
            latest = conn.execute(SQL_LATEST_CREATED).get
            due = t if latest is None or latest <= t else latest
            ids = [
                i
                for (i,) in conn.execute(
                    self.lease_sql, (worker, t + LEASE_US, t, "default", due, limit)
                ).fetchall()
            ]
            if not ids:
                return []
            return conn.execute(_READ_BY_IDS.format(", ".join("?" * len(ids))), ids).fetchall()

    def get(self, task_id: int) -> Any:
        """``Queue.get``: one row by id."""
        return self.conn.execute(SQL_GET, (task_id,)).get

    def cancel(self, task_id: int) -> Any:
        """``Queue.cancel`` of a queued task."""
        conn = self.conn
        with conn:
            return conn.execute(SQL_CANCEL_QUEUED, ("cancelled by request", now_us(), task_id)).get


# ---------------------------------------------------------------------------------------------
# Capturing hookqueue's statements and checking the baseline against them
# ---------------------------------------------------------------------------------------------


def _normalise(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


@contextlib.contextmanager
def _tracing() -> Iterator[list[str]]:
    """Record the SQL text of every statement run on connections opened inside the block."""
    records: list[str] = []

    def tracer(cursor: Any, sql: str, bindings: Any) -> bool:
        records.append(_normalise(sql))
        return True

    def hook(conn: apsw.Connection) -> None:
        conn.exec_trace = tracer

    apsw.connection_hooks.append(hook)
    try:
        yield records
    finally:
        apsw.connection_hooks.remove(hook)


def _ops_only(records: list[str]) -> list[str]:
    """Drop the connection's own set-up statements (pragmas), keep the work."""
    return [r for r in records if not r.upper().startswith("PRAGMA")]


def capture_and_check(
    scratch: Callable[[str], contextlib.AbstractContextManager[Path]],
) -> dict[str, Any]:
    """Capture the lease statement from hookqueue and check each baseline operation runs the
    same statements as the hookqueue call it stands for.

    :param scratch: ``WorkDir.fresh``; two scratch databases are used and deleted.
    :returns: ``{"lease_sql": str, "same_sql": bool, "operations": {name: {...}}}``.
    """
    from hookqueue import Queue
    from hookqueue.core.store import Settlement

    hq: dict[str, list[str]] = {}
    with scratch("capture-hq") as path, _tracing() as records:
        q = Queue(path, load_entrypoints=False, durability="normal")
        try:
            records.clear()
            q.enqueue("noop", {"i": 0})
            hq["enqueue"] = _ops_only(records[:])
            records.clear()
            q.enqueue_many([{"task_type": "noop", "payload": {"i": i}} for i in (1, 2)])
            hq["enqueue_many"] = _ops_only(records[:])
            leased = q.runtime.lease("raw", limit=2)
            records.clear()
            q.runtime.lease(
                "raw",
                limit=32,
                settlements=[Settlement(task_id=t.id, kind="complete", task=t) for t in leased],
            )
            hq["lease"] = _ops_only(records[:])
            records.clear()
            q.get(3)
            hq["get"] = _ops_only(records[:])
            q.enqueue("noop", {"i": 4})
            records.clear()
            q.cancel(4)
            hq["cancel"] = _ops_only(records[:])
        finally:
            q.close()
    lease_sql = next((s for s in hq["lease"] if s.startswith(_LEASE_PREFIX)), "")
    if not lease_sql:
        raise RuntimeError(
            "could not find hookqueue's lease statement in the trace of QueueRuntime.lease "
            f"(expected one starting {_LEASE_PREFIX!r}); the store's lease changed shape — "
            "update hqbench.raw.RawQueueRuntime.lease to match"
        )

    raw: dict[str, list[str]] = {}
    with scratch("capture-raw") as path, _tracing() as records:
        conn = open_conn(path, "normal")
        try:
            create_schema(conn)
            rq = RawQueue(conn, lease_sql)
            rq.register_worker()
            t = now_us()
            records.clear()
            rq.insert(insert_params(0, t))
            raw["enqueue"] = _ops_only(records[:])
            records.clear()
            rq.insert_many([insert_params(i, t) for i in (1, 2)])
            raw["enqueue_many"] = _ops_only(records[:])
            leased = [r[0] for r in rq.lease(2)]
            records.clear()
            rq.lease(32, done=leased)
            raw["lease"] = _ops_only(records[:])
            records.clear()
            rq.get(3)
            raw["get"] = _ops_only(records[:])
            rq.insert(insert_params(4, t))
            records.clear()
            rq.cancel(4)
            raw["cancel"] = _ops_only(records[:])
        finally:
            conn.close()
    operations = {
        name: {"same": hq[name] == raw[name], "hookqueue": hq[name], "raw": raw[name]}
        for name in hq
    }
    return {
        "lease_sql": lease_sql,
        "same_sql": all(op["same"] for op in operations.values()),
        "operations": operations,
    }
