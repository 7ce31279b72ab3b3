"""``RunRegistry``: the runs a task manager knows about, optionally kept in a JSON history file.

The file is written atomically (a temporary file in the same directory, fsynced, then
``os.replace``), so a crash leaves either the old history or the new one, never half of one.
Writes happen on a background thread: ``add_run``/``update_run`` only change memory and mark
the history dirty, so they never block an event loop on disk. Changes made while a write is in
progress are written by the next one, so a burst of updates costs a few writes, not one
each. The last changes are written at interpreter exit, by :meth:`RunRegistry.flush`, and by
:meth:`RunRegistry.close`.

Why a JSON file and not the queue database: the registry also serves the in-memory
``BackgroundTaskManager`` (the ``USE_QUEUE_SYSTEM=false`` rollback path), which has no
database, and it keeps the history file the original registry wrote readable.

A history file that cannot be read is reported with :class:`RunHistoryError` and never
overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs

from .models import ACTIVE_RUN_STATUSES, Run, RunHistoryError, RunStatus

log = logging.getLogger("hookqueue.adapter.registry")

#: The ``format`` value of history files this module writes.
HISTORY_FORMAT = "hookqueue.run-history"
HISTORY_VERSION = 1

_DATETIME_FIELDS = ("created_at", "started_at", "completed_at")
_FIELDS = {f.name for f in attrs.fields(Run)}


def run_to_dict(run: Run) -> dict[str, Any]:
    """A JSON-ready dict of ``run`` (datetimes as ISO 8601 strings, status as its string)."""
    out: dict[str, Any] = {}
    for field in attrs.fields(Run):
        value = getattr(run, field.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, RunStatus):
            value = value.value
        elif field.name == "parameters":
            value = dict(value)
        out[field.name] = value
    return out


def run_from_dict(data: Mapping[str, Any]) -> Run:
    """Build a run from :func:`run_to_dict`'s output (or the original registry's JSON).

    Naive timestamps, which the original registry could write, are read as UTC. Keys that
    are not ``Run`` fields are ignored.

    :raises ValueError, TypeError: a field is missing or has a bad value (the message names it).
    """
    kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in _FIELDS}
    for name in _DATETIME_FIELDS:
        value = kwargs.get(name)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not an ISO 8601 timestamp") from None
            kwargs[name] = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    missing = sorted({"run_id", "module_id", "module_name", "status", "created_at"} - set(kwargs))
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    if kwargs.get("parameters") is None:
        kwargs.pop("parameters", None)
    return Run(**kwargs)


def _entries(data: Any) -> list[Any]:
    """The run entries of a decoded history file, in any of the shapes we read."""
    if isinstance(data, dict) and "runs" in data:
        if data.get("format", HISTORY_FORMAT) != HISTORY_FORMAT:
            raise ValueError(f"format={data.get('format')!r} is not {HISTORY_FORMAT!r}")
        version = data.get("version", HISTORY_VERSION)
        if not isinstance(version, int) or version > HISTORY_VERSION:
            raise ValueError(
                f"version={version!r} was written by a newer hookqueue (this one reads up to "
                f"{HISTORY_VERSION}); upgrade hookqueue"
            )
        data = data["runs"]
    if isinstance(data, list):
        return data
    if isinstance(data, dict):  # {run_id: run}, as some registries wrote it
        return list(data.values())
    raise ValueError(f"the top level is a {type(data).__name__}, not a list or object of runs")


def load_history(path: Path) -> dict[str, Run]:
    """Read a history file; a missing file is an empty history.

    :raises RunHistoryError: the file is unreadable, not JSON, or an entry is invalid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise RunHistoryError(path, f"cannot be read ({exc})") from exc
    if not text.strip():
        raise RunHistoryError(path, "is empty (a write was interrupted, or it is not a history)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunHistoryError(path, f"is not valid JSON ({exc})") from exc
    try:
        entries = _entries(data)
    except ValueError as exc:
        raise RunHistoryError(path, str(exc)) from exc
    runs: dict[str, Run] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise RunHistoryError(path, f"run #{index} is a {type(entry).__name__}, not an object")
        try:
            run = run_from_dict(entry)
        except (TypeError, ValueError) as exc:
            raise RunHistoryError(
                path, f"run #{index} (run_id={entry.get('run_id')!r}): {exc}"
            ) from exc
        runs[run.run_id] = run
    return runs


def write_history_atomically(path: Path, runs: Iterable[Run]) -> None:
    """Write ``runs`` to ``path`` so that a crash leaves the old file or the new one.

    The temporary file is created owner-only (0600) in the same directory, written, fsynced and
    renamed over ``path``; the directory is fsynced so the rename itself survives power loss.
    """
    document = {
        "format": HISTORY_FORMAT,
        "version": HISTORY_VERSION,
        "runs": [run_to_dict(r) for r in runs],
    }
    text = json.dumps(document, ensure_ascii=False, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class _HistoryWriter:
    """The background thread that writes a registry's history file.

    It holds the registry's run dict, not the registry, so the registry can be garbage
    collected; ``weakref.finalize`` then (or at interpreter exit) writes the last changes.
    """

    def __init__(self, path: Path, runs_ref: list[dict[str, Run]], lock: threading.Lock) -> None:
        self.path = path
        self._runs_ref = runs_ref  # a one-item list: the registry may swap its dict
        self._lock = lock
        self._dirty = False
        self._stop = False
        self._wake = threading.Condition(threading.Lock())
        self._write_lock = threading.Lock()
        #: The last write's error, if it failed (reported by flush()).
        self.error: BaseException | None = None
        self.writes = 0
        self._thread: threading.Thread | None = None

    def mark_dirty(self) -> None:
        with self._wake:
            self._dirty = True
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(
                    target=self._run, name=f"hookqueue-run-history-{self.path.name}", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._wake:
                if backoff:
                    # The last write failed (disk full, permissions): try again later, not in
                    # a tight loop; a stop request still ends the wait at once.
                    self._wake.wait(backoff)
                while not self._dirty and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return  # close() writes the last changes itself
            try:
                self.write_now()
                backoff = 0.0
            except Exception:  # logged in write_now
                backoff = min(max(backoff * 2, 0.5), 30.0)

    def write_now(self) -> None:
        """Write the current runs if they changed since the last write (in the caller's thread)."""
        with self._write_lock:
            with self._wake:
                if not self._dirty:
                    return
                self._dirty = False
            with self._lock:
                runs = list(self._runs_ref[0].values())
            try:
                write_history_atomically(self.path, runs)
            except Exception as exc:
                with self._wake:
                    self._dirty = True  # still unwritten
                self.error = exc
                log.error("cannot write run history %s: %s", self.path, exc)
                raise
            self.error = None
            self.writes += 1

    def close(self) -> None:
        """Write the last changes and stop the thread. Idempotent."""
        with self._wake:
            self._stop = True
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        try:
            self.write_now()
        except Exception:  # already logged; nothing else can be done at exit
            pass


class RunRegistry:
    """The runs a task manager started, by ``run_id``.

    :param history_file: a JSON file to keep the runs in across restarts; None keeps them in
        memory only. An existing file is read now.
    :raises RunHistoryError: the history file exists but cannot be read; it is not modified.

    Every method is synchronous and fast (memory only); persisting happens on a background
    thread. Thread-safe.
    """

    def __init__(self, history_file: str | os.PathLike[str] | None = None) -> None:
        self._lock = threading.Lock()
        self.history_file: Path | None = (
            Path(history_file).expanduser() if history_file is not None else None
        )
        runs = load_history(self.history_file) if self.history_file is not None else {}
        self._runs_ref: list[dict[str, Run]] = [runs]
        # Runs that were active in the file: their process is gone, so a queue-backed
        # manager looks them up in the queue (see QueuedTaskManager) instead of trusting them.
        self._interrupted = {rid for rid, r in runs.items() if r.status in ACTIVE_RUN_STATUSES}
        self._writer: _HistoryWriter | None = None
        if self.history_file is not None:
            self._writer = _HistoryWriter(self.history_file, self._runs_ref, self._lock)
            self._finalizer = weakref.finalize(self, self._writer.close)

    def __repr__(self) -> str:
        return f"RunRegistry({len(self.runs)} runs, history_file={self.history_file!r})"

    @property
    def runs(self) -> dict[str, Run]:
        """Every run, by ``run_id`` (the registry's own dict; change it through the methods)."""
        return self._runs_ref[0]

    @runs.setter
    def runs(self, value: dict[str, Run]) -> None:
        with self._lock:
            self._runs_ref[0] = value
        self._changed()

    def _changed(self) -> None:
        if self._writer is not None:
            self._writer.mark_dirty()

    # -- changes -------------------------------------------------------------------------------

    def add_run(self, run: Run) -> None:
        """Add ``run`` (replacing a run with the same ``run_id``)."""
        if not isinstance(run, Run):
            raise TypeError(f"run={run!r} must be a Run; build one with Run(run_id=..., ...)")
        with self._lock:
            self.runs[run.run_id] = run
            self._interrupted.discard(run.run_id)
        self._changed()

    def update_run(self, run: Run) -> None:
        """Store ``run``'s current state: the same as :meth:`add_run` (an upsert)."""
        self.add_run(run)

    def remove_run(self, run_id: str) -> bool:
        """Forget one run. :returns: True if it was known."""
        with self._lock:
            found = self.runs.pop(run_id, None) is not None
            self._interrupted.discard(run_id)
        if found:
            self._changed()
        return found

    def cleanup_old_runs(self, days: float = 30) -> int:
        """Forget finished runs that finished (or, lacking that, were created) more than
        ``days`` ago. Queued and running runs are kept whatever their age.

        :returns: how many runs were removed.
        """
        if isinstance(days, bool) or not isinstance(days, int | float) or days < 0:
            raise ValueError(f"days={days!r} must be a number >= 0, e.g. 30")
        cutoff = datetime.now(UTC) - timedelta(days=days)
        with self._lock:
            old = [
                rid
                for rid, r in self.runs.items()
                if r.status.is_terminal and (r.completed_at or r.created_at) < cutoff
            ]
            for rid in old:
                del self.runs[rid]
                self._interrupted.discard(rid)
        if old:
            self._changed()
        return len(old)

    # -- reads ---------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or None."""
        return self.runs.get(run_id)

    def _select(self, keep: Any) -> list[Run]:
        with self._lock:
            return [r for r in self.runs.values() if keep(r)]

    def get_active_runs(self) -> list[Run]:
        """Runs that are queued or running."""
        return self._select(lambda r: r.status in ACTIVE_RUN_STATUSES)

    def get_runs_by_module(self, module_id: str) -> list[Run]:
        """Runs of one module."""
        return self._select(lambda r: r.module_id == module_id)

    def get_runs_by_status(self, status: RunStatus | str) -> list[Run]:
        """Runs with one status (a :class:`RunStatus` or its string)."""
        wanted = RunStatus(status)
        return self._select(lambda r: r.status == wanted)

    def get_recent_runs(self, limit: int = 50) -> list[Run]:
        """The ``limit`` most recently created runs, newest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit={limit!r} must be an integer >= 0, e.g. 50")
        with self._lock:
            runs = list(self.runs.values())
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return runs[:limit]

    def interrupted_run_ids(self) -> list[str]:
        """Runs that were queued or running in the history file when it was loaded and have
        not been updated since: the process that ran them stopped."""
        with self._lock:
            return sorted(self._interrupted)

    # -- persistence ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Write pending changes to the history file now, in the caller's thread (blocking:
        from async code use ``await asyncio.to_thread(registry.flush)``).

        :raises OSError: the file cannot be written (the change stays pending).
        """
        if self._writer is not None:
            self._writer.write_now()

    def close(self) -> None:
        """Write pending changes and stop the writer thread. Idempotent; the registry stays
        usable in memory and a later change starts the writer again."""
        if self._writer is not None:
            self._finalizer()
            self._writer = _HistoryWriter(self._writer.path, self._runs_ref, self._lock)
            self._finalizer = weakref.finalize(self, self._writer.close)

    def __len__(self) -> int:
        return len(self.runs)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self.runs


__all__ = [
    "RunRegistry",
    "load_history",
    "run_from_dict",
    "run_to_dict",
    "write_history_atomically",
]
