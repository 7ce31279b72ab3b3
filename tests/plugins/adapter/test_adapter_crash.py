"""Crash recovery with real processes: a process running a run through QueuedTaskManager is
SIGKILLed mid-coroutine; a WorkerEngine in another process reruns the run from its
parameters (a worker without the handler takes the dead lease over and leaves the task
queued for one that has it); and a manager in a third process, reading the dead process's
run history, sees the outcome flow back into its RunRegistry."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hookqueue import Queue, TaskStatus
from hookqueue.plugins.adapter import QueuedTaskManager, RunRegistry, RunStatus

pytestmark = pytest.mark.slow

#: Starts one run whose coroutine never ends, prints RUNNING once it is recorded, then waits.
APP = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import datetime, timezone
    from hookqueue import QueueDatabase
    from hookqueue.plugins.adapter import QueuedTaskManager, Run, RunRegistry, RunStatus

    async def main():
        db_path, history, run_id = sys.argv[1:4]
        manager = QueuedTaskManager(
            QueueDatabase(db_path), RunRegistry(history), lease_seconds=0.5
        )
        run = Run(run_id=run_id, module_id="cleanup", module_name="Cleanup",
                  status=RunStatus.QUEUED, created_at=datetime.now(timezone.utc),
                  parameters={"max_age_hours": 24})
        started = asyncio.Event()

        async def cleanup_task():
            started.set()
            await asyncio.sleep(3600)

        manager.start_task(run, cleanup_task())
        await started.wait()
        await manager.flush()  # recorded in the queue, history written
        print("RUNNING", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)

#: A worker process: with "handler", it can run "cleanup" tasks; works until SIGTERM.
WORKER = textwrap.dedent(
    """
    import sys
    from hookqueue import QueueDatabase, WorkerEngine

    worker = WorkerEngine(QueueDatabase(sys.argv[1]), worker_id="recovery", lease_seconds=2.0)
    if sys.argv[2] == "handler":
        def cleanup(task):
            return {"rerun_from": task.get_payload_dict()}
        worker.handler_registry.register_handler("cleanup", cleanup)
    worker.run()
    """
)


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


@pytest.fixture
async def killed_app(tmp_path: Path) -> AsyncIterator[tuple[Path, Path]]:
    """Run APP until its run is recorded and running, then SIGKILL it."""
    db_path, history = tmp_path / "queue.db", tmp_path / "runs.json"
    app = await _spawn(APP, str(db_path), str(history), "run-1")
    assert app.stdout is not None
    line = await asyncio.wait_for(app.stdout.readline(), 60)
    if line.strip() != b"RUNNING":
        _, err = await app.communicate()
        pytest.fail(f"the app did not start its run: {line!r} {err.decode()}")
    with Queue(db_path, load_entrypoints=False) as q:
        task = q.find("run-1")
        assert task is not None and task.status is TaskStatus.RUNNING
        assert task.locked_by is not None and task.locked_by.startswith("adapter-")
    app.send_signal(signal.SIGKILL)
    assert await app.wait() == -signal.SIGKILL
    yield db_path, history


async def _recover(db_path: Path, history: Path, worker_mode: str) -> tuple[RunRegistry, int]:
    registry = RunRegistry(history)  # the dead process's history: run-1 is RUNNING there
    assert registry.get_run("run-1").status is RunStatus.RUNNING  # type: ignore[union-attr]
    manager = QueuedTaskManager(Queue(db_path), registry)
    worker = await _spawn(WORKER, str(db_path), worker_mode)
    try:
        assert await manager.wait_all(timeout=60) is True, "the run was not recovered"
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = await worker.communicate()
        await manager.aclose()
        manager.queue.close()
    assert worker.returncode == 0, err.decode()
    return registry, worker.returncode


async def test_a_killed_run_is_rerun_by_a_worker_and_the_result_flows_back(
    killed_app: tuple[Path, Path],
) -> None:
    db_path, history = killed_app
    registry, _ = await _recover(db_path, history, "handler")
    with Queue(db_path, load_entrypoints=False) as q:
        task = q.find("run-1")
    assert task is not None and task.status is TaskStatus.COMPLETED
    assert task.result == {"rerun_from": {"max_age_hours": 24}}
    assert task.attempts == 2 and task.locked_by is None
    run = registry.get_run("run-1")
    assert run is not None and run.status is RunStatus.COMPLETED and run.exit_code == 0
    assert run.completed_at == task.finished_at and run.started_at == task.started_at


async def test_a_killed_run_waits_for_a_worker_that_has_its_handler(
    killed_app: tuple[Path, Path],
) -> None:
    """A worker without a handler for the run's type still takes the dead process's lease
    over (the task is queued again, saying why), but does not fail it: the task waits, and a
    worker that has the handler runs it later."""
    db_path, history = killed_app
    worker = await _spawn(WORKER, str(db_path), "no-handler")
    try:
        with Queue(db_path, load_entrypoints=False) as q:
            deadline = asyncio.get_running_loop().time() + 60
            while (task := q.find("run-1")) is None or task.status is not TaskStatus.QUEUED:
                assert asyncio.get_running_loop().time() < deadline, "the lease was not taken over"
                await asyncio.sleep(0.05)
            assert "stopped renewing its lease" in (task.error_message or "")
            await asyncio.sleep(1.0)  # the worker has no handler: it leaves the task alone
            assert q.find("run-1").status is TaskStatus.QUEUED  # type: ignore[union-attr]
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = await worker.communicate()
    assert worker.returncode == 0, err.decode()
    assert b"has no handlers" in err
    registry, _ = await _recover(db_path, history, "handler")
    with Queue(db_path, load_entrypoints=False) as q:
        task = q.find("run-1")
    assert task is not None and task.status is TaskStatus.COMPLETED
    run = registry.get_run("run-1")
    assert run is not None and run.status is RunStatus.COMPLETED
