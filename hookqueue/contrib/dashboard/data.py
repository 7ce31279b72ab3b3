"""Every read and write the dashboard makes, in one module.

The dashboard's views and actions call :class:`DashboardData` and nothing else: this module
is the only one in the dashboard that touches the queue. It calls public
:class:`~hookqueue.Queue` and :class:`~hookqueue.plugins.metrics.QueueMetrics` methods, one
named method of the store contract (:meth:`~hookqueue.core.storage.TaskStore.finished_buckets`,
for the chart) and :func:`hookqueue.core.plugins.plugin_statuses` for the plugin list. It
contains no SQL: every filter is a :class:`~hookqueue.core.models.TaskFilter` that the store
turns into one query, and every bulk action is one store call that works in batches.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from hookqueue.core.clock import from_us, seconds_to_us
from hookqueue.core.errors import ValidationError
from hookqueue.core.models import AttemptFailure, Task, TaskFilter, TaskStatus, WorkerInfo
from hookqueue.core.plugins import PluginStatus, plugin_statuses
from hookqueue.core.queue import Queue
from hookqueue.plugins.metrics import QueueMetrics

__all__ = [
    "BULK_ACTIONS",
    "BulkPreview",
    "DashboardData",
    "PrunePreview",
    "QueueRow",
    "TaskFilter",
    "TaskPage",
    "Timeline",
    "TimelineBucket",
    "WorkerRow",
    "filter_from_query",
    "filter_to_query",
    "parse_duration",
    "parse_instant",
]

#: The statuses each action can change: retry takes failed and cancelled tasks back to
#: queued, cancel ends queued and running ones, delete removes queued and finished ones (a
#: running task belongs to its worker: cancel it first).
BULK_ACTIONS: dict[str, tuple[TaskStatus, ...]] = {
    "retry": (TaskStatus.FAILED, TaskStatus.CANCELLED),
    "cancel": (TaskStatus.QUEUED, TaskStatus.RUNNING),
    "delete": (
        TaskStatus.QUEUED,
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
    ),
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: Query field -> TaskFilter field, for the instants (each an ISO date-time or a duration ago).
_INSTANT_FIELDS = {
    "from": "created_after",
    "to": "created_before",
    "finished_before": "finished_before",
}


def parse_instant(field: str, text: str, now: datetime) -> datetime:
    """An instant from a filter field: an ISO 8601 date or date-time (UTC unless it names an
    offset), or a duration ago (``90``, ``15m``, ``12h``, ``7d``, ``2w``).

    :raises ValidationError: naming ``field``, for anything else.
    """
    match = _DURATION.match(text)
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:
            raise ValidationError(
                field, text, "reaches back before the year 1", "use e.g. 7d or 52w"
            ) from None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(
            field,
            text,
            "is neither a date-time nor a duration",
            "use e.g. 2030-01-31T12:00, 2030-01-31, or 1h for an hour ago",
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse_duration(field: str, text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w`` as a timedelta.

    :raises ValidationError: naming ``field``.
    """
    match = _DURATION.match(text or "")
    if not match:
        raise ValidationError(field, text, "is not a duration", "use e.g. 90s, 15m, 12h or 7d")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()])


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _single(params: Any, name: str) -> str | None:
    """A field's value (the last one, when a plain mapping holds a list)."""
    value = params.get(name)
    if isinstance(value, list | tuple):
        value = value[-1] if value else None
    return _clean(value)


def _values(params: Any, name: str) -> list[str]:
    """Every non-empty value of a repeated field, in order, without repeats."""
    if hasattr(params, "getlist"):
        raw = params.getlist(name)
    else:
        value = params.get(name)
        raw = [value] if isinstance(value, str) else list(value or [])
    out: list[str] = []
    for item in raw:
        text = _clean(item)
        if text is not None and text not in out:
            out.append(text)
    return out


