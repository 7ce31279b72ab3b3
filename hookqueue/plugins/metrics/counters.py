"""In-process event metrics: counters by event kind and task type, and histograms of how long
tasks waited before an attempt started and how long attempts ran, fed by ``hookqueue_event``.

The ``metrics`` plugin registers a process-wide :class:`EventMetrics`
(:func:`default_event_metrics`); the Prometheus and OpenTelemetry exporters read it.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from hookqueue.core.errors import ValidationError
from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import EventKind, TaskEvent

_FINAL = (EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED)

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
