"""hookqueue on PostgreSQL beside procrastinate and pgqueuer: W1–W5 on a local server.

Usage::

    python benchmarks/postgres.py                        # starts a throwaway server
    python benchmarks/postgres.py --dsn postgresql://... # or uses yours (a scratch one!)
    python benchmarks/postgres.py --only W3p4 --runs 3
    python benchmarks/postgres.py --quick                # tiny sizes (the smoke test)
    python benchmarks/postgres.py --write-docs           # also rewrite the PostgreSQL
                                                         # section of docs/performance.md

Without ``--dsn`` it starts a cluster the way the tests do (``tests/_services/postgres.py``:
Debian's server binaries, ``initdb`` in a temporary directory, the production durability
defaults — ``fsync`` and ``synchronous_commit`` on) and removes it afterwards; that needs
the ``test`` extra (pytest) besides ``bench`` (procrastinate, pgqueuer). Every workload of
every system runs in a database of its own, created for it and dropped after it.

The workloads, each at the same durability for all (``synchronous_commit`` on; hookqueue's
``durability="full"``):

- **W1** — single enqueue, one transaction each, sync API where there is one (pgqueuer
  has only an async one): enqueues/s and p50/p99 latency.
- **W2** — bulk enqueue in batches of 1,000, one transaction per batch: rows/s.
- **W3 / W3p4** — drain ``w3`` pre-enqueued no-op tasks with one / four worker processes,
  each running until the queue is empty (hookqueue ``run_until_idle``, procrastinate
  ``run_worker(wait=False)``, pgqueuer ``QueueExecutionMode.drain``), every system at the
  same concurrency per process: tasks/s from the moment all processes are released to the
  last one finishing.
- **W4** — one producer enqueueing ``w4`` tasks in batches of 100 while four worker
  processes, started first and idle, run them: tasks/s until the last one completed.
- **W5** — on a queue of ``w5_queue`` queued tasks: a task's status, and cancelling a queued
  task (p50/p99 latency).

Prints a Markdown table and writes the JSON to ``benchmarks/results/``. Exit status 0 when
every measurement ran, 1 when one raised.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
DOCS_PATH = ROOT / "docs" / "performance.md"
SYSTEMS = ("hookqueue", "procrastinate", "pgqueuer")
WORKLOADS = ("W1", "W2", "W3", "W3p4", "W4", "W5")

FULL_SIZES = {
    "w1": 1000,
    "w2": 20_000,
    "w2_batch": 1000,
    "w3": 10_000,
    "w4": 10_000,
    "w4_batch": 100,
    "w5_queue": 10_000,
    "w5_ops": 300,
    "workers": 4,
    "concurrency": 16,
}
QUICK_SIZES = {
    **FULL_SIZES,
    "w1": 50,
    "w2": 2000,
    "w3": 300,
    "w4": 300,
    "w5_queue": 300,
    "w5_ops": 20,
}

#: The section of docs/performance.md this script owns (between these lines).
DOCS_BEGIN = "<!-- postgres-benchmark:begin -->"
DOCS_END = "<!-- postgres-benchmark:end -->"


# ---------------------------------------------------------------------------------------------
# the systems: set-up, enqueue, workers (also run in child processes)
# ---------------------------------------------------------------------------------------------


def hq_queue(dsn: str) -> Any:
    """A hookqueue Queue on the database (the PostgreSQL store, through its URL)."""
    from hookqueue import Queue

    return Queue(dsn, durability="full")


def proc_app(dsn: str, on_run: Callable[[], None] | None = None) -> Any:
    """A procrastinate App with a task ``noop`` that does nothing (but call ``on_run``)."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop")
    def noop(i: int) -> None:
        if on_run is not None:
            on_run()

    return app


async def pgq_connect(dsn: str) -> Any:
    """A pgqueuer driver on an autocommit connection, and its Queries."""
    import psycopg
    from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
    from pgqueuer.queries import Queries

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    driver = PsycopgDriver(conn)
    return conn, driver, Queries(driver)


