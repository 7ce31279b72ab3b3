"""The ``limits`` plugin through the Queue and real workers: stored rules kept by every
lease, held tasks spending no attempt, the API's and the CLI's answers, stats and metrics.
How a held worker is woken (a freed slot, a reopening rate; never polling) is in
``test_limits_wakeups.py``."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hookqueue import FakeClock, Queue, WorkerEngine
from hookqueue.contrib.contracts.scheduler import CHI2_2DF_999, chi_square
from hookqueue.core.cli import main
from hookqueue.core.errors import ValidationError
from hookqueue.core.models import LeasePlan
from hookqueue.plugins.limits import (
    LimitNotFound,
    LimitRule,
    get_limit,
    limit_usage,
    list_limits,
    remove_limit,
    set_limit,
)
from hookqueue.plugins.metrics import QueueMetrics, read_database_gauges
from hookqueue.plugins.priority import WeightedRandom


@pytest.fixture
def q(db_path: Path) -> Iterator[Queue]:
    """A queue with the first-party plugins (limits among them)."""
    queue = Queue(db_path, durability="normal")
    yield queue
    queue.close()


class _Peak:
    """Counts tasks inside their handler at once, per tenant and overall."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    def enter(self, key: str) -> None:
        with self.lock:
            for k in (key, "*"):
                self.now[k] = self.now.get(k, 0) + 1
                self.peak[k] = max(self.peak.get(k, 0), self.now[k])

    def leave(self, key: str) -> None:
        with self.lock:
            for k in (key, "*"):
                self.now[k] -= 1


def test_a_worker_keeps_the_stored_limits(q: Queue) -> None:
    """A worker with 8 slots runs at most 2 tasks per tenant and 3 overall, and every task
    ran exactly once (no attempt spent on waiting)."""
    peak = _Peak()

    async def job(task: Any) -> None:
        import asyncio

        peak.enter(task.payload["tenant"])
        await asyncio.sleep(0.02)
        peak.leave(task.payload["tenant"])

    q.handlers.register_handler("job", job)
    set_limit(q, "per-tenant", partition_by="tenant", concurrency=2)
    set_limit(q, LimitRule(name="all", concurrency=3))
    for i in range(18):
        q.enqueue("job", {"tenant": "abc"[i % 3]})
    stats = WorkerEngine(q, worker_id="w", concurrency=8).run_until_idle()
    assert stats.completed == 18
    assert peak.peak["*"] <= 3 and max(v for k, v in peak.peak.items() if k != "*") <= 2
    assert {t.attempts for t in q.list(limit=100)} == {1}


def test_blocking_the_plugin_leaves_stored_rules_unapplied(db_path: Path) -> None:
    """``block=["limits"]``: the plan does not ask for the stored rules."""
    with Queue(db_path, durability="normal") as q:
        set_limit(q, "one", concurrency=1)
        for _ in range(3):
            q.enqueue("job", {})
        assert len(q.runtime.lease("w", limit=3)) == 1
    with Queue(db_path, durability="normal", block=["limits"]) as q:
        assert len(q.runtime.lease("w2", limit=3)) == 2


def test_the_plan_stays_the_schedulers(q: Queue) -> None:
    """The wrapper only adds ``stored_limits``: the priority plugin's order stays."""
    from hookqueue.core.clock import from_us
    from hookqueue.core.models import LeaseRequest

    request = LeaseRequest(
        worker_id="w", queues=("default",), limit=1, now=from_us(q.clock.now_us()), lease_seconds=1
    )
    plan = q.runtime.hooks.lease(q, request)
    assert isinstance(plan, LeasePlan) and plan.stored_limits is True
    with Queue(q.db.location, durability="normal", block=["limits"]) as other:
        bare = other.runtime.hooks.lease(other, request)
    assert plan.order == bare.order and bare.stored_limits is False


def test_removing_a_limit_releases_what_it_held(q: Queue) -> None:
    """Held tasks run once the rule is removed; removing it again is LimitNotFound."""
    q.handlers.register_handler("job", lambda t: None)
    set_limit(q, "one", concurrency=1)
    for _ in range(3):
        q.enqueue("job", {})
    assert len(q.runtime.lease("dead", limit=3, lease_seconds=600)) == 1
    assert WorkerEngine(q, worker_id="w").run_until_idle().completed == 0
    remove_limit(q, "one")
    assert WorkerEngine(q, worker_id="w").run_until_idle().completed == 2
    with pytest.raises(LimitNotFound, match="no limit named 'one'"):
        remove_limit(q, "one")


