"""Every code snippet of the migration guide, with only its import lines changed.

Each test names the guide section it comes from. Between ``# --- snippet ---`` and
``# --- end ---`` the guide's lines are kept as written except imports (the guide's
``src.core...``/``src.queue...`` modules become ``hookqueue``/``hookqueue.plugins...``). The
guide elides with ``Run(...)`` and ``{...}``; those placeholders are filled with the values of
the guide's own Quick Start. Names the guide uses without defining them (``registry``,
``cleanup_handler``, ...) are defined before the snippet; what the snippet should have done
is checked after it.

The guide's own "Testing Your Migration" tests are at the end, verbatim.
"""

# The guide's lines stay as the guide wrote them: timezone.utc, and its own layout.
# ruff: noqa: UP017
# fmt: off
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hookqueue import Queue, Task, TaskStatus
from hookqueue.plugins.adapter import (
    BackgroundTaskManager,
    QueuedTaskManager,
    Run,
    RunRegistry,
    RunStatus,
    create_queued_task_manager,
)

_QUICK_START = {
    "run_id": "task-123",
    "module_id": "cleanup",
    "module_name": "Cleanup",
    "status": RunStatus.QUEUED,
    "parameters": {"max_age_hours": 24},
}


def _quick_start_run() -> Run:
    """The guide's ``Run(...)`` placeholder: the Quick Start's run."""
    return Run(created_at=datetime.now(timezone.utc), **_QUICK_START)


async def cleanup_task() -> str:
    """The guide's cleanup coroutine, without its five-second sleep."""
    await asyncio.sleep(0)
    return "done"


async def cleanup_handler(task: Task) -> dict[str, Any]:
    """The guide's Step 4 handler."""
    payload = task.get_payload_dict()
    max_age = payload.get("max_age_hours", 24)
    return {"status": "completed", "max_age": max_age}


async def backup_handler(task: Task) -> str:
    return "backed up"


async def notification_handler(task: Task) -> str:
    return "notified"


def _default_db_path() -> Path:
    return Path(os.environ["XDG_DATA_HOME"]) / "hookqueue" / "queue.db"


# -- Quick Start -------------------------------------------------------------------------------------


async def test_quick_start_before_background_task_manager() -> None:
    # --- snippet ---
    from hookqueue.plugins.adapter import BackgroundTaskManager, RunRegistry

    # Initialize
    registry = RunRegistry()
    manager = BackgroundTaskManager(registry)

    # Start a task
    run = Run(
        run_id="task-123",
        module_id="cleanup",
        module_name="Cleanup",
        status=RunStatus.QUEUED,
        created_at=datetime.now(timezone.utc),
        parameters={"max_age_hours": 24}
    )

    async def cleanup_task():
        # Do cleanup work
        await asyncio.sleep(5)
        return "done"

    task_id = manager.start_task(run, cleanup_task())
    # --- end ---
    assert task_id == "task-123" and manager.is_task_active(task_id)
    assert registry.get_run(task_id).status is RunStatus.RUNNING  # type: ignore[union-attr]
    assert await manager.cancel_task(task_id) is True
    assert run.status is RunStatus.CANCELLED


async def test_quick_start_after_option_1_drop_in_replacement() -> None:
    # --- snippet ---
    from hookqueue import QueueDatabase
    from hookqueue.plugins.adapter import QueuedTaskManager, RunRegistry

    # Initialize
    queue_db = QueueDatabase()
    queue_db.initialize_schema()
    registry = RunRegistry()
    manager = QueuedTaskManager(queue_db, registry)

    # Start a task (same API as before!)
    run = Run(
        run_id="task-123",
        module_id="cleanup",
        module_name="Cleanup",
        status=RunStatus.QUEUED,
        created_at=datetime.now(timezone.utc),
        parameters={"max_age_hours": 24}
    )

    async def cleanup_task():
        # Do cleanup work
        await asyncio.sleep(5)
        return "done"

    task_id = manager.start_task(run, cleanup_task())
    # Task is now in persistent queue!
    # --- end ---
    assert task_id == "task-123"
    assert queue_db.path == _default_db_path()
    status = await manager.get_task_status(task_id)  # "in persistent queue!"
    assert status["status"] == "running" and status["payload"] == {"max_age_hours": 24}
    assert await manager.cancel_task(task_id) is True
    assert (await manager.get_task_status(task_id))["status"] == "cancelled"
    await manager.aclose()


