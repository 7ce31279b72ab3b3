"""The ``opentelemetry`` plugin: a span per attempt parented by the enqueuing span, metrics
through the OpenTelemetry API, robustness, and the install hint without the extra."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from hookqueue import EventKind, FakeClock, Queue, Task, TaskStatus, WorkerEngine, hookimpl
from hookqueue.contrib.contracts.exporter import (
    AlwaysRaises,
    ExporterContract,
    RetryWhileAttemptsLeft,
)
from hookqueue.core.cli import main
from hookqueue.core.plugins import make_plugin_manager, plugin_statuses
from hookqueue.plugins.metrics import EVENT_COUNTERS
from hookqueue.plugins.opentelemetry import OpenTelemetryExporter, default_exporter


class Telemetry:
    """An SDK tracer and meter provider that keep everything in memory."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("app")

    def exporter(self, **kwargs: Any) -> OpenTelemetryExporter:
        options = {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}
        return OpenTelemetryExporter(**{**options, **kwargs})

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if name is None or s.name == name]

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == metric
            for point in m.data.data_points
        ]

    def value(self, metric: str, **attributes: Any) -> Any:
        found = [p for p in self.points(metric) if dict(p.attributes) == attributes]
        assert len(found) <= 1
        return found[0] if found else None

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.shutdown()


def open_queue(path: Path, clock: FakeClock, *plugins: Any) -> Queue:
    return Queue(path, load_entrypoints=False, clock=clock, durability="normal", plugins=plugins)


# ---------------------------------------------------------------------------------------------
# the exporter contract
# ---------------------------------------------------------------------------------------------


class _RaisingProcessor(SpanProcessor):
    """A span processor that raises when a span starts or when it ends."""

    def __init__(self, when: str) -> None:
        self.when = when

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.when == "start":
            raise RuntimeError("span processor broken (start)")

    def on_end(self, span: Any) -> None:
        if self.when == "end":
            raise RuntimeError("span processor broken (end)")


class TestOpenTelemetryContract(ExporterContract):
    def make_exporter(self) -> OpenTelemetryExporter:
        self.telemetry = Telemetry()
        return self.telemetry.exporter()

    def counted(self, exporter: OpenTelemetryExporter, kind: EventKind, task_type: str) -> int:
        name, extra = EVENT_COUNTERS[kind.value]
        keys = {"status": "hookqueue.task.status", "reason": "hookqueue.retry.reason"}
        attributes = {"hookqueue.task.type": task_type, **{keys[k]: v for k, v in extra}}
        point = self.telemetry.value(f"hookqueue.{name}", **attributes)
        return 0 if point is None else int(point.value)

    def break_exporter(self, exporter: OpenTelemetryExporter) -> bool:
        broken = TracerProvider()
        broken.add_span_processor(_RaisingProcessor("end"))  # spans start, then ending raises
        exporter.tracer_provider = broken
        exporter.meter_provider = AlwaysRaises()  # type: ignore[assignment]
        # The propagator stays: a broken one stops tracing before any span starts (that
        # path has its own test below), and this one must reach the span's end.
        return True


# ---------------------------------------------------------------------------------------------
# traces
# ---------------------------------------------------------------------------------------------


