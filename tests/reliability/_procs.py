"""Processes the reliability tests start, kill and inspect (run as scripts, not imported).

Subcommands (each prints one JSON line when it ends normally):

``worker DB LOGDIR``
    A worker process: runs ``job`` tasks until SIGTERM. Each attempt appends
    ``start <task id> <attempt> <pid>`` to ``LOGDIR/<pid>.log`` before the work and
    ``end <task id> <attempt> <pid>`` after it (O_APPEND writes, one line each, no buffering),
    so the log survives SIGKILL and shows which process ran which task how often. On SIGTERM
    it shuts down gracefully and writes its counts to ``LOGDIR/<pid>.stats.json``.
``producer DB N``
    Enqueues ``job`` tasks 0..N-1 in small batches with short pauses (idempotency key
    ``job-<i>``).
``batches DB SIZE``
    Enqueues batches of SIZE tasks with ``enqueue_many`` forever, printing ``begin <b>``
    before and ``committed <b>`` after each, until killed.
``lock DB SECONDS MODE``
    Holds SQLite's write lock outside hookqueue for SECONDS: MODE ``immediate`` (a write
    transaction with uncommitted changes, as a long migration or a stuck writer would) or
    ``exclusive`` (``locking_mode=EXCLUSIVE``: not even readers get in). Prints ``locked``
    once it holds the lock and ``released`` after.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import _faults
from _policies import RetryCrashes

from hookqueue import Queue, WorkerEngine
from hookqueue.core.models import Task


def store_plugins(db: str) -> list[Any]:
    """The plugins a location needs besides the core (entry points are blocked here): the
    PostgreSQL store's for a ``postgresql://`` URL, none for a SQLite file."""
    if str(db).startswith(("postgresql://", "postgres://")):
        import hookqueue.plugins.postgres as pg_plugin

        return [pg_plugin]
    return []


def worker(db: str, logdir: str, lease: float, heartbeat: float, concurrency: int) -> None:
    """Run ``job`` tasks until SIGTERM (see the module docstring)."""
    pid = os.getpid()
    fd = os.open(Path(logdir) / f"{pid}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    rng = random.Random(pid)

    def job(task: Task) -> int:
        os.write(fd, f"start {task.id} {task.attempts} {pid}\n".encode())
        time.sleep(rng.uniform(0.02, 0.12))
        os.write(fd, f"end {task.id} {task.attempts} {pid}\n".encode())
        return int(task.payload["i"])

    queue = Queue(
        db,
        load_entrypoints=False,
        plugins=[RetryCrashes(), *store_plugins(db)],
        durability="normal",
    )
    queue.handlers.register_handler("job", job)
    engine = WorkerEngine(
        queue,
        worker_id=f"worker-{pid}",
        concurrency=concurrency,
        lease_seconds=lease,
        heartbeat_interval=heartbeat,
        idle_poll_interval=0.2,
        shutdown_grace=10,
    )
    stats = engine.run()
    counts = {
        "pid": pid,
        "completed": stats.completed,
        "lost": stats.lost,
        "released": stats.released,
        "processed": stats.processed,
    }
    (Path(logdir) / f"{pid}.stats.json").write_text(json.dumps(counts))
    queue.close()
    _faults.emit(counts)


def producer(db: str, n: int, seed: int) -> None:
    """Enqueue ``job`` tasks 0..n-1 in random small batches."""
    rng = random.Random(seed)
    queue = Queue(db, load_entrypoints=False, plugins=store_plugins(db), durability="normal")
    i = 0
    while i < n:
        size = min(n - i, rng.randint(1, 8))
        queue.enqueue_many(
            [
                {
                    "task_type": "job",
                    "payload": {"i": j},
                    "idempotency_key": f"job-{j}",
                    "max_attempts": 50,
                }
                for j in range(i, i + size)
            ]
        )
        i += size
        time.sleep(rng.uniform(0.0, 0.02))
    queue.close()
    _faults.emit({"enqueued": n})


def batches(db: str, size: int) -> None:
    """Enqueue batches until killed."""
    queue = Queue(db, load_entrypoints=False, durability="normal")
    pad = "p" * 200
    for b in range(100_000):
        print(f"begin {b}", flush=True)
        queue.enqueue_many(
            [{"task_type": "job", "payload": {"batch": b, "j": j, "pad": pad}} for j in range(size)]
        )
        print(f"committed {b}", flush=True)
    _faults.emit({"batches": 100_000})


def lock(db: str, seconds: float, mode: str) -> None:
    """Hold the write lock for ``seconds`` outside hookqueue."""
    conn = _faults.raw_connection(db)
    if mode == "exclusive":
        conn.pragma("locking_mode", "EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("UPDATE tasks SET priority = priority")
        conn.execute("COMMIT")  # in exclusive locking mode the lock stays after the commit
    else:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE tasks SET priority = priority + 1")
    print("locked", flush=True)
    time.sleep(seconds)
    if mode != "exclusive":
        conn.execute("ROLLBACK")
    conn.close()
    print("released", flush=True)
    _faults.emit({"held": seconds, "mode": mode})


def main(argv: list[str]) -> None:
    """Dispatch on the subcommand (see the module docstring)."""
    command, args = argv[0], argv[1:]
    handlers: dict[str, Any] = {
        "worker": lambda: worker(args[0], args[1], float(args[2]), float(args[3]), int(args[4])),
        "producer": lambda: producer(args[0], int(args[1]), int(args[2])),
        "batches": lambda: batches(args[0], int(args[1])),
        "lock": lambda: lock(args[0], float(args[1]), args[2]),
    }
    handlers[command]()


if __name__ == "__main__":
    main(sys.argv[1:])