def setup(system: str, dsn: str) -> None:
    """Create the system's schema in an empty database."""
    if system == "hookqueue":
        hq_queue(dsn).close()
    elif system == "procrastinate":
        app = proc_app(dsn)
        with app.open():
            app.schema_manager.apply_schema()
    else:

        async def install() -> None:
            conn, _, queries = await pgq_connect(dsn)
            try:
                await queries.install()
            finally:
                await conn.close()

        asyncio.run(install())


def prefill(system: str, dsn: str, n: int, batch: int = 1000) -> list[int]:
    """``n`` no-op tasks, a batch per transaction (set-up, not measured); their ids."""
    ids: list[int] = []
    if system == "hookqueue":
        with hq_queue(dsn) as q:
            for lo in range(0, n, batch):
                specs = [
                    {"task_type": "noop", "payload": {"i": i}}
                    for i in range(lo, min(n, lo + batch))
                ]
                ids += [t.id for t in q.enqueue_many(specs)]
    elif system == "procrastinate":
        app = proc_app(dsn)
        noop = app.tasks["noop"]
        with app.open():
            for lo in range(0, n, batch):
                ids += noop.batch_defer(*({"i": i} for i in range(lo, min(n, lo + batch))))
    else:

        async def fill() -> None:
            conn, _, queries = await pgq_connect(dsn)
            try:
                for lo in range(0, n, batch):
                    k = min(n, lo + batch) - lo
                    got = await queries.enqueue(
                        ["noop"] * k,
                        [json.dumps({"i": lo + j}).encode() for j in range(k)],
                        [0] * k,
                    )
                    ids.extend(int(x) for x in got)
            finally:
                await conn.close()

        asyncio.run(fill())
    return ids


def run_worker(system: str, dsn: str, concurrency: int, mode: str) -> dict[str, Any]:
    """One worker process's loop: ``idle`` until the queue is empty, ``run`` until SIGTERM.
    Returns when it ended (ns) and how many tasks it ran."""
    ran = 0
    if system == "hookqueue":
        from hookqueue import WorkerEngine

        with hq_queue(dsn) as q:

            def noop(task: Any) -> None:
                nonlocal ran
                ran += 1

            q.handlers.register_handler("noop", noop)
            engine = WorkerEngine(q, worker_id=f"bench-{os.getpid()}", concurrency=concurrency)
            if mode == "idle":
                engine.run_until_idle()
            else:
                engine.run()
    elif system == "procrastinate":

        def count() -> None:
            nonlocal ran
            ran += 1

        app = proc_app(dsn, count)
        with app.open():
            app.run_worker(
                wait=mode != "idle", concurrency=concurrency, install_signal_handlers=mode != "idle"
            )
    else:
        from pgqueuer import QueueManager
        from pgqueuer.domain.types import QueueExecutionMode

        async def work() -> None:
            nonlocal ran
            conn, _, queries = await pgq_connect(dsn)
            qm = QueueManager(queries)

            @qm.entrypoint("noop")
            async def noop(job: Any) -> None:
                nonlocal ran
                ran += 1

            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, qm.shutdown.set)
            try:
                await qm.run(
                    batch_size=concurrency,
                    mode=QueueExecutionMode.drain
                    if mode == "idle"
                    else QueueExecutionMode.continuous,
                )
            finally:
                await conn.close()

        asyncio.run(work())
    return {"end_ns": time.time_ns(), "ran": ran}


def produce(system: str, dsn: str, n: int, batch: int) -> dict[str, Any]:
    """Enqueue ``n`` tasks in batches as fast as possible."""
    if system == "hookqueue":
        with hq_queue(dsn) as q:
            for lo in range(0, n, batch):
                q.enqueue_many(
                    [
                        {"task_type": "noop", "payload": {"i": i}}
                        for i in range(lo, min(n, lo + batch))
                    ]
                )
    elif system == "procrastinate":
        app = proc_app(dsn)
        noop = app.tasks["noop"]
        with app.open():
            for lo in range(0, n, batch):
                noop.batch_defer(*({"i": i} for i in range(lo, min(n, lo + batch))))
    else:

        async def fill() -> None:
            conn, _, queries = await pgq_connect(dsn)
            try:
                for lo in range(0, n, batch):
                    k = min(n, lo + batch) - lo
                    await queries.enqueue(["noop"] * k, [b"{}"] * k, [0] * k)
            finally:
                await conn.close()

        asyncio.run(fill())
    return {"end_ns": time.time_ns()}


