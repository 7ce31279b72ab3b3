"""Every hook hookqueue calls, grouped by stage.

Each hook has one kind, said first in its docstring:

- **decision** — ``firstresult=True``; the core's built-in answer is registered ``trylast``, so a
  plugin's answer wins and the first non-None result stops the call.
- **around** — ``firstresult=True``; a ``trylast`` built-in does the work once, and plugins wrap
  it with ``@hookimpl(wrapper=True)``: code before ``yield`` runs first, ``yield`` returns the
  inner result (or raises its exception), and the wrapper returns what the caller gets.
- **observation** — every implementation is called; none returns anything. The core calls each
  implementation separately and logs its error, so an exporter can never fail or delay a task.
- **registration** — every implementation returns a list of attrs records; the core merges
  them and refuses duplicates by name.
- **lifecycle** — every implementation is called; errors propagate (a plugin that cannot start
  stops the queue or worker from starting, with its name in the error).

Specs may gain arguments in later versions but never lose or rename one: implementations
take only the arguments they name (pluggy's opt-in arguments).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .models import (
        CliCommand,
        Failure,
        HandlerSpec,
        LeasePlan,
        LeaseRequest,
        NewTask,
        RetryDecision,
        Task,
        TaskEvent,
    )
    from .queue import Queue
    from .storage import TaskStore
    from .worker import WorkerEngine

#: The project name: used for the markers, the plugin manager and the entry-point group.
PROJECT_NAME = "hookqueue"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Decorate hook implementations with this (``from hookqueue import hookimpl``).
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------------------------
# store
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hookqueue_store(location: str, options: Mapping[str, Any]) -> TaskStore | None:
    """**decision** — open the store a location names.

    Called once by ``Queue(location)`` (and ``Queue()``, with ``$HOOKQUEUE_DB`` or the default
    path), before any other hook: the queue's plugin manager is built first, so a store is a
    plugin like any other. Not called when a store object is passed in.

    The built-in (``trylast``) opens the embedded SQLite store
    (:class:`~hookqueue.QueueDatabase`) for a file path or a ``sqlite:///path`` URL, and
    refuses any other URL scheme with an error naming the extra that provides it (a
    ``postgresql://`` URL needs ``pip install 'hookqueue[postgres]'``).

    :param location: a file path, or a URL (``scheme://...``).
    :param options: the queue's store options: ``durability`` (``"full"`` / ``"normal"``),
        ``busy_timeout`` (seconds), ``vfs`` (SQLite only), ``create`` (False: refuse a store
        that does not exist yet). A store ignores options it has no use for.
    :returns: an opened :class:`~hookqueue.core.storage.TaskStore`; stops at the first
        non-None result. Return None for locations that are not yours.

    Example — a store for ``memcache://`` locations::

        @hookimpl
        def hookqueue_store(location, options):
            if location.startswith("memcache://"):
                return MemcacheStore(location, durability=options["durability"])
    """


# ---------------------------------------------------------------------------------------------
# enqueue
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hookqueue_enqueue(queue: Queue, new_tasks: list[NewTask]) -> list[NewTask] | None:
    """**around** — normalise or refuse tasks before they are written, a batch at a time.

    Called once per call of ``Queue.enqueue`` (a batch of one), ``Queue.enqueue_many`` (the
    whole batch, before the one transaction that writes it) and their async forms, in the
    caller's thread: one pluggy call per batch, however many tasks it holds.

    The queue checks every field of the caller's tasks first (type, length, JSON-ability of
    the payload, aware datetimes, ``max_attempts >= 1``), so implementations see valid tasks,
    and checks again every task an implementation changed, after the whole call: a plugin
    that writes an invalid value is refused with a
    :class:`~hookqueue.core.errors.PluginError` naming it. The built-in (``trylast``) returns
    the batch unchanged. A ``max_attempts`` left at None becomes 1 (the core alone does not
    retry).

    :param queue: the queue the tasks go into.
    :param new_tasks: the tasks as the caller described them, in order.
    :returns: the tasks to write — a list of as many :class:`~hookqueue.core.models.NewTask`,
        in the same order; wrappers return ``[attrs.evolve(t, ...) for t in result]`` to
        change them, or raise (ideally ``ValidationError``) to refuse the batch; nothing is
        then written.

    Example — a wrapper that stamps a tenant header::

        @hookimpl(wrapper=True)
        def hookqueue_enqueue(new_tasks):
            result = yield
            tenant = current_tenant()
            return [attrs.evolve(t, headers={**t.headers, "tenant": tenant}) for t in result]
    """


# ---------------------------------------------------------------------------------------------
# lease
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hookqueue_lease(queue: Queue, request: LeaseRequest) -> LeasePlan | None:
    """**decision** — choose how the next tasks are picked for a worker.

    Called each time a worker has free slots and asks the store for work, in the worker's
    store thread; it should return quickly (it is on the hot path) and usually returns the same
    precomputed plan every time.

    The built-in (``trylast``) returns ``LeasePlan(order=(SortKey.FIFO,))``: enqueue order.

    :param queue: the queue being leased from.
    :param request: who asks, for which queues, how many, and when.
    :returns: a :class:`~hookqueue.core.models.LeasePlan`; stops at the first non-None result.
    """


# ---------------------------------------------------------------------------------------------
# execute
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hookqueue_execute(task: Task, handler: HandlerSpec, worker_id: str) -> Awaitable[Any] | None:
    """**around** — run one attempt of a task's handler.

    Called by the worker on its event loop for every leased task that has a handler.

    The built-in (``trylast``) returns a coroutine that awaits an ``async`` handler on the
    worker's loop, or runs a sync handler in the worker's thread pool; either gets the task
    and returns its result. The worker awaits what the hook returns (within the task's
    timeout), stores the result if it is JSON, and sends any exception to ``hookqueue_retry``.

    :param task: the leased task (``attempts`` already counts this attempt).
    :param handler: the registration of its handler.
    :param worker_id: the id of the worker running it.
    :returns: an awaitable of the handler's result. Wrappers receive the inner awaitable from
        ``yield`` and return another that awaits it — that is how middleware (timing,
        logging, tracing) goes around an async call::

            @hookimpl(wrapper=True)
            def hookqueue_execute(task):
                inner = yield
                async def timed():
                    started = time.perf_counter()
                    try:
                        return await inner
                    finally:
                        log.info("%s took %.3fs", task.task_type, time.perf_counter() - started)
                return timed()
    """


# ---------------------------------------------------------------------------------------------
# retry
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hookqueue_retry(
    task: Task, failure: Failure, handler: HandlerSpec | None, now: Any
) -> RetryDecision | None:
    """**decision** — after a failed attempt: run again later, or give up.

    Called by the worker after a handler raised, timed out or returned a non-JSON value, and by
    the store's lease sweep when a worker died holding the task (``failure.kind == "crash"``).

    The built-in (``trylast``) gives up on handler failures (the core alone does not retry
    them) and retries a crash at once, bounded by ``max_attempts``.

    :param task: the task as stored, with ``attempts`` counting the failed attempt.
    :param failure: what went wrong.
    :param handler: the task type's registration (per-type policies live in its ``options``),
        or None when no handler is registered.
    :param now: the current instant (aware datetime), from the queue's clock.
    :returns: a :class:`~hookqueue.core.models.RetryDecision`; stops at the first non-None
        result. A decision to retry when ``task.attempts >= task.max_attempts`` is overruled:
        the task fails.
    """


# ---------------------------------------------------------------------------------------------
# metrics (observation)
# ---------------------------------------------------------------------------------------------


@hookspec
def hookqueue_event(events: Sequence[TaskEvent]) -> None:
    """**observation** — receive state transitions, in the order they happened.

    Called after the transaction that made them committed — never for a rolled-back change —
    in the thread that committed it (a worker's store thread, or the caller's thread for
    ``enqueue``/``cancel``). Transitions committed together arrive together, so an exporter
    can update its counters once per batch.

    The core registers no implementation: measuring is a plugin's choice.

    :param events: one :class:`~hookqueue.core.models.TaskEvent` per transition.

    An implementation that raises is logged and skipped; the other implementations still
    run and the task is unaffected. Keep it fast: it runs on the hot path.

    **Where this hook departs from pluggy, and why.** pluggy stops a hook call at the first
    implementation that raises and hands the exception to the caller. Here one observer's
    bug must neither fail the write that already committed nor keep the events from the
    other observers (a broken exporter must not blind the metrics). So the core makes the
    call through pluggy as usual and, when an observer raises, logs it naming the plugin and
    makes a second call through ``PluginManager.subset_hook_caller`` for the observers that
    had not run yet (again if another raises). A ``wrapper=True`` implementation therefore
    sees the observer's exception at its ``yield`` in the first call (it may log it; what it
    returns or raises is not passed on), then wraps each further call: per event batch it runs
    once more for every observer that raised, never fewer than once. Observers themselves run
    once each, in pluggy's order. Hook-call monitoring and tracing see every call.
    """


# ---------------------------------------------------------------------------------------------
# lifecycle
# ---------------------------------------------------------------------------------------------


@hookspec
def hookqueue_queue_open(queue: Queue) -> None:
    """**lifecycle** — a :class:`~hookqueue.Queue` was constructed and its store is ready.

    :param queue: the new queue; plugins may keep a reference (e.g. to read gauges at scrape
        time).
    """


@hookspec
def hookqueue_queue_close(queue: Queue) -> None:
    """**lifecycle** — ``Queue.close()`` is about to close the store.

    :param queue: the queue being closed.
    """


@hookspec
def hookqueue_worker_start(worker: WorkerEngine) -> None:
    """**lifecycle** — a worker registered itself and is about to lease its first tasks.

    Called on the worker's event loop thread.

    :param worker: the worker: a :class:`~hookqueue.WorkerEngine`, or an
        :class:`~hookqueue.core.inline.InlineWorker` for an in-process run; both have
        ``worker_id``, ``queue``, ``runtime``, ``queues``, ``concurrency`` and ``stats``.
    """


@hookspec
def hookqueue_worker_stop(worker: WorkerEngine) -> None:
    """**lifecycle** — a worker finished its shutdown (leases released, heartbeat stopped).

    :param worker: the worker.
    """


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------


@hookspec
def hookqueue_handlers() -> Sequence[HandlerSpec]:  # type: ignore[empty-body]
    """**registration** — contribute task handlers.

    Called once when a :class:`~hookqueue.Queue` is constructed; the handlers join the queue's
    :class:`~hookqueue.TaskHandlerRegistry`. Two plugins contributing the same task type is an
    error naming both.

    :returns: a list of :class:`~hookqueue.core.models.HandlerSpec`.

    Example::

        class Mailer:
            @hookimpl
            def hookqueue_handlers(self):
                return [HandlerSpec(task_type="send_email", handler=self.send)]
    """


@hookspec
def hookqueue_cli_commands() -> Sequence[CliCommand]:  # type: ignore[empty-body]
    """**registration** — contribute subcommands to the ``hookqueue`` command.

    Called once when the command line is parsed. A name that clashes with a built-in
    subcommand or another plugin's is an error naming both.

    :returns: a list of :class:`~hookqueue.core.models.CliCommand`.

    Example::

        @hookimpl
        def hookqueue_cli_commands():
            return [CliCommand(name="hello", help="say hello",
                               configure=lambda p: None, run=lambda args: print("hi") or 0)]
    """


#: Each hook's kind, read by the facade and by the meta tests.
HOOK_KINDS: dict[str, str] = {
    "hookqueue_store": "decision",
    "hookqueue_enqueue": "around",
    "hookqueue_lease": "decision",
    "hookqueue_execute": "around",
    "hookqueue_retry": "decision",
    "hookqueue_event": "observation",
    "hookqueue_queue_open": "lifecycle",
    "hookqueue_queue_close": "lifecycle",
    "hookqueue_worker_start": "lifecycle",
    "hookqueue_worker_stop": "lifecycle",
    "hookqueue_handlers": "registration",
    "hookqueue_cli_commands": "registration",
}
