"""Limits in the SQLite store: concurrency, rate and round-robin turns, applied inside the
lease transaction (see the "Limits" part of :mod:`hookqueue.core.storage`).

A lease with limits reads, under the write lock it already holds:

1. the rules (the plan's, and the stored ones when ``plan.stored_limits``);
2. per concurrency rule, its running tasks per bucket (the running tasks are few: one index
   over them); per rate rule, the buckets whose stored state is ahead of ``now``;
3. the due candidates in the plan's order, leaving out in SQL the buckets that are full (so a
   tenant with 10,000 held tasks does not fill the window), then walks them in Python, counting
   each start against every rule it matches, so a batch never overshoots a limit.

With a fair rule the candidates are the first few of every bucket (a window function over the
due tasks), served in turns: the bucket served least (by its weight) first. Rate state and turns are
written before the transaction commits, so every process sees the same counts.

Every statement is built here from constant pieces and counts (no value is formatted in: the
partition key's JSON path is bound), like :mod:`.statements`.
"""

from __future__ import annotations

import builtins
import functools
import heapq
import json
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import apsw

from ..errors import ValidationError
from ..models import LeasePlan, LimitRule, SortKey
from ..storage import CLOCK_SLACK_US, LimitUsage
from .statements import NOT_PAUSED, _due_clause, _type_filter, order_by, placeholders

# -- statements --------------------------------------------------------------------------------

#: The columns of a stored rule, in :func:`rule_from_row` order.
LIMIT_COLS = (
    "name, queue, task_type, partition_by, partition_in, concurrency, rate, period, burst, fair, "
    "weights"
)
SQL_LIMITS_ALL = f"SELECT {LIMIT_COLS} FROM limits ORDER BY name"
SQL_LIMIT_GET = f"SELECT {LIMIT_COLS} FROM limits WHERE name = ?"
SQL_LIMIT_INSERT = f"""
INSERT INTO limits ({LIMIT_COLS}, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
SQL_LIMIT_UPDATE = """
UPDATE limits SET queue = ?, task_type = ?, partition_by = ?, partition_in = ?, concurrency = ?,
                  rate = ?, period = ?, burst = ?, fair = ?, weights = ?, updated_at = ?
WHERE name = ?
"""
SQL_LIMIT_DELETE = "DELETE FROM limits WHERE name = ?"
SQL_LIMIT_RATES_DELETE = "DELETE FROM limit_rates WHERE rule = ?"
SQL_LIMIT_TURNS_DELETE = "DELETE FROM limit_turns WHERE rule = ?"
#: The buckets of a rate rule whose state lies ahead of ``now`` (the others are as if fresh).
SQL_RATE_AHEAD = "SELECT bucket, tat FROM limit_rates WHERE rule = ? AND tat > ?"
SQL_RATE_PUT = """
INSERT INTO limit_rates (rule, bucket, tat) VALUES (?, ?, ?)
ON CONFLICT (rule, bucket) DO UPDATE SET tat = excluded.tat
"""
#: Rate state that allows a full burst again is the same as none: prune drops it.
SQL_RATE_PRUNE = "DELETE FROM limit_rates WHERE tat < ?"
SQL_TURNS = "SELECT bucket, turn FROM limit_turns WHERE rule = ?"
SQL_TURN_PUT = """
INSERT INTO limit_turns (rule, bucket, turn) VALUES (?, ?, ?)
ON CONFLICT (rule, bucket) DO UPDATE SET turn = excluded.turn
"""

#: A task's bucket value under a partitioned rule: the JSON text of the value at the bound
#: path (``'"acme"'``, ``'42'``) when it is a string or a number, else ``''`` (the shared
#: bucket for a missing key, another JSON type, or text that is not JSON: one damaged row
#: must not fail every lease). Binds ``path, path``.
BUCKET_EXPR = {
    "payload": (
        "coalesce(CASE WHEN json_valid(payload) THEN (CASE WHEN json_type(payload, ?) "
        "IN ('text', 'integer', 'real') THEN payload -> ? END) END, '')"
    ),
    "headers": (
        "coalesce(CASE WHEN json_valid(headers) THEN (CASE WHEN json_type(headers, ?) "
        "IN ('text', 'integer', 'real') THEN headers -> ? END) END, '')"
    ),
    "": "''",
}
#: Which tasks a rule matches, by whether it names a queue and a task type.
MATCH = {
    (False, False): "1",
    (True, False): "queue = ?",
    (False, True): "task_type = ?",
    (True, True): "queue = ? AND task_type = ?",
}

#: The partition columns of a query: the source of each (``"payload"`` / ``"headers"``); the
#: paths are bound.
PartShape = tuple[str, ...]
#: The names of the partition columns in the fair query (at most this many distinct partition
#: keys among the rules of one lease).
PART_NAMES = (
    "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11", "p12", "p13",
    "p14", "p15",
)  # fmt: skip
#: One exclusion: ``(has_queue, has_type, source or "", number of buckets; 0: the whole rule)``.
ExclShape = tuple[tuple[bool, bool, str, int], ...]


@functools.lru_cache(maxsize=256)
def sql_rule_running(has_queue: bool, has_type: bool, source: str) -> str:
    """A rule's running tasks per bucket; binds ``[path, path,] [queue,] [type]``."""
    return (
        f"SELECT {BUCKET_EXPR[source]}, count(*) FROM tasks "
        f"WHERE status = 'running' AND {MATCH[has_queue, has_type]} GROUP BY 1"
    )


