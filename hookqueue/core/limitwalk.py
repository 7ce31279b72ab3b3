"""The store-independent half of applying limits during one lease.

A store that keeps :class:`~hookqueue.core.models.LimitRule` limits (see the "Limits" part of
:mod:`hookqueue.core.storage`) reads, inside its lease transaction, each rule's running tasks
and rate state per bucket and the due candidates; what it then does with them is the same
whatever the engine, and lives here once:

- :class:`RuleState` — one rule's counts during one lease: does a bucket allow another start,
  and counting one (concurrency: running tasks; rate: a GCRA "theoretical arrival time" per
  bucket, so a rate of N per period with a burst B admits B at once, then one per
  period/N);
- :class:`LimitWalk` — the walk over the candidates in the plan's order, counting each start
  against every rule it matches so a batch never overshoots a limit, and with a fair rule the
  weighted turns between its buckets; what is held back and why (:meth:`LimitWalk.usage_of`);
- what a re-ranking plan's choice is walked as (:meth:`LimitWalk.ranked`): the scheduler is
  offered its window as an unlimited lease draws it (per group with ``LeasePlan.group_by``),
  less the held buckets, and with a fair rule every bucket's first tasks follow its choice,
  so the turns reach a bucket the window or the choice left out.

A store subclasses :class:`LimitWalk` with the statements that load the counts and the
candidates and write back the rate state and turns (``hookqueue.core.store.limiting`` for
SQLite, ``hookqueue.plugins.postgres.limiting`` for PostgreSQL). A third-party store can do
the same; ``hookqueue.contrib.contracts.limits`` checks the outcome.

Buckets are strings: the JSON text of the task's partition value (``'"acme"'``, ``'42'``), or
``''`` for an unpartitioned rule and for tasks without a usable value. A candidate row is
``(id, queue, task_type, *partition columns, ...)``, one partition column per distinct
``(partition_in, partition_by)`` among the lease's rules.
"""

from __future__ import annotations

import builtins
import heapq
import itertools
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .errors import ValidationError
from .models import LimitRule
from .storage import CLOCK_SLACK_US, LimitUsage

#: One turn of a weight-1 bucket in a fair rule's stored positions (divisible by every weight
#: up to 16, so common weights advance exactly).
TURN = 720_720
#: Where a fair rule's clock is kept among its buckets' positions (never a bucket's key: those
#: are JSON numbers, quoted strings, or ``''``).
CLOCK_BUCKET = "*"
#: At most this many distinct partition keys among the rules of one lease.
MAX_PARTS = 16
#: Held buckets a store lists in its candidate query per rule at most (more: they are skipped
#: while walking the window instead).
MAX_EXCLUDED = 200
#: Index of a candidate row's first partition column (after id, queue, task_type).
FIRST_PART = 3


def with_spare(limit: int) -> int:
    """Candidates to read for a batch of ``limit`` (per bucket, for a fair rule): a little
    more than asked, as a start may fill a bucket half-way through the batch (its later
    tasks are then skipped)."""
    return limit + min(limit, 32) + 8


# -- rules as stored -----------------------------------------------------------------------------


def rule_from_row(row: Sequence[Any]) -> LimitRule:
    """A stored rule as a :class:`LimitRule`; ``row`` is ``name, queue, task_type,
    partition_by, partition_in, concurrency, rate, period, burst, fair, weights`` (weights as
    the JSON text of ``[[value, weight], ...]``, or None)."""
    (name, queue, task_type, partition_by, partition_in, concurrency, rate, period, burst, fair) = (
        row[:10]
    )
    weights = row[10]
    return LimitRule(
        name=name,
        queue=queue,
        task_type=task_type,
        partition_by=partition_by,
        partition_in=partition_in,
        concurrency=None if concurrency is None else int(concurrency),
        rate=None if rate is None else int(rate),
        period=float(period),
        burst=int(burst),
        fair=bool(fair),
        weights=() if weights is None else [tuple(pair) for pair in json.loads(weights)],
    )


def weights_json(rule: LimitRule) -> str | None:
    """A rule's weights as stored (the inverse of :func:`rule_from_row`'s reading)."""
    return json.dumps([list(pair) for pair in rule.weights]) if rule.weights else None


#: Rules read from a database, by their row (decoding validates, so it is done once).
_RULES: dict[tuple[Any, ...], LimitRule] = {}


def decode_rules(rows: Iterable[Sequence[Any]]) -> builtins.list[LimitRule]:
    """Stored rule rows as rules, in the order given (decoded once per distinct row)."""
    out = []
    for row in rows:
        key = tuple(row)
        rule = _RULES.get(key)
        if rule is None:
            if len(_RULES) > 1024:
                _RULES.clear()
            rule = _RULES[key] = rule_from_row(row)
        out.append(rule)
    return out


