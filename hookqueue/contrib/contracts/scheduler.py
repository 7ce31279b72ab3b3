"""The contract every scheduler keeps. Subclass :class:`SchedulerContract` in your tests.

A scheduler is a plugin answering ``hookqueue_lease`` with a
:class:`~hookqueue.core.models.LeasePlan`, ``tryfirst`` so it answers before the first-party
``priority`` plugin. Whatever order it chooses, leasing through it must keep the queue's
promises: only due tasks of the asked queues, at most ``limit`` at a time, each task once, and
nothing left behind. The contract checks them against a real queue on a temporary SQLite file,
with a fake clock::

    from hookqueue.contrib.contracts.scheduler import SchedulerContract

    class TestMyScheduler(SchedulerContract):
        def make_scheduler(self):
            return MyScheduler()

        def expected_order(self, tasks):       # optional: for deterministic schedulers
            return [t.id for t in sorted(tasks, key=lambda t: (t.priority, t.id))]

Requires pytest and hypothesis (``pip install 'hookqueue[test]'``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookqueue import FakeClock, Queue, TaskStatus, WorkerEngine
from hookqueue.contrib.contracts._base import START, QueueContract
from hookqueue.core.clock import to_us
from hookqueue.core.models import Candidate, LeasePlan, LeaseRequest, SortKey, Task

#: The instant the contract's fake clocks start at.

#: One task to enqueue: (task type, priority, tenant, seconds of delay).
TaskSpec = tuple[str, int, str, int]

_task_specs = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.integers(min_value=-5, max_value=5),
        st.sampled_from(["t1", "t2", "t3"]),
        st.sampled_from([0, 0, 0, 30]),
    ),
    min_size=1,
    max_size=40,
)


#: Every subclass runs the same ``@given`` methods (hypothesis sees one function called from
#: several classes); the inputs are valid for any subclass, so sharing examples is harmless.
_SHARED = [HealthCheck.differing_executors]


class SchedulerContract(QueueContract):
    """Tests every scheduler must pass. Subclass it and implement :meth:`make_scheduler`.

    ``queue_kwargs`` holds extra keyword arguments for every :class:`~hookqueue.Queue` the
    contract builds (e.g. ``{"block": [...]}``).
    """

    # -- what a subclass provides --------------------------------------------------------------

    def make_plugin(self) -> Any:
        """The plugin the contract's queues register: :meth:`make_scheduler`."""
        return self.make_scheduler()

    def make_scheduler(self) -> Any:
        """A new instance of the scheduler under test."""
        raise NotImplementedError("implement make_scheduler() to return the scheduler under test")

    def expected_order(self, tasks: Sequence[Task]) -> list[int] | None:
        """The ids of ``tasks`` (all due, none leased yet, at one instant) in the order the
        scheduler leases them one at a time; None when the order is not fixed (random,
        stateful). Override it for deterministic schedulers."""
        return None

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def enqueue_specs(
        queue: Queue, specs: Sequence[TaskSpec], *, name: str = "default"
    ) -> list[Task]:
        """Enqueue one task per spec, in one transaction."""
        return queue.enqueue_many(
            [
                {
                    "task_type": task_type,
                    "priority": priority,
                    "payload": {"tenant": tenant, "n": i},
                    "delay": delay,
                    "queue": name,
                }
                for i, (task_type, priority, tenant, delay) in enumerate(specs)
            ]
        )

    @staticmethod
    def drain(
        queue: Queue, limits: Iterable[int], queues: Sequence[str] = ("default",)
    ) -> list[Task]:
        """Lease until nothing is due, ``limits`` giving each lease's size (then 1)."""
        sizes = iter(limits)
        leased: list[Task] = []
        while True:
            limit = next(sizes, 1)
            batch = queue.runtime.lease("contract", queues=queues, limit=limit)
            assert len(batch) <= limit, f"asked for {limit}, leased {len(batch)}"
            if not batch:
                return leased
            leased += batch

    # -- the contract --------------------------------------------------------------------------

    def test_answers_before_the_priority_plugins_default(
        self, tmp_path: Path, contract_clock: FakeClock
    ) -> None:
        scheduler = self.make_scheduler()
        with self.make_queue(tmp_path / "q.db", contract_clock, [scheduler]) as queue:
            # pluggy calls implementations from the end of this list: the last answers first.
            impls = [i for i in queue.pm.hook.hookqueue_lease.get_hookimpls() if not i.wrapper]
            assert impls[-1].plugin is scheduler

    def test_the_plan_is_well_formed(self, tmp_path: Path, contract_clock: FakeClock) -> None:
        with self.make_queue(tmp_path / "q.db", contract_clock, [self.make_scheduler()]) as queue:
            request = LeaseRequest(
                worker_id="contract", queues=("default",), limit=4, now=START, lease_seconds=10.0
            )
            plan = queue.hooks.lease(queue, request)
            assert isinstance(plan, LeasePlan)
            assert plan.order and all(isinstance(k, SortKey) for k in plan.order)
            assert plan.window >= 1 and plan.aging_seconds > 0
            assert plan.rerank is None or callable(plan.rerank)
            assert plan.partition_key is None or (
                isinstance(plan.partition_key, str) and plan.partition_key
            )

    @pytest.mark.parametrize("limit", [1, 3, 50])
    def test_rerank_returns_offered_ids_only(
        self, tmp_path: Path, contract_clock: FakeClock, limit: int
    ) -> None:
        with self.make_queue(tmp_path / "q.db", contract_clock, [self.make_scheduler()]) as queue:
            request = LeaseRequest(
                worker_id="contract",
                queues=("default",),
                limit=limit,
                now=START,
                lease_seconds=10.0,
            )
            plan = queue.hooks.lease(queue, request)
            if plan.rerank is None:
                pytest.skip("the plan has no rerank step")
            now_us = to_us(START, "now")
            candidates = [
                Candidate(
                    id=100 + i,
                    task_type="abc"[i % 3],
                    priority=i % 4,
                    queue="default",
                    created_at_us=now_us - i,
                    run_after_us=now_us - i,
                    partition=f"t{i % 2}",
                )
                for i in range(20)
            ]
            chosen = list(plan.rerank(candidates, limit))
            offered = {c.id for c in candidates}
            assert all(isinstance(i, int) for i in chosen)
            assert set(chosen) <= offered
            assert len(chosen) == len(set(chosen)), "an id chosen twice"
            assert len(chosen) == min(limit, len(candidates)), "a full window fills every slot"

    def test_leases_only_due_tasks_of_the_asked_queues(
        self, tmp_path: Path, contract_clock: FakeClock
    ) -> None:
        with self.make_queue(tmp_path / "q.db", contract_clock, [self.make_scheduler()]) as queue:
            due = self.enqueue_specs(queue, [("a", p % 3, f"t{p % 2}", 0) for p in range(12)])
            later = self.enqueue_specs(queue, [("a", -100, "t1", 60), ("b", -100, "t2", 60)])
            other = self.enqueue_specs(queue, [("a", -100, "t1", 0)], name="other")
            leased = self.drain(queue, [1, 2, 5])
            assert sorted(t.id for t in leased) == sorted(t.id for t in due)
            for t in later + other:
                assert queue.get(t.id).status is TaskStatus.QUEUED
            contract_clock.advance(60)
            assert sorted(t.id for t in self.drain(queue, [10])) == sorted(t.id for t in later)

    def test_order_is_the_expected_one(self, tmp_path: Path, contract_clock: FakeClock) -> None:
        with self.make_queue(tmp_path / "q.db", contract_clock, [self.make_scheduler()]) as queue:
            specs = [("abc"[i % 3], (i * 7) % 5, f"t{i % 4}", 0) for i in range(30)]
            tasks = self.enqueue_specs(queue, specs)
            expected = self.expected_order(tasks)
            if expected is None:
                pytest.skip("the scheduler's order is not fixed")
            assert [t.id for t in self.drain(queue, [])] == expected

    def test_a_worker_completes_every_task(self, tmp_path: Path, contract_clock: FakeClock) -> None:
        with self.make_queue(tmp_path / "q.db", contract_clock, [self.make_scheduler()]) as queue:
            seen: list[int] = []
            for task_type in "abc":
                queue.handlers.register_handler(task_type, lambda t: seen.append(t.id))
            tasks = self.enqueue_specs(queue, [("abc"[i % 3], i % 4, "t1", 0) for i in range(25)])
            stats = WorkerEngine(queue, worker_id="contract", concurrency=3).run_until_idle()
            assert stats.completed == len(tasks)
            assert sorted(seen) == sorted(t.id for t in tasks)

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[*_SHARED, HealthCheck.too_slow],
    )
    @given(specs=_task_specs, limits=st.lists(st.integers(min_value=1, max_value=8), max_size=10))
    def test_every_due_task_is_leased_exactly_once(
        self, specs: list[TaskSpec], limits: list[int]
    ) -> None:
        with self.temporary_queue() as (queue, clock):
            tasks = self.enqueue_specs(queue, specs)
            due = [t for t in tasks if t.run_after <= clock.now()]
            expected = self.expected_order(due) if all(n == 1 for n in limits) else None
            leased = self.drain(queue, limits)
            ids = [t.id for t in leased]
            assert len(ids) == len(set(ids)), "a task was leased twice"
            assert set(ids) == {t.id for t in due}
            if expected is not None:
                assert ids == expected
            assert all(t.attempts == 1 and t.status is TaskStatus.RUNNING for t in leased)
            clock.advance(30)
            rest = self.drain(queue, limits)
            assert {t.id for t in rest} == {t.id for t in tasks} - set(ids)


#: The 99.9th percentile of the chi-square distribution with 2 degrees of freedom (three
#: groups' shares), the bound the share tests hold a scheduler's leases to.
CHI2_2DF_999 = 13.816


def chi_square(observed: Mapping[str, int], weights: Mapping[str, float]) -> float:
    """Pearson's χ² of ``observed`` counts against shares proportional to ``weights``."""
    total = sum(observed.values())
    norm = sum(weights.values())
    return sum(
        (observed.get(k, 0) - total * w / norm) ** 2 / (total * w / norm)
        for k, w in weights.items()
    )


__all__ = ["CHI2_2DF_999", "START", "SchedulerContract", "TaskSpec", "chi_square"]
