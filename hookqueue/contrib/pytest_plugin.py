"""pytest fixtures for hookqueue's users and plugin authors (opt-in; see docs/testing.md).

pytest loads this module in every session where hookqueue is installed (``pytest11`` entry
point ``hookqueue``); with plugin autoloading switched off, load it with ``-p hookqueue``
or ``pytest_plugins = ["hookqueue.contrib.pytest_plugin"]``. It defines fixtures and nothing
else — no autouse fixture, no pytest hook — so a suite that does not ask for a fixture is
unaffected.

Fixtures (all function-scoped, all prefixed ``hq_``):

``hq_clock``
    a :class:`~hookqueue.FakeClock` that the queue and its workers share; move it with
    ``hq_clock.advance(seconds)`` to bring delayed tasks, retries and lease expiry due.
``hq_db_path``
    a path for a new database file in the test's ``tmp_path``.
``hq_plugins``
    plugin objects to register on ``hq_queue`` (default none); override it in a conftest
    or test module to test with your plugins.
``hq_queue_options``
    extra ``Queue(...)`` keyword arguments (default none), e.g. ``{"load_entrypoints": False}``
    for the core alone; override it like ``hq_plugins``.
``hq_queue``
    a :class:`~hookqueue.Queue` on a fresh database file with ``hq_clock``, entry-point
    plugins loaded as in production, ``hq_plugins`` registered; closed after the test.
``hq_inline_queue``
    the same with ``inline=True`` (``enqueue`` runs due tasks at once), on its own file.
``hq_worker``
    an :class:`~hookqueue.contrib.testing.InProcessWorker` for ``hq_queue``:
    ``hq_worker.run_until_idle()`` runs the due tasks in order in this process,
    ``hq_worker.advance(seconds)`` moves the clock first.
``hq_hooks``
    a :class:`~hookqueue.contrib.testing.HookRecorder` recording ``hq_queue``'s hook calls.
``hq_record_hooks``
    a factory: ``hq_record_hooks(queue)`` records another queue's hook calls until the test
    ends.

The assertion helpers (``assert_enqueued``, ``assert_not_enqueued``, ``enqueued``,
``run_due``, ``matches``) are importable from here and from
:mod:`hookqueue.contrib.testing`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from hookqueue.contrib.testing import (
    INLINE_WORKER_ID,
    HookRecorder,
    InlineRun,
    InProcessWorker,
    RecordedHookCall,
    assert_enqueued,
    assert_not_enqueued,
    close_runner,
    enqueued,
    last_task_id,
    matches,
    run_due,
    run_due_async,
)
from hookqueue.core.clock import FakeClock
from hookqueue.core.errors import ValidationError
from hookqueue.core.queue import Queue

__all__ = [
    "INLINE_WORKER_ID",
    "HookRecorder",
    "InProcessWorker",
    "InlineRun",
    "RecordedHookCall",
    "assert_enqueued",
    "assert_not_enqueued",
    "enqueued",
    "hq_clock",
    "hq_db_path",
    "hq_hooks",
    "hq_inline_queue",
    "hq_plugins",
    "hq_queue",
    "hq_queue_options",
    "hq_record_hooks",
    "hq_worker",
    "last_task_id",
    "matches",
    "run_due",
    "run_due_async",
]


def _open_queue(
    path: Path, clock: FakeClock, plugins: Sequence[Any], options: Mapping[str, Any], **extra: Any
) -> Queue:
    if not isinstance(options, Mapping):
        raise ValidationError(
            "hq_queue_options",
            options,
            "must be a dict of Queue() keyword arguments",
            "return e.g. {'load_entrypoints': False} from your hq_queue_options fixture",
        )
    kwargs: dict[str, Any] = {"clock": clock, "durability": "normal", **options, **extra}
    kwargs["plugins"] = [*plugins, *kwargs.get("plugins", ())]
    return Queue(path, **kwargs)


def _close_queue(queue: Queue) -> None:
    close_runner(queue)
    queue.close()


@pytest.fixture
def hq_clock() -> FakeClock:
    """A clock that moves only when the test moves it; ``hq_queue`` and its workers use it."""
    return FakeClock()


@pytest.fixture
def hq_db_path(tmp_path: Path) -> Path:
    """A path for a new database file in the test's temporary directory."""
    return tmp_path / "hookqueue-test.db"


@pytest.fixture
def hq_plugins() -> Sequence[Any]:
    """Plugins to register on ``hq_queue`` and ``hq_inline_queue``; override to add yours."""
    return ()


@pytest.fixture
def hq_queue_options() -> Mapping[str, Any]:
    """Extra ``Queue(...)`` keyword arguments for ``hq_queue`` and ``hq_inline_queue``;
    override to change them (e.g. ``{"load_entrypoints": False}``)."""
    return {}


@pytest.fixture
def hq_queue(
    hq_db_path: Path,
    hq_clock: FakeClock,
    hq_plugins: Sequence[Any],
    hq_queue_options: Mapping[str, Any],
) -> Iterator[Queue]:
    """A queue on a fresh database file, on ``hq_clock``; closed after the test."""
    queue = _open_queue(hq_db_path, hq_clock, hq_plugins, hq_queue_options)
    yield queue
    _close_queue(queue)


@pytest.fixture
def hq_inline_queue(
    tmp_path: Path,
    hq_clock: FakeClock,
    hq_plugins: Sequence[Any],
    hq_queue_options: Mapping[str, Any],
) -> Iterator[Queue]:
    """A queue whose ``enqueue`` runs due tasks at once, in the test (``inline=True``), on
    its own database file and ``hq_clock``; closed after the test."""
    queue = _open_queue(
        tmp_path / "hookqueue-inline-test.db", hq_clock, hq_plugins, hq_queue_options, inline=True
    )
    yield queue
    _close_queue(queue)


@pytest.fixture
def hq_worker(hq_queue: Queue) -> InProcessWorker:
    """Runs ``hq_queue``'s due tasks in this process, in order, until idle."""
    return InProcessWorker(hq_queue)


@pytest.fixture
def hq_hooks(hq_queue: Queue) -> Iterator[HookRecorder]:
    """Records every hook call of ``hq_queue`` made during the test."""
    with HookRecorder(hq_queue) as recorder:
        yield recorder


@pytest.fixture
def hq_record_hooks() -> Iterator[Callable[..., HookRecorder]]:
    """``hq_record_hooks(queue)`` starts a :class:`HookRecorder` on any queue; every recorder
    started this way stops when the test ends."""
    recorders: list[HookRecorder] = []

    def record(queue: Queue, *, events: bool = True) -> HookRecorder:
        recorder = HookRecorder(queue, events=events)
        recorders.append(recorder)
        return recorder

    yield record
    for recorder in reversed(recorders):
        recorder.close()
