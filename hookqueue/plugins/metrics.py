"""Queue metrics: a health summary read from the database, and in-process event counters.

Two sources, for two questions:

- :class:`QueueMetrics` reads the database (any process, any time): depth by status and type,
  how long the oldest due task has waited, throughput, success and failure rates, processing
  time percentiles, retries, workers with a recent heartbeat, and a ``healthy`` verdict with
  the reasons when it is false. ``hookqueue stats`` prints it.
- :class:`EventMetrics` observes ``hookqueue_event`` in this process: counters by event kind
  and task type, a histogram of how long tasks waited before an attempt started, and one of
  how long attempts ran. This module registers a process-wide instance
  (:func:`default_event_metrics`) through the ``metrics`` entry point; the Prometheus and
  OpenTelemetry exporters read it.

The database is read through ``Queue.counts()``, ``Queue.workers()`` and the store's named
report reads (``queue_gauges``, ``finished_count_since``, ``recent_finished`` …, see
:class:`~hookqueue.core.storage.TaskStore`), which its indexes answer: the cost of a summary
is bounded by ``HealthThresholds.sample_size``, not by the size of the history.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from hookqueue.core.clock import from_us, seconds_to_us
from hookqueue.core.errors import ValidationError
from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import CliCommand, EventKind, TaskEvent, TaskStatus, WorkerInfo
from hookqueue.core.queue import Queue
from hookqueue.core.storage import FinishedSample, TaskStore

__all__ = [
    "DEFAULT_DURATION_BUCKETS",
    "DEFAULT_WAIT_BUCKETS",
    "EVENT_COUNTERS",
    "DatabaseGauges",
    "EventMetrics",
    "EventSnapshot",
    "HealthThresholds",
    "HistogramSnapshot",
    "QueueMetrics",
    "WatchedQueues",
    "default_event_metrics",
    "read_database_gauges",
]

#: Upper bounds (seconds) of the run-duration histogram buckets: 1 ms to 10 min.
DEFAULT_DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
#: Upper bounds (seconds) of the wait histogram buckets: 1 ms to 1 h.
DEFAULT_WAIT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0, 1800.0, 3600.0,
)  # fmt: skip

_PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99))
_FINAL = (EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED)


# ---------------------------------------------------------------------------------------------
# in-process event metrics
# ---------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class HistogramSnapshot:
    """A histogram at one instant: per-bucket counts (not cumulative), their sum and count."""

    #: Upper bounds of the finite buckets, ascending; an implicit last bucket is ``+Inf``.
    bounds: tuple[float, ...]
    #: ``len(bounds) + 1`` counts: ``counts[i]`` observations were ``<= bounds[i]`` and above
    #: the previous bound; the last one counts observations above every bound.
    counts: tuple[int, ...]
    #: The sum of every observed value.
    sum: float
    #: The number of observations.
    count: int

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float | None:
        """Estimate the ``q`` quantile (0–1) by linear interpolation inside its bucket, as
        Prometheus' ``histogram_quantile`` does; None without observations. Values in the
        ``+Inf`` bucket are reported as the largest finite bound."""
        if not 0.0 <= q <= 1.0:
            raise ValidationError("q", q, "must be between 0 and 1", "e.g. 0.95")
        if self.count == 0:
            return None
        rank = q * self.count
        lower = 0.0
        seen = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            if n and seen + n >= rank:
                return lower + (bound - lower) * ((rank - seen) / n)
            seen += n
            lower = bound
        return self.bounds[-1] if self.bounds else None

    @property
    def mean(self) -> float | None:
        """The mean observed value, or None without observations."""
        return self.sum / self.count if self.count else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: count, sum, mean, estimated p50/p90/p99 and the buckets."""
        return {
            "count": self.count,
            "sum": self.sum,
            "mean": self.mean,
            "p50": self.quantile(0.5),
            "p90": self.quantile(0.9),
            "p99": self.quantile(0.99),
            "buckets": {("+Inf" if math.isinf(b) else repr(b)): n for b, n in self.cumulative()},
        }


