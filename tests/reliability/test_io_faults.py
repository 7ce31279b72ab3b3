"""Storage faults: I/O errors at write and sync points, failed checkpoints, a full disk, a read-only file system.

I/O errors come from an apsw VFS shim (``_faults.FaultyVFS``) in a subprocess; the size
limit comes from SQLite's own ``PRAGMA max_page_count``, set on each new connection through
``apsw.connection_hooks``. Either way an operation that fails raises a ``StoreError`` naming
the database, changes nothing, and works again once the disk does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from hookqueue import DatabaseFull, FakeClock, Queue, StoreError, TaskStatus, WorkerEngine
from hookqueue.core.models import Task
from hookqueue.core.storage import Settlement

from . import _faults
from ._policies import RetryCrashes
from .conftest import FaultRecord

# ---------------------------------------------------------------------------------------------
# I/O errors through the VFS shim
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_io_error_at_every_write_and_sync(tmp_path: Path, fault: FaultRecord) -> None:
    """For enqueue_many, lease and complete, an I/O error at each write and each fsync of
    the transaction in turn: the call raises a StoreError naming the database and changes
    nothing (or, when the failed write was not needed, succeeds with exactly its effect);
    the same call then succeeds once the disk behaves; integrity_check stays clean."""
    fault.describe("I/O error (EIO) at each write and each fsync of a transaction")
    db = tmp_path / "queue.db"
    report = _faults.run_child("_vfs_scenarios.py", "io-errors", db)
    assert report["unexpected"] == [], "errors that are not StoreError escaped"
    assert report["violations"] == []
    assert report["integrity"] == []
    for op, stats in report["ops"].items():
        assert stats["errors"] > 0, f"{op}: no injected fault reached the caller"
        fault.inject(stats["injected"])
        fault.figure(
            op, f"{stats['writes']} write + {stats['syncs']} sync points, {stats['errors']} errors"
        )
    fault.figure("error classes", sorted({c for s in report["ops"].values() for c in s["classes"]}))


@pytest.fixture(scope="module")
def fsync_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], Path]]:
    """The fsync scenario, once with a crash after the failure and once with a clean close."""
    out = {}
    for mode in ("crash", "close"):
        db = tmp_path_factory.mktemp(f"fsync-{mode}") / "queue.db"
        out[mode] = (_faults.run_child("_vfs_scenarios.py", "fsync", db, mode), db)
    return out


def test_failed_fsync_then_retry_with_idempotency_key(
    fsync_runs: dict[str, tuple[dict[str, Any], Path]], fault: FaultRecord
) -> None:
    """When the fsync of an enqueue's commit fails, the enqueue raises a StoreError naming
    the database; whether the task survives depends on whether the process dies before the
    WAL is reset (a failed fsync leaves the outcome unknown). Enqueueing again with the same
    idempotency key stores the task exactly once either way."""
    fault.describe("fsync failure at commit, then crash or clean close")
    for mode, (result, db) in fsync_runs.items():
        fault.inject(result["injected"])
        assert result["raised"] == "CommitOutcomeUnknown", result  # a StoreError
        assert str(db) in result["message"]
        assert result["visible_before_exit"] is False
        with Queue(db, load_entrypoints=False) as q:
            survived = q.find("k2") is not None
            again = q.enqueue("job", {"n": 2}, idempotency_key="k2")
            assert [t.id for t in q.list() if t.idempotency_key == "k2"] == [again.id]
            assert q.counts()["queued"] == 2
            assert q.check() == []
        fault.figure(f"task present after {mode}", survived)


def test_failed_fsync_is_not_reported_as_rolled_back(
    fsync_runs: dict[str, tuple[dict[str, Any], Path]], fault: FaultRecord
) -> None:
    """An error that says the transaction was rolled back is true: the task it refers to
    is not in the database after the process crashes."""
    fault.describe("fsync failure at commit: is the error message true after a crash?")
    result, db = fsync_runs["crash"]
    fault.inject(result["injected"])
    with Queue(db, load_entrypoints=False) as q:
        present = q.find("k2") is not None
    if present:
        assert "rolled back" not in result["message"], (
            f"the enqueue raised {result['message']!r}, yet its task is stored"
        )


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """The checkpoint scenario: every write to the main file fails while batches commit."""
    db = tmp_path_factory.mktemp("checkpoint") / "queue.db"
    return _faults.run_child("_vfs_scenarios.py", "checkpoint", db), db


def test_failed_checkpoints_lose_nothing(
    checkpoint_run: tuple[dict[str, Any], Path], fault: FaultRecord
) -> None:
    """With every write to the main database file failing (manual and automatic
    checkpoints fail) and the process dying with the WAL un-checkpointed, every task whose
    enqueue returned is present afterwards and the database is sound."""
    fault.describe("I/O errors on every checkpoint write, then a crash")
    result, db = checkpoint_run
    fault.inject(result["injected"])
    assert result["manual"].startswith("IOError"), result["manual"]
    acknowledged = [b["batch"] for b in result["batches"] if b["raised"] is None]
    assert acknowledged, "no batch was acknowledged; the scenario tested nothing"
    assert _faults.integrity(db) == []
    stored = {
        b: n
        for b, n in _faults.rows(
            db, "SELECT json_extract(payload, '$.batch'), count(*) FROM tasks GROUP BY 1"
        )
    }
    assert stored.get(-1) == 300
    for b in acknowledged:
        assert stored.get(b) == 100, f"acknowledged batch {b} is missing or partial: {stored}"
    fault.figure("acknowledged batches present", f"{len(acknowledged)}/{len(acknowledged)}")
    fault.figure("tasks after the crash", sum(stored.values()))


def test_commit_not_reported_failed_when_only_the_checkpoint_failed(
    checkpoint_run: tuple[dict[str, Any], Path], fault: FaultRecord
) -> None:
    """An enqueue_many that raised did not store its batch: no call reports failure for
    tasks it committed."""
    fault.describe("Automatic checkpoint fails after a commit: is the commit reported right?")
    result, _ = checkpoint_run
    fault.inject(result["injected"])
    wrong = [b for b in result["batches"] if b["raised"] is not None and b["stored"]]
    fault.figure("batches reported failed but stored", len(wrong))
    assert wrong == []


def test_full_durability_syncs_every_acknowledgement_and_no_bare_lease(
    tmp_path: Path, fault: FaultRecord
) -> None:
    """At durability="full" an enqueue and a lease that writes an outcome each wait for the
    disk (a sync of the WAL), a lease that carries no outcome does not (losing it to a power
    cut only makes the task run again), and the connection is back to synchronous=FULL after
    it. At "normal" nothing waits."""
    fault.describe("Syncs counted through the VFS shim, per kind of transaction")
    plan = _faults.FaultPlan()
    name = f"hookqueue-sync-count-{id(plan)}"
    vfs = _faults.FaultyVFS(plan, name=name, base=apsw.vfs_names()[0], makedefault=False)
    syncs: dict[str, dict[str, int]] = {}
    try:
        for durability in ("full", "normal"):
            path = tmp_path / f"{durability}.db"
            with Queue(path, load_entrypoints=False, durability=durability, vfs=name) as q:
                q.enqueue("warm-up")  # creates the WAL
                counts = syncs[durability] = {}
                plan.arm()
                q.enqueue_many([{"task_type": "job"}, {"task_type": "job"}])
                counts["enqueue"] = plan.syncs
                plan.arm()
                leased = q.runtime.lease("w", limit=3)
                counts["bare lease"] = plan.syncs
                assert q.db._cx.conn().pragma("synchronous") == (2 if durability == "full" else 1)
                plan.arm()
                q.runtime.lease(
                    "w",
                    limit=1,
                    settlements=[Settlement(task_id=t.id, kind="complete", task=t) for t in leased],
                )
                counts["lease with outcomes"] = plan.syncs
                plan.arm()
                q.enqueue("after")  # still synced: the relaxed setting did not stick
                counts["enqueue after"] = plan.syncs
    finally:
        vfs.unregister()
    for kind, n in syncs["full"].items():
        fault.figure(f"syncs at full: {kind}", n)
    assert syncs["full"]["enqueue"] >= 1
    assert syncs["full"]["bare lease"] == 0
    assert syncs["full"]["lease with outcomes"] >= 1
    assert syncs["full"]["enqueue after"] >= 1
    assert set(syncs["normal"].values()) == {0}


@pytest.mark.slow
def test_disk_full_through_the_vfs(tmp_path: Path, fault: FaultRecord) -> None:
    """When the disk fills up (writes past a byte quota fail with SQLITE_FULL), enqueue,
    enqueue_many, lease and complete each raise DatabaseFull naming the database and change
    nothing; once space is back every earlier task is there and work goes on."""
    fault.describe("Disk full (SQLITE_FULL from the VFS) during enqueue, lease, complete")
    db = tmp_path / "queue.db"
    result = _faults.run_child("_vfs_scenarios.py", "disk-full", db)
    fault.inject(result["injected"])
    assert result["unexpected"] == []
    for op, entry in result["ops"].items():
        assert entry["raised"] == "DatabaseFull", (op, entry)
        assert entry["names_path"], (op, entry)
        assert entry["unchanged"], f"{op} failed with a full disk but changed rows"
    stored = result["stored_before_full"]
    assert result["leased_after"] == stored
    assert result["counts"] == {
        "queued": 1,
        "running": 0,
        "completed": stored,
        "failed": 0,
        "cancelled": 0,
    }
    assert result["check"] == []
    fault.figure("tasks stored before the disk filled", stored)
    fault.figure("operations refused", len(result["ops"]))


# ---------------------------------------------------------------------------------------------
# PRAGMA max_page_count
# ---------------------------------------------------------------------------------------------


class PageLimit:
    """Caps every connection opened while it is installed at ``pages`` pages (through
    ``apsw.connection_hooks``), and can lift the cap from connections already open."""

    def __init__(self) -> None:
        self.pages: int | None = None
        self.connections: list[apsw.Connection] = []

    def hook(self, conn: apsw.Connection) -> None:
        """Called by apsw for each new connection."""
        self.connections.append(conn)
        if self.pages is not None:
            conn.pragma("max_page_count", self.pages)

    def lift(self) -> None:
        """Space comes back: no cap for new connections, nor for the open ones."""
        self.pages = None
        for conn in self.connections:
            try:
                conn.pragma("max_page_count", 2**31 - 2)
            except apsw.ConnectionClosedError:
                pass


@pytest.fixture
def page_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[PageLimit]:
    """A :class:`PageLimit` installed for this test only."""
    limit = PageLimit()
    monkeypatch.setattr(apsw, "connection_hooks", [*apsw.connection_hooks, limit.hook])
    yield limit


def _filled(db: Path, clock: FakeClock) -> int:
    """Create a database with 200 queued tasks and return its page count."""
    with Queue(db, load_entrypoints=False, clock=clock, durability="normal") as q:
        q.enqueue_many(
            [
                {"task_type": "job", "payload": {"i": i, "pad": "x" * 200}, "max_attempts": 5}
                for i in range(200)
            ]
        )
    conn = _faults.raw_connection(db)
    try:
        pages: int = conn.pragma("page_count")
    finally:
        conn.close()
    return pages


OPERATIONS: dict[str, Callable[[Queue], Any]] = {
    "enqueue": lambda q: [q.enqueue("job", {"pad": "e" * 3000}) for _ in range(50)],
    "enqueue_many": lambda q: q.enqueue_many(
        [{"task_type": "job", "payload": {"pad": "m" * 3000}}] * 50
    ),
    "lease": lambda q: q.runtime.lease("w" * 180, limit=200, lease_seconds=60),
    "complete": lambda q: q.runtime.settle(
        "holder",
        [
            Settlement(task_id=t.id, kind="complete", result_json=json.dumps("r" * 3000))
            for t in q.list(status="running", limit=1000)
        ],
    ),
}


@pytest.mark.parametrize("op", list(OPERATIONS))
def test_disk_full_max_page_count(
    op: str, tmp_path: Path, clock: FakeClock, page_limit: PageLimit, fault: FaultRecord
) -> None:
    """With the database capped at its current size (PRAGMA max_page_count), the operation
    raises DatabaseFull naming the database; rows written earlier are unchanged; the file
    opens again without the cap with every task intact, and the operation then succeeds."""
    fault.describe(f"Database size limit reached (max_page_count) during {op}")
    db = tmp_path / "queue.db"
    pages = _filled(db, clock)
    if op == "complete":
        with Queue(db, load_entrypoints=False, clock=clock) as q:
            assert len(q.runtime.lease("holder", limit=200, lease_seconds=600)) == 200
    before = _faults.rows(db, "SELECT * FROM tasks ORDER BY id")
    page_limit.pages = pages
    with Queue(db, load_entrypoints=False, clock=clock, durability="normal") as q:
        with pytest.raises(DatabaseFull) as info:
            OPERATIONS[op](q)
        fault.inject()
        assert str(db) in str(info.value)
        assert "Fix:" in str(info.value)
    assert _faults.rows(db, "SELECT * FROM tasks ORDER BY id")[: len(before)] == before
    page_limit.lift()
    with Queue(db, load_entrypoints=False, clock=clock, durability="normal") as q:
        assert q.check() == []
        OPERATIONS[op](q)
        counts = q.counts()
    assert sum(counts.values()) >= 200
    fault.figure("pages", pages)


def test_worker_meets_a_full_disk_and_loses_nothing(
    tmp_path: Path, page_limit: PageLimit, fault: FaultRecord
) -> None:
    """A running worker whose completions do not fit keeps going: it holds the finished
    results, retries, and writes them once space is back — every task completed, each
    handler run exactly once, nothing lost or half-written."""
    fault.describe("Database size limit reached while a running worker completes tasks")
    db = tmp_path / "queue.db"
    clock = FakeClock()
    pages = _filled(db, clock)
    calls: dict[int, int] = {}

    def big_result(task: Task) -> str:
        calls[task.payload["i"]] = calls.get(task.payload["i"], 0) + 1
        return "r" * 20_000

    page_limit.pages = pages + 2
    q = Queue(db, load_entrypoints=False, clock=clock, plugins=[RetryCrashes()], busy_timeout=1)
    q.handlers.register_handler("job", big_result)
    worker = WorkerEngine(q, worker_id="filler", concurrency=10, lease_seconds=30)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(worker.run_async())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        # Wait until the worker has finished attempts it cannot write.
        deadline = time.monotonic() + 20
        while len(calls) < 10 and thread.is_alive():
            assert time.monotonic() < deadline, "the worker never ran a task"
            time.sleep(0.05)
        time.sleep(0.5)
        fault.inject()
        stuck = q.counts()
        assert stuck["completed"] < 200, "the page limit did not bite"
        page_limit.lift()
        deadline = time.monotonic() + 60
        while q.counts()["completed"] < 200 and thread.is_alive():
            assert time.monotonic() < deadline, (
                f"tasks unfinished after space came back: {q.counts()}"
            )
            time.sleep(0.1)
        assert not failure, f"the worker stopped: {failure[0]!r}"
        tasks = q.list(limit=1000)
        assert q.check() == []
    finally:
        worker.stop()
        thread.join(30)
        q.close()
    assert len(tasks) == 200 and all(t.status is TaskStatus.COMPLETED for t in tasks)
    assert all(t.attempts == 1 for t in tasks), "a finished attempt was run again"
    assert calls == {i: 1 for i in range(200)}
    fault.figure("completed before the disk filled", stuck["completed"])
    fault.figure("finished but unwritable while full", stuck["running"])
    fault.figure("most handler runs of one task", max(calls.values()))
    fault.figure("lost", 200 - len(tasks))


# ---------------------------------------------------------------------------------------------
# Where a database cannot, or must not, be created
# ---------------------------------------------------------------------------------------------

#: Ways to run a command with a read-only tmpfs mounted on a directory: a private mount
#: namespace, as root or as root of a new user namespace.
READ_ONLY_MOUNTS = [
    ["unshare", "--mount"],
    ["unshare", "--user", "--map-root-user", "--mount"],
]


def _on_a_read_only_file_system(directory: Path, *command: str) -> tuple[str, Any]:
    """Run ``command`` with ``directory`` read-only: a read-only tmpfs mounted on it in a
    mount namespace of the command's own, or, where no namespace can be made and the user is
    not root (root ignores permission bits), the directory made 0500. Returns how, and the
    JSON the command printed."""
    # Exit 97: the namespace was made but the mount refused; "unshare: ..." on stderr: no
    # namespace. Anything else is the command's own outcome, and a failure is reported.
    shell = 'mount -t tmpfs -o ro hookqueue-ro "$1" || exit 97; shift; exec "$@"'
    for prefix in READ_ONLY_MOUNTS:
        if shutil.which(prefix[0]) is None:
            break
        proc = subprocess.run(
            [*prefix, "sh", "-c", shell, "sh", str(directory), *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode == 97 or proc.stderr.startswith("unshare:"):
            continue
        assert proc.returncode == 0, f"{command} failed:\n{proc.stdout}\n{proc.stderr}"
        return f"read-only tmpfs ({' '.join(prefix)})", json.loads(proc.stdout.splitlines()[-1])
    if os.geteuid() == 0:
        pytest.skip("cannot mount a read-only file system here, and root ignores file modes")
    directory.chmod(0o500)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    finally:
        directory.chmod(0o700)
    return "directory without write permission", json.loads(proc.stdout.strip().splitlines()[-1])


def test_new_database_on_a_read_only_file_system(tmp_path: Path, fault: FaultRecord) -> None:
    """Creating a database on a read-only file system — the file itself, or the directory it
    needs — raises a StoreError naming the path and the fix, not a bare OSError, and
    creates nothing."""
    fault.describe("A new database on a read-only file system")
    directory = tmp_path / "ro"
    directory.mkdir()
    how, report = _on_a_read_only_file_system(
        directory, *_faults.child_command("_probe.py", "readonly", directory)
    )
    fault.inject(2)
    for name in ("queue.db", "sub/queue.db"):
        assert report[name]["error"] == "StoreError", report[name]
        message = report[name]["message"]
        assert str(directory / name) in message and "Fix:" in message, message
    assert report["left"] == []
    fault.figure("read-only by", how)
    error = report["queue.db"]["message"].split(". Fix:")[0]
    fault.figure("error", error.replace(str(directory), "DIR"))


def test_create_false_refuses_a_missing_database_and_creates_nothing(
    tmp_path: Path, fault: FaultRecord
) -> None:
    """`Queue(path, create=False)` on a path where no database exists (nor its directory)
    raises a StoreError naming the path and creates nothing — no file, no -wal or -shm,
    no directory; an existing database opens as usual."""
    fault.describe("Queue(path, create=False) on a missing path")
    for path in (tmp_path / "typo.db", tmp_path / "missing" / "dir" / "queue.db"):
        fault.inject()
        with pytest.raises(StoreError) as info:
            Queue(path, load_entrypoints=False, create=False)
        assert str(path) in str(info.value) and "Fix:" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with Queue(tmp_path / "queue.db", load_entrypoints=False) as q:
        q.enqueue("job")
    with Queue(tmp_path / "queue.db", load_entrypoints=False, create=False) as q:
        assert q.counts()["queued"] == 1


def test_read_only_commands_refuse_a_mistyped_path_and_create_nothing(
    tmp_path: Path, fault: FaultRecord
) -> None:
    """The commands that only read (`ls`, `show`, `stats`, `workers`, `check`, `queues`,
    `wait`) on a path where no database exists exit 2 with one line naming the path and the
    fix, and create nothing — no file, no directory; `stats` never calls a missing queue
    healthy."""
    fault.describe("Read-only commands on a mistyped database path")
    missing = tmp_path / "typo" / "queue.db"
    commands = (["ls"], ["show", "1"], ["stats"], ["workers"], ["check"], ["queues"], ["wait", "1"])
    for argv in commands:
        fault.inject()
        done = subprocess.run(
            [sys.executable, "-m", "hookqueue", *argv, "--db", str(missing)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (argv, done.stderr)
        assert len(lines) == 1 and str(missing) in lines[0] and "Fix:" in lines[0], argv
        assert "HEALTHY" not in done.stdout, argv
    assert list(tmp_path.iterdir()) == [], "nothing was created"
    fault.figure("commands refused", len(commands))


def test_the_demo_refuses_a_database_it_did_not_make(tmp_path: Path, fault: FaultRecord) -> None:
    """`hookqueue demo --db FILE` on an existing database the demo did not create refuses
    (exit 2, one line, no traceback) and leaves the file and its tasks untouched; the demo
    only ever deletes a database it made (marked by a `FILE.hookqueue-demo` file)."""
    fault.describe("`hookqueue demo --db` pointed at an application's database")
    db = tmp_path / "production.db"
    with Queue(db, load_entrypoints=False) as q:
        q.enqueue("precious", {"keep": True})
    before = db.read_bytes()
    fault.inject()
    done = subprocess.run(
        [sys.executable, "-m", "hookqueue", "demo", "--db", str(db), "--tasks", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "exists and was not made by the demo" in done.stderr
    assert "Traceback" not in done.stderr
    assert db.read_bytes() == before, "the file is untouched"
    with Queue(db, load_entrypoints=False) as q:
        assert [t.task_type for t in q.list()] == ["precious"]
    fault.figure("refusal", done.stderr.strip().splitlines()[-1].replace(str(tmp_path), "DIR"))
