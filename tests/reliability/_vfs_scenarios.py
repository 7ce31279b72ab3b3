"""Scenarios that run hookqueue on the fault-injecting VFS (run as scripts, not imported).

Each runs in its own process because the shim is made the process's default VFS, so that
a SIGKILL at a chosen write ends that process alone. Subcommands, each printing one JSON
line:

``count OP DB``
    Prepare OP on DB, then count the writes and syncs OP makes (no fault).
``kill OP DB write|sync K``
    Prepare OP, then SIGKILL this process at OP's K-th write or sync.
``io-errors DB``
    For enqueue_many, lease and complete: make each write, then each sync, of the operation
    fail in turn; check the operation raised a StoreError naming the path and changed
    nothing, or succeeded and changed exactly what it should; then run it again without the
    fault. Reports every violation.
``fsync DB crash|close``
    Make the commit's fsync of one enqueue fail, report the error, then die without closing
    (``crash``) or close cleanly (``close``).
``checkpoint DB``
    Make every write to the main database file fail (so checkpoints, manual and automatic,
    fail) while tasks are enqueued, then die without closing.
``disk-full DB``
    Give the database a byte quota (writes past it fail with SQLITE_FULL, as on a full disk)
    and run enqueue, enqueue_many, lease and complete against it, then free the space.

OP is ``enqueue_many`` (200 tasks), ``lease`` (5 tasks) or ``complete`` (5 leased tasks).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import _faults

from hookqueue import Queue, StoreError
from hookqueue.core.storage import Settlement

WORKER = "child-worker"


def _queue(db: str) -> Queue:
    # durability="full": every commit syncs, so sync faults have somewhere to land.
    return Queue(db, load_entrypoints=False, durability="full")


def _prepare(op: str, q: Queue) -> Callable[[], Any]:
    if op == "enqueue_many":
        return lambda: q.enqueue_many(
            [
                {"task_type": "job", "payload": {"batch": "B", "j": j, "pad": "x" * 300}}
                for j in range(200)
            ]
        )
    if op == "lease":
        return lambda: q.runtime.lease(WORKER, limit=5, lease_seconds=60)
    if op == "complete":
        held = q.runtime.lease(WORKER, limit=5, lease_seconds=60)
        assert len(held) == 5, "the template database must hold at least 5 queued tasks"
        settlements = [
            Settlement(task_id=t.id, kind="complete", result_json='{"done":true}') for t in held
        ]
        return lambda: q.runtime.settle(WORKER, settlements)
    raise SystemExit(f"unknown operation {op!r}")


def count(op: str, db: str) -> None:
    """Count the writes and syncs of one clean run of ``op``."""
    _, plan = _faults.install_default()
    q = _queue(db)
    run = _prepare(op, q)
    plan.arm()
    run()
    _faults.emit({"writes": plan.writes, "syncs": plan.syncs})


def kill(op: str, db: str, where: str, k: int) -> None:
    """SIGKILL this process at ``op``'s k-th write or sync."""
    _, plan = _faults.install_default()
    q = _queue(db)
    run = _prepare(op, q)
    if where == "write":
        plan.arm(kill_at_write=k)
    else:
        plan.arm(kill_at_sync=k)
    run()
    _faults.emit({"survived": True, "writes": plan.writes, "syncs": plan.syncs})


# ---------------------------------------------------------------------------------------------
# I/O errors at every write and sync point
# ---------------------------------------------------------------------------------------------


def _snapshot(db: str) -> dict[int, tuple[Any, ...]]:
    return {
        r[0]: r[1:]
        for r in _faults.rows(
            db, "SELECT id, status, attempts, locked_by, payload, result FROM tasks ORDER BY id"
        )
    }


def _changed(before: dict[int, Any], after: dict[int, Any]) -> set[int]:
    return {i for i in before.keys() | after.keys() if before.get(i) != after.get(i)}


