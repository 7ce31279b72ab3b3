"""One attempt of one task: call its handler through ``hookqueue_execute`` and turn what
happened into a :class:`~hookqueue.core.storage.Settlement`.

Shared by the worker (:mod:`hookqueue.core.worker`, many attempts at once) and in-process
runs (:mod:`hookqueue.core.inline`, one at a time), so a task ends the same way whichever
runs it:

- the handler returns a JSON value → ``complete`` with it as the result;
- it raises, times out, or returns something that is not JSON → ``hookqueue_retry`` decides:
  ``retry`` at an instant, or ``fail``;
- it is cancelled — on request (``cancelled``), by shutdown (``release``: the attempt is
  given back uncounted) or because the lease was lost (nothing is written: another worker
  owns the task now).
"""

from __future__ import annotations

import asyncio
import logging
import traceback

import attrs

from .encoding import encode_json
from .errors import HandlerNotFound, TaskCancelled, ValidationError
from .execution import Execution, set_current_execution
from .models import Failure, HandlerSpec, Task
from .runtime import QueueRuntime
from .storage import Settlement

log = logging.getLogger("hookqueue.worker")


@attrs.define
class WorkerStats:
    """Counts of what a worker (or an in-process run) did since it started."""

    #: attempts finished (any outcome)
    processed: int = 0
    completed: int = 0
    failed: int = 0
    #: attempts that failed and were scheduled to run again
    retried: int = 0
    cancelled: int = 0
    #: leases given back unfinished at shutdown
    released: int = 0
    #: leases lost to another worker (this worker was too slow to renew)
    lost: int = 0

    def count(self, settlements: list[Settlement]) -> None:
        """Add the outcomes of finished attempts."""
        for s in settlements:
            if s.kind == "release":
                self.released += 1
                continue
            self.processed += 1
            if s.kind == "complete":
                self.completed += 1
            elif s.kind == "fail":
                self.failed += 1
            elif s.kind == "retry":
                self.retried += 1
            elif s.kind == "cancelled":
                self.cancelled += 1


def describe_stats(stats: WorkerStats) -> str:
    """One line for logs and the CLI."""
    return (
        f"{stats.processed} processed: {stats.completed} completed, {stats.failed} failed, "
        f"{stats.retried} retried, {stats.cancelled} cancelled; {stats.released} released"
    )


def error_failure(exc: BaseException) -> Failure:
    """The failure of an attempt whose handler raised ``exc``, with its traceback."""
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return Failure(
        kind="error",
        message=message,
        exception=exc,
        traceback="".join(traceback.format_exception(exc)),
    )


def no_handler(runtime: QueueRuntime, task: Task, worker_id: str) -> Settlement:
    """The outcome of a leased task whose type has no handler here (``hookqueue_retry`` is
    asked, as for any failure)."""
    error = HandlerNotFound(task.task_type, runtime.handlers.get_registered_types())
    log.error("worker %s: task %d: %s", worker_id, task.id, error)
    failure = Failure(kind="no_handler", message=str(error), exception=error)
    return runtime.decide_retry(task, failure, None)


async def run_attempt(
    runtime: QueueRuntime, task: Task, spec: HandlerSpec, execution: Execution
) -> Settlement | None:
    """Run one attempt of ``task`` with its handler ``spec`` on the running loop.

    :param execution: the attempt's context (its cancellation token and reason); it becomes
        this asyncio task's current execution, visible to the handler.
    :returns: the settlement to write, with the attempt's duration; None when the lease was
        lost (another worker owns the task now: nothing may be written).
    """
    set_current_execution(execution)  # this asyncio task's own context
    clock = runtime.clock
    started = clock.monotonic()
    timeout = task.timeout if task.timeout is not None else spec.timeout
    settlement: Settlement | None = None
    failure: Failure | None = None
    deadline: asyncio.Timeout | None = None
    worker_id = execution.worker_id
    try:
        awaitable = runtime.hooks.execute(task, spec, worker_id)
        if timeout is None:  # most tasks: no timeout context to enter and leave
            result = await awaitable
        else:
            async with asyncio.timeout(timeout) as deadline:
                result = await awaitable
    except asyncio.CancelledError:
        reason = execution.cancel_reason or "cancelled"
        if reason == "shutdown":
            settlement = Settlement(task_id=task.id, kind="release")
        elif reason == "lease lost":
            settlement = None  # another worker owns the task now; write nothing
        else:
            settlement = Settlement(task_id=task.id, kind="cancelled", error=f"cancelled: {reason}")
    except TimeoutError as exc:
        if deadline is not None and deadline.expired() and timeout is not None:
            execution.cancel("timeout")  # sync handlers can see it through the token
            failure = Failure(
                kind="timeout",
                message=f"timed out after {timeout:g}s (attempt {task.attempts} of {task.max_attempts})",
                exception=exc,
            )
        else:  # the handler's own TimeoutError (a socket, a lock): an ordinary error
            failure = error_failure(exc)
    except TaskCancelled as exc:
        reason = execution.cancel_reason or str(exc)
        if reason == "shutdown":
            settlement = Settlement(task_id=task.id, kind="release")
        else:
            settlement = Settlement(task_id=task.id, kind="cancelled", error=f"cancelled: {reason}")
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            log.error(
                "worker %s: the handler of task %d (%s) raised %s; the task fails and the worker goes on",
                worker_id,
                task.id,
                task.task_type,
                type(exc).__name__,
            )
        failure = error_failure(exc)
    else:
        try:
            result_json = None if result is None else encode_json("result", result)
        except ValidationError as exc:
            failure = Failure(
                kind="bad_result",
                message=f"the handler returned a value that is not JSON: {exc.problem}",
                exception=exc,
            )
        else:
            # The common outcome is built once, with its duration (no attrs.evolve).
            return Settlement.completed(task, result_json, clock.monotonic() - started)
    if failure is not None:
        try:
            settlement = runtime.decide_retry(task, failure, spec)
        except Exception as exc:  # a broken retry plugin: fail the task, keep the worker
            log.exception("worker %s: hookqueue_retry raised for task %d", worker_id, task.id)
            settlement = Settlement(
                task_id=task.id,
                kind="fail",
                error=f"{failure.message} (the retry policy raised {type(exc).__name__}: {exc})",
            )
    if settlement is not None:
        settlement = attrs.evolve(settlement, duration=clock.monotonic() - started)
    return settlement


__all__ = ["WorkerStats", "describe_stats", "error_failure", "no_handler", "run_attempt"]