def concerning(
    rules: Iterable[LimitRule], queues: Sequence[str] | None, task_types: Sequence[str] | None
) -> builtins.list[LimitRule]:
    """The rules that can concern a lease of ``queues`` and ``task_types`` (a rule of
    another queue, or of a type the worker does not run, is left out)."""
    return [
        r
        for r in rules
        if (r.queue is None or queues is None or r.queue in queues)
        and (r.task_type is None or task_types is None or r.task_type in task_types)
    ]


def rate_state_after_change(
    old: LimitRule, new: LimitRule, rows: Iterable[Sequence[Any]], now_us: int
) -> builtins.list[tuple[str, int]]:
    """A rate rule's stored state (``bucket, tat`` rows ahead of ``now_us``) rewritten for
    ``new`` when a rule is replaced: each bucket keeps the starts it owes (its lead over
    ``now_us`` counted in ``old``'s intervals), now paid at ``new``'s rate — so loosening a
    rate lets what it held start at the new pace, and tightening it does not forgive a recent
    burst. Empty when ``new`` has no rate (the state is then dropped)."""
    if old.rate is None or new.rate is None:
        return []
    out = []
    for bucket, tat in rows:
        owed = (int(tat) - now_us) / old.interval_us
        out.append((str(bucket), now_us + round(owed * new.interval_us)))
    return out


def partition_value(bucket: str) -> Any:
    """A bucket's key as a value for reports: the JSON value, or None for ``''``."""
    return None if bucket == "" else json.loads(bucket)


def counts(rows: Iterable[Any]) -> dict[str, int]:
    """``bucket -> integer`` from rows of two columns."""
    return {str(bucket): int(n) for bucket, n in rows}


# -- one rule during one lease -------------------------------------------------------------------


class RuleState:
    """One rule's state during one lease: its running counts and rate state per bucket."""

    __slots__ = ("rule", "index", "part", "running", "tat", "dirty", "held")

    def __init__(self, rule: LimitRule, index: int, part: int | None) -> None:
        self.rule = rule
        #: Its position among the lease's rules.
        self.index = index
        #: Index of its partition column (None: one bucket, ``''``).
        self.part = part
        #: Running tasks per bucket (concurrency rules).
        self.running: dict[str, int] = {}
        #: Rate state per bucket: the instant the next start is "due" (rate rules).
        self.tat: dict[str, int] = {}
        #: Buckets whose rate state this lease changed (to write back).
        self.dirty: set[str] = set()
        #: Buckets full now (before this lease's starts).
        self.held: builtins.list[str] = []

    def load_running(self, running: dict[str, int]) -> None:
        """Take the running tasks per bucket as read; full buckets are held."""
        concurrency = self.rule.concurrency
        assert concurrency is not None
        self.running = running
        self.held += [b for b, n in running.items() if n >= concurrency]

    def load_rates(self, rows: Iterable[Sequence[Any]], now_us: int) -> None:
        """Take the stored rate state ahead of ``now_us`` (``bucket, tat`` rows), ignoring a
        reading further ahead than any start at ``now_us`` could have written — a clock that
        reads far ahead wrote it; the bucket is then as if unused, so one wrong clock cannot
        hold it until its instant. Buckets allowing no start now are held."""
        rule = self.rule
        limit = now_us + rule.burst * rule.interval_us + CLOCK_SLACK_US
        for bucket, stored in rows:
            tat = int(stored)
            if tat > limit:
                tat = now_us
            self.tat[bucket] = tat
            if self.rate_opens_at(bucket, now_us) > now_us and bucket not in self.held:
                self.held.append(bucket)

    def rate_opens_at(self, bucket: str, now_us: int) -> int:
        """The instant the rate rule lets ``bucket`` start another task (``now_us`` or
        earlier when it may start now)."""
        rule = self.rule
        return self.tat.get(bucket, now_us) - (rule.burst - 1) * rule.interval_us

    def allows(self, bucket: str, now_us: int) -> bool:
        """Whether one more start in ``bucket`` stays within the rule."""
        rule = self.rule
        if rule.concurrency is not None and self.running.get(bucket, 0) >= rule.concurrency:
            return False
        return rule.rate is None or self.rate_opens_at(bucket, now_us) <= now_us

    def take(self, bucket: str, now_us: int) -> None:
        """Count one start in ``bucket``."""
        rule = self.rule
        if rule.concurrency is not None:
            self.running[bucket] = self.running.get(bucket, 0) + 1
        if rule.rate is not None:
            self.tat[bucket] = max(self.tat.get(bucket, now_us), now_us) + rule.interval_us
            self.dirty.add(bucket)


