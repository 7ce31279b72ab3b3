"""Every SQL statement the PostgreSQL store runs, by name.

Each is a constant string with ``%(name)s`` parameters (bound by psycopg, server-side) and
``{t}``/``{w}``/``{m}``/``{f}``/``{p}``/``{sc}``/``{k}``/``{tw}``/``{s}``/``{part}``/``{nw}``
where the schema-qualified names go: those are
filled once per store by :class:`Statements` with :class:`psycopg.sql.Identifier`, never from
a value. Lists travel as arrays (``= ANY(%(ids)s)``, ``unnest(...)``), so a statement's text
does not depend on how many values it carries and is prepared once per connection.

The only SQL chosen at run time is assembled by the functions at the end from constant
pieces: ``ORDER BY`` terms from the closed :class:`~hookqueue.core.models.SortKey`
vocabulary, one queue (``queue = %(queue)s``, which reads the partial indexes in order) or
several (one ``LATERAL`` probe per queue: ``queue = ANY(...)`` loses the index order),
whether a task-type filter or a partition value is asked for, and which conditions of a
:class:`~hookqueue.core.models.TaskFilter` a filtered query has.
"""

from __future__ import annotations

import functools

from psycopg import sql

from hookqueue.core.models import TASK_COLUMNS, SortKey

#: How names are ordered: byte by byte, as SQLite's BINARY collation orders them (``'Zeta'``,
#: ``'_x'``, ``'alpha'``, ``'Ärger'``), whatever the database's collation — a language-aware
#: one (ICU, or a libc locale) would list ``'_x'``, ``'alpha'``, ``'Ärger'``, ``'Zeta'``.
#: Written into each ``ORDER BY`` over text rather than declared on the columns: changing a
#: column's collation rebuilds its indexes under an exclusive lock and changes the result
#: type of the statements other sessions have prepared (PostgreSQL then refuses them,
#: "cached plan must not change result type", until they reconnect), to gain an index order
#: that none of these sorts of a few names needs. Equality is the same under every
#: deterministic collation, so only orderings need it.
BYTES = 'COLLATE "C"'

#: The task columns in ``Task.from_row`` order.
COLS = ", ".join(TASK_COLUMNS)
#: The same, qualified by the alias ``t`` (for ``UPDATE ... FROM`` statements).
T_COLS = ", ".join(f"t.{c}" for c in TASK_COLUMNS)
#: The columns an insert gives (``id`` comes from the identity).
INSERT_COLS = (
    "queue, task_type, payload, priority, status, attempts, max_attempts, run_after, "
    "idempotency_key, timeout_seconds, headers, created_at, locked_by, lease_expires_at, "
    "started_at"
)

#: The instant due times are compared with: ``now``, or the newest task's enqueue instant if
#: that is later (the SQLite store's ``_due_us``). Uncorrelated, so PostgreSQL evaluates it
#: once per statement and can use it as an index bound.
DUE_AT = (
    "greatest(%(now)s::bigint, coalesce((SELECT created_at FROM {t} ORDER BY id DESC LIMIT 1), 0))"
)

#: The due instant alone (to order fetched rows by aging as the lease statement did).
DUE_NOW = "SELECT " + DUE_AT

INSERT_ONE = (
    "WITH ins AS (INSERT INTO {t} (" + INSERT_COLS + ") VALUES "
    "(%(queue)s, %(task_type)s, %(payload)s, %(priority)s, 'queued', 0, %(max_attempts)s, "
    "%(run_after)s, NULL, %(timeout)s, %(headers)s, %(now)s, NULL, NULL, NULL) "
    "RETURNING id, queue) "
    "SELECT id, pg_notify(%(channel)s, queue) FROM ins"
)

#: A batch in one statement: rows in order (ids are drawn in that order), keys deduplicated
#: by the unique index (a key already held, or repeated in the batch, inserts nothing), new
#: tasks claimed by a worker when ``claim`` is given, and one notification per queue of
#: queued tasks. Returns the new ids with their keys, ascending.
INSERT_BATCH = (
    "WITH r AS (SELECT * FROM unnest(%(queue)s::text[], %(task_type)s::text[], "
    "%(payload)s::text[], %(priority)s::bigint[], %(max_attempts)s::bigint[], "
    "%(run_after)s::bigint[], %(key)s::text[], %(timeout)s::float8[], %(headers)s::text[]) "
    "WITH ORDINALITY AS r(queue, task_type, payload, priority, max_attempts, run_after, "
    "idempotency_key, timeout_seconds, headers, ord)), "
    "ins AS (INSERT INTO {t} (" + INSERT_COLS + ") "
    "SELECT queue, task_type, payload, priority, "
    "CASE WHEN %(claim)s::text IS NULL THEN 'queued' ELSE 'running' END, "
    "CASE WHEN %(claim)s::text IS NULL THEN 0 ELSE 1 END, "
    "max_attempts, run_after, idempotency_key, timeout_seconds, headers, %(now)s::bigint, "
    "%(claim)s::text, %(until)s::bigint, "
    "CASE WHEN %(claim)s::text IS NULL THEN NULL ELSE %(now)s::bigint END "
    "FROM r ORDER BY ord "
    "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
    "RETURNING id, idempotency_key, queue), "
    "woken AS (SELECT pg_notify(%(channel)s, q) FROM "
    "(SELECT DISTINCT queue AS q FROM ins WHERE %(claim)s::text IS NULL) AS x) "
    "SELECT id, idempotency_key, (SELECT count(*) FROM woken) FROM ins ORDER BY id"
)
#: Finished tasks whose key window has passed let go of their keys (same transaction as the
#: insert that follows, so a new task takes the key).
FORGET_KEYS = (
    "UPDATE {t} SET idempotency_key = NULL "
    "WHERE idempotency_key = ANY(%(keys)s) AND finished_at IS NOT NULL "
    "AND finished_at + %(window)s::bigint <= %(now)s::bigint"
)
GET_BY_KEYS = "SELECT " + COLS + " FROM {t} WHERE idempotency_key = ANY(%(keys)s)"

GET = "SELECT " + COLS + " FROM {t} WHERE id = %(id)s"
GET_MANY = "SELECT " + COLS + " FROM {t} WHERE id = ANY(%(ids)s)"
GET_BY_KEY = "SELECT " + COLS + " FROM {t} WHERE idempotency_key = %(key)s"
LOCK_ONE = "SELECT status FROM {t} WHERE id = %(id)s FOR UPDATE"

# -- settle -------------------------------------------------------------------------------

#: The waiters of the tasks a statement ended, told in that statement (see ``WAITS_SET``):
#: a CTE over the CTE ``{src}`` of changed rows, to be read by the statement's result.
_WAITED = (
    "waited AS (SELECT {{nw}}(array_agg(id), %(done)s) AS n FROM {src} "
    "WHERE status IN ('completed', 'failed', 'cancelled'))"
)

#: A running task of ``{src}`` left ``running`` under a stored concurrency rule: its slot is
#: free, so the workers it held back are told (the work channel, its queue) — tasks no
#: stored rule counts notify nobody, as before limits. (Rules a plan carries without storing
#: them are not known here: their workers see freed slots at their next look.)
_FREES_SLOT = (
    "EXISTS (SELECT 1 FROM {{lim}} AS l WHERE l.concurrency IS NOT NULL "
    "AND (l.queue IS NULL OR l.queue = {src}.queue) "
    "AND (l.task_type IS NULL OR l.task_type = {src}.task_type))"
)

_GAVE_UP = "(NOT t.cancel_requested AND t.attempts >= t.max_attempts)"
_RETRY_QUEUED = "(NOT t.cancel_requested AND t.attempts < t.max_attempts)"

