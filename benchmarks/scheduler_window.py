"""What drawing a re-ranking scheduler's window per group costs (issue #19).

Usage::

    python benchmarks/scheduler_window.py                  # SQLite; 1,000, 10,000, 100,000 due
    python benchmarks/scheduler_window.py --quick          # tiny sizes, one round (smoke test)
    python benchmarks/scheduler_window.py --postgres       # also on a throwaway PostgreSQL
    python benchmarks/scheduler_window.py --backlogs 1000,20000 --rounds 5
    python benchmarks/scheduler_window.py --variant "per group" --variant "per group, limit"

For each backlog of due tasks (the schedulers workload's mix: four task types, ten
priorities, eight tenants, in random order) and each re-ranking scheduler, the median time of
``QueueRuntime.lease(limit=32)`` two ways:

- **per group** — the scheduler as it comes (``per_group=True``): its plan's
  ``LeasePlan.group_by`` makes the store draw the window per group (every group's first due
  task, then every group's second, …), so the shares hold whatever the backlogs;
- **head** — ``per_group=False``: the first ``window`` due tasks in priority order, as every
  lease read before issue #19 (the shares drift once a group's backlog exceeds the window);

and under limits, through the ``limits`` plugin with one stored rule (set before the variant's
leases, removed after):

- **head, limit** — ``per_group=False`` under ``concurrency=10**6`` (a rule that never binds):
  what every limited lease read before the limited lease drew its window per group too;
- **per group, limit** — the scheduler as it comes under the same rule;
- **per group, fair rule** — the scheduler as it comes under a fair rule on ``tenant`` (the
  window per group, and every tenant's first tasks as the fair turns' reserve).

Each leased batch is released again (untimed), so the backlog stays the same. On SQLite, raw
apsw runs the same two statements in the same run — ``BEGIN IMMEDIATE``, the window
``SELECT`` (hookqueue's own named statement), the lease ``UPDATE`` of the first 32
candidates, ``COMMIT`` — so ``hq ÷ raw`` is what hookqueue adds around the same SQL (its
expired-lease sweep, the due instant, the leased rows' read, the Python). PostgreSQL has no
raw column (``--postgres`` starts a server the way the tests do). Medians over rounds; each
round uses a fresh database per backlog, and the variants alternate within it.

Prints a Markdown table and writes the JSON (medians and every round) to
``benchmarks/results/scheduler-window-<time>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hqbench.common import machine_info  # noqa: E402

from hookqueue import LeaseRequest, Queue  # noqa: E402
from hookqueue.core.models import LeasePlan, LimitRule, SortKey  # noqa: E402
from hookqueue.core.store import Settlement  # noqa: E402
from hookqueue.plugins import limits  # noqa: E402
from hookqueue.plugins.priority import FairShare, Scheduler, WeightedRandom  # noqa: E402

RESULTS_DIR = HERE / "results"
LIMIT = 32

#: The schedulers measured: label -> factory of a fresh instance (``per_group`` as given).
SCHEDULERS: dict[str, Callable[[bool], Scheduler]] = {
    "WeightedRandom(by=task_type)": lambda per_group: WeightedRandom(
        weights={"type0": 6, "type1": 3}, rng=random.Random(1), per_group=per_group
    ),
    "WeightedRandom(partition_key=tenant)": lambda per_group: WeightedRandom(
        partition_key="tenant",
        weights={"t0": 6, "t1": 3},
        rng=random.Random(1),
        per_group=per_group,
    ),
    "FairShare()": lambda per_group: FairShare(per_group=per_group),
    "FairShare(partition_key=tenant)": lambda per_group: FairShare(
        partition_key="tenant", per_group=per_group
    ),
}
#: A stored rule that never binds, and a fair rule between the tenants.
ROOMY = LimitRule(name="roomy", concurrency=10**6)
FAIR = LimitRule(name="turns", partition_by="tenant", fair=True)
#: ``per_group`` of each variant, and the stored rule it leases under (None: no ``limits``
#: plugin).
VARIANTS: dict[str, tuple[bool, LimitRule | None]] = {
    "head": (False, None),
    "per group": (True, None),
    "head, limit": (False, ROOMY),
    "per group, limit": (True, ROOMY),
    "per group, fair rule": (True, FAIR),
}
#: Puts a task raw leased back (untimed), so the backlog stays the same.
UNLEASE = (
    "UPDATE tasks SET status = 'queued', attempts = attempts - 1, locked_by = NULL, "
    "lease_expires_at = NULL, started_at = NULL WHERE id = ?"
)


def _specs(n: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    return [
        {
            "task_type": f"type{i % 4}",
            "priority": rng.randrange(10),
            "payload": {"i": i, "tenant": f"t{rng.randrange(8)}"},
        }
        for i in range(n)
    ]


def _fill(location: str, n: int) -> None:
    with _queue(location) as q:
        specs = _specs(n)
        for lo in range(0, n, 1000):
            q.enqueue_many(specs[lo : lo + 1000])


def _plan(scheduler: Scheduler) -> LeasePlan:
    request = LeaseRequest(
        worker_id="bench",
        queues=("default",),
        limit=LIMIT,
        now=datetime.now(UTC),
        lease_seconds=30.0,
    )
    return scheduler.plan(request)


def _queue(location: str, *plugins: Any) -> Queue:
    """A queue with only ``plugins`` (and the PostgreSQL store's, for a URL)."""
    if location.startswith("postgresql://"):
        from hookqueue.plugins import postgres

        plugins = (*plugins, postgres)
    return Queue(location, durability="normal", plugins=plugins, load_entrypoints=False)


def hq_lease_us(
    location: str, scheduler: Scheduler, leases: int, rule: LimitRule | None = None
) -> float:
    """Median µs of ``lease(limit=32)`` through a queue whose scheduler is ``scheduler``
    (with the ``limits`` plugin and ``rule`` stored, if given; removed again after)."""
    plugins: tuple[Any, ...] = (scheduler,) if rule is None else (scheduler, limits)
    with _queue(location, *plugins) as q:
        if rule is not None:
            limits.set_limit(q, rule)
        samples: list[int] = []
        for _ in range(leases):
            t0 = time.perf_counter_ns()
            leased = q.runtime.lease("bench", limit=LIMIT)
            samples.append(time.perf_counter_ns() - t0)
            assert len(leased) == LIMIT, len(leased)
            q.runtime.lease(
                "bench",
                limit=0,
                settlements=[Settlement(task_id=t.id, kind="release") for t in leased],
            )
        if rule is not None:
            limits.remove_limit(q, rule.name)
    return statistics.median(samples) / 1000


def raw_lease_us(path: Path, plan: LeasePlan, leases: int) -> float:
    """Median µs of the same window read and lease update through raw apsw."""
    from hqbench.raw import open_conn

    from hookqueue.core.store.statements import (
        sql_lease_chosen,
        sql_lease_window,
        sql_lease_window_grouped,
    )

    assert plan.order in ((SortKey.PRIORITY,), (SortKey.FIFO,))  # no order parameters
    conn = open_conn(path, "normal")  # set up as QueueDatabase sets up its own
    part = ("$." + json.dumps(plan.partition_key),) if plan.partition_key else ()
    keys = tuple(plan.order)
    if plan.group_by is None:
        sql = sql_lease_window(keys, 1, None, bool(part))
        params: tuple[Any, ...] = (*part, "default", 0, plan.window)
    else:
        sql = sql_lease_window_grouped(keys, 1, None, bool(part), plan.group_by)
        params = (*part, "default", 0, plan.window)
    samples: list[int] = []
    try:
        for _ in range(leases):
            now = time.time_ns() // 1000
            bound = (*params[: len(part) + 1], now, *params[len(part) + 2 :])
            t0 = time.perf_counter_ns()
            with conn:  # BEGIN IMMEDIATE … COMMIT (the connection's transaction mode)
                ids = [r[0] for r in conn.execute(sql, bound)][:LIMIT]
                leased = [
                    r[0]
                    for r in conn.execute(
                        sql_lease_chosen(len(ids)), ("bench", now + 30_000_000, now, *ids)
                    )
                ]
            samples.append(time.perf_counter_ns() - t0)
            assert len(leased) == LIMIT, len(leased)
            with conn:
                conn.executemany(UNLEASE, [(i,) for i in leased])
    finally:
        conn.close()
    return statistics.median(samples) / 1000


def one_round(
    store: str,
    backlogs: list[int],
    leases: int,
    workdir: Path,
    server: Any,
    variants: list[str],
) -> dict[str, Any]:
    """Every backlog, scheduler and variant once on ``store``: µs per lease (raw apsw
    beside the variants without a rule, on SQLite)."""
    out: dict[str, Any] = {}
    for n in backlogs:
        if store == "sqlite":
            path = workdir / f"window-{n}-{time.monotonic_ns()}.db"
            location = str(path)
            ctx: Any = None
        else:
            ctx = server.database(f"window_{n}")
            location = ctx.__enter__()
        try:
            _fill(location, n)
            rows: dict[str, Any] = {}
            for label, make in SCHEDULERS.items():
                row: dict[str, float] = {}
                for variant in variants:
                    per_group, rule = VARIANTS[variant]
                    scheduler = make(per_group)
                    row[variant] = hq_lease_us(location, scheduler, leases, rule)
                    if store == "sqlite" and rule is None:
                        row[f"raw {variant}"] = raw_lease_us(path, _plan(scheduler), leases)
                rows[label] = row
            out[str(n)] = rows
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
            elif store == "sqlite":
                for suffix in ("", "-wal", "-shm"):
                    Path(str(path) + suffix).unlink(missing_ok=True)
    return out


def _median(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    first = rounds[0]
    return {
        n: {
            label: {k: statistics.median(r[n][label][k] for r in rounds) for k in row}
            for label, row in first[n].items()
        }
        for n in first
    }


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def table(medians: dict[str, Any]) -> str:
    """The Markdown tables of a run's medians: the windows without limits (when both were
    run), and under limits (when both limit variants were)."""
    some = next(iter(next(iter(next(iter(medians.values())).values())).values()))
    out = []
    if {"head", "per group"} <= set(some):
        out.append(_windows_table(medians))
    if {"head, limit", "per group, limit"} <= set(some):
        out.append(_limits_table(medians))
    return "\n\n".join(out)


def _limits_table(medians: dict[str, Any]) -> str:
    """Under limits: the head window (what a limited lease read before) and the window per
    group, beside the same scheduler's lease per group without a rule (if run)."""

    def cells(m: dict[str, float]) -> list[str]:
        bare = m.get("per group")
        fair = m.get("per group, fair rule")
        return [
            _fmt(m["head, limit"]),
            _fmt(m["per group, limit"]),
            f"{m['per group, limit'] / m['head, limit']:.2f}×",
            _fmt(bare) if bare else "",
            f"{m['per group, limit'] / bare:.2f}×" if bare else "",
            _fmt(fair) if fair else "",
            f"{fair / bare:.2f}×" if fair and bare else "",
        ]

    header = (
        "| store | due tasks | scheduler | head, limit (before), µs "
        "| per group, limit (after), µs | after ÷ before | per group, no limit, µs "
        "| limit ÷ no limit | per group, fair rule, µs | fair rule ÷ no limit |"
    )
    return _markdown(medians, header, cells)


def _windows_table(medians: dict[str, Any]) -> str:
    """Without limits: the head window and the window per group, beside raw apsw."""

    def cells(m: dict[str, float]) -> list[str]:
        raw = m.get("raw per group")
        return [
            _fmt(m["head"]),
            _fmt(m["per group"]),
            f"{m['per group'] / m['head']:.2f}×",
            _fmt(raw) if raw else "",
            f"{m['per group'] / raw:.2f}×" if raw else "",
            f"{m['head'] / m['raw head']:.2f}×" if raw else "",
        ]

    header = (
        "| store | due tasks | scheduler | head (before), µs | per group (after), µs "
        "| after ÷ before | raw per group, µs | hq ÷ raw (after) | hq ÷ raw (before) |"
    )
    return _markdown(medians, header, cells)


def _markdown(
    medians: dict[str, Any], header: str, cells: Callable[[dict[str, float]], list[str]]
) -> str:
    """A Markdown table: ``header``, then a row per store, backlog and scheduler whose last
    cells are ``cells`` of its medians (numbers right-aligned)."""
    align = "|---|---:|---|" + "---:|" * (header.count("|") - 4)
    lines = [header, align]
    for store, by_n in medians.items():
        for n, rows in by_n.items():
            for label, m in rows.items():
                row = [store, f"{int(n):,}", f"`{label}`", *cells(m)]
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run, print, write the JSON."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/scheduler_window.py", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --quick 1)")
    parser.add_argument("--backlogs", default=None, help="due tasks, comma-separated")
    parser.add_argument("--leases", type=int, default=None, help="leases timed per variant")
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL")
    parser.add_argument("--dsn", default=None, help="with --postgres: a scratch server's DSN")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    parser.add_argument(
        "--variant",
        action="append",
        choices=list(VARIANTS),
        help="a variant to run (repeat for several; default: all)",
    )
    args = parser.parse_args(argv)
    variants = [v for v in VARIANTS if v in (args.variant or VARIANTS)]
    rounds = args.rounds or (1 if args.quick else 3)
    default_backlogs = "200,1000" if args.quick else "1000,10000,100000"
    backlogs = [int(x) for x in (args.backlogs or default_backlogs).split(",")]
    leases = args.leases or (3 if args.quick else 15)
    stores = ["sqlite"] + (["postgresql"] if args.postgres else [])
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hq-window-") as tmp:
        workdir = Path(tmp)
        data: dict[str, Any] = {
            "machine": machine_info(workdir),
            "config": {
                "rounds": rounds,
                "backlogs": backlogs,
                "leases": leases,
                "limit": LIMIT,
                "variants": variants,
            },
            "rounds": {},
            "medians": {},
        }
        server = None
        if args.postgres:
            from postgres import Server  # benchmarks/postgres.py

            server = Server(args.dsn)
            data["postgres"] = server.settings()
        try:
            for store in stores:
                runs = [
                    one_round(store, backlogs, leases, workdir, server, variants)
                    for _ in range(rounds)
                ]
                data["rounds"][store] = runs
                data["medians"][store] = _median(runs)
        finally:
            if server is not None:
                server.close()
    data["seconds"] = time.perf_counter() - began
    data["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(table(data["medians"]))
    print(
        f"\n{rounds} round(s), {leases} leases per variant, load average "
        f"{data['machine']['load_average_at_start']} at start, "
        f"{data['load_average_at_end']} at end; {data['seconds']:.0f} s"
    )
    out = args.out
    if out is None:
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"scheduler-window-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(data, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