class _Histogram:
    """A mutable fixed-bucket histogram; the owner holds the lock."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(
            bounds=self.bounds, counts=tuple(self.counts), sum=self.sum, count=self.count
        )


def _check_bounds(field: str, bounds: Sequence[float]) -> tuple[float, ...]:
    values = tuple(bounds)
    if (
        not values
        or not all(
            isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) and b > 0
            for b in values
        )
        or list(values) != sorted(set(values))
    ):
        raise ValidationError(
            field,
            bounds,
            "must be a non-empty, strictly increasing sequence of positive finite seconds",
            f"e.g. {DEFAULT_DURATION_BUCKETS[:4]}",
        )
    return tuple(float(b) for b in values)


@attrs.frozen(kw_only=True)
class EventSnapshot:
    """What an :class:`EventMetrics` counted up to one instant. Plain values: safe to keep."""

    #: ``{(event kind value, task type): events}`` for every kind seen.
    counts: Mapping[tuple[str, str], int]
    #: Seconds from when a task became runnable (enqueued, or its ``run_after`` if later) to
    #: the start of an attempt, by task type.
    wait: Mapping[str, HistogramSnapshot]
    #: Seconds one attempt ran, by ``(task type, outcome)``; the outcome is the event kind
    #: that ended the attempt (``completed``, ``failed``, ``retry_scheduled``, ``cancelled``).
    duration: Mapping[tuple[str, str], HistogramSnapshot]

    def count(self, kind: EventKind | str, task_type: str | None = None) -> int:
        """Events of ``kind`` (for one task type, or all)."""
        kind = EventKind(kind).value
        return sum(
            n
            for (k, t), n in self.counts.items()
            if k == kind and (task_type is None or t == task_type)
        )

    def finished(self, task_type: str | None = None) -> dict[str, int]:
        """Tasks that reached a final status: ``{"completed": n, "failed": n, "cancelled": n}``."""
        return {k.value: self.count(k, task_type) for k in _FINAL}

    def retries(self, task_type: str | None = None) -> int:
        """Attempts that failed and were scheduled again (handler errors, timeouts, and lease
        expiries of workers that died)."""
        return self.count(EventKind.RETRY_SCHEDULED, task_type) + self.count(
            EventKind.LEASE_EXPIRED, task_type
        )

    @property
    def task_types(self) -> list[str]:
        """Every task type seen, sorted."""
        return sorted({t for _, t in self.counts})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the form ``hookqueue stats --json`` would print)."""
        by_type: dict[str, dict[str, int]] = {}
        for (kind, task_type), n in sorted(self.counts.items()):
            by_type.setdefault(task_type, {})[kind] = n
        return {
            "events": by_type,
            "finished": self.finished(),
            "retries": self.retries(),
            "wait_seconds": {t: h.to_dict() for t, h in sorted(self.wait.items())},
            "duration_seconds": {
                f"{t}/{outcome}": h.to_dict() for (t, outcome), h in sorted(self.duration.items())
            },
        }


class EventMetrics:
    """A ``hookqueue_event`` observer that counts events and times attempts, in this process.

    Register an instance as a plugin (``Queue(..., plugins=[EventMetrics()])``), or read the
    process-wide one the ``metrics`` entry point feeds (:func:`default_event_metrics`).
    Thread-safe: events arrive from workers' store threads and callers' threads at once.

    It is on the hot path, so it does the least it can: one lock per batch, a dict increment
    per event, and a bucket search per started or finished attempt.

    :param duration_buckets: upper bounds (seconds) of the run-duration histogram.
    :param wait_buckets: upper bounds (seconds) of the wait-before-start histogram.
    :param name: the plugin name it registers under (``hookqueue plugins`` shows it; two
        instances in one queue need different names).
    """

    def __init__(
        self,
        *,
        duration_buckets: Sequence[float] = DEFAULT_DURATION_BUCKETS,
        wait_buckets: Sequence[float] = DEFAULT_WAIT_BUCKETS,
        name: str | None = None,
    ) -> None:
        self.duration_buckets = _check_bounds("duration_buckets", duration_buckets)
        self.wait_buckets = _check_bounds("wait_buckets", wait_buckets)
        if name is not None:
            #: Read by the plugin manager as the registration name.
            self.hookqueue_name = name
        self._lock = threading.Lock()
        self._counts: dict[tuple[EventKind, str], int] = {}
        self._wait: dict[str, _Histogram] = {}
        self._duration: dict[tuple[str, EventKind], _Histogram] = {}

    def __repr__(self) -> str:
        return f"EventMetrics({sum(self._counts.values())} events)"

    def record(self, events: Iterable[TaskEvent]) -> None:
        """Count ``events``: one per kind and type, the wait of each started attempt, and the
        duration of each attempt that ended."""
        self.hookqueue_event(events)

    @hookimpl
    def hookqueue_event(self, events: Iterable[TaskEvent]) -> None:
        """The hook: :meth:`record` a batch of events (the work is done here, not in
        ``record``, to save a call per batch on the hot path)."""
        started = EventKind.STARTED
        counts = self._counts
        observe = self._observe
        waits = self._wait
        with self._lock:
            for event in events:
                kind = event.kind
                task = event.task
                task_type = task.task_type
                # EventKind is a str enum: it keys the dict as its string value would, without
                # the cost of the .value descriptor on this path.
                key = (kind, task_type)
                counts[key] = counts.get(key, 0) + 1
                if kind is started:
                    # Waiting starts when the task became runnable: a delayed or retried task
                    # is not late before its run_after.
                    ready = task.run_after if task.run_after > task.created_at else task.created_at
                    wait = (event.at - ready).total_seconds()
                    hist = waits.get(task_type)
                    if hist is None:
                        hist = waits[task_type] = _Histogram(self.wait_buckets)
                    observe(hist, wait if wait > 0.0 else 0.0)
                elif event.duration is not None:
                    dkey = (task_type, kind)
                    hist = self._duration.get(dkey)
                    if hist is None:
                        hist = self._duration[dkey] = _Histogram(self.duration_buckets)
                    observe(hist, event.duration)

    @staticmethod
    def _observe(hist: _Histogram, value: float) -> None:
        hist.counts[bisect.bisect_left(hist.bounds, value)] += 1
        hist.sum += value
        hist.count += 1

    def snapshot(self) -> EventSnapshot:
        """A consistent copy of everything counted so far."""
        with self._lock:
            return EventSnapshot(
                counts={(str(k), t): n for (k, t), n in self._counts.items()},
                wait={t: h.snapshot() for t, h in self._wait.items()},
                duration={(t, str(k)): h.snapshot() for (t, k), h in self._duration.items()},
            )

    def reset(self) -> None:
        """Forget everything counted (exporters see counters restart, as after a restart)."""
        with self._lock:
            self._counts.clear()
            self._wait.clear()
            self._duration.clear()