#: Every kind of outcome in one statement: written only while the worker holds the lease,
#: its heartbeat and ``processed`` count updated, requeued work announced, and each failed,
#: retried or cancelled attempt added to the task's history (with its traceback). Returns,
#: in the order given, ``kind, held`` and the task's columns (``payload`` and ``headers``
#: NULL where the worker holds the task: they never change).
SETTLE = (
    "WITH s AS (SELECT * FROM unnest(%(ids)s::bigint[], %(kinds)s::text[], "
    "%(results)s::text[], %(errors)s::text[], %(run_after)s::bigint[], %(held)s::boolean[], "
    "%(tracebacks)s::text[]) "
    "WITH ORDINALITY AS s(id, kind, result, error, run_after, held, traceback, ord)), "
    "settled AS (UPDATE {t} AS t SET "
    "status = CASE s.kind WHEN 'complete' THEN 'completed' WHEN 'fail' THEN 'failed' "
    "WHEN 'cancelled' THEN 'cancelled' WHEN 'release' THEN 'queued' "
    "ELSE CASE WHEN t.cancel_requested THEN 'cancelled' "
    "WHEN t.attempts < t.max_attempts THEN 'queued' ELSE 'failed' END END, "
    "result = CASE WHEN s.kind = 'complete' THEN s.result ELSE t.result END, "
    "error_message = CASE WHEN s.kind IN ('complete', 'release') THEN t.error_message "
    "WHEN s.kind = 'cancelled' THEN coalesce(nullif(s.error, ''), 'cancelled by request') "
    "WHEN s.kind = 'retry' AND " + _GAVE_UP + " THEN "
    "coalesce(s.error, 'None') || ' (gave up: no attempts left)' "
    "ELSE s.error END, "
    "run_after = CASE WHEN s.kind = 'retry' AND " + _RETRY_QUEUED + " "
    "THEN coalesce(s.run_after, %(now)s::bigint) ELSE t.run_after END, "
    "attempts = CASE WHEN s.kind = 'release' THEN greatest(t.attempts - 1, 0) "
    "ELSE t.attempts END, "
    "started_at = CASE WHEN s.kind = 'release' THEN NULL ELSE t.started_at END, "
    "finished_at = CASE WHEN s.kind IN ('complete', 'fail', 'cancelled') "
    "OR (s.kind = 'retry' AND NOT " + _RETRY_QUEUED + ") THEN %(now)s::bigint ELSE NULL END, "
    "locked_by = NULL, lease_expires_at = NULL "
    "FROM s WHERE t.id = s.id AND t.status = 'running' AND t.locked_by = %(worker)s "
    "RETURNING s.ord AS ord, s.kind AS kind, s.held AS held, t.id AS id, t.queue AS queue, "
    "t.task_type AS task_type, CASE WHEN s.held THEN NULL ELSE t.payload END AS payload, "
    "t.priority AS priority, t.status AS status, t.attempts AS attempts, "
    "t.max_attempts AS max_attempts, t.run_after AS run_after, "
    "t.idempotency_key AS idempotency_key, t.error_message AS error_message, "
    "t.result AS result, t.locked_by AS locked_by, t.lease_expires_at AS lease_expires_at, "
    "t.cancel_requested AS cancel_requested, t.timeout_seconds AS timeout_seconds, "
    "CASE WHEN s.held THEN NULL ELSE t.headers END AS headers, t.created_at AS created_at, "
    "t.started_at AS started_at, t.finished_at AS finished_at, s.error AS given_error, "
    "s.traceback AS traceback), "
    "failures AS (INSERT INTO {f} (task_id, attempt, at, worker_id, outcome, error, traceback) "
    "SELECT id, attempts, %(now)s::bigint, %(worker)s, outcome, "
    "left(coalesce(nullif(error_message, ''), nullif(given_error, ''), outcome), 10000), "
    "traceback FROM (SELECT *, CASE WHEN status = 'queued' THEN 'retry_scheduled' "
    "ELSE status END AS outcome FROM settled WHERE kind IN ('fail', 'retry', 'cancelled')) "
    "AS x ORDER BY ord), "
    "beat AS (UPDATE {w} SET heartbeat_at = %(now)s::bigint, "
    "processed = processed + (SELECT count(*) FROM settled WHERE kind <> 'release') "
    "WHERE worker_id = %(worker)s AND EXISTS (SELECT 1 FROM settled)), "
    "woken AS (SELECT pg_notify(%(channel)s, q) FROM "
    "(SELECT DISTINCT queue AS q FROM settled WHERE status = 'queued' OR "
    + _FREES_SLOT.format(src="settled")
    + ") AS x), "
    + _WAITED.format(src="settled")
    + " SELECT kind, held, "
    + COLS
    + ", (SELECT count(*) FROM woken), "
    "(SELECT n FROM waited) FROM settled ORDER BY ord"
)

# -- expired leases -----------------------------------------------------------------------

#: Locked, so two workers sweeping at once never decide about the same task.
EXPIRED = (
    "SELECT " + COLS + " FROM {t} WHERE status = 'running' AND lease_expires_at <= %(now)s "
    "ORDER BY lease_expires_at, id LIMIT 256 FOR UPDATE SKIP LOCKED"
)
#: Apply the decisions about expired leases (requeue, or end: cancelled if that was
#: requested, else failed), guarded like the SQLite store's, each recorded in its task's
#: history with the worker that held the lease; returns rows in the order given.
EXPIRE = (
    "WITH d AS (SELECT * FROM unnest(%(ids)s::bigint[], %(requeue)s::boolean[], "
    "%(run_after)s::bigint[], %(messages)s::text[], %(workers)s::text[]) "
    "WITH ORDINALITY AS d(id, requeue, run_after, message, worker, ord)), "
    "done AS (UPDATE {t} AS t SET "
    "status = CASE WHEN d.requeue THEN 'queued' WHEN t.cancel_requested THEN 'cancelled' "
    "ELSE 'failed' END, "
    "run_after = CASE WHEN d.requeue THEN d.run_after ELSE t.run_after END, "
    "error_message = d.message, "
    "finished_at = CASE WHEN d.requeue THEN NULL ELSE %(now)s::bigint END, "
    "cancel_requested = CASE WHEN d.requeue THEN false ELSE t.cancel_requested END, "
    "locked_by = NULL, lease_expires_at = NULL "
    "FROM d WHERE t.id = d.id AND t.status = 'running' AND t.lease_expires_at <= %(now)s "
    "RETURNING d.ord AS ord, d.worker AS worker, " + T_COLS + "), "
    "hist AS (INSERT INTO {f} (task_id, attempt, at, worker_id, outcome, error) "
    "SELECT id, attempts, %(now)s::bigint, worker, 'lease_expired', "
    "coalesce(error_message, '') FROM done ORDER BY ord), "
    "woken AS (SELECT pg_notify(%(channel)s, q) FROM "
    "(SELECT DISTINCT queue AS q FROM done WHERE status = 'queued' OR "
    + _FREES_SLOT.format(src="done")
    + ") AS x), "
    + _WAITED.format(src="done")
    + " SELECT "
    + COLS
    + ", (SELECT count(*) FROM woken), (SELECT n FROM waited) "
    "FROM done ORDER BY ord"
)
FAIL_DAMAGED = (
    "WITH ended AS (UPDATE {t} SET status = 'failed', error_message = %(message)s, "
    "finished_at = %(now)s::bigint, locked_by = NULL, lease_expires_at = NULL "
    "WHERE id = %(id)s RETURNING id, status), "
    + _WAITED.format(src="ended")
    + " SELECT n FROM waited"
)

# -- renew, cancel, requeue ---------------------------------------------------------------

