"""The contract every retry policy keeps. Subclass :class:`RetryPolicyContract` in your tests.

A retry policy is an object with

- ``max_attempts`` (int >= 1): the attempt budget of tasks enqueued without their own;
- ``decide(task, failure, now) -> RetryDecision``: what happens after a failed attempt;
- the plugin hooks that make it usable globally (``Queue(path, plugins=[policy])``):
  ``hookqueue_retry`` answering ``tryfirst`` and deferring to a per-type policy in
  ``handler.options["retry"]``, and a ``hookqueue_enqueue`` wrapper filling ``max_attempts``.

Subclassing :class:`hookqueue.plugins.retry.RetryPolicy` gives all three; the contract checks
them against a real queue on a temporary SQLite file, with a fake clock::

    from hookqueue.contrib.contracts.retry import RetryPolicyContract

    class TestMyPolicy(RetryPolicyContract):
        def make_policy(self):
            return MyPolicy(max_attempts=4)

Requires pytest and hypothesis (``pip install 'hookqueue[test]'``).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookqueue import FakeClock, RetryLater, TaskStatus, WorkerEngine
from hookqueue.contrib.contracts._base import START, QueueContract
from hookqueue.core.models import Failure, RetryDecision, Task
from hookqueue.core.storage import Settlement

#: The instant the contract's fake clocks start at.

#: Rounding slack when comparing a stored instant (whole microseconds) with a float delay.
_SLACK = timedelta(microseconds=2)


def make_task(*, attempts: int, max_attempts: int, now: datetime = START, task_id: int = 1) -> Task:
    """A running task as the retry hook sees it (``attempts`` counts the failed attempt)."""
    return Task(
        id=task_id,
        queue="default",
        task_type="contract",
        payload={},
        priority=100,
        status=TaskStatus.RUNNING,
        attempts=attempts,
        max_attempts=max_attempts,
        run_after=now,
        created_at=now,
        locked_by="contract-worker",
        lease_expires_at=now + timedelta(seconds=10),
        started_at=now,
    )


def failure_of(kind: str) -> Failure:
    """A failure of ``kind`` shaped as the worker and the lease sweep report it."""
    if kind == "error":
        exc: BaseException | None = RuntimeError("contract failure")
    elif kind == "timeout":
        exc = TimeoutError()
    else:
        exc = None
    return Failure(kind=kind, message=f"{kind} in the contract test", exception=exc)


#: Every subclass runs the same ``@given`` methods (hypothesis sees one function called from
#: several classes); the inputs are valid for any subclass, so sharing examples is harmless.
_SHARED = [HealthCheck.differing_executors]


class _AlwaysFails:
    """A handler that fails every attempt and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, task: Task) -> None:
        self.calls += 1
        raise RuntimeError(f"attempt {task.attempts} fails")


