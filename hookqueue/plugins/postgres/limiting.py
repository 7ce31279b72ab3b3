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
4. the picks are leased, and the rate state and turns written, in the same transaction.

Freed capacity: the settlement or expiry of a task a stored concurrency rule counts notifies
the work channel (``_FREES_SLOT`` in :mod:`.statements`), so held workers look again.

Every statement comes from :mod:`.statements`; values are bound, never formatted in.
"""

from __future__ import annotations

import builtins
import hashlib
import heapq
import json
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from hookqueue.core.errors import ValidationError
from hookqueue.core.models import LeasePlan, LimitRule, SortKey
from hookqueue.core.storage import CLOCK_SLACK_US, LimitUsage

from . import statements as q

#: At most this many distinct partition keys among the rules of one lease.
MAX_PARTS = 16
#: Held buckets listed in the candidate query per rule at most (more: they are skipped while
#: walking the window instead).
MAX_EXCLUDED = 200


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
        concurrency=None if concurrency is None else int(concurrency),
        rate=None if rate is None else int(rate),
        period=float(period),
        burst=int(burst),
        fair=bool(fair),
        weights=() if weights is None else [tuple(pair) for pair in json.loads(weights)],
    )


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
        "weights": json.dumps([list(pair) for pair in rule.weights]) if rule.weights else None,
        "now": now_us,
    }


def lock_key(schema: str, name: str) -> int:
    """The advisory lock key of a rule (a signed 64-bit digest of schema and name)."""
    digest = hashlib.blake2b(f"hookqueue-limit:{schema}:{name}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def partition_value(bucket: str) -> Any:
    """A bucket's key as a value for reports: the JSON value, or None for ``''``."""
    return None if bucket == "" else json.loads(bucket)


#: One turn of a weight-1 bucket in a fair rule's stored positions (divisible by every weight
#: up to 16, so common weights advance exactly); as in the SQLite store.
TURN = 720_720
#: Where a fair rule's clock is kept among its buckets' positions (never a bucket's key: those
#: are JSON numbers, quoted strings, or ``''``).
CLOCK_BUCKET = "*"

#: Rules read from the database, by their row (decoding validates, so it is done once).
_RULES: dict[tuple[Any, ...], LimitRule] = {}


def decode_rules(rows: Iterable[Sequence[Any]]) -> builtins.list[LimitRule]:
    """Stored rule rows as rules, in the order given."""
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


class _Rule:
    """One rule's state during one lease: its running counts and rate state per bucket."""

    __slots__ = ("rule", "index", "part", "running", "tat", "dirty", "held")

    def __init__(self, rule: LimitRule, index: int, part: int | None) -> None:
        self.rule = rule
        #: Its position among the lease's rules (names its parameters).
        self.index = index
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

    def shape(self, source: str) -> q.RuleShape:
        return (
            self.rule.queue is not None,
            self.rule.task_type is not None,
            source,
            0 if self.part is None else self.part,
        )


def _effective_tat(rule: LimitRule, tat: int, now_us: int) -> int:
    """Stored rate state, with a reading more than the clock slack ahead of what any start
    at ``now_us`` could have written (a clock that reads far ahead wrote it) ignored."""
    if tat > now_us + rule.burst * rule.interval_us + CLOCK_SLACK_US:
        return now_us
    return tat


def _counts(rows: Iterable[Any]) -> dict[str, int]:
    return {str(bucket): int(n) for bucket, n in rows}


#: Where a row's columns are (``_limit_columns`` order): parts start at 3, then these from
#: the end: priority, run_after, created_at, the plan's partition.
_FIRST_PART = 3


