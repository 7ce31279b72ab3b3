"""OpenTelemetry exporter (extra ``hookqueue[otel]``): a span per attempt, and metrics.

Traces: when a task is enqueued inside a span, the enqueue wrapper writes the trace context
into the task's ``headers`` with the configured propagator (W3C ``traceparent`` by default).
When a worker runs an attempt, the execute wrapper extracts it and runs the handler inside a
``CONSUMER`` span whose parent is the span that enqueued the task — so one trace goes from
the request that enqueued the task to every attempt, in whichever process runs it. The
attempt's span is current inside the handler, so the handler's own spans nest under it.

Metrics, through the OpenTelemetry metrics API: counters of every transition (enqueued,
attempts, finished by status, retries, ...) and histograms of the wait before an attempt and
of its run time, recorded from ``hookqueue_event``; and observable gauges read from the
database at collection time (tasks by type and status, due/delayed/running per queue, the
oldest due task's wait, workers by state, the health verdict).

The ``opentelemetry`` entry point registers this module, which uses the *global* tracer and
meter providers (what the OpenTelemetry SDK or ``opentelemetry-instrument`` configure). While
none is configured it does nothing on the hot path. To pass providers explicitly, block the
entry point and register an instance::

    Queue(path, plugins=[OpenTelemetryExporter(tracer_provider=tp, meter_provider=mp)],
          block=["opentelemetry"])

Every instrumentation step is guarded: an exporter, processor or propagator that raises is
logged, and the task runs and ends exactly as it would without tracing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Generator, Iterable, Mapping, Sequence
from typing import Any

import attrs

# Imported at module level on purpose: without the extra installed, importing this module
# (the entry point) fails with ImportError and `hookqueue plugins` shows the pip command.
from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import propagate, trace
from opentelemetry.environment_variables import (
    OTEL_PYTHON_METER_PROVIDER,
    OTEL_PYTHON_TRACER_PROVIDER,
)
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.metrics import _internal as _metrics_internal
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode

from hookqueue import __version__
from hookqueue.core.execution import current_execution
from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import EventKind, NewTask, Task, TaskEvent
from hookqueue.core.queue import Queue
from hookqueue.core.storage import TaskStore
from hookqueue.plugins.metrics import (
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_WAIT_BUCKETS,
    DURATION_HELP,
    EVENT_COUNTER_HELP,
    EVENT_COUNTERS,
    WAIT_HELP,
    DatabaseGauges,
    HealthThresholds,
    WatchedQueues,
    read_database_gauges,
)

__all__ = ["INSTRUMENTATION_NAME", "OpenTelemetryExporter", "default_exporter"]

log = logging.getLogger("hookqueue.opentelemetry")

#: The instrumentation scope name of hookqueue's tracer and meter.
INSTRUMENTATION_NAME = "hookqueue"
#: The W3C header the enqueue wrapper leaves alone when the caller set it.
TRACEPARENT = "traceparent"

try:  # the API's "nothing configured yet" provider is private; fall back to the no-op one
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    _UNSET_METER_PROVIDERS: tuple[type, ...] = (otel_metrics.NoOpMeterProvider, _ProxyMeterProvider)
except ImportError:  # pragma: no cover - a future API without it
    _UNSET_METER_PROVIDERS = (otel_metrics.NoOpMeterProvider,)
_UNSET_TRACER_PROVIDERS: tuple[type, ...] = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
#: getattr's default when the API has no module-level provider global.
_MISSING = object()

#: Attribute keys of the counters' extra labels.
_LABELS = {"status": "hookqueue.task.status", "reason": "hookqueue.retry.reason"}
#: How long a database read serves the observable gauges' callbacks: they run one after the
#: other in one collection, and should not each read the database.
_GAUGE_CACHE_SECONDS = 1.0


@attrs.define
class _Instruments:
    """The synchronous instruments of one meter."""

    provider: Any
    counters: dict[str, Any]
    wait: Any
    duration: Any


class OpenTelemetryExporter:
    """Spans per attempt and metrics through the OpenTelemetry API; register as a plugin.

    :param queues: queues (or databases) whose gauges to observe; when the exporter is
        registered as a plugin every queue opened with it is added.
    :param tracer_provider: where spans go (default: the global provider, looked up at each
        use, so an SDK configured later is picked up).
    :param meter_provider: where metrics go (default: the global provider, likewise).
    :param propagator: how the trace context is written into and read from task headers
        (default: the global propagator, W3C trace context and baggage unless configured).
    :param traces: create attempt spans and propagate the trace context.
    :param metrics: record counters and histograms, and observe the database gauges.
    :param histograms: record the wait and run-time histograms. The SDK takes a few
        microseconds per recorded value, two values per attempt: switch them off when that
        matters more than the distributions (the counters are added once per event batch).
    :param thresholds: for the health gauge (see
        :class:`~hookqueue.plugins.metrics.HealthThresholds`).
    :param health: observe ``hookqueue.healthy`` (reads the health summary at collection).
    :param name: the plugin name it registers under.
    """

    def __init__(
        self,
        queues: Iterable[Queue | TaskStore] = (),
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: otel_metrics.MeterProvider | None = None,
        propagator: TextMapPropagator | None = None,
        traces: bool = True,
        metrics: bool = True,
        histograms: bool = True,
        thresholds: HealthThresholds | None = None,
        health: bool = True,
        name: str | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.propagator = propagator
        self.traces = bool(traces)
        self.metrics = bool(metrics)
        self.histograms = bool(histograms)
        self.health = bool(health)
        if name is not None:
            #: Read by the plugin manager as the registration name.
            self.hookqueue_name = name
        #: The queues whose databases the observable gauges read.
        self.watched = WatchedQueues(thresholds)
        for queue in queues:
            self.watched.add(queue)
        self._lock = threading.Lock()
        self._tracer_for: tuple[Any, trace.Tracer] | None = None
        self._instruments: _Instruments | None = None
        self._broken_provider: Any = None
        self._gauge_cache: tuple[float, list[tuple[str, DatabaseGauges | None, Any]]] | None = None
        self._attrs: dict[tuple[str, ...], dict[str, str]] = {}
        #: Whether OTEL_PYTHON_TRACER_PROVIDER was set when a queue opened (None: no queue
        #: opened yet). Read once there, not for every task (see :meth:`_global_tracer_provider`).
        self._env_tracer_provider: bool | None = None
        self._env_meter_provider: bool | None = None

    def __repr__(self) -> str:
        return f"OpenTelemetryExporter(traces={self.traces}, metrics={self.metrics})"

    # -- providers -----------------------------------------------------------------------------

    def _tracer(self) -> trace.Tracer | None:
        """The tracer, or None while no tracer provider is configured (nothing to do)."""
        provider = self.tracer_provider or self._global_tracer_provider()
        if provider is None:
            return None
        cached = self._tracer_for
        if cached is not None and cached[0] is provider:
            return cached[1]
        if isinstance(provider, _UNSET_TRACER_PROVIDERS):
            return None
        tracer = provider.get_tracer(INSTRUMENTATION_NAME, __version__)
        self._tracer_for = (provider, tracer)
        return tracer

    def _global_tracer_provider(self) -> Any:
        """The global tracer provider; None while none is set.

        ``trace.get_tracer_provider()`` looks the environment up on every call while no
        provider is set — for every task. Once a queue opened, the environment variable was
        read there, and the global is read directly; otherwise (or on an API without that
        global) the public function decides.
        """
        if self._env_tracer_provider is False:
            current = getattr(trace, "_TRACER_PROVIDER", _MISSING)
            if current is None:
                return None
            if current is not _MISSING:
                return current
        return trace.get_tracer_provider()

    def _global_meter_provider(self) -> Any:
        """The global meter provider (a no-op proxy while none is set), read as
        :meth:`_global_tracer_provider` reads the tracer provider: without an environment
        lookup per event batch once a queue opened."""
        if self._env_meter_provider is False:
            current = getattr(_metrics_internal, "_METER_PROVIDER", _MISSING)
            if current is None:
                current = getattr(_metrics_internal, "_PROXY_METER_PROVIDER", _MISSING)
            if current is not _MISSING:
                return current
        return otel_metrics.get_meter_provider()

    def _propagator(self) -> TextMapPropagator:
        return self.propagator or propagate.get_global_textmap()

    def _meter_instruments(self) -> _Instruments | None:
        """The instruments, created on first use of a configured meter provider; None while
        no meter provider is configured."""
        provider = self.meter_provider or self._global_meter_provider()
        current = self._instruments
        if current is not None and current.provider is provider:
            return current
        if isinstance(provider, _UNSET_METER_PROVIDERS):
            return None
        if provider is self._broken_provider:
            return None
        with self._lock:
            current = self._instruments
            if current is not None and current.provider is provider:
                return current
            try:
                self._instruments = self._create_instruments(provider)
            except Exception:
                # Said once, not at every event batch; the tasks are unaffected.
                log.exception("opentelemetry: the meter provider failed; no metrics from it")
                self._broken_provider = provider
                return None
            return self._instruments

    def _create_instruments(self, provider: otel_metrics.MeterProvider) -> _Instruments:
        meter = provider.get_meter(INSTRUMENTATION_NAME, __version__)
        counters = {}
        for name, _ in EVENT_COUNTERS.values():
            if name not in counters:
                counters[name] = meter.create_counter(
                    f"hookqueue.{name}", unit="1", description=EVENT_COUNTER_HELP[name]
                )
        wait = meter.create_histogram(
            "hookqueue.task_wait",
            unit="s",
            description=WAIT_HELP,
            explicit_bucket_boundaries_advisory=list(DEFAULT_WAIT_BUCKETS),
        )
        duration = meter.create_histogram(
            "hookqueue.task_duration",
            unit="s",
            description=DURATION_HELP,
            explicit_bucket_boundaries_advisory=list(DEFAULT_DURATION_BUCKETS),
        )
        meter.create_observable_gauge(
            "hookqueue.tasks",
            callbacks=[self._observe_tasks],
            unit="1",
            description="Tasks in the database by type and status.",
        )
        meter.create_observable_gauge(
            "hookqueue.queue_tasks",
            callbacks=[self._observe_queues],
            unit="1",
            description="Tasks per queue: due (queued, may run now), delayed, running.",
        )
        meter.create_observable_gauge(
            "hookqueue.oldest_queued_task_age",
            callbacks=[self._observe_oldest],
            unit="s",
            description="How long the oldest due task of each queue has waited (0 when none).",
        )
        meter.create_observable_gauge(
            "hookqueue.workers",
            callbacks=[self._observe_workers],
            unit="1",
            description="Workers by state: active, stale, lost, stopped.",
        )
        if self.health:
            meter.create_observable_gauge(
                "hookqueue.healthy",
                callbacks=[self._observe_health],
                unit="1",
                description="1 if the health summary finds no problem.",
            )
        return _Instruments(provider=provider, counters=counters, wait=wait, duration=duration)

    # -- observable gauges ---------------------------------------------------------------------

    def _read_databases(self) -> list[tuple[str, DatabaseGauges | None, Any]]:
        now = time.monotonic()
        cached = self._gauge_cache
        if cached is not None and now - cached[0] < _GAUGE_CACHE_SECONDS:
            return cached[1]
        readings: list[tuple[str, DatabaseGauges | None, Any]] = []
        for path, metrics in self.watched.databases():
            try:
                gauges = read_database_gauges(metrics.queue, metrics.thresholds)
                summary = metrics.get_queue_health_summary() if self.health else None
            except Exception as exc:  # a locked database must not break the whole collection
                log.warning("opentelemetry: reading %s failed: %s", path, exc)
                readings.append((path, None, None))
                continue
            readings.append((path, gauges, summary))
        self._gauge_cache = (now, readings)
        return readings

    def _observe_tasks(self, options: CallbackOptions) -> Iterable[Observation]:
        for path, gauges, _ in self._read_databases():
            if gauges is None:
                continue
            for (task_type, status), n in sorted(gauges.tasks.items()):
                yield Observation(
                    n,
                    {"hookqueue.database": path, "hookqueue.task.type": task_type,
                     "hookqueue.task.status": status},
                )  # fmt: skip

    def _observe_queues(self, options: CallbackOptions) -> Iterable[Observation]:
        for path, gauges, _ in self._read_databases():
            if gauges is None:
                continue
            for name, counts in sorted(gauges.queues.items()):
                for state, n in zip(("due", "delayed", "running"), counts, strict=True):
                    yield Observation(
                        n,
                        {"hookqueue.database": path, "hookqueue.queue": name,
                         "hookqueue.queue.state": state},
                    )  # fmt: skip

    def _observe_oldest(self, options: CallbackOptions) -> Iterable[Observation]:
        for path, gauges, _ in self._read_databases():
            if gauges is None:
                continue
            for name, age in sorted(gauges.oldest_age.items()):
                yield Observation(age, {"hookqueue.database": path, "hookqueue.queue": name})

    def _observe_workers(self, options: CallbackOptions) -> Iterable[Observation]:
        for path, gauges, _ in self._read_databases():
            if gauges is None:
                continue
            for state, n in gauges.workers.items():
                yield Observation(n, {"hookqueue.database": path, "hookqueue.worker.state": state})

    def _observe_health(self, options: CallbackOptions) -> Iterable[Observation]:
        for path, _, summary in self._read_databases():
            if summary is not None:
                yield Observation(1 if summary["healthy"] else 0, {"hookqueue.database": path})

    # -- hooks: queues -------------------------------------------------------------------------

    @hookimpl
    def hookqueue_queue_open(self, queue: Queue) -> None:
        """Observe the gauges of every queue this exporter is registered with."""
        self._env_tracer_provider = OTEL_PYTHON_TRACER_PROVIDER in os.environ
        self._env_meter_provider = OTEL_PYTHON_METER_PROVIDER in os.environ
        if self.metrics:
            self.watched.add(queue)
            self._gauge_cache = None

    @hookimpl
    def hookqueue_queue_close(self, queue: Queue) -> None:
        """Stop observing a closed queue."""
        self.watched.discard(queue)
        self._gauge_cache = None

    # -- hooks: metrics ------------------------------------------------------------------------

    def _attributes(self, *values: str) -> dict[str, str]:
        # Attribute dicts are reused per label combination (never mutated), so the hot path
        # does not build a dict per event.
        cached = self._attrs.get(values)
        if cached is None:
            keys = ("hookqueue.task.type", *(values[i] for i in range(1, len(values), 2)))
            vals = (values[0], *(values[i] for i in range(2, len(values), 2)))
            cached = self._attrs[values] = dict(zip(keys, vals, strict=True))
        return cached

    @hookimpl
    def hookqueue_event(self, events: Sequence[TaskEvent]) -> None:
        """Record counters and histograms for a batch of events (nothing while no meter
        provider is configured)."""
        if not self.metrics:
            return
        instruments = self._meter_instruments()
        if instruments is None:
            return
        totals: dict[tuple[str, ...], int] = {}
        started = EventKind.STARTED
        wait = instruments.wait
        duration = instruments.duration
        histograms = self.histograms
        for event in events:
            kind = event.kind
            task = event.task
            name, extra = EVENT_COUNTERS[kind]
            key: tuple[str, ...] = (name, task.task_type)
            for label, value in extra:
                key += (_LABELS[label], value)
            totals[key] = totals.get(key, 0) + 1
            if not histograms:
                continue
            if kind is started:
                ready = task.run_after if task.run_after > task.created_at else task.created_at
                seconds = (event.at - ready).total_seconds()
                wait.record(seconds if seconds > 0.0 else 0.0, self._attributes(task.task_type))
            elif event.duration is not None:
                duration.record(
                    event.duration,
                    self._attributes(task.task_type, "hookqueue.outcome", kind.value),
                )
        counters = instruments.counters
        for key, n in totals.items():
            counters[key[0]].add(n, self._attributes(*key[1:]))

    # -- hooks: traces -------------------------------------------------------------------------

    def inject(self, new_task: NewTask) -> NewTask:
        """``new_task`` with the current trace context added to its headers (unchanged outside
        a span, or when the caller set ``traceparent`` already: an explicit context wins)."""
        if not self.traces or not trace.get_current_span().get_span_context().is_valid:
            return new_task
        headers = new_task.headers
        if TRACEPARENT in headers:
            return new_task
        carrier: dict[str, str] = {}
        self._propagator().inject(carrier)
        added = {k: v for k, v in carrier.items() if k not in headers}
        if not added:
            return new_task
        return attrs.evolve(new_task, headers={**headers, **added})

    @hookimpl(wrapper=True)
    def hookqueue_enqueue(
        self, new_tasks: list[NewTask]
    ) -> Generator[None, list[NewTask], list[NewTask]]:
        """Carry the enqueuing span's context in the tasks' headers."""
        result = yield
        if not self.traces or not trace.get_current_span().get_span_context().is_valid:
            return result  # nothing to carry (the common case: one check per batch)
        try:
            return [self.inject(t) for t in result]
        except Exception:  # tracing never refuses a task
            log.exception("opentelemetry: injecting the trace context failed; enqueued without it")
            return result

    def extract(self, headers: Mapping[str, Any]) -> otel_context.Context:
        """The context carried in a task's headers (the current context when there is none)."""
        carrier = {k: v for k, v in headers.items() if isinstance(v, str)}
        return self._propagator().extract(carrier)

    @hookimpl(wrapper=True)
    def hookqueue_execute(
        self, task: Task, worker_id: str
    ) -> Generator[None, Awaitable[Any], Awaitable[Any]]:
        """Run the attempt inside a span whose parent is the span that enqueued the task."""
        inner = yield
        if not self.traces:
            return inner
        try:
            tracer = self._tracer()
            if tracer is None:
                return inner
            parent = self.extract(task.headers)
        except Exception:
            log.exception("opentelemetry: cannot trace task %s; running it untraced", task.id)
            return inner
        return self._traced(inner, tracer, parent, task, worker_id)

    async def _traced(
        self,
        inner: Awaitable[Any],
        tracer: trace.Tracer,
        parent: otel_context.Context,
        task: Task,
        worker_id: str,
    ) -> Any:
        span: trace.Span | None = None
        token: object | None = None
        try:
            span = tracer.start_span(
                f"run {task.task_type}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "hookqueue",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": task.queue,
                    "messaging.message.id": str(task.id),
                    "hookqueue.task.type": task.task_type,
                    "hookqueue.task.attempt": task.attempts,
                    "hookqueue.task.max_attempts": task.max_attempts,
                    "hookqueue.task.priority": task.priority,
                    "hookqueue.worker.id": worker_id,
                },
            )
            # The attempt's span is current inside the handler: its own spans nest under it
            # and the baggage of the enqueuing request is visible to it.
            token = otel_context.attach(trace.set_span_in_context(span, parent))
        except Exception:
            log.exception("opentelemetry: starting the span of task %s failed", task.id)
            self._end(span, token, None)
            span = token = None
        if span is None:
            return await inner
        try:
            result = await inner
        except BaseException as exc:
            self._end(span, token, exc)
            raise
        self._end(span, token, None)
        return result

    @staticmethod
    def _end(span: trace.Span | None, token: object | None, exc: BaseException | None) -> None:
        """Record the outcome and end the span; never raises (the task's outcome stands)."""
        if token is not None:
            try:
                otel_context.detach(token)  # type: ignore[arg-type]
            except Exception:
                log.exception("opentelemetry: detaching the attempt's context failed")
        if span is None:
            return
        try:
            if isinstance(exc, asyncio.CancelledError):
                try:
                    reason = current_execution().cancel_reason
                except LookupError:
                    reason = None
                # The worker's timeout cancels the attempt before it names the reason.
                reason = reason or "timeout"
                span.set_attribute("hookqueue.task.cancel_reason", reason)
                if reason != "shutdown":  # released at shutdown: not the task's failure
                    span.set_status(Status(StatusCode.ERROR, f"cancelled: {reason}"))
            elif exc is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        except Exception:
            log.exception("opentelemetry: recording the attempt's outcome failed")
        try:
            span.end()
        except Exception:
            log.exception("opentelemetry: ending the attempt's span failed")


# ---------------------------------------------------------------------------------------------
# the plugin (module level): the global providers
# ---------------------------------------------------------------------------------------------

_default = OpenTelemetryExporter(name="opentelemetry")


def default_exporter() -> OpenTelemetryExporter:
    """The exporter the ``opentelemetry`` entry point delegates to (global providers)."""
    return _default


# The per-task wrappers are the default exporter's own bound methods (not functions that
# delegate to them): one generator per task instead of two.
#: Carry the enqueuing span's context in the task's headers (global propagator).
hookqueue_enqueue = _default.hookqueue_enqueue
#: Run each attempt inside a span of the global tracer provider.
hookqueue_execute = _default.hookqueue_execute


#: Record metrics with the global meter provider (the default exporter's own method).
hookqueue_event = _default.hookqueue_event


@hookimpl
def hookqueue_queue_open(queue: Queue) -> None:
    """Observe the gauges of every queue opened in this process."""
    _default.hookqueue_queue_open(queue)


@hookimpl
def hookqueue_queue_close(queue: Queue) -> None:
    """Stop observing a closed queue."""
    _default.hookqueue_queue_close(queue)
