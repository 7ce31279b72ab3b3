"""The ``periodic`` plugin's hooks: a scheduler in each worker, and ``hookqueue schedules``.

- ``hookqueue_worker_start``: a :class:`~hookqueue.WorkerEngine` that did not opt out
  (``scheduler=False``, ``hookqueue worker --no-scheduler``) declares the schedules of its
  handlers (upserted into the database), fires the ticks due now — before its first lease —
  and starts its scheduler thread.
- ``hookqueue_worker_stop``: stops that thread.
- ``hookqueue_cli_commands``: ``hookqueue schedules ls|add|pause|resume|remove``.
- ``hookqueue_dashboard_pages`` (the web dashboard's own hook, optional: it exists only where
  a dashboard is built): the *Schedules* page, from :mod:`.dashboard`.

In-process runs (``InlineWorker``: inline mode, ``run_due``) fire no ticks.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from hookqueue.core.errors import StoreError
from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import CliCommand
from hookqueue.core.worker import WorkerEngine

from .cli import SCHEDULES_COMMAND
from .manage import declared_schedules
from .scheduler import Scheduler

log = logging.getLogger("hookqueue.plugins.periodic")

_schedulers: dict[int, Scheduler] = {}
_lock = threading.Lock()


def scheduler_of(worker: Any) -> Scheduler | None:
    """The scheduler running in ``worker``, if any (for tests and tools)."""
    with _lock:
        return _schedulers.get(id(worker))


@hookimpl
def hookqueue_worker_start(worker: Any) -> None:
    """Declare the worker's schedules, fire what is due, start the scheduler thread."""
    if not isinstance(worker, WorkerEngine) or not getattr(worker, "scheduler", True):
        return
    schedules = declared_schedules(worker.handler_registry)
    scheduler = Scheduler(worker.queue, name=f"hookqueue-periodic-{worker.worker_id}")
    try:
        if schedules:
            answers = scheduler.declare(schedules)
            for schedule, answer in zip(schedules, answers, strict=True):
                if answer != "unchanged":
                    log.info("schedule %r %s by worker %s", schedule.key, answer, worker.worker_id)
        scheduler.run_once()
    except StoreError as exc:
        # The thread's passes retry; a database that is busy now must not stop the worker.
        log.warning("worker %s: declaring or firing schedules failed (%s)", worker.worker_id, exc)
        if schedules:
            scheduler.pending = list(schedules)
    scheduler.start()
    with _lock:
        _schedulers[id(worker)] = scheduler


@hookimpl
def hookqueue_worker_stop(worker: Any) -> None:
    """Stop the worker's scheduler thread."""
    with _lock:
        scheduler = _schedulers.pop(id(worker), None)
    if scheduler is not None:
        scheduler.stop()


@hookimpl
def hookqueue_cli_commands() -> list[CliCommand]:
    """Contribute ``hookqueue schedules``."""
    return [SCHEDULES_COMMAND]


@hookimpl(optionalhook=True)
def hookqueue_dashboard_pages() -> list[Any]:
    """Contribute the dashboard's *Schedules* page. Only a dashboard being built calls this
    hook, so the page's module (and the dashboard's records) are imported only then."""
    from .dashboard import schedules_page

    return [schedules_page()]


__all__ = [
    "hookqueue_cli_commands",
    "hookqueue_dashboard_pages",
    "hookqueue_worker_start",
    "hookqueue_worker_stop",
    "scheduler_of",
]
