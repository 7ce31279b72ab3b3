"""The PostgreSQL store's limits: the whole limits contract
(:mod:`hookqueue.contrib.contracts.limits`) on a real server, and what only PostgreSQL needs
shown — concurrent leases from several connections and processes never overshooting a
limit, freed slots waking workers in other processes through NOTIFY, a worker process with
the limits plugin run end to end, the migration of a version 3 schema."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest

import hookqueue.plugins.postgres as pg_plugin
from hookqueue import Queue
from hookqueue.contrib.contracts.limits import LimitStoreContract
from hookqueue.contrib.contracts.store import make_row
from hookqueue.core.errors import DatabaseBusy
from hookqueue.core.models import LeasePlan, LeaseRequest, LimitRule, Task, TaskStatus
from hookqueue.core.storage import Settlement, TaskStore
from hookqueue.plugins.postgres import PostgresStore
from hookqueue.plugins.priority import FairShare

_SCHEMAS = itertools.count(1)


class TestPostgresLimits(LimitStoreContract):
    """The limits contract, on a new schema of a new database per test."""

    @pytest.fixture(autouse=True)
    def _database(self, postgres_dsn: str) -> None:
        self.dsn = postgres_dsn

    def make_store(self, tmp_path: Path) -> TaskStore:
        """A new schema in the test's database (created on first use)."""
        return PostgresStore(self.dsn, schema=f"lim{next(_SCHEMAS)}", durability="normal")


class TestPostgresLimitsInParallelPlans(TestPostgresLimits):
    """The limits contract again, where every query is planned in parallel if it may be:
    ``limit_bucket`` and ``payload_part`` catch a damaged payload in an exception block,
    which PostgreSQL before 17 refuses in a parallel plan ("cannot start subtransactions
    during a parallel operation"). Marked PARALLEL UNSAFE (schema version 5), the rules'
    counts, the fair ranking, the grouped windows and ``limit_usage`` are planned without
    parallelism and run. (Under the version 4 schema 16 of these tests failed so; 15 with
    the ``max_parallel_workers_per_gather = 0`` that grouped windows were sent before.)"""

    @pytest.fixture(autouse=True)
    def _database(self, postgres_parallel_dsn: str) -> None:
        self.dsn = postgres_parallel_dsn


# -- PostgreSQL only -----------------------------------------------------------------------------

HERE = Path(__file__).resolve().parent
CHILD = HERE / "_limits_child.py"
SECOND = 1_000_000


def _store(dsn: str, schema: str = "hookqueue") -> PostgresStore:
    return PostgresStore(dsn, schema=schema, durability="normal")


def _now() -> int:
    return int(time.time() * SECOND)


def _lease(store: PostgresStore, worker: str, limit: int = 5) -> list[Task]:
    leased, _ = store.lease(
        worker_id=worker,
        queues=["default"],
        limit=limit,
        now_us=_now(),
        lease_us=600 * SECOND,
        plan=LeasePlan(stored_limits=True),
        decide_expired=lambda t: (None, "expired"),
    )
    return leased


def _storm_threads(dsn: str, threads: int = 8, rounds: int = 10) -> list[Task]:
    """``threads`` stores (a pool each) leasing at once, ``rounds`` times each."""
    stores = [_store(dsn) for _ in range(threads)]
    for s in stores:
        s.initialize_schema()
    barrier = threading.Barrier(threads)
    got: list[Task] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(30)
            for _ in range(rounds):
                leased = _lease(stores[i], f"t{i}")
                with lock:
                    got.extend(leased)
        except BaseException as exc:  # reported below
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    for s in stores:
        s.close()
    assert errors == []
    return got


