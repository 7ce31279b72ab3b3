"""One log line per task event: started, completed, retry scheduled, failed, cancelled, lease
expired — a first-party plugin (entry point ``tasklog``) observing ``hookqueue_event``.

Lines go to the ``hookqueue.tasks`` logger: completions, starts and retries at INFO (shown by
``hookqueue worker -v``), failures and expired leases at WARNING (shown by default). Each
record carries structured fields (``task_id``, ``task_type``, ``queue``, ``attempt``,
``max_attempts``, ``event``, ``worker_id``, ``duration``) as ``extra``, which
``--log-format json`` prints as JSON keys for log shippers. Block the plugin (``tasklog``) to
silence it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import EventKind, TaskEvent

log = logging.getLogger("hookqueue.tasks")

#: The level of each kind of event's line (kinds not listed are not logged).
LEVELS = {
    EventKind.STARTED: logging.INFO,
    EventKind.COMPLETED: logging.INFO,
    EventKind.RETRY_SCHEDULED: logging.INFO,
    EventKind.FAILED: logging.WARNING,
    EventKind.CANCELLED: logging.INFO,
    EventKind.LEASE_EXPIRED: logging.WARNING,
    EventKind.RELEASED: logging.INFO,
}


def describe(event: TaskEvent) -> str:
    """The event as one line of text."""
    task = event.task
    head = f"task {task.id} ({task.task_type}) attempt {task.attempts}/{task.max_attempts}"
    took = f" in {event.duration:.3f}s" if event.duration is not None else ""
    kind = event.kind
    if kind is EventKind.STARTED:
        return f"{head} started"
    if kind is EventKind.COMPLETED:
        return f"{head} completed{took}"
    if kind is EventKind.RETRY_SCHEDULED:
        at = task.run_after.strftime("%H:%M:%S")
        return f"{head} failed{took}, runs again at {at} UTC: {event.error}"
    if kind is EventKind.FAILED:
        return f"{head} failed{took}: {event.error}"
    if kind is EventKind.LEASE_EXPIRED:
        return f"{head}: {event.error}; queued again"
    if kind is EventKind.RELEASED:
        return f"{head} given back unfinished at shutdown"
    return f"{head} {kind.value}{took}"


@hookimpl
def hookqueue_event(events: Sequence[TaskEvent]) -> None:
    """Log each event this plugin logs (nothing is built when the level is off)."""
    for event in events:
        level = LEVELS.get(event.kind)
        if level is None or not log.isEnabledFor(level):
            continue
        task = event.task
        log.log(
            level,
            "%s",
            describe(event),
            extra={
                "event": event.kind.value,
                "task_id": task.id,
                "task_type": task.task_type,
                "queue": task.queue,
                "attempt": task.attempts,
                "max_attempts": task.max_attempts,
                "worker_id": event.worker_id,
                "duration": event.duration,
            },
        )
