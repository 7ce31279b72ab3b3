"""What the retry-policy and scheduler contracts share: how they build their queues."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from hookqueue import FakeClock, Queue

#: The instant every contract queue's clock starts at.
START = datetime(2030, 1, 1, tzinfo=UTC)


class QueueContract:
    """Builds the contract's queues: on a fake clock, with the plugin under test registered.

    ``queue_kwargs`` holds extra keyword arguments for every :class:`~hookqueue.Queue` the
    contract builds (e.g. ``{"block": [...]}``).
    """

    queue_kwargs: ClassVar[dict[str, Any]] = {}

    def make_plugin(self) -> Any:
        """A new instance of the plugin under test (each contract names its own factory)."""
        raise NotImplementedError

    def make_queue(self, path: Path, clock: FakeClock, plugins: Iterable[Any] = ()) -> Queue:
        """A queue on ``path`` with ``plugins`` registered after the entry points."""
        return Queue(
            path, clock=clock, durability="normal", plugins=list(plugins), **self.queue_kwargs
        )

    @pytest.fixture
    def contract_clock(self) -> FakeClock:
        """The fake clock of the contract's queues."""
        return FakeClock(START)

    @contextmanager
    def temporary_queue(self) -> Iterator[tuple[Queue, FakeClock]]:
        """A queue with a new instance of the plugin on a temporary file, and its clock (for
        hypothesis examples, which cannot use function-scoped fixtures)."""
        with tempfile.TemporaryDirectory() as directory:
            clock = FakeClock(START)
            queue = self.make_queue(Path(directory) / "q.db", clock, [self.make_plugin()])
            try:
                yield queue, clock
            finally:
                queue.close()