class Selection:
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
        self.conn = conn
        self.sql = sql
        self.now_us = now_us
        parts: builtins.list[tuple[str, str]] = []
        self.rules: builtins.list[_Rule] = []
        for i, rule in enumerate(rules):
            part = None
            if rule.partition_by is not None:
                key = (rule.partition_in, rule.partition_by)
                if key not in parts:
                    parts.append(key)
                part = parts.index(key)
            self.rules.append(_Rule(rule, i, part))
        if len(parts) > MAX_PARTS:
            raise ValidationError(
                "limits",
                len(parts),
                f"the rules of one lease read more than {MAX_PARTS} partition keys",
                "partition the rules of a queue by fewer keys",
            )
        #: The partition columns: ``(source, key)``.
        self.parts = parts
        self.fair: _Rule | None = next((r for r in self.rules if r.rule.fair), None)
        self.turns: dict[str, int] = {}
        #: The fair rule's buckets served by this lease (their turns are written).
        self.served: set[str] = set()
        #: The candidates asked for ahead (``window``, cursor), see :meth:`candidates`.
        self._ahead: tuple[int, Any] | None = None
        self._load(lock_schema, load_turns, ahead)

    # -- parameters ------------------------------------------------------------------------

    def _source(self, r: _Rule) -> str:
        return "" if r.part is None else self.parts[r.part][0]

    def _part_params(self) -> dict[str, Any]:
        return {f"k{n}": key for n, (_, key) in enumerate(self.parts)}

    def _rule_params(self, r: _Rule, i: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if r.rule.queue is not None:
            out[f"q{i}"] = r.rule.queue
        if r.rule.task_type is not None:
            out[f"y{i}"] = r.rule.task_type
        return out

    def _one_rule_params(self, r: _Rule) -> dict[str, Any]:
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
                    sql(q.sql_rule_running(r.shape(self._source(r)))), self._one_rule_params(r)
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
            rule = r.rule
            if what == "running":
                assert rule.concurrency is not None
                r.running = _counts(cur.fetchall())
                r.held += [b for b, n in r.running.items() if n >= rule.concurrency]
            else:
                for bucket, tat in cur.fetchall():
                    tat = _effective_tat(rule, int(tat), now_us)
                    r.tat[bucket] = tat
                    if tat - (rule.burst - 1) * rule.interval_us > now_us and bucket not in r.held:
                        r.held.append(bucket)
        if turns is not None:
            self.turns = _counts(turns.fetchall())

    # -- candidates ------------------------------------------------------------------------

    def _exclusion(self) -> tuple[q.ExclShape, dict[str, Any]]:
        shape: builtins.list[tuple[q.RuleShape, bool, int]] = []
        params: dict[str, Any] = {}
        for r in self.rules:
            if not r.held:
                continue
            i = r.index
            if r.part is None:
                shape.append((r.shape(""), False, i))
                params.update(self._rule_params(r, i))
            elif len(r.held) <= MAX_EXCLUDED:
                shape.append((r.shape(self._source(r)), True, i))
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
    ) -> tuple[str, dict[str, Any]]:
        """The candidates' statement (its template) and parameters, leaving out the buckets
        held now (``fast``: the fair query ranks by the raw key, see ``sql_limit_fair``)."""
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
            bucket = row[_FIRST_PART + col]
            n = seen.get(bucket, 0)
            if n < per_bucket:
                seen[bucket] = n + 1
                out.append(tuple(row))
        return out

    # -- the walk --------------------------------------------------------------------------

    def allowed_alone(self, row: Sequence[Any]) -> bool:
        """Would ``row`` be allowed to start by itself (nothing else starting with it)?"""
        queue, task_type = row[1], row[2]
        for r in self.rules:
            if r.rule.matches(queue, task_type):
                bucket = "" if r.part is None else row[_FIRST_PART + r.part]
                if not r.allows(bucket, self.now_us):
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
            bucket = "" if r.part is None else row[_FIRST_PART + r.part]
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
        col = _FIRST_PART + fair.part
        groups: dict[str | None, deque[Sequence[Any]]] = {}
        for row in rows:
            key = row[col] if fair.rule.matches(row[1], row[2]) else None
            groups.setdefault(key, deque()).append(row)
        # Weighted fair queueing by "virtual time", as in the SQLite store: each bucket's
        # stored position grows by 1/weight of a turn per task served and the lowest goes
        # next (ties: the order of the buckets' first tasks). The rule's clock (stored under
        # CLOCK_BUCKET) is the position of the latest pick: a bucket never served, or back
        # after a quiet spell, starts from it — first in line, without the turns it missed.
        # Tasks the fair rule does not match take their turns as one more bucket. The clock
        # is written with every lease that serves (its served_at keeps it from prune while
        # the rule is in use).
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
                    clock = max(clock, at)
                    self.turns[CLOCK_BUCKET] = clock
                    self.served.add(CLOCK_BUCKET)
                    heapq.heappush(heap, (at + step, order, key))
                    break
        return picked

    @staticmethod
    def _weight(rule: LimitRule, bucket: str | None) -> int:
        """The turns per round of a fair rule's bucket (1 unless weighted)."""
        if not rule.weights or bucket is None or bucket == "":
            return 1
        return rule.weight_of(partition_value(bucket))

    def _save(self) -> tuple[Any, ...]:
        rules = [(dict(r.running), dict(r.tat), set(r.dirty)) for r in self.rules]
        return rules, dict(self.turns), set(self.served)

    def _restore(self, saved: tuple[Any, ...]) -> None:
        rules, turns, served = saved
        for r, (running, tat, dirty) in zip(self.rules, rules, strict=True):
            r.running, r.tat, r.dirty = running, tat, dirty
        self.turns, self.served = turns, served

    def pick_locked(self, rows: Sequence[Sequence[Any]], limit: int) -> builtins.list[int]:
        """:meth:`pick` over unlocked rows (the fair query's), then lock the picks (``SKIP
        LOCKED``); when some cannot be locked (another transaction holds them, or they are
        no longer queued), pick again without them — a few times, then lease what is
        locked (a subset of allowed starts is allowed; the state counts what is leased)."""
        rows = list(rows)
        for attempt in range(4):
            saved = self._save()
            picked = self.pick(rows, limit)
            if not picked:
                return []
            got = {
                int(r[0])
                for r in self.conn.execute(self.sql(q.LOCK_PICKS), {"ids": picked}).fetchall()
            }
            if len(got) == len(picked):
                return picked
            self._restore(saved)
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
        for r in self.rules:
            rule = r.rule
            if rule.rate is None:
                continue
            for tat in r.tat.values():
                at = tat - (rule.burst - 1) * rule.interval_us
                if at <= self.now_us:
                    continue
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
            shape = r.shape(self._source(r))
            params = {**self._one_rule_params(r), "now": self.now_us}
            due = _counts(self.conn.execute(sql(q.sql_rule_due(shape)), params).fetchall())
            if rule.concurrency is None:
                running = _counts(
                    self.conn.execute(
                        sql(q.sql_rule_running(shape)), self._one_rule_params(r)
                    ).fetchall()
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
