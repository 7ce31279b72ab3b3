"""Waiting for results: Queue.wait / wait_async / TaskHandle, woken by the store's change
notification — including a commit made by another process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _command import env

import hookqueue.core.waiting as waiting
from hookqueue import (
    Queue,
    TaskFailed,
    TaskNotFound,
    TaskStatus,
    TaskWasCancelled,
    ValidationError,
    WaitTimeout,
    WorkerEngine,
)


def _double(task):  # type: ignore[no-untyped-def]
    return task.payload * 2


def _fail(task):  # type: ignore[no-untyped-def]
    raise RuntimeError("no luck")


@pytest.fixture
def q(db_path: Path) -> Queue:
    queue = Queue(db_path, load_entrypoints=False)
    queue.handlers.register_handler("double", _double)
    queue.handlers.register_handler("fail", _fail)
    yield queue  # type: ignore[misc]
    queue.close()


def _work_soon(q: Queue, delay: float = 0.05) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        WorkerEngine(q, worker_id="w").run_until_idle()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_wait_returns_the_completed_task_and_its_result(q: Queue) -> None:
    task = q.enqueue("double", 21)
    worker = _work_soon(q)
    done = q.wait(task.id, timeout=30)
    worker.join()
    assert done.status is TaskStatus.COMPLETED and done.result == 42
    assert q.wait(task.id, timeout=0.01).result == 42, "a finished task answers at once"
    assert q.handle(task).result(timeout=1) == 42


def test_wait_raises_what_happened_to_a_failed_or_cancelled_task(q: Queue) -> None:
    bad = q.enqueue("fail", max_attempts=1)
    _work_soon(q).join()
    with pytest.raises(TaskFailed, match="RuntimeError: no luck") as info:
        q.wait(bad.id, timeout=5)
    assert info.value.task.status is TaskStatus.FAILED
    gone = q.enqueue("double", 1)
    threading.Timer(0.05, q.cancel, args=(gone.id,)).start()
    with pytest.raises(TaskWasCancelled):
        q.handle(gone.id).result(timeout=10)


def test_a_wait_that_times_out_leaves_the_task_alone(q: Queue) -> None:
    task = q.enqueue("double", 1)
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match="still queued after 0.2s") as info:
        q.wait(task.id, timeout=0.2)
    assert 0.15 < time.monotonic() - started < 5
    assert isinstance(info.value, TimeoutError) and info.value.task_id == task.id
    assert q.get(task.id).status is TaskStatus.QUEUED
    with pytest.raises(TaskNotFound):
        q.wait(9999, timeout=1)
    with pytest.raises(ValidationError, match="timeout"):
        q.wait(task.id, timeout=-1)


def test_a_deleted_task_ends_the_wait(q: Queue) -> None:
    task = q.enqueue("double", 1)
    threading.Timer(0.05, q.purge, kwargs={"ids": [task.id]}).start()
    with pytest.raises(TaskNotFound):
        q.wait(task.id, timeout=10)


def test_many_coroutines_wait_on_one_thread(q: Queue) -> None:
    tasks = q.enqueue_many([{"task_type": "double", "payload": i} for i in range(200)])

    async def main() -> list[int]:
        before = threading.active_count()
        waits = [asyncio.create_task(q.wait_async(t.id, timeout=60)) for t in tasks]
        await asyncio.sleep(0.1)
        threads_while_waiting = threading.active_count() - before
        worker = WorkerEngine(q, worker_id="w", concurrency=20)
        await worker.run_until_idle_async()
        done = await asyncio.gather(*waits)
        assert threads_while_waiting == 1, "one waiter thread for all of them"
        return [t.result for t in done]

    assert asyncio.run(main()) == [i * 2 for i in range(200)]


def test_the_waiter_thread_tells_the_watcher_which_tasks_it_waits_for(db_path: Path) -> None:
    """Before it looks, the waiter thread hands the store's watcher the set of tasks waited
    for (``watch_tasks``) — only when that set changed — so that a store which notifies only
    what someone waits for (PostgreSQL) can register them. SQLite's watcher ignores it."""
    from hookqueue import QueueDatabase
    from hookqueue.core.store.watch import CommitWatcher

    told: list[frozenset[int]] = []

    class Recording(CommitWatcher):
        def watch_tasks(self, task_ids):  # type: ignore[no-untyped-def]
            told.append(frozenset(task_ids))
            super().watch_tasks(task_ids)

    class Store(QueueDatabase):
        def watch_changes(self, poll_interval=0.001, *, sleep_while_idle=True):  # type: ignore[no-untyped-def]
            return Recording(self, poll_interval, sleep_while_idle=sleep_while_idle)

    with Queue(Store(db_path), load_entrypoints=False) as q:
        q.handlers.register_handler("double", _double)
        a, b = q.enqueue("double", 1), q.enqueue("double", 2)

        async def main() -> list[int]:
            waits = [asyncio.create_task(q.wait_async(t.id, timeout=60)) for t in (a, b)]
            await asyncio.sleep(0.1)
            await WorkerEngine(q, worker_id="w").run_until_idle_async()
            return [t.result for t in await asyncio.gather(*waits)]

        assert asyncio.run(main()) == [2, 4]
    assert told and a.id in told[0]
    assert {a.id, b.id} in told, "both waits registered before the worker ran"
    assert all(s <= {a.id, b.id} for s in told)
    assert all(x != y for x, y in zip(told, told[1:], strict=False)), "only on a change"


