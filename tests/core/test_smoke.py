"""The core alone is a working queue: enqueue, work, complete, fail once."""

from __future__ import annotations

from hookqueue import Queue, TaskStatus, WorkerEngine


def test_core_alone_runs_enqueued_tasks_once(core_queue: Queue) -> None:
    seen: list[int] = []

    async def add(task):  # type: ignore[no-untyped-def]
        seen.append(task.id)
        return task.payload["a"] + task.payload["b"]

    def boom(task):  # type: ignore[no-untyped-def]
        raise ValueError("nope")

    core_queue.handlers.register_handler("add", add)
    core_queue.handlers.register_handler("boom", boom)
    ok = core_queue.enqueue("add", {"a": 1, "b": 2})
    bad = core_queue.enqueue("boom")
    stats = WorkerEngine(core_queue, worker_id="w").run_until_idle()

    assert stats.completed == 1 and stats.failed == 1
    assert core_queue.get(ok.id).status is TaskStatus.COMPLETED
    assert core_queue.get(ok.id).result == 3
    failed = core_queue.get(bad.id)
    assert failed.status is TaskStatus.FAILED
    assert failed.attempts == 1
    assert failed.error_message == "ValueError: nope"
    assert seen == [ok.id]