@functools.lru_cache(maxsize=256)
def sql_rule_due(has_queue: bool, has_type: bool, source: str) -> str:
    """A rule's due queued tasks per bucket (paused queues left out); binds ``[path,
    path,] due_us, [queue,] [type]``."""
    return (
        f"SELECT {BUCKET_EXPR[source]}, count(*) FROM tasks "
        f"WHERE status = 'queued' AND run_after <= ? AND {MATCH[has_queue, has_type]}"
        f"{NOT_PAUSED} GROUP BY 1"
    )


@functools.lru_cache(maxsize=256)
def sql_rule_any_due(has_queue: bool, has_type: bool) -> str:
    """Is a task the rule matches queued and due? Binds ``due_us, [queue,] [type]``."""
    return (
        "SELECT 1 FROM tasks WHERE status = 'queued' AND run_after <= ? "
        f"AND {MATCH[has_queue, has_type]}{NOT_PAUSED} LIMIT 1"
    )


def _exclusions(excl: ExclShape) -> str:
    """`` AND NOT (…)`` per held rule or bucket list."""
    out = []
    for has_queue, has_type, source, n in excl:
        if n:
            out.append(
                f" AND NOT ({MATCH[has_queue, has_type]} AND "
                f"{BUCKET_EXPR[source]} IN ({placeholders(n)}))"
            )
        else:
            out.append(f" AND NOT ({MATCH[has_queue, has_type]})")
    return "".join(out)


def _part_columns(parts: PartShape) -> str:
    """The partition columns ``, expr AS p0, …``."""
    return "".join(f", {BUCKET_EXPR[source]}" for source in parts)


@functools.lru_cache(maxsize=256)
def sql_limit_candidates(
    keys: tuple[SortKey, ...], n_queues: int, n_types: int | None, parts: PartShape, excl: ExclShape
) -> str:
    """The first ``window`` due tasks in the plan's order that no full bucket holds: ``id,
    queue, task_type, *partition columns``. Binds ``*parts' paths, *queues, due_us[, *types],
    *exclusions' values, *order params, window, *order params``."""
    order = order_by(keys)
    return (
        f"SELECT id, queue, task_type{_part_columns(parts)} FROM tasks WHERE id IN ("
        f"SELECT id FROM tasks WHERE status = 'queued' AND queue IN ({placeholders(n_queues)}) "
        f"AND {_due_clause(keys)}{_type_filter(n_types)}{NOT_PAUSED}{_exclusions(excl)} "
        f"ORDER BY {order} LIMIT ?) ORDER BY {order}"
    )


