"""Prometheus exporter (extra ``hookqueue[prometheus]``).

A custom collector that, at each scrape, reads gauges from the database (tasks by type and
status, due/delayed/running tasks per queue, the oldest due task's wait, workers by state,
the health verdict) and turns an :class:`~hookqueue.plugins.metrics.EventMetrics` snapshot
into counters and histograms (enqueued, attempts, finished by status, retries, wait before
start, run duration). Every exporter has its own ``CollectorRegistry``, so several queues and
tests never collide in prometheus-client's global registry.

Nothing listens on a port unless asked: ``PrometheusExporter.serve()`` or
``hookqueue metrics serve`` bind 127.0.0.1 unless another host is given.

The module is also the ``prometheus`` plugin: it keeps track of every queue opened in this
process for :func:`default_exporter`, and adds ``hookqueue metrics serve|text``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs

# Imported at module level on purpose: without the extra installed, importing this module
# (the entry point) fails with ImportError and `hookqueue plugins` shows the pip command.
import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from hookqueue.core.errors import ValidationError
from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import CliCommand, TaskEvent
from hookqueue.core.queue import Queue
from hookqueue.core.storage import TaskStore
from hookqueue.plugins.metrics import (
    DURATION_HELP,
    EVENT_COUNTER_HELP,
    EVENT_COUNTERS,
    WAIT_HELP,
    EventMetrics,
    EventSnapshot,
    HealthThresholds,
    HistogramSnapshot,
    QueueMetrics,
    WatchedQueues,
    default_event_metrics,
    read_database_gauges,
)

__all__ = ["DEFAULT_PORT", "MetricsServer", "PrometheusExporter", "default_exporter"]

log = logging.getLogger("hookqueue.prometheus")

#: The port ``serve()`` and ``hookqueue metrics serve`` use unless told otherwise.
DEFAULT_PORT = 9464
DEFAULT_HOST = "127.0.0.1"


@attrs.define
class MetricsServer:
    """An HTTP server exposing a registry at ``/metrics`` (any path works), in a daemon
    thread. Use as a context manager, or call :meth:`close`."""

    #: The address it listens on.
    host: str
    #: The port it listens on (the one picked by the system when 0 was asked for).
    port: int
    _httpd: Any = attrs.field(repr=False)
    _thread: threading.Thread = attrs.field(repr=False)

    @property
    def url(self) -> str:
        """The scrape URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port. Idempotent."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_port(port: Any) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValidationError(
            "port",
            port,
            "must be an integer from 0 to 65535",
            f"e.g. {DEFAULT_PORT}, or 0 for any free port",
        )
    return port


def _histogram(family: HistogramMetricFamily, labels: list[str], snap: HistogramSnapshot) -> None:
    buckets = [
        ("+Inf" if bound == float("inf") else repr(bound), float(n))
        for bound, n in snap.cumulative()
    ]
    family.add_metric(labels, buckets, snap.sum)


