"""What periodic schedules cost: firing a tick, polling, and 1,000 schedules beside a drain.

Usage::

    python benchmarks/periodic.py              # both durability levels, 3 rounds
    python benchmarks/periodic.py --quick      # tiny sizes, 1 round (the smoke test)
    python benchmarks/periodic.py --durability full --rounds 5

Two parts, each on fresh database files, medians of alternating rounds:

- **Firing overhead**, in-process on a fake clock (nothing sleeps): the time of one
  scheduler pass (``Scheduler.run_once``: read the due schedules, plan, build each tick's task
  through the enqueue hooks, ``fire_ticks`` in one transaction, read the tasks back, send the
  events) per tick fired — one schedule firing one tick per pass, and 1,000 schedules due in
  the same pass — beside ``Queue.enqueue`` of one task (W1's call), and the cost of a pass
  that finds nothing due plus the look at the next tick (what an idle scheduler pays every
  half second).
- **W3 with schedules**: 10,000 pre-enqueued no-op tasks drained by one worker
  (``WorkerEngine(concurrency=32).run_until_idle()``, every installed plugin active, as W3)
  while its scheduler thread runs over no schedules, over 1,000 idle ones (next tick a day
  away), and over 1,000 firing every second (their tasks are of a type this worker has no
  handler for, so only the firing is paid for); and with the worker opted out
  (``scheduler=False``) as the baseline.

Prints a Markdown table per part and writes the JSON (medians and every round) to
``benchmarks/results/periodic-<time>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hqbench.common import machine_info  # noqa: E402

from hookqueue import FakeClock, Queue, WorkerEngine  # noqa: E402
from hookqueue.plugins.periodic import Schedule, Scheduler  # noqa: E402
from hookqueue.plugins.periodic.scheduler import definition  # noqa: E402

RESULTS_DIR = HERE / "results"
FULL = {"ticks": 2000, "wide": 1000, "wide_passes": 5, "idle": 2000, "drain": 10_000, "many": 1000}
QUICK = {"ticks": 100, "wide": 50, "wide_passes": 2, "idle": 100, "drain": 500, "many": 50}
#: The drain's variants: name -> (scheduler on?, schedules and how they tick).
DRAIN_VARIANTS = {
    "scheduler off": (False, None),
    "no schedules": (True, None),
    "1,000 idle schedules": (True, "@daily"),
    "1,000 schedules firing every second": (True, "every 1s"),
}


def _queue(path: Path, durability: str, clock: Any = None) -> Queue:
    return Queue(path, durability=durability, clock=clock)


def _store(queue: Queue, schedules: list[Schedule]) -> None:
    now = queue.clock.now_us()
    queue.db.upsert_schedules([definition(s, now, source="added") for s in schedules], now)


def firing(durability: str, sizes: dict[str, int], workdir: Path) -> dict[str, float]:
    """One round of the firing part: microseconds per tick, per enqueue, per idle pass."""
    out: dict[str, float] = {}
    clock = FakeClock()
    with _queue(workdir / f"one-{durability}.db", durability, clock) as q:
        q.handlers.register_handler("job", lambda t: None)
        _store(q, [Schedule("every 1s", name="one", task_type="job", misfire="all")])
        scheduler = Scheduler(q)
        n = sizes["ticks"]
        elapsed = 0.0
        for _ in range(n):
            clock.advance(1)
            t0 = time.perf_counter()
            report = scheduler.run_once()
            elapsed += time.perf_counter() - t0
            assert len(report.fired) == 1
        out["one_schedule_us_per_tick"] = elapsed / n * 1e6
        t0 = time.perf_counter()
        for i in range(n):
            q.enqueue("job", {"i": i})
        out["enqueue_us"] = (time.perf_counter() - t0) / n * 1e6
        m = sizes["idle"]
        t0 = time.perf_counter()
        for _ in range(m):
            scheduler.run_once()
            q.db.next_schedule_tick_us()
        out["idle_pass_us"] = (time.perf_counter() - t0) / m * 1e6
    clock = FakeClock()
    with _queue(workdir / f"wide-{durability}.db", durability, clock) as q:
        q.handlers.register_handler("job", lambda t: None)
        wide = sizes["wide"]
        _store(
            q,
            [Schedule("every 1m", name=f"s{i:04d}", task_type="job") for i in range(wide)],
        )
        scheduler = Scheduler(q)
        elapsed = 0.0
        fired = 0
        for _ in range(sizes["wide_passes"]):
            clock.advance(60)
            t0 = time.perf_counter()
            fired += len(scheduler.run_once().fired)
            elapsed += time.perf_counter() - t0
        assert fired == wide * sizes["wide_passes"]
        out["wide_us_per_tick"] = elapsed / fired * 1e6
        out["wide_ms_per_pass"] = elapsed / sizes["wide_passes"] * 1e3
        # The idle pass again, now with this many schedules stored (none due).
        m = sizes["idle"]
        t0 = time.perf_counter()
        for _ in range(m):
            scheduler.run_once()
            q.db.next_schedule_tick_us()
        out["idle_pass_wide_us"] = (time.perf_counter() - t0) / m * 1e6
    return out


def drain(durability: str, sizes: dict[str, int], workdir: Path, variant: str) -> float:
    """One drain of ``sizes["drain"]`` no-op tasks under ``variant``: tasks/s."""
    on, when = DRAIN_VARIANTS[variant]
    path = workdir / f"drain-{durability}-{abs(hash(variant))}-{time.monotonic_ns()}.db"
    with _queue(path, durability) as q:

        async def noop(task: Any) -> None:
            return None

        q.handlers.register_handler("noop", noop)
        if when is not None:
            _store(
                q,
                [Schedule(when, name=f"s{i:04d}", task_type="tick") for i in range(sizes["many"])],
            )
        n = sizes["drain"]
        for start in range(0, n, 1000):
            q.enqueue_many(
                [
                    {"task_type": "noop", "payload": {"i": i}}
                    for i in range(start, min(n, start + 1000))
                ]
            )
        worker = WorkerEngine(q, worker_id="bench", concurrency=32, scheduler=on)
        t0 = time.perf_counter()
        stats = worker.run_until_idle()
        seconds = time.perf_counter() - t0
        assert stats.completed == n, stats
    return n / seconds


def _median(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def tables(data: dict[str, Any]) -> str:
    """The two Markdown tables of a run."""
    levels = list(data["firing"])
    rows = [
        ("enqueue of one task (`Queue.enqueue`, W1's call), µs", "enqueue_us"),
        ("one schedule, one tick per pass, µs per tick", "one_schedule_us_per_tick"),
        (f"{data['sizes']['wide']:,} schedules due in one pass, µs per tick", "wide_us_per_tick"),
        (f"{data['sizes']['wide']:,} schedules due in one pass, ms per pass", "wide_ms_per_pass"),
        ("a pass with nothing due, plus the look at the next tick, µs", "idle_pass_us"),
        (f"the same with {data['sizes']['wide']:,} schedules stored, µs", "idle_pass_wide_us"),
    ]
    lines = ["| firing | " + " | ".join(f"`{d}`" for d in levels) + " |"]
    lines.append("|---|" + "---:|" * len(levels))
    for label, key in rows:
        lines.append(
            f"| {label} | " + " | ".join(_fmt(data["firing"][d][key]) for d in levels) + " |"
        )
    lines += ["", f"| W3 drain ({data['sizes']['drain']:,} no-op tasks), tasks/s | "]
    lines[-1] += " | ".join(f"`{d}`" for d in levels) + " |"
    lines.append("|---|" + "---:|" * len(levels))
    for variant in DRAIN_VARIANTS:
        cells = []
        for d in levels:
            value = data["drain"][d][variant]
            base = data["drain"][d]["scheduler off"]
            cells.append(f"{_fmt(value)} ({value / base:.2f}×)")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run, print, write the JSON."""
    parser = argparse.ArgumentParser(prog="python benchmarks/periodic.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --quick 1)")
    parser.add_argument("--durability", choices=("normal", "full", "both"), default="both")
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 3)
    levels = ["normal", "full"] if args.durability == "both" else [args.durability]
    data: dict[str, Any] = {"sizes": sizes, "rounds": rounds, "firing": {}, "drain": {}}
    every: dict[str, Any] = {"firing": {}, "drain": {}}
    with tempfile.TemporaryDirectory(prefix="hookqueue-periodic-bench-") as tmp:
        workdir = Path(tmp)
        data["meta"] = machine_info(workdir)
        started = time.perf_counter()
        for d in levels:
            fired: list[dict[str, float]] = []
            drains: dict[str, list[float]] = {v: [] for v in DRAIN_VARIANTS}
            for r in range(rounds):
                fired.append(firing(d, sizes, workdir / f"r{r}"))
                order = list(DRAIN_VARIANTS)
                order = order[r % len(order) :] + order[: r % len(order)]
                for variant in order:
                    drains[variant].append(drain(d, sizes, workdir, variant))
                print(f"  {d}: round {r + 1} of {rounds} done", file=sys.stderr, flush=True)
            data["firing"][d] = _median(fired)
            data["drain"][d] = {v: statistics.median(x) for v, x in drains.items()}
            every["firing"][d] = fired
            every["drain"][d] = drains
        data["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    data["rounds_figures"] = every
    print(tables(data))
    out = (
        Path(args.out)
        if args.out
        else RESULTS_DIR / f"periodic-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1), encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
