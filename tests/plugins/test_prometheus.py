"""The ``prometheus`` plugin: scrape-time database gauges, event counters and histograms,
``hookqueue metrics serve|text``, and the install hint without the extra."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hookqueue import EventKind, FakeClock, Queue, Task, TaskStatus, ValidationError, WorkerEngine
from hookqueue.contrib.contracts.exporter import AlwaysRaises, ExporterContract
from hookqueue.core.cli import main
from hookqueue.core.models import WorkerInfo
from hookqueue.core.plugins import make_plugin_manager, plugin_statuses
from hookqueue.plugins import limits as limits_plugin
from hookqueue.plugins.limits import set_limit
from hookqueue.plugins.metrics import EVENT_COUNTERS, EventMetrics
from hookqueue.plugins.prometheus import PrometheusExporter, default_exporter

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, parsed with prometheus-client's own parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return parse(response.read().decode())


# ---------------------------------------------------------------------------------------------
# the exporter contract
# ---------------------------------------------------------------------------------------------


class TestPrometheusContract(ExporterContract):
    def make_exporter(self) -> PrometheusExporter:
        return PrometheusExporter(health=False)

    def counted(self, exporter: PrometheusExporter, kind: EventKind, task_type: str) -> int:
        family, extra = EVENT_COUNTERS[kind.value]
        labels = {"task_type": task_type, **dict(extra)}
        return int(sample(parse(exporter.text()), f"hookqueue_{family}_total", **labels) or 0)

    def break_exporter(self, exporter: PrometheusExporter) -> bool:
        exporter.events = AlwaysRaises()  # type: ignore[assignment]
        return True


# ---------------------------------------------------------------------------------------------
# scraping
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def q(db_path: Path, clock: FakeClock) -> Iterator[Queue]:
    queue = Queue(db_path, load_entrypoints=False, clock=clock, durability="normal")
    yield queue
    queue.close()


def test_gauges_are_read_from_the_database_at_scrape_time(q: Queue, clock: FakeClock) -> None:
    path = q.db.location
    exporter = PrometheusExporter([q])
    q.enqueue("email")
    q.enqueue("email", queue="bulk", delay=60)
    q.enqueue("resize")
    q.runtime.lease("w1", limit=1)  # one email runs
    q.runtime.register_worker(
        WorkerInfo(worker_id="w1", hostname="h", pid=1, queues=("default",), concurrency=1,
                   started_at=clock.now(), heartbeat_at=clock.now())
    )  # fmt: skip
    clock.advance(30)
    with exporter.serve(port=0) as server:
        assert server.host == "127.0.0.1" and server._httpd.server_address[0] == "127.0.0.1"
        samples = scrape(server.url)
        db = {"database": path}
        assert sample(samples, "hookqueue_database_up", **db) == 1.0
        assert sample(samples, "hookqueue_tasks", **db, task_type="email", status="running") == 1.0
        assert sample(samples, "hookqueue_tasks", **db, task_type="email", status="queued") == 1.0
        assert sample(samples, "hookqueue_tasks", **db, task_type="resize", status="queued") == 1.0
        assert sample(samples, "hookqueue_tasks", **db, task_type="resize", status="failed") == 0.0
        assert sample(samples, "hookqueue_queue_tasks", **db, queue="default", state="due") == 1.0
        assert (
            sample(samples, "hookqueue_queue_tasks", **db, queue="default", state="running") == 1.0
        )
        assert sample(samples, "hookqueue_queue_tasks", **db, queue="bulk", state="delayed") == 1.0
        assert (
            sample(samples, "hookqueue_oldest_queued_task_age_seconds", **db, queue="default")
            == 30.0
        )
        assert (
            sample(samples, "hookqueue_oldest_queued_task_age_seconds", **db, queue="bulk") == 0.0
        )
        assert sample(samples, "hookqueue_workers", **db, state="active") == 1.0
        assert sample(samples, "hookqueue_healthy", **db) == 1.0

        # No caching: the next scrape sees the next state.
        q.enqueue_many([{"task_type": "resize"}] * 3)
        clock.advance(60)  # the worker's heartbeat is now 90 s old
        samples = scrape(server.url)
        assert sample(samples, "hookqueue_tasks", **db, task_type="resize", status="queued") == 4.0
        assert sample(samples, "hookqueue_workers", **db, state="stale") == 1.0
        assert sample(samples, "hookqueue_healthy", **db) == 0.0
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)


def test_counters_and_histograms_from_events(q: Queue, clock: FakeClock) -> None:
    exporter = PrometheusExporter(health=False)
    queue = Queue(q.db, load_entrypoints=False, clock=clock, plugins=[exporter])

    def work(task: Task) -> None:
        clock.advance(0.5)
        if task.payload == "bad":
            raise RuntimeError("bad")

    queue.handlers.register_handler("work", work)
    for _ in range(3):
        queue.enqueue("work")
    queue.enqueue("work", "bad")
    queue.cancel(queue.enqueue("work").id)
    clock.advance(2)
    WorkerEngine(queue, worker_id="w", concurrency=1).run_until_idle()
    samples = parse(exporter.text())
    t = {"task_type": "work"}
    assert sample(samples, "hookqueue_tasks_enqueued_total", **t) == 5.0
    assert sample(samples, "hookqueue_task_attempts_total", **t) == 4.0
    assert sample(samples, "hookqueue_tasks_finished_total", **t, status="completed") == 3.0
    assert sample(samples, "hookqueue_tasks_finished_total", **t, status="failed") == 1.0
    assert sample(samples, "hookqueue_tasks_finished_total", **t, status="cancelled") == 1.0
    done = {**t, "outcome": "completed"}
    assert sample(samples, "hookqueue_task_duration_seconds_count", **done) == 3.0
    assert sample(samples, "hookqueue_task_duration_seconds_sum", **done) == pytest.approx(1.5)
    assert sample(samples, "hookqueue_task_duration_seconds_bucket", **done, le="0.25") == 0.0
    assert sample(samples, "hookqueue_task_duration_seconds_bucket", **done, le="0.5") == 3.0
    assert sample(samples, "hookqueue_task_duration_seconds_bucket", **done, le="+Inf") == 3.0
    assert sample(samples, "hookqueue_task_duration_seconds_count", **t, outcome="failed") == 1.0
    # Run one at a time, each 0.5 s: the four waited 2, 2.5, 3 and 3.5 s.
    assert sample(samples, "hookqueue_task_wait_seconds_count", **t) == 4.0
    assert sample(samples, "hookqueue_task_wait_seconds_sum", **t) == pytest.approx(11.0)
    queue.close()


def test_each_exporter_has_its_own_registry(q: Queue) -> None:
    q.enqueue("t")
    first, second = PrometheusExporter([q]), PrometheusExporter([q])
    assert first.registry is not second.registry
    assert not [m for m in prometheus_client.REGISTRY.collect() if m.name.startswith("hookqueue")]
    # Two exporters in one registry would expose the same series twice: refused at once.
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        PrometheusExporter([q], registry=first.registry)
    other = PrometheusExporter(
        [q], registry=prometheus_client.CollectorRegistry(), namespace="jobs"
    )
    text = other.text()
    assert "# TYPE jobs_tasks_enqueued_total counter" in text
    assert [k for k in parse(text) if k[0] == "jobs_tasks"]
    assert "hookqueue_" not in text


def test_a_database_that_cannot_be_read_does_not_fail_the_scrape(q: Queue) -> None:
    exporter = PrometheusExporter([q], events=EventMetrics())
    conn = apsw.Connection(str(q.db.path))
    conn.execute("DROP TABLE workers")  # damaged behind hookqueue's back
    conn.close()
    samples = parse(exporter.text())
    assert sample(samples, "hookqueue_database_up", database=str(q.db.path)) == 0.0
    assert not [k for k in samples if k[0] == "hookqueue_tasks"]


def test_limit_gauges_are_scraped(q: Queue, clock: FakeClock) -> None:
    """Per stored limit rule: the tasks running under it and the due tasks it holds back."""
    limited = Queue(q.db, load_entrypoints=False, clock=clock, plugins=[limits_plugin])
    set_limit(limited, "per-tenant", partition_by="tenant", concurrency=1)
    for tenant in ("a", "a", "a", "b"):
        limited.enqueue("job", {"tenant": tenant})
    assert len(limited.runtime.lease("w", limit=10)) == 2  # one per tenant
    samples = parse(PrometheusExporter([limited], health=False).text())
    rule = {"database": q.db.location, "limit": "per-tenant"}
    assert sample(samples, "hookqueue_limit_tasks", **rule, state="running") == 2.0
    assert sample(samples, "hookqueue_limit_tasks", **rule, state="waiting") == 2.0
    limited.close()


def test_closed_queues_drop_out(db_path: Path, clock: FakeClock) -> None:
    exporter = PrometheusExporter(health=False)
    queue = Queue(db_path, load_entrypoints=False, clock=clock, plugins=[exporter])
    twin = Queue(queue.db, load_entrypoints=False, clock=clock, plugins=[exporter])
    assert [path for path, _ in exporter.watched.databases()] == [queue.db.location]  # once
    twin.close()
    queue.close()
    assert exporter.watched.databases() == []
    assert "hookqueue_tasks{" not in exporter.text()


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        PrometheusExporter(namespace="hook-queue")
    assert info.value.field == "namespace"
    with pytest.raises(ValidationError) as info:
        PrometheusExporter().serve(port=70000)
    assert info.value.field == "port"


def test_wsgi_app_serves_the_registry(q: Queue) -> None:
    exporter = PrometheusExporter([q], health=False)
    q.enqueue("t")
    statuses: list[str] = []
    body = b"".join(
        exporter.wsgi_app()(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""},
            lambda status, headers: statuses.append(status),
        )
    )
    assert statuses == ["200 OK"]
    assert (
        sample(
            parse(body.decode()),
            "hookqueue_tasks",
            database=q.db.location,
            task_type="t",
            status="queued",
        )
        == 1.0
    )


# ---------------------------------------------------------------------------------------------
# the plugin: the process-wide exporter
# ---------------------------------------------------------------------------------------------


def test_the_default_exporter_sees_every_queue_of_the_process(queue: Queue) -> None:
    exporter = default_exporter()
    assert exporter is default_exporter()
    assert queue.db.location in [path for path, _ in exporter.watched.databases()]
    queue.handlers.register_handler("t", lambda task: None)
    queue.enqueue("t")
    WorkerEngine(queue, worker_id="w").run_until_idle()
    samples = parse(exporter.text())
    assert (
        sample(
            samples,
            "hookqueue_tasks",
            database=queue.db.location,
            task_type="t",
            status="completed",
        )
        == 1.0
    )
    # Its counters are the metrics plugin's process-wide ones.
    assert (
        sample(samples, "hookqueue_tasks_finished_total", task_type="t", status="completed") or 0
    ) >= 1.0
    queue.close()
    assert queue.db.location not in [path for path, _ in exporter.watched.databases()]


def test_without_the_extra_the_plugin_is_unavailable_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What a user without prometheus-client has: the import of the library fails.
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "hookqueue.plugins.prometheus")
    status = {s.name: s for s in plugin_statuses(make_plugin_manager())}["prometheus"]
    assert status.state == "unavailable"
    assert "pip install 'hookqueue[prometheus]'" in status.reason
    assert "prometheus_client" in status.reason
    assert main(["plugins"]) == 0
    line = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("prometheus")
    )
    assert "unavailable" in line and "pip install 'hookqueue[prometheus]'" in line
    # The other plugins still load, and the metrics subcommand is simply absent.
    with pytest.raises(SystemExit):
        main(["metrics", "text"])
    assert "'metrics' is not one of the choices" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# `hookqueue metrics text|serve`
# ---------------------------------------------------------------------------------------------


def test_metrics_text_command(q: Queue, capsys: pytest.CaptureFixture[str]) -> None:
    q.enqueue("email")
    assert main(["metrics", "text", "--db", q.db.location]) == 0
    samples = parse(capsys.readouterr().out)
    assert (
        sample(
            samples, "hookqueue_tasks", database=q.db.location, task_type="email", status="queued"
        )
        == 1.0
    )
    assert sample(samples, "hookqueue_healthy", database=q.db.location) is not None
    assert main(["metrics", "text", "--no-health", "--db", q.db.location]) == 0
    assert "hookqueue_healthy" not in capsys.readouterr().out


def test_metrics_command_refuses_a_bad_port(q: Queue, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["metrics", "serve", "--port", "99999", "--db", q.db.location])
    assert "is not a port" in capsys.readouterr().err


@pytest.mark.slow
def test_metrics_serve_in_a_real_process(db_path: Path) -> None:
    db = str(db_path)
    with Queue(db, load_entrypoints=False) as queue:
        queue.enqueue("email")
        queue.enqueue("email")
        location = queue.db.location
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKQUEUE_")}
    with subprocess.Popen(
        [sys.executable, "-m", "hookqueue", "metrics", "serve", "--port", "0", "--db", db],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            line = proc.stdout.readline()
            assert "serving metrics of" in line, (
                line,
                proc.stderr.read() if proc.poll() is not None else "",
            )
            url = line.split(" on ", 1)[1].split(" ", 1)[0]
            assert url.startswith("http://127.0.0.1:")  # bound to this machine only
            samples = scrape(url)
            assert (
                sample(
                    samples,
                    "hookqueue_tasks",
                    database=location,
                    task_type="email",
                    status="queued",
                )
                == 2.0
            )
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_task_status_values_cover_the_gauge(q: Queue) -> None:
    # Every status appears for each type, so a dashboard sees zeros instead of gaps.
    q.enqueue("t")
    samples = parse(PrometheusExporter([q], health=False).text())
    statuses = {dict(labels)["status"] for name, labels in samples if name == "hookqueue_tasks"}
    assert statuses == {s.value for s in TaskStatus}


def test_the_metrics_subcommand_is_well_formed() -> None:
    import argparse

    from hookqueue.core.plugins import Hooks
    from hookqueue.plugins import prometheus as prometheus_module

    [command] = Hooks(
        make_plugin_manager(load_entrypoints=False, plugins=[prometheus_module])
    ).cli_commands()
    assert command.name == "metrics"
    parser = argparse.ArgumentParser()
    command.configure(parser)
    args = parser.parse_args(["serve", "--port", "0", "--host", "::1"])
    assert (args.metrics_command, args.port, args.host, args.no_health) == (
        "serve",
        0,
        "::1",
        False,
    )
    assert parser.parse_args(["text"]).metrics_command == "text"
    assert parser.parse_args(["serve"]).host == "127.0.0.1"  # this machine only, by default
    with pytest.raises(SystemExit):
        parser.parse_args([])  # an action is required


def test_the_process_wide_exporter_says_when_its_counters_cannot_move(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="hookqueue.prometheus")
    with Queue(db_path, block=["metrics"]):
        pass
    assert "the 'metrics' plugin is not active" in caplog.text


async def test_asgi_app_serves_the_registry(q: Queue) -> None:
    exporter = PrometheusExporter([q], health=False, name="asgi-exporter")
    q.enqueue("t")
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "query_string": b"",
        "headers": [],
    }
    await exporter.asgi_app()(scope, receive, send)
    assert sent[0]["status"] == 200
    body = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    assert (
        sample(
            parse(body), "hookqueue_tasks", database=q.db.location, task_type="t", status="queued"
        )
        == 1.0
    )
    assert {
        s.name
        for s in plugin_statuses(make_plugin_manager(load_entrypoints=False, plugins=[exporter]))
    } >= {"asgi-exporter"}


def test_metrics_text_as_json(q: Queue, capsys: pytest.CaptureFixture[str]) -> None:
    q.enqueue("email")
    assert main(["metrics", "text", "--json", "--db", q.db.location]) == 0
    families = {f["name"]: f for f in json.loads(capsys.readouterr().out)}
    queued = [
        s
        for s in families["hookqueue_tasks"]["samples"]
        if s["labels"].get("task_type") == "email" and s["labels"].get("status") == "queued"
    ]
    assert [s["value"] for s in queued] == [1.0]
    assert families["hookqueue_tasks"]["type"] == "gauge" and families["hookqueue_tasks"]["help"]


def test_stats_refuses_an_infinite_window_and_a_missing_database(
    q: Queue, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["stats", "--window", "inf", "--db", q.db.location])
    assert info.value.code == 2 and "finite" in capsys.readouterr().err
    missing = tmp_path / "nowhere" / "typo.db"
    assert main(["stats", "--db", str(missing)]) == 2
    assert "no hookqueue database there" in capsys.readouterr().err
    assert not missing.parent.exists()
