"""A worker process of the periodic chaos test (run as a script, not imported).

``_periodic_worker.py DB N EVERY_MS`` runs a :class:`~hookqueue.WorkerEngine` with the
``periodic`` plugin whose ``tick`` handler declares N schedules (``s00`` …) firing every
EVERY_MS milliseconds, catching up every missed tick (``misfire="all"``), until SIGTERM. The
test kills it with SIGKILL at random moments and starts another.
"""

from __future__ import annotations

import os
import sys

import hookqueue.plugins.periodic as periodic
from hookqueue import Queue, WorkerEngine
from hookqueue.plugins.periodic import Schedule


def schedules(n: int, every_ms: int) -> list[Schedule]:
    """The schedules every worker of the test declares."""
    return [
        Schedule(f"every {every_ms}ms", name=f"s{i:02d}", misfire="all", catch_up=100_000)
        for i in range(n)
    ]


def main(db: str, n: int, every_ms: int) -> None:
    """Work (and fire ticks) until SIGTERM."""
    queue = Queue(db, load_entrypoints=False, plugins=[periodic], durability="normal")
    queue.handlers.register_handler(
        "tick", lambda task: None, options={"periodic": schedules(n, every_ms)}
    )
    engine = WorkerEngine(
        queue,
        worker_id=f"periodic-{os.getpid()}",
        concurrency=8,
        lease_seconds=2.0,
        heartbeat_interval=0.5,
        idle_poll_interval=0.2,
        shutdown_grace=2.0,
    )
    engine.run()
    queue.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
