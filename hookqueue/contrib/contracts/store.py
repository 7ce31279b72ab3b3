"""The contract every task store keeps. Subclass :class:`StoreContract` in your store's tests.

A store implements :class:`~hookqueue.core.storage.TaskStore`; the contract checks every
operation and every promise written there, against the store alone (not through
:class:`~hookqueue.Queue`), with explicit instants (``now_us``; nothing sleeps to move time)::

    from hookqueue import QueueDatabase
    from hookqueue.contrib.contracts.store import StoreContract, StoreOpener

    class TestSqliteStore(StoreContract):
        def make_store(self, tmp_path):           # a new, empty store each call
            return QueueDatabase(tmp_path / "q.db", durability="normal")

        def store_opener(self, store):           # how another process opens the same store
            return StoreOpener("hookqueue:QueueDatabase", (store.location,),
                               {"durability": "normal"})

What it checks, section by section: inserting (all or none, increasing ids, idempotency keys,
their window, claiming), the reads, leasing (each order of a plan, limits, queue and type
filters, delayed tasks, re-ranking, expired leases, settlements in the lease's transaction),
settling, renewing, the user actions (cancel, requeue, prune), the lifecycle (schema, check,
vacuum, close), the errors each member names (damaged rows put in through ``import_rows``
among them), wake-ups (``has_work``, ``next_wakeup_delay_us``, ``watch_changes``, the
watcher's ``watch_tasks``), concurrency (threads and processes never lease one task twice nor
store one key twice), and a hypothesis state machine that drives the store beside a dict
model.

A store that disagrees with a test on purpose, or has a known bug, lists the test in
:attr:`StoreContract.known_failures`; it then runs as ``xfail(strict=True)``, so fixing the
store makes the list fail until the entry goes.

Requires pytest and hypothesis (``pip install 'hookqueue[test]'``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, overload

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hookqueue.contrib.contracts._base import START
from hookqueue.contrib.contracts._store_child import StoreOpener, encode_arguments
from hookqueue.core.clock import from_us, to_us
from hookqueue.core.errors import (
    DamagedRow,
    InvalidTransition,
    StoreError,
    TaskNotFound,
    ValidationError,
)
from hookqueue.core.models import (
    TASK_COLUMNS,
    TERMINAL_STATUSES,
    WINDOW_GROUPS,
    AttemptFailure,
    Candidate,
    LeasePlan,
    LimitRule,
    SortKey,
    Task,
    TaskFilter,
    TaskStatus,
    WorkerInfo,
)
from hookqueue.core.storage import (
    BulkResult,
    ChangeWatcher,
    FinishedSample,
    InsertRow,
    QueueGauge,
    ScheduleDefinition,
    ScheduleRow,
    Settlement,
    TaskStore,
    TickFire,
    Transition,
)

__all__ = [
    "FIFO",
    "LIMIT_ORDER_NAMES",
    "ORDER_NAMES",
    "StoreOpener",
    "LEASE_US",
    "SECOND",
    "T0",
    "ExpiryRecorder",
    "ModelTask",
    "StoreContract",
    "StoreMachine",
    "make_row",
    "make_schedule",
    "name_listings",
    "plan_sort_key",
    "us",
]

#: One second in microseconds.
SECOND = 1_000_000
#: The instant the contract's tests start at (2030-01-01 UTC), in microseconds.
T0 = to_us(START, "START")
#: The lease length the contract's tests use.
LEASE_US = 30 * SECOND
#: The plan of the core's FIFO order.
FIFO = LeasePlan()


def make_row(run_after_us: int, **changes: Any) -> InsertRow:
    """An :class:`InsertRow` due at ``run_after_us``: queue ``default``, type ``t``, payload
    ``{}``, priority 100, one attempt, no key, no timeout, no headers, unless ``changes`` say
    otherwise."""
    fields: dict[str, Any] = {
        "queue": "default",
        "task_type": "t",
        "payload_json": "{}",
        "priority": 100,
        "max_attempts": 1,
        "run_after_us": run_after_us,
        "idempotency_key": None,
        "timeout": None,
        "headers_json": None,
    }
    fields.update(changes)
    return InsertRow(**fields)


def make_schedule(name: str, next_tick_us: int | None, **changes: Any) -> ScheduleDefinition:
    """A :class:`ScheduleDefinition` named ``name`` with its next tick at ``next_tick_us``:
    timing ``"every 60s"``, a definition naming task type ``t``, overlap allowed, declared by
    code, not paused, unless ``changes`` say otherwise."""
    fields: dict[str, Any] = {
        "name": name,
        "definition_json": json.dumps({"task_type": "t", "every": 60}),
        "timing": "every 60s",
        "overlap": True,
        "source": "code",
        "next_tick_us": next_tick_us,
        "paused": False,
    }
    fields.update(changes)
    return ScheduleDefinition(**fields)


#: Queue and schedule names whose byte order (SQLite's ``BINARY`` collation; the code point
#: order ``sorted`` gives) differs from a language-aware collation's: upper case, then ``_``,
#: then lower case, accented letters after every ASCII one.
ORDER_NAMES = ("beta", "Ärger", "alpha", "_x", "Zeta", "a b", "Alpha", "é", "e", "a1")
#: The same for limit rules, whose names hold ASCII letters, digits and ``_ . : -`` only.
LIMIT_ORDER_NAMES = ("beta", "_x", "Zeta", "alpha", "Alpha", "a-b", "a.b", "a:b", "a1", "a_b")


def name_listings(store: TaskStore, now_us: int = T0) -> dict[str, list[str]]:
    """Every listing of names ``store`` answers, in the order listed, after it was given the
    queues :data:`ORDER_NAMES` (each with a due task and a running one whose lease expired,
    every other one paused), schedules of those names (all due at ``now_us``) and the limit
    rules :data:`LIMIT_ORDER_NAMES`. Each is promised in byte order; a store whose backend
    can sort text by another collation can be asked for these on such a backend too."""
    for i, name in enumerate(ORDER_NAMES):
        store.insert([make_row(now_us, queue=name)], now_us)
        store.insert(
            [make_row(now_us - LEASE_US, queue=name)],
            now_us - LEASE_US,
            claim=("w-names", now_us - SECOND),
        )
        if i % 2:
            store.pause_queue(name, now_us)
    store.upsert_schedules([make_schedule(name, now_us) for name in ORDER_NAMES], now_us)
    for name in LIMIT_ORDER_NAMES:
        store.set_limit(LimitRule(name=name, concurrency=10**6), now_us)
    return {
        "queue_gauges": [g.queue for g in store.queue_gauges(now_us)],
        "due_queue_names": store.due_queue_names(now_us),
        "queued_queue_names": store.queued_queue_names(),
        "paused_queues": list(store.paused_queues()),
        "list_schedules": [r.name for r in store.list_schedules()],
        "list_schedules(names)": [r.name for r in store.list_schedules(names=ORDER_NAMES[::-1])],
        "list_schedules(due_by_us)": [r.name for r in store.list_schedules(due_by_us=now_us)],
        "list_limits": [r.name for r in store.list_limits()],
        "limit_usage": [u.rule for u in store.limit_usage(now_us)],
    }


@overload
def us(value: datetime) -> int: ...
@overload
def us(value: None) -> None: ...
def us(value: datetime | None) -> int | None:
    """An aware datetime as microseconds since the epoch (None stays None)."""
    return None if value is None else to_us(value, "instant")


class ExpiryRecorder:
    """A ``decide_expired`` that records the tasks it is asked about.

    :param requeue_at: requeue an expired task at this instant; None ends it.
    :param message: the message it answers with.
    """

    def __init__(self, requeue_at: int | None = None, message: str = "lease expired") -> None:
        self.requeue_at = requeue_at
        self.message = message
        #: The tasks asked about, in the order asked.
        self.asked: list[Task] = []

    def __call__(self, task: Task) -> tuple[int | None, str]:
        """Record ``task`` and answer ``(requeue_at, message)``."""
        self.asked.append(task)
        return self.requeue_at, self.message


def _no_expiry(task: Task) -> tuple[int | None, str]:
    raise AssertionError(f"decide_expired was asked about task {task.id}, whose lease is live")


def plan_sort_key(plan: LeasePlan, now_us: int) -> Callable[[Task], tuple[Any, ...]]:
    """The order a plan promises, as a Python sort key over tasks (docs/scheduling.md): each
    sort key in turn, ties in FIFO order (due time, then id). ``FIFO`` is due time then id;
    ``LIFO`` the reverse; ``DUE`` due time; ``PRIORITY`` lower first; ``AGED_PRIORITY``
    priority improved by one per ``aging_seconds`` waited since ``run_after``."""
    aging_us = plan.aging_seconds * SECOND

    def key(task: Task) -> tuple[Any, ...]:
        run_after = us(task.run_after)
        parts: list[Any] = []
        for k in plan.order:
            if k is SortKey.PRIORITY:
                parts.append(task.priority)
            elif k is SortKey.AGED_PRIORITY:
                parts.append(task.priority - (now_us - run_after) / aging_us)
            elif k is SortKey.DUE:
                parts.append(run_after)
            elif k is SortKey.LIFO:
                parts += [-run_after, -task.id]
            else:
                parts += [run_after, task.id]
        return (*parts, run_after, task.id)

    return key


def _worker(worker_id: str, at_us: int, **changes: Any) -> WorkerInfo:
    fields: dict[str, Any] = {
        "worker_id": worker_id,
        "hostname": "contract-host",
        "pid": 4242,
        "queues": ("default", "other"),
        "concurrency": 4,
        "started_at": from_us(at_us),
        "heartbeat_at": from_us(at_us),
    }
    fields.update(changes)
    return WorkerInfo(**fields)


class _Children:
    """Processes started by :meth:`StoreContract.other_processes`, each ready to run its job."""

    def __init__(self, procs: list[subprocess.Popen[bytes]]) -> None:
        self.procs = procs

    def go(self, timeout: float = 60.0) -> list[Any]:
        """Release every child at once; their results, in order."""
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        results = []
        for p in self.procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                pytest.fail(f"the other process failed:\n{err.decode(errors='replace')}")
            results.append(json.loads(out.decode().splitlines()[-1]))
        return results


#: Every store method, called with plausible arguments (for the closed-store test).
_CALLS: dict[str, Callable[[TaskStore], Any]] = {
    "initialize_schema": lambda s: s.initialize_schema(),
    "schema_version": lambda s: s.schema_version(),
    "check": lambda s: s.check(),
    "insert": lambda s: s.insert([make_row(T0)], T0),
    "insert_one": lambda s: s.insert_one(make_row(T0), T0),
    "get": lambda s: s.get(1),
    "get_many": lambda s: s.get_many([1, 2]),
    "find_by_key": lambda s: s.find_by_key("k"),
    "list": lambda s: s.list(),
    "counts": lambda s: s.counts(),
    "oldest_due_queued_us": lambda s: s.oldest_due_queued_us(T0),
    "queue_gauges": lambda s: s.queue_gauges(T0),
    "finished_count_since": lambda s: s.finished_count_since(T0),
    "recent_finished": lambda s: s.recent_finished(T0, 10),
    "waiting_retry_count": lambda s: s.waiting_retry_count(),
    "due_queue_names": lambda s: s.due_queue_names(T0),
    "workers": lambda s: s.workers(),
    "has_work": lambda s: s.has_work(["default"], T0),
    "next_wakeup_delay_us": lambda s: s.next_wakeup_delay_us(["default"], T0),
    "watch_changes": lambda s: s.watch_changes().close(),
    "lease": lambda s: s.lease(
        worker_id="w",
        queues=["default"],
        limit=1,
        now_us=T0,
        lease_us=LEASE_US,
        plan=FIFO,
        decide_expired=_no_expiry,
    ),
    "settle": lambda s: s.settle("w", [Settlement(task_id=1, kind="complete")], T0),
    "renew": lambda s: s.renew("w", [1], T0, LEASE_US),
    "register_worker": lambda s: s.register_worker(_worker("w", T0)),
    "worker_stopped": lambda s: s.worker_stopped("w", T0),
    "cancel": lambda s: s.cancel(1, T0),
    "requeue": lambda s: s.requeue(1, T0),
    "prune": lambda s: s.prune(older_than_us=T0, statuses=[TaskStatus.COMPLETED]),
    "vacuum": lambda s: s.vacuum(),
    "upsert_schedules": lambda s: s.upsert_schedules([make_schedule("s", T0)], T0),
    "list_schedules": lambda s: s.list_schedules(),
    "next_schedule_tick_us": lambda s: s.next_schedule_tick_us(),
    "set_schedule_paused": lambda s: s.set_schedule_paused("s", True, T0),
    "delete_schedule": lambda s: s.delete_schedule("s"),
    "fire_ticks": lambda s: s.fire_ticks(
        [TickFire(schedule="s", expect_next_tick_us=T0, expect_revision=1, next_tick_us=None)],
        T0,
    ),
    "list_matching": lambda s: s.list_matching(TaskFilter()),
    "count_matching": lambda s: s.count_matching(TaskFilter()),
    "cancel_matching": lambda s: s.cancel_matching(TaskFilter(), T0),
    "requeue_matching": lambda s: s.requeue_matching(TaskFilter(), T0),
    "delete_matching": lambda s: s.delete_matching(TaskFilter()),
    "finished_buckets": lambda s: s.finished_buckets(T0, SECOND),
    "task_failures": lambda s: s.task_failures(1),
    "pause_queue": lambda s: s.pause_queue("default", T0),
    "resume_queue": lambda s: s.resume_queue("default"),
    "paused_queues": lambda s: s.paused_queues(),
    "queued_queue_names": lambda s: s.queued_queue_names(),
    "export_rows": lambda s: s.export_rows(),
    "import_rows": lambda s: s.import_rows([]),
    "set_limit": lambda s: s.set_limit(LimitRule(name="l", concurrency=1), T0),
    "delete_limit": lambda s: s.delete_limit("l"),
    "list_limits": lambda s: s.list_limits(),
    "limit_usage": lambda s: s.limit_usage(T0),
}

#: Payload values and the partition a re-ranking plan must offer for each (the value itself).
_PARTITIONS: dict[str, Any] = {
    "string": "tenant-1",
    "integer": 7,
    "float": 1.5,
    "null": None,
    "true": True,
    "object": {"region": "eu", "n": 1},
    "list": ["a", 1],
}


class StoreContract:
    """Tests every :class:`~hookqueue.core.storage.TaskStore` must pass. Subclass it and
    implement :meth:`make_store` (and :meth:`store_opener` for the multi-process tests).

    Class attributes:

    - ``known_failures``: ``{test name: reason}`` — tests this store is known to fail (a test
      name as pytest shows it, with ``[parameters]`` for one case of a parametrized test, or
      without them for every case). Each runs as ``xfail(strict=True, reason=reason)``.
    - ``machine_settings``: the hypothesis settings of the state machine test.
    """

    known_failures: ClassVar[dict[str, str]] = {}
    machine_settings: ClassVar[settings] = settings(
        max_examples=50,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )

    # -- what a subclass provides --------------------------------------------------------------

    def make_store(self, tmp_path: Path) -> TaskStore:
        """A new, empty store; ``tmp_path`` is a directory of its own it may use."""
        raise NotImplementedError("implement make_store(tmp_path) to return a new, empty store")

    def store_opener(self, store: TaskStore) -> StoreOpener | None:
        """How to open ``store`` again, also in another process: a :class:`StoreOpener`
        naming the store's class by import path, with JSON arguments (e.g.
        ``StoreOpener("mypkg.store:MyStore", (dsn,))``); None skips the multi-process
        tests."""
        return None

    def damage_worker(self, store: TaskStore, worker_id: str, queues_text: str) -> bool:
        """Overwrite the stored queues of a recorded worker with ``queues_text`` as it is
        (text that is not a JSON list: no member of the protocol writes that), behind the
        store's back; False (the default) skips the tests of damaged worker records."""
        return False

    def bad_row(self, now_us: int) -> InsertRow:
        """A row the store refuses to insert with a StoreError (default: ``max_attempts=0``,
        below the minimum of one)."""
        return make_row(now_us, max_attempts=0)

    # -- fixtures ------------------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _known_failure(self, request: pytest.FixtureRequest) -> None:
        """Mark the tests in :attr:`known_failures` ``xfail(strict=True)``."""
        node = request.node
        reason = self.known_failures.get(node.name)
        if reason is None:
            reason = self.known_failures.get(getattr(node, "originalname", node.name))
        if reason is not None:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[TaskStore]:
        """A new, empty store from :meth:`make_store`, closed after the test."""
        made = self.make_store(tmp_path)
        try:
            yield made
        finally:
            if not made.closed:
                made.close()

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def add(store: TaskStore, now_us: int, n: int = 1, **changes: Any) -> list[int]:
        """Insert ``n`` tasks due at ``now_us`` (unless ``changes`` say otherwise) in one
        transaction; their ids."""
        changes.setdefault("run_after_us", now_us)
        return [tid for tid, _ in store.insert([make_row(**changes) for _ in range(n)], now_us)]

    @staticmethod
    def lease(
        store: TaskStore,
        worker_id: str,
        now_us: int,
        *,
        limit: int = 100,
        queues: Sequence[str] = ("default",),
        plan: LeasePlan = FIFO,
        decide: Callable[[Task], tuple[int | None, str]] = _no_expiry,
        settlements: Sequence[Settlement] = (),
        task_types: Sequence[str] | None = None,
        want_transitions: bool = True,
        lease_us: int = LEASE_US,
    ) -> tuple[list[Task], list[Transition]]:
        """``store.lease`` with the contract's defaults (FIFO, ``LEASE_US``, no expiry)."""
        return store.lease(
            worker_id=worker_id,
            queues=list(queues),
            limit=limit,
            now_us=now_us,
            lease_us=lease_us,
            plan=plan,
            decide_expired=decide,
            settlements=settlements,
            want_transitions=want_transitions,
            task_types=task_types,
        )

    def running(self, store: TaskStore, now_us: int, worker_id: str = "w1", **changes: Any) -> Task:
        """A new task, leased by ``worker_id`` at ``now_us`` (through ``insert(claim=...)``)."""
        changes.setdefault("run_after_us", now_us)
        [(tid, _)] = store.insert(
            [make_row(**changes)], now_us, claim=(worker_id, now_us + LEASE_US)
        )
        return store.get(tid)

    def in_status(self, store: TaskStore, status: TaskStatus, now_us: int, **changes: Any) -> int:
        """A new task brought to ``status`` at ``now_us``; its id."""
        if status is TaskStatus.QUEUED:
            return self.add(store, now_us, **changes)[0]
        if status is TaskStatus.CANCELLED:
            tid = self.add(store, now_us, **changes)[0]
            store.cancel(tid, now_us)
            return tid
        task = self.running(store, now_us, "w-setup", **changes)
        if status is TaskStatus.COMPLETED:
            store.settle("w-setup", [Settlement(task_id=task.id, kind="complete")], now_us)
        elif status is TaskStatus.FAILED:
            store.settle("w-setup", [Settlement(task_id=task.id, kind="fail", error="e")], now_us)
        return task.id

    @contextmanager
    def other_processes(
        self, store: TaskStore, job: str, n: int = 2, **arguments: Any
    ) -> Iterator[_Children]:
        """``n`` other processes that opened ``store`` through :meth:`store_opener`, each
        ready to run ``job`` (see :mod:`hookqueue.contrib.contracts._store_child`) when
        :meth:`_Children.go` releases them."""
        opener = self.store_opener(store)
        if opener is None:
            pytest.skip("store_opener() gives no way to open the store in another process")
        message = (
            json.dumps(
                {
                    "sys_path": list(sys.path),
                    "opener": opener.to_json(),
                    "job": job,
                    "arguments": encode_arguments(arguments),
                }
            )
            + "\n"
        ).encode()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "hookqueue.contrib.contracts._store_child"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(n)
        ]
        try:
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(message)
                p.stdin.flush()
            for p in procs:
                assert p.stdout is not None
                if p.stdout.readline() != b"ready\n":
                    _, err = p.communicate(timeout=30)
                    pytest.fail(f"the other process did not start:\n{err.decode(errors='replace')}")
            yield _Children(procs)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                for pipe in (p.stdin, p.stdout, p.stderr):
                    if pipe is not None and not pipe.closed:
                        pipe.close()
                p.wait()

    @staticmethod
    def drained(watcher: ChangeWatcher) -> ChangeWatcher:
        """``watcher`` after it has reported whatever it saw so far (a watcher may report a
        change that concerns nobody, e.g. the store's own setup)."""
        for _ in range(50):
            if not watcher.wait(0.05):
                return watcher
        pytest.fail("the watcher reports a change on every wait while nothing is written")

    # == the contract ==========================================================================

    def test_it_is_a_task_store(self, store: TaskStore) -> None:
        """The store has every method of the protocol, a durability and a location."""
        assert isinstance(store, TaskStore)
        assert store.durability in ("full", "normal")
        assert isinstance(store.location, str) and store.location
        assert store.closed is False

    # -- insert --------------------------------------------------------------------------------

    def test_insert_stores_every_field(self, store: TaskStore) -> None:
        """Each field of the row is stored; the task starts queued, with no attempt."""
        row = make_row(
            T0 + 5 * SECOND,
            queue="mail",
            task_type="send",
            payload_json=json.dumps({"to": "zoë@example.com", "n": [1, 2.5, None]}),
            priority=-3,
            max_attempts=4,
            idempotency_key="order-17",
            timeout=2.5,
            headers_json=json.dumps({"trace": "abc", "tenant": 9}),
        )
        [(tid, existing)] = store.insert([row], T0)
        assert existing is None
        task = store.get(tid)
        assert task.id == tid
        assert (task.queue, task.task_type, task.priority) == ("mail", "send", -3)
        assert task.payload == {"to": "zoë@example.com", "n": [1, 2.5, None]}
        assert dict(task.headers) == {"trace": "abc", "tenant": 9}
        assert (task.max_attempts, task.timeout, task.idempotency_key) == (4, 2.5, "order-17")
        assert task.status is TaskStatus.QUEUED and task.attempts == 0
        assert us(task.run_after) == T0 + 5 * SECOND and us(task.created_at) == T0
        assert task.error_message is None and task.result is None
        assert task.locked_by is None and task.lease_expires_at is None
        assert task.cancel_requested is False
        assert task.started_at is None and task.finished_at is None

    def test_insert_without_headers_stores_none(self, store: TaskStore) -> None:
        """A row without headers or timeout gives a task with empty headers and no timeout."""
        [tid] = self.add(store, T0)
        task = store.get(tid)
        assert dict(task.headers) == {} and task.timeout is None and task.payload == {}

    def test_run_after_zero_means_the_insert_instant(self, store: TaskStore) -> None:
        """``run_after_us=0`` means the insert's ``now_us`` (InsertRow's docs)."""
        [(a, _)] = store.insert([make_row(0)], T0)
        b = store.insert_one(make_row(0), T0)
        assert us(store.get(a).run_after) == T0
        assert us(store.get(b).run_after) == T0
        assert store.oldest_due_queued_us(T0) == T0

    def test_insert_answers_new_ids_in_row_order_and_they_increase(self, store: TaskStore) -> None:
        """Ids increase in enqueue order, across batches and ``insert_one``."""
        first = store.insert([make_row(T0) for _ in range(3)], T0)
        assert all(existing is None for _, existing in first)
        one = store.insert_one(make_row(T0), T0 + 1)
        second = store.insert([make_row(T0) for _ in range(2)], T0 + 2)
        ids = [tid for tid, _ in first] + [one] + [tid for tid, _ in second]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert [t.id for t in store.get_many(ids)] == ids

    def test_insert_of_nothing_stores_nothing(self, store: TaskStore) -> None:
        """An empty batch answers an empty list."""
        assert store.insert([], T0) == []
        assert sum(store.counts().values()) == 0

    def test_insert_is_all_or_none(self, store: TaskStore) -> None:
        """A bad row in the middle of a batch: StoreError, and none of the batch is stored
        (not even the keys of the good rows)."""
        store.initialize_schema()
        rows = [
            make_row(T0, idempotency_key="before"),
            make_row(T0),
            self.bad_row(T0),
            make_row(T0, idempotency_key="after"),
        ]
        with pytest.raises(StoreError):
            store.insert(rows, T0)
        assert sum(store.counts().values()) == 0
        assert store.list() == []
        assert store.find_by_key("before") is None and store.find_by_key("after") is None
        with pytest.raises(StoreError):
            store.insert(rows, T0, claim=("w1", T0 + LEASE_US))
        assert sum(store.counts().values()) == 0
        # The store is still usable, and the keys are free.
        [(tid, existing)] = store.insert([make_row(T0, idempotency_key="before")], T0)
        assert existing is None and store.find_by_key("before") == store.get(tid)

    def test_insert_one_of_a_bad_row_stores_nothing(self, store: TaskStore) -> None:
        """``insert_one`` of a row the store refuses raises StoreError and leaves no row."""
        store.initialize_schema()
        with pytest.raises(StoreError):
            store.insert_one(self.bad_row(T0), T0)
        assert sum(store.counts().values()) == 0

    def test_an_out_of_range_value_raises_a_store_error(self, store: TaskStore) -> None:
        """A value beyond 64 bits is refused with a StoreError (never the driver's error), and
        nothing is stored."""
        store.initialize_schema()
        with pytest.raises(StoreError):
            store.insert([make_row(T0), make_row(T0, priority=2**63)], T0)
        assert sum(store.counts().values()) == 0

    def test_insert_one_returns_the_new_id(self, store: TaskStore) -> None:
        """``insert_one`` stores one queued task and answers its id."""
        tid = store.insert_one(make_row(T0, task_type="single", priority=3), T0)
        task = store.get(tid)
        assert (task.task_type, task.priority, task.status) == ("single", 3, TaskStatus.QUEUED)
        assert us(task.created_at) == T0

    def test_insert_one_refuses_a_keyed_row(self, store: TaskStore) -> None:
        """``insert_one`` raises ValueError for a row with an idempotency key; nothing stored."""
        store.initialize_schema()
        with pytest.raises(ValueError, match="insert"):
            store.insert_one(make_row(T0, idempotency_key="k"), T0)
        assert store.find_by_key("k") is None and sum(store.counts().values()) == 0

    def test_a_repeated_key_answers_the_existing_task(self, store: TaskStore) -> None:
        """A key already held answers ``(id, existing task)`` and inserts nothing."""
        [(tid, _)] = store.insert([make_row(T0, idempotency_key="k", payload_json='{"n": 1}')], T0)
        [(again, existing)] = store.insert(
            [make_row(T0, idempotency_key="k", payload_json='{"n": 2}')], T0 + SECOND
        )
        assert again == tid
        assert existing == store.get(tid) and existing.payload == {"n": 1}
        assert store.counts()["queued"] == 1

    def test_a_key_repeated_in_one_batch_is_stored_once(self, store: TaskStore) -> None:
        """Within one batch a repeated key answers the task the batch just inserted."""
        results = store.insert(
            [make_row(T0, idempotency_key="k"), make_row(T0), make_row(T0, idempotency_key="k")],
            T0,
        )
        (first, none), (_, other), (again, existing) = results
        assert none is None and other is None
        assert again == first and existing is not None and existing.id == first
        assert store.counts()["queued"] == 2

    def test_a_key_is_kept_after_its_task_finished(self, store: TaskStore) -> None:
        """Without a window, a finished task keeps deduplicating its key."""
        tid = self.in_status(store, TaskStatus.COMPLETED, T0, idempotency_key="k")
        [(again, existing)] = store.insert([make_row(T0, idempotency_key="k")], T0 + 3600 * SECOND)
        assert again == tid and existing is not None and existing.status is TaskStatus.COMPLETED

    def test_find_by_key(self, store: TaskStore) -> None:
        """``find_by_key`` answers the task holding the key, or None."""
        [(tid, _)] = store.insert([make_row(T0, idempotency_key="k")], T0)
        assert store.find_by_key("k") == store.get(tid)
        assert store.find_by_key("nobody") is None

    def test_the_key_window_lets_go_of_a_finished_tasks_key(self, store: TaskStore) -> None:
        """Within ``key_window_us`` after it finished a task keeps its key; once the window has
        passed, a new task is inserted and the old one lets go of the key, keeping its
        history."""
        window = 60 * SECOND
        old = self.in_status(store, TaskStatus.COMPLETED, T0, idempotency_key="k")
        [(within, existing)] = store.insert(
            [make_row(T0, idempotency_key="k")], T0 + window - SECOND, key_window_us=window
        )
        assert within == old and existing is not None
        later = T0 + window + SECOND
        [(new, none)] = store.insert(
            [make_row(later, idempotency_key="k")], later, key_window_us=window
        )
        assert none is None and new > old
        assert store.find_by_key("k") == store.get(new)
        kept = store.get(old)
        assert kept.status is TaskStatus.COMPLETED and kept.idempotency_key != "k"
        assert store.counts()["completed"] == 1 and store.counts()["queued"] == 1

    @pytest.mark.parametrize("status", [TaskStatus.QUEUED, TaskStatus.RUNNING])
    def test_the_key_window_never_lets_go_of_an_active_task(
        self, store: TaskStore, status: TaskStatus
    ) -> None:
        """The window counts from when a task finished: an active task keeps its key."""
        tid = self.in_status(store, status, T0, idempotency_key="k")
        [(again, existing)] = store.insert(
            [make_row(T0, idempotency_key="k")], T0 + 3600 * SECOND, key_window_us=SECOND
        )
        assert again == tid and existing is not None and existing.status is status

    def test_claim_inserts_running_tasks(self, store: TaskStore) -> None:
        """``claim`` makes the new tasks running, leased to the worker, with their first
        attempt counted; no other worker can lease them."""
        until = T0 + LEASE_US
        results = store.insert([make_row(T0), make_row(T0)], T0, claim=("w1", until))
        for tid, existing in results:
            assert existing is None
            task = store.get(tid)
            assert task.status is TaskStatus.RUNNING and task.attempts == 1
            assert task.locked_by == "w1" and us(task.lease_expires_at) == until
            assert us(task.started_at) == T0
        assert self.lease(store, "w2", T0 + SECOND)[0] == []
        held, _ = store.renew("w1", [tid for tid, _ in results], T0 + SECOND, LEASE_US)
        assert held == {tid for tid, _ in results}

    def test_claim_leaves_an_existing_task_alone(self, store: TaskStore) -> None:
        """A keyed row whose key is held answers the existing task, unchanged, not claimed."""
        [(tid, _)] = store.insert([make_row(T0, idempotency_key="k")], T0)
        [(again, existing)] = store.insert(
            [make_row(T0, idempotency_key="k")], T0 + SECOND, claim=("w1", T0 + LEASE_US)
        )
        assert again == tid and existing is not None
        assert existing.status is TaskStatus.QUEUED
        assert store.get(tid).status is TaskStatus.QUEUED and store.get(tid).attempts == 0

    def test_claim_answers_a_repeated_key_as_stored(self, store: TaskStore) -> None:
        """A key repeated in a claimed batch answers the task as the batch left it: running."""
        (first, _), (again, existing) = store.insert(
            [make_row(T0, idempotency_key="k"), make_row(T0, idempotency_key="k")],
            T0,
            claim=("w1", T0 + LEASE_US),
        )
        assert again == first and existing is not None
        assert existing == store.get(first)
        assert existing.status is TaskStatus.RUNNING

    def test_ids_are_never_reused_after_a_prune(self, store: TaskStore) -> None:
        """Ids increase in enqueue order and are unique: pruning the newest task does not
        hand its id to the next one (an old id must never name a different task)."""
        self.add(store, T0)
        newest = self.in_status(store, TaskStatus.COMPLETED, T0)
        assert store.prune(older_than_us=T0 + SECOND, statuses=[TaskStatus.COMPLETED]) == 1
        [after] = self.add(store, T0 + 2 * SECOND)
        assert after > newest

    # -- reads ---------------------------------------------------------------------------------

    def test_get_an_unknown_id_raises_task_not_found(self, store: TaskStore) -> None:
        """``get`` of an id that was never used raises TaskNotFound."""
        [tid] = self.add(store, T0)
        with pytest.raises(TaskNotFound):
            store.get(tid + 1000)

    def test_get_many_keeps_the_order_asked_and_leaves_out_missing_ids(
        self, store: TaskStore
    ) -> None:
        """``get_many`` answers the existing tasks in the order of the ids given."""
        ids = self.add(store, T0, 5)
        asked = [ids[3], ids[0] + 10_000, ids[1], ids[4], ids[2]]
        got = store.get_many(asked)
        assert [t.id for t in got] == [ids[3], ids[1], ids[4], ids[2]]
        assert got[0] == store.get(ids[3])
        assert store.get_many([]) == []
        many = self.add(store, T0, 1200)
        assert [t.id for t in store.get_many(list(reversed(many)))] == list(reversed(many))

    def _mixed(self, store: TaskStore) -> dict[int, Task]:
        """Twenty tasks over two types, two queues and every status; all of them by id."""
        statuses = list(TaskStatus)
        ids = []
        for i in range(20):
            ids.append(
                self.in_status(
                    store,
                    statuses[i % 5],
                    T0 + i,
                    task_type="ab"[i % 2],
                    queue=("q1", "q2")[(i // 2) % 2],
                )
            )
        return {t.id: t for t in store.get_many(ids)}

    def test_list_filters_orders_and_pages(self, store: TaskStore) -> None:
        """``list`` answers the tasks matching every filter, by id (descending with
        ``newest_first``), at most ``limit``, after ``after_id`` — for every combination of
        statuses, active and final together too."""
        tasks = self._mixed(store)
        ids = sorted(tasks)
        middle = ids[len(ids) // 2]
        status_sets: list[tuple[TaskStatus, ...]] = [
            (),
            (TaskStatus.QUEUED,),
            (TaskStatus.RUNNING,),
            (TaskStatus.COMPLETED,),
            (TaskStatus.QUEUED, TaskStatus.RUNNING),
            (TaskStatus.QUEUED, TaskStatus.COMPLETED),
            (TaskStatus.RUNNING, TaskStatus.FAILED, TaskStatus.CANCELLED),
            (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED),
            tuple(TaskStatus),
        ]
        for statuses in status_sets:
            for task_type in (None, "a"):
                for queue in (None, "q2"):
                    for after_id in (None, middle):
                        for newest in (False, True):
                            for limit in (1, 3, 100):
                                expected = [
                                    i
                                    for i in sorted(ids, reverse=newest)
                                    if (not statuses or tasks[i].status in statuses)
                                    and (task_type is None or tasks[i].task_type == task_type)
                                    and (queue is None or tasks[i].queue == queue)
                                    and (
                                        after_id is None
                                        or (i < after_id if newest else i > after_id)
                                    )
                                ][:limit]
                                got = store.list(
                                    statuses=statuses,
                                    task_type=task_type,
                                    queue=queue,
                                    limit=limit,
                                    after_id=after_id,
                                    newest_first=newest,
                                )
                                assert [t.id for t in got] == expected, (
                                    statuses,
                                    task_type,
                                    queue,
                                    after_id,
                                    newest,
                                    limit,
                                )
        assert store.list(limit=100) == [tasks[i] for i in ids]

    @pytest.mark.parametrize("newest_first", [False, True])
    def test_list_pages_through_everything_once(self, store: TaskStore, newest_first: bool) -> None:
        """Paging with ``after_id`` = the last id of the previous page visits every task once."""
        tasks = self._mixed(store)
        seen: list[int] = []
        after: int | None = None
        while page := store.list(limit=3, after_id=after, newest_first=newest_first):
            seen += [t.id for t in page]
            after = page[-1].id
        assert seen == sorted(tasks, reverse=newest_first)

    def test_counts_has_every_status(self, store: TaskStore) -> None:
        """``counts`` has every status, zero included; ``by_type`` counts per type."""
        store.initialize_schema()
        assert store.counts() == {s.value: 0 for s in TaskStatus}
        assert store.counts(by_type=True) == {}
        tasks = self._mixed(store)
        self.add(store, T0 + 100, 2, task_type="c")
        expected = {s.value: 0 for s in TaskStatus}
        expected.update(Counter(t.status.value for t in tasks.values()))
        expected["queued"] += 2
        assert store.counts() == expected
        by_type = store.counts(by_type=True)
        assert set(by_type) == {"a", "b", "c"}
        for task_type in "ab":
            wanted = Counter(t.status.value for t in tasks.values() if t.task_type == task_type)
            assert {s: n for s, n in by_type[task_type].items() if n} == dict(wanted)
        assert {s: n for s, n in by_type["c"].items() if n} == {"queued": 2}

    def test_queue_gauges(self, store: TaskStore) -> None:
        """Per queue with active tasks, by name: due, delayed, running, oldest due."""
        now = T0 + 100 * SECOND
        self.add(store, T0 + 10 * SECOND, 2, queue="b", run_after_us=T0 + 10 * SECOND)
        self.add(store, T0 + 20 * SECOND, queue="b", run_after_us=T0 + 5 * SECOND)
        self.add(store, T0 + 20 * SECOND, queue="b", run_after_us=now + SECOND)
        self.running(store, T0 + 30 * SECOND, queue="b")
        self.running(store, T0 + 30 * SECOND, queue="a")
        self.add(store, T0 + 40 * SECOND, queue="c", run_after_us=now + 60 * SECOND)
        self.in_status(store, TaskStatus.COMPLETED, T0 + 50 * SECOND, queue="done")
        self.add(store, now, queue="b", run_after_us=now)
        assert store.queue_gauges(now) == [
            QueueGauge(queue="a", due=0, delayed=0, running=1, oldest_due_us=None),
            QueueGauge(queue="b", due=4, delayed=1, running=1, oldest_due_us=T0 + 5 * SECOND),
            QueueGauge(queue="c", due=0, delayed=1, running=0, oldest_due_us=None),
        ]

    def test_oldest_due_queued_us(self, store: TaskStore) -> None:
        """The ``run_after`` of the longest-waiting due queued task, in any queue, or None."""
        store.initialize_schema()
        assert store.oldest_due_queued_us(T0) is None
        self.add(store, T0, run_after_us=T0 + 50 * SECOND)
        self.running(store, T0, run_after_us=T0 - 100 * SECOND)
        assert store.oldest_due_queued_us(T0) is None
        self.add(store, T0, queue="other", run_after_us=T0 - 5 * SECOND)
        self.add(store, T0, run_after_us=T0 - 2 * SECOND)
        assert store.oldest_due_queued_us(T0) == T0 - 5 * SECOND
        assert store.oldest_due_queued_us(T0 + 60 * SECOND) == T0 - 5 * SECOND

    def test_finished_count_and_recent_finished(self, store: TaskStore) -> None:
        """Tasks finished at or after an instant: counted, and sampled newest first."""
        store.initialize_schema()
        assert store.finished_count_since(T0) == 0 and store.recent_finished(T0, 10) == []
        completed = self.running(store, T0, task_type="x", max_attempts=3)
        store.settle("w1", [Settlement(task_id=completed.id, kind="complete")], T0 + SECOND)
        failed = self.running(store, T0 + SECOND, task_type="y")
        store.settle("w1", [Settlement(task_id=failed.id, kind="fail", error="e")], T0 + 2 * SECOND)
        [cancelled] = self.add(store, T0 + 2 * SECOND, task_type="z")
        store.cancel(cancelled, T0 + 3 * SECOND)
        self.add(store, T0)
        self.running(store, T0)
        assert store.finished_count_since(T0) == 3
        assert store.finished_count_since(T0 + 2 * SECOND) == 2
        assert store.finished_count_since(T0 + 3 * SECOND + 1) == 0
        assert store.recent_finished(T0, 10) == [
            FinishedSample(
                status="cancelled",
                task_type="z",
                attempts=0,
                max_attempts=1,
                started_us=None,
                finished_us=T0 + 3 * SECOND,
            ),
            FinishedSample(
                status="failed",
                task_type="y",
                attempts=1,
                max_attempts=1,
                started_us=T0 + SECOND,
                finished_us=T0 + 2 * SECOND,
            ),
            FinishedSample(
                status="completed",
                task_type="x",
                attempts=1,
                max_attempts=3,
                started_us=T0,
                finished_us=T0 + SECOND,
            ),
        ]
        assert [s.task_type for s in store.recent_finished(T0, 2)] == ["z", "y"]
        assert [s.task_type for s in store.recent_finished(T0 + 2 * SECOND, 10)] == ["z", "y"]

    def test_waiting_retry_count(self, store: TaskStore) -> None:
        """Queued tasks that already had an attempt: after a retry or a requeued expiry, not
        after a release that gave the only attempt back."""
        store.initialize_schema()
        assert store.waiting_retry_count() == 0
        a = self.running(store, T0, max_attempts=3)
        b = self.running(store, T0, max_attempts=3)
        c = self.running(store, T0, max_attempts=3)
        self.add(store, T0)
        store.settle(
            "w1",
            [
                Settlement(task_id=a.id, kind="retry", error="e", run_after_us=T0 + SECOND),
                Settlement(task_id=b.id, kind="release"),
            ],
            T0,
        )
        assert store.waiting_retry_count() == 1
        later = T0 + LEASE_US + SECOND
        self.lease(store, "w2", later, limit=0, decide=ExpiryRecorder(requeue_at=later))
        assert store.get(c.id).status is TaskStatus.QUEUED
        assert store.waiting_retry_count() == 2

    def test_due_queue_names(self, store: TaskStore) -> None:
        """Queues with a due task or an expired lease, sorted; not delayed-only ones, nor ones
        whose leases are live."""
        store.initialize_schema()
        assert store.due_queue_names(T0) == []
        self.running(store, T0 - LEASE_US - SECOND, queue="expired")
        self.add(store, T0, queue="zeta")
        self.add(store, T0, queue="delayed", run_after_us=T0 + 60 * SECOND)
        self.running(store, T0, queue="live")
        self.in_status(store, TaskStatus.FAILED, T0, queue="failed")
        self.add(store, T0, queue="alpha", run_after_us=T0 - SECOND)
        assert store.due_queue_names(T0) == ["alpha", "expired", "zeta"]
        assert store.due_queue_names(T0 + 60 * SECOND) == [
            "alpha",
            "delayed",
            "expired",
            "live",
            "zeta",
        ]

    def test_workers_are_recorded(self, store: TaskStore) -> None:
        """``register_worker`` records a worker (replacing one with the same id);
        ``workers`` lists them oldest first; ``worker_stopped`` records the stop."""
        store.initialize_schema()
        assert store.workers() == []
        store.register_worker(_worker("late", T0 + 10 * SECOND))
        store.register_worker(_worker("early", T0, pid=7, queues=("a",), concurrency=1))
        assert [w.worker_id for w in store.workers()] == ["early", "late"]
        assert store.workers()[0] == _worker("early", T0, pid=7, queues=("a",), concurrency=1)
        store.worker_stopped("early", T0 + 20 * SECOND)
        stopped = store.workers()[0]
        assert us(stopped.stopped_at) == T0 + 20 * SECOND
        # A restart under the same id replaces the record.
        store.register_worker(_worker("early", T0 + 30 * SECOND, pid=8))
        assert [(w.worker_id, w.pid, w.stopped_at) for w in store.workers()] == [
            ("late", 4242, None),
            ("early", 8, None),
        ]

    def test_a_worker_counts_what_it_finished_and_beats_when_it_renews(
        self, store: TaskStore
    ) -> None:
        """Outcomes written (not releases) add to ``processed``; ``renew`` records a
        heartbeat."""
        store.register_worker(_worker("w1", T0))
        tasks = [self.running(store, T0, max_attempts=2) for _ in range(4)]
        store.settle(
            "w1",
            [
                Settlement(task_id=tasks[0].id, kind="complete"),
                Settlement(task_id=tasks[1].id, kind="fail", error="e"),
                Settlement(task_id=tasks[2].id, kind="retry", error="e", run_after_us=T0),
                Settlement(task_id=tasks[3].id, kind="release"),
            ],
            T0 + SECOND,
        )
        [info] = store.workers()
        assert info.processed == 3
        store.renew("w1", [], T0 + 5 * SECOND, LEASE_US)
        assert us(store.workers()[0].heartbeat_at) == T0 + 5 * SECOND

    # -- lease: what and in which order --------------------------------------------------------

    #: ``(seconds after T0 it is due, priority)`` of the ordering tests' tasks, in id order.
    ORDER_SPECS: ClassVar[list[tuple[int, int]]] = [
        (50, 2),
        (10, 1),
        (30, 2),
        (10, 0),
        (0, 1),
        (70, 0),
        (30, 1),
        (0, 3),
        (90, 2),
        (20, 0),
    ]

    @pytest.mark.parametrize(
        "plan",
        [
            FIFO,
            LeasePlan(order=(SortKey.DUE,)),
            LeasePlan(order=(SortKey.PRIORITY,)),
            LeasePlan(order=(SortKey.AGED_PRIORITY,), aging_seconds=10),
            LeasePlan(order=(SortKey.LIFO,)),
            LeasePlan(order=(SortKey.PRIORITY, SortKey.LIFO)),
            LeasePlan(order=(SortKey.DUE, SortKey.PRIORITY)),
        ],
        ids=["fifo", "due", "priority", "aged_priority", "lifo", "priority_lifo", "due_priority"],
    )
    @pytest.mark.parametrize("one_at_a_time", [False, True], ids=["batch", "one_by_one"])
    def test_lease_follows_the_plans_order(
        self, store: TaskStore, plan: LeasePlan, one_at_a_time: bool
    ) -> None:
        """Leased tasks come in the plan's order — each sort key in turn, ties in FIFO order
        (due time, then id) — whether leased all at once or one by one."""
        now = T0 + 100 * SECOND
        ids = [
            self.add(store, T0, run_after_us=T0 + due * SECOND, priority=prio)[0]
            for due, prio in self.ORDER_SPECS
        ]
        expected = [t.id for t in sorted(store.get_many(ids), key=plan_sort_key(plan, now))]
        if one_at_a_time:
            got = []
            while batch := self.lease(store, "w1", now, limit=1, plan=plan)[0]:
                got += [t.id for t in batch]
        else:
            got = [t.id for t in self.lease(store, "w1", now, plan=plan)[0]]
        assert got == expected

    def test_aging_moves_a_long_waiting_task_ahead(self, store: TaskStore) -> None:
        """``AGED_PRIORITY`` improves priority by one per ``aging_seconds`` waited since the
        task became due; ``PRIORITY`` alone does not."""
        [old] = self.add(store, T0, priority=5)
        now = T0 + 100 * SECOND
        [new] = self.add(store, now, priority=1)
        aged = LeasePlan(order=(SortKey.AGED_PRIORITY,), aging_seconds=10)
        assert [t.id for t in self.lease(store, "w1", now, limit=1, plan=aged)[0]] == [old]
        store.settle("w1", [Settlement(task_id=old, kind="release")], now)
        strict = LeasePlan(order=(SortKey.PRIORITY,))
        assert [t.id for t in self.lease(store, "w1", now, limit=1, plan=strict)[0]] == [new]

    def test_leased_tasks_are_running_with_the_attempt_counted(self, store: TaskStore) -> None:
        """A leased task is running, held by the worker until ``now + lease_us``, its attempt
        counted at lease time, started now; the answer equals what ``get`` reads."""
        ids = self.add(store, T0, 2, max_attempts=3)
        leased, transitions = self.lease(store, "w1", T0 + SECOND, lease_us=7 * SECOND)
        assert transitions == []
        assert [t.id for t in leased] == ids
        for task in leased:
            assert task.status is TaskStatus.RUNNING and task.attempts == 1
            assert task.locked_by == "w1" and us(task.lease_expires_at) == T0 + 8 * SECOND
            assert us(task.started_at) == T0 + SECOND and task.cancel_requested is False
            assert task == store.get(task.id)

    def test_lease_respects_the_limit(self, store: TaskStore) -> None:
        """At most ``limit`` tasks; ``limit=0`` leases nothing."""
        ids = self.add(store, T0, 5)
        assert self.lease(store, "w1", T0, limit=0)[0] == []
        assert [t.id for t in self.lease(store, "w1", T0, limit=2)[0]] == ids[:2]
        assert [t.id for t in self.lease(store, "w1", T0, limit=2)[0]] == ids[2:4]
        assert [t.id for t in self.lease(store, "w1", T0, limit=2)[0]] == ids[4:]
        assert self.lease(store, "w1", T0, limit=2)[0] == []

    def test_lease_only_from_the_asked_queues(self, store: TaskStore) -> None:
        """Tasks of other queues stay queued."""
        [a] = self.add(store, T0, queue="a")
        [b] = self.add(store, T0, queue="b")
        [c] = self.add(store, T0, queue="c")
        assert {t.id for t in self.lease(store, "w1", T0, queues=["a", "c"])[0]} == {a, c}
        assert store.get(b).status is TaskStatus.QUEUED
        assert [t.id for t in self.lease(store, "w1", T0, queues=["b"])[0]] == [b]

    def test_lease_only_the_asked_task_types(self, store: TaskStore) -> None:
        """With ``task_types`` only those types are leased; the others stay queued for a
        worker that has their handlers."""
        ids = {
            "a": self.add(store, T0, 2, task_type="a"),
            "b": self.add(store, T0, 2, task_type="b"),
        }
        [c] = self.add(store, T0, task_type="c")
        leased = self.lease(store, "w1", T0, task_types=["a", "c"])[0]
        assert sorted(t.id for t in leased) == sorted([*ids["a"], c])
        assert all(store.get(i).status is TaskStatus.QUEUED for i in ids["b"])
        assert store.has_work(["default"], T0, task_types=["b"]) is True
        assert store.has_work(["default"], T0, task_types=["a"]) is False
        assert [t.id for t in self.lease(store, "w2", T0)[0]] == ids["b"]

    def test_a_delayed_task_is_not_leased_before_its_run_after(self, store: TaskStore) -> None:
        """A task is not leased before ``run_after``; at that instant it is."""
        due_at = T0 + 60 * SECOND
        [delayed] = self.add(store, T0, run_after_us=due_at)
        [now_task] = self.add(store, T0)
        hour = 3600 * SECOND
        assert [t.id for t in self.lease(store, "w1", T0, lease_us=hour)[0]] == [now_task]
        assert self.lease(store, "w1", due_at - 1)[0] == []
        assert [t.id for t in self.lease(store, "w1", due_at)[0]] == [delayed]

    def test_due_is_judged_by_the_latest_instant_the_store_has_seen(self, store: TaskStore) -> None:
        """A task is due when its ``run_after`` is at most ``max(now_us, the newest task's
        created_at)``: after the caller's wall clock steps back, a task that was ready stays
        ready; a task delayed past every instant the store has seen still waits."""
        [delayed] = self.add(store, T0, run_after_us=T0 + 600 * SECOND)
        [ready] = self.add(store, T0 + 120 * SECOND)
        stepped_back = T0 + 30 * SECOND
        assert store.has_work(["default"], stepped_back) is True
        leased, _ = self.lease(store, "w1", stepped_back, limit=10)
        assert [t.id for t in leased] == [ready]
        assert store.get(delayed).status is TaskStatus.QUEUED
        assert store.has_work(["default"], stepped_back) is False
        delay = store.next_wakeup_delay_us(["default"], stepped_back)
        assert delay is not None and 0 < delay <= 600 * SECOND

    # -- lease: re-ranking ---------------------------------------------------------------------

    def test_rerank_is_offered_the_window_in_order(self, store: TaskStore) -> None:
        """A re-ranking plan offers the first ``window`` due tasks of the asked queues and
        types in the plan's order, each as a Candidate, and the ``limit``."""
        now = T0 + 100 * SECOND
        ids = [
            self.add(
                store, T0, run_after_us=T0 + due * SECOND, priority=prio, task_type="ab"[i % 2]
            )[0]
            for i, (due, prio) in enumerate(self.ORDER_SPECS)
        ]
        self.add(store, T0, queue="elsewhere")
        self.add(store, T0, run_after_us=now + SECOND)
        offered: list[tuple[list[Candidate], int]] = []

        def rerank(candidates: Sequence[Candidate], limit: int) -> list[int]:
            offered.append((list(candidates), limit))
            return []

        plan = LeasePlan(order=(SortKey.PRIORITY,), window=6, rerank=rerank)
        assert self.lease(store, "w1", now, limit=2, plan=plan) == ([], [])
        [(candidates, limit)] = offered
        assert limit == 2
        tasks = sorted(store.get_many(ids), key=plan_sort_key(plan, now))
        assert candidates == [
            Candidate(
                id=t.id,
                task_type=t.task_type,
                priority=t.priority,
                queue=t.queue,
                created_at_us=us(t.created_at),
                run_after_us=us(t.run_after),
                partition=None,
            )
            for t in tasks[:6]
        ]
        offered.clear()
        self.lease(store, "w1", now, limit=2, plan=plan, task_types=["b"])
        assert [c.id for c in offered[0][0]] == [t.id for t in tasks if t.task_type == "b"][:6]
        assert all(store.get(i).status is TaskStatus.QUEUED for i in ids)

    def test_rerank_window_holds_at_most_window_candidates(self, store: TaskStore) -> None:
        """``rerank`` receives up to ``window`` candidates, even when ``limit`` is larger."""
        self.add(store, T0, 10)
        sizes: list[int] = []

        def rerank(candidates: Sequence[Candidate], limit: int) -> list[int]:
            sizes.append(len(candidates))
            return [c.id for c in candidates][:limit]

        self.lease(store, "w1", T0, limit=5, plan=LeasePlan(window=2, rerank=rerank))
        assert sizes == [2]

    def test_rerank_leases_what_it_chose_in_its_order(self, store: TaskStore) -> None:
        """The ids ``rerank`` returns are leased, in its order; the others stay queued."""
        ids = self.add(store, T0, 6, max_attempts=2)
        chosen = [ids[4], ids[1], ids[5]]
        plan = LeasePlan(window=10, rerank=lambda c, n: chosen)
        leased, _ = self.lease(store, "w1", T0, limit=3, plan=plan)
        assert [t.id for t in leased] == chosen
        assert all(t.status is TaskStatus.RUNNING and t.attempts == 1 for t in leased)
        assert all(t == store.get(t.id) for t in leased)
        rest = [i for i in ids if i not in chosen]
        assert all(store.get(i).status is TaskStatus.QUEUED for i in rest)

    def test_rerank_cannot_lease_what_was_not_offered(self, store: TaskStore) -> None:
        """Ids ``rerank`` was not offered (delayed, another queue, unknown, already running)
        are not leased, and no more than ``limit`` are."""
        ids = self.add(store, T0, 4)
        [delayed] = self.add(store, T0, run_after_us=T0 + 60 * SECOND)
        [elsewhere] = self.add(store, T0, queue="elsewhere")
        busy = self.running(store, T0)
        answer = [delayed, elsewhere, busy.id, ids[-1] + 10_000, ids[2], ids[0], ids[1]]
        plan = LeasePlan(window=10, rerank=lambda c, n: answer)
        leased, _ = self.lease(store, "w2", T0, limit=2, plan=plan)
        assert [t.id for t in leased] == [ids[2], ids[0]]
        assert store.get(delayed).status is TaskStatus.QUEUED
        assert store.get(elsewhere).status is TaskStatus.QUEUED
        assert store.get(busy.id).locked_by == "w1"

    def test_rerank_choosing_an_id_twice_leases_it_once(self, store: TaskStore) -> None:
        """A task is leased once per lease even if ``rerank`` names it twice (else one worker
        would run it twice at once)."""
        ids = self.add(store, T0, 3)
        plan = LeasePlan(window=10, rerank=lambda c, n: [ids[2], ids[2], ids[0]])
        leased, _ = self.lease(store, "w1", T0, limit=3, plan=plan)
        assert [t.id for t in leased] == [ids[2], ids[0]]
        assert store.get(ids[2]).attempts == 1

    @pytest.mark.parametrize("kind", sorted(_PARTITIONS))
    def test_candidate_partition_is_the_payload_value(self, store: TaskStore, kind: str) -> None:
        """``Candidate.partition`` is the payload's value at ``partition_key`` (as decoded
        JSON: same value, same type); None where the payload has no such key."""
        value = _PARTITIONS[kind]
        [tid] = self.add(store, T0, payload_json=json.dumps({"tenant": value, "n": 1}))
        [missing] = self.add(store, T0, payload_json=json.dumps({"n": 2}))
        [not_object] = self.add(store, T0, payload_json=json.dumps([1, 2]))
        [dotted] = self.add(store, T0, payload_json=json.dumps({"a.b": 3, "a": {"b": 4}}))
        offered: dict[str, list[Candidate]] = {}

        def rerank(key: str) -> Callable[[Sequence[Candidate], int], list[int]]:
            def pick(candidates: Sequence[Candidate], limit: int) -> list[int]:
                offered[key] = list(candidates)
                return []

            return pick

        self.lease(store, "w1", T0, plan=LeasePlan(rerank=rerank("tenant"), partition_key="tenant"))
        self.lease(store, "w1", T0, plan=LeasePlan(rerank=rerank("a.b"), partition_key="a.b"))
        partitions = {c.id: c.partition for c in offered["tenant"]}
        assert partitions[tid] == value and type(partitions[tid]) is type(value)
        assert partitions[missing] is None and partitions[not_object] is None
        assert {c.id: c.partition for c in offered["a.b"]}[dotted] == 3

    # -- lease: a window drawn per group ---------------------------------------------------------

    @staticmethod
    def _group_of(group_by: str, task: Task) -> Any:
        """A task's group as ``LeasePlan.group_by`` names it (the partition as JSON text)."""
        if group_by == "partition":
            payload = task.payload
            return json.dumps(payload.get("tenant") if isinstance(payload, dict) else None)
        return getattr(task, group_by)

    @pytest.mark.parametrize("order", ["priority", "lifo", "aged_priority"])
    @pytest.mark.parametrize("group_by", WINDOW_GROUPS)
    def test_a_grouped_window_offers_every_group_behind_a_backlog(
        self, store: TaskStore, group_by: str, order: str
    ) -> None:
        """With ``group_by`` the window is drawn per group — each group's first due task in
        the plan's order, then each group's second, …, the first ``window`` of those — and
        offered in the plan's order: a group whose tasks all sit behind a longer backlog of
        another group's is still offered, and a group is left out only when more than
        ``window`` groups are due (those whose best task comes last)."""
        queues = ("q0", "q1", "q2", "q3")

        def row(group: int, i: int, **changes: Any) -> InsertRow:
            fields: dict[str, Any] = {
                "queue": "q0",
                "priority": 100 + i % 3,
                "run_after_us": T0 + (i % 4) * SECOND,
            }
            if group_by == "task_type":
                fields["task_type"] = f"g{group}"
            elif group_by == "queue":
                fields["queue"] = queues[group]
            elif group_by == "priority":
                fields["priority"] = 10 * group
            else:
                payload: Any = {"tenant": f"g{group}", "i": i} if group < 3 else [i]
                fields["payload_json"] = json.dumps(payload)
            fields.update(changes)
            return make_row(**fields)

        # Group 0's backlog first, then the others (group 3: no tenant key, for partition).
        rows = [row(0, i) for i in range(12)]
        rows += [row(g, i) for g in (1, 2, 3) for i in range(3 if g != 2 else 2)]
        ids = [tid for tid, _ in store.insert(rows, T0)]
        store.insert([row(2, 9, run_after_us=T0 + 60 * SECOND)], T0)  # not due
        store.insert([row(1, 9, queue="elsewhere")], T0)  # not asked for
        plan_order = (SortKey(order),)
        now = T0 + 30 * SECOND
        tasks = store.get_many(ids)
        key = plan_sort_key(LeasePlan(order=plan_order, aging_seconds=1.0), now)
        place: dict[int, int] = {}
        seen: Counter[Any] = Counter()
        for t in sorted(tasks, key=key):
            seen[self._group_of(group_by, t)] += 1
            place[t.id] = seen[self._group_of(group_by, t)]
        offered: list[list[Candidate]] = []

        def rerank(candidates: Sequence[Candidate], limit: int) -> list[int]:
            offered.append(list(candidates))
            return [candidates[-1].id]

        for window in (2, 7, 100):
            plan = LeasePlan(
                order=plan_order,
                aging_seconds=1.0,
                window=window,
                rerank=rerank,
                partition_key="tenant" if group_by == "partition" else None,
                group_by=group_by,
            )
            offered.clear()
            leased, _ = self.lease(store, "w1", now, limit=1, queues=queues, plan=plan)
            drawn = sorted(tasks, key=lambda t: (place[t.id], key(t)))[:window]
            expected = sorted(drawn, key=key)
            assert [c.id for c in offered[0]] == [t.id for t in expected], window
            assert [t.id for t in leased] == [expected[-1].id]
            store.settle("w1", [Settlement(task_id=expected[-1].id, kind="release")], now)
        if group_by == "partition":
            by_id = {c.id: c.partition for c in offered[0]}
            assert by_id[ids[0]] == "g0"
            assert by_id[ids[-1]] is None
        if group_by == "task_type":
            offered.clear()
            plan = LeasePlan(order=plan_order, window=4, rerank=rerank, group_by=group_by)
            self.lease(store, "w1", now, limit=1, queues=queues, plan=plan, task_types=["g0", "g2"])
            assert sorted({c.task_type for c in offered[0]}) == ["g0", "g2"]
            assert [c.task_type for c in offered[0]].count("g2") == 2

    def test_a_grouped_window_leaves_paused_queues_out(self, store: TaskStore) -> None:
        """A window drawn per group never offers a task of a paused queue."""
        store.initialize_schema()
        [a] = self.add(store, T0, queue="a")
        [b] = self.add(store, T0, queue="b")
        store.pause_queue("a", T0)
        plan = LeasePlan(rerank=lambda c, n: [x.id for x in c][:n], window=10, group_by="queue")
        leased, _ = self.lease(store, "w1", T0, queues=("a", "b"), plan=plan)
        assert [t.id for t in leased] == [b]
        assert store.get(a).status is TaskStatus.QUEUED

    def test_threads_leasing_a_grouped_window_at_once_never_share_a_task(
        self, store: TaskStore
    ) -> None:
        """Threads leasing through windows drawn per group never get the same task, and
        together get them all."""
        ids = [
            tid
            for tid, _ in store.insert(
                [make_row(T0, task_type=f"g{i % 3}") for i in range(150)], T0
            )
        ]
        plan = LeasePlan(
            rerank=lambda c, n: [x.id for x in c][::-1][:n], window=8, group_by="task_type"
        )

        def drain(i: int) -> list[int]:
            leased: list[int] = []
            while batch := self.lease(store, f"w{i}", T0, limit=3, plan=plan)[0]:
                leased += [t.id for t in batch]
            return leased

        results = self._in_threads(4, drain)
        every = [tid for r in results for tid in r]
        assert sorted(every) == ids, "a task leased twice, or not at all"

    @pytest.mark.parametrize(
        ("changes", "field"),
        [({"group_by": "tenant"}, "group_by"), ({"group_by": "partition"}, "partition_key")],
    )
    def test_a_plan_with_an_unknown_grouping_is_refused(
        self, changes: dict[str, Any], field: str
    ) -> None:
        """``group_by`` is a closed vocabulary (no plugin text reaches SQL); ``partition``
        needs ``partition_key``."""
        with pytest.raises(ValidationError) as info:
            LeasePlan(rerank=lambda c, n: [], **changes)
        assert info.value.field == field

    # -- lease: expired leases ----------------------------------------------------------------

    def test_an_expired_lease_is_requeued_when_decide_expired_says_so(
        self, store: TaskStore
    ) -> None:
        """``decide_expired`` is asked about each task whose lease expired (as it was); a
        requeue puts it back to queued at the instant given, its attempt kept, reported as
        ``lease_expired``."""
        task = self.running(store, T0, max_attempts=3)
        live = self.running(store, T0 + 20 * SECOND, max_attempts=3)
        later = T0 + LEASE_US + SECOND
        decide = ExpiryRecorder(requeue_at=later + 5 * SECOND, message="worker vanished")
        leased, transitions = self.lease(store, "w2", later, limit=0, decide=decide)
        assert leased == []
        assert [t.id for t in decide.asked] == [task.id]
        assert decide.asked[0] == task
        after = store.get(task.id)
        assert transitions == [("lease_expired", after)]
        assert after.status is TaskStatus.QUEUED and after.attempts == 1
        assert us(after.run_after) == later + 5 * SECOND
        assert after.error_message == "worker vanished"
        assert after.locked_by is None and after.lease_expires_at is None
        assert store.get(live.id).status is TaskStatus.RUNNING

    def test_an_expired_lease_is_swept_before_leasing(self, store: TaskStore) -> None:
        """The sweep comes before the lease in the same call: a task requeued at ``now`` is
        taken over by the sweeping worker, its second attempt counted."""
        task = self.running(store, T0, max_attempts=3)
        later = T0 + LEASE_US + SECOND
        leased, transitions = self.lease(store, "w2", later, decide=ExpiryRecorder(later))
        assert [k for k, _ in transitions] == ["lease_expired"]
        [taken] = leased
        assert taken.id == task.id and taken.locked_by == "w2" and taken.attempts == 2

    def test_an_expired_lease_ends_failed_when_decide_expired_says_so(
        self, store: TaskStore
    ) -> None:
        """``(None, message)`` ends the task failed, with the message."""
        task = self.running(store, T0, max_attempts=3)
        later = T0 + LEASE_US + SECOND
        _, transitions = self.lease(
            store, "w2", later, decide=ExpiryRecorder(None, "gave up on it")
        )
        after = store.get(task.id)
        assert transitions == [("failed", after)]
        assert after.status is TaskStatus.FAILED and after.error_message == "gave up on it"
        assert us(after.finished_at) == later and after.locked_by is None

    def test_an_expired_lease_with_cancel_requested_ends_cancelled(self, store: TaskStore) -> None:
        """A task whose cancellation was requested ends cancelled when its lease expires —
        even when the decider asks to run it again."""
        task = self.running(store, T0, max_attempts=3)
        store.cancel(task.id, T0 + SECOND)
        later = T0 + LEASE_US + SECOND
        decide = ExpiryRecorder(later)
        _, transitions = self.lease(store, "w2", later, decide=decide)
        assert decide.asked[0].cancel_requested is True
        after = store.get(task.id)
        assert transitions == [("cancelled", after)]
        assert after.status is TaskStatus.CANCELLED and us(after.finished_at) == later

    def test_an_expired_lease_without_attempts_left_ends_failed(self, store: TaskStore) -> None:
        """A task that used all its attempts ends failed even if asked to requeue."""
        task = self.running(store, T0, max_attempts=1)
        later = T0 + LEASE_US + SECOND
        _, transitions = self.lease(store, "w2", later, decide=ExpiryRecorder(later))
        after = store.get(task.id)
        assert transitions == [("failed", after)]
        assert after.status is TaskStatus.FAILED and after.attempts == 1

    def test_expired_leases_are_reported_without_transitions(self, store: TaskStore) -> None:
        """``want_transitions=False`` leaves out the settled tasks, not the expired ones."""
        expired = self.running(store, T0, worker_id="w0", max_attempts=3)
        later = T0 + LEASE_US + SECOND
        mine = self.running(store, later, worker_id="w1")
        _, transitions = self.lease(
            store,
            "w1",
            later,
            limit=0,
            decide=ExpiryRecorder(None),
            settlements=[Settlement(task_id=mine.id, kind="complete")],
            want_transitions=False,
        )
        assert transitions == [("failed", store.get(expired.id))]
        assert store.get(mine.id).status is TaskStatus.COMPLETED

    # -- lease: settlements in the same transaction --------------------------------------------

    def test_lease_writes_settlements_first(self, store: TaskStore) -> None:
        """Settlements are written before the sweep and the lease, in the same call: a retry
        due now is leased again at once."""
        task = self.running(store, T0, max_attempts=3)
        done = self.running(store, T0)
        now = T0 + SECOND
        leased, transitions = self.lease(
            store,
            "w1",
            now,
            limit=1,
            settlements=[
                Settlement(task_id=done.id, kind="complete", result_json='"ok"'),
                Settlement(task_id=task.id, kind="retry", error="flaky", run_after_us=now),
            ],
        )
        assert [(k, t.id) for k, t in transitions] == [
            ("completed", done.id),
            ("retry_scheduled", task.id),
        ]
        assert transitions[0][1] == store.get(done.id) and transitions[0][1].result == "ok"
        assert transitions[1][1].status is TaskStatus.QUEUED
        [again] = leased
        assert again.id == task.id and again.attempts == 2 and again.error_message == "flaky"

    def test_a_failing_rerank_rolls_back_the_whole_lease(self, store: TaskStore) -> None:
        """Settlements, the sweep and the lease are one transaction: when the plan's
        ``rerank`` raises, its error reaches the caller as raised and none of them is
        written."""
        done = self.running(store, T0)
        expired = self.running(store, T0 - LEASE_US - SECOND, max_attempts=3)
        self.add(store, T0)
        before = store.list()

        def broken(candidates: Sequence[Candidate], limit: int) -> list[int]:
            raise RuntimeError("the scheduler broke")

        with pytest.raises(RuntimeError, match="the scheduler broke"):
            self.lease(
                store,
                "w1",
                T0 + SECOND,
                plan=LeasePlan(rerank=broken),
                decide=ExpiryRecorder(T0),
                settlements=[Settlement(task_id=done.id, kind="complete")],
            )
        assert store.list() == before
        assert store.get(expired.id).status is TaskStatus.RUNNING

    def test_a_failing_decide_expired_rolls_back_the_whole_lease(self, store: TaskStore) -> None:
        """When ``decide_expired`` raises, its error reaches the caller as raised and neither
        the settlements nor the sweep is written."""
        done = self.running(store, T0)
        self.running(store, T0 - LEASE_US - SECOND, max_attempts=3)
        self.add(store, T0)
        before = store.list()

        def broken(task: Task) -> tuple[int | None, str]:
            raise RuntimeError("the retry policy broke")

        with pytest.raises(RuntimeError, match="the retry policy broke"):
            self.lease(
                store,
                "w1",
                T0 + SECOND,
                decide=broken,
                settlements=[Settlement(task_id=done.id, kind="complete")],
            )
        assert store.list() == before

    # -- settle --------------------------------------------------------------------------------

    @pytest.mark.parametrize("held", [False, True], ids=["by_id", "held_task"])
    def test_settle_complete(self, store: TaskStore, held: bool) -> None:
        """``complete`` ends the task completed with its result (also when the settlement
        carries the worker's task)."""
        task = self.running(store, T0)
        none = self.running(store, T0)
        now = T0 + 2 * SECOND
        if held:
            outcomes = [
                Settlement.completed(task, json.dumps({"sum": 3}), 0.5),
                Settlement.completed(none, None, 0.1),
            ]
        else:
            outcomes = [
                Settlement(task_id=task.id, kind="complete", result_json='{"sum": 3}'),
                Settlement(task_id=none.id, kind="complete"),
            ]
        transitions = store.settle("w1", outcomes, now)
        after = store.get(task.id)
        assert transitions == [("completed", after), ("completed", store.get(none.id))]
        assert after.status is TaskStatus.COMPLETED and after.result == {"sum": 3}
        assert us(after.finished_at) == now and after.attempts == 1
        assert after.locked_by is None and after.lease_expires_at is None
        assert store.get(none.id).result is None

    def test_settle_fail(self, store: TaskStore) -> None:
        """``fail`` ends the task failed with the error, even with attempts left."""
        task = self.running(store, T0, max_attempts=5)
        transitions = store.settle(
            "w1", [Settlement(task_id=task.id, kind="fail", error="bad input")], T0 + SECOND
        )
        after = store.get(task.id)
        assert transitions == [("failed", after)]
        assert after.status is TaskStatus.FAILED and after.error_message == "bad input"
        assert us(after.finished_at) == T0 + SECOND and after.locked_by is None

    def test_settle_retry(self, store: TaskStore) -> None:
        """``retry`` puts the task back to queued at ``run_after_us`` with the error, its
        attempt kept."""
        task = self.running(store, T0, max_attempts=3)
        at = T0 + 60 * SECOND
        transitions = store.settle(
            "w1",
            [Settlement(task_id=task.id, kind="retry", error="timeout", run_after_us=at)],
            T0 + SECOND,
        )
        after = store.get(task.id)
        assert transitions == [("retry_scheduled", after)]
        assert after.status is TaskStatus.QUEUED and after.attempts == 1
        assert us(after.run_after) == at and after.error_message == "timeout"
        assert after.locked_by is None and after.finished_at is None
        assert self.lease(store, "w1", at - 1)[0] == []
        assert [t.attempts for t in self.lease(store, "w1", at)[0]] == [2]

    def test_settle_retry_of_a_task_whose_cancel_was_requested_cancels_it(
        self, store: TaskStore
    ) -> None:
        """A retry of a task whose cancellation was requested ends it cancelled."""
        task = self.running(store, T0, max_attempts=3)
        store.cancel(task.id, T0 + SECOND)
        transitions = store.settle(
            "w1",
            [Settlement(task_id=task.id, kind="retry", error="e", run_after_us=T0)],
            T0 + 2 * SECOND,
        )
        after = store.get(task.id)
        assert transitions == [("cancelled", after)]
        assert after.status is TaskStatus.CANCELLED and us(after.finished_at) == T0 + 2 * SECOND

    def test_settle_retry_without_attempts_left_fails_it(self, store: TaskStore) -> None:
        """A retry of a task that used all its attempts ends it failed."""
        task = self.running(store, T0, max_attempts=1)
        transitions = store.settle(
            "w1",
            [Settlement(task_id=task.id, kind="retry", error="e", run_after_us=T0)],
            T0 + SECOND,
        )
        after = store.get(task.id)
        assert transitions == [("failed", after)]
        assert after.status is TaskStatus.FAILED and after.attempts == 1

    def test_settle_cancelled(self, store: TaskStore) -> None:
        """``cancelled`` ends the task cancelled with the message."""
        task = self.running(store, T0, max_attempts=3)
        store.cancel(task.id, T0)
        transitions = store.settle(
            "w1",
            [Settlement(task_id=task.id, kind="cancelled", error="stopped by request")],
            T0 + SECOND,
        )
        after = store.get(task.id)
        assert transitions == [("cancelled", after)]
        assert after.status is TaskStatus.CANCELLED and after.error_message == "stopped by request"
        assert us(after.finished_at) == T0 + SECOND and after.locked_by is None

    def test_settle_release_gives_the_attempt_back(self, store: TaskStore) -> None:
        """``release`` puts the task back to queued, due at once, without counting the
        attempt."""
        task = self.running(store, T0, max_attempts=1)
        transitions = store.settle("w1", [Settlement(task_id=task.id, kind="release")], T0 + SECOND)
        after = store.get(task.id)
        assert transitions == [("released", after)]
        assert after.status is TaskStatus.QUEUED and after.attempts == 0
        assert after.locked_by is None and after.lease_expires_at is None
        assert after.finished_at is None
        [again] = self.lease(store, "w2", T0 + SECOND)[0]
        assert again.id == task.id and again.attempts == 1

    @pytest.mark.parametrize("kind", ["complete", "fail", "retry", "cancelled", "release"])
    def test_an_outcome_for_a_lost_lease_is_dropped(self, store: TaskStore, kind: str) -> None:
        """An outcome from a worker that does not hold the lease — another worker's, one that
        expired and was taken over, or a task that already ended — is dropped: no transition,
        nothing changed."""
        outcome = Settlement(task_id=0, kind=kind, error="late", run_after_us=T0)  # type: ignore[arg-type]
        # Held by another worker.
        other = self.running(store, T0, worker_id="w1", max_attempts=3)
        # Taken over by w2 after w1's lease expired.
        taken = self.running(store, T0, worker_id="w1", max_attempts=3)
        later = T0 + LEASE_US + SECOND
        # Ended (completed by w1).
        ended = self.running(store, later, worker_id="w1", max_attempts=3)
        store.settle("w1", [Settlement(task_id=ended.id, kind="complete")], later)
        # Expired, then taken over by w2: other's and taken's leases expired together.
        self.lease(store, "w2", later, decide=ExpiryRecorder(later))
        assert store.get(taken.id).locked_by == "w2" and store.get(other.id).locked_by == "w2"
        before = store.list()
        for tid, worker in ((other.id, "w3"), (taken.id, "w1"), (ended.id, "w1")):
            assert store.settle(worker, [attrs.evolve(outcome, task_id=tid)], later + 1) == []
        assert store.list() == before

    def test_a_second_outcome_for_one_task_in_one_call_is_dropped(self, store: TaskStore) -> None:
        """Two outcomes for one task in one ``settle``: the first is written, the second
        dropped (the attempt is over)."""
        task = self.running(store, T0, max_attempts=3)
        transitions = store.settle(
            "w1",
            [
                Settlement(task_id=task.id, kind="complete", result_json="1"),
                Settlement(task_id=task.id, kind="fail", error="late"),
            ],
            T0 + SECOND,
        )
        assert [kind for kind, _ in transitions] == ["completed"]
        after = store.get(task.id)
        assert after.status is TaskStatus.COMPLETED and after.error_message is None

    def test_settle_writes_every_outcome_in_one_call(self, store: TaskStore) -> None:
        """A batch of outcomes answers one transition per outcome written, in order, and
        skips the dropped ones."""
        a = self.running(store, T0)
        b = self.running(store, T0, worker_id="w2")
        c = self.running(store, T0)
        transitions = store.settle(
            "w1",
            [
                Settlement(task_id=a.id, kind="fail", error="e"),
                Settlement(task_id=b.id, kind="complete"),
                Settlement(task_id=c.id, kind="complete"),
            ],
            T0 + SECOND,
        )
        assert [(k, t.id) for k, t in transitions] == [("failed", a.id), ("completed", c.id)]
        assert store.get(b.id).status is TaskStatus.RUNNING

    # -- renew ---------------------------------------------------------------------------------

    def test_renew_extends_the_leases_held(self, store: TaskStore) -> None:
        """``renew`` extends the worker's leases to ``now + lease_us`` and answers which it
        holds and which were asked to cancel; lost or unknown ids are missing."""
        mine = [self.running(store, T0, max_attempts=2) for _ in range(3)]
        theirs = self.running(store, T0, worker_id="w2")
        finished = self.in_status(store, TaskStatus.COMPLETED, T0)
        store.cancel(mine[1].id, T0)
        store.settle("w1", [Settlement(task_id=mine[2].id, kind="release")], T0)
        now = T0 + 10 * SECOND
        asked = [m.id for m in mine] + [theirs.id, finished, mine[0].id + 10_000]
        held, cancel = store.renew("w1", asked, now, 45 * SECOND)
        assert held == {mine[0].id, mine[1].id}
        assert cancel == {mine[1].id}
        for tid in held:
            assert us(store.get(tid).lease_expires_at) == now + 45 * SECOND
        assert us(store.get(theirs.id).lease_expires_at) == T0 + LEASE_US

    def test_renew_keeps_a_lease_from_expiring(self, store: TaskStore) -> None:
        """A renewed lease is not swept when the original one would have expired."""
        task = self.running(store, T0, max_attempts=2)
        store.renew("w1", [task.id], T0 + LEASE_US - SECOND, LEASE_US)
        self.lease(store, "w2", T0 + LEASE_US + SECOND)
        assert store.get(task.id).locked_by == "w1"

    def test_renew_misses_a_lease_taken_over(self, store: TaskStore) -> None:
        """After its lease expired and another worker took the task, it is not held."""
        task = self.running(store, T0, max_attempts=2)
        later = T0 + LEASE_US + SECOND
        self.lease(store, "w2", later, decide=ExpiryRecorder(later))
        assert store.renew("w1", [task.id], later, LEASE_US) == (set(), set())
        assert store.renew("w2", [task.id], later, LEASE_US) == ({task.id}, set())

    # -- user actions --------------------------------------------------------------------------

    def test_cancel_a_queued_task_cancels_it_at_once(self, store: TaskStore) -> None:
        """A queued (or delayed) task is cancelled at once and never leased."""
        [tid] = self.add(store, T0, run_after_us=T0 + 60 * SECOND)
        kind, task = store.cancel(tid, T0 + SECOND)
        assert kind == "cancelled" and task == store.get(tid)
        assert task.status is TaskStatus.CANCELLED and us(task.finished_at) == T0 + SECOND
        assert self.lease(store, "w1", T0 + 120 * SECOND)[0] == []

    def test_cancel_a_running_task_asks_its_worker(self, store: TaskStore) -> None:
        """A running task stays running with ``cancel_requested``; its worker learns it from
        ``renew``."""
        running = self.running(store, T0)
        kind, task = store.cancel(running.id, T0 + SECOND)
        assert kind == "cancel_requested" and task == store.get(running.id)
        assert task.status is TaskStatus.RUNNING and task.cancel_requested is True
        assert task.locked_by == "w1"
        assert store.renew("w1", [running.id], T0 + SECOND, LEASE_US) == (
            {running.id},
            {running.id},
        )

    @pytest.mark.parametrize(
        "status", [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED]
    )
    def test_cancel_a_finished_task_is_an_invalid_transition(
        self, store: TaskStore, status: TaskStatus
    ) -> None:
        """Cancelling a finished task raises InvalidTransition and changes nothing."""
        tid = self.in_status(store, status, T0)
        before = store.get(tid)
        with pytest.raises(InvalidTransition):
            store.cancel(tid, T0 + SECOND)
        assert store.get(tid) == before

    def test_cancel_an_unknown_task_raises_task_not_found(self, store: TaskStore) -> None:
        """Cancelling an unknown id raises TaskNotFound."""
        [tid] = self.add(store, T0)
        with pytest.raises(TaskNotFound):
            store.cancel(tid + 1000, T0)

    @pytest.mark.parametrize("status", [TaskStatus.FAILED, TaskStatus.CANCELLED])
    def test_requeue_a_finished_task(self, store: TaskStore, status: TaskStatus) -> None:
        """A failed or cancelled task goes back to queued at ``now_us`` with a fresh attempt
        count."""
        tid = self.in_status(store, status, T0, max_attempts=2)
        now = T0 + 60 * SECOND
        task = store.requeue(tid, now)
        assert task == store.get(tid)
        assert task.status is TaskStatus.QUEUED and task.attempts == 0
        assert us(task.run_after) == now and task.finished_at is None
        assert task.cancel_requested is False and task.locked_by is None
        [again] = self.lease(store, "w1", now)[0]
        assert again.id == tid and again.attempts == 1

    @pytest.mark.parametrize(
        "status", [TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.COMPLETED]
    )
    def test_requeue_needs_a_failed_or_cancelled_task(
        self, store: TaskStore, status: TaskStatus
    ) -> None:
        """Requeueing a queued, running or completed task raises InvalidTransition."""
        tid = self.in_status(store, status, T0)
        before = store.get(tid)
        with pytest.raises(InvalidTransition):
            store.requeue(tid, T0 + SECOND)
        assert store.get(tid) == before

    def test_requeue_an_unknown_task_raises_task_not_found(self, store: TaskStore) -> None:
        """Requeueing an unknown id raises TaskNotFound."""
        store.initialize_schema()
        with pytest.raises(TaskNotFound):
            store.requeue(12345, T0)

    def test_prune_deletes_only_what_finished_before_the_cut_off(self, store: TaskStore) -> None:
        """Tasks of the given final statuses that finished before ``older_than_us`` go; later
        ones, other statuses and active tasks stay."""
        old = {s: self.in_status(store, s, T0) for s in TERMINAL_STATUSES}
        cut = T0 + 10 * SECOND
        at_cut = self.in_status(store, TaskStatus.COMPLETED, cut)
        young = self.in_status(store, TaskStatus.FAILED, T0 + 20 * SECOND)
        active = [self.in_status(store, s, T0) for s in (TaskStatus.QUEUED, TaskStatus.RUNNING)]
        pruned = store.prune(older_than_us=cut, statuses=[TaskStatus.COMPLETED, TaskStatus.FAILED])
        assert pruned == 2
        for status, tid in old.items():
            if status is TaskStatus.CANCELLED:
                assert store.get(tid).status is TaskStatus.CANCELLED
            else:
                with pytest.raises(TaskNotFound):
                    store.get(tid)
        assert {t.id for t in store.list()} == {old[TaskStatus.CANCELLED], at_cut, young, *active}
        assert store.prune(older_than_us=cut, statuses=[TaskStatus.COMPLETED]) == 0

    def test_prune_frees_the_keys(self, store: TaskStore) -> None:
        """A pruned task's idempotency key is free: the next insert with it is a new task."""
        self.in_status(store, TaskStatus.COMPLETED, T0, idempotency_key="k")
        assert store.prune(older_than_us=T0 + SECOND, statuses=[TaskStatus.COMPLETED]) == 1
        assert store.find_by_key("k") is None
        [(new, existing)] = store.insert([make_row(T0, idempotency_key="k")], T0 + 2 * SECOND)
        assert existing is None and store.get(new).status is TaskStatus.QUEUED
        assert sum(store.counts().values()) == 1

    @pytest.mark.parametrize("status", [TaskStatus.QUEUED, TaskStatus.RUNNING])
    def test_prune_refuses_active_statuses(self, store: TaskStore, status: TaskStatus) -> None:
        """An active status raises ValidationError and nothing is deleted."""
        done = self.in_status(store, TaskStatus.COMPLETED, T0)
        self.in_status(store, status, T0)
        with pytest.raises(ValidationError):
            store.prune(older_than_us=T0 + SECOND, statuses=[TaskStatus.COMPLETED, status])
        assert store.get(done).status is TaskStatus.COMPLETED
        assert sum(store.counts().values()) == 2

    def test_prune_forgets_silent_workers(self, store: TaskStore) -> None:
        """Worker records without a heartbeat since the cut-off go with the tasks."""
        store.register_worker(_worker("silent", T0))
        store.register_worker(_worker("alive", T0))
        store.renew("alive", [], T0 + 20 * SECOND, LEASE_US)
        store.prune(older_than_us=T0 + 10 * SECOND, statuses=[TaskStatus.COMPLETED])
        assert [w.worker_id for w in store.workers()] == ["alive"]

    def test_vacuum_keeps_every_task(self, store: TaskStore) -> None:
        """``vacuum`` after a prune leaves the remaining tasks as they were."""
        for i in range(30):
            self.in_status(store, TaskStatus.COMPLETED, T0 + i, payload_json=json.dumps("x" * 500))
        kept = self.add(store, T0 + 100, 3, payload_json='{"keep": true}')
        store.prune(older_than_us=T0 + SECOND, statuses=[TaskStatus.COMPLETED])
        before = store.list()
        store.vacuum()
        assert store.list() == before and [t.id for t in before] == kept
        assert store.check() == []

    # -- filters and bulk actions --------------------------------------------------------------

    def _filterable(self, store: TaskStore) -> dict[int, Task]:
        """Thirty tasks over three types, three queues, every status, one second apart, some
        with errors of mixed case; all of them by id."""
        statuses = list(TaskStatus)
        errors = ["Timeout while CONNECTING", "disk full", None]
        ids = []
        for i in range(30):
            status = statuses[i % 5]
            now = T0 + i * SECOND
            changes: dict[str, Any] = {
                "task_type": "abc"[i % 3],
                "queue": ("q1", "q2", "q3")[(i // 3) % 3],
            }
            error = errors[i % 3]
            if status is TaskStatus.FAILED and error is not None:
                task = self.running(store, now, "w-setup", **changes)
                store.settle(
                    "w-setup", [Settlement(task_id=task.id, kind="fail", error=error)], now
                )
                ids.append(task.id)
            else:
                ids.append(self.in_status(store, status, now, **changes))
        return {t.id: t for t in store.get_many(ids)}

    def _filters(self, tasks: dict[int, Task]) -> list[TaskFilter]:
        """Filters over every field of :class:`TaskFilter`, alone and together."""
        ids = sorted(tasks)
        return [
            TaskFilter(),
            TaskFilter(statuses=TaskStatus.QUEUED),
            TaskFilter(statuses=TaskStatus.RUNNING),
            TaskFilter(statuses=(TaskStatus.QUEUED, TaskStatus.RUNNING)),
            TaskFilter(statuses=(TaskStatus.COMPLETED, TaskStatus.FAILED)),
            TaskFilter(statuses=(TaskStatus.RUNNING, TaskStatus.CANCELLED)),
            TaskFilter(statuses=tuple(TaskStatus)),
            TaskFilter(task_types="a"),
            TaskFilter(task_types=("a", "c")),
            TaskFilter(task_types="nobody"),
            TaskFilter(queues="q2"),
            TaskFilter(queues=("q1", "q3")),
            TaskFilter(ids=(ids[0], ids[7], ids[29], ids[29] + 1000)),
            TaskFilter(error_contains="connecting"),
            TaskFilter(error_contains="DISK"),
            TaskFilter(error_contains="e"),
            TaskFilter(error_contains="no such error"),
            TaskFilter(created_after=from_us(T0 + 10 * SECOND)),
            TaskFilter(created_before=from_us(T0 + 10 * SECOND)),
            TaskFilter(
                created_after=from_us(T0 + 5 * SECOND), created_before=from_us(T0 + 20 * SECOND)
            ),
            TaskFilter(finished_before=from_us(T0 + 17 * SECOND)),
            TaskFilter(max_id=ids[11]),
            TaskFilter(statuses=TaskStatus.FAILED, error_contains="timeout"),
            TaskFilter(
                statuses=(TaskStatus.QUEUED, TaskStatus.COMPLETED),
                task_types=("a", "b"),
                queues=("q1", "q2"),
                created_after=from_us(T0 + 2 * SECOND),
                max_id=ids[25],
            ),
        ]

    def test_list_matching_and_count_matching_follow_every_field(self, store: TaskStore) -> None:
        """``list_matching`` answers the tasks a filter matches (every field given must
        match; ``error_contains`` ignores case; ``finished_before`` only finished tasks), by
        id, at most ``limit``; ``count_matching`` counts them."""
        tasks = self._filterable(store)
        for flt in self._filters(tasks):
            expected = [i for i in sorted(tasks) if flt.matches(tasks[i])]
            assert [t.id for t in store.list_matching(flt, limit=100)] == expected, flt
            assert store.list_matching(flt, limit=3) == [tasks[i] for i in expected[:3]], flt
            newest = store.list_matching(flt, limit=4, newest_first=True)
            assert [t.id for t in newest] == expected[::-1][:4], flt
            assert store.count_matching(flt) == len(expected), flt

    @pytest.mark.parametrize("newest_first", [False, True])
    def test_list_matching_pages_through_every_match_once(
        self, store: TaskStore, newest_first: bool
    ) -> None:
        """Paging with ``after_id`` = the last id of the previous page visits every match
        once (ids above it, or below it with ``newest_first``)."""
        tasks = self._filterable(store)
        flt = TaskFilter(statuses=(TaskStatus.QUEUED, TaskStatus.FAILED), queues=("q1", "q2"))
        seen: list[int] = []
        after: int | None = None
        while page := store.list_matching(flt, limit=2, after_id=after, newest_first=newest_first):
            seen += [t.id for t in page]
            after = page[-1].id
        expected = [i for i in sorted(tasks, reverse=newest_first) if flt.matches(tasks[i])]
        assert seen == expected and len(expected) > 4

    def test_cancel_matching_cancels_queued_and_flags_running_tasks(self, store: TaskStore) -> None:
        """The queued tasks a filter matches end cancelled at once, with the message; the
        running ones are flagged for their workers; finished ones and tasks the filter does
        not match are left alone. Each change is answered with the task after it (no damaged
        task here: ``damaged`` is empty)."""
        tasks = self._filterable(store)
        now = T0 + 100 * SECOND
        flt = TaskFilter(queues=("q1", "q2"))
        done = store.cancel_matching(flt, now, "stopped by the operator")
        assert isinstance(done, BulkResult) and done.damaged == ()
        transitions = done.changed
        queued = [i for i in tasks if flt.matches(tasks[i]) and tasks[i].status.value == "queued"]
        running = [i for i in tasks if flt.matches(tasks[i]) and tasks[i].status.value == "running"]
        assert sorted(t.id for k, t in transitions if k == "cancelled") == sorted(queued)
        assert sorted(t.id for k, t in transitions if k == "cancel_requested") == sorted(running)
        assert len(transitions) == len(queued) + len(running) and queued and running
        assert done.count == len(transitions)
        for _, task in transitions:
            assert task == store.get(task.id)
        for tid in queued:
            after = store.get(tid)
            assert after.status is TaskStatus.CANCELLED
            assert after.error_message == "stopped by the operator"
            assert us(after.finished_at) == now
        for tid in running:
            after = store.get(tid)
            assert after.status is TaskStatus.RUNNING and after.cancel_requested is True
            assert after.locked_by == "w-setup"
        for tid, before in tasks.items():
            if tid not in queued and tid not in running:
                assert store.get(tid) == before
        nothing = store.cancel_matching(TaskFilter(statuses=TaskStatus.COMPLETED), now)
        assert nothing == BulkResult() and nothing.count == 0
        more = store.cancel_matching(TaskFilter(queues="q3", statuses="queued"), now).changed
        assert more and all(k == "cancelled" for k, _ in more)
        assert all(t.error_message == "cancelled by request" for _, t in more)

    def test_requeue_matching_queues_failed_and_cancelled_tasks_again(
        self, store: TaskStore
    ) -> None:
        """The failed and cancelled tasks a filter matches go back to queued at ``now_us``
        with a fresh attempt count and no error; the others are left alone."""
        tasks = self._filterable(store)
        now = T0 + 30 * SECOND  # after the last enqueue, before any lease expires
        flt = TaskFilter(task_types=("a", "b"))
        done = store.requeue_matching(flt, now)
        assert isinstance(done, BulkResult) and done.damaged == ()
        requeued = done.changed
        expected = [
            i
            for i in sorted(tasks)
            if flt.matches(tasks[i]) and tasks[i].status.value in ("failed", "cancelled")
        ]
        assert sorted(t.id for t in requeued) == expected and expected
        for task in requeued:
            assert task == store.get(task.id)
            assert task.status is TaskStatus.QUEUED and task.attempts == 0
            assert us(task.run_after) == now and task.error_message is None
            assert task.finished_at is None and task.started_at is None
            assert task.cancel_requested is False and task.result is None
        for tid, before in tasks.items():
            if tid not in expected:
                assert store.get(tid) == before
        assert store.requeue_matching(TaskFilter(statuses=TaskStatus.QUEUED), now) == BulkResult()
        leased, _ = self.lease(store, "w1", now, limit=100, queues=("q1", "q2", "q3"))
        assert set(expected) <= {t.id for t in leased}

    def test_delete_matching_deletes_queued_and_finished_tasks_never_running_ones(
        self, store: TaskStore
    ) -> None:
        """Every matching task but the running ones is deleted, its idempotency key freed;
        a filter of running tasks only is refused (ValidationError) and deletes nothing."""
        tasks = self._filterable(store)
        keyed = self.in_status(store, TaskStatus.COMPLETED, T0, idempotency_key="k", queue="q1")
        with pytest.raises(ValidationError):
            store.delete_matching(TaskFilter(statuses=TaskStatus.RUNNING, queues="q1"))
        assert store.count_matching(TaskFilter()) == len(tasks) + 1
        flt = TaskFilter(queues="q1")
        deleted = store.delete_matching(flt)
        gone = [i for i in tasks if flt.matches(tasks[i]) and tasks[i].status.value != "running"]
        assert deleted == len(gone) + 1
        for tid, before in tasks.items():
            if tid in gone:
                with pytest.raises(TaskNotFound):
                    store.get(tid)
            else:
                assert store.get(tid) == before
        assert store.find_by_key("k") is None
        [(new, existing)] = store.insert([make_row(T0, idempotency_key="k")], T0)
        assert existing is None and new != keyed
        assert store.delete_matching(TaskFilter(queues="q1", statuses="completed")) == 0

    def test_bulk_actions_cover_more_tasks_than_one_batch(self, store: TaskStore) -> None:
        """Cancelling, requeueing and deleting by filter reach every match however many
        there are (a store may work in batches)."""
        ids = self.add(store, T0, 1234)
        kept = self.add(store, T0, 3, queue="other")
        now = T0 + SECOND
        flt = TaskFilter(queues="default")
        cancelled = store.cancel_matching(flt, now).changed
        assert sorted(t.id for _, t in cancelled) == ids
        assert store.count_matching(TaskFilter(statuses=TaskStatus.CANCELLED)) == len(ids)
        assert sorted(t.id for t in store.requeue_matching(flt, now).changed) == ids
        assert store.count_matching(TaskFilter(statuses=TaskStatus.QUEUED)) == len(ids) + 3
        assert store.delete_matching(flt) == len(ids)
        assert [t.id for t in store.list(limit=100)] == kept

    def test_bulk_actions_stop_at_max_id(self, store: TaskStore) -> None:
        """``max_id`` bounds a bulk action to the tasks up to it (those enqueued after an
        operator confirmed it are left alone)."""
        ids = self.add(store, T0, 6)
        now = T0 + SECOND
        bounded = TaskFilter(max_id=ids[2])
        assert sorted(t.id for _, t in store.cancel_matching(bounded, now).changed) == ids[:3]
        assert store.count_matching(TaskFilter(statuses=TaskStatus.QUEUED)) == 3
        assert (
            sorted(t.id for t in store.requeue_matching(TaskFilter(max_id=ids[1]), now).changed)
            == (ids[:2])
        )
        assert store.delete_matching(TaskFilter(max_id=ids[3])) == 4
        assert [t.id for t in store.list()] == ids[4:]

    def test_finished_buckets(self, store: TaskStore) -> None:
        """Tasks that reached a final status at or after ``since_us``, counted per interval
        of ``bucket_us`` (from ``since_us``) and status, oldest interval first; active tasks
        and earlier ones are not counted."""
        store.initialize_schema()
        since = T0 + 10 * SECOND
        assert store.finished_buckets(since, 10 * SECOND) == []
        self.in_status(store, TaskStatus.COMPLETED, T0)  # before since
        for offset, status in [
            (10, TaskStatus.COMPLETED),
            (12, TaskStatus.COMPLETED),
            (19, TaskStatus.FAILED),
            (20, TaskStatus.COMPLETED),
            (35, TaskStatus.CANCELLED),
            (39, TaskStatus.CANCELLED),
        ]:
            self.in_status(store, status, T0 + offset * SECOND)
        self.in_status(store, TaskStatus.QUEUED, T0 + 15 * SECOND)
        self.in_status(store, TaskStatus.RUNNING, T0 + 15 * SECOND)
        got = store.finished_buckets(since, 10 * SECOND)
        assert sorted(got) == [
            (since, "completed", 2),
            (since, "failed", 1),
            (since + 10 * SECOND, "completed", 1),
            (since + 20 * SECOND, "cancelled", 2),
        ]
        assert [b for b, _, _ in got] == sorted(b for b, _, _ in got)
        assert sorted(store.finished_buckets(since, 3600 * SECOND)) == [
            (since, "cancelled", 2),
            (since, "completed", 3),
            (since, "failed", 1),
        ]

    # -- the history of failed attempts --------------------------------------------------------

    def test_task_failures_record_each_failed_attempt(self, store: TaskStore) -> None:
        """Each settlement of kind ``retry``, ``fail`` or ``cancelled`` adds to the task's
        history — attempt, instant, worker, outcome, the error stored, the traceback —
        oldest first; completions and releases add nothing."""
        task = self.running(store, T0, max_attempts=3)
        store.settle(
            "w1",
            [
                Settlement(
                    task_id=task.id,
                    kind="retry",
                    error="boom 1",
                    run_after_us=T0 + SECOND,
                    traceback="Traceback 1",
                )
            ],
            T0 + SECOND,
        )
        leased, _ = self.lease(store, "w2", T0 + 2 * SECOND)
        assert [t.id for t in leased] == [task.id]
        store.settle("w2", [Settlement(task_id=task.id, kind="release")], T0 + 2 * SECOND)
        self.lease(store, "w3", T0 + 3 * SECOND)
        store.settle(
            "w3",
            [Settlement(task_id=task.id, kind="fail", error="boom 2", traceback="Traceback 2")],
            T0 + 4 * SECOND,
        )
        assert store.task_failures(task.id) == [
            AttemptFailure(
                task_id=task.id,
                attempt=1,
                at=from_us(T0 + SECOND),
                worker_id="w1",
                outcome="retry_scheduled",
                error="boom 1",
                traceback="Traceback 1",
            ),
            AttemptFailure(
                task_id=task.id,
                attempt=2,
                at=from_us(T0 + 4 * SECOND),
                worker_id="w3",
                outcome="failed",
                error="boom 2",
                traceback="Traceback 2",
            ),
        ]
        done = self.running(store, T0)
        store.settle("w1", [Settlement(task_id=done.id, kind="complete")], T0 + SECOND)
        assert store.task_failures(done.id) == []
        assert store.task_failures(task.id + 1000) == []

    def test_task_failures_record_the_outcome_a_settlement_led_to(self, store: TaskStore) -> None:
        """A cancelled attempt is recorded ``cancelled`` (its error defaulting as the task's
        does); a retry of a task whose cancellation was requested ``cancelled``; a retry
        without attempts left ``failed``, with the error the task keeps."""
        by_worker = self.running(store, T0, max_attempts=3)
        flagged = self.running(store, T0, max_attempts=3)
        store.cancel(flagged.id, T0)
        last = self.running(store, T0, max_attempts=1)
        now = T0 + SECOND
        store.settle(
            "w1",
            [
                Settlement(task_id=by_worker.id, kind="cancelled"),
                Settlement(task_id=flagged.id, kind="retry", error="e2", run_after_us=now),
                Settlement(task_id=last.id, kind="retry", error="e3", run_after_us=now),
            ],
            now,
        )
        for tid, outcome in [
            (by_worker.id, "cancelled"),
            (flagged.id, "cancelled"),
            (last.id, "failed"),
        ]:
            [failure] = store.task_failures(tid)
            task = store.get(tid)
            assert (failure.outcome, failure.attempt, failure.worker_id) == (outcome, 1, "w1")
            assert failure.error == task.error_message and failure.at == from_us(now)
            assert failure.traceback is None

    def test_an_expired_lease_enters_the_history(self, store: TaskStore) -> None:
        """An expired lease is recorded ``lease_expired`` with the attempt, the worker that
        held it and the decider's message — whether the task runs again or ends."""
        task = self.running(store, T0, worker_id="w0", max_attempts=2)
        later = T0 + LEASE_US + SECOND
        self.lease(store, "w1", later, decide=ExpiryRecorder(later, "worker vanished"))
        assert store.get(task.id).locked_by == "w1"
        again = later + LEASE_US + SECOND
        self.lease(store, "w2", again, limit=0, decide=ExpiryRecorder(None, "gave up"))
        assert store.get(task.id).status is TaskStatus.FAILED
        assert store.task_failures(task.id) == [
            AttemptFailure(
                task_id=task.id,
                attempt=1,
                at=from_us(later),
                worker_id="w0",
                outcome="lease_expired",
                error="worker vanished",
            ),
            AttemptFailure(
                task_id=task.id,
                attempt=2,
                at=from_us(again),
                worker_id="w1",
                outcome="lease_expired",
                error="gave up",
            ),
        ]

    def test_history_survives_a_requeue_and_goes_with_the_task(self, store: TaskStore) -> None:
        """Requeueing (one task or by filter) clears the task's error but keeps its history,
        which goes on in the order the attempts ended (a requeued task counts its attempts
        from 1 again); deleting or pruning the task deletes its history."""
        task = self.running(store, T0, max_attempts=2)
        store.settle(
            "w1",
            [Settlement(task_id=task.id, kind="retry", error="first", run_after_us=T0)],
            T0,
        )
        self.lease(store, "w1", T0 + SECOND)
        store.settle("w1", [Settlement(task_id=task.id, kind="fail", error="second")], T0 + SECOND)
        assert store.requeue(task.id, T0 + 2 * SECOND).error_message is None
        self.lease(store, "w1", T0 + 2 * SECOND)
        store.settle(
            "w1", [Settlement(task_id=task.id, kind="fail", error="third")], T0 + 2 * SECOND
        )
        [again] = store.requeue_matching(TaskFilter(ids=task.id), T0 + 3 * SECOND).changed
        assert again.error_message is None and store.get(task.id).error_message is None
        history = store.task_failures(task.id)
        assert [(f.error, f.attempt) for f in history] == [
            ("first", 1),
            ("second", 2),
            ("third", 1),
        ]
        assert store.delete_matching(TaskFilter(ids=task.id)) == 1
        assert store.task_failures(task.id) == []
        pruned = self.running(store, T0)
        store.settle("w1", [Settlement(task_id=pruned.id, kind="fail", error="x")], T0)
        assert len(store.task_failures(pruned.id)) == 1
        store.prune(older_than_us=T0 + SECOND, statuses=[TaskStatus.FAILED])
        assert store.task_failures(pruned.id) == []

    # -- paused queues -------------------------------------------------------------------------

    def test_a_paused_queue_is_left_out_until_it_is_resumed(self, store: TaskStore) -> None:
        """While a queue is paused no lease takes its tasks (plain or re-ranked), and
        ``has_work``, ``next_wakeup_delay_us`` and ``due_queue_names`` leave it out; it is
        listed with the instant it was paused. Pausing twice or resuming a running queue
        answers False."""
        store.initialize_schema()
        assert store.paused_queues() == {}
        [a] = self.add(store, T0, queue="a")
        self.add(store, T0, queue="a", run_after_us=T0 + 60 * SECOND)
        assert store.pause_queue("a", T0 + 1) is True
        assert store.pause_queue("a", T0 + 2) is False
        assert store.paused_queues() == {"a": from_us(T0 + 1)}
        assert store.has_work(["a"], T0) is False
        assert store.next_wakeup_delay_us(["a"], T0) is None
        assert store.due_queue_names(T0) == []
        rerank = LeasePlan(rerank=lambda c, n: [x.id for x in c][:n], window=10)
        for plan in (FIFO, rerank):
            assert self.lease(store, "w1", T0, queues=("a",), plan=plan)[0] == []
        [b] = self.add(store, T0, queue="b")
        assert store.has_work(["a", "b"], T0) is True
        assert store.due_queue_names(T0) == ["b"]
        leased, _ = self.lease(store, "w1", T0, queues=("a", "b"), lease_us=3600 * SECOND)
        assert [t.id for t in leased] == [b]
        assert store.has_work(["a", "b"], T0) is False
        assert store.resume_queue("a") is True
        assert store.resume_queue("a") is False
        assert store.paused_queues() == {}
        assert store.has_work(["a"], T0) is True
        assert store.due_queue_names(T0) == ["a"]
        assert store.next_wakeup_delay_us(["a"], T0) == 60 * SECOND
        assert [t.id for t in self.lease(store, "w1", T0, queues=("a",))[0]] == [a]

    def test_a_paused_queues_running_tasks_finish(self, store: TaskStore) -> None:
        """Pausing a queue leaves its running tasks to their workers: they settle as
        usual."""
        task = self.running(store, T0, queue="a")
        store.pause_queue("a", T0)
        [(kind, after)] = store.settle("w1", [Settlement(task_id=task.id, kind="complete")], T0)
        assert kind == "completed" and after.status is TaskStatus.COMPLETED
        assert store.paused_queues() == {"a": from_us(T0)}

    def test_queued_queue_names(self, store: TaskStore) -> None:
        """The queues that have queued tasks, due or delayed, paused or not, sorted; not
        those with only running or finished tasks."""
        store.initialize_schema()
        assert store.queued_queue_names() == []
        self.add(store, T0, queue="zeta")
        self.add(store, T0, queue="delayed", run_after_us=T0 + 60 * SECOND)
        self.add(store, T0, 3, queue="alpha")
        self.add(store, T0, queue="paused")
        store.pause_queue("paused", T0)
        self.running(store, T0, queue="running")
        self.in_status(store, TaskStatus.COMPLETED, T0, queue="done")
        self.in_status(store, TaskStatus.CANCELLED, T0, queue="cancelled")
        assert store.queued_queue_names() == ["alpha", "delayed", "paused", "zeta"]

    def test_names_are_listed_in_byte_order(self, store: TaskStore) -> None:
        """Queue, schedule and limit names are listed in byte order — ``'Zeta'``, ``'_x'``,
        ``'alpha'``, ``'Ärger'`` — as SQLite's BINARY collation and Python's ``sorted`` order
        them, whatever collation the backend would sort text by (see :func:`name_listings`)."""
        queues = sorted(ORDER_NAMES)
        limits = sorted(LIMIT_ORDER_NAMES)
        assert queues[:3] == ["Alpha", "Zeta", "_x"] and queues[-2:] == ["Ärger", "é"]
        assert name_listings(store) == {
            "queue_gauges": queues,
            "due_queue_names": queues,
            "queued_queue_names": queues,
            "paused_queues": sorted(ORDER_NAMES[1::2]),
            "list_schedules": queues,
            "list_schedules(names)": queues,
            "list_schedules(due_by_us)": queues,
            "list_limits": limits,
            "limit_usage": limits,
        }

    # -- periodic schedules --------------------------------------------------------------------

    @staticmethod
    def step(
        row: ScheduleRow,
        ticks: Sequence[int],
        next_tick_us: int | None,
        *,
        skipped: int = 0,
        **task: Any,
    ) -> TickFire:
        """The step a scheduler takes after reading ``row``: fire ``ticks`` (each a task of
        type ``tick`` with the tick in its payload, unless ``task`` says otherwise), then go
        to ``next_tick_us``."""
        assert row.next_tick_us is not None
        return TickFire(
            schedule=row.name,
            expect_next_tick_us=row.next_tick_us,
            expect_revision=row.revision,
            ticks=tuple(
                (t, make_row(0, task_type="tick", payload_json=json.dumps({"tick": t}), **task))
                for t in ticks
            ),
            next_tick_us=next_tick_us,
            skipped=skipped,
        )

    @staticmethod
    def schedule(store: TaskStore, name: str) -> ScheduleRow:
        """The stored schedule named ``name``."""
        [row] = store.list_schedules(names=[name])
        return row

    def test_upsert_creates_schedules_and_lists_them_by_name(self, store: TaskStore) -> None:
        """New names are created with revision 1, their next tick, no counts; listed by
        name, or only those named."""
        answers = store.upsert_schedules(
            [make_schedule("b", T0 + SECOND), make_schedule("a", None, source="added")], T0
        )
        assert answers == ["created", "created"]
        a, b = store.list_schedules()
        assert (a.name, b.name) == ("a", "b")
        assert b.definition_json == make_schedule("b", 0).definition_json
        assert (b.timing, b.overlap, b.source, b.paused) == ("every 60s", True, "code", False)
        assert (b.revision, b.next_tick_us, b.last_tick_us, b.last_task_id) == (
            1,
            T0 + SECOND,
            None,
            None,
        )
        assert (b.fired, b.skipped, b.created_us, b.updated_us, b.declared_us) == (
            0,
            0,
            T0,
            T0,
            T0,
        )
        assert a.next_tick_us is None and a.source == "added" and a.declared_us is None
        assert [r.name for r in store.list_schedules(names=["b", "nobody"])] == ["b"]

    def test_upsert_of_the_same_definition_changes_only_when_it_was_declared(
        self, store: TaskStore
    ) -> None:
        """Declaring an unchanged schedule again keeps its revision and next tick (a restart
        loses no tick) and records when code declared it."""
        store.upsert_schedules([make_schedule("s", T0 + SECOND)], T0)
        later = T0 + 30 * SECOND
        assert store.upsert_schedules([make_schedule("s", later + SECOND)], later) == ["unchanged"]
        row = self.schedule(store, "s")
        assert (row.revision, row.next_tick_us, row.updated_us) == (1, T0 + SECOND, T0)
        assert row.declared_us == later

    def test_upsert_of_a_new_definition_keeps_the_next_tick_unless_the_timing_changed(
        self, store: TaskStore
    ) -> None:
        """A changed definition raises the revision; the next tick is replaced only when the
        timing changed."""
        store.upsert_schedules([make_schedule("s", T0 + SECOND)], T0)
        changed = make_schedule("s", T0 + 9 * SECOND, definition_json='{"other": 1}')
        assert store.upsert_schedules([changed], T0 + 2) == ["updated"]
        row = self.schedule(store, "s")
        assert (row.revision, row.next_tick_us, row.definition_json) == (
            2,
            T0 + SECOND,
            '{"other": 1}',
        )
        assert row.updated_us == T0 + 2
        store.upsert_schedules([make_schedule("s", T0 + 9 * SECOND, overlap=False)], T0 + 3)
        row = self.schedule(store, "s")
        assert (row.revision, row.overlap, row.next_tick_us) == (3, False, T0 + SECOND)
        retimed = make_schedule("s", T0 + 7 * SECOND, overlap=False, timing="every 5s")
        assert store.upsert_schedules([retimed], T0 + 4) == ["updated"]
        row = self.schedule(store, "s")
        assert (row.revision, row.timing, row.next_tick_us) == (4, "every 5s", T0 + 7 * SECOND)

    def test_upsert_never_changes_the_pause_state(self, store: TaskStore) -> None:
        """A paused schedule stays paused when code declares it again, changed or not (and
        ``paused=True`` only applies to a new schedule)."""
        store.upsert_schedules([make_schedule("s", T0 + SECOND)], T0)
        store.set_schedule_paused("s", True, T0)
        store.upsert_schedules([make_schedule("s", T0 + SECOND)], T0 + 1)
        store.upsert_schedules([make_schedule("s", T0, timing="every 1s")], T0 + 2)
        assert self.schedule(store, "s").paused is True
        store.upsert_schedules([make_schedule("p", T0, paused=True)], T0)
        store.set_schedule_paused("p", False, T0, next_tick_us=T0 + SECOND)
        store.upsert_schedules([make_schedule("p", T0, paused=True, timing="x")], T0 + 1)
        assert self.schedule(store, "p").paused is False

    def test_upsert_without_replace_leaves_an_existing_schedule(self, store: TaskStore) -> None:
        """``replace=False`` answers ``exists`` for a taken name and changes nothing."""
        store.upsert_schedules([make_schedule("s", T0 + SECOND)], T0)
        answers = store.upsert_schedules(
            [make_schedule("s", T0, timing="every 1s"), make_schedule("t", T0)],
            T0 + 1,
            replace=False,
        )
        assert answers == ["exists", "created"]
        row = self.schedule(store, "s")
        assert (row.timing, row.revision, row.declared_us) == ("every 60s", 1, T0)

    def test_due_schedules_and_the_next_tick(self, store: TaskStore) -> None:
        """``due_by_us`` lists the unpaused schedules whose next tick has come, oldest
        first; ``next_schedule_tick_us`` is the earliest next tick of the unpaused ones."""
        assert store.next_schedule_tick_us() is None
        store.upsert_schedules(
            [
                make_schedule("late", T0 + 5 * SECOND),
                make_schedule("early", T0 + SECOND),
                make_schedule("never", None),
                make_schedule("paused", T0, paused=True),
                make_schedule("future", T0 + 60 * SECOND),
            ],
            T0,
        )
        assert store.next_schedule_tick_us() == T0 + SECOND
        due = store.list_schedules(due_by_us=T0 + 5 * SECOND)
        assert [r.name for r in due] == ["early", "late"]
        assert store.list_schedules(due_by_us=T0) == []
        store.set_schedule_paused("early", True, T0)
        assert store.next_schedule_tick_us() == T0 + 5 * SECOND

    def test_pause_and_resume(self, store: TaskStore) -> None:
        """Pausing and resuming raise the revision once each; resuming sets the next tick;
        repeating either changes nothing; an unknown name answers None."""
        store.upsert_schedules([make_schedule("s", T0 + SECOND)], T0)
        row = store.set_schedule_paused("s", True, T0 + 1)
        assert row is not None and row.paused is True and row.revision == 2
        assert row.updated_us == T0 + 1 and row.next_tick_us == T0 + SECOND
        again = store.set_schedule_paused("s", True, T0 + 2)
        assert again is not None and again.revision == 2 and again.updated_us == T0 + 1
        row = store.set_schedule_paused("s", False, T0 + 3, next_tick_us=T0 + 90 * SECOND)
        assert row is not None and row.paused is False
        assert (row.revision, row.next_tick_us) == (3, T0 + 90 * SECOND)
        again = store.set_schedule_paused("s", False, T0 + 4, next_tick_us=T0)
        assert again is not None and (again.revision, again.next_tick_us) == (3, T0 + 90 * SECOND)
        assert store.set_schedule_paused("nobody", True, T0) is None
        assert store.list_schedules(names=["nobody"]) == []

    def test_delete_schedule(self, store: TaskStore) -> None:
        """Deleting a schedule removes it and its marks (a new schedule of the same name
        fires the same tick again); the tasks it enqueued stay."""
        store.upsert_schedules([make_schedule("s", T0)], T0)
        [out] = store.fire_ticks([self.step(self.schedule(store, "s"), [T0], T0 + SECOND)], T0)
        assert store.delete_schedule("s") is True
        assert store.list_schedules() == [] and store.delete_schedule("s") is False
        assert store.get(out.fired[0][1]).status is TaskStatus.QUEUED
        store.upsert_schedules([make_schedule("s", T0)], T0 + SECOND)
        [again] = store.fire_ticks(
            [self.step(self.schedule(store, "s"), [T0], T0 + SECOND)], T0 + SECOND
        )
        assert [tick for tick, _ in again.fired] == [T0] and again.already == ()

    def test_fire_ticks_enqueues_one_task_per_tick_with_its_mark(self, store: TaskStore) -> None:
        """Each tick's task is stored as its row says (queued, created now); the schedule
        moves to its next tick, remembers the newest tick and task, and counts."""
        store.upsert_schedules([make_schedule("s", T0), make_schedule("u", T0 + SECOND)], T0)
        now = T0 + 2 * SECOND
        s, u = store.list_schedules(due_by_us=now)
        outcomes = store.fire_ticks(
            [
                self.step(s, [T0, T0 + SECOND], T0 + 3 * SECOND, skipped=4, queue="cron"),
                self.step(u, [T0 + SECOND], T0 + 61 * SECOND, priority=5),
            ],
            now,
        )
        assert [o.schedule for o in outcomes] == ["s", "u"]
        assert all(o.applied and o.overlapped == () and o.already == () for o in outcomes)
        assert [tick for tick, _ in outcomes[0].fired] == [T0, T0 + SECOND]
        tasks = store.get_many([tid for o in outcomes for _, tid in o.fired])
        ticks = [T0, T0 + SECOND, T0 + SECOND]
        assert [t.payload for t in tasks] == [{"tick": tick} for tick in ticks]
        assert [t.queue for t in tasks] == ["cron", "cron", "default"]
        assert tasks[2].priority == 5
        assert all(t.status is TaskStatus.QUEUED and us(t.created_at) == now for t in tasks)
        s, u = store.list_schedules()
        assert (s.next_tick_us, s.last_tick_us, s.last_task_id) == (
            T0 + 3 * SECOND,
            T0 + SECOND,
            tasks[1].id,
        )
        assert (s.fired, s.skipped, s.revision) == (2, 4, 1)
        assert (u.next_tick_us, u.fired, u.skipped) == (T0 + 61 * SECOND, 1, 0)

    def test_fire_ticks_fires_each_tick_once(self, store: TaskStore) -> None:
        """A tick whose mark exists enqueues nothing, even when the schedule comes back to it
        (its timing redefined, a clock behind): the mark is unique per (schedule, tick)."""
        store.upsert_schedules([make_schedule("s", T0)], T0)
        [first] = store.fire_ticks([self.step(self.schedule(store, "s"), [T0], T0 + SECOND)], T0)
        store.upsert_schedules([make_schedule("s", T0, timing="every 30s")], T0 + 1)
        row = self.schedule(store, "s")
        assert row.next_tick_us == T0
        [again] = store.fire_ticks([self.step(row, [T0, T0 + SECOND], T0 + 2 * SECOND)], T0 + 1)
        assert again.applied and again.already == (T0,)
        assert [tick for tick, _ in again.fired] == [T0 + SECOND]
        assert store.counts()["queued"] == 2
        assert self.schedule(store, "s").fired == 2
        assert first.fired[0][1] != again.fired[0][1]

    def test_fire_ticks_refuses_a_stale_step(self, store: TaskStore) -> None:
        """A step read before the schedule was fired, redefined, paused or removed writes
        nothing for it (``applied=False``); the other steps of the call go on."""
        store.upsert_schedules(
            [make_schedule(n, T0) for n in ("fired", "redefined", "paused", "removed", "ok")],
            T0,
        )
        read = {r.name: r for r in store.list_schedules()}
        store.fire_ticks([self.step(read["fired"], [T0], T0 + SECOND)], T0)
        store.upsert_schedules([make_schedule("redefined", T0, definition_json="{}")], T0)
        store.set_schedule_paused("paused", True, T0)
        store.delete_schedule("removed")
        before = store.counts()["queued"]
        outcomes = store.fire_ticks([self.step(read[n], [T0], T0 + SECOND) for n in read], T0)
        applied = {o.schedule: o.applied for o in outcomes}
        assert applied == {
            "fired": False,
            "redefined": False,
            "paused": False,
            "removed": False,
            "ok": True,
        }
        assert all(o.fired == () for o in outcomes if not o.applied)
        assert store.counts()["queued"] == before + 1
        assert self.schedule(store, "redefined").next_tick_us == T0
        assert self.schedule(store, "fired").fired == 1

    def test_fire_ticks_without_overlap_waits_for_the_previous_task(self, store: TaskStore) -> None:
        """With overlap off, a tick is skipped (and counted) while the previous tick's task
        is queued or running, and fires once that task finished — also within one step."""
        store.upsert_schedules([make_schedule("s", T0, overlap=False)], T0)
        [out] = store.fire_ticks(
            [self.step(self.schedule(store, "s"), [T0, T0 + SECOND], T0 + 2 * SECOND)], T0
        )
        assert [t for t, _ in out.fired] == [T0] and out.overlapped == (T0 + SECOND,)
        first = out.fired[0][1]
        now = T0 + 2 * SECOND
        [out] = store.fire_ticks([self.step(self.schedule(store, "s"), [now], now + SECOND)], now)
        assert out.fired == () and out.overlapped == (now,)
        [leased], _ = self.lease(store, "w1", now, task_types=["tick"])
        assert leased.id == first
        now += SECOND
        [out] = store.fire_ticks([self.step(self.schedule(store, "s"), [now], now + SECOND)], now)
        assert out.overlapped == (now,)
        store.settle("w1", [Settlement(task_id=first, kind="complete")], now)
        now += SECOND
        [out] = store.fire_ticks([self.step(self.schedule(store, "s"), [now], now + SECOND)], now)
        assert [t for t, _ in out.fired] == [now]
        row = self.schedule(store, "s")
        assert (row.fired, row.skipped, row.last_task_id) == (2, 3, out.fired[0][1])

    def test_fire_ticks_is_all_or_none(self, store: TaskStore) -> None:
        """A task row the store refuses, in any step, fails the call with StoreError: no
        task, no mark and no schedule change is stored, and the same ticks fire afterwards."""
        store.upsert_schedules([make_schedule("a", T0), make_schedule("b", T0)], T0)
        a, b = store.list_schedules()
        bad = TickFire(
            schedule="b",
            expect_next_tick_us=T0,
            expect_revision=1,
            ticks=((T0, self.bad_row(T0)),),
            next_tick_us=T0 + SECOND,
        )
        with pytest.raises(StoreError):
            store.fire_ticks([self.step(a, [T0], T0 + SECOND), bad], T0)
        assert sum(store.counts().values()) == 0
        assert store.list_schedules() == [a, b]
        outcomes = store.fire_ticks(
            [self.step(a, [T0], T0 + SECOND), self.step(b, [T0], T0 + SECOND)], T0
        )
        assert [len(o.fired) for o in outcomes] == [1, 1]

    def test_fire_ticks_refuses_keyed_rows_and_two_steps_of_one_schedule(
        self, store: TaskStore
    ) -> None:
        """A tick's task with an idempotency key, or two steps of one schedule in one call,
        is a ValueError, and nothing is written."""
        store.upsert_schedules([make_schedule("s", T0)], T0)
        row = self.schedule(store, "s")
        with pytest.raises(ValueError):
            store.fire_ticks([self.step(row, [T0], T0 + SECOND, idempotency_key="k")], T0)
        with pytest.raises(ValueError):
            store.fire_ticks(
                [self.step(row, [T0], T0 + SECOND), self.step(row, [T0], T0 + SECOND)], T0
            )
        assert sum(store.counts().values()) == 0 and self.schedule(store, "s") == row

    def test_prune_forgets_old_tick_marks(self, store: TaskStore) -> None:
        """``prune`` deletes tick marks fired before its cut-off (and only those)."""
        store.upsert_schedules([make_schedule("s", T0)], T0)
        store.fire_ticks([self.step(self.schedule(store, "s"), [T0], T0 + SECOND)], T0)
        store.fire_ticks(
            [self.step(self.schedule(store, "s"), [T0 + SECOND], T0 + 2 * SECOND)],
            T0 + 10 * SECOND,
        )
        store.prune(older_than_us=T0 + 5 * SECOND, statuses=[TaskStatus.COMPLETED])
        store.upsert_schedules([make_schedule("s", T0, timing="again")], T0 + 11 * SECOND)
        [out] = store.fire_ticks(
            [self.step(self.schedule(store, "s"), [T0, T0 + SECOND], T0 + 2 * SECOND)],
            T0 + 11 * SECOND,
        )
        assert [t for t, _ in out.fired] == [T0] and out.already == (T0 + SECOND,)

    def test_threads_firing_the_same_ticks_fire_each_once(self, store: TaskStore) -> None:
        """Threads acting as schedulers of one schedule at once fire every tick exactly once
        between them."""
        store.upsert_schedules([make_schedule("s", T0)], T0)
        last = T0 + 59 * SECOND

        def scheduler(_: int) -> list[tuple[int, int]]:
            fired: list[tuple[int, int]] = []
            while True:
                row = self.schedule(store, "s")
                assert row.next_tick_us is not None
                if row.next_tick_us > last:
                    return fired
                [out] = store.fire_ticks(
                    [self.step(row, [row.next_tick_us], row.next_tick_us + SECOND)], T0
                )
                fired += out.fired

        results = self._in_threads(4, scheduler)
        ticks = [tick for r in results for tick, _ in r]
        assert sorted(ticks) == [T0 + i * SECOND for i in range(60)], "a tick twice, or none"
        assert store.counts()["queued"] == 60 and self.schedule(store, "s").fired == 60

    def test_processes_firing_the_same_ticks_fire_each_once(self, store: TaskStore) -> None:
        """Two processes acting as schedulers of one schedule at once fire every tick exactly
        once between them."""
        store.upsert_schedules([make_schedule("s", T0)], T0)
        last = T0 + 99 * SECOND
        with self.other_processes(
            store, "fire_steps", schedule="s", every_us=SECOND, until_us=last, now_us=T0
        ) as children:
            first, second = children.go()
        ticks = sorted(tick for tick, _ in first + second)
        assert ticks == [T0 + i * SECOND for i in range(100)], "a tick twice, or none"
        ids = [task_id for _, task_id in first + second]
        assert len(set(ids)) == 100 and store.counts()["queued"] == 100

    # -- moving a queue between stores (export_rows / import_rows) -----------------------------

    def _history(self, store: TaskStore) -> dict[int, Task]:
        """Tasks in every status with keys, results, errors, retries and a requested
        cancellation; all of them by id."""
        tasks = self._mixed(store)
        keyed = self.in_status(store, TaskStatus.COMPLETED, T0, idempotency_key="kept")
        done = self.running(store, T0, max_attempts=3, payload_json='{"n": [1, 2.5]}')
        store.settle(
            "w1",
            [Settlement(task_id=done.id, kind="retry", error="flaky", run_after_us=T0 + 1)],
            T0,
        )
        flagged = self.running(store, T0, headers_json='{"trace": "x"}', timeout=2.5)
        store.cancel(flagged.id, T0 + 1)
        ids = [*tasks, keyed, done.id, flagged.id]
        return {t.id: t for t in store.get_many(ids)}

    def test_export_rows_pages_every_task_as_stored(self, store: TaskStore) -> None:
        """``export_rows`` gives every task once, by id, page by page: the columns in
        ``TASK_COLUMNS`` order, JSON as stored text, instants in microseconds."""
        tasks = self._history(store)
        rows: list[tuple[Any, ...]] = []
        after = 0
        while page := store.export_rows(after_id=after, limit=3):
            assert len(page) <= 3
            rows += page
            after = page[-1][0]
        assert [r[0] for r in rows] == sorted(tasks)
        for row in rows:
            assert len(row) == len(TASK_COLUMNS)
            assert Task.from_row(row) == tasks[row[0]]
            values = dict(zip(TASK_COLUMNS, row, strict=True))
            assert isinstance(values["payload"], str) and isinstance(values["created_at"], int)
            assert values["cancel_requested"] in (True, False)
        assert store.export_rows(after_id=max(tasks)) == []

    def test_import_rows_copies_a_queue_exactly(self, store: TaskStore, tmp_path: Path) -> None:
        """What one store exports, another imports exactly — ids, statuses, attempts,
        instants, results, errors, keys; the copy deduplicates the keys and gives new tasks
        ids above every imported one."""
        tasks = self._history(store)
        rows = store.export_rows(limit=1_000_000)
        other = self.make_store(tmp_path / "other")
        try:
            other.initialize_schema()
            assert other.import_rows(iter(rows)) == len(rows)
            assert other.export_rows(limit=1_000_000) == rows
            assert other.list(limit=1_000) == [tasks[i] for i in sorted(tasks)]
            assert other.counts() == store.counts()
            kept = other.find_by_key("kept")
            assert kept is not None and kept.status is TaskStatus.COMPLETED
            [(again, existing)] = other.insert([make_row(T0, idempotency_key="kept")], T0)
            assert again == kept.id and existing == kept
            [new] = self.add(other, T0 + SECOND)
            assert new > max(tasks)
            assert other.check() == []
            assert other.import_rows([]) == 0
        finally:
            other.close()

    def test_import_rows_is_all_or_none(self, store: TaskStore, tmp_path: Path) -> None:
        """An import with an id (or a key) already present is refused whole with StoreError:
        nothing of it is stored."""
        self.add(store, T0, 3)
        self.add(store, T0, idempotency_key="k")
        rows = store.export_rows()
        other = self.make_store(tmp_path / "other")
        try:
            other.initialize_schema()
            other.import_rows(rows[2:3])
            with pytest.raises(StoreError):
                other.import_rows(rows)
            assert [r[0] for r in other.export_rows()] == [rows[2][0]]
            clash = (rows[3][0] + 100, *rows[3][1:])  # a new id, the key of a held one
            other.import_rows([rows[3]])
            with pytest.raises(StoreError):
                other.import_rows([rows[0], clash])
            assert [r[0] for r in other.export_rows()] == [rows[2][0], rows[3][0]]
        finally:
            other.close()

    # -- errors the contract names, and damaged rows ---------------------------------------------

    def test_finished_buckets_refuses_a_bucket_that_is_not_positive(self, store: TaskStore) -> None:
        """``bucket_us`` of zero or less raises ValidationError naming it."""
        store.initialize_schema()
        for bucket in (0, -SECOND):
            with pytest.raises(ValidationError) as info:
                store.finished_buckets(T0, bucket)
            assert info.value.field == "bucket_us"

    def test_a_status_that_is_no_task_status_is_refused(self, store: TaskStore) -> None:
        """``list`` and ``prune`` refuse a status outside :class:`TaskStatus` with ValueError,
        and ``prune`` then deletes nothing."""
        done = self.in_status(store, TaskStatus.COMPLETED, T0)
        with pytest.raises(ValueError):
            store.list(statuses=["finished"])  # type: ignore[list-item]
        with pytest.raises(ValueError):
            store.prune(
                older_than_us=T0 + SECOND,
                statuses=[TaskStatus.COMPLETED, "finished"],  # type: ignore[list-item]
            )
        assert store.get(done).status is TaskStatus.COMPLETED

    def test_import_rows_refuses_a_row_of_the_wrong_width(self, store: TaskStore) -> None:
        """A row without exactly one value per ``TASK_COLUMNS`` raises ValidationError, and
        none of the import is stored (not even the rows before it)."""
        [tid] = self.add(store, T0)
        [row] = store.export_rows()
        store.delete_matching(TaskFilter(ids=(tid,)))
        for bad in (row[:-1], (*row, None)):
            with pytest.raises(ValidationError):
                store.import_rows([row, bad])
            assert store.export_rows() == []
        assert store.import_rows([row]) == 1

    def damaged(self, store: TaskStore, **columns: Any) -> int:
        """A task whose payload is not JSON — a row a manual edit, a tool or an older version
        could leave — put in through ``import_rows`` (which stores rows as given); its id.
        ``columns`` set other stored values (``TASK_COLUMNS`` names)."""
        [tid] = self.add(store, T0)
        [row] = store.export_rows(after_id=tid - 1, limit=1)
        store.delete_matching(TaskFilter(ids=(tid,)))
        values = dict(zip(TASK_COLUMNS, row, strict=True))
        values.update({"payload": "{not json", **columns})
        assert store.import_rows([tuple(values[c] for c in TASK_COLUMNS)]) == 1
        return tid

    def damaged_running(self, store: TaskStore) -> int:
        """A damaged task (as :meth:`damaged`) running, leased by ``w1`` at ``T0``; its id."""
        return self.damaged(
            store,
            status="running",
            attempts=1,
            locked_by="w1",
            lease_expires_at=T0 + LEASE_US,
            started_at=T0,
        )

    def test_a_damaged_task_is_an_error_for_one_read_and_left_out_of_many(
        self, store: TaskStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """``get`` and ``find_by_key`` of a task that cannot be decoded raise DamagedRow
        naming it; ``list``, ``get_many`` and ``list_matching`` leave it out (and log it), so
        it hides no other task; counts still count it, and ``export_rows`` gives it as
        stored."""
        [before] = self.add(store, T0)
        tid = self.damaged(store, idempotency_key="k")
        [after] = self.add(store, T0)
        with pytest.raises(DamagedRow) as info:
            store.get(tid)
        assert info.value.task_id == tid
        with pytest.raises(DamagedRow):
            store.find_by_key("k")
        with caplog.at_level(logging.ERROR):
            assert [t.id for t in store.list()] == [before, after]
            assert [t.id for t in store.get_many([before, tid, after])] == [before, after]
            assert [t.id for t in store.list_matching(TaskFilter())] == [before, after]
        assert f"task {tid}" in caplog.text
        assert store.counts()["queued"] == 3 and store.count_matching(TaskFilter()) == 3
        [row] = store.export_rows(after_id=before, limit=1)
        assert row[0] == tid and row[TASK_COLUMNS.index("payload")] == "{not json"
        assert store.delete_matching(TaskFilter(ids=(tid,))) == 1  # needs no decoding
        assert [t.id for t in store.list()] == [before, after]

    def test_an_outcome_for_a_damaged_task_is_written_without_its_transition(
        self, store: TaskStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """``settle`` writes the outcome of a running task that cannot be decoded like any
        other; only its transition is missing (logged)."""
        ok = self.running(store, T0)
        tid = self.damaged_running(store)
        done = [Settlement(task_id=i, kind="complete") for i in (ok.id, tid)]
        with caplog.at_level(logging.ERROR):
            transitions = store.settle("w1", done, T0 + SECOND)
        assert [(kind, t.id) for kind, t in transitions] == [("completed", ok.id)]
        assert f"task {tid}" in caplog.text
        assert store.counts()["completed"] == 2

    def test_a_damaged_task_leased_is_ended_failed_and_the_others_leased(
        self, store: TaskStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A leased row that cannot be decoded is not returned: it is ended ``failed`` with
        the reason (and logged), and the other tasks of the batch are leased."""
        [first] = self.add(store, T0)
        tid = self.damaged(store)
        [last] = self.add(store, T0)
        with caplog.at_level(logging.ERROR):
            leased, _ = self.lease(store, "w1", T0 + SECOND)
        assert [t.id for t in leased] == [first, last]
        assert f"task {tid}" in caplog.text
        assert store.count_matching(TaskFilter(ids=(tid,), statuses=(TaskStatus.FAILED,))) == 1

    def test_cancel_of_a_damaged_task_raises_damaged_row_and_changes_nothing(
        self, store: TaskStore
    ) -> None:
        """``cancel`` of a task that cannot be decoded raises DamagedRow, and (nothing raises
        after it committed) the task is left as it was."""
        tid = self.damaged(store)
        before = store.export_rows()
        with pytest.raises(DamagedRow):
            store.cancel(tid, T0 + SECOND)
        assert store.export_rows() == before

    def test_requeue_of_a_damaged_task_raises_damaged_row_and_changes_nothing(
        self, store: TaskStore
    ) -> None:
        """``requeue`` of a failed task that cannot be decoded raises DamagedRow, and the task
        is left as it was."""
        tid = self.damaged(
            store, status="failed", attempts=1, error_message="e", started_at=T0, finished_at=T0
        )
        before = store.export_rows()
        with pytest.raises(DamagedRow):
            store.requeue(tid, T0 + SECOND)
        assert store.export_rows() == before

    def test_an_insert_of_a_key_a_damaged_task_holds_raises_damaged_row_and_stores_nothing(
        self, store: TaskStore
    ) -> None:
        """When the task holding a row's idempotency key cannot be decoded, ``insert`` raises
        DamagedRow and none of the batch is stored."""
        self.damaged(store, idempotency_key="k")
        before = store.export_rows()
        with pytest.raises(DamagedRow):
            store.insert([make_row(T0), make_row(T0, idempotency_key="k")], T0)
        assert store.export_rows() == before

    def test_bulk_actions_report_a_damaged_task_and_go_on(
        self, store: TaskStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """``cancel_matching`` and ``requeue_matching`` change a task that cannot be decoded
        like the others (the write needs no decoding) and report it by id in ``damaged``,
        logged, not in ``changed``: the batch goes on, the count includes it, and nothing
        raises after it committed."""
        [first] = self.add(store, T0)
        tid = self.damaged(store)
        [last] = self.add(store, T0)
        with caplog.at_level(logging.ERROR):
            cancelled = store.cancel_matching(TaskFilter(), T0 + SECOND)
        assert sorted((kind, t.id) for kind, t in cancelled.changed) == [
            ("cancelled", first),
            ("cancelled", last),
        ]
        assert cancelled.damaged == (tid,) and cancelled.count == 3
        assert f"task {tid}" in caplog.text
        assert store.counts()["cancelled"] == 3
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            requeued = store.requeue_matching(TaskFilter(), T0 + 2 * SECOND)
        assert sorted(t.id for t in requeued.changed) == [first, last]
        assert requeued.damaged == (tid,) and requeued.count == 3
        assert f"task {tid}" in caplog.text
        assert store.counts()["queued"] == 3

    def test_a_damaged_running_task_is_flagged_by_a_bulk_cancel(
        self, store: TaskStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A running task that cannot be decoded is flagged for its worker like the others
        and reported in ``damaged``."""
        ok = self.running(store, T0)
        tid = self.damaged_running(store)
        with caplog.at_level(logging.ERROR):
            done = store.cancel_matching(TaskFilter(), T0 + SECOND)
        assert [(kind, t.id) for kind, t in done.changed] == [("cancel_requested", ok.id)]
        assert done.damaged == (tid,)
        assert f"task {tid}" in caplog.text
        [row] = store.export_rows(after_id=tid - 1, limit=1)
        assert row[TASK_COLUMNS.index("cancel_requested")] is True

    def test_a_damaged_worker_record_is_left_out_of_workers_and_logged(
        self, store: TaskStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A worker record whose queues are not a JSON list is left out of ``workers()``
        and logged naming it; the other workers are listed."""
        store.register_worker(_worker("w1", T0))
        store.register_worker(_worker("w2", T0 + SECOND))
        store.register_worker(_worker("w3", T0 + 2 * SECOND))
        if not self.damage_worker(store, "w2", "{not json"):
            pytest.skip("damage_worker() gives no way to damage a worker record")
        with caplog.at_level(logging.ERROR):
            assert [w.worker_id for w in store.workers()] == ["w1", "w3"]
        assert "'w2'" in caplog.text and "damaged" in caplog.text
        caplog.clear()
        self.damage_worker(store, "w2", '"default"')  # JSON, but not a list of names
        with caplog.at_level(logging.ERROR):
            assert [w.worker_id for w in store.workers()] == ["w1", "w3"]
        assert "'w2'" in caplog.text

    def test_a_closed_store_refuses_even_a_call_with_nothing_to_do(self, store: TaskStore) -> None:
        """After ``close``, a call whose arguments leave nothing to read or change raises
        StoreError too."""
        self.add(store, T0)
        store.close()
        for call in (
            lambda: store.get_many([]),
            lambda: store.cancel_matching(TaskFilter(statuses=(TaskStatus.COMPLETED,)), T0),
            lambda: store.requeue_matching(TaskFilter(statuses=(TaskStatus.QUEUED,)), T0),
        ):
            with pytest.raises(StoreError):
                call()

    # -- lifecycle -----------------------------------------------------------------------------

    def test_initialize_schema_is_idempotent(self, store: TaskStore) -> None:
        """A second ``initialize_schema`` keeps the version and every task."""
        store.initialize_schema()
        version = store.schema_version()
        assert isinstance(version, int) and version >= 1
        ids = self.add(store, T0, 3)
        store.initialize_schema()
        store.initialize_schema()
        assert store.schema_version() == version
        assert [t.id for t in store.list()] == ids

    def test_check_is_empty_on_a_healthy_store(self, store: TaskStore) -> None:
        """``check`` finds nothing wrong after every kind of operation."""
        store.initialize_schema()
        assert store.check() == []
        self._mixed(store)
        task = self.running(store, T0, max_attempts=2)
        store.settle("w1", [Settlement(task_id=task.id, kind="release")], T0)
        expired = self.running(store, T0 - LEASE_US - SECOND, max_attempts=2)
        self.lease(store, "w2", T0, decide=ExpiryRecorder(T0))
        assert store.get(expired.id).locked_by == "w2"
        assert store.check() == []

    def test_close_is_idempotent(self, store: TaskStore) -> None:
        """``close`` may be called again; ``closed`` says it was."""
        self.add(store, T0)
        store.close()
        assert store.closed is True
        store.close()
        assert store.closed is True

    @pytest.mark.parametrize("call", sorted(_CALLS))
    def test_a_closed_store_refuses_every_call(self, store: TaskStore, call: str) -> None:
        """After ``close``, every operation raises StoreError."""
        self.add(store, T0, 2)
        store.close()
        with pytest.raises(StoreError):
            _CALLS[call](store)

    def test_a_store_opened_again_sees_the_same_tasks(self, store: TaskStore) -> None:
        """What one store object committed, another opened on the same store reads (the
        multi-process tests rely on it)."""
        opener = self.store_opener(store)
        if opener is None:
            pytest.skip("store_opener() gives no way to open the store again")
        ids = self.add(store, T0, 3)
        again = opener()
        try:
            again.initialize_schema()
            assert again.schema_version() == store.schema_version()
            assert [t.id for t in again.list()] == ids
            [(new, _)] = again.insert([make_row(T0)], T0)
        finally:
            again.close()
        assert store.get(new).status is TaskStatus.QUEUED

    # -- wake-ups ------------------------------------------------------------------------------

    def test_has_work(self, store: TaskStore) -> None:
        """True for a due task of the asked queues (and types), or an expired lease."""
        store.initialize_schema()
        assert store.has_work(["default"], T0) is False
        self.add(store, T0, queue="other")
        self.add(store, T0, run_after_us=T0 + 60 * SECOND)
        assert store.has_work(["default"], T0) is False
        assert store.has_work(["default", "other"], T0) is True
        assert store.has_work(["default"], T0 + 60 * SECOND) is True
        assert store.has_work(["other"], T0, task_types=["x"]) is False
        assert store.has_work(["other"], T0, task_types=["x", "t"]) is True

    def test_has_work_sees_an_expired_lease(self, store: TaskStore) -> None:
        """A running task whose lease expired is work (to sweep); a live one is not."""
        self.running(store, T0)
        assert store.has_work(["default"], T0 + SECOND) is False
        assert store.has_work(["default"], T0 + LEASE_US + SECOND) is True

    def test_next_wakeup_delay_us(self, store: TaskStore) -> None:
        """Microseconds until a delayed task of the asked queues is due or a lease expires;
        None when nothing is scheduled."""
        store.initialize_schema()
        assert store.next_wakeup_delay_us(["default"], T0) is None
        self.add(store, T0, run_after_us=T0 + 50 * SECOND)
        self.add(store, T0, queue="other", run_after_us=T0 + 5 * SECOND)
        assert store.next_wakeup_delay_us(["default"], T0) == 50 * SECOND
        assert store.next_wakeup_delay_us(["default", "other"], T0) == 5 * SECOND
        self.running(store, T0 - LEASE_US + 20 * SECOND)
        assert store.next_wakeup_delay_us(["default"], T0) == 20 * SECOND
        assert store.next_wakeup_delay_us(["default"], T0 + 10 * SECOND) == 10 * SECOND

    def test_watcher_sees_a_commit_from_another_thread(self, store: TaskStore) -> None:
        """A watcher waiting on one thread sees another thread's commit within its wait."""
        store.initialize_schema()
        watcher = self.drained(store.watch_changes())
        try:
            writer = threading.Timer(0.1, lambda: self.add(store, T0))
            started = time.monotonic()
            writer.start()
            try:
                assert watcher.wait(10.0) is True
            finally:
                writer.join()
            assert time.monotonic() - started < 5.0
        finally:
            watcher.close()

    def test_watcher_sees_a_commit_made_before_its_first_wait(self, store: TaskStore) -> None:
        """A commit made after the watcher was made, before its first ``wait``, is reported
        by that wait ("since the watcher was made")."""
        store.initialize_schema()
        watcher = store.watch_changes()
        try:
            writer = threading.Thread(target=lambda: self.add(store, T0))
            writer.start()
            writer.join()
            assert watcher.wait(1.0) is True
        finally:
            watcher.close()

    def test_watcher_sees_a_commit_from_another_process(self, store: TaskStore) -> None:
        """A watcher sees another process's commit within its wait."""
        store.initialize_schema()
        ready = threading.Event()
        outcome: list[Any] = []

        def watch() -> None:
            # Made, drained, waited on and closed on this one thread, as the protocol says.
            try:
                watcher = self.drained(store.watch_changes())
                try:
                    ready.set()
                    started = time.monotonic()
                    outcome.append((watcher.wait(30.0), time.monotonic() - started))
                finally:
                    watcher.close()
            except BaseException as exc:  # reported on the test's thread
                outcome.append(exc)
            finally:
                ready.set()

        with self.other_processes(
            store, "insert_one", n=1, row=make_row(T0), now_us=T0
        ) as children:
            waiter = threading.Thread(target=watch)
            waiter.start()
            try:
                assert ready.wait(30.0)
                time.sleep(0.05)  # let the wait begin
                [tid] = children.go()
            finally:
                waiter.join()
        [result] = outcome
        if isinstance(result, BaseException):
            raise result
        seen, waited = result
        assert seen is True and waited < 15.0
        assert store.get(tid).status is TaskStatus.QUEUED

    def test_watcher_times_out_when_nothing_changes(self, store: TaskStore) -> None:
        """With no commit, ``wait`` returns False after its timeout."""
        store.initialize_schema()
        watcher = self.drained(store.watch_changes())
        try:
            started = time.monotonic()
            assert watcher.wait(0.3) is False
            assert time.monotonic() - started >= 0.25
        finally:
            watcher.close()

    def test_watcher_interrupt_ends_a_wait_promptly(self, store: TaskStore) -> None:
        """``interrupt`` from another thread ends a wait in progress with False, and one made
        before a wait ends the next wait at once."""
        store.initialize_schema()
        watcher = self.drained(store.watch_changes())
        try:
            interrupter = threading.Timer(0.1, watcher.interrupt)
            started = time.monotonic()
            interrupter.start()
            try:
                assert watcher.wait(10.0) is False
            finally:
                interrupter.join()
            assert time.monotonic() - started < 2.0
            watcher.interrupt()
            started = time.monotonic()
            assert watcher.wait(10.0) is False
            assert time.monotonic() - started < 2.0
        finally:
            watcher.close()

    def test_a_watcher_raises_at_most_a_store_error_and_closes_quietly(
        self, store: TaskStore
    ) -> None:
        """A ``wait`` after the store was closed returns, or raises StoreError (a watcher that
        reads the store to wait cannot); ``interrupt`` and ``close`` raise nothing, ``close``
        may be called again, and ``interrupt`` after it is harmless."""
        store.initialize_schema()
        watcher = store.watch_changes()
        store.close()
        try:
            waited = watcher.wait(0.05)
        except StoreError:
            pass
        else:
            assert isinstance(waited, bool)
        watcher.interrupt()
        watcher.close()
        watcher.close()
        watcher.interrupt()

    @pytest.mark.parametrize("end", ["complete", "fail", "cancel", "delete", "expire"])
    def test_watcher_reports_the_end_of_a_watched_task(self, store: TaskStore, end: str) -> None:
        """After ``watch_tasks``, the watcher reports a watched task's end — completed,
        failed, cancelled by hand, deleted, or ended by its expired lease — made by another
        thread while it waits."""
        store.initialize_schema()
        if end in ("cancel", "delete"):
            tid = self.add(store, T0)[0]
        else:
            tid = self.running(store, T0, max_attempts=1).id
        later = T0 + LEASE_US + SECOND
        ends: dict[str, Callable[[], Any]] = {
            "complete": lambda: store.settle(
                "w1", [Settlement(task_id=tid, kind="complete", result_json="1")], T0 + SECOND
            ),
            "fail": lambda: store.settle(
                "w1", [Settlement(task_id=tid, kind="fail", error="e")], T0 + SECOND
            ),
            "cancel": lambda: store.cancel(tid, T0 + SECOND),
            "delete": lambda: store.delete_matching(TaskFilter(ids=(tid,))),
            "expire": lambda: self.lease(store, "w2", later, decide=ExpiryRecorder(None)),
        }
        watcher = store.watch_changes()
        try:
            watcher.watch_tasks([tid])
            self.drained(watcher)
            writer = threading.Timer(0.1, ends[end])
            writer.start()
            try:
                assert watcher.wait(10.0) is True
            finally:
                writer.join()
        finally:
            watcher.close()
        if end == "delete":
            assert store.get_many([tid]) == []
        else:
            assert store.get(tid).is_terminal

    # -- concurrency ---------------------------------------------------------------------------

    @staticmethod
    def _in_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
        """Run ``work(i)`` in ``n`` threads released together; their results (a thread's
        exception is raised here)."""
        barrier = threading.Barrier(n)
        results: list[Any] = [None] * n
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                barrier.wait()
                results[i] = work(i)
            except BaseException as exc:  # reported below, on the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    def test_threads_inserting_the_same_keys_get_one_task_each(self, store: TaskStore) -> None:
        """Threads inserting the same keys at once all get the same task for each key."""
        store.initialize_schema()
        keys = [f"key-{i}" for i in range(40)]

        def insert_all(_: int) -> list[int]:
            return [store.insert([make_row(T0, idempotency_key=k)], T0)[0][0] for k in keys]

        results = self._in_threads(4, insert_all)
        assert all(r == results[0] for r in results)
        assert len(set(results[0])) == len(keys)
        assert store.counts()["queued"] == len(keys)

    def test_threads_leasing_at_once_never_share_a_task(self, store: TaskStore) -> None:
        """Threads leasing at once never get the same task, and together get them all."""
        ids = self.add(store, T0, 200)

        def drain(i: int) -> list[int]:
            leased: list[int] = []
            while batch := self.lease(store, f"w{i}", T0, limit=3)[0]:
                leased += [t.id for t in batch]
            return leased

        results = self._in_threads(4, drain)
        every = [tid for r in results for tid in r]
        assert sorted(every) == ids, "a task leased twice, or not at all"
        assert store.counts()["running"] == 200

    def test_counts_and_gauges_are_one_snapshot(self, store: TaskStore) -> None:
        """While tasks move between statuses, ``counts`` and ``queue_gauges`` always add up."""
        n = 20
        self.add(store, T0, n)
        stop = threading.Event()

        def churn(_: int) -> None:
            for _round in range(150):
                if stop.is_set():
                    return
                leased = self.lease(store, "w1", T0, limit=5)[0]
                store.settle("w1", [Settlement(task_id=t.id, kind="release") for t in leased], T0)

        def read(_: int) -> None:
            try:
                for _round in range(150):
                    counts = store.counts()
                    assert counts["queued"] + counts["running"] == n, counts
                    [gauge] = store.queue_gauges(T0)
                    assert gauge.due + gauge.delayed + gauge.running == n, gauge
            finally:
                stop.set()

        self._in_threads(2, lambda i: (churn, read)[i](i))

    # -- several processes ---------------------------------------------------------------------

    def test_processes_inserting_the_same_keys_get_one_task_each(self, store: TaskStore) -> None:
        """Two processes inserting the same keys at once get the same task for each key."""
        store.initialize_schema()
        rows = [make_row(T0, idempotency_key=f"key-{i}") for i in range(40)]
        with self.other_processes(store, "insert_each", rows=rows, now_us=T0) as children:
            first, second = children.go()
        assert first == second and len(set(first)) == len(rows)
        assert store.counts()["queued"] == len(rows)
        assert [store.find_by_key(f"key-{i}").id for i in range(40)] == first  # type: ignore[union-attr]

    def test_processes_leasing_at_once_never_share_a_task(self, store: TaskStore) -> None:
        """Two processes leasing at once never get the same task, and together get them
        all."""
        ids = self.add(store, T0, 150)
        with self.other_processes(
            store, "lease_all", worker_id="w", now_us=T0, limit=2
        ) as children:
            first, second = children.go()
        assert sorted(first + second) == ids, "a task leased twice, or not at all"
        assert store.counts()["running"] == len(ids)

    def test_processes_initializing_at_once(self, store: TaskStore) -> None:
        """Several processes creating the schema of a new store at once all succeed."""
        with self.other_processes(
            store, "initialize", n=3, row=make_row(T0), now_us=T0
        ) as children:
            ids = children.go()
        assert len(set(ids)) == 3
        assert store.counts()["queued"] == 3 and store.check() == []

    # -- the state machine ---------------------------------------------------------------------

    def test_state_machine(self) -> None:
        """The store beside a dict model, through random sequences of every operation (see
        :class:`StoreMachine`)."""
        run_state_machine_as_test(
            # hypothesis takes any factory of machines; its annotation says a class.
            lambda: StoreMachine(self.make_store),  # type: ignore[arg-type]
            settings=self.machine_settings,
        )


# == the state machine =========================================================================

#: The workers of the state machine.
WORKERS = ("w1", "w2")
#: The plans the state machine leases with, by name.
MACHINE_PLANS = {
    "fifo": FIFO,
    "priority": LeasePlan(order=(SortKey.PRIORITY,)),
    "lifo": LeasePlan(order=(SortKey.LIFO,)),
}


@dataclass
class ModelTask:
    """What the state machine expects of one task."""

    id: int
    status: TaskStatus
    attempts: int
    max_attempts: int
    priority: int
    run_after: int
    key: str | None
    holder: str | None = None
    lease_until: int | None = None
    cancel_requested: bool = False


class StoreMachine(RuleBasedStateMachine):
    """A store driven through random sequences of operations beside a dict model.

    Rules: insert (keys, delays, claims), lease (three orders, sweeping expired leases either
    way), settle (each kind, by the holder or by another worker, directly or carried by a
    lease), cancel, requeue, renew, expire (a lease of nothing) and advancing time. After
    every step: each task in exactly one status, as the model says; held by at most one
    worker, exactly while running; attempts never decrease except by a release or a requeue,
    and never exceed ``max_attempts``; nothing lost; ``counts()`` equals the model's.

    :param make_store: the contract's :meth:`StoreContract.make_store`.
    """

    def __init__(self, make_store: Callable[[Path], TaskStore]) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.store = make_store(Path(self._dir.name))
        self.now = T0
        self.model: dict[int, ModelTask] = {}
        self.keys: dict[str, int] = {}
        self.last_attempts: dict[int, int] = {}
        #: Tasks whose attempts may go down in this step (a release, a requeue).
        self.may_decrease: set[int] = set()

    def teardown(self) -> None:
        """Check the store's own consistency, then close it and delete its directory."""
        try:
            assert self.store.check() == []
        finally:
            self.store.close()
            self._dir.cleanup()

    # -- helpers -------------------------------------------------------------------------------

    def _live(self, worker: str | None = None) -> list[ModelTask]:
        """Running tasks whose lease has not expired (of ``worker``, if given), by id."""
        return sorted(
            (
                t
                for t in self.model.values()
                if t.status is TaskStatus.RUNNING
                and t.lease_until is not None
                and t.lease_until > self.now
                and (worker is None or t.holder == worker)
            ),
            key=lambda t: t.id,
        )

    def _sweep(self, requeue: bool) -> set[int]:
        """Apply the expiry of every lease that ran out; the ids swept."""
        swept = set()
        for t in self.model.values():
            if t.status is not TaskStatus.RUNNING or t.lease_until is None:
                continue
            if t.lease_until > self.now:
                continue
            swept.add(t.id)
            t.holder = t.lease_until = None
            if t.cancel_requested:  # honoured whatever the decider answers
                t.status = TaskStatus.CANCELLED
            elif requeue and t.attempts < t.max_attempts:
                t.status, t.run_after = TaskStatus.QUEUED, self.now
            else:
                t.status = TaskStatus.FAILED
        return swept

    def _decider(self, requeue: bool) -> ExpiryRecorder:
        return ExpiryRecorder(self.now if requeue else None)

    def _settle_model(self, t: ModelTask, kind: str, run_after: int) -> TaskStatus:
        """Apply a settlement by the holder to the model; the status it leaves."""
        t.holder = t.lease_until = None
        if kind == "complete":
            t.status = TaskStatus.COMPLETED
        elif kind == "fail":
            t.status = TaskStatus.FAILED
        elif kind == "retry":
            if t.cancel_requested:
                t.status = TaskStatus.CANCELLED
            elif t.attempts >= t.max_attempts:
                t.status = TaskStatus.FAILED
            else:
                t.status, t.run_after = TaskStatus.QUEUED, run_after
        elif kind == "cancelled":
            t.status = TaskStatus.CANCELLED
        else:
            t.status, t.attempts = TaskStatus.QUEUED, t.attempts - 1
            self.may_decrease.add(t.id)
        return t.status

    # -- rules ---------------------------------------------------------------------------------

    @rule(
        specs=st.lists(
            st.tuples(
                st.sampled_from([0, 0, 5, 30]),
                st.integers(1, 3),
                st.integers(0, 2),
                st.sampled_from([None, None, None, "k1", "k2"]),
            ),
            min_size=1,
            max_size=3,
        ),
        claim=st.sampled_from([None, None, None, "w1", "w2"]),
    )
    def insert(self, specs: list[tuple[int, int, int, str | None]], claim: str | None) -> None:
        """Insert a batch (keys, delays), perhaps claimed by a worker."""
        rows = [
            make_row(
                self.now + delay * SECOND,
                max_attempts=attempts,
                priority=priority,
                idempotency_key=key,
            )
            for delay, attempts, priority, key in specs
        ]
        lease_until = self.now + LEASE_US
        results = self.store.insert(
            rows, self.now, claim=None if claim is None else (claim, lease_until)
        )
        assert len(results) == len(rows)
        for row, (tid, existing) in zip(rows, results, strict=True):
            key = row.idempotency_key
            if key is not None and key in self.keys:
                assert tid == self.keys[key] and existing is not None and existing.id == tid
                continue
            assert existing is None
            assert tid not in self.model and all(tid > i for i in self.model), "ids increase"
            t = ModelTask(
                id=tid,
                status=TaskStatus.QUEUED,
                attempts=0,
                max_attempts=row.max_attempts,
                priority=row.priority,
                run_after=row.run_after_us,
                key=key,
            )
            if claim is not None:
                t.status, t.attempts, t.holder, t.lease_until = (
                    TaskStatus.RUNNING,
                    1,
                    claim,
                    lease_until,
                )
            self.model[tid] = t
            if key is not None:
                self.keys[key] = tid

    @rule(
        worker=st.sampled_from(WORKERS),
        limit=st.integers(0, 3),
        plan=st.sampled_from(sorted(MACHINE_PLANS)),
        requeue=st.booleans(),
    )
    def lease(self, worker: str, limit: int, plan: str, requeue: bool) -> None:
        """Lease in one of three orders, sweeping expired leases (requeue or end)."""
        decide = self._decider(requeue)
        leased, transitions = StoreContract.lease(
            self.store, worker, self.now, limit=limit, plan=MACHINE_PLANS[plan], decide=decide
        )
        swept = self._sweep(requeue)
        assert {t.id for t in decide.asked} == swept, "decide_expired asked about each expiry"
        assert {t.id for _, t in transitions} == swept
        for kind, task in transitions:
            expected = self.model[task.id].status
            assert kind == ("lease_expired" if expected is TaskStatus.QUEUED else expected.value)
        due = [t for t in self.model.values() if t.status is TaskStatus.QUEUED]
        due = [t for t in due if t.run_after <= self.now]
        key = plan_sort_key(MACHINE_PLANS[plan], self.now)
        got = {t.id: t for t in leased}
        expected_ids = [t.id for t in sorted((self.store.get(t.id) for t in due), key=key)[:limit]]
        assert [t.id for t in leased] == expected_ids, "the plan's order, at most limit"
        for tid in expected_ids:
            t = self.model[tid]
            t.status, t.holder, t.lease_until = TaskStatus.RUNNING, worker, self.now + LEASE_US
            t.attempts += 1
            t.cancel_requested = False
            assert got[tid].attempts == t.attempts and got[tid].locked_by == worker

    @precondition(lambda self: self._live())
    @rule(
        data=st.data(),
        kind=st.sampled_from(["complete", "fail", "retry", "cancelled", "release"]),
        by_holder=st.sampled_from([True, True, True, False]),
        via_lease=st.booleans(),
    )
    def settle(self, data: st.DataObject, kind: str, by_holder: bool, via_lease: bool) -> None:
        """Settle a live lease — by its holder, or (dropped) by the other worker — directly or
        carried by a lease of nothing."""
        t = data.draw(st.sampled_from(self._live()))
        assert t.holder is not None
        worker = t.holder if by_holder else next(w for w in WORKERS if w != t.holder)
        later = self.now + data.draw(st.integers(0, 20)) * SECOND
        outcome = Settlement(
            task_id=t.id,
            kind=kind,  # type: ignore[arg-type]
            error="e",
            result_json='{"ok": true}' if kind == "complete" else None,
            run_after_us=later if kind == "retry" else None,
        )
        if via_lease:
            decide = self._decider(False)
            _, transitions = StoreContract.lease(
                self.store, worker, self.now, limit=0, settlements=[outcome], decide=decide
            )
        else:
            transitions = self.store.settle(worker, [outcome], self.now)
        settled = [(k, task) for k, task in transitions if task.id == t.id]
        if worker != t.holder:
            assert settled == [], "an outcome from a worker without the lease is dropped"
        else:
            status = self._settle_model(t, kind, later)
            kinds = {
                TaskStatus.COMPLETED: "completed",
                TaskStatus.FAILED: "failed",
                TaskStatus.CANCELLED: "cancelled",
            }
            expected = kinds.get(status, "released" if kind == "release" else "retry_scheduled")
            assert [k for k, _ in settled] == [expected]
        if via_lease:
            swept = self._sweep(False)
            assert {task.id for task in decide.asked} == swept

    @precondition(lambda self: self.model)
    @rule(data=st.data(), unknown=st.sampled_from([False, False, False, True]))
    def cancel(self, data: st.DataObject, unknown: bool) -> None:
        """Cancel a task (or an unknown id)."""
        if unknown:
            with pytest.raises(TaskNotFound):
                self.store.cancel(max(self.model) + 1000, self.now)
            return
        t = data.draw(st.sampled_from(sorted(self.model.values(), key=lambda t: t.id)))
        if t.status.is_terminal:
            with pytest.raises(InvalidTransition):
                self.store.cancel(t.id, self.now)
            return
        kind, task = self.store.cancel(t.id, self.now)
        if t.status is TaskStatus.QUEUED:
            assert kind == "cancelled"
            t.status = TaskStatus.CANCELLED
        else:
            assert kind == "cancel_requested"
            t.cancel_requested = True
        assert task.status is t.status

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        """Requeue a task (only failed and cancelled ones may be)."""
        t = data.draw(st.sampled_from(sorted(self.model.values(), key=lambda t: t.id)))
        if t.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            with pytest.raises(InvalidTransition):
                self.store.requeue(t.id, self.now)
            return
        task = self.store.requeue(t.id, self.now)
        assert task.status is TaskStatus.QUEUED and task.attempts == 0
        t.status, t.attempts, t.run_after, t.cancel_requested = (
            TaskStatus.QUEUED,
            0,
            self.now,
            False,
        )
        self.may_decrease.add(t.id)

    @rule(worker=st.sampled_from(WORKERS), data=st.data())
    def renew(self, worker: str, data: st.DataObject) -> None:
        """Renew a worker's live leases, asking about some ids it does not hold too."""
        mine = self._live(worker)
        others = [t.id for t in self.model.values() if t.holder != worker]
        extra = data.draw(st.lists(st.sampled_from(others), max_size=2)) if others else []
        held, cancel = self.store.renew(worker, [t.id for t in mine] + extra, self.now, LEASE_US)
        assert held == {t.id for t in mine}
        assert cancel == {t.id for t in mine if t.cancel_requested}
        for t in mine:
            t.lease_until = self.now + LEASE_US

    @rule(worker=st.sampled_from(WORKERS), requeue=st.booleans())
    def expire(self, worker: str, requeue: bool) -> None:
        """Sweep expired leases only (a lease of nothing)."""
        decide = self._decider(requeue)
        leased, _ = StoreContract.lease(self.store, worker, self.now, limit=0, decide=decide)
        assert leased == []
        assert {t.id for t in decide.asked} == self._sweep(requeue)

    @rule(seconds=st.sampled_from([1, 4, 9, 11, 25, 31]))
    def advance(self, seconds: int) -> None:
        """Move time forward."""
        self.now += seconds * SECOND

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        """Every task as the model says; held exactly while running; nothing lost."""
        stored = {t.id: t for t in self.store.list(limit=1_000_000)}
        assert set(stored) == set(self.model), "nothing lost, nothing invented"
        for tid, m in self.model.items():
            s = stored[tid]
            assert s.status is m.status, (s, m)
            assert s.attempts == m.attempts, (s, m)
            assert 0 <= s.attempts <= s.max_attempts == m.max_attempts
            assert s.locked_by == m.holder, "held by the one worker the model says"
            if m.status is TaskStatus.RUNNING:
                assert us(s.lease_expires_at) == m.lease_until
                assert s.cancel_requested == m.cancel_requested
            else:
                assert s.lease_expires_at is None
            if m.status is TaskStatus.QUEUED:
                assert us(s.run_after) == m.run_after
            assert (s.finished_at is not None) == m.status.is_terminal
            if m.key is not None:
                assert s.idempotency_key == m.key

    @invariant()
    def each_task_has_exactly_one_status(self) -> None:
        """Listing by status partitions the tasks."""
        seen: list[int] = []
        for status in TaskStatus:
            ids = [t.id for t in self.store.list(statuses=[status], limit=1_000_000)]
            assert all(self.model[i].status is status for i in ids)
            seen += ids
        assert sorted(seen) == sorted(self.model)

    @invariant()
    def attempts_never_decrease(self) -> None:
        """Attempts go down only by a release or a requeue."""
        for task in self.store.list(limit=1_000_000):
            before = self.last_attempts.get(task.id, 0)
            if task.id not in self.may_decrease:
                assert task.attempts >= before, (task, before)
            self.last_attempts[task.id] = task.attempts
        self.may_decrease.clear()

    @invariant()
    def counts_agree(self) -> None:
        """``counts()`` equals the model's."""
        expected = {s.value: 0 for s in TaskStatus}
        expected.update(Counter(t.status.value for t in self.model.values()))
        assert self.store.counts() == expected
