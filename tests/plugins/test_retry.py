"""The ``retry`` plugin: policies, defaults, per-type choice, RetryLater, persistence."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _first_party import OTHERS, START, make_queue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookqueue import (
    Failure,
    FakeClock,
    PluginError,
    Queue,
    RetryLater,
    Task,
    TaskStatus,
    ValidationError,
    WorkerEngine,
)
from hookqueue.contrib.contracts.retry import RetryPolicyContract, failure_of, make_task
from hookqueue.core.inline import run_due
from hookqueue.core.plugins import plugin_statuses
from hookqueue.plugins import retry
from hookqueue.plugins.retry import (
    DEFAULT_POLICY,
    ExponentialBackoff,
    FixedDelay,
    LinearBackoff,
    NoRetry,
    RetryPolicy,
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


def work(queue: Queue) -> None:
    WorkerEngine(queue, worker_id="w", concurrency=1).run_until_idle()


def run_to_the_end(queue: Queue, clock: FakeClock, task: Task, *, max_rounds: int = 20) -> Task:
    """Work the task, moving the clock to each retry, until it finishes."""
    for _ in range(max_rounds):
        work(queue)
        current = queue.get(task.id)
        if current.is_terminal:
            return current
        clock.set(max(current.run_after, clock.now()))
    raise AssertionError(f"task {task.id} did not finish in {max_rounds} rounds")


class Failing:
    """A handler that raises the given exceptions in turn (the last one for ever after) and
    records when each attempt started."""

    def __init__(self, clock: FakeClock, *errors: BaseException) -> None:
        self.clock = clock
        self.errors = list(errors) or [RuntimeError("boom")]
        self.started: list[datetime] = []

    def __call__(self, task: Task) -> None:
        self.started.append(self.clock.now())
        raise self.errors[min(len(self.started), len(self.errors)) - 1]


# ---------------------------------------------------------------------------------------------
# the contract, for each first-party policy
# ---------------------------------------------------------------------------------------------


class _Isolated:
    queue_kwargs = {"block": OTHERS}


class TestExponentialBackoffContract(_Isolated, RetryPolicyContract):
    def make_policy(self) -> Any:
        return ExponentialBackoff(base=0.5, cap=30, jitter="full", rng=random.Random(7))


class TestExponentialNoJitterContract(_Isolated, RetryPolicyContract):
    def make_policy(self) -> Any:
        return ExponentialBackoff(base=2, factor=3, cap=100, jitter="none", max_attempts=4)


class TestFixedDelayContract(_Isolated, RetryPolicyContract):
    def make_policy(self) -> Any:
        return FixedDelay(delay=15, jitter="equal", rng=random.Random(1), max_attempts=3)


class TestLinearBackoffContract(_Isolated, RetryPolicyContract):
    def make_policy(self) -> Any:
        return LinearBackoff(initial=1, increment=4, cap=20, max_attempts=6)


class TestNoRetryContract(_Isolated, RetryPolicyContract):
    retries_errors = False

    def make_policy(self) -> Any:
        return NoRetry()


class TestRetryOnOtherTypesContract(_Isolated, RetryPolicyContract):
    # The contract's handler raises RuntimeError, which this policy never retries.
    retries_errors = False

    def make_policy(self) -> Any:
        return FixedDelay(delay=1, retry_on=(ConnectionError,))


# ---------------------------------------------------------------------------------------------
# the plugin: registration, defaults, blocking
# ---------------------------------------------------------------------------------------------


def test_the_module_is_loaded_from_its_entry_point(queue: Queue) -> None:
    status = {s.name: s for s in plugin_statuses(queue.pm)}["retry"]
    assert status.state == "active"
    assert status.hooks == ("hookqueue_enqueue", "hookqueue_retry")
    assert queue.pm.get_plugin("retry") is retry


def test_default_gives_five_attempts_with_backoff(queue: Queue, clock: FakeClock) -> None:
    handler = Failing(clock)
    queue.handlers.register_handler("job", handler)
    task = queue.enqueue("job")
    assert task.max_attempts == 5
    done = run_to_the_end(queue, clock, task)
    assert done.status is TaskStatus.FAILED and done.attempts == 5 and len(handler.started) == 5
    assert done.error_message is not None and done.error_message.startswith("RuntimeError: boom")
    waits = [
        (b - a).total_seconds() for a, b in zip(handler.started, handler.started[1:], strict=False)
    ]
    for attempt, waited in enumerate(waits, start=1):
        low, high = DEFAULT_POLICY.delay_bounds(attempt)
        assert low <= waited <= high + 1e-6
    assert DEFAULT_POLICY.delay_bounds(4) == (4.0, 8.0)


def test_blocking_the_plugin_leaves_one_attempt(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, block=("retry",)) as queue:
        assert {s.name: s.state for s in plugin_statuses(queue.pm)}["retry"] == "blocked"
        handler = Failing(clock)
        queue.handlers.register_handler("job", handler)
        task = queue.enqueue("job")
        assert task.max_attempts == 1
        work(queue)
        assert queue.get(task.id).status is TaskStatus.FAILED and len(handler.started) == 1


def test_a_registered_policy_works_with_the_module_blocked(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, FixedDelay(delay=9, max_attempts=2), block=("retry",)) as queue:
        handler = Failing(clock)
        queue.handlers.register_handler("job", handler)
        task = queue.enqueue("job")
        assert task.max_attempts == 2
        work(queue)
        assert queue.get(task.id).run_after == START + timedelta(seconds=9)
        assert run_to_the_end(queue, clock, task).attempts == 2


def test_a_global_policy_wins_over_the_default(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, FixedDelay(delay=42, max_attempts=3)) as queue:
        handler = Failing(clock)
        queue.handlers.register_handler("job", handler)
        task = queue.enqueue("job")
        assert task.max_attempts == 3
        done = run_to_the_end(queue, clock, task)
        assert done.attempts == 3
        assert handler.started == [
            START,
            START + timedelta(seconds=42),
            START + timedelta(seconds=84),
        ]


def test_two_global_policies_are_refused(db: Path, clock: FakeClock) -> None:
    with pytest.raises(PluginError, match="retry-policy"):
        make_queue(db, clock, FixedDelay(delay=1), ExponentialBackoff())


# ---------------------------------------------------------------------------------------------
# per-type policies
# ---------------------------------------------------------------------------------------------


def test_per_type_policy_sets_max_attempts_and_delays(queue: Queue, clock: FakeClock) -> None:
    handler = Failing(clock)
    queue.handlers.register_handler(
        "job",
        handler,
        options={"retry": LinearBackoff(initial=1, increment=2, cap=4, max_attempts=4)},
    )
    other = Failing(clock)
    queue.handlers.register_handler("other", other)
    task = queue.enqueue("job")
    assert task.max_attempts == 4
    assert queue.enqueue("other").max_attempts == 5
    run_to_the_end(queue, clock, task)
    assert [
        (b - a).total_seconds() for a, b in zip(handler.started, handler.started[1:], strict=False)
    ] == [1, 3, 4]


def test_per_type_max_attempts_needs_the_handler_in_the_enqueuing_process(
    db: Path, clock: FakeClock
) -> None:
    """Documented: an enqueuer without the handler registered gets the global budget; the
    worker's per-type policy still chooses the delays, within that budget."""
    with make_queue(db, clock) as producer:
        task = producer.enqueue("job")
    assert task.max_attempts == 5
    with make_queue(db, clock) as worker_side:
        handler = Failing(clock)
        worker_side.handlers.register_handler(
            "job", handler, options={"retry": FixedDelay(delay=3, max_attempts=2)}
        )
        done = run_to_the_end(worker_side, clock, task)
    assert done.attempts == 5
    assert handler.started[1] - handler.started[0] == timedelta(seconds=3)


