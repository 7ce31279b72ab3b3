"""A worker's claim gives way to other writers (issue #22).

A lease transaction does not sit in the busy handler while another connection holds the
write lock: it tries once without waiting, backs off, looks (a read) whether anything is
still left to claim, and tries again — so a producer's enqueue, which keeps the normal busy
wait, gets the lock first. These tests use a real second connection holding the write lock
on a real file; nothing in the store is replaced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw
import pytest

from hookqueue import FakeClock, Queue, TaskStatus, WorkerEngine
from hookqueue.core.errors import DatabaseBusy
from hookqueue.core.store.connection import Connections


def _holder(path: Path) -> apsw.Connection:
    """Another connection to the file (as another process's would be)."""
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(10_000)
    return conn


@contextmanager
def _traced() -> Iterator[list[str]]:
    """The SQL of every statement run on hookqueue connections opened inside the block
    (apsw's exec_trace: it sees each try, also one that SQLite answers with SQLITE_BUSY)."""
    seen: list[str] = []

    def trace(cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
        seen.append(" ".join(sql.split()))
        return True

    def hook(conn: apsw.Connection) -> None:
        conn.exec_trace = trace

    apsw.connection_hooks.append(hook)
    try:
        yield seen
    finally:
        apsw.connection_hooks.remove(hook)


def _connections(path: Path, busy_timeout: float = 0.3) -> Connections:
    cx = Connections(path, durability="normal", busy_timeout=busy_timeout, vfs=None)
    cx.conn().execute("CREATE TABLE IF NOT EXISTS t (x)")
    return cx


def test_yielding_begin_does_not_wait_in_the_busy_handler(tmp_path: Path) -> None:
    """With the lock taken, the yielding BEGIN gives up at once and asks whether it is still
    wanted; told no, it returns None with nothing begun. Once the lock is free it begins."""
    path = tmp_path / "q.db"
    cx = _connections(path)
    holder = _holder(path)
    holder.execute("BEGIN IMMEDIATE")
    asked: list[bool] = []

    def no() -> bool:
        asked.append(False)
        return False

    try:
        assert cx.begin_yielding(no) is None
        assert asked == [False]
        assert not cx.conn().in_transaction
    finally:
        holder.execute("ROLLBACK")
    conn = cx.begin_yielding(no)
    assert conn is not None and conn.in_transaction
    assert asked == [False]  # the lock was free: nothing to ask
    cx.rollback(conn)
    holder.close()
    cx.close()


def test_yielding_begin_still_gives_up_after_busy_timeout(tmp_path: Path) -> None:
    """A claim that is still wanted keeps trying, looking between tries, within busy_timeout
    like any other write — then DatabaseBusy naming the file, nothing written."""
    path = tmp_path / "q.db"
    cx = _connections(path, busy_timeout=0.3)
    holder = _holder(path)
    holder.execute("BEGIN IMMEDIATE")
    asked: list[bool] = []

    def yes() -> bool:
        asked.append(True)
        return True

    try:
        with pytest.raises(DatabaseBusy, match="q.db"), cx.errors:
            cx.begin_yielding(yes)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(asked) >= 2  # it backed off and looked again, more than once
    assert not cx.conn().in_transaction
    cx.close()


def test_claim_backs_off_and_finds_the_work_taken(tmp_path: Path) -> None:
    """While another connection holds the write lock and takes the due tasks, a lease does
    not wait for the lock: it tries, backs off, looks again, and once the other side has
    committed it sees nothing left and returns without a write transaction of its own."""
    path = tmp_path / "q.db"
    Queue(path, load_entrypoints=False).close()
    holder = _holder(path)  # opened outside the trace: only the queue's statements are seen
    with _traced() as seen:
        q = Queue(path, load_entrypoints=False, durability="normal")
        q.enqueue_many([{"task_type": "job", "payload": {"i": i}} for i in range(5)])
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("DELETE FROM tasks")  # another writer takes every task

        def commit_later() -> None:
            time.sleep(0.1)
            holder.execute("COMMIT")

        thread = threading.Thread(target=commit_later)
        seen.clear()
        thread.start()
        try:
            leased = q.runtime.lease("w", limit=5)
        finally:
            thread.join()
            holder.close()
        q.close()
    assert leased == []
    begins = [s for s in seen if s == "BEGIN IMMEDIATE"]
    assert len(begins) >= 2, seen  # it gave up at once and tried again
    assert "COMMIT" not in seen, seen  # and never took the lock: nothing was left to claim


def test_a_sweep_that_finds_the_lock_taken_still_sweeps(tmp_path: Path) -> None:
    """A sweep (``lease(limit=0)``) that finds the write lock taken keeps trying while a
    lease has expired, and once the lock is free it requeues the task."""
    path = tmp_path / "q.db"
    clock = FakeClock()
    q = Queue(path, load_entrypoints=False, durability="normal", clock=clock)
    q.enqueue("job", max_attempts=3)
    (held,) = q.runtime.lease("dead-worker", limit=1, lease_seconds=1.0)
    clock.advance(5)  # its lease has expired
    holder = _holder(path)
    holder.execute("BEGIN IMMEDIATE")

    def commit_later() -> None:
        time.sleep(0.1)
        holder.execute("COMMIT")

    thread = threading.Thread(target=commit_later)
    thread.start()
    try:
        assert q.runtime.lease("sweeper", limit=0) == []
    finally:
        thread.join()
        holder.close()
    task = q.get(held.id)
    assert task.status is TaskStatus.QUEUED and task.locked_by is None
    q.close()


def test_worker_finishes_everything_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    """A worker started while another connection holds the write lock (and adds a task in
    that transaction, as a producer would) runs every task exactly once."""
    path = tmp_path / "q.db"
    q = Queue(path, load_entrypoints=False, durability="normal")
    q.enqueue_many([{"task_type": "job", "payload": {"i": i}} for i in range(20)])
    ran: list[int] = []
    q.handlers.register_handler("job", lambda task: ran.append(task.payload["i"]))
    holder = _holder(path)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute(
        "INSERT INTO tasks (queue, task_type, payload, priority, status, attempts,"
        " max_attempts, run_after, created_at) VALUES ('default', 'job', '{\"i\":20}', 100,"
        " 'queued', 0, 1, 0, 0)"
    )
    worker = WorkerEngine(q, worker_id="w1", concurrency=4)
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(worker.run_until_idle()))
    thread.start()
    time.sleep(0.2)
    holder.execute("COMMIT")
    holder.close()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert sorted(ran) == list(range(21))
    assert q.counts()[TaskStatus.COMPLETED.value] == 21
    q.close()