def io_errors(db: str) -> None:
    """See the module docstring."""
    _, plan = _faults.install_default()
    q = _queue(db)
    q.enqueue_many([{"task_type": "job", "payload": {"seed": i}} for i in range(300)])
    report: dict[str, Any] = {"ops": {}, "violations": [], "unexpected": []}
    marker = 0

    def step(
        op: str,
    ) -> tuple[Callable[[], Any], Callable[[dict[int, Any], dict[int, Any]], str | None]]:
        """A fresh operation and the check of its effect when it succeeded."""
        nonlocal marker
        marker += 1
        m = marker
        if op == "enqueue_many":

            def run() -> Any:
                return q.enqueue_many(
                    [{"task_type": "job", "payload": {"m": m, "j": j}} for j in range(5)]
                )

            def effect(before: dict[int, Any], after: dict[int, Any]) -> str | None:
                new = _changed(before, after)
                if len(new) != 5 or any(i in before for i in new):
                    return f"enqueue_many changed rows {sorted(new)} instead of adding 5"
                return None

            return run, effect
        if op == "lease":

            def run() -> Any:
                return q.runtime.lease(WORKER, limit=3, lease_seconds=60)

            def effect(before: dict[int, Any], after: dict[int, Any]) -> str | None:
                changed = _changed(before, after)
                if len(changed) != 3 or any(after[i][0] != "running" for i in changed):
                    return f"lease changed rows {sorted(changed)} instead of leasing 3"
                return None

            return run, effect
        held = q.runtime.lease(WORKER, limit=3, lease_seconds=60)
        ids = {t.id for t in held}
        settlements = [
            Settlement(task_id=i, kind="complete", result_json=json.dumps({"m": m})) for i in ids
        ]

        def run() -> Any:
            return q.runtime.settle(WORKER, settlements)

        def effect(before: dict[int, Any], after: dict[int, Any]) -> str | None:
            changed = _changed(before, after)
            if changed != ids or any(after[i][0] != "completed" for i in changed):
                return (
                    f"complete changed rows {sorted(changed)} instead of completing {sorted(ids)}"
                )
            return None

        return run, effect

    for op in ("enqueue_many", "lease", "complete"):
        # One clean run tells how many writes and syncs the operation makes.
        run, _ = step(op)
        plan.arm()
        run()
        writes, syncs = plan.writes, plan.syncs
        stats = {
            "writes": writes,
            "syncs": syncs,
            "injected": 0,
            "errors": 0,
            "succeeded": 0,
            "classes": [],
        }
        points = [("write", i) for i in range(1, writes + 1)] + [
            ("sync", i) for i in range(1, syncs + 1)
        ]
        for kind, point in points:
            run, effect = step(op)
            before = _snapshot(db)
            if kind == "write":
                plan.arm(fail_write_at=point)
            else:
                plan.arm(fail_sync_at=point)
            error: BaseException | None = None
            try:
                run()
            except StoreError as exc:
                error = exc
            except Exception as exc:  # anything else is a finding
                report["unexpected"].append(f"{op} {kind} #{point}: {type(exc).__name__}: {exc}")
                error = exc
            stats["injected"] += plan.injected
            plan.disarm()
            after = _snapshot(db)
            where = f"{op}: {kind} #{point}"
            if error is None:
                stats["succeeded"] += 1
                problem = effect(before, after)
                if problem:
                    report["violations"].append(f"{where}: {problem}")
                continue
            stats["errors"] += 1
            name = type(error).__name__
            if name not in stats["classes"]:
                stats["classes"].append(name)
            if db not in str(error):
                report["violations"].append(f"{where}: the error does not name the path: {error}")
            if after != before:
                report["violations"].append(
                    f"{where}: failed with {name} but changed rows {sorted(_changed(before, after))}"
                )
            # Work resumes once the disk behaves: the same operation now succeeds.
            try:
                run()
            except Exception as exc:
                report["violations"].append(f"{where}: the retry without a fault raised {exc!r}")
            problems = q.check()
            if problems:
                report["violations"].append(f"{where}: check() reports {problems}")
        report["ops"][op] = stats
    q.close()
    report["integrity"] = _faults.integrity(db)
    _faults.emit(report)


# ---------------------------------------------------------------------------------------------
# fsync failure, checkpoint failure, disk full
# ---------------------------------------------------------------------------------------------


def fsync(db: str, mode: str) -> None:
    """See the module docstring."""
    _, plan = _faults.install_default()
    q = _queue(db)
    q.enqueue("job", {"n": 1}, idempotency_key="k1")
    plan.arm(fail_sync_at=1)
    result: dict[str, Any] = {}
    try:
        q.enqueue("job", {"n": 2}, idempotency_key="k2")
        result["raised"] = None
    except Exception as exc:
        result["raised"] = type(exc).__name__
        result["message"] = str(exc)
    result["injected"] = plan.injected
    plan.disarm()
    result["visible_before_exit"] = q.find("k2") is not None
    if mode == "crash":
        _faults.emit(result)
        os._exit(0)  # no close, no checkpoint: as if the process died here
    q.close()
    _faults.emit(result)


