"""The schema's indexes and migrations: a version-1 file is carried forward with its tasks,
and the status reads (counts, listing) go through indexes, never a scan of the history."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookqueue import FakeClock, Queue, QueueDatabase, TaskStatus
from hookqueue.core.models import from_us
from hookqueue.core.storage import Settlement
from hookqueue.core.store.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from hookqueue.core.store.statements import SQL_COUNTS, SQL_COUNTS_BY_TYPE

NOW_US = 1_700_000_000_000_000


def _index_names(path: Path) -> set[str]:
    conn = apsw.Connection(str(path))
    try:
        return {
            name for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")
        }
    finally:
        conn.close()


def _write_v1_file(path: Path) -> dict[int, str]:
    """A database as hookqueue wrote it at schema version 1, with a task in every status."""
    conn = apsw.Connection(str(path))
    conn.execute(MIGRATIONS[0])
    conn.pragma("user_version", 1)
    conn.pragma("application_id", APPLICATION_ID)
    rows = {
        # status: (locked_by, lease_expires_at, finished_at)
        "queued": (None, None, None),
        "running": ("w1", NOW_US + 60_000_000, None),
        "completed": (None, None, NOW_US),
        "failed": (None, None, NOW_US),
        "cancelled": (None, None, NOW_US),
    }
    statuses: dict[int, str] = {}
    with conn:
        for n, (status, (locked_by, expires, finished)) in enumerate(rows.items()):
            for task_type in ("a", "b"):
                conn.execute(
                    "INSERT INTO tasks (queue, task_type, payload, priority, status, attempts, "
                    "max_attempts, run_after, locked_by, lease_expires_at, created_at, finished_at) "
                    "VALUES ('default', ?, ?, 0, ?, ?, 3, ?, ?, ?, ?, ?)",
                    (
                        task_type,
                        f'{{"n": {n}}}',
                        status,
                        0 if status == "queued" else 1,
                        NOW_US,
                        locked_by,
                        expires,
                        NOW_US,
                        finished,
                    ),
                )
                statuses[conn.last_insert_rowid()] = status
    conn.close()
    return statuses


def test_a_version_1_file_is_migrated_with_its_tasks(db_path: Path) -> None:
    statuses = _write_v1_file(db_path)
    assert "tasks_status" in _index_names(db_path)
    clock = FakeClock(from_us(NOW_US + 1_000_000))  # inside the running task's lease
    q = Queue(db_path, load_entrypoints=False, clock=clock, durability="normal")
    try:
        assert q.db.schema_version() == SCHEMA_VERSION == 6
        assert q.db.check() == []
        assert q.counts() == {s.value: 2 for s in TaskStatus}
        assert q.counts(by_type=True) == {t: {s.value: 1 for s in TaskStatus} for t in "ab"}
        for status in TaskStatus:
            assert {t.id for t in q.list(status=status)} == {
                tid for tid, s in statuses.items() if s == status.value
            }
        # The queued tasks are still leasable after the migration.
        leased = q.runtime.lease("w2", limit=10)
        assert sorted(t.id for t in leased) == sorted(
            tid for tid, s in statuses.items() if s == "queued"
        )
    finally:
        q.close()
    names = _index_names(db_path)
    assert "tasks_status" not in names and "tasks_terminal" in names


def test_a_new_file_gets_the_same_indexes_as_a_migrated_one(tmp_path: Path) -> None:
    _write_v1_file(tmp_path / "old.db")
    QueueDatabase(tmp_path / "old.db").initialize_schema()
    QueueDatabase(tmp_path / "new.db").initialize_schema()
    assert _index_names(tmp_path / "old.db") == _index_names(tmp_path / "new.db")
    assert _table_sql(tmp_path / "old.db") == _table_sql(tmp_path / "new.db")


def _table_sql(path: Path) -> str:
    conn = apsw.Connection(str(path))
    try:
        sql: str = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'tasks'").get
    finally:
        conn.close()
    return " ".join(sql.replace("tasks_v3", "tasks").split())


def test_a_migrated_file_never_reuses_the_id_of_a_pruned_task(db_path: Path) -> None:
    """Schema v3 rebuilt the table with AUTOINCREMENT: after the newest tasks are pruned,
    the next task still gets a new id (the largest id ever used, plus one)."""
    statuses = _write_v1_file(db_path)
    newest = max(statuses)
    clock = FakeClock(from_us(NOW_US + 30 * 86_400_000_000))
    with Queue(db_path, load_entrypoints=False, clock=clock, durability="normal") as q:
        assert statuses[newest] in ("completed", "failed", "cancelled")
        assert q.prune(older_than=0) == 6
        assert q.enqueue("after").id == newest + 1
        q.prune(older_than=0)
        q.runtime.lease("w", limit=100)
        assert q.enqueue("again").id == newest + 2


def _plan(conn: apsw.Connection, sql: str, bindings: Any = ()) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, bindings)]


def test_counts_read_indexes_only(core_queue: Queue) -> None:
    conn = core_queue.db._cx.conn()
    for sql in (SQL_COUNTS, SQL_COUNTS_BY_TYPE):
        scans = [d for d in _plan(conn, sql) if d.startswith(("SCAN", "SEARCH"))]
        assert len(scans) == 3, scans
        # The active statuses through their partial indexes, the final ones through the
        # history index: never a read of the whole table.
        assert all("INDEX" in d for d in scans), scans
        assert "tasks_terminal" in scans[2], scans


def _listing_plans(q: Queue, **filters: Any) -> list[str]:
    conn = q.db._cx.conn()
    seen: list[tuple[str, Any]] = []

    def trace(_cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        seen.append((sql, bindings))
        return True

    conn.exec_trace = trace
    try:
        q.list(**filters)
    finally:
        conn.exec_trace = None
    [(sql, bindings)] = [(s, b) for s, b in seen if s.lstrip().startswith("SELECT")]
    return _plan(conn, sql, bindings)


@pytest.mark.parametrize(("status", "index"), [("queued", "tasks_due"), ("running", "tasks_lease")])
def test_listing_an_active_status_reads_its_partial_index(
    core_queue: Queue, status: str, index: str
) -> None:
    core_queue.enqueue("t")
    for filters in ({}, {"task_type": "t"}, {"queue": "default", "newest_first": True}):
        plan = _listing_plans(core_queue, status=status, **filters)
        assert any(index in d for d in plan), plan
        assert not any(d == "SCAN tasks" for d in plan), plan


def test_check_reports_a_finish_instant_that_disagrees_with_the_status(
    core_queue: Queue, db_path: Path
) -> None:
    done = core_queue.enqueue("t")
    waiting = core_queue.enqueue("t")
    core_queue.cancel(done.id)
    assert core_queue.db.check() == []
    conn = apsw.Connection(str(db_path))
    with conn:
        conn.execute("UPDATE tasks SET finished_at = NULL WHERE id = ?", (done.id,))
        conn.execute("UPDATE tasks SET finished_at = 1 WHERE id = ?", (waiting.id,))
    conn.close()
    assert sorted(core_queue.db.check()) == [
        f"task {done.id} is cancelled but its finished_at is missing",
        f"task {waiting.id} is queued but its finished_at is set",
    ]


# -- listing: every combination of filters returns what filtering everything would -----------


@pytest.fixture(scope="module")
def mixed_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Queue]:
    """60 tasks over two types, two queues and every status, made through the public API."""
    path = tmp_path_factory.mktemp("mixed") / "queue.db"
    q = Queue(path, load_entrypoints=False, clock=FakeClock(), durability="normal")
    kinds = itertools.cycle(["queued", "running", "complete", "fail", "cancel", "queued"])
    for i in range(60):
        kind = next(kinds)
        # The tasks left queued wait an hour, so each lease below takes the task just made.
        delay = 3600 if kind in ("queued", "cancel") else None
        task = q.enqueue("a" if i % 3 else "b", i, queue="q1" if i % 4 else "q2", delay=delay)
        if kind == "cancel":
            q.cancel(task.id)
        elif kind != "queued":
            [leased] = q.runtime.lease("w", queues=[task.queue], limit=1)
            assert leased.id == task.id
            if kind != "running":
                outcome = Settlement(task_id=task.id, kind=kind, error="x")
                q.runtime.settle("w", [outcome])
    yield q
    q.close()


@settings(max_examples=150, deadline=None)
@given(
    statuses=st.lists(st.sampled_from(list(TaskStatus)), max_size=4),
    task_type=st.none() | st.sampled_from(["a", "b", "c"]),
    queue_name=st.none() | st.sampled_from(["q1", "q2"]),
    limit=st.integers(1, 70),
    after_id=st.none() | st.integers(0, 61),
    newest_first=st.booleans(),
)
def test_listing_matches_filtering_every_task(
    mixed_queue: Queue,
    statuses: list[TaskStatus],
    task_type: str | None,
    queue_name: str | None,
    limit: int,
    after_id: int | None,
    newest_first: bool,
) -> None:
    everything = mixed_queue.list(limit=1000)
    assert len(everything) == 60 and {t.status for t in everything} == set(TaskStatus)
    expected = [
        t
        for t in sorted(everything, key=lambda t: t.id, reverse=newest_first)
        if (not statuses or t.status in statuses)
        and (task_type is None or t.task_type == task_type)
        and (queue_name is None or t.queue == queue_name)
        and (after_id is None or (t.id < after_id if newest_first else t.id > after_id))
    ][:limit]
    got = mixed_queue.list(
        status=statuses,
        task_type=task_type,
        queue=queue_name,
        limit=limit,
        after_id=after_id,
        newest_first=newest_first,
    )
    assert got == expected


def test_a_version_5_file_is_migrated_to_hold_limits(db_path: Path) -> None:
    """v5 → v6 adds the limits' tables and keeps the tasks: a v5 file's queued task is
    leased under a limit stored after the migration."""
    from hookqueue.core.models import LeasePlan, LimitRule

    conn = apsw.Connection(str(db_path))
    for step in MIGRATIONS[:5]:
        conn.execute(step)
    conn.pragma("user_version", 5)
    conn.pragma("application_id", APPLICATION_ID)
    conn.execute(
        "INSERT INTO tasks (queue, task_type, payload, priority, status, max_attempts, "
        "run_after, created_at) VALUES ('default', 't', '{}', 0, 'queued', 1, ?, ?)",
        (NOW_US, NOW_US),
    )
    conn.close()
    db = QueueDatabase(db_path, durability="normal")
    try:
        assert db.schema_version() == 6
        assert db.set_limit(LimitRule(name="one", concurrency=1), NOW_US) == "created"
        leased, _ = db.lease(
            worker_id="w",
            queues=["default"],
            limit=5,
            now_us=NOW_US,
            lease_us=1_000_000,
            plan=LeasePlan(stored_limits=True),
            decide_expired=lambda t: (None, ""),
        )
        assert len(leased) == 1
        assert db.check() == []
    finally:
        db.close()
