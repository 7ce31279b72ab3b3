"""Shared by the periodic plugin's tests (and their PostgreSQL twins in tests/plugins/postgres):
queues that see the periodic and retry plugins, and the fixtures ``clock`` and ``queue``."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hookqueue import FakeClock, Queue

START = datetime(2030, 1, 1, tzinfo=UTC)
#: Every other first-party plugin is blocked, so these tests see periodic, retry and the core
#: (and the PostgreSQL store's plugin, which only opens ``postgresql://`` locations).
OTHERS = sorted(
    {ep.name for ep in importlib.metadata.entry_points(group="hookqueue")}
    - {"periodic", "retry", "postgres"}
)


def make_queue(path: Path, clock: FakeClock, **kwargs: object) -> Queue:
    """A queue on ``path`` and ``clock`` with the periodic and retry plugins."""
    return Queue(path, clock=clock, durability="normal", block=OTHERS, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    """A clock at 2030-01-01 UTC that moves when told."""
    return FakeClock(START)


@pytest.fixture
def queue(db_path: Path, clock: FakeClock) -> Iterator[Queue]:
    """A queue on ``db_path`` with the periodic plugin on a fake clock."""
    q = make_queue(db_path, clock)
    yield q
    q.close()
