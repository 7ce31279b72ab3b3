"""The shop's hookqueue plugins: one of each kind, each tested in test_shop_plugins.py."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Generator, Sequence
from typing import Any

import attrs

from hookqueue import EventKind, LeasePlan, LeaseRequest, NewTask, SortKey, TaskEvent, hookimpl
from hookqueue.plugins.priority import Scheduler
from hookqueue.plugins.retry import RetryPolicy


class StampShop:
    """Puts the shop's name in the headers of every task it enqueues."""

    hookqueue_name = "stamp-shop"

    def __init__(self, shop: str) -> None:
        self.shop = shop

    @hookimpl(wrapper=True)
    def hookqueue_enqueue(
        self, new_tasks: list[NewTask]
    ) -> Generator[None, list[NewTask], list[NewTask]]:
        result = yield
        return [attrs.evolve(t, headers={**t.headers, "shop": self.shop}) for t in result]


@attrs.frozen(kw_only=True, eq=False)
class StepBackoff(RetryPolicy):
    """Waits 5 seconds after the first failed attempt, 30 after the second, 5 minutes after
    any later one."""

    steps: tuple[float, ...] = (5.0, 30.0, 300.0)

    def base_delay(self, attempt: int) -> float:
        return self.steps[min(attempt, len(self.steps)) - 1]


class UrgentNewestFirst(Scheduler):
    """Lowest priority number first; among equals, the newest task first."""

    def plan(self, request: LeaseRequest) -> LeasePlan:
        return LeasePlan(order=(SortKey.PRIORITY, SortKey.LIFO), name="urgent-newest-first")


class EventCounter:
    """Counts events by kind and task type (a stand-in for a metrics backend)."""

    hookqueue_name = "event-counter"

    def __init__(self) -> None:
        self.backend: Any = Counter()
        self._lock = threading.Lock()

    @hookimpl
    def hookqueue_event(self, events: Sequence[TaskEvent]) -> None:
        with self._lock:
            for event in events:
                self.backend[(event.kind, event.task.task_type)] += 1

    def count(self, kind: EventKind, task_type: str) -> int:
        with self._lock:
            return int(self.backend[(kind, task_type)])