_DEFAULT_EVENTS = EventMetrics()


def default_event_metrics() -> EventMetrics:
    """The process-wide :class:`EventMetrics` that the ``metrics`` entry point feeds with the
    events of every queue in this process (nothing, when the ``metrics`` plugin is blocked)."""
    return _DEFAULT_EVENTS


#: How exporters turn event kinds into counters: ``kind -> (counter name, extra labels)``,
#: the extra labels as ``(name, value)`` pairs besides the task type. Every kind has one, so
#: no transition goes uncounted.
EVENT_COUNTERS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    EventKind.ENQUEUED.value: ("tasks_enqueued", ()),
    EventKind.STARTED.value: ("task_attempts", ()),
    EventKind.COMPLETED.value: ("tasks_finished", (("status", "completed"),)),
    EventKind.FAILED.value: ("tasks_finished", (("status", "failed"),)),
    EventKind.CANCELLED.value: ("tasks_finished", (("status", "cancelled"),)),
    EventKind.RETRY_SCHEDULED.value: ("task_retries", (("reason", "error"),)),
    EventKind.LEASE_EXPIRED.value: ("task_retries", (("reason", "lease_expired"),)),
    EventKind.RELEASED.value: ("tasks_released", ()),
    EventKind.REQUEUED.value: ("tasks_requeued", ()),
    EventKind.CANCEL_REQUESTED.value: ("task_cancel_requests", ()),
}
#: The description of each counter in :data:`EVENT_COUNTERS`.
EVENT_COUNTER_HELP: dict[str, str] = {
    "tasks_enqueued": "Tasks enqueued by this process.",
    "task_attempts": "Attempts started (tasks leased) by this process's workers.",
    "tasks_finished": "Tasks that reached a final status in this process, by status.",
    "task_retries": "Failed attempts scheduled to run again: handler errors and timeouts "
    "(reason=error) or workers that stopped renewing their lease (reason=lease_expired).",
    "tasks_released": "Leases given back unfinished at worker shutdown (attempt not counted).",
    "tasks_requeued": "Failed or cancelled tasks put back to queued by Queue.retry.",
    "task_cancel_requests": "Cancellations requested for running tasks.",
}
WAIT_HELP = (
    "Seconds from when a task became runnable (enqueued, or its run_after if later) to the "
    "start of an attempt."
)
DURATION_HELP = "Seconds one attempt ran, by the outcome that ended it."


# ---------------------------------------------------------------------------------------------
# database metrics
# ---------------------------------------------------------------------------------------------


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None and attribute.name in _OPTIONAL_THRESHOLDS:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        fix = "a positive number"
        if attribute.name in _OPTIONAL_THRESHOLDS:
            fix += ", or None to switch the check off"
        raise ValidationError(attribute.name, value, "must be a positive number", f"use {fix}")