def test_an_invalid_per_type_option_is_refused_at_enqueue(queue: Queue) -> None:
    queue.handlers.register_handler("job", lambda t: None, options={"retry": 3})
    with pytest.raises(
        ValidationError, match=r"options\['retry'\] of task type 'job'.*not a retry policy"
    ):
        queue.enqueue("job")
    assert queue.counts()["queued"] == 0


def test_an_invalid_per_type_option_fails_the_task_without_stopping_the_worker(
    queue: Queue, clock: FakeClock
) -> None:
    task = queue.enqueue("job")
    queue.handlers.register_handler("job", Failing(clock), options={"retry": "often"})
    fine = queue.enqueue("fine")
    queue.handlers.register_handler("fine", lambda t: "ok")
    work(queue)
    assert queue.get(task.id).status is TaskStatus.FAILED
    assert queue.get(fine.id).status is TaskStatus.COMPLETED


def test_an_invalid_option_does_not_break_the_crash_sweep(queue: Queue, clock: FakeClock) -> None:
    queue.handlers.register_handler("job", lambda t: None, options={"retry": object()})
    task = queue.enqueue("job", max_attempts=3)
    queue.runtime.lease("dies", lease_seconds=1)
    clock.advance(2)
    assert queue.runtime.lease("sweeper") == []  # the sweep ran without raising
    assert queue.get(task.id).status is TaskStatus.FAILED