def test_a_weighted_scheduler_keeps_its_shares_under_a_stored_limit(db_path: Path) -> None:
    """``WeightedRandom`` 6 : 3 : 1 as the queue's scheduler and a stored rule that never
    binds, through the ``limits`` plugin: 1,200 tasks leased 20 at a time from backlogs 25
    times the window keep the shares (issue #19: under a limit the window was the head of
    the queue again, and they split as enqueued, 415 : 415 : 370)."""
    weights = {"a": 6.0, "b": 3.0, "c": 1.0}
    scheduler = WeightedRandom(weights=weights, window=64, rng=random.Random(20261205))
    with Queue(db_path, durability="normal", plugins=[scheduler]) as q:
        set_limit(q, "roomy", concurrency=10**6)
        q.enqueue_many([{"task_type": t} for _ in range(1600) for t in "abc"])
        counts = Counter(t.task_type for _ in range(60) for t in q.runtime.lease("w", limit=20))
    assert sum(counts.values()) == 1200
    assert chi_square(counts, weights) < CHI2_2DF_999, counts


def test_a_stored_fair_rule_reaches_a_small_tenant_behind_a_weighted_scheduler(
    db_path: Path,
) -> None:
    """A stored fair rule on ``tenant`` with ``WeightedRandom`` by task type as the
    scheduler: a small tenant's 5 tasks enqueued after 1,000 of a big one take turns with
    it from the first lease (issue #19: 0 of 5 were leased)."""
    scheduler = WeightedRandom(window=64, rng=random.Random(1))
    with Queue(db_path, durability="normal", plugins=[scheduler]) as q:
        set_limit(q, "turns", partition_by="tenant", fair=True)
        q.enqueue_many([{"task_type": "job", "payload": {"tenant": "big"}}] * 1000)
        small = q.enqueue_many([{"task_type": "job", "payload": {"tenant": "small"}}] * 5)
        leased = [t for _ in range(3) for t in q.runtime.lease("w", limit=4)]
    assert [t.payload["tenant"] for t in leased[:4]] == ["big", "small"] * 2
    assert {t.id for t in small} <= {t.id for t in leased}


