"""WorkerEngine: execution, failures, timeouts, cancellation, leases, shutdown, wake-ups."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hookqueue import (
    FakeClock,
    Queue,
    TaskStatus,
    ValidationError,
    WorkerEngine,
    current_execution,
    hookimpl,
)
from hookqueue.core.storage import Settlement

ROOT = Path(__file__).resolve().parents[2]


def _worker(queue: Queue, **kwargs: Any) -> WorkerEngine:
    kwargs.setdefault("worker_id", "w")
    return WorkerEngine(queue, **kwargs)


def test_async_and_sync_handlers_store_their_results(core_queue: Queue) -> None:
    threads: list[str] = []

    async def double(task):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        return {"double": task.payload * 2}

    def shout(task):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return task.payload.upper()

    core_queue.handlers.register_handler("double", double)
    core_queue.handlers.register_handler("shout", shout)
    a = core_queue.enqueue("double", 21)
    b = core_queue.enqueue("shout", "hi")
    stats = _worker(core_queue).run_until_idle()
    assert stats.completed == 2 and stats.processed == 2
    assert core_queue.get(a.id).result == {"double": 42}
    done = core_queue.get(b.id)
    assert done.result == "HI" and done.status is TaskStatus.COMPLETED
    assert done.started_at is not None and done.finished_at is not None
    assert done.locked_by is None and done.lease_expires_at is None
    assert threads and threads[0].startswith("hookqueue-handler"), "sync handlers run in the pool"


def test_a_worker_leases_only_the_task_types_it_has_handlers_for(core_queue: Queue) -> None:
    """A task of a type this worker has no handler for stays queued (for a worker that has
    one) instead of being failed for good; once a handler is there, it runs."""
    core_queue.handlers.register_handler("known", lambda t: "k")
    other = core_queue.enqueue("unknown_type")
    mine = core_queue.enqueue("known")
    stats = _worker(core_queue).run_until_idle()
    assert stats.completed == 1 and stats.failed == 0
    assert core_queue.get(mine.id).status is TaskStatus.COMPLETED
    waiting = core_queue.get(other.id)
    assert waiting.status is TaskStatus.QUEUED and waiting.attempts == 0
    core_queue.handlers.register_handler("unknown_type", lambda t: "now known")
    assert _worker(core_queue).run_until_idle().completed == 1
    assert core_queue.get(other.id).result == "now known"


def test_a_handler_removed_after_the_lease_fails_the_task_naming_the_registered_types(
    core_queue: Queue,
) -> None:
    """The one way a worker can hold a task it has no handler for: the handler was
    unregistered between asking for the lease and starting the task (here: by a scheduler
    plugin, which runs inside the lease). The task fails saying so."""
    core_queue.handlers.register_handler("known", lambda t: None)
    core_queue.handlers.register_handler("going", lambda t: None)

    class Unregister:
        @hookimpl
        def hookqueue_lease(self) -> None:
            if core_queue.handlers.is_registered("going"):
                core_queue.handlers.unregister_handler("going")

    core_queue.pm.register(Unregister())
    t = core_queue.enqueue("going")
    stats = _worker(core_queue).run_until_idle()
    failed = core_queue.get(t.id)
    assert stats.failed == 1
    assert failed.status is TaskStatus.FAILED
    assert "'going'" in failed.error_message and "known" in failed.error_message


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_base_exceptions_fail_the_task_not_the_worker(
    core_queue: Queue, exc: BaseException
) -> None:
    def bad(task):  # type: ignore[no-untyped-def]
        raise exc

    async def bad_async(task):  # type: ignore[no-untyped-def]
        raise exc

    core_queue.handlers.register_handler("bad", bad)
    core_queue.handlers.register_handler("bad_async", bad_async)
    core_queue.handlers.register_handler("ok", lambda t: "fine")
    ids = [core_queue.enqueue(name).id for name in ("bad", "bad_async", "ok")]
    stats = _worker(core_queue).run_until_idle()
    statuses = [core_queue.get(i).status for i in ids]
    assert statuses == [TaskStatus.FAILED, TaskStatus.FAILED, TaskStatus.COMPLETED]
    assert type(exc).__name__ in core_queue.get(ids[0]).error_message
    assert stats.failed == 2 and stats.completed == 1


def test_a_result_that_is_not_json_fails_the_task_clearly(core_queue: Queue) -> None:
    core_queue.handlers.register_handler("t", lambda task: {"when": object()})
    t = core_queue.enqueue("t")
    _worker(core_queue).run_until_idle()
    failed = core_queue.get(t.id)
    assert failed.status is TaskStatus.FAILED
    assert "not JSON" in failed.error_message


def test_timeouts_from_the_task_and_from_the_registration(core_queue: Queue) -> None:
    async def slow(task):  # type: ignore[no-untyped-def]
        await asyncio.sleep(10)

    def slow_sync(task):  # type: ignore[no-untyped-def]
        execution = current_execution()
        # a cooperative sync handler stops when the token is set
        assert not execution.cancel_event.wait(10)

    core_queue.handlers.register_handler("slow", slow)
    core_queue.handlers.register_handler("slow_sync", slow_sync, timeout=0.05)
    a = core_queue.enqueue("slow", timeout=0.05)
    b = core_queue.enqueue("slow_sync")
    started = time.monotonic()
    _worker(core_queue).run_until_idle()
    assert time.monotonic() - started < 5
    for tid in (a.id, b.id):
        task = core_queue.get(tid)
        assert task.status is TaskStatus.FAILED
        assert "timed out after 0.05s" in task.error_message


def test_retry_hook_and_execute_wrapper_are_used(db_path: Path, clock: FakeClock) -> None:
    calls: list[str] = []

    class Policy:
        hookqueue_name = "policy"

        @hookimpl(tryfirst=True)
        def hookqueue_retry(self, task, failure, now):  # type: ignore[no-untyped-def]
            calls.append(f"retry:{failure.kind}:{task.attempts}")
            from hookqueue import RetryDecision

            return RetryDecision.at(now, "again")

        @hookimpl(wrapper=True)
        def hookqueue_execute(self, task):  # type: ignore[no-untyped-def]
            inner = yield

            async def wrapped():  # type: ignore[no-untyped-def]
                calls.append(f"before:{task.id}")
                try:
                    return await inner
                finally:
                    calls.append(f"after:{task.id}")

            return wrapped()

    q = Queue(db_path, load_entrypoints=False, clock=clock, plugins=[Policy()])

    def flaky(task):  # type: ignore[no-untyped-def]
        if task.attempts < 3:
            raise ConnectionError("down")
        return task.attempts

    q.handlers.register_handler("flaky", flaky)
    t = q.enqueue("flaky", max_attempts=5)
    stats = _worker(q, concurrency=1).run_until_idle()
    done = q.get(t.id)
    assert done.status is TaskStatus.COMPLETED and done.result == 3 and done.attempts == 3
    assert stats.retried == 2 and stats.completed == 1
    assert calls == [
        f"before:{t.id}", f"after:{t.id}", "retry:error:1",
        f"before:{t.id}", f"after:{t.id}", "retry:error:2",
        f"before:{t.id}", f"after:{t.id}",
    ]  # fmt: skip
    # a retry is overruled once the attempts are used up
    t2 = q.enqueue("flaky", max_attempts=2)
    _worker(q, worker_id="w2").run_until_idle()
    failed = q.get(t2.id)
    assert failed.status is TaskStatus.FAILED and failed.attempts == 2
    assert "all 2 attempts used" in failed.error_message
    q.close()


def test_delayed_tasks_wait_for_their_time(core_queue: Queue, clock: FakeClock) -> None:
    ran: list[int] = []
    core_queue.handlers.register_handler("t", lambda task: ran.append(task.id))
    now = core_queue.enqueue("t")
    later = core_queue.enqueue("t", delay=60)
    _worker(core_queue).run_until_idle()
    assert ran == [now.id]
    assert core_queue.get(later.id).status is TaskStatus.QUEUED
    clock.advance(59)
    _worker(core_queue).run_until_idle()
    assert ran == [now.id]
    clock.advance(1)
    _worker(core_queue).run_until_idle()
    assert ran == [now.id, later.id]


def test_cancelling_running_tasks(core_queue: Queue) -> None:
    started = threading.Event()
    sync_started = threading.Event()

    async def long(task):  # type: ignore[no-untyped-def]
        started.set()
        await asyncio.sleep(30)

    def long_sync(task):  # type: ignore[no-untyped-def]
        sync_started.set()
        execution = current_execution()
        for _ in range(3000):
            execution.check_cancelled()
            time.sleep(0.01)

    core_queue.handlers.register_handler("long", long)
    core_queue.handlers.register_handler("long_sync", long_sync)
    a = core_queue.enqueue("long")
    b = core_queue.enqueue("long_sync")
    worker = _worker(core_queue, lease_seconds=2, idle_poll_interval=30)
    thread = threading.Thread(target=worker.run_until_idle)
    thread.start()
    assert started.wait(10) and sync_started.wait(10)
    began = time.monotonic()
    core_queue.cancel(a.id)
    core_queue.cancel(b.id)
    thread.join(20)
    assert not thread.is_alive()
    assert time.monotonic() - began < 10, "in-process cancellation does not wait for a poll"
    for tid in (a.id, b.id):
        task = core_queue.get(tid)
        assert task.status is TaskStatus.CANCELLED, task
        assert "cancel" in task.error_message


def test_cancellation_from_another_connection_arrives_with_the_heartbeat(db_path: Path) -> None:
    q = Queue(db_path, load_entrypoints=False)
    started = threading.Event()

    async def long(task):  # type: ignore[no-untyped-def]
        started.set()
        await asyncio.sleep(30)

    q.handlers.register_handler("long", long)
    t = q.enqueue("long")
    worker = _worker(q, lease_seconds=1.0)
    thread = threading.Thread(target=worker.run_until_idle)
    thread.start()
    assert started.wait(10)
    other = Queue(db_path, load_entrypoints=False)  # as another process would
    other.cancel(t.id)
    thread.join(10)
    assert q.get(t.id).status is TaskStatus.CANCELLED
    other.close()
    q.close()


def test_graceful_shutdown_releases_unfinished_leases_without_counting_them(
    core_queue: Queue,
) -> None:
    started = threading.Event()
    finished: list[int] = []

    async def quick(task):  # type: ignore[no-untyped-def]
        started.set()
        await asyncio.sleep(0.1)
        finished.append(task.id)

    async def endless(task):  # type: ignore[no-untyped-def]
        await asyncio.sleep(60)

    core_queue.handlers.register_handler("quick", quick)
    core_queue.handlers.register_handler("endless", endless)
    q1 = core_queue.enqueue("quick")
    e1 = core_queue.enqueue("endless", max_attempts=3)
    worker = _worker(core_queue, shutdown_grace=1.0)
    thread = threading.Thread(target=lambda: asyncio.run(worker.run_async()))
    thread.start()
    assert started.wait(10)
    worker.stop()
    thread.join(20)
    assert not thread.is_alive()
    assert finished == [q1.id], "a task finishing within the grace period completes"
    assert core_queue.get(q1.id).status is TaskStatus.COMPLETED
    released = core_queue.get(e1.id)
    assert released.status is TaskStatus.QUEUED
    assert released.attempts == 0 and released.locked_by is None
    assert worker.stats.released == 1
    [info] = core_queue.workers()
    assert info.worker_id == "w" and info.stopped_at is not None and info.processed == 1


def test_an_expired_lease_is_taken_over_and_counts_an_attempt(
    core_queue: Queue, clock: FakeClock
) -> None:
    t = core_queue.enqueue("t", max_attempts=2)
    once = core_queue.enqueue("t")  # max_attempts 1: a crash ends it
    [first, only] = core_queue.runtime.lease("dead-worker", limit=2, lease_seconds=10)
    assert first.attempts == 1
    assert core_queue.runtime.lease("other", limit=1) == [], "a live lease is never taken"
    clock.advance(11)
    [second] = core_queue.runtime.lease("other", limit=2, lease_seconds=10)
    assert second.id == t.id and second.attempts == 2 and second.locked_by == "other"
    assert core_queue.get(once.id).status is TaskStatus.FAILED
    # the dead worker's late outcome is dropped: it no longer holds the lease
    assert (
        core_queue.runtime.settle("dead-worker", [Settlement(task_id=t.id, kind="complete")]) == []
    )
    assert core_queue.get(t.id).status is TaskStatus.RUNNING
    clock.advance(11)
    assert core_queue.runtime.lease("third", limit=1) == []
    failed = core_queue.get(t.id)
    assert failed.status is TaskStatus.FAILED
    assert "stopped renewing its lease" in failed.error_message and "other" in failed.error_message


def test_heartbeats_keep_a_long_task_leased(db_path: Path) -> None:
    q = Queue(db_path, load_entrypoints=False)
    seen_by_other: list[Any] = []

    async def long(task):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.3)
        seen_by_other.extend(q.runtime.lease("thief", limit=1, lease_seconds=5))
        await asyncio.sleep(0.3)
        return "done"

    q.handlers.register_handler("long", long)
    t = q.enqueue("long")
    _worker(q, lease_seconds=0.4, heartbeat_interval=0.1).run_until_idle()
    assert seen_by_other == []
    assert q.get(t.id).status is TaskStatus.COMPLETED and q.get(t.id).attempts == 1
    q.close()


def test_in_process_enqueue_wakes_an_idle_worker_at_once(db_path: Path) -> None:
    q = Queue(db_path, load_entrypoints=False)
    picked = threading.Event()
    q.handlers.register_handler("t", lambda task: picked.set())
    worker = _worker(q, idle_poll_interval=60)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert worker.wait_started(10)
    time.sleep(0.2)  # let it go idle
    q.enqueue("t")
    # an idle poll would take 60 s; the wake-up makes it a matter of milliseconds
    assert picked.wait(10)
    worker.stop()
    thread.join(20)
    q.close()


def test_a_commit_by_another_process_wakes_an_idle_worker(db_path: Path) -> None:
    q = Queue(db_path, load_entrypoints=False)
    picked = threading.Event()
    q.handlers.register_handler("t", lambda task: picked.set())
    worker = _worker(q, idle_poll_interval=60)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert worker.wait_started(10)
    subprocess.run(
        [sys.executable, "-m", "hookqueue", "enqueue", "t", "--db", str(db_path)],
        check=True, capture_output=True, env={"HOOKQUEUE_PLUGIN_AUTOLOAD": "0", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert picked.wait(20)
    worker.stop()
    thread.join(20)
    q.close()


def test_run_handles_sigterm_gracefully(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    app = tmp_path / "sigapp.py"
    app.write_text(
        "import asyncio\n"
        "from hookqueue import TaskHandlerRegistry\n"
        "registry = TaskHandlerRegistry()\n"
        "@registry.handler('slow')\n"
        "async def slow(task):\n"
        "    print('started', flush=True)\n"
        "    await asyncio.sleep(60)\n"
    )
    q = Queue(db, load_entrypoints=False)
    t = q.enqueue("slow", max_attempts=3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookqueue", "worker", "--db", str(db), "--app", "sigapp:registry",
         "--shutdown-grace", "0.5"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOOKQUEUE_PLUGIN_AUTOLOAD": "0"},
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    released = q.get(t.id)
    assert released.status is TaskStatus.QUEUED and released.attempts == 0
    q.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 2.5}, "concurrency"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"lease_seconds": 1, "heartbeat_interval": 2}, "heartbeat_interval"),
        ({"queues": []}, "queues"),
        ({"worker_id": ""}, "worker_id"),
        ({"shutdown_grace": -1}, "shutdown_grace"),
    ],
)
def test_bad_worker_options(core_queue: Queue, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        WorkerEngine(core_queue, **kwargs)
    assert info.value.field == field


def test_the_migration_guides_worker_lines_work(db_path: Path) -> None:
    from hookqueue import QueueDatabase

    db = QueueDatabase(db_path)
    db.initialize_schema()
    worker = WorkerEngine(db, worker_id="worker-1")
    worker.handler_registry.register_handler("t", lambda task: "ok")
    Queue.for_database(db).enqueue("t")
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert worker.wait_started(10)
    deadline = time.monotonic() + 10
    while Queue.for_database(db).counts()["completed"] != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.stop()
    thread.join(20)
    assert Queue.for_database(db).counts()["completed"] == 1
    db.close()


class _LeaseThreads:
    """Records the thread each lease runs on (the decision hook runs inside QueueRuntime.lease)."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    @hookimpl
    def hookqueue_lease(self) -> None:
        self.threads.append(threading.current_thread().name)


