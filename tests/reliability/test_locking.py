"""Locks: another process holds the database longer than hookqueue's busy timeout.

The lock holder is a separate process using plain SQLite (``_procs.py lock``), as a
migration, a backup tool or a stuck writer would. hookqueue waits ``busy_timeout`` seconds,
then raises ``DatabaseBusy`` naming the database; nothing is half-written, and work resumes
as soon as the lock goes.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hookqueue import DatabaseBusy, Queue, TaskStatus, WorkerEngine

from . import _faults
from .conftest import FaultRecord

pytestmark = pytest.mark.slow

BUSY_TIMEOUT = 0.3


@contextmanager
def holding_lock(db: Path, seconds: float, mode: str) -> Iterator[subprocess.Popen[str]]:
    """Start a process that holds the lock; yield once it holds it; wait for it to end."""
    proc = subprocess.Popen(
        _faults.child_command("_procs.py", "lock", db, seconds, mode),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "locked", (
        f"the lock holder did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
    )
    try:
        yield proc
    finally:
        if proc.poll() is None and seconds > 60:
            proc.kill()
        proc.communicate(timeout=30)


def _seeded(db: Path) -> list[tuple[object, ...]]:
    with Queue(db, load_entrypoints=False) as q:
        q.enqueue_many([{"task_type": "job", "payload": {"i": i}} for i in range(20)])
    return _faults.rows(db, "SELECT * FROM tasks ORDER BY id")


def test_write_lock_held_longer_than_busy_timeout(tmp_path: Path, fault: FaultRecord) -> None:
    """While another process holds a write transaction with uncommitted changes for 3 s,
    enqueue, enqueue_many, lease and cancel each wait busy_timeout and raise DatabaseBusy
    naming the database; reads go on and never see the uncommitted changes; afterwards
    every operation works and the database is exactly as before plus the new work."""
    fault.describe("Write lock held by another process for longer than busy_timeout")
    db = tmp_path / "queue.db"
    before = _seeded(db)
    q = Queue(db, load_entrypoints=False, busy_timeout=BUSY_TIMEOUT)
    waits = []
    try:
        with holding_lock(db, 3.0, "immediate"):
            for name, op in [
                ("enqueue", lambda: q.enqueue("job", {"i": 99})),
                ("enqueue_many", lambda: q.enqueue_many([{"task_type": "job"}] * 3)),
                ("lease", lambda: q.runtime.lease("w", limit=5)),
                ("cancel", lambda: q.cancel(1)),
            ]:
                started = time.monotonic()
                with pytest.raises(DatabaseBusy) as info:
                    op()
                waits.append(time.monotonic() - started)
                fault.inject()
                assert str(db) in str(info.value), name
                assert f"busy_timeout={BUSY_TIMEOUT}" in str(info.value)
            # WAL readers are not blocked, and see only committed data.
            assert q.counts()["queued"] == 20
            assert [t.priority for t in q.list()] == [100] * 20
        assert _faults.rows(db, "SELECT * FROM tasks ORDER BY id") == before
        q.enqueue("job", {"i": 99})
        assert len(q.runtime.lease("w", limit=5)) == 5
        assert q.check() == []
    finally:
        q.close()
    assert min(waits) >= BUSY_TIMEOUT * 0.9, waits
    fault.figure("busy_timeout (s)", BUSY_TIMEOUT)
    fault.figure("longest wait before DatabaseBusy (s)", round(max(waits), 2))
    fault.figure("operations refused", len(waits))


def test_lock_holder_killed_mid_transaction(tmp_path: Path, fault: FaultRecord) -> None:
    """A process SIGKILLed while it holds the write lock with uncommitted changes releases
    the lock with its death: the next enqueue succeeds at once, the dead process's changes
    are gone, and integrity_check is clean."""
    fault.describe("Process holding the write lock SIGKILLed mid-transaction")
    db = tmp_path / "queue.db"
    before = _seeded(db)
    with holding_lock(db, 3600, "immediate") as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        fault.inject()
    with Queue(db, load_entrypoints=False, busy_timeout=BUSY_TIMEOUT) as q:
        started = time.monotonic()
        q.enqueue("job", {"i": 99})
        waited = time.monotonic() - started
        assert q.check() == []
    assert _faults.rows(db, "SELECT * FROM tasks ORDER BY id")[:20] == before
    fault.figure("enqueue after the kill (s)", round(waited, 3))


def test_exclusive_lock_blocks_readers_too(tmp_path: Path, fault: FaultRecord) -> None:
    """A process in locking_mode=EXCLUSIVE keeps even readers out: opening the queue raises
    DatabaseBusy naming the database after busy_timeout; once it closes, the queue opens
    and every task is there."""
    fault.describe("Exclusive lock (locking_mode=EXCLUSIVE) held by another process")
    db = tmp_path / "queue.db"
    _seeded(db)
    with holding_lock(db, 1.5, "exclusive"):
        started = time.monotonic()
        with pytest.raises(DatabaseBusy) as info:
            Queue(db, load_entrypoints=False, busy_timeout=BUSY_TIMEOUT).counts()
        waited = time.monotonic() - started
        fault.inject()
        assert str(db) in str(info.value)
    with Queue(db, load_entrypoints=False, busy_timeout=BUSY_TIMEOUT) as q:
        assert q.counts()["queued"] == 20
        assert q.check() == []
    fault.figure("wait before DatabaseBusy (s)", round(waited, 2))


def test_running_worker_resumes_after_the_lock_goes(tmp_path: Path, fault: FaultRecord) -> None:
    """A worker inside run() that meets a lock held longer than its busy timeout keeps
    running, and completes work enqueued after the lock goes."""
    fault.describe("Write lock outlasts busy_timeout while a long-running worker works")
    db = tmp_path / "queue.db"
    Queue(db, load_entrypoints=False).close()
    q = Queue(db, load_entrypoints=False, busy_timeout=BUSY_TIMEOUT)
    release = threading.Event()

    def job(task: object) -> str:
        # The first task finishes while the lock is held, so its completion must be written
        # then; later tasks finish at once.
        release.wait(10)
        return "done"

    q.handlers.register_handler("job", job)
    worker = WorkerEngine(
        q, worker_id="steady", concurrency=2, lease_seconds=3, heartbeat_interval=0.5
    )
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(worker.run_async())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert worker.wait_started(10)
        first = q.enqueue("job", {"n": "first"})
        deadline = time.monotonic() + 10
        while q.get(first.id).status is not TaskStatus.RUNNING:
            assert time.monotonic() < deadline, "the worker did not lease the first task"
            time.sleep(0.01)
        with holding_lock(db, 1.5, "immediate"):
            release.set()
            fault.inject()
        late = q.enqueue("job", {"n": "after"})
        deadline = time.monotonic() + 5
        while (
            q.get(late.id).status is not TaskStatus.COMPLETED
            and thread.is_alive()
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        fault.figure("worker stopped with", type(failure[0]).__name__ if failure else "-")
        assert not failure, f"the worker stopped: {failure[0]!r}"
        assert q.get(first.id).status is TaskStatus.COMPLETED
        assert q.get(late.id).status is TaskStatus.COMPLETED
    finally:
        worker.stop()
        thread.join(10)
        q.close()