RENEW = (
    "WITH r AS (UPDATE {t} SET lease_expires_at = %(until)s::bigint "
    "WHERE id = ANY(%(ids)s) AND status = 'running' AND locked_by = %(worker)s "
    "RETURNING id, cancel_requested), "
    "b AS (UPDATE {w} SET heartbeat_at = %(now)s::bigint WHERE worker_id = %(worker)s) "
    "SELECT id, cancel_requested FROM r"
)
#: Tasks cancelled or deleted by hand tell every waiter (``<done channel>``, no pid),
#: whoever waits, in the statement that ends them: a waiter makes sure only that no
#: *running* task's end escapes it (see ``WAITS_SETTLE``), and these are rare, user-made
#: writes. A CTE over the CTE ``{src}`` of ended rows, read by the statement's result.
_ENDED_BY_HAND = "told AS (SELECT pg_notify(%(done)s, '') FROM (SELECT 1 FROM {src} LIMIT 1) AS x)"
CANCEL_QUEUED = (
    "WITH c AS (UPDATE {t} SET status = 'cancelled', error_message = 'cancelled by request', "
    "finished_at = %(now)s::bigint WHERE id = %(id)s AND status = 'queued' RETURNING "
    + COLS
    + "), "
    + _ENDED_BY_HAND.format(src="c")
    + " SELECT "
    + COLS
    + ", (SELECT count(*) FROM told) FROM c"
)
CANCEL_RUNNING = (
    "UPDATE {t} SET cancel_requested = true WHERE id = %(id)s AND status = 'running' "
    "RETURNING " + COLS
)
REQUEUE = (
    "WITH r AS (UPDATE {t} SET status = 'queued', attempts = 0, run_after = %(now)s::bigint, "
    "finished_at = NULL, started_at = NULL, cancel_requested = false, result = NULL, "
    "error_message = NULL WHERE id = %(id)s AND status IN ('failed', 'cancelled') RETURNING "
    + COLS
    + ") "
    "SELECT " + COLS + ", pg_notify(%(channel)s, queue) FROM r"
)
PRUNE_BATCH = (
    "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE finished_at IS NOT NULL "
    "AND finished_at < %(before)s AND status = %(status)s LIMIT 5000)"
)
PRUNE_WORKERS = "DELETE FROM {w} WHERE heartbeat_at < %(before)s"
PRUNE_TICKS = "DELETE FROM {k} WHERE fired_at < %(before)s"
VACUUM = "VACUUM (ANALYZE) {t}"

# -- waits (Queue.wait) -------------------------------------------------------------------

#: A listening session's change of its waited tasks: rows of ``removed`` deleted, of
#: ``added`` inserted (the pid is the session's), one statement. Unlogged rows: the commit
#: needs no WAL flush.
WAITS_SET = (
    "WITH gone AS (DELETE FROM {tw} WHERE waiter = pg_backend_pid() "
    "AND task_id = ANY(%(removed)s::bigint[])) "
    "INSERT INTO {tw} (task_id, waiter) "
    "SELECT DISTINCT i, pg_backend_pid() FROM unnest(%(added)s::bigint[]) AS i "
    "ON CONFLICT (task_id, waiter) DO NOTHING"
)
#: Rows of sessions that no longer exist (a waiter killed without closing): swept when a
#: session first registers, and at most every ``WAITS_SWEEP_EVERY`` seconds after.
WAITS_SWEEP = (
    "DELETE FROM {tw} AS w WHERE w.waiter <> pg_backend_pid() "
    "AND NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a WHERE a.pid = w.waiter)"
)
#: After the registration committed: wait out every write in flight on the newly waited
#: tasks that are running (a settlement that looked for waiters before the registration
#: committed holds its row lock until it commits; once this returns, the waiter's look
#: sees it). Queued rows are not locked — a lease's ``SKIP LOCKED`` would pass them over —
#: and need not be: a queued task ends by a later transaction, which sees the registration,
#: or by hand (``_ENDED_BY_HAND``).
WAITS_SETTLE = (
    "SELECT id FROM {t} WHERE id = ANY(%(ids)s::bigint[]) AND status = 'running' FOR SHARE"
)
#: Forget the session's rows (on close, and before its first registration: a new session
#: may have the pid of one that died).
WAITS_CLEAR = "DELETE FROM {tw} WHERE waiter = pg_backend_pid()"
#: The session's limit on lock waits (``WAITS_SETTLE`` never holds a waiter for long).
WAITS_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', %(timeout)s, false)"

# -- reads --------------------------------------------------------------------------------

COUNTS = "SELECT status, count(*) FROM {t} GROUP BY status"
COUNTS_BY_TYPE = "SELECT task_type, status, count(*) FROM {t} GROUP BY task_type, status"
OLDEST_QUEUED = (
    "SELECT min(run_after) FROM {t} WHERE status = 'queued' AND run_after <= %(now)s::bigint"
)
QUEUE_GAUGES = (
    "SELECT queue, "
    "count(*) FILTER (WHERE status = 'queued' AND run_after <= %(now)s::bigint), "
    "count(*) FILTER (WHERE status = 'queued' AND run_after > %(now)s::bigint), "
    "count(*) FILTER (WHERE status = 'running'), "
    "min(run_after) FILTER (WHERE status = 'queued' AND run_after <= %(now)s::bigint) "
    "FROM {t} WHERE status IN ('queued', 'running') GROUP BY queue ORDER BY queue " + BYTES
)
FINISHED_SINCE = "SELECT count(*) FROM {t} WHERE finished_at >= %(since)s::bigint"
RECENT_FINISHED = (
    "SELECT status, task_type, attempts, max_attempts, started_at, finished_at FROM {t} "
    "WHERE finished_at >= %(since)s::bigint ORDER BY finished_at DESC, id DESC "
    "LIMIT %(limit)s"
)
WAITING_RETRY = "SELECT count(*) FROM {t} WHERE status = 'queued' AND attempts > 0"
#: Leases, wake-ups and due checks leave paused queues alone (read in the same statement).
NOT_PAUSED = " AND queue NOT IN (SELECT queue FROM {p})"
#: (``DISTINCT``: the byte-order sort expression must be the selected one.)
DUE_QUEUES = (
    "SELECT DISTINCT queue " + BYTES + " AS queue FROM {t} "
    "WHERE (status = 'queued' AND run_after <= %(now)s::bigint"
    + NOT_PAUSED
    + ") OR (status = 'running' AND lease_expires_at <= %(now)s::bigint) ORDER BY 1"
)
NEXT_WAKEUP = (
    "WITH due AS MATERIALIZED (SELECT " + DUE_AT + " AS at) "
    "SELECT (SELECT at FROM due), "
    "(SELECT min(run_after) FROM {t} WHERE status = 'queued' AND queue = ANY(%(queues)s) "
    "AND run_after > (SELECT at FROM due)" + NOT_PAUSED + "), "
    "(SELECT min(lease_expires_at) FROM {t} WHERE status = 'running')"
)

WORKER_UPSERT = (
    "INSERT INTO {w} (worker_id, hostname, pid, queues, concurrency, started_at, heartbeat_at) "
    "VALUES (%(worker)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s, %(started)s, "
    "%(beat)s) ON CONFLICT (worker_id) DO UPDATE SET hostname = excluded.hostname, "
    "pid = excluded.pid, queues = excluded.queues, concurrency = excluded.concurrency, "
    "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, "
    "stopped_at = NULL, processed = 0"
)
WORKER_STOP = (
    "UPDATE {w} SET stopped_at = %(now)s::bigint, heartbeat_at = %(now)s::bigint "
    "WHERE worker_id = %(worker)s"
)
WORKERS = (
    "SELECT worker_id, hostname, pid, queues, concurrency, started_at, heartbeat_at, "
    "stopped_at, processed FROM {w} ORDER BY started_at, worker_id " + BYTES
)

