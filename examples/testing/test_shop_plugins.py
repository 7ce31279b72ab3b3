"""Testing a plugin: register it on hq_queue, watch its hooks, run hookqueue's contracts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from shop_plugins import EventCounter, StampShop, StepBackoff, UrgentNewestFirst

from hookqueue import EventKind, FakeClock, Queue, Task
from hookqueue.contrib.contracts.exporter import AlwaysRaises, ExporterContract
from hookqueue.contrib.contracts.retry import RetryPolicyContract
from hookqueue.contrib.contracts.scheduler import SchedulerContract
from hookqueue.contrib.pytest_plugin import HookRecorder, InProcessWorker


class TestStampShop:
    @pytest.fixture
    def hq_plugins(self) -> Sequence[Any]:
        return [StampShop("acme")]

    def test_every_task_carries_the_shop(self, hq_queue: Queue, hq_hooks: HookRecorder) -> None:
        task = hq_queue.enqueue("send_email", {"to": "ada@example.com"})

        assert task.headers["shop"] == "acme"
        call = hq_hooks.getcall("hookqueue_enqueue")
        assert "stamp-shop" in call.plugins
        assert call.result[0].headers["shop"] == "acme"


class TestStepBackoffInAQueue:
    @pytest.fixture
    def hq_plugins(self) -> Sequence[Any]:
        return [StepBackoff(max_attempts=3)]

    def test_waits_5_then_30_seconds_then_gives_up(
        self, hq_queue: Queue, hq_worker: InProcessWorker, hq_clock: FakeClock
    ) -> None:
        def always_fails(task: Task) -> None:
            raise ConnectionError("the stock service is down")

        hq_queue.handlers.register_handler("sync_stock", always_fails)
        hq_queue.enqueue("sync_stock")

        (task,) = hq_worker.run_until_idle().tasks
        assert task.run_after == hq_clock.now() + timedelta(seconds=5)
        (task,) = hq_worker.advance(5).tasks
        assert task.run_after == hq_clock.now() + timedelta(seconds=30)
        (task,) = hq_worker.advance(30).tasks
        assert task.status == "failed" and task.attempts == 3


class TestStepBackoffContract(RetryPolicyContract):
    def make_policy(self) -> StepBackoff:
        return StepBackoff(max_attempts=4)


class TestUrgentNewestFirstContract(SchedulerContract):
    def make_scheduler(self) -> UrgentNewestFirst:
        return UrgentNewestFirst()

    def expected_order(self, tasks: Sequence[Task]) -> list[int]:
        return [t.id for t in sorted(tasks, key=lambda t: (t.priority, -t.id))]


class TestEventCounterContract(ExporterContract):
    def make_exporter(self) -> EventCounter:
        return EventCounter()

    def counted(self, exporter: EventCounter, kind: EventKind, task_type: str) -> int:
        return exporter.count(kind, task_type)

    def break_exporter(self, exporter: EventCounter) -> bool:
        exporter.backend = AlwaysRaises()
        return True