class RetryPolicyContract(QueueContract):
    """Tests every retry policy must pass. Subclass it and implement :meth:`make_policy`.

    Class attributes tune the expectations:

    - ``retries_errors``: the policy retries a handler's ``RuntimeError`` (False for a policy
      that never retries, or one whose ``retry_on`` excludes it);
    - ``queue_kwargs``: extra keyword arguments for every :class:`~hookqueue.Queue` the
      contract builds (e.g. ``{"block": [...]}``).
    """

    retries_errors: ClassVar[bool] = True

    # -- what a subclass provides --------------------------------------------------------------

    def make_plugin(self) -> Any:
        """The plugin the contract's queues register: :meth:`make_policy`."""
        return self.make_policy()

    def make_policy(self) -> Any:
        """A new instance of the policy under test."""
        raise NotImplementedError("implement make_policy() to return the policy under test")

    def delay_bounds(self, policy: Any, attempt: int) -> tuple[float, float]:
        """The smallest and largest delay the policy may choose after failed ``attempt``.

        Defaults to the policy's own ``delay_bounds`` when it has one, else ``(0, inf)``.
        """
        bounds = getattr(policy, "delay_bounds", None)
        if callable(bounds):
            low, high = bounds(attempt)
            return float(low), float(high)
        return 0.0, math.inf

    # -- helpers -------------------------------------------------------------------------------

    # -- the contract --------------------------------------------------------------------------

    def test_max_attempts_is_a_positive_integer(self) -> None:
        policy = self.make_policy()
        assert isinstance(policy.max_attempts, int) and not isinstance(policy.max_attempts, bool)
        assert policy.max_attempts >= 1

    @pytest.mark.parametrize("kind", ["error", "timeout", "crash", "no_handler", "bad_result"])
    def test_decides_every_failure_kind(self, kind: str) -> None:
        policy = self.make_policy()
        budget = max(policy.max_attempts, 2)
        for attempt in range(1, budget + 1):
            task = make_task(attempts=attempt, max_attempts=budget)
            decision = policy.decide(task, failure_of(kind), START)
            assert isinstance(decision, RetryDecision), f"{kind}: decide() returned {decision!r}"
            if decision.retry:
                assert decision.run_after is not None and decision.run_after.utcoffset() is not None
                assert decision.run_after >= START, "a retry is never scheduled in the past"

    @settings(max_examples=60, deadline=None, suppress_health_check=_SHARED)
    @given(attempt=st.integers(min_value=1, max_value=200))
    def test_delays_stay_within_the_policys_bounds(self, attempt: int) -> None:
        policy = self.make_policy()
        task = make_task(attempts=attempt, max_attempts=attempt + 1)
        decision = policy.decide(task, failure_of("error"), START)
        if not self.retries_errors:
            assert not decision.retry
            return
        assert decision.retry and decision.run_after is not None
        low, high = self.delay_bounds(policy, attempt)
        waited = decision.run_after - START
        assert timedelta(seconds=low) - _SLACK <= waited
        if math.isfinite(high):
            assert waited <= timedelta(seconds=high) + _SLACK

    def test_retry_later_delay_is_honoured(self) -> None:
        policy = self.make_policy()
        task = make_task(attempts=1, max_attempts=3)
        exc = RetryLater("rate limited", delay=12.5)
        decision = policy.decide(task, Failure(kind="error", message="rl", exception=exc), START)
        assert decision.retry
        assert decision.run_after == START + timedelta(seconds=12.5)

    def test_retry_later_instant_is_honoured(self) -> None:
        policy = self.make_policy()
        task = make_task(attempts=1, max_attempts=3)
        when = START + timedelta(hours=2)
        exc = RetryLater("come back later", run_after=when)
        decision = policy.decide(task, Failure(kind="error", message="rl", exception=exc), START)
        assert decision.retry and decision.run_after == when

    def test_answers_before_the_retry_plugins_default(
        self, tmp_path: Path, contract_clock: FakeClock
    ) -> None:
        policy = self.make_policy()
        budget = policy.max_attempts
        with self.make_queue(tmp_path / "q.db", contract_clock, [policy]) as queue:
            # pluggy calls implementations from the end of this list: the last answers first.
            impls = [i for i in queue.pm.hook.hookqueue_retry.get_hookimpls() if not i.wrapper]
            assert impls[-1].plugin is policy
            task = queue.enqueue("contract")
            assert task.max_attempts == budget

    def test_explicit_max_attempts_is_kept(self, tmp_path: Path, contract_clock: FakeClock) -> None:
        policy = self.make_policy()
        with self.make_queue(tmp_path / "q.db", contract_clock, [policy]) as queue:
            assert queue.enqueue("contract", max_attempts=7).max_attempts == 7

    def test_a_failing_task_runs_exactly_max_attempts_times(
        self, tmp_path: Path, contract_clock: FakeClock
    ) -> None:
        policy = self.make_policy()
        handler = _AlwaysFails()
        with self.make_queue(tmp_path / "q.db", contract_clock, [policy]) as queue:
            queue.handlers.register_handler("contract", handler)
            task = queue.enqueue("contract")
            for _ in range(task.max_attempts + 2):
                WorkerEngine(queue, worker_id="contract-worker", concurrency=1).run_until_idle()
                waiting = queue.get(task.id)
                if waiting.is_terminal:
                    break
                contract_clock.set(max(waiting.run_after, contract_clock.now()))
            done = queue.get(task.id)
            expected = task.max_attempts if self.retries_errors else 1
            assert done.status is TaskStatus.FAILED
            assert handler.calls == done.attempts == expected
            assert queue.check() == []

    def test_a_per_type_policy_wins_over_the_global_one(
        self, tmp_path: Path, contract_clock: FakeClock
    ) -> None:
        from hookqueue.plugins.retry import FixedDelay, NoRetry

        policy = self.make_policy()
        handler = _AlwaysFails()
        # This policy is global; the task type's own says "no retry".
        with self.make_queue(tmp_path / "a.db", contract_clock, [policy]) as queue:
            queue.handlers.register_handler("contract", handler, options={"retry": NoRetry()})
            task = queue.enqueue("contract")
            assert task.max_attempts == 1
            WorkerEngine(queue, worker_id="contract-worker", concurrency=1).run_until_idle()
            assert queue.get(task.id).status is TaskStatus.FAILED and handler.calls == 1
        # This policy is the task type's; the global one retries after 1000 s.
        handler = _AlwaysFails()
        glob = FixedDelay(delay=1000, max_attempts=9)
        with self.make_queue(tmp_path / "b.db", contract_clock, [glob]) as queue:
            queue.handlers.register_handler("contract", handler, options={"retry": policy})
            task = queue.enqueue("contract", max_attempts=2)
            WorkerEngine(queue, worker_id="contract-worker", concurrency=1).run_until_idle()
            after = queue.get(task.id)
            decision = policy.decide(
                make_task(attempts=1, max_attempts=2, now=contract_clock.now()),
                failure_of("error"),
                contract_clock.now(),
            )
            if decision.retry:
                assert after.status is TaskStatus.QUEUED
                low, high = self.delay_bounds(policy, 1)
                waited = after.run_after - contract_clock.now()
                assert timedelta(seconds=low) - _SLACK <= waited <= timedelta(seconds=high) + _SLACK
            else:
                assert after.status is TaskStatus.FAILED

    def test_a_pending_retry_survives_a_restart(
        self, tmp_path: Path, contract_clock: FakeClock
    ) -> None:
        if not self.retries_errors:
            pytest.skip("the policy does not retry errors")
        path = tmp_path / "q.db"
        with self.make_queue(path, contract_clock, [self.make_policy()]) as queue:
            queue.handlers.register_handler("contract", _AlwaysFails())
            task = queue.enqueue("contract", max_attempts=3)
            WorkerEngine(queue, worker_id="w1", concurrency=1).run_until_idle()
            pending = queue.get(task.id)
        assert pending.status is TaskStatus.QUEUED and pending.attempts == 1
        # A new process: a new Queue object on the same file, the same instant.
        calls: list[int] = []
        with self.make_queue(path, contract_clock, [self.make_policy()]) as queue:
            queue.handlers.register_handler("contract", lambda t: calls.append(t.attempts))
            assert queue.get(task.id).run_after == pending.run_after
            contract_clock.set(pending.run_after)
            WorkerEngine(queue, worker_id="w2", concurrency=1).run_until_idle()
            assert queue.get(task.id).status is TaskStatus.COMPLETED
        assert calls == [2]

    def test_a_crashed_attempt_goes_through_the_policy(
        self, tmp_path: Path, contract_clock: FakeClock
    ) -> None:
        policy = self.make_policy()
        with self.make_queue(tmp_path / "q.db", contract_clock, [policy]) as queue:
            task = queue.enqueue("contract", max_attempts=3)
            [leased] = queue.runtime.lease("dies", lease_seconds=5)
            contract_clock.advance(6)
            expected = policy.decide(leased, failure_of("crash"), contract_clock.now())
            queue.runtime.lease("sweeper", limit=0)
            after = queue.get(task.id)
            if expected.retry:
                assert after.status is TaskStatus.QUEUED and after.attempts == 1
                assert after.run_after >= contract_clock.now()
            else:
                assert after.status is TaskStatus.FAILED

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[*_SHARED, HealthCheck.too_slow],
    )
    @given(
        max_attempts=st.integers(min_value=1, max_value=6),
        outcomes=st.lists(st.sampled_from(["error", "timeout", "crash", "ok"]), max_size=10),
    )
    def test_attempts_never_exceed_max_attempts(
        self, max_attempts: int, outcomes: list[str]
    ) -> None:
        with self.temporary_queue() as (queue, clock):
            task = queue.enqueue("contract", max_attempts=max_attempts)
            steps = iter(outcomes)
            for _ in range(100):
                leased = queue.runtime.lease("w", lease_seconds=5)
                if not leased:
                    delay = queue.db.next_wakeup_delay_us(["default"], clock.now_us())
                    if delay is None:
                        break
                    clock.advance(delay / 1e6)
                    continue
                [running] = leased
                assert running.attempts <= running.max_attempts == max_attempts
                outcome = next(steps, "error")
                if outcome == "ok":
                    queue.runtime.settle("w", [Settlement(task_id=running.id, kind="complete")])
                elif outcome == "crash":
                    clock.advance(6)  # the lease expires; the next lease sweeps it
                else:
                    queue.runtime.settle(
                        "w", [queue.runtime.decide_retry(running, failure_of(outcome), None)]
                    )
            final = queue.get(task.id)
            assert final.is_terminal
            assert 1 <= final.attempts <= max_attempts
            assert queue.check() == []


__all__ = ["START", "RetryPolicyContract", "failure_of", "make_task"]
