"""Where the W4s producer's enqueue p99 goes: one ``Queue.enqueue`` per task, timed per call,
with no worker, with four idle worker processes (they watch the file and wake on every
commit, but the tasks are on a queue they do not serve) and with four worker processes
draining — and the same for raw apsw (single inserts; raw workers claim one task per
transaction). So the p99 with workers splits into what the workers' wake-ups cost (CPU and
reads) and what their write transactions cost (the lock).

Usage::

    python benchmarks/producer_p99.py                      # 3 rounds, 4000 tasks, both levels
    python benchmarks/producer_p99.py --rounds 1 --tasks 300 --durability normal

Prints a Markdown table (medians over rounds, and the load average) and writes the JSON to
``benchmarks/results/producer-p99-<time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hqbench.common import WorkDir, latency_summary, machine_info  # noqa: E402
from hqbench.raw import RawQueue, insert_params, now_us, open_conn  # noqa: E402
from hqbench.workloads import Child, Context, _common_args, children, init_db  # noqa: E402

#: The cases: (label, worker processes, whether the tasks are on the queue they serve).
CASES = (("alone", 0, True), ("4 idle workers", 4, False), ("4 workers draining", 4, True))
WORKER_ARGS = {"hookqueue": ["--concurrency", "0"], "raw": ["--batch", "1"]}


def _enqueue_fn(system: str, path: Path, durability: str, served: bool) -> tuple[Any, Any]:
    """(enqueue(i), close()) for one system; ``served=False`` puts the tasks on a queue no
    worker serves."""
    queue = "default" if served else "elsewhere"
    if system == "hookqueue":
        from hookqueue import Queue

        q = Queue(path, durability=durability)
        return (lambda i: q.enqueue("noop", {"i": i, "t": time.time_ns()}, queue=queue)), q.close
    conn = open_conn(path, durability)
    rq = RawQueue(conn, "")

    def one(i: int) -> None:
        params = list(insert_params(i, now_us(), time.time_ns()))
        params[0] = queue
        rq.insert(tuple(params))

    return one, conn.close


def measure(ctx: Context, system: str, durability: str, n: int, workers: int, served: bool):
    """One case: the producer's per-call latencies (µs p50/p99) and its rate."""
    with ctx.workdir.fresh(f"p99-{system}") as path, children() as procs:
        init_db(system, path, durability)
        common = _common_args(ctx, path, durability, path.parent)
        role = "hq-worker" if system == "hookqueue" else "raw-worker"
        for _ in range(workers):
            procs.append(
                Child(ctx, role, common + ["--mode", "run", *WORKER_ARGS[system]], path.parent)
            )
        for c in procs:
            c.expect("ready", 60)
        if workers:
            time.sleep(0.5)  # idle and watching before the first enqueue
        one, close = _enqueue_fn(system, path, durability, served)
        try:
            for i in range(20):
                one(-1 - i)
            clock = time.perf_counter_ns
            lat = [0] * n
            begin = clock()
            for i in range(n):
                t0 = clock()
                one(i)
                lat[i] = clock() - t0
            seconds = (clock() - begin) / 1e9
        finally:
            close()
            for c in procs:
                c.terminate()
            for c in procs:
                with contextlib.suppress(Exception):
                    c.expect("result", 60)
    s = latency_summary(lat)
    return {"ops_s": n / seconds, "p50_us": s["p50_us"], "p99_us": s["p99_us"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/producer_p99.py")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--durability", choices=("normal", "full", "both"), default="both")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    levels = ["normal", "full"] if args.durability == "both" else [args.durability]
    workdir = WorkDir(args.workdir)
    meta = machine_info(workdir.root)
    ctx = Context(sizes={"lease_batch": 32}, workdir=workdir, lease_sql="", timeout=120)
    from hqbench.raw import capture_and_check

    ctx.lease_sql = capture_and_check(workdir.fresh)["lease_sql"]
    runs: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {}
    for durability in levels:
        for _ in range(args.rounds):
            for system in ("hookqueue", "raw"):
                for label, workers, served in CASES:
                    got = measure(ctx, system, durability, args.tasks, workers, served)
                    runs.setdefault(durability, {}).setdefault(system, {}).setdefault(
                        label, []
                    ).append(got)
    meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    medians = {
        d: {
            s: {
                label: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                for label, rs in by_case.items()
            }
            for s, by_case in by_system.items()
        }
        for d, by_system in runs.items()
    }
    print(
        f"producer enqueue latency, {args.tasks} tasks, medians of {args.rounds}; load "
        f"{meta['load_average_at_start']} -> {meta['load_average_at_end']}\n"
    )
    print("| durability | system | case | enqueues/s | p50 µs | p99 µs | p99 ÷ alone |")
    print("|---|---|---|---:|---:|---:|---:|")
    for d, by_system in medians.items():
        for s, by_case in by_system.items():
            alone = by_case["alone"]["p99_us"]
            for label, m in by_case.items():
                print(
                    f"| {d} | {s} | {label} | {m['ops_s']:,.0f} | {m['p50_us']:.0f} | "
                    f"{m['p99_us']:,.0f} | {m['p99_us'] / alone:.1f}× |"
                )
    out = (
        Path(args.out)
        if args.out
        else HERE / "results" / f"producer-p99-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "medians": medians, "runs": runs}, indent=1))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
