"""The SQLite schema: its versions, the steps between them, and how a file is recognised.

A hookqueue database carries ``PRAGMA application_id`` = :data:`APPLICATION_ID` and
``PRAGMA user_version`` = its schema version. :func:`verify_identity` refuses a foreign SQLite
file and one written by a newer hookqueue before anything is written; :func:`migrate` steps an
older schema forward inside one ``BEGIN IMMEDIATE`` transaction, so of several processes
opening a new file at once, one creates the schema and the others see it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import apsw

from ..errors import NotAHookqueueDatabase, SchemaTooNew

log = logging.getLogger("hookqueue.store")

#: ``PRAGMA application_id`` of hookqueue databases ("HkQu"), so a foreign SQLite file is
#: recognised and refused instead of being written to.
APPLICATION_ID = 0x486B5175
#: The schema version this code writes; older databases are migrated forward.
SCHEMA_VERSION = 6

#: Migration steps: ``MIGRATIONS[n]`` takes a database from version n to n + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tasks (
        id               INTEGER PRIMARY KEY,
        queue            TEXT    NOT NULL,
        task_type        TEXT    NOT NULL,
        payload          TEXT    NOT NULL,
        priority         INTEGER NOT NULL,
        status           TEXT    NOT NULL
            CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
        attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
        run_after        INTEGER NOT NULL,
        idempotency_key  TEXT,
        error_message    TEXT,
        result           TEXT,
        locked_by        TEXT,
        lease_expires_at INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        timeout_seconds  REAL,
        headers          TEXT,
        created_at       INTEGER NOT NULL,
        started_at       INTEGER,
        finished_at      INTEGER
    ) STRICT;
    -- Leasing in priority order, and in due (FIFO) order; both only over queued rows, so
    -- finished tasks kept for history never slow a lease down.
    CREATE INDEX tasks_ready ON tasks (queue, priority, run_after, id) WHERE status = 'queued';
    CREATE INDEX tasks_due ON tasks (queue, run_after, id) WHERE status = 'queued';
    -- The expired-lease sweep.
    CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE status = 'running';
    CREATE UNIQUE INDEX tasks_idempotency ON tasks (idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    -- Counts by status and type, listing, pruning.
    CREATE INDEX tasks_status ON tasks (status, task_type);
    CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;

    CREATE TABLE workers (
        worker_id    TEXT PRIMARY KEY,
        hostname     TEXT NOT NULL,
        pid          INTEGER NOT NULL,
        queues       TEXT NOT NULL,
        concurrency  INTEGER NOT NULL,
        started_at   INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL,
        stopped_at   INTEGER,
        processed    INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    """,
    # v2: no index over every task's status. ``tasks_status`` changed on every transition, so
    # each lease and each completion moved an entry in it (two b-tree writes apiece, about
    # 2 µs of a lease+complete cycle's 18 in raw SQL). Active tasks are counted and listed
    # through the partial indexes they are in anyway (``tasks_due``/``tasks_ready`` while
    # queued, ``tasks_lease`` while running); a finished task enters ``tasks_terminal`` once,
    # when it finishes (``finished_at`` is set exactly for the final statuses).
    """
    DROP INDEX tasks_status;
    -- Counts by status and type of finished tasks, listing and pruning them.
    CREATE INDEX tasks_terminal ON tasks (status, task_type) WHERE finished_at IS NOT NULL;
    """,
    # v3: ids are never reused. Without AUTOINCREMENT SQLite gives the next task the largest
    # id in the table plus one, so after the newest tasks were pruned an old id (in a log, a
    # link, a caller's record) would name a different task. The table is rebuilt with the
    # same columns, rows and indexes; sqlite_sequence starts at the largest id kept.
    """
    CREATE TABLE tasks_v3 (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        queue            TEXT    NOT NULL,
        task_type        TEXT    NOT NULL,
        payload          TEXT    NOT NULL,
        priority         INTEGER NOT NULL,
        status           TEXT    NOT NULL
            CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
        attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
        run_after        INTEGER NOT NULL,
        idempotency_key  TEXT,
        error_message    TEXT,
        result           TEXT,
        locked_by        TEXT,
        lease_expires_at INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        timeout_seconds  REAL,
        headers          TEXT,
        created_at       INTEGER NOT NULL,
        started_at       INTEGER,
        finished_at      INTEGER
    ) STRICT;
    INSERT INTO tasks_v3 SELECT * FROM tasks;
    DROP TABLE tasks;
    ALTER TABLE tasks_v3 RENAME TO tasks;
    CREATE INDEX tasks_ready ON tasks (queue, priority, run_after, id) WHERE status = 'queued';
    CREATE INDEX tasks_due ON tasks (queue, run_after, id) WHERE status = 'queued';
    CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE status = 'running';
    CREATE UNIQUE INDEX tasks_idempotency ON tasks (idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX tasks_terminal ON tasks (status, task_type) WHERE finished_at IS NOT NULL;
    """,
    # v4: what went wrong in each failed attempt stays visible after a retry (the task keeps
    # only its last error, which a retry clears), with its traceback; and queues can be
    # paused for every worker at once.
    """
    CREATE TABLE task_failures (
        task_id    INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        attempt    INTEGER NOT NULL,
        at         INTEGER NOT NULL,
        worker_id  TEXT,
        outcome    TEXT    NOT NULL,
        error      TEXT    NOT NULL,
        traceback  TEXT
    ) STRICT;
    CREATE INDEX task_failures_task ON task_failures (task_id, attempt);
    CREATE TABLE paused_queues (
        queue     TEXT    PRIMARY KEY,
        paused_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    """,
    # v5: periodic schedules (the periodic plugin's, through the store's named methods). A
    # tick fires by inserting its mark into schedule_ticks, whose primary key is
    # (schedule, tick), in the same transaction as its task: each tick enqueues one task
    # however many processes fire it. The schedules' next ticks are indexed while not paused,
    # so "what is due" and "when is the next tick" read the index only.
    """
    CREATE TABLE schedules (
        name         TEXT    PRIMARY KEY,
        definition   TEXT    NOT NULL,
        timing       TEXT    NOT NULL,
        overlap      INTEGER NOT NULL DEFAULT 1 CHECK (overlap IN (0, 1)),
        source       TEXT    NOT NULL,
        paused       INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
        revision     INTEGER NOT NULL DEFAULT 1,
        next_tick    INTEGER,
        last_tick    INTEGER,
        last_task_id INTEGER,
        fired        INTEGER NOT NULL DEFAULT 0,
        skipped      INTEGER NOT NULL DEFAULT 0,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        declared_at  INTEGER
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX schedules_due ON schedules (next_tick) WHERE paused = 0;
    CREATE TABLE schedule_ticks (
        schedule TEXT    NOT NULL,
        tick     INTEGER NOT NULL,
        task_id  INTEGER NOT NULL,
        fired_at INTEGER NOT NULL,
        PRIMARY KEY (schedule, tick)
    ) STRICT, WITHOUT ROWID;
    -- Pruning marks by age.
    CREATE INDEX schedule_ticks_fired ON schedule_ticks (fired_at);
    """,
    # v6: limits (the limits plugin's, through the store's named methods). Rules by name; per
    # rule and bucket the rate's state (its theoretical arrival time, one integer) and the
    # round-robin position of a fair rule's buckets (its "virtual time": the turns it was
    # served, each worth 1/weight). All three are read and written inside the lease
    # transaction, so every process counts the same starts.
    """
    CREATE TABLE limits (
        name         TEXT    PRIMARY KEY,
        queue        TEXT,
        task_type    TEXT,
        partition_by TEXT,
        partition_in TEXT    NOT NULL DEFAULT 'payload'
            CHECK (partition_in IN ('payload', 'headers')),
        concurrency  INTEGER CHECK (concurrency >= 1),
        rate         INTEGER CHECK (rate >= 1),
        period       REAL    NOT NULL CHECK (period > 0),
        burst        INTEGER NOT NULL DEFAULT 1 CHECK (burst >= 1),
        fair         INTEGER NOT NULL DEFAULT 0 CHECK (fair IN (0, 1)),
        weights      TEXT,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE limit_rates (
        rule   TEXT    NOT NULL,
        bucket TEXT    NOT NULL,
        tat    INTEGER NOT NULL,
        PRIMARY KEY (rule, bucket)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE limit_turns (
        rule   TEXT    NOT NULL,
        bucket TEXT    NOT NULL,
        turn   INTEGER NOT NULL,
        PRIMARY KEY (rule, bucket)
    ) STRICT, WITHOUT ROWID;
    """,
)