# ---------------------------------------------------------------------------------------------
# failure kinds
# ---------------------------------------------------------------------------------------------


def test_no_handler_is_not_retried_by_default(queue: Queue) -> None:
    # A worker leases only types it has handlers for; an in-process run leases any type and
    # meets the missing handler.
    task = queue.enqueue("nobody")
    run_due(queue)
    done = queue.get(task.id)
    assert done.status is TaskStatus.FAILED and done.attempts == 1
    assert "no handler" in (done.error_message or "")


def test_no_handler_is_retried_when_configured(db: Path, clock: FakeClock) -> None:
    policy = FixedDelay(delay=5, retry_kinds={"error", "no_handler"})
    with make_queue(db, clock, policy) as queue:
        task = queue.enqueue("nobody")
        run_due(queue)
        assert queue.get(task.id).status is TaskStatus.QUEUED
        clock.advance(5)
        queue.handlers.register_handler("nobody", lambda t: "found")
        work(queue)
        assert queue.get(task.id).result == "found"


def test_bad_result_is_not_retried(queue: Queue) -> None:
    queue.handlers.register_handler("job", lambda t: object())
    task = queue.enqueue("job")
    work(queue)
    done = queue.get(task.id)
    assert done.status is TaskStatus.FAILED and done.attempts == 1


def test_a_timeout_is_retried(queue: Queue) -> None:
    async def slow(task: Task) -> None:
        await asyncio.sleep(5)

    queue.handlers.register_handler("slow", slow, timeout=0.02)
    task = queue.enqueue("slow")
    work(queue)
    after = queue.get(task.id)
    assert after.status is TaskStatus.QUEUED and after.attempts == 1
    assert "timed out" in (after.error_message or "")


def test_a_timeout_is_not_retried_when_its_kind_is_left_out(db: Path, clock: FakeClock) -> None:
    async def slow(task: Task) -> None:
        await asyncio.sleep(5)

    with make_queue(db, clock, ExponentialBackoff(retry_kinds=("error", "crash"))) as queue:
        queue.handlers.register_handler("slow", slow, timeout=0.02)
        task = queue.enqueue("slow")
        work(queue)
        assert queue.get(task.id).status is TaskStatus.FAILED


def test_a_crash_is_retried_after_the_backoff(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, FixedDelay(delay=30)) as queue:
        task = queue.enqueue("job")
        queue.runtime.lease("dies", lease_seconds=10)
        clock.advance(11)
        queue.runtime.lease("sweeper", limit=0)
        after = queue.get(task.id)
        assert after.status is TaskStatus.QUEUED and after.attempts == 1
        assert after.run_after == clock.now() + timedelta(seconds=30)
        assert "stopped renewing its lease" in (after.error_message or "")


# ---------------------------------------------------------------------------------------------
# retry_on / give_up_on
# ---------------------------------------------------------------------------------------------


