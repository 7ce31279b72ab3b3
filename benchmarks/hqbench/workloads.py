"""The workloads: W1, W1c, W2, W3, W3p4, W3c, W4, W4s, W4lat, W5, W6, memory, and the
schedulers' costs.

Each workload function measures one run of one system at one durability on a fresh database
file and returns a flat dict of numbers (``None`` when the system has no such operation).
``run.py`` repeats runs, takes medians and interleaves the systems inside each run, so slow
drift of a shared machine spreads over all of them alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import os
import queue as stdlib_queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import WorkDir, file_size, latency_summary, percentile
from .peers import huey_enqueue, huey_prefill, make_huey, make_litequeue
from .raw import RawQueue, create_schema, insert_params, now_us, open_conn

BENCH_DIR = Path(__file__).resolve().parent.parent
SYSTEMS = ("hookqueue", "raw", "huey", "litequeue")

#: Sizes of the full run (the issue's) and of ``--quick`` (the smoke test's).
FULL_SIZES: dict[str, int] = {
    "w1": 3000,
    "w1c": 6000,
    "w1c_coroutines": 100,
    "w2": 100_000,
    "w2_batch": 1000,
    "w3": 10_000,
    "w4": 20_000,
    "w4_batch": 100,
    "w4lat": 2500,
    "w4s": 4000,
    "w4lat_rate": 500,
    "w5_queue": 10_000,
    "w5_ops": 1000,
    "w6_small": 1000,
    "w6_large": 1_000_000,
    "w6_ops": 300,
    "memory": 100_000,
    "sched": 10_000,
    "adapter": 50,
    "adapter_burst": 1000,
    "lease_batch": 32,
    "workers": 4,
}
QUICK_SIZES: dict[str, int] = {
    **FULL_SIZES,
    "w1": 150,
    "w1c": 400,
    "w1c_coroutines": 20,
    "w2": 2000,
    "w2_batch": 500,
    "w3": 400,
    "w4": 600,
    "w4lat": 60,
    "w4s": 200,
    "w5_queue": 400,
    "w5_ops": 60,
    "w6_small": 200,
    "w6_large": 3000,
    "w6_ops": 30,
    "memory": 3000,
    "sched": 400,
    "adapter": 5,
    "adapter_burst": 50,
}


@dataclass
class Context:
    """What every workload needs: sizes, scratch space, the captured lease SQL, a logger."""

    sizes: dict[str, int]
    workdir: WorkDir
    lease_sql: str
    say: Callable[[str], None] = print
    timeout: float = 300.0
    plugin_status: list[dict[str, str]] = field(default_factory=list)

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        return env


# ---------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------


class Child:
    """One spawned ``hqbench.procs`` process and the JSON lines it prints."""

    def __init__(self, ctx: Context, role: str, args: list[str], errdir: Path) -> None:
        self.role = role
        self.errfile = errdir / f"{role}-{id(self)}.err"
        self._err = open(self.errfile, "w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hqbench.procs", role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=ctx.child_env(),
            text=True,
            bufsize=1,
        )
        self.lines: stdlib_queue.Queue[dict[str, Any] | None] = stdlib_queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def expect(self, key: str, timeout: float) -> dict[str, Any]:
        """The next printed object holding ``key``; raises with the process's stderr if it
        exits first or stays silent for ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                obj = self.lines.get(timeout=max(0.01, remaining))
            except stdlib_queue.Empty:
                raise RuntimeError(
                    f"{self.role} (pid {self.proc.pid}) printed no {key!r} within {timeout:.0f}s; "
                    f"stderr: {self.stderr_tail()}"
                ) from None
            if obj is None:
                self.proc.wait(timeout=5)
                raise RuntimeError(
                    f"{self.role} (pid {self.proc.pid}) exited with {self.proc.returncode} "
                    f"before printing {key!r}; stderr: {self.stderr_tail()}"
                )
            if key in obj:
                return obj

    def go(self) -> None:
        """Release a process waiting for ``go``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def terminate(self) -> None:
        """SIGTERM: the graceful stop of a ``--mode run`` worker."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stderr_tail(self, n: int = 1500) -> str:
        self._err.flush()
        try:
            return self.errfile.read_text(encoding="utf-8", errors="replace")[-n:] or "(empty)"
        except OSError:
            return "(unreadable)"

    def close(self) -> None:
        """Kill the process if it is still running (this Popen's own pid only)."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self._err.close()


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to put spawned children in; every one left running is killed on the way out."""
    spawned: list[Child] = []
    try:
        yield spawned
    finally:
        for child in spawned:
            child.close()


def _read_logs(paths: list[Path]) -> list[tuple[int, int, int]]:
    records: list[tuple[int, int, int]] = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(encoding="ascii").splitlines():
                i, t, s = line.split()
                records.append((int(i), int(t), int(s)))
    return records


def _delivery(records: list[tuple[int, int, int]], n: int) -> dict[str, int]:
    """Lost = tasks 0..n-1 no handler saw; duplicated = extra runs of a task."""
    seen = Counter(i for i, _, _ in records)
    expected = set(range(n))
    return {
        "lost": len(expected - set(seen)),
        "duplicated": sum(c - 1 for c in seen.values() if c > 1),
        "unexpected": len(set(seen) - expected),
    }


