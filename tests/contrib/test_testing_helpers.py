"""The assertion helpers and the in-process worker of ``hookqueue.contrib.testing``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from hookqueue import (
    FakeClock,
    LeasePlan,
    Queue,
    SortKey,
    SystemClock,
    Task,
    TaskStatus,
    ValidationError,
    hookimpl,
)
from hookqueue.contrib.testing import (
    InProcessWorker,
    assert_enqueued,
    assert_not_enqueued,
    enqueued,
    last_task_id,
    matches,
)


@pytest.fixture
def hq_queue_options() -> Mapping[str, Any]:
    return {"load_entrypoints": False}


# -- matches ---------------------------------------------------------------------------------


def test_matches_by_equality_and_any() -> None:
    assert matches(3, 3)
    assert not matches(3, 4)
    assert matches({"a": [1, 2]}, ANY)
    assert matches(TaskStatus.COMPLETED, "completed")
    assert not matches(TaskStatus.FAILED, "completed")


def test_matches_a_class_by_isinstance() -> None:
    assert matches(ValueError("x"), Exception)
    assert not matches("x", int)


def test_matches_a_mapping_as_a_subset_of_a_mapping_or_of_attributes() -> None:
    payload = {"to": "a@example.com", "subject": "hi", "meta": {"lang": "en", "n": 1}}
    assert matches(payload, {"to": "a@example.com"})
    assert matches(payload, {"meta": {"lang": "en"}})
    assert not matches(payload, {"meta": {"lang": "fr"}})
    assert not matches(payload, {"cc": "b@example.com"})
    assert not matches("not a mapping", {"to": "a@example.com"})

    class Record:
        status = TaskStatus.QUEUED
        payload = {"a": 1, "b": 2}

    assert matches(Record(), {"status": "queued", "payload": {"a": 1}})
    assert not matches(Record(), {"status": "running"})
    assert not matches(Record(), {"no_such_attribute": 1})


def test_matches_sequences_item_by_item() -> None:
    assert matches([1, {"a": 1, "b": 2}], [1, {"a": 1}])
    assert matches((1, 2), [1, ANY])
    assert not matches([1, 2], [1])
    assert not matches([1, 2], [1, 3])


def test_matches_a_callable_as_a_predicate() -> None:
    assert matches(5, lambda v: v > 3)
    assert not matches(2, lambda v: v > 3)
    # A function given as the expected value of a function matches by equality first.
    assert matches(len, len)


def test_a_strange_eq_is_a_mismatch_not_a_crash() -> None:
    class Bad:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no comparing")

        __hash__ = object.__hash__

    assert not matches(1, Bad())


# -- enqueued / assert_enqueued --------------------------------------------------------------


@pytest.fixture
def filled(hq_queue: Queue) -> Queue:
    hq_queue.enqueue("email", {"to": "a@example.com", "subject": "hi"})
    hq_queue.enqueue("email", {"to": "b@example.com", "subject": "hi"}, priority=5)
    hq_queue.enqueue("report", {"day": "2030-01-01"}, queue="reports", delay=60)
    return hq_queue


def test_enqueued_filters_by_type_payload_subset_and_fields(filled: Queue) -> None:
    assert [t.payload["to"] for t in enqueued(filled, "email")] == [
        "a@example.com",
        "b@example.com",
    ]
    assert [t.payload["to"] for t in enqueued(filled, "email", {"to": "b@example.com"})] == [
        "b@example.com"
    ]
    assert [t.task_type for t in enqueued(filled, priority=5)] == ["email"]
    assert [t.task_type for t in enqueued(filled, queue="reports", status="queued")] == ["report"]
    assert enqueued(filled, "email", run_after=lambda when: when > filled.now()) == []
    assert len(enqueued(filled)) == 3


def test_assert_enqueued_returns_the_matches_and_checks_the_count(filled: Queue) -> None:
    (task,) = assert_enqueued(filled, "report", {"day": "2030-01-01"}, count=1)
    assert task.queue == "reports"
    assert len(assert_enqueued(filled, "email", {"subject": "hi"}, count=2)) == 2
    assert len(assert_enqueued(filled, "email")) == 2


def test_assert_enqueued_explains_a_mismatch_by_listing_the_queue(filled: Queue) -> None:
    with pytest.raises(AssertionError) as excinfo:
        assert_enqueued(filled, "email", {"to": "c@example.com"})
    message = str(excinfo.value)
    assert (
        "expected at least 1 task(s) with task_type='email', payload matching {'to': 'c@example.com'}; found 0"
        in message
    )
    assert "The queue holds 3 task(s):" in message
    assert "email payload={'to': 'b@example.com', 'subject': 'hi'} status=queued" in message

    with pytest.raises(AssertionError, match="expected exactly 1 task.*found 2"):
        assert_enqueued(filled, "email", count=1)


def test_assert_enqueued_on_an_empty_queue_says_so(hq_queue: Queue) -> None:
    with pytest.raises(AssertionError, match="The queue holds no tasks."):
        assert_enqueued(hq_queue, "email")


def test_assert_not_enqueued(filled: Queue) -> None:
    assert_not_enqueued(filled, "sms")
    assert_not_enqueued(filled, "email", {"to": "c@example.com"})
    with pytest.raises(
        AssertionError, match=r"expected no task with task_type='email'; found 2:\n  #1 email"
    ):
        assert_not_enqueued(filled, "email")


def test_since_limits_the_helpers_to_later_tasks(filled: Queue) -> None:
    mark = last_task_id(filled)
    assert mark == 3
    assert enqueued(filled, since=mark) == []
    filled.enqueue("email", {"to": "d@example.com"})
    (task,) = assert_enqueued(filled, "email", since=mark, count=1)
    assert task.payload == {"to": "d@example.com"}
    assert_not_enqueued(filled, "report", since=mark)


def test_last_task_id_of_an_empty_queue_is_zero(hq_queue: Queue) -> None:
    assert last_task_id(hq_queue) == 0


def test_an_unknown_field_is_refused_naming_it(filled: Queue) -> None:
    with pytest.raises(ValidationError, match="colour='red': is not a Task field"):
        enqueued(filled, colour="red")


def test_the_helpers_page_through_many_tasks(hq_queue: Queue) -> None:
    hq_queue.enqueue_many([{"task_type": "bulk", "payload": {"i": i}} for i in range(2500)])
    assert len(enqueued(hq_queue, "bulk")) == 2500
    assert_enqueued(hq_queue, "bulk", {"i": 2499}, count=1)


# -- InProcessWorker -------------------------------------------------------------------------


class ByPriority:
    """Leases the lowest priority number first."""

    @hookimpl
    def hookqueue_lease(self) -> LeasePlan:
        return LeasePlan(order=(SortKey.PRIORITY,), name="by-priority")


def test_the_worker_runs_due_tasks_in_the_schedulers_order(
    hq_clock: FakeClock, tmp_path: Path
) -> None:
    with Queue(
        tmp_path / "q.db", clock=hq_clock, load_entrypoints=False, plugins=[ByPriority()]
    ) as q:
        ran: list[str] = []
        q.handlers.register_handler("job", lambda task: ran.append(task.payload))
        q.enqueue("job", "low", priority=50)
        q.enqueue("job", "high", priority=1)
        q.enqueue("job", "middle", priority=10)
        worker = InProcessWorker(q)
        run = worker.run_until_idle()
        from hookqueue.core.inline import close_runner

        close_runner(q)

    assert ran == ["high", "middle", "low"]
    assert [t.payload for t in run.tasks] == ran
    assert worker.runs == [run]


def test_the_worker_advances_the_clock_to_run_delayed_tasks(
    hq_queue: Queue, hq_clock: FakeClock
) -> None:
    ran: list[str] = []
    hq_queue.handlers.register_handler("job", lambda task: ran.append(task.payload))
    hq_queue.enqueue("job", "in a minute", delay=60)
    hq_queue.enqueue("job", "in an hour", delay=timedelta(hours=1))
    worker = InProcessWorker(hq_queue, worker_id="tester")

    assert len(worker.run_until_idle()) == 0
    first = worker.advance(minutes=1)
    assert ran == ["in a minute"] and first.worker_id == "tester"
    assert worker.advance(59).tasks == ()
    worker.advance(minutes=59)
    assert ran == ["in a minute", "in an hour"]
    assert len(worker.runs) == 4


async def test_the_worker_advances_in_async_tests(hq_queue: Queue) -> None:
    hq_queue.handlers.register_handler("job", lambda task: "ok")
    task = await hq_queue.enqueue_async("job", delay=1)
    worker = InProcessWorker(hq_queue)
    run = await worker.advance_async(1)
    assert run.task_ids == [task.id]
    assert (await worker.run_until_idle_async()).tasks == ()


def test_the_worker_works_only_the_queue_names_it_was_given(hq_queue: Queue) -> None:
    hq_queue.handlers.register_handler("job", lambda task: None)
    hq_queue.enqueue("job", queue="a")
    b = hq_queue.enqueue("job", queue="b")
    run = InProcessWorker(hq_queue, queues=["b"]).run_until_idle()
    assert run.task_ids == [b.id]
    assert hq_queue.counts()["queued"] == 1


def test_advancing_needs_a_fake_clock(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db", clock=SystemClock(), load_entrypoints=False) as q:
        with pytest.raises(ValidationError, match="is not a FakeClock.*clock=FakeClock"):
            InProcessWorker(q).advance(1)


def test_tasks_enqueued_by_handlers_run_in_the_same_call(hq_queue: Queue) -> None:
    def step(task: Task) -> None:
        if task.payload < 3:
            hq_queue.enqueue("step", task.payload + 1)

    hq_queue.handlers.register_handler("step", step)
    hq_queue.enqueue("step", 0)
    run = InProcessWorker(hq_queue).run_until_idle()
    assert [t.payload for t in run.tasks] == [0, 1, 2, 3]
    assert all(t.status is TaskStatus.COMPLETED for t in run.tasks)