@functools.lru_cache(maxsize=256)
def sql_limit_fair(
    keys: tuple[SortKey, ...],
    n_queues: int,
    n_types: int | None,
    parts: PartShape,
    excl: ExclShape,
    fair_col: int,
) -> str:
    """The first ``per_bucket`` due tasks of every bucket of the fair rule's partition column
    ``fair_col`` (each bucket's in the plan's order): ``id, queue, task_type, *partition
    columns, rank in its bucket``. Binds ``*order params, *parts' paths, *queues, due_us[,
    *types], *exclusions' values, per_bucket, *order params``."""
    order = order_by(keys)
    cols = "".join(", " + PART_NAMES[i] for i in range(len(parts)))
    named = "".join(f", {BUCKET_EXPR[source]} AS {PART_NAMES[i]}" for i, source in enumerate(parts))
    return (
        f"SELECT id, queue, task_type{cols}, rn FROM ("
        f"SELECT id, queue, task_type, priority, run_after{cols}, "
        f"row_number() OVER (PARTITION BY {PART_NAMES[fair_col]} ORDER BY {order}) AS rn FROM ("
        f"SELECT id, queue, task_type, priority, run_after{named} FROM tasks "
        f"WHERE status = 'queued' AND queue IN ({placeholders(n_queues)}) "
        f"AND {_due_clause(keys)}{_type_filter(n_types)}{NOT_PAUSED}{_exclusions(excl)})) "
        f"WHERE rn <= ? ORDER BY rn, {order}"
    )


@functools.lru_cache(maxsize=128)
def sql_limit_buckets(n: int, parts: PartShape) -> str:
    """``id, queue, task_type, *partition columns`` of ``n`` ids (a re-ranked window's
    candidates). Binds ``*parts' paths, *ids``."""
    return f"SELECT id, queue, task_type{_part_columns(parts)} FROM tasks WHERE id IN ({placeholders(n)})"


# -- rules ---------------------------------------------------------------------------------------


def rule_from_row(row: Sequence[Any]) -> LimitRule:
    """A stored rule (a row of ``LIMIT_COLS``) as a :class:`LimitRule`."""
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
        concurrency=concurrency,
        rate=rate,
        period=period,
        burst=burst,
        fair=bool(fair),
        weights=() if weights is None else [tuple(pair) for pair in json.loads(weights)],
    )


def rule_values(rule: LimitRule) -> tuple[Any, ...]:
    """A rule's values in ``LIMIT_COLS`` order after the name."""
    return (
        rule.queue,
        rule.task_type,
        rule.partition_by,
        rule.partition_in,
        rule.concurrency,
        rule.rate,
        float(rule.period),
        rule.burst,
        int(rule.fair),
        json.dumps([list(pair) for pair in rule.weights]) if rule.weights else None,
    )


def path_of(rule: LimitRule) -> str:
    """The JSON path of a rule's partition key (bound, never formatted into SQL)."""
    return "$." + json.dumps(rule.partition_by)


def partition_value(bucket: str) -> Any:
    """A bucket's key as a value for reports: the JSON value, or None for ``''``."""
    return None if bucket == "" else json.loads(bucket)


#: One turn of a weight-1 bucket in a fair rule's stored positions (divisible by every weight
#: up to 16, so common weights advance exactly).
TURN = 720_720
#: Where a fair rule's clock is kept among its buckets' positions (never a bucket's key: those
#: are JSON numbers, quoted strings, or ``''``).
CLOCK_BUCKET = "*"

#: Rules read from the database, by their row (decoding validates, so it is done once).
_RULES: dict[tuple[Any, ...], LimitRule] = {}


def stored_rules(conn: apsw.Connection) -> builtins.list[LimitRule]:
    """The stored rules, by name."""
    out = []
    for row in conn.execute(SQL_LIMITS_ALL):
        rule = _RULES.get(row)
        if rule is None:
            if len(_RULES) > 1024:
                _RULES.clear()
            rule = _RULES[row] = rule_from_row(row)
        out.append(rule)
    return out


