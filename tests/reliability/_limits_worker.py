"""A worker process for the limits audit (run as a script, not imported).

``_limits_worker.py DB LOGDIR LEASE HEARTBEAT CONCURRENCY``: runs ``job`` tasks with the
limits plugin until SIGTERM. Each attempt appends ``start <task> <attempt> <pid> <tenant>
<lease instant µs> <wall µs>`` to ``LOGDIR/<pid>.log`` before the work and ``end <task>
<attempt> <pid> <tenant> 0 <wall µs>`` after it (O_APPEND writes, one line each), so the log
survives SIGKILL. On SIGTERM it shuts down and writes its counts to
``LOGDIR/<pid>.stats.json``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import _faults
from _policies import RetryCrashes

import hookqueue.plugins.limits as limits_plugin
from hookqueue import Queue, WorkerEngine
from hookqueue.core.clock import to_us
from hookqueue.core.models import Task


def main(db: str, logdir: str, lease: float, heartbeat: float, concurrency: int) -> None:
    """Run ``job`` tasks until SIGTERM (see the module docstring)."""
    pid = os.getpid()
    fd = os.open(Path(logdir) / f"{pid}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    rng = random.Random(pid)

    def job(task: Task) -> int:
        tenant = task.payload["tenant"]
        assert task.started_at is not None
        leased = to_us(task.started_at, "started_at")
        now = time.time_ns() // 1000
        os.write(fd, f"start {task.id} {task.attempts} {pid} {tenant} {leased} {now}\n".encode())
        time.sleep(rng.uniform(0.02, 0.08))
        now = time.time_ns() // 1000
        os.write(fd, f"end {task.id} {task.attempts} {pid} {tenant} 0 {now}\n".encode())
        return int(task.payload["i"])

    queue = Queue(
        db,
        load_entrypoints=False,
        plugins=[RetryCrashes(), limits_plugin],
        durability="normal",
    )
    queue.handlers.register_handler("job", job)
    engine = WorkerEngine(
        queue,
        worker_id=f"worker-{pid}",
        concurrency=concurrency,
        lease_seconds=lease,
        heartbeat_interval=heartbeat,
        idle_poll_interval=5.0,
        shutdown_grace=10,
    )
    stats = engine.run()
    counts = {"pid": pid, "completed": stats.completed, "lost": stats.lost}
    (Path(logdir) / f"{pid}.stats.json").write_text(json.dumps(counts))
    queue.close()
    _faults.emit(counts)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], float(a[2]), float(a[3]), int(a[4]))