# -- the history of failed attempts, and paused queues ------------------------------------

#: A task's failed attempts in the order they were written (the identity column: the
#: caller's instants may step back, and a retried task counts its attempts from 1 again).
TASK_FAILURES = (
    "SELECT task_id, attempt, at, worker_id, outcome, error, traceback FROM {f} "
    "WHERE task_id = %(id)s ORDER BY id"
)
PAUSE_QUEUE = (
    "INSERT INTO {p} (queue, paused_at) VALUES (%(queue)s, %(now)s::bigint) "
    "ON CONFLICT (queue) DO NOTHING"
)
#: Workers of other processes wait for a notification: resuming a queue is one for them.
RESUME_QUEUE = (
    "WITH r AS (DELETE FROM {p} WHERE queue = %(queue)s RETURNING queue) "
    "SELECT pg_notify(%(channel)s, queue) FROM r"
)
PAUSED_QUEUES = "SELECT queue, paused_at FROM {p} ORDER BY queue " + BYTES
#: The names of the queues with queued tasks, one index probe per name (a skip scan of
#: ``tasks_due`` by hand: DISTINCT would read every queued task). The walk follows the
#: index, in the database's collation; the few names found are then sorted bytewise.
QUEUED_QUEUE_NAMES = (
    "WITH RECURSIVE names(name) AS ("
    "SELECT min(queue) FROM {t} WHERE status = 'queued' "
    "UNION ALL "
    "SELECT (SELECT min(queue) FROM {t} WHERE status = 'queued' AND queue > names.name) "
    "FROM names WHERE names.name IS NOT NULL) "
    "SELECT name FROM names WHERE name IS NOT NULL ORDER BY name " + BYTES
)

# -- filters and bulk actions -------------------------------------------------------------

NEWEST_ID = "SELECT max(id) FROM {t}"
#: Finished tasks per time bucket and status since an instant (``tasks_finished`` answers
#: the range).
FINISHED_BUCKETS = (
    "SELECT (finished_at - %(since)s::bigint) / %(bucket)s::bigint AS bucket, status, count(*) "
    "FROM {t} WHERE finished_at >= %(since)s::bigint "
    "GROUP BY bucket, status ORDER BY bucket, status " + BYTES
)
#: One batch of a bulk cancel: the queued tasks among ``%(ids)s`` end cancelled...
CANCEL_QUEUED_IDS = (
    "WITH c AS (UPDATE {t} SET status = 'cancelled', error_message = %(message)s, "
    "finished_at = %(now)s::bigint WHERE id = ANY(%(ids)s) AND status = 'queued' "
    "RETURNING "
    + COLS
    + "), "
    + _ENDED_BY_HAND.format(src="c")
    + " SELECT "
    + COLS
    + ", (SELECT count(*) FROM told) FROM c ORDER BY id"
)
#: ... then (a statement of its own, so it sees a task leased meanwhile as running) the
#: running ones are flagged for their workers.
FLAG_RUNNING_IDS = (
    "UPDATE {t} SET cancel_requested = true WHERE id = ANY(%(ids)s) AND status = 'running' "
    "RETURNING " + COLS
)
#: One batch of a bulk retry: the failed and cancelled tasks among ``%(ids)s`` back to
#: queued with a fresh attempt count and no error, their queues' workers woken.
REQUEUE_IDS = (
    "WITH r AS (UPDATE {t} SET status = 'queued', attempts = 0, run_after = %(now)s::bigint, "
    "finished_at = NULL, started_at = NULL, cancel_requested = false, result = NULL, "
    "error_message = NULL WHERE id = ANY(%(ids)s) AND status IN ('failed', 'cancelled') "
    "RETURNING " + COLS + "), "
    "woken AS (SELECT pg_notify(%(channel)s, q) FROM (SELECT DISTINCT queue AS q FROM r) AS x) "
    "SELECT " + COLS + ", (SELECT count(*) FROM woken) FROM r ORDER BY id"
)
#: One batch of a bulk delete: the queued and finished tasks among ``%(ids)s`` (never a
#: running one); their history goes with them (the foreign key).
DELETE_IDS = (
    "WITH d AS (DELETE FROM {t} WHERE id = ANY(%(ids)s) AND status <> 'running' RETURNING id), "
    + _ENDED_BY_HAND.format(src="d")
    + " SELECT count(*), (SELECT count(*) FROM told) FROM d"
)

# -- periodic schedules -------------------------------------------------------------------

#: The schedule columns in ``ScheduleRow`` order.
SCHEDULE_COLS = (
    "name, definition, timing, overlap, source, paused, revision, next_tick, last_tick, "
    "last_task_id, fired, skipped, created_at, updated_at, declared_at"
)
SCHEDULES_ALL = "SELECT " + SCHEDULE_COLS + " FROM {sc} ORDER BY name " + BYTES
SCHEDULES_NAMED = (
    "SELECT " + SCHEDULE_COLS + " FROM {sc} WHERE name = ANY(%(names)s) ORDER BY name " + BYTES
)
#: Due schedules, through the partial index over the unpaused ones' next ticks.
SCHEDULES_DUE = (
    "SELECT " + SCHEDULE_COLS + " FROM {sc} WHERE NOT paused AND next_tick <= %(due)s::bigint "
    "ORDER BY next_tick, name " + BYTES
)
SCHEDULE_NEXT = "SELECT min(next_tick) FROM {sc} WHERE NOT paused"
#: A new schedule, unless the name is taken (then nothing: a concurrent creator's insert is
#: waited for, never a unique violation).
SCHEDULE_CREATE = (
    "INSERT INTO {sc} (name, definition, timing, overlap, source, paused, next_tick, "
    "created_at, updated_at, declared_at) VALUES (%(name)s, %(definition)s, %(timing)s, "
    "%(overlap)s, %(source)s, %(paused)s, %(next_tick)s, %(now)s::bigint, %(now)s::bigint, "
    "%(declared)s) ON CONFLICT (name) DO NOTHING RETURNING name"
)
SCHEDULE_LOCK = "SELECT " + SCHEDULE_COLS + " FROM {sc} WHERE name = %(name)s FOR UPDATE"
SCHEDULE_GET = "SELECT " + SCHEDULE_COLS + " FROM {sc} WHERE name = %(name)s"
SCHEDULE_REDEFINE = (
    "UPDATE {sc} SET definition = %(definition)s, timing = %(timing)s, overlap = %(overlap)s, "
    "source = %(source)s, next_tick = %(next_tick)s, revision = revision + 1, "
    "updated_at = %(now)s::bigint WHERE name = %(name)s"
)
SCHEDULE_DECLARED = "UPDATE {sc} SET declared_at = %(now)s::bigint WHERE name = %(name)s"
SCHEDULE_PAUSE = (
    "UPDATE {sc} SET paused = true, revision = revision + 1, updated_at = %(now)s::bigint "
    "WHERE name = %(name)s AND NOT paused RETURNING " + SCHEDULE_COLS
)
SCHEDULE_RESUME = (
    "UPDATE {sc} SET paused = false, next_tick = %(next_tick)s, revision = revision + 1, "
    "updated_at = %(now)s::bigint WHERE name = %(name)s AND paused RETURNING " + SCHEDULE_COLS
)
SCHEDULE_DELETE = (
    "WITH d AS (DELETE FROM {sc} WHERE name = %(name)s RETURNING name), "
    "m AS (DELETE FROM {k} WHERE schedule = %(name)s) SELECT count(*) FROM d"
)
#: What ``fire_ticks`` compares before it opens a transaction (a request read before another
#: process fired the same ticks writes nothing at all).
SCHEDULE_STATES = "SELECT name, next_tick, revision, paused FROM {sc} WHERE name = ANY(%(names)s)"
#: Take one step of a schedule if it is as the firing process read it. The row lock makes a
#: concurrent claim of the same step wait, then find the schedule moved on (no row).
SCHEDULE_CLAIM = (
    "UPDATE {sc} SET next_tick = %(next_tick)s WHERE name = %(name)s "
    "AND next_tick = %(expect_tick)s AND revision = %(expect_revision)s AND NOT paused "
    "RETURNING overlap, last_task_id"
)
SCHEDULE_FIRED = (
    "UPDATE {sc} SET last_tick = coalesce(%(last_tick)s, last_tick), "
    "last_task_id = coalesce(%(last_task)s, last_task_id), fired = fired + %(fired)s, "
    "skipped = skipped + %(skipped)s WHERE name = %(name)s"
)
TICK_EXISTS = "SELECT 1 FROM {k} WHERE schedule = %(name)s AND tick = %(tick)s"
#: A tick's mark; the primary key (schedule, tick) refuses a second one.
TICK_INSERT = (
    "INSERT INTO {k} (schedule, tick, task_id, fired_at) "
    "VALUES (%(name)s, %(tick)s, %(task)s, %(now)s::bigint)"
)
TASK_ACTIVE = "SELECT 1 FROM {t} WHERE id = %(id)s AND status IN ('queued', 'running')"