def plan_rules(
    conn: apsw.Connection,
    plan: LeasePlan | None,
    queues: Sequence[str] | None,
    task_types: Sequence[str] | None,
) -> builtins.list[LimitRule]:
    """The rules a lease with ``plan`` keeps that can concern ``queues`` and ``task_types``
    (a rule of another queue, or of a type the worker does not run, is left out)."""
    if plan is None or (not plan.limits and not plan.stored_limits):
        return []
    rules = list(plan.limits)
    if plan.stored_limits:
        rules += stored_rules(conn)
    return [
        r
        for r in rules
        if (r.queue is None or queues is None or r.queue in queues)
        and (r.task_type is None or task_types is None or r.task_type in task_types)
    ]


# -- the selection ---------------------------------------------------------------------------------


class _Rule:
    """One rule's state during one lease: its running counts and rate state per bucket."""

    __slots__ = ("rule", "part", "running", "tat", "dirty", "held")

    def __init__(self, rule: LimitRule, part: int | None) -> None:
        self.rule = rule
        #: Index of its partition column (None: one bucket, ``''``).
        self.part = part
        self.running: dict[str, int] = {}
        self.tat: dict[str, int] = {}
        self.dirty: set[str] = set()
        #: Buckets full now (before this lease's starts).
        self.held: builtins.list[str] = []

    def allows(self, bucket: str, now_us: int) -> bool:
        rule = self.rule
        if rule.concurrency is not None and self.running.get(bucket, 0) >= rule.concurrency:
            return False
        if rule.rate is not None:
            tat = self.tat.get(bucket, now_us)
            if tat - (rule.burst - 1) * rule.interval_us > now_us:
                return False
        return True

    def take(self, bucket: str, now_us: int) -> None:
        rule = self.rule
        if rule.concurrency is not None:
            self.running[bucket] = self.running.get(bucket, 0) + 1
        if rule.rate is not None:
            self.tat[bucket] = max(self.tat.get(bucket, now_us), now_us) + rule.interval_us
            self.dirty.add(bucket)


def _counts(cursor: Iterable[Any]) -> dict[str, int]:
    """``bucket -> integer`` from a query of two columns."""
    return {str(bucket): int(n) for bucket, n in cursor}


def _effective_tat(rule: LimitRule, tat: int, now_us: int) -> int:
    """Stored rate state, with a reading more than the clock slack ahead of what any start
    at ``now_us`` could have written (a clock that reads far ahead wrote it) ignored: the
    bucket is then as if unused, so one wrong clock cannot hold it until its instant."""
    if tat > now_us + rule.burst * rule.interval_us + CLOCK_SLACK_US:
        return now_us
    return tat