def test_loosening_a_rate_lets_what_it_held_start(queue: Queue, clock: FakeClock) -> None:
    """docs/limits.md: removing a rule *or loosening it* lets the tasks it held start. A rate
    of 1 per 30 s loosened to 10 per second allows the next start 0.1 s after the last one,
    not 30 s after it."""
    set_limit(queue, "api", rate=1, period=30.0)
    for _ in range(3):
        queue.enqueue("job", {})
    assert len(queue.runtime.lease("w", limit=3)) == 1
    assert set_limit(queue, "api", rate=10, period=1.0) == "updated"
    clock.advance(0.2)
    assert len(queue.runtime.lease("w", limit=1)) == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"concurrency": -1}, "concurrency"),
        ({"concurrency": 0}, "concurrency"),
        ({"rate": 5, "period": 0}, "period"),
        ({"rate": 5, "period": -1.0}, "period"),
        ({"rate": 1.5}, "rate"),
        ({"concurrency": True}, "concurrency"),
        ({"rate": 1, "burst": 0}, "burst"),
        ({}, "concurrency"),
        ({"concurrency": 1, "partition_by": "a.b"}, "partition_by"),
        ({"concurrency": 1, "partition_by": "t", "partition_in": "body"}, "partition_in"),
        ({"fair": True}, "fair"),
        ({"concurrency": 1, "queue": ""}, "queue"),
        ({"concurrency": 1, "weights": {"a": 2}}, "weights"),
        ({"fair": True, "partition_by": "t", "weights": {"a": 0}}, "weights['a']"),
        ({"fair": True, "partition_by": "t", "weights": {True: 2}}, "weights"),
        ({"fair": True, "partition_by": "t", "weights": ["a"]}, "weights"),
    ],
)
def test_bad_definitions_name_the_field_and_store_nothing(
    q: Queue, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        set_limit(q, "bad", **fields)
    assert info.value.field == field and "Fix:" in str(info.value)
    assert list_limits(q) == []


def test_a_bad_name_and_mixed_arguments_are_refused(q: Queue) -> None:
    with pytest.raises(ValidationError, match="name="):
        set_limit(q, "has space", concurrency=1)
    with pytest.raises(ValidationError, match="fields"):
        set_limit(q, LimitRule(name="x", concurrency=1), rate=3)
    with pytest.raises(LimitNotFound):
        get_limit(q, "x")


def test_usage_stats_and_metrics_show_what_waits(q: Queue) -> None:
    """``limit_usage``, the health summary (``hookqueue stats``) and the exporters' gauges
    show per limit how many run and how many wait on it."""
    set_limit(q, "per-tenant", partition_by="tenant", concurrency=1)
    for tenant in ("a", "a", "a", "b"):
        q.enqueue("job", {"tenant": tenant})
    q.runtime.lease("w", limit=10)
    usage = {u.partition: u for u in limit_usage(q)}
    assert (usage["a"].running, usage["a"].waiting) == (1, 2)
    summary = QueueMetrics(q).get_queue_health_summary()
    assert summary["limits"] == {"per-tenant": {"running": 2, "waiting": 2}}
    assert read_database_gauges(q).limits == {"per-tenant": (2, 2)}


def test_stats_health_and_prometheus_report_the_real_counts(
    q: Queue, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A binding per-tenant concurrency limit and a rate limit both holding tasks: the health
    summary's ``limits``, the ``limits:`` line of ``hookqueue stats`` (and its ``--json``) and
    the ``hookqueue_limit_tasks`` gauge of a real Prometheus scrape give, per limit, the
    tasks running under it and the due tasks it holds back — summed over its partitions
    (tenant a: 1 running, 3 held; tenant b: 1 running, none held) — and a limit holding
    nothing shows zeros."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from hookqueue.plugins.prometheus import PrometheusExporter

    set_limit(q, "per-tenant", task_type="job", partition_by="tenant", concurrency=1)
    set_limit(q, "api", task_type="call", rate=1, period=3600)  # one start, then an hour
    set_limit(q, "idle", task_type="other", concurrency=5)
    for tenant in "aaaab":
        q.enqueue("job", {"tenant": tenant})
    for _ in range(3):
        q.enqueue("call", {})
    leased = q.runtime.lease("w", limit=20, lease_seconds=600)
    assert sorted(t.task_type for t in leased) == ["call", "job", "job"]
    running = {(t.task_type, (t.payload or {}).get("tenant")) for t in leased}
    assert running == {("call", None), ("job", "a"), ("job", "b")}
    usage = {(u.rule, u.partition): (u.running, u.waiting) for u in limit_usage(q)}
    assert usage == {
        ("per-tenant", "a"): (1, 3),
        ("per-tenant", "b"): (1, 0),
        ("api", None): (1, 2),
    }
    expected = {"api": (1, 2), "idle": (0, 0), "per-tenant": (2, 3)}

    summary = QueueMetrics(q).get_queue_health_summary()
    assert summary["limits"] == {
        name: {"running": r, "waiting": w} for name, (r, w) in expected.items()
    }

    assert main(["stats", "--db", str(db_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("limits:")]
    assert lines == [
        "limits:      api 1 running/2 waiting, idle 0 running/0 waiting, "
        "per-tenant 2 running/3 waiting"
    ]
    assert main(["stats", "--db", str(db_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["limits"] == summary["limits"]

    registry = CollectorRegistry()
    PrometheusExporter([q], registry=registry)
    samples = [
        s
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
        if s.name == "hookqueue_limit_tasks"
    ]
    assert {s.labels["database"] for s in samples} == {q.db.location}
    assert {(s.labels["limit"], s.labels["state"]): s.value for s in samples} == {
        (name, state): float(count)
        for name, counts in expected.items()
        for state, count in zip(("running", "waiting"), counts, strict=True)
    }


def test_cli_set_ls_rm(capsys: pytest.CaptureFixture[str], db_path: Path) -> None:
    db = str(db_path)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run(
        "limits", "set", "api", "--type", "charge", "--rate", "10", "--per", "1m",
        "--burst", "2", "--db", db,
    )  # fmt: skip
    assert code == 0 and "limit 'api' created: every queue, type=charge: 10/60s burst 2" in out
    code, out, _ = run("--db", db, "limits", "set", "t", "--partition-by", "tenant", "--fair")
    assert code == 0 and "round-robin" in out
    code, out, _ = run("limits", "set", "t", "--partition-by", "tenant", "--fair", "--db", db)
    assert "unchanged" in out
    code, out, _ = run(
        "limits", "set", "w", "--partition-by", "tenant", "--fair", "--weight", "gold=3",
        "--weight", "7=2", "--db", db,
    )  # fmt: skip
    assert code == 0 and "round-robin (weights 7×2, gold×3)" in out
    code, out, _ = run("limits", "rm", "w", "--db", db)
    with Queue(db) as q:
        q.enqueue("charge", {"tenant": "a"})
    code, out, _ = run("limits", "ls", "--db", db)
    assert code == 0 and "api" in out and "every queue, every type, per payload.tenant" in out
    code, out, _ = run("limits", "ls", "--db", db, "--json")
    listed = json.loads(out)
    assert [r["name"] for r in listed["limits"]] == ["api", "t"]
    assert listed["limits"][0]["period"] == 60.0
    code, out, _ = run("limits", "rm", "api", "--db", db, "--json")
    assert code == 0 and json.loads(out) == {"removed": "api"}
    code, out, _ = run("limits", "rm", "api", "--db", db)
    assert code == 1 and "no limit named 'api'" in out
    code, out, err = run("limits", "set", "bad", "--concurrency", "0", "--db", db)
    assert code == 2 and "concurrency=0" in out + err and "Fix:" in out + err
    with pytest.raises(SystemExit) as exited:
        main(["limits", "set", "bad", "--rate", "3", "--per", "0s", "--db", db])
    assert exited.value.code == 2 and "longer than 0 seconds" in capsys.readouterr().err
    with Queue(db) as q:
        assert [r.name for r in list_limits(q)] == ["t"]