#: SQL counting finished tasks of each system (benchmarks read the tables directly).
DONE_SQL = {
    "hookqueue": "SELECT count(*) FROM hookqueue.tasks WHERE status = 'completed'",
    "procrastinate": "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
    "pgqueuer": "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'",
}


# ---------------------------------------------------------------------------------------------
# child processes
# ---------------------------------------------------------------------------------------------


def child_main(argv: list[str]) -> None:
    """``--child ROLE SYSTEM DSN [args]``: print ``{"ready": ...}``, wait for a line on stdin,
    run, print ``{"result": ...}``."""
    role, system, dsn = argv[:3]
    rest = argv[3:]
    print(json.dumps({"ready": os.getpid()}), flush=True)
    sys.stdin.readline()
    if role == "worker":
        result = run_worker(system, dsn, int(rest[0]), rest[1])
    else:
        result = produce(system, dsn, int(rest[0]), int(rest[1]))
    print(json.dumps({"result": result}), flush=True)


class Child:
    """A child process of this script."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def expect(self, key: str, timeout: float) -> Any:
        """The value of the next printed object holding ``key``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"child exited ({self.proc.wait()}): {err[-2000:]}")
            with contextlib.suppress(json.JSONDecodeError):
                got = json.loads(line)
                if key in got:
                    return got[key]
        raise RuntimeError(f"child silent for {timeout}s")

    def go(self) -> None:
        """Release the child."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; close the pipes."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


# ---------------------------------------------------------------------------------------------
# the server and its databases
# ---------------------------------------------------------------------------------------------


class Server:
    """Databases on a server: a throwaway one started like the tests', or ``--dsn``'s."""

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
            self.admin_dsn = self._own.dsn
            self.version = ".".join(map(str, binaries.version))
        else:
            self.admin_dsn = dsn
            self.version = "?"
        self._n = 0

    def url(self, dbname: str) -> str:
        """The URL of a database on this server (hookqueue takes URLs)."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = dbname
        conninfo = make_conninfo("", **params)
        sys.path.insert(0, str(ROOT / "tests"))
        from _services.pgurl import url_of

        return url_of(conninfo)

    @contextlib.contextmanager
    def database(self, hint: str) -> Iterator[str]:
        """A new database for one measurement; its URL."""
        import psycopg
        from psycopg import sql

        self._n += 1
        name = f"bench_{self._n}_{hint}".lower()[:60]
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield self.url(name)
        finally:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

    def settings(self) -> dict[str, str]:
        """The server's version and durability settings, for the report."""
        import psycopg

        with psycopg.connect(self.admin_dsn) as conn:
            return {
                name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
            }

    def close(self) -> None:
        """Stop the server this script started (if it did)."""
        if self._own is not None:
            self._own.stop()


# ---------------------------------------------------------------------------------------------
# the workloads
# ---------------------------------------------------------------------------------------------


