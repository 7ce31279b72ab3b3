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
due tasks), served in turns: the bucket served least (by its weight) first.

A re-ranking plan is offered its window drawn as an unlimited lease draws it — per group with
``group_by`` (:func:`sql_limit_window_grouped`), else the head of the queue — less the held
buckets; its choice is walked as above, and with a fair rule each bucket's first tasks follow
the choice (``LimitWalk.ranked``), so the turns reach a bucket the window or the choice left
out. Rate state and turns are
written before the transaction commits, so every process sees the same counts.

Every statement is built here from constant pieces and counts (no value is formatted in: the
partition key's JSON path is bound), like :mod:`.statements`.
"""

from __future__ import annotations

import builtins
import functools
import json
from collections.abc import Sequence
from typing import Any

import apsw

from ..limitwalk import (
    MAX_EXCLUDED,
    MAX_PARTS,
    LimitWalk,
    RuleState,
    concerning,
    counts,
    decode_rules,
    weights_json,
)
from ..models import LeasePlan, LimitRule, SortKey
from ..storage import LimitUsage
from .statements import (
    NOT_PAUSED,
    WINDOW_GROUP_TERMS,
    _due_clause,
    _type_filter,
    order_by,
    placeholders,
)

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
assert len(PART_NAMES) == MAX_PARTS
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


#: What a window is drawn per, as :data:`~.statements.WINDOW_GROUP_TERMS` (the partition value
#: read in place: binds its path).
LIMIT_GROUP_TERMS = {
    **WINDOW_GROUP_TERMS,
    "partition": "CASE WHEN json_valid(payload) THEN payload -> ? END",
}


@functools.lru_cache(maxsize=256)
def sql_limit_window_grouped(
    keys: tuple[SortKey, ...],
    n_queues: int,
    n_types: int | None,
    parts: PartShape,
    excl: ExclShape,
    group_by: str,
) -> str:
    """A re-ranking plan's window drawn per group as an unlimited lease draws it
    (:func:`~.statements.sql_lease_window_grouped`: each group's first due task in the
    plan's order, then each group's second, …, the first ``window`` of those), among the due
    tasks no full bucket holds: ``id, queue, task_type, *partition columns``, in the plan's
    order. Binds ``*parts' paths, [partition path,] *order params, *queues, due_us[,
    *types], *exclusions' values, *order params, window, *order params``.

    Like the unlimited one it numbers every due task, so its cost grows with them."""
    order = order_by(keys)
    return (
        f"SELECT id, queue, task_type{_part_columns(parts)} FROM tasks WHERE id IN ("
        f"SELECT id FROM (SELECT id, priority, run_after, row_number() OVER ("
        f"PARTITION BY {LIMIT_GROUP_TERMS[group_by]} ORDER BY {order}) AS rn FROM tasks "
        f"WHERE status = 'queued' AND queue IN ({placeholders(n_queues)}) AND run_after <= ?"
        f"{_type_filter(n_types)}{NOT_PAUSED}{_exclusions(excl)}) "
        f"ORDER BY rn, {order} LIMIT ?) ORDER BY {order}"
    )


@functools.lru_cache(maxsize=128)
def sql_limit_buckets(n: int, parts: PartShape) -> str:
    """``id, queue, task_type, *partition columns`` of ``n`` ids (a re-ranked window's
    candidates). Binds ``*parts' paths, *ids``."""
    return f"SELECT id, queue, task_type{_part_columns(parts)} FROM tasks WHERE id IN ({placeholders(n)})"


# -- rules ---------------------------------------------------------------------------------------


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
        weights_json(rule),
    )


def path_of(rule: LimitRule) -> str:
    """The JSON path of a rule's partition key (bound, never formatted into SQL)."""
    return "$." + json.dumps(rule.partition_by)


def stored_rules(conn: apsw.Connection) -> builtins.list[LimitRule]:
    """The stored rules, by name."""
    return decode_rules(conn.execute(SQL_LIMITS_ALL))


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
    return concerning(rules, queues, task_types)


# -- the selection ---------------------------------------------------------------------------------


class Selection(LimitWalk):
    """Which due tasks a lease with limits may start, computed inside one transaction.

    :meth:`pick` returns ids in the order to lease them; :meth:`write` stores the rate state
    and turns of what was picked (call it only when the picks are leased)."""

    def __init__(
        self,
        conn: apsw.Connection,
        rules: Sequence[LimitRule],
        now_us: int,
        *,
        load_turns: bool = True,
    ) -> None:
        super().__init__(rules, now_us, path_of)
        self.conn = conn
        for r in self.rules:
            self._load(r)
        if self.fair is not None and load_turns:
            self.turns = counts(conn.execute(SQL_TURNS, (self.fair.rule.name,)))

    def _bucket_args(self, r: RuleState) -> tuple[str, tuple[Any, ...]]:
        if r.part is None:
            return "", ()
        source, path = self.parts[r.part]
        return source, (path, path)

    @staticmethod
    def _match_args(rule: LimitRule) -> tuple[Any, ...]:
        return tuple(v for v in (rule.queue, rule.task_type) if v is not None)

    def _load(self, r: RuleState) -> None:
        rule = r.rule
        source, bucket_args = self._bucket_args(r)
        if rule.concurrency is not None:
            sql = sql_rule_running(rule.queue is not None, rule.task_type is not None, source)
            r.load_running(counts(self.conn.execute(sql, (*bucket_args, *self._match_args(rule)))))
        if rule.rate is not None:
            r.load_rates(self.conn.execute(SQL_RATE_AHEAD, (rule.name, self.now_us)), self.now_us)

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
            elif len(r.held) <= MAX_EXCLUDED:
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

    def window(
        self,
        plan: LeasePlan,
        queues: Sequence[str],
        due_us: int,
        task_types: Sequence[str] | None,
        order_params: tuple[Any, ...],
    ) -> builtins.list[tuple[Any, ...]]:
        """A re-ranking plan's window of candidates no full bucket holds, drawn as an
        unlimited lease draws it: per group with ``plan.group_by``, else the first
        ``plan.window`` due tasks in the plan's order."""
        if plan.group_by is None:
            return self.candidates(
                plan, queues, due_us, task_types, order_params, plan.window, fair=False
            )
        types = () if task_types is None else tuple(task_types)
        n_types = None if task_types is None else len(types)
        excl, excl_params = self._exclusion()
        parts, part_params = self._parts_shape()
        group_params = (
            ("$." + json.dumps(plan.partition_key),) if plan.group_by == "partition" else ()
        )
        sql = sql_limit_window_grouped(
            tuple(plan.order), len(queues), n_types, parts, excl, plan.group_by
        )
        params = (
            *part_params,
            *group_params,
            *order_params,
            *queues,
            due_us,
            *types,
            *excl_params,
            *order_params,
            plan.window,
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
        for r, at in self.rate_openings():
            rule = r.rule
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
            match = self._match_args(rule)
            has_q, has_t = rule.queue is not None, rule.task_type is not None
            due = counts(
                self.conn.execute(
                    sql_rule_due(has_q, has_t, source), (*bucket_args, due_us, *match)
                )
            )
            if rule.concurrency is None:
                running = counts(
                    self.conn.execute(
                        sql_rule_running(has_q, has_t, source), (*bucket_args, *match)
                    )
                )
            else:
                running = r.running
            out += self.usage_of(r, due, running)
        return out