def test_an_async_wait_times_out_and_can_be_cancelled(q: Queue) -> None:
    task = q.enqueue("double", 1)

    async def main() -> None:
        with pytest.raises(WaitTimeout):
            await q.handle(task).result_async(timeout=0.1)
        waiting = asyncio.create_task(q.wait_async(task.id))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(main())
    assert q.get(task.id).status is TaskStatus.QUEUED


def test_closing_the_queue_ends_pending_waits(db_path: Path) -> None:
    q = Queue(db_path, load_entrypoints=False)
    task = q.enqueue("double", 1)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            q.wait(task.id, timeout=30)
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    q.close()
    waiter.join(10)
    assert not waiter.is_alive()
    assert errors and "closed" in str(errors[0])


WORKER = """
import sys, time
from hookqueue import Queue, WorkerEngine
q = Queue(sys.argv[1], load_entrypoints=False)
q.handlers.register_handler("double", lambda task: task.payload * 2)
time.sleep(0.3)
WorkerEngine(q, worker_id="other-process").run_until_idle()
q.close()
"""


def test_a_commit_in_another_process_wakes_the_wait(q: Queue, tmp_path: Path) -> None:
    task = q.enqueue("double", 50)
    script = tmp_path / "work.py"
    script.write_text(WORKER)
    proc = subprocess.Popen([sys.executable, str(script), str(q.db.location)])
    try:
        done = q.wait(task.id, timeout=60)
    finally:
        proc.wait(60)
    assert done.result == 100 and done.locked_by is None
    assert proc.returncode == 0


def test_another_processs_commit_wakes_the_wait_not_the_safety_look(
    q: Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite too, the wait is ended by the store's change notification: with the waiter
    thread's safety look pinned at 600 s, it returns soon after the other process's commit
    (a timeout of 30 s, far below the look, would fail the test otherwise)."""
    monkeypatch.setattr(waiting, "SAFETY_LOOK", 600.0)
    task = q.enqueue("double", 21)
    script = tmp_path / "work.py"
    script.write_text(WORKER)
    proc = subprocess.Popen([sys.executable, str(script), str(q.db.location)], env=env())
    try:
        done = q.wait(task.id, timeout=30)
        returned = time.time()
    finally:
        proc.wait(60)
    assert done.result == 42 and done.locked_by is None and proc.returncode == 0
    assert done.finished_at is not None
    lag = returned - done.finished_at.timestamp()
    assert lag < 5, f"the wait returned {lag:.2f}s after the commit"
