"""Schedulers: the first-party answers to ``hookqueue_lease``.

The module itself is the ``priority`` plugin (entry point
``priority = "hookqueue.plugins.priority"``). Its module-level hook makes leasing strict
priority: the lowest ``priority`` number first, and within one priority the task that became
due first (then enqueue order). Blocking the plugin (``Queue(..., block=["priority"])``) leaves
the core's due-order FIFO.

Another scheduler is chosen by registering an instance:
``Queue(path, plugins=[Aging(aging_seconds=30)])``. Its hook is ``tryfirst``, so it answers
before the module default; only one scheduler may be registered per queue (they share the
plugin name ``scheduler``); :class:`PerQueue` picks one per queue name.

Every scheduler answers with a :class:`~hookqueue.core.models.LeasePlan`, which the store turns
into one SQL statement. Plain orders (:class:`StrictPriority`, :class:`Fifo`, :class:`Lifo`,
:class:`Aging`) are pure SQL over the queue's partial indexes. :class:`WeightedRandom` and
:class:`FairShare` read a bounded window of due candidates and re-rank it in Python, in the
same transaction.

Their window is drawn per group (``LeasePlan.group_by``): the store offers each group's best
due task, then each group's second best, and so on, up to ``window`` candidates. A group whose
tasks all sit behind another group's backlog is offered all the same, so the shares hold
however long the backlogs grow. The price is a read that numbers every due task on each lease:
its cost grows with the number of due tasks (docs/performance.md). Only when more than
``window`` groups have due tasks at once are some of them (those whose best task comes last)
left out of a lease; keep ``window`` above the number of groups (docs/scheduling.md).
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import attrs

from hookqueue.core.errors import ValidationError
from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import Candidate, LeasePlan, LeaseRequest, SortKey

log = logging.getLogger("hookqueue.plugins.priority")

#: What a re-ranking scheduler groups candidates by.
GroupBy = Literal["task_type", "queue", "priority", "partition"]
GROUP_BY: tuple[str, ...] = ("task_type", "queue", "priority", "partition")

#: The largest candidate window a scheduler may ask for (it is read on every lease).
MAX_WINDOW = 100_000

#: Strict priority, FIFO (by due time, then enqueue order) within one priority.
PRIORITY_PLAN = LeasePlan(order=(SortKey.PRIORITY,), name="priority")
FIFO_PLAN = LeasePlan(order=(SortKey.FIFO,), name="fifo")
LIFO_PLAN = LeasePlan(order=(SortKey.LIFO,), name="lifo")


@hookimpl
def hookqueue_lease() -> LeasePlan:
    """The ``priority`` plugin's default: strict priority (:data:`PRIORITY_PLAN`)."""
    return PRIORITY_PLAN


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------


