"""The metrics plugins on a PostgreSQL-backed queue: ``QueueMetrics``, its health summary and
the database gauges (``tests/plugins/test_metrics.py``), ``hookqueue stats``, the Prometheus
exporter's scrapes and ``hookqueue metrics text|serve`` (``tests/plugins/test_prometheus.py``)
and a worker's ``--metrics-port`` (``tests/plugins/test_prometheus_worker_port.py``).

They are the same functions, run with this module's ``db_path`` (the per-test database's
URL); ``Queue`` in their modules opens it even where a test blocks the entry points, and
``QueueDatabase`` in the metrics one is the PostgreSQL store (``QueueMetrics`` takes a store
object as it takes a file's). The databases are named by the store's location (a URL without
its password), as a file is by its path.

Left with SQLite, as they read no database: the exporter contracts, the histogram and
threshold arithmetic, argument and port refusals, and what the plugin manager lists (the
subcommands, the install hint without the extra, the process-wide exporter's note when
``metrics`` is blocked). Those that need a file have their PostgreSQL form below: a table
dropped with psycopg instead of apsw, a missing schema instead of a missing file; and, over
TCP, the database's name leaves the URL's password out.
"""

from __future__ import annotations

import json
import re
import urllib.parse

import psycopg
import pytest
from _onpg import PostgresQueue, db_path, load_again, refuse_a_missing_schema  # noqa: F401

from hookqueue import FakeClock
from hookqueue.core.cli import main
from hookqueue.plugins.metrics import QueueMetrics
from hookqueue.plugins.postgres import PostgresStore
from hookqueue.plugins.prometheus import PrometheusExporter

_metrics_tests = load_again("plugins/test_metrics.py")
_prometheus_tests = load_again("plugins/test_prometheus.py")
_port_tests = load_again("plugins/test_prometheus_worker_port.py")
_metrics_tests.QueueDatabase = PostgresStore  # type: ignore[attr-defined]

#: The tests that run here too, unchanged. Both modules name their queue fixture ``q`` (the
#: metrics one retries at once, the Prometheus one has no retry policy): each module's tests
#: are bound into a class of their own, with their own ``q``.
METRICS = (
    "test_wait_is_measured_from_when_the_task_became_runnable",
    "test_duration_is_recorded_by_outcome",
    "test_the_entry_point_feeds_the_process_wide_counters",
    "test_accepts_a_database_or_a_queue",
    "test_depth_by_status_type_and_queue",
    "test_oldest_age_counts_only_due_tasks",
    "test_throughput_over_a_window",
    "test_processing_time_percentiles",
    "test_sample_size_bounds_what_is_read_but_not_throughput",
    "test_worker_states",
    "test_summary_has_the_promised_keys_and_is_json",
    "test_empty_queue_is_healthy_with_zero_rates",
    "test_failure_rate_over_threshold_is_unhealthy",
    "test_stale_workers_are_unhealthy_until_the_horizon",
    "test_due_tasks_without_an_active_worker",
    "test_old_due_task_is_unhealthy",
    "test_a_growing_backlog_is_unhealthy",
    "test_retry_figures",
    "test_database_gauges",
    "test_stats_table",
    "test_stats_json_and_check",
    "test_stats_watch_refreshes_in_place_on_a_terminal",
    "test_stats_watch_without_a_terminal",
    "test_stats_watch_stops_cleanly_on_ctrl_c",
)
PROMETHEUS = (
    "test_gauges_are_read_from_the_database_at_scrape_time",
    "test_counters_and_histograms_from_events",
    "test_each_exporter_has_its_own_registry",
    "test_limit_gauges_are_scraped",
    "test_closed_queues_drop_out",
    "test_wsgi_app_serves_the_registry",
    "test_the_default_exporter_sees_every_queue_of_the_process",
    "test_metrics_text_command",
    "test_metrics_serve_in_a_real_process",
    "test_task_status_values_cover_the_gauge",
    "test_asgi_app_serves_the_registry",
    "test_metrics_text_as_json",
)


class TestMetrics:
    """``tests/plugins/test_metrics.py``, with its fixtures ``q`` and ``live_db``."""


class TestPrometheus:
    """``tests/plugins/test_prometheus.py``, with its fixture ``q``, and the worker's metrics
    port."""


for _cls, _module, _names in (
    (TestMetrics, _metrics_tests, ("q", "live_db", *METRICS)),
    (TestPrometheus, _prometheus_tests, ("q", *PROMETHEUS)),
    (TestPrometheus, _port_tests, ("test_worker_serves_its_event_counters_on_loopback",)),
):
    for _name in _names:
        _found = getattr(_module, _name)
        # In a class, static methods: a test, or a fixture's function made a fixture again.
        if _name.startswith("test_"):
            setattr(_cls, _name, staticmethod(_found))
        else:
            setattr(_cls, _name, pytest.fixture(staticmethod(_found.__wrapped__)))


# -- the PostgreSQL forms of the tests that need a file ----------------------------------------


def test_a_damaged_schema_is_a_clear_error_and_a_down_scrape(
    postgres_url: str, postgres_dsn: str, clock: FakeClock
) -> None:
    """A table dropped behind hookqueue's back: the summary raises an error naming the
    database; a scrape still answers, with ``database_up`` 0 and no task gauges."""
    with PostgresQueue(postgres_url, load_entrypoints=False, clock=clock) as q:
        q.enqueue("t")
        assert isinstance(q.db, PostgresStore)
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP TABLE {}.workers").format(psycopg.sql.Identifier(q.db.schema))
            )
        with pytest.raises(Exception, match=re.escape(q.db.location)):
            QueueMetrics(q).get_queue_health_summary()
        samples = _prometheus_tests.parse(PrometheusExporter([q]).text())
    assert _prometheus_tests.sample(samples, "hookqueue_database_up", database=q.db.location) == 0
    assert not [k for k in samples if k[0] == "hookqueue_tasks"]


def test_stats_and_metrics_text_refuse_a_missing_schema(
    postgres_url: str, postgres_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``stats`` and ``metrics text`` on a URL whose schema holds no queue refuse (exit 2,
    naming the fix) and create nothing there."""
    commands = (["stats"], ["stats", "--json"], ["metrics", "text"])
    refuse_a_missing_schema(commands, postgres_url, postgres_dsn, capsys)


def test_the_database_is_named_without_its_password(
    postgres_tcp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over TCP with a password in the URL: the scrape's ``database`` label and the health
    summary name the database by its location, which leaves the password out."""
    password = urllib.parse.urlsplit(postgres_tcp_url).password
    assert password
    with PostgresQueue(postgres_tcp_url, load_entrypoints=False) as q:
        q.enqueue("email")
        location = q.db.location
    assert password not in location
    assert main(["metrics", "text", "--db", postgres_tcp_url]) == 0
    out = capsys.readouterr().out
    assert password not in out
    samples = _prometheus_tests.parse(out)
    assert (
        _prometheus_tests.sample(
            samples, "hookqueue_tasks", database=location, task_type="email", status="queued"
        )
        == 1.0
    )
    assert main(["stats", "--json", "--db", postgres_tcp_url]) == 0
    out = capsys.readouterr().out
    assert password not in out and json.loads(out)["database"] == location
