"""What limits cost, and what round-robin buys: a W3 drain under each kind of limit, as ratios
to raw apsw in the same run, and a small tenant's wait behind a 10,000-task tenant.

Usage::

    python benchmarks/limits.py                 # normal and full durability, 3 rounds
    python benchmarks/limits.py --quick         # tiny sizes, 1 round (the smoke test)
    python benchmarks/limits.py --durability normal --rounds 5

Two parts, each on fresh database files, medians of rounds in rotating order:

- **W3 drain under limits**: 10,000 pre-enqueued no-op tasks (payload ``{"i", "tenant"}``, 10
  tenants) drained by one worker (``WorkerEngine(concurrency=32).run_until_idle()``, every
  installed plugin active, as W3), with: the limits plugin blocked; the plugin and no rule
  ("no limit", the default); a concurrency limit that does not bind (1,000 running); the same
  per tenant; a rate that does not bind (10^6 per second, burst 1,000); round-robin turns
  between the tenants. Beside them the raw-apsw lease loop over the same schema and the same
  FIFO lease statement (``hqbench.raw.RawQueue``, batches of 32): each figure is also shown as
  a ratio to it, and the limits' cost as a ratio to "no limit".
- **Lease cost**: the same variants (round-robin aside), in-process with no worker around:
  ``QueueRuntime.lease(limit=32)`` writing the previous batch's completions in the same
  transaction, over 6,400 tasks — µs per lease of 32, the part limits add to. Less sensitive
  to a loaded machine than the drain (one thread, nothing to schedule).
- **Fairness**: 10,000 tasks of tenant ``big`` enqueued, then 10 of tenant ``small``, drained
  by one worker (32 slots): the small tenant's wait (lease instant minus enqueue instant),
  p50 and p99, in FIFO order and with a fair rule on ``tenant``.

Prints Markdown tables and writes the JSON (medians, every round, the load average before and
after) to ``benchmarks/results/limits-<time>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hqbench.common import machine_info  # noqa: E402
from hqbench.raw import RawQueue, capture_and_check, create_schema, open_conn  # noqa: E402

from hookqueue import Queue, WorkerEngine  # noqa: E402
from hookqueue.core.clock import to_us  # noqa: E402
from hookqueue.plugins.limits import LimitRule, set_limit  # noqa: E402

RESULTS_DIR = HERE / "results"
FULL = {"drain": 10_000, "tenants": 10, "big": 10_000, "small": 10, "batch": 32, "leases": 6400}
QUICK = {"drain": 500, "tenants": 5, "big": 500, "small": 5, "batch": 32, "leases": 320}

#: The drain's variants: name -> (plugin blocked?, rules).
VARIANTS: dict[str, tuple[bool, tuple[LimitRule, ...]]] = {
    "plugin blocked": (True, ()),
    "no limit": (False, ()),
    "concurrency 1,000 (does not bind)": (False, (LimitRule(name="c", concurrency=1000),)),
    "concurrency 1,000 per tenant (does not bind)": (
        False,
        (LimitRule(name="c", concurrency=1000, partition_by="tenant"),),
    ),
    "rate 10^6/s, burst 1,000 (does not bind)": (
        False,
        (LimitRule(name="r", rate=1_000_000, period=1.0, burst=1000),),
    ),
    "round-robin between tenants": (
        False,
        (LimitRule(name="f", fair=True, partition_by="tenant"),),
    ),
}


def _payload_rows(n: int, tenants: int, now: int) -> list[tuple[Any, ...]]:
    """``InsertRow.params`` of ``enqueue("noop", {"i": i, "tenant": ...})``."""
    return [
        (
            "default",
            "noop",
            json.dumps({"i": i, "tenant": f"t{i % tenants}"}, separators=(",", ":")),
            100,
            1,
            now,
            None,
            None,
            None,
            now,
        )
        for i in range(n)
    ]


def raw_drain(durability: str, sizes: dict[str, int], workdir: Path, lease_sql: str) -> float:
    """The raw-apsw lease loop over the same rows: tasks/s."""
    path = workdir / f"raw-{durability}-{time.monotonic_ns()}.db"
    conn = open_conn(path, durability)
    try:
        create_schema(conn)
        rq = RawQueue(conn, lease_sql)
        now = time.time_ns() // 1000
        rows = _payload_rows(sizes["drain"], sizes["tenants"], now)
        for start in range(0, len(rows), 1000):
            rq.insert_many(rows[start : start + 1000])
        done: list[int] = []
        n = 0
        t0 = time.perf_counter()
        while True:
            leased = rq.lease(sizes["batch"], done=done)
            if not leased:
                break
            done = []
            for row in leased:
                json.loads(row[3])
                done.append(row[0])
            n += len(leased)
        rq.lease(0, done=done)
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    assert n == sizes["drain"], n
    return n / seconds


def drain(durability: str, sizes: dict[str, int], workdir: Path, variant: str) -> float:
    """One drain of ``sizes["drain"]`` no-op tasks under ``variant``: tasks/s."""
    blocked, rules = VARIANTS[variant]
    path = workdir / f"drain-{durability}-{time.monotonic_ns()}.db"
    with Queue(path, durability=durability, block=["limits"] if blocked else ()) as q:

        async def noop(task: Any) -> None:
            return None

        q.handlers.register_handler("noop", noop)
        for rule in rules:
            set_limit(q, rule)
        n = sizes["drain"]
        for start in range(0, n, 1000):
            q.enqueue_many(
                [
                    {"task_type": "noop", "payload": {"i": i, "tenant": f"t{i % sizes['tenants']}"}}
                    for i in range(start, min(n, start + 1000))
                ]
            )
        worker = WorkerEngine(q, worker_id="bench", concurrency=sizes["batch"])
        t0 = time.perf_counter()
        stats = worker.run_until_idle()
        seconds = time.perf_counter() - t0
        assert stats.completed == n, stats
    return n / seconds


#: The lease-cost part's variants (the drain's, round-robin aside).
LEASE_VARIANTS = [v for v in VARIANTS if not v.startswith("round-robin")]


def lease_cost(durability: str, sizes: dict[str, int], workdir: Path, variant: str) -> float:
    """µs per ``QueueRuntime.lease(limit=32)`` that also completes the previous batch."""
    from hookqueue.core.storage import Settlement

    blocked, rules = VARIANTS[variant]
    path = workdir / f"lease-{durability}-{time.monotonic_ns()}.db"
    with Queue(path, durability=durability, block=["limits"] if blocked else ()) as q:
        for rule in rules:
            set_limit(q, rule)
        n = sizes["leases"]
        for start in range(0, n, 1000):
            q.enqueue_many(
                [
                    {"task_type": "noop", "payload": {"i": i, "tenant": f"t{i % sizes['tenants']}"}}
                    for i in range(start, min(n, start + 1000))
                ]
            )
        done: list[Any] = []
        leases = 0
        t0 = time.perf_counter()
        while True:
            leased = q.runtime.lease("bench", limit=sizes["batch"], settlements=done)
            if not leased:
                break
            leases += 1
            done = [Settlement.completed(t, None, 0.0) for t in leased]
        seconds = time.perf_counter() - t0
    return seconds / leases * 1e6


def fairness(durability: str, sizes: dict[str, int], workdir: Path, fair: bool) -> dict[str, float]:
    """The small tenant's waits behind the big one, in ms: p50, p99, max."""
    path = workdir / f"fair-{durability}-{fair}-{time.monotonic_ns()}.db"
    with Queue(path, durability=durability) as q:

        async def noop(task: Any) -> None:
            return None

        q.handlers.register_handler("noop", noop)
        if fair:
            set_limit(q, LimitRule(name="turns", fair=True, partition_by="tenant"))
        big = sizes["big"]
        for start in range(0, big, 1000):
            q.enqueue_many(
                [
                    {"task_type": "noop", "payload": {"i": i, "tenant": "big"}}
                    for i in range(start, min(big, start + 1000))
                ]
            )
        small = [q.enqueue("noop", {"i": i, "tenant": "small"}) for i in range(sizes["small"])]
        WorkerEngine(q, worker_id="bench", concurrency=sizes["batch"]).run_until_idle()
        waits = []
        for t in small:
            done = q.get(t.id)
            assert done.started_at is not None
            waits.append(
                (to_us(done.started_at, "started_at") - to_us(done.created_at, "created_at")) / 1e3
            )
    waits.sort()
    return {
        "p50_ms": statistics.median(waits),
        "p99_ms": waits[min(len(waits) - 1, int(round(0.99 * (len(waits) - 1))))],
        "max_ms": waits[-1],
    }


