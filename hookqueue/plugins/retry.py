"""Retry policies: the first-party answer to ``hookqueue_retry``.

The module itself is the ``retry`` plugin (entry point ``retry = "hookqueue.plugins.retry"``).
Its module-level hooks give the default behaviour:

- a failed attempt of kind ``error``, ``timeout`` or ``crash`` runs again after an exponential
  backoff (:data:`DEFAULT_POLICY`: 1 s, 2 s, 4 s, … capped at 300 s, with equal jitter);
  ``no_handler`` and ``bad_result`` failures end the task at once;
- a task enqueued without ``max_attempts`` gets 5 (the policy's ``max_attempts``).

Choosing a policy:

- globally, by registering a configured instance: ``Queue(path, plugins=[FixedDelay(delay=30)])``
  — its hooks are ``tryfirst``, so it answers before the module default;
- per task type, on the handler registration:
  ``registry.register_handler("email", send, options={"retry": ExponentialBackoff(cap=60)})``
  — every implementation looks at ``handler.options["retry"]`` first, so a per-type policy wins
  over a global one.

Blocking the plugin by name (``Queue(..., block=["retry"])``) leaves the core's behaviour: one
attempt, no retry. A registered policy instance keeps working when the module is blocked.

A handler asks for another attempt at a given time by raising
:class:`~hookqueue.core.errors.RetryLater`; every policy here honours it, still bounded by the
task's ``max_attempts``.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Generator, Iterable
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal, Protocol, cast

import attrs

from hookqueue.core.errors import RetryLater, ValidationError
from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import Failure, HandlerSpec, NewTask, RetryDecision, Task

log = logging.getLogger("hookqueue.plugins.retry")

#: How a computed delay is randomised (see :class:`RetryPolicy`).
Jitter = Literal["full", "equal", "none"]
JITTERS: tuple[str, ...] = ("full", "equal", "none")

#: Every kind of failure the core reports (``Failure.kind``).
FAILURE_KINDS = frozenset({"error", "timeout", "crash", "no_handler", "bad_result"})
#: The kinds retried unless a policy says otherwise: transient by nature. ``no_handler`` and
#: ``bad_result`` fail the same way on every attempt, so retrying them only delays the error.
RETRIED_KINDS = frozenset({"error", "timeout", "crash"})

#: The key of a handler registration's ``options`` that holds its task type's policy.
OPTION = "retry"

#: The longest delay a policy may compute (ten years): keeps ``now + delay`` a valid datetime.
MAX_DELAY_SECONDS = 10 * 365 * 24 * 3600.0


# ---------------------------------------------------------------------------------------------
# validation helpers (attrs validators and converters)
# ---------------------------------------------------------------------------------------------


def _seconds(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_DELAY_SECONDS
    ):
        raise ValidationError(
            attribute.alias or attribute.name,
            value,
            f"must be a number of seconds from 0 to {MAX_DELAY_SECONDS:.0f} (ten years)",
            "e.g. 1.5, 30 or 300",
        )


def _max_attempts(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(
            "max_attempts",
            value,
            "must be an integer >= 1 (it counts the first attempt)",
            "use 1 for no retry, 5 for four retries",
        )


def _factor(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 1
    ):
        raise ValidationError(
            "factor", value, "must be a finite number >= 1", "use 2 to double each delay"
        )


def _jitter(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in JITTERS:
        raise ValidationError(
            "jitter",
            value,
            "is not a jitter mode",
            "use 'full' (0..delay), 'equal' (delay/2..delay) or 'none'",
        )


def _exception_types(value: Any, field: str = "retry_on") -> tuple[type[BaseException], ...]:
    """Accept one exception class or an iterable of them; refuse anything else."""
    if isinstance(value, type):
        value = (value,)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValidationError(
            field,
            value,
            "must be an exception class or a tuple of them",
            f"e.g. {field}=(ConnectionError, TimeoutError)",
        )
    types = tuple(value)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise ValidationError(
                field,
                t,
                "is not an exception class",
                f"name classes, not instances or strings: {field}=(ConnectionError,)",
            )
    return types


def _optional_exception_types(value: Any) -> tuple[type[BaseException], ...] | None:
    return None if value is None else _exception_types(value, "retry_on")


def _give_up_types(value: Any) -> tuple[type[BaseException], ...]:
    return _exception_types(value, "give_up_on")


def _kinds(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        value = (value,)
    try:
        kinds = frozenset(value)
    except TypeError:
        kinds = frozenset({repr(value)})
    unknown = kinds - FAILURE_KINDS
    if unknown:
        raise ValidationError(
            "retry_kinds",
            sorted(unknown),
            "are not failure kinds",
            f"choose from {sorted(FAILURE_KINDS)}",
        )
    return kinds


# ---------------------------------------------------------------------------------------------
# policies
# ---------------------------------------------------------------------------------------------


class Policy(Protocol):
    """What hookqueue needs of a per-type policy (``options={"retry": policy}``).
    :class:`RetryPolicy` and its subclasses are the ready-made ones."""

    @property
    def max_attempts(self) -> int:
        """The attempt budget given to tasks of the type enqueued without their own."""
        ...

    def decide(self, task: Task, failure: Failure, now: datetime) -> RetryDecision:
        """Retry at a time, or give up."""
        ...


@attrs.frozen(kw_only=True, eq=False)
class RetryPolicy:
    """Base class of retry policies: what is retried, how often, and after how long.

    A subclass supplies :meth:`base_delay`; this class decides the rest in :meth:`decide`, in
    this order:

    1. a handler that raised :class:`~hookqueue.core.errors.RetryLater` runs again at the time
       it asked for (or after :meth:`delay` when it named none), whatever the filters below say;
    2. a failure whose kind is not in ``retry_kinds`` gives up;
    3. for ``error`` failures (the handler raised): an exception in ``give_up_on`` gives up;
       with ``retry_on`` set, only exceptions of those types are retried, never others;
    4. otherwise the task runs again after :meth:`delay` seconds.

    The attempt budget is the queue's to enforce: a retry decided for a task that has used
    ``task.max_attempts`` attempts is overruled, and the task fails with
    ``(gave up: all N attempts used)`` added to its error.

    An instance is a plugin: ``Queue(path, plugins=[policy])`` makes it the global policy (its
    hooks are ``tryfirst``, so it answers before the ``retry`` module's default). It is also a
    per-type policy: ``register_handler(..., options={"retry": policy})``. Either way the
    per-type policy of the failing task's handler wins. Only one global policy may be
    registered (they share the plugin name ``retry-policy``).

    Instances are immutable and safe to share between threads and workers.
    """

    #: The plugin name a registered instance gets (one global policy per queue).
    hookqueue_name: ClassVar[str] = "retry-policy"

    #: The most attempts a task gets, counting the first, when enqueued without its own
    #: ``max_attempts``.
    max_attempts: int = attrs.field(default=5, validator=_max_attempts)
    #: Exception types that are retried (``error`` failures); None retries every exception.
    retry_on: tuple[type[BaseException], ...] | None = attrs.field(
        default=None, converter=_optional_exception_types
    )
    #: Exception types that are never retried, even when ``retry_on`` would match.
    give_up_on: tuple[type[BaseException], ...] = attrs.field(default=(), converter=_give_up_types)
    #: Failure kinds that are retried; see :data:`FAILURE_KINDS`.
    retry_kinds: frozenset[str] = attrs.field(default=RETRIED_KINDS, converter=_kinds)
    #: ``"full"``: a uniform delay in ``[0, d]``; ``"equal"``: in ``[d/2, d]``; ``"none"``: ``d``.
    jitter: Jitter = attrs.field(default="none", validator=_jitter)
    #: The random source for jitter; pass ``random.Random(seed)`` for repeatable delays.
    rng: random.Random = attrs.field(factory=random.Random, repr=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    def base_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), before jitter."""
        raise NotImplementedError(f"{type(self).__name__} must implement base_delay(attempt)")

    def delay_bounds(self, attempt: int) -> tuple[float, float]:
        """The smallest and largest delay :meth:`delay` can return after ``attempt``."""
        raw = self.base_delay(attempt)
        if self.jitter == "full":
            return 0.0, raw
        if self.jitter == "equal":
            return raw / 2, raw
        return raw, raw

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt``, jitter applied."""
        low, high = self.delay_bounds(attempt)
        if low == high:
            return low
        with self._lock:  # random.Random is not safe to share between threads
            value = self.rng.uniform(low, high)
        return min(max(value, low), high)  # uniform() may round just past its bounds

    def refusal(self, failure: Failure) -> str | None:
        """Why this failure is not retried, or None when it may be (steps 2 and 3 above)."""
        name = type(self).__name__
        if failure.kind not in self.retry_kinds:
            return f"{name} does not retry {failure.kind!r} failures (retry_kinds)"
        exc = failure.exception
        if failure.kind == "error" and exc is not None:
            if self.give_up_on and isinstance(exc, self.give_up_on):
                return f"{name} never retries {type(exc).__name__} (give_up_on)"
            if self.retry_on is not None and not isinstance(exc, self.retry_on):
                listed = ", ".join(t.__name__ for t in self.retry_on) or "nothing"
                return f"{name} retries only {listed}, not {type(exc).__name__} (retry_on)"
        return None

    def decide(self, task: Task, failure: Failure, now: datetime) -> RetryDecision:
        """Decide what happens after a failed attempt of ``task``.

        :param task: the task, with ``attempts`` counting the failed attempt.
        :param failure: what went wrong.
        :param now: the current instant (aware).
        :returns: ``RetryDecision.at(now + delay)`` or ``RetryDecision.give_up(reason)``. It does
            not look at the attempt budget: the queue overrules a retry past ``max_attempts``.
        :raises ValidationError: the handler raised ``RetryLater`` with an unusable time.
        """
        exc = failure.exception
        if isinstance(exc, RetryLater):
            when = self._asked_time(exc, task.attempts, now)
            return RetryDecision.at(when, f"the handler asked to retry at {when.isoformat()}")
        reason = self.refusal(failure)
        if reason is not None:
            return RetryDecision.give_up(reason)
        seconds = self.delay(task.attempts)
        return RetryDecision.at(
            now + timedelta(seconds=seconds),
            f"attempt {task.attempts} of {task.max_attempts} failed ({failure.kind}); "
            f"next attempt in {seconds:.3f}s",
        )

    def _asked_time(self, exc: RetryLater, attempt: int, now: datetime) -> datetime:
        if exc.delay is not None and exc.run_after is not None:
            raise ValidationError(
                "RetryLater",
                f"delay={exc.delay!r}, run_after={exc.run_after!r}",
                "names both a delay and a time",
                "raise RetryLater(delay=seconds) or RetryLater(run_after=aware_datetime)",
            )
        if exc.run_after is not None:
            when = exc.run_after
            if not isinstance(when, datetime) or when.utcoffset() is None:
                raise ValidationError(
                    "RetryLater.run_after",
                    when,
                    "must be an aware datetime",
                    "e.g. RetryLater(run_after=datetime.now(timezone.utc) + timedelta(minutes=5))",
                )
            return when
        if exc.delay is None:
            return now + timedelta(seconds=self.delay(attempt))
        seconds = exc.delay
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or not 0 <= seconds <= MAX_DELAY_SECONDS
        ):
            raise ValidationError(
                "RetryLater.delay",
                seconds,
                f"must be a number of seconds from 0 to {MAX_DELAY_SECONDS:.0f}",
                "e.g. RetryLater(delay=30)",
            )
        return now + timedelta(seconds=seconds)

    # -- as a plugin ---------------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def hookqueue_retry(
        self, task: Task, failure: Failure, handler: HandlerSpec | None, now: datetime
    ) -> RetryDecision:
        """The global policy's answer (a per-type policy on ``handler`` wins)."""
        return decide(task, failure, handler, now, self)

    # ``trylast`` makes this the innermost wrapper: it fills the attempt budget before the
    # ``retry`` module's own wrapper would.
    @hookimpl(wrapper=True, trylast=True)
    def hookqueue_enqueue(
        self, queue: Any, new_tasks: list[NewTask]
    ) -> Generator[None, list[NewTask], list[NewTask]]:
        """Give tasks without ``max_attempts`` this policy's (or their type's policy's)."""
        result = yield
        return with_max_attempts(queue, result, self)


def _delay_field(default: float) -> Any:
    return attrs.field(default=default, validator=_seconds)


@attrs.frozen(kw_only=True, eq=False)
class ExponentialBackoff(RetryPolicy):
    """Wait ``base * factor ** (attempt - 1)`` seconds, at most ``cap``, then apply jitter.

    The defaults wait about 1, 2, 4, 8 s (equal jitter: each between half and all of that)
    and never more than 5 minutes. ``jitter="full"`` spreads retries the most (AWS's advice for
    many clients retrying one service); ``"none"`` is exact.
    """

    #: The first delay, in seconds.
    base: float = _delay_field(1.0)
    #: Each delay is the previous one times this (>= 1).
    factor: float = attrs.field(default=2.0, validator=_factor)
    #: No delay exceeds this many seconds (before jitter).
    cap: float = _delay_field(300.0)
    jitter: Jitter = attrs.field(default="equal", validator=_jitter)

    def base_delay(self, attempt: int) -> float:
        """``min(cap, base * factor ** (attempt - 1))``, without overflowing."""
        exponent = max(attempt - 1, 0)
        try:
            raw = self.base * self.factor**exponent
        except OverflowError:
            return float(self.cap)
        return float(min(self.cap, raw))


@attrs.frozen(kw_only=True, eq=False)
class FixedDelay(RetryPolicy):
    """Wait the same ``delay`` seconds after every failed attempt."""

    #: Seconds between attempts.
    delay_seconds: float = attrs.field(default=10.0, validator=_seconds, alias="delay")

    def base_delay(self, attempt: int) -> float:
        """Always ``delay``."""
        return float(self.delay_seconds)


@attrs.frozen(kw_only=True, eq=False)
class LinearBackoff(RetryPolicy):
    """Wait ``initial + increment * (attempt - 1)`` seconds, at most ``cap``."""

    #: The first delay, in seconds.
    initial: float = _delay_field(1.0)
    #: Added for each further attempt, in seconds.
    increment: float = _delay_field(1.0)
    #: No delay exceeds this many seconds (before jitter).
    cap: float = _delay_field(300.0)

    def base_delay(self, attempt: int) -> float:
        """``min(cap, initial + increment * (attempt - 1))``."""
        return float(min(self.cap, self.initial + self.increment * max(attempt - 1, 0)))


@attrs.frozen(kw_only=True, eq=False)
class NoRetry(RetryPolicy):
    """One attempt: no failure is retried.

    A handler's ``RetryLater`` is still honoured, within the task's ``max_attempts`` — which
    leaves room for it only when the task was enqueued with an explicit ``max_attempts``
    above 1.
    """

    max_attempts: int = attrs.field(default=1, validator=_max_attempts)
    retry_kinds: frozenset[str] = attrs.field(default=frozenset(), converter=_kinds)

    def base_delay(self, attempt: int) -> float:
        """0: a ``RetryLater`` without a time runs again at once."""
        return 0.0


# ---------------------------------------------------------------------------------------------
# choosing the policy, and the module-level default hooks
# ---------------------------------------------------------------------------------------------

#: The policy the ``retry`` plugin applies when no policy is configured: five attempts,
#: exponential backoff from 1 s, capped at 300 s, equal jitter.
DEFAULT_POLICY = ExponentialBackoff()


def policy_for(handler: HandlerSpec | None, fallback: Policy) -> Policy:
    """The policy for a task type: ``handler.options["retry"]`` when set, else ``fallback``.

    :raises ValidationError: the option holds something that is not a retry policy.
    """
    if handler is None:
        return fallback
    chosen = handler.options.get(OPTION)
    if chosen is None:
        return fallback
    attempts = getattr(chosen, "max_attempts", None)
    if (
        not callable(getattr(chosen, "decide", None))
        or isinstance(attempts, bool)
        or not isinstance(attempts, int)
    ):
        raise ValidationError(
            f"options[{OPTION!r}] of task type {handler.task_type!r}",
            chosen,
            "is not a retry policy (it needs decide(task, failure, now) and max_attempts)",
            "pass ExponentialBackoff(...), FixedDelay(...), LinearBackoff(...), NoRetry() or "
            "a RetryPolicy subclass",
        )
    return cast(Policy, chosen)


def decide(
    task: Task,
    failure: Failure,
    handler: HandlerSpec | None,
    now: datetime,
    fallback: Policy,
) -> RetryDecision:
    """Apply the task type's policy, else ``fallback``.

    A broken per-type option gives up (and logs) instead of raising: this also runs inside the
    store's lease transaction for crashed tasks, where an exception would stop every lease.
    """
    try:
        policy = policy_for(handler, fallback)
    except ValidationError as exc:
        log.error("task %d: %s; the task fails", task.id, exc)
        return RetryDecision.give_up(str(exc))
    return policy.decide(task, failure, now)


def with_max_attempts(queue: Any, new_tasks: list[NewTask], fallback: Policy) -> list[NewTask]:
    """``new_tasks`` with ``max_attempts`` filled in where the caller left it None (the
    others are returned as they are).

    The value comes from the task type's policy when this process has a handler registered
    for the type (``queue.handlers``), else from ``fallback``.

    :raises ValidationError: a type's ``retry`` option is not a retry policy.
    """
    handlers = getattr(queue, "handlers", None)
    out: list[NewTask] = []
    for new_task in new_tasks:
        if new_task.max_attempts is not None:
            out.append(new_task)
            continue
        spec = handlers.find(new_task.task_type) if handlers is not None else None
        policy = policy_for(spec, fallback)
        out.append(attrs.evolve(new_task, max_attempts=policy.max_attempts))
    return out


@hookimpl
def hookqueue_retry(
    task: Task, failure: Failure, handler: HandlerSpec | None, now: datetime
) -> RetryDecision:
    """The ``retry`` plugin's default: the type's policy, else :data:`DEFAULT_POLICY`."""
    return decide(task, failure, handler, now, DEFAULT_POLICY)


@hookimpl(wrapper=True)
def hookqueue_enqueue(
    queue: Any, new_tasks: list[NewTask]
) -> Generator[None, list[NewTask], list[NewTask]]:
    """Give tasks without ``max_attempts`` their type's policy's, else 5."""
    result = yield
    return with_max_attempts(queue, result, DEFAULT_POLICY)


__all__ = [
    "DEFAULT_POLICY",
    "FAILURE_KINDS",
    "OPTION",
    "Policy",
    "RETRIED_KINDS",
    "ExponentialBackoff",
    "FixedDelay",
    "Jitter",
    "LinearBackoff",
    "NoRetry",
    "RetryPolicy",
    "decide",
    "policy_for",
    "with_max_attempts",
]