def percentile(values: list[int], p: float) -> float:
    """The ``p``-th percentile of ``values`` (linear between the two nearest)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def timed(fn: Callable[[int], Any], n: int) -> tuple[float, list[int]]:
    """``fn(i)`` for i in 0..n-1 after ten untimed calls: (seconds, each call in ns)."""
    for i in range(10):  # warm: connections opened, statements prepared
        fn(-1 - i)
    lat = [0] * n
    gc.collect()
    begin = time.perf_counter_ns()
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(i)
        lat[i] = time.perf_counter_ns() - t0
    return (time.perf_counter_ns() - begin) / 1e9, lat


def w1(server: Server, system: str, sizes: dict[str, int]) -> dict[str, Any]:
    """W1: single enqueues, one transaction each."""
    n = sizes["w1"]
    with server.database(f"w1_{system}") as dsn:
        setup(system, dsn)
        if system == "hookqueue":
            with hq_queue(dsn) as q:
                seconds, lat = timed(lambda i: q.enqueue("noop", {"i": i}), n)
        elif system == "procrastinate":
            app = proc_app(dsn)
            noop = app.tasks["noop"]
            with app.open():
                seconds, lat = timed(lambda i: noop.defer(i=i), n)
        else:

            async def run() -> tuple[float, list[int]]:
                conn, _, queries = await pgq_connect(dsn)
                try:
                    for _ in range(10):
                        await queries.enqueue("noop", b"{}")
                    lat = [0] * n
                    begin = time.perf_counter_ns()
                    for i in range(n):
                        t0 = time.perf_counter_ns()
                        await queries.enqueue("noop", json.dumps({"i": i}).encode())
                        lat[i] = time.perf_counter_ns() - t0
                    return (time.perf_counter_ns() - begin) / 1e9, lat
                finally:
                    await conn.close()

            seconds, lat = asyncio.run(run())
    return {
        "ops_s": n / seconds,
        "p50_ms": percentile(lat, 50) / 1e6,
        "p99_ms": percentile(lat, 99) / 1e6,
    }


def w2(server: Server, system: str, sizes: dict[str, int]) -> dict[str, Any]:
    """W2: enqueues in batches, one transaction per batch."""
    n, batch = sizes["w2"], sizes["w2_batch"]
    with server.database(f"w2_{system}") as dsn:
        setup(system, dsn)
        begin = time.perf_counter()
        prefill(system, dsn, n, batch)
        seconds = time.perf_counter() - begin
    return {"rows_s": n / seconds}


def drain(server: Server, system: str, sizes: dict[str, int], workers: int) -> dict[str, Any]:
    """W3/W3p4: pre-enqueued tasks drained by ``workers`` processes until the queue is empty."""
    n = sizes["w3"]
    with server.database(f"w3_{workers}_{system}") as dsn:
        setup(system, dsn)
        prefill(system, dsn, n)
        procs = [
            Child("worker", system, dsn, str(sizes["concurrency"]), "idle") for _ in range(workers)
        ]
        try:
            for c in procs:
                c.expect("ready", 60)
            go = time.time_ns()
            for c in procs:
                c.go()
            results = [c.expect("result", 600) for c in procs]
        finally:
            for c in procs:
                c.stop()
        done = _count(dsn, DONE_SQL[system])
    seconds = (max(r["end_ns"] for r in results) - go) / 1e9
    if done != n:
        raise RuntimeError(f"{system}: {done} of {n} tasks completed")
    return {"tasks_s": n / seconds, "seconds": seconds}


def _count(dsn: str, query: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def w4(server: Server, system: str, sizes: dict[str, int]) -> dict[str, Any]:
    """W4: a producer enqueueing while four running workers take the tasks."""
    n, batch, workers = sizes["w4"], sizes["w4_batch"], sizes["workers"]
    with server.database(f"w4_{system}") as dsn:
        setup(system, dsn)
        procs = [
            Child("worker", system, dsn, str(sizes["concurrency"]), "run") for _ in range(workers)
        ]
        producer = Child("producer", system, dsn, str(n), str(batch))
        try:
            for c in [*procs, producer]:
                c.expect("ready", 60)
                if c is not producer:
                    c.go()
            time.sleep(1.0)  # the workers are idle and waiting before the first task exists
            go = time.time_ns()
            producer.go()
            produced = producer.expect("result", 600)
            deadline = time.monotonic() + 600
            while (done := _count(dsn, DONE_SQL[system])) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{system}: only {done} of {n} tasks ran")
                time.sleep(0.01)
            end = time.time_ns()
        finally:
            for c in [*procs, producer]:
                c.stop()
    return {"tasks_s": n / ((end - go) / 1e9), "producer_s": (produced["end_ns"] - go) / 1e9}


def w5(server: Server, system: str, sizes: dict[str, int]) -> dict[str, Any]:
    """W5: status of a task and cancel of a queued task, on a full queue."""
    n, ops = sizes["w5_queue"], sizes["w5_ops"]
    rng = random.Random(5)
    with server.database(f"w5_{system}") as dsn:
        setup(system, dsn)
        ids = prefill(system, dsn, n)
        targets = rng.sample(ids, ops + 10)
        probes = [rng.choice(ids) for _ in range(ops + 10)]
        if system == "hookqueue":
            with hq_queue(dsn) as q:
                _, status = timed(lambda i: q.get(probes[i]), ops)
                _, cancel = timed(lambda i: q.cancel(targets[i]), ops)
        elif system == "procrastinate":
            app = proc_app(dsn)
            with app.open():
                jm = app.job_manager
                _, status = timed(lambda i: jm.get_job_status(probes[i]), ops)
                _, cancel = timed(lambda i: jm.cancel_job_by_id(targets[i]), ops)
        else:

            async def run() -> tuple[list[int], list[int]]:
                conn, _, queries = await pgq_connect(dsn)
                try:
                    from pgqueuer.domain.types import JobId

                    async def atimed(fn: Callable[[int], Any]) -> list[int]:
                        for i in range(10):
                            await fn(-1 - i)
                        lat = []
                        for i in range(ops):
                            t0 = time.perf_counter_ns()
                            await fn(i)
                            lat.append(time.perf_counter_ns() - t0)
                        return lat

                    status = await atimed(lambda i: queries.job_status([JobId(probes[i])]))
                    cancel = await atimed(
                        lambda i: queries.mark_job_as_cancelled([JobId(targets[i])])
                    )
                    return status, cancel
                finally:
                    await conn.close()

            status, cancel = asyncio.run(run())
    return {
        "status_p50_ms": percentile(status, 50) / 1e6,
        "status_p99_ms": percentile(status, 99) / 1e6,
        "cancel_p50_ms": percentile(cancel, 50) / 1e6,
        "cancel_p99_ms": percentile(cancel, 99) / 1e6,
    }


MEASURE: dict[str, Callable[[Server, str, dict[str, int]], dict[str, Any]]] = {
    "W1": w1,
    "W2": w2,
    "W3": lambda s, sys_, z: drain(s, sys_, z, 1),
    "W3p4": lambda s, sys_, z: drain(s, sys_, z, z["workers"]),
    "W4": w4,
    "W5": w5,
}
#: What each row of the table shows: (workload, figure, label, higher is better).
ROWS = [
    ("W1", "ops_s", "W1 single enqueue, enqueues/s", True),
    ("W1", "p99_ms", "W1 single enqueue p99, ms", False),
    ("W2", "rows_s", "W2 bulk enqueue (1,000/transaction), rows/s", True),
    ("W3", "tasks_s", "W3 drain, 1 worker process, tasks/s", True),
    ("W3p4", "tasks_s", "W3p4 drain, 4 worker processes, tasks/s", True),
    ("W4", "tasks_s", "W4 producer + 4 worker processes, tasks/s", True),
    ("W5", "status_p50_ms", "W5 status of a task p50, ms", False),
    ("W5", "cancel_p50_ms", "W5 cancel a queued task p50, ms", False),
]


def table(medians: dict[str, dict[str, dict[str, Any]]], systems: list[str]) -> str:
    """The Markdown table of the medians, a row per figure, a column per system."""
    lines = [
        "| workload | " + " | ".join(systems) + " |",
        "|---|" + "---:|" * len(systems),
    ]
    for workload, figure, label, _ in ROWS:
        cells = []
        for system in systems:
            value = medians.get(workload, {}).get(system, {}).get(figure)
            cells.append(
                "—" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
            )
        if any(c != "—" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(medians: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The target's verdict: four hookqueue worker processes against procrastinate's."""
    drains = medians.get("W3p4", {})
    ours = drains.get("hookqueue", {}).get("tasks_s")
    theirs = drains.get("procrastinate", {}).get("tasks_s")
    if ours is None or theirs is None:
        return "Target not measured in this run (W3p4 needs hookqueue and procrastinate)."
    met = "met" if ours >= theirs else "**missed**"
    return (
        f"Target {met}: four hookqueue worker processes drain {ours:,.0f} tasks/s, "
        f"procrastinate's {theirs:,.0f} ({ours / theirs:.1f}×)."
    )


