"""Fixtures for the adapter's tests: a queue on a temporary file and a fake clock, managers
that are closed after each test, and a factory of runs."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from _services.adapter import fresh_database_cache

from hookqueue import FakeClock, Queue
from hookqueue.plugins.adapter import QueuedTaskManager, Run, RunRegistry, RunStatus

_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def _fresh_database_cache() -> Iterator[None]:
    """``get_or_create_queue_database`` caches per process; each test starts with none."""
    with fresh_database_cache():
        yield


@pytest.fixture
def aqueue(db_path: Path, clock: FakeClock) -> Iterator[Queue]:
    """A queue with every installed plugin (the adapter's included), on a fake clock."""
    q = Queue(db_path, clock=clock, durability="normal")
    yield q
    q.close()


@pytest.fixture
def make_run() -> Callable[..., Run]:
    """Build a QUEUED run with a unique id (override any field by keyword)."""

    def make(**overrides: Any) -> Run:
        fields: dict[str, Any] = {
            "run_id": f"run-{next(_ids)}",
            "module_id": "cleanup",
            "module_name": "Cleanup",
            "status": RunStatus.QUEUED,
            "created_at": datetime.now(UTC),
            "parameters": {"max_age_hours": 24},
        }
        fields.update(overrides)
        return Run(**fields)

    return make


@pytest.fixture
async def manager_factory(aqueue: Queue) -> AsyncIterator[Callable[..., QueuedTaskManager]]:
    """Make managers on ``aqueue`` (short heartbeats); each is shut down after the test."""
    made: list[QueuedTaskManager] = []

    def make(registry: RunRegistry | None = None, **options: Any) -> QueuedTaskManager:
        options.setdefault("lease_seconds", 2.0)
        options.setdefault("heartbeat_interval", 0.05)
        options.setdefault("watch_interval", 0.005)
        m = QueuedTaskManager(options.pop("queue", aqueue), registry, **options)
        made.append(m)
        return m

    yield make
    for m in made:
        await m.aclose(grace=0)


Waiter = Callable[..., Awaitable[None]]


@pytest.fixture
def eventually() -> Waiter:
    """``await eventually(predicate, timeout=5)``: wait for something a background thread or
    another process does; fails with the predicate's name when it does not happen."""

    async def wait(predicate: Callable[[], object], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{getattr(predicate, '__name__', predicate)} did not happen in {timeout}s"
                )
            await asyncio.sleep(0.005)

    return wait


@pytest.fixture
async def manager(manager_factory: Callable[..., QueuedTaskManager]) -> QueuedTaskManager:
    """A manager on ``aqueue`` with an in-memory registry."""
    return manager_factory(RunRegistry())