async def test_quick_start_after_option_2_integration_helpers() -> None:
    # --- snippet ---
    from hookqueue.plugins.adapter import create_queued_task_manager

    # Initialize with helper - even simpler!
    manager = create_queued_task_manager()

    # Same API as before
    run = _quick_start_run()  # the guide: run = Run(...)
    task_id = manager.start_task(run, cleanup_task())
    # --- end ---
    assert await manager.wait_all(timeout=30)
    assert run.status is RunStatus.COMPLETED and run.exit_code == 0
    status = await manager.get_task_status(task_id)
    assert status["status"] == "completed" and status["result"] == "done"
    await manager.aclose()


# -- Step-by-Step Migration --------------------------------------------------------------------------


def test_step_1_update_imports() -> None:
    # --- snippet (Old) ---
    from hookqueue import QueueDatabase

    # --- snippet (New) ---
    # --- snippet (Or use the helper) ---
    from hookqueue.plugins.adapter import (
        BackgroundTaskManager,
        QueuedTaskManager,
        create_queued_task_manager,
    )

    # --- end ---
    assert callable(BackgroundTaskManager) and callable(QueuedTaskManager)
    assert callable(create_queued_task_manager) and callable(QueueDatabase)


async def test_step_2_update_initialization() -> None:
    from hookqueue import QueueDatabase

    registry = RunRegistry()
    # --- snippet (Old) ---
    manager = BackgroundTaskManager(registry)
    # --- end ---
    assert isinstance(manager, BackgroundTaskManager)
    # --- snippet (New) ---
    # Option A: Manual initialization
    queue_db = QueueDatabase()
    queue_db.initialize_schema()
    manager = QueuedTaskManager(queue_db, registry)

    # Option B: Using helper
    manager = create_queued_task_manager()
    # --- end ---
    assert isinstance(manager, QueuedTaskManager)
    assert manager.queue.db.path == queue_db.path  # both use the default database


@pytest.mark.parametrize(
    ("name", "is_async"),
    [
        ("start_task", False),
        ("cancel_task", True),
        ("wait_all", True),
        ("get_active_task_count", False),
        ("get_active_task_ids", False),
        ("is_task_active", False),
    ],
)
def test_step_3_the_api_is_the_same_on_both_managers(name: str, is_async: bool) -> None:
    import inspect

    for cls in (BackgroundTaskManager, QueuedTaskManager):
        method = getattr(cls, name)
        assert inspect.iscoroutinefunction(method) is is_async, f"{cls.__name__}.{name}"
    old = inspect.signature(getattr(BackgroundTaskManager, name)).parameters
    new = inspect.signature(getattr(QueuedTaskManager, name)).parameters
    assert list(old) == list(new)


async def test_step_4_register_task_handlers() -> None:
    manager = create_queued_task_manager()

    # --- snippet ---
    # Register handlers for task types
    async def cleanup_handler(task):
        # Process cleanup task
        payload = task.get_payload_dict()
        max_age = payload.get("max_age_hours", 24)  # noqa: F841 - as in the guide
        # Do cleanup...
        return {"status": "completed"}

    await manager.register_task(
        "cleanup",
        cleanup_handler,
        "Cleans up old data"
    )
    # --- end ---
    from hookqueue import WorkerEngine

    spec = manager.handler_registry.get_spec("cleanup")
    assert spec.handler is cleanup_handler and spec.description == "Cleans up old data"
    task_id = await manager.schedule_task("cleanup", {"max_age_hours": 6})
    await WorkerEngine(manager.queue, worker_id="w").run_until_idle_async()
    assert (await manager.get_task_status(task_id))["result"] == {"status": "completed"}
    await manager.aclose()


