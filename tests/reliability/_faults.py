"""Fault injection for the reliability suite: an apsw VFS shim and subprocess helpers.

The shim (:class:`FaultyVFS`) sits between SQLite and the operating system and, as its
:class:`FaultPlan` says, makes the n-th write or sync of the database or its WAL fail with
the error code the real system call would give (``SQLITE_IOERR_WRITE``,
``SQLITE_IOERR_FSYNC``, ``SQLITE_FULL``), or kills the process with SIGKILL at exactly that
point — the only way to stop a process *inside* a transaction at a chosen place.

The crash scenarios register the shim as the process's *default* VFS, so every connection
of the child goes through it. That would change every connection in the process, so
:func:`install_default` refuses to run inside pytest: scenarios that use it are the scripts
in this directory, started as subprocesses by :func:`run_child`. A test that only counts
(no fault, no kill) registers it under its own name and passes ``vfs=`` to the queue.

This module is imported by the test modules (``from . import _faults``) and by the scripts
(``import _faults``: a script's own directory is first on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw

HERE = Path(__file__).resolve().parent

#: Where the injected faults land: the main database file or its write-ahead log.
MAIN, WAL, OTHER = "main", "wal", "other"


class FaultPlan:
    """What the shim does at the next writes and syncs, and what it has seen.

    Counters count calls on the main database file and its WAL since the last :meth:`arm`;
    the ``*_at`` settings are 1-based positions in those counts. A fault fires once, unless
    ``persistent`` is set (then every later call fails too, like a disk that stays full).
    """

    def __init__(self) -> None:
        self.arm()

    def arm(
        self,
        *,
        fail_write_at: int | None = None,
        fail_sync_at: int | None = None,
        kill_at_write: int | None = None,
        kill_at_sync: int | None = None,
        quota_bytes: int | None = None,
        only: str | None = None,
        persistent: bool = False,
    ) -> None:
        """Reset the counters and set the next faults.

        :param fail_write_at: the n-th write fails with ``SQLITE_IOERR_WRITE``.
        :param fail_sync_at: the n-th sync fails with ``SQLITE_IOERR_FSYNC``.
        :param kill_at_write: the process SIGKILLs itself instead of doing the n-th write.
        :param kill_at_sync: the process SIGKILLs itself instead of doing the n-th sync (the
            data written before it is in the OS page cache, as after an application crash).
        :param quota_bytes: writes that would grow the database plus its WAL past this many
            bytes fail with ``SQLITE_FULL``, as on a full disk.
        :param only: count only calls on ``"main"`` or ``"wal"`` files.
        :param persistent: keep failing after the first fault.
        """
        self.fail_write_at = fail_write_at
        self.fail_sync_at = fail_sync_at
        self.kill_at_write = kill_at_write
        self.kill_at_sync = kill_at_sync
        self.quota_bytes = quota_bytes
        self.only = only
        self.persistent = persistent
        self.writes = 0
        self.syncs = 0
        #: How many faults fired since the last arm.
        self.injected = 0
        #: ``(kind, file kind, position)`` of each fault that fired.
        self.log: list[tuple[str, str, int]] = []

    def disarm(self) -> None:
        """Stop injecting (the counters keep counting)."""
        self.fail_write_at = self.fail_sync_at = None
        self.kill_at_write = self.kill_at_sync = None
        self.quota_bytes = None

    def _counts(self, kind: str) -> bool:
        return kind in (MAIN, WAL) and (self.only is None or self.only == kind)

    def _due(self, at: int | None, position: int) -> bool:
        if at is None:
            return False
        return position == at or (self.persistent and position > at)

    def on_write(self, file: FaultyFile, data: bytes, offset: int) -> None:
        """Called before each write; raises or kills when the plan says so."""
        if not self._counts(file.kind):
            return
        self.writes += 1
        if self._due(self.kill_at_write, self.writes):
            _sigkill_self()
        if self._due(self.fail_write_at, self.writes):
            self._fire("write", file, apsw.SQLITE_IOERR_WRITE)
        if self.quota_bytes is not None and file.path is not None:
            growth = max(0, offset + len(data) - file.xFileSize())
            if growth and _database_bytes(file.path) + growth > self.quota_bytes:
                self._fire("full", file, apsw.SQLITE_FULL)

    def on_sync(self, file: FaultyFile) -> None:
        """Called before each sync; raises or kills when the plan says so."""
        if not self._counts(file.kind):
            return
        self.syncs += 1
        if self._due(self.kill_at_sync, self.syncs):
            _sigkill_self()
        if self._due(self.fail_sync_at, self.syncs):
            self._fire("sync", file, apsw.SQLITE_IOERR_FSYNC)

    def _fire(self, kind: str, file: FaultyFile, code: int) -> None:
        self.injected += 1
        self.log.append((kind, file.kind, self.writes if kind != "sync" else self.syncs))
        raise apsw.exception_for(code)


def _sigkill_self() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _database_bytes(path: str) -> int:
    base = path[: -len("-wal")] if path.endswith("-wal") else path
    total = 0
    for p in (base, base + "-wal"):
        try:
            total += os.path.getsize(p)
        except OSError:
            pass
    return total


class FaultyFile(apsw.VFSFile):
    """A file of the base VFS whose writes and syncs consult the plan first."""

    def __init__(self, base: str, name: Any, flags: list[int], plan: FaultPlan) -> None:
        super().__init__(base, name, flags)
        self.plan = plan
        self.path: str | None = name.filename() if isinstance(name, apsw.URIFilename) else name
        if flags[0] & apsw.SQLITE_OPEN_MAIN_DB:
            self.kind = MAIN
        elif flags[0] & apsw.SQLITE_OPEN_WAL:
            self.kind = WAL
        else:
            self.kind = OTHER

    def xWrite(self, data: Any, offset: int) -> None:
        """Consult the plan, then write through the base VFS."""
        self.plan.on_write(self, bytes(data), offset)
        super().xWrite(data, offset)

    def xSync(self, flags: int) -> None:
        """Consult the plan, then sync through the base VFS."""
        self.plan.on_sync(self)
        super().xSync(flags)


class FaultyVFS(apsw.VFS):
    """A VFS that inherits everything from ``base`` and opens :class:`FaultyFile` objects."""

    def __init__(self, plan: FaultPlan, *, name: str, base: str, makedefault: bool) -> None:
        self.plan = plan
        self.base_name = base
        super().__init__(name, base=base, makedefault=makedefault)

    def xOpen(self, name: Any, flags: list[int]) -> FaultyFile:
        """Open the file through the base VFS, wrapped."""
        return FaultyFile(self.base_name, name, flags, self.plan)


def install_default(name: str = "hookqueue-faulty") -> tuple[FaultyVFS, FaultPlan]:
    """Register the shim as this process's default VFS and return it with its plan.

    :raises RuntimeError: inside pytest, where it would leak into every other test.
    """
    if "pytest" in sys.modules or "_pytest" in sys.modules:
        raise RuntimeError(
            "install_default() changes every SQLite connection of the process; run the "
            "scenario in a subprocess (run_child) instead of inside pytest"
        )
    base = apsw.vfs_names()[0]
    plan = FaultPlan()
    vfs = FaultyVFS(plan, name=name, base=base, makedefault=True)
    return vfs, plan


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def child_command(script: str, *args: object) -> list[str]:
    """The command line that runs ``script`` (a file in this directory) with ``args``."""
    return [sys.executable, str(HERE / script), *map(str, args)]


def run_child(
    script: str,
    *args: object,
    timeout: float = 60.0,
    expect_killed: bool = False,
    env: dict[str, str] | None = None,
) -> Any:
    """Run a script of this directory to the end and return the JSON on its last stdout line.

    :param expect_killed: the script is meant to die by SIGKILL (it killed itself at a fault
        point); returns None after checking that it did.
    :param env: variables to add to (or, with value "", remove from) the environment.
    :raises AssertionError: with the script's output when it failed or timed out.
    """
    environ = dict(os.environ)
    for name, value in (env or {}).items():
        if value:
            environ[name] = value
        else:
            environ.pop(name, None)
    proc = subprocess.run(
        child_command(script, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=environ,
    )
    if expect_killed:
        assert proc.returncode == -signal.SIGKILL, (
            f"{script} {args} was to kill itself with SIGKILL but exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
        return None
    assert proc.returncode == 0, (
        f"{script} {args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"{script} {args} printed nothing\nstderr:\n{proc.stderr}"
    return json.loads(lines[-1])


def emit(result: Any) -> None:
    """Print a script's result as one JSON line (the last line run_child reads)."""
    print(json.dumps(result), flush=True)


def raw_connection(path: str | os.PathLike[str]) -> apsw.Connection:
    """A plain apsw connection to a database file, outside hookqueue (for inspection and
    for faults that hookqueue's API cannot cause)."""
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(10_000)
    return conn


def integrity(path: str | os.PathLike[str]) -> list[str]:
    """``PRAGMA integrity_check`` of a database file: an empty list when it is sound."""
    conn = raw_connection(path)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check") if row[0] != "ok"]
    finally:
        conn.close()


def rows(
    path: str | os.PathLike[str], sql: str, params: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    """Run a query on a fresh raw connection and return every row."""
    conn = raw_connection(path)
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()