# -- the walk ------------------------------------------------------------------------------------


class LimitWalk:
    """Which candidates one lease may start under ``rules``, at ``now_us``.

    :param part_key: what identifies a rule's partition key in the store's statements (a
        JSON path for SQLite, the key for PostgreSQL); rules with the same source and key
        share a partition column.

    A subclass loads each :class:`RuleState` (``load_running`` / ``load_rates``) and the fair
    rule's :attr:`turns` before walking, and writes back :attr:`RuleState.dirty` and
    :attr:`served` in the same transaction once the picks are leased.
    """

    #: Write the fair rule's clock with every lease that serves it, not only when it moves
    #: (a store that prunes turns by when they were last written keeps the clock that way).
    KEEP_CLOCK_FRESH = False

    def __init__(
        self, rules: Sequence[LimitRule], now_us: int, part_key: Callable[[LimitRule], str]
    ) -> None:
        self.now_us = now_us
        parts: builtins.list[tuple[str, str]] = []
        self.rules: builtins.list[RuleState] = []
        for i, rule in enumerate(rules):
            part = None
            if rule.partition_by is not None:
                key = (rule.partition_in, part_key(rule))
                if key not in parts:
                    parts.append(key)
                part = parts.index(key)
            self.rules.append(RuleState(rule, i, part))
        if len(parts) > MAX_PARTS:
            raise ValidationError(
                "limits",
                len(parts),
                f"the rules of one lease read more than {MAX_PARTS} partition keys",
                "partition the rules of a queue by fewer keys",
            )
        #: The partition columns: ``(source, key)``, in candidate-row order.
        self.parts = parts
        #: The fair rule (at most one per lease), if any.
        self.fair: RuleState | None = next((r for r in self.rules if r.rule.fair), None)
        #: The fair rule's positions per bucket (and its clock under :data:`CLOCK_BUCKET`).
        self.turns: dict[str, int] = {}
        #: The fair rule's buckets served by this lease (their positions are written).
        self.served: set[str] = set()

    def source_of(self, r: RuleState) -> str:
        """Where a rule's partition value is read (``"payload"``/``"headers"``; ``""``: none)."""
        return "" if r.part is None else self.parts[r.part][0]

    def _bucket(self, r: RuleState, row: Sequence[Any]) -> str:
        return "" if r.part is None else row[FIRST_PART + r.part]

    def allowed_alone(self, row: Sequence[Any]) -> bool:
        """Would ``row`` be allowed to start by itself (nothing else starting with it)?"""
        queue, task_type = row[1], row[2]
        return all(
            r.allows(self._bucket(r, row), self.now_us)
            for r in self.rules
            if r.rule.matches(queue, task_type)
        )

    def roomy(self, n: int) -> bool:
        """True when ``n`` more starts cannot fill any bucket of any rule (so every due
        candidate a held-bucket exclusion lets through will start)."""
        if self.fair is not None:
            return False
        now_us = self.now_us
        for r in self.rules:
            rule = r.rule
            if rule.concurrency is not None:
                if rule.concurrency - max(r.running.values(), default=0) < n:
                    return False
            if rule.rate is not None:
                if rule.burst < n:
                    return False
                worst = max(r.tat.values(), default=now_us)
                if (rule.burst * rule.interval_us - max(0, worst - now_us)) < n * rule.interval_us:
                    return False
        return True

    def _try(self, row: Sequence[Any]) -> bool:
        """Start ``row`` if every rule it matches allows it (then count it)."""
        queue, task_type = row[1], row[2]
        now_us = self.now_us
        hit = []
        for r in self.rules:
            if not r.rule.matches(queue, task_type):
                continue
            bucket = self._bucket(r, row)
            if not r.allows(bucket, now_us):
                return False
            hit.append((r, bucket))
        for r, bucket in hit:
            r.take(bucket, now_us)
        return True

    def pick(self, rows: Iterable[Sequence[Any]], limit: int) -> builtins.list[int]:
        """The ids to start among ``rows`` (in order), at most ``limit``; with a fair rule,
        in turns between its buckets."""
        picked: builtins.list[int] = []
        if self.fair is None:
            for row in rows:
                if len(picked) >= limit:
                    break
                if self._try(row):
                    picked.append(row[0])
            return picked
        fair = self.fair
        assert fair.part is not None
        col = FIRST_PART + fair.part
        groups: dict[str | None, deque[Sequence[Any]]] = {}
        for row in rows:
            key = row[col] if fair.rule.matches(row[1], row[2]) else None
            groups.setdefault(key, deque()).append(row)
        # Weighted fair queueing by "virtual time": each bucket's stored position grows by
        # 1/weight of a turn per task served and the lowest goes next (ties: the order of
        # the buckets' first tasks). The rule's clock (stored under CLOCK_BUCKET) is the
        # position of the latest pick: a bucket never served, or back after a quiet spell,
        # starts from it — first in line, without the turns it missed. Tasks the fair rule
        # does not match take their turns as one more bucket.
        clock = self.turns.get(CLOCK_BUCKET, 0)
        first = {key: i for i, key in enumerate(groups)}
        heap = [
            (clock if key is None else max(self.turns.get(key, clock), clock), first[key], key)
            for key in groups
        ]
        heapq.heapify(heap)
        while heap and len(picked) < limit:
            at, order, key = heapq.heappop(heap)
            queue = groups[key]
            while queue:
                row = queue.popleft()
                if self._try(row):
                    picked.append(row[0])
                    step = TURN // self.weight(fair.rule, key)
                    if key is not None:
                        self.turns[key] = at + step
                        self.served.add(key)
                    if at > clock or self.KEEP_CLOCK_FRESH:
                        clock = self.turns[CLOCK_BUCKET] = max(clock, at)
                        self.served.add(CLOCK_BUCKET)
                    heapq.heappush(heap, (at + step, order, key))
                    break
        return picked

    def ranked(
        self,
        choice: Iterable[int],
        window: Mapping[int, Sequence[Any]],
        heads: Iterable[Sequence[Any]] = (),
    ) -> builtins.list[Sequence[Any]]:
        """The rows to :meth:`pick` from for a re-ranking plan: first the scheduler's
        ``choice`` (ids of ``window``, the allowed candidates it was offered, in the plan's
        order), each once. With a fair rule a reserve follows — ``heads``, the first tasks
        of every bucket of the fair rule in the plan's order, then the rest of ``window`` —
        so the turns reach a bucket the window or the choice left out: such a bucket is
        served its first tasks in the plan's order, and the others the scheduler's choice
        first. Without a fair rule only the choice is walked."""
        rows = [window[i] for i in dict.fromkeys(choice) if i in window]
        if self.fair is None:
            return rows
        seen = {row[0] for row in rows}
        for row in itertools.chain(heads, window.values()):
            if row[0] not in seen:
                seen.add(row[0])
                rows.append(row)
        return rows

    @staticmethod
    def weight(rule: LimitRule, bucket: str | None) -> int:
        """The turns per round of a fair rule's bucket (1 unless weighted)."""
        if not rule.weights or bucket is None or bucket == "":
            return 1
        return rule.weight_of(partition_value(bucket))

    def save(self) -> tuple[Any, ...]:
        """The walk's counts, to :meth:`restore` when picks could not be leased."""
        rules = [(dict(r.running), dict(r.tat), set(r.dirty)) for r in self.rules]
        return rules, dict(self.turns), set(self.served)

    def restore(self, saved: tuple[Any, ...]) -> None:
        """Go back to what :meth:`save` returned."""
        rules, turns, served = saved
        for r, (running, tat, dirty) in zip(self.rules, rules, strict=True):
            r.running, r.tat, r.dirty = running, tat, dirty
        self.turns, self.served = turns, served

    # -- wake-ups and reports --------------------------------------------------------------------

    def rate_openings(self) -> Iterable[tuple[RuleState, int]]:
        """``(rule, instant)`` of every rate bucket held now: when it allows a start again."""
        for r in self.rules:
            if r.rule.rate is None:
                continue
            for bucket in r.tat:
                at = r.rate_opens_at(bucket, self.now_us)
                if at > self.now_us:
                    yield r, at

    def usage_of(
        self, r: RuleState, due: dict[str, int], running: dict[str, int]
    ) -> builtins.list[LimitUsage]:
        """A rule's report per bucket with running or due tasks (``due`` and ``running`` per
        bucket as read): counts, and how many due tasks it holds back, most held first."""
        rule = r.rule
        rows = []
        for bucket in set(due) | set(running):
            n_due = due.get(bucket, 0)
            next_at = None
            waiting = 0
            if rule.rate is not None and bucket in r.tat:
                at = r.rate_opens_at(bucket, self.now_us)
                if at > self.now_us:
                    next_at = at
                    waiting = n_due
            if rule.concurrency is not None and not waiting:
                free = max(0, rule.concurrency - running.get(bucket, 0))
                waiting = max(0, n_due - free)
            rows.append(
                LimitUsage(
                    rule=rule.name,
                    partition=partition_value(bucket),
                    running=running.get(bucket, 0),
                    due=n_due,
                    waiting=waiting,
                    next_start_us=next_at,
                )
            )
        rows.sort(key=lambda u: (-u.waiting, -u.due, -u.running, str(u.partition)))
        return rows