async def test_step_5_use_enhanced_features(capsys: pytest.CaptureFixture[str]) -> None:
    manager = create_queued_task_manager()
    # --- snippet ---
    # Schedule task directly without Run object
    task_id = await manager.schedule_task(
        task_type="cleanup",
        payload={"max_age_hours": 24},
        priority=50,  # Lower = higher priority
        run_after=datetime.now(timezone.utc) + timedelta(hours=1)  # Schedule for later
    )

    # Get detailed task status
    status = await manager.get_task_status(task_id)
    print(f"Status: {status['status']}")
    print(f"Attempts: {status['attempts']}")
    print(f"Error: {status.get('error_message')}")
    # --- end ---
    assert capsys.readouterr().out == "Status: queued\nAttempts: 0\nError: None\n"
    assert status["priority"] == 50
    await manager.aclose()


# -- Common Patterns ---------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", [None, "true"])
async def test_pattern_1_configuration_toggle(
    monkeypatch: pytest.MonkeyPatch, setting: str | None
) -> None:
    if setting is not None:
        monkeypatch.setenv("USE_QUEUE_SYSTEM", setting)
    registry = RunRegistry()
    # --- snippet ---
    import os

    from hookqueue.plugins.adapter import BackgroundTaskManager, create_queued_task_manager

    USE_QUEUE = os.getenv("USE_QUEUE_SYSTEM", "false") == "true"

    if USE_QUEUE:
        manager = create_queued_task_manager()
    else:
        manager = BackgroundTaskManager(registry)

    # Rest of code uses manager the same way
    # --- end ---
    assert isinstance(manager, QueuedTaskManager if setting == "true" else BackgroundTaskManager)
    run = _quick_start_run()
    manager.start_task(run, cleanup_task())
    assert await manager.wait_all(timeout=30)
    assert run.status is RunStatus.COMPLETED
    if isinstance(manager, QueuedTaskManager):
        await manager.aclose()


async def test_pattern_2_gradual_handler_registration() -> None:
    # --- snippet ---
    # In app initialization
    manager = create_queued_task_manager()

    # Register all handlers
    await manager.register_task("cleanup", cleanup_handler)
    await manager.register_task("backup", backup_handler)
    await manager.register_task("notification", notification_handler)

    # Now tasks can be processed by queue workers
    # --- end ---
    from hookqueue import WorkerEngine

    ids = [await manager.schedule_task(t, {}) for t in ("cleanup", "backup", "notification")]
    await WorkerEngine(manager.queue, worker_id="w").run_until_idle_async()
    assert await manager.wait_all(timeout=30)
    results = [(await manager.get_task_status(i))["result"] for i in ids]
    assert results == [{"status": "completed", "max_age": 24}, "backed up", "notified"]
    await manager.aclose()


async def test_pattern_3_existing_code_with_minimal_changes() -> None:
    def create_cleanup_run() -> Run:
        return _quick_start_run()

    # --- snippet ---
    # Old function that accepts BackgroundTaskManager
    def schedule_cleanup(manager: BackgroundTaskManager):
        run = create_cleanup_run()
        manager.start_task(run, cleanup_task())

    # Works with QueuedTaskManager too! (same interface)
    queue_manager = create_queued_task_manager()
    schedule_cleanup(queue_manager)
    # --- end ---
    assert queue_manager.get_active_task_ids() == ["task-123"]
    assert await queue_manager.wait_all(timeout=30)
    assert queue_manager.registry.get_run("task-123").status is RunStatus.COMPLETED  # type: ignore[union-attr]
    await queue_manager.aclose()


# -- Validation --------------------------------------------------------------------------------------


