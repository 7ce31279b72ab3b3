"""Limits in the PostgreSQL store: concurrency, rate and round-robin turns, applied inside the
lease transaction (see the "Limits" part of :mod:`hookqueue.core.storage`).

Under READ COMMITTED two leases can each count the same free slot and both fill it, so a
lease that keeps rules first takes a transaction-level advisory lock per rule it keeps
(:data:`~.statements.LIMIT_LOCKS`: a 64-bit key per schema and rule name, taken in ascending
key order, so leases never wait for each other in a cycle). Leases that keep a rule thus run
one after another; the statements after the lock each take a new snapshot, which sees what
the previous holder committed. A lease that keeps no rule takes no lock at all, so unlimited
queues keep their speed. Plan-only rules (not stored) lock the same way: the key is the
name, not a row.

Then, as in the SQLite store:

1. per concurrency rule its running tasks per bucket; per rate rule the buckets whose state
   is ahead of ``now`` (ignoring state further ahead than the clock slack allows);
2. the due candidates in the plan's order, leaving out in SQL the buckets that are full (so a
   tenant with 10,000 held tasks does not fill the window), locked ``FOR UPDATE SKIP
   LOCKED``; walked in Python, counting each start against every rule it matches, so a batch
   never overshoots a limit;
3. with a fair rule the candidates are the first few of every bucket, served in turns: the
   bucket served least (by its weight, ``LimitRule.weights``) first. Ranking them reads every due task's key (its cost grows
   with the backlog); they are not locked — the picks are, ``SKIP LOCKED``, and a pick
   another transaction holds is walked around (:meth:`Selection.pick_locked`);
4. a re-ranking plan is offered its window drawn as an unlimited lease draws it — per group
   with ``group_by`` (``sql_limit_window_grouped``, not locked), else the head of the queue
   (locked) — less the held buckets; its choice is walked as above, and with a fair rule each
   bucket's first tasks follow the choice (``LimitWalk.ranked``), so the turns reach a
   bucket the window or the choice left out; unlocked rows are locked as they are picked
   (:meth:`Selection.pick_locked`);
5. the picks are leased, and the rate state and turns written, in the same transaction.

Freed capacity: the settlement or expiry of a task a stored concurrency rule counts notifies
the work channel (``_FREES_SLOT`` in :mod:`.statements`), so held workers look again.

Every statement comes from :mod:`.statements`; values are bound, never formatted in.
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Sequence
from typing import Any

import psycopg

from hookqueue.core.limitwalk import (
    FIRST_PART,
    MAX_EXCLUDED,
    LimitWalk,
    RuleState,
    counts,
    weights_json,
)
from hookqueue.core.models import LeasePlan, LimitRule, SortKey
from hookqueue.core.storage import LimitUsage

from . import statements as q


def rule_params(rule: LimitRule, now_us: int) -> dict[str, Any]:
    """A rule's values as the parameters of ``LIMIT_CREATE`` / ``LIMIT_UPDATE``."""
    return {
        "name": rule.name,
        "queue": rule.queue,
        "task_type": rule.task_type,
        "partition_by": rule.partition_by,
        "partition_in": rule.partition_in,
        "concurrency": rule.concurrency,
        "rate": rule.rate,
        "period": float(rule.period),
        "burst": rule.burst,
        "fair": bool(rule.fair),
        "weights": weights_json(rule),
        "now": now_us,
    }


