"""Processes that tests/plugins/postgres/test_postgres_limits.py starts.

``worker URL LOG WORKER_ID TYPES CONCURRENCY IDLE_POLL``
    a worker (polling every IDLE_POLL seconds, beating its heartbeat as seldom) (the CLI's way: entry points load, so the limits plugin is on) with a handler
    for each comma-separated type that appends ``start|end task_id time pid`` to LOG
    (one write per line, append mode: lines of several processes never interleave) and
    sleeps the payload's ``sleep`` seconds in between. Runs until SIGTERM.
``storm DSN SCHEMA GO_FILE ROUNDS``
    waits for GO_FILE, then leases ROUNDS times (up to 5 tasks each) with the stored rules
    (``LeasePlan(stored_limits=True)``) as fast as it can, and prints the leased ids.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def _worker(url: str, log: str, worker_id: str, types: str, concurrency: str, poll: str) -> None:
    from hookqueue import Queue, WorkerEngine

    queue = Queue(url)

    def record(what: str, task: Any) -> None:
        with open(log, "a") as f:
            f.write(f"{what} {task.id} {time.time():.6f} {os.getpid()}\n")

    def handler(task: Any) -> int:
        record("start", task)
        time.sleep(float((task.payload or {}).get("sleep", 0)))
        record("end", task)
        return int(task.id)

    for task_type in types.split(","):
        queue.handlers.register_handler(task_type, handler)
    # A long poll comes with long heartbeats (an idle worker's beat also has it look for
    # work): nothing but a notification wakes it within the poll.
    idle = float(poll)
    worker = WorkerEngine(
        queue,
        worker_id=worker_id,
        concurrency=int(concurrency),
        idle_poll_interval=idle,
        lease_seconds=max(30.0, 4 * idle),
        heartbeat_interval=max(7.5, idle),
    )
    worker.run()
    queue.close()


def _storm(dsn: str, schema: str, go_file: str, rounds: str) -> None:
    from hookqueue.core.models import LeasePlan
    from hookqueue.plugins.postgres import PostgresStore

    store = PostgresStore(dsn, schema=schema, durability="normal")
    store.initialize_schema()
    plan = LeasePlan(stored_limits=True)
    go = Path(go_file)
    while not go.exists():
        time.sleep(0.001)
    leased: list[int] = []
    for _ in range(int(rounds)):
        tasks, _ = store.lease(
            worker_id=f"storm-{os.getpid()}",
            queues=["default"],
            limit=5,
            now_us=int(time.time() * 1_000_000),
            lease_us=600_000_000,
            plan=plan,
            decide_expired=lambda t: (None, "expired"),
        )
        leased += [t.id for t in tasks]
    store.close()
    print(" ".join(map(str, leased)), flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "worker":
        _worker(*args)
    else:
        _storm(*args)
