"""Queue API: enqueue and its validation, idempotency, reads, cancel, retry, prune, async forms."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hookqueue import (
    EventKind,
    FakeClock,
    InvalidTransition,
    NewTask,
    Queue,
    QueueDatabase,
    TaskEvent,
    TaskNotFound,
    TaskStatus,
    ValidationError,
    hookimpl,
)


class Recorder:
    """Collects every event the queue emits."""

    hookqueue_name = "recorder"

    def __init__(self) -> None:
        self.events: list[TaskEvent] = []

    @hookimpl
    def hookqueue_event(self, events: list[TaskEvent]) -> None:
        self.events.extend(events)


# -- enqueue ----------------------------------------------------------------------------------


def test_enqueue_stores_every_field(core_queue: Queue, clock: FakeClock) -> None:
    later = clock.now() + timedelta(minutes=5)
    task = core_queue.enqueue(
        "email",
        {"to": "a@b.c", "n": [1, 2.5, None, True]},
        priority=7,
        run_after=later,
        max_attempts=3,
        idempotency_key="k1",
        queue="mail",
        timeout=12.5,
        headers={"tenant": "acme"},
    )
    stored = core_queue.get(task.id)
    assert stored == task
    assert stored.task_type == stored.type == "email"
    assert stored.payload == {"to": "a@b.c", "n": [1, 2.5, None, True]}
    assert (stored.priority, stored.max_attempts, stored.queue) == (7, 3, "mail")
    assert stored.run_after == later
    assert stored.created_at == clock.now()
    assert stored.status is TaskStatus.QUEUED and stored.attempts == 0
    assert stored.timeout == 12.5 and stored.headers == {"tenant": "acme"}
    assert stored.get_payload_dict() == {"to": "a@b.c", "n": [1, 2.5, None, True]}


def test_defaults_and_delay(core_queue: Queue, clock: FakeClock) -> None:
    task = core_queue.enqueue("t")
    assert task.payload is None and task.get_payload_dict() == {}
    assert task.priority == 100 and task.queue == "default"
    assert task.max_attempts == 1, "the core alone runs a task once"
    assert task.run_after == clock.now()
    delayed = core_queue.enqueue("t", delay=90)
    assert delayed.run_after == clock.now() + timedelta(seconds=90)
    delayed2 = core_queue.enqueue("t", delay=timedelta(hours=1))
    assert delayed2.run_after == clock.now() + timedelta(hours=1)


def test_a_run_after_in_another_timezone_is_the_same_instant(core_queue: Queue) -> None:
    from datetime import timezone

    plus_two = timezone(timedelta(hours=2))
    instant = datetime(2031, 5, 1, 12, 0, tzinfo=plus_two)
    task = core_queue.enqueue("t", run_after=instant)
    assert task.run_after == instant
    assert core_queue.get(task.id).run_after.tzinfo is UTC


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"task_type": ""}, "task_type"),
        ({"task_type": "   "}, "task_type"),
        ({"task_type": "x" * 201}, "task_type"),
        ({"task_type": 42}, "task_type"),
        ({"payload": {"when": datetime(2030, 1, 1, tzinfo=UTC)}}, "payload"),
        ({"payload": {1, 2}}, "payload"),
        ({"payload": float("nan")}, "payload"),
        ({"payload": {"x": float("inf")}}, "payload"),
        ({"priority": "high"}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": 2**70}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -3}, "max_attempts"),
        ({"max_attempts": "5"}, "max_attempts"),
        ({"run_after": datetime(2030, 1, 1)}, "run_after"),
        ({"run_after": "2030-01-01T00:00:00Z"}, "run_after"),
        ({"delay": -1}, "delay"),
        ({"delay": "soon"}, "delay"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": 12}, "idempotency_key"),
        ({"queue": ""}, "queue"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -2}, "timeout"),
        ({"headers": {1: "x"}}, "headers"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(
    core_queue: Queue, kwargs: dict[str, Any], field: str
) -> None:
    core_queue.enqueue("existing", {"keep": True})
    args = {"task_type": "t", **kwargs}
    with pytest.raises(ValidationError) as info:
        core_queue.enqueue(**args)
    assert info.value.field == field
    assert field in str(info.value) and "Fix:" in str(info.value)
    assert core_queue.counts()["queued"] == 1
    assert core_queue.list()[0].payload == {"keep": True}


def test_run_after_and_delay_together_are_refused(core_queue: Queue, clock: FakeClock) -> None:
    with pytest.raises(ValidationError, match="delay"):
        core_queue.enqueue("t", run_after=clock.now(), delay=5)


def test_payload_size_limit(db_path: Path) -> None:
    q = Queue(db_path, load_entrypoints=False, max_payload_bytes=100)
    q.enqueue("t", "x" * 90)
    with pytest.raises(ValidationError, match="max_payload_bytes=100"):
        q.enqueue("t", "x" * 200)
    # The limit counts UTF-8 bytes, not characters.
    with pytest.raises(ValidationError):
        q.enqueue("t", "é" * 60)
    assert q.counts()["queued"] == 1
    q.close()


def test_enqueue_many_is_all_or_nothing(core_queue: Queue) -> None:
    tasks = core_queue.enqueue_many(
        [{"task_type": "a", "payload": i, "priority": i} for i in range(5)]
        + [NewTask(task_type="b", payload={"x": 1})]
    )
    assert [t.payload for t in tasks] == [0, 1, 2, 3, 4, {"x": 1}]
    assert [t.id for t in tasks] == sorted(t.id for t in tasks)
    with pytest.raises(ValidationError) as info:
        core_queue.enqueue_many(
            [{"task_type": "ok"}, {"task_type": "ok"}, {"task_type": "bad", "max_attempts": 0}]
        )
    assert info.value.field == "tasks[2].max_attempts"
    with pytest.raises(ValidationError, match=r"tasks\[0\]"):
        core_queue.enqueue_many([{"task_type": "x", "colour": "red"}])
    with pytest.raises(ValidationError, match=r"tasks\[1\]\.task_type"):
        core_queue.enqueue_many([{"task_type": "x"}, {"payload": 1}])
    assert core_queue.counts()["queued"] == 6
    assert core_queue.enqueue_many([]) == []


# -- idempotency ------------------------------------------------------------------------------


def test_repeated_idempotency_key_returns_the_existing_task(core_queue: Queue) -> None:
    first = core_queue.enqueue("cleanup", {"v": 1}, idempotency_key="cleanup-2030-01-01")
    again = core_queue.enqueue("cleanup", {"v": 2}, idempotency_key="cleanup-2030-01-01")
    assert again.id == first.id and again.payload == {"v": 1}
    assert core_queue.find("cleanup-2030-01-01") == core_queue.get(first.id)
    assert core_queue.find("nope") is None
    batch = core_queue.enqueue_many(
        [
            {"task_type": "x", "idempotency_key": "b"},
            {"task_type": "x", "idempotency_key": "b"},
            {"task_type": "x", "idempotency_key": "cleanup-2030-01-01"},
        ]
    )
    assert batch[0].id == batch[1].id and batch[2].id == first.id
    assert sum(core_queue.counts().values()) == 2


def test_idempotency_is_race_free_across_threads(core_queue: Queue) -> None:
    ids: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def go() -> None:
        barrier.wait()
        for i in range(20):
            t = core_queue.enqueue("t", idempotency_key=f"key-{i}")
            with lock:
                ids.append(t.id)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(ids) == 160
    assert len(set(ids)) == 20
    assert core_queue.counts()["queued"] == 20


def test_idempotency_window_releases_the_key_after_the_task_finished(
    db_path: Path, clock: FakeClock
) -> None:
    q = Queue(db_path, load_entrypoints=False, clock=clock, idempotency_window=timedelta(hours=1))
    first = q.enqueue("t", idempotency_key="k")
    assert q.enqueue("t", idempotency_key="k").id == first.id
    [leased] = q.runtime.lease("w", limit=1)
    from hookqueue.core.storage import Settlement

    q.runtime.settle("w", [Settlement(task_id=leased.id, kind="complete")])
    clock.advance(minutes=59)
    assert q.enqueue("t", idempotency_key="k").id == first.id, "still inside the window"
    clock.advance(minutes=2)
    second = q.enqueue("t", idempotency_key="k")
    assert second.id != first.id
    assert q.get(first.id).status is TaskStatus.COMPLETED, "the old task keeps its history"
    assert q.find("k") == q.get(second.id)
    q.close()


# -- reads ------------------------------------------------------------------------------------


def test_list_filters_and_pages(core_queue: Queue) -> None:
    for i in range(7):
        core_queue.enqueue("a" if i % 2 else "b", i, queue="q1" if i < 4 else "q2")
    core_queue.cancel(core_queue.list(limit=1)[0].id)
    assert [t.payload for t in core_queue.list(task_type="a")] == [1, 3, 5]
    assert [t.payload for t in core_queue.list(queue="q2")] == [4, 5, 6]
    assert [t.payload for t in core_queue.list(status="cancelled")] == [0]
    assert len(core_queue.list(status=["queued", TaskStatus.CANCELLED])) == 7
    page1 = core_queue.list(limit=3)
    page2 = core_queue.list(limit=3, after_id=page1[-1].id)
    assert [t.payload for t in page1 + page2] == [0, 1, 2, 3, 4, 5]
    newest = core_queue.list(limit=2, newest_first=True)
    assert [t.payload for t in newest] == [6, 5]
    with pytest.raises(ValidationError, match="status"):
        core_queue.list(status="leased")
    with pytest.raises(ValidationError, match="limit"):
        core_queue.list(limit=0)


def test_counts_by_status_and_type(core_queue: Queue) -> None:
    assert core_queue.counts() == {s.value: 0 for s in TaskStatus}
    core_queue.enqueue("a")
    core_queue.enqueue("a")
    t = core_queue.enqueue("b")
    core_queue.cancel(t.id)
    assert core_queue.counts() == {
        "queued": 2,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 1,
    }
    by_type = core_queue.counts(by_type=True)
    assert by_type["a"]["queued"] == 2 and by_type["b"]["cancelled"] == 1


def test_unknown_ids(core_queue: Queue) -> None:
    for call in (core_queue.get, core_queue.cancel, core_queue.retry):
        with pytest.raises(TaskNotFound, match="999"):
            call(999)
    with pytest.raises(TaskNotFound):
        core_queue.get("not-a-number")
    assert core_queue.get(str(core_queue.enqueue("t").id)).task_type == "t"


# -- cancel, retry, prune ---------------------------------------------------------------------


def test_cancel_queued_running_and_finished(core_queue: Queue) -> None:
    recorder = Recorder()
    core_queue.pm.register(recorder)
    queued = core_queue.enqueue("t")
    cancelled = core_queue.cancel(queued.id)
    assert cancelled.status is TaskStatus.CANCELLED and cancelled.finished_at is not None
    running = core_queue.enqueue("t")
    [leased] = core_queue.runtime.lease("w", limit=1)
    assert leased.id == running.id
    marked = core_queue.cancel(running.id)
    assert marked.status is TaskStatus.RUNNING and marked.cancel_requested
    with pytest.raises(InvalidTransition, match="cancel"):
        core_queue.cancel(queued.id)
    kinds = [e.kind for e in recorder.events]
    assert EventKind.CANCELLED in kinds and EventKind.CANCEL_REQUESTED in kinds


def test_retry_puts_failed_and_cancelled_tasks_back(core_queue: Queue, clock: FakeClock) -> None:
    t = core_queue.enqueue("t")
    core_queue.cancel(t.id)
    clock.advance(10)
    again = core_queue.retry(t.id)
    assert again.status is TaskStatus.QUEUED and again.attempts == 0
    assert again.run_after == clock.now() and again.finished_at is None
    with pytest.raises(InvalidTransition, match="retry"):
        core_queue.retry(t.id)


def test_prune_deletes_only_old_finished_tasks(core_queue: Queue, clock: FakeClock) -> None:
    old = core_queue.enqueue("t", idempotency_key="old")
    core_queue.cancel(old.id)
    keep_queued = core_queue.enqueue("t")
    clock.advance(days=8)
    recent = core_queue.enqueue("t")
    core_queue.cancel(recent.id)
    assert core_queue.prune(older_than=timedelta(days=7)) == 1
    with pytest.raises(TaskNotFound):
        core_queue.get(old.id)
    assert core_queue.get(keep_queued.id).status is TaskStatus.QUEUED
    assert core_queue.get(recent.id).status is TaskStatus.CANCELLED
    # the pruned task's idempotency key is free again
    assert core_queue.enqueue("t", idempotency_key="old").id != old.id
    with pytest.raises(ValidationError, match="finished"):
        core_queue.prune(statuses=["queued"])


# -- events -----------------------------------------------------------------------------------


def test_events_follow_the_lifecycle_and_a_failing_observer_is_isolated(
    db_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        hookqueue_name = "broken"

        @hookimpl(tryfirst=True)
        def hookqueue_event(self, events: list[TaskEvent]) -> None:
            raise RuntimeError("exporter down")

    recorder = Recorder()
    q = Queue(db_path, load_entrypoints=False, clock=clock, plugins=[Broken(), recorder])
    t = q.enqueue("t")
    [leased] = q.runtime.lease("w", limit=1)
    from hookqueue.core.storage import Settlement

    q.runtime.settle(
        "w", [Settlement(task_id=t.id, kind="complete", result_json="1", duration=0.5)]
    )
    kinds = [e.kind for e in recorder.events]
    assert kinds == [EventKind.ENQUEUED, EventKind.STARTED, EventKind.COMPLETED]
    assert recorder.events[-1].duration == 0.5 and recorder.events[-1].worker_id == "w"
    assert q.get(t.id).status is TaskStatus.COMPLETED
    assert "exporter down" in caplog.text and "broken" in caplog.text
    q.close()


# -- async forms ------------------------------------------------------------------------------


async def test_async_forms_do_the_same_work(core_queue: Queue) -> None:
    task = await core_queue.enqueue_async("t", {"a": 1}, priority=3)
    assert (await core_queue.get_async(task.id)) == task
    assert (await core_queue.find_async("missing")) is None
    many = await core_queue.enqueue_many_async([{"task_type": "x"}, {"task_type": "y"}])
    assert len(many) == 2
    assert len(await core_queue.list_async(task_type="x")) == 1
    assert (await core_queue.counts_async())["queued"] == 3
    cancelled = await core_queue.cancel_async(task.id)
    assert cancelled.status is TaskStatus.CANCELLED
    assert (await core_queue.retry_async(task.id)).status is TaskStatus.QUEUED
    assert await core_queue.prune_async(0) == 0


async def test_async_forms_of_queue_operations(db_path: Path, clock: FakeClock) -> None:
    """pause, resume, paused_queues and delete_matching have async forms that do the same
    work on the queue's I/O threads, never on the event loop."""
    threads: list[str] = []

    class Store(QueueDatabase):
        """Notes the thread each of the store calls below runs on."""

    def recording(name: str) -> Any:
        def call(self: QueueDatabase, *args: Any, **kwargs: Any) -> Any:
            threads.append(threading.current_thread().name)
            return getattr(QueueDatabase, name)(self, *args, **kwargs)

        return call

    for name in ("pause_queue", "resume_queue", "paused_queues", "delete_matching"):
        setattr(Store, name, recording(name))

    with Queue(Store(db_path), load_entrypoints=False, clock=clock) as q:
        assert await q.pause_async("mail") is True
        assert await q.pause_async("mail") is False, "paused already"
        assert await q.paused_queues_async() == {"mail": clock.now()}
        assert await q.resume_async("mail") is True
        assert await q.resume_async("mail") is False
        assert await q.paused_queues_async() == {}
        q.enqueue_many([{"task_type": "a"}, {"task_type": "a"}, {"task_type": "b"}])
        assert await q.delete_matching_async(task_type="a") == 2
        assert await q.delete_matching_async(q.filter(task_type="b")) == 1
        assert q.counts()["queued"] == 0
        with pytest.raises(ValidationError, match="queue"):
            await q.pause_async("")
    loop_thread = threading.current_thread().name
    assert len(threads) == 8 and loop_thread not in threads, threads


