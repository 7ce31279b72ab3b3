"""The limits audit: worker processes SIGKILLed at random while concurrency and rate limits
are set; every start and finish is logged by the handlers and checked against the rules."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

import hookqueue.plugins.limits as limits_plugin
from hookqueue import Queue, TaskStatus
from hookqueue.plugins.limits import LimitRule, set_limit

from . import _faults
from .conftest import FaultRecord

pytestmark = pytest.mark.slow

LEASE_SECONDS = 2.0
HEARTBEAT = 0.2
CONCURRENCY = 4
WORKERS = 4
TENANTS = ("a", "b", "c")
#: The rules under audit.
RULES = (
    LimitRule(name="all", concurrency=4),
    LimitRule(name="per-tenant", partition_by="tenant", concurrency=2),
    LimitRule(name="tenant-rate", partition_by="tenant", rate=8, period=1.0, burst=2),
)


def _start(db: Path, logs: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _faults.child_command("_limits_worker.py", db, logs, LEASE_SECONDS, HEARTBEAT, CONCURRENCY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _running_one(logs: Path, pid: int) -> bool:
    """Whether the worker's log shows an attempt started and not ended."""
    log = logs / f"{pid}.log"
    if not log.exists():
        return False
    text = log.read_text()
    return text.count("start ") > text.count("end ")


def _peak(intervals: list[tuple[int, int]]) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def _rate_excess(starts: list[int], interval_us: int, burst: int) -> int:
    """How far the starts exceed the token bucket's bound at worst: for sorted instants
    t_i..t_j, at most ``burst + (t_j - t_i) / interval`` starts (0: never exceeded)."""
    starts = sorted(starts)
    worst = 0
    for i in range(len(starts)):
        for j in range(i, len(starts)):
            allowed = burst + (starts[j] - starts[i]) // interval_us
            worst = max(worst, (j - i + 1) - allowed)
    return worst


