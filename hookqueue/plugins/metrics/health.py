""":class:`QueueMetrics`: a queue's health summary read from its database — depth, throughput,
success and failure rates, run-time percentiles, retries, workers — with a ``healthy``
verdict and its reasons; and :class:`WatchedQueues`, the queues an exporter reports on.
"""

from __future__ import annotations

import collections
import math
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import attrs

from hookqueue.core.clock import from_us, seconds_to_us
from hookqueue.core.errors import ValidationError
from hookqueue.core.models import TaskStatus
from hookqueue.core.queue import Queue
from hookqueue.core.storage import FinishedSample, TaskStore

from .gauges import HealthThresholds, _worker_state, limit_totals, read_database_gauges

_PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99))


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
        ``processing_time_seconds``, ``backlog``, ``sampled``, ``thresholds``, and ``limits``
        (``{limit name: {"running": n, "waiting": n}}`` per stored limit rule: tasks due but
        held back by it are *waiting*).
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
        limits = {
            name: {"running": running, "waiting": waiting}
            for name, (running, waiting) in limit_totals(queue, now_us).items()
        }
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
            "limits": limits,
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