# -- raw rows (hookqueue copy) ------------------------------------------------------------

EXPORT = "SELECT " + COLS + " FROM {t} WHERE id > %(after)s ORDER BY id LIMIT %(limit)s"
IMPORT = (
    "INSERT INTO {t} (" + COLS + ") SELECT * FROM unnest(%(id)s::bigint[], %(queue)s::text[], "
    "%(task_type)s::text[], %(payload)s::text[], %(priority)s::bigint[], %(status)s::text[], "
    "%(attempts)s::bigint[], %(max_attempts)s::bigint[], %(run_after)s::bigint[], "
    "%(idempotency_key)s::text[], %(error_message)s::text[], %(result)s::text[], "
    "%(locked_by)s::text[], %(lease_expires_at)s::bigint[], %(cancel_requested)s::boolean[], "
    "%(timeout_seconds)s::float8[], %(headers)s::text[], %(created_at)s::bigint[], "
    "%(started_at)s::bigint[], %(finished_at)s::bigint[])"
)
#: After rows came in with their own ids: new tasks start after the largest (ids are never
#: reused, so the sequence never moves back).
BUMP_IDS = (
    "SELECT setval(pg_get_serial_sequence(%(table)s, 'id'), "
    "greatest((SELECT max(id) FROM {t}), "
    "(SELECT last_value FROM pg_sequences WHERE schemaname = %(schema)s "
    "AND sequencename = %(seqname)s)))"
)
SEQUENCE_NAME = "SELECT pg_get_serial_sequence(%(table)s, 'id')"

# -- consistency checks -------------------------------------------------------------------

RUNNING_UNOWNED = (
    "SELECT id FROM {t} WHERE status = 'running' AND (locked_by IS NULL OR "
    "lease_expires_at IS NULL)"
)
ATTEMPTS_OVER = "SELECT id, attempts, max_attempts FROM {t} WHERE attempts > max_attempts"
FINISHED_MISMATCH = (
    "SELECT id, status, finished_at FROM {t} WHERE "
    "(status IN ('completed', 'failed', 'cancelled')) <> (finished_at IS NOT NULL)"
)
INVALID_INDEXES = (
    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %(schema)s AND NOT i.indisvalid"
)

# -- schema -------------------------------------------------------------------------------

