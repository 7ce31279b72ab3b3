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
from hookqueue.core.plugins import Hooks, make_plugin_manager, plugin_statuses
from hookqueue.core.queue import Queue
from hookqueue.core.storage import TaskStore

from .background import BackgroundTaskManager
from .queued import QueuedTaskManager
from .registry import RunRegistry

#: The environment variable that chooses the task manager (see :func:`create_task_manager`).
TOGGLE = "USE_QUEUE_SYSTEM"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

#: The open stores, by resolved file path or by URL.
_databases: dict[Path | str, TaskStore] = {}
_databases_lock = threading.Lock()


def _key(db_path: str | os.PathLike[str] | None) -> Path | str:
    """The cache key of a location: a store URL as written, a file path resolved."""
    location = os.fspath(db_path) if db_path is not None else os.environ.get("HOOKQUEUE_DB")
    if location and "://" in location:
        return location
    path = Path(location).expanduser() if location else QueueDatabase.default_path()
    return path.resolve()


def get_or_create_queue_database(db_path: str | os.PathLike[str] | None = None) -> TaskStore:
    """The process's one store for ``db_path`` (default: ``HOOKQUEUE_DB``, else the per-user
    data directory), schema ready: a :class:`~hookqueue.QueueDatabase` for a file path, and
    for a store URL (``postgresql://...``) the store a plugin opens for it (the
    ``hookqueue_store`` hook, as ``Queue(url)`` does) — so an application written this way
    moves to PostgreSQL by setting ``HOOKQUEUE_DB``, without a code change.

    The same location (a path however spelled, a URL as written) gives the same object, so
    the whole process shares its connections and its :class:`~hookqueue.Queue` (and with it
    the handler registry). A closed store is replaced by a new one. Thread-safe.

    :raises ValidationError: a URL whose scheme no installed store serves (naming the extra
        to install).
    """
    key = _key(db_path)
    with _databases_lock:
        db = _databases.get(key)
        if db is None or db.closed:
            if isinstance(key, str):
                db = Hooks(make_plugin_manager()).open_store(key, {})
            else:
                db = QueueDatabase(key)
            db.initialize_schema()
            _databases[key] = db
        return db


def create_queued_task_manager(
    queue_db: TaskStore | Queue | None = None,
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
    queue_db: TaskStore | Queue | None = None,
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
        "warnings": [...]}``. ``database`` has the ``path`` (a store URL as the store names
        it), ``exists`` (whether the file was there before the check, which creates a missing
        one; None for a URL), ``size_bytes`` (files only),
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
        key = _key(db_path)
    except Exception as exc:  # a bad path spelling, an unreadable home directory
        errors.append(f"database path {db_path!r}: {exc}")
        return result
    database = result["database"]
    file = key if isinstance(key, Path) else None
    # A URL is shown as the store names itself (never with its password), once it is open.
    database["path"] = None if file is None else str(file)
    database["exists"] = None if file is None else file.exists()  # before the check creates it
    try:
        db = get_or_create_queue_database(key)
        if file is not None:
            database["size_bytes"] = file.stat().st_size
        else:
            database["path"] = db.location
        expected = getattr(type(db), "SCHEMA_VERSION", None)
        result["schema"]["expected"] = expected
        version = db.schema_version()
        result["schema"]["version"] = version
        if version != expected:
            errors.append(f"schema version {version} is not the expected {expected}")
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
