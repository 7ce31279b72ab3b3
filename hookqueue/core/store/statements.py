"""Every SQL statement the SQLite store runs, by name.

Each is a constant string with ``?`` parameters. The only SQL assembled at run time is built
by the functions at the end from constant pieces: ``IN (?, ?, …)`` placeholder lists, the
``VALUES (?, ?), …`` rows of a batched completion, ``ORDER BY`` terms from the closed
:class:`~hookqueue.core.models.SortKey` vocabulary, and which partial index a listing reads.
No value is ever formatted into a statement (``tests/reliability`` checks this by AST).
"""

from __future__ import annotations

import functools

from ..models import TASK_COLUMNS, SortKey, TaskStatus

#: The task columns in ``Task.from_row`` order.
COLS = ", ".join(TASK_COLUMNS)

SQL_INSERT_KEYED = """
INSERT INTO tasks (queue, task_type, payload, priority, status, attempts, max_attempts,
                   run_after, idempotency_key, timeout_seconds, headers, created_at)
VALUES (?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
RETURNING id
"""
SQL_INSERT_ID = """
INSERT INTO tasks (queue, task_type, payload, priority, status, attempts, max_attempts,
                   run_after, idempotency_key, timeout_seconds, headers, created_at)
VALUES (?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?, ?)
"""
SQL_CLAIM_NEW = """
UPDATE tasks SET status = 'running', attempts = 1, locked_by = ?, lease_expires_at = ?,
                 started_at = ?
WHERE id = ? AND status = 'queued'
"""
SQL_GET = f"SELECT {COLS} FROM tasks WHERE id = ?"
SQL_GET_BY_KEY = f"SELECT {COLS} FROM tasks WHERE idempotency_key = ?"
SQL_FORGET_KEY = "UPDATE tasks SET idempotency_key = NULL WHERE id = ?"

SQL_EXPIRED_IDS = """
SELECT id FROM tasks
WHERE status = 'running' AND lease_expires_at <= ?
ORDER BY lease_expires_at
LIMIT 256
"""
SQL_FAIL_DAMAGED = """
UPDATE tasks SET status = 'failed', error_message = ?, finished_at = ?, locked_by = NULL,
                 lease_expires_at = NULL
WHERE id = ?
"""
SQL_EXPIRE_REQUEUE = f"""
UPDATE tasks SET status = 'queued', run_after = ?, error_message = ?, locked_by = NULL,
                 lease_expires_at = NULL, cancel_requested = 0
WHERE id = ? AND status = 'running' AND lease_expires_at <= ?
RETURNING {COLS}
"""
SQL_EXPIRE_FAIL = f"""
UPDATE tasks SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'failed' END,
                 error_message = ?, finished_at = ?, locked_by = NULL, lease_expires_at = NULL
WHERE id = ? AND status = 'running' AND lease_expires_at <= ?
RETURNING {COLS}
"""
SQL_ANY_DUE_ONE_QUEUE = """
SELECT 1 FROM tasks WHERE status = 'queued' AND queue = ? AND run_after <= ? LIMIT 1
"""
SQL_ANY_EXPIRED = "SELECT 1 FROM tasks WHERE status = 'running' AND lease_expires_at <= ? LIMIT 1"
SQL_NEXT_EXPIRY = "SELECT min(lease_expires_at) FROM tasks WHERE status = 'running'"
SQL_LATEST_CREATED = "SELECT created_at FROM tasks ORDER BY id DESC LIMIT 1"
SQL_NEWEST_ID = "SELECT max(id) FROM tasks"

# -- the history of failed attempts, and paused queues ----------------------------------------