READ_META = "SELECT key, value FROM {m}"
META_EXISTS = "SELECT to_regclass(%(name)s) IS NOT NULL"
LOCK_SCHEMA = "SELECT pg_advisory_xact_lock(hashtextextended(%(lock)s, 0))"
SET_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', %(timeout)s, true)"
SCHEMA_TABLES = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1"
)
CREATE_SCHEMA = "CREATE SCHEMA IF NOT EXISTS {s}"
UPSERT_META = (
    "INSERT INTO {m} (key, value) VALUES ('application', 'hookqueue'), "
    "('schema_version', %(version)s) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
#: A lease that carries no outcome commits without waiting for the WAL flush.
UNSYNCED = "SELECT set_config('synchronous_commit', 'off', true)"
CONFIGURE = (
    "SELECT set_config('synchronous_commit', %(sync)s, false), "
    "set_config('lock_timeout', %(lock_timeout)s, false), "
    "set_config('idle_in_transaction_session_timeout', %(idle)s, false)"
)

# -- statements assembled from constant pieces --------------------------------------------

#: ``ORDER BY`` terms for each sort key; ``AGED_PRIORITY`` binds ``aging`` (microseconds)
#: and reads the due instant of the statement's ``due`` CTE.
ORDER_TERMS: dict[SortKey, str] = {
    SortKey.PRIORITY: "priority ASC",
    SortKey.AGED_PRIORITY: (
        "(priority - ((SELECT at FROM due) - run_after)::float8 / %(aging)s::float8) ASC"
    ),
    SortKey.DUE: "run_after ASC",
    SortKey.FIFO: "run_after ASC, id ASC",
    SortKey.LIFO: "run_after DESC, id DESC",
}


def order_by(keys: tuple[SortKey, ...]) -> str:
    """The ``ORDER BY`` terms of a plan's sort keys; ties go in due order, then enqueue
    order, as in the SQLite store."""
    terms = [ORDER_TERMS[SortKey(k)] for k in keys]
    if not any(k in (SortKey.FIFO, SortKey.LIFO) for k in keys):
        terms.append(ORDER_TERMS[SortKey.FIFO])
    return ", ".join(terms)


def _candidates(
    keys: tuple[SortKey, ...],
    several: bool,
    typed: bool,
    columns: str,
    limit: str,
    extra: str = "",
    lock: bool = True,
) -> str:
    """Due queued tasks of the asked queues in the plan's order, locked (``FOR UPDATE SKIP
    LOCKED``: rows another transaction holds are passed over; ``lock`` False for a read), at
    most ``limit``; ``extra`` is more conditions (`` AND ...``, over the task's columns)."""
    order = order_by(keys)
    types = " AND task_type = ANY(%(types)s)" if typed else ""
    locking = " FOR UPDATE SKIP LOCKED" if lock else ""
    # A paused queue's test reads one row of a tiny table (a one-time filter per queue).
    where = (
        "status = 'queued' AND queue = {queue} AND run_after <= (SELECT at FROM due)"
        + types
        + " AND NOT EXISTS (SELECT 1 FROM {{p}} AS pq WHERE pq.queue = {queue})"
    )
    if not several:
        return (
            f"SELECT {columns} FROM {{t}} WHERE {where.format(queue='%(queue)s')}{extra} "
            f"ORDER BY {order} LIMIT {limit}{locking}"
        )
    return (
        f"SELECT p.* FROM unnest(%(queues)s::text[]) AS q(name) CROSS JOIN LATERAL "
        f"(SELECT {columns} FROM {{t}} WHERE {where.format(queue='q.name')}{extra} "
        f"ORDER BY {order} LIMIT {limit}{locking}) AS p "
        f"ORDER BY {order} LIMIT {limit}"
    )


#: What a lease sets; binds ``worker``, ``until`` and ``now``.
_LEASE_SET = (
    "status = 'running', attempts = t.attempts + 1, locked_by = %(worker)s, "
    "lease_expires_at = %(until)s::bigint, started_at = %(now)s::bigint, "
    "cancel_requested = false"
)


@functools.lru_cache(maxsize=256)
def sql_lease(keys: tuple[SortKey, ...], several: bool, typed: bool) -> str:
    """Lease the first ``limit`` due tasks in the plan's order, in one statement; returns
    the leased rows (unordered: the caller sorts them)."""
    picked = _candidates(keys, several, typed, "id, priority, run_after", "%(limit)s")
    return (
        f"WITH due AS MATERIALIZED (SELECT {DUE_AT} AS at), picked AS ({picked}) "
        f"UPDATE {{t}} AS t SET {_LEASE_SET} FROM picked WHERE t.id = picked.id "
        f"RETURNING {T_COLS}"
    )


@functools.lru_cache(maxsize=256)
def sql_lease_window(keys: tuple[SortKey, ...], several: bool, typed: bool, partition: bool) -> str:
    """The candidate window of a re-ranking plan, locked until the lease commits: ``id,
    task_type, priority, queue, created_at, run_after, partition`` (the payload's value at
    ``%(pkey)s`` as JSON text, or NULL) of the first ``window`` due tasks in order."""
    part = "{part}(payload, %(pkey)s)" if partition else "NULL::text"
    columns = f"id, task_type, priority, queue, created_at, run_after, {part} AS part"
    window = _candidates(keys, several, typed, columns, "%(window)s")
    return f"WITH due AS MATERIALIZED (SELECT {DUE_AT} AS at) {window}"


#: What a window may be drawn per (``LeasePlan.group_by``, the closed
#: ``models.WINDOW_GROUPS``): a column of the due tasks (alias ``d``), or their partition value.
#: Text is grouped bytewise (``COLLATE "C"``): only equality matters, and the database's
#: collation makes the sort behind the numbering several times slower.
WINDOW_GROUP_TERMS: dict[str, str] = {
    "task_type": 'd.task_type COLLATE "C"',
    "queue": 'd.queue COLLATE "C"',
    "priority": "d.priority",
    "partition": '{part}(d.payload, %(pkey)s) COLLATE "C"',
}


@functools.lru_cache(maxsize=256)
def sql_lease_window_grouped(
    keys: tuple[SortKey, ...], typed: bool, partition: bool, group_by: str
) -> str:
    """The candidate window of a plan with ``group_by``: the columns of
    :func:`sql_lease_window`, drawn per group — each group's first due task in order, then
    each group's second, …, the first ``window`` of those (unordered: the caller sorts them).

    Every due task of ``%(queues)s`` is numbered within its group.
    The window is read without locks (``FOR UPDATE`` cannot share a query level with window
    functions, and a join back to lock the rows is planned badly before the table is
    analysed): :data:`LEASE_CHOSEN_SKIP_LOCKED` leases the chosen tasks that are still
    queued and not locked by another transaction."""
    part = "{part}(d.payload, %(pkey)s)" if partition else "NULL::text"
    group = WINDOW_GROUP_TERMS[group_by]
    order = order_by(keys)
    types = " AND d.task_type = ANY(%(types)s)" if typed else ""
    return (
        f"WITH due AS MATERIALIZED (SELECT {DUE_AT} AS at) "
        f"SELECT id, task_type, priority, queue, created_at, run_after, part FROM "
        f"(SELECT d.id, d.task_type, d.priority, d.queue, d.created_at, d.run_after, "
        f"{part} AS part, "
        f"row_number() OVER (PARTITION BY {group} ORDER BY {order}) AS rn "
        f"FROM {{t}} AS d WHERE d.status = 'queued' AND d.queue = ANY(%(queues)s) "
        f"AND d.run_after <= (SELECT at FROM due){types} "
        f"AND NOT EXISTS (SELECT 1 FROM {{p}} AS pq WHERE pq.queue = d.queue)) AS ranked "
        f"ORDER BY rn, {order} LIMIT %(window)s"
    )


LEASE_CHOSEN = (
    "UPDATE {t} AS t SET " + _LEASE_SET + " WHERE t.id = ANY(%(ids)s) AND t.status = 'queued' "
    "RETURNING " + T_COLS
)

#: Lease the chosen ids of an unlocked window (a grouped one) that are still queued, passing
#: over rows another transaction holds (never waiting for them: no deadlock between leases).
LEASE_CHOSEN_SKIP_LOCKED = (
    "WITH picked AS (SELECT id FROM {t} WHERE id = ANY(%(ids)s) AND status = 'queued' "
    "FOR UPDATE SKIP LOCKED) "
    "UPDATE {t} AS t SET " + _LEASE_SET + " FROM picked WHERE t.id = picked.id "
    "RETURNING " + T_COLS
)


@functools.lru_cache(maxsize=64)
def sql_has_work(typed: bool) -> str:
    """Is a task (of ``%(types)s``, or any) due in one of ``%(queues)s``, or a lease expired?"""
    types = " AND task_type = ANY(%(types)s)" if typed else ""
    return (
        f"WITH due AS MATERIALIZED (SELECT {DUE_AT} AS at) "
        "SELECT EXISTS (SELECT 1 FROM unnest(%(queues)s::text[]) AS q(name) "
        "CROSS JOIN LATERAL (SELECT 1 FROM {t} WHERE status = 'queued' AND queue = q.name "
        f"AND run_after <= (SELECT at FROM due){types} "
        "AND NOT EXISTS (SELECT 1 FROM {p} AS pq WHERE pq.queue = q.name) LIMIT 1) AS x) "
        "OR EXISTS (SELECT 1 FROM {t} WHERE status = 'running' "
        "AND lease_expires_at <= %(now)s::bigint)"
    )


@functools.lru_cache(maxsize=64)
def sql_list(*, by_status: bool, by_type: bool, by_queue: bool, after: bool, newest: bool) -> str:
    """A listing with the given filters, by id, at most ``%(limit)s``."""
    where = ["TRUE"]
    if by_status:
        where.append("status = ANY(%(statuses)s)")
    if by_type:
        where.append("task_type = %(task_type)s")
    if by_queue:
        where.append("queue = %(queue)s")
    if after:
        where.append("id < %(after)s" if newest else "id > %(after)s")
    order = "id DESC" if newest else "id ASC"
    return f"SELECT {COLS} FROM {{t}} WHERE {' AND '.join(where)} ORDER BY {order} LIMIT %(limit)s"


class Statements:
    """The statements of one schema, rendered once with its names quoted as identifiers.

    :param schema: the PostgreSQL schema the store's tables live in.
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._names = {
            "t": sql.Identifier(schema, "tasks"),
            "w": sql.Identifier(schema, "workers"),
            "m": sql.Identifier(schema, "meta"),
            "f": sql.Identifier(schema, "task_failures"),
            "p": sql.Identifier(schema, "paused_queues"),
            "sc": sql.Identifier(schema, "schedules"),
            "k": sql.Identifier(schema, "schedule_ticks"),
            "tw": sql.Identifier(schema, "task_waits"),
            "s": sql.Identifier(schema),
            "part": sql.Identifier(schema, "payload_part"),
            "nw": sql.Identifier(schema, "notify_waited"),
            "lim": sql.Identifier(schema, "limits"),
            "lrate": sql.Identifier(schema, "limit_rates"),
            "lturn": sql.Identifier(schema, "limit_turns"),
            "bk": sql.Identifier(schema, "limit_bucket"),
        }
        self._cache: dict[str, str] = {}

    def __call__(self, template: str) -> str:
        """``template`` with this schema's names filled in (remembered)."""
        rendered = self._cache.get(template)
        if rendered is None:
            rendered = sql.SQL(template).format(**self._names).as_string(None)
            self._cache[template] = rendered
        return rendered

    def identifier(self, *parts: str) -> str:
        """A quoted identifier (for ``LISTEN``)."""
        return sql.Identifier(*parts).as_string(None)


#: The shape of a :class:`~hookqueue.core.models.TaskFilter` query: whether it has each
#: condition, in :data:`FILTER_CONDITIONS` order, and its page (1: ids above ``%(page)s``,
#: -1: below it, 0: none).
FilterShape = tuple[bool, bool, bool, bool, bool, bool, bool, bool, bool, int]

#: Each condition of a filter, binding a parameter of its own (lists as arrays).
FILTER_CONDITIONS = (
    "status = ANY(%(statuses)s)",
    "task_type = ANY(%(types)s)",
    "queue = ANY(%(queues)s)",
    "id = ANY(%(ids)s)",
    # Case-insensitive (lower() of the database's collation), no pattern characters.
    "strpos(lower(error_message), lower(%(error)s)) > 0",
    "created_at >= %(created_after)s::bigint",
    "created_at < %(created_before)s::bigint",
    "finished_at < %(finished_before)s::bigint",
    "id <= %(max_id)s::bigint",
)


@functools.lru_cache(maxsize=256)
def sql_matching(shape: FilterShape, select: str) -> str:
    """A query over the tasks a filter matches: ``select`` is ``tasks`` (their columns, by
    id ascending), ``newest`` (the same, descending), ``ids`` (ids ascending; these three
    bind ``%(limit)s``) or ``count``."""
    where = ["TRUE"]
    where += [cond for cond, present in zip(FILTER_CONDITIONS, shape[:-1], strict=True) if present]
    page = shape[-1]
    if page:
        where.append("id > %(page)s::bigint" if page > 0 else "id < %(page)s::bigint")
    conditions = " AND ".join(where)
    if select == "count":
        return f"SELECT count(*) FROM {{t}} WHERE {conditions}"
    cols = "id" if select == "ids" else COLS
    order = "id DESC" if select == "newest" else "id ASC"
    return f"SELECT {cols} FROM {{t}} WHERE {conditions} ORDER BY {order} LIMIT %(limit)s"


# -- limits ---------------------------------------------------------------------------------

#: The columns of a stored rule, in ``rule_from_row`` order.
LIMIT_COLS = (
    "name, queue, task_type, partition_by, partition_in, concurrency, rate, period, burst, fair, "
    "weights"
)
LIMITS_ALL = "SELECT " + LIMIT_COLS + " FROM {lim} ORDER BY name " + BYTES
#: A new rule, unless the name is taken (then nothing: a concurrent creator is waited for).
LIMIT_CREATE = (
    "INSERT INTO {lim} (" + LIMIT_COLS + ", created_at, updated_at) VALUES (%(name)s, "
    "%(queue)s, %(task_type)s, %(partition_by)s, %(partition_in)s, %(concurrency)s, %(rate)s, "
    "%(period)s, %(burst)s, %(fair)s, %(weights)s, %(now)s::bigint, %(now)s::bigint) "
    "ON CONFLICT (name) DO NOTHING RETURNING name"
)
LIMIT_LOCK = "SELECT " + LIMIT_COLS + " FROM {lim} WHERE name = %(name)s FOR UPDATE"
LIMIT_UPDATE = (
    "UPDATE {lim} SET queue = %(queue)s, task_type = %(task_type)s, "
    "partition_by = %(partition_by)s, partition_in = %(partition_in)s, "
    "concurrency = %(concurrency)s, rate = %(rate)s, period = %(period)s, burst = %(burst)s, "
    "fair = %(fair)s, weights = %(weights)s, updated_at = %(now)s::bigint WHERE name = %(name)s"
)
#: A rule with its rate state and turns; returns the deleted rule's queue (a row when found).
LIMIT_DELETE = (
    "WITH r AS (DELETE FROM {lrate} WHERE rule = %(name)s), "
    "u AS (DELETE FROM {lturn} WHERE rule = %(name)s) "
    "DELETE FROM {lim} WHERE name = %(name)s RETURNING coalesce(queue, '')"
)
#: A changed rule may let held tasks start: the workers are told (any queue's name will do;
#: the watcher reads no payload).
LIMIT_CHANGED = "SELECT pg_notify(%(channel)s, %(queue)s)"
#: The advisory locks of the rules a lease keeps, in the order given (ascending keys, so two
#: leases never wait for each other in a cycle). Held until the transaction ends.
LIMIT_LOCKS = "SELECT pg_advisory_xact_lock(k)::text FROM unnest(%(keys)s::bigint[]) AS k"
#: The buckets of a rate rule whose state lies ahead of ``now`` (the others are as if fresh).
RATE_AHEAD = "SELECT bucket, tat FROM {lrate} WHERE rule = %(rule)s AND tat > %(now)s::bigint"
RATE_PUT = (
    "INSERT INTO {lrate} (rule, bucket, tat) SELECT %(rule)s, b, v FROM "
    "unnest(%(buckets)s::text[], %(values)s::bigint[]) AS x(b, v) "
    "ON CONFLICT (rule, bucket) DO UPDATE SET tat = excluded.tat"
)
#: A rule's rate state, dropped (before it is written again for a changed rate).
RATES_DELETE = "DELETE FROM {lrate} WHERE rule = %(rule)s"
#: Rate state that allows a full burst again is the same as none: prune drops it.
RATE_PRUNE = "DELETE FROM {lrate} WHERE tat < %(before)s::bigint"
TURNS = "SELECT bucket, turn FROM {lturn} WHERE rule = %(rule)s"
TURN_PUT = (
    "INSERT INTO {lturn} (rule, bucket, turn, served_at) SELECT %(rule)s, b, v, "
    "%(now)s::bigint FROM unnest(%(buckets)s::text[], %(values)s::bigint[]) AS x(b, v) "
    "ON CONFLICT (rule, bucket) DO UPDATE SET turn = excluded.turn, served_at = excluded.served_at"
)
#: A bucket not served since the cut-off forgets its position: it then starts from the rule's
#: clock, first in line, where having been served longest ago put it anyway (the clock is
#: written by every lease that serves, so it goes only when the whole rule was idle).
TURN_PRUNE = "DELETE FROM {lturn} WHERE served_at < %(before)s::bigint"

#: A task's bucket under a partitioned rule, by where the key is read (the key is bound as
#: ``%(k<n>)s``, n the partition column's index); ``""``: an unpartitioned rule's one bucket.
BUCKET = {
    "payload": "{{bk}}(payload, %(k{n})s)",
    "headers": "{{bk}}(headers, %(k{n})s)",
    "": "''::text",
}


def bucket_expr(source: str, n: int) -> str:
    """The bucket expression of partition column ``n`` read from ``source``."""
    return BUCKET[source].format(n=n)


def rule_match(has_queue: bool, has_type: bool, i: int) -> str:
    """Which tasks rule ``i`` matches (binds ``%(q<i>)s`` / ``%(y<i>)s`` as it names a queue
    and a type)."""
    parts = ["TRUE"]
    if has_queue:
        parts.append(f"queue = %(q{i})s")
    if has_type:
        parts.append(f"task_type = %(y{i})s")
    return " AND ".join(parts)


#: One rule's shape in a statement: ``(has_queue, has_type, source or "", partition column)``.
RuleShape = tuple[bool, bool, str, int]
#: The exclusions of a candidates query: per held rule, its shape and whether it holds some
#: buckets (``%(b<i>)s``, an array) or all of its tasks.
ExclShape = tuple[tuple[RuleShape, bool, int], ...]


@functools.lru_cache(maxsize=256)
def sql_rule_running(shape: RuleShape) -> str:
    """Rule 0's running tasks per bucket (few: the partial index over running tasks)."""
    has_queue, has_type, source, n = shape
    return (
        f"SELECT {bucket_expr(source, n)}, count(*) FROM {{t}} WHERE status = 'running' "
        f"AND {rule_match(has_queue, has_type, 0)} GROUP BY 1"
    )


@functools.lru_cache(maxsize=256)
def sql_rule_due(shape: RuleShape) -> str:
    """Rule 0's due queued tasks per bucket (paused queues left out)."""
    has_queue, has_type, source, n = shape
    return (
        f"WITH due AS MATERIALIZED (SELECT {DUE_AT} AS at) "
        f"SELECT {bucket_expr(source, n)}, count(*) FROM {{t}} WHERE status = 'queued' "
        f"AND run_after <= (SELECT at FROM due) AND {rule_match(has_queue, has_type, 0)}"
        f"{NOT_PAUSED} GROUP BY 1"
    )


@functools.lru_cache(maxsize=256)
def sql_rule_any_due(has_queue: bool, has_type: bool) -> str:
    """Is a task rule 0 matches queued and due?"""
    return (
        f"WITH due AS MATERIALIZED (SELECT {DUE_AT} AS at) "
        "SELECT 1 FROM {t} WHERE status = 'queued' AND run_after <= (SELECT at FROM due) "
        f"AND {rule_match(has_queue, has_type, 0)}{NOT_PAUSED} LIMIT 1"
    )


def _exclusions(excl: ExclShape) -> str:
    """`` AND NOT (…)`` per held rule: its held buckets, or all its tasks."""
    out = []
    for (has_queue, has_type, source, n), some, i in excl:
        match = rule_match(has_queue, has_type, i)
        if some:
            out.append(f" AND NOT ({match} AND {bucket_expr(source, n)} = ANY(%(b{i})s))")
        else:
            out.append(f" AND NOT ({match})")
    return "".join(out)


def _limit_columns(parts: tuple[str, ...], alias: str, partition: bool) -> str:
    """``id, queue, task_type, *partition columns, priority, run_after, created_at, the
    plan's partition`` (a re-ranking plan's ``Candidate.partition`` as JSON text, or NULL)."""
    p = f"{alias}." if alias else ""
    cols = [f"{p}id", f"{p}queue", f"{p}task_type"]
    for n, source in enumerate(parts):
        expr = bucket_expr(source, n)
        cols.append(expr.replace("(payload", f"({p}payload").replace("(headers", f"({p}headers"))
    cols += [f"{p}priority", f"{p}run_after", f"{p}created_at"]
    cols.append(f"{{part}}({p}payload, %(pkey)s)" if partition else "NULL::text")
    return ", ".join(cols)


@functools.lru_cache(maxsize=256)
def sql_limit_candidates(
    keys: tuple[SortKey, ...],
    several: bool,
    typed: bool,
    parts: tuple[str, ...],
    excl: ExclShape,
    partition: bool,
    lock: bool,
) -> str:
    """The first ``%(window)s`` due tasks in the plan's order that no held bucket holds
    (locked, unless ``lock`` is False): :func:`_limit_columns`."""
    columns = _limit_columns(parts, "", partition)
    body = _candidates(keys, several, typed, columns, "%(window)s", _exclusions(excl), lock)
    return f"WITH due AS MATERIALIZED (SELECT {DUE_AT} AS at) {body}"


@functools.lru_cache(maxsize=256)
def sql_limit_window_grouped(
    keys: tuple[SortKey, ...],
    typed: bool,
    parts: tuple[str, ...],
    excl: ExclShape,
    group_by: str,
    partition: bool,
) -> str:
    """A re-ranking plan's window drawn per group as an unlimited lease draws it
    (:func:`sql_lease_window_grouped`: each group's first due task in the plan's order, then
    each group's second, …, the first ``%(window)s`` of those), among the due tasks no held
    bucket holds: the columns of :func:`_limit_columns`, unordered (the caller sorts them).

    Like the unlimited one it numbers every due task of ``%(queues)s`` and is read without
    locks: lease its picks through :data:`LOCK_PICKS` (``SKIP LOCKED``)."""
    order = order_by(keys)
    types = " AND task_type = ANY(%(types)s)" if typed else ""
    return (
        f"WITH due AS MATERIALIZED (SELECT {DUE_AT} AS at) "
        f"SELECT {_limit_columns(parts, 't', partition)} FROM {{t}} AS t WHERE t.id = ANY(ARRAY("
        f"SELECT d.id FROM {{t}} AS d WHERE d.status = 'queued' AND d.queue = ANY(%(queues)s) "
        f"AND d.run_after <= (SELECT at FROM due){types}{NOT_PAUSED}{_exclusions(excl)} "
        f"ORDER BY row_number() OVER (PARTITION BY {WINDOW_GROUP_TERMS[group_by]} "
        f"ORDER BY {order}), {order} LIMIT %(window)s))"
    )


#: A partition key's raw value as JSON text (any JSON type; NULL when missing): cheaper than
#: ``limit_bucket`` (no plpgsql call, no exception block) but it raises on text that is not
#: JSON, and groups more finely (null, true, an object are groups of their own where the
#: bucket is the shared one). Only the fair query's ranking uses it (see there).
RAW_VALUE = {
    "payload": "(payload::json -> %(k{n})s)::text",
    "headers": "(headers::json -> %(k{n})s)::text",
}


@functools.lru_cache(maxsize=256)
def sql_limit_fair(
    keys: tuple[SortKey, ...],
    typed: bool,
    parts: tuple[str, ...],
    excl: ExclShape,
    fair_col: int,
    fast: bool,
) -> str:
    """The first ``%(per_bucket)s`` due tasks of every bucket of the fair rule's partition
    column ``fair_col`` (each bucket's in the plan's order), not locked (see
    :data:`LOCK_PICKS`): the columns of :func:`_limit_columns`, in the plan's order.

    The ranks are computed over every due task (the buckets are known only by reading
    them): the cost of a fair lease grows with the backlog, one key extraction per due task,
    sorted by the key in byte order (``COLLATE "C"``: the database's collation would cost
    more than the rest). ``fast`` ranks by the key's raw JSON value (:data:`RAW_VALUE`): its
    groups split buckets, never join them, so each bucket's first tasks are among the rows
    (the caller keeps the first ``per_bucket`` of each bucket); it raises on a payload that
    is not JSON, and the caller then asks again without ``fast``."""
    order = order_by(keys)
    types = " AND task_type = ANY(%(types)s)" if typed else ""
    source = parts[fair_col]
    key = RAW_VALUE[source].format(n=fair_col) if fast else bucket_expr(source, fair_col)
    return (
        f"WITH due AS MATERIALIZED (SELECT {DUE_AT} AS at) "
        f"SELECT {_limit_columns(parts, 't', False)} FROM {{t}} AS t WHERE t.id = ANY(ARRAY("
        f"SELECT cid FROM ("
        f'SELECT id AS cid, row_number() OVER (PARTITION BY {key} COLLATE "C" '
        f"ORDER BY {order}) AS rn "
        f"FROM {{t}} WHERE status = 'queued' AND queue = ANY(%(queues)s) "
        f"AND run_after <= (SELECT at FROM due){types}{NOT_PAUSED}{_exclusions(excl)}) AS r "
        f"WHERE r.rn <= %(per_bucket)s)) ORDER BY {order}"
    )


#: The fair lease's picks, locked (its candidates are not: a lock per candidate would cost a
#: row lock on every bucket's first tasks); those another transaction holds, or that are no
#: longer queued, are left out, and the caller picks again without them.
LOCK_PICKS = (
    "SELECT id FROM {t} WHERE id = ANY(%(ids)s) AND status = 'queued' "
    "ORDER BY id FOR UPDATE SKIP LOCKED"
)

#: Has a lease expired (in any queue: a lease takes those over)?
ANY_EXPIRED = (
    "SELECT EXISTS (SELECT 1 FROM {t} WHERE status = 'running' "
    "AND lease_expires_at <= %(now)s::bigint)"
)
