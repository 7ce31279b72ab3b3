"""Races: work that arrives at the very moment a worker decides it has none.

A worker waits for a wake-up (an enqueue in its process, another process's commit, a
timer) instead of polling. A wake-up that arrives while the worker is reading the database
must not be forgotten, or the new task waits for the next poll or heartbeat.

The race window is hit on purpose: the worker's own store call (``has_work`` or ``lease``)
is wrapped so that, right after the real call returns, a task is enqueued — as another
thread of the application would at that instant. Polling is slowed to 5 s so a lost wake-up
shows as a 5 s delay.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hookqueue import Queue, TaskStatus, WorkerEngine

from .conftest import FaultRecord

SLOW_POLL = 5.0


def _run_race(db_path: Path, target: str, fault: FaultRecord) -> float:
    q = Queue(db_path, load_entrypoints=False, durability="normal")
    q.handlers.register_handler("job", lambda task: "done")
    worker = WorkerEngine(
        q,
        worker_id="racer",
        concurrency=2,
        lease_seconds=4 * SLOW_POLL,
        heartbeat_interval=SLOW_POLL,
        wake_poll_interval=SLOW_POLL,
        idle_poll_interval=SLOW_POLL,
    )
    racing: dict[str, Any] = {}

    def inject(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            empty = not result if target == "has_work" else len(result) < kwargs["limit"]
            if empty and "task" not in racing and worker.wait_started(0):
                racing["task"] = q.enqueue("job")  # lands while the worker awaits this call
                racing["at"] = time.monotonic()
                fault.inject()
            return result

        return call

    if target == "has_work":
        q.db.has_work = inject(q.db.has_work)  # type: ignore[method-assign]
    else:
        q.runtime.lease = inject(q.runtime.lease)  # type: ignore[method-assign]
        q.enqueue("job")  # something to lease, fewer than the worker's free slots
    thread = threading.Thread(target=lambda: asyncio.run(worker.run_async()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while "task" not in racing:
            assert time.monotonic() < deadline, "the race was never hit"
            time.sleep(0.01)
        task = racing["task"]
        while q.get(task.id).status is not TaskStatus.COMPLETED:
            if time.monotonic() - racing["at"] > 2.0:
                break
            time.sleep(0.01)
        return time.monotonic() - racing["at"]
    finally:
        worker.stop()
        thread.join(15)
        q.close()


@pytest.mark.parametrize("target", ["has_work", "lease"])
def test_wake_up_during_the_workers_read_is_not_lost(
    target: str, db_path: Path, fault: FaultRecord
) -> None:
    """A task enqueued in the worker's process while the worker is reading the database
    (finding no work, or fewer tasks than it has room for) starts within 2 s, not at the
    next 5 s poll."""
    fault.describe(f"Task enqueued while the worker runs {target}()")
    waited = _run_race(db_path, target, fault)
    fault.figure("seconds until it ran (the test gives up at 2)", round(waited, 2))
    assert waited < 2.0