def test_retry_on_retries_only_the_named_types(db: Path, clock: FakeClock) -> None:
    policy = FixedDelay(delay=1, retry_on=(ConnectionError,), max_attempts=4)
    with make_queue(db, clock, policy) as queue:
        handler = Failing(
            clock, ConnectionResetError("reset"), ConnectionError("refused"), KeyError("k")
        )
        queue.handlers.register_handler("job", handler)
        done = run_to_the_end(queue, clock, queue.enqueue("job"))
    # Two connection errors were retried (a subclass counts); the KeyError ended it.
    assert done.status is TaskStatus.FAILED and done.attempts == 3
    assert done.error_message == "KeyError: 'k'"


def test_give_up_on_wins_over_retry_on() -> None:
    policy = FixedDelay(delay=1, retry_on=(OSError,), give_up_on=(PermissionError,))
    task = make_task(attempts=1, max_attempts=5)

    def verdict(exc: BaseException) -> bool:
        return policy.decide(task, Failure(kind="error", message="x", exception=exc), START).retry

    assert verdict(OSError("disk"))
    assert not verdict(PermissionError("denied"))
    assert not verdict(ValueError("other"))
    reason = policy.decide(
        task, Failure(kind="error", message="x", exception=ValueError()), START
    ).reason
    assert "retries only OSError, not ValueError" in reason


# ---------------------------------------------------------------------------------------------
# RetryLater
# ---------------------------------------------------------------------------------------------


def test_retry_later_delay_sets_the_next_run(queue: Queue, clock: FakeClock) -> None:
    handler = Failing(clock, RetryLater("rate limited", delay=42))
    queue.handlers.register_handler("job", handler)
    task = queue.enqueue("job")
    work(queue)
    after = queue.get(task.id)
    assert after.status is TaskStatus.QUEUED
    assert after.run_after == START + timedelta(seconds=42)
    assert after.error_message == "RetryLater: rate limited"


def test_retry_later_instant_sets_the_next_run(queue: Queue, clock: FakeClock) -> None:
    when = START + timedelta(hours=3)
    queue.handlers.register_handler("job", Failing(clock, RetryLater(run_after=when)))
    task = queue.enqueue("job")
    work(queue)
    assert queue.get(task.id).run_after == when


def test_retry_later_without_a_time_uses_the_policy(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, FixedDelay(delay=7)) as queue:
        queue.handlers.register_handler("job", Failing(clock, RetryLater()))
        task = queue.enqueue("job")
        work(queue)
        assert queue.get(task.id).run_after == START + timedelta(seconds=7)


def test_retry_later_is_honoured_even_outside_retry_on(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, FixedDelay(delay=1, retry_on=(ConnectionError,))) as queue:
        queue.handlers.register_handler("job", Failing(clock, RetryLater(delay=5)))
        task = queue.enqueue("job")
        work(queue)
        assert queue.get(task.id).run_after == START + timedelta(seconds=5)


def test_retry_later_is_bounded_by_max_attempts(queue: Queue, clock: FakeClock) -> None:
    handler = Failing(clock, RetryLater("again", delay=1))
    queue.handlers.register_handler("job", handler)
    done = run_to_the_end(queue, clock, queue.enqueue("job", max_attempts=3))
    assert done.status is TaskStatus.FAILED and done.attempts == 3 and len(handler.started) == 3
    assert done.error_message == "RetryLater: again (gave up: all 3 attempts used)"


def test_no_retry_honours_retry_later_only_with_attempts_left(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, NoRetry()) as queue:
        queue.handlers.register_handler("job", Failing(clock, RetryLater(delay=5)))
        one = queue.enqueue("job")
        three = queue.enqueue("job", max_attempts=3)
        work(queue)
        assert queue.get(one.id).status is TaskStatus.FAILED
        assert queue.get(three.id).run_after == START + timedelta(seconds=5)