def write_docs(report: dict[str, Any]) -> None:
    """Replace the PostgreSQL section of docs/performance.md (between the markers)."""
    text = DOCS_PATH.read_text()
    env = report["environment"]
    section = "\n".join(
        [
            DOCS_BEGIN,
            "",
            "The PostgreSQL store ([postgres.md](postgres.md)) beside procrastinate and pgqueuer, "
            "the two PostgreSQL task queues for Python, on the same local server. Target: "
            "workers in four processes drain at least as fast as procrastinate's. Run it with "
            "`python benchmarks/postgres.py --write-docs` (it starts a throwaway server as the "
            "tests do; `--dsn` for one of yours); the JSON goes to `benchmarks/results/`.",
            "",
            f"Measured by `python benchmarks/postgres.py` on {env['machine']}, PostgreSQL "
            f"{env['postgres']['server_version']} (fsync {env['postgres']['fsync']}, "
            f"synchronous_commit {env['postgres']['synchronous_commit']}, shared_buffers "
            f"{env['postgres']['shared_buffers']}) started on the same machine, "
            f'{report["runs"]} run(s) per figure (median); hookqueue at `durability="full"`; '
            f"each system's workers at concurrency {report['sizes']['concurrency']} per "
            f"process; {report['sizes']['w3']:,} tasks drained, {report['sizes']['w4']:,} in W4. "
            f"Versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}.",
            "",
            table(report["medians"], report["systems"]),
            "",
            verdict(report["medians"]),
            "",
            DOCS_END,
        ]
    )
    if DOCS_BEGIN in text:
        head, _, rest = text.partition(DOCS_BEGIN)
        _, _, tail = rest.partition(DOCS_END)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n## PostgreSQL\n\n" + section + "\n"
    DOCS_PATH.write_text(text)


