"""Testing code that enqueues: check what is in the queue; nothing runs."""

from __future__ import annotations

from datetime import timedelta

from shop import place_order

from hookqueue import FakeClock, Queue
from hookqueue.contrib.pytest_plugin import (
    assert_enqueued,
    assert_not_enqueued,
    enqueued,
    last_task_id,
)


def test_a_small_order_is_confirmed_now_and_a_review_asked_for_later(
    hq_queue: Queue, hq_clock: FakeClock
) -> None:
    place_order(hq_queue, "o-1", "ada@example.com", total_cents=25_00)

    (confirmation,) = assert_enqueued(
        hq_queue, "send_email", {"template": "order_confirmation", "order_id": "o-1"}, count=1
    )
    assert confirmation.run_after == hq_clock.now()
    assert_enqueued(
        hq_queue,
        "send_email",
        {"template": "review_request", "to": "ada@example.com"},
        run_after=hq_clock.now() + timedelta(days=3),
        count=1,
    )
    assert_not_enqueued(hq_queue, "fraud_check")


def test_a_large_order_is_checked_for_fraud_urgently(hq_queue: Queue) -> None:
    place_order(hq_queue, "o-2", "bob@example.com", total_cents=250_00)

    assert_enqueued(hq_queue, "fraud_check", {"order_id": "o-2"}, priority=10, count=1)


def test_placing_an_order_twice_confirms_it_once(hq_queue: Queue) -> None:
    place_order(hq_queue, "o-3", "cy@example.com", total_cents=10)
    place_order(hq_queue, "o-3", "cy@example.com", total_cents=10)

    assert_enqueued(hq_queue, "send_email", {"template": "order_confirmation"}, count=1)


def test_look_only_at_what_one_call_enqueued(hq_queue: Queue) -> None:
    place_order(hq_queue, "o-4", "di@example.com", total_cents=10)
    mark = last_task_id(hq_queue)

    place_order(hq_queue, "o-5", "ed@example.com", total_cents=10)

    assert {t.payload["order_id"] for t in enqueued(hq_queue, since=mark)} == {"o-5"}
