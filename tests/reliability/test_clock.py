"""The wall clock jumping: NTP steps, a VM resumed from suspend, a mis-set clock corrected.

Instants in the database (``run_after``, lease expiry) are wall-clock UTC, because several
processes must agree on them; durations measured inside one process (attempt duration,
timeouts, waits) use the monotonic clock. ``FakeClock.set`` jumps the wall clock and leaves
the monotonic clock alone, as a real clock step does.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from hookqueue import EventKind, FakeClock, Queue, TaskStatus, WorkerEngine
from hookqueue.core.models import Task
from hookqueue.core.storage import Settlement

from ._policies import EventRecorder, RetryCrashes
from .conftest import FaultRecord

LEASE = 10.0


@pytest.fixture
def q(db_path: Path, clock: FakeClock) -> Iterator[Queue]:
    """A core queue on a fake clock that retries tasks whose worker died."""
    queue = Queue(
        db_path, load_entrypoints=False, clock=clock, durability="normal", plugins=[RetryCrashes()]
    )
    yield queue
    queue.close()


def _done(task_id: int) -> list[Settlement]:
    return [Settlement(task_id=task_id, kind="complete", result_json='"ok"')]


def test_forward_jump_treats_live_leases_as_expired_once(
    q: Queue, clock: FakeClock, fault: FaultRecord
) -> None:
    """A jump forward past the lease length makes a live worker's lease look expired: another
    worker takes the task over (a second attempt, counted); the first worker's late result is
    dropped, its heartbeat reports the lease lost, and the task ends with one outcome."""
    fault.describe("Wall clock jumps 1 day forward while a task runs")
    task = q.enqueue("job", max_attempts=3)
    [first] = q.runtime.lease("w1", lease_seconds=LEASE)
    clock.set(clock.now() + timedelta(days=1))
    fault.inject()
    [second] = q.runtime.lease("w2", lease_seconds=LEASE)
    assert second.id == task.id and second.attempts == 2
    held, _ = q.runtime.heartbeat("w1", [task.id], LEASE)
    assert held == set(), "the first worker still believes it holds the lease"
    assert q.runtime.settle("w1", _done(task.id)) == [], "a lost lease's outcome was written"
    [done] = q.runtime.settle("w2", _done(task.id))
    assert done.status is TaskStatus.COMPLETED and done.attempts == 2 and done.locked_by is None
    fault.figure("attempts", done.attempts)


def test_forward_jump_makes_delayed_tasks_due(
    q: Queue, clock: FakeClock, fault: FaultRecord
) -> None:
    """After a jump forward, exactly the delayed tasks whose instant has passed are due; the
    others still wait for theirs."""
    fault.describe("Wall clock jumps forward past some delayed tasks")
    soon = q.enqueue("job", delay=timedelta(hours=1))
    later = q.enqueue("job", delay=timedelta(days=2))
    assert q.runtime.lease("w", limit=10) == []
    clock.set(clock.now() + timedelta(days=1))
    fault.inject()
    assert [t.id for t in q.runtime.lease("w", limit=10)] == [soon.id]
    clock.set(clock.now() + timedelta(days=1, seconds=1))
    fault.inject()
    assert [t.id for t in q.runtime.lease("w", limit=10)] == [later.id]


def test_backward_jump_never_expires_a_live_lease(
    q: Queue, clock: FakeClock, fault: FaultRecord
) -> None:
    """After a jump backward a live lease is not taken over early; its worker renews and
    completes it (one attempt). A lease nobody renews is taken over when the wall clock
    passes its expiry instant again."""
    fault.describe("Wall clock jumps 1 hour backward while tasks run")
    live = q.enqueue("job", max_attempts=3)
    dead = q.enqueue("job", max_attempts=3)
    q.runtime.lease("w-live", limit=1, lease_seconds=LEASE)
    q.runtime.lease("w-dead", limit=1, lease_seconds=LEASE)
    jumped_from = clock.now()
    clock.set(jumped_from - timedelta(hours=1))
    fault.inject()
    clock.advance(LEASE * 3)
    assert q.runtime.lease("w-other", limit=10, lease_seconds=LEASE) == []
    held, _ = q.runtime.heartbeat("w-live", [live.id], LEASE)
    assert held == {live.id}
    [done] = q.runtime.settle("w-live", _done(live.id))
    assert done.status is TaskStatus.COMPLETED and done.attempts == 1
    # The dead worker's lease ends at jumped_from + LEASE on the wall clock: step the clock
    # a minute at a time and see when it is taken over.
    stepped = 0
    while not (taken := q.runtime.lease("w-other", limit=10, lease_seconds=LEASE)):
        clock.advance(60)
        stepped += 60
        assert stepped < 2 * 3600, "the dead worker's lease was never taken over"
    assert clock.now() >= jumped_from + timedelta(seconds=LEASE), "taken over early"
    assert [(t.id, t.attempts) for t in taken] == [(dead.id, 2)]
    fault.figure("wait for a dead worker's lease after a 1 h jump back (s)", stepped + LEASE * 3)


def test_backward_jump_keeps_ready_tasks_ready(
    q: Queue, clock: FakeClock, fault: FaultRecord
) -> None:
    """A task that was ready to run before the wall clock stepped back is still leased
    right after the step."""
    fault.describe("Wall clock jumps 1 hour backward with ready tasks queued")
    ready = q.enqueue("job")
    clock.set(clock.now() - timedelta(hours=1))
    fault.inject()
    leased = q.runtime.lease("w", limit=10)
    fault.figure("ready tasks leased after the jump", f"{len(leased)}/1")
    assert [t.id for t in leased] == [ready.id]


def test_backward_jump_does_not_run_delayed_tasks_early(
    q: Queue, clock: FakeClock, fault: FaultRecord
) -> None:
    """A delayed task keeps its wall-clock instant across a backward jump: it is not leased
    before that instant."""
    fault.describe("Wall clock jumps backward with delayed tasks queued")
    start = clock.now()
    delayed = q.enqueue("job", delay=timedelta(minutes=5))
    clock.set(start - timedelta(hours=1))
    fault.inject()
    clock.set(start + timedelta(minutes=4, seconds=59))
    assert q.runtime.lease("w", limit=10) == []
    clock.set(start + timedelta(minutes=5))
    assert [t.id for t in q.runtime.lease("w", limit=10)] == [delayed.id]


def test_attempt_durations_and_timeouts_use_the_monotonic_clock(
    db_path: Path, clock: FakeClock, fault: FaultRecord
) -> None:
    """Handlers that jump the wall clock a day backward or forward while they run: each
    attempt's reported duration is the monotonic time it took (never negative, never a
    day), and a forward jump does not time out a running task."""
    fault.describe("Wall clock jumps 1 day back / forward during a handler")
    recorder = EventRecorder()
    q = Queue(db_path, load_entrypoints=False, clock=clock, durability="normal", plugins=[recorder])

    def back(task: Task) -> str:
        clock.set(clock.now() - timedelta(days=1))
        clock.advance(0.25)  # 0.25 s pass on both clocks
        return "back"

    def forward(task: Task) -> str:
        clock.set(clock.now() + timedelta(days=1))
        clock.advance(0.5)
        return "forward"

    q.handlers.register_handler("back", back)
    q.handlers.register_handler("forward", forward, timeout=5.0)
    try:
        # One at a time: after the backward jump a task enqueued earlier would not be due
        # (see test_backward_jump_keeps_ready_tasks_ready).
        b = q.enqueue("back")
        WorkerEngine(q, worker_id="w1", concurrency=1).run_until_idle()
        f = q.enqueue("forward")
        WorkerEngine(q, worker_id="w2", concurrency=1).run_until_idle()
        fault.inject(2)
        assert q.get(b.id).status is TaskStatus.COMPLETED
        assert q.get(f.id).status is TaskStatus.COMPLETED
    finally:
        q.close()
    durations = {
        e.task.task_type: e.duration for e in recorder.events if e.kind is EventKind.COMPLETED
    }
    assert durations["back"] == pytest.approx(0.25)
    assert durations["forward"] == pytest.approx(0.5)
    fault.figure("reported durations (s)", durations)