def filter_from_query(params: Any, now: datetime) -> TaskFilter:
    """A :class:`TaskFilter` from query or form fields: ``status``, ``type`` and ``queue``
    (each may repeat), ``error`` (text in the error message), ``from`` and ``to`` (enqueued
    in ``[from, to)``) and ``finished_before`` (each instant an ISO date-time or a duration
    ago, see :func:`parse_instant`). Empty fields match everything.

    :param params: a mapping with ``getlist`` (Starlette's ``QueryParams``/``FormData``)
        or a plain mapping of strings (or lists of strings).
    :raises ValidationError: naming the field at fault.
    """
    statuses: list[TaskStatus] = []
    for value in _values(params, "status"):
        try:
            statuses.append(TaskStatus(value))
        except ValueError:
            raise ValidationError(
                "status",
                value,
                "is not a task status",
                f"use one of {[s.value for s in TaskStatus]}",
            ) from None
    instants: dict[str, datetime | None] = {}
    for key, field in _INSTANT_FIELDS.items():
        text = _single(params, key)
        instants[field] = None if text is None else parse_instant(key, text, now)
    return TaskFilter(
        statuses=tuple(statuses),
        task_types=tuple(_values(params, "type")),
        queues=tuple(_values(params, "queue")),
        error_contains=_single(params, "error"),
        created_after=instants["created_after"],
        created_before=instants["created_before"],
        finished_before=instants["finished_before"],
    )


def filter_to_query(flt: TaskFilter) -> list[tuple[str, str]]:
    """The filter as URL query pairs (the inverse of :func:`filter_from_query`; ``ids`` and
    ``max_id`` are not part of the form and are left out)."""
    pairs = [("status", s.value) for s in flt.statuses]
    pairs += [("type", t) for t in flt.task_types]
    pairs += [("queue", q) for q in flt.queues]
    if flt.error_contains:
        pairs.append(("error", flt.error_contains))
    for key, field in _INSTANT_FIELDS.items():
        value = getattr(flt, field)
        if value is not None:
            pairs.append((key, value.isoformat()))
    return pairs


def _plain_listing(flt: TaskFilter) -> bool:
    """Whether ``flt`` says no more than statuses and one queue (see
    :meth:`DashboardData.list_tasks`)."""
    return len(flt.queues) <= 1 and attrs.evolve(flt, statuses=(), queues=()).is_empty


def _check_action(action: str) -> tuple[TaskStatus, ...]:
    try:
        return BULK_ACTIONS[action]
    except KeyError:
        raise ValidationError(
            "action", action, "is not a bulk action", f"use one of {sorted(BULK_ACTIONS)}"
        ) from None


@attrs.frozen(kw_only=True)
class TaskPage:
    """One page of a task list."""

    #: The tasks, in the order asked for.
    tasks: tuple[Task, ...]
    #: Pass as ``after_id`` for the next page; None on the last page.
    next_after_id: int | None


@attrs.frozen(kw_only=True)
class BulkPreview:
    """What a bulk action would change, counted when the user is asked to confirm."""

    #: ``retry``, ``cancel`` or ``delete``.
    action: str
    #: The filter as the user gave it.
    filter: TaskFilter
    #: The filter restricted to the statuses the action applies to (None: it matches none
    #: of them) and bounded to ``max_id``: exactly what the confirmation acts on.
    scoped: TaskFilter | None
    #: The newest task id when the preview was made: the action leaves newer tasks alone.
    max_id: int
    #: How many tasks ``scoped`` matches now.
    count: int

    @property
    def description(self) -> str:
        """The filter in words as the action applies it: with the action's statuses, without
        the id bound (said on its own)."""
        if self.scoped is None:
            return self.filter.describe()
        return attrs.evolve(self.scoped, max_id=None).describe()


@attrs.frozen(kw_only=True)
class PrunePreview:
    """What :meth:`DashboardData.prune` would delete now."""

    #: The cut-off: finished before this instant.
    finished_before: datetime
    #: How many finished tasks finished before it.
    tasks: int


@attrs.frozen(kw_only=True)
class TimelineBucket:
    """Tasks that finished in one time interval ``[start, end)``."""

    start: datetime
    end: datetime
    #: Tasks that reached completed, failed or cancelled in the interval.
    finished: int
    #: Failed tasks among them.
    failed: int

    @property
    def failure_rate(self) -> float:
        """``failed / finished``, 0.0 when nothing finished."""
        return self.failed / self.finished if self.finished else 0.0


@attrs.frozen(kw_only=True)
class Timeline:
    """Throughput and failures over a window, oldest bucket first."""

    window_seconds: float
    buckets: tuple[TimelineBucket, ...]


