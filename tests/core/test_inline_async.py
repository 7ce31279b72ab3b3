"""Inline mode through the async enqueue forms: the tasks run on the caller's own loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hookqueue import Queue, TaskStatus


async def test_async_enqueues_run_inline_on_the_callers_loop(db_path: Path) -> None:
    q = Queue(db_path, inline=True, load_entrypoints=False)
    loop = asyncio.get_running_loop()
    loops: list[bool] = []

    async def handler(task):  # type: ignore[no-untyped-def]
        loops.append(asyncio.get_running_loop() is loop)
        return task.payload * 2

    q.handlers.register_handler("t", handler)
    one = await q.enqueue_async("t", 5)
    many = await q.enqueue_many_async(
        [{"task_type": "t", "payload": 1}, {"task_type": "t", "payload": 2}]
    )
    assert one.status is TaskStatus.COMPLETED and one.result == 10
    assert [t.result for t in many] == [2, 4]
    assert loops == [True, True, True]
    q.close()


def test_enqueue_claimed_many_is_one_transaction(db_path: Path) -> None:
    q = Queue(db_path, load_entrypoints=False)
    tasks = q.enqueue_claimed_many(
        "mgr",
        lease_seconds=5,
        tasks=[{"task_type": "a", "idempotency_key": "r1"}, {"task_type": "b"}],
    )
    assert [t.status for t in tasks] == [TaskStatus.RUNNING, TaskStatus.RUNNING]
    assert all(q.get(t.id).locked_by == "mgr" and q.get(t.id).attempts == 1 for t in tasks)
    again = q.enqueue_claimed_many("other", tasks=[{"task_type": "a", "idempotency_key": "r1"}])
    assert again[0].id == tasks[0].id and again[0].locked_by == "mgr"
    assert q.runtime.lease("w", limit=5) == [], "claimed tasks are never leased by another worker"
    q.close()