SQL_RECORD_FAILURE = """
INSERT INTO task_failures (task_id, attempt, at, worker_id, outcome, error, traceback)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
#: In the order written (rowid; VACUUM keeps its order): a requeued task counts its attempts
#: from 1 again, and workers' clocks may disagree, so neither orders a history.
SQL_TASK_FAILURES = """
SELECT task_id, attempt, at, worker_id, outcome, error, traceback
FROM task_failures WHERE task_id = ? ORDER BY rowid
"""
SQL_PAUSE_QUEUE = (
    "INSERT INTO paused_queues (queue, paused_at) VALUES (?, ?) ON CONFLICT DO NOTHING"
)
SQL_RESUME_QUEUE = "DELETE FROM paused_queues WHERE queue = ?"
SQL_PAUSED_QUEUES = "SELECT queue, paused_at FROM paused_queues ORDER BY queue"
#: The names of the queues with queued tasks, one index seek per name (a skip-scan of
#: ``tasks_due`` by hand: DISTINCT would read every queued task).
SQL_QUEUED_QUEUE_NAMES = """
WITH RECURSIVE names(name) AS (
    SELECT min(queue) FROM tasks INDEXED BY tasks_due WHERE status = 'queued'
    UNION ALL
    SELECT (SELECT min(queue) FROM tasks INDEXED BY tasks_due
            WHERE status = 'queued' AND queue > names.name)
    FROM names WHERE names.name IS NOT NULL
)
SELECT name FROM names WHERE name IS NOT NULL
"""

SQL_COMPLETE = f"""
UPDATE tasks SET status = 'completed', result = ?, finished_at = ?, locked_by = NULL,
                 lease_expires_at = NULL
WHERE id = ? AND status = 'running' AND locked_by = ?
RETURNING {COLS}
"""


@functools.lru_cache(maxsize=64)
def sql_complete_held(n: int) -> str:
    """``SQL_COMPLETE`` for ``n`` tasks the worker holds in memory (``Settlement.task``), in
    one statement: parameters ``finished_at, (id, result) * n, worker_id``. The events' tasks
    are the held ones with the outcome applied, so only what another process may have
    changed meanwhile comes back (and nothing is decoded twice). One statement per batch
    instead of one per task: a worker settles up to ``concurrency`` completions at once."""
    values = ", ".join("(?, ?)" for _ in range(n))
    return f"""
UPDATE tasks SET status = 'completed', result = v.column2, finished_at = ?, locked_by = NULL,
                 lease_expires_at = NULL
FROM (VALUES {values}) AS v
WHERE tasks.id = v.column1 AND tasks.status = 'running' AND tasks.locked_by = ?
RETURNING tasks.id, tasks.cancel_requested
"""


SQL_FAIL = f"""
UPDATE tasks SET status = 'failed', error_message = ?, finished_at = ?, locked_by = NULL,
                 lease_expires_at = NULL
WHERE id = ? AND status = 'running' AND locked_by = ?
RETURNING {COLS}
"""
SQL_RETRY_LATER = f"""
UPDATE tasks SET status = 'queued', error_message = ?, run_after = ?, locked_by = NULL,
                 lease_expires_at = NULL
WHERE id = ? AND status = 'running' AND locked_by = ? AND cancel_requested = 0
      AND attempts < max_attempts
RETURNING {COLS}
"""
SQL_CANCEL_IF_REQUESTED = f"""
UPDATE tasks SET status = 'cancelled', error_message = ?, finished_at = ?, locked_by = NULL,
                 lease_expires_at = NULL
WHERE id = ? AND status = 'running' AND locked_by = ? AND cancel_requested = 1
RETURNING {COLS}
"""
SQL_CANCELLED_BY_WORKER = f"""
UPDATE tasks SET status = 'cancelled', error_message = ?, finished_at = ?, locked_by = NULL,
                 lease_expires_at = NULL
WHERE id = ? AND status = 'running' AND locked_by = ?
RETURNING {COLS}
"""
SQL_RELEASE = f"""
UPDATE tasks SET status = 'queued', attempts = max(attempts - 1, 0), locked_by = NULL,
                 lease_expires_at = NULL, started_at = NULL
WHERE id = ? AND status = 'running' AND locked_by = ?
RETURNING {COLS}
"""
SQL_RENEW = """
UPDATE tasks SET lease_expires_at = ?
WHERE id = ? AND status = 'running' AND locked_by = ?
RETURNING id, cancel_requested
"""
SQL_CANCEL_QUEUED = f"""
UPDATE tasks SET status = 'cancelled', error_message = ?, finished_at = ?
WHERE id = ? AND status = 'queued'
RETURNING {COLS}
"""
SQL_CANCEL_RUNNING = f"""
UPDATE tasks SET cancel_requested = 1
WHERE id = ? AND status = 'running'
RETURNING {COLS}
"""
SQL_REQUEUE = f"""
UPDATE tasks SET status = 'queued', attempts = 0, run_after = ?, finished_at = NULL,
                 started_at = NULL, cancel_requested = 0, result = NULL, error_message = NULL