@pytest.mark.parametrize(
    ("exc", "field"),
    [
        (RetryLater(run_after=datetime(2030, 1, 1)), "RetryLater.run_after"),
        (RetryLater(run_after="tomorrow"), "RetryLater.run_after"),
        (RetryLater(delay=-1), "RetryLater.delay"),
        (RetryLater(delay=float("nan")), "RetryLater.delay"),
        (RetryLater(delay=1, run_after=START), "RetryLater="),
    ],
)
def test_an_unusable_retry_later_fails_the_task_with_the_reason(
    queue: Queue, clock: FakeClock, exc: RetryLater, field: str
) -> None:
    queue.handlers.register_handler("job", Failing(clock, exc))
    task = queue.enqueue("job")
    work(queue)
    done = queue.get(task.id)
    assert done.status is TaskStatus.FAILED
    assert field in (done.error_message or "") and "Fix:" in (done.error_message or "")


# ---------------------------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------------------------


def test_a_pending_retry_is_kept_across_a_restart(db: Path, clock: FakeClock) -> None:
    with make_queue(db, clock, FixedDelay(delay=600)) as first:
        first.handlers.register_handler("job", Failing(clock))
        task = first.enqueue("job")
        work(first)
    # The process is gone; a new one opens the same file.
    ran: list[int] = []
    with make_queue(db, clock, FixedDelay(delay=600)) as second:
        second.handlers.register_handler("job", lambda t: ran.append(t.attempts))
        stored = second.get(task.id)
        assert stored.status is TaskStatus.QUEUED and stored.attempts == 1
        assert stored.run_after == START + timedelta(seconds=600)
        clock.advance(599)
        work(second)
        assert ran == []
        clock.advance(1)
        work(second)
        assert ran == [2] and second.get(task.id).status is TaskStatus.COMPLETED


# ---------------------------------------------------------------------------------------------
# the delay formulas
# ---------------------------------------------------------------------------------------------


def test_exponential_schedule_without_jitter() -> None:
    policy = ExponentialBackoff(base=2, factor=3, cap=50, jitter="none")
    assert [policy.delay(a) for a in range(1, 6)] == [2, 6, 18, 50, 50]


def test_exponential_never_overflows() -> None:
    policy = ExponentialBackoff(base=1, factor=10, cap=300, jitter="none")
    assert policy.delay(10**6) == 300
    assert policy.delay(0) == 1


def test_jitter_is_repeatable_with_a_seeded_source() -> None:
    a = ExponentialBackoff(jitter="full", rng=random.Random(42))
    b = ExponentialBackoff(jitter="full", rng=random.Random(42))
    first = [a.delay(n) for n in range(1, 30)]
    assert first == [b.delay(n) for n in range(1, 30)]
    assert len(set(first)) > 20  # it is random, not constant


def test_full_jitter_spreads_over_the_whole_range() -> None:
    policy = FixedDelay(delay=100, jitter="full", rng=random.Random(3))
    samples = [policy.delay(1) for _ in range(2000)]
    assert 0 <= min(samples) < 5 and 95 < max(samples) <= 100
    assert 45 < sum(samples) / len(samples) < 55


def test_equal_jitter_keeps_at_least_half() -> None:
    policy = FixedDelay(delay=100, jitter="equal", rng=random.Random(3))
    samples = [policy.delay(1) for _ in range(2000)]
    assert 50 <= min(samples) < 55 and 95 < max(samples) <= 100


