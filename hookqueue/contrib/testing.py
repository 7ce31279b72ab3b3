"""Helpers for testing code that uses hookqueue, handlers, and hookqueue plugins.

Plain functions and classes, usable with any test runner; the pytest fixtures in
:mod:`hookqueue.contrib.pytest_plugin` are thin wrappers around them. Nothing here mocks the
store: every helper reads or drives a real database.

- :func:`run_due` / :class:`InProcessWorker` — run the tasks that are due now, one at a time,
  in the test's own process, through the same hooks as a worker.
- :func:`enqueued`, :func:`assert_enqueued`, :func:`assert_not_enqueued` — what is in the
  queue, by type, payload subset, other fields and count.
- :class:`HookRecorder` — which hooks ran, with which arguments, built on pluggy's
  ``PluginManager.add_hookcall_monitoring``.
- :func:`matches` — the matching rule the assertions use.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
import pluggy

from hookqueue.core.clock import FakeClock, from_us, to_us
from hookqueue.core.errors import ValidationError
from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.inline import (
    INLINE_WORKER_ID,
    InlineRun,
    close_runner,
    run_due,
    run_due_async,
)
from hookqueue.core.models import Task, TaskEvent
from hookqueue.core.queue import Queue

__all__ = [
    "INLINE_WORKER_ID",
    "HookRecorder",
    "InProcessWorker",
    "InlineRun",
    "RecordedHookCall",
    "assert_enqueued",
    "assert_not_enqueued",
    "close_runner",
    "enqueued",
    "last_task_id",
    "matches",
    "run_due",
    "run_due_async",
]

# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------


def matches(actual: Any, expected: Any) -> bool:
    """True if ``actual`` matches ``expected``, by the first rule that applies:

    1. ``expected == actual`` (so ``unittest.mock.ANY`` matches anything, and enum members
       match their string values: ``status="completed"``);
    2. ``expected`` is a class: ``isinstance(actual, expected)``;
    3. ``expected`` is a mapping: a *subset* match — each of its keys must be in ``actual``
       (a mapping) or an attribute of ``actual`` (an attrs record such as a Task), with a
       matching value (recursively), so ``{"task_type": "add", "payload": {"a": 1}}`` matches
       a Task whose payload has ``a == 1`` among other keys;
    4. ``expected`` and ``actual`` are lists or tuples of the same length: item by item;
    5. ``expected`` is any other callable: ``bool(expected(actual))`` (a predicate, e.g.
       ``lambda t: t.attempts > 1``).
    """
    try:
        if expected == actual:
            return True
    except Exception:  # a strange __eq__ is a mismatch, not a crash of the assertion
        pass
    if isinstance(expected, type):
        return isinstance(actual, expected)
    if isinstance(expected, Mapping):
        for key, value in expected.items():
            if isinstance(actual, Mapping):
                if key not in actual or not matches(actual[key], value):
                    return False
            elif not isinstance(key, str) or not hasattr(actual, key):
                return False
            elif not matches(getattr(actual, key), value):
                return False
        return True
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        return len(expected) == len(actual) and all(
            matches(a, e) for a, e in zip(actual, expected, strict=True)
        )
    if callable(expected):
        return bool(expected(actual))
    return False


def _short(value: Any, limit: int = 120) -> str:
    """A one-line description of a hook argument for assertion messages."""
    if isinstance(value, Task):
        return (
            f"Task(id={value.id}, task_type={value.task_type!r}, status={value.status.value}, "
            f"attempts={value.attempts}/{value.max_attempts}, payload={_short(value.payload, 60)})"
        )
    if isinstance(value, TaskEvent):
        return f"TaskEvent({value.kind.value}, task={value.task.id}, worker={value.worker_id!r})"
    if isinstance(value, Queue):
        return repr(value)
    if isinstance(value, list | tuple) and value and isinstance(value[0], TaskEvent):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_expected(task_type: str | None, payload: Any, fields: Mapping[str, Any]) -> str:
    parts = []
    if task_type is not None:
        parts.append(f"task_type={task_type!r}")
    if payload is not None:
        parts.append(f"payload matching {payload!r}")
    parts += [f"{k}={v!r}" for k, v in fields.items()]
    return ", ".join(parts) or "any task"


# ---------------------------------------------------------------------------------------------
# What is in the queue
# ---------------------------------------------------------------------------------------------

_TASK_FIELDS = frozenset(f.name for f in attrs.fields(Task)) | {"type"}


def last_task_id(queue: Queue) -> int:
    """The highest task id in the queue now (0 when empty): pass it as ``since=`` to look only
    at tasks enqueued afterwards."""
    newest = queue.list(limit=1, newest_first=True)
    return newest[0].id if newest else 0


def _all_tasks(queue: Queue, since: int | None) -> list[Task]:
    out: list[Task] = []
    after = since
    while True:
        page = queue.list(limit=1000, after_id=after)
        out += page
        if len(page) < 1000:
            return out
        after = page[-1].id


def enqueued(
    queue: Queue,
    /,
    task_type: str | None = None,
    payload: Any = None,
    *,
    since: int | None = None,
    **fields: Any,
) -> list[Task]:
    """The tasks in ``queue``'s database that match, in enqueue order (any status).

    :param queue: the queue whose database is read (positional, so ``queue=`` can match the
        Task field of that name).
    :param task_type: only tasks of this type.
    :param payload: a payload the task's must match (:func:`matches`: a dict matches as a
        subset, so ``{"to": "a@example.com"}`` ignores the payload's other keys).
    :param since: only tasks with a larger id (see :func:`last_task_id`).
    :param fields: other Task fields to match (``status="queued"``, ``priority=10``,
        ``queue="emails"``, ``headers={"tenant": "a"}``, ``run_after=...``, a predicate).
    :raises ValidationError: a field that Task does not have.
    """
    unknown = sorted(set(fields) - _TASK_FIELDS)
    if unknown:
        raise ValidationError(
            unknown[0],
            fields[unknown[0]],
            "is not a Task field",
            f"match on one of {sorted(_TASK_FIELDS)}",
        )
    found = []
    for task in _all_tasks(queue, since):
        if task_type is not None and task.task_type != task_type:
            continue
        if payload is not None and not matches(task.payload, payload):
            continue
        if all(matches(getattr(task, k), v) for k, v in fields.items()):
            found.append(task)
    return found


def _listing(queue: Queue, since: int | None) -> str:
    tasks = _all_tasks(queue, since)
    if not tasks:
        return "The queue holds no tasks" + (f" after id {since}." if since else ".")
    lines = [f"The queue holds {len(tasks)} task(s)" + (f" after id {since}:" if since else ":")]
    for t in tasks[:25]:
        lines.append(
            f"  #{t.id} {t.task_type} payload={_short(t.payload, 80)} status={t.status.value} "
            f"queue={t.queue!r} priority={t.priority} run_after={t.run_after.isoformat()}"
        )
    if len(tasks) > 25:
        lines.append(f"  ... and {len(tasks) - 25} more")
    return "\n".join(lines)


def assert_enqueued(
    queue: Queue,
    /,
    task_type: str | None = None,
    payload: Any = None,
    *,
    count: int | None = None,
    since: int | None = None,
    **fields: Any,
) -> list[Task]:
    """Assert that matching tasks were enqueued (see :func:`enqueued` for the filters).

    :param count: exactly this many must match; None (default) asks for at least one.
    :returns: the matching tasks, in enqueue order.
    :raises AssertionError: listing what the queue does hold.
    """
    __tracebackhide__ = True
    found = enqueued(queue, task_type, payload, since=since, **fields)
    if (count is None and found) or (count is not None and len(found) == count):
        return found
    wanted = "at least 1" if count is None else f"exactly {count}"
    raise AssertionError(
        f"expected {wanted} task(s) with {_describe_expected(task_type, payload, fields)}; "
        f"found {len(found)}.\n{_listing(queue, since)}"
    )


def assert_not_enqueued(
    queue: Queue,
    /,
    task_type: str | None = None,
    payload: Any = None,
    *,
    since: int | None = None,
    **fields: Any,
) -> None:
    """Assert that no task matches (see :func:`enqueued` for the filters).

    :raises AssertionError: listing the tasks that match.
    """
    __tracebackhide__ = True
    found = enqueued(queue, task_type, payload, since=since, **fields)
    if found:
        listed = "\n".join(
            f"  #{t.id} {t.task_type} payload={_short(t.payload, 80)} status={t.status.value}"
            for t in found[:25]
        )
        raise AssertionError(
            f"expected no task with {_describe_expected(task_type, payload, fields)}; "
            f"found {len(found)}:\n{listed}"
        )


# ---------------------------------------------------------------------------------------------
# Running due tasks
# ---------------------------------------------------------------------------------------------


class InProcessWorker:
    """Runs a queue's due tasks in the test's own process, one at a time, until idle.

    Each run is a real :class:`~hookqueue.WorkerEngine` (through ``run_due``), so leases,
    attempts, retries and events are exactly a worker's; time only moves when the test moves
    the queue's ``FakeClock`` (with :meth:`advance`).

    :param queue: the queue to work.
    :param worker_id: the id the tasks are leased with.
    :param queues: queue names to work; None works every name that has due tasks.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        worker_id: str = INLINE_WORKER_ID,
        queues: Sequence[str] | None = None,
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.queues = queues
        #: Every run so far, oldest first.
        self.runs: list[InlineRun] = []

    def __repr__(self) -> str:
        return f"InProcessWorker({self.queue!r}, worker_id={self.worker_id!r})"

    @property
    def clock(self) -> FakeClock:
        """The queue's clock, which must be a ``FakeClock`` to be moved."""
        clock = self.queue.clock
        if not isinstance(clock, FakeClock):
            raise ValidationError(
                "clock",
                clock,
                "is not a FakeClock, so a test cannot move time",
                "build the queue with Queue(..., clock=FakeClock()) (the hq_queue fixture does)",
            )
        return clock

    def run_until_idle(self) -> InlineRun:
        """Run every task due now, in lease order, until none is due; returns what ran."""
        run = run_due(self.queue, queues=self.queues, worker_id=self.worker_id)
        self.runs.append(run)
        return run

    async def run_until_idle_async(self) -> InlineRun:
        """:meth:`run_until_idle` on the running loop (async handlers run on it)."""
        run = await run_due_async(self.queue, queues=self.queues, worker_id=self.worker_id)
        self.runs.append(run)
        return run

    def advance(self, seconds: float = 0.0, **delta: float) -> InlineRun:
        """Move the fake clock forward (``seconds`` plus ``timedelta`` keywords such as
        ``minutes=5``), then run what became due."""
        self.clock.advance(seconds, **delta)
        return self.run_until_idle()

    async def advance_async(self, seconds: float = 0.0, **delta: float) -> InlineRun:
        """:meth:`advance` on the running loop."""
        self.clock.advance(seconds, **delta)
        return await self.run_until_idle_async()

    def _move_to(self, instant: datetime) -> None:
        clock = self.clock
        if to_us(instant, "instant") < clock.now_us():
            raise ValidationError(
                "instant",
                instant,
                f"is before the clock's now ({clock.now().isoformat()})",
                "pass a later instant, e.g. task.run_after of a task that waits",
            )
        clock.set(instant)

    def advance_to(self, instant: datetime) -> InlineRun:
        """Move the fake clock forward to ``instant`` (e.g. a waiting task's ``run_after``),
        then run what became due.

        :raises ValidationError: ``instant`` is in the clock's past.
        """
        self._move_to(instant)
        return self.run_until_idle()

    async def advance_to_async(self, instant: datetime) -> InlineRun:
        """:meth:`advance_to` on the running loop."""
        self._move_to(instant)
        return await self.run_until_idle_async()