class PrometheusExporter(Collector):
    """Exposes queues' database gauges and in-process event metrics to Prometheus.

    :param queues: queues (or databases) whose gauges to read at each scrape; more can be
        added with :meth:`add_queue`, and when the exporter is registered as a plugin every
        queue opened with it is added (``hookqueue_queue_open``).
    :param events: where the counters and histograms come from. None gives the exporter
        its own :class:`EventMetrics`, fed through this exporter's ``hookqueue_event`` when it
        is registered as a plugin; pass :func:`default_event_metrics` to read the one the
        ``metrics`` plugin feeds.
    :param registry: the registry to expose (default: a new one, not prometheus-client's
        global ``REGISTRY``); the exporter registers itself as a collector in it.
    :param namespace: the metric name prefix.
    :param thresholds: for the health gauges (see :class:`HealthThresholds`).
    :param health: also compute the health summary at each scrape (``*_healthy``,
        failure rate, throughput and run-time quantiles); it reads up to
        ``thresholds.sample_size`` recent rows, so switch it off for very frequent scrapes.
    :param name: the plugin name it registers under.
    """

    def __init__(
        self,
        queues: Iterable[Queue | TaskStore] = (),
        *,
        events: EventMetrics | None = None,
        registry: CollectorRegistry | None = None,
        namespace: str = "hookqueue",
        thresholds: HealthThresholds | None = None,
        health: bool = True,
        name: str | None = None,
    ) -> None:
        if name is not None:
            #: Read by the plugin manager as the registration name.
            self.hookqueue_name = name
        if not isinstance(namespace, str) or not namespace.replace("_", "a").isalnum():
            raise ValidationError(
                "namespace",
                namespace,
                "must be letters, digits and underscores",
                "e.g. 'hookqueue'",
            )
        self.namespace = namespace
        self._owns_events = events is None
        #: Where counters and histograms are read from.
        self.events = events if events is not None else EventMetrics()
        self.thresholds = thresholds or HealthThresholds()
        self.health = bool(health)
        #: The queues whose databases each scrape reads.
        self.watched = WatchedQueues(self.thresholds)
        #: The registry this exporter is registered in.
        self.registry = registry if registry is not None else CollectorRegistry()
        for queue in queues:
            self.add_queue(queue)
        self.registry.register(self)

    def __repr__(self) -> str:
        return f"PrometheusExporter({len(self.watched)} database(s))"

    # -- queues --------------------------------------------------------------------------------

    def add_queue(self, queue: Queue | TaskStore) -> None:
        """Read this queue's database at each scrape (a database is read once however many
        queues share it)."""
        self.watched.add(queue)

    def remove_queue(self, queue: Queue) -> None:
        """Stop reading this queue's database."""
        self.watched.discard(queue)

    # -- plugin hooks --------------------------------------------------------------------------

    @hookimpl
    def hookqueue_event(self, events: Sequence[TaskEvent]) -> None:
        """Count events into this exporter's own :class:`EventMetrics` (when it has one)."""
        if self._owns_events:
            self.events.record(events)

    @hookimpl
    def hookqueue_queue_open(self, queue: Queue) -> None:
        """Read gauges from every queue this exporter is registered with."""
        self.add_queue(queue)

    @hookimpl
    def hookqueue_queue_close(self, queue: Queue) -> None:
        """Stop reading a closed queue."""
        self.remove_queue(queue)

    # -- the collector -------------------------------------------------------------------------

    def _name(self, name: str) -> str:
        return f"{self.namespace}_{name}"

    def _event_families(self, snap: EventSnapshot) -> list[Any]:
        counters: dict[str, CounterMetricFamily] = {}
        for family, extra in EVENT_COUNTERS.values():
            if family not in counters:
                labels = ["task_type", *(name for name, _ in extra)]
                counters[family] = CounterMetricFamily(
                    self._name(family), EVENT_COUNTER_HELP[family], labels=labels
                )
        for (kind, task_type), n in sorted(snap.counts.items()):
            family, extra = EVENT_COUNTERS[kind]
            counters[family].add_metric([task_type, *(value for _, value in extra)], float(n))
        wait = HistogramMetricFamily(
            self._name("task_wait_seconds"),
            WAIT_HELP,
            labels=["task_type"],
        )
        for task_type, snap_h in sorted(snap.wait.items()):
            _histogram(wait, [task_type], snap_h)
        duration = HistogramMetricFamily(
            self._name("task_duration_seconds"),
            DURATION_HELP,
            labels=["task_type", "outcome"],
        )
        for (task_type, outcome), snap_h in sorted(snap.duration.items()):
            _histogram(duration, [task_type, outcome], snap_h)
        return [*counters.values(), wait, duration]

    def _database_families(self, databases: list[tuple[str, QueueMetrics]]) -> list[Any]:
        n = self._name
        up = GaugeMetricFamily(
            n("database_up"), "1 if the last read of the database succeeded.", labels=["database"]
        )
        tasks = GaugeMetricFamily(
            n("tasks"),
            "Tasks in the database by type and status.",
            labels=["database", "task_type", "status"],
        )
        queued = GaugeMetricFamily(
            n("queue_tasks"),
            "Tasks per queue: due (queued, may run now), delayed (queued for later), running.",
            labels=["database", "queue", "state"],
        )
        oldest = GaugeMetricFamily(
            n("oldest_queued_task_age_seconds"),
            "How long the oldest due task of each queue has waited (0 when none waits).",
            labels=["database", "queue"],
        )
        workers = GaugeMetricFamily(
            n("workers"),
            "Workers by state: active (recent heartbeat), stale (silent, never shut down), "
            "lost (stale beyond the horizon), stopped.",
            labels=["database", "state"],
        )
        limits = GaugeMetricFamily(
            n("limit_tasks"),
            "Per stored limit rule: tasks running under it (state=running) and due tasks it "
            "holds back now (state=waiting), summed over its partitions.",
            labels=["database", "limit", "state"],
        )
        families: list[Any] = [up, tasks, queued, oldest, workers, limits]
        if self.health:
            healthy = GaugeMetricFamily(
                n("healthy"), "1 if the health summary finds no problem.", labels=["database"]
            )
            failure = GaugeMetricFamily(
                n("failure_rate"),
                "Share of tasks finished in the health window that failed.",
                labels=["database"],
            )
            throughput = GaugeMetricFamily(
                n("throughput_per_second"),
                "Tasks finished per second over the health window.",
                labels=["database"],
            )
            runtime = GaugeMetricFamily(
                n("processing_time_seconds"),
                "Run time of completed tasks over the health window, by quantile.",
                labels=["database", "quantile"],
            )
            families += [healthy, failure, throughput, runtime]
        for path, metrics in databases:
            try:
                gauges = read_database_gauges(metrics.queue, self.thresholds)
                summary = metrics.get_queue_health_summary() if self.health else None
            except Exception as exc:  # a locked or broken database must not fail the scrape
                log.warning("prometheus: reading %s failed: %s", path, exc)
                up.add_metric([path], 0.0)
                continue
            up.add_metric([path], 1.0)
            for (task_type, status), count in sorted(gauges.tasks.items()):
                tasks.add_metric([path, task_type, status], float(count))
            for name, (due, delayed, running) in sorted(gauges.queues.items()):
                queued.add_metric([path, name, "due"], float(due))
                queued.add_metric([path, name, "delayed"], float(delayed))
                queued.add_metric([path, name, "running"], float(running))
                oldest.add_metric([path, name], gauges.oldest_age.get(name, 0.0))
            for state, count in gauges.workers.items():
                workers.add_metric([path, state], float(count))
            for name, (running, waiting) in sorted(gauges.limits.items()):
                limits.add_metric([path, name, "running"], float(running))
                limits.add_metric([path, name, "waiting"], float(waiting))
            if summary is not None:
                healthy.add_metric([path], 1.0 if summary["healthy"] else 0.0)
                failure.add_metric([path], summary["failure_rate"])
                throughput.add_metric([path], summary["throughput_per_second"])
                times = summary["processing_time_seconds"]
                for key, quantile in (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99")):
                    if times[key] is not None:
                        runtime.add_metric([path, quantile], times[key])
        return families

    def collect(self) -> Iterator[Any]:
        """Called by prometheus-client at each scrape: read the databases and the events."""
        yield from self._database_families(self.watched.databases())
        yield from self._event_families(self.events.snapshot())

    def describe(self) -> Iterator[Any]:
        """The families this collector yields (names only, no database read), so the
        registry can refuse a name clash at registration."""
        yield from self._database_families([])
        yield from self._event_families(EventSnapshot(counts={}, wait={}, duration={}))

    # -- exposition ----------------------------------------------------------------------------

    def text(self) -> str:
        """The exposition text (Prometheus text format 0.0.4) of this exporter's registry."""
        return prometheus_client.generate_latest(self.registry).decode("utf-8")

    def samples(self) -> list[dict[str, Any]]:
        """The same metrics as :meth:`text`, as JSON-ready records: one per family with its
        ``name``, ``type``, ``help`` and ``samples`` (each ``name``, ``labels``, ``value``)."""
        return [
            {
                "name": family.name,
                "type": family.type,
                "help": family.documentation,
                "samples": [
                    {"name": s.name, "labels": dict(s.labels), "value": s.value}
                    for s in family.samples
                ],
            }
            for family in self.registry.collect()
        ]

    def serve(self, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> MetricsServer:
        """Serve the registry over HTTP in a daemon thread.

        :param port: the port (0: any free port; read it from the result's ``port``).
        :param host: the address to bind; 127.0.0.1 by default, so nothing outside this
            machine can scrape unless you say so (e.g. ``host="0.0.0.0"``).
        :raises OSError: the port is in use or the address cannot be bound.
        """
        _check_port(port)
        httpd, thread = prometheus_client.start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(host=host, port=httpd.server_port, httpd=httpd, thread=thread)

    def wsgi_app(self) -> Callable[..., Any]:
        """A WSGI application serving this registry (mount it in your web app)."""
        return prometheus_client.make_wsgi_app(self.registry)

    def asgi_app(self) -> Callable[..., Any]:
        """An ASGI application serving this registry (mount it in your web app)."""
        return prometheus_client.make_asgi_app(self.registry)


# ---------------------------------------------------------------------------------------------
# the process-wide exporter and the plugin's hooks
# ---------------------------------------------------------------------------------------------

_default_lock = threading.Lock()
_default: PrometheusExporter | None = None


def default_exporter() -> PrometheusExporter:
    """The process-wide exporter the ``prometheus`` entry point keeps up to date: it reads
    every queue opened in this process and the ``metrics`` plugin's event counters
    (:func:`~hookqueue.plugins.metrics.default_event_metrics`).

    In a worker process: ``default_exporter().serve(port=9464)``.
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = PrometheusExporter(events=default_event_metrics())
        return _default


@hookimpl
def hookqueue_queue_open(queue: Queue) -> None:
    """Let the process-wide exporter read this queue's database."""
    default_exporter().add_queue(queue)
    if not queue.pm.has_plugin("metrics"):
        log.info(
            "prometheus: the 'metrics' plugin is not active for %s, so the process-wide "
            "exporter's event counters stay at zero; register an EventMetrics or a "
            "PrometheusExporter instance as a plugin instead",
            queue.db.location,
        )


@hookimpl
def hookqueue_queue_close(queue: Queue) -> None:
    """Forget a closed queue."""
    default_exporter().remove_queue(queue)


#: ``HOOKQUEUE_METRICS_PORT=N`` makes a worker process serve the process-wide exporter on
#: 127.0.0.1:N (``HOOKQUEUE_METRICS_HOST`` to bind elsewhere). ``hookqueue worker
#: --metrics-port N`` sets it, N + i for the i-th of several processes.
METRICS_PORT_ENV = "HOOKQUEUE_METRICS_PORT"
_worker_server: MetricsServer | None = None
_worker_server_lock = threading.Lock()  # not _default_lock: default_exporter() takes that one


@hookimpl
def hookqueue_worker_start(worker: Any) -> None:
    """Serve this process's metrics when ``HOOKQUEUE_METRICS_PORT`` asks for it (once per
    process, whatever the number of workers), so the event counters of workers started from
    the command line can be scraped."""
    global _worker_server
    raw = os.environ.get(METRICS_PORT_ENV)
    if not raw:
        return
    with _worker_server_lock:
        if _worker_server is not None:
            return
        try:
            port = _check_port(int(raw))
        except (ValueError, ValidationError):
            log.error("%s=%r is not a port number; not serving metrics", METRICS_PORT_ENV, raw)
            return
        host = os.environ.get("HOOKQUEUE_METRICS_HOST", DEFAULT_HOST)
        try:
            _worker_server = default_exporter().serve(port=port, host=host)
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d (%s)", host, port, exc)
            return
    log.info("worker %s: metrics on http://%s:%d/metrics", worker.worker_id, host, port)


# ---------------------------------------------------------------------------------------------
# `hookqueue metrics serve|text`
# ---------------------------------------------------------------------------------------------


def _port_arg(text: str) -> int:
    try:
        return _check_port(int(text))
    except (ValueError, ValidationError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)") from None


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="metrics_command", metavar="ACTION")
    sub.required = True
    serve = sub.add_parser("serve", help="serve /metrics over HTTP until interrupted")
    serve.add_argument(
        "--port",
        type=_port_arg,
        default=DEFAULT_PORT,
        help=f"default {DEFAULT_PORT}; 0 picks a free port",
    )
    serve.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 for all)",
    )
    text = sub.add_parser("text", help="print the metrics once, in the Prometheus text format")
    for p in (serve, text):
        # Also accept --db after the action; SUPPRESS keeps a value given before it.
        p.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS,
            help="(text) the metrics as JSON records instead of the Prometheus text format",
        )
        p.add_argument(
            "--no-health",
            action="store_true",
            help="skip the health summary gauges (cheaper scrapes of very large histories)",
        )