def _positive_int(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(attribute.name, value, "must be an integer >= 1", "e.g. 10000")


def _bool(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ValidationError(attribute.name, value, "must be True or False", "e.g. False")


def _rate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValidationError(
            attribute.name,
            value,
            "must be a fraction from 0 to 1",
            "e.g. 0.2 for 20%, or None to switch the check off",
        )


def _count(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None and attribute.name in _OPTIONAL_THRESHOLDS:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(attribute.name, value, "must be an integer >= 0", "e.g. 100")


_OPTIONAL_THRESHOLDS = {
    "stale_worker_horizon_seconds",
    "max_oldest_queued_age_seconds",
    "max_backlog_growth",
}


@attrs.frozen(kw_only=True)
class HealthThresholds:
    """What :meth:`QueueMetrics.get_queue_health_summary` measures over and judges against.

    Every check can be tuned; the optional ones switch off with None.
    """

    #: Seconds of history that rates, throughput, percentiles and retry figures cover.
    window_seconds: float = attrs.field(default=300.0, validator=_positive)
    #: At most this many of the most recently finished tasks are read for rates,
    #: percentiles and retry figures (throughput always counts every task in the window).
    sample_size: int = attrs.field(default=10_000, validator=_positive_int)
    #: A worker whose last heartbeat is older than this is not active. Keep it above your
    #: workers' ``heartbeat_interval`` (a quarter of ``lease_seconds`` by default).
    worker_timeout_seconds: float = attrs.field(default=60.0, validator=_positive)
    #: Workers that stopped heartbeating without shutting down make the queue unhealthy
    #: for this long; after that they count as ``lost`` and are only reported.
    stale_worker_horizon_seconds: float | None = attrs.field(default=3600.0, validator=_positive)
    #: Unhealthy when more than this fraction of the tasks finished in the window failed
    #: (cancelled tasks count for neither side). None switches the check off.
    max_failure_rate: float | None = attrs.field(default=0.2, validator=_rate)
    #: The failure rate is judged only once at least this many tasks finished in the window.
    min_finished_for_failure_rate: int = attrs.field(default=20, validator=_count)
    #: Unhealthy when the oldest due task has waited longer than this (seconds).
    max_oldest_queued_age_seconds: float | None = attrs.field(default=600.0, validator=_positive)
    #: Unhealthy when the number of due tasks grew by more than this over
    #: ``backlog_window_seconds`` (measured between calls on the same ``QueueMetrics``).
    max_backlog_growth: int | None = attrs.field(default=1000, validator=_count)
    #: How far back the backlog growth looks.
    backlog_window_seconds: float = attrs.field(default=300.0, validator=_positive)
    #: Unhealthy when tasks are due and no worker is active.
    require_active_workers: bool = attrs.field(default=True, validator=_bool)


@attrs.frozen(kw_only=True)
class DatabaseGauges:
    """The cheap, index-answered figures exporters read at every scrape."""

    #: When they were read.
    at: datetime
    #: ``{(task_type, status): tasks}`` (every status present for each type).
    tasks: Mapping[tuple[str, str], int]
    #: ``{queue: (due, delayed, running)}``: queued tasks that may run now, queued tasks
    #: waiting for a future ``run_after``, and running tasks, per queue name.
    queues: Mapping[str, tuple[int, int, int]]
    #: ``{queue: seconds}`` the oldest due task of each queue has waited (0 when none).
    oldest_age: Mapping[str, float]
    #: ``{"active": n, "stale": n, "lost": n, "stopped": n}``.
    workers: Mapping[str, int]


def _worker_state(worker: WorkerInfo, now: datetime, thresholds: HealthThresholds) -> str:
    if worker.stopped_at is not None:
        return "stopped"
    silent = (now - worker.heartbeat_at).total_seconds()
    if silent <= thresholds.worker_timeout_seconds:
        return "active"
    horizon = thresholds.stale_worker_horizon_seconds
    return "stale" if horizon is None or silent <= horizon else "lost"


def read_database_gauges(
    queue: Queue, thresholds: HealthThresholds | None = None
) -> DatabaseGauges:
    """Read the figures an exporter shows at every scrape, with index-only queries: the
    active tasks' figures read only the indexes of active tasks; the totals of finished tasks
    are counted in their own index, so their cost grows with the history kept (``prune``)."""
    thresholds = thresholds or HealthThresholds()
    now_us = queue.clock.now_us()
    now = from_us(now_us)
    by_type = queue.counts(by_type=True)
    tasks = {(t, s): n for t, statuses in by_type.items() for s, n in statuses.items()}
    queues: dict[str, tuple[int, int, int]] = {}
    oldest: dict[str, float] = {}
    for g in queue.db.queue_gauges(now_us):
        queues[g.queue] = (g.due, g.delayed, g.running)
        oldest[g.queue] = (
            0.0 if g.oldest_due_us is None else max(0.0, (now_us - g.oldest_due_us) / 1e6)
        )
    workers = dict.fromkeys(("active", "stale", "lost", "stopped"), 0)
    for w in queue.workers():
        workers[_worker_state(w, now, thresholds)] += 1
    return DatabaseGauges(at=now, tasks=tasks, queues=queues, oldest_age=oldest, workers=workers)


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _time_stats(values: list[float]) -> dict[str, Any]:
    values.sort()
    out: dict[str, Any] = {"count": len(values)}
    if not values:
        out.update({name: None for name, _ in _PERCENTILES} | {"mean": None, "max": None})
        return out
    for name, q in _PERCENTILES:
        out[name] = _percentile(values, q)
    out["mean"] = math.fsum(values) / len(values)
    out["max"] = values[-1]
    return out


class QueueMetrics:
    """Figures about a queue, read from its database; works from any process.

    :param db_or_queue: a :class:`~hookqueue.QueueDatabase` (its shared
        :class:`~hookqueue.Queue` is used) or a :class:`~hookqueue.Queue`.
    :param thresholds: what the health summary measures over and judges against.
    :param overrides: single :class:`HealthThresholds` fields, e.g. ``max_failure_rate=0.5``.

    Each method reads the database when called. The backlog-growth check compares with
    earlier calls on the same object, so keep one ``QueueMetrics`` for a periodic check.
    """

    def __init__(
        self,
        db_or_queue: TaskStore | Queue,
        *,
        thresholds: HealthThresholds | None = None,
        **overrides: Any,
    ) -> None:
        self.queue = Queue.for_database(db_or_queue)
        base = thresholds if thresholds is not None else HealthThresholds()
        unknown = set(overrides) - {f.name for f in attrs.fields(HealthThresholds)}
        if unknown:
            raise ValidationError(
                "QueueMetrics(**overrides)",
                sorted(unknown),
                "are not HealthThresholds fields",
                f"use {sorted(f.name for f in attrs.fields(HealthThresholds))}",
            )
        #: The thresholds in force.
        self.thresholds: HealthThresholds = attrs.evolve(base, **overrides) if overrides else base
        self._lock = threading.Lock()
        # (instant in µs, due tasks) of earlier summaries, for the backlog growth.
        self._backlog: collections.deque[tuple[int, int]] = collections.deque()

    def __repr__(self) -> str:
        return f"QueueMetrics({self.queue.db!r})"

    def _window(self, window_seconds: float | None) -> float:
        window = self.thresholds.window_seconds if window_seconds is None else window_seconds
        if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
            raise ValidationError(
                "window_seconds", window_seconds, "must be a positive number of seconds", "e.g. 300"
            )
        return float(window)

    # -- single figures ------------------------------------------------------------------------

    def queue_depth(self) -> dict[str, int]:
        """Tasks per status, every status present: ``{"queued": n, "running": n, ...}``."""
        return dict(self.queue.counts())

    def depth_by_type(self) -> dict[str, dict[str, int]]:
        """Tasks per type and status: ``{"email": {"queued": n, ...}, ...}``."""
        return {t: dict(s) for t, s in self.queue.counts(by_type=True).items()}

    def depth_by_queue(self) -> dict[str, dict[str, Any]]:
        """Per queue name: due and delayed queued tasks, running tasks, and how long its oldest
        due task has waited (seconds, 0 when none)."""
        gauges = read_database_gauges(self.queue, self.thresholds)
        return {
            name: {
                "due": due,
                "delayed": delayed,
                "running": running,
                "oldest_due_age_seconds": gauges.oldest_age.get(name, 0.0),
            }
            for name, (due, delayed, running) in sorted(gauges.queues.items())
        }

    def oldest_queued_task_age_seconds(self) -> float:
        """How long the longest-waiting due task has waited, in seconds (0 when none waits).

        Waiting is measured from ``run_after``: a delayed task, or one waiting for its next
        retry, is not waiting before its time comes.
        """
        now_us = self.queue.clock.now_us()
        oldest = self.queue.db.oldest_due_queued_us(now_us)
        return 0.0 if oldest is None else max(0.0, (now_us - oldest) / 1e6)

    def throughput(self, window_seconds: float | None = None) -> dict[str, float]:
        """Tasks that reached a final status in the last ``window_seconds`` (default: the
        thresholds' window), and the rate: ``{"window_seconds", "finished", "per_second",
        "per_minute"}``. Counts every task in the window (an index-only count)."""
        window = self._window(window_seconds)
        since = self.queue.clock.now_us() - seconds_to_us(window)
        finished = self.queue.db.finished_count_since(since)
        return {
            "window_seconds": window,
            "finished": finished,
            "per_second": finished / window,
            "per_minute": finished * 60.0 / window,
        }

    def _recent(self, window: float) -> list[FinishedSample]:
        since = self.queue.clock.now_us() - seconds_to_us(window)
        return self.queue.db.recent_finished(since, self.thresholds.sample_size)

    def processing_time_percentiles(
        self, window_seconds: float | None = None, *, task_type: str | None = None
    ) -> dict[str, Any]:
        """Seconds the last attempt of completed tasks ran (``finished_at - started_at``) over
        the window: ``{"count", "p50", "p90", "p95", "p99", "mean", "max"}`` (None without
        tasks). At most ``sample_size`` of the most recent tasks are read."""
        rows = self._recent(self._window(window_seconds))
        return _time_stats(
            [
                (r.finished_us - r.started_us) / 1e6
                for r in rows
                if r.status == "completed"
                and r.started_us is not None
                and (task_type is None or r.task_type == task_type)
            ]
        )

    def worker_summary(self) -> dict[str, Any]:
        """Workers by state, with the ids of active and stale ones.

        ``active``: heartbeat within ``worker_timeout_seconds``; ``stale``: silent longer but
        never shut down (it died or hangs), within ``stale_worker_horizon_seconds``; ``lost``:
        stale for longer than that; ``stopped``: shut down cleanly.
        """
        now = self.queue.now()
        out: dict[str, Any] = dict.fromkeys(("active", "stale", "lost", "stopped"), 0)
        ids: dict[str, list[str]] = {"active": [], "stale": []}
        silent: dict[str, float] = {}
        for w in self.queue.workers():
            state = _worker_state(w, now, self.thresholds)
            out[state] += 1
            if state in ids:
                ids[state].append(w.worker_id)
            if state == "stale":
                silent[w.worker_id] = (now - w.heartbeat_at).total_seconds()
        out["active_ids"] = ids["active"]
        out["stale_ids"] = ids["stale"]
        out["stale_silent_seconds"] = silent
        return out

    # -- the summary ---------------------------------------------------------------------------

    def get_queue_health_summary(self) -> dict[str, Any]:
        """Everything at once, JSON-ready, with a ``healthy`` verdict and its ``reasons``.

        Keys: ``timestamp`` (ISO 8601, UTC), ``healthy``, ``reasons`` (empty when healthy),
        ``queue_depth`` (by status), ``depth_by_type``, ``queued_due``, ``queued_delayed``,
        ``oldest_queued_task_age_seconds``, ``window_seconds``, ``finished_in_window``,
        ``throughput_per_second``, ``throughput_per_minute``, ``success_rate`` and
        ``failure_rate`` (completed and failed shares of the tasks finished in the window that
        ended either way; 0.0 when none did), ``active_workers``, ``workers``, ``retry``,
        ``processing_time_seconds``, ``backlog``, ``sampled``, ``thresholds``.
        """
        th = self.thresholds
        queue = self.queue
        now_us = queue.clock.now_us()
        now = from_us(now_us)
        window = th.window_seconds

        by_type = self.depth_by_type()
        # By status is the sum over types: one scan of the status index instead of two.
        depth = {status.value: 0 for status in TaskStatus}
        for per_status in by_type.values():
            for status, n in per_status.items():
                depth[status] += n
        due = delayed = 0
        oldest_due: int | None = None
        for g in queue.db.queue_gauges(now_us):
            due += g.due
            delayed += g.delayed
            if g.oldest_due_us is not None and (oldest_due is None or g.oldest_due_us < oldest_due):
                oldest_due = g.oldest_due_us
        oldest_age = 0.0 if oldest_due is None else max(0.0, (now_us - oldest_due) / 1e6)
        flow = self.throughput(window)
        rows = self._recent(window)
        waiting_retry = queue.db.waiting_retry_count()
        workers = self.worker_summary()

        statuses: collections.Counter[str] = collections.Counter()
        durations: list[float] = []
        retried = exhausted = attempts_total = 0
        for r in rows:
            statuses[r.status] += 1
            attempts_total += r.attempts
            if r.attempts > 1:
                retried += 1
            if r.status == "failed" and r.attempts >= r.max_attempts:
                exhausted += 1
            if r.status == "completed" and r.started_us is not None:
                durations.append((r.finished_us - r.started_us) / 1e6)
        judged = statuses["completed"] + statuses["failed"]
        success_rate = statuses["completed"] / judged if judged else 0.0
        failure_rate = statuses["failed"] / judged if judged else 0.0

        growth, span = self._backlog_growth(now_us, due)
        reasons: list[str] = []
        if workers["stale"]:
            listed = ", ".join(
                f"{wid} ({secs:.0f}s)" for wid, secs in workers["stale_silent_seconds"].items()
            )
            reasons.append(
                f"{workers['stale']} worker(s) stopped heartbeating without shutting down "
                f"(silent for longer than worker_timeout_seconds={th.worker_timeout_seconds:g}): "
                f"{listed}"
            )
        if th.require_active_workers and due and not workers["active"]:
            reasons.append(
                f"no active worker while {due} task(s) are due "
                "(require_active_workers=True): start a worker (hookqueue worker)"
            )
        if (
            th.max_failure_rate is not None
            and judged >= th.min_finished_for_failure_rate
            and failure_rate > th.max_failure_rate
        ):
            reasons.append(
                f"failure rate {failure_rate:.1%} ({statuses['failed']} of {judged} tasks "
                f"finished in the last {window:g}s) is above max_failure_rate="
                f"{th.max_failure_rate:g}"
            )
        if th.max_oldest_queued_age_seconds is not None and (
            oldest_age > th.max_oldest_queued_age_seconds
        ):
            reasons.append(
                f"the oldest due task has waited {oldest_age:.0f}s, longer than "
                f"max_oldest_queued_age_seconds={th.max_oldest_queued_age_seconds:g}"
            )
        if (
            th.max_backlog_growth is not None
            and growth is not None
            and (growth > th.max_backlog_growth)
        ):
            reasons.append(
                f"the due backlog grew by {growth} task(s) in {span:.0f}s, more than "
                f"max_backlog_growth={th.max_backlog_growth}"
            )

        per_second = flow["per_second"]
        return {
            "timestamp": now.isoformat(),
            "healthy": not reasons,
            "reasons": reasons,
            "queue_depth": depth,
            "depth_by_type": by_type,
            "queued_due": due,
            "queued_delayed": delayed,
            "oldest_queued_task_age_seconds": oldest_age,
            "window_seconds": window,
            "finished_in_window": flow["finished"],
            "throughput_per_second": per_second,
            "throughput_per_minute": flow["per_minute"],
            "success_rate": success_rate,
            "failure_rate": failure_rate,
            "finished_by_status": {s: statuses[s] for s in ("completed", "failed", "cancelled")},
            "active_workers": workers["active"],
            "workers": {
                k: workers[k]
                for k in ("active", "stale", "lost", "stopped", "active_ids", "stale_ids")
            },
            "retry": {
                "waiting_retry": waiting_retry,
                "retried_tasks": retried,
                "retry_rate": retried / len(rows) if rows else 0.0,
                "exhausted": exhausted,
                "mean_attempts": attempts_total / len(rows) if rows else 0.0,
            },
            "processing_time_seconds": _time_stats(durations),
            "backlog": {
                "growth": growth,
                "over_seconds": span,
                "estimated_drain_seconds": due / per_second if per_second > 0 else None,
            },
            "sampled": len(rows) >= th.sample_size,
            "thresholds": attrs.asdict(th),
        }

    def _backlog_growth(self, now_us: int, due: int) -> tuple[int | None, float | None]:
        """Growth of the due backlog since the oldest observation within the backlog window."""
        horizon = now_us - seconds_to_us(self.thresholds.backlog_window_seconds)
        with self._lock:
            history = self._backlog
            while history and history[0][0] < horizon:
                history.popleft()
            first = history[0] if history else None
            history.append((now_us, due))
        if first is None or first[0] >= now_us:
            return None, None
        return due - first[1], (now_us - first[0]) / 1e6


class WatchedQueues:
    """The queues an exporter reads at scrape time, one :class:`QueueMetrics` per database.

    Queues are held weakly: a queue that is garbage-collected or closed drops out. Several
    queues on one database file are read once. Thread-safe.

    :param thresholds: for the :class:`QueueMetrics` of each database.
    """

    def __init__(self, thresholds: HealthThresholds | None = None) -> None:
        self.thresholds = thresholds or HealthThresholds()
        self._lock = threading.Lock()
        self._queues: dict[int, weakref.ref[Queue]] = {}
        self._metrics: dict[str, QueueMetrics] = {}

    def __len__(self) -> int:
        return len(self.databases())

    def add(self, queue: Queue | TaskStore) -> Queue:
        """Watch ``queue`` (a database's shared queue, for a QueueDatabase); returns it."""
        q = Queue.for_database(queue)
        with self._lock:
            self._queues[id(q)] = weakref.ref(q)
        return q

    def discard(self, queue: Queue) -> None:
        """Stop watching ``queue``."""
        with self._lock:
            self._queues.pop(id(queue), None)

    def databases(self) -> list[tuple[str, QueueMetrics]]:
        """``(absolute database path, QueueMetrics)`` for each open database watched, by
        path."""
        with self._lock:
            seen: dict[str, QueueMetrics] = {}
            for key, ref in list(self._queues.items()):
                queue = ref()
                if queue is None or queue.db.closed:
                    del self._queues[key]
                    continue
                location = queue.db.location
                path = location if "://" in location else os.path.abspath(location)
                if path in seen:
                    continue
                metrics = self._metrics.get(path)
                if metrics is None or metrics.queue.db.closed:
                    # One QueueMetrics per database, kept across scrapes, so the backlog
                    # growth check has history to compare with.
                    metrics = self._metrics[path] = QueueMetrics(queue, thresholds=self.thresholds)
                seen[path] = metrics
            for path in list(self._metrics):
                if path not in seen:
                    del self._metrics[path]
            return sorted(seen.items())


# ---------------------------------------------------------------------------------------------
# the `hookqueue stats` command
# ---------------------------------------------------------------------------------------------

_STATUSES = [s.value for s in TaskStatus]


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f}ms"
    if value < 120:
        return f"{value:.2f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def _grid(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> list[str]:
    cells = [[str(h) for h in headers]] + [[str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        # The first column is a name (left-aligned); the others are numbers.
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    return [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]


def render_summary(summary: Mapping[str, Any], *, database: str = "") -> str:
    """The health summary as the text table ``hookqueue stats`` prints."""
    verdict = "HEALTHY" if summary["healthy"] else "UNHEALTHY"
    when = summary["timestamp"].replace("T", " ").split(".")[0].replace("+00:00", "")
    title = ["hookqueue stats", database, f"{when} UTC", verdict]
    lines = ["  ".join(part for part in title if part), ""]
    depth = summary["depth_by_type"]
    rows: list[list[Any]] = [[t, *(depth[t].get(s, 0) for s in _STATUSES)] for t in sorted(depth)]
    rows.append(["(all)", *(summary["queue_depth"].get(s, 0) for s in _STATUSES)])
    lines += _grid(rows, ["type", *_STATUSES])
    lines.append("")
    window = summary["window_seconds"]
    times = summary["processing_time_seconds"]
    retry = summary["retry"]
    workers = summary["workers"]
    lines += [
        f"queued:      {summary['queued_due']} due, {summary['queued_delayed']} delayed; "
        f"oldest due task waited {_fmt_seconds(summary['oldest_queued_task_age_seconds'])}",
        f"last {window:g}s:  {summary['finished_in_window']} finished, "
        f"{summary['throughput_per_second']:.2f}/s, success {summary['success_rate']:.1%}, "
        f"failure {summary['failure_rate']:.1%}",
        f"run time:    p50 {_fmt_seconds(times['p50'])}  p90 {_fmt_seconds(times['p90'])}  "
        f"p95 {_fmt_seconds(times['p95'])}  p99 {_fmt_seconds(times['p99'])}  "
        f"max {_fmt_seconds(times['max'])}  ({times['count']} completed)",
        f"retries:     {retry['waiting_retry']} waiting, {retry['retried_tasks']} finished "
        f"after more than one attempt ({retry['retry_rate']:.1%}), "
        f"{retry['exhausted']} ran out of attempts",
        f"workers:     {workers['active']} active, {workers['stale']} stale, "
        f"{workers['lost']} lost, {workers['stopped']} stopped",
    ]
    if summary["reasons"]:
        lines.append("")
        lines.append("unhealthy because:")
        lines += [f"  - {reason}" for reason in summary["reasons"]]
    return "\n".join(lines)


def _duration_arg(text: str) -> float:
    from hookqueue.core.cli import parse_duration

    seconds = parse_duration(text).total_seconds()
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than 0 seconds")
    return seconds


def _fraction_arg(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a fraction; use e.g. 0.2 or 20%"
        ) from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 0 to 1 (or 0% to 100%)")
    return value


def _configure_stats(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window",
        type=_duration_arg,
        default=None,
        metavar="DURATION",
        help="history that rates and percentiles cover (default 5m; e.g. 60s, 15m, 1h)",
    )
    parser.add_argument(
        "--watch",
        type=_duration_arg,
        nargs="?",
        const=2.0,
        default=None,
        metavar="INTERVAL",
        help="refresh in place every INTERVAL (default 2s) until Ctrl-C; with --json, "
        "print one JSON object per line",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        metavar="N",
        help="with --watch: stop after N refreshes",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when the queue is unhealthy (for monitoring scripts)",
    )
    parser.add_argument(
        "--max-failure-rate",
        type=_fraction_arg,
        default=None,
        metavar="FRACTION",
        help="unhealthy above this failure rate (default 0.2)",
    )
    parser.add_argument(
        "--worker-timeout",
        type=_duration_arg,
        default=None,
        metavar="DURATION",
        help="a worker silent this long is not active (default 60s)",
    )
    parser.add_argument(
        "--max-queue-age",
        type=_duration_arg,
        default=None,
        metavar="DURATION",
        help="unhealthy when the oldest due task waited longer (default 10m)",
    )


def _thresholds_from_args(args: argparse.Namespace) -> dict[str, Any]:
    options = {
        "window_seconds": args.window,
        "max_failure_rate": args.max_failure_rate,
        "worker_timeout_seconds": args.worker_timeout,
        "max_oldest_queued_age_seconds": args.max_queue_age,
    }
    return {k: v for k, v in options.items() if v is not None}


def _run_stats(args: argparse.Namespace) -> int:
    from hookqueue.core.cli import queue_from_args

    if args.count is not None and args.count < 1:
        raise ValidationError("--count", args.count, "must be >= 1", "e.g. --count 10")
    out = sys.stdout
    healthy = True
    with queue_from_args(args) as queue:
        metrics = QueueMetrics(queue, **_thresholds_from_args(args))
        database = queue.db.location
        shown = 0
        try:
            while True:
                summary = metrics.get_queue_health_summary()
                healthy = summary["healthy"]
                if args.json:
                    text = json.dumps(
                        {"database": database, **summary},
                        sort_keys=True,
                        indent=None if args.watch is not None else 2,
                    )
                else:
                    text = render_summary(summary, database=database)
                if args.watch is not None and not args.json and out.isatty():
                    # Home the cursor and clear the screen, then draw: the table refreshes
                    # in place instead of scrolling.
                    out.write("\x1b[H\x1b[2J")
                out.write(text + "\n")
                if args.watch is not None and not args.json and not out.isatty():
                    out.write("\n")
                out.flush()
                shown += 1
                if args.watch is None or (args.count is not None and shown >= args.count):
                    break
                time.sleep(args.watch)
        except KeyboardInterrupt:
            pass
    return 1 if args.check and not healthy else 0


STATS_COMMAND = CliCommand(
    name="stats",
    help="queue health: depth, throughput, failure rate, run time percentiles, workers",
    configure=_configure_stats,
    run=_run_stats,
)


# ---------------------------------------------------------------------------------------------
# the plugin (module-level hook implementations, registered by the `metrics` entry point)
# ---------------------------------------------------------------------------------------------


#: Feed the process-wide :func:`default_event_metrics` (its own bound method: one call less
#: per event batch).
hookqueue_event = _DEFAULT_EVENTS.hookqueue_event


@hookimpl
def hookqueue_cli_commands() -> list[CliCommand]:
    """Contribute ``hookqueue stats``."""
    return [STATS_COMMAND]