# ---------------------------------------------------------------------------------------------
# Hook-call recording
# ---------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class RecordedHookCall:
    """One call of a hook, as a :class:`HookRecorder` saw it.

    The call's arguments are also attributes: ``call.task``, ``call.events``.
    """

    #: The hook's name, e.g. ``hookqueue_execute``.
    name: str
    #: The keyword arguments the hook was called with.
    kwargs: dict[str, Any]
    #: Names of the plugins whose implementations ran (hookqueue's testing helpers left out).
    plugins: list[str]
    #: The thread it was called in.
    thread: str
    #: When it was called, on the queue clock if the recorder knows the queue.
    at: datetime | None = None
    #: What the call returned (for observation hooks: a list of Nones).
    result: Any = None
    #: The exception the call raised, if it raised.
    exception: BaseException | None = None

    def __getattr__(self, item: str) -> Any:
        if item.startswith("_"):
            raise AttributeError(item)
        kwargs = object.__getattribute__(self, "kwargs")
        try:
            return kwargs[item]
        except KeyError:
            raise AttributeError(
                f"hook {self.name} was not called with an argument {item!r}; it has {sorted(kwargs)}"
            ) from None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.kwargs.items())
        return f"{self.name}({args})"


class _EventSink:
    """Implements ``hookqueue_event`` and does nothing: with it registered the core builds
    and sends events even when no other plugin observes them, so a recorder sees them."""

    hookqueue_testing_internal = True

    @hookimpl
    def hookqueue_event(self, events: Sequence[TaskEvent]) -> None:
        return None


