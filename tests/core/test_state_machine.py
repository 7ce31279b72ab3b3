"""The real store beside a dict model, driven by hypothesis through every operation.

Invariants after every step: each task is in exactly the status the model says, held by the
worker the model says (so at most one live lease), attempts never go down except through
release or a manual retry, leases come in the scheduler's promised order (the core's FIFO:
due time, then id), and nothing is lost.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hookqueue import FakeClock, InvalidTransition, Queue, TaskStatus
from hookqueue.core.clock import seconds_to_us, to_us
from hookqueue.core.storage import Settlement

WORKERS = ("w1", "w2")
LEASE_SECONDS = 10


@dataclass
class ModelTask:
    id: int
    status: str
    attempts: int
    max_attempts: int
    run_after: int
    holder: str | None = None
    lease_until: int | None = None
    cancel_requested: bool = False


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.clock = FakeClock()
        self.queue = Queue(
            Path(self.dir.name) / "q.db",
            load_entrypoints=False,
            clock=self.clock,
            durability="normal",
        )
        self.model: dict[int, ModelTask] = {}
        self.last_attempts: dict[int, int] = {}
        #: tasks whose attempts may go down in this step (release, manual retry)
        self.may_decrease: set[int] = set()

    def teardown(self) -> None:
        self.queue.close()
        self.dir.cleanup()

    # -- helpers ---------------------------------------------------------------------------

    def now(self) -> int:
        return self.clock.now_us()

    def running(self, worker: str | None = None) -> list[ModelTask]:
        return [
            t
            for t in self.model.values()
            if t.status == "running" and (worker is None or t.holder == worker)
        ]

    def sweep(self) -> None:
        now = self.now()
        for t in sorted(self.model.values(), key=lambda t: (t.lease_until or 0, t.id)):
            if t.status != "running" or t.lease_until is None or t.lease_until > now:
                continue
            t.holder = t.lease_until = None
            if t.cancel_requested:
                t.status = "cancelled"
            elif t.attempts < t.max_attempts:
                t.status, t.run_after = "queued", now
            else:
                t.status = "failed"

    # -- rules -----------------------------------------------------------------------------

    @rule(
        delay=st.sampled_from([0, 0, 5, 30]),
        max_attempts=st.integers(1, 3),
        priority=st.integers(0, 3),
    )
    def enqueue(self, delay: int, max_attempts: int, priority: int) -> None:
        task = self.queue.enqueue("t", priority=priority, delay=delay, max_attempts=max_attempts)
        assert task.id not in self.model
        self.model[task.id] = ModelTask(
            id=task.id, status="queued", attempts=0, max_attempts=max_attempts,
            run_after=self.now() + seconds_to_us(delay),
        )  # fmt: skip

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 3))
    def lease(self, worker: str, limit: int) -> None:
        self.sweep()
        now = self.now()
        due = sorted(
            (t for t in self.model.values() if t.status == "queued" and t.run_after <= now),
            key=lambda t: (t.run_after, t.id),
        )[:limit]
        leased = self.queue.runtime.lease(worker, limit=limit, lease_seconds=LEASE_SECONDS)
        assert [t.id for t in leased] == [t.id for t in due], "FIFO: due time, then id"
        for t in due:
            t.status, t.holder = "running", worker
            t.attempts += 1
            t.lease_until = now + seconds_to_us(LEASE_SECONDS)
            t.cancel_requested = False

    @precondition(lambda self: self.running())
    @rule(data=st.data(), outcome=st.sampled_from(["complete", "fail", "retry", "release"]))
    def settle(self, data: st.DataObject, outcome: str) -> None:
        t = data.draw(st.sampled_from(sorted(self.running(), key=lambda t: t.id)))
        later = self.now() + seconds_to_us(data.draw(st.integers(0, 20)))
        assert t.holder is not None
        self.queue.runtime.settle(
            t.holder,
            [Settlement(task_id=t.id, kind=outcome, run_after_us=later, error="e")],  # type: ignore[arg-type]
        )
        t.holder = t.lease_until = None
        if outcome == "complete":
            t.status = "completed"
        elif outcome == "fail":
            t.status = "failed"
        elif outcome == "retry":
            if t.cancel_requested:
                t.status = "cancelled"
            elif t.attempts >= t.max_attempts:
                t.status = "failed"
            else:
                t.status, t.run_after = "queued", later
        else:
            t.status, t.attempts = "queued", t.attempts - 1
            self.may_decrease.add(t.id)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        t = data.draw(st.sampled_from(sorted(self.model.values(), key=lambda t: t.id)))
        try:
            self.queue.cancel(t.id)
        except InvalidTransition:
            assert t.status in ("completed", "failed", "cancelled")
            return
        if t.status == "queued":
            t.status = "cancelled"
        else:
            assert t.status == "running"
            t.cancel_requested = True

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def manual_retry(self, data: st.DataObject) -> None:
        t = data.draw(st.sampled_from(sorted(self.model.values(), key=lambda t: t.id)))
        try:
            self.queue.retry(t.id)
        except InvalidTransition:
            assert t.status not in ("failed", "cancelled")
            return
        t.status, t.attempts, t.run_after, t.cancel_requested = "queued", 0, self.now(), False
        self.may_decrease.add(t.id)

    @rule(worker=st.sampled_from(WORKERS))
    def heartbeat(self, worker: str) -> None:
        mine = self.running(worker)
        now = self.now()
        held, to_cancel = self.queue.runtime.heartbeat(worker, [t.id for t in mine], LEASE_SECONDS)
        assert held == {t.id for t in mine}
        assert to_cancel == {t.id for t in mine if t.cancel_requested}
        for t in mine:
            t.lease_until = now + seconds_to_us(LEASE_SECONDS)

    @rule(seconds=st.sampled_from([1, 4, 9, 11, 25]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        stored = {t.id: t for t in self.queue.list(limit=100_000)}
        assert set(stored) == set(self.model), "nothing lost, nothing invented"
        for tid, m in self.model.items():
            s = stored[tid]
            assert s.status == TaskStatus(m.status), (tid, s, m)
            assert s.attempts == m.attempts
            assert s.locked_by == m.holder, "exactly one holder while running"
            if m.status == "queued":
                assert to_us(s.run_after, "run_after") == m.run_after
            if m.status == "running":
                assert s.cancel_requested == m.cancel_requested
            assert s.attempts <= s.max_attempts

    @invariant()
    def attempts_never_decrease_without_release_or_retry(self) -> None:
        for task in self.queue.list(limit=100_000):
            before = self.last_attempts.get(task.id, 0)
            if task.id not in self.may_decrease:
                assert task.attempts >= before, (task, before)
            self.last_attempts[task.id] = task.attempts
        self.may_decrease.clear()

    @invariant()
    def counts_agree(self) -> None:
        counts = self.queue.counts()
        assert sum(counts.values()) == len(self.model)
        for status in TaskStatus:
            assert counts[status.value] == sum(
                1 for t in self.model.values() if t.status == status.value
            )


QueueMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueMachine = QueueMachine.TestCase