def test_concurrent_leases_on_many_connections_never_overshoot(postgres_dsn: str) -> None:
    """Eight connections leasing at once under READ COMMITTED: the rule's locks serialise
    them, so exactly the limit's worth starts — overall, per tenant, and again after slots
    free."""
    with _store(postgres_dsn) as store:
        store.set_limit(LimitRule(name="three", concurrency=3), _now())
        rows = [make_row(_now(), payload_json=json.dumps({"tenant": i % 4})) for i in range(60)]
        store.insert(rows, _now())
        first = _storm_threads(postgres_dsn)
        assert len(first) == 3
        assert len({t.id for t in first}) == 3
        done = first[:2]
        for t in done:
            store.settle(t.locked_by or "", [Settlement(task_id=t.id, kind="complete")], _now())
        second = _storm_threads(postgres_dsn)
        assert len(second) == 2
        assert store.counts()["running"] == 3

        store.delete_limit("three")
        store.set_limit(LimitRule(name="tenant", concurrency=2, partition_by="tenant"), _now())
        third = _storm_threads(postgres_dsn)
        running = [t for t in store.list(statuses=[TaskStatus.RUNNING], limit=1000)]
        per_tenant = Counter(t.payload["tenant"] for t in running)
        assert per_tenant == {0: 2, 1: 2, 2: 2, 3: 2}, (per_tenant, len(third))