@settings(max_examples=300, deadline=None)
@given(
    base=st.floats(min_value=0, max_value=1000),
    factor=st.floats(min_value=1, max_value=100),
    cap=st.floats(min_value=0, max_value=86_400),
    jitter=st.sampled_from(["full", "equal", "none"]),
    attempt=st.integers(min_value=1, max_value=10_000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_exponential_delays_stay_within_bounds_and_cap(
    base: float, factor: float, cap: float, jitter: str, attempt: int, seed: int
) -> None:
    policy = ExponentialBackoff(
        base=base,
        factor=factor,
        cap=cap,
        jitter=jitter,  # type: ignore[arg-type]
        rng=random.Random(seed),
    )
    low, high = policy.delay_bounds(attempt)
    try:
        expected = min(cap, base * factor ** (attempt - 1))
    except OverflowError:
        expected = cap
    assert high == expected
    assert 0 <= low <= high <= cap
    delay = policy.delay(attempt)
    assert low <= delay <= high
    # the schedule never shrinks as attempts go up
    assert policy.base_delay(attempt + 1) >= policy.base_delay(attempt)


@settings(max_examples=200, deadline=None)
@given(
    initial=st.floats(min_value=0, max_value=1000),
    increment=st.floats(min_value=0, max_value=1000),
    cap=st.floats(min_value=0, max_value=86_400),
    attempt=st.integers(min_value=1, max_value=10**6),
)
def test_linear_delays_respect_the_cap(
    initial: float, increment: float, cap: float, attempt: int
) -> None:
    policy = LinearBackoff(initial=initial, increment=increment, cap=cap)
    assert policy.delay(attempt) == min(cap, initial + increment * (attempt - 1))
    assert policy.delay(attempt) <= cap


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    attempts=st.integers(min_value=1, max_value=20),
    max_attempts=st.integers(min_value=1, max_value=20),
    kind=st.sampled_from(sorted(retry.FAILURE_KINDS)),
)
def test_the_queue_never_retries_past_max_attempts(
    queue: Queue, attempts: int, max_attempts: int, kind: str
) -> None:
    """The policy decides by kind; the queue (here with the default policy) keeps the budget."""
    task = make_task(attempts=attempts, max_attempts=max_attempts)
    settlement = queue.runtime.decide_retry(task, failure_of(kind), None)
    if attempts < max_attempts and kind in retry.RETRIED_KINDS:
        assert settlement.kind == "retry"
    else:
        assert settlement.kind == "fail"
        if kind in retry.RETRIED_KINDS:
            assert settlement.error is not None
            assert settlement.error.endswith(f"(gave up: all {max_attempts} attempts used)")


# ---------------------------------------------------------------------------------------------
# configuration errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ExponentialBackoff(base=-1), "base"),
        (lambda: ExponentialBackoff(cap=float("inf")), "cap"),
        (lambda: ExponentialBackoff(factor=0.5), "factor"),
        (lambda: ExponentialBackoff(jitter="some"), "jitter"),  # type: ignore[arg-type]
        (lambda: FixedDelay(delay="10"), "delay"),  # type: ignore[arg-type]
        (lambda: LinearBackoff(increment=-2), "increment"),
        (lambda: FixedDelay(max_attempts=0), "max_attempts"),
        (lambda: FixedDelay(max_attempts=True), "max_attempts"),
        (lambda: FixedDelay(retry_on=ValueError("x")), "retry_on"),
        (lambda: FixedDelay(retry_on="ValueError"), "retry_on"),
        (lambda: FixedDelay(give_up_on=[int]), "give_up_on"),
        (lambda: FixedDelay(retry_kinds={"error", "oops"}), "retry_kinds"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(make: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make()
    assert info.value.field == field
    assert "Fix:" in str(info.value)


def test_the_base_class_needs_a_delay() -> None:
    with pytest.raises(NotImplementedError, match="RetryPolicy must implement base_delay"):
        RetryPolicy().delay(1)


def test_policies_are_immutable_and_describe_themselves() -> None:
    policy = ExponentialBackoff(base=1, cap=300)
    with pytest.raises(AttributeError):
        policy.cap = 5  # type: ignore[misc]
    assert re.search(
        r"ExponentialBackoff\(max_attempts=5, .*base=1, factor=2.0, cap=300", repr(policy)
    )


# ---------------------------------------------------------------------------------------------
# the documentation's examples run
# ---------------------------------------------------------------------------------------------


def python_blocks(doc: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.DOTALL)


DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_examples_in_docs_retries_md_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOOKQUEUE_DISABLE_PLUGINS", ",".join(OTHERS))
    blocks = python_blocks(DOCS / "retries.md")
    assert len(blocks) >= 6
    namespace: dict[str, Any] = {"__name__": "docs_retries"}
    for block in blocks:
        exec(compile(block, str(DOCS / "retries.md"), "exec"), namespace)
    with pytest.raises(RetryLater):
        namespace["poll_export"](None)