def test_limits_hold_across_worker_processes_killed_at_random(
    tmp_path: Path, fault: FaultRecord
) -> None:
    """4 worker processes, 6 SIGKILLs, limits of 4 running overall, 2 running per tenant and
    8 starts per second per tenant (burst 2): no instant has more handlers running than a
    limit allows (a killed worker's task counts until its lease expires), no tenant starts
    faster than its rate, no task is lost, and every attempt beyond the first was spent by a
    killed worker's lease — none on waiting for a limit."""
    fault.describe("4 workers SIGKILLed at random under concurrency and rate limits")
    rng = random.Random(19)
    db = tmp_path / "queue.db"
    logs = tmp_path / "logs"
    logs.mkdir()
    n_tasks, kills = 240, 6
    with Queue(db, load_entrypoints=False, plugins=[limits_plugin]) as q:
        for rule in RULES:
            set_limit(q, rule)
        q.enqueue_many(
            [
                {
                    "task_type": "job",
                    "payload": {"i": i, "tenant": TENANTS[i % 3]},
                    "max_attempts": 50,
                }
                for i in range(n_tasks)
            ]
        )
    started = time.monotonic()
    workers = [_start(db, logs) for _ in range(WORKERS)]
    killed_at: dict[int, int] = {}
    try:
        for _ in range(kills):
            # A worker that is running a task now (its log has a start without its end), so
            # the kill interrupts an attempt whose slot the limits must keep counting.
            deadline = time.monotonic() + rng.uniform(0.4, 1.2)
            busy: list[subprocess.Popen[str]] = []
            while time.monotonic() < deadline or not busy:
                busy = [w for w in workers if _running_one(logs, w.pid)]
                time.sleep(0.01)
                assert time.monotonic() < deadline + 30, "no worker ran a task within 30s"
            victim = rng.choice(busy)
            victim.send_signal(signal.SIGKILL)
            victim.communicate(timeout=10)
            killed_at[victim.pid] = time.time_ns() // 1000
            fault.inject()
            workers.remove(victim)
            workers.append(_start(db, logs))
        deadline = time.monotonic() + 90
        with Queue(db, load_entrypoints=False) as q:
            while q.counts()["completed"] < n_tasks:
                assert time.monotonic() < deadline, f"unfinished after 90s: {q.counts()}"
                time.sleep(0.1)
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                w.kill()
                w.communicate()
    elapsed = time.monotonic() - started
    for w in workers:
        assert w.returncode == 0, f"worker {w.pid} did not shut down cleanly: {w.returncode}"

    # Every attempt a handler began: (task, attempt) -> (pid, tenant, lease instant, start, end)
    runs: dict[tuple[int, int], dict[str, int | str]] = {}
    for log in logs.glob("*.log"):
        for line in log.read_text().splitlines():
            kind, tid, attempt, pid, tenant, leased, wall = line.split()
            run = runs.setdefault((int(tid), int(attempt)), {"pid": int(pid), "tenant": tenant})
            if kind == "start":
                run["leased"], run["start"] = int(leased), int(wall)
            else:
                run["end"] = int(wall)
    lost_by: dict[int, int] = {}
    for stats in logs.glob("*.stats.json"):
        data = json.loads(stats.read_text())
        lost_by[data["pid"]] = data["lost"]

    with Queue(db, load_entrypoints=False) as q:
        tasks = q.list(limit=10_000)
        histories = {t.id: q.history(t.id) for t in tasks}
        assert q.check() == []
    assert sorted(t.payload["i"] for t in tasks) == list(range(n_tasks)), "a task was lost"
    assert all(t.status is TaskStatus.COMPLETED for t in tasks)

    # No attempt spent on waiting: every attempt but the last ended by the expired lease of a
    # killed worker (or one that reported losing its lease).
    spent_elsewhere = []
    for t in tasks:
        failures = histories[t.id]
        assert t.attempts == len(failures) + 1, (t.id, t.attempts, failures)
        for f in failures:
            pid = int((f.worker_id or "worker-0").rsplit("-", 1)[1])
            if f.outcome != "lease_expired" or (pid not in killed_at and not lost_by.get(pid)):
                spent_elsewhere.append((t.id, f.attempt, f.worker_id, f.outcome))
    assert spent_elsewhere == [], f"attempts spent other than by a killed worker: {spent_elsewhere}"

    # Concurrency: a handler runs from its start to its end, or to its process's death.
    intervals: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for (tid, _), run in runs.items():
        if "start" not in run:
            continue
        end = run.get("end", killed_at.get(int(run["pid"])))
        assert end is not None, f"task {tid}: a handler never ended in a live process"
        span = (int(run["start"]), int(end))
        intervals["*"].append(span)
        intervals[str(run["tenant"])].append(span)
    peak_all = _peak(intervals["*"])
    peak_tenant = max(_peak(intervals[t]) for t in TENANTS)
    assert peak_all <= 4, f"{peak_all} handlers ran at once (limit 4)"
    assert peak_tenant <= 2, f"{peak_tenant} handlers of one tenant ran at once (limit 2)"

    # Rate: the lease instants of each tenant's starts keep the token bucket's bound.
    interval_us = RULES[2].interval_us
    excess = {
        tenant: _rate_excess(
            [int(r["leased"]) for r in runs.values() if r["tenant"] == tenant and "leased" in r],
            interval_us,
            RULES[2].burst,
        )
        for tenant in TENANTS
    }
    assert all(v <= 0 for v in excess.values()), f"starts beyond the rate: {excess}"
    per_second = Counter(
        (r["tenant"], int(r["leased"]) // 1_000_000) for r in runs.values() if "leased" in r
    )

    fault.figure("tasks", n_tasks)
    fault.figure("SIGKILLs", len(killed_at))
    fault.figure("limit violations", 0)
    fault.figure("peak running (limit 4)", peak_all)
    fault.figure("peak running per tenant (limit 2)", peak_tenant)
    fault.figure(
        "most starts of a tenant in a clock second (8/s, burst 2)", max(per_second.values())
    )
    fault.figure("attempts spent by killed workers", sum(len(h) for h in histories.values()))
    fault.figure("lost tasks", n_tasks - len({t.payload["i"] for t in tasks}))
    fault.figure("seconds", round(elapsed, 1))