def test_the_attempt_span_is_a_child_of_the_enqueuing_span(
    db_path: Path, clock: FakeClock, telemetry: Telemetry
) -> None:
    queue = open_queue(db_path, clock, telemetry.exporter())
    inside: dict[str, Any] = {}

    async def handler(task: Task) -> str:
        # The attempt's span is current in the handler; its own spans nest under it, and the
        # request's baggage came along.
        inside["span"] = trace.get_current_span().get_span_context()
        inside["baggage"] = baggage.get_baggage("tenant")
        with telemetry.tracer.start_as_current_span("handler work"):
            pass
        return "ok"

    queue.handlers.register_handler("email", handler)
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with telemetry.tracer.start_as_current_span("POST /signup") as request:
            task = queue.enqueue("email", {"to": "a@b.c"}, queue="mail")
    finally:
        otel_context.detach(token)
    assert task.headers["traceparent"].split("-")[2] == format(
        request.get_span_context().span_id, "016x"
    )
    assert queue.get(task.id).headers == task.headers  # stored with the task

    WorkerEngine(queue, worker_id="w1", queues=("mail",)).run_until_idle()
    [attempt] = telemetry.finished("run email")
    [work] = telemetry.finished("handler work")
    assert attempt.kind is SpanKind.CONSUMER
    assert attempt.context.trace_id == request.get_span_context().trace_id
    assert (
        attempt.parent is not None and attempt.parent.span_id == request.get_span_context().span_id
    )
    assert work.parent is not None and work.parent.span_id == attempt.context.span_id
    assert inside["span"].span_id == attempt.context.span_id
    assert inside["baggage"] == "acme"
    assert dict(attempt.attributes or {}) == {
        "messaging.system": "hookqueue",
        "messaging.operation.type": "process",
        "messaging.destination.name": "mail",
        "messaging.message.id": str(task.id),
        "hookqueue.task.type": "email",
        "hookqueue.task.attempt": 1,
        "hookqueue.task.max_attempts": 1,
        "hookqueue.task.priority": 100,
        "hookqueue.worker.id": "w1",
    }
    assert attempt.status.status_code is StatusCode.UNSET
    queue.close()


