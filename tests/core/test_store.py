"""QueueDatabase: files, permissions, identity, schema versions, errors, concurrency of setup."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import apsw
import pytest

from hookqueue import (
    DatabaseBusy,
    NotAHookqueueDatabase,
    Queue,
    QueueDatabase,
    SchemaTooNew,
    StoreError,
    ValidationError,
)
from hookqueue.core.models import LeasePlan, TaskFilter, TaskStatus, WorkerInfo
from hookqueue.core.storage import InsertRow
from hookqueue.core.store import APPLICATION_ID, SCHEMA_VERSION, default_database_path
from hookqueue.core.store.connection import (
    WAL_CHECKPOINT_PAGES,
    BusyHandler,
    WalCheckpointer,
    checkpoint_after_commit,
)
from hookqueue.core.store.schema import verify_identity


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_files_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "q.db"
    with QueueDatabase(path) as db:
        db.initialize_schema()
        Queue(db, load_entrypoints=False).enqueue("t")
        for suffix in ("", "-wal", "-shm"):
            assert _mode(Path(f"{path}{suffix}")) == 0o600, suffix
    assert _mode(path.parent) == 0o700


def test_default_path_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_database_path() == tmp_path / "data" / "hookqueue" / "queue.db"
    monkeypatch.setenv("HOOKQUEUE_DB", str(tmp_path / "explicit.db"))
    assert default_database_path() == tmp_path / "explicit.db"
    db = QueueDatabase()
    assert db.path == tmp_path / "explicit.db"


def test_db_path_keyword_and_bad_arguments(tmp_path: Path) -> None:
    assert QueueDatabase(db_path=tmp_path / "a.db").path == tmp_path / "a.db"
    with pytest.raises(ValidationError, match="db_path"):
        QueueDatabase(tmp_path / "a.db", db_path=tmp_path / "b.db")
    with pytest.raises(ValidationError, match="durability"):
        QueueDatabase(tmp_path / "a.db", durability="fast")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="in-memory"):
        QueueDatabase(":memory:")
    with pytest.raises(ValidationError, match="busy_timeout"):
        QueueDatabase(tmp_path / "a.db", busy_timeout=-1)


def test_initialize_schema_is_idempotent(db_path: Path) -> None:
    db = QueueDatabase(db_path)
    db.initialize_schema()
    db.initialize_schema()
    assert db.schema_version() == SCHEMA_VERSION
    db.close()
    db2 = QueueDatabase(db_path)
    db2.initialize_schema()
    assert db2.check() == []
    db2.close()


def test_a_foreign_sqlite_file_is_refused_and_left_untouched(db_path: Path) -> None:
    conn = apsw.Connection(str(db_path))
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    conn.execute("INSERT INTO invoices (amount) VALUES (12.5)")
    conn.close()
    before = db_path.read_bytes()
    with pytest.raises(NotAHookqueueDatabase, match=str(db_path)):
        QueueDatabase(db_path).initialize_schema()
    assert db_path.read_bytes() == before


def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(db_path: Path) -> None:
    db_path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = db_path.read_bytes()
    with pytest.raises(NotAHookqueueDatabase) as info:
        QueueDatabase(db_path).initialize_schema()
    assert str(db_path) in str(info.value) and "not modified" in str(info.value)
    assert db_path.read_bytes() == before


def test_a_newer_schema_is_refused(db_path: Path) -> None:
    QueueDatabase(db_path).initialize_schema()
    conn = apsw.Connection(str(db_path))
    conn.pragma("user_version", SCHEMA_VERSION + 1)
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer hookqueue"):
        QueueDatabase(db_path).initialize_schema()
    conn = apsw.Connection(str(db_path))
    assert conn.pragma("user_version") == SCHEMA_VERSION + 1
    assert conn.pragma("application_id") == APPLICATION_ID
    conn.close()


#: A child that imports hookqueue, says "ready", waits for a line on stdin, then opens the
#: database and enqueues one task: the parent releases all children at once, so their
#: first opening of the new file overlaps as closely as processes can.
_INIT_AT_ONCE = """
import sys
from hookqueue import Queue, QueueDatabase
print("ready", flush=True)
sys.stdin.readline()
d = QueueDatabase(sys.argv[1])
d.initialize_schema()
Queue(d, load_entrypoints=False).enqueue("t")
"""


def test_several_processes_initialising_a_new_file_at_once(tmp_path: Path) -> None:
    # Two races lived here, each hit in a few percent of rounds: reading the file's identity
    # in three snapshots (another process's tables seen without its application_id: "not a
    # hookqueue database"), and switching to WAL while another process did (SQLite answers
    # the loser SQLITE_BUSY at once, without calling the busy handler). Ten rounds of six
    # processes released together caught them nearly every run before the fix.
    for round_ in range(10):
        db = tmp_path / f"shared{round_}.db"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _INIT_AT_ONCE, str(db)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(6)
        ]
        try:
            for p in procs:
                assert p.stdout is not None and p.stdout.readline() == b"ready\n"
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(b"go\n")
                p.stdin.flush()
            for p in procs:
                _, err = p.communicate(timeout=60)
                assert p.returncode == 0, f"round {round_}: {err.decode()}"
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        q = Queue(db, load_entrypoints=False)
        assert q.counts()["queued"] == 6 and q.check() == []
        assert q.db._cx.conn().pragma("journal_mode") == "wal"
        q.close()


def test_the_identity_is_read_in_one_snapshot(tmp_path: Path) -> None:
    # Another process initialises the file between the first and the second statement the
    # check runs (if it runs two). Read one value at a time, the check saw its user_version
    # and tables without its application_id and refused a hookqueue database as foreign.
    path = tmp_path / "q.db"
    checked = apsw.Connection(str(path))
    other = QueueDatabase(path)
    statements = 0

    def initialise_after_the_first_statement(cursor: Any, sql: str, bindings: Any) -> bool:
        nonlocal statements
        statements += 1
        if statements == 2:
            other.initialize_schema()
        return True

    checked.exec_trace = initialise_after_the_first_statement
    verify_identity(checked, path)  # the file was empty when it was read: accepted
    checked.exec_trace = None
    verify_identity(checked, path)  # and initialised now: accepted too
    assert other.schema_version() == SCHEMA_VERSION
    checked.close()
    other.close()


def _hold_rollback_write_lock(path: Path) -> apsw.Connection:
    """A connection holding the write lock of ``path`` in rollback-journal mode, as another
    process does while it creates the file or switches it to WAL."""
    holder = apsw.Connection(str(path))
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_the_switch_to_wal_waits_for_another_connections_write_lock(tmp_path: Path) -> None:
    # SQLite refuses the switch at once while another connection writes (no busy handler
    # call); QueueDatabase retries it within busy_timeout instead of failing.
    path = tmp_path / "q.db"
    holder = _hold_rollback_write_lock(path)
    release = threading.Timer(0.2, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        started = time.monotonic()
        db = QueueDatabase(path, busy_timeout=10)
        db.initialize_schema()
        assert time.monotonic() - started >= 0.15  # it did wait for the lock
        assert db._cx.conn().pragma("journal_mode") == "wal"
        assert db.schema_version() == SCHEMA_VERSION
        db.close()
    finally:
        release.join()
        holder.close()


def test_the_switch_to_wal_gives_up_after_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    holder = _hold_rollback_write_lock(path)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseBusy, match="busy_timeout=0.3s"):
            QueueDatabase(path, busy_timeout=0.3).initialize_schema()
        assert time.monotonic() - started >= 0.3
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # Nothing was written: the file is still empty and not in WAL mode; a later open takes it.
    conn = apsw.Connection(str(path))
    assert conn.pragma("journal_mode") == "delete"
    assert conn.execute("SELECT count(*) FROM sqlite_schema").get == 0
    conn.close()
    db = QueueDatabase(path)
    db.initialize_schema()
    assert db.schema_version() == SCHEMA_VERSION
    db.close()


def test_a_lock_held_too_long_is_a_clear_busy_error_and_nothing_is_lost(db_path: Path) -> None:
    q = Queue(db_path, load_entrypoints=False, busy_timeout=0.2)
    q.enqueue("before")
    blocker = apsw.Connection(str(db_path))
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(DatabaseBusy, match="busy_timeout=0.2s"):
        q.enqueue("during")
    blocker.execute("ROLLBACK")
    blocker.close()
    q.enqueue("after")
    assert [t.task_type for t in q.list()] == ["before", "after"]
    q.close()


def test_check_reports_inconsistent_rows(db_path: Path) -> None:
    q = Queue(db_path, load_entrypoints=False)
    t = q.enqueue("t")
    conn = apsw.Connection(str(db_path))
    conn.execute("UPDATE tasks SET status = 'running', locked_by = NULL WHERE id = ?", (t.id,))
    conn.close()
    problems = q.check()
    assert problems == [f"task {t.id} is running without a lease owner"]
    q.close()


def test_closed_database_refuses_work_clearly(db_path: Path) -> None:
    db = QueueDatabase(db_path)
    db.initialize_schema()
    db.close()
    db.close()
    with pytest.raises(StoreError, match="closed"):
        db.get(1)


def test_the_store_runs_no_statement_it_is_given(db_path: Path) -> None:
    """Plugins reach data through named store methods only: the old read-only escape hatch
    (``query``) is gone, so no plugin can depend on the schema."""
    with QueueDatabase(db_path) as db:
        assert not hasattr(db, "query")


def test_each_thread_and_each_forked_child_gets_its_own_connection(db_path: Path) -> None:
    import threading

    db = QueueDatabase(db_path)
    db.initialize_schema()
    mine = db._cx.conn()
    other: list[object] = []
    th = threading.Thread(target=lambda: other.append(db._cx.conn()))
    th.start()
    th.join()
    assert other[0] is not mine
    assert db._cx.conn() is mine
    Queue(db, load_entrypoints=False).enqueue("t")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        try:
            child = db._cx.conn()
            Queue(db, load_entrypoints=False).enqueue("t")
            report = f"{child is not mine} {db.counts()['queued']}"
        except BaseException as exc:
            report = repr(exc)
        os.write(write, report.encode())
        os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 60
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:  # a child stuck on a lock another thread held
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish in 60 s")
        time.sleep(0.01)
    status = waited[1]
    with os.fdopen(read) as reader:
        assert reader.read() == "True 2"
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection is still its own and still works.
    assert db._cx.conn() is mine and db.counts()["queued"] == 2
    db.close()


class _CheckpointFails:
    """A connection whose checkpoint raises ``error`` (what SQLite reports when another
    process holds the checkpoint lock, or when the disk fails)."""

    filename = "q.db"

    def __init__(self, error: apsw.Error) -> None:
        self.error = error
        self.calls = 0

    def wal_checkpoint(self, dbname: str, mode: int = apsw.SQLITE_CHECKPOINT_PASSIVE) -> None:
        self.calls += 1
        raise self.error


@pytest.mark.parametrize(
    ("error", "level"),
    [
        (apsw.BusyError("database is locked"), logging.DEBUG),
        (apsw.LockedError("database table is locked"), logging.DEBUG),
        (apsw.IOError("disk I/O error"), logging.WARNING),
    ],
)
def test_a_failed_checkpoint_leaves_the_commit_and_warns_only_about_real_failures(
    caplog: pytest.LogCaptureFixture, error: apsw.Error, level: int
) -> None:
    """Under several writers, another process checkpointing at the same moment is routine
    (one log line per commit was a flood); a disk error is worth a warning."""
    conn = _CheckpointFails(error)
    with caplog.at_level(logging.DEBUG, logger="hookqueue.store"):
        assert checkpoint_after_commit(conn, "main", WAL_CHECKPOINT_PAGES - 1) == apsw.SQLITE_OK
        assert conn.calls == 0  # under the threshold: no checkpoint
        assert checkpoint_after_commit(conn, "main", WAL_CHECKPOINT_PAGES) == apsw.SQLITE_OK
    assert conn.calls == 1
    (record,) = caplog.records
    assert record.levelno == level and "q.db" in record.getMessage()


def test_a_connection_that_cannot_return_to_full_sync_is_replaced(tmp_path: Path) -> None:
    """After a relaxed lease the connection goes back to synchronous=FULL; if it cannot
    (stuck in a transaction), it is closed and the next call opens a fresh, fully synced
    one — no later write on the thread commits unsynced."""
    with QueueDatabase(tmp_path / "q.db", durability="full") as db:
        db.initialize_schema()
        stuck = db._cx.conn()
        stuck.execute("BEGIN")
        db._cx._restore_full_sync()
        fresh = db._cx.conn()
        assert fresh is not stuck
        assert fresh.pragma("synchronous") == 2 and not fresh.in_transaction
        with pytest.raises(apsw.ConnectionClosedError):
            stuck.execute("SELECT 1")


def _row(**changes: Any) -> InsertRow:
    fields: dict[str, Any] = {
        "queue": "default",
        "task_type": "t",
        "payload_json": "{}",
        "priority": 100,
        "max_attempts": 1,
        "run_after_us": 0,
        "idempotency_key": None,
        "timeout": None,
        "headers_json": None,
    }
    return InsertRow(**{**fields, **changes})


def test_insert_one_writes_one_task_or_nothing(db_path: Path) -> None:
    db = QueueDatabase(db_path)
    db.initialize_schema()
    task_id = db.insert_one(_row(), 1_000_000)
    assert db.get(task_id).task_type == "t"
    # A keyed row needs insert()'s look-up of the existing task: refused, nothing written.
    with pytest.raises(ValueError, match="use insert"):
        db.insert_one(_row(idempotency_key="k"), 1_000_000)
    # A row the schema refuses (max_attempts below 1) is rolled back, and the connection
    # is left usable, outside any transaction.
    with pytest.raises(StoreError):
        db.insert_one(_row(max_attempts=0), 1_000_000)
    assert not db._cx.conn().in_transaction
    assert db.counts()["queued"] == 1 and db.find_by_key("k") is None
    db.close()


@pytest.mark.parametrize("vfs", ["unix-dotfile", "unix-none"])
def test_a_file_that_cannot_use_wal_is_refused(tmp_path: Path, vfs: str) -> None:
    # SQLite's dot-file and no-locking VFSes have no shared memory, like some network file
    # systems: asked for WAL, SQLite answers with the old mode and no error.
    path = tmp_path / "q.db"
    with pytest.raises(StoreError, match="cannot use write-ahead logging") as info:
        QueueDatabase(path, vfs=vfs).initialize_schema()
    assert "'delete'" in str(info.value) and f"vfs={vfs!r}" in str(info.value)
    # Nothing was written: the file is still empty, and the default VFS takes it.
    conn = apsw.Connection(str(path))
    assert conn.execute("SELECT count(*) FROM sqlite_schema").get == 0
    conn.close()
    db = QueueDatabase(path)
    db.initialize_schema()
    assert db._cx.conn().pragma("journal_mode") == "wal"
    db.close()


def test_a_damaged_payload_does_not_stop_a_partitioned_lease(db_path: Path) -> None:
    now = 1_900_000_000_000_000
    db = QueueDatabase(db_path, durability="normal")
    ids = [
        db.insert_one(_row(payload_json='{"tenant": "a"}', run_after_us=now), now) for _ in "abc"
    ]
    raw = apsw.Connection(str(db_path))
    raw.execute("UPDATE tasks SET payload = '{not json' WHERE id = ?", (ids[1],))
    raw.close()
    plan = LeasePlan(partition_key="tenant", rerank=lambda cands, n: [c.id for c in cands][:n])
    try:
        leased, _ = db.lease(
            worker_id="w",
            queues=["default"],
            limit=3,
            now_us=now,
            lease_us=30_000_000,
            plan=plan,
            decide_expired=lambda task: (None, "expired"),
        )
        assert {t.id for t in leased} == {ids[0], ids[2]}
        assert db.list(statuses=[TaskStatus.RUNNING], limit=10) == leased
    finally:
        db.close()


def test_a_row_that_is_not_utf8_is_changed_and_reported_by_bulk_actions(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Text that is not UTF-8 (which the engine cannot even read) in one row of a bulk
    action's batch neither rolls the batch back nor raises: the task is changed like the
    others and reported in ``damaged``, logged."""
    now = 1_900_000_000_000_000
    db = QueueDatabase(db_path, durability="normal")
    ids = [db.insert_one(_row(run_after_us=now), now) for _ in range(3)]
    raw = apsw.Connection(str(db_path))
    raw.execute("UPDATE tasks SET payload = CAST(X'7B80' AS TEXT) WHERE id = ?", (ids[1],))
    raw.close()
    try:
        with caplog.at_level(logging.ERROR):
            cancelled = db.cancel_matching(TaskFilter(), now + 1)
        assert sorted(t.id for _, t in cancelled.changed) == [ids[0], ids[2]]
        assert cancelled.damaged == (ids[1],)
        assert f"task {ids[1]} is damaged" in caplog.text and "UTF-8" in caplog.text
        assert db.counts()["cancelled"] == 3
        requeued = db.requeue_matching(TaskFilter(), now + 2)
        assert sorted(t.id for t in requeued.changed) == [ids[0], ids[2]]
        assert requeued.damaged == (ids[1],)
        assert db.counts()["queued"] == 3
    finally:
        db.close()


