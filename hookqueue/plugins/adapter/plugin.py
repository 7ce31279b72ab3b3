"""The adapter's hook implementation: rerun a run whose process died, at once.

``QueuedTaskManager`` records each run as a task leased to itself, with a header naming the
manager. When that lease runs out — the process running the coroutine died, hung or lost the
database — the worker that finds it asks ``hookqueue_retry`` what to do. This plugin wraps
that decision and makes it "again, now" for exactly those tasks, whatever retry policy is
installed (a policy's backoff is for failures of the work itself, and this was not one), so a
worker with a handler for the run's ``module_id`` reruns it from ``run.parameters`` straight
away. Every other decision passes through unchanged. The check is one dict lookup, and the
hook runs only on failures, never on the hot path.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from datetime import datetime

from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import Failure, RetryDecision, Task

#: The task header the adapter writes on runs' tasks: ``{"run_id", "module_name",
#: "worker_id", "start"}``.
ADAPTER_HEADER = "hookqueue_adapter"


def rerun_now(task: Task, failure: Failure, now: datetime) -> RetryDecision | None:
    """ "Again, now" if ``task`` is a run whose own process lost its lease, else None."""
    if failure.kind != "crash":
        return None
    header = task.headers.get(ADAPTER_HEADER)
    if not isinstance(header, Mapping) or header.get("worker_id") != task.locked_by:
        return None
    return RetryDecision.at(
        now,
        reason=(
            f"the process running run {header.get('run_id')!r} stopped renewing its lease; "
            "a worker reruns it from its parameters"
        ),
    )


@hookimpl(wrapper=True)
def hookqueue_retry(
    task: Task, failure: Failure, now: datetime
) -> Generator[None, RetryDecision, RetryDecision]:
    """**decision** (as a wrapper) — a run's task whose in-process attempt lost its lease runs
    again now; every other decision is returned unchanged.

    A wrapper rather than a ``tryfirst`` answer, so that a global retry policy registered in
    code (also ``tryfirst``) cannot delay the rerun. The queue still ends the task ``failed``
    once ``max_attempts`` is used up.
    """
    decision = yield
    return rerun_now(task, failure, now) or decision
