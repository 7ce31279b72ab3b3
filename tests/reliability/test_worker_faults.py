"""Worker faults: handlers that block the event loop or never return, workers without handlers, a worker run twice.

A handler's mistakes must cost only its own task: a blocked event loop must not make a
lease expire (and the task run twice), a handler that never returns must not keep a worker
process from shutting down or its task leased until expiry, and a worker without the
handler for a task type must leave that type's tasks for a worker that has it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hookqueue import Queue, TaskStatus, WorkerEngine

from .conftest import FaultRecord

HERE = Path(__file__).resolve().parent


def _worker_process(
    db: Path, log: Path, worker_id: str, *options: str, app: str | None = "_hqapp:registry"
) -> subprocess.Popen[str]:
    """``hookqueue worker`` in a process of its own, with _hqapp's handlers."""
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE),
        "HQ_RELIABILITY_LOG": str(log),
        "HOOKQUEUE_PLUGIN_AUTOLOAD": "0",
    }
    command = [sys.executable, "-m", "hookqueue", "worker", "--db", str(db)]
    if app is not None:
        command += ["--app", app]
    return subprocess.Popen(
        [*command, "--worker-id", worker_id, *options],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _starts(log: Path) -> Counter[int]:
    """How many attempts of each task started (from the handlers' log)."""
    if not log.exists():
        return Counter()
    return Counter(
        int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("start ")
    )


def _wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    detail: Callable[[], object] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, (
            f"timed out after {timeout}s waiting until {what} {detail()}"
        )
        time.sleep(0.02)


def _stop(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """SIGTERM, wait, and return the process's stderr (SIGKILL if it does not exit)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_async_handler_blocking_the_loop_past_its_lease_runs_once(
    tmp_path: Path, fault: FaultRecord
) -> None:
    """Two worker processes on one file, `lease_seconds=1`: an async handler that blocks its
    worker's event loop for 3 s (`time.sleep` inside `async def`) runs once and ends
    `completed` — the other worker, idle all along, never takes its lease over; an unrelated
    task leased in the same batch completes too; and the worker logs a warning naming the
    task and how long its loop was blocked."""
    fault.describe("Async handler blocking the event loop 3x its lease, two worker processes")
    db, log = tmp_path / "queue.db", tmp_path / "runs.log"
    with Queue(db, load_entrypoints=False) as q:
        options = ("--lease-seconds", "1", "--concurrency", "4")
        workers = {name: _worker_process(db, log, name, *options) for name in ("a", "b")}
        errors: dict[str, str] = {}
        try:
            _wait_for(
                lambda: {w.worker_id for w in q.workers()} == set(workers),
                30,
                "both workers registered",
            )
            # One commit: whichever worker leases first takes both (FIFO, limit 4).
            blocker, other = q.enqueue_many(
                [
                    {"task_type": "block_loop", "payload": {"seconds": 3}, "max_attempts": 5},
                    {"task_type": "work", "payload": {"n": 1}, "max_attempts": 5},
                ]
            )
            _wait_for(lambda: _starts(log)[blocker.id] == 1, 30, "the blocking handler started")
            fault.inject()
            holder = q.get(blocker.id).locked_by
            assert q.get(other.id).locked_by == holder, "the two tasks were leased apart"
            _wait_for(
                lambda: {q.get(t.id).status for t in (blocker, other)} == {TaskStatus.COMPLETED},
                60,
                "both tasks completed",
                lambda: (
                    f"(attempts started: {dict(_starts(log))}, "
                    f"tasks: {[q.get(t.id) for t in (blocker, other)]})"
                ),
            )
            time.sleep(1.5)  # a second run would start within a lease of the first's end
        finally:
            for name, proc in workers.items():
                errors[name] = _stop(proc)
        done = q.get(blocker.id)
        assert done.status is TaskStatus.COMPLETED and done.result == "blocked"
        assert done.attempts == 1, "the lease expired and the task ran again"
        assert q.get(other.id).status is TaskStatus.COMPLETED
    starts = _starts(log)
    assert starts[blocker.id] == 1 and starts[other.id] == 1, starts
    assert holder in errors
    log_text = errors[holder]
    warnings = re.findall(r"event loop has been blocked for ([\d.]+)s; running: ([^.]*)", log_text)
    assert warnings, f"no blocked-loop warning in the worker's log:\n{log_text}"
    blocked, running = warnings[0]
    assert f"{blocker.id} (block_loop)" in running
    fault.figure("loop blocked (s, first warning)", float(blocked))
    fault.figure("runs of the blocking task", starts[blocker.id])


def test_a_worker_leases_only_task_types_it_has_handlers_for(
    db_path: Path, fault: FaultRecord
) -> None:
    """A worker leaves the tasks of types it has no handler for queued, with no attempt
    counted and no error, for a worker that has the handler (which then runs them); it
    runs its own types meanwhile."""
    fault.describe("Tasks of a type the worker has no handler for")
    with Queue(db_path, load_entrypoints=False, durability="normal") as q:
        q.handlers.register_handler("mine", lambda task: "mine")
        theirs = [q.enqueue("theirs", {"i": i}) for i in range(3)]
        mine = q.enqueue("mine")
        fault.inject(len(theirs))
        stats = WorkerEngine(q, worker_id="w", concurrency=4).run_until_idle()
        assert (stats.completed, stats.failed, stats.processed) == (1, 0, 1)
        assert q.get(mine.id).status is TaskStatus.COMPLETED
        for task in [q.get(t.id) for t in theirs]:
            assert task.status is TaskStatus.QUEUED, task
            assert (task.attempts, task.locked_by, task.error_message) == (0, None, None)
        q.handlers.register_handler("theirs", lambda task: task.payload["i"])
        assert WorkerEngine(q, worker_id="w2").run_until_idle().completed == len(theirs)
        assert [q.get(t.id).result for t in theirs] == [0, 1, 2]


def test_worker_command_without_handlers_refuses_to_start(
    tmp_path: Path, fault: FaultRecord
) -> None:
    """`hookqueue worker` with no `--app` (so no handler at all), or with an `--app` that
    has no handler, refuses to start: exit code 2 and a message naming `--app`, at once,
    for one process and for `--processes 2`; the queued task is left as it was."""
    fault.describe("`hookqueue worker` without --app, or with an app without handlers")
    db, log = tmp_path / "queue.db", tmp_path / "runs.log"
    with Queue(db, load_entrypoints=False) as q:
        task = q.enqueue("work")
    cases = {
        "no --app": ((), None),
        "no --app, 2 processes": (("--processes", "2"), None),
        "--app without handlers": ((), "_hqapp:empty"),
    }
    for label, (options, app) in cases.items():
        started = time.monotonic()
        proc = _worker_process(db, log, "w", *options, app=app)
        fault.inject()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            err = _stop(proc)
            raise AssertionError(f"{label}: the worker started and ran; stderr:\n{err}") from None
        assert proc.returncode == 2, f"{label}: exit {proc.returncode}\n{err}"
        assert "--app" in err, f"{label}: {err}"
        assert len(err.strip().splitlines()) == 1, f"{label}: one clear line, not:\n{err}"
        fault.figure(f"refused in (s), {label}", round(time.monotonic() - started, 2))
    with Queue(db, load_entrypoints=False) as q:
        left = q.get(task.id)
        assert (left.status, left.attempts) == (TaskStatus.QUEUED, 0)
        assert q.workers() == [], "a refused worker registers nothing"


def test_a_worker_runs_again_after_it_returned(db_path: Path, fault: FaultRecord) -> None:
    """The same WorkerEngine works again after a run returned: a second `run_until_idle()`
    works the tasks enqueued in between, and so do `run()` and `run_async()` after a
    `stop()`; its counts add up over the runs."""
    fault.describe("One WorkerEngine run again: run_until_idle twice, run/run_async after stop")
    with Queue(db_path, load_entrypoints=False, durability="normal") as q:
        q.handlers.register_handler("job", lambda task: task.payload)
        worker = WorkerEngine(q, worker_id="w", idle_poll_interval=0.05)

        def completed(task_id: int) -> bool:
            return q.get(task_id).status is TaskStatus.COMPLETED

        for n in range(2):
            task = q.enqueue("job", n)
            fault.inject()
            worker.run_until_idle()
            assert completed(task.id), f"run_until_idle call {n + 1} left its task"

        for n in range(2):
            thread = threading.Thread(target=worker.run)
            thread.start()
            try:
                assert worker.wait_started(10), f"run() call {n + 1} never started"
                task = q.enqueue("job", f"run {n}")
                fault.inject()
                _wait_for(
                    lambda task_id=task.id: completed(task_id),
                    10,
                    f"run() call {n + 1} ran its task",
                )
            finally:
                worker.stop()
                thread.join(20)
            assert not thread.is_alive()

        async def run_async_once(n: int) -> None:
            running = asyncio.create_task(worker.run_async())
            try:
                while not worker.wait_started(0):
                    assert not running.done(), running.result()
                    await asyncio.sleep(0.01)
                task = q.enqueue("job", f"run_async {n}")
                fault.inject()
                deadline = time.monotonic() + 10
                while not completed(task.id):
                    assert time.monotonic() < deadline, f"run_async() call {n + 1} left its task"
                    await asyncio.sleep(0.02)
            finally:
                worker.stop()
                await asyncio.wait_for(running, 20)

        for n in range(2):
            asyncio.run(run_async_once(n))
        assert worker.stats.completed == 6
        assert q.counts()["completed"] == 6


def test_sigterm_with_a_sync_handler_that_never_returns(tmp_path: Path, fault: FaultRecord) -> None:
    """A worker process whose sync handlers never return (one without a timeout, one whose
    timeout already fired) exits on SIGTERM within `shutdown_grace` plus a few seconds; the
    stuck task's lease is released at once — it is `queued` again with its attempt not
    counted, not left `running` until its lease expires — and the timed-out one has failed
    with its timeout."""
    fault.describe("SIGTERM while sync handlers hang (one past its timeout)")
    db, log = tmp_path / "queue.db", tmp_path / "runs.log"
    grace = 1.0
    with Queue(db, load_entrypoints=False) as q:
        hung = q.enqueue("stuck", max_attempts=3)
        timed_out = q.enqueue("stuck", timeout=0.3)
        proc = _worker_process(
            db, log, "w", "--lease-seconds", "60", "--shutdown-grace", str(grace)
        )
        try:
            _wait_for(lambda: _starts(log)[hung.id] == 1, 30, "the stuck handler started")
            _wait_for(
                lambda: q.get(timed_out.id).status is TaskStatus.FAILED, 30, "the timeout fired"
            )
            fault.inject(2)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=grace + 10)
            except subprocess.TimeoutExpired:
                err = _stop(proc, timeout=5)
                raise AssertionError(
                    f"the worker did not exit within {grace + 10}s of SIGTERM:\n{err}"
                ) from None
            exited_in = time.monotonic() - sent
        finally:
            _stop(proc)
        assert proc.returncode == 0, err
        assert exited_in < grace + 5, f"exited {exited_in:.1f}s after SIGTERM"
        released = q.get(hung.id)
        assert released.status is TaskStatus.QUEUED, released
        assert (released.attempts, released.locked_by) == (0, None)
        failed = q.get(timed_out.id)
        assert "timed out" in (failed.error_message or "")
    fault.figure("exited after SIGTERM (s)", round(exited_in, 2))
    fault.figure("shutdown_grace (s)", grace)