async def test_async_forms_of_the_queues_reads_and_claimed_enqueues(core_queue: Queue) -> None:
    """workers, check and the claimed enqueues have async forms answering as the sync ones."""
    q = core_queue
    task = await q.enqueue_claimed_async("w1", task_type="inline", payload={"n": 1})
    assert task.status is TaskStatus.RUNNING and task.lease_expires_at is not None
    many = await q.enqueue_claimed_many_async(
        "w1", tasks=[{"task_type": "inline"}, {"task_type": "inline"}]
    )
    assert [t.status for t in many] == [TaskStatus.RUNNING] * 2
    assert await q.check_async() == q.check() == []
    assert [w.worker_id for w in await q.workers_async()] == [w.worker_id for w in q.workers()]


#: Queue methods without an async form, and why: nothing there waits on the store.
NO_ASYNC_FORM = {
    "close": "stops threads and closes; called from any thread, also at exit",
    "filter": "builds a TaskFilter, reads nothing",
    "handle": "wraps a task or id; waiting is the handle's result_async",
    "now": "reads the queue's clock",
    "prepare_rows": "validates and encodes in memory, writes nothing",
}


def test_every_operation_of_the_queue_has_an_async_form() -> None:
    """DESIGN §5: every Queue operation has a sync and an async form (the exceptions above
    touch no store)."""
    import inspect

    public = {
        name
        for name, value in vars(Queue).items()
        if not name.startswith("_") and inspect.isfunction(value)
    }
    missing = sorted(n for n in public if not n.endswith("_async") and f"{n}_async" not in public)
    assert missing == sorted(NO_ASYNC_FORM), missing
    orphans = sorted(
        n for n in public if n.endswith("_async") and n[: -len("_async")] not in public
    )
    assert orphans == [], orphans