def test_validation(capsys: pytest.CaptureFixture[str]) -> None:
    # --- snippet ---
    from hookqueue.plugins.adapter import validate_queue_integration

    result = validate_queue_integration()
    if result["success"]:
        print("✓ Queue system is ready!")
    else:
        print(f"✗ Errors: {result['errors']}")
    # --- end ---
    assert capsys.readouterr().out == "✓ Queue system is ready!\n"


# -- Rollback Plan -----------------------------------------------------------------------------------


async def test_rollback_option_1_configuration_toggle(monkeypatch: pytest.MonkeyPatch) -> None:
    from hookqueue.plugins.adapter import create_task_manager

    # --- snippet (shell) ---
    # export USE_QUEUE_SYSTEM=false
    monkeypatch.setenv("USE_QUEUE_SYSTEM", "false")
    # App uses old BackgroundTaskManager
    # --- end ---
    assert isinstance(create_task_manager(), BackgroundTaskManager)


def test_rollback_option_2_code_revert() -> None:
    # --- snippet ---
    # Change this
    # Back to this
    from hookqueue.plugins.adapter import BackgroundTaskManager, QueuedTaskManager

    # --- end ---
    assert QueuedTaskManager is not BackgroundTaskManager


async def test_rollback_option_3_gradual_rollback() -> None:
    from hookqueue import QueueDatabase

    registry = RunRegistry()
    queue_db = QueueDatabase()
    # --- snippet ---
    old_manager = BackgroundTaskManager(registry)
    new_manager = QueuedTaskManager(queue_db, registry)

    # Use old_manager for critical tasks
    # Use new_manager for new features
    # --- end ---
    critical = Run(created_at=datetime.now(timezone.utc), **{**_QUICK_START, "run_id": "critical"})
    feature = Run(created_at=datetime.now(timezone.utc), **{**_QUICK_START, "run_id": "feature"})
    old_manager.start_task(critical, cleanup_task())
    new_manager.start_task(feature, cleanup_task())
    assert await old_manager.wait_all(timeout=30) and await new_manager.wait_all(timeout=30)
    assert {r.run_id: r.status for r in registry.runs.values()} == {
        "critical": RunStatus.COMPLETED,
        "feature": RunStatus.COMPLETED,
    }
    # Only the new manager's run is in the queue.
    assert (await new_manager.get_task_status("critical"))["status"] == "not_found"
    assert (await new_manager.get_task_status("feature"))["status"] == "completed"
    await new_manager.aclose()


# -- Troubleshooting ---------------------------------------------------------------------------------


def test_troubleshooting_database_locked() -> None:
    # --- snippet ---
    from hookqueue.plugins.adapter import get_or_create_queue_database

    # Use singleton pattern
    db = get_or_create_queue_database()
    # --- end ---
    assert get_or_create_queue_database() is db