WHERE id = ? AND status IN ('failed', 'cancelled')
RETURNING {COLS}
"""
SQL_PRUNE_BATCH = """
DELETE FROM tasks WHERE id IN (
    SELECT id FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ? AND status = ?
    LIMIT 5000
)
"""
# How ``list`` reaches the tasks of an active status: through its partial index, which holds
# only them (the planner would read the table in id order, through every finished task kept
# for history, before finding a queued one). Finished tasks are usually most of the table, so
# they are read in id order, which stops after ``limit`` matches (an index over them would
# sort them all first).
#: The final statuses' values, from the model (``check`` binds them).
FINAL_STATUSES = tuple(s.value for s in TaskStatus if s.is_terminal)
SQL_LIST_QUEUED = "FROM tasks INDEXED BY tasks_due WHERE status = 'queued'"
SQL_LIST_RUNNING = "FROM tasks INDEXED BY tasks_lease WHERE status = 'running'"
#: The filters a listing may add to each part (each binds one value).
FILTER_TYPE = " AND task_type = ?"
FILTER_QUEUE = " AND queue = ?"
FILTER_AFTER_ID = " AND id > ?"
FILTER_BEFORE_ID = " AND id < ?"

# Each part reads one index: the active statuses their partial indexes, the final ones
# ``tasks_terminal`` (one statement, so one snapshot; none reads the table's rows for a count).
SQL_COUNTS = """
SELECT 'queued', count(*) FROM tasks WHERE status = 'queued'
UNION ALL SELECT 'running', count(*) FROM tasks WHERE status = 'running'
UNION ALL SELECT status, count(*) FROM tasks WHERE finished_at IS NOT NULL GROUP BY status
"""
SQL_COUNTS_BY_TYPE = """
SELECT task_type, 'queued', count(*) FROM tasks WHERE status = 'queued' GROUP BY task_type
UNION ALL
SELECT task_type, 'running', count(*) FROM tasks WHERE status = 'running' GROUP BY task_type
UNION ALL
SELECT task_type, status, count(*) FROM tasks WHERE finished_at IS NOT NULL
GROUP BY task_type, status
"""
SQL_OLDEST_QUEUED = "SELECT min(run_after) FROM tasks INDEXED BY tasks_due WHERE status = 'queued' AND run_after <= ?"

SQL_WORKER_UPSERT = """
INSERT INTO workers (worker_id, hostname, pid, queues, concurrency, started_at, heartbeat_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (worker_id) DO UPDATE SET
    hostname = excluded.hostname, pid = excluded.pid, queues = excluded.queues,
    concurrency = excluded.concurrency, started_at = excluded.started_at,
    heartbeat_at = excluded.heartbeat_at, stopped_at = NULL, processed = 0
"""
SQL_WORKER_BEAT = (
    "UPDATE workers SET heartbeat_at = ?, processed = processed + ? WHERE worker_id = ?"
)
SQL_WORKER_STOP = "UPDATE workers SET stopped_at = ?, heartbeat_at = ? WHERE worker_id = ?"
SQL_WORKERS = """
SELECT worker_id, hostname, pid, queues, concurrency, started_at, heartbeat_at, stopped_at,
       processed
FROM workers ORDER BY started_at
"""
#: The same, one record at a time (to step past a record whose text is not UTF-8).
SQL_WORKER_ROWIDS = "SELECT rowid FROM workers ORDER BY started_at"
SQL_WORKER_BY_ROWID = """
SELECT worker_id, hostname, pid, queues, concurrency, started_at, heartbeat_at, stopped_at,
       processed
FROM workers WHERE rowid = ?
"""
SQL_PRUNE_WORKERS = "DELETE FROM workers WHERE heartbeat_at < ?"

#: ``ORDER BY`` terms for each sort key; AGED_PRIORITY binds ``(now, aging_us)``.
ORDER_TERMS: dict[SortKey, str] = {
    SortKey.PRIORITY: "priority ASC",
    SortKey.AGED_PRIORITY: "(priority - (? - run_after) * 1.0 / ?) ASC",
    SortKey.DUE: "run_after ASC",
    SortKey.FIFO: "run_after ASC, id ASC",
    SortKey.LIFO: "run_after DESC, id DESC",
}


# -- reads for reports (metrics, exporters, the health summary) ------------------------------

# The partial index over queued tasks (queue, run_after, id) covers this query; the planner
# could otherwise pick the other one over queued tasks and read every queued row (15x slower
# with a backlog of 50,000). If the index is ever renamed, SQLite refuses the statement
# outright ("no query solution"), so the tests notice.
SQL_QUEUED_BY_QUEUE = """
SELECT queue,
       sum(run_after <= ?) AS due,
       sum(run_after > ?) AS delayed,
       min(CASE WHEN run_after <= ? THEN run_after END) AS oldest_due
FROM tasks INDEXED BY tasks_due
WHERE status = 'queued'
GROUP BY queue
"""
SQL_RUNNING_BY_QUEUE = "SELECT queue, count(*) FROM tasks WHERE status = 'running' GROUP BY queue"
SQL_FINISHED_SINCE = "SELECT count(*) FROM tasks WHERE finished_at >= ?"
SQL_RECENT_FINISHED = """
SELECT status, task_type, attempts, max_attempts, started_at, finished_at
FROM tasks
WHERE finished_at >= ?
ORDER BY finished_at DESC
LIMIT ?
"""
SQL_WAITING_RETRY = "SELECT count(*) FROM tasks WHERE status = 'queued' AND attempts > 0"
#: Due queued tasks, and running tasks whose lease has expired, by queue name.
SQL_DUE_QUEUES = """
SELECT DISTINCT queue FROM tasks
WHERE (status = 'queued' AND run_after <= ? AND queue NOT IN (SELECT queue FROM paused_queues))
   OR (status = 'running' AND lease_expires_at <= ?)
ORDER BY queue
"""

# -- consistency checks (``check``) ----------------------------------------------------------

SQL_INTEGRITY = "PRAGMA integrity_check"
SQL_RUNNING_UNOWNED = (
    "SELECT id FROM tasks WHERE status = 'running' "
    "AND (locked_by IS NULL OR lease_expires_at IS NULL)"
)
SQL_ATTEMPTS_OVER = "SELECT id, attempts, max_attempts FROM tasks WHERE attempts > max_attempts"
#: Tasks whose ``finished_at`` disagrees with their status (counts and the history index
#: rely on it being set exactly for the final statuses); binds ``FINAL_STATUSES``.
SQL_FINISHED_MISMATCH = (
    "SELECT id, status, finished_at FROM tasks "
    f"WHERE (status IN ({', '.join('?' * len(FINAL_STATUSES))})) <> (finished_at IS NOT NULL)"
)
SQL_VACUUM = "VACUUM"

# -- raw rows (hookqueue copy) ---------------------------------------------------------------

SQL_EXPORT = f"SELECT {COLS} FROM tasks WHERE id > ? ORDER BY id LIMIT ?"
#: Ids given explicitly: AUTOINCREMENT's sequence moves past the largest by itself.
SQL_IMPORT = f"INSERT INTO tasks ({COLS}) VALUES ({', '.join('?' * len(TASK_COLUMNS))})"


# -- statements assembled from constant pieces ------------------------------------------------


def placeholders(n: int) -> str:
    """``?, ?, …`` (n of them) for an ``IN (…)`` list."""
    return ", ".join("?" * n)


@functools.lru_cache(maxsize=128)
def sql_get_many(n: int) -> str:
    """The rows of ``n`` ids, in one statement."""
    return f"SELECT {COLS} FROM tasks WHERE id IN ({placeholders(n)})"


def _type_filter(n_types: int | None) -> str:
    return "" if n_types is None else f" AND task_type IN ({placeholders(n_types)})"


#: Leases, wake-ups and due checks leave paused queues alone (read in the same statement).
NOT_PAUSED = " AND queue NOT IN (SELECT queue FROM paused_queues)"


@functools.lru_cache(maxsize=128)
def sql_any_due_in_queue(n_types: int | None) -> str:
    """Is a task (of ``n_types`` bound types, or any) due in one queue? Binds
    ``queue, due_us[, *types]``."""
    return (
        "SELECT 1 FROM tasks WHERE status = 'queued' AND queue = ? AND run_after <= ?"
        f"{_type_filter(n_types)}{NOT_PAUSED} LIMIT 1"
    )


@functools.lru_cache(maxsize=64)
def sql_next_due(n_queues: int) -> str:
    """The earliest future ``run_after`` in ``n_queues`` queues; binds ``*queues, due_us``."""
    return (
        "SELECT min(run_after) FROM tasks WHERE status = 'queued' "
        f"AND queue IN ({placeholders(n_queues)}) AND run_after > ?{NOT_PAUSED}"
    )


#: The shape of a :class:`~hookqueue.core.models.TaskFilter` query: which parts and
#: conditions it has, and how many values each ``IN`` list binds (see :func:`sql_matching`).
FilterShape = tuple[bool, bool, int, bool, int, int, int, bool, bool, bool, bool, bool, int]


def _filter_conditions(shape: FilterShape) -> str:
    _, _, _, _, n_types, n_queues, n_ids, error, after, before, finished, max_id, page = shape
    return (
        (f" AND task_type IN ({placeholders(n_types)})" if n_types else "")
        + (f" AND queue IN ({placeholders(n_queues)})" if n_queues else "")
        + (f" AND id IN ({placeholders(n_ids)})" if n_ids else "")
        + (" AND instr(lower(error_message), lower(?)) > 0" if error else "")
        + (" AND created_at >= ?" if after else "")
        + (" AND created_at < ?" if before else "")
        + (" AND finished_at < ?" if finished else "")
        + (" AND id <= ?" if max_id else "")
        + (" AND id > ?" if page > 0 else " AND id < ?" if page < 0 else "")
    )


@functools.lru_cache(maxsize=256)
def sql_matching(shape: FilterShape, select: str, tail: str) -> str:
    """A query over the tasks a filter matches, one part per way in (each active status
    through its partial index, the final statuses through the history index, or the whole
    table when no status is asked for), each with the filter's conditions.

    ``select`` is one of :data:`MATCH_SELECTS` (the columns) and ``tail`` one of
    :data:`MATCH_TAILS` (order and limit). Binds, per part in that order, ``[*final
    statuses,] [*types,] [*queues,] [*ids,] [error,] [created after,] [created before,]
    [finished before,] [max id,] [page id,]`` (the page id: ids above it when the shape's
    last item is 1, below it when -1), then the tail's ``limit``."""
    queued, running, n_final, any_status = shape[:4]
    cols = MATCH_SELECTS[select]
    conditions = _filter_conditions(shape)
    parts: list[str] = []
    if queued:
        parts.append(f"SELECT {cols} {SQL_LIST_QUEUED}{conditions}")
    if running:
        parts.append(f"SELECT {cols} {SQL_LIST_RUNNING}{conditions}")
    if n_final:
        # The ids of a bulk action's batches walk the id range (``+status`` keeps SQLite off
        # the status index): through the index each batch sorted every remaining match by
        # id, so a batch cost grew with the matches (0.76 s at 10⁶ finished tasks); by id the
        # batches read the range once in all. With a task type the (status, task_type) index
        # already yields ids in order.
        status = "+status" if select == "ids" and not shape[4] else "status"
        parts.append(
            f"SELECT {cols} FROM tasks WHERE finished_at IS NOT NULL "
            f"AND {status} IN ({placeholders(n_final)}){conditions}"
        )
    if any_status:
        parts.append(f"SELECT {cols} FROM tasks WHERE 1{conditions}")
    union = " UNION ALL ".join(parts)
    if select == "count":
        return f"SELECT count(*) FROM ({union})"
    return union + MATCH_TAILS[tail]


#: What a filtered query selects.
MATCH_SELECTS = {"tasks": COLS, "ids": "id", "count": "id"}
#: How a filtered query ends: nothing (a count), or an order and a limit (binds ``limit``).
MATCH_TAILS = {"": "", "oldest": " ORDER BY id ASC LIMIT ?", "newest": " ORDER BY id DESC LIMIT ?"}

#: Finished tasks per time bucket and status since an instant: binds ``since, bucket_us,
#: since`` (``tasks_finished`` answers the range).
SQL_FINISHED_BUCKETS = """
SELECT (finished_at - ?) / ? AS bucket, status, count(*)
FROM tasks INDEXED BY tasks_finished
WHERE finished_at >= ?
GROUP BY bucket, status
ORDER BY bucket
"""


@functools.lru_cache(maxsize=64)
def sql_cancel_queued_ids(n: int) -> str:
    """Cancel the queued tasks among ``n`` ids; binds ``error, finished_at, *ids``; returns
    their ids (the rows are read after: a row that is not UTF-8 cannot stop the batch)."""
    return (
        "UPDATE tasks SET status = 'cancelled', error_message = ?, finished_at = ? "
        f"WHERE status = 'queued' AND id IN ({placeholders(n)}) RETURNING id"
    )


@functools.lru_cache(maxsize=64)
def sql_flag_running_ids(n: int) -> str:
    """Ask the workers of the running tasks among ``n`` ids to cancel them; binds ``*ids``;
    returns their ids."""
    return (
        "UPDATE tasks SET cancel_requested = 1 "
        f"WHERE status = 'running' AND id IN ({placeholders(n)}) RETURNING id"
    )


@functools.lru_cache(maxsize=64)
def sql_requeue_ids(n: int) -> str:
    """Put the failed and cancelled tasks among ``n`` ids back to queued with a fresh
    attempt count; binds ``run_after, *ids``; returns their ids."""
    return (
        "UPDATE tasks SET status = 'queued', attempts = 0, run_after = ?, finished_at = NULL, "
        "started_at = NULL, cancel_requested = 0, result = NULL, error_message = NULL "
        f"WHERE status IN ('failed', 'cancelled') AND id IN ({placeholders(n)}) RETURNING id"
    )


@functools.lru_cache(maxsize=64)
def sql_delete_ids(n: int) -> str:
    """Delete the queued and finished tasks among ``n`` ids (never a running one); binds
    ``*ids``."""
    return f"DELETE FROM tasks WHERE status <> 'running' AND id IN ({placeholders(n)})"


@functools.lru_cache(maxsize=256)
def sql_list(
    *,
    queued: bool,
    running: bool,
    n_final: int,
    any_status: bool,
    by_type: bool,
    by_queue: bool,
    after_id: bool,
    newest: bool,
    ids_only: bool = False,
) -> str:
    """A listing: one part per way in — each active status through its partial index, the
    final statuses together in id order (see ``SQL_LIST_QUEUED``), or the whole table when
    no status is asked for — each with the same filters.

    Binds, per part in that order, ``[*final statuses,] [task_type,] [queue,] [after_id,]``,
    then ``limit``. ``ids_only`` selects only the ids (integers always decode: the way round
    rows whose text is not valid UTF-8)."""
    cols = "id" if ids_only else COLS
    filters = (
        (FILTER_TYPE if by_type else "")
        + (FILTER_QUEUE if by_queue else "")
        + ((FILTER_BEFORE_ID if newest else FILTER_AFTER_ID) if after_id else "")
    )
    parts: list[str] = []
    if queued:
        parts.append(f"SELECT {cols} {SQL_LIST_QUEUED}{filters}")
    if running:
        parts.append(f"SELECT {cols} {SQL_LIST_RUNNING}{filters}")
    if n_final:
        parts.append(f"SELECT {cols} FROM tasks WHERE status IN ({placeholders(n_final)}){filters}")
    if any_status:
        parts.append(f"SELECT {cols} FROM tasks WHERE 1{filters}")
    order = " ORDER BY id DESC" if newest else " ORDER BY id ASC"
    return " UNION ALL ".join(parts) + order + " LIMIT ?"


#: The lease's SET clause; binds ``worker_id, lease_expires_at, started_at``.
_LEASE_SET = (
    "UPDATE tasks SET status = 'running', attempts = attempts + 1, locked_by = ?, "
    "lease_expires_at = ?, started_at = ?, cancel_requested = 0 "
)


def order_by(keys: tuple[SortKey, ...]) -> str:
    """The ``ORDER BY`` terms of a plan's sort keys. Ties go in due order, then enqueue
    order: "priority, run_after, id" is exactly the ``tasks_ready`` index's order, so a
    priority lease reads the index in order."""
    terms = [ORDER_TERMS[SortKey(k)] for k in keys]
    if not any(k in (SortKey.FIFO, SortKey.LIFO) for k in keys):
        terms.append(ORDER_TERMS[SortKey.FIFO])
    return ", ".join(terms)


def _due_clause(keys: tuple[SortKey, ...]) -> str:
    # When the order does not start with time, "+run_after" keeps SQLite from turning the due
    # filter into an index range (a skip-scan that loses the order and sorts every due task);
    # the index is then read in order and the filter checked row by row.
    if keys and keys[0] in (SortKey.FIFO, SortKey.DUE, SortKey.LIFO):
        return "run_after <= ?"
    return "+run_after <= ?"


@functools.lru_cache(maxsize=256)
def sql_lease(keys: tuple[SortKey, ...], n_queues: int, n_types: int | None) -> str:
    """Lease the first ``limit`` due tasks in the plan's order in one statement. Binds
    ``worker_id, lease_expires_at, started_at, *queues, due_us[, *types], *order params,
    limit``; returns the leased ids."""
    return (
        f"{_LEASE_SET} WHERE id IN (SELECT id FROM tasks WHERE status = 'queued' "
        f"AND queue IN ({placeholders(n_queues)}) AND {_due_clause(keys)}"
        f"{_type_filter(n_types)}{NOT_PAUSED} ORDER BY {order_by(keys)} LIMIT ?) RETURNING id"
    )


@functools.lru_cache(maxsize=256)
def sql_lease_window(
    keys: tuple[SortKey, ...], n_queues: int, n_types: int | None, partition: bool
) -> str:
    """The candidate window of a re-ranking plan: ``id, task_type, priority, queue,
    created_at, run_after, partition`` of the first ``window`` due tasks in order. Binds
    ``[partition path,] *queues, due_us[, *types], *order params, window, *order params``.

    The ids are chosen through the same index-friendly subquery as a plain lease, then their
    columns fetched."""
    # Selecting the columns directly made SQLite sort every due task first (measured in the
    # schedulers' benchmark: docs/performance.md).
    # The value as JSON text (``->``: an object stays an object, true stays true), and NULL
    # for a payload that is not JSON: one damaged row must not fail every lease.
    part = "CASE WHEN json_valid(payload) THEN payload -> ? END" if partition else "NULL"
    order = order_by(keys)
    return (
        f"SELECT id, task_type, priority, queue, created_at, run_after, {part} "
        f"FROM tasks WHERE id IN (SELECT id FROM tasks WHERE status = 'queued' "
        f"AND queue IN ({placeholders(n_queues)}) AND {_due_clause(keys)}"
        f"{_type_filter(n_types)}{NOT_PAUSED} ORDER BY {order} LIMIT ?) ORDER BY {order}"
    )


#: What a window may be drawn per (``LeasePlan.group_by``, the closed
#: ``models.WINDOW_GROUPS``): a column of the due tasks, or their partition value.
WINDOW_GROUP_TERMS: dict[str, str] = {
    "task_type": "task_type",
    "queue": "queue",
    "priority": "priority",
    "partition": "part",
}


@functools.lru_cache(maxsize=256)
def sql_lease_window_grouped(
    keys: tuple[SortKey, ...], n_queues: int, n_types: int | None, partition: bool, group_by: str
) -> str:
    """The candidate window of a plan with ``group_by``: the same columns as
    :func:`sql_lease_window`, drawn per group — each group's first due task in order, then
    each group's second, …, the first ``window`` of those — and returned in order. Binds
    ``[partition path,] *queues, due_us[, *types], *order params, *order params, window,
    *order params``.

    Every due task is numbered within its group, so the read grows with the number of due
    tasks (not with the window): that is the price of never missing a group behind another
    group's backlog (docs/performance.md)."""
    part = "CASE WHEN json_valid(payload) THEN payload -> ? END" if partition else "NULL"
    group = WINDOW_GROUP_TERMS[group_by]
    order = order_by(keys)
    return (
        f"WITH due AS (SELECT id, task_type, priority, queue, created_at, run_after, "
        f"{part} AS part FROM tasks WHERE status = 'queued' "
        f"AND queue IN ({placeholders(n_queues)}) AND run_after <= ?"
        f"{_type_filter(n_types)}{NOT_PAUSED}), "
        f"ranked AS (SELECT *, row_number() OVER (PARTITION BY {group} ORDER BY {order}) AS rn "
        f"FROM due) "
        f"SELECT id, task_type, priority, queue, created_at, run_after, part FROM "
        f"(SELECT * FROM ranked ORDER BY rn, {order} LIMIT ?) ORDER BY {order}"
    )


@functools.lru_cache(maxsize=128)
def sql_lease_chosen(n: int) -> str:
    """Lease these ``n`` ids if they are still queued (a re-ranked window's choice). Binds
    ``worker_id, lease_expires_at, started_at, *ids``; returns the leased ids."""
    return f"{_LEASE_SET} WHERE status = 'queued' AND id IN ({placeholders(n)}) RETURNING id"


# -- periodic schedules ------------------------------------------------------------------------

#: The schedule columns in ``ScheduleRow`` order.
SCHEDULE_COLS = (
    "name, definition, timing, overlap, source, paused, revision, next_tick, last_tick, "
    "last_task_id, fired, skipped, created_at, updated_at, declared_at"
)
SQL_SCHEDULE_GET = f"SELECT {SCHEDULE_COLS} FROM schedules WHERE name = ?"
SQL_SCHEDULES_ALL = f"SELECT {SCHEDULE_COLS} FROM schedules ORDER BY name"
#: Due schedules, through the partial index over the unpaused ones' next ticks.
SQL_SCHEDULES_DUE = f"""
SELECT {SCHEDULE_COLS} FROM schedules INDEXED BY schedules_due
WHERE paused = 0 AND next_tick <= ?
ORDER BY next_tick, name
"""
SQL_SCHEDULE_NEXT = "SELECT min(next_tick) FROM schedules WHERE paused = 0"
SQL_SCHEDULE_INSERT = """
INSERT INTO schedules (name, definition, timing, overlap, source, paused, next_tick,
                       created_at, updated_at, declared_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
SQL_SCHEDULE_REDEFINE = """
UPDATE schedules SET definition = ?, timing = ?, overlap = ?, source = ?, next_tick = ?,
                     revision = revision + 1, updated_at = ?
WHERE name = ?
"""
SQL_SCHEDULE_DECLARED = "UPDATE schedules SET declared_at = ? WHERE name = ?"
SQL_SCHEDULE_PAUSE = f"""
UPDATE schedules SET paused = 1, revision = revision + 1, updated_at = ?
WHERE name = ? AND paused = 0
RETURNING {SCHEDULE_COLS}
"""
SQL_SCHEDULE_RESUME = f"""
UPDATE schedules SET paused = 0, next_tick = ?, revision = revision + 1, updated_at = ?
WHERE name = ? AND paused = 1
RETURNING {SCHEDULE_COLS}
"""
SQL_SCHEDULE_DELETE = "DELETE FROM schedules WHERE name = ?"
SQL_SCHEDULE_TICKS_DELETE = "DELETE FROM schedule_ticks WHERE schedule = ?"
#: What ``fire_ticks`` compares before it takes the write lock (a request read before another
#: process fired the same ticks needs no write transaction at all).
SQL_SCHEDULE_STATE = "SELECT next_tick, revision, paused FROM schedules WHERE name = ?"
#: Take one step of a schedule if it is as the firing process read it; binds
#: ``new next_tick, name, expected next_tick, expected revision``.
SQL_SCHEDULE_CLAIM = """
UPDATE schedules SET next_tick = ?
WHERE name = ? AND next_tick = ? AND revision = ? AND paused = 0
RETURNING overlap, last_task_id
"""
SQL_SCHEDULE_FIRED = """
UPDATE schedules SET last_tick = coalesce(?, last_tick), last_task_id = coalesce(?, last_task_id),
                     fired = fired + ?, skipped = skipped + ?
WHERE name = ?
"""
SQL_TICK_EXISTS = "SELECT 1 FROM schedule_ticks WHERE schedule = ? AND tick = ?"
#: A tick's mark; the primary key (schedule, tick) refuses a second one.
SQL_TICK_INSERT = (
    "INSERT INTO schedule_ticks (schedule, tick, task_id, fired_at) VALUES (?, ?, ?, ?)"
)
SQL_TASK_ACTIVE = "SELECT 1 FROM tasks WHERE id = ? AND status IN ('queued', 'running')"
SQL_PRUNE_TICKS = "DELETE FROM schedule_ticks WHERE fired_at < ?"