def _three_tasks_one_slow(db_path: Path, recorder: _LeaseThreads) -> Queue:
    q = Queue(db_path, load_entrypoints=False, plugins=[recorder], durability="normal")

    async def slow(task):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.3)

    async def quick(task):  # type: ignore[no-untyped-def]
        return None

    q.handlers.register_handler("slow", slow)
    q.handlers.register_handler("quick", quick)
    q.enqueue_many([{"task_type": t} for t in ("slow", "quick", "quick")])
    return q


def test_a_worker_on_its_own_loop_leases_on_the_loop_only_while_no_task_runs(
    db_path: Path,
) -> None:
    """run_until_idle owns its loop: with nothing running, the lease runs on the loop's
    thread (no hand-off); once a task runs, leases go to the store thread."""
    recorder = _LeaseThreads()
    with _three_tasks_one_slow(db_path, recorder) as q:
        stats = _worker(q, concurrency=2).run_until_idle()
    assert stats.completed == 3
    main = threading.main_thread().name
    # First lease: slow + quick, nothing running yet. Then the quick one's outcome and the
    # last task are leased while the slow one still runs.
    assert recorder.threads[0] == main
    assert recorder.threads[1].startswith("hookqueue-store-w")


def test_a_worker_on_a_shared_loop_never_runs_the_store_on_it(db_path: Path) -> None:
    """run_async shares the caller's loop: every lease goes to the store thread."""
    recorder = _LeaseThreads()
    with _three_tasks_one_slow(db_path, recorder) as q:
        stats = asyncio.run(_worker(q, concurrency=2).run_until_idle_async())
    assert stats.completed == 3
    assert recorder.threads and all(t.startswith("hookqueue-store-w") for t in recorder.threads)