# ---------------------------------------------------------------------------------------------
# Setting up databases
# ---------------------------------------------------------------------------------------------


def _hq_queue(path: Path, durability: str, **kwargs: Any) -> Any:
    from hookqueue import Queue

    return Queue(path, durability=durability, **kwargs)


def init_db(system: str, path: Path, durability: str) -> None:
    """Create an empty database of ``system`` at ``path``."""
    if system == "hookqueue":
        _hq_queue(path, durability).close()
    elif system == "raw":
        conn = open_conn(path, durability)
        create_schema(conn)
        conn.close()
    elif system == "huey":
        make_huey(path, durability).storage.close()
    elif system == "litequeue":
        make_litequeue(path, durability).close()


def prefill(system: str, path: Path, durability: str, n: int, batch: int = 1000) -> list[Any]:
    """Put ``n`` no-op tasks (payload ``{"i": i}``) in the database, a batch per transaction;
    set-up, never measured. Returns the task ids (litequeue's message ids)."""
    ids: list[Any] = []
    if system == "hookqueue":
        q = _hq_queue(path, durability)
        try:
            for lo in range(0, n, batch):
                tasks = q.enqueue_many(
                    [
                        {"task_type": "noop", "payload": {"i": i}}
                        for i in range(lo, min(n, lo + batch))
                    ]
                )
                ids += [t.id for t in tasks]
        finally:
            q.close()
    elif system == "raw":
        conn = open_conn(path, durability)
        create_schema(conn)
        rq = RawQueue(conn, "")
        t = now_us()
        for lo in range(0, n, batch):
            rq.insert_many([insert_params(i, t) for i in range(lo, min(n, lo + batch))])
        ids = list(range(1, n + 1))
        conn.close()
    elif system == "huey":
        huey = make_huey(path, durability)
        huey_prefill(huey, n)
        huey.storage.close()
    elif system == "litequeue":
        q = make_litequeue(path, durability)
        for lo in range(0, n, batch):
            with q.transaction():
                ids += [q.put(f'{{"i":{i}}}').message_id for i in range(lo, min(n, lo + batch))]
        q.close()
    return ids


def _warm(fn: Callable[[int], Any], n: int = 20) -> None:
    """A few untimed calls first: connection opened, statements prepared, caches warm."""
    for i in range(n):
        fn(-1 - i)


def _timed(fn: Callable[[int], Any], n: int) -> tuple[float, list[int]]:
    """Call ``fn(i)`` for i in 0..n-1; returns (seconds in total, each call in ns)."""
    clock = time.perf_counter_ns
    lat = [0] * n
    gc.collect()
    begin = clock()
    for i in range(n):
        t0 = clock()
        fn(i)
        lat[i] = clock() - t0
    return (clock() - begin) / 1e9, lat


# ---------------------------------------------------------------------------------------------
# W1, W1c, W2: enqueue
# ---------------------------------------------------------------------------------------------


def w1(ctx: Context, system: str, durability: str) -> dict[str, Any] | None:
    """Single enqueue, one transaction each, sync API: ops/s and p50/p99 latency.
    hookqueue runs twice: as installed (every first-party plugin on the enqueue path) and
    with the core alone, which shows what the plugins cost."""
    out = _w1(ctx, system, durability)
    if system == "hookqueue":
        core = _w1(ctx, system, durability, core_only=True)
        out.update({f"core_{k}": v for k, v in core.items()})
    return out


def _w1(ctx: Context, system: str, durability: str, *, core_only: bool = False) -> dict[str, Any]:
    n = ctx.sizes["w1"]
    with ctx.workdir.fresh(f"w1-{system}{'-core' if core_only else ''}") as path:
        if system == "hookqueue":
            q = _hq_queue(path, durability, load_entrypoints=not core_only)
            fn: Callable[[int], Any] = lambda i: q.enqueue("noop", {"i": i})  # noqa: E731
            close: Callable[[], Any] = q.close
        elif system == "raw":
            conn = open_conn(path, durability)
            create_schema(conn)
            rq = RawQueue(conn, "")
            # Parameters are built before timing: the baseline is the SQL alone.
            t = now_us()
            params = [insert_params(i, t) for i in range(n)]
            fn = lambda i: rq.insert(params[i] if i >= 0 else insert_params(i, t))  # noqa: E731
            close = conn.close
        elif system == "huey":
            huey = make_huey(path, durability)
            fn = lambda i: huey_enqueue(huey, i)  # noqa: E731
            close = huey.storage.close
        else:
            lq = make_litequeue(path, durability)
            fn = lambda i: lq.put(f'{{"i":{i}}}')  # noqa: E731
            close = lq.close
        try:
            _warm(fn)
            seconds, lat = _timed(fn, n)
        finally:
            close()
    return {"ops_s": n / seconds, **latency_summary(lat)}


