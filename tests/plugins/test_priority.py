"""The ``priority`` plugin: strict priority, FIFO, LIFO, aging, weighted random, fair share."""

from __future__ import annotations

import collections
import logging
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from _first_party import OTHERS, START, make_queue

from hookqueue import FakeClock, PluginError, Queue, Task, ValidationError, WorkerEngine
from hookqueue.contrib.contracts.scheduler import CHI2_2DF_999, SchedulerContract, chi_square
from hookqueue.core.clock import to_us
from hookqueue.core.models import Candidate, LeaseRequest
from hookqueue.core.plugins import plugin_statuses
from hookqueue.plugins import priority
from hookqueue.plugins.priority import (
    PRIORITY_PLAN,
    Aging,
    FairShare,
    Fifo,
    Lifo,
    PerQueue,
    StrictPriority,
    WeightedRandom,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "q.db"


@pytest.fixture
def queue(db: Path, clock: FakeClock) -> Iterator[Queue]:
    q = make_queue(db, clock)
    yield q
    q.close()


def lease_one_by_one(queue: Queue, queues: Sequence[str] = ("default",)) -> list[Task]:
    out: list[Task] = []
    while batch := queue.runtime.lease("w", queues=queues, limit=1):
        out += batch
    return out


# ---------------------------------------------------------------------------------------------
# the contract, for each scheduler
# ---------------------------------------------------------------------------------------------


class _Isolated:
    queue_kwargs = {"block": OTHERS}


def _by_priority(tasks: Sequence[Task]) -> list[int]:
    return [t.id for t in sorted(tasks, key=lambda t: (t.priority, t.run_after, t.id))]


class TestStrictPriorityContract(_Isolated, SchedulerContract):
    def make_scheduler(self) -> Any:
        return StrictPriority()

    def expected_order(self, tasks: Sequence[Task]) -> list[int]:
        return _by_priority(tasks)


class TestFifoContract(_Isolated, SchedulerContract):
    def make_scheduler(self) -> Any:
        return Fifo()

    def expected_order(self, tasks: Sequence[Task]) -> list[int]:
        return [t.id for t in sorted(tasks, key=lambda t: (t.run_after, t.id))]


class TestLifoContract(_Isolated, SchedulerContract):
    def make_scheduler(self) -> Any:
        return Lifo()

    def expected_order(self, tasks: Sequence[Task]) -> list[int]:
        return [t.id for t in sorted(tasks, key=lambda t: (t.run_after, t.id), reverse=True)]


class TestAgingContract(_Isolated, SchedulerContract):
    def make_scheduler(self) -> Any:
        return Aging(aging_seconds=30)

    def expected_order(self, tasks: Sequence[Task]) -> list[int]:
        # The contract leases at the instant it enqueued: nothing has aged yet.
        return _by_priority(tasks)


class TestWeightedRandomContract(_Isolated, SchedulerContract):
    def make_scheduler(self) -> Any:
        return WeightedRandom(weights={"a": 3, "b": 2}, rng=random.Random(5))


class TestWeightedRandomByTenantContract(_Isolated, SchedulerContract):
    def make_scheduler(self) -> Any:
        return WeightedRandom(partition_key="tenant", weights={"t1": 5}, rng=random.Random(6))


class TestFairShareContract(_Isolated, SchedulerContract):
    def make_scheduler(self) -> Any:
        return FairShare()


class TestFairShareByTenantContract(_Isolated, SchedulerContract):
    def make_scheduler(self) -> Any:
        return FairShare(partition_key="tenant", weights={"t2": 2}, respect_priority=False)


class TestPerQueueContract(_Isolated, SchedulerContract):
    def make_scheduler(self) -> Any:
        return PerQueue(queues={"default": Lifo(), "other": Fifo()})

    def expected_order(self, tasks: Sequence[Task]) -> list[int]:
        return [t.id for t in sorted(tasks, key=lambda t: (t.run_after, t.id), reverse=True)]


# ---------------------------------------------------------------------------------------------
# the plugin and its default
# ---------------------------------------------------------------------------------------------


def test_the_module_is_loaded_from_its_entry_point(queue: Queue) -> None:
    status = {s.name: s for s in plugin_statuses(queue.pm)}["priority"]
    assert status.state == "active" and status.hooks == ("hookqueue_lease",)
    assert queue.pm.get_plugin("priority") is priority
    request = LeaseRequest(worker_id="w", queues=("default",), limit=1, now=START, lease_seconds=10)
    assert queue.hooks.lease(queue, request) is PRIORITY_PLAN


def test_default_is_strict_priority_fifo_within_a_priority(queue: Queue, clock: FakeClock) -> None:
    tasks = [queue.enqueue("t", {"i": i}, priority=p) for i, p in enumerate([5, 1, 3, 1, 9, 5, 1])]
    clock.advance(1)
    assert [t.id for t in lease_one_by_one(queue)] == _by_priority(tasks)
    assert [t.priority for t in _sorted(tasks, _by_priority(tasks))] == [1, 1, 1, 3, 5, 5, 9]


def _sorted(tasks: Sequence[Task], ids: list[int]) -> list[Task]:
    by_id = {t.id: t for t in tasks}
    return [by_id[i] for i in ids]


def test_within_a_priority_the_earliest_due_goes_first(queue: Queue, clock: FakeClock) -> None:
    late = queue.enqueue("t", priority=1, delay=10)  # enqueued first, due later
    early = queue.enqueue("t", priority=1)
    other = queue.enqueue("t", priority=2)
    clock.advance(10)
    assert [t.id for t in lease_one_by_one(queue)] == [early.id, late.id, other.id]


def test_blocking_the_plugin_leaves_fifo(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, block=("priority",)) as queue:
        tasks = [queue.enqueue("t", priority=p) for p in [5, 1, 3]]
        assert [t.id for t in lease_one_by_one(queue)] == [t.id for t in tasks]


def test_a_scheduler_works_with_the_module_blocked(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, Lifo(), block=("priority",)) as queue:
        tasks = [queue.enqueue("t", priority=p) for p in [5, 1, 3]]
        assert [t.id for t in lease_one_by_one(queue)] == [t.id for t in reversed(tasks)]


def test_two_schedulers_are_refused(db: Path, clock: FakeClock) -> None:
    with pytest.raises(PluginError, match="'scheduler'"):
        make_queue(db, clock, Fifo(), Lifo())


# ---------------------------------------------------------------------------------------------
# aging: a bounded wait
# ---------------------------------------------------------------------------------------------


def _wait_behind_a_stream(
    queue: Queue, clock: FakeClock, *, step: float, steps: int
) -> float | None:
    """One low-priority task waits while a priority-0 task arrives every ``step`` seconds and
    one task is leased per step (and kept: long leases). Returns how long the low task waited,
    or None if it never ran."""
    low = queue.enqueue("low", priority=100)
    for _ in range(steps):
        queue.enqueue("high", priority=0)
        clock.advance(step)
        [leased] = queue.runtime.lease("w", limit=1, lease_seconds=10**6)
        if leased.id == low.id:
            return (clock.now() - low.created_at).total_seconds()
    return None


def test_aging_bounds_the_wait_behind_urgent_work(db: Path, clock: FakeClock) -> None:
    aging, step = 10.0, 10.0
    with make_queue(db, clock, Aging(aging_seconds=aging)) as queue:
        waited = _wait_behind_a_stream(queue, clock, step=step, steps=300)
    assert waited is not None
    # It overtakes fresh priority-0 work after (100 - 0) * aging seconds, plus the age of the
    # competing task and one step of slack; and not much earlier, since priority still counts.
    assert (100 - 2) * aging <= waited <= 100 * aging + 2 * step


def test_strict_priority_starves_the_same_task(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, StrictPriority()) as queue:
        assert _wait_behind_a_stream(queue, clock, step=10.0, steps=300) is None


def test_aging_orders_by_priority_improved_by_waiting(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, Aging(aging_seconds=60)) as queue:
        old = queue.enqueue("t", priority=10)
        clock.advance(60 * 8)  # old's effective priority is now 2
        mid = queue.enqueue("t", priority=3)
        new = queue.enqueue("t", priority=1)
        assert [t.id for t in lease_one_by_one(queue)] == [new.id, old.id, mid.id]


# ---------------------------------------------------------------------------------------------
# weighted random
# ---------------------------------------------------------------------------------------------


def test_weighted_random_picks_in_proportion_to_weight(db: Path, clock: FakeClock) -> None:
    weights = {"a": 1.0, "b": 2.0, "c": 3.0}
    scheduler = WeightedRandom(weights=weights, window=4096, rng=random.Random(20240601))
    with make_queue(db, clock, scheduler) as queue:
        # Interleaved, so every group stays in the window; enough that none runs out.
        queue.enqueue_many([{"task_type": t} for _ in range(700) for t in "abc"])
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(60):
            counts.update(t.task_type for t in queue.runtime.lease("w", limit=20))
    assert sum(counts.values()) == 1200
    assert chi_square(counts, weights) < CHI2_2DF_999
    # Uniform choice would be far outside the bound: the test can tell the two apart.
    assert (
        chi_square(collections.Counter({"a": 400, "b": 400, "c": 400}), weights) > 10 * CHI2_2DF_999
    )


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_weighted_random_rerank_is_proportional_for_any_seed(seed: int) -> None:
    weights = {"x": 5.0, "y": 1.0, "z": 0.5}
    scheduler = WeightedRandom(weights=weights, rng=random.Random(seed))
    now = to_us(START, "now")
    window = [
        Candidate(
            id=i,
            task_type="xyz"[i % 3],
            priority=0,
            queue="default",
            created_at_us=now,
            run_after_us=now,
        )
        for i in range(30)
    ]
    counts: collections.Counter[str] = collections.Counter()
    kind = {c.id: c.task_type for c in window}
    for _ in range(3000):
        [chosen] = scheduler.rerank(window, 1)
        counts[kind[chosen]] += 1
    assert chi_square(counts, weights) < CHI2_2DF_999


def test_weighted_random_takes_each_groups_best_task(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, WeightedRandom(rng=random.Random(1))) as queue:
        worst = queue.enqueue("a", priority=9)
        best = queue.enqueue("a", priority=1)
        [first] = queue.runtime.lease("w", limit=1)
        assert first.id == best.id
        assert queue.runtime.lease("w", limit=1)[0].id == worst.id


def test_weighted_random_by_queue_and_default_weight(db: Path, clock: FakeClock) -> None:
    scheduler = WeightedRandom(
        by="queue", weights={"bulk": 1}, default_weight=4, rng=random.Random(9)
    )
    with make_queue(db, clock, scheduler) as queue:
        queue.enqueue_many(
            [{"task_type": "t", "queue": q} for _ in range(300) for q in ("bulk", "mail")]
        )
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(25):
            counts.update(
                t.queue for t in queue.runtime.lease("w", queues=("bulk", "mail"), limit=10)
            )
    share = counts["mail"] / sum(counts.values())
    assert 0.72 < share < 0.88  # 4 / (4 + 1) = 0.8


# ---------------------------------------------------------------------------------------------
# fair share
# ---------------------------------------------------------------------------------------------


def test_fair_share_serves_a_small_tenant_during_a_burst(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, FairShare(partition_key="tenant")) as queue:
        queue.enqueue_many([{"task_type": "job", "payload": {"tenant": "big"}} for _ in range(200)])
        small = queue.enqueue_many(
            [{"task_type": "job", "payload": {"tenant": t}} for t in ("s1", "s2") for _ in range(5)]
        )
        order = [t.payload["tenant"] for t in lease_one_by_one(queue)]
    # Turns rotate big, s1, s2 while all three wait: the small tenants finish within 15 leases.
    assert order[:6] == ["big", "s1", "s2", "big", "s1", "s2"]
    assert {i for i, t in enumerate(order) if t != "big"} <= set(range(15))
    assert len(order) == 200 + len(small)


def test_strict_priority_would_make_them_wait_for_the_burst(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, StrictPriority()) as queue:
        queue.enqueue_many([{"task_type": "job", "payload": {"tenant": "big"}} for _ in range(200)])
        queue.enqueue("job", {"tenant": "s1"})
        order = [t.payload["tenant"] for t in lease_one_by_one(queue)]
    assert order.index("s1") == 200


def test_fair_share_weights_divide_the_turns(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, FairShare(weights={"a": 3})) as queue:
        queue.enqueue_many([{"task_type": t} for t in "ab" for _ in range(100)])
        counts = collections.Counter(t.task_type for t in queue.runtime.lease("w", limit=40))
    assert counts == {"a": 30, "b": 10}


def test_fair_share_respects_priority_between_groups(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, FairShare()) as queue:
        queue.enqueue_many([{"task_type": "a"} for _ in range(3)])
        urgent = queue.enqueue("b", priority=0)
        assert queue.runtime.lease("w", limit=1)[0].id == urgent.id


def test_fair_share_without_priority_takes_turns_only(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, FairShare(respect_priority=False)) as queue:
        queue.enqueue_many([{"task_type": "a", "priority": 0} for _ in range(4)])
        queue.enqueue_many([{"task_type": "b", "priority": 50} for _ in range(4)])
        order = [t.task_type for t in lease_one_by_one(queue)]
    assert order == ["a", "b"] * 4


def test_fair_share_gives_a_returning_group_no_credit(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, FairShare()) as queue:
        queue.enqueue_many([{"task_type": "a"} for _ in range(60)])
        assert {t.task_type for t in queue.runtime.lease("w", limit=50)} == {"a"}
        queue.enqueue_many([{"task_type": "b"} for _ in range(10)])
        order = [t.task_type for t in lease_one_by_one(queue)]
    # b was idle while a ran 50 times; it now alternates with a instead of running 10 in a row.
    assert order[:6] in (["b", "a"] * 3, ["a", "b"] * 3)


def test_fair_share_groups_tasks_without_the_key_together(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, FairShare(partition_key="tenant")) as queue:
        queue.enqueue_many([{"task_type": "j", "payload": {"other": 1}} for _ in range(5)])
        queue.enqueue_many([{"task_type": "j", "payload": [1, 2]} for _ in range(5)])
        queue.enqueue("j", {"tenant": "t"})
        order = [t.payload for t in lease_one_by_one(queue)]
    assert order.index({"tenant": "t"}) == 1


@pytest.mark.parametrize("per_group", [True, False])
def test_a_partition_value_that_is_an_object_or_a_list_is_a_group(
    db: Path, clock: FakeClock, per_group: bool
) -> None:
    # Before, an unhashable value made every lease of the queue raise TypeError.
    with make_queue(db, clock, FairShare(partition_key="tenant", per_group=per_group)) as queue:
        for tenant in ({"org": 1, "team": 2}, {"team": 2, "org": 1}, ["a"], "s"):
            queue.enqueue("j", {"tenant": tenant})
        order = [t.payload["tenant"] for t in lease_one_by_one(queue)]
    assert len(order) == 4
    # The two equal objects are one group: it takes its second turn after the others.
    assert order[-1] == {"org": 1, "team": 2}


def test_a_window_larger_than_the_burst_keeps_fairness(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, FairShare(window=2048)) as queue:
        queue.enqueue_many([{"task_type": "burst"} for _ in range(1500)])
        late = queue.enqueue("late")
        leased = queue.runtime.lease("w", limit=2)
    assert late.id in {t.id for t in leased}


def test_fair_share_turns_are_shared_by_in_process_workers(db: Path, clock: FakeClock) -> None:
    scheduler = FairShare()
    with make_queue(db, clock, scheduler) as queue:
        ran: list[str] = []
        for t in "ab":
            queue.handlers.register_handler(t, lambda task: ran.append(task.task_type))
        queue.enqueue_many([{"task_type": t} for t in "ab" for _ in range(20)])
        stats = WorkerEngine(queue, worker_id="w", concurrency=4).run_until_idle()
    assert stats.completed == 40
    assert abs(ran[:20].count("a") - ran[:20].count("b")) <= 4


# The drift of issue #19: with every group's backlog far above the window, the window held
# only the tasks nearest the head of the queue, so a heavy group ran at the rate the light
# groups' backlogs let it into the window: 6:3:1 drifted to the enqueue mix, ~1:1:1.


def test_weighted_random_holds_its_shares_when_backlogs_exceed_the_window(
    db: Path, clock: FakeClock
) -> None:
    weights = {"a": 6.0, "b": 3.0, "c": 1.0}
    scheduler = WeightedRandom(weights=weights, window=64, rng=random.Random(20261205))
    with make_queue(db, clock, scheduler) as queue:
        # Interleaved, each group's backlog 25 times the window; none runs out below.
        queue.enqueue_many([{"task_type": t} for _ in range(1600) for t in "abc"])
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(60):
            counts.update(t.task_type for t in queue.runtime.lease("w", limit=20))
    assert sum(counts.values()) == 1200
    assert chi_square(counts, weights) < CHI2_2DF_999


def test_weighted_random_reaches_a_group_behind_another_groups_backlog(
    db: Path, clock: FakeClock
) -> None:
    weights = {"a": 6.0, "b": 3.0, "c": 1.0}
    scheduler = WeightedRandom(weights=weights, window=64, rng=random.Random(7))
    with make_queue(db, clock, scheduler) as queue:
        # Enqueued one group after the other: b and c sit behind 1,600 of a's tasks.
        queue.enqueue_many([{"task_type": t} for t in "abc" for _ in range(1600)])
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(60):
            counts.update(t.task_type for t in queue.runtime.lease("w", limit=20))
    assert chi_square(counts, weights) < CHI2_2DF_999


def test_fair_share_holds_its_weights_when_backlogs_exceed_the_window(
    db: Path, clock: FakeClock
) -> None:
    scheduler = FairShare(partition_key="tenant", weights={"gold": 3}, window=32)
    with make_queue(db, clock, scheduler) as queue:
        queue.enqueue_many(
            [
                {"task_type": "j", "payload": {"tenant": t}}
                for _ in range(500)
                for t in ("gold", "tin")
            ]
        )
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(20):
            counts.update(t.payload["tenant"] for t in queue.runtime.lease("w", limit=20))
    assert counts == {"gold": 300, "tin": 100}


def test_without_per_group_the_window_is_the_head_of_the_queue(db: Path, clock: FakeClock) -> None:
    # The opt-out keeps the index read of the first `window` due tasks, and its drift.
    scheduler = FairShare(partition_key="tenant", window=16, per_group=False)
    with make_queue(db, clock, scheduler) as queue:
        queue.enqueue_many([{"task_type": "j", "payload": {"tenant": "big"}} for _ in range(40)])
        small = queue.enqueue("j", {"tenant": "small"})
        first = queue.runtime.lease("w", limit=2)
        assert small.id not in {t.id for t in first}
        assert small.id in {t.id for t in lease_one_by_one(queue)[:26]}


def test_fair_share_serves_a_tenant_behind_a_burst_larger_than_the_window(
    db: Path, clock: FakeClock
) -> None:
    with make_queue(db, clock, FairShare(partition_key="tenant", window=16)) as queue:
        queue.enqueue_many([{"task_type": "j", "payload": {"tenant": "big"}} for _ in range(2000)])
        small = queue.enqueue("j", {"tenant": "small"})
        leased = queue.runtime.lease("w", limit=2)
    assert small.id in {t.id for t in leased}


# ---------------------------------------------------------------------------------------------
# per-queue schedulers
# ---------------------------------------------------------------------------------------------


def test_per_queue_uses_each_queues_scheduler(db: Path, clock: FakeClock) -> None:
    with make_queue(
        db, clock, PerQueue(queues={"mail": Fifo()}, default=StrictPriority())
    ) as queue:
        mail = [queue.enqueue("t", priority=p, queue="mail") for p in [5, 1]]
        other = [queue.enqueue("t", priority=p, queue="jobs") for p in [5, 1]]
        assert [t.id for t in lease_one_by_one(queue, ("mail",))] == [t.id for t in mail]
        assert [t.id for t in lease_one_by_one(queue, ("jobs",))] == [t.id for t in reversed(other)]


def test_per_queue_mixed_lease_uses_the_default_and_says_so(
    db: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = PerQueue(queues={"mail": Lifo()}, default=Fifo())
    with make_queue(db, clock, scheduler) as queue, caplog.at_level(logging.WARNING):
        tasks = [queue.enqueue("t", queue=q) for q in ("mail", "jobs", "mail")]
        assert [t.id for t in lease_one_by_one(queue, ("mail", "jobs"))] == [t.id for t in tasks]
    warnings = [r for r in caplog.records if "different schedulers" in r.getMessage()]
    assert len(warnings) == 1


# ---------------------------------------------------------------------------------------------
# configuration errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Aging(aging_seconds=0), "aging_seconds"),
        (lambda: Aging(aging_seconds=float("nan")), "aging_seconds"),
        (lambda: FairShare(window=0), "window"),
        (lambda: WeightedRandom(window=10**9), "window"),
        (lambda: FairShare(by="tenant"), "by"),  # type: ignore[arg-type]
        (lambda: FairShare(by="partition"), "partition_key"),
        (lambda: WeightedRandom(by="queue", partition_key="tenant"), "partition_key"),
        (lambda: WeightedRandom(weights={"a": 0}), "weights['a']"),
        (lambda: WeightedRandom(weights=[("a", 1)]), "weights"),
        (lambda: FairShare(default_weight=-1), "default_weight"),
        (lambda: FairShare(per_group=1), "per_group"),
        (lambda: WeightedRandom(per_group="no"), "per_group"),
        (lambda: PerQueue(queues={"mail": "fifo"}), "queues['mail']"),
        (lambda: PerQueue(default=priority), "default"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(make: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make()
    assert info.value.field == field
    assert "Fix:" in str(info.value)


# ---------------------------------------------------------------------------------------------
# the documentation's examples run
# ---------------------------------------------------------------------------------------------


DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_examples_in_docs_scheduling_md_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOOKQUEUE_DISABLE_PLUGINS", ",".join(OTHERS))
    blocks = re.findall(
        r"```python\n(.*?)```", (DOCS / "scheduling.md").read_text(), flags=re.DOTALL
    )
    assert len(blocks) >= 6
    namespace: dict[str, Any] = {"__name__": "docs_scheduling"}
    for block in blocks:
        exec(compile(block, str(DOCS / "scheduling.md"), "exec"), namespace)
    # The custom scheduler of the last section leases small tasks first.
    with make_queue(
        tmp_path / "custom.db", FakeClock(START), namespace["ShortestFirst"]()
    ) as queue:
        big = queue.enqueue("t", {"size": 50})
        small = queue.enqueue("t", {"size": 2})
        assert [t.id for t in lease_one_by_one(queue)] == [small.id, big.id]