@contextlib.contextmanager
def _scratch_dir(workdir: Path) -> Iterator[Any]:
    counter = iter(range(1_000_000))

    @contextlib.contextmanager
    def fresh(name: str) -> Iterator[Path]:
        path = workdir / f"scratch-{name}-{next(counter)}.db"
        try:
            yield path
        finally:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}{suffix}")

    yield fresh


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def tables(data: dict[str, Any]) -> str:
    """The Markdown tables of a run."""
    levels = list(data["drain"])
    lines = [
        f"| W3 drain ({data['sizes']['drain']:,} no-op tasks, 1 worker, 32 slots), tasks/s "
        "(× raw apsw; × no limit) | " + " | ".join(f"`{d}`" for d in levels) + " |",
        "|---|" + "---:|" * len(levels),
    ]
    lines.append(
        "| raw apsw (same schema, FIFO lease statement) | "
        + " | ".join(_fmt(data["raw"][d]) for d in levels)
        + " |"
    )
    for variant in VARIANTS:
        cells = []
        for d in levels:
            value = data["drain"][d][variant]
            raw = data["raw"][d]
            base = data["drain"][d]["no limit"]
            cells.append(f"{_fmt(value)} ({value / raw:.2f}×; {value / base:.2f}×)")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| lease of 32 with the previous 32's completions, in-process, µs (× no limit) | "
        + " | ".join(f"`{d}`" for d in levels)
        + " |",
        "|---|" + "---:|" * len(levels),
    ]
    for variant in LEASE_VARIANTS:
        cells = []
        for d in levels:
            value = data["lease"][d][variant]
            base = data["lease"][d]["no limit"]
            cells.append(f"{_fmt(value)} ({value / base:.2f}×)")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"| a small tenant's {data['sizes']['small']} tasks behind {data['sizes']['big']:,} of "
        "another, wait (ms) | " + " | ".join(f"`{d}` p50 / p99" for d in levels) + " |",
        "|---|" + "---:|" * len(levels),
    ]
    for mode in ("fifo", "round-robin"):
        cells = [
            f"{_fmt(data['fairness'][d][mode]['p50_ms'])} / {_fmt(data['fairness'][d][mode]['p99_ms'])}"
            for d in levels
        ]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"load average: {data['meta']['load_average_at_start']} at start, "
        f"{data['meta']['load_average_at_end']} at end"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run, print, write the JSON."""
    parser = argparse.ArgumentParser(prog="python benchmarks/limits.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --quick 1)")
    parser.add_argument("--durability", choices=("normal", "full", "both"), default="both")
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 3)
    levels = ["normal", "full"] if args.durability == "both" else [args.durability]
    data: dict[str, Any] = {
        "sizes": sizes,
        "rounds": rounds,
        "raw": {},
        "drain": {},
        "lease": {},
        "fairness": {},
    }
    every: dict[str, Any] = {"raw": {}, "drain": {}, "lease": {}, "fairness": {}}
    with tempfile.TemporaryDirectory(prefix="hookqueue-limits-bench-") as tmp:
        workdir = Path(tmp)
        data["meta"] = machine_info(workdir)
        with _scratch_dir(workdir) as fresh:
            captured = capture_and_check(fresh)
        data["meta"]["raw_same_sql"] = captured["same_sql"]
        started = time.perf_counter()
        for d in levels:
            raws: list[float] = []
            drains: dict[str, list[float]] = {v: [] for v in VARIANTS}
            costs: dict[str, list[float]] = {v: [] for v in LEASE_VARIANTS}
            fair: dict[str, list[dict[str, float]]] = {"fifo": [], "round-robin": []}
            for r in range(rounds):
                raws.append(raw_drain(d, sizes, workdir, captured["lease_sql"]))
                order = list(VARIANTS)
                order = order[r % len(order) :] + order[: r % len(order)]
                for variant in order:
                    drains[variant].append(drain(d, sizes, workdir, variant))
                for variant in [v for v in order if v in costs]:
                    costs[variant].append(lease_cost(d, sizes, workdir, variant))
                fair["fifo"].append(fairness(d, sizes, workdir, False))
                fair["round-robin"].append(fairness(d, sizes, workdir, True))
                print(f"  {d}: round {r + 1} of {rounds} done", file=sys.stderr, flush=True)
            data["raw"][d] = statistics.median(raws)
            data["drain"][d] = {v: statistics.median(x) for v, x in drains.items()}
            data["lease"][d] = {v: statistics.median(x) for v, x in costs.items()}
            every["lease"][d] = costs
            data["fairness"][d] = {
                mode: {k: statistics.median(x[k] for x in runs) for k in runs[0]}
                for mode, runs in fair.items()
            }
            every["raw"][d] = raws
            every["drain"][d] = drains
            every["fairness"][d] = fair
        data["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
        load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
        data["meta"]["load_average_at_end"] = [round(x, 2) for x in load]
    data["rounds_figures"] = every
    print(tables(data))
    out = (
        Path(args.out)
        if args.out
        else RESULTS_DIR / f"limits-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1), encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
