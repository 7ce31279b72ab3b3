"""How soon ``Queue.wait`` returns after a worker in another process finished the task.

A worker process (``hookqueue worker``, real and separate) runs a no-op handler. This process
enqueues one task at a time and waits for it — ``Queue.wait`` on a thread, then
``Queue.wait_async`` — and measures, for each task, the time from the worker's settlement
(the task's ``finished_at``, taken just before its commit) to the wait returning. A second
round waits for ``--batch`` tasks at once from as many coroutines. Target: p50 <= 2 ms.

Usage::

    python benchmarks/wait.py                   # 300 tasks, batches of 200, 3 runs
    python benchmarks/wait.py --tasks 50 --batch 50 --durability normal --runs 1
    python benchmarks/wait.py --db postgresql://user@host/scratch

With ``--db postgresql://...`` the queue is the PostgreSQL store, in a schema made for the
run (``hqwait_<pid>``) and dropped after it; the database must exist and the role may
create schemas. The JSON records the engine and the server's version, never the URL.

Each of ``--runs`` runs measures every row afresh (a new database or schema, a new worker
process); the table shows the median over the runs of each figure, with the load average
of the machine before and after (it is shared: other test runs inflate the tails).
Prints a Markdown table and writes the JSON to ``benchmarks/results/wait-<time>.json``.
Exit status 0 when every wait returned (a missed target is reported, not failed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hookqueue import Queue, Task

HERE = Path(__file__).resolve().parent
TARGET_P50_MS = 2.0

APP = """
from hookqueue import TaskHandlerRegistry
registry = TaskHandlerRegistry()
registry.register_handler("noop", lambda task: task.payload)
"""


def _latency_ms(task: Task, returned: float) -> float:
    assert task.finished_at is not None
    return (returned - task.finished_at.timestamp()) * 1000


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "n": len(values),
        "p50_ms": statistics.median(values),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": ordered[-1],
    }


def one_at_a_time(queue: Queue, tasks: int) -> list[float]:
    out = []
    for i in range(tasks):
        task = queue.enqueue("noop", i)
        done = queue.wait(task.id, timeout=30)
        out.append(_latency_ms(done, time.time()))
    return out


def one_at_a_time_async(queue: Queue, tasks: int) -> list[float]:
    async def main() -> list[float]:
        out = []
        for i in range(tasks):
            task = await queue.enqueue_async("noop", i)
            done = await queue.wait_async(task.id, timeout=30)
            out.append(_latency_ms(done, time.time()))
        return out

    return asyncio.run(main())


def many_at_once(queue: Queue, batch: int) -> tuple[list[float], int]:
    """``batch`` coroutines each waiting for its own task; returns latencies and the number
    of threads the waits added."""
    import threading

    async def main() -> tuple[list[float], int]:
        queue.pause("default")  # the waits start before any task can finish
        tasks = queue.enqueue_many([{"task_type": "noop", "payload": i} for i in range(batch)])
        before = threading.active_count()
        latencies: list[float] = []

        async def wait(task: Task) -> None:
            done = await queue.wait_async(task.id, timeout=60)
            latencies.append(_latency_ms(done, time.time()))

        waits = [asyncio.create_task(wait(t)) for t in tasks]
        await asyncio.sleep(0.2)
        threads = threading.active_count() - before
        queue.resume("default")
        await asyncio.gather(*waits)
        return latencies, threads

    return asyncio.run(main())


def _open(location: str, durability: str) -> Queue:
    """A queue on the SQLite file or the PostgreSQL URL (the plugin registered by hand: entry
    points stay off in this process)."""
    plugins: list[Any] = []
    if location.startswith(("postgresql://", "postgres://")):
        import hookqueue.plugins.postgres as pg_plugin

        plugins.append(pg_plugin)
    return Queue(location, durability=durability, plugins=plugins, load_entrypoints=False)


def _with_schema(url: str, schema: str) -> str:
    return url + ("&" if "?" in url else "?") + f"schema={schema}"


def _drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    from hookqueue.plugins.postgres.connection import parse_location

    conninfo, _ = parse_location(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _server_version(url: str) -> str:
    import psycopg

    from hookqueue.plugins.postgres.connection import parse_location

    conninfo, _ = parse_location(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def one_run(args: argparse.Namespace, run: int) -> dict[str, dict[str, Any]]:
    """Every row once, on a new database (SQLite file, or PostgreSQL schema) and a new
    worker process."""
    workdir = Path(tempfile.mkdtemp(prefix="hq-wait-bench-"))
    (workdir / "waitapp.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(workdir)}
    schema = None
    if args.db:
        schema = f"hqwait_{os.getpid()}_{run}"
        location = _with_schema(args.db, schema)
        # The worker finds the PostgreSQL store through its entry point; nothing else loads.
        env["HOOKQUEUE_DISABLE_PLUGINS"] = "prometheus,opentelemetry,dashboard,metrics"
    else:
        location = str(workdir / "wait.db")
        env["HOOKQUEUE_PLUGIN_AUTOLOAD"] = "0"
    queue = _open(location, args.durability)
    worker = subprocess.Popen(
        [sys.executable, "-m", "hookqueue", "worker", "--app", "waitapp:registry",
         "--db", location, "--concurrency", "50", "-q"],
        env=env, cwd=workdir,
    )  # fmt: skip
    try:
        queue.wait(queue.enqueue("noop", "warm-up").id, timeout=60)
        rows = {
            "wait (thread)": _quantiles(one_at_a_time(queue, args.tasks)),
            "wait_async": _quantiles(one_at_a_time_async(queue, args.tasks)),
        }
        # A queue of its own: its waiter thread is counted among the threads the waits add.
        with _open(location, args.durability) as fresh:
            latencies, threads = many_at_once(fresh, args.batch)
        rows[f"{args.batch} coroutines at once"] = {**_quantiles(latencies), "threads": threads}
    finally:
        worker.terminate()
        worker.wait(60)
        queue.close()
        if args.db and schema is not None:
            _drop_schema(args.db, schema)
    return rows


def _medians(runs: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {
        name: {k: statistics.median(r[name][k] for r in runs) for k in runs[0][name]}
        for name in runs[0]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--durability", choices=("full", "normal"), default="full")
    parser.add_argument("--runs", type=int, default=3, help="runs; the table shows medians")
    parser.add_argument(
        "--db", help="a postgresql:// URL of a scratch database (default: a SQLite file)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.db and not args.db.startswith(("postgresql://", "postgres://")):
        parser.error("--db takes a postgresql:// URL (without it, a SQLite file is used)")

    engine = "postgresql" if args.db else "sqlite"
    server = _server_version(args.db) if args.db else None
    load_before = os.getloadavg()
    runs = []
    for run in range(args.runs):
        runs.append(one_run(args, run))
        print(f"run {run + 1}: {runs[-1]}", file=sys.stderr)
    load_after = os.getloadavg()
    rows = _medians(runs)

    print(
        f"\nQueue.wait on {engine}: worker commit -> wait returns "
        f"(durability {args.durability}; medians of {args.runs} runs)\n"
    )
    print("| how | n | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['n']} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['max_ms']:.2f} |"
        )
    p50 = rows["wait (thread)"]["p50_ms"]
    verdict = "met" if p50 <= TARGET_P50_MS else "MISSED"
    print(f"\ntarget p50 <= {TARGET_P50_MS} ms: {verdict} ({p50:.2f} ms)")
    threads = rows[f"{args.batch} coroutines at once"]["threads"]
    print(f"threads added by {args.batch} waiting coroutines: {threads}")
    print(
        "load average (1, 5, 15 min): before "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; after "
        + ", ".join(f"{x:.2f}" for x in load_after)
    )

    config = vars(args) | {"out": str(args.out) if args.out else None, "db": None}
    result: dict[str, Any] = {
        "benchmark": "wait",
        "when": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "engine": engine,
        "server_version": server,
        "load_average": {"before": load_before, "after": load_after},
        "config": config,
        "target_p50_ms": TARGET_P50_MS,
        "results": rows,
        "runs": runs,
    }
    out = args.out or HERE / "results" / f"wait-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