class _Monitor:
    """One ``add_hookcall_monitoring`` per plugin manager, shared by its recorders.

    It stays installed for the plugin manager's life: pluggy's undo restores the hook
    executor as it was when monitoring began, which would also remove any monitoring (another
    tool's) installed after it. With no recorder attached it records nothing."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.recorders: list[HookRecorder] = []
        self.lock = threading.Lock()
        pm.add_hookcall_monitoring(self._before, self._after)

    def _before(self, hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        for recorder in list(self.recorders):
            recorder._before(hook_name, impls, kwargs)

    def _after(
        self, outcome: Any, hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> None:
        for recorder in list(self.recorders):
            recorder._after(outcome, hook_name, kwargs)

    def add(self, recorder: HookRecorder) -> None:
        with self.lock:
            self.recorders.append(recorder)

    def remove(self, recorder: HookRecorder) -> None:
        """Detach a recorder."""
        with self.lock:
            if recorder in self.recorders:
                self.recorders.remove(recorder)


_monitors: weakref.WeakKeyDictionary[pluggy.PluginManager, _Monitor] = weakref.WeakKeyDictionary()
_monitors_lock = threading.Lock()


class HookRecorder:
    """Records every hook call of a queue's plugin manager from now until :meth:`close`.

    Built on pluggy's ``add_hookcall_monitoring`` (like pytest's own ``HookRecorder``), so it
    sees every call — from the test's thread, a worker's store thread or handler thread —
    with its arguments, the plugins that answered, and the result or exception.

    ``hookqueue_event`` is one call reaching every observer, as pluggy calls it; the
    recorder shows every observer in :attr:`RecordedHookCall.plugins`. With ``events=True`` (default) a do-nothing observer is
    registered while recording, so events are sent even when no plugin observes them.

    Usable as a context manager; the pytest fixture ``hq_hooks`` gives one for ``hq_queue``.

    :param target: a :class:`~hookqueue.Queue` or its ``pm``.
    :param events: register the do-nothing event observer (see above).
    """

    def __init__(self, target: Queue | pluggy.PluginManager, *, events: bool = True) -> None:
        if isinstance(target, Queue):
            self.pm = target.pm
            self._clock: Any = target.clock
        elif isinstance(target, pluggy.PluginManager):
            self.pm = target
            self._clock = None
        else:
            raise ValidationError(
                "target",
                target,
                "is neither a Queue nor a pluggy PluginManager",
                "pass the queue (HookRecorder(queue)) or queue.pm",
            )
        self._calls: list[RecordedHookCall] = []
        self._lock = threading.Lock()
        self._stack = threading.local()
        self._closed = False
        self._sink: _EventSink | None = None
        with _monitors_lock:
            monitor = _monitors.get(self.pm)
            if monitor is None:
                monitor = _Monitor(self.pm)
                _monitors[self.pm] = monitor
            monitor.add(self)
        self._monitor = monitor
        if events:
            self._sink = _EventSink()
            self.pm.register(self._sink, name=f"hookqueue-testing-events-{id(self._sink)}")

    def __repr__(self) -> str:
        return f"HookRecorder({len(self._calls)} calls{', closed' if self._closed else ''})"

    def __enter__(self) -> HookRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop recording (the calls recorded so far stay readable). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._monitor.remove(self)
        if self._sink is not None and self.pm.is_registered(self._sink):
            self.pm.unregister(self._sink)

    # Pytest's name for close().
    finish_recording = close

    # -- recording --------------------------------------------------------------------------

    def _now(self) -> datetime | None:
        if self._clock is None:
            return None
        return from_us(self._clock.now_us())

    def _before(self, hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        names = [
            impl.plugin_name
            for impl in impls
            if not getattr(impl.plugin, "hookqueue_testing_internal", False)
        ]
        stack = getattr(self._stack, "calls", None)
        if stack is None:
            stack = self._stack.calls = []
        with self._lock:
            # A call resumed for the observers after one that raised reuses the arguments
            # object: show it as one call.
            for call in reversed(self._calls[-16:]):
                if call.name == hook_name and call.kwargs is kwargs:
                    call.plugins += names
                    stack.append(call)
                    return
            call = RecordedHookCall(
                name=hook_name,
                kwargs=kwargs,  # type: ignore[arg-type]
                plugins=names,
                thread=threading.current_thread().name,
                at=self._now(),
            )
            self._calls.append(call)
        stack.append(call)

    def _after(self, outcome: Any, hook_name: str, kwargs: Mapping[str, Any]) -> None:
        stack = getattr(self._stack, "calls", None)
        if not stack:
            return
        call = stack.pop()
        exc = outcome.exception
        if exc is not None:
            if call.exception is None:
                call.exception = exc
        else:
            call.result = outcome.get_result()

    # -- reading ----------------------------------------------------------------------------

    @property
    def calls(self) -> list[RecordedHookCall]:
        """Every recorded call, in the order the calls started."""
        with self._lock:
            return list(self._calls)

    def clear(self) -> None:
        """Forget the calls recorded so far (recording goes on)."""
        with self._lock:
            self._calls.clear()

    def names(self) -> list[str]:
        """The hook names called, in order (``hookqueue_`` prefix kept)."""
        return [c.name for c in self.calls]

    def getcalls(self, names: str | Iterable[str]) -> list[RecordedHookCall]:
        """The calls of the given hook names (a space-separated string or a list)."""
        wanted = set(names.split() if isinstance(names, str) else names)
        return [c for c in self.calls if c.name in wanted]

    def getcall(self, name: str) -> RecordedHookCall:
        """The one call of ``name``. :raises AssertionError: when there are none or several."""
        __tracebackhide__ = True
        found = self.getcalls(name)
        if len(found) != 1:
            raise AssertionError(
                f"expected exactly 1 call of {name}, got {len(found)}.\n{self._listing()}"
            )
        return found[0]

    def _check_name(self, name: str) -> None:
        if not hasattr(self.pm.hook, name):
            known = sorted(n for n in dir(self.pm.hook) if n.startswith("hookqueue_"))
            raise ValidationError(
                "name", name, "is not a hook of this plugin manager", f"use one of {known}"
            )

    def _listing(self, name: str | None = None) -> str:
        calls = self.calls
        if not calls:
            return "No hook calls were recorded."
        lines = [f"Recorded calls ({len(calls)}):"]
        for c in calls[:60]:
            mark = "  >" if c.name == name else "   "
            lines.append(f"{mark} {c!r}")
        if len(calls) > 60:
            lines.append(f"    ... and {len(calls) - 60} more")
        return "\n".join(lines)

    def assert_called(
        self, name: str, *, times: int | None = None, **expected: Any
    ) -> list[RecordedHookCall]:
        """Assert that hook ``name`` was called with arguments matching ``expected``.

        Each keyword is an argument of the hook, matched with :func:`matches` (so
        ``task={"task_type": "add"}`` matches on the Task's fields).

        :param times: exactly this many matching calls; None (default) asks for at least one.
        :returns: the matching calls.
        :raises AssertionError: listing the recorded calls.
        """
        __tracebackhide__ = True
        self._check_name(name)
        found = [c for c in self.getcalls(name) if _call_matches(c, expected)]
        if (times is None and found) or (times is not None and len(found) == times):
            return found
        wanted = "at least 1" if times is None else f"exactly {times}"
        args = ", ".join(f"{k}={v!r}" for k, v in expected.items())
        raise AssertionError(
            f"expected {wanted} call(s) of {name}({args}); found {len(found)}.\n{self._listing(name)}"
        )

    def assert_not_called(self, name: str, **expected: Any) -> None:
        """Assert that hook ``name`` was not called (with arguments matching ``expected``)."""
        __tracebackhide__ = True
        self._check_name(name)
        found = [c for c in self.getcalls(name) if _call_matches(c, expected)]
        if found:
            raise AssertionError(
                f"expected no call of {name}; found {len(found)}: {found[0]!r}\n{self._listing(name)}"
            )

    def assert_called_in_order(self, *names: str) -> None:
        """Assert that the hooks were called in this order (other calls may come between)."""
        __tracebackhide__ = True
        for n in names:
            self._check_name(n)
        position = 0
        recorded = self.names()
        for n in names:
            try:
                position = recorded.index(n, position) + 1
            except ValueError:
                raise AssertionError(
                    f"expected the hooks in the order {list(names)}; no {n} after the earlier "
                    f"ones.\n{self._listing(n)}"
                ) from None

    def events(
        self, kind: Any = None, *, task_id: int | None = None, **expected: Any
    ) -> list[TaskEvent]:
        """The :class:`~hookqueue.TaskEvent` objects sent to ``hookqueue_event``, in order.

        :param kind: only this kind (an ``EventKind`` or its string, e.g. ``"completed"``).
        :param task_id: only events of this task.
        :param expected: other TaskEvent fields to match (``worker_id="inline"``,
            ``task={"attempts": 2}``).
        """
        out = []
        for call in self.getcalls("hookqueue_event"):
            for event in call.kwargs.get("events", ()):
                if kind is not None and event.kind != kind:
                    continue
                if task_id is not None and event.task.id != task_id:
                    continue
                if expected and not matches(event, expected):
                    continue
                out.append(event)
        return out

    def event_kinds(self, task_id: int | None = None) -> list[str]:
        """The kinds of the recorded events (of one task), as strings, in order."""
        return [e.kind.value for e in self.events(task_id=task_id)]


def _call_matches(call: RecordedHookCall, expected: Mapping[str, Any]) -> bool:
    for key, value in expected.items():
        if key not in call.kwargs or not matches(call.kwargs[key], value):
            return False
    return True
