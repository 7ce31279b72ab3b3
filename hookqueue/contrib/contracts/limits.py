"""The contract of the store's limit vocabulary. Subclass :class:`LimitStoreContract` in the
tests of a store that implements limits (docs/limits.md).

A lease plan may carry :class:`~hookqueue.core.models.LimitRule` records (``plan.limits``) or
ask for the rules stored with ``set_limit`` (``plan.stored_limits``); the store applies them
inside the lease's one transaction (see the "Limits" part of
:mod:`hookqueue.core.storage`). These tests check that promise against the store alone, with
explicit instants: concurrency per rule and per partition, counted across workers and until
a dead worker's lease expires; rates with bursts and a clock that reads a little behind;
round-robin turns between partitions; held tasks staying queued with no attempt spent;
``has_work`` and ``next_wakeup_delay_us`` seeing what a lease would; the stored rules
(``set_limit``, ``list_limits``, ``delete_limit``) and ``limit_usage``.

A third-party plugin that limits through the store's vocabulary reuses them as they are: its
rules are :class:`~hookqueue.core.models.LimitRule` records in the plan it answers
``hookqueue_lease`` with, which is exactly what these tests hand the store::

    from hookqueue.contrib.contracts.limits import LimitStoreContract

    class TestMyStoreLimits(LimitStoreContract):
        def make_store(self, tmp_path):
            return MyStore(...)

Requires pytest (``pip install 'hookqueue[test]'``).
"""

from __future__ import annotations

import json
import random
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from hookqueue.contrib.contracts.scheduler import CHI2_2DF_999, chi_square
from hookqueue.contrib.contracts.store import (
    FIFO,
    LEASE_US,
    SECOND,
    T0,
    ExpiryRecorder,
    make_row,
)
from hookqueue.core.clock import from_us
from hookqueue.core.errors import StoreError, ValidationError
from hookqueue.core.limitwalk import MAX_PARTS
from hookqueue.core.models import (
    Candidate,
    LeasePlan,
    LeaseRequest,
    LimitRule,
    SortKey,
    Task,
    TaskStatus,
)
from hookqueue.core.storage import CLOCK_SLACK_US, Settlement, TaskStore
from hookqueue.plugins.priority import FairShare, Scheduler, WeightedRandom

__all__ = ["LimitMachine", "LimitStoreContract", "limited"]


def limited(*rules: LimitRule, **changes: Any) -> LeasePlan:
    """A FIFO plan (unless ``changes`` say otherwise) carrying ``rules``."""
    return LeasePlan(limits=rules, **changes)


def scheduler_plan(scheduler: Scheduler, *rules: LimitRule) -> LeasePlan:
    """``scheduler``'s plan for a lease of the default queue, carrying ``rules``."""
    request = LeaseRequest(
        worker_id="w1", queues=("default",), limit=1, now=from_us(T0), lease_seconds=30.0
    )
    return attrs.evolve(scheduler.plan(request), limits=rules)


def _never(task: Task) -> tuple[int | None, str]:
    raise AssertionError(f"decide_expired was asked about task {task.id}, whose lease is live")