@pytest.mark.slow
def test_leases_from_several_processes_never_overshoot(postgres_dsn: str, tmp_path: Path) -> None:
    """Three processes leasing at once (released together by a file): a concurrency limit
    and then a rate's burst hold exactly across them."""

    def storm(tag: str) -> list[int]:
        go = tmp_path / f"go-{tag}"
        procs = [
            subprocess.Popen(
                [sys.executable, str(CHILD), "storm", postgres_dsn, "hookqueue", str(go), "20"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            for _ in range(3)
        ]
        time.sleep(1.5)  # let them import and connect; they wait for the file
        go.touch()
        ids: list[int] = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
            ids += [int(x) for x in out.split()]
        return ids

    with _store(postgres_dsn) as store:
        store.set_limit(LimitRule(name="four", concurrency=4), _now())
        store.insert([make_row(_now()) for _ in range(40)], _now())
        first = storm("c")
        assert len(first) == len(set(first)) == 4
        for t in store.list(statuses=[TaskStatus.RUNNING], limit=100):
            store.settle(t.locked_by or "", [Settlement(task_id=t.id, kind="complete")], _now())
        store.delete_limit("four")
        store.set_limit(LimitRule(name="burst", rate=1, period=3600.0, burst=3), _now())
        second = storm("r")
        assert len(second) == len(set(second)) == 3
        assert store.counts()["running"] == 3


def _drain(watcher: Any) -> None:
    while watcher.wait(0.05):
        pass


def test_only_the_leases_a_rule_concerns_take_its_lock(postgres_dsn: str) -> None:
    """While another session holds a rule's advisory lock, a lease of that rule's queue
    waits for it (here: past ``busy_timeout``, DatabaseBusy, nothing leased) — and a lease
    of another queue, which no rule concerns, takes no lock and goes on."""
    from hookqueue.plugins.postgres.limiting import lock_key

    with PostgresStore(postgres_dsn, durability="normal", busy_timeout=0.5) as store:
        store.set_limit(LimitRule(name="slow-queue", queue="limited", concurrency=5), _now())
        store.insert([make_row(_now(), queue=q) for q in ("limited", "free")], _now())
        plan = LeasePlan(stored_limits=True)

        def lease(queue: str) -> list[Task]:
            leased, _ = store.lease(
                worker_id="w",
                queues=[queue],
                limit=5,
                now_us=_now(),
                lease_us=SECOND,
                plan=plan,
                decide_expired=lambda t: (None, ""),
            )
            return leased

        with psycopg.connect(postgres_dsn, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (lock_key("hookqueue", "slow-queue"),))
            assert [t.queue for t in lease("free")] == ["free"]
            with pytest.raises(DatabaseBusy):
                lease("limited")
            holder.execute("SELECT pg_advisory_unlock_all()")
        assert [t.queue for t in lease("limited")] == ["limited"]


def test_a_freed_slot_notifies_the_workers(postgres_dsn: str) -> None:
    """A settlement (or an expiry) of a task a stored concurrency rule counts wakes the
    listening workers — the held ones have work again; one no rule counts notifies
    nobody, as before limits; deleting a rule notifies too."""
    with _store(postgres_dsn) as store:
        store.set_limit(LimitRule(name="one", task_type="limited", concurrency=1), _now())
        store.insert(
            [make_row(_now(), task_type="limited") for _ in range(2)]
            + [make_row(_now(), task_type="free")],
            _now(),
        )
        leased = _lease(store, "w1", limit=10)
        assert sorted(t.task_type for t in leased) == ["free", "limited"]
        watcher = store.watch_changes()
        try:
            _drain(watcher)
            free = next(t for t in leased if t.task_type == "free")
            store.settle("w1", [Settlement(task_id=free.id, kind="complete")], _now())
            assert watcher.wait(0.5) is False, "a task no rule counts notifies nobody"
            limited = next(t for t in leased if t.task_type == "limited")
            plan = LeasePlan(stored_limits=True)
            assert store.has_work(["default"], _now(), plan=plan) is False
            store.settle("w1", [Settlement(task_id=limited.id, kind="complete")], _now())
            assert watcher.wait(10.0) is True
            assert store.has_work(["default"], _now(), plan=plan) is True
            _drain(watcher)
            # An expired lease that ends the task frees its slot too.
            [again] = _lease(store, "dead", limit=10)
            _drain(watcher)
            leased2, expired = store.lease(
                worker_id="w2",
                queues=["default"],
                limit=0,
                now_us=_now() + 700 * SECOND,
                lease_us=600 * SECOND,
                plan=plan,
                decide_expired=lambda t: (None, "worker died"),
            )
            assert [t.id for _, t in expired] == [again.id]
            assert watcher.wait(10.0) is True
            _drain(watcher)
            assert store.delete_limit("one") is True
            assert watcher.wait(10.0) is True
        finally:
            watcher.close()


def test_prune_forgets_stale_rate_state_and_turns(postgres_dsn: str) -> None:
    """Rate state that allows a full burst again by the cut-off, and turns not served since
    it, are deleted by prune; newer ones stay."""
    t0 = 1_900_000_000 * SECOND
    plan = LeasePlan(
        limits=(
            LimitRule(name="r", rate=1, period=1.0),
            LimitRule(name="f", fair=True, partition_by="tenant"),
        )
    )
    with _store(postgres_dsn) as store:
        store.insert([make_row(t0, payload_json=json.dumps({"tenant": x})) for x in "ab"], t0)
        leased, _ = store.lease(
            worker_id="w",
            queues=["default"],
            limit=5,
            now_us=t0,
            lease_us=SECOND,
            plan=plan,
            decide_expired=lambda t: (None, ""),
        )
        assert len(leased) == 1

        def state() -> tuple[int, int]:
            with psycopg.connect(postgres_dsn) as conn:
                rates = conn.execute("SELECT count(*) FROM hookqueue.limit_rates").fetchone()
                turns = conn.execute("SELECT count(*) FROM hookqueue.limit_turns").fetchone()
            assert rates is not None and turns is not None
            return int(rates[0]), int(turns[0])

        # One rate bucket; one served bucket and the fair rule's clock.
        assert state() == (1, 2)
        store.prune(older_than_us=t0, statuses=[TaskStatus.COMPLETED])
        assert state() == (1, 2)
        store.prune(older_than_us=t0 + 2 * SECOND, statuses=[TaskStatus.COMPLETED])
        assert state() == (0, 0)


def test_a_payload_that_is_not_json_fails_no_fair_lease(postgres_dsn: str) -> None:
    """The fair ranking reads every due payload's key; one that is not JSON (a damaged row,
    e.g. copied in) falls in the shared bucket instead of failing the lease, and is ended
    ``failed`` when leased, like any damaged row."""
    plan = LeasePlan(limits=(LimitRule(name="f", fair=True, partition_by="tenant"),))
    with _store(postgres_dsn) as store:
        rows = [make_row(_now(), payload_json=json.dumps({"tenant": x})) for x in "aaab"]
        ids = [tid for tid, _ in store.insert(rows + [make_row(_now())], _now())]
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE hookqueue.tasks SET payload = '{not json' WHERE id = %s", (ids[-1],)
            )
        leased, _ = store.lease(
            worker_id="w",
            queues=["default"],
            limit=10,
            now_us=_now(),
            lease_us=SECOND,
            plan=plan,
            decide_expired=lambda t: (None, ""),
        )
        assert [t.payload["tenant"] for t in leased] == ["a", "b", "a", "a"]
        with psycopg.connect(postgres_dsn) as conn:
            status = conn.execute(
                "SELECT status FROM hookqueue.tasks WHERE id = %s", (ids[-1],)
            ).fetchone()
        assert status == ("failed",)


@pytest.mark.parametrize("limited", [True, False], ids=["limited", "unlimited"])
def test_a_grouped_window_runs_where_parallel_plans_are_forced(
    postgres_parallel_dsn: str, limited: bool
) -> None:
    """A lease's window drawn per tenant, under a limit or not, numbers every due task
    through ``payload_part``, whose exception block PostgreSQL 15 refuses in a parallel plan;
    with parallel plans forced (the planner chose one for the limited window at 100,000 due
    tasks in the scheduler-window benchmark) the lease still runs, and serves both
    tenants: the function is PARALLEL UNSAFE, so no plan that calls it is parallel."""
    with _store(postgres_parallel_dsn) as store:
        if limited:
            store.set_limit(LimitRule(name="roomy", concurrency=10**6), _now())
        for tenant in ("big", "small"):
            store.insert(
                [make_row(_now(), payload_json=json.dumps({"tenant": tenant}))] * 200, _now()
            )
        plan = attrs.evolve(
            FairShare(partition_key="tenant", window=16).plan(
                LeaseRequest(
                    worker_id="w",
                    queues=("default",),
                    limit=4,
                    now=datetime.now(UTC),
                    lease_seconds=60.0,
                )
            ),
            stored_limits=limited,
        )
        leased, _ = store.lease(
            worker_id="w",
            queues=["default"],
            limit=4,
            now_us=_now(),
            lease_us=600 * SECOND,
            plan=plan,
            decide_expired=lambda t: (None, "expired"),
        )
    assert Counter(t.payload["tenant"] for t in leased) == {"big": 2, "small": 2}


def test_a_fair_lease_passes_over_a_task_another_transaction_holds(postgres_dsn: str) -> None:
    """The fair lease locks only its picks; a pick another transaction holds is left out
    and the turns are walked again without it (no wait for that transaction)."""
    plan = LeasePlan(limits=(LimitRule(name="f", fair=True, partition_by="tenant"),))
    with _store(postgres_dsn) as store:
        rows = [make_row(_now(), payload_json=json.dumps({"tenant": x})) for x in "aab"]
        a1, a2, b1 = (tid for tid, _ in store.insert(rows, _now()))
        with psycopg.connect(postgres_dsn) as holder:
            holder.execute("SELECT id FROM hookqueue.tasks WHERE id = %s FOR UPDATE", (a1,))
            leased, _ = store.lease(
                worker_id="w",
                queues=["default"],
                limit=2,
                now_us=_now(),
                lease_us=SECOND,
                plan=plan,
                decide_expired=lambda t: (None, ""),
            )
            holder.rollback()
        assert [t.id for t in leased] == [a2, b1]
        assert store.get(a1).status is TaskStatus.QUEUED


def _log_lines(log: Path) -> list[tuple[str, int, float, int]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        what, tid, at, pid = line.split()
        out.append((what, int(tid), float(at), int(pid)))
    return out


def _max_overlap(lines: list[tuple[str, int, float, int]]) -> int:
    """The most tasks between their start and end lines at once."""
    events = sorted((at, 1 if what == "start" else -1) for what, _, at, _ in lines)
    best = cur = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        cur += step
        best = max(best, cur)
    return best


def _start_worker(url: str, log: Path, wid: str, types: str, conc: int, poll: float) -> Any:
    env = {**os.environ, "HOOKQUEUE_DISABLE_PLUGINS": "prometheus,opentelemetry,dashboard,metrics"}
    return subprocess.Popen(
        [sys.executable, str(CHILD), "worker", url, str(log), wid, types, str(conc), str(poll)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _stop(procs: list[Any]) -> list[str]:
    """SIGTERM the worker processes; their stderr, once each has exited."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    errs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate(timeout=10)
        errs.append(err.decode(errors="replace"))
    return errs


def _wait_for(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.mark.slow
def test_worker_processes_with_the_limits_plugin_keep_a_stored_limit(
    postgres_url: str, tmp_path: Path
) -> None:
    """Two worker processes on PostgreSQL, the limits plugin loaded from its entry point
    (the way ``hookqueue worker`` runs), four slots each: the stored rule lets two tasks
    run at once across both, and every task completes."""
    log = tmp_path / "runs.log"
    with Queue(postgres_url, load_entrypoints=False, plugins=[pg_plugin]) as queue:
        queue.db.set_limit(LimitRule(name="two", task_type="job", concurrency=2), _now())
        tasks = queue.enqueue_many(
            [{"task_type": "job", "payload": {"sleep": 0.1}} for _ in range(16)]
        )
        procs = [_start_worker(postgres_url, log, f"w{i}", "job", 4, 1.0) for i in range(2)]
        try:
            assert _wait_for(lambda: queue.counts().get("completed", 0) == 16, 90), (
                queue.counts(),
                [p.poll() for p in procs],
            )
        finally:
            errs = _stop(procs)
        for p, err in zip(procs, errs, strict=True):
            assert p.returncode == 0, err
        lines = _log_lines(log)
        assert {tid for what, tid, _, _ in lines if what == "end"} == {t.id for t in tasks}
        assert _max_overlap(lines) == 2
        assert queue.check() == []


@pytest.mark.slow
def test_a_freed_slot_wakes_a_worker_in_another_process_without_polling(
    postgres_url: str, tmp_path: Path
) -> None:
    """One slot (a stored rule over every type) shared by two worker processes that poll
    only every 60 s: the task held back in one starts as soon as the other's task ends —
    woken by the settlement's NOTIFY, not by a poll."""
    log = tmp_path / "runs.log"
    with Queue(postgres_url, load_entrypoints=False, plugins=[pg_plugin]) as queue:
        queue.db.set_limit(LimitRule(name="one", concurrency=1), _now())
        procs = [_start_worker(postgres_url, log, "wa", "a", 4, 60.0)]
        try:
            first = queue.enqueue("a", {"sleep": 4.0})
            assert _wait_for(lambda: any(w == "start" for w, *_ in _log_lines(log)), 30)
            procs.append(_start_worker(postgres_url, log, "wb", "b", 4, 60.0))
            second = queue.enqueue("b", {"sleep": 0.0})
            assert _wait_for(lambda: queue.get(second.id).status is TaskStatus.COMPLETED, 30), (
                "the held task did not start within 30 s of being enqueued (polls are 60 s)"
            )
        finally:
            _stop(procs)
        lines = _log_lines(log)
        end_first = next(at for w, tid, at, _ in lines if w == "end" and tid == first.id)
        start_second = next(at for w, tid, at, _ in lines if w == "start" and tid == second.id)
        assert start_second >= end_first, "the limit held the second task back"
        assert start_second - end_first < 20