def test_a_worker_record_that_is_not_utf8_is_left_out_of_workers(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker record whose text the engine cannot read is left out of ``workers()`` and
    logged; the other workers are listed."""
    db = QueueDatabase(db_path, durability="normal")
    now = 1_900_000_000_000_000
    for n, worker_id in enumerate(("w1", "w2", "w3")):
        at = now + n
        db.register_worker(WorkerInfo.from_row((worker_id, "h", 1, '["q"]', 1, at, at, None, 0)))
    raw = apsw.Connection(str(db_path))
    raw.execute("UPDATE workers SET hostname = CAST(X'80' AS TEXT) WHERE worker_id = 'w2'")
    raw.close()
    try:
        with caplog.at_level(logging.ERROR):
            assert [w.worker_id for w in db.workers()] == ["w1", "w3"]
        assert "worker record" in caplog.text and "left out" in caplog.text
    finally:
        db.close()


class _RecordsCheckpoints:
    """A connection that records each checkpoint's mode and whether the busy handler would
    have waited meanwhile; its RESTART checkpoints report busy (another reader)."""

    filename = "q.db"

    def __init__(self, busy: BusyHandler, passive_busy: bool = False) -> None:
        self.busy = busy
        self.passive_busy = passive_busy
        self.calls: list[tuple[str, int, bool]] = []

    def wal_checkpoint(self, dbname: str, mode: int = apsw.SQLITE_CHECKPOINT_PASSIVE) -> None:
        self.calls.append((dbname, mode, self.busy.patient))
        if mode != apsw.SQLITE_CHECKPOINT_PASSIVE or self.passive_busy:
            raise apsw.BusyError("database is locked")


def test_the_wal_hook_copies_then_restarts_the_log_without_waiting() -> None:
    """Past the threshold, a connection's WAL hook runs a passive checkpoint (it blocks no
    writer), then a RESTART one (so the log can start over although other connections keep
    writing), both with the busy handler impatient (a commit never waits for other
    connections); a RESTART that could not restart the log leaves the commit standing and
    the handler patient again, and when the passive one found another checkpoint running,
    no RESTART is tried."""
    busy = BusyHandler(5.0)
    hook = WalCheckpointer(busy)
    conn = _RecordsCheckpoints(busy)
    assert hook(conn, "main", WAL_CHECKPOINT_PAGES - 1) == apsw.SQLITE_OK  # type: ignore[arg-type]
    assert conn.calls == []
    assert hook(conn, "main", WAL_CHECKPOINT_PAGES) == apsw.SQLITE_OK  # type: ignore[arg-type]
    assert conn.calls == [
        ("main", apsw.SQLITE_CHECKPOINT_PASSIVE, False),
        ("main", apsw.SQLITE_CHECKPOINT_RESTART, False),
    ]
    assert busy.patient
    other = _RecordsCheckpoints(busy, passive_busy=True)
    assert hook(other, "main", WAL_CHECKPOINT_PAGES) == apsw.SQLITE_OK  # type: ignore[arg-type]
    assert other.calls == [("main", apsw.SQLITE_CHECKPOINT_PASSIVE, False)]
    assert busy.patient


def test_gauges_and_limit_usage_read_beside_a_writer_holding_the_lock(db_path: Path) -> None:
    """The metrics' gauges and the limits' usage are reads: while another connection holds
    the write lock they answer from the last commit at once — they would otherwise wait for
    the lock, and end in DatabaseBusy after ``busy_timeout``."""
    from hookqueue.core.models import LimitRule

    with Queue(db_path) as queue:
        queue.enqueue("t", {"tenant": "a"})
    with QueueDatabase(db_path, busy_timeout=0.5) as db:
        db.set_limit(LimitRule(name="one", concurrency=1), 1)
        other = apsw.Connection(str(db_path))
        other.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            now_us = time.time_ns() // 1000
            gauges = db.queue_gauges(now_us)
            usage = db.limit_usage(now_us)
            waited = time.monotonic() - started
        finally:
            other.execute("ROLLBACK")
            other.close()
    assert waited < 0.5, "a read waited for the write lock"
    assert [(g.queue, g.due) for g in gauges] == [("default", 1)]
    assert [(u.rule, u.due) for u in usage] == [("one", 1)]
