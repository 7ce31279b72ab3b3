"""Damaged and foreign files: corrupt, truncated, torn, not SQLite, not hookqueue, too new.

hookqueue must never write over a file it does not understand: it raises an error naming
the path and leaves the file byte for byte as it was. Damage inside a hookqueue database is
reported (``Queue.check()``, errors naming the path), never papered over with a new file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from hookqueue import (
    HookqueueError,
    NotAHookqueueDatabase,
    Queue,
    QueueDatabase,
    SchemaTooNew,
    StoreError,
    TaskStatus,
    WorkerEngine,
)
from hookqueue.core.errors import DamagedRow

from . import _faults
from .conftest import FaultRecord


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sidecars(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "-"))


def _hookqueue_db(path: Path, n: int = 200) -> Path:
    with Queue(path, load_entrypoints=False) as q:
        q.enqueue_many(
            [
                {
                    "task_type": "job",
                    "payload": {"i": i, "pad": "z" * 200},
                    "idempotency_key": f"k{i}",
                }
                for i in range(n)
            ]
        )
    assert not Path(str(path) + "-wal").exists(), "a clean close checkpoints and removes the WAL"
    return path


def _refused(path: Path, error: type[Exception]) -> str:
    """Open ``path`` every way a user can; each must raise ``error`` naming the path."""
    messages = []
    for opener in (
        lambda: QueueDatabase(path).initialize_schema(),
        lambda: Queue(path, load_entrypoints=False),
        lambda: WorkerEngine(QueueDatabase(path), worker_id="w").run_until_idle(),
    ):
        with pytest.raises(error) as info:
            opener()
        assert str(path) in str(info.value)
        assert "Fix:" in str(info.value)
        messages.append(str(info.value))
    return messages[0]


NOT_SQLITE = {
    "text file": b"Dear diary, today I pointed HOOKQUEUE_DB at my notes.\n" * 80,
    "random bytes": bytes(range(256)) * 16,
    "PNG image": b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000,
    "SQLite header only": b"SQLite format 3\x00" + b"\x10\x00\x01\x01",
}


@pytest.mark.parametrize("kind", list(NOT_SQLITE))
def test_file_that_is_not_sqlite(kind: str, tmp_path: Path, fault: FaultRecord) -> None:
    """Opening a file that is not SQLite raises NotAHookqueueDatabase naming the path, and
    the file is left byte for byte as it was, with no -wal or -shm created beside it."""
    fault.describe(f"Not an SQLite file ({kind})")
    path = tmp_path / "queue.db"
    path.write_bytes(NOT_SQLITE[kind])
    before = _digest(path)
    _refused(path, NotAHookqueueDatabase)
    fault.inject(3)
    assert _digest(path) == before
    assert _sidecars(path) == []


def test_sqlite_database_of_another_application(tmp_path: Path, fault: FaultRecord) -> None:
    """Another application's SQLite database (rollback journal, its own tables) is refused
    with NotAHookqueueDatabase naming the path; it is not switched to WAL, not migrated,
    not touched at all."""
    fault.describe("SQLite database of another application")
    path = tmp_path / "app.db"
    conn = _faults.raw_connection(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices (total) VALUES (12.5), (99.0)")
    conn.close()
    before = _digest(path)
    message = _refused(path, NotAHookqueueDatabase)
    fault.inject(3)
    assert "not a hookqueue database" in message
    assert _digest(path) == before
    assert _sidecars(path) == []
    assert _faults.rows(path, "SELECT total FROM invoices") == [(12.5,), (99.0,)]


def test_empty_sqlite_file_with_foreign_application_id(tmp_path: Path, fault: FaultRecord) -> None:
    """An SQLite file with no tables but another application's application_id is not taken
    over: NotAHookqueueDatabase, file unchanged."""
    fault.describe("Empty SQLite file that belongs to another application (application_id)")
    path = tmp_path / "other.db"
    conn = _faults.raw_connection(path)
    conn.pragma("application_id", 0x12345678)
    conn.close()
    before = _digest(path)
    _refused(path, NotAHookqueueDatabase)
    fault.inject(3)
    assert _digest(path) == before


def test_database_from_a_newer_hookqueue(tmp_path: Path, fault: FaultRecord) -> None:
    """A hookqueue database whose schema version is newer than this code is refused with
    SchemaTooNew naming the path and the versions, and is not modified."""
    fault.describe("Database written by a newer hookqueue (schema version 99)")
    path = _hookqueue_db(tmp_path / "queue.db", n=5)
    conn = _faults.raw_connection(path)
    conn.pragma("user_version", 99)
    conn.close()
    before = _digest(path)
    message = _refused(path, SchemaTooNew)
    fault.inject(3)
    assert "99" in message
    assert _digest(path) == before


@pytest.mark.parametrize("keep", [0.5, 0.1, 4096, 50])
def test_truncated_database(keep: float, tmp_path: Path, fault: FaultRecord) -> None:
    """A hookqueue database cut short (to half, a tenth, one page, 50 bytes) raises
    NotAHookqueueDatabase naming the path when opened, and is never re-created: its bytes
    stay as they were."""
    fault.describe(
        f"Truncated database (kept {keep if keep > 1 else f'{keep:.0%}'}{' bytes' if keep > 1 else ''})"
    )
    path = _hookqueue_db(tmp_path / "queue.db")
    size = path.stat().st_size
    os.truncate(path, int(keep) if keep > 1 else int(size * keep))
    before = _digest(path)
    with pytest.raises(NotAHookqueueDatabase) as info:
        with Queue(path, load_entrypoints=False) as q:
            # Some truncations leave the schema readable; reading the tasks finds the damage.
            q.list(limit=1000)
            q.counts()
    fault.inject()
    assert str(path) in str(info.value)
    assert _digest(path) == before
    fault.figure("bytes kept", path.stat().st_size)


def test_empty_file_becomes_a_new_queue(tmp_path: Path, fault: FaultRecord) -> None:
    """A zero-byte file holds no data; SQLite treats it as a new database and hookqueue
    initialises it (a file truncated to nothing cannot be told from one just created)."""
    fault.describe("Zero-byte file")
    path = tmp_path / "queue.db"
    path.write_bytes(b"")
    fault.inject()
    with Queue(path, load_entrypoints=False) as q:
        q.enqueue("job")
        assert q.counts()["queued"] == 1


def test_damaged_page_is_reported_not_hidden(tmp_path: Path, fault: FaultRecord) -> None:
    """Garbage over one interior page: opening refuses the file (when the page held part of
    the schema) or check() reports the damage, every operation that touches it raises
    NotAHookqueueDatabase (or another StoreError) naming the path, and the file is never
    replaced by a new one."""
    fault.describe("One interior page overwritten with garbage")
    path = _hookqueue_db(tmp_path / "queue.db")
    page = 4096
    with path.open("r+b") as f:
        f.seek((size_pages := path.stat().st_size // page) // 2 * page)
        f.write(bytes(range(256)) * (page // 256))
    fault.inject()
    size = path.stat().st_size
    raised: dict[str, str] = {}
    try:
        q = Queue(path, load_entrypoints=False)
    except StoreError as exc:
        # The page held part of the schema: the file is refused at open, naming it.
        assert str(path) in str(exc) and "not modified" in str(exc)
        raised["open"] = type(exc).__name__
        problems = [str(exc)]
    else:
        with q:
            try:
                problems = q.check()
            except StoreError as exc:  # integrity_check itself may give up on a malformed file
                assert str(path) in str(exc)
                problems = [str(exc)]
            for name, op in {
                "counts": q.counts,
                "list": lambda: q.list(limit=1000),
                "find": lambda: q.find("k150"),
                "lease": lambda: q.runtime.lease("w", limit=500),
            }.items():
                try:
                    op()
                except StoreError as exc:
                    assert str(path) in str(exc)
                    raised[name] = type(exc).__name__
    assert problems, "check() did not notice a page of garbage"
    assert path.stat().st_size >= size
    fault.figure("damaged page", f"{size_pages // 2} of {size_pages}")
    fault.figure("check() problems", len(problems))
    fault.figure("operations that raised", ", ".join(sorted(raised)) or "none")


def test_torn_write_in_the_wal(tmp_path: Path, fault: FaultRecord) -> None:
    """A crash that tears the last frames of the WAL (a half-written commit) loses exactly
    that transaction: the batches committed before it are whole, the torn one is absent
    (never partial), and the database is sound."""
    fault.describe("Torn write: the WAL's last commit half on disk after a crash")
    path = tmp_path / "queue.db"
    q = Queue(path, load_entrypoints=False)
    for b in range(3):
        q.enqueue_many(
            [{"task_type": "job", "payload": {"batch": b, "pad": "t" * 300}} for _ in range(50)]
        )
    wal_size_before_last = Path(str(path) + "-wal").stat().st_size
    q.enqueue_many(
        [{"task_type": "job", "payload": {"batch": 3, "pad": "t" * 300}} for _ in range(50)]
    )
    # Copy the files as a crash would leave them (the connection is still open).
    crashed = tmp_path / "crashed.db"
    shutil.copy(path, crashed)
    shutil.copy(str(path) + "-wal", str(crashed) + "-wal")
    q.close()
    wal = Path(str(crashed) + "-wal")
    data = bytearray(wal.read_bytes())
    # Garbage over the second half of the last transaction's frames, its commit frame too.
    middle = wal_size_before_last + (len(data) - wal_size_before_last) // 2
    data[middle:] = bytes(len(data) - middle)
    wal.write_bytes(bytes(data))
    fault.inject()
    with Queue(crashed, load_entrypoints=False) as restored:
        batches = [t.payload["batch"] for t in restored.list(limit=1000)]
        assert restored.check() == []
    assert sorted(set(batches)) == [0, 1, 2]
    assert all(batches.count(b) == 50 for b in (0, 1, 2))


def _write_bad_row(path: Path, task_id: int, column: str, value: object) -> None:
    conn = _faults.raw_connection(path)
    try:
        # STRICT tables check types; this writes a value of the right type but bad content,
        # as a buggy tool, a manual edit or disk damage would.
        conn.execute(f"UPDATE tasks SET {column} = ? WHERE id = ?", (value, task_id))
    finally:
        conn.close()


def test_unreadable_row_error_names_database_and_task(tmp_path: Path, fault: FaultRecord) -> None:
    """Reading a task whose stored payload is not valid JSON raises a hookqueue StoreError
    naming the database and the task id."""
    fault.describe("A row with an unreadable payload (not JSON): the error")
    path = _hookqueue_db(tmp_path / "queue.db", n=3)
    _write_bad_row(path, 2, "payload", "{not json")
    fault.inject()
    with Queue(path, load_entrypoints=False) as q:
        with pytest.raises(StoreError) as info:
            q.get(2)
    assert str(path) in str(info.value) and "2" in str(info.value)


def test_unreadable_row_does_not_stop_the_queue(tmp_path: Path, fault: FaultRecord) -> None:
    """A worker facing one unreadable row still completes every other task, and the bad
    one ends failed with an error saying why."""
    fault.describe("A row with an unreadable payload (not JSON): the other tasks")
    path = _hookqueue_db(tmp_path / "queue.db", n=10)
    _write_bad_row(path, 3, "payload", "\x80{")
    fault.inject()
    with Queue(path, load_entrypoints=False) as q:
        q.handlers.register_handler("job", lambda task: task.payload["i"])
        try:
            WorkerEngine(q, worker_id="w").run_until_idle()
        finally:
            statuses = {
                tid: status for tid, status in _faults.rows(path, "SELECT id, status FROM tasks")
            }
    fault.figure("tasks completed", sum(1 for s in statuses.values() if s == "completed"))
    assert statuses.pop(3) == TaskStatus.FAILED.value
    assert set(statuses.values()) == {TaskStatus.COMPLETED.value}


def test_payload_too_deep_to_decode_from_an_older_version(
    tmp_path: Path, fault: FaultRecord, caplog: pytest.LogCaptureFixture
) -> None:
    """A row whose payload is nested too deeply to decode (100,000 levels: written by a
    version without the nesting limit) is a damaged row: `Queue.list()` and `get_many`
    leave it out and log it, `Queue.get` raises DamagedRow naming the database and the
    task, and a worker that leases it with others in one batch ends it `failed` with the
    reason and completes the others."""
    fault.describe("A payload nested 100,000 levels deep, written by an older version")
    path = _hookqueue_db(tmp_path / "queue.db", n=6)
    depth = 100_000
    _write_bad_row(path, 3, "payload", "[" * depth + "]" * depth)
    fault.inject()
    with Queue(path, load_entrypoints=False) as q:
        with caplog.at_level(logging.ERROR, logger="hookqueue.store"):
            assert sorted(t.id for t in q.list(limit=100)) == [1, 2, 4, 5, 6]
            assert "task 3 is damaged" in caplog.text
            caplog.clear()
            assert [t.id for t in q.db.get_many([1, 2, 3, 4])] == [1, 2, 4]
            assert "task 3 is damaged" in caplog.text
        with pytest.raises(DamagedRow) as info:
            q.get(3)
        assert str(path) in str(info.value) and "task 3" in str(info.value)
        batches: list[int] = []
        q.handlers.register_handler("job", lambda task: task.payload["i"])
        worker = WorkerEngine(q, worker_id="w", concurrency=10)
        lease = q.runtime.lease

        def counting_lease(*args: Any, **kwargs: Any) -> Any:
            leased = lease(*args, **kwargs)
            if kwargs.get("limit"):
                batches.append(len(leased))
            return leased

        q.runtime.lease = counting_lease  # type: ignore[method-assign]
        stats = worker.run_until_idle()
    assert batches[0] == 5, "the damaged row was leased with the five others"
    assert (stats.completed, stats.failed) == (5, 0)
    statuses = dict(_faults.rows(path, "SELECT id, status FROM tasks"))
    assert statuses.pop(3) == TaskStatus.FAILED.value
    assert set(statuses.values()) == {TaskStatus.COMPLETED.value}
    [(error,)] = _faults.rows(path, "SELECT error_message FROM tasks WHERE id = 3")
    assert "damaged" in error and "RecursionError" in error
    fault.figure("other tasks completed", stats.completed)


def test_random_damage_gives_only_clear_errors(tmp_path: Path, fault: FaultRecord) -> None:
    """Random bytes flipped anywhere past the header (60 files, 1 to 8 flips each, fixed
    seed): every operation either works or raises a HookqueueError naming the database —
    never another exception, never a crash."""
    fault.describe("Random byte flips anywhere in the database")
    template = _hookqueue_db(tmp_path / "template.db", n=100)
    with Queue(template, load_entrypoints=False) as q:
        q.runtime.lease("w", limit=10)
    original = template.read_bytes()
    escaped: list[str] = []
    rng = random.Random(2024)
    for n in range(60):
        path = tmp_path / f"damaged{n}.db"
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(100, len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        fault.inject()
        try:
            with Queue(path, load_entrypoints=False) as q:
                for op in (
                    q.counts,
                    lambda: q.list(limit=1000),
                    lambda: q.get(5),
                    lambda: q.find("k7"),
                    lambda: q.enqueue("job", {"new": 1}),
                    lambda: q.runtime.lease("w2", limit=200),
                    q.check,
                ):
                    try:
                        op()
                    except HookqueueError as exc:
                        assert str(path) in str(exc), f"error without the path: {exc}"
        except HookqueueError as exc:
            assert str(path) in str(exc), f"error without the path: {exc}"
        except Exception as exc:
            escaped.append(f"{type(exc).__name__}: {exc}")
    fault.figure("damaged files", fault.injected)
    fault.figure("escaped exceptions", len(escaped))
    fault.figure("escaped types", sorted({e.split(":")[0] for e in escaped}))
    assert escaped == [], json.dumps(escaped[:5])
