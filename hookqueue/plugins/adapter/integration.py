"""Integration helpers: one database per path per process, the ``USE_QUEUE_SYSTEM`` toggle and
a readiness check."""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from hookqueue import QueueDatabase
from hookqueue.core.errors import ValidationError
from hookqueue.core.plugins import plugin_statuses
from hookqueue.core.queue import Queue

from .background import BackgroundTaskManager
from .queued import QueuedTaskManager
from .registry import RunRegistry

#: The environment variable that chooses the task manager (see :func:`create_task_manager`).
TOGGLE = "USE_QUEUE_SYSTEM"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

_databases: dict[Path, QueueDatabase] = {}
_databases_lock = threading.Lock()


def _resolve(db_path: str | os.PathLike[str] | None) -> Path:
    path = Path(db_path).expanduser() if db_path is not None else QueueDatabase.default_path()
    return path.resolve()


def get_or_create_queue_database(db_path: str | os.PathLike[str] | None = None) -> QueueDatabase:
    """The process's one :class:`~hookqueue.QueueDatabase` for ``db_path`` (default:
    ``HOOKQUEUE_DB``, else the per-user data directory), schema ready.

    The same path (however spelled) gives the same object, so the whole process shares its
    connections and its :class:`~hookqueue.Queue` (and with it the handler registry). A
    closed database is replaced by a new one. Thread-safe.
    """
    path = _resolve(db_path)
    with _databases_lock:
        db = _databases.get(path)
        if db is None or db.closed:
            db = QueueDatabase(path)
            db.initialize_schema()
            _databases[path] = db
        return db


def create_queued_task_manager(
    queue_db: QueueDatabase | Queue | None = None,
    registry: RunRegistry | None = None,
    **options: Any,
) -> QueuedTaskManager:
    """A :class:`QueuedTaskManager` on ``queue_db`` (default: the process's database for the
    default path) with ``registry`` (default: a new in-memory ``RunRegistry``).

    :param options: passed to ``QueuedTaskManager`` (``lease_seconds``, ``durable_start``, ...).
    """
    if queue_db is None:
        queue_db = get_or_create_queue_database()
    return QueuedTaskManager(
        queue_db, registry if registry is not None else RunRegistry(), **options
    )


def use_queue_system(environ: Any = None) -> bool:
    """Read the ``USE_QUEUE_SYSTEM`` toggle: ``true``/``1``/``yes``/``on`` or
    ``false``/``0``/``no``/``off``/unset (any case).

    :raises ValidationError: any other value — a typo must not silently pick the in-memory
        manager.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(TOGGLE, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValidationError(
        TOGGLE,
        environ.get(TOGGLE),
        "is neither true nor false",
        f"set {TOGGLE}=true for the queue-backed manager or {TOGGLE}=false for the in-memory one",
    )


def create_task_manager(
    registry: RunRegistry | None = None,
    *,
    queue_db: QueueDatabase | Queue | None = None,
    **options: Any,
) -> QueuedTaskManager | BackgroundTaskManager:
    """The task manager the ``USE_QUEUE_SYSTEM`` toggle asks for: a :class:`QueuedTaskManager`
    when it is true, else the in-memory :class:`BackgroundTaskManager` (the rollback path).
    Both have the same API.

    :param queue_db: the database for the queue-backed manager (default: the process's one).
    :param options: passed to ``QueuedTaskManager`` when it is chosen.
    """
    registry = registry if registry is not None else RunRegistry()
    if use_queue_system():
        return create_queued_task_manager(queue_db, registry, **options)
    return BackgroundTaskManager(registry)


def validate_queue_integration(db_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Check that the queue is ready for the adapter; never raises.

    :returns: ``{"success": bool, "database": {...}, "schema": {...}, "errors": [...],
        "warnings": [...]}``. ``database`` has the ``path``, ``exists`` (whether the file
        was there before the check, which creates a missing one), ``size_bytes``,
        ``integrity`` problems, task ``counts`` and ``active_workers``; ``schema`` has the
        ``version`` found and the one ``expected``. Errors make ``success`` False; warnings
        (no live worker, the adapter plugin blocked) do not.
    """
    result: dict[str, Any] = {
        "success": False,
        "database": {},
        "schema": {"version": None, "expected": QueueDatabase.SCHEMA_VERSION},
        "errors": [],
        "warnings": [],
    }
    errors: list[str] = result["errors"]
    warnings: list[str] = result["warnings"]
    try:
        path = _resolve(db_path)
    except Exception as exc:  # a bad path spelling, an unreadable home directory
        errors.append(f"database path {db_path!r}: {exc}")
        return result
    database = result["database"]
    database["path"] = str(path)
    database["exists"] = path.exists()  # before this check creates it
    try:
        db = get_or_create_queue_database(path)
        database["size_bytes"] = path.stat().st_size
        version = db.schema_version()
        result["schema"]["version"] = version
        if version != QueueDatabase.SCHEMA_VERSION:
            errors.append(
                f"schema version {version} is not the expected {QueueDatabase.SCHEMA_VERSION}"
            )
        problems = db.check()
        database["integrity"] = problems
        errors += [f"integrity: {p}" for p in problems]
        database["counts"] = db.counts()
        queue = Queue.for_database(db)
        live = [
            w
            for w in queue.workers()
            if w.stopped_at is None and queue.now() - w.heartbeat_at < timedelta(minutes=1)
        ]
        database["active_workers"] = len(live)
        if not live:
            warnings.append(
                "no worker has a heartbeat in the last minute: tasks from schedule_task() and "
                "runs interrupted by a crash wait until one runs (hookqueue worker, or "
                "WorkerEngine(db).run())"
            )
        adapter = [s for s in plugin_statuses(queue.pm) if s.name == "adapter"]
        if not adapter or adapter[0].state != "active":
            warnings.append(
                "the adapter plugin is not active in this process, so runs whose process died "
                "are failed instead of rerun by workers without it. Fix: unblock 'adapter' "
                "(HOOKQUEUE_DISABLE_PLUGINS) and install hookqueue so its entry points exist"
            )
    except Exception as exc:  # reported, never raised: this is a readiness check
        errors.append(f"{type(exc).__name__}: {exc}")
    result["success"] = not errors
    return result


__all__ = [
    "TOGGLE",
    "create_queued_task_manager",
    "create_task_manager",
    "get_or_create_queue_database",
    "use_queue_system",
    "validate_queue_integration",
]