def checkpoint(db: str) -> None:
    """See the module docstring."""
    _, plan = _faults.install_default()
    q = _queue(db)
    q.enqueue_many(
        [{"task_type": "job", "payload": {"batch": -1, "pad": "c" * 200}} for _ in range(300)]
    )
    plan.arm(fail_write_at=1, only="main", persistent=True)
    result: dict[str, Any] = {"batches": []}
    conn = _faults.raw_connection(db)
    try:
        result["manual"] = list(conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").get)
    except Exception as exc:
        result["manual"] = f"{type(exc).__name__}: {exc}"
    conn.close()
    # Enough batches to take the WAL past 1000 pages, where each commit is followed by an
    # automatic checkpoint — which fails too. Each batch's outcome is reported, and whether
    # it is stored (as this process sees it) right after.
    for b in range(12):
        entry: dict[str, Any] = {"batch": b}
        try:
            q.enqueue_many(
                [
                    {"task_type": "job", "payload": {"batch": b, "pad": "a" * 2000}}
                    for _ in range(100)
                ]
            )
            entry["raised"] = None
        except Exception as exc:
            entry["raised"] = f"{type(exc).__name__}: {exc}"
        entry["stored"] = len(
            _faults.rows(
                db, "SELECT id FROM tasks WHERE json_extract(payload, '$.batch') = ?", (b,)
            )
        )
        result["batches"].append(entry)
    result["injected"] = plan.injected
    _faults.emit(result)
    os._exit(0)  # die with the WAL un-checkpointed


def disk_full(db: str) -> None:
    """See the module docstring."""
    _, plan = _faults.install_default()
    q = _queue(db)
    q.enqueue_many(
        [{"task_type": "job", "payload": {"n": i, "pad": "f" * 500}} for i in range(100)]
    )
    size = sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
    result: dict[str, Any] = {"ops": {}, "unexpected": []}
    stored = 100

    def attempt(name: str, fn: Callable[[], Any]) -> None:
        before = _snapshot(db)
        entry: dict[str, Any] = {}
        try:
            fn()
            entry["raised"] = None
        except Exception as exc:
            entry["raised"] = type(exc).__name__
            entry["names_path"] = db in str(exc)
            entry["message"] = str(exc)
        entry["unchanged"] = _snapshot(db) == before
        result["ops"][name] = entry

    # The disk fills up: the database may not grow past its current size plus 64 KiB.
    plan.arm(quota_bytes=size + 64 * 1024, persistent=True)
    filled = 0
    for _ in range(1000):
        try:
            q.enqueue_many(
                [
                    {"task_type": "job", "payload": {"fill": filled, "pad": "f" * 500}}
                    for _ in range(5)
                ]
            )
        except Exception:
            break
        filled += 1
    stored += filled * 5
    result["filled_batches"] = filled
    attempt("enqueue", lambda: q.enqueue("job", {"pad": "e" * 4000}))
    attempt(
        "enqueue_many",
        lambda: q.enqueue_many([{"task_type": "job", "payload": {"pad": "m" * 2000}}] * 20),
    )
    attempt("lease", lambda: q.runtime.lease("w" * 150, limit=stored, lease_seconds=60))
    result["injected"] = plan.injected
    # Space comes back: everything works again, and nothing stored earlier is missing.
    plan.disarm()
    held = q.runtime.lease(WORKER, limit=stored, lease_seconds=60)
    result["leased_after"] = len(held)
    plan.arm(
        quota_bytes=sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p)),
        persistent=True,
    )
    big = "r" * 8000
    attempt(
        "complete",
        lambda: q.runtime.settle(
            WORKER,
            [Settlement(task_id=t.id, kind="complete", result_json=json.dumps(big)) for t in held],
        ),
    )
    result["injected"] += plan.injected
    plan.disarm()
    q.runtime.settle(
        WORKER, [Settlement(task_id=t.id, kind="complete", result_json="1") for t in held]
    )
    q.enqueue("job", {"after": True})
    result["stored_before_full"] = stored
    result["counts"] = q.counts()
    result["check"] = q.check()
    q.close()
    _faults.emit(result)


def main(argv: list[str]) -> None:
    """Dispatch on the subcommand (see the module docstring)."""
    command, args = argv[0], argv[1:]
    if command == "count":
        count(args[0], args[1])
    elif command == "kill":
        kill(args[0], args[1], args[2], int(args[3]))
    elif command == "io-errors":
        io_errors(args[0])
    elif command == "fsync":
        fsync(args[0], args[1])
    elif command == "checkpoint":
        checkpoint(args[0])
    elif command == "disk-full":
        disk_full(args[0])
    else:
        raise SystemExit(f"unknown subcommand {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