async def test_concurrent_async_enqueues_are_group_committed(core_queue: Queue) -> None:
    tasks = await asyncio.gather(
        *(core_queue.enqueue_async("t", i, idempotency_key=f"k{i % 50}") for i in range(200))
    )
    assert len({t.id for t in tasks}) == 50
    for i, t in enumerate(tasks):
        assert t.idempotency_key == f"k{i % 50}"
    assert core_queue.counts()["queued"] == 50


async def test_async_enqueue_errors_reach_only_their_caller(core_queue: Queue) -> None:
    good = core_queue.enqueue_async("t", 1)
    bad = core_queue.enqueue_async("t", object())
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert results[0].payload == 1  # type: ignore[union-attr]
    assert isinstance(results[1], ValidationError)
    assert core_queue.counts()["queued"] == 1


def test_for_database_shares_one_queue_per_database(db_path: Path) -> None:
    from hookqueue import QueueDatabase

    db = QueueDatabase(db_path)
    q1 = Queue.for_database(db)
    assert Queue.for_database(db) is q1 and Queue.for_database(q1) is q1
    with pytest.raises(ValidationError):
        Queue.for_database("path.db")  # type: ignore[arg-type]
    q1.close()
    assert Queue.for_database(db) is not q1, "a closed queue is replaced"
    db.close()
