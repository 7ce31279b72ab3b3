"""Inline mode (``Queue(inline=True)``) and ``run_due``: real runs, through the worker's hooks."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from hookqueue import (
    EventKind,
    FakeClock,
    Queue,
    RetryDecision,
    Task,
    TaskEvent,
    TaskStatus,
    current_execution,
    hookimpl,
)
from hookqueue.contrib.testing import HookRecorder
from hookqueue.core import inline
from hookqueue.core.inline import INLINE_WORKER_ID, run_due, run_due_async, run_inline_async

pytestmark = pytest.mark.timeout(60)


class RetryAfter:
    """Retries every failure, ``delays[attempt - 1]`` seconds later (the last delay repeats)."""

    def __init__(self, *delays: float) -> None:
        self.delays = delays or (0,)

    @hookimpl
    def hookqueue_retry(self, task: Task, now: Any) -> RetryDecision:
        delay = self.delays[min(task.attempts, len(self.delays)) - 1]
        return RetryDecision.at(now + timedelta(seconds=delay), reason="test policy")


@pytest.fixture
def hq_queue_options() -> Mapping[str, Any]:
    # The core alone: these tests pin down inline mode, not the installed plugins' policies.
    return {"load_entrypoints": False}


@pytest.fixture
def q(hq_inline_queue: Queue) -> Queue:
    return hq_inline_queue


def test_enqueue_runs_a_due_task_before_returning(q: Queue, hq_clock: FakeClock) -> None:
    seen: list[tuple[str, str, int]] = []

    def add(task: Task) -> int:
        seen.append((current_execution().worker_id, task.status.value, task.attempts))
        return int(task.payload["a"] + task.payload["b"])

    q.handlers.register_handler("add", add)
    task = q.enqueue("add", {"a": 1, "b": 2})

    assert seen == [(INLINE_WORKER_ID, "running", 1)]
    assert task.status is TaskStatus.COMPLETED
    assert task.result == 3
    assert task.attempts == 1
    assert task.locked_by is None and task.lease_expires_at is None
    assert task.started_at == task.finished_at == hq_clock.now()
    assert q.get(task.id) == task


def test_events_statuses_and_hooks_are_those_of_a_worker(q: Queue) -> None:
    q.handlers.register_handler("noop", lambda task: None)
    with HookRecorder(q) as hooks:
        task = q.enqueue("noop")

    assert hooks.event_kinds(task.id) == ["enqueued", "started", "completed"]
    started = hooks.events(EventKind.STARTED)[0]
    assert started.worker_id == INLINE_WORKER_ID
    assert started.task.status is TaskStatus.RUNNING
    hooks.assert_called_in_order(
        "hookqueue_enqueue",
        "hookqueue_worker_start",
        "hookqueue_lease",
        "hookqueue_execute",
        "hookqueue_worker_stop",
    )
    hooks.assert_called("hookqueue_execute", times=1, task={"id": task.id}, worker_id="inline")
    (worker,) = [w for w in q.workers() if w.worker_id == INLINE_WORKER_ID]
    assert worker.stopped_at is not None and worker.processed == 1


def test_a_failing_handler_fails_the_task_and_enqueue_still_returns(q: Queue) -> None:
    def boom(task: Task) -> None:
        raise ValueError("nope")

    q.handlers.register_handler("boom", boom)
    task = q.enqueue("boom")

    assert task.status is TaskStatus.FAILED
    assert task.error_message == "ValueError: nope"
    assert task.attempts == 1


def test_a_task_without_a_handler_fails_naming_the_registered_types(q: Queue) -> None:
    q.handlers.register_handler("known", lambda task: None)
    task = q.enqueue("unknown")

    assert task.status is TaskStatus.FAILED
    assert "'unknown'" in task.error_message and "known" in task.error_message


def test_a_timeout_fails_the_attempt_as_under_a_worker(q: Queue) -> None:
    async def slow(task: Task) -> None:
        await asyncio.sleep(5)

    q.handlers.register_handler("slow", slow)
    task = q.enqueue("slow", timeout=0.05)

    assert task.status is TaskStatus.FAILED
    assert task.error_message.startswith("timed out after 0.05s")


def test_retries_that_are_due_at_once_run_in_the_same_enqueue(
    hq_clock: FakeClock, tmp_path: Path
) -> None:
    with Queue(
        tmp_path / "q.db",
        clock=hq_clock,
        load_entrypoints=False,
        inline=True,
        plugins=[RetryAfter(0)],
    ) as q:
        attempts: list[int] = []

        def flaky(task: Task) -> str:
            attempts.append(task.attempts)
            if task.attempts < 3:
                raise RuntimeError(f"attempt {task.attempts}")
            return "ok"

        q.handlers.register_handler("flaky", flaky)
        with HookRecorder(q) as hooks:
            task = q.enqueue("flaky", max_attempts=5)
        inline.close_runner(q)

    assert attempts == [1, 2, 3]
    assert task.status is TaskStatus.COMPLETED and task.result == "ok" and task.attempts == 3
    assert hooks.event_kinds(task.id) == [
        "enqueued",
        "started",
        "retry_scheduled",
        "started",
        "retry_scheduled",
        "started",
        "completed",
    ]


def test_a_backed_off_retry_waits_until_the_clock_moves_and_run_due_is_called(
    hq_clock: FakeClock, tmp_path: Path
) -> None:
    with Queue(
        tmp_path / "q.db",
        clock=hq_clock,
        load_entrypoints=False,
        inline=True,
        plugins=[RetryAfter(30)],
    ) as q:
        calls: list[int] = []

        def flaky(task: Task) -> None:
            calls.append(task.attempts)
            if task.attempts == 1:
                raise RuntimeError("first attempt fails")

        q.handlers.register_handler("flaky", flaky)
        task = q.enqueue("flaky", max_attempts=3)
        assert task.status is TaskStatus.QUEUED and task.attempts == 1
        assert task.run_after == hq_clock.now() + timedelta(seconds=30)

        assert len(run_due(q)) == 0
        hq_clock.advance(29.999)
        assert len(run_due(q)) == 0
        assert calls == [1]

        hq_clock.advance(0.001)
        report = run_due(q)
        inline.close_runner(q)

    assert calls == [1, 2]
    assert report.task_ids == [task.id]
    assert report.tasks[0].status is TaskStatus.COMPLETED and report.tasks[0].attempts == 2
    assert report.stats.completed == 1


def test_retries_stop_at_max_attempts(hq_clock: FakeClock, tmp_path: Path) -> None:
    with Queue(
        tmp_path / "q.db",
        clock=hq_clock,
        load_entrypoints=False,
        inline=True,
        plugins=[RetryAfter(0)],
    ) as q:

        def boom(task: Task) -> None:
            raise RuntimeError("always")

        q.handlers.register_handler("boom", boom)
        task = q.enqueue("boom", max_attempts=3)
        inline.close_runner(q)

    assert task.status is TaskStatus.FAILED and task.attempts == 3
    assert task.error_message == "RuntimeError: always (gave up: all 3 attempts used)"


def test_a_delayed_task_waits_for_its_time_and_run_due(q: Queue, hq_clock: FakeClock) -> None:
    ran: list[str] = []
    q.handlers.register_handler("job", lambda task: ran.append(task.payload))

    later = q.enqueue("job", "later", delay=60)
    assert later.status is TaskStatus.QUEUED and ran == []
    now = q.enqueue("job", "now")
    assert now.status is TaskStatus.COMPLETED and ran == ["now"]

    hq_clock.advance(60)
    report = run_due(q)
    assert ran == ["now", "later"]
    assert report.task_ids == [later.id]
    assert q.get(later.id).status is TaskStatus.COMPLETED


def test_a_repeated_idempotency_key_returns_the_finished_task_without_running_it_again(
    q: Queue,
) -> None:
    ran: list[int] = []
    q.handlers.register_handler("once", lambda task: ran.append(task.id))

    first = q.enqueue("once", idempotency_key="k")
    second = q.enqueue("once", idempotency_key="k")

    assert ran == [first.id]
    assert second.id == first.id and second.status is TaskStatus.COMPLETED


def test_enqueue_many_runs_every_due_task_in_enqueue_order(q: Queue) -> None:
    ran: list[int] = []
    q.handlers.register_handler("job", lambda task: ran.append(task.payload))

    tasks = q.enqueue_many(
        [{"task_type": "job", "payload": i} for i in range(3)]
        + [{"task_type": "job", "payload": 99, "delay": 10}]
    )

    assert ran == [0, 1, 2]
    assert [t.status for t in tasks] == [TaskStatus.COMPLETED] * 3 + [TaskStatus.QUEUED]


async def test_enqueue_many_async_runs_inline_too(q: Queue) -> None:
    q.handlers.register_handler("job", lambda task: task.payload * 2)
    tasks = await q.enqueue_many_async([{"task_type": "job", "payload": 21}])
    assert tasks[0].status is TaskStatus.COMPLETED and tasks[0].result == 42


async def test_a_sync_enqueue_inside_a_running_loop_runs_on_a_helper_thread(q: Queue) -> None:
    test_loop = asyncio.get_running_loop()
    where: dict[str, Any] = {}

    async def handler(task: Task) -> str:
        where["loop"] = asyncio.get_running_loop()
        where["thread"] = threading.current_thread()
        await asyncio.sleep(0)
        return "done"

    q.handlers.register_handler("job", handler)
    task = q.enqueue("job")

    assert task.status is TaskStatus.COMPLETED and task.result == "done"
    # The test's loop is blocked in enqueue(), so the handler cannot run on it.
    assert where["loop"] is not test_loop
    assert where["thread"] is not threading.current_thread()


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_handlers_see_the_callers_context_variables(q: Queue, kind: str) -> None:
    def sync_handler(task: Task) -> str:
        return VAR.get()

    async def async_handler(task: Task) -> str:
        return VAR.get()

    q.handlers.register_handler("job", sync_handler if kind == "sync" else async_handler)
    token = VAR.set("from the caller")
    try:
        task = q.enqueue("job")
    finally:
        VAR.reset(token)
    assert task.result == "from the caller"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_handler_that_enqueues_runs_the_child_before_it_returns(q: Queue, kind: str) -> None:
    def child(task: Task) -> str:
        return f"child of {task.payload}"

    def sync_parent(task: Task) -> Any:
        c = q.enqueue("child", task.id)
        return {"id": c.id, "status": c.status.value, "result": c.result}

    async def async_parent(task: Task) -> Any:
        return sync_parent(task)

    q.handlers.register_handler("child", child)
    q.handlers.register_handler("parent", sync_parent if kind == "sync" else async_parent)
    with HookRecorder(q) as hooks:
        parent = q.enqueue("parent")

    assert parent.status is TaskStatus.COMPLETED
    assert parent.result["status"] == "completed"
    assert parent.result["result"] == f"child of {parent.id}"
    (child_started,) = hooks.events("started", task_id=parent.result["id"])
    assert child_started.worker_id == f"{INLINE_WORKER_ID}-2"


def test_a_task_that_enqueues_itself_ends_at_the_depth_limit(
    q: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inline, "MAX_INLINE_DEPTH", 4)

    def again(task: Task) -> int:
        return q.enqueue("again").id

    q.handlers.register_handler("again", again)
    first = q.enqueue("again")

    assert first.status is TaskStatus.COMPLETED
    tasks = q.list()
    assert [t.status.value for t in tasks] == ["completed"] * 3 + ["failed", "cancelled"]
    assert "MAX_INLINE_DEPTH=4" in tasks[3].error_message
    assert f"({tasks[4].id}) were cancelled" in tasks[3].error_message


@pytest.mark.timeout(20)
def test_an_event_observer_that_enqueues_inline_does_not_deadlock(
    hq_clock: FakeClock, tmp_path: Path
) -> None:
    class FollowUp:
        queue: Queue

        @hookimpl
        def hookqueue_event(self, events: Sequence[TaskEvent]) -> None:
            for event in events:
                if event.kind is EventKind.COMPLETED and event.task.task_type == "first":
                    self.queue.enqueue("second")

    observer = FollowUp()
    with Queue(
        tmp_path / "q.db", clock=hq_clock, load_entrypoints=False, inline=True, plugins=[observer]
    ) as q:
        observer.queue = q
        q.handlers.register_handler("first", lambda task: None)
        q.handlers.register_handler("second", lambda task: "second ran")
        q.enqueue("first")
        inline.close_runner(q)
        assert [(t.task_type, t.status.value, t.result) for t in q.list()] == [
            ("first", "completed", None),
            ("second", "completed", "second ran"),
        ]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_inline_enqueues_do_not_open_a_connection_each(q: Queue) -> None:
    q.handlers.register_handler("job", lambda task: None)
    q.enqueue("job")  # the first run starts the queue's store thread and its connection
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(100):
        q.enqueue("job")
    after = len(os.listdir("/proc/self/fd"))
    assert q.counts()["completed"] == 101
    # A WorkerEngine run opens a connection (2 files) on a new store thread each time.
    assert after - before < 10, f"{after - before} more open files after 100 inline enqueues"


def test_close_runner_stops_the_store_thread(q: Queue) -> None:
    q.handlers.register_handler("job", lambda task: None)
    q.enqueue("job")
    assert any(t.name.startswith("hookqueue-inline-store") for t in threading.enumerate())
    inline.close_runner(q)
    inline.close_runner(q)  # idempotent
    assert not any(t.name.startswith("hookqueue-inline-store") for t in threading.enumerate())
    # A later run starts a new one.
    assert q.enqueue("job").status is TaskStatus.COMPLETED


# -- run_due on a queue without inline mode --------------------------------------------------


def test_run_due_runs_due_tasks_in_lease_order_and_reports_them(
    hq_queue: Queue, hq_clock: FakeClock
) -> None:
    order: list[str] = []

    def job(task: Task) -> None:
        order.append(task.payload)
        if task.payload == "bad":
            raise KeyError("missing")

    hq_queue.handlers.register_handler("job", job)
    a = hq_queue.enqueue("job", "a")
    bad = hq_queue.enqueue("job", "bad")
    hq_queue.enqueue("job", "later", delay=5)
    c = hq_queue.enqueue("job", "c")

    report = run_due(hq_queue)

    assert order == ["a", "bad", "c"]
    assert report.task_ids == [a.id, bad.id, c.id]
    assert [t.status.value for t in report.attempts] == ["running"] * 3
    assert [t.id for t in report.completed] == [a.id, c.id]
    assert [t.id for t in report.failed] == [bad.id]
    assert report.task(bad.id).error_message == "KeyError: 'missing'"
    (failure,) = report.failures[bad.id]
    assert failure.kind == "error" and isinstance(failure.exception, KeyError)
    assert "raise KeyError" in (failure.traceback or "")
    with pytest.raises(KeyError, match="did not run in this run"):
        report.task(10_000)
    with pytest.raises(AssertionError) as excinfo:
        report.assert_all_completed()
    message = str(excinfo.value)
    assert f"task {bad.id} (job) is failed after attempt 1 of 1: KeyError: 'missing'" in message
    assert "raise KeyError" in message


def test_run_due_leaves_no_helper_plugin_registered(hq_queue: Queue) -> None:
    before = {name for name, _ in hq_queue.pm.list_name_plugin()}
    hq_queue.handlers.register_handler("job", lambda task: None)
    hq_queue.enqueue("job")
    run_due(hq_queue)
    assert {name for name, _ in hq_queue.pm.list_name_plugin()} == before


def test_run_due_works_every_queue_name_unless_told(hq_queue: Queue) -> None:
    def fan_out(task: Task) -> None:
        hq_queue.enqueue("leaf", queue="other")

    hq_queue.handlers.register_handler("fan_out", fan_out)
    hq_queue.handlers.register_handler("leaf", lambda task: None)

    hq_queue.enqueue("fan_out")
    only_default = run_due(hq_queue, queues=["default"])
    assert [t.task_type for t in only_default] == ["fan_out"]
    assert hq_queue.counts()["queued"] == 1

    hq_queue.enqueue("fan_out")
    everything = run_due(hq_queue)
    assert [t.task_type for t in everything] == ["leaf", "fan_out", "leaf"]
    assert hq_queue.counts()["queued"] == 0


def test_run_due_takes_over_an_expired_lease(hq_clock: FakeClock, tmp_path: Path) -> None:
    with Queue(
        tmp_path / "q.db", clock=hq_clock, load_entrypoints=False, plugins=[RetryAfter(0)]
    ) as q:
        q.handlers.register_handler("job", lambda task: "recovered")
        # A process that claimed the task and died: nobody renews its lease.
        claimed = q.enqueue_claimed(
            "dead-worker", lease_seconds=10, task_type="job", max_attempts=3
        )
        assert len(run_due(q)) == 0
        hq_clock.advance(10)
        report = run_due(q)
        inline.close_runner(q)

    (task,) = report.tasks
    assert task.id == claimed.id
    assert task.status is TaskStatus.COMPLETED and task.result == "recovered" and task.attempts == 2
    assert "dead-worker stopped renewing its lease" in (task.error_message or "")


async def test_run_due_async_runs_async_handlers_on_the_callers_loop(hq_queue: Queue) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def handler(task: Task) -> None:
        loops.append(asyncio.get_running_loop())

    hq_queue.handlers.register_handler("job", handler)
    await hq_queue.enqueue_async("job")
    report = await run_due_async(hq_queue)
    assert loops == [asyncio.get_running_loop()]
    report.assert_all_completed()


async def test_run_inline_async_runs_on_the_callers_loop(hq_queue: Queue) -> None:
    """What ``enqueue_async`` on an inline queue would call after its group commit."""
    loops: list[asyncio.AbstractEventLoop] = []

    async def handler(task: Task) -> int:
        loops.append(asyncio.get_running_loop())
        return 7

    hq_queue.handlers.register_handler("job", handler)
    tasks = [await hq_queue.enqueue_async("job"), await hq_queue.enqueue_async("job", delay=5)]
    after = await run_inline_async(hq_queue, tasks)

    assert loops == [asyncio.get_running_loop()]
    assert [(t.id, t.status.value) for t in after] == [
        (tasks[0].id, "completed"),
        (tasks[1].id, "queued"),
    ]
    assert after[0].result == 7
