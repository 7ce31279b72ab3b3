"""Figures read from the database: the health thresholds, the gauges exporters read at every
scrape (:func:`read_database_gauges`), and how a worker's heartbeat makes it active, stale,
lost or stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from hookqueue.core.clock import from_us
from hookqueue.core.errors import ValidationError
from hookqueue.core.models import WorkerInfo
from hookqueue.core.queue import Queue

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
    #: ``{limit name: (running, waiting)}`` per stored limit rule (the limits plugin's):
    #: tasks running under it, and due tasks it holds back now, summed over its partitions.
    limits: Mapping[str, tuple[int, int]] = attrs.field(factory=dict)


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
    return DatabaseGauges(
        at=now,
        tasks=tasks,
        queues=queues,
        oldest_age=oldest,
        workers=workers,
        limits=limit_totals(queue, now_us),
    )


def limit_totals(queue: Queue, now_us: int) -> dict[str, tuple[int, int]]:
    """``{limit name: (running, waiting)}`` per stored limit rule, summed over its
    partitions (``TaskStore.limit_usage``; empty when none is stored)."""
    totals: dict[str, tuple[int, int]] = {rule.name: (0, 0) for rule in queue.db.list_limits()}
    for u in queue.db.limit_usage(now_us):
        running, waiting = totals.get(u.rule, (0, 0))
        totals[u.rule] = (running + u.running, waiting + u.waiting)
    return totals
