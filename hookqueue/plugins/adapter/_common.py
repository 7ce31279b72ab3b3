"""Pieces both task managers share: argument checks and how a finished coroutine ends a run."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import Any

from hookqueue.core.clock import Clock, from_us
from hookqueue.core.errors import ValidationError

from .models import NoRunningLoop, Run, RunStatus

log = logging.getLogger("hookqueue.adapter")


def close_awaitable(coro: Any) -> None:
    """Close a coroutine that will never run, so Python does not warn it was never awaited."""
    close = getattr(coro, "close", None)
    if inspect.iscoroutine(coro) and close is not None:
        close()


def running_loop_for(method: str, coro: Any) -> asyncio.AbstractEventLoop:
    """The running loop, or :class:`NoRunningLoop` after closing ``coro``."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        close_awaitable(coro)
        raise NoRunningLoop(method) from None


def check_start_arguments(run: Any, coro: Any) -> None:
    """Refuse a ``start_task`` call whose arguments cannot work, closing ``coro``."""
    if not isinstance(run, Run):
        close_awaitable(coro)
        raise ValidationError(
            "run",
            run,
            "is not a Run",
            "build one: Run(run_id=..., module_id=..., module_name=..., "
            "status=RunStatus.QUEUED, created_at=datetime.now(timezone.utc))",
        )
    if not inspect.isawaitable(coro):
        hint = (
            f"call it: start_task(run, {getattr(coro, '__name__', 'fn')}())"
            if inspect.iscoroutinefunction(coro)
            else "pass a coroutine object, e.g. start_task(run, do_work())"
        )
        raise ValidationError("coro", coro, "is not awaitable", hint)


def mark_started(run: Run, clock: Clock) -> None:
    """RUNNING, with ``started_at`` now and the previous outcome cleared."""
    run.status = RunStatus.RUNNING
    run.started_at = from_us(clock.now_us())
    run.completed_at = None
    run.duration_seconds = None
    run.exit_code = None
    run.error_message = None


def finish_run(
    run: Run,
    task: asyncio.Future[Any],
    clock: Clock,
    started_monotonic: float,
    manager: str,
) -> tuple[RunStatus, Any]:
    """Record a finished coroutine's outcome on ``run``; log a failure (never raise it).

    :returns: ``(status, result)``; ``result`` is the return value or the exception.
    """
    run.completed_at = from_us(clock.now_us())
    run.duration_seconds = max(0.0, clock.monotonic() - started_monotonic)
    if task.cancelled():
        run.status = RunStatus.CANCELLED
        run.error_message = "cancelled"
        return RunStatus.CANCELLED, None
    exc = task.exception()
    if exc is not None:
        run.status = RunStatus.FAILED
        run.error_message = str(exc) or type(exc).__name__
        log.error(
            "%s: run %s (%s) failed: %s",
            manager,
            run.run_id,
            run.module_id,
            run.error_message,
            exc_info=exc,
        )
        return RunStatus.FAILED, exc
    run.status = RunStatus.COMPLETED
    run.exit_code = 0
    return RunStatus.COMPLETED, task.result()


def ensure_task(
    loop: asyncio.AbstractEventLoop, coro: Awaitable[Any], name: str
) -> asyncio.Future[Any]:
    """Schedule ``coro`` on ``loop`` now (its first step runs at the loop's next iteration)."""
    if inspect.iscoroutine(coro):
        return loop.create_task(coro, name=name)
    return asyncio.ensure_future(coro, loop=loop)