def w1c(ctx: Context, system: str, durability: str) -> dict[str, Any] | None:
    """``enqueue_async`` from concurrent coroutines (group commit). The raw column is raw's
    single-commit rate (the per-fsync limit group commit must beat); huey and litequeue
    have no async API."""
    if system == "raw":
        return w1(ctx, "raw", durability)
    if system != "hookqueue":
        return None
    n = ctx.sizes["w1c"]
    k = ctx.sizes["w1c_coroutines"]
    per = n // k
    with ctx.workdir.fresh("w1c") as path:
        q = _hq_queue(path, durability)
        lat: list[int] = []

        async def main() -> float:
            for i in range(20):  # warm: the group-commit thread starts on first use
                await q.enqueue_async("noop", {"i": -1 - i})
            clock = time.perf_counter_ns

            async def producer(c: int) -> None:
                for j in range(per):
                    t0 = clock()
                    await q.enqueue_async("noop", {"i": c * per + j})
                    lat.append(clock() - t0)

            gc.collect()
            begin = time.perf_counter()
            await asyncio.gather(*(producer(c) for c in range(k)))
            return time.perf_counter() - begin

        try:
            seconds = asyncio.run(main())
        finally:
            q.close()
    return {"ops_s": per * k / seconds, **latency_summary(lat), "coroutines": k}


def w2(ctx: Context, system: str, durability: str) -> dict[str, Any] | None:
    """Bulk enqueue: ``enqueue_many`` in batches, one transaction per batch: rows/s.
    hookqueue runs as installed and with the core alone (see :func:`w1`)."""
    if system == "huey":
        return None  # no batch API: every enqueue is its own commit
    out = _w2(ctx, system, durability)
    if system == "hookqueue":
        out["core_rows_s"] = _w2(ctx, system, durability, core_only=True)["rows_s"]
    return out


def _w2(ctx: Context, system: str, durability: str, *, core_only: bool = False) -> dict[str, Any]:
    n, batch = ctx.sizes["w2"], ctx.sizes["w2_batch"]
    with ctx.workdir.fresh(f"w2-{system}{'-core' if core_only else ''}") as path:
        if system == "hookqueue":
            q = _hq_queue(path, durability, load_entrypoints=not core_only)
            specs = [{"task_type": "noop", "payload": {"i": i}} for i in range(n)]
            q.enqueue_many(specs[:10])

            def run() -> None:
                for lo in range(0, n, batch):
                    q.enqueue_many(specs[lo : lo + batch])

            close: Callable[[], Any] = q.close
        elif system == "raw":
            conn = open_conn(path, durability)
            create_schema(conn)
            rq = RawQueue(conn, "")
            t = now_us()
            params = [insert_params(i, t) for i in range(n)]
            rq.insert_many(params[:10])

            def run() -> None:
                for lo in range(0, n, batch):
                    rq.insert_many(params[lo : lo + batch])

            close = conn.close
        else:
            lq = make_litequeue(path, durability)
            datas = [f'{{"i":{i}}}' for i in range(n)]

            def run() -> None:
                for lo in range(0, n, batch):
                    with lq.transaction():
                        for d in datas[lo : lo + batch]:
                            lq.put(d)

            close = lq.close
        try:
            gc.collect()
            begin = time.perf_counter()
            run()
            seconds = time.perf_counter() - begin
        finally:
            close()
    return {"rows_s": n / seconds, "batch": batch}


# ---------------------------------------------------------------------------------------------
# W3, W3p4, W4, W4lat: worker processes
# ---------------------------------------------------------------------------------------------

_WORKER_ROLE = {
    "hookqueue": "hq-worker",
    "raw": "raw-worker",
    "huey": "huey-worker",
    "litequeue": "lq-worker",
}
_PRODUCER_ROLE = {
    "hookqueue": "hq-producer",
    "raw": "raw-producer",
    "huey": "huey-producer",
    "litequeue": "lq-producer",
}


def _common_args(ctx: Context, path: Path, durability: str, logdir: Path) -> list[str]:
    return [
        "--db", str(path), "--durability", durability, "--lease-sql", ctx.lease_sql,
        "--batch", str(ctx.sizes["lease_batch"]), "--concurrency", str(ctx.sizes["lease_batch"]),
        "--huey-log-dir", str(logdir),
    ]  # fmt: skip


