"""Shared by the retry and priority plugin tests: queues that see only those two plugins."""

from __future__ import annotations

import importlib.metadata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hookqueue import FakeClock, Queue

START = datetime(2030, 1, 1, tzinfo=UTC)

#: Other first-party plugins are blocked so these tests see only retry, priority and the core.
OTHERS = sorted(
    {ep.name for ep in importlib.metadata.entry_points(group="hookqueue")} - {"retry", "priority"}
)


def make_queue(path: Path, clock: FakeClock, *plugins: Any, block: tuple[str, ...] = ()) -> Queue:
    """A queue on a fake clock with ``plugins`` registered and the other plugins blocked."""
    return Queue(path, clock=clock, durability="normal", plugins=plugins, block=[*OTHERS, *block])
