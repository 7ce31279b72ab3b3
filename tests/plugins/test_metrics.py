"""The ``metrics`` plugin: QueueMetrics and its health summary, EventMetrics, ``hookqueue stats``."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import apsw
import pytest

from hookqueue import (
    EventKind,
    FakeClock,
    Queue,
    QueueDatabase,
    RetryDecision,
    Task,
    TaskStatus,
    ValidationError,
    WorkerEngine,
    hookimpl,
)
from hookqueue.contrib.contracts.exporter import START, ExporterContract, make_event
from hookqueue.core.cli import main
from hookqueue.core.models import WorkerInfo
from hookqueue.core.plugins import make_plugin_manager, plugin_statuses
from hookqueue.plugins import metrics as metrics_module
from hookqueue.plugins.metrics import (
    EventMetrics,
    HealthThresholds,
    HistogramSnapshot,
    QueueMetrics,
    default_event_metrics,
    read_database_gauges,
)
from hookqueue.plugins.metrics import cli as metrics_cli

# ---------------------------------------------------------------------------------------------
# the exporter contract
# ---------------------------------------------------------------------------------------------


class TestEventMetricsContract(ExporterContract):
    def make_exporter(self) -> EventMetrics:
        return EventMetrics()

    def counted(self, exporter: EventMetrics, kind: EventKind, task_type: str) -> int:
        return exporter.snapshot().count(kind, task_type)


class TestMetricsModuleContract(ExporterContract):
    """The module the ``metrics`` entry point registers, feeding the process-wide counters."""

    def make_exporter(self) -> Any:
        default_event_metrics().reset()
        return metrics_module

    def counted(self, exporter: Any, kind: EventKind, task_type: str) -> int:
        return default_event_metrics().snapshot().count(kind, task_type)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


class FixedRetry:
    """Retry after ``delay`` seconds while attempts are left."""

    hookqueue_name = "test-retry"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    @hookimpl(tryfirst=True)
    def hookqueue_retry(self, task: Task, now: datetime) -> RetryDecision:
        if task.attempts < task.max_attempts:
            return RetryDecision.at(now + timedelta(seconds=self.delay))
        return RetryDecision.give_up("out of attempts")


@pytest.fixture
def q(db_path: Path, clock: FakeClock) -> Iterator[Queue]:
    """A queue with the core, an immediate-retry policy and no entry points."""
    queue = Queue(
        db_path, load_entrypoints=False, clock=clock, durability="normal", plugins=[FixedRetry(0)]
    )
    yield queue
    queue.close()


def run(queue: Queue, **kwargs: Any) -> Any:
    return WorkerEngine(queue, worker_id=kwargs.pop("worker_id", "w"), **kwargs).run_until_idle()


def spend(clock: FakeClock, seconds: float) -> None:
    """Take ``seconds`` of (fake) time, as a handler doing work would."""
    clock.advance(seconds)


def register_worker(queue: Queue, worker_id: str, heartbeat: datetime) -> None:
    queue.runtime.register_worker(
        WorkerInfo(
            worker_id=worker_id, hostname="h", pid=1, queues=("default",), concurrency=1,
            started_at=heartbeat, heartbeat_at=heartbeat,
        )
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# EventMetrics
# ---------------------------------------------------------------------------------------------


def test_wait_is_measured_from_when_the_task_became_runnable(q: Queue, clock: FakeClock) -> None:
    events = EventMetrics()
    queue = Queue(q.db, load_entrypoints=False, clock=clock, plugins=[events])
    queue.handlers.register_handler("t", lambda task: None)
    queue.enqueue("t")  # runnable now
    queue.enqueue("t", delay=10)  # runnable in 10 s: its wait starts then
    clock.advance(3)
    run(queue)  # the first waited 3 s
    clock.advance(9)
    run(queue)  # the second waited 12 - 10 = 2 s
    wait = events.snapshot().wait["t"]
    assert wait.count == 2
    assert wait.sum == pytest.approx(5.0)
    assert dict(wait.cumulative())[1.0] == 0
    assert dict(wait.cumulative())[5.0] == 2


def test_duration_is_recorded_by_outcome(q: Queue, clock: FakeClock) -> None:
    events = EventMetrics()
    queue = Queue(q.db, load_entrypoints=False, clock=clock, plugins=[events, FixedRetry(0)])

    def slow(task: Task) -> int:
        clock.advance(task.payload)  # the worker times attempts with the queue's clock
        if task.attempts == 1 and task.payload == 4:
            raise RuntimeError("first attempt fails")
        return 1

    queue.handlers.register_handler("slow", slow)
    queue.enqueue("slow", 0.5)
    queue.enqueue("slow", 4, max_attempts=2)
    run(queue, concurrency=1)
    snap = events.snapshot()
    completed = snap.duration[("slow", "completed")]
    assert completed.count == 2 and completed.sum == pytest.approx(4.5)
    retried = snap.duration[("slow", "retry_scheduled")]
    assert retried.count == 1 and retried.sum == pytest.approx(4.0)
    assert snap.retries("slow") == 1
    assert snap.finished("slow") == {"completed": 2, "failed": 0, "cancelled": 0}
    json.dumps(snap.to_dict())  # JSON-ready


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    snap = HistogramSnapshot(bounds=(1.0, 2.0, 4.0), counts=(2, 2, 4, 0), sum=20.0, count=8)
    assert snap.quantile(0.25) == pytest.approx(1.0)  # rank 2: the top of the first bucket
    assert snap.quantile(0.5) == pytest.approx(2.0)
    assert snap.quantile(0.75) == pytest.approx(3.0)  # rank 6: half-way through (2, 4]
    assert snap.quantile(0.0) == pytest.approx(0.0)
    assert snap.mean == pytest.approx(2.5)
    assert snap.cumulative() == [(1.0, 2), (2.0, 4), (4.0, 8), (float("inf"), 8)]
    overflow = HistogramSnapshot(bounds=(1.0,), counts=(0, 3), sum=30.0, count=3)
    assert overflow.quantile(0.5) == 1.0  # above every bound: the largest finite bound
    empty = HistogramSnapshot(bounds=(1.0,), counts=(0, 0), sum=0.0, count=0)
    assert empty.quantile(0.5) is None and empty.mean is None
    with pytest.raises(ValidationError, match="q=1.5"):
        snap.quantile(1.5)


@pytest.mark.parametrize(
    "bounds", [(), (1.0, 1.0), (2.0, 1.0), (0.0, 1.0), (1.0, float("inf")), (True,)]
)
def test_bad_buckets_are_refused_naming_the_field(bounds: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        EventMetrics(duration_buckets=bounds)
    assert info.value.field == "duration_buckets"
    assert "strictly increasing" in str(info.value)


def test_reset_forgets_and_snapshots_are_copies() -> None:
    events = EventMetrics()
    events.record([make_event(EventKind.COMPLETED), make_event(EventKind.STARTED)])
    before = events.snapshot()
    events.record([make_event(EventKind.COMPLETED)])
    assert before.count(EventKind.COMPLETED) == 1
    assert events.snapshot().count("completed") == 2
    events.reset()
    after = events.snapshot()
    assert after.counts == {} and after.wait == {} and after.duration == {}


def test_the_entry_point_feeds_the_process_wide_counters(queue: Queue) -> None:
    default_event_metrics().reset()
    queue.handlers.register_handler("t", lambda task: "ok")
    queue.enqueue("t")
    run(queue)
    snap = default_event_metrics().snapshot()
    assert snap.count(EventKind.ENQUEUED, "t") == 1
    assert snap.finished("t")["completed"] == 1
    status = {s.name: s for s in plugin_statuses(queue.pm)}["metrics"]
    assert status.state == "active"
    assert {"hookqueue_event", "hookqueue_cli_commands"} <= set(status.hooks)


# ---------------------------------------------------------------------------------------------
# QueueMetrics: single figures
# ---------------------------------------------------------------------------------------------


def test_accepts_a_database_or_a_queue(db_path: Path) -> None:
    db = QueueDatabase(db_path)
    try:
        from_db = QueueMetrics(db)
        assert from_db.queue is Queue.for_database(db)
        assert QueueMetrics(from_db.queue).queue is from_db.queue
        with pytest.raises(ValidationError, match="neither a Queue nor a QueueDatabase"):
            QueueMetrics("not a database")  # type: ignore[arg-type]
    finally:
        Queue.for_database(db).close()
        db.close()


def test_depth_by_status_type_and_queue(q: Queue, clock: FakeClock) -> None:
    q.handlers.register_handler("a", lambda task: None)
    for _ in range(3):
        q.enqueue("a")
    q.enqueue("b")
    q.enqueue("b", queue="mail")
    q.enqueue("b", queue="mail", delay=60)
    q.cancel(q.enqueue("a").id)
    running = q.runtime.lease("w", limit=1)  # one "a" is running
    assert running[0].task_type == "a"
    m = QueueMetrics(q)
    assert m.queue_depth() == {
        "queued": 5,
        "running": 1,
        "completed": 0,
        "failed": 0,
        "cancelled": 1,
    }
    assert m.depth_by_type() == {
        "a": {"queued": 2, "running": 1, "completed": 0, "failed": 0, "cancelled": 1},
        "b": {"queued": 3, "running": 0, "completed": 0, "failed": 0, "cancelled": 0},
    }
    clock.advance(5)
    assert m.depth_by_queue() == {
        "default": {"due": 3, "delayed": 0, "running": 1, "oldest_due_age_seconds": 5.0},
        "mail": {"due": 1, "delayed": 1, "running": 0, "oldest_due_age_seconds": 5.0},
    }


def test_oldest_age_counts_only_due_tasks(q: Queue, clock: FakeClock) -> None:
    m = QueueMetrics(q)
    assert m.oldest_queued_task_age_seconds() == 0.0
    q.enqueue("t", delay=100)
    clock.advance(10)
    assert m.oldest_queued_task_age_seconds() == 0.0  # delayed: not waiting yet
    q.enqueue("t")
    clock.advance(32)
    assert m.oldest_queued_task_age_seconds() == pytest.approx(32.0)
    clock.advance(100)  # the delayed one has been due for 42 s, the other waited 132 s
    assert m.oldest_queued_task_age_seconds() == pytest.approx(132.0)


def test_throughput_over_a_window(q: Queue, clock: FakeClock) -> None:
    q.handlers.register_handler("t", lambda task: None)
    for _ in range(10):
        q.enqueue("t")
    run(q)
    clock.advance(100)
    for _ in range(5):
        q.enqueue("t")
    run(q)
    clock.advance(1)
    m = QueueMetrics(q)
    assert m.throughput(60) == {
        "window_seconds": 60.0,
        "finished": 5,
        "per_second": 5 / 60,
        "per_minute": 5.0,
    }
    assert m.throughput(300)["finished"] == 15
    with pytest.raises(ValidationError) as info:
        m.throughput(0)
    assert info.value.field == "window_seconds"


def test_processing_time_percentiles(q: Queue, clock: FakeClock) -> None:
    def timed(task: Task) -> None:
        clock.advance(task.payload)

    q.handlers.register_handler("timed", timed)
    q.handlers.register_handler("other", lambda task: spend(clock, 1000))
    for seconds in range(1, 101):
        q.enqueue("timed", seconds)
    q.enqueue("other")
    run(q, concurrency=1)  # one at a time: finished_at - started_at is the handler's time
    m = QueueMetrics(q, window_seconds=86400)
    times = m.processing_time_percentiles(task_type="timed")
    assert times["count"] == 100
    assert times["p50"] == pytest.approx(50.5)
    assert times["p90"] == pytest.approx(90.1)
    assert times["p99"] == pytest.approx(99.01)
    assert times["max"] == pytest.approx(100.0)
    assert times["mean"] == pytest.approx(50.5)
    assert m.processing_time_percentiles()["max"] == pytest.approx(1000.0)
    assert m.processing_time_percentiles(60)["count"] == 1  # only the last 60 s: "other"


def test_sample_size_bounds_what_is_read_but_not_throughput(q: Queue) -> None:
    q.handlers.register_handler("t", lambda task: None)
    for _ in range(10):
        q.enqueue("t")
    run(q)
    summary = QueueMetrics(q, sample_size=4).get_queue_health_summary()
    assert summary["finished_in_window"] == 10
    assert summary["processing_time_seconds"]["count"] == 4
    assert summary["sampled"] is True
    assert QueueMetrics(q).get_queue_health_summary()["sampled"] is False


def test_worker_states(q: Queue, clock: FakeClock) -> None:
    now = clock.now()
    register_worker(q, "fresh", now)
    register_worker(q, "silent", now - timedelta(seconds=120))
    register_worker(q, "ancient", now - timedelta(hours=3))
    register_worker(q, "done", now)
    q.runtime.worker_stopped("done")
    workers = QueueMetrics(q).worker_summary()
    assert (workers["active"], workers["stale"], workers["lost"], workers["stopped"]) == (
        1,
        1,
        1,
        1,
    )
    assert workers["active_ids"] == ["fresh"] and workers["stale_ids"] == ["silent"]
    relaxed = QueueMetrics(q, worker_timeout_seconds=300, stale_worker_horizon_seconds=None)
    assert relaxed.worker_summary()["active"] == 2
    assert relaxed.worker_summary()["stale"] == 1  # no horizon: "ancient" stays stale


# ---------------------------------------------------------------------------------------------
# QueueMetrics: the health summary
# ---------------------------------------------------------------------------------------------

COMPAT_KEYS = {
    "queue_depth", "oldest_queued_task_age_seconds", "success_rate", "failure_rate",
    "throughput_per_second", "active_workers", "retry", "processing_time_seconds",
    "timestamp", "healthy", "reasons", "depth_by_type",
}  # fmt: skip


def test_summary_has_the_promised_keys_and_is_json(q: Queue, clock: FakeClock) -> None:
    q.handlers.register_handler("ok", lambda task: spend(clock, 2))
    q.handlers.register_handler("boom", lambda task: 1 / 0)
    for _ in range(3):
        q.enqueue("ok")
    q.enqueue("boom", max_attempts=1)
    run(q, concurrency=1)
    clock.advance(1)
    summary = QueueMetrics(q).get_queue_health_summary()
    assert COMPAT_KEYS <= set(summary)
    assert set(summary["queue_depth"]) == {s.value for s in TaskStatus}
    assert summary["queue_depth"]["completed"] == 3 and summary["queue_depth"]["failed"] == 1
    assert summary["success_rate"] == pytest.approx(0.75)
    assert summary["failure_rate"] == pytest.approx(0.25)
    assert summary["finished_in_window"] == 4
    assert summary["throughput_per_second"] == pytest.approx(4 / 300)
    assert summary["processing_time_seconds"]["p50"] == pytest.approx(2.0)
    assert datetime.fromisoformat(summary["timestamp"]) == clock.now()
    assert summary["healthy"] is True  # 4 finished: fewer than min_finished_for_failure_rate
    assert json.loads(json.dumps(summary)) == summary


def test_empty_queue_is_healthy_with_zero_rates(q: Queue) -> None:
    summary = QueueMetrics(q).get_queue_health_summary()
    assert summary["healthy"] is True and summary["reasons"] == []
    assert summary["success_rate"] == 0.0 and summary["failure_rate"] == 0.0
    assert summary["oldest_queued_task_age_seconds"] == 0.0
    assert summary["processing_time_seconds"]["p50"] is None
    assert summary["backlog"]["estimated_drain_seconds"] is None


def test_failure_rate_over_threshold_is_unhealthy(q: Queue) -> None:
    q.handlers.register_handler("ok", lambda task: None)
    q.handlers.register_handler("boom", lambda task: 1 / 0)
    for _ in range(15):
        q.enqueue("ok")
    for _ in range(5):
        q.enqueue("boom", max_attempts=1)
    run(q)
    summary = QueueMetrics(q).get_queue_health_summary()
    assert summary["healthy"] is False
    [reason] = summary["reasons"]
    assert "failure rate 25.0% (5 of 20" in reason and "max_failure_rate=0.2" in reason
    assert QueueMetrics(q, max_failure_rate=0.3).get_queue_health_summary()["healthy"] is True
    assert QueueMetrics(q, max_failure_rate=None).get_queue_health_summary()["healthy"] is True
    assert (
        QueueMetrics(q, min_finished_for_failure_rate=21).get_queue_health_summary()["healthy"]
        is True
    )


def test_stale_workers_are_unhealthy_until_the_horizon(q: Queue, clock: FakeClock) -> None:
    register_worker(q, "w-dead", clock.now())
    m = QueueMetrics(q)
    assert m.get_queue_health_summary()["active_workers"] == 1
    clock.advance(61)
    summary = m.get_queue_health_summary()
    assert summary["active_workers"] == 0 and summary["workers"]["stale_ids"] == ["w-dead"]
    [reason] = summary["reasons"]
    assert "w-dead (61s)" in reason and "worker_timeout_seconds=60" in reason
    clock.advance(3600)
    summary = m.get_queue_health_summary()
    assert summary["healthy"] is True and summary["workers"]["lost"] == 1


def test_due_tasks_without_an_active_worker(q: Queue, clock: FakeClock) -> None:
    q.enqueue("t", delay=30)
    m = QueueMetrics(q)
    assert m.get_queue_health_summary()["healthy"] is True  # nothing due yet
    clock.advance(31)
    summary = m.get_queue_health_summary()
    assert summary["reasons"] == [
        "no active worker while 1 task(s) are due (require_active_workers=True): "
        "start a worker (hookqueue worker)"
    ]
    register_worker(q, "w", clock.now())
    assert m.get_queue_health_summary()["healthy"] is True
    assert QueueMetrics(
        q, require_active_workers=False, worker_timeout_seconds=1
    ).get_queue_health_summary()["healthy"]


def test_old_due_task_is_unhealthy(q: Queue, clock: FakeClock) -> None:
    q.enqueue("t")
    clock.advance(601)
    m = QueueMetrics(q, require_active_workers=False)
    summary = m.get_queue_health_summary()
    assert summary["oldest_queued_task_age_seconds"] == pytest.approx(601)
    assert summary["reasons"] == [
        "the oldest due task has waited 601s, longer than max_oldest_queued_age_seconds=600"
    ]
    relaxed = QueueMetrics(q, require_active_workers=False, max_oldest_queued_age_seconds=None)
    assert relaxed.get_queue_health_summary()["healthy"] is True


def test_a_growing_backlog_is_unhealthy(q: Queue, clock: FakeClock) -> None:
    m = QueueMetrics(
        q, require_active_workers=False, max_backlog_growth=5, backlog_window_seconds=60
    )
    first = m.get_queue_health_summary()
    assert first["backlog"]["growth"] is None  # nothing to compare with yet
    q.enqueue_many([{"task_type": "t"}] * 6)
    clock.advance(10)
    summary = m.get_queue_health_summary()
    assert summary["backlog"]["growth"] == 6 and summary["backlog"]["over_seconds"] == 10
    assert summary["reasons"] == [
        "the due backlog grew by 6 task(s) in 10s, more than max_backlog_growth=5"
    ]
    clock.advance(55)  # the first observation left the window; the second (6 due) is the base
    summary = m.get_queue_health_summary()
    assert summary["backlog"]["growth"] == 0 and summary["healthy"] is True


def test_retry_figures(db_path: Path, clock: FakeClock) -> None:
    queue = Queue(db_path, load_entrypoints=False, clock=clock, plugins=[FixedRetry(60)])
    try:

        def flaky(task: Task) -> None:
            if task.attempts == 1:
                raise RuntimeError("once")

        queue.handlers.register_handler("flaky", flaky)
        queue.handlers.register_handler("boom", lambda task: 1 / 0)
        queue.enqueue("flaky", max_attempts=3)
        queue.enqueue("boom", max_attempts=2)
        queue.enqueue("boom", max_attempts=5)
        run(queue)
        retry = QueueMetrics(queue, require_active_workers=False).get_queue_health_summary()[
            "retry"
        ]
        assert retry["waiting_retry"] == 3 and retry["retried_tasks"] == 0
        clock.advance(61)
        run(queue)  # flaky completes; the first boom runs out of attempts; the other waits
        retry = QueueMetrics(queue).get_queue_health_summary()["retry"]
        assert retry == {
            "waiting_retry": 1,
            "retried_tasks": 2,
            "retry_rate": 1.0,
            "exhausted": 1,
            "mean_attempts": 2.0,
        }
    finally:
        queue.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_failure_rate", 1.5),
        ("max_failure_rate", -0.1),
        ("window_seconds", 0),
        ("worker_timeout_seconds", "60"),
        ("sample_size", 0),
        ("sample_size", 2.5),
        ("max_backlog_growth", -1),
        ("min_finished_for_failure_rate", True),
    ],
)
def test_bad_thresholds_name_the_field(q: Queue, field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        HealthThresholds(**{field: value})
    assert info.value.field == field
    with pytest.raises(ValidationError):
        QueueMetrics(q, **{field: value})


def test_unknown_threshold_names_are_refused(q: Queue) -> None:
    with pytest.raises(ValidationError, match="max_failure_rat.*not HealthThresholds fields"):
        QueueMetrics(q, max_failure_rat=0.5)


def test_database_gauges(q: Queue, clock: FakeClock) -> None:
    q.enqueue("a")
    q.enqueue("a", queue="mail", delay=5)
    q.runtime.lease("w", queues=("default",), limit=1)
    q.enqueue("b")
    clock.advance(2)
    register_worker(q, "w", clock.now())
    gauges = read_database_gauges(q)
    assert gauges.tasks[("a", "running")] == 1 and gauges.tasks[("b", "queued")] == 1
    assert gauges.queues == {"default": (1, 0, 1), "mail": (0, 1, 0)}
    assert gauges.oldest_age == {"default": pytest.approx(2.0), "mail": 0.0}
    assert gauges.workers == {"active": 1, "stale": 0, "lost": 0, "stopped": 0}


def test_a_damaged_database_raises_a_clear_error(q: Queue) -> None:
    # Summaries read the database; a table removed behind hookqueue's back is an error that
    # names the database, not a silently wrong figure.
    conn = apsw.Connection(str(q.db.path))
    conn.execute("DROP TABLE workers")
    conn.close()
    with pytest.raises(Exception, match=str(q.db.path)):
        QueueMetrics(q).get_queue_health_summary()


# ---------------------------------------------------------------------------------------------
# `hookqueue stats`
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def live_db(db_path: Path) -> str:
    """A database written on a clock close to the real one (the CLI uses the real clock), by
    the name its store gives it (what ``hookqueue stats`` shows)."""
    clock = FakeClock(datetime.now(UTC) - timedelta(seconds=30))
    queue = Queue(db_path, load_entrypoints=False, clock=clock, durability="normal")
    queue.handlers.register_handler("email", lambda task: spend(clock, 0.2))
    queue.handlers.register_handler("boom", lambda task: 1 / 0)
    for _ in range(4):
        queue.enqueue("email")
    queue.enqueue("boom")
    run(queue, concurrency=1)
    queue.enqueue("email")  # due, and no worker is left: unhealthy
    queue.close()
    return queue.db.location


def test_stats_table(live_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--db", live_db]) == 0
    out = capsys.readouterr().out
    assert "UNHEALTHY" in out and live_db in out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("type"))
    assert header.split() == ["type", "queued", "running", "completed", "failed", "cancelled"]
    assert next(line for line in lines if line.startswith("email")).split() == [
        "email",
        "1",
        "0",
        "4",
        "0",
        "0",
    ]
    assert next(line for line in lines if line.startswith("(all)")).split() == [
        "(all)",
        "1",
        "0",
        "4",
        "1",
        "0",
    ]
    assert "success 80.0%, failure 20.0%" in out
    assert "p50 200.0ms" in out
    assert "no active worker while 1 task(s) are due" in out


def test_stats_json_and_check(live_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--db", live_db, "--json", "--check"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert COMPAT_KEYS <= set(summary)
    assert summary["database"] == live_db
    assert summary["queue_depth"]["completed"] == 4 and summary["healthy"] is False
    # Thresholds from the command line.
    assert (
        main(["stats", "--db", live_db, "--json", "--window", "1h", "--max-failure-rate", "50%"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["window_seconds"] == 3600 and summary["thresholds"]["max_failure_rate"] == 0.5


def test_stats_refuses_bad_arguments(live_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["stats", "--db", live_db, "--max-failure-rate", "2"])
    assert info.value.code == 2
    assert "must be from 0 to 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stats", "--db", live_db, "--window", "soon"])
    assert "is not a duration" in capsys.readouterr().err
    assert main(["stats", "--db", live_db, "--watch", "1", "--count", "0"]) == 2
    assert "--count=0: must be >= 1" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stats_watch_refreshes_in_place_on_a_terminal(
    live_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["stats", "--db", live_db, "--watch", "0.01", "--count", "3"]) == 0
    out = terminal.getvalue()
    assert out.count("\x1b[H\x1b[2J") == 3  # cursor home + clear before each frame
    assert out.count("hookqueue stats") == 3


def test_stats_watch_without_a_terminal(live_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--db", live_db, "--watch", "0.01", "--count", "2"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out and out.count("hookqueue stats") == 2
    assert main(["stats", "--db", live_db, "--watch", "0.01", "--count", "2", "--json"]) == 0
    frames = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(frames) == 2 and all(f["queue_depth"]["completed"] == 4 for f in frames)
    # The second frame compares with the first: the backlog growth is known.
    assert frames[0]["backlog"]["growth"] is None and frames[1]["backlog"]["growth"] == 0


def test_stats_command_is_listed_by_the_plugin_manager() -> None:
    pm = make_plugin_manager(load_entrypoints=False, plugins=[metrics_module])
    [command] = pm.hook.hookqueue_cli_commands()[0]
    assert command.name == "stats"


def test_event_from_the_contract_matches_the_core_shape() -> None:
    # make_event is what third-party contract tests feed exporters: it must be a valid
    # TaskEvent for every kind (the Task validators accept it).
    for kind in EventKind:
        event = make_event(kind, at=START)
        assert event.kind is kind
        assert event.task.status.is_terminal == (event.task.finished_at is not None)


def test_stats_watch_stops_cleanly_on_ctrl_c(
    live_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(metrics_cli.time, "sleep", interrupted)
    assert main(["stats", "--db", live_db, "--watch", "5", "--check"]) == 1
    assert capsys.readouterr().out.count("hookqueue stats") == 1
