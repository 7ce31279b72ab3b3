"""``TaskHandlerRegistry``: which callable runs which task type."""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .errors import HandlerAlreadyRegistered, HandlerNotFound, ValidationError
from .models import HandlerSpec

MAX_TASK_TYPE_LENGTH = 200
#: The longest attempt timeout accepted: a year (anything longer means "no limit": pass None).
MAX_TIMEOUT_SECONDS = 365 * 86400.0


def check_task_type(task_type: Any, field: str = "task_type") -> str:
    """Return ``task_type`` if it is a usable task type name, else raise ValidationError."""
    if not isinstance(task_type, str):
        raise ValidationError(
            field, task_type, "must be a string", "name the task type, e.g. 'send_email'"
        )
    if not task_type.strip():
        raise ValidationError(field, task_type, "is empty", "name the task type, e.g. 'send_email'")
    check_unicode(field, task_type)
    if len(task_type) > MAX_TASK_TYPE_LENGTH:
        raise ValidationError(
            field,
            task_type,
            f"is {len(task_type)} characters long (at most {MAX_TASK_TYPE_LENGTH})",
            "use a shorter name; put data in the payload",
        )
    return task_type


def check_unicode(field: str, value: str) -> None:
    """Refuse text that cannot be stored as UTF-8 (lone surrogates), naming ``field``."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValidationError(
                field,
                value,
                f"is not valid Unicode ({exc.reason})",
                "remove lone surrogates (decode bytes with errors='replace')",
            ) from None


def check_timeout(timeout: Any, field: str = "timeout") -> None:
    """Refuse an attempt timeout that is not a positive, finite number of seconds of at most
    :data:`MAX_TIMEOUT_SECONDS` (None, no limit, is fine), naming ``field``."""
    if timeout is None:
        return
    if not isinstance(timeout, bool) and isinstance(timeout, int | float):
        try:
            seconds = float(timeout)  # an int too large for a float raises OverflowError
        except OverflowError:
            seconds = math.inf
        if math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_SECONDS:
            return
    raise ValidationError(
        field,
        timeout,
        f"must be a positive, finite number of seconds (at most {MAX_TIMEOUT_SECONDS:g})",
        "e.g. 30, or None for no limit",
    )


class TaskHandlerRegistry:
    """Maps task types to handlers. Thread-safe.

    A handler is ``async def handler(task)`` or ``def handler(task)``; it receives the
    :class:`~hookqueue.Task` and returns a JSON-serialisable result (or None).
    """

    def __init__(self) -> None:
        self._specs: dict[str, HandlerSpec] = {}
        self._lock = threading.Lock()

    def register_handler(
        self,
        task_type: str,
        handler: Callable[..., Any],
        description: str = "",
        allow_override: bool = False,
        *,
        timeout: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> HandlerSpec:
        """Register ``handler`` for ``task_type``.

        :param task_type: the task type name (1–200 characters).
        :param handler: a callable taking the task.
        :param description: shown by ``hookqueue plugins`` and the CLI.
        :param allow_override: replace an existing registration instead of refusing.
        :param timeout: seconds one attempt may take (tasks enqueued with their own timeout
            keep it).
        :param options: per-type settings for plugins, e.g. ``{"retry": ExponentialBackoff()}``.
        :raises HandlerAlreadyRegistered: the type has a handler and ``allow_override`` is False.
        :raises ValidationError: a bad task type, handler or timeout.
        """
        check_task_type(task_type)
        if not callable(handler):
            raise ValidationError(
                "handler", handler, "is not callable", "pass a function: def handler(task): ..."
            )
        check_timeout(timeout)
        spec = HandlerSpec(
            task_type=task_type,
            handler=handler,
            description=description,
            timeout=timeout,
            options=dict(options or {}),
        )
        return self.add(spec, allow_override=allow_override)

    def add(self, spec: HandlerSpec, *, allow_override: bool = False) -> HandlerSpec:
        """Register a ready-made :class:`~hookqueue.core.models.HandlerSpec`."""
        with self._lock:
            if spec.task_type in self._specs and not allow_override:
                raise HandlerAlreadyRegistered(spec.task_type)
            self._specs[spec.task_type] = spec
        return spec

    def handler(
        self, task_type: str, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`register_handler`::

        @registry.handler("send_email", timeout=30)
        async def send_email(task): ...
        """

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register_handler(task_type, fn, **kwargs)
            return fn

        return decorate

    def get_handler(self, task_type: str) -> Callable[..., Any]:
        """The handler for ``task_type``.

        :raises HandlerNotFound: naming the type and listing the registered ones.
        """
        return self.get_spec(task_type).handler

    def get_spec(self, task_type: str) -> HandlerSpec:
        """The full registration for ``task_type``. :raises HandlerNotFound:"""
        try:
            return self._specs[task_type]
        except KeyError:
            raise HandlerNotFound(task_type, self.get_registered_types()) from None

    def find(self, task_type: str) -> HandlerSpec | None:
        """The registration for ``task_type``, or None."""
        return self._specs.get(task_type)

    def is_registered(self, task_type: str) -> bool:
        """True if ``task_type`` has a handler."""
        return task_type in self._specs

    def get_registered_types(self) -> list[str]:
        """The registered task types, sorted."""
        return sorted(self._specs)

    def unregister_handler(self, task_type: str) -> bool:
        """Remove the handler for ``task_type``. :returns: True if there was one."""
        with self._lock:
            return self._specs.pop(task_type, None) is not None

    def specs(self) -> list[HandlerSpec]:
        """Every registration, sorted by task type."""
        return [self._specs[t] for t in sorted(self._specs)]

    def __contains__(self, task_type: object) -> bool:
        return task_type in self._specs

    def __len__(self) -> int:
        return len(self._specs)


def is_async_handler(handler: Callable[..., Any]) -> bool:
    """True if calling ``handler`` returns a coroutine (async def, or a callable object whose
    ``__call__`` is async)."""
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - we need the bound method itself
    return call is not None and inspect.iscoroutinefunction(call)
