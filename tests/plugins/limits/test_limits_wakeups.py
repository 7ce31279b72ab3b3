"""When a worker held back by a limit starts the next task: on time, and never early.

A worker whose due tasks a limit holds must sleep until the limit allows a start — exactly
until a rate's next start, or until another connection's commit frees a slot — and must not
lease in vain meanwhile. These tests set every other way a worker looks again far beyond what
they allow: a 5 s idle poll and 600 s leases (the worker's idle heartbeat, a commit that also
makes it look, comes every 150 s), so a start that is late by more than :data:`LATE` means the
wake-up is missing, and a lease count above a few means the worker polls in a loop.

What they guard: the worker passes the plan of its latest lease (``QueueRuntime.last_plan``) to
``has_work`` and ``next_wakeup_delay_us``, and its commit watcher wakes it when another
process's commit brings work the limits let start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import hookqueue
from hookqueue import Queue, Task, WorkerEngine
from hookqueue.core.clock import to_us
from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.storage import Settlement
from hookqueue.plugins.limits import set_limit

#: The workers' idle poll: far beyond every bound below, so polling cannot hide a missing
#: wake-up.
IDLE_POLL = 5.0
#: Longer than the workers' heartbeat could ever come in a test (every LEASE / 4 = 150 s).
LEASE = 600.0
#: How late a start may be after the limit allows it (a tenth of the idle poll: a worker that
#: only wakes on its idle poll is 5 s late).
LATE = IDLE_POLL / 10


class _LeaseCounter:
    """Counts the leases a worker makes (``hookqueue_lease`` is asked once per lease)."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def hookqueue_lease(self) -> None:
        self.calls += 1


def _worker(q: Queue) -> tuple[WorkerEngine, threading.Thread]:
    worker = WorkerEngine(q, worker_id="w", idle_poll_interval=IDLE_POLL, lease_seconds=LEASE)
    assert worker.heartbeat_interval > 10 * IDLE_POLL
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.wait_started(10)
    return worker, thread