def _window(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WINDOW:
        raise ValidationError(
            "window",
            value,
            f"must be an integer from 1 to {MAX_WINDOW}",
            "keep it above the number of groups with due tasks at once, e.g. 256",
        )


def _per_group(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ValidationError(
            "per_group",
            value,
            "must be True or False",
            "leave it True unless the cost of a lease at large backlogs matters more than "
            "the shares (docs/scheduling.md)",
        )


def _positive_seconds(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValidationError(
            attribute.name,
            value,
            "must be a positive number of seconds",
            "e.g. 60: one priority step per minute of waiting",
        )


def _weight(field: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValidationError(
            field,
            value,
            "must be a positive finite number (a weight of 0 would starve the group)",
            "e.g. 1 for normal, 3 for three times the share",
        )
    return float(value)


def _weights(value: Any) -> Mapping[Hashable, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(
            "weights",
            value,
            "must be a mapping of group to weight",
            "e.g. {'email': 3, 'report': 1}",
        )
    return {key: _weight(f"weights[{key!r}]", w) for key, w in value.items()}


def _default_weight(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _weight("default_weight", value)


def _group_key(by: str, partition_key: str | None) -> Any:
    """Check a ``by``/``partition_key`` pair and return the function that groups candidates."""
    if by not in GROUP_BY:
        raise ValidationError("by", by, "is not a grouping", f"use one of {list(GROUP_BY)}")
    if by == "partition":
        if not isinstance(partition_key, str) or not partition_key:
            raise ValidationError(
                "partition_key",
                partition_key,
                "must name a top-level payload key when by='partition'",
                "e.g. partition_key='tenant'",
            )
        return lambda c: _hashable(c.partition)
    if partition_key is not None:
        raise ValidationError(
            "partition_key",
            partition_key,
            f"is only read when by='partition' (by={by!r})",
            "drop partition_key, or pass by='partition'",
        )
    if by == "task_type":
        return lambda c: c.task_type
    if by == "queue":
        return lambda c: c.queue
    return lambda c: c.priority


def _hashable(value: Any) -> Hashable:
    """A partition value as a group key: an object or a list (unhashable) becomes its JSON
    text, keys sorted, so equal values form one group and no lease fails on one of them."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value  # type: ignore[no-any-return]


def _resolve_by(by: str | None, partition_key: str | None) -> str:
    if by is None:
        return "partition" if partition_key is not None else "task_type"
    return by


def _grouped(candidates: Sequence[Candidate], key: Any) -> dict[Hashable, deque[Candidate]]:
    """Candidates by group, each group in window order; groups in order of their best task."""
    groups: dict[Hashable, deque[Candidate]] = {}
    for c in candidates:
        groups.setdefault(key(c), deque()).append(c)
    return groups


# ---------------------------------------------------------------------------------------------
# schedulers
# ---------------------------------------------------------------------------------------------


class Scheduler:
    """Base class of schedulers: subclasses implement :meth:`plan`.

    An instance is a plugin: ``Queue(path, plugins=[scheduler])`` makes it the queue's
    scheduler; its ``hookqueue_lease`` is ``tryfirst`` so it answers before the ``priority``
    module's default. ``plan`` runs on every lease, in the leasing worker's store thread,
    possibly in several threads at once: keep it fast and thread-safe.
    """

    #: The plugin name a registered instance gets (one scheduler per queue).
    hookqueue_name: ClassVar[str] = "scheduler"

    def plan(self, request: LeaseRequest) -> LeasePlan:
        """The lease plan for this request."""
        raise NotImplementedError(f"{type(self).__name__} must implement plan(request)")

    @hookimpl(tryfirst=True)
    def hookqueue_lease(self, request: LeaseRequest) -> LeasePlan:
        """This scheduler's plan."""
        return self.plan(request)


@attrs.frozen(kw_only=True, eq=False)
class StrictPriority(Scheduler):
    """Lowest ``priority`` number first; within a priority, the earliest due, then enqueue
    order. The same as the ``priority`` module's default. A steady stream of urgent tasks
    can starve the others: :class:`Aging` bounds that wait."""

    def plan(self, request: LeaseRequest) -> LeasePlan:
        """:data:`PRIORITY_PLAN`."""
        return PRIORITY_PLAN


@attrs.frozen(kw_only=True, eq=False)
class Fifo(Scheduler):
    """Earliest due first (enqueue order for tasks due at the same instant); priority is
    ignored. The core's own order."""

    def plan(self, request: LeaseRequest) -> LeasePlan:
        """:data:`FIFO_PLAN`."""
        return FIFO_PLAN


@attrs.frozen(kw_only=True, eq=False)
class Lifo(Scheduler):
    """Latest due first (newest enqueued first among tasks due at the same instant); priority
    is ignored. Suits work where only fresh tasks matter; old ones can wait for ever."""

    def plan(self, request: LeaseRequest) -> LeasePlan:
        """:data:`LIFO_PLAN`."""
        return LIFO_PLAN


@attrs.frozen(kw_only=True, eq=False)
class Aging(Scheduler):
    """Priority that improves with waiting, so no task starves.

    A task's effective priority is ``priority - floor(seconds since enqueued / aging_seconds)``
    (lowest first, then due order). A task of priority ``p`` therefore runs before any task
    enqueued later with priority ``q`` once it has waited ``(p - q) * aging_seconds``: its wait
    behind a never-ending stream of more urgent work is bounded by that (plus the time a worker
    slot takes to free up).

    The age counts from enqueue (``created_at``), so a task delayed with ``run_after`` or
    waiting for a retry is already aged when it becomes due.
    """

    #: Seconds of waiting that improve the effective priority by one.
    aging_seconds: float = attrs.field(default=60.0, validator=_positive_seconds)
    _plan: LeasePlan = attrs.field(init=False)

    @_plan.default
    def _make_plan(self) -> LeasePlan:
        return LeasePlan(
            order=(SortKey.AGED_PRIORITY,), aging_seconds=float(self.aging_seconds), name="aging"
        )

    def plan(self, request: LeaseRequest) -> LeasePlan:
        """Order by aged priority."""
        return self._plan


@attrs.frozen(kw_only=True, eq=False)
class WeightedRandom(Scheduler):
    """Pick the next group at random, with probability proportional to its weight.

    Candidates (up to ``window`` due tasks, drawn per group: each group's best task, then each
    group's second best, …) are grouped ``by`` task type, queue, priority or a payload key
    (``by="partition", partition_key="tenant"``). For each
    task to lease, a group present in the window is drawn with probability
    ``weight / sum of the weights of the groups present``, and its best task (lowest priority
    number, then earliest due) is taken. Groups not named in ``weights`` weigh
    ``default_weight``.

    With ``weights={"critical": 3, "bulk": 1}`` and both kinds waiting, three of four leases
    go to ``critical`` on average, however many of either wait, and ``bulk`` is never
    starved.

    :param rng: the random source; ``random.Random(seed)`` makes the draws repeatable.
    """

    #: Group name to weight (> 0).
    weights: Mapping[Hashable, float] = attrs.field(factory=dict, converter=_weights)
    #: What candidates are grouped by (default: task type; ``partition`` with a key).
    by: GroupBy | None = None
    #: Top-level payload key to group by when ``by="partition"``.
    partition_key: str | None = None
    #: The weight of groups not named in ``weights``.
    default_weight: float = attrs.field(default=1.0, validator=_default_weight)
    #: How many due candidates are offered per lease, drawn per group (keep it above the
    #: number of groups with due tasks at once).
    window: int = attrs.field(default=256, validator=_window)
    #: Draw the window per group (the default: the shares hold whatever the backlogs, at
    #: a cost per lease that grows with the number of due tasks). False reads the first
    #: ``window`` due tasks in order instead: an index read whose cost does not grow with
    #: the backlog, but a group behind a longer backlog of others is not offered, so the
    #: shares drift towards the enqueue mix.
    per_group: bool = attrs.field(default=True, validator=_per_group)
    #: The random source.
    rng: random.Random = attrs.field(factory=random.Random, repr=False)
    _key: Any = attrs.field(init=False, repr=False)
    _plan: LeasePlan = attrs.field(init=False, repr=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    @_key.default
    def _make_key(self) -> Any:
        return _group_key(_resolve_by(self.by, self.partition_key), self.partition_key)

    @_plan.default
    def _make_plan(self) -> LeasePlan:
        return LeasePlan(
            order=(SortKey.PRIORITY,),
            window=self.window,
            rerank=self.rerank,
            partition_key=self.partition_key,
            group_by=_resolve_by(self.by, self.partition_key) if self.per_group else None,
            name="weighted-random",
        )

    def weight(self, group: Hashable) -> float:
        """The weight of ``group``."""
        return self.weights.get(group, self.default_weight)

    def rerank(self, candidates: Sequence[Candidate], limit: int) -> list[int]:
        """Draw up to ``limit`` tasks: a group by weight, then its best task, repeatedly."""
        groups = _grouped(candidates, self._key)
        chosen: list[int] = []
        with self._lock:  # one rng shared by every worker thread of this process
            while groups and len(chosen) < limit:
                keys = list(groups)
                group = self.rng.choices(keys, weights=[self.weight(k) for k in keys])[0]
                tasks = groups[group]
                chosen.append(tasks.popleft().id)
                if not tasks:
                    del groups[group]
        return chosen

    def plan(self, request: LeaseRequest) -> LeasePlan:
        """A window in priority order, re-ranked by :meth:`rerank`."""
        return self._plan


@attrs.define
class _StrideState:
    """Stride scheduling state: a virtual clock and each group's next turn on it."""

    clock: float = 0.0
    turns: dict[Hashable, float] = attrs.field(factory=dict)


#: Groups remembered by :class:`FairShare` before those whose turn has passed are forgotten.
_MAX_REMEMBERED_GROUPS = 4096


@attrs.frozen(kw_only=True, eq=False)
class FairShare(Scheduler):
    """Take turns between groups, so one group's burst cannot starve the others.

    Candidates (up to ``window`` due tasks, drawn per group: each group's best task, then each
    group's second best, …) are grouped ``by`` task type, queue, priority or a payload key
    (``FairShare(partition_key="tenant")``), so a group waiting behind another group's
    backlog still gets its turns. Groups take turns (stride
    scheduling): each lease goes to the waiting group whose turn comes first, and a group of
    weight ``w`` gets ``w`` turns for every turn of a group of weight 1. A group that was idle
    rejoins at the current turn, without credit for the time it had nothing to run.

    With ``respect_priority`` (the default) a task with a lower priority number still goes
    first whichever its group; turns decide between groups whose best tasks have the same
    priority. Without it, only turns count.

    Turns are kept per scheduler object, so in-process workers share them; each worker
    process keeps its own, which still shares the work out fairly when processes alternate.
    """

    #: What candidates are grouped by (default: task type; ``partition`` with a key).
    by: GroupBy | None = None
    #: Top-level payload key to group by when ``by="partition"``.
    partition_key: str | None = None
    #: Group name to weight (> 0); others weigh ``default_weight``.
    weights: Mapping[Hashable, float] = attrs.field(factory=dict, converter=_weights)
    #: The weight of groups not named in ``weights``.
    default_weight: float = attrs.field(default=1.0, validator=_default_weight)
    #: Lower priority numbers first; turns break ties between groups.
    respect_priority: bool = True
    #: How many due candidates are offered per lease, drawn per group (keep it above the
    #: number of groups with due tasks at once).
    window: int = attrs.field(default=256, validator=_window)
    #: Draw the window per group (the default: the shares hold whatever the backlogs, at
    #: a cost per lease that grows with the number of due tasks). False reads the first
    #: ``window`` due tasks in order instead: an index read whose cost does not grow with
    #: the backlog, but a group behind a longer backlog of others is not offered, so the
    #: shares drift towards the enqueue mix.
    per_group: bool = attrs.field(default=True, validator=_per_group)
    _key: Any = attrs.field(init=False, repr=False)
    _plan: LeasePlan = attrs.field(init=False, repr=False)
    _state: _StrideState = attrs.field(init=False, factory=_StrideState, repr=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    @_key.default
    def _make_key(self) -> Any:
        return _group_key(_resolve_by(self.by, self.partition_key), self.partition_key)

    @_plan.default
    def _make_plan(self) -> LeasePlan:
        return LeasePlan(
            order=(SortKey.PRIORITY,) if self.respect_priority else (SortKey.FIFO,),
            window=self.window,
            rerank=self.rerank,
            partition_key=self.partition_key,
            group_by=_resolve_by(self.by, self.partition_key) if self.per_group else None,
            name="fair-share",
        )

    def weight(self, group: Hashable) -> float:
        """The weight of ``group``."""
        return self.weights.get(group, self.default_weight)

    def rerank(self, candidates: Sequence[Candidate], limit: int) -> list[int]:
        """Give up to ``limit`` turns, one task per turn, to the groups whose turn is next."""
        groups = _grouped(candidates, self._key)
        rank = {group: i for i, group in enumerate(groups)}
        chosen: list[int] = []
        state = self._state
        with self._lock:
            while groups and len(chosen) < limit:
                if self.respect_priority:
                    best = min(tasks[0].priority for tasks in groups.values())
                    eligible = [g for g, tasks in groups.items() if tasks[0].priority == best]
                else:
                    eligible = list(groups)
                # A group never seen, or idle, waits from the current turn: no saved credit.
                group = min(eligible, key=lambda g: (state.turns.get(g, state.clock), rank[g]))
                state.clock = max(state.clock, state.turns.get(group, state.clock))
                state.turns[group] = state.clock + 1.0 / self.weight(group)
                tasks = groups[group]
                chosen.append(tasks.popleft().id)
                if not tasks:
                    del groups[group]
            if len(state.turns) > _MAX_REMEMBERED_GROUPS:
                # A group whose turn has come is the same as a new one: forget it.
                state.turns = {g: t for g, t in state.turns.items() if t > state.clock}
        return chosen

    def plan(self, request: LeaseRequest) -> LeasePlan:
        """A window in priority (or FIFO) order, re-ranked by :meth:`rerank`."""
        return self._plan


def _scheduler(field: str, value: Any) -> Scheduler:
    if not isinstance(value, Scheduler):
        raise ValidationError(
            field,
            value,
            "is not a scheduler",
            "use StrictPriority(), Fifo(), Lifo(), Aging(...), WeightedRandom(...), "
            "FairShare(...) or a Scheduler subclass",
        )
    return value


def _queue_schedulers(value: Any) -> Mapping[str, Scheduler]:
    if not isinstance(value, Mapping):
        raise ValidationError(
            "queues", value, "must map queue names to schedulers", "e.g. {'emails': Fifo()}"
        )
    return {name: _scheduler(f"queues[{name!r}]", s) for name, s in value.items()}


def _default_scheduler(value: Any) -> Scheduler:
    return _scheduler("default", value)


@attrs.frozen(kw_only=True, eq=False)
class PerQueue(Scheduler):
    """A scheduler per queue name: ``PerQueue(queues={"emails": Fifo()}, default=Aging())``.

    A lease is one SQL statement over every queue the worker works, so a worker whose queues
    map to different schedulers uses ``default`` (logged once per set of queues). Give such
    queues their own workers to keep their orders.
    """

    #: Queue name to scheduler.
    queues: Mapping[str, Scheduler] = attrs.field(factory=dict, converter=_queue_schedulers)
    #: The scheduler for other queues and for mixed leases.
    default: Scheduler = attrs.field(factory=StrictPriority, converter=_default_scheduler)
    _warned: set[tuple[str, ...]] = attrs.field(init=False, factory=set, repr=False)

    def scheduler_for(self, queues: Sequence[str]) -> Scheduler:
        """The scheduler that orders a lease over ``queues``."""
        chosen = {id(s): s for s in (self.queues.get(q, self.default) for q in queues)}
        if len(chosen) == 1:
            return next(iter(chosen.values()))
        key = tuple(sorted(queues))
        if key not in self._warned:
            self._warned.add(key)
            log.warning(
                "queues %s have different schedulers; a worker leasing from all of them "
                "uses the default (%r). Run a worker per queue to keep each order",
                list(key),
                self.default,
            )
        return self.default

    def plan(self, request: LeaseRequest) -> LeasePlan:
        """The plan of the scheduler for the request's queues."""
        return self.scheduler_for(request.queues).plan(request)


__all__ = [
    "FIFO_PLAN",
    "GROUP_BY",
    "LIFO_PLAN",
    "PRIORITY_PLAN",
    "Aging",
    "FairShare",
    "Fifo",
    "GroupBy",
    "Lifo",
    "PerQueue",
    "Scheduler",
    "StrictPriority",
    "WeightedRandom",
]
