"""Fixtures of the periodic plugin's tests: a fake clock, a queue with the plugin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _periodic import START, make_queue

from hookqueue import FakeClock, Queue


@pytest.fixture
def clock() -> FakeClock:
    """A clock at 2030-01-01 UTC that moves when told."""
    return FakeClock(START)


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock) -> Iterator[Queue]:
    """A queue with the periodic plugin on a fake clock."""
    q = make_queue(tmp_path / "q.db", clock)
    yield q
    q.close()
