"""Every read and write the dashboard makes, in one module.

The dashboard's views and actions call :class:`DashboardData` and nothing else: this module
is the only one in the dashboard that touches the queue, and it calls only public
:class:`~hookqueue.Queue` and :class:`~hookqueue.plugins.metrics.QueueMetrics` methods (plus
:func:`hookqueue.core.plugins.plugin_statuses` for the plugin list). It contains no SQL.

Some of what a dashboard needs has no store method yet; those functions do it with what the
public API offers, within stated bounds, and say so in their docstring under **Core
candidate**:

- filters the store does not have (text in the error message, a time range) page through
  :meth:`Queue.list` by id and test each task in Python, reading at most ``max_scan`` tasks
  per request;
- bulk retry and cancel page through the matching ids and act on each task in its own
  transaction, at most ``bulk_limit`` per request;
- the throughput chart counts finished tasks per time bucket with
  :meth:`QueueMetrics.throughput` (exact, index-only) and failures per bucket from a bounded
  sample of the newest failed tasks;
- deleting is only what :meth:`Queue.prune` does (finished tasks older than a cut-off).

When the store gains named methods for these (``docs/dashboard.md`` lists them), only this
module changes.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from hookqueue.core.errors import InvalidTransition, TaskNotFound, ValidationError
from hookqueue.core.models import Task, TaskStatus, WorkerInfo
from hookqueue.core.plugins import PluginStatus, plugin_statuses
from hookqueue.core.queue import Queue
from hookqueue.plugins.metrics import QueueMetrics

__all__ = [
    "BULK_ACTIONS",
    "BulkResult",
    "DashboardData",
    "PrunePreview",
    "TaskFilter",
    "TaskPage",
    "Timeline",
    "TimelineBucket",
    "WorkerRow",
    "parse_instant",
]

#: Tasks read per :meth:`Queue.list` call while scanning.
SCAN_CHUNK = 1000
#: The statuses each bulk action can change: retry takes failed and cancelled tasks back to
#: queued, cancel ends queued and running ones.
BULK_ACTIONS: dict[str, tuple[TaskStatus, ...]] = {
    "retry": (TaskStatus.FAILED, TaskStatus.CANCELLED),
    "cancel": (TaskStatus.QUEUED, TaskStatus.RUNNING),
}
#: Ids grow with enqueue time, but enqueues of several processes (and group commits) can
#: commit a little out of their ``created_at`` order. A scan by id stops at a time range's
#: edge only once it is this far past it.
ORDER_SLACK = timedelta(seconds=5)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_instant(field: str, text: str, now: datetime) -> datetime:
    """An instant from a filter field: an ISO 8601 date or date-time (UTC unless it names an
    offset), or a duration ago (``90``, ``15m``, ``12h``, ``7d``, ``2w``).

    :raises ValidationError: naming ``field``, for anything else.
    """
    match = _DURATION.match(text)
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        return now - timedelta(seconds=seconds)
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


@attrs.frozen(kw_only=True)
class TaskFilter:
    """Which tasks a list or a bulk action covers. Empty fields match everything.

    ``statuses``, ``task_type`` and ``queue`` are the store's own filters; ``error_contains``
    and the time range are tested in Python while paging (see :meth:`needs_scan`).
    """

    #: Any of these statuses (none: every status).
    statuses: tuple[TaskStatus, ...] = ()
    #: Exactly this task type.
    task_type: str | None = None
    #: Exactly this queue name.
    queue: str | None = None
    #: Case-insensitive text that the last error message contains.
    error_contains: str | None = None
    #: Enqueued at or after this instant.
    created_from: datetime | None = None
    #: Enqueued before this instant.
    created_to: datetime | None = None

    @property
    def needs_scan(self) -> bool:
        """True when a field has no store filter, so pages are found by scanning."""
        return bool(self.error_contains or self.created_from or self.created_to)

    @property
    def is_empty(self) -> bool:
        """True when the filter matches every task."""
        return self == TaskFilter()

    def matches(self, task: Task) -> bool:
        """Whether ``task`` passes every field (the store's fields included)."""
        if self.statuses and task.status not in self.statuses:
            return False
        if self.task_type is not None and task.task_type != self.task_type:
            return False
        if self.queue is not None and task.queue != self.queue:
            return False
        if self.error_contains and (
            task.error_message is None
            or self.error_contains.casefold() not in task.error_message.casefold()
        ):
            return False
        if self.created_from is not None and task.created_at < self.created_from:
            return False
        return not (self.created_to is not None and task.created_at >= self.created_to)

    def restricted_to(self, statuses: tuple[TaskStatus, ...]) -> TaskFilter:
        """This filter limited to ``statuses`` (a bulk action's): the intersection."""
        chosen = tuple(s for s in statuses if not self.statuses or s in self.statuses)
        return attrs.evolve(self, statuses=chosen)

    def describe(self) -> str:
        """The filter in words, for confirmations: ``status failed; type email``."""
        parts = []
        if self.statuses:
            parts.append("status " + " or ".join(s.value for s in self.statuses))
        for label, value in (
            ("type", self.task_type),
            ("queue", self.queue),
            ("error contains", self.error_contains),
            ("enqueued from", self.created_from.isoformat() if self.created_from else None),
            ("enqueued before", self.created_to.isoformat() if self.created_to else None),
        ):
            if value:
                parts.append(
                    f"{label} {value!r}" if label == "error contains" else f"{label} {value}"
                )
        return "; ".join(parts) or "no filter: every task"

    def list_arguments(self) -> dict[str, Any]:
        """The store-side part, as :meth:`Queue.list` keyword arguments."""
        return {
            "status": list(self.statuses) or None,
            "task_type": self.task_type,
            "queue": self.queue,
        }

    def to_query(self) -> list[tuple[str, str]]:
        """The filter as URL query pairs (the inverse of :meth:`from_query`)."""
        pairs = [("status", s.value) for s in self.statuses]
        for key, value in (
            ("type", self.task_type),
            ("queue", self.queue),
            ("error", self.error_contains),
            ("from", self.created_from.isoformat() if self.created_from else None),
            ("to", self.created_to.isoformat() if self.created_to else None),
        ):
            if value:
                pairs.append((key, value))
        return pairs

    @classmethod
    def from_query(cls, params: Any, now: datetime) -> TaskFilter:
        """Build from query or form fields: ``status`` (repeated), ``type``, ``queue``,
        ``error``, ``from``, ``to`` (see :func:`parse_instant`).

        :param params: a mapping with ``getlist`` (Starlette's ``QueryParams``/``FormData``)
            or a plain mapping of strings.
        :raises ValidationError: naming the field at fault.
        """
        if hasattr(params, "getlist"):
            raw_statuses = params.getlist("status")
        else:
            value = params.get("status")
            raw_statuses = [value] if isinstance(value, str) else list(value or [])
        statuses: list[TaskStatus] = []
        for raw in raw_statuses:
            text = _clean(raw)
            if text is None:
                continue
            try:
                status = TaskStatus(text)
            except ValueError:
                raise ValidationError(
                    "status",
                    text,
                    "is not a task status",
                    f"use one of {[s.value for s in TaskStatus]}",
                ) from None
            if status not in statuses:
                statuses.append(status)
        created_from = _clean(params.get("from"))
        created_to = _clean(params.get("to"))
        return cls(
            statuses=tuple(statuses),
            task_type=_clean(params.get("type")),
            queue=_clean(params.get("queue")),
            error_contains=_clean(params.get("error")),
            created_from=None if created_from is None else parse_instant("from", created_from, now),
            created_to=None if created_to is None else parse_instant("to", created_to, now),
        )


@attrs.frozen(kw_only=True)
class TaskPage:
    """One page of a task list."""

    #: The tasks, in the order asked for.
    tasks: tuple[Task, ...]
    #: Pass as ``after_id`` for the next page; None on the last page.
    next_after_id: int | None
    #: Tasks read to fill the page (equals ``len(tasks)`` or one more when nothing was
    #: filtered in Python).
    scanned: int
    #: True when the scan stopped at ``max_scan`` before the page was full: the next page
    #: continues the scan.
    scan_limited: bool = False


@attrs.frozen(kw_only=True)
class BulkResult:
    """What a bulk action did."""

    #: ``retry`` or ``cancel``.
    action: str
    #: Tasks changed.
    done: int
    #: Matching tasks that had changed status before their turn and were left alone.
    skipped: int
    #: True when ``bulk_limit`` stopped the action: more tasks match, run it again.
    limited: bool


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
    #: Tasks that reached completed, failed or cancelled in the interval (exact).
    finished: int
    #: Failed tasks among them (from a bounded sample: see :attr:`Timeline.sampled`).
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
    #: True when the failure counts come from the newest ``failure_sample`` failed tasks
    #: only (there were more failed tasks than that).
    sampled: bool


@attrs.frozen(kw_only=True)
class WorkerRow:
    """A recorded worker and its state as the health summary judges it."""

    info: WorkerInfo
    #: ``active``, ``stale``, ``lost`` or ``stopped``.
    state: str
    #: Seconds since its last heartbeat.
    silent_seconds: float


def _past_range(flt: TaskFilter, task: Task, newest_first: bool) -> bool:
    """Whether a scan by id in this direction can stop: every later task is outside the
    filter's time range (by more than :data:`ORDER_SLACK`)."""
    if newest_first:
        return flt.created_from is not None and task.created_at < flt.created_from - ORDER_SLACK
    return flt.created_to is not None and task.created_at >= flt.created_to + ORDER_SLACK


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
    :param max_scan: the most tasks one list request reads when a filter has no store
        equivalent (error text, time range).
    :param bulk_limit: the most tasks one bulk action changes; the rest wait for the next
        request, which the result says.
    :param cache_seconds: how long the filter form's suggestions (task types, queue names)
        are reused; the chart is reused for at most this long too, and never longer than a
        tenth of one of its intervals. 0 reads them on every request.
    """

    def __init__(
        self,
        queue: Queue,
        metrics: QueueMetrics | None = None,
        *,
        max_scan: int = 20_000,
        bulk_limit: int = 10_000,
        cache_seconds: float = 30.0,
    ) -> None:
        self.queue = queue
        self.metrics = metrics if metrics is not None else QueueMetrics(queue)
        self.max_scan = max_scan
        self.bulk_limit = bulk_limit
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

    def depth_by_queue(self) -> dict[str, dict[str, Any]]:
        """Per queue: due, delayed and running tasks and the oldest due task's age."""
        return self.metrics.depth_by_queue()

    def counts_by_type(self) -> dict[str, dict[str, int]]:
        """Tasks per type and status."""
        return self.queue.counts(by_type=True)

    def counts(self) -> dict[str, int]:
        """Tasks per status."""
        return self.queue.counts()

    def timeline(
        self, window_seconds: float = 3600.0, buckets: int = 30, *, failure_sample: int = 5000
    ) -> Timeline:
        """Tasks finished and failed per interval over the last ``window_seconds``.

        **Core candidate** ``finished_counts(since_us, bucket_us, by_status=True) ->
        list[(bucket_start_us, status, n)]``: one grouped, index-ordered read. Today the
        finished counts are exact — ``buckets`` calls of :meth:`QueueMetrics.throughput`
        (each an index-only count over ``finished_at``), differenced — and the failures come
        from the newest ``failure_sample`` failed tasks by id, put in buckets by their
        ``finished_at``; ``sampled`` is True when there were more.
        """
        if buckets < 1:
            raise ValidationError("buckets", buckets, "must be >= 1", "e.g. 30")
        ttl = min(self.cache_seconds, window_seconds / buckets / 10)
        return self._cache.get(
            ("timeline", window_seconds, buckets, failure_sample),
            ttl,
            lambda: self._timeline(window_seconds, buckets, failure_sample),
        )

    def _timeline(self, window_seconds: float, buckets: int, failure_sample: int) -> Timeline:
        step = window_seconds / buckets
        now = self.now()
        # finished within the last k steps, k = 0..buckets
        cumulative = [0] + [
            int(self.metrics.throughput(step * k)["finished"]) for k in range(1, buckets + 1)
        ]
        failed = [0] * buckets
        start = now - timedelta(seconds=window_seconds)
        seen = 0
        sampled = False
        after: int | None = None
        while seen < failure_sample:
            chunk = self.queue.list(
                status=TaskStatus.FAILED,
                newest_first=True,
                after_id=after,
                limit=min(SCAN_CHUNK, failure_sample - seen),
            )
            if not chunk:
                break
            for task in chunk:
                finished = task.finished_at
                if finished is not None and start <= finished <= now:
                    index = int((finished - start).total_seconds() // step)
                    failed[min(index, buckets - 1)] += 1
            seen += len(chunk)
            after = chunk[-1].id
        else:
            sampled = bool(
                self.queue.list(
                    status=TaskStatus.FAILED, after_id=after, limit=1, newest_first=True
                )
            )
        out = []
        for i in range(buckets):
            # bucket i (oldest first) lies between buckets-i and buckets-i-1 steps ago
            newer, older = buckets - i - 1, buckets - i
            finished_n = cumulative[older] - cumulative[newer]
            out.append(
                TimelineBucket(
                    start=start + timedelta(seconds=step * i),
                    end=start + timedelta(seconds=step * (i + 1)),
                    finished=finished_n,
                    failed=min(failed[i], finished_n),
                )
            )
        return Timeline(window_seconds=window_seconds, buckets=tuple(out), sampled=sampled)

    def oldest_due_age_seconds(self) -> float:
        """How long the longest-waiting due task has waited (0 when none)."""
        return self.metrics.oldest_queued_task_age_seconds()

    # -- tasks -------------------------------------------------------------------------------

    def get_task(self, task_id: int | str) -> Task:
        """One task. :raises TaskNotFound:"""
        return self.queue.get(task_id)

    def task_types(self) -> list[str]:
        """Every task type with at least one task, sorted (the filter form's suggestions;
        reused for ``cache_seconds``: counting by type reads the whole history's index).

        **Core candidate** ``task_types() -> list[str]`` (a distinct read of the
        ``(status, task_type)`` index's keys, without counting rows).
        """
        return self._cache.get(
            "task_types", self.cache_seconds, lambda: sorted(self.queue.counts(by_type=True))
        )

    def queue_names(self) -> list[str]:
        """Queue names that have queued or running tasks, sorted (the filter form's
        suggestions, reused for ``cache_seconds``).

        **Core candidate** ``counts(by_queue=True)``: every queue name, finished tasks
        included, which the overview also wants (counts per queue and status).
        """
        return self._cache.get(
            "queue_names", self.cache_seconds, lambda: sorted(self.metrics.depth_by_queue())
        )

    def list_tasks(
        self,
        flt: TaskFilter,
        *,
        after_id: int | None = None,
        limit: int = 50,
        newest_first: bool = True,
    ) -> TaskPage:
        """A page of tasks matching ``flt``, by id, paged with ``after_id``.

        With store filters only this is one :meth:`Queue.list` call of ``limit + 1`` rows.
        Otherwise it pages through the store-filtered list ``SCAN_CHUNK`` rows at a time and
        keeps the matches, reading at most ``max_scan`` tasks; newest first, the scan stops at
        the first task enqueued well before ``created_from``, and oldest first at the first one
        enqueued well after ``created_to`` (see :data:`ORDER_SLACK`).

        **Core candidate** ``list(..., error_contains=, created_from=, created_to=)``: the
        store filters in SQL (``instr``/``LIKE`` on ``error_message``, a ``created_at`` range
        that seeks by id), so a page costs one indexed read however rare the matches are.
        """
        if not flt.needs_scan:
            rows = self.queue.list(
                **flt.list_arguments(),
                limit=limit + 1,
                after_id=after_id,
                newest_first=newest_first,
            )
            more = len(rows) > limit
            tasks = tuple(rows[:limit])
            return TaskPage(
                tasks=tasks,
                next_after_id=tasks[-1].id if more and tasks else None,
                scanned=len(rows),
            )
        found: list[Task] = []
        scanned = 0
        cursor = after_id
        exhausted = False
        while len(found) <= limit and scanned < self.max_scan:
            chunk = self.queue.list(
                **flt.list_arguments(),
                limit=min(SCAN_CHUNK, self.max_scan - scanned),
                after_id=cursor,
                newest_first=newest_first,
            )
            if not chunk:
                exhausted = True
                break
            for task in chunk:
                scanned += 1
                cursor = task.id
                if _past_range(flt, task, newest_first):
                    exhausted = True
                    break
                if flt.matches(task):
                    found.append(task)
                    if len(found) > limit:
                        break
            if exhausted:
                break
        tasks = tuple(found[:limit])
        if len(found) > limit:
            return TaskPage(tasks=tasks, next_after_id=tasks[-1].id, scanned=scanned)
        if exhausted:
            return TaskPage(tasks=tasks, next_after_id=None, scanned=scanned)
        # The scan budget ran out: the next page continues from the last task read.
        return TaskPage(tasks=tasks, next_after_id=cursor, scanned=scanned, scan_limited=True)

    def newest_id(self) -> int:
        """The highest task id (0 when there are none): bulk actions act on tasks up to the id
        their preview saw, so tasks enqueued after it are not touched."""
        rows = self.queue.list(limit=1, newest_first=True)
        return rows[0].id if rows else 0

    def iter_matching(self, flt: TaskFilter, *, max_id: int) -> Iterator[Task]:
        """Every task matching ``flt`` with an id up to ``max_id``, newest first, read
        ``SCAN_CHUNK`` at a time (paging by id, so acting on a task while iterating is safe).
        """
        cursor = max_id + 1
        while True:
            chunk = self.queue.list(
                **flt.list_arguments(), limit=SCAN_CHUNK, after_id=cursor, newest_first=True
            )
            if not chunk:
                return
            for task in chunk:
                cursor = task.id
                if _past_range(flt, task, newest_first=True):
                    return
                if flt.matches(task):
                    yield task

    def count_matching(self, action: str, flt: TaskFilter, *, max_id: int) -> int:
        """How many tasks a bulk ``action`` would change now: those matching ``flt`` in the
        statuses the action applies to, with ids up to ``max_id``.

        With only status and type filters this reads the status counts (index-only, and
        ``max_id`` is not needed: it is the newest id when the preview is made); otherwise it
        pages through the matches.

        **Core candidate** ``count(filter) -> int``: one counting statement.
        """
        scoped = self._scoped(action, flt)
        if not scoped.statuses:
            return 0
        if not scoped.needs_scan and scoped.queue is None:
            by_type = self.queue.counts(by_type=True)
            types = [scoped.task_type] if scoped.task_type is not None else list(by_type)
            return sum(by_type.get(t, {}).get(s.value, 0) for t in types for s in scoped.statuses)
        return sum(1 for _ in self.iter_matching(scoped, max_id=max_id))

    def bulk(self, action: str, flt: TaskFilter, *, max_id: int) -> BulkResult:
        """Retry or cancel every task matching ``flt`` (in the statuses the action applies to)
        with an id up to ``max_id``, each in its own transaction, at most ``bulk_limit``.

        A task that changed status between the listing and its turn (a worker finished it,
        somebody else retried it) is skipped and counted in ``skipped``.

        **Core candidate** ``retry_matching(filter, max_id) -> int`` and
        ``cancel_matching(filter, max_id) -> int``: one transaction per batch in the store
        instead of one per task, and no ``bulk_limit``.
        """
        scoped = self._scoped(action, flt)
        act = self.queue.retry if action == "retry" else self.queue.cancel
        done = skipped = 0
        limited = False
        if scoped.statuses:
            for task in self.iter_matching(scoped, max_id=max_id):
                if done + skipped >= self.bulk_limit:
                    limited = True
                    break
                try:
                    act(task.id)
                except (InvalidTransition, TaskNotFound):
                    skipped += 1
                else:
                    done += 1
        self.forget()
        return BulkResult(action=action, done=done, skipped=skipped, limited=limited)

    def _scoped(self, action: str, flt: TaskFilter) -> TaskFilter:
        try:
            statuses = BULK_ACTIONS[action]
        except KeyError:
            raise ValidationError(
                "action", action, "is not a bulk action", f"use one of {sorted(BULK_ACTIONS)}"
            ) from None
        return flt.restricted_to(statuses)

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

    # -- delete ------------------------------------------------------------------------------

    def prune_preview(self, older_than: timedelta) -> PrunePreview:
        """How many finished tasks finished more than ``older_than`` ago: every finished task
        (status counts) less those finished within the window (:meth:`QueueMetrics.throughput`).

        **Core candidate** ``delete_matching(filter) -> int`` with a ``finished_before``
        field, so the dashboard can delete exactly what a filter shows; today the only delete
        is :meth:`Queue.prune`, by age, over all finished statuses.
        """
        counts = self.queue.counts()
        total = sum(counts[s.value] for s in TaskStatus if s.is_terminal)
        seconds = older_than.total_seconds()
        recent = int(self.metrics.throughput(seconds)["finished"]) if seconds > 0 else 0
        return PrunePreview(finished_before=self.now() - older_than, tasks=max(0, total - recent))

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
