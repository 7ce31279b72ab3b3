"""What the limits cost a lease on PostgreSQL: a lease of 10 from 20,000 queued tasks.

Usage::

    python benchmarks/postgres_limits.py                  # starts a throwaway server
    python benchmarks/postgres_limits.py --dsn postgresql://...   # a scratch database of yours
    python benchmarks/postgres_limits.py --quick          # tiny sizes, 1 run (the smoke test)

Without ``--dsn`` it starts a cluster the way the tests do (``tests/_services/postgres.py``:
Debian's server binaries, ``initdb`` in a temporary directory, production durability
defaults) and removes it afterwards; that needs the ``test`` extra (pytest).

Each case gets a new schema holding ``tasks`` queued tasks (payload ``{"tenant": "t<i % 50>",
"i": i}``) and its stored rules, then times ``lease(limit=10)`` calls on ``PostgresStore``
directly (the limits plugin only sets ``stored_limits=True`` on the plan: the store does the
work), each followed by an untimed settlement of what it leased, so the backlog and the
running set stay as they were. The cases:

- **no plugin**: ``LeasePlan()`` — no rule read, no lock;
- **plugin, no rules**: ``stored_limits=True`` and no rule stored (one read of the rules);
- **concurrency (not binding)**: one rule, ``concurrency=10**6``;
- **tenant concurrency (not binding)**: ``concurrency=100`` per tenant (the bucket
  expression over the window's tasks);
- **rate**: ``rate=10**9`` per second, ``burst=1000`` (never binds; its state is written by
  every lease);
- **binding**: ``concurrency=10`` with 5 tasks held running by another worker: each lease
  starts 5 of the 10 it asks for;
- **fair turns**: ``fair=True`` by tenant (50 tenants): the ranks are computed over every due
  task, so this one grows with the backlog;
- **fair turns, weighted**: the same with ``weights`` for 5 of the 50 tenants.

Baselines in the same run: **raw apsw** (the suite's baseline: the statements of the SQLite
store's FIFO lease on a file of as many tasks, ``benchmarks/hqbench/raw.py``) and **raw
psycopg** (one ``UPDATE … FOR UPDATE SKIP LOCKED … RETURNING`` lease statement in
autocommit on the same server: the floor of a PostgreSQL lease). Each case runs ``--runs``
times (cases interleaved, so a load spike does not fall on one case); the table gives the
median over runs of each run's mean per lease, and ratios to raw apsw and to "no plugin".
The machine's load average is recorded at the start and the end. Writes the JSON to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
sys.path.insert(0, str(HERE))

from hqbench.raw import RawQueue, create_schema, open_conn  # noqa: E402

from hookqueue.core.models import LeasePlan, LimitRule, SortKey  # noqa: E402
from hookqueue.core.storage import InsertRow, Settlement  # noqa: E402

SECOND = 1_000_000
LEASE_US = 300 * SECOND
TENANTS = 50

#: Case name -> (stored rules, plan, tasks held running by another worker first).
CASES: dict[str, tuple[tuple[LimitRule, ...], LeasePlan, int]] = {
    "no plugin": ((), LeasePlan(), 0),
    "plugin, no rules": ((), LeasePlan(stored_limits=True), 0),
    "concurrency (not binding)": (
        (LimitRule(name="c", concurrency=1_000_000),),
        LeasePlan(stored_limits=True),
        0,
    ),
    "tenant concurrency (not binding)": (
        (LimitRule(name="tc", concurrency=100, partition_by="tenant"),),
        LeasePlan(stored_limits=True),
        0,
    ),
    "rate": (
        (LimitRule(name="r", rate=1_000_000_000, period=1.0, burst=1000),),
        LeasePlan(stored_limits=True),
        0,
    ),
    "binding": ((LimitRule(name="b", concurrency=10),), LeasePlan(stored_limits=True), 5),
    "fair turns": (
        (LimitRule(name="f", fair=True, partition_by="tenant"),),
        LeasePlan(stored_limits=True),
        0,
    ),
    "fair turns, weighted": (
        (
            LimitRule(
                name="f",
                fair=True,
                partition_by="tenant",
                weights={"t0": 3, "t1": 2, "t2": 5, "t3": 4, "t4": 7},
            ),
        ),
        LeasePlan(stored_limits=True),
        0,
    ),
}


#: Contention: several connections leasing at once, without and with one rule they share.
CONTENTION: dict[str, tuple[LimitRule, ...]] = {
    "contention, no rule": (),
    "contention, one rule": (LimitRule(name="c", concurrency=1_000_000),),
}


def _now() -> int:
    return time.time_ns() // 1000


def _rows(n: int, now_us: int) -> list[InsertRow]:
    return [
        InsertRow(
            queue="default",
            task_type="noop",
            payload_json=json.dumps({"tenant": f"t{i % TENANTS}", "i": i}, separators=(",", ":")),
            priority=100,
            max_attempts=1,
            run_after_us=now_us - SECOND,
            idempotency_key=None,
            timeout=None,
            headers_json=None,
        )
        for i in range(n)
    ]


# ---------------------------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------------------------


class Server:
    """A throwaway server started like the tests' (or ``--dsn``'s database)."""

    def __init__(self, dsn: str | None) -> None:
        self._own: Any = None
        if dsn is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from _services.postgres import PostgresServer, find_binaries, server_account

            binaries = find_binaries()
            if binaries is None:
                raise SystemExit(
                    "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin. Fix: "
                    "apt-get install postgresql, or pass --dsn"
                )
            self._own = PostgresServer(binaries, server_account())
            self._own.start()
            self.dsn = self._own.dsn
        else:
            self.dsn = dsn

    def version(self) -> str:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def close(self) -> None:
        if self._own is not None:
            self._own.stop()


# ---------------------------------------------------------------------------------------------
# one measurement
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _schema(dsn: str, name: str) -> Iterator[Any]:
    import psycopg
    from psycopg import sql

    from hookqueue.plugins.postgres import PostgresStore

    store = PostgresStore(dsn, schema=name, durability="normal")
    try:
        yield store
    finally:
        store.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def measure_case(
    dsn: str, schema: str, case: str, tasks: int, leases: int, warmup: int
) -> dict[str, Any]:
    """Mean µs per lease of 10 (and tasks per lease) of one case on a new schema."""
    rules, plan, held = CASES[case]
    with _schema(dsn, schema) as store:
        now = _now()
        for i in range(0, tasks, 5000):
            store.insert(_rows(min(5000, tasks - i), now), now)
        for rule in rules:
            store.set_limit(rule, now)
        if held:
            store.lease(
                worker_id="other",
                queues=["default"],
                limit=held,
                now_us=_now(),
                lease_us=LEASE_US,
                plan=LeasePlan(),
                decide_expired=lambda t: (None, ""),
            )
        with contextlib.suppress(Exception):
            import psycopg
            from psycopg import sql

            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "tasks")))
        total = 0.0
        started = 0
        for n in range(warmup + leases):
            t0 = time.perf_counter()
            leased, _ = store.lease(
                worker_id="bench",
                queues=["default"],
                limit=10,
                now_us=_now(),
                lease_us=LEASE_US,
                plan=plan,
                decide_expired=lambda t: (None, ""),
            )
            elapsed = time.perf_counter() - t0
            if n >= warmup:
                total += elapsed
                started += len(leased)
            store.settle(
                "bench", [Settlement(task_id=t.id, kind="complete") for t in leased], _now()
            )
    return {"us_per_lease": total / leases * 1e6, "tasks_per_lease": started / leases}


def measure_contention(
    dsn: str, schema: str, rules: tuple[LimitRule, ...], threads: int, cycles: int
) -> dict[str, float]:
    """``threads`` workers (a store each, so a connection each) leasing 10 at a time, each
    lease carrying the previous one's outcomes (as a worker's loop does), all at once:
    leases per second overall, and the mean wall time per lease."""
    import threading

    from hookqueue.plugins.postgres import PostgresStore

    with _schema(dsn, schema) as store:
        now = _now()
        for _ in range(0, threads * cycles * 10 + 5000, 5000):
            store.insert(_rows(5000, now), now)
        for rule in rules:
            store.set_limit(rule, now)
        plan = LeasePlan(stored_limits=True)
        stores = [PostgresStore(dsn, schema=schema, durability="normal") for _ in range(threads)]
        barrier = threading.Barrier(threads + 1)
        counts = [0] * threads

        def work(i: int) -> None:
            held: list[Any] = []
            barrier.wait()
            for _ in range(cycles):
                leased, _ = stores[i].lease(
                    worker_id=f"w{i}",
                    queues=["default"],
                    limit=10,
                    now_us=_now(),
                    lease_us=LEASE_US,
                    plan=plan,
                    decide_expired=lambda t: (None, ""),
                    settlements=[Settlement(task_id=t.id, kind="complete") for t in held],
                    want_transitions=False,
                )
                held = leased
                counts[i] += len(leased)
            barrier.wait()

        pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        barrier.wait()
        elapsed = time.perf_counter() - t0
        for t in pool:
            t.join()
        for s in stores:
            s.close()
    leases = threads * cycles
    return {"leases_per_s": leases / elapsed, "tasks_per_s": sum(counts) / elapsed}


def measure_raw_psycopg(dsn: str, schema: str, tasks: int, leases: int, warmup: int) -> float:
    """Mean µs per one-statement lease of 10 on the same server (autocommit)."""
    import psycopg
    from psycopg import sql

    with _schema(dsn, schema) as store:
        now = _now()
        for i in range(0, tasks, 5000):
            store.insert(_rows(min(5000, tasks - i), now), now)
        t = sql.Identifier(schema, "tasks")
        lease = sql.SQL(
            "UPDATE {t} SET status = 'running', attempts = attempts + 1, locked_by = %(w)s, "
            "lease_expires_at = %(until)s, started_at = %(now)s WHERE id IN (SELECT id FROM {t} "
            "WHERE status = 'queued' AND queue = 'default' AND run_after <= %(now)s "
            "ORDER BY run_after, id LIMIT 10 FOR UPDATE SKIP LOCKED) RETURNING *"
        ).format(t=t)
        done = sql.SQL(
            "UPDATE {t} SET status = 'completed', finished_at = %(now)s, locked_by = NULL, "
            "lease_expires_at = NULL WHERE id = ANY(%(ids)s)"
        ).format(t=t)
        total = 0.0
        with psycopg.connect(dsn, autocommit=True) as conn:
            for n in range(warmup + leases):
                now = _now()
                t0 = time.perf_counter()
                rows = conn.execute(
                    lease, {"w": "raw", "until": now + LEASE_US, "now": now}
                ).fetchall()
                elapsed = time.perf_counter() - t0
                if n >= warmup:
                    total += elapsed
                conn.execute(done, {"now": _now(), "ids": [r[0] for r in rows]})
    return total / leases * 1e6


def measure_raw_apsw(tasks: int, leases: int, warmup: int) -> float:
    """Mean µs per lease of 10 with the SQLite store's statements on a file (the suite's
    raw apsw baseline)."""
    from hookqueue.core.store.statements import sql_lease

    with tempfile.TemporaryDirectory() as directory:
        conn = open_conn(Path(directory) / "raw.db", "normal")
        create_schema(conn)
        rq = RawQueue(conn, sql_lease((SortKey.FIFO,), 1, None))
        now = _now()
        rq.insert_many(
            [
                (
                    "default",
                    "noop",
                    json.dumps({"tenant": f"t{i % TENANTS}", "i": i}, separators=(",", ":")),
                    100,
                    1,
                    now - SECOND,
                    None,
                    None,
                    None,
                    now,
                )
                for i in range(tasks)
            ]
        )
        total = 0.0
        for n in range(warmup + leases):
            t0 = time.perf_counter()
            rows = rq.lease(10)
            elapsed = time.perf_counter() - t0
            if n >= warmup:
                total += elapsed
            rq.lease(0, done=[r[0] for r in rows])
        conn.close()
    return total / leases * 1e6


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------


def table(medians: dict[str, dict[str, float]]) -> str:
    raw = medians["raw apsw"]["us_per_lease"]
    base = medians["no plugin"]["us_per_lease"]
    lines = [
        "| case | µs per lease of 10 | tasks per lease | × raw apsw | × no plugin |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in medians.items():
        if "us_per_lease" not in m:
            continue
        us = m["us_per_lease"]
        tasks = m.get("tasks_per_lease")
        lines.append(
            f"| {name} | {us:,.0f} | {'' if tasks is None else f'{tasks:g}'} | "
            f"{us / raw:.1f} | {us / base:.2f} |"
        )
    contention = {k: v for k, v in medians.items() if "leases_per_s" in v}
    if contention:
        lines += ["", "| several connections at once | leases/s | tasks/s |", "|---|---:|---:|"]
        for name, m in contention.items():
            lines.append(f"| {name} | {m['leases_per_s']:,.0f} | {m['tasks_per_s']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="a scratch database (default: start a throwaway server)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--leases", type=int, default=100)
    parser.add_argument("--threads", type=int, default=4, help="leasing at once (contention)")
    parser.add_argument("--cycles", type=int, default=100, help="leases per thread (contention)")
    parser.add_argument("--quick", action="store_true", help="2,000 tasks, 20 leases, 1 run")
    parser.add_argument("--only", action="append", help="a case name (repeatable)")
    parser.add_argument("--out", type=Path, help="the JSON file (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.leases, args.runs, args.cycles = 2000, 20, 1, 10
    unknown = sorted(set(args.only or ()) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    warmup = 5
    # "no plugin" always runs: the table's last column divides by it.
    cases = [c for c in CASES if not args.only or c in args.only or c == "no plugin"]
    load_start = [round(x, 2) for x in os.getloadavg()]
    server = Server(args.dsn)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ["raw apsw", "raw psycopg"]}
    runs.update({c: [] for c in cases})
    if not args.only:
        runs.update({name: [] for name in CONTENTION})
    failed = False
    try:
        version = server.version()
        n = 0
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
            runs["raw apsw"].append(
                {"us_per_lease": measure_raw_apsw(args.tasks, args.leases, warmup)}
            )
            n += 1
            runs["raw psycopg"].append(
                {
                    "us_per_lease": measure_raw_psycopg(
                        server.dsn, f"bench_raw_{n}", args.tasks, args.leases, warmup
                    )
                }
            )
            if not args.only:
                for name, rules in CONTENTION.items():
                    n += 1
                    runs[name].append(
                        measure_contention(
                            server.dsn, f"bench_{n}", rules, args.threads, args.cycles
                        )
                    )
            for case in cases:
                n += 1
                try:
                    runs[case].append(
                        measure_case(
                            server.dsn, f"bench_{n}", case, args.tasks, args.leases, warmup
                        )
                    )
                except Exception as exc:  # reported, the others still run
                    failed = True
                    print(f"{case}: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        server.close()
    medians: dict[str, dict[str, float]] = {}
    for name, results in runs.items():
        if not results:
            continue
        medians[name] = {key: statistics.median(r[key] for r in results) for key in results[0]}
    load_end = [round(x, 2) for x in os.getloadavg()]
    print(table(medians))
    print(
        f"\nPostgreSQL {version}; {args.tasks:,} queued; {args.leases} leases per run; "
        f"median of {args.runs} run(s); load average {load_start} at the start, "
        f"{load_end} at the end"
    )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or RESULTS_DIR / f"postgres_limits-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "postgres_limits",
                "server_version": version,
                "tasks": args.tasks,
                "leases_per_run": args.leases,
                "runs": args.runs,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "load_average_at_start": load_start,
                "load_average_at_end": load_end,
                "results": runs,
                "medians": medians,
            },
            indent=2,
        )
    )
    print(f"wrote {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
