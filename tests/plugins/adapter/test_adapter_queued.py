"""QueuedTaskManager: in-process runs recorded in the queue, following tasks workers run, and
the rest of the API."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from hookqueue import (
    FakeClock,
    HandlerAlreadyRegistered,
    HookqueueError,
    Queue,
    QueueDatabase,
    Task,
    TaskStatus,
    ValidationError,
    WorkerEngine,
)
from hookqueue.plugins.adapter import (
    ADAPTER_HEADER,
    NoRunningLoop,
    QueuedTaskManager,
    Run,
    RunAlreadyActive,
    RunRegistry,
    RunStatus,
)
from hookqueue.plugins.adapter.registry import write_history_atomically

Factory = Callable[..., QueuedTaskManager]
Waiter = Callable[..., Awaitable[None]]


def task_of(queue: Queue, run: Run) -> Task:
    task = queue.find(run.run_id)
    assert task is not None, f"run {run.run_id} is not recorded in the queue"
    return task


# -- start_task ------------------------------------------------------------------------------------


async def test_start_task_runs_now_records_the_task_and_completes_it(
    manager: QueuedTaskManager, aqueue: Queue, clock: FakeClock, make_run: Callable[..., Run]
) -> None:
    run = make_run(parameters={"max_age_hours": 24})
    during: list[Task] = []

    async def cleanup() -> dict[str, int]:
        run.parameters["max_age_hours"] = 1  # too late: the record has the start's parameters
        await manager.flush()  # the record commits while the coroutine runs
        during.append(task_of(aqueue, run))
        clock.advance(4)
        return {"deleted": 3}

    assert manager.start_task(run, cleanup()) == run.run_id
    assert run.status is RunStatus.RUNNING and manager.is_task_active(run.run_id)
    assert manager.registry.get_run(run.run_id) is run
    assert await manager.wait_all(timeout=10) is True

    [running] = during
    assert running.status is TaskStatus.RUNNING and running.locked_by == manager.worker_id
    assert running.task_type == "cleanup" and running.payload == {"max_age_hours": 24}
    assert running.attempts == 1 and running.max_attempts == 3
    assert running.headers[ADAPTER_HEADER]["run_id"] == run.run_id
    done = task_of(aqueue, run)
    assert done.status is TaskStatus.COMPLETED and done.result == {"deleted": 3}
    assert done.locked_by is None and done.attempts == 1
    assert run.status is RunStatus.COMPLETED and run.exit_code == 0
    assert run.duration_seconds == 4.0 and run.completed_at == clock.now()
    assert not manager.is_task_active(run.run_id) and manager.get_active_task_count() == 0


async def test_a_failing_coroutine_fails_its_run_and_task(
    manager: QueuedTaskManager,
    aqueue: Queue,
    make_run: Callable[..., Run],
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = make_run()

    async def broken() -> None:
        raise KeyError("missing column")

    manager.start_task(run, broken())
    with caplog.at_level(logging.ERROR, logger="hookqueue.adapter"):
        assert await manager.wait_all(timeout=10)
    assert run.status is RunStatus.FAILED and run.error_message == "'missing column'"
    task = task_of(aqueue, run)
    # Failed for good: the in-process coroutine cannot be retried by the manager.
    assert task.status is TaskStatus.FAILED and task.error_message == "KeyError: 'missing column'"
    assert "missing column" in caplog.text


async def test_a_result_that_is_not_json_completes_without_a_result(
    manager: QueuedTaskManager, aqueue: Queue, make_run: Callable[..., Run]
) -> None:
    run = make_run()

    async def work() -> object:
        return object()

    manager.start_task(run, work())
    await manager.wait_all(timeout=10)
    task = task_of(aqueue, run)
    assert task.status is TaskStatus.COMPLETED and task.result is None


async def test_cancel_task_cancels_the_coroutine_and_stores_cancelled(
    manager: QueuedTaskManager, aqueue: Queue, make_run: Callable[..., Run]
) -> None:
    run = make_run()
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.sleep(3600)

    manager.start_task(run, work())
    await started.wait()
    assert await manager.cancel_task(run.run_id) is True
    assert run.status is RunStatus.CANCELLED
    task = task_of(aqueue, run)
    assert task.status is TaskStatus.CANCELLED  # not "failed" + "Cancelled by user"
    assert task.error_message == "cancelled: cancel_task() was called"
    assert await manager.cancel_task(run.run_id) is False
    assert await manager.cancel_task("never-heard-of") is False


async def test_cancelling_before_the_first_step_ends_cancelled_and_untracked(
    manager: QueuedTaskManager, aqueue: Queue, make_run: Callable[..., Run]
) -> None:
    run = make_run()
    stepped: list[bool] = []

    async def work() -> None:
        stepped.append(True)

    manager.start_task(run, work())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert await manager.cancel_task(run.run_id) is True
        gc.collect()
    assert stepped == [] and run.status is RunStatus.CANCELLED
    assert manager.get_active_task_ids() == []
    assert task_of(aqueue, run).status is TaskStatus.CANCELLED


async def test_a_cancel_requested_through_the_queue_stops_the_coroutine(
    manager: QueuedTaskManager,
    aqueue: Queue,
    db_path: Path,
    make_run: Callable[..., Run],
) -> None:
    run = make_run()

    async def work() -> None:
        await asyncio.sleep(3600)

    manager.start_task(run, work())
    await manager.flush()
    # Another connection, as another process would be: no in-process wake-up, the
    # manager's heartbeat picks the request up.
    with QueueDatabase(db_path) as other_db:
        other = Queue(other_db, load_entrypoints=False)
        assert other.cancel(task_of(aqueue, run).id).cancel_requested
        other.close()
    assert await manager.wait_all(timeout=10)
    assert run.status is RunStatus.CANCELLED
    assert run.error_message == "cancelled: cancel requested through the queue"
    assert task_of(aqueue, run).status is TaskStatus.CANCELLED


async def test_an_interrupted_coroutine_is_released_for_a_worker_and_the_run_follows_it(
    manager: QueuedTaskManager, aqueue: Queue, make_run: Callable[..., Run], eventually: Waiter
) -> None:
    run = make_run(parameters={"max_age_hours": 6})
    payloads: list[Any] = []

    async def handler(task: Task) -> str:
        payloads.append(task.payload)
        return "rerun"

    await manager.register_task("cleanup", handler)

    async def work() -> None:
        await asyncio.sleep(3600)

    manager.start_task(run, work())
    await manager.flush()
    manager.tasks[run.run_id].cancel()  # not through cancel_task(): e.g. the loop shutting down
    await eventually(lambda: task_of(aqueue, run).status is TaskStatus.QUEUED)
    await eventually(lambda: run.status is RunStatus.QUEUED)
    assert manager.is_task_active(run.run_id)  # really queued, for a worker

    await WorkerEngine(aqueue, worker_id="w1").run_until_idle_async()
    assert await manager.wait_all(timeout=10)
    assert payloads == [{"max_age_hours": 6}]
    assert run.status is RunStatus.COMPLETED and run.exit_code == 0
    assert task_of(aqueue, run).attempts == 1  # the released attempt is not counted


async def test_a_blocked_event_loop_keeps_its_leases(
    db_path: Path, make_run: Callable[..., Run]
) -> None:
    queue = Queue(db_path, durability="normal")  # the real clock: leases really lapse
    manager = QueuedTaskManager(queue, RunRegistry(), lease_seconds=0.4, heartbeat_interval=0.05)
    run = make_run()
    stolen: list[Task] = []
    stop = threading.Event()

    def thief() -> None:
        while not stop.is_set():
            stolen.extend(queue.runtime.lease("thief", lease_seconds=5))
            time.sleep(0.02)

    async def blocking() -> str:
        await manager.flush()
        time.sleep(1.2)  # blocks the loop three times longer than the lease
        return "ok"

    thread = threading.Thread(target=thief)
    thread.start()
    try:
        manager.start_task(run, blocking())
        assert await manager.wait_all(timeout=20)
    finally:
        stop.set()
        thread.join()
        await manager.aclose()
        queue.close()
    assert stolen == []
    assert run.status is RunStatus.COMPLETED
    with Queue(db_path, load_entrypoints=False) as check:
        task = check.find(run.run_id)
        assert task is not None and task.status is TaskStatus.COMPLETED and task.attempts == 1


async def test_a_lost_lease_stops_the_coroutine_and_the_run_follows_the_worker(
    manager_factory: Factory,
    aqueue: Queue,
    clock: FakeClock,
    make_run: Callable[..., Run],
    eventually: Waiter,
) -> None:
    # Renewals every 60 real seconds: none happens on its own during the test.
    manager = manager_factory(RunRegistry(), lease_seconds=120.0, heartbeat_interval=60.0)
    run = make_run()
    stopped = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()

    manager.start_task(run, work())
    await manager.flush()
    clock.advance(121)  # the lease lapses (as if this process's renewals starved) ...
    [taken] = aqueue.runtime.lease(
        "other-worker", lease_seconds=600
    )  # ... and a worker takes it over
    assert taken.idempotency_key == run.run_id and taken.attempts == 2
    manager._leases.beat_now()  # the next renewal finds the lease gone
    await asyncio.wait_for(stopped.wait(), 10)
    await eventually(lambda: manager.is_task_active(run.run_id) and not manager.tasks)
    assert run.status is RunStatus.RUNNING  # a worker has it now
    aqueue.runtime.settle("other-worker", [_complete(taken.id)])
    assert await manager.wait_all(timeout=10)
    assert run.status is RunStatus.COMPLETED and run.exit_code == 0


def _complete(task_id: int) -> Any:
    from hookqueue.core.storage import Settlement

    return Settlement(task_id=task_id, kind="complete", result_json='"by worker"')


# -- refusals --------------------------------------------------------------------------------------


async def test_starting_an_active_run_id_again_is_refused(
    manager: QueuedTaskManager, make_run: Callable[..., Run]
) -> None:
    run = make_run()
    gate = asyncio.Event()

    async def work() -> None:
        await gate.wait()

    manager.start_task(run, work())
    again = work()
    with pytest.raises(RunAlreadyActive):
        manager.start_task(run, again)
    assert again.cr_frame is None
    gate.set()
    assert await manager.wait_all(timeout=10)


def test_outside_a_running_loop_start_task_raises_and_records_nothing(
    aqueue: Queue, make_run: Callable[..., Run]
) -> None:
    manager = QueuedTaskManager(aqueue, RunRegistry())
    run = make_run()

    async def work() -> None:
        return None

    coro = work()
    with pytest.raises(NoRunningLoop):
        manager.start_task(run, coro)
    assert coro.cr_frame is None and run.status is RunStatus.QUEUED
    assert aqueue.counts() == {s.value: 0 for s in TaskStatus}
    manager.close()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"parameters": {"when": object()}}, "run.parameters"),
        ({"module_id": "x" * 300}, "run.module_id"),
    ],
)
async def test_a_run_the_queue_cannot_hold_is_refused_before_it_starts(
    manager: QueuedTaskManager,
    aqueue: Queue,
    make_run: Callable[..., Run],
    overrides: dict[str, Any],
    field: str,
) -> None:
    run = make_run(**overrides)

    async def work() -> None:
        return None

    coro = work()
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        manager.start_task(run, coro)
    assert coro.cr_frame is None and run.status is RunStatus.QUEUED
    await manager.flush()
    assert aqueue.counts()["running"] == 0


async def test_a_run_id_already_in_the_queue_runs_unrecorded_with_a_warning(
    manager: QueuedTaskManager,
    aqueue: Queue,
    make_run: Callable[..., Run],
    caplog: pytest.LogCaptureFixture,
) -> None:
    earlier = aqueue.enqueue("cleanup", {}, idempotency_key="dup")
    run = make_run(run_id="dup")

    async def work() -> str:
        return "ran"

    with caplog.at_level(logging.WARNING, logger="hookqueue.adapter"):
        manager.start_task(run, work())
        assert await manager.wait_all(timeout=10)
    assert run.status is RunStatus.COMPLETED
    assert "already recorded in the queue as task" in caplog.text and "unique run_id" in caplog.text
    assert aqueue.get(earlier.id).status is TaskStatus.QUEUED  # untouched


async def test_durable_start_waits_for_the_record(
    manager_factory: Factory, aqueue: Queue, make_run: Callable[..., Run]
) -> None:
    manager = manager_factory(RunRegistry(), durable_start=True)
    run = make_run()
    seen: list[TaskStatus] = []

    async def work() -> None:
        seen.append(task_of(aqueue, run).status)  # a blocking read is fine in a test

    manager.start_task(run, work())
    assert await manager.wait_all(timeout=10)
    assert seen == [TaskStatus.RUNNING] and run.status is RunStatus.COMPLETED


async def test_durable_start_refuses_to_run_what_it_cannot_record(
    manager_factory: Factory, aqueue: Queue, make_run: Callable[..., Run]
) -> None:
    manager = manager_factory(RunRegistry(), durable_start=True)
    aqueue.enqueue("cleanup", {}, idempotency_key="taken")
    run = make_run(run_id="taken")
    ran: list[bool] = []

    async def work() -> None:
        ran.append(True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager.start_task(run, work())
        assert await manager.wait_all(timeout=10)
        gc.collect()
    assert ran == [] and run.status is RunStatus.FAILED
    assert "already recorded in the queue" in (run.error_message or "")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("lease_seconds", 0, "lease_seconds=0: must be a positive number"),
        ("heartbeat_interval", 9, "must be shorter than lease_seconds"),
        ("max_attempts", 1, "max_attempts=1: must be an integer >= 2"),
        ("queue_name", "", "queue_name=''"),
    ],
)
def test_bad_options_are_refused_naming_them(
    aqueue: Queue, option: str, value: Any, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        QueuedTaskManager(aqueue, RunRegistry(), **{option: value})


async def test_a_closed_manager_refuses_new_runs(
    aqueue: Queue, make_run: Callable[..., Run]
) -> None:
    manager = QueuedTaskManager(aqueue, RunRegistry())
    await manager.aclose()

    async def work() -> None:
        return None

    coro = work()
    with pytest.raises(HookqueueError, match="was closed"):
        manager.start_task(make_run(), coro)
    assert coro.cr_frame is None


async def test_one_manager_cannot_serve_two_running_loops(manager: QueuedTaskManager) -> None:
    await manager.wait_all()  # binds this loop
    errors: list[BaseException] = []

    def other_loop() -> None:
        try:
            asyncio.run(manager.wait_all())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_loop)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "another running event loop" in str(errors[0])


# -- shutdown ----------------------------------------------------------------------------------------


async def test_aclose_interrupts_runs_after_the_grace_and_releases_them(
    aqueue: Queue, make_run: Callable[..., Run]
) -> None:
    manager = QueuedTaskManager(aqueue, RunRegistry(), heartbeat_interval=0.05)
    run = make_run()

    async def work() -> None:
        await asyncio.sleep(3600)

    manager.start_task(run, work())
    await manager.flush()
    await manager.aclose(grace=0.01)
    task = task_of(aqueue, run)
    assert task.status is TaskStatus.QUEUED and task.locked_by is None  # a worker reruns it
    assert run.status is RunStatus.QUEUED
    [record] = [w for w in aqueue.workers() if w.worker_id == manager.worker_id]
    assert record.stopped_at is not None


# -- queue features ----------------------------------------------------------------------------------


async def test_schedule_task_enqueues_with_priority_delay_and_key(
    manager: QueuedTaskManager, aqueue: Queue, clock: FakeClock
) -> None:
    later = clock.now() + timedelta(hours=1)
    task_id = await manager.schedule_task(
        "cleanup", {"max_age_hours": 24}, priority=50, run_after=later
    )
    assert isinstance(task_id, str)
    task = aqueue.get(int(task_id))
    assert (task.priority, task.run_after, task.payload) == (50, later, {"max_age_hours": 24})
    again = await manager.schedule_task("cleanup", {}, idempotency_key="k")
    assert await manager.schedule_task("cleanup", {"other": 1}, idempotency_key="k") == again
    assert set(manager.get_active_task_ids()) == {task_id, again}


async def test_get_task_status_by_task_id_and_by_run_id(
    manager: QueuedTaskManager, make_run: Callable[..., Run]
) -> None:
    task_id = await manager.schedule_task("cleanup", {"a": 1})
    status = await manager.get_task_status(task_id)
    for key in (
        "task_id",
        "status",
        "type",
        "attempts",
        "max_attempts",
        "error_message",
        "created_at",
        "started_at",
        "finished_at",
        "locked_by",
    ):
        assert key in status, key
    assert (status["task_id"], status["status"], status["type"], status["attempts"]) == (
        task_id,
        "queued",
        "cleanup",
        0,
    )
    json.dumps(status)  # JSON-ready

    run = make_run()

    async def work() -> str:
        return "ok"

    manager.start_task(run, work())
    by_run = await manager.get_task_status(run.run_id)  # waits for the record
    assert by_run["run_id"] == run.run_id and by_run["type"] == "cleanup"
    assert await manager.cancel_task(task_id) is True  # or wait_all() would wait for a worker
    assert await manager.wait_all(timeout=10)
    assert (await manager.get_task_status(run.run_id))["status"] == "completed"

    missing = await manager.get_task_status("no-such-thing")
    assert missing["status"] == "not_found" and missing["task_id"] == "no-such-thing"
    assert "no-such-thing" in missing["error"]


async def test_register_task_shares_handlers_with_workers_of_the_database(
    aqueue: Queue, db_path: Path, make_run: Callable[..., Run]
) -> None:
    db = QueueDatabase(db_path, durability="normal")
    manager = QueuedTaskManager(db, RunRegistry())

    async def handler(task: Task) -> str:
        return "processed"

    def other(task: Task) -> str:
        return "other"

    await manager.register_task("my_task", handler, "does things")
    await manager.register_task("my_task", handler)  # the same callable again: fine
    with pytest.raises(HandlerAlreadyRegistered):
        await manager.register_task("my_task", other)
    await manager.register_task("my_task", other, allow_override=True)
    worker = WorkerEngine(db, worker_id="w")
    assert worker.handler_registry is manager.handler_registry
    assert manager.handler_registry.get_handler("my_task") is other
    await manager.aclose()
    db.close()


async def test_active_ids_follow_scheduled_tasks_until_a_worker_finishes_them(
    manager: QueuedTaskManager, aqueue: Queue, eventually: Waiter
) -> None:
    async def handler(task: Task) -> int:
        return int(task.payload["n"]) * 2

    await manager.register_task("double", handler)
    ids = [await manager.schedule_task("double", {"n": n}) for n in range(3)]
    assert manager.get_active_task_count() == 3 and manager.is_task_active(ids[0])
    assert await manager.wait_all(timeout=0.05) is False  # nobody works them yet
    worker = asyncio.create_task(WorkerEngine(aqueue, worker_id="w").run_until_idle_async())
    assert await manager.wait_all(timeout=10) is True
    await worker
    assert manager.get_active_task_ids() == []
    assert [aqueue.get(int(i)).result for i in ids] == [0, 2, 4]


async def test_cancel_task_cancels_a_scheduled_task_by_its_id(
    manager: QueuedTaskManager, aqueue: Queue
) -> None:
    task_id = await manager.schedule_task("cleanup", {})
    assert await manager.cancel_task(task_id) is True
    assert aqueue.get(int(task_id)).status is TaskStatus.CANCELLED
    assert not manager.is_task_active(task_id) and await manager.wait_all(timeout=1)
    assert await manager.cancel_task(task_id) is False
    # A task this manager never saw is found in the queue by id or key.
    other = aqueue.enqueue("cleanup", {}, idempotency_key="elsewhere")
    assert await manager.cancel_task("elsewhere") is True
    assert aqueue.get(other.id).status is TaskStatus.CANCELLED


# -- runs a previous process left behind ---------------------------------------------------------


async def test_runs_left_active_by_a_dead_process_are_followed_until_a_worker_ends_them(
    manager_factory: Factory,
    aqueue: Queue,
    clock: FakeClock,
    tmp_path: Path,
    make_run: Callable[..., Run],
) -> None:
    history = tmp_path / "runs.json"
    crashed = make_run(run_id="crashed", status="running", parameters={"max_age_hours": 1})
    lost = make_run(run_id="never-recorded", status="running")
    finished = make_run(run_id="finished", status="completed", exit_code=0)
    write_history_atomically(history, [crashed, lost, finished])
    # What the dead process had recorded: its run's task, leased to it.
    aqueue.enqueue_claimed(
        "adapter-dead",
        lease_seconds=5,
        task_type="cleanup",
        payload={"max_age_hours": 1},
        idempotency_key="crashed",
        max_attempts=3,
        headers={ADAPTER_HEADER: {"run_id": "crashed", "worker_id": "adapter-dead"}},
    )
    registry = RunRegistry(history)
    manager = manager_factory(registry)

    async def handler(task: Task) -> dict[str, int]:
        return {"hours": task.payload["max_age_hours"]}

    await manager.register_task("cleanup", handler)
    assert await manager.wait_all(timeout=0.2) is False  # the crashed run's lease still holds
    assert manager.get_active_task_ids() == ["crashed"]
    failed = registry.get_run("never-recorded")
    assert failed is not None and failed.status is RunStatus.FAILED
    assert "before it was recorded" in (failed.error_message or "")

    clock.advance(6)  # the dead process's lease runs out
    await WorkerEngine(aqueue, worker_id="w").run_until_idle_async()
    assert await manager.wait_all(timeout=10)
    run = registry.get_run("crashed")
    assert run is not None and run.status is RunStatus.COMPLETED and run.exit_code == 0
    assert run.completed_at == clock.now() and run.duration_seconds == 0
    assert registry.get_run("finished") == finished
    task = aqueue.find("crashed")
    assert task is not None and task.attempts == 2 and task.result == {"hours": 1}


async def test_a_followed_task_that_vanished_fails_its_run(
    manager_factory: Factory, aqueue: Queue, tmp_path: Path, make_run: Callable[..., Run]
) -> None:
    history = tmp_path / "runs.json"
    write_history_atomically(history, [make_run(run_id="gone", status="queued")])
    task = aqueue.enqueue("cleanup", {}, idempotency_key="gone")
    registry = RunRegistry(history)
    manager = manager_factory(registry)
    assert await manager.wait_all(timeout=0.05) is False
    assert manager.is_task_active("gone")
    manager._follower.stop()  # so the manager does not see the task end before it is pruned
    aqueue.cancel(task.id)
    with Queue(
        aqueue.db.path, load_entrypoints=False, clock=FakeClock(aqueue.now() + timedelta(days=30))
    ) as pruner:
        assert pruner.prune(older_than=timedelta(days=1)) == 1
    await manager.refresh()
    run = registry.get_run("gone")
    assert run is not None and run.status is RunStatus.FAILED
    assert (
        run.error_message
        == f"its task {task.id} is no longer in the queue (it was pruned or deleted)"
    )
    assert not manager.is_task_active("gone") and await manager.wait_all(timeout=1)


def test_a_run_whose_event_loop_closed_under_it_is_recovered_like_a_crash(
    aqueue: Queue, clock: FakeClock, make_run: Callable[..., Run]
) -> None:
    manager = QueuedTaskManager(
        aqueue, RunRegistry(), lease_seconds=2.0, heartbeat_interval=0.05, watch_interval=0.005
    )
    run = make_run(parameters={"max_age_hours": 3})
    aqueue.handlers.register_handler("cleanup", lambda task: task.payload["max_age_hours"])

    async def never() -> None:
        await asyncio.sleep(3600)

    async def start() -> None:
        manager.start_task(run, never())
        await manager.flush()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(start())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        loop.close()  # the coroutine is abandoned, neither finished nor cancelled
    clock.advance(3)  # past the lease ...
    time.sleep(0.2)  # ... and a few heartbeats later: none renewed the abandoned run's lease

    async def recover() -> bool:
        await WorkerEngine(aqueue, worker_id="w").run_until_idle_async()
        return await manager.wait_all(timeout=10)

    assert asyncio.run(recover()) is True
    task = task_of(aqueue, run)
    assert task.status is TaskStatus.COMPLETED and task.attempts == 2 and task.result == 3
    assert run.status is RunStatus.COMPLETED and manager.tasks == {}
    manager.close()
