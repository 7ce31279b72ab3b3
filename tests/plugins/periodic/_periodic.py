"""Shared by the periodic plugin's tests: queues that see the periodic and retry plugins."""

from __future__ import annotations

import importlib.metadata
from datetime import UTC, datetime
from pathlib import Path

from hookqueue import FakeClock, Queue

START = datetime(2030, 1, 1, tzinfo=UTC)
#: Every other first-party plugin is blocked, so these tests see periodic, retry and the core.
OTHERS = sorted(
    {ep.name for ep in importlib.metadata.entry_points(group="hookqueue")} - {"periodic", "retry"}
)


def make_queue(path: Path, clock: FakeClock, **kwargs: object) -> Queue:
    """A queue on ``path`` and ``clock`` with the periodic and retry plugins."""
    return Queue(path, clock=clock, durability="normal", block=OTHERS, **kwargs)  # type: ignore[arg-type]