def lock_key(schema: str, name: str) -> int:
    """The advisory lock key of a rule (a signed 64-bit digest of schema and name)."""
    digest = hashlib.blake2b(f"hookqueue-limit:{schema}:{name}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def rule_shape(r: RuleState, source: str) -> q.RuleShape:
    """How a rule appears in the statements: queue named, type named, partition source and
    column."""
    return (
        r.rule.queue is not None,
        r.rule.task_type is not None,
        source,
        0 if r.part is None else r.part,
    )


class Selection(LimitWalk):
    """Which due tasks a lease with limits may start, computed inside one transaction.

    :param conn: the connection (inside the lease's transaction, or a read).
    :param sql: the store's :class:`~.statements.Statements`.
    :param rules: the rules to keep.
    :param now_us: the caller's instant.
    :param lock_schema: the store's schema: take the rules' advisory locks first (a lease);
        None for a read.
    :param load_turns: read the fair rule's turns (a lease; reads need none).
    :param ahead: ``(plan, queues, task_types, window)`` of the candidates a lease without a
        fair rule will ask for: sent with the counts, before they are read, as if no bucket
        were full — the usual case, which then costs no round trip of its own while the
        rules' locks are held (when a bucket is full, they are asked for again without it).
    """

    #: The fair rule's clock is written with every lease that serves it: its ``served_at``
    #: keeps it from prune while the rule is in use.
    KEEP_CLOCK_FRESH = True

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        sql: q.Statements,
        rules: Sequence[LimitRule],
        now_us: int,
        *,
        lock_schema: str | None = None,
        load_turns: bool = True,
        ahead: tuple[LeasePlan, Sequence[str], Sequence[str] | None, int] | None = None,
    ) -> None:
        super().__init__(rules, now_us, lambda rule: str(rule.partition_by))
        self.conn = conn
        self.sql = sql
        #: The candidates asked for ahead (``window``, cursor), see :meth:`candidates`.
        self._ahead: tuple[int, Any] | None = None
        self._load(lock_schema, load_turns, ahead)

    # -- parameters ------------------------------------------------------------------------

    def _part_params(self) -> dict[str, Any]:
        return {f"k{n}": key for n, (_, key) in enumerate(self.parts)}

    def _rule_params(self, r: RuleState, i: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if r.rule.queue is not None:
            out[f"q{i}"] = r.rule.queue
        if r.rule.task_type is not None:
            out[f"y{i}"] = r.rule.task_type
        return out

    def _one_rule_params(self, r: RuleState) -> dict[str, Any]:
        """Parameters of a statement about rule ``r`` alone (rule 0 there)."""
        params = self._rule_params(r, 0)
        if r.part is not None:
            params[f"k{r.part}"] = self.parts[r.part][1]
        return params

    # -- loading ---------------------------------------------------------------------------

    def _load(
        self,
        lock_schema: str | None,
        load_turns: bool,
        ahead: tuple[LeasePlan, Sequence[str], Sequence[str] | None, int] | None,
    ) -> None:
        """Lock (a lease), then read the running counts, rate state and turns (and send the
        candidates ``ahead``): sent together, one round trip in a pipeline."""
        conn, sql, now_us = self.conn, self.sql, self.now_us
        if lock_schema is not None:
            keys = sorted({lock_key(lock_schema, r.rule.name) for r in self.rules})
            conn.execute(q.LIMIT_LOCKS, {"keys": keys})
        pending = []
        for r in self.rules:
            rule = r.rule
            if rule.concurrency is not None:
                cur = conn.execute(
                    sql(q.sql_rule_running(rule_shape(r, self.source_of(r)))),
                    self._one_rule_params(r),
                )
                pending.append((r, "running", cur))
            if rule.rate is not None:
                cur = conn.execute(sql(q.RATE_AHEAD), {"rule": rule.name, "now": now_us})
                pending.append((r, "rate", cur))
        turns = None
        if self.fair is not None and load_turns:
            turns = conn.execute(sql(q.TURNS), {"rule": self.fair.rule.name})
        if ahead is not None and self.fair is None:
            plan, queues, task_types, window = ahead
            text, params = self._query(plan, queues, self.now_us, task_types, window, lock=True)
            self._ahead = (window, conn.execute(sql(text), params))
        for r, what, cur in pending:
            if what == "running":
                r.load_running(counts(cur.fetchall()))
            else:
                r.load_rates(cur.fetchall(), now_us)
        if turns is not None:
            self.turns = counts(turns.fetchall())

    # -- candidates ------------------------------------------------------------------------

    def _exclusion(self) -> tuple[q.ExclShape, dict[str, Any]]:
        shape: builtins.list[tuple[q.RuleShape, bool, int]] = []
        params: dict[str, Any] = {}
        for r in self.rules:
            if not r.held:
                continue
            i = r.index
            if r.part is None:
                shape.append((rule_shape(r, ""), False, i))
                params.update(self._rule_params(r, i))
            elif len(r.held) <= MAX_EXCLUDED:
                shape.append((rule_shape(r, self.source_of(r)), True, i))
                params.update(self._rule_params(r, i))
                params[f"b{i}"] = list(r.held)
        return tuple(shape), params

    def _query(
        self,
        plan: LeasePlan,
        queues: Sequence[str],
        now_us: int,
        task_types: Sequence[str] | None,
        window: int,
        *,
        fair: bool = False,
        lock: bool = True,
        fast: bool = True,
        grouped: bool = False,
    ) -> tuple[str, dict[str, Any]]:
        """The candidates' statement (its template) and parameters, leaving out the buckets
        held now (``fast``: the fair query ranks by the raw key, see ``sql_limit_fair``;
        ``grouped``: the window drawn per ``plan.group_by``, not locked)."""
        keys = tuple(plan.order)
        excl, params = self._exclusion()
        params.update(self._part_params())
        params.update(
            {
                "now": now_us,
                "queue": queues[0],
                "queues": list(queues),
                "types": None if task_types is None else list(task_types),
            }
        )
        if SortKey.AGED_PRIORITY in keys:
            params["aging"] = max(1, int(plan.aging_seconds * 1_000_000))
        parts = tuple(source for source, _ in self.parts)
        typed = task_types is not None
        if fair:
            assert self.fair is not None and self.fair.part is not None
            params["per_bucket"] = window
            return q.sql_limit_fair(keys, typed, parts, excl, self.fair.part, fast), params
        partition = bool(plan.partition_key) and plan.rerank is not None and lock
        if partition:
            params["pkey"] = plan.partition_key
        if grouped:
            assert plan.group_by is not None
            params["window"] = window
            sql = q.sql_limit_window_grouped(keys, typed, parts, excl, plan.group_by, partition)
            return sql, params
        sql = q.sql_limit_candidates(keys, len(queues) > 1, typed, parts, excl, partition, lock)
        params["window"] = window
        return sql, params

    def candidates(
        self,
        plan: LeasePlan,
        queues: Sequence[str],
        now_us: int,
        task_types: Sequence[str] | None,
        window: int,
        *,
        fair: bool = True,
        lock: bool = True,
    ) -> builtins.list[tuple[Any, ...]]:
        """Due candidates in the plan's order with their partition columns (with a fair
        rule, and ``fair``: up to ``window`` per bucket, not locked); locked ``SKIP LOCKED``
        unless ``lock`` is False (a read)."""
        if fair and self.fair is not None:
            assert lock
            text, params = self._query(plan, queues, now_us, task_types, window, fair=True)
            slow, _ = self._query(plan, queues, now_us, task_types, window, fair=True, fast=False)
            return self._fair_candidates(text, slow, params, window)
        if self._ahead is not None:
            sent_window, cursor = self._ahead
            self._ahead = None
            rows = [tuple(row) for row in cursor.fetchall()]
            if sent_window == window and lock and not self._exclusion()[0]:
                return rows
        text, params = self._query(plan, queues, now_us, task_types, window, lock=lock)
        return [tuple(row) for row in self.conn.execute(self.sql(text), params).fetchall()]

    def window(
        self,
        plan: LeasePlan,
        queues: Sequence[str],
        now_us: int,
        task_types: Sequence[str] | None,
    ) -> builtins.list[tuple[Any, ...]]:
        """A re-ranking plan's window of candidates no full bucket holds, drawn as an
        unlimited lease draws it: per group with ``plan.group_by`` (not locked: lease the
        picks through :meth:`pick_locked`), else the first ``plan.window`` due tasks in the
        plan's order (locked ``SKIP LOCKED``)."""
        if plan.group_by is None:
            return self.candidates(plan, queues, now_us, task_types, plan.window, fair=False)
        text, params = self._query(plan, queues, now_us, task_types, plan.window, grouped=True)
        return [tuple(row) for row in self.conn.execute(self.sql(text), params).fetchall()]

    def _fair_candidates(
        self, text: str, slow: str, params: dict[str, Any], per_bucket: int
    ) -> builtins.list[tuple[Any, ...]]:
        """The fair query ``text`` (ranked by the raw key) where every payload is JSON —
        inside a savepoint: a damaged one fails it, and ``slow`` (ranked by
        ``limit_bucket``) is asked instead; each bucket's first ``per_bucket`` rows, in the
        plan's order, not locked (lease them through :meth:`pick_locked`)."""
        assert self.fair is not None and self.fair.part is not None
        col = self.fair.part
        try:
            with self.conn.transaction():
                rows = self.conn.execute(self.sql(text), params).fetchall()
        except psycopg.DataError:
            rows = self.conn.execute(self.sql(slow), params).fetchall()
        seen: dict[Any, int] = {}
        out = []
        for row in rows:
            bucket = row[FIRST_PART + col]
            n = seen.get(bucket, 0)
            if n < per_bucket:
                seen[bucket] = n + 1
                out.append(tuple(row))
        return out

    # -- the walk --------------------------------------------------------------------------

    def pick_locked(self, rows: Sequence[Sequence[Any]], limit: int) -> builtins.list[int]:
        """:meth:`pick` over unlocked rows (the fair query's), then lock the picks (``SKIP
        LOCKED``); when some cannot be locked (another transaction holds them, or they are
        no longer queued), pick again without them — a few times, then lease what is
        locked (a subset of allowed starts is allowed; the state counts what is leased)."""
        rows = list(rows)
        for attempt in range(4):
            saved = self.save()
            picked = self.pick(rows, limit)
            if not picked:
                return []
            got = {
                int(r[0])
                for r in self.conn.execute(self.sql(q.LOCK_PICKS), {"ids": picked}).fetchall()
            }
            if len(got) == len(picked):
                return picked
            self.restore(saved)
            if attempt == 3:
                by_id = {row[0]: row for row in rows}
                return self.pick([by_id[i] for i in picked if i in got], limit)
            rows = [row for row in rows if row[0] not in set(picked) - got]
        raise AssertionError("unreachable")

    def write(self) -> None:
        """Store the rate state and turns of the picks (inside the lease transaction)."""
        sql = self.sql
        for r in self.rules:
            if r.dirty:
                buckets = sorted(r.dirty)
                self.conn.execute(
                    sql(q.RATE_PUT),
                    {
                        "rule": r.rule.name,
                        "buckets": buckets,
                        "values": [r.tat[b] for b in buckets],
                    },
                )
        if self.fair is not None and self.served:
            buckets = sorted(self.served)
            self.conn.execute(
                sql(q.TURN_PUT),
                {
                    "rule": self.fair.rule.name,
                    "buckets": buckets,
                    "values": [self.turns[b] for b in buckets],
                    "now": self.now_us,
                },
            )

    # -- wake-ups and reports --------------------------------------------------------------

    def next_start_us(self) -> int | None:
        """The earliest instant a held rate bucket allows a start again (for a bucket of an
        unpartitioned rule, only if it has a due task waiting)."""
        best: int | None = None
        for r, at in self.rate_openings():
            rule = r.rule
            if r.part is None:
                sql = q.sql_rule_any_due(rule.queue is not None, rule.task_type is not None)
                params = {**self._rule_params(r, 0), "now": self.now_us}
                if self.conn.execute(self.sql(sql), params).fetchone() is None:
                    continue
            best = at if best is None else min(best, at)
        return best

    def usage(self) -> builtins.list[LimitUsage]:
        """Per rule and bucket with running or due tasks: counts, and what is held back."""
        out: builtins.list[LimitUsage] = []
        sql = self.sql
        for r in self.rules:
            rule = r.rule
            shape = rule_shape(r, self.source_of(r))
            params = {**self._one_rule_params(r), "now": self.now_us}
            due = counts(self.conn.execute(sql(q.sql_rule_due(shape)), params).fetchall())
            if rule.concurrency is None:
                running = counts(
                    self.conn.execute(
                        sql(q.sql_rule_running(shape)), self._one_rule_params(r)
                    ).fetchall()
                )
            else:
                running = r.running
            out += self.usage_of(r, due, running)
        return out