def _wait_for(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _us(task: Task) -> int:
    assert task.started_at is not None
    return to_us(task.started_at, "started_at")


def test_a_rate_spaces_the_starts_and_wakes_the_worker_on_time(db_path: Path) -> None:
    """``rate=4, period=1``: five tasks start 0.25 s apart, none early (by the lease instants
    the store wrote, and by the handlers' own clocks), each within :data:`LATE` of the instant
    the rate allows it — the worker sleeps until the next start instead of until its idle
    poll — and the worker leases about once per start, not in a loop."""
    counter = _LeaseCounter()
    q = Queue(db_path, durability="normal", plugins=[counter])
    try:
        spacing_us = 250_000  # period / rate
        starts: list[tuple[float, Task]] = []
        q.handlers.register_handler("job", lambda t: starts.append((time.time(), t)))
        set_limit(q, "r", rate=4, period=1.0)
        for _ in range(5):
            q.enqueue("job", {})
        began = time.time()
        worker, thread = _worker(q)
        try:
            assert _wait_for(lambda: len(starts) == 5, 10 * IDLE_POLL)
        finally:
            worker.stop()
            thread.join(10)
        assert starts[0][0] - began < LATE  # the bucket starts full
        for (wall_before, before), (wall, task) in zip(starts, starts[1:], strict=False):
            gap_us = _us(task) - _us(before)
            assert gap_us >= spacing_us, f"a start {spacing_us - gap_us} µs early"
            assert wall - wall_before >= spacing_us / 1e6 - 0.02, "a handler ran early"
            late = wall - (_us(before) + spacing_us) / 1e6
            assert late < LATE, (
                f"started {late:.2f}s after the rate allowed it: the worker did not sleep "
                "until the rate's next start"
            )
        assert {t.attempts for t in q.list()} == {1}
        # A lease per start, plus one writing each outcome and the odd early look.
        assert counter.calls <= 3 * len(starts), f"{counter.calls} leases for 5 starts"
    finally:
        q.close()


def test_a_freed_slot_wakes_the_held_worker_and_other_commits_do_not(db_path: Path) -> None:
    """A worker held by a concurrency limit (another connection holds the one slot) keeps
    its task queued without spending an attempt. It sees every commit of that connection;
    those that free no slot (here 20 enqueues of tasks the limit holds too) must not make it
    lease — its look for work applies the limits — and the one that frees the slot starts
    the held task within :data:`LATE`."""
    counter = _LeaseCounter()
    q = Queue(db_path, durability="normal", plugins=[counter])
    other = Queue(db_path, durability="normal")
    try:
        started: list[float] = []
        q.handlers.register_handler("job", lambda t: started.append(time.time()))
        set_limit(q, "one", concurrency=1)
        other.enqueue("job", {})
        [held] = other.runtime.lease("elsewhere", limit=1, lease_seconds=LEASE)
        waiting = q.enqueue("job", {})
        worker, thread = _worker(q)
        try:
            assert _wait_for(lambda: counter.calls >= 1, 10)  # its first lease, held back
            time.sleep(0.2)
            assert q.get(waiting.id).status.value == "queued" and q.get(waiting.id).attempts == 0
            before = counter.calls
            for _ in range(20):
                other.enqueue("job", {})
                time.sleep(0.02)
            time.sleep(0.2)
            assert counter.calls == before, (
                f"{counter.calls - before} leases for 20 commits that freed nothing"
            )
            assert not started
            [done] = other.runtime.settle(
                "elsewhere", [Settlement(task_id=held.id, kind="complete")]
            )
            assert _wait_for(lambda: started, 10 * IDLE_POLL)
            assert done.finished_at is not None
            late = started[0] - to_us(done.finished_at, "finished_at") / 1e6
            assert late < LATE, f"started {late:.2f}s after the slot was freed"
        finally:
            worker.stop()
            thread.join(10)
    finally:
        q.close()
        other.close()


#: A worker process that runs one ``slow`` task and exits. The handler returns once the file
#: ``argv[2]`` exists, so the test decides when the slot frees.
_CHILD = """\
import pathlib, sys, time
from hookqueue import Queue, WorkerEngine

release = pathlib.Path(sys.argv[2])

def slow(task):
    while not release.exists():
        time.sleep(0.005)

with Queue(sys.argv[1], durability="normal") as q:
    q.handlers.register_handler("slow", slow)
    WorkerEngine(q, worker_id="child", concurrency=1, max_tasks=1).run()
"""


def test_a_slot_freed_by_another_worker_process_starts_the_held_task(
    db_path: Path, tmp_path: Path
) -> None:
    """``concurrency=1`` across processes: a worker process runs a ``slow`` task; this
    process's worker (``job`` tasks only) holds its ``job`` back without spending an attempt
    or polling, and starts it within :data:`LATE` of the other process writing its outcome —
    woken by that commit, not by its 5 s idle poll — and never before it."""
    counter = _LeaseCounter()
    q = Queue(db_path, durability="normal", plugins=[counter])
    release = tmp_path / "release"
    root = str(Path(hookqueue.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    output = tmp_path / "child.log"
    with output.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(db_path), str(release)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    worker = None
    try:
        started: list[float] = []
        q.handlers.register_handler("job", lambda t: started.append(time.time()))
        set_limit(q, "one", concurrency=1)
        slow = q.enqueue("slow", {})
        assert _wait_for(lambda: q.get(slow.id).status.value == "running", 60), output.read_text()
        job = q.enqueue("job", {})
        worker, thread = _worker(q)
        assert _wait_for(lambda: counter.calls >= 1, 10)
        time.sleep(0.5)
        assert q.get(job.id).status.value == "queued" and q.get(job.id).attempts == 0
        assert counter.calls <= 3, "the worker leases in a loop while the limit holds"
        release.touch()
        assert child.wait(60) == 0, output.read_text()
        assert _wait_for(lambda: started, 10 * IDLE_POLL)
        done = q.get(slow.id)
        assert done.status.value == "completed" and done.finished_at is not None
        freed = to_us(done.finished_at, "finished_at") / 1e6
        assert _us(q.get(job.id)) >= to_us(done.finished_at, "finished_at"), "started early"
        assert started[0] - freed < LATE, (
            f"started {started[0] - freed:.2f}s after the other process freed the slot"
        )
        assert q.get(job.id).attempts == 1
    finally:
        if worker is not None:
            worker.stop()
            thread.join(10)
        if child.poll() is None:
            child.kill()
            child.wait(10)
        q.close()
