"""Handlers for the worker processes that test_worker_faults.py starts with
``hookqueue worker --app _hqapp:registry`` (this directory on ``PYTHONPATH``).

Each handler appends ``start <task id> <attempt> <pid>`` to ``$HQ_RELIABILITY_LOG`` before
its work and ``end ...`` after it (O_APPEND writes, one line each), so the test sees which
process ran which task, and how often, even when a process is killed.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from hookqueue import TaskHandlerRegistry
from hookqueue.core.models import Task

registry = TaskHandlerRegistry()

#: A registry without handlers, for the worker that must refuse to start.
empty = TaskHandlerRegistry()


def _log(event: str, task: Task) -> None:
    fd = os.open(os.environ["HQ_RELIABILITY_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{event} {task.id} {task.attempts} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@registry.handler("block_loop")
async def block_loop(task: Task) -> str:
    """An async handler that blocks the event loop (``time.sleep`` in ``async def``)."""
    _log("start", task)
    time.sleep(float(task.payload["seconds"]))  # the mistake under test
    _log("end", task)
    return "blocked"


@registry.handler("work")
def work(task: Task) -> Any:
    """An ordinary sync handler."""
    _log("start", task)
    _log("end", task)
    return task.payload


@registry.handler("stuck")
def stuck(task: Task) -> None:
    """A sync handler that never returns (a hung read that ignores every cancellation)."""
    _log("start", task)
    threading.Event().wait()