#: What identifies a file as hookqueue's, read in one snapshot: (application_id, user_version,
#: number of schema objects).
SQL_IDENTITY = (
    "SELECT a.application_id, v.user_version, (SELECT count(*) FROM sqlite_schema) "
    "FROM pragma_application_id() AS a, pragma_user_version() AS v"
)


def verify_identity(conn: apsw.Connection, path: Path) -> None:
    """Refuse files that are not hookqueue databases, and newer schemas; a new, empty file
    passes (it is ours to initialise)."""
    # One statement, so one snapshot: read one by one, the values could straddle another
    # process's schema creation (its tables without its application_id) and refuse a file
    # that is being initialised as a hookqueue database.
    app_id, version, tables = conn.execute(SQL_IDENTITY).get
    if app_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{path}: schema version {version} was written by a newer hookqueue "
                f"(this one understands up to {SCHEMA_VERSION}). The file was not "
                "modified. Fix: upgrade hookqueue (pip install -U hookqueue)"
            )
        return
    if app_id == 0 and version == 0 and tables == 0:
        return
    raise NotAHookqueueDatabase(
        f"{path}: this SQLite file is not a hookqueue database "
        f"(application_id={app_id:#x}, user_version={version}). It was not modified. "
        "Fix: point HOOKQUEUE_DB / --db at a hookqueue database or a new file"
    )


def migrate(conn: apsw.Connection, path: Path) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION` inside the caller's ``BEGIN IMMEDIATE``
    transaction (identity checked again under the write lock)."""
    verify_identity(conn, path)
    current = conn.pragma("user_version")
    for step in range(current, SCHEMA_VERSION):
        log.info("migrating %s from schema %d to %d", path, step, step + 1)
        conn.execute(MIGRATIONS[step])
    conn.pragma("user_version", SCHEMA_VERSION)
    conn.pragma("application_id", APPLICATION_ID)