def drain(
    ctx: Context,
    system: str,
    durability: str,
    n: int,
    workers: int,
    *,
    worker_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``n`` pre-enqueued no-op tasks drained by ``workers`` processes, each working until the
    queue is empty (hookqueue: ``WorkerEngine.run_until_idle()``). Time runs from the moment
    every process is released to the last one finishing. ``worker_args`` are added to each
    worker's command line."""
    with ctx.workdir.fresh(f"drain-{system}") as path, children() as procs:
        logdir = path.parent
        prefill(system, path, durability, n)
        logs = [logdir / f"w{k}.log" for k in range(workers)]
        for k in range(workers):
            args = _common_args(ctx, path, durability, logdir) + [
                "--mode",
                "idle",
                "--log",
                str(logs[k]),
                *worker_args,
            ]
            procs.append(Child(ctx, _WORKER_ROLE[system], args, logdir))
        ready = [c.expect("ready", 60) for c in procs]
        go = time.time_ns()
        for c in procs:
            c.go()
        results = [c.expect("result", ctx.timeout)["result"] for c in procs]
        for c in procs:
            c.proc.wait(timeout=30)
        end = max(r["end_ns"] for r in results)
        if system == "huey":
            logs = sorted(logdir.glob("huey-*.log"))
        records = _read_logs(logs)
    seconds = (end - go) / 1e9
    out: dict[str, Any] = {"tasks_s": n / seconds, "seconds": seconds, **_delivery(records, n)}
    if system == "hookqueue":
        ctx.plugin_status = ready[0].get("plugins", [])
    return out


def huey_consumer_drain(ctx: Context, durability: str, n: int) -> float:
    """``n`` pre-enqueued tasks worked by huey's own consumer (one worker process, its default
    polling), as an application runs huey: tasks/s from the first task's start to the last
    one's (the consumer's start-up is left out)."""
    with ctx.workdir.fresh("drain-huey-consumer") as path, children() as procs:
        logdir = path.parent
        prefill("huey", path, durability, n)
        consumer = Child(
            ctx,
            "huey-consumer",
            _common_args(ctx, path, durability, logdir) + ["--workers", "1"],
            logdir,
        )
        procs.append(consumer)
        consumer.expect("ready", 60)
        count = _done_counter("huey", path, logdir)
        deadline = time.monotonic() + ctx.timeout
        while count() < n and time.monotonic() < deadline:
            if consumer.proc.poll() is not None:
                raise RuntimeError(f"huey's consumer exited: {consumer.stderr_tail()}")
            time.sleep(0.02)
        consumer.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            consumer.proc.wait(timeout=30)
        records = _read_logs(sorted(logdir.glob("huey-*.log")))
    if len(records) < n:
        raise RuntimeError(f"huey's consumer ran {len(records)} of {n} tasks")
    starts = [s for _, _, s in records]
    return (len(records) - 1) / ((max(starts) - min(starts)) / 1e9)


def w3(ctx: Context, system: str, durability: str) -> dict[str, Any] | None:
    """Drain ``w3`` pre-enqueued no-op tasks with one worker process. huey is measured twice:
    its dequeue-and-execute loop (``tasks_s``, the same shape as the others' loops) and its
    consumer (``consumer_tasks_s``: what an application running huey gets, which the "≥ 10×
    huey" target is judged against)."""
    out = drain(ctx, system, durability, ctx.sizes["w3"], 1)
    if system == "huey":
        out["consumer_tasks_s"] = huey_consumer_drain(ctx, durability, ctx.sizes["w3"])
    return out


#: The concurrency settings W3c drains with; 0 is the worker's default.
W3C_SETTINGS = (0, 32, 64, 128)


def w3c(ctx: Context, system: str, durability: str) -> dict[str, Any] | None:
    """W3 (one worker process) at the worker's default ``concurrency`` and at each of
    :data:`W3C_SETTINGS`: ``default_vs_best`` is the default's rate ÷ the best setting's.
    hookqueue only (the others have no such setting)."""
    if system != "hookqueue":
        return None
    n = ctx.sizes["w3"]
    out: dict[str, Any] = {}
    for setting in W3C_SETTINGS:
        got = drain(ctx, system, durability, n, 1, worker_args=("--concurrency", str(setting)))
        label = "default" if setting == 0 else str(setting)
        out[f"tasks_s_{label}"] = got["tasks_s"]
        for key in ("lost", "duplicated", "unexpected"):
            out[key] = out.get(key, 0) + got[key]
    best = max(out[f"tasks_s_{'default' if s == 0 else s}"] for s in W3C_SETTINGS)
    out["tasks_s"] = out["tasks_s_default"]
    out["default_vs_best"] = out["tasks_s_default"] / best
    return out


def w3p4(ctx: Context, system: str, durability: str) -> dict[str, Any] | None:
    """The same with four worker processes (not litequeue: see ``LITEQUEUE_SINGLE``)."""
    if system == "litequeue":
        return None
    return drain(ctx, system, durability, ctx.sizes["w3"], ctx.sizes["workers"])


def _done_counter(system: str, path: Path, logdir: Path) -> Callable[[], int]:
    """How many tasks have finished so far, read without disturbing the workers much."""
    if system in ("hookqueue", "raw"):
        from hookqueue import QueueDatabase

        db = QueueDatabase(path)

        def count() -> int:
            return int(db.counts()["completed"])

        count.close = db.close  # type: ignore[attr-defined]
        return count
    if system == "litequeue":
        import sqlite3

        conn = sqlite3.connect(str(path), timeout=10)

        def count() -> int:
            return int(conn.execute("SELECT count(*) FROM Queue WHERE status = 2").fetchone()[0])

        count.close = conn.close  # type: ignore[attr-defined]
        return count

    def count() -> int:
        total = 0
        for p in logdir.glob("huey-*.log"):
            with contextlib.suppress(FileNotFoundError):
                total += p.read_bytes().count(b"\n")
        return total

    count.close = lambda: None  # type: ignore[attr-defined]
    return count


def produce_and_work(
    ctx: Context,
    system: str,
    durability: str,
    n: int,
    *,
    batch: int,
    rate: float,
    worker_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One producer process enqueueing ``n`` tasks while ``workers`` worker processes, started
    first and idle, take them (hookqueue: ``WorkerEngine.run()``, stopped by SIGTERM once every
    task has run; huey: its own consumer with process workers). ``worker_args`` are added to
    each worker's command line (not huey's consumer's)."""
    workers = ctx.sizes["workers"]
    with ctx.workdir.fresh(f"pw-{system}") as path, children() as procs:
        logdir = path.parent
        init_db(system, path, durability)
        common = _common_args(ctx, path, durability, logdir)
        logs = [logdir / f"w{k}.log" for k in range(workers)]
        if system == "huey":
            consumers = [Child(ctx, "huey-consumer", common + ["--workers", str(workers)], logdir)]
        else:
            consumers = [
                Child(
                    ctx,
                    _WORKER_ROLE[system],
                    common + ["--mode", "run", "--log", str(logs[k]), *worker_args],
                    logdir,
                )
                for k in range(workers)
            ]
        procs += consumers
        producer = Child(
            ctx,
            _PRODUCER_ROLE[system],
            common + ["--n", str(n), "--batch", str(batch), "--rate", str(rate)],
            logdir,
        )
        procs.append(producer)
        for c in procs:
            c.expect("ready", 60)
        time.sleep(0.5)  # the workers are idle and waiting before the first task exists
        count = _done_counter(system, path, logdir)
        try:
            go = time.time_ns()
            producer.go()
            produced = producer.expect("result", ctx.timeout)["result"]
            deadline = time.monotonic() + ctx.timeout
            done = count()
            while done < n and time.monotonic() < deadline:
                time.sleep(0.02)
                done = count()
                dead = [c for c in consumers if c.proc.poll() is not None]
                if dead:
                    raise RuntimeError(
                        f"{dead[0].role} (pid {dead[0].proc.pid}) exited with "
                        f"{dead[0].proc.returncode} after {done} of {n} tasks; stderr: "
                        f"{dead[0].stderr_tail()}"
                    )
            if done < n:
                raise RuntimeError(f"only {done} of {n} tasks ran within {ctx.timeout:.0f}s")
        finally:
            count.close()  # type: ignore[attr-defined]
        for c in consumers:
            c.terminate()
        for c in consumers:
            if system != "huey":
                c.expect("result", 60)
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=30)
        if system == "huey":
            logs = sorted(logdir.glob("huey-*.log"))
        records = _read_logs(logs)
        leftover = None
        if system in ("hookqueue", "raw"):
            from hookqueue import QueueDatabase

            with QueueDatabase(path) as db:
                counts = db.counts()
            leftover = sum(v for k, v in counts.items() if k != "completed")
    pickup = [s - t for _, t, s in records]
    last_start = max((s for _, _, s in records), default=go)
    seconds = (last_start - go) / 1e9
    out: dict[str, Any] = {
        "tasks_s": len(records) / seconds if seconds > 0 else float("nan"),
        "producer_s": (produced["end_ns"] - go) / 1e9,
        "pickup_p50_ms": percentile(pickup, 50) / 1e6,
        "pickup_p99_ms": percentile(pickup, 99) / 1e6,
        **_delivery(records, n),
    }
    if leftover is not None:
        out["not_completed"] = leftover
    for key in ("enqueue_p50_us", "enqueue_p99_us"):
        if key in produced:
            out[key] = produced[key]
    return out


def produce_alone(ctx: Context, system: str, durability: str, n: int) -> dict[str, Any]:
    """The W4s producer with no worker running: ``n`` single enqueues as fast as they go on
    a fresh database; its rate and per-call p50/p99 (the yardstick for the same producer
    with workers running)."""
    with ctx.workdir.fresh(f"alone-{system}") as path, children() as procs:
        logdir = path.parent
        init_db(system, path, durability)
        producer = Child(
            ctx,
            _PRODUCER_ROLE[system],
            _common_args(ctx, path, durability, logdir)
            + ["--n", str(n), "--batch", "1", "--rate", "0"],
            logdir,
        )
        procs.append(producer)
        producer.expect("ready", 60)
        go = time.time_ns()
        producer.go()
        produced = producer.expect("result", ctx.timeout)["result"]
    return {
        "ops_s": n / ((produced["end_ns"] - go) / 1e9),
        "enqueue_p50_us": produced["enqueue_p50_us"],
        "enqueue_p99_us": produced["enqueue_p99_us"],
    }


def w4(ctx: Context, system: str, durability: str) -> dict[str, Any] | None:
    """A producer enqueueing ``w4`` tasks (in batches) while four worker processes drain them."""
    if system == "litequeue":
        return None
    return produce_and_work(
        ctx, system, durability, ctx.sizes["w4"], batch=ctx.sizes["w4_batch"], rate=0
    )


#: W4s's worker options per system: hookqueue's workers run with their defaults (what
#: ``hookqueue worker`` runs: the issue's "with its defaults"); raw workers claim one task per
#: transaction — the issue's baseline is raw apsw's single-insert/single-claim loop.
_W4S_WORKER_ARGS: dict[str, tuple[str, ...]] = {
    "hookqueue": ("--concurrency", "0"),
    "raw": ("--batch", "1"),
}


def w4s(ctx: Context, system: str, durability: str) -> dict[str, Any] | None:
    """W4 with the commonest real producer: one ``enqueue`` (one transaction) per task, as
    fast as it goes, while four worker processes drain. The producer then runs again alone
    (no workers) on a fresh file: ``enqueue_p99_ratio`` is its p99 with workers running ÷ its
    p99 alone. litequeue sits out (see ``LITEQUEUE_SINGLE``)."""
    if system == "litequeue":
        return None
    n = ctx.sizes["w4s"]
    out = produce_and_work(
        ctx, system, durability, n, batch=1, rate=0, worker_args=_W4S_WORKER_ARGS.get(system, ())
    )
    alone = produce_alone(ctx, system, durability, n)
    out["alone_ops_s"] = alone["ops_s"]
    out["alone_enqueue_p50_us"] = alone["enqueue_p50_us"]
    out["alone_enqueue_p99_us"] = alone["enqueue_p99_us"]
    if out.get("enqueue_p99_us") and alone["enqueue_p99_us"]:
        out["enqueue_p99_ratio"] = out["enqueue_p99_us"] / alone["enqueue_p99_us"]
    return out


def w4lat(ctx: Context, system: str, durability: str) -> dict[str, Any] | None:
    """The producer paced at ``w4lat_rate`` tasks/s, one enqueue each: pickup latency."""
    return produce_and_work(
        ctx, system, durability, ctx.sizes["w4lat"], batch=1, rate=ctx.sizes["w4lat_rate"]
    )


# ---------------------------------------------------------------------------------------------
# W5: status and cancel
# ---------------------------------------------------------------------------------------------


def w5(ctx: Context, system: str, durability: str) -> dict[str, Any] | None:
    """Status query and cancel latency on a queue of ``w5_queue`` queued tasks."""
    n, ops = ctx.sizes["w5_queue"], ctx.sizes["w5_ops"]
    rng = random.Random(5)
    with ctx.workdir.fresh(f"w5-{system}") as path:
        ids = prefill(system, path, durability, n)
        if system == "huey":
            # huey keeps no per-task status; revoke_by_id (a row in its kv table) is its cancel.
            huey = make_huey(path, durability)
            revoke_ids = [f"id-{i}" for i in range(ops + 20)]
            status = None
            cancel: Callable[[int], Any] = lambda i: huey.revoke_by_id(revoke_ids[i])  # noqa: E731
            close: Callable[[], Any] = huey.storage.close
        else:
            targets = rng.sample(ids, min(len(ids), ops + 20))
            probes = [rng.choice(ids) for _ in range(ops + 20)]
            if system == "hookqueue":
                q = _hq_queue(path, durability)
                status = lambda i: q.get(probes[i])  # noqa: E731
                cancel = lambda i: q.cancel(targets[i])  # noqa: E731
                close = q.close
            elif system == "raw":
                conn = open_conn(path, durability)
                rq = RawQueue(conn, "")
                status = lambda i: rq.get(probes[i])  # noqa: E731
                cancel = lambda i: rq.cancel(targets[i])  # noqa: E731
                close = conn.close
            else:
                lq = make_litequeue(path, durability)
                status = lambda i: lq.get(probes[i])  # noqa: E731
                cancel = lambda i: lq.mark_failed(targets[i])  # noqa: E731
                close = lq.close
        try:
            out: dict[str, Any] = {}
            if status is not None:
                _warm(lambda j: status(ops - 1 - j), 10)  # probes past the timed ones
                _, lat = _timed(status, ops)
                s = latency_summary(lat)
                out["status_p50_us"], out["status_p99_us"] = s["p50_us"], s["p99_us"]
            else:
                out["status_p50_us"] = out["status_p99_us"] = None
            _warm(lambda j: cancel(ops - 1 - j), 10)  # targets past the timed ones
            _, lat = _timed(cancel, ops)
            s = latency_summary(lat)
            out["cancel_p50_us"], out["cancel_p99_us"] = s["p50_us"], s["p99_us"]
        finally:
            close()
    return out


# ---------------------------------------------------------------------------------------------
# W6: growth
# ---------------------------------------------------------------------------------------------

_BULK_INSERT = """
WITH RECURSIVE seq(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM seq WHERE x < ?)
INSERT INTO tasks (queue, task_type, payload, priority, status, attempts, max_attempts,
                   run_after, created_at, started_at, finished_at)
SELECT 'default', 'noop', '{"i":' || x || '}', 100, ?, ?, 1, ?, ?, ?, ? FROM seq
"""


def build_w6(path: Path, durability: str, *, queued: int, finished: int) -> float:
    """A hookqueue database holding ``finished`` completed tasks (finished a day ago) and
    ``queued`` due tasks, built with bulk SQL in one transaction. Returns seconds taken."""
    begin = time.perf_counter()
    conn = open_conn(path, durability)
    try:
        create_schema(conn)
        t = now_us()
        day_ago = t - 86_400_000_000
        with conn:
            if finished:
                conn.execute(
                    _BULK_INSERT, (finished, "completed", 1, day_ago, day_ago, day_ago, day_ago)
                )
            if queued:
                conn.execute(_BULK_INSERT, (queued, "queued", 0, day_ago, day_ago, None, None))
        conn.pragma("wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - begin


def _w6_measure(ctx: Context, system: str, path: Path, durability: str) -> dict[str, float]:
    """Enqueue p50 and lease p50 (lease 32, then release them in the next call's transaction,
    so the table keeps its size) on an existing database."""
    ops, limit = ctx.sizes["w6_ops"], ctx.sizes["lease_batch"]
    if system == "hookqueue":
        from hookqueue.core.store import Settlement

        q = _hq_queue(path, durability)
        held: list[int] = []

        def lease(i: int) -> None:
            back = [Settlement(task_id=t, kind="release") for t in held]
            held[:] = [t.id for t in q.runtime.lease("w6", limit=limit, settlements=back)]

        enqueue: Callable[[int], Any] = lambda i: q.enqueue("noop", {"i": i})  # noqa: E731
        close: Callable[[], Any] = q.close
    else:
        conn = open_conn(path, durability)
        rq = RawQueue(conn, ctx.lease_sql, worker_id="w6")
        held = []
        t = now_us()

        def lease(i: int) -> None:
            held[:] = [r[0] for r in rq.lease(limit, release=held)]

        enqueue = lambda i: rq.insert(insert_params(i, t))  # noqa: E731
        close = conn.close
    try:
        _warm(lease, 5)
        _, lease_lat = _timed(lease, ops)
        _warm(enqueue, 5)
        _, enq_lat = _timed(enqueue, ops)
    finally:
        close()
    return {
        "lease_p50_us": percentile(lease_lat, 50) / 1000,
        "enqueue_p50_us": percentile(enq_lat, 50) / 1000,
    }


def w6(ctx: Context, system: str, durability: str) -> dict[str, Any] | None:
    """Enqueue and lease latency with a small and a large table, the rows queued or finished
    and retained; for hookqueue also the file size after ``prune`` (and ``vacuum``)."""
    if system not in ("hookqueue", "raw"):
        return None
    small, large = ctx.sizes["w6_small"], ctx.sizes["w6_large"]
    out: dict[str, Any] = {}
    for state in ("queued", "retained"):
        for label, size in (("small", small), ("large", large)):
            with ctx.workdir.fresh(f"w6-{system}-{state}-{label}") as path:
                if state == "queued":
                    built = build_w6(path, durability, queued=size, finished=0)
                else:
                    built = build_w6(path, durability, queued=small, finished=size)
                m = _w6_measure(ctx, system, path, durability)
                out[f"{state}_{label}_lease_p50_us"] = m["lease_p50_us"]
                out[f"{state}_{label}_enqueue_p50_us"] = m["enqueue_p50_us"]
                if system == "hookqueue" and state == "retained" and label == "large":
                    out["build_s"] = built
                    out.update(_w6_prune(path, durability))
        out[f"{state}_lease_growth"] = (
            out[f"{state}_large_lease_p50_us"] / out[f"{state}_small_lease_p50_us"]
        )
        out[f"{state}_enqueue_growth"] = (
            out[f"{state}_large_enqueue_p50_us"] / out[f"{state}_small_enqueue_p50_us"]
        )
    return out


def _checkpointed_size(path: Path, durability: str) -> int:
    """The file size once the write-ahead log is folded into the database and truncated
    (what the data takes at rest, not what is in flight)."""
    conn = open_conn(path, durability)
    try:
        conn.pragma("wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return file_size(path)


def _w6_prune(path: Path, durability: str) -> dict[str, float]:
    """``Queue.prune`` every finished task, then ``vacuum``; sizes after each, checkpointed."""
    before = _checkpointed_size(path, durability)
    q = _hq_queue(path, durability)
    try:
        begin = time.perf_counter()
        deleted = q.prune(older_than=3600)
        prune_s = time.perf_counter() - begin
    finally:
        q.close()
    after = _checkpointed_size(path, durability)
    q = _hq_queue(path, durability)
    try:
        begin = time.perf_counter()
        q.db.vacuum()
        vacuum_s = time.perf_counter() - begin
    finally:
        q.close()
    vacuumed = _checkpointed_size(path, durability)
    return {
        "pruned": deleted,
        "prune_s": prune_s,
        "vacuum_s": vacuum_s,
        "size_before_mb": before / 1e6,
        "size_after_prune_mb": after / 1e6,
        "size_after_vacuum_mb": vacuumed / 1e6,
    }


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def memory(ctx: Context, system: str, durability: str) -> dict[str, Any] | None:
    """Worker RSS while one worker process drains ``memory`` tasks (sampled every 50 ms by
    the worker itself; the handler keeps nothing)."""
    if system != "hookqueue":
        return None
    n = ctx.sizes["memory"]
    with ctx.workdir.fresh("memory") as path, children() as procs:
        prefill(system, path, durability, n)
        args = _common_args(ctx, path, durability, path.parent) + ["--mode", "idle", "--sample"]
        child = Child(ctx, "hq-worker", args, path.parent)
        procs.append(child)
        child.expect("ready", 60)
        child.go()
        result = child.expect("result", ctx.timeout)["result"]
    samples = result["samples"]  # [processed, rss_kib]

    def rss_at(fraction: float) -> float:
        for processed, rss in samples:
            if processed >= fraction * n:
                return rss / 1024
        return samples[-1][1] / 1024

    at10, at50, end = rss_at(0.10), rss_at(0.50), samples[-1][1] / 1024
    return {
        "rss_start_mb": samples[0][1] / 1024,
        "rss_10pct_mb": at10,
        "rss_50pct_mb": at50,
        "rss_end_mb": end,
        "rss_max_mb": max(r for _, r in samples) / 1024,
        "growth_mb": end - at10,
        "completed": result["completed"],
        "samples": len(samples),
    }


# ---------------------------------------------------------------------------------------------
# Schedulers
# ---------------------------------------------------------------------------------------------


def discover_schedulers() -> tuple[dict[str, Any], dict[str, str]]:
    """Instances of every scheduler class in ``hookqueue.plugins.priority`` that can be built
    without arguments, and the reasons the others (or the module) are missing."""
    try:
        module = importlib.import_module("hookqueue.plugins.priority")
    except Exception as exc:  # the module is optional: report why it is missing
        return {}, {"hookqueue.plugins.priority": f"n/a ({type(exc).__name__}: {exc})"}
    found: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    classes = [
        obj
        for name, obj in sorted(vars(module).items())
        if isinstance(obj, type)
        and obj.__module__ == module.__name__
        and not name.startswith("_")
        and callable(getattr(obj, "hookqueue_lease", None))
    ]
    for obj in classes:
        name = obj.__name__
        if any(other is not obj and issubclass(other, obj) for other in classes):
            continue  # a base class (``Scheduler``), not a scheduler of its own
        try:
            found[name] = obj()
        except Exception as exc:  # needs arguments we cannot guess
            skipped[name] = f"not built without arguments ({type(exc).__name__}: {exc})"
    return found, skipped


def schedulers(ctx: Context, durability: str) -> dict[str, Any]:
    """Lease cost of each scheduler beside FIFO: drain ``sched`` tasks (mixed priorities,
    four task types, a tenant key) in-process with ``QueueRuntime.lease(limit=32)``, completing each
    batch in the next lease's transaction."""
    from hookqueue.core.store import Settlement

    n, limit = ctx.sizes["sched"], ctx.sizes["lease_batch"]
    found, skipped = discover_schedulers()
    candidates: list[tuple[str, dict[str, Any]]] = [
        ("FIFO (core, priority plugin blocked)", {"block": ["priority"]}),
    ]
    if "hookqueue.plugins.priority" not in skipped:
        candidates.append(("priority plugin as installed", {}))
    candidates += [
        (name, {"block": ["priority"], "plugins": [inst]}) for name, inst in found.items()
    ]
    rng = random.Random(7)
    specs = [
        {
            "task_type": f"type{i % 4}",
            "priority": rng.randrange(10),
            "payload": {"i": i, "tenant": f"t{rng.randrange(8)}"},
        }
        for i in range(n)
    ]
    out: dict[str, Any] = {"skipped": skipped, "schedulers": {}}
    for label, kwargs in candidates:
        with ctx.workdir.fresh("sched") as path:
            try:
                q = _hq_queue(path, durability, **kwargs)
            except Exception as exc:  # a scheduler that cannot be registered
                out["skipped"][label] = f"{type(exc).__name__}: {exc}"
                continue
            try:
                for lo in range(0, n, 1000):
                    q.enqueue_many(specs[lo : lo + 1000])
                lat: list[int] = []
                done: list[Any] = []
                taken = 0
                clock = time.perf_counter_ns
                begin = clock()
                plan_name = "?"
                while True:
                    t0 = clock()
                    leased = q.runtime.lease("sched", limit=limit, settlements=done)
                    lat.append(clock() - t0)
                    if not leased:
                        break
                    taken += len(leased)
                    done = [Settlement(task_id=t.id, kind="complete") for t in leased]
                seconds = (clock() - begin) / 1e9
                with contextlib.suppress(Exception):
                    from hookqueue import LeaseRequest

                    request = LeaseRequest(
                        worker_id="sched",
                        queues=("default",),
                        limit=limit,
                        now=q.now(),
                        lease_seconds=10.0,
                    )
                    plan_name = q.hooks.lease(q, request).name
            except Exception as exc:  # report a broken scheduler instead of stopping the run
                out["skipped"][label] = f"{type(exc).__name__}: {exc}"
                continue
            finally:
                q.close()
        out["schedulers"][label] = {
            "plan": plan_name,
            "tasks_s": taken / seconds,
            "lease_p50_us": percentile(lat, 50) / 1000,
            "per_task_us": seconds * 1e6 / max(taken, 1),
            "leased": taken,
        }
    return out


WORKLOADS: dict[str, Callable[[Context, str, str], dict[str, Any] | None]] = {
    "W1": w1,
    "W1c": w1c,
    "W2": w2,
    "W3": w3,
    "W3p4": w3p4,
    "W3c": w3c,
    "W4": w4,
    "W4s": w4s,
    "W4lat": w4lat,
    "W5": w5,
    "W6": w6,
    "memory": memory,
}
#: Why litequeue sits out W3p4 and W4: it has no worker, and its ``pop`` sorts every ready
#: row (``ORDER BY message_id`` beside an index on ``status``), so four processes popping a
#: 10,000–20,000 task backlog take minutes per run; W3 (one process) shows that cost.
LITEQUEUE_SINGLE = "no worker of its own; pop sorts the whole backlog, see W3"
#: Workloads measured once per durability (their own samples give the medians): they take
#: long, and their figures do not depend on run-to-run drift.
SINGLE_RUN = {"W6", "memory"}