class LimitStoreContract:
    """Tests every store that implements limits must pass. Subclass it and implement
    :meth:`make_store`; list a test in ``known_failures`` (``{name: reason}``) to run it as
    ``xfail(strict=True)``."""

    known_failures: ClassVar[dict[str, str]] = {}
    #: The hypothesis settings of :meth:`test_the_limits_state_machine`.
    machine_settings: ClassVar[settings] = settings(
        max_examples=40,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )

    def make_store(self, tmp_path: Path) -> TaskStore:
        """A new, empty store; ``tmp_path`` is a directory of its own it may use."""
        raise NotImplementedError("implement make_store(tmp_path) to return a new, empty store")

    @pytest.fixture(autouse=True)
    def _known_failure(self, request: pytest.FixtureRequest) -> None:
        reason = self.known_failures.get(request.node.name) or self.known_failures.get(
            getattr(request.node, "originalname", request.node.name)
        )
        if reason is not None:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[TaskStore]:
        """A new, empty store, closed after the test."""
        made = self.make_store(tmp_path)
        try:
            yield made
        finally:
            if not made.closed:
                made.close()

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def add(store: TaskStore, now_us: int, n: int = 1, **changes: Any) -> list[int]:
        """Insert ``n`` tasks due at ``now_us`` (payload ``payload`` as a value, if given)."""
        if "payload" in changes:
            changes["payload_json"] = json.dumps(changes.pop("payload"))
        if "headers" in changes:
            changes["headers_json"] = json.dumps(changes.pop("headers"))
        changes.setdefault("run_after_us", now_us)
        return [tid for tid, _ in store.insert([make_row(**changes) for _ in range(n)], now_us)]

    @staticmethod
    def lease(
        store: TaskStore,
        now_us: int,
        plan: LeasePlan,
        *,
        worker_id: str = "w1",
        limit: int = 100,
        queues: Sequence[str] = ("default",),
        settlements: Sequence[Settlement] = (),
        decide: Any = _never,
    ) -> list[Task]:
        """``store.lease`` with ``plan``; the leased tasks."""
        leased, _ = store.lease(
            worker_id=worker_id,
            queues=list(queues),
            limit=limit,
            now_us=now_us,
            lease_us=LEASE_US,
            plan=plan,
            decide_expired=decide,
            settlements=settlements,
        )
        return leased

    @staticmethod
    def add_types(store: TaskStore, task_types: Sequence[str]) -> None:
        """Insert one task due at ``T0`` per entry of ``task_types``, in that order."""
        for lo in range(0, len(task_types), 1000):
            rows = [make_row(T0, task_type=t) for t in task_types[lo : lo + 1000]]
            store.insert(rows, T0)

    @staticmethod
    def tenants(tasks: Sequence[Task], key: str = "tenant") -> list[Any]:
        """The partition value of each task, in order."""
        return [t.payload.get(key) for t in tasks]

    # -- concurrency ---------------------------------------------------------------------------

    def test_concurrency_holds_tasks_queued_without_an_attempt(self, store: TaskStore) -> None:
        """At most ``concurrency`` of the rule's tasks run; the others stay queued with no
        attempt counted, and one starts when a running one settles."""
        plan = limited(LimitRule(name="two", concurrency=2))
        ids = self.add(store, T0, 5)
        first = self.lease(store, T0, plan)
        assert [t.id for t in first] == ids[:2]
        assert self.lease(store, T0 + 1, plan, worker_id="w2") == []
        for tid in ids[2:]:
            held = store.get(tid)
            assert held.status is TaskStatus.QUEUED and held.attempts == 0
        again = self.lease(
            store,
            T0 + 2,
            plan,
            settlements=[Settlement(task_id=ids[0], kind="complete")],
        )
        assert [t.id for t in again] == [ids[2]]

    def test_a_batch_never_overshoots_a_limit(self, store: TaskStore) -> None:
        """One lease asking for many starts only as many as the rule has room for."""
        self.add(store, T0, 10)
        plan = limited(LimitRule(name="three", concurrency=3))
        assert len(self.lease(store, T0, plan, limit=10)) == 3

    def test_concurrency_is_counted_per_partition(self, store: TaskStore) -> None:
        """``partition_by`` limits each value of the key on its own: one tenant at its limit
        does not hold another back."""
        for tenant in ("a", "a", "a", "b", "b", "c"):
            self.add(store, T0, payload={"tenant": tenant})
        plan = limited(LimitRule(name="per-tenant", concurrency=1, partition_by="tenant"))
        leased = self.lease(store, T0, plan, limit=10)
        assert self.tenants(leased) == ["a", "b", "c"]
        assert self.lease(store, T0 + 1, plan, limit=10) == []

    def test_partition_values_by_type(self, store: TaskStore) -> None:
        """A string and a number are buckets of their own (``"1"`` is not ``1``); a missing
        key, null, a boolean, an object or a list all fall in one shared bucket."""
        for value in ("1", 1, 1.5):
            self.add(store, T0, payload={"tenant": value})
        for payload in ({}, {"tenant": None}, {"tenant": True}, {"tenant": {"x": 1}}, [1]):
            self.add(store, T0, payload=payload)
        plan = limited(LimitRule(name="p", concurrency=1, partition_by="tenant"))
        leased = self.lease(store, T0, plan, limit=20)
        assert len(leased) == 4  # "1", 1, 1.5 and the shared bucket
        usage = {u.partition: u for u in store.limit_usage(T0, plan.limits)}
        assert usage[None].running == 1 and usage[None].waiting == 4
        assert usage["1"].running == usage[1].running == 1

    def test_partition_by_a_header(self, store: TaskStore) -> None:
        """``partition_in="headers"`` reads the key from the task's headers."""
        for tenant in ("x", "x", "y"):
            self.add(store, T0, headers={"tenant": tenant})
        plan = limited(
            LimitRule(name="h", concurrency=1, partition_by="tenant", partition_in="headers")
        )
        leased = self.lease(store, T0, plan, limit=10)
        assert [t.headers["tenant"] for t in leased] == ["x", "y"]

    def test_a_rule_limits_only_its_queue_and_type(self, store: TaskStore) -> None:
        """A rule of one task type (or queue) never holds back another's tasks."""
        self.add(store, T0, 3, task_type="slow")
        self.add(store, T0, 3, task_type="fast")
        self.add(store, T0, 2, task_type="slow", queue="other")
        plan = limited(LimitRule(name="slow", concurrency=1, task_type="slow", queue="default"))
        leased = self.lease(store, T0, plan, limit=20, queues=["default", "other"])
        assert Counter((t.queue, t.task_type) for t in leased) == {
            ("default", "slow"): 1,
            ("default", "fast"): 3,
            ("other", "slow"): 2,
        }

    def test_running_tasks_of_every_worker_count(self, store: TaskStore) -> None:
        """Tasks leased by another worker (or claimed at insert) count against the rule."""
        self.add(store, T0, 4)
        plan = limited(LimitRule(name="two", concurrency=2))
        store.insert([make_row(T0)], T0, claim=("adapter", T0 + LEASE_US))
        assert len(self.lease(store, T0, plan, worker_id="w1", limit=1)) == 1
        assert self.lease(store, T0, plan, worker_id="w2") == []

    def test_a_dead_workers_task_counts_until_its_lease_expires(self, store: TaskStore) -> None:
        """A task whose worker died holds its place until its lease expires; then the sweep
        (in the same lease) requeues it and the limit lets a task start."""
        [a, b] = self.add(store, T0, 2, max_attempts=3)
        plan = limited(LimitRule(name="one", concurrency=1))
        assert [t.id for t in self.lease(store, T0, plan, worker_id="dead")] == [a]
        assert self.lease(store, T0 + LEASE_US - 1, plan, worker_id="w2") == []
        later = T0 + LEASE_US
        leased = self.lease(store, later, plan, worker_id="w2", decide=ExpiryRecorder(later))
        assert len(leased) == 1
        assert store.get(b).attempts == (1 if leased[0].id == b else 0)

    # -- rates ---------------------------------------------------------------------------------

    def test_rate_spaces_starts(self, store: TaskStore) -> None:
        """``rate=2`` per second with ``burst=1``: one start, then the next 0.5 s later."""
        self.add(store, T0, 5)
        plan = limited(LimitRule(name="r", rate=2, period=1.0))
        assert len(self.lease(store, T0, plan, limit=5)) == 1
        assert self.lease(store, T0 + SECOND // 2 - 1, plan, limit=5) == []
        assert len(self.lease(store, T0 + SECOND // 2, plan, limit=5)) == 1

    def test_burst_allows_back_to_back_starts(self, store: TaskStore) -> None:
        """``burst=3`` lets three start at once, then one per interval."""
        self.add(store, T0, 10)
        plan = limited(LimitRule(name="r", rate=10, period=1.0, burst=3))
        assert len(self.lease(store, T0, plan, limit=10)) == 3
        assert self.lease(store, T0 + 1, plan, limit=10) == []
        assert len(self.lease(store, T0 + SECOND // 10, plan, limit=10)) == 1

    def test_rate_is_counted_per_partition(self, store: TaskStore) -> None:
        """Each partition has its own rate."""
        for tenant in ("a", "a", "b", "b"):
            self.add(store, T0, payload={"tenant": tenant})
        plan = limited(LimitRule(name="r", rate=1, period=10.0, partition_by="tenant"))
        assert self.tenants(self.lease(store, T0, plan, limit=10)) == ["a", "b"]
        assert self.lease(store, T0 + SECOND, plan, limit=10) == []

    def test_rate_state_is_shared_by_leases_of_any_worker(self, store: TaskStore) -> None:
        """The rate's state is stored: another worker's lease sees the starts."""
        self.add(store, T0, 3)
        plan = limited(LimitRule(name="r", rate=1, period=60.0))
        assert len(self.lease(store, T0, plan, worker_id="w1")) == 1
        assert self.lease(store, T0 + SECOND, plan, worker_id="w2") == []

    def test_a_lease_whose_clock_is_a_little_behind_still_sees_the_next_start(
        self, store: TaskStore
    ) -> None:
        """A worker whose clock reads 30 s behind the one that last started a task waits for
        the next start by its own clock — a finite wait it can compute — and starts then."""
        self.add(store, T0, 3)
        plan = limited(LimitRule(name="r", rate=1, period=1.0))
        ahead = T0 + 30 * SECOND
        assert len(self.lease(store, ahead, plan, worker_id="fast-clock")) == 1
        delay = store.next_wakeup_delay_us(["default"], T0, plan=plan)
        assert delay is not None and 0 < delay <= 31 * SECOND
        assert store.has_work(["default"], T0, plan=plan) is False
        assert len(self.lease(store, T0 + delay, plan, worker_id="slow-clock")) == 1

    def test_rate_state_far_ahead_of_the_clock_is_not_honoured(self, store: TaskStore) -> None:
        """State written by a clock more than the slack (60 s) ahead is ignored: it does not
        hold the bucket until that clock's instant."""
        self.add(store, T0, 3)
        plan = limited(LimitRule(name="r", rate=1, period=1.0))
        assert len(self.lease(store, T0 + CLOCK_SLACK_US + 3600 * SECOND, plan)) == 1
        assert store.has_work(["default"], T0, plan=plan) is True
        assert len(self.lease(store, T0, plan, worker_id="w2")) == 1

    # -- fairness ------------------------------------------------------------------------------

    def test_fair_turns_between_partitions(self, store: TaskStore) -> None:
        """A tenant with many tasks enqueued first does not starve one with few: the
        partitions take turns, one task each."""
        self.add(store, T0, 20, payload={"tenant": "big"})
        self.add(store, T0, 2, payload={"tenant": "small"})
        plan = limited(LimitRule(name="fair", fair=True, partition_by="tenant"))
        assert self.tenants(self.lease(store, T0, plan, limit=4)) == ["big", "small"] * 2
        assert self.tenants(self.lease(store, T0, plan, limit=3)) == ["big"] * 3

    def test_turns_are_remembered_between_leases(self, store: TaskStore) -> None:
        """A lease of one serves the partition served longest ago, across leases and
        workers."""
        self.add(store, T0, 5, payload={"tenant": "a"})
        self.add(store, T0, 5, payload={"tenant": "b"})
        plan = limited(LimitRule(name="fair", fair=True, partition_by="tenant"))
        got = [
            self.tenants(self.lease(store, T0, plan, worker_id=f"w{i}", limit=1))[0]
            for i in range(4)
        ]
        assert got == ["a", "b", "a", "b"]

    def test_weighted_turns(self, store: TaskStore) -> None:
        """``weights={"gold": 3}``: gold is served three tasks for each of another
        partition's while both have due tasks, across leases."""
        self.add(store, T0, 20, payload={"tenant": "plain"})
        self.add(store, T0, 20, payload={"tenant": "gold"})
        plan = limited(
            LimitRule(name="fair", fair=True, partition_by="tenant", weights={"gold": 3})
        )
        got = self.tenants(self.lease(store, T0, plan, limit=8))
        got += self.tenants(self.lease(store, T0, plan, limit=8))
        assert Counter(got) == {"gold": 12, "plain": 4}
        assert got[:4].count("gold") == 3

    def test_a_partition_back_after_a_quiet_spell_does_not_catch_up(self, store: TaskStore) -> None:
        """A partition served long ago takes one turn ahead of the others when it returns,
        then alternates — it does not get the turns it missed."""
        self.add(store, T0, 1, payload={"tenant": "early"})
        plan = limited(LimitRule(name="fair", fair=True, partition_by="tenant"))
        self.lease(store, T0, plan, limit=1)
        self.add(store, T0, 30, payload={"tenant": "busy"})
        for _ in range(10):
            self.lease(store, T0, plan, limit=1)
        self.add(store, T0, 5, payload={"tenant": "early"})
        got = self.tenants(self.lease(store, T0, plan, limit=6))
        assert got == ["early", "busy"] * 3

    def test_without_fairness_the_order_is_the_plans(self, store: TaskStore) -> None:
        """The control: with no fair rule the same backlog leases in FIFO order."""
        self.add(store, T0, 5, payload={"tenant": "a"})
        self.add(store, T0, 5, payload={"tenant": "b"})
        plan = limited(LimitRule(name="c", concurrency=100, partition_by="tenant"))
        assert self.tenants(self.lease(store, T0, plan, limit=4)) == ["a"] * 4

    def test_fair_turns_keep_the_limits(self, store: TaskStore) -> None:
        """Round-robin and a per-tenant concurrency together: turns skip a full tenant."""
        self.add(store, T0, 5, payload={"tenant": "a"})
        self.add(store, T0, 5, payload={"tenant": "b"})
        plan = limited(
            LimitRule(name="fair", fair=True, partition_by="tenant"),
            LimitRule(name="c", concurrency=2, partition_by="tenant"),
        )
        assert Counter(self.tenants(self.lease(store, T0, plan, limit=10))) == {"a": 2, "b": 2}

    # -- what workers ask ----------------------------------------------------------------------

    def test_has_work_sees_what_a_lease_would(self, store: TaskStore) -> None:
        """Due tasks that a limit holds back are no work; a freed slot makes them work."""
        [a, _] = self.add(store, T0, 2)
        plan = limited(LimitRule(name="one", concurrency=1))
        assert store.has_work(["default"], T0, plan=plan) is True
        self.lease(store, T0, plan, limit=1)
        assert store.has_work(["default"], T0, plan=plan) is False
        assert store.has_work(["default"], T0) is True  # without the plan: due is due
        store.settle("w1", [Settlement(task_id=a, kind="complete")], T0)
        assert store.has_work(["default"], T0, plan=plan) is True

    def test_the_wakeup_delay_includes_the_next_rate_start(self, store: TaskStore) -> None:
        """A worker whose due tasks wait for a rate sleeps until the rate allows a start."""
        self.add(store, T0, 2)
        plan = limited(LimitRule(name="r", rate=4, period=1.0))
        self.lease(store, T0, plan)
        assert store.next_wakeup_delay_us(["default"], T0, plan=plan) == SECOND // 4
        assert store.next_wakeup_delay_us(["default"], T0 + SECOND // 8, plan=plan) == SECOND // 8

    @pytest.mark.parametrize("group_by", [None, "partition", "task_type"])
    def test_a_rerank_is_offered_only_what_the_limits_allow(
        self, store: TaskStore, group_by: str | None
    ) -> None:
        """A re-ranking plan's window — the head of the queue, or drawn per group — leaves
        out held tasks, and its choice is walked again so one lease cannot overshoot."""
        for tenant in ("a", "a", "a", "b"):
            self.add(store, T0, payload={"tenant": tenant})
        self.lease(store, T0, limited(), limit=1)  # tenant a runs one
        offered: list[list[int]] = []

        def rerank(window: Sequence[Candidate], limit: int) -> list[int]:
            offered.append([c.id for c in window])
            return [c.id for c in window]

        plan = limited(
            LimitRule(name="c", concurrency=1, partition_by="tenant"),
            rerank=rerank,
            order=(SortKey.FIFO,),
            group_by=group_by,
            partition_key="tenant" if group_by == "partition" else None,
        )
        leased = self.lease(store, T0, plan, limit=10)
        assert self.tenants(leased) == ["b"]
        assert offered == [[4]]

    # -- re-ranking schedulers under limits ------------------------------------------------------

    def test_a_grouped_window_keeps_a_schedulers_shares_under_a_limit(
        self, store: TaskStore
    ) -> None:
        """``WeightedRandom`` (6 : 3 : 1 by task type, window 64) under a rule that never
        binds, each type's backlog 25 times the window: the window is drawn per group as
        without limits, so 1,200 tasks leased 20 at a time keep the shares (χ² below the
        99.9th percentile), not the enqueue mix."""
        weights = {"a": 6.0, "b": 3.0, "c": 1.0}
        scheduler = WeightedRandom(weights=weights, window=64, rng=random.Random(20261205))
        plan = scheduler_plan(scheduler, LimitRule(name="roomy", concurrency=10**6))
        self.add_types(store, [t for _ in range(1600) for t in "abc"])
        counts = Counter(
            t.task_type for _ in range(60) for t in self.lease(store, T0, plan, limit=20)
        )
        assert sum(counts.values()) == 1200
        assert chi_square(counts, weights) < CHI2_2DF_999, counts

    def test_a_grouped_window_keeps_fair_share_weights_under_a_stored_limit(
        self, store: TaskStore
    ) -> None:
        """``FairShare`` by tenant (gold weighs 3, window 32) under a stored per-tenant rule
        that never binds: 400 tasks leased 20 at a time split exactly 300 : 100."""
        scheduler = FairShare(partition_key="tenant", weights={"gold": 3}, window=32)
        store.set_limit(LimitRule(name="roomy", concurrency=10**6, partition_by="tenant"), T0)
        plan = attrs.evolve(scheduler_plan(scheduler), stored_limits=True)
        for _ in range(500):
            for tenant in ("gold", "tin"):
                self.add(store, T0, payload={"tenant": tenant})
        counts = Counter(
            tenant
            for _ in range(20)
            for tenant in self.tenants(self.lease(store, T0, plan, limit=20))
        )
        assert counts == {"gold": 300, "tin": 100}

    def test_a_grouped_window_reaches_a_group_behind_another_groups_backlog_under_a_limit(
        self, store: TaskStore
    ) -> None:
        """Task type ``b``'s 3 tasks enqueued after 1,000 of ``a``: under a rule that never
        binds, ``FairShare`` by task type (window 16) is offered them in the first lease and
        serves them in turns — all 3 in the first 3 leases of 2. The same under
        ``WeightedRandom`` 6 : 3 : 1 with 1,600 each enqueued one type after the other:
        the shares hold."""
        self.add_types(store, ["a"] * 1000 + ["b"] * 3)
        plan = scheduler_plan(FairShare(window=16), LimitRule(name="roomy", concurrency=10**6))
        first = [self.lease(store, T0, plan, limit=2) for _ in range(3)]
        assert [Counter(t.task_type for t in batch)["b"] for batch in first] == [1, 1, 1]

    def test_a_grouped_window_reaches_groups_enqueued_one_after_the_other_under_a_limit(
        self, store: TaskStore
    ) -> None:
        """``WeightedRandom`` 6 : 3 : 1 by task type, 1,600 of each enqueued one type after
        the other, under a rule that never binds: the shares hold (before the window was
        drawn per group under limits, every task leased was ``a``)."""
        weights = {"a": 6.0, "b": 3.0, "c": 1.0}
        scheduler = WeightedRandom(weights=weights, window=64, rng=random.Random(7))
        plan = scheduler_plan(scheduler, LimitRule(name="roomy", concurrency=10**6))
        self.add_types(store, [t for t in "abc" for _ in range(1600)])
        counts = Counter(
            t.task_type for _ in range(60) for t in self.lease(store, T0, plan, limit=20)
        )
        assert chi_square(counts, weights) < CHI2_2DF_999, counts

    @pytest.mark.parametrize("per_group", [True, False], ids=["per-group", "head-window"])
    def test_a_fair_rule_reaches_a_small_tenant_behind_a_rerank(
        self, store: TaskStore, per_group: bool
    ) -> None:
        """A fair rule on ``tenant`` with a re-ranking scheduler that groups by something
        else (``WeightedRandom`` by task type, window 64): a small tenant's 5 tasks enqueued
        after 1,000 of a big one still get their turns — the fair rule's buckets' first
        tasks follow the scheduler's choice — so all 5 are leased in the first 3 leases of
        4, alternating with the big tenant; with the scheduler's head window too."""
        self.add(store, T0, 1000, payload={"tenant": "big"})
        small = set(self.add(store, T0, 5, payload={"tenant": "small"}))
        scheduler = WeightedRandom(window=64, per_group=per_group, rng=random.Random(1))
        plan = scheduler_plan(scheduler, LimitRule(name="fair", fair=True, partition_by="tenant"))
        leases = [self.lease(store, T0, plan, limit=4) for _ in range(3)]
        assert [self.tenants(batch) for batch in leases[:2]] == [["big", "small"] * 2] * 2
        assert small <= {t.id for batch in leases for t in batch}

    def test_limits_leave_paused_queues_alone(self, store: TaskStore) -> None:
        """A paused queue stays paused under a limit too."""
        self.add(store, T0, 2)
        store.pause_queue("default", T0)
        plan = limited(LimitRule(name="c", concurrency=5))
        assert self.lease(store, T0, plan) == []
        assert store.has_work(["default"], T0, plan=plan) is False

    # -- stored rules ----------------------------------------------------------------------------

    def test_set_limit_creates_updates_and_lists(self, store: TaskStore) -> None:
        """``set_limit`` answers created, unchanged, updated; ``list_limits`` gives the rules by
        name, as they were set (weights keyed by strings and integers included)."""
        store.set_limit(
            LimitRule(name="c", fair=True, partition_by="t", weights={"x": 2, 7: 3}), T0
        )
        assert store.list_limits()[0].weights == ((7, 3), ("x", 2))
        store.delete_limit("c")
        rule = LimitRule(name="b", concurrency=2, partition_by="tenant", rate=5, burst=2)
        assert store.set_limit(rule, T0) == "created"
        assert store.set_limit(rule, T0 + 1) == "unchanged"
        assert store.set_limit(attrs.evolve(rule, concurrency=3), T0 + 2) == "updated"
        store.set_limit(LimitRule(name="a", rate=1, period=0.25), T0)
        assert [r.name for r in store.list_limits()] == ["a", "b"]
        assert store.list_limits()[1] == attrs.evolve(rule, concurrency=3)
        assert store.list_limits()[0].period == 0.25

    def test_stored_rules_apply_when_the_plan_asks(self, store: TaskStore) -> None:
        """``plan.stored_limits`` applies the rules stored with ``set_limit``, read in the
        lease; a plan that does not ask ignores them."""
        self.add(store, T0, 4)
        store.set_limit(LimitRule(name="one", concurrency=1), T0)
        assert len(self.lease(store, T0, LeasePlan(), limit=2)) == 2
        assert self.lease(store, T0, LeasePlan(stored_limits=True), limit=2) == []

    def test_deleting_a_rule_releases_what_it_held(self, store: TaskStore) -> None:
        """Once a rule is deleted, its held tasks are work again; deleting it twice answers
        False the second time."""
        self.add(store, T0, 3)
        store.set_limit(LimitRule(name="one", concurrency=1), T0)
        plan = LeasePlan(stored_limits=True)
        assert len(self.lease(store, T0, plan)) == 1
        assert store.has_work(["default"], T0, plan=plan) is False
        assert store.delete_limit("one") is True
        assert store.delete_limit("one") is False
        assert store.has_work(["default"], T0, plan=plan) is True
        assert len(self.lease(store, T0, plan)) == 2

    def test_loosening_a_rate_lets_what_it_held_start_at_the_new_pace(
        self, store: TaskStore
    ) -> None:
        """A stored rate replaced by a looser one: the starts the bucket owes are paid at the
        new rate (1 per 30 s owing one start: 0.1 s at 10 per second), not the old one."""
        self.add(store, T0, 3)
        store.set_limit(LimitRule(name="api", rate=1, period=30.0), T0)
        plan = LeasePlan(stored_limits=True)
        assert len(self.lease(store, T0, plan, limit=3)) == 1
        assert store.set_limit(LimitRule(name="api", rate=10, period=1.0), T0) == "updated"
        assert self.lease(store, T0 + SECOND // 20, plan, worker_id="w2") == []
        assert len(self.lease(store, T0 + SECOND // 10, plan, worker_id="w3")) == 1
        assert len(self.lease(store, T0 + SECOND // 5, plan, worker_id="w4")) == 1

    def test_tightening_a_rate_does_not_forgive_a_burst(self, store: TaskStore) -> None:
        """A stored rate replaced by a stricter one: a burst just taken is owed at the new
        rate (5 starts at 10 per second, then 1 per 10 s with a burst of 5: five intervals of
        10 s owed, four of them covered by the burst, so the next start 10 s later)."""
        self.add(store, T0, 6)
        store.set_limit(LimitRule(name="api", rate=10, period=1.0, burst=5), T0)
        plan = LeasePlan(stored_limits=True)
        assert len(self.lease(store, T0, plan, limit=6)) == 5
        assert store.set_limit(LimitRule(name="api", rate=1, period=10.0, burst=5), T0) == "updated"
        assert self.lease(store, T0 + 9 * SECOND, plan, worker_id="w2") == []
        assert len(self.lease(store, T0 + 10 * SECOND, plan, worker_id="w3")) == 1

    def test_limit_usage_reports_running_due_and_waiting(self, store: TaskStore) -> None:
        """Per rule and bucket: running, due, how many wait on the limit, and when a rate
        allows the next start."""
        for tenant in ("a", "a", "a", "b"):
            self.add(store, T0, payload={"tenant": tenant})
        store.set_limit(LimitRule(name="c", concurrency=1, partition_by="tenant"), T0)
        store.set_limit(LimitRule(name="r", rate=1, period=10.0), T0)
        self.lease(store, T0, LeasePlan(stored_limits=True))
        usage = {(u.rule, u.partition): u for u in store.limit_usage(T0)}
        assert usage["c", "a"].running == 1
        assert usage["c", "a"].due == 2 and usage["c", "a"].waiting == 2
        assert usage["c", "b"].running == 0 and usage["c", "b"].waiting == 0
        assert usage["r", None].waiting == 3
        assert usage["r", None].next_start_us == T0 + 10 * SECOND

    def test_the_limits_state_machine(self) -> None:
        """Random enqueues, leases by two workers at moving instants, settlements and lease
        expiries under a global, a per-tenant and a rate limit, with weighted round-robin
        turns between the tenants: the limits always hold (see :class:`LimitMachine`)."""
        run_state_machine_as_test(
            lambda: LimitMachine(self.make_store),  # type: ignore[arg-type]
            settings=self.machine_settings,
        )

    def test_rules_reading_too_many_partition_keys_are_refused(self, store: TaskStore) -> None:
        """Rules of one lease that read more than ``MAX_PARTS`` (16) distinct partition keys
        raise ValidationError from ``lease`` (its settlements not written either),
        ``has_work``, ``next_wakeup_delay_us`` (with a rate among them) and ``limit_usage``."""
        rules = [
            LimitRule(name=f"r{i}", partition_by=f"k{i}", concurrency=5, rate=5)
            for i in range(MAX_PARTS + 1)
        ]
        plan = limited(*rules)
        [tid] = self.add(store, T0)
        [done] = self.lease(store, T0, FIFO)
        for call in (
            lambda: self.lease(
                store, T0 + 1, plan, settlements=[Settlement(task_id=done.id, kind="complete")]
            ),
            lambda: store.has_work(["default"], T0 + 1, plan=plan),
            lambda: store.next_wakeup_delay_us(["default"], T0 + 1, plan=plan),
            lambda: store.limit_usage(T0 + 1, rules),
        ):
            with pytest.raises(ValidationError):
                call()
        assert store.get(tid).status is TaskStatus.RUNNING
        assert store.has_work(["default"], T0 + 2, plan=limited(*rules[:MAX_PARTS])) is False

    def test_set_limit_refuses_what_is_not_a_limit_rule(self, store: TaskStore) -> None:
        """``set_limit`` of anything but a :class:`LimitRule` raises ValidationError naming
        ``rule``; nothing is stored."""
        store.initialize_schema()
        with pytest.raises(ValidationError) as info:
            store.set_limit({"name": "x", "concurrency": 1}, T0)  # type: ignore[arg-type]
        assert info.value.field == "rule"
        assert store.list_limits() == []

    def test_a_closed_store_refuses_the_limit_calls(self, store: TaskStore) -> None:
        """After ``close`` the limit methods raise StoreError like every other."""
        store.close()
        for call in (
            lambda: store.set_limit(LimitRule(name="x", concurrency=1), T0),
            lambda: store.delete_limit("x"),
            lambda: store.list_limits(),
            lambda: store.limit_usage(T0),
        ):
            with pytest.raises(StoreError):
                call()


# == the state machine =========================================================================

#: The rules the state machine leases under.
MACHINE_RULES = (
    LimitRule(name="all", concurrency=3),
    LimitRule(name="per-tenant", partition_by="tenant", concurrency=2),
    LimitRule(name="rate", partition_by="tenant", rate=4, period=1.0, burst=2),
    # Weighted turns between the tenants: they change which tasks start, never how many.
    LimitRule(name="turns", partition_by="tenant", fair=True, weights={"a": 3}),
)
#: Its tenants (``None``: a task without the key).
MACHINE_TENANTS = ("a", "b", None)


class LimitMachine(RuleBasedStateMachine):
    """A store leased under limits through random sequences of operations.

    Rules: enqueue tasks of a tenant; lease (either worker, a limit of 1 to 5, half the time
    with the plan's rules, half with the same rules stored; tenant ``a`` weighted 3 in the
    turns, so the fair walk, its stored positions and its clock are exercised too; the order
    FIFO, or a re-ranking scheduler's — ``FairShare`` by tenant with a window of 4 drawn per
    group, or ``WeightedRandom`` by task type with a head window of 4 — so the re-ranked
    choice and the fair rule's reserve are walked through the limits too) after moving time
    forward by 0 to 0.6 s; complete a running task; let every lease expire (the next lease
    sweeps them).
    After every step: no tenant has more than 2 running tasks and no more than 3 run in all;
    every tenant's starts keep the rate's token-bucket bound (``burst + elapsed / interval``
    over any run of starts); a task's attempts equal the times it was leased (a task held
    back spent none); nothing is lost.

    :param make_store: the contract's :meth:`LimitStoreContract.make_store`.
    """

    def __init__(self, make_store: Callable[[Path], TaskStore]) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.store = make_store(Path(self._dir.name))
        self.now = T0
        self.tenant: dict[int, Any] = {}
        self.leased: Counter[int] = Counter()
        self.running: dict[int, str] = {}
        self.starts: dict[Any, list[int]] = defaultdict(list)
        self.stored = False
        #: The re-ranking schedulers' plans, by name (their state lives for the run).
        self.schedulers = {
            "per-group": scheduler_plan(FairShare(partition_key="tenant", window=4)),
            "head": scheduler_plan(WeightedRandom(window=4, per_group=False, rng=random.Random(3))),
        }

    def teardown(self) -> None:
        """Check the store's own consistency, then close it."""
        try:
            assert self.store.check() == []
        finally:
            self.store.close()
            self._dir.cleanup()

    @rule(tenant=st.sampled_from(MACHINE_TENANTS), n=st.integers(1, 3))
    def enqueue(self, tenant: Any, n: int) -> None:
        payload = {} if tenant is None else {"tenant": tenant}
        rows = [make_row(self.now, payload_json=json.dumps(payload), max_attempts=50)] * n
        for tid, _ in self.store.insert(rows, self.now):
            self.tenant[tid] = tenant

    @rule(
        worker=st.sampled_from(("w1", "w2")),
        limit=st.integers(1, 5),
        dt_ms=st.integers(0, 600),
        stored=st.booleans(),
        scheduler=st.sampled_from((None, "per-group", "head")),
    )
    def lease(
        self, worker: str, limit: int, dt_ms: int, stored: bool, scheduler: str | None
    ) -> None:
        self.now += dt_ms * 1000
        if stored and not self.stored:
            for r in MACHINE_RULES:
                self.store.set_limit(r, self.now)
            self.stored = True
        plan = LeasePlan(stored_limits=True) if stored else limited(*MACHINE_RULES)
        if not stored and self.stored:
            # The plan's rules and the stored ones are the same rules by name: keep them once.
            plan = LeasePlan(stored_limits=True)
        if scheduler is not None:
            plan = attrs.evolve(
                self.schedulers[scheduler], limits=plan.limits, stored_limits=plan.stored_limits
            )
        now = self.now

        def requeue(task: Task) -> tuple[int | None, str]:
            return now, "expired"

        leased, transitions = self.store.lease(
            worker_id=worker,
            queues=["default"],
            limit=limit,
            now_us=now,
            lease_us=LEASE_US,
            plan=plan,
            decide_expired=requeue,
        )
        for kind, task in transitions:
            if kind == "lease_expired":
                self.running.pop(task.id, None)
        for task in leased:
            self.leased[task.id] += 1
            self.running[task.id] = worker
            self.starts[self.tenant[task.id]].append(now)
            assert task.attempts == self.leased[task.id]

    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        if not self.running:
            return
        tid = data.draw(st.sampled_from(sorted(self.running)))
        worker = self.running.pop(tid)
        self.store.settle(worker, [Settlement(task_id=tid, kind="complete")], self.now)

    @rule()
    def expire_every_lease(self) -> None:
        self.now += LEASE_US + 1

    @invariant()
    def limits_hold(self) -> None:
        running = [t for t in self.store.list(statuses=[TaskStatus.RUNNING], limit=1000)]
        per_tenant = Counter(self.tenant[t.id] for t in running)
        assert len(running) <= 3, f"{len(running)} running (limit 3)"
        assert all(n <= 2 for n in per_tenant.values()), per_tenant
        interval = MACHINE_RULES[2].interval_us
        for tenant, starts in self.starts.items():
            ordered = sorted(starts)
            for i in range(len(ordered)):
                for j in range(i, len(ordered)):
                    bound = MACHINE_RULES[2].burst + (ordered[j] - ordered[i]) // interval
                    assert j - i + 1 <= bound, (tenant, ordered[i : j + 1])

    @invariant()
    def attempts_are_leases_and_nothing_is_lost(self) -> None:
        tasks = self.store.list(limit=10_000)
        assert sorted(t.id for t in tasks) == sorted(self.tenant)
        for t in tasks:
            assert t.attempts == self.leased[t.id], (t.id, t.attempts, self.leased[t.id])