class Selection:
    """Which due tasks a lease with limits may start, computed inside one transaction.

    :meth:`pick` returns ids in the order to lease them; :meth:`write` stores the rate state
    and turns of what was picked (call it only when the picks are leased)."""

    #: Held buckets listed in the candidate query per rule at most (more: they are skipped
    #: while walking the window instead).
    MAX_EXCLUDED = 200

    def __init__(
        self,
        conn: apsw.Connection,
        rules: Sequence[LimitRule],
        now_us: int,
        *,
        load_turns: bool = True,
    ) -> None:
        self.conn = conn
        self.now_us = now_us
        parts: builtins.list[tuple[str, str]] = []
        self.rules: builtins.list[_Rule] = []
        for rule in rules:
            part = None
            if rule.partition_by is not None:
                key = (rule.partition_in, path_of(rule))
                if key not in parts:
                    parts.append(key)
                part = parts.index(key)
            self.rules.append(_Rule(rule, part))
        if len(parts) > len(PART_NAMES):
            raise ValidationError(
                "limits",
                len(parts),
                f"the rules of one lease read more than {len(PART_NAMES)} partition keys",
                "partition the rules of a queue by fewer keys",
            )
        #: The partition columns: ``(source, path)``.
        self.parts = parts
        self.fair: _Rule | None = next((r for r in self.rules if r.rule.fair), None)
        self.turns: dict[str, int] = {}
        #: The fair rule's buckets served by this lease (their positions are written).
        self.served: set[str] = set()
        for r in self.rules:
            self._load(r)
        if self.fair is not None and load_turns:
            self.turns = _counts(conn.execute(SQL_TURNS, (self.fair.rule.name,)))

    def _bucket_args(self, r: _Rule) -> tuple[str, tuple[Any, ...]]:
        if r.part is None:
            return "", ()
        source, path = self.parts[r.part]
        return source, (path, path)

    @staticmethod
    def _match_args(rule: LimitRule) -> tuple[Any, ...]:
        return tuple(v for v in (rule.queue, rule.task_type) if v is not None)

    def _load(self, r: _Rule) -> None:
        rule, now_us = r.rule, self.now_us
        source, bucket_args = self._bucket_args(r)
        if rule.concurrency is not None:
            sql = sql_rule_running(rule.queue is not None, rule.task_type is not None, source)
            r.running = _counts(self.conn.execute(sql, (*bucket_args, *self._match_args(rule))))
            r.held += [b for b, n in r.running.items() if n >= rule.concurrency]
        if rule.rate is not None:
            for bucket, tat in self.conn.execute(SQL_RATE_AHEAD, (rule.name, now_us)):
                tat = _effective_tat(rule, tat, now_us)
                r.tat[bucket] = tat
                if tat - (rule.burst - 1) * rule.interval_us > now_us and bucket not in r.held:
                    r.held.append(bucket)

    # -- candidates ------------------------------------------------------------------------------

    def _exclusion(self) -> tuple[ExclShape, tuple[Any, ...]]:
        shape: builtins.list[tuple[bool, bool, str, int]] = []
        params: builtins.list[Any] = []
        for r in self.rules:
            if not r.held:
                continue
            rule = r.rule
            has_q, has_t = rule.queue is not None, rule.task_type is not None
            if r.part is None:
                shape.append((has_q, has_t, "", 0))
                params += self._match_args(rule)
            elif len(r.held) <= self.MAX_EXCLUDED:
                source, bucket_args = self._bucket_args(r)
                shape.append((has_q, has_t, source, len(r.held)))
                params += [*self._match_args(rule), *bucket_args, *r.held]
        return tuple(shape), tuple(params)

    def _parts_shape(self) -> tuple[PartShape, tuple[Any, ...]]:
        return (
            tuple(source for source, _ in self.parts),
            tuple(p for _, path in self.parts for p in (path, path)),
        )

    def candidates(
        self,
        plan: LeasePlan,
        queues: Sequence[str],
        due_us: int,
        task_types: Sequence[str] | None,
        order_params: tuple[Any, ...],
        window: int,
        *,
        fair: bool = True,
    ) -> builtins.list[tuple[Any, ...]]:
        """Due candidates in the plan's order with their partition columns (with a fair
        rule, and ``fair``: up to ``window`` per bucket, each row ending with its rank)."""
        keys = tuple(plan.order)
        types = () if task_types is None else tuple(task_types)
        n_types = None if task_types is None else len(types)
        excl, excl_params = self._exclusion()
        parts, part_params = self._parts_shape()
        if fair and self.fair is not None:
            assert self.fair.part is not None
            sql = sql_limit_fair(keys, len(queues), n_types, parts, excl, self.fair.part)
            params = (
                *order_params,
                *part_params,
                *queues,
                due_us,
                *types,
                *excl_params,
                window,
                *order_params,
            )
        else:
            sql = sql_limit_candidates(keys, len(queues), n_types, parts, excl)
            params = (
                *part_params,
                *queues,
                due_us,
                *types,
                *excl_params,
                *order_params,
                window,
                *order_params,
            )
        return self.conn.execute(sql, params).fetchall()

    def buckets_of(self, ids: Sequence[int]) -> dict[int, tuple[Any, ...]]:
        """``id -> (id, queue, task_type, *partition columns)`` of these ids."""
        if not ids:
            return {}
        parts, part_params = self._parts_shape()
        rows = self.conn.execute(sql_limit_buckets(len(ids), parts), (*part_params, *ids))
        return {row[0]: row for row in rows}

    def roomy(self, n: int) -> bool:
        """True when ``n`` more starts cannot fill any bucket of any rule (so every due
        candidate the held-bucket exclusion lets through will start)."""
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

    # -- the walk --------------------------------------------------------------------------------

    def _try(self, row: Sequence[Any]) -> bool:
        """Start ``row`` if every rule it matches allows it (then count it)."""
        queue, task_type = row[1], row[2]
        now_us = self.now_us
        hit = []
        for r in self.rules:
            if not r.rule.matches(queue, task_type):
                continue
            bucket = "" if r.part is None else row[3 + r.part]
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
        col = 3 + fair.part
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
                    step = TURN // self._weight(fair.rule, key)
                    if key is not None:
                        self.turns[key] = at + step
                        self.served.add(key)
                    if at > clock:
                        clock = self.turns[CLOCK_BUCKET] = at
                        self.served.add(CLOCK_BUCKET)
                    heapq.heappush(heap, (at + step, order, key))
                    break
        return picked

    def _weight(self, rule: LimitRule, bucket: str | None) -> int:
        if not rule.weights or bucket is None or bucket == "":
            return 1
        return rule.weight_of(partition_value(bucket))

    def write(self) -> None:
        """Store the rate state and turns of the picks (inside the lease transaction)."""
        for r in self.rules:
            if r.dirty:
                self.conn.executemany(
                    SQL_RATE_PUT, [(r.rule.name, b, r.tat[b]) for b in sorted(r.dirty)]
                )
        if self.fair is not None and self.served:
            self.conn.executemany(
                SQL_TURN_PUT, [(self.fair.rule.name, b, self.turns[b]) for b in sorted(self.served)]
            )

    # -- wake-ups and reports ------------------------------------------------------------------

    def next_start_us(self, due_us: int) -> int | None:
        """The earliest instant a held rate bucket allows a start again (for a bucket of an
        unpartitioned rule, only if it has a due task waiting)."""
        best: int | None = None
        for r in self.rules:
            rule = r.rule
            if rule.rate is None:
                continue
            for tat in r.tat.values():
                at = tat - (rule.burst - 1) * rule.interval_us
                if at <= self.now_us:
                    continue
                if r.part is None:
                    sql = sql_rule_any_due(rule.queue is not None, rule.task_type is not None)
                    if self.conn.execute(sql, (due_us, *self._match_args(rule))).get is None:
                        continue
                best = at if best is None else min(best, at)
        return best

    def usage(self, due_us: int) -> builtins.list[LimitUsage]:
        """Per rule and bucket with running or due tasks: counts, and what is held back."""
        out: builtins.list[LimitUsage] = []
        for r in self.rules:
            rule = r.rule
            source, bucket_args = self._bucket_args(r)
            sql = sql_rule_due(rule.queue is not None, rule.task_type is not None, source)
            due = _counts(self.conn.execute(sql, (*bucket_args, due_us, *self._match_args(rule))))
            if rule.concurrency is None:
                source_sql = sql_rule_running(
                    rule.queue is not None, rule.task_type is not None, source
                )
                running = _counts(
                    self.conn.execute(source_sql, (*bucket_args, *self._match_args(rule)))
                )
            else:
                running = r.running
            rows = []
            for bucket in set(due) | set(running):
                n_due = due.get(bucket, 0)
                next_at = None
                waiting = 0
                if rule.rate is not None and bucket in r.tat:
                    at = r.tat[bucket] - (rule.burst - 1) * rule.interval_us
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
            out += rows
        return out