def test_troubleshooting_tasks_not_executing(tmp_path: Path) -> None:
    """The snippet runs ``worker.run()``, which blocks until SIGTERM: it runs verbatim in a
    process of its own and stops cleanly on SIGTERM. It registers no handler (the snippet
    only says to), so the worker leases nothing, says why in its log, and the queued task is
    left for a worker that has a handler — not failed for good."""
    snippet = textwrap.dedent(
        """
        from hookqueue import WorkerEngine, QueueDatabase

        db = QueueDatabase()
        db.initialize_schema()

        worker = WorkerEngine(db, worker_id="worker-1")
        # Register handlers with worker's registry
        worker.run()
        """
    )
    db_path = tmp_path / "queue.db"
    with Queue(db_path, load_entrypoints=False) as q:
        task = q.enqueue("cleanup", {"max_age_hours": 24})
    env = {**os.environ, "HOOKQUEUE_DB": str(db_path)}
    worker = subprocess.Popen([sys.executable, "-c", snippet], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        with Queue(db_path, load_entrypoints=False) as q:
            while not q.workers():  # registered: it is working (and sees the task)
                assert time.monotonic() < deadline, "the worker did not start"
                time.sleep(0.02)
            time.sleep(0.5)  # long enough to have leased the task if it would
            waiting = q.get(task.id)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err.decode()
    assert waiting.status is TaskStatus.QUEUED and waiting.attempts == 0
    assert "worker-1 has no handlers" in err.decode()
    with Queue(db_path, load_entrypoints=False) as q:
        [record] = q.workers()
        assert q.get(task.id).status is TaskStatus.QUEUED
    assert record.worker_id == "worker-1" and record.stopped_at is not None


async def test_troubleshooting_handler_not_found() -> None:
    # --- snippet ---
    manager = create_queued_task_manager()

    # Register handlers first
    await manager.register_task("cleanup", cleanup_handler)
    await manager.register_task("backup", backup_handler)

    # Then schedule tasks
    await manager.schedule_task("cleanup", {"max_age_hours": 24})  # the guide: {...}
    # --- end ---
    from hookqueue import WorkerEngine

    stats = await WorkerEngine(manager.queue, worker_id="w").run_until_idle_async()
    assert stats.completed == 1 and stats.failed == 0
    await manager.aclose()


# -- Best Practices ----------------------------------------------------------------------------------


async def test_best_practices_1_to_3() -> None:
    date = datetime.now(timezone.utc).date().isoformat()
    # --- snippet 1 ---
    from hookqueue.plugins.adapter import create_queued_task_manager

    manager = create_queued_task_manager()
    # --- snippet 2 ---
    await manager.register_task("cleanup", cleanup_handler)
    # --- snippet 3 ---
    await manager.schedule_task(
        "cleanup",
        {"max_age_hours": 24},  # the guide: {...}
        idempotency_key=f"cleanup-{date}"
    )
    # --- end ---
    again = await manager.schedule_task(
        "cleanup", {"max_age_hours": 1}, idempotency_key=f"cleanup-{date}"
    )
    assert manager.queue.counts()["queued"] == 1  # the key kept it to one task
    assert (await manager.get_task_status(again))["payload"] == {"max_age_hours": 24}
    await manager.aclose()


def test_best_practices_4_monitor_queue_health() -> None:
    try:
        from hookqueue.plugins.metrics import QueueMetrics
    except ImportError as exc:  # pragma: no cover - only before the metrics plugin exists
        pytest.skip(f"hookqueue.plugins.metrics is not importable yet: {exc}")
    from hookqueue.plugins.adapter import get_or_create_queue_database

    queue_db = get_or_create_queue_database()
    Queue.for_database(queue_db).enqueue("cleanup", {})
    # --- snippet ---
    metrics = QueueMetrics(queue_db)
    health = metrics.get_queue_health_summary()
    # --- end ---
    assert health["queue_depth"]["queued"] == 1
    for key in ("oldest_queued_task_age_seconds", "active_workers", "timestamp"):
        assert key in health, key


# -- Testing Your Migration: the guide's own tests, verbatim ------------------------------------------


@pytest.mark.asyncio
async def test_basic_migration():
    manager = create_queued_task_manager()

    # Schedule a task
    task_id = await manager.schedule_task(
        "test_task",
        {"data": "value"}
    )

    # Get status
    status = await manager.get_task_status(task_id)
    assert status["status"] in ["queued", "completed"]


@pytest.mark.asyncio
async def test_backward_compatibility():
    manager = create_queued_task_manager()
    registry = manager.registry

    # Use old API
    run = Run(
        run_id="test-123",
        module_id="test",
        module_name="Test",
        status=RunStatus.QUEUED,
        created_at=datetime.now(timezone.utc),
        parameters={}
    )

    async def test_task():
        return "done"

    registry.add_run(run)
    task_id = manager.start_task(run, test_task())

    assert task_id == run.run_id
    assert manager.is_task_active(task_id)


@pytest.mark.asyncio
async def test_handler_registration():
    manager = create_queued_task_manager()

    async def my_handler(task):
        return "processed"

    await manager.register_task("my_task", my_handler)

    # Verify handler registered
    handler = manager.handler_registry.get_handler("my_task")
    assert handler is not None
