"""The adapter's costs, beside what the migration guide's system promised.

``QueuedTaskManager`` is what users migrating from the in-memory ``BackgroundTaskManager``
call; ``docs/migration.md`` quotes these figures, so they are measured here, per durability,
in-process (the manager's own threads do the database work):

- ``start_task`` on the event loop (it never waits on the database);
- the run recorded in the queue after ``start_task`` (``flush()`` with the coroutine still
  running, so only the record is waited for);
- ``get_task_status`` of a recorded run, and ``cancel_task`` of a queued task;
- a burst of trivial runs started at once, all recorded and settled, runs/s — and the same
  burst on the in-memory manager, the price of recording each run durably.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .workloads import Context

#: What the migration guide's system promised (docs/migration.md), per figure.
PROMISED = {
    "get_status_ms": "< 1 ms",
    "cancel_ms": "1–2 ms",
    "burst_runs_s": "400–500/s",
}


async def _measure(path: Path, durability: str, samples: int, burst: int) -> dict[str, Any]:
    from hookqueue import Queue
    from hookqueue.plugins.adapter import (
        BackgroundTaskManager,
        QueuedTaskManager,
        Run,
        RunRegistry,
        RunStatus,
    )

    def run(run_id: str, i: int) -> Run:
        return Run(
            run_id=run_id,
            module_id="noop",
            module_name="No-op",
            status=RunStatus.QUEUED,
            created_at=datetime.now(UTC),
            parameters={"i": i},
        )

    async def trivial() -> None:
        return None

    async def held(release: asyncio.Event) -> None:
        await release.wait()

    clock = time.perf_counter_ns
    queue = Queue(path, durability=durability)
    manager = QueuedTaskManager(queue, RunRegistry())
    start_ns: list[int] = []
    record_ns: list[int] = []
    status_ns: list[int] = []
    cancel_ns: list[int] = []
    try:
        for i in range(-3, samples):  # three warm-up rounds
            release = asyncio.Event()
            t0 = clock()
            manager.start_task(run(f"held-{i}", i), held(release))
            t1 = clock()
            await manager.flush()  # the coroutine still runs: this waits for the record only
            t2 = clock()
            t3 = clock()
            await manager.get_task_status(f"held-{i}")
            t4 = clock()
            release.set()
            await manager.wait_all()
            task_id = await manager.schedule_task("noop", {"i": i})
            t5 = clock()
            await manager.cancel_task(task_id)
            t6 = clock()
            if i >= 0:
                start_ns.append(t1 - t0)
                record_ns.append(t2 - t1)
                status_ns.append(t4 - t3)
                cancel_ns.append(t6 - t5)
        await manager.flush()
        t0 = clock()
        for i in range(burst):
            manager.start_task(run(f"burst-{i}", i), trivial())
        await manager.wait_all()
        await manager.flush()
        burst_s = (clock() - t0) / 1e9
    finally:
        await manager.aclose()
        queue.close()

    memory = BackgroundTaskManager(RunRegistry())
    t0 = clock()
    for i in range(burst):
        memory.start_task(run(f"memory-{i}", i), trivial())
    await memory.wait_all()
    memory_s = (clock() - t0) / 1e9

    def ms(values: list[int]) -> float:
        return statistics.median(values) / 1e6

    return {
        "start_task_ms": ms(start_ns),
        "recorded_ms": ms(record_ns),
        "get_status_ms": ms(status_ns),
        "cancel_ms": ms(cancel_ns),
        "burst_runs_s": burst / burst_s,
        "memory_burst_runs_s": burst / memory_s,
        "samples": samples,
        "burst": burst,
    }


def adapter_costs(ctx: Context, durability: str) -> dict[str, Any]:
    """The adapter's figures at ``durability`` (medians of ``ctx.sizes['adapter']`` samples)."""
    with ctx.workdir.fresh("adapter") as path:
        return asyncio.run(
            _measure(path, durability, ctx.sizes["adapter"], ctx.sizes["adapter_burst"])
        )