def _exporter_for(args: argparse.Namespace, queue: Queue) -> PrometheusExporter:
    # The command's process runs no workers, so its event counters are empty; the database
    # gauges are what a standalone exporter is for.
    return PrometheusExporter([queue], events=default_event_metrics(), health=not args.no_health)


def _run(args: argparse.Namespace) -> int:
    from hookqueue.core.cli import queue_from_args

    with queue_from_args(args) as queue:
        exporter = _exporter_for(args, queue)
        if args.metrics_command == "text":
            if args.json:
                from hookqueue.core.render import print_json

                print_json(exporter.samples())
                return 0
            sys.stdout.write(exporter.text())
            sys.stdout.flush()
            return 0
        stop = threading.Event()
        server = exporter.serve(port=args.port, host=args.host)
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            print(
                f"serving metrics of {queue.db.location} on {server.url} (Ctrl-C to stop)",
                flush=True,
            )
            while not stop.wait(1.0):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            server.close()
    return 0


METRICS_COMMAND = CliCommand(
    name="metrics",
    help="Prometheus metrics: 'serve' over HTTP, or print them once with 'text'",
    configure=_configure,
    run=_run,
)


@hookimpl
def hookqueue_cli_commands() -> list[CliCommand]:
    """Contribute ``hookqueue metrics serve|text``."""
    return [METRICS_COMMAND]