def _versions(systems: list[str]) -> dict[str, str]:
    from importlib.metadata import version

    names = {"hookqueue": "hookqueue", "procrastinate": "procrastinate", "pgqueuer": "pgqueuer"}
    out = {}
    for s in systems:
        with contextlib.suppress(Exception):
            out[s] = version(names[s])
    with contextlib.suppress(Exception):
        out["psycopg"] = version("psycopg")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--child``, one of its processes); the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python benchmarks/postgres.py", description=__doc__)
    parser.add_argument("--dsn", help="a scratch server's admin DSN (default: start one)")
    parser.add_argument("--only", default=",".join(WORKLOADS))
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--out", default=None, help="JSON path")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--docs-from", help="rewrite the docs section from this JSON; run nothing")
    args = parser.parse_args(argv)
    only = [w for w in args.only.split(",") if w]
    systems = [s for s in args.systems.split(",") if s]
    if any(w not in WORKLOADS for w in only) or any(s not in SYSTEMS for s in systems):
        parser.error(f"choose workloads from {WORKLOADS} and systems from {SYSTEMS}")
    if args.docs_from:
        write_docs(json.loads(Path(args.docs_from).read_text()))
        return 0
    import importlib.util

    missing = [s for s in systems if importlib.util.find_spec(s) is None]
    for s in missing:
        print(f"{s}: not installed (pip install 'hookqueue[bench]'); left out", file=sys.stderr)
    systems = [s for s in systems if s not in missing]
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    runs = args.runs or (1 if args.quick else 3)
    server = Server(args.dsn)
    failed = False
    figures: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        pg_settings = server.settings()
        for r in range(runs):
            for workload in only:
                order = systems[r % len(systems) :] + systems[: r % len(systems)]
                for system in order:
                    try:
                        got = MEASURE[workload](server, system, sizes)
                    except Exception:
                        failed = True
                        print(
                            f"{workload} {system}: failed\n{traceback.format_exc()}",
                            file=sys.stderr,
                        )
                        continue
                    figures.setdefault(workload, {}).setdefault(system, []).append(got)
                    print(f"run {r + 1} {workload} {system}: {got}", file=sys.stderr)
    finally:
        server.close()
    medians = {
        w: {
            s: {k: statistics.median(run[k] for run in runs_) for k in runs_[0]}
            for s, runs_ in by_system.items()
        }
        for w, by_system in figures.items()
    }
    report = {
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "environment": {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "postgres": pg_settings,
            "versions": _versions(systems),
        },
        "sizes": sizes,
        "runs": runs,
        "systems": systems,
        "medians": medians,
        "figures": figures,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    out = (
        Path(args.out)
        if args.out
        else RESULTS_DIR / f"postgres-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.write_text(json.dumps(report, indent=2))
    print(table(medians, systems))
    if args.write_docs:
        write_docs(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
