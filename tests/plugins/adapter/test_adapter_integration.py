"""The integration helpers, the USE_QUEUE_SYSTEM toggle, and the adapter's retry hook."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hookqueue import (
    Failure,
    FakeClock,
    HandlerSpec,
    Queue,
    QueueDatabase,
    Task,
    TaskStatus,
    ValidationError,
    WorkerEngine,
)
from hookqueue.plugins.adapter import (
    ADAPTER_HEADER,
    BackgroundTaskManager,
    QueuedTaskManager,
    RunRegistry,
    create_queued_task_manager,
    create_task_manager,
    get_or_create_queue_database,
    rerun_now,
    validate_queue_integration,
)


def test_one_database_per_path_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = get_or_create_queue_database(tmp_path / "q.db")
    assert get_or_create_queue_database(str(tmp_path / "sub" / ".." / "q.db")) is a
    assert get_or_create_queue_database(tmp_path / "other.db") is not a
    monkeypatch.setenv("HOOKQUEUE_DB", str(tmp_path / "q.db"))
    assert get_or_create_queue_database() is a  # the default path, spelled by the environment
    a.close()
    b = get_or_create_queue_database(tmp_path / "q.db")
    assert b is not a and not b.closed


async def test_create_queued_task_manager_defaults(tmp_path: Path) -> None:
    manager = create_queued_task_manager()
    assert isinstance(manager, QueuedTaskManager) and isinstance(manager.registry, RunRegistry)
    # The default database lives in the (test-isolated) user data directory.
    assert manager.queue.db is get_or_create_queue_database()
    assert "xdg-data" in str(manager.queue.db.path)
    registry = RunRegistry()
    own = create_queued_task_manager(QueueDatabase(tmp_path / "x.db"), registry, lease_seconds=1.0)
    assert own.registry is registry and own.lease_seconds == 1.0
    await manager.aclose()
    await own.aclose()


@pytest.mark.parametrize(
    ("value", "queued"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("", False),
        (None, False),
    ],
)
async def test_the_toggle_chooses_the_manager(
    monkeypatch: pytest.MonkeyPatch, value: str | None, queued: bool
) -> None:
    if value is not None:
        monkeypatch.setenv("USE_QUEUE_SYSTEM", value)
    registry = RunRegistry()
    manager = create_task_manager(registry)
    assert isinstance(manager, QueuedTaskManager if queued else BackgroundTaskManager)
    assert manager.registry is registry
    if isinstance(manager, QueuedTaskManager):
        await manager.aclose()


def test_a_misspelt_toggle_is_an_error_not_a_silent_rollback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("USE_QUEUE_SYSTEM", "ture")
    with pytest.raises(ValidationError, match="USE_QUEUE_SYSTEM='ture': is neither true nor false"):
        create_task_manager()


def test_validate_reports_a_ready_queue(tmp_path: Path) -> None:
    result = validate_queue_integration(tmp_path / "q.db")
    assert result["success"] is True and result["errors"] == []
    assert result["schema"]["version"] == result["schema"]["expected"]
    assert result["database"]["path"] == str((tmp_path / "q.db").resolve())
    assert result["database"]["exists"] is False  # it did not exist before the check
    assert result["database"]["integrity"] == []
    assert result["database"]["counts"]["queued"] == 0
    assert any("no worker has a heartbeat" in w for w in result["warnings"])
    assert validate_queue_integration(tmp_path / "q.db")["database"]["exists"] is True


def test_validate_reports_a_foreign_file_without_raising_or_touching_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a database" * 100)
    result = validate_queue_integration(path)
    assert result["success"] is False
    assert len(result["errors"]) == 1 and "not a readable SQLite database" in result["errors"][0]
    assert path.read_bytes() == b"this is not a database" * 100


def test_validate_warns_when_the_adapter_plugin_is_blocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOKQUEUE_DISABLE_PLUGINS", "adapter")
    result = validate_queue_integration(tmp_path / "q.db")
    assert result["success"] is True
    assert any("adapter plugin is not active" in w for w in result["warnings"])


# -- the plugin --------------------------------------------------------------------------------------


def test_the_adapter_is_an_active_plugin_of_every_queue(queue: Queue) -> None:
    names = [name for name, _ in queue.pm.list_name_plugin()]
    assert "adapter" in names


def _task(queue: Queue, worker_id: str, header_worker: str | None) -> Task:
    headers = (
        {}
        if header_worker is None
        else {ADAPTER_HEADER: {"run_id": "r", "worker_id": header_worker}}
    )
    return queue.enqueue_claimed(
        worker_id, lease_seconds=5, task_type="cleanup", payload={}, max_attempts=3, headers=headers
    )


def test_only_runs_whose_own_process_lost_the_lease_are_rerun_now(queue: Queue) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    crash = Failure(kind="crash", message="lease expired")
    mine = _task(queue, "adapter-1", "adapter-1")
    decision = rerun_now(mine, crash, now)
    assert decision is not None and decision.retry and decision.run_after == now
    # A plain task, a run's task now held by a worker, or another kind of failure: no opinion.
    assert rerun_now(_task(queue, "w", None), crash, now) is None
    assert rerun_now(_task(queue, "worker-2", "adapter-1"), crash, now) is None
    assert rerun_now(mine, Failure(kind="error", message="boom"), now) is None


def test_a_crashed_run_is_rerun_now_whatever_retry_policy_is_installed(
    db_path: Path, clock: FakeClock
) -> None:
    from hookqueue.plugins.retry import FixedDelay

    # A global policy registered in code answers first (tryfirst): a one-hour wait.
    q = Queue(db_path, plugins=[FixedDelay(delay=3600)], clock=clock)
    q.handlers.add(HandlerSpec(task_type="cleanup", handler=lambda task: "again"))
    run_task = _task(q, "adapter-dead", "adapter-dead")
    plain = _task(q, "worker-dead", None)
    clock.advance(6)  # both leases lapse
    WorkerEngine(q, worker_id="w").run_until_idle()
    rerun, waiting = q.get(run_task.id), q.get(plain.id)
    assert rerun.status is TaskStatus.COMPLETED and rerun.attempts == 2
    assert waiting.status is TaskStatus.QUEUED  # the policy's hour applies to the plain task
    assert waiting.run_after == clock.now() + timedelta(hours=1)
    q.close()


def test_with_the_adapter_blocked_the_policy_decides(db_path: Path, clock: FakeClock) -> None:
    from hookqueue.plugins.retry import FixedDelay

    q = Queue(db_path, plugins=[FixedDelay(delay=3600)], block=["adapter"], clock=clock)
    run_task = _task(q, "adapter-dead", "adapter-dead")
    clock.advance(6)
    q.runtime.lease("w", limit=0)  # the sweep alone
    assert q.get(run_task.id).run_after == clock.now() + timedelta(hours=1)
    q.close()
