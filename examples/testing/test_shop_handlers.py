"""Testing handlers: run the due tasks in the test, move time to reach delayed ones."""

from __future__ import annotations

import pytest
from shop import Mailer, MailServerDown, place_order, register_handlers

from hookqueue import Queue, TaskStatus
from hookqueue.contrib.pytest_plugin import HookRecorder, InProcessWorker, assert_enqueued


@pytest.fixture
def mailer(hq_queue: Queue) -> Mailer:
    mailer = Mailer()
    register_handlers(hq_queue, mailer)
    return mailer


def test_the_confirmation_goes_now_and_the_review_request_in_three_days(
    hq_queue: Queue, hq_worker: InProcessWorker, mailer: Mailer
) -> None:
    place_order(hq_queue, "o-1", "ada@example.com", total_cents=25_00)

    hq_worker.run_until_idle().assert_all_completed()
    assert [mail["template"] for mail in mailer.sent] == ["order_confirmation"]

    hq_worker.advance(days=3).assert_all_completed()
    assert [mail["template"] for mail in mailer.sent] == ["order_confirmation", "review_request"]


def test_the_fraud_check_runs_first(
    hq_queue: Queue, hq_worker: InProcessWorker, mailer: Mailer
) -> None:
    place_order(hq_queue, "o-2", "bob@example.com", total_cents=6_000_00)

    run = hq_worker.run_until_idle()

    assert [task.task_type for task in run.tasks] == ["fraud_check", "send_email"]
    assert run.tasks[0].result == {"suspicious": True}


def test_a_mail_outage_is_retried_later(
    hq_queue: Queue, hq_worker: InProcessWorker, mailer: Mailer
) -> None:
    mailer.down = True
    place_order(hq_queue, "o-3", "cy@example.com", total_cents=10)

    (task,) = hq_worker.run_until_idle().tasks
    assert task.status is TaskStatus.QUEUED and task.attempts == 1
    assert task.error_message == "MailServerDown: mail.example.com refused the connection"

    mailer.down = False
    run = hq_worker.advance_to(task.run_after)

    assert run.tasks[0].status is TaskStatus.COMPLETED and run.tasks[0].attempts == 2
    assert mailer.sent[0]["order_id"] == "o-3"


def test_a_failure_shows_its_exception_and_traceback(
    hq_queue: Queue, hq_worker: InProcessWorker, mailer: Mailer
) -> None:
    mailer.down = True
    hq_queue.enqueue(
        "send_email", {"to": "x@example.com", "template": "t", "order_id": "o"}, max_attempts=1
    )

    run = hq_worker.run_until_idle()

    (failure,) = run.failures[run.tasks[0].id]
    assert isinstance(failure.exception, MailServerDown)
    assert "mailer.send(**task.payload)" in (failure.traceback or "")
    with pytest.raises(AssertionError, match="is failed after attempt 1 of 1: MailServerDown"):
        run.assert_all_completed()


def test_the_hooks_a_task_goes_through(
    hq_queue: Queue, hq_worker: InProcessWorker, hq_hooks: HookRecorder, mailer: Mailer
) -> None:
    place_order(hq_queue, "o-4", "di@example.com", total_cents=10)
    (task,) = hq_worker.run_until_idle().tasks

    hq_hooks.assert_called(
        "hookqueue_execute", task={"id": task.id, "attempts": 1}, worker_id="inline"
    )
    assert hq_hooks.event_kinds(task.id) == ["enqueued", "started", "completed"]


def test_an_inline_queue_runs_each_task_as_it_is_enqueued(hq_inline_queue: Queue) -> None:
    mailer = Mailer()
    register_handlers(hq_inline_queue, mailer)

    place_order(hq_inline_queue, "o-5", "ed@example.com", total_cents=10)

    assert [mail["template"] for mail in mailer.sent] == ["order_confirmation"]
    assert_enqueued(hq_inline_queue, "send_email", {"template": "review_request"}, status="queued")


@pytest.mark.asyncio
async def test_async_code_awaits_the_run(
    hq_queue: Queue, hq_worker: InProcessWorker, mailer: Mailer
) -> None:
    await hq_queue.enqueue_async("fraud_check", {"order_id": "o-6", "total_cents": 10})

    run = await hq_worker.run_until_idle_async()

    assert run.tasks[0].result == {"suspicious": False}