def test_every_attempt_is_a_sibling_under_the_enqueuing_span(
    db_path: Path, clock: FakeClock, telemetry: Telemetry
) -> None:
    queue = open_queue(db_path, clock, telemetry.exporter(), RetryWhileAttemptsLeft())

    def flaky(task: Task) -> int:
        if task.attempts < 3:
            raise ConnectionError(f"attempt {task.attempts} fails")
        return task.attempts

    queue.handlers.register_handler("flaky", flaky)
    with telemetry.tracer.start_as_current_span("request") as request:
        task = queue.enqueue("flaky", max_attempts=3)
    WorkerEngine(queue, worker_id="w").run_until_idle()
    assert queue.get(task.id).status is TaskStatus.COMPLETED
    attempts = sorted(
        telemetry.finished("run flaky"), key=lambda s: s.attributes["hookqueue.task.attempt"]
    )
    assert [s.attributes["hookqueue.task.attempt"] for s in attempts] == [1, 2, 3]
    assert {s.parent.span_id for s in attempts if s.parent} == {request.get_span_context().span_id}
    assert [s.status.status_code for s in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert attempts[0].status.description == "ConnectionError: attempt 1 fails"
    [event] = attempts[0].events
    assert event.name == "exception" and event.attributes["exception.type"] == "ConnectionError"
    queue.close()


def test_the_context_crosses_to_another_queue_on_the_same_file(
    db_path: Path, clock: FakeClock, telemetry: Telemetry
) -> None:
    # The producer and the worker share nothing but the database file, as two processes do.
    producer = open_queue(db_path, clock, telemetry.exporter())
    with telemetry.tracer.start_as_current_span("request") as request:
        producer.enqueue("t")
    producer.close()
    elsewhere = Telemetry()
    worker_queue = open_queue(db_path, clock, elsewhere.exporter())
    worker_queue.handlers.register_handler("t", lambda task: None)
    WorkerEngine(worker_queue, worker_id="w").run_until_idle()
    [attempt] = elsewhere.finished("run t")
    assert attempt.parent is not None and attempt.parent.is_remote
    assert attempt.parent.span_id == request.get_span_context().span_id
    worker_queue.close()
    elsewhere.shutdown()


def test_outside_a_span_nothing_is_added_and_the_attempt_starts_a_trace(
    db_path: Path, clock: FakeClock, telemetry: Telemetry
) -> None:
    queue = open_queue(db_path, clock, telemetry.exporter())
    queue.handlers.register_handler("t", lambda task: None)
    task = queue.enqueue("t", headers={"tenant": "a"})
    assert task.headers == {"tenant": "a"}
    WorkerEngine(queue, worker_id="w").run_until_idle()
    [attempt] = telemetry.finished("run t")
    assert attempt.parent is None
    queue.close()


def test_a_traceparent_given_by_the_caller_wins(
    db_path: Path, clock: FakeClock, telemetry: Telemetry
) -> None:
    queue = open_queue(db_path, clock, telemetry.exporter())
    queue.handlers.register_handler("t", lambda task: None)
    upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with telemetry.tracer.start_as_current_span("local"):
        task = queue.enqueue("t", headers={"traceparent": upstream})
    assert task.headers == {"traceparent": upstream}
    WorkerEngine(queue, worker_id="w").run_until_idle()
    [attempt] = telemetry.finished("run t")
    assert (
        attempt.parent is not None and format(attempt.parent.span_id, "016x") == "b7ad6b7169203331"
    )
    assert format(attempt.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    queue.close()


async def test_timeouts_and_cancellations_end_the_span_with_the_reason(
    db_path: Path, clock: FakeClock, telemetry: Telemetry
) -> None:
    queue = open_queue(db_path, clock, telemetry.exporter())
    started = asyncio.Event()

    async def forever(task: Task) -> None:
        started.set()
        await asyncio.sleep(60)

    queue.handlers.register_handler("forever", forever)
    timed = queue.enqueue("forever", timeout=0.05)
    worker = WorkerEngine(queue, worker_id="w", concurrency=1)
    running = asyncio.create_task(worker.run_async())
    try:
        for _ in range(500):
            if queue.get(timed.id).is_terminal:
                break
            await asyncio.sleep(0.01)
        started.clear()
        cancelled = queue.enqueue("forever")
        await asyncio.wait_for(started.wait(), 5)
        await queue.cancel_async(cancelled.id)
        for _ in range(500):
            if queue.get(cancelled.id).is_terminal:
                break
            await asyncio.sleep(0.01)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
    assert queue.get(timed.id).status is TaskStatus.FAILED
    assert queue.get(cancelled.id).status is TaskStatus.CANCELLED
    spans = {s.attributes["messaging.message.id"]: s for s in telemetry.finished("run forever")}
    assert spans[str(timed.id)].attributes["hookqueue.task.cancel_reason"] == "timeout"
    assert spans[str(timed.id)].status.status_code is StatusCode.ERROR
    assert spans[str(cancelled.id)].attributes["hookqueue.task.cancel_reason"] == "cancel requested"
    assert spans[str(cancelled.id)].status.description == "cancelled: cancel requested"
    queue.close()


def test_a_broken_propagator_or_processor_never_touches_the_task(
    db_path: Path, clock: FakeClock, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = telemetry.exporter()
    queue = open_queue(db_path, clock, exporter)
    queue.handlers.register_handler("t", lambda task: task.payload)
    exporter.propagator = AlwaysRaises()  # type: ignore[assignment]
    with telemetry.tracer.start_as_current_span("request"):
        task = queue.enqueue("t", 7)  # injecting fails: enqueued without a trace context
    assert task.headers == {}
    broken = TracerProvider()
    broken.add_span_processor(_RaisingProcessor("start"))
    exporter.tracer_provider = broken
    WorkerEngine(queue, worker_id="w").run_until_idle()
    got = queue.get(task.id)
    assert (got.status, got.result, got.attempts) == (TaskStatus.COMPLETED, 7, 1)
    logged = caplog.text
    assert "injecting the trace context failed" in logged
    assert "cannot trace task" in logged  # extracting failed too: run untraced
    # With a working propagator, starting the span fails: the attempt runs untraced.
    exporter.propagator = None
    retried = queue.enqueue("t", 8)
    WorkerEngine(queue, worker_id="w").run_until_idle()
    assert queue.get(retried.id).result == 8
    assert "starting the span of task" in caplog.text
    queue.close()


def test_traces_can_be_switched_off(db_path: Path, clock: FakeClock, telemetry: Telemetry) -> None:
    queue = open_queue(db_path, clock, telemetry.exporter(traces=False))
    queue.handlers.register_handler("t", lambda task: None)
    with telemetry.tracer.start_as_current_span("request"):
        task = queue.enqueue("t")
    assert task.headers == {}
    WorkerEngine(queue, worker_id="w").run_until_idle()
    assert telemetry.finished("run t") == []
    assert telemetry.value("hookqueue.tasks_finished", **{"hookqueue.task.type": "t",
                                                          "hookqueue.task.status": "completed"}).value == 1  # fmt: skip
    queue.close()


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def test_counters_histograms_and_gauges(
    db_path: Path, clock: FakeClock, telemetry: Telemetry
) -> None:
    queue = open_queue(db_path, clock, telemetry.exporter(), RetryWhileAttemptsLeft())

    def work(task: Task) -> None:
        clock.advance(0.5)
        if task.payload == "flaky" and task.attempts == 1:
            raise RuntimeError("once")

    queue.handlers.register_handler("work", work)
    queue.enqueue("work")
    queue.enqueue("work", "flaky", max_attempts=2)
    queue.enqueue("work", queue="later", delay=300)
    clock.advance(4)
    WorkerEngine(queue, worker_id="w", concurrency=1).run_until_idle()
    clock.advance(10)

    t = {"hookqueue.task.type": "work"}
    assert telemetry.value("hookqueue.tasks_enqueued", **t).value == 3
    assert telemetry.value("hookqueue.task_attempts", **t).value == 3
    assert (
        telemetry.value(
            "hookqueue.tasks_finished", **t, **{"hookqueue.task.status": "completed"}
        ).value
        == 2
    )
    assert (
        telemetry.value("hookqueue.task_retries", **t, **{"hookqueue.retry.reason": "error"}).value
        == 1
    )
    duration = telemetry.value("hookqueue.task_duration", **t, **{"hookqueue.outcome": "completed"})
    assert duration.count == 2 and duration.sum == pytest.approx(1.0)
    assert 0.5 in duration.explicit_bounds  # seconds-scale buckets, not the SDK's defaults
    wait = telemetry.value("hookqueue.task_wait", **t)
    assert wait.count == 3

    path = str(db_path)
    db = {"hookqueue.database": path}
    later = {**db, "hookqueue.queue": "later"}
    assert (
        telemetry.value(
            "hookqueue.tasks", **db, **t, **{"hookqueue.task.status": "completed"}
        ).value
        == 2
    )
    assert (
        telemetry.value("hookqueue.tasks", **db, **t, **{"hookqueue.task.status": "queued"}).value
        == 1
    )
    assert (
        telemetry.value(
            "hookqueue.queue_tasks", **later, **{"hookqueue.queue.state": "delayed"}
        ).value
        == 1
    )
    assert telemetry.value("hookqueue.oldest_queued_task_age", **later).value == 0.0
    assert (
        telemetry.value("hookqueue.workers", **db, **{"hookqueue.worker.state": "stopped"}).value
        == 1
    )
    assert telemetry.value("hookqueue.healthy", **db).value == 1
    queue.close()


def test_histograms_can_be_switched_off(
    db_path: Path, clock: FakeClock, telemetry: Telemetry
) -> None:
    queue = open_queue(db_path, clock, telemetry.exporter(histograms=False))
    queue.handlers.register_handler("t", lambda task: None)
    queue.enqueue("t")
    WorkerEngine(queue, worker_id="w").run_until_idle()
    assert telemetry.points("hookqueue.task_duration") == []
    assert telemetry.value("hookqueue.task_attempts", **{"hookqueue.task.type": "t"}).value == 1
    queue.close()


def test_a_closed_queue_is_no_longer_observed(
    db_path: Path, clock: FakeClock, telemetry: Telemetry
) -> None:
    queue = open_queue(db_path, clock, telemetry.exporter())
    queue.enqueue("t")
    assert telemetry.points("hookqueue.tasks")
    queue.close()
    assert telemetry.points("hookqueue.tasks") == []


# ---------------------------------------------------------------------------------------------
# the plugin: global providers, and without the extra
# ---------------------------------------------------------------------------------------------


def test_without_a_configured_provider_the_entry_point_does_nothing(queue: Queue) -> None:
    exporter = default_exporter()
    # Nothing configured globally in this process: no tracer, no instruments, no overhead.
    assert exporter._tracer() is None and exporter._meter_instruments() is None
    queue.handlers.register_handler("t", lambda task: "ok")
    task = queue.enqueue("t")
    assert "traceparent" not in task.headers
    WorkerEngine(queue, worker_id="w").run_until_idle()
    assert queue.get(task.id).result == "ok"
    status = {s.name: s for s in plugin_statuses(queue.pm)}["opentelemetry"]
    assert status.state == "active"
    assert {"hookqueue_enqueue", "hookqueue_execute", "hookqueue_event"} <= set(status.hooks)


def test_a_subclass_that_overrides_a_wrapper_is_called(db_path: Path, clock: FakeClock) -> None:
    """The exporter's wrappers are ordinary pluggy wrappers: a subclass's override of one is
    called like any other plugin's, tracer provider or not."""
    seen: list[str] = []

    class Auditing(OpenTelemetryExporter):
        @hookimpl(wrapper=True)
        def hookqueue_execute(self, task: Task, worker_id: str) -> Any:
            seen.append(f"execute {task.id}")
            return (yield)

    plain = OpenTelemetryExporter(name="otel-plain")
    auditing = Auditing(name="otel-auditing")
    with Queue(db_path, clock=clock, load_entrypoints=False, plugins=[plain, auditing]) as q:
        q.handlers.register_handler("t", lambda task: "ok")
        task = q.enqueue("t")
        WorkerEngine(q, worker_id="w").run_until_idle()
        assert q.get(task.id).result == "ok"
    assert seen == [f"execute {task.id}"]


@pytest.mark.slow
def test_the_entry_point_uses_the_global_sdk_in_a_real_process(tmp_path: Path) -> None:
    # Global providers can be set once per process, so this runs in its own interpreter.
    script = textwrap.dedent(
        f"""
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from hookqueue import Queue, WorkerEngine

        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

        queue = Queue({str(tmp_path / "global.db")!r})
        queue.handlers.register_handler("t", lambda task: None)
        with trace.get_tracer("app").start_as_current_span("request") as request:
            queue.enqueue("t")
        WorkerEngine(queue, worker_id="w").run_until_idle()
        [attempt] = [s for s in spans.get_finished_spans() if s.name == "run t"]
        assert attempt.parent.span_id == request.get_span_context().span_id
        names = {{m.name for rm in reader.get_metrics_data().resource_metrics
                  for sm in rm.scope_metrics for m in sm.metrics}}
        assert "hookqueue.tasks_finished" in names, names
        queue.close()
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOKQUEUE_", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_without_the_extra_the_plugin_is_unavailable_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "hookqueue.plugins.opentelemetry")
    status = {s.name: s for s in plugin_statuses(make_plugin_manager())}["opentelemetry"]
    assert status.state == "unavailable"
    assert "pip install 'hookqueue[otel]'" in status.reason
    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["opentelemetry"]["state"] == "unavailable"
    assert "pip install 'hookqueue[otel]'" in listed["opentelemetry"]["reason"]
    assert listed["metrics"]["state"] == "active"


def test_a_failing_meter_provider_is_reported_once(
    db_path: Path, clock: FakeClock, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        calls = 0

        def get_meter(self, *args: Any, **kwargs: Any) -> Any:
            Broken.calls += 1
            raise RuntimeError("no meters today")

    queue = open_queue(db_path, clock, telemetry.exporter(meter_provider=Broken()))
    queue.handlers.register_handler("t", lambda task: "done")
    for _ in range(3):
        queue.enqueue("t")
    WorkerEngine(queue, worker_id="w", concurrency=1).run_until_idle()
    assert [queue.get(i).result for i in (1, 2, 3)] == ["done"] * 3
    assert Broken.calls == 1  # many event batches, one attempt, one log record
    assert caplog.text.count("the meter provider failed") == 1
    assert len(telemetry.finished("run t")) == 3  # traces are unaffected
    queue.close()
