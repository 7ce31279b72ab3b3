"""The core's own answers to the hooks, registered ``trylast`` like any plugin.

With every other plugin blocked these make hookqueue a correct FIFO queue that runs each task
once: enqueue validates, lease takes tasks in due order, execute calls the handler, retry gives
up — except after a crash (an expired lease), where the task runs again while it has attempts
left. Any plugin's answer comes before these.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .clock import to_us
from .errors import StoreError, ValidationError
from .execution import current_execution_or_none
from .handlers import check_task_type, check_timeout, check_unicode, is_async_handler
from .hookspecs import hookimpl
from .models import Failure, HandlerSpec, LeasePlan, NewTask, RetryDecision, SortKey, Task
from .store import QueueDatabase

MAX_NAME_LENGTH = 200
MAX_KEY_LENGTH = 500
#: SQLite integers are signed 64-bit.
_INT64 = 2**63 - 1

FIFO_PLAN = LeasePlan(order=(SortKey.FIFO,), name="fifo")


def _check_int(field: str, value: Any, *, minimum: int | None = None, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, value, "must be an integer", fix)
    if not -_INT64 <= value <= _INT64:
        raise ValidationError(field, value, "is outside the 64-bit integer range", fix)
    if minimum is not None and value < minimum:
        raise ValidationError(field, value, f"must be >= {minimum}", fix)


def _check_priority(value: Any) -> None:
    _check_int("priority", value, fix="use an int; lower runs first, default 100")


def _check_max_attempts(value: Any) -> None:
    if value is not None:
        _check_int(
            "max_attempts",
            value,
            minimum=1,
            fix="use 1 for a single attempt, or more to allow retries",
        )


def _check_queue(value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
        raise ValidationError(
            "queue",
            value,
            f"must be a non-empty string of at most {MAX_NAME_LENGTH} characters",
            "use a short name such as 'default' or 'emails'",
        )
    check_unicode("queue", value)


def _check_key(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value or len(value) > MAX_KEY_LENGTH:
        raise ValidationError(
            "idempotency_key",
            value,
            f"must be a non-empty string of at most {MAX_KEY_LENGTH} characters",
            "use a stable string such as f'cleanup-{date}', or None",
        )
    check_unicode("idempotency_key", value)


def _check_headers(value: Any) -> None:
    if not (type(value) is dict or isinstance(value, Mapping)) or not all(
        isinstance(k, str) for k in value
    ):
        raise ValidationError(
            "headers", value, "must be a mapping with string keys", "e.g. {'tenant': 'a'}"
        )


def _check_run_after(value: Any) -> None:
    if value is not None:
        to_us(value, "run_after")


#: Each field's check (the payload is checked as it is encoded, before the write).
_FIELD_CHECKS: tuple[tuple[str, Any], ...] = (
    ("task_type", check_task_type),
    ("priority", _check_priority),
    ("max_attempts", _check_max_attempts),
    ("queue", _check_queue),
    ("idempotency_key", _check_key),
    ("timeout", check_timeout),
    ("headers", _check_headers),
    ("run_after", _check_run_after),
)


def validate_new_task(new_task: NewTask) -> NewTask:
    """Check every field of a task about to be written; raise ValidationError naming the field."""
    for name, check in _FIELD_CHECKS:
        check(getattr(new_task, name))
    return new_task


def validate_changes(before: NewTask, after: NewTask) -> None:
    """Check the fields of ``after`` that are not the very objects ``before`` holds (what a
    plugin changed; ``before`` was checked already); raise ValidationError naming the field."""
    # NewTask is not slotted: its fields are in __dict__ (two dict reads per field).
    new, old = after.__dict__, before.__dict__
    for name, check in _FIELD_CHECKS:
        value = new[name]
        if value is not old[name]:
            check(value)


#: ``is_async_handler`` per handler callable (it inspects code flags on every call); weak,
#: so handlers registered for a while (the adapter's closures) are not kept alive by it.
_ASYNC_CACHE: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _is_async(fn: Any) -> bool:
    try:
        return _ASYNC_CACHE[fn]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable (or unhashable): ask every time
        return is_async_handler(fn)
    result = is_async_handler(fn)
    try:
        _ASYNC_CACHE[fn] = result
    except TypeError:
        pass
    return result


async def run_handler(task: Task, handler: HandlerSpec) -> Any:
    """Await an async handler, or run a sync one in the worker's executor with this context
    (so ``current_execution()`` works inside it)."""
    if _is_async(handler.handler):
        return await handler.handler(task)
    execution = current_execution_or_none()
    executor = execution.executor if execution is not None else None
    ctx = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, ctx.run, handler.handler, task)


#: URL schemes of stores that ship as extras: scheme -> the extra to install.
STORE_EXTRAS = {"postgresql": "postgres", "postgres": "postgres"}


def open_default_store(location: str, options: Mapping[str, Any]) -> QueueDatabase:
    """The embedded SQLite store for a file path or ``sqlite:///path``; any other URL is
    refused, naming the extra that provides it."""
    scheme, sep, rest = location.partition("://")
    if sep:
        if scheme.lower() != "sqlite":
            extra = STORE_EXTRAS.get(scheme.lower())
            fix = (
                f"pip install 'hookqueue[{extra}]' (and check that its plugin is not blocked: "
                "hookqueue plugins)"
                if extra
                else "use a file path, or install the plugin that provides this store"
            )
            raise StoreError(
                f"{_redact(location)}: no store is installed for {scheme}:// locations. Fix: {fix}"
            )
        location = rest
    return QueueDatabase(
        location,
        durability=options.get("durability", "full"),
        busy_timeout=options.get("busy_timeout", 10.0),
        vfs=options.get("vfs"),
        create=options.get("create", True),
    )


def _redact(location: str) -> str:
    """A URL without the password in it (``user:secret@`` becomes ``user:***@``)."""
    scheme, sep, rest = location.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return location
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


class CoreDefaults:
    """The built-in hook implementations (all ``trylast``). Registered as ``core``; cannot be
    blocked, since the core's calls rely on an answer."""

    @hookimpl(trylast=True)
    def hookqueue_store(self, location: str, options: Mapping[str, Any]) -> QueueDatabase:
        return open_default_store(location, options)

    @hookimpl(trylast=True)
    def hookqueue_enqueue(self, new_tasks: list[NewTask]) -> list[NewTask]:
        return list(new_tasks)  # the queue validates before and after the hook

    @hookimpl(trylast=True)
    def hookqueue_lease(self) -> LeasePlan:
        return FIFO_PLAN

    @hookimpl(trylast=True)
    def hookqueue_execute(self, task: Task, handler: HandlerSpec) -> Any:
        function = handler.handler
        if _is_async(function):
            # The handler's own coroutine: one coroutine less per task than run_handler's.
            return function(task)
        return run_handler(task, handler)

    @hookimpl(trylast=True)
    def hookqueue_retry(self, failure: Failure, now: datetime) -> RetryDecision:
        # Taking over a dead worker's task is mechanism, not policy: it runs again at once
        # while attempts remain (the queue enforces max_attempts). A failure the handler
        # reported is retried only if a retry plugin says so.
        if failure.kind == "crash":
            return RetryDecision.at(now, "the worker holding it stopped; running it again")
        return RetryDecision.give_up(f"no retry policy is active ({failure.kind})")