@attrs.frozen(kw_only=True)
class QueueRow:
    """One queue on the overview: its depth and whether workers may lease from it."""

    name: str
    due: int
    delayed: int
    running: int
    #: How long its oldest due task has waited (seconds, 0 when none).
    oldest_due_age_seconds: float
    #: When it was paused (None: workers lease from it).
    paused_at: datetime | None


@attrs.frozen(kw_only=True)
class WorkerRow:
    """A recorded worker and its state as the health summary judges it."""

    info: WorkerInfo
    #: ``active``, ``stale``, ``lost`` or ``stopped``.
    state: str
    #: Seconds since its last heartbeat.
    silent_seconds: float


class _TtlCache:
    """Remembers results for a while (per key), so figures that cost a scan of the history
    are not recomputed for every page view and every viewer's refresh. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any, ttl: float, compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._values.get(key)
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
        value = compute()
        with self._lock:
            self._values[key] = (now, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


class DashboardData:
    """The dashboard's access to one queue's database.

    :param queue: the queue to read and act on (any process may serve it: everything is read
        from the database).
    :param metrics: the :class:`QueueMetrics` to read figures from (one is made if None).
    :param cache_seconds: how long the filter form's suggestions (task types, queue names)
        are reused; the chart is reused for at most this long too, and never longer than a
        tenth of one of its intervals. 0 reads them on every request.
    """

    def __init__(
        self,
        queue: Queue,
        metrics: QueueMetrics | None = None,
        *,
        cache_seconds: float = 30.0,
    ) -> None:
        self.queue = queue
        self.metrics = metrics if metrics is not None else QueueMetrics(queue)
        self.cache_seconds = cache_seconds
        self._cache = _TtlCache()

    def forget(self) -> None:
        """Drop cached figures (after an action, so the next page shows its effect)."""
        self._cache.clear()

    def now(self) -> datetime:
        """The queue clock's current instant."""
        return self.queue.now()

    # -- overview ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The metrics plugin's health summary (depth, rates, workers, verdict, reasons)."""
        return self.metrics.get_queue_health_summary()

    def queue_rows(self) -> list[QueueRow]:
        """Every queue with queued or running tasks, and every paused queue, by name: its
        depth, its oldest due task's age and when it was paused."""
        depth = self.metrics.depth_by_queue()
        paused = self.queue.paused_queues()
        empty = {"due": 0, "delayed": 0, "running": 0, "oldest_due_age_seconds": 0.0}
        return [
            QueueRow(
                name=name,
                due=int(depth.get(name, empty)["due"]),
                delayed=int(depth.get(name, empty)["delayed"]),
                running=int(depth.get(name, empty)["running"]),
                oldest_due_age_seconds=float(depth.get(name, empty)["oldest_due_age_seconds"]),
                paused_at=paused.get(name),
            )
            for name in sorted(set(depth) | set(paused))
        ]

    def counts_by_type(self) -> dict[str, dict[str, int]]:
        """Tasks per type and status."""
        return self.queue.counts(by_type=True)

    def counts(self) -> dict[str, int]:
        """Tasks per status."""
        return self.queue.counts()

    def timeline(self, window_seconds: float = 3600.0, buckets: int = 30) -> Timeline:
        """Tasks finished, and failed among them, per interval over the last
        ``window_seconds``: one grouped read of the store's finish-time index
        (:meth:`~hookqueue.core.storage.TaskStore.finished_buckets`), reused for at most
        ``cache_seconds`` and a tenth of one interval."""
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise ValidationError("buckets", buckets, "must be an integer >= 1", "e.g. 30")
        if not window_seconds > 0:
            raise ValidationError("window_seconds", window_seconds, "must be positive", "3600")
        ttl = min(self.cache_seconds, window_seconds / buckets / 10)
        return self._cache.get(
            ("timeline", window_seconds, buckets),
            ttl,
            lambda: self._timeline(window_seconds, buckets),
        )

    def _timeline(self, window_seconds: float, buckets: int) -> Timeline:
        step_us = max(1, seconds_to_us(window_seconds) // buckets)
        now_us = self.queue.clock.now_us()
        since_us = now_us - step_us * buckets
        finished = [0] * buckets
        failed = [0] * buckets
        for start_us, status, n in self.queue.db.finished_buckets(since_us, step_us):
            # a task finished by a clock a little ahead of this one lands in the last bucket
            index = min(max(0, (start_us - since_us) // step_us), buckets - 1)
            finished[index] += n
            if status == TaskStatus.FAILED.value:
                failed[index] += n
        return Timeline(
            window_seconds=window_seconds,
            buckets=tuple(
                TimelineBucket(
                    start=from_us(since_us + i * step_us),
                    end=from_us(since_us + (i + 1) * step_us),
                    finished=finished[i],
                    failed=failed[i],
                )
                for i in range(buckets)
            ),
        )

    def oldest_due_age_seconds(self) -> float:
        """How long the longest-waiting due task has waited (0 when none)."""
        return self.metrics.oldest_queued_task_age_seconds()

    # -- queues ------------------------------------------------------------------------------

    def paused_queues(self) -> dict[str, datetime]:
        """The paused queues and when each was paused."""
        return self.queue.paused_queues()

    def pause_queue(self, name: str) -> bool:
        """Stop every worker leasing from queue ``name`` (running tasks finish).

        :returns: False if it was paused already.
        """
        self.forget()
        return self.queue.pause(name)

    def resume_queue(self, name: str) -> bool:
        """Let workers lease from queue ``name`` again. :returns: False if it was not paused."""
        self.forget()
        return self.queue.resume(name)

    # -- tasks -------------------------------------------------------------------------------

    def get_task(self, task_id: int | str) -> Task:
        """One task. :raises TaskNotFound:"""
        return self.queue.get(task_id)

    def history(self, task_id: int | str) -> list[AttemptFailure]:
        """The failed attempts of a task, oldest first, with their tracebacks.

        :raises TaskNotFound:
        """
        return self.queue.history(task_id)

    def task_types(self) -> list[str]:
        """Every task type with at least one task, sorted (the filter form's suggestions;
        reused for ``cache_seconds``: counting by type reads the whole history's index)."""
        return self._cache.get(
            "task_types", self.cache_seconds, lambda: sorted(self.queue.counts(by_type=True))
        )

    def queue_names(self) -> list[str]:
        """Queue names that have queued or running tasks or are paused, sorted (the filter
        form's suggestions, reused for ``cache_seconds``)."""
        return self._cache.get(
            "queue_names",
            self.cache_seconds,
            lambda: sorted(set(self.metrics.depth_by_queue()) | set(self.queue.paused_queues())),
        )

    def list_tasks(
        self,
        flt: TaskFilter,
        *,
        after_id: int | None = None,
        limit: int = 50,
        newest_first: bool = True,
    ) -> TaskPage:
        """A page of tasks matching ``flt``, by id, paged with ``after_id``: one
        :meth:`Queue.list` call of ``limit + 1`` rows, every field filtered by the store.

        A filter of statuses and at most one queue, without a task type, is passed as
        :meth:`Queue.list`'s own arguments rather than as a ``filter``: SQLite plans that
        listing statement as a walk by id, while the filter's statement reads the finished
        statuses through their ``(status, task_type)`` index and sorts every match by id — at
        10⁶ tasks 2.5 ms against 340 ms for the first page of completed tasks. With a task
        type it is the other way round (the index then yields ids in order), so those go
        through the filter.
        """
        if _plain_listing(flt):
            rows = self.queue.list(
                status=list(flt.statuses) or None,
                queue=flt.queues[0] if flt.queues else None,
                limit=limit + 1,
                after_id=after_id,
                newest_first=newest_first,
            )
        else:
            rows = self.queue.list(
                filter=flt, limit=limit + 1, after_id=after_id, newest_first=newest_first
            )
        tasks = tuple(rows[:limit])
        more = len(rows) > limit
        return TaskPage(tasks=tasks, next_after_id=tasks[-1].id if more and tasks else None)

    def newest_id(self) -> int:
        """The highest task id (0 when there are none)."""
        rows = self.queue.list(limit=1, newest_first=True)
        return rows[0].id if rows else 0

    def preview(self, action: str, flt: TaskFilter) -> BulkPreview:
        """Count what a bulk ``action`` would change now: the tasks ``flt`` matches in the
        statuses the action applies to, with ids up to the newest id now — the confirmation
        acts on that bound, so tasks enqueued after the preview are left alone.

        :raises ValidationError: an unknown action.
        """
        scoped = flt.restricted_to(_check_action(action))
        max_id = self.newest_id()
        if scoped is None:
            return BulkPreview(action=action, filter=flt, scoped=None, max_id=max_id, count=0)
        scoped = attrs.evolve(scoped, max_id=max_id)
        return BulkPreview(
            action=action,
            filter=flt,
            scoped=scoped,
            max_id=max_id,
            count=self.queue.count(scoped),
        )

    def bulk(self, action: str, flt: TaskFilter, *, max_id: int) -> int:
        """Retry, cancel or delete every task matching ``flt`` (in the statuses the action
        applies to) with an id up to ``max_id``. The store works in batches of 500, each its
        own transaction; a task whose status changed before its batch is judged by its status
        then (a task a worker finished meanwhile is not cancelled).

        :returns: how many tasks were changed (cancelled includes running tasks flagged for
            their workers).
        :raises ValidationError: an unknown action.
        """
        scoped = flt.restricted_to(_check_action(action))
        if scoped is None:
            return 0
        scoped = attrs.evolve(scoped, max_id=max_id)
        self.forget()
        if action == "retry":
            return self.queue.retry_matching(scoped)
        if action == "cancel":
            return self.queue.cancel_matching(scoped)
        return self.queue.delete_matching(scoped)

    def retry_task(self, task_id: int | str) -> Task:
        """Put one failed or cancelled task back to queued.

        :raises TaskNotFound: :raises InvalidTransition: it is not failed or cancelled.
        """
        self.forget()
        return self.queue.retry(task_id)

    def cancel_task(self, task_id: int | str) -> Task:
        """Cancel one queued task, or ask a running one's worker to stop it.

        :raises TaskNotFound: :raises InvalidTransition: it already finished.
        """
        self.forget()
        return self.queue.cancel(task_id)

    def delete_task(self, task_id: int) -> bool:
        """Delete one queued or finished task with its history (never a running one).

        :returns: False when there was nothing to delete (it is running, or already gone).
        """
        self.forget()
        return self.queue.delete_matching(TaskFilter(ids=(task_id,))) == 1

    # -- delete history ----------------------------------------------------------------------

    def prune_preview(self, older_than: timedelta) -> PrunePreview:
        """How many finished tasks finished more than ``older_than`` ago: one count of the
        finish-time index (only finished tasks have a finish time, so the filter names no
        status; with them the store reads the status index and each row instead, 25 times
        slower at 10⁶ tasks)."""
        cutoff = self.now() - older_than
        flt = TaskFilter(finished_before=cutoff)
        return PrunePreview(finished_before=cutoff, tasks=self.queue.count(flt))

    def prune(self, older_than: timedelta) -> int:
        """Delete finished tasks that finished more than ``older_than`` ago (and stale worker
        records); returns how many tasks were deleted."""
        self.forget()
        return self.queue.prune(older_than=older_than)

    # -- workers and plugins -----------------------------------------------------------------

    def workers(self) -> list[WorkerRow]:
        """Every recorded worker with its state, active ones first, then by last heartbeat."""
        summary = self.metrics.worker_summary()
        active = set(summary["active_ids"])
        stale = set(summary["stale_ids"])
        now = self.now()
        rows = []
        for info in self.queue.workers():
            if info.stopped_at is not None:
                state = "stopped"
            elif info.worker_id in active:
                state = "active"
            elif info.worker_id in stale:
                state = "stale"
            else:
                state = "lost"
            rows.append(
                WorkerRow(
                    info=info,
                    state=state,
                    silent_seconds=max(0.0, (now - info.heartbeat_at).total_seconds()),
                )
            )
        order = {"active": 0, "stale": 1, "lost": 2, "stopped": 3}
        rows.sort(key=lambda r: (order[r.state], -r.info.heartbeat_at.timestamp()))
        return rows

    def worker_summary(self) -> dict[str, Any]:
        """Workers by state (``active``, ``stale``, ``lost``, ``stopped``) with ids."""
        return self.metrics.worker_summary()

    def plugins(self) -> list[PluginStatus]:
        """Every plugin of the queue's plugin manager: active, blocked or unavailable."""
        return plugin_statuses(self.queue.pm)

    # -- liveness ----------------------------------------------------------------------------

    def ping(self) -> Mapping[str, int]:
        """Read the status counts (index-only): raises if the database cannot be read."""
        return self.queue.counts()
