"""huey's ``SqliteHuey`` and litequeue, set to the same ``synchronous`` as the run.

huey's ``fsync`` option only knows FULL and OFF, and litequeue hard-codes NORMAL, so both are
given the run's level after they open their connection: every system in a row of the table
pays for the same kind of commit.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from .common import SYNCHRONOUS

#: Environment variables the huey task reads in worker processes (huey's consumer forks its
#: workers, so the task function must find its log file without arguments).
HUEY_LOG_DIR_ENV = "HQBENCH_HUEY_LOG_DIR"


def make_huey(path: Path | str, durability: str) -> Any:
    """A ``SqliteHuey`` on ``path`` whose connections use the run's ``synchronous``, with one
    task, ``stamp(i, t_ns)``, that records when it started (see :func:`_stamp`)."""
    from huey import Huey
    from huey.storage import SqliteStorage

    level = SYNCHRONOUS[durability]

    class Storage(SqliteStorage):  # type: ignore[misc]
        def _create_connection(self) -> sqlite3.Connection:
            conn = super()._create_connection()
            conn.execute(f"pragma synchronous={level}")
            return conn

    huey = Huey("hqbench", storage_class=Storage, filename=str(path), utc=True)
    huey.hqbench_stamp = huey.task(name="stamp")(_stamp)
    return huey


def _stamp(i: int, t_ns: int) -> None:
    """The no-op huey task: appends ``i t_enqueued t_started`` to a per-process file with one
    ``write`` (O_APPEND), so nothing is lost when the consumer stops its workers."""
    import time

    started = time.time_ns()
    directory = os.environ.get(HUEY_LOG_DIR_ENV)
    if directory:
        fd = os.open(
            os.path.join(directory, f"huey-{os.getpid()}.log"),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT,
            0o600,
        )
        try:
            os.write(fd, f"{i} {t_ns} {started}\n".encode())
        finally:
            os.close(fd)


def huey_prefill(huey: Any, n: int) -> None:
    """Put ``n`` stamp tasks in huey's table in one transaction (set-up, not measured):
    the same rows ``huey.enqueue`` writes, without paying one commit each."""
    stamp = huey.hqbench_stamp
    rows = []
    for i in range(n):
        task = stamp.s(i, 0)
        rows.append((huey.storage.name, huey.storage.to_blob(huey.serialize_task(task)), 0))
    with huey.storage.db(commit=True) as cursor:
        cursor.executemany("insert into task (queue, data, priority) values (?, ?, ?)", rows)


def huey_enqueue(huey: Any, i: int, t_ns: int = 0) -> Any:
    """Enqueue one stamp task the way application code does (``stamp(i, t)``)."""
    return huey.hqbench_stamp(i, t_ns)


def make_litequeue(path: Path | str, durability: str) -> Any:
    """A ``LiteQueue`` on ``path`` at the run's ``synchronous`` (litequeue sets NORMAL)."""
    from litequeue import LiteQueue

    # sqlite3's default busy timeout (5 s) gives up under four competing processes; use
    # hookqueue's (10 s) so a busy database waits instead of failing.
    q = LiteQueue(str(path), timeout=10.0)
    q.conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS[durability]};")
    return q
