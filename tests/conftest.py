"""Shared fixtures. Every test gets its own database file and its own plugin manager."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# A real PostgreSQL server, started only when a test first asks for one of these fixtures.
from _services.postgres import postgres_dsn, postgres_server  # noqa: F401

from hookqueue import FakeClock, Queue


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's HOOKQUEUE_* settings or writes their data directory."""
    for name in list(os.environ):
        if name.startswith("HOOKQUEUE_") or name == "USE_QUEUE_SYSTEM":
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A path for a new database file."""
    return tmp_path / "queue.db"


@pytest.fixture
def clock() -> FakeClock:
    """A clock that only moves when the test moves it."""
    return FakeClock()


@pytest.fixture
def core_queue(db_path: Path, clock: FakeClock) -> Iterator[Queue]:
    """A queue with the core alone: every entry-point plugin blocked."""
    q = Queue(db_path, load_entrypoints=False, clock=clock, durability="normal")
    yield q
    q.close()


@pytest.fixture
def queue(db_path: Path, clock: FakeClock) -> Iterator[Queue]:
    """A queue with the installed first-party plugins, on a fake clock."""
    q = Queue(db_path, clock=clock, durability="normal")
    yield q
    q.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--screenshots-dir``: where the dashboard's browser tests also write their screenshots
    (they always write them under the run's temporary directory)."""
    parser.addoption(
        "--screenshots-dir",
        default=None,
        help="also write the dashboard browser tests' screenshots here "
        "(e.g. docs/images/dashboard)",
    )
