"""Queue metrics: a health summary read from the database, and in-process event counters.

Two sources, for two questions:

- :class:`QueueMetrics` (:mod:`.health`) reads the database, from any process at any time:
  depth by status and type, how long the oldest due task has waited, throughput, success and
  failure rates, processing time percentiles, retries, workers with a recent heartbeat, and a
  ``healthy`` verdict with the reasons when it is false. ``hookqueue stats`` (:mod:`.cli`)
  prints it; :func:`read_database_gauges` (:mod:`.gauges`) is what exporters read at every
  scrape.
- :class:`EventMetrics` (:mod:`.counters`) observes ``hookqueue_event`` in this process:
  counters by event kind and task type, a histogram of how long tasks waited before an
  attempt started, and one of how long attempts ran. This plugin registers a process-wide
  instance (:func:`default_event_metrics`) through the ``metrics`` entry point; the
  Prometheus and OpenTelemetry exporters read it.

The database is read through ``Queue.counts()``, ``Queue.workers()`` and the store's named
report reads (``queue_gauges``, ``finished_count_since``, ``recent_finished`` …, see
:class:`~hookqueue.core.storage.TaskStore`), which its indexes answer: the cost of a summary
is bounded by ``HealthThresholds.sample_size``, not by the size of the history.
"""

from __future__ import annotations

from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import CliCommand

from .cli import STATS_COMMAND, render_summary
from .counters import (
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_WAIT_BUCKETS,
    DURATION_HELP,
    EVENT_COUNTER_HELP,
    EVENT_COUNTERS,
    WAIT_HELP,
    EventMetrics,
    EventSnapshot,
    HistogramSnapshot,
    default_event_metrics,
)
from .gauges import DatabaseGauges, HealthThresholds, read_database_gauges
from .health import QueueMetrics, WatchedQueues

__all__ = [
    "DEFAULT_DURATION_BUCKETS",
    "DEFAULT_WAIT_BUCKETS",
    "DURATION_HELP",
    "EVENT_COUNTERS",
    "EVENT_COUNTER_HELP",
    "STATS_COMMAND",
    "WAIT_HELP",
    "DatabaseGauges",
    "EventMetrics",
    "EventSnapshot",
    "HealthThresholds",
    "HistogramSnapshot",
    "QueueMetrics",
    "WatchedQueues",
    "default_event_metrics",
    "read_database_gauges",
    "render_summary",
]

# -- the plugin (module-level hook implementations, registered by the `metrics` entry point) --

#: Feed the process-wide :func:`default_event_metrics`.
hookqueue_event = default_event_metrics().hookqueue_event


@hookimpl
def hookqueue_cli_commands() -> list[CliCommand]:
    """Contribute ``hookqueue stats``."""
    return [STATS_COMMAND]
