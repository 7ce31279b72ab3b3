"""Code written against the migration guide moves to PostgreSQL by setting ``HOOKQUEUE_DB``:
the adapter's integration helpers and a ``WorkerEngine()`` without arguments open the store
the URL names (through the ``hookqueue_store`` hook), on the test server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from _services.adapter import fresh_database_cache

from hookqueue import Queue, Task, TaskStatus, WorkerEngine
from hookqueue.plugins.adapter import (
    Run,
    RunStatus,
    create_queued_task_manager,
    get_or_create_queue_database,
    validate_queue_integration,
)
from hookqueue.plugins.postgres import PostgresStore


@pytest.fixture(autouse=True)
def _database_cache() -> Iterator[None]:
    """``get_or_create_queue_database`` caches per process; each test starts with none."""
    with fresh_database_cache():
        yield


@pytest.fixture
def on_postgres(postgres_tcp_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HOOKQUEUE_DB", postgres_tcp_url)
    return postgres_tcp_url


def test_the_process_store_for_a_url_is_the_postgresql_store(on_postgres: str) -> None:
    db = get_or_create_queue_database()
    assert isinstance(db, PostgresStore)
    assert get_or_create_queue_database() is db, "one store per location per process"
    assert get_or_create_queue_database(on_postgres) is db
    db.close()
    again = get_or_create_queue_database()
    assert again is not db and not again.closed


def test_validate_reports_a_ready_postgresql_queue_without_its_password(on_postgres: str) -> None:
    password = re.search(r"://[^:/@]+:([^@]+)@", on_postgres)
    assert password, "the fixture's URL carries a password"
    result = validate_queue_integration()
    assert result["success"] is True, result["errors"]
    assert result["schema"]["version"] == result["schema"]["expected"] is not None
    assert result["database"]["path"].startswith("postgresql://")
    assert password.group(1) not in str(result)
    assert result["database"]["exists"] is None and "size_bytes" not in result["database"]


async def cleanup_task() -> str:
    await asyncio.sleep(0)
    return "done"


async def test_the_guides_quick_start_runs_on_postgresql(on_postgres: str) -> None:
    """The migration guide's "Option 2" snippet, unchanged, with HOOKQUEUE_DB set to a URL."""
    manager = create_queued_task_manager()
    run = Run(
        run_id="task-123",
        module_id="cleanup",
        module_name="Cleanup",
        status=RunStatus.QUEUED,
        created_at=datetime.now(UTC),
        parameters={"max_age_hours": 24},
    )
    task_id = manager.start_task(run, cleanup_task())
    assert await manager.wait_all(timeout=30)
    assert run.status is RunStatus.COMPLETED and run.exit_code == 0
    status = await manager.get_task_status(task_id)
    assert status["status"] == "completed" and status["result"] == "done"
    assert isinstance(manager.queue.db, PostgresStore)
    await manager.aclose()
    with Queue(on_postgres) as q:  # another connection sees it on the server
        (task,) = q.list()
        assert task.status is TaskStatus.COMPLETED


def test_a_worker_without_arguments_works_the_queue_hookqueue_db_names(on_postgres: str) -> None:
    with Queue(on_postgres) as producer:
        ids = [producer.enqueue("double", {"n": n}).id for n in range(5)]
    worker = WorkerEngine()
    assert isinstance(worker.queue.db, PostgresStore)

    @worker.queue.handlers.handler("double")
    async def double(task: Task) -> int:
        return int(task.payload["n"]) * 2

    worker.run_until_idle()
    with Queue(on_postgres) as q:
        assert [q.get(i).result for i in ids] == [0, 2, 4, 6, 8]
    worker.queue.close()
