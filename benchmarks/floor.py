"""How fast could ``enqueue`` and ``enqueue_many`` be at all, with their API as it is?

The "floor" does only what the API cannot do without: per task, a ``NewTask`` from the
caller's arguments, its payload encoded as JSON, the ``INSERT`` (W1: in its own
transaction; W2: 1,000 per transaction), and the ``Task`` returned to the caller — no hook
chain, no validation, no event. It runs beside raw apsw (the suite's baseline: the same
``INSERT``, JSON built before timing) and beside hookqueue itself, with the core alone and
as installed, in alternating runs; the table gives medians and ratios to raw.

What this answers: when the floor itself is below a target's ratio to raw, no change to
hookqueue's plugins or core can meet that target while the API returns ``Task`` objects and
encodes JSON in Python (``docs/performance.md``, "Where the time goes").

Usage::

    python benchmarks/floor.py              # W1 and W2 at durability=normal, 5 rounds
    python benchmarks/floor.py --quick      # tiny sizes, 1 round (the smoke test)
    python benchmarks/floor.py --durability full
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hqbench.raw import RawQueue, create_schema, insert_params, now_us, open_conn  # noqa: E402

from hookqueue import Queue  # noqa: E402
from hookqueue.core.encoding import _ENCODE  # noqa: E402
from hookqueue.core.models import NewTask, Task  # noqa: E402
from hookqueue.core.store.statements import SQL_INSERT_ID  # noqa: E402

VARIANTS = ("raw", "floor", "core alone", "as installed")


def _floor_insert(conn: Any, specs: list[dict[str, Any]], now: int) -> list[Task]:
    """The floor's work for ``specs`` in one transaction: NewTask, JSON, INSERT, Task."""
    out = []
    with conn:
        for spec in specs:
            nt = NewTask(task_type=spec["task_type"], payload=spec["payload"])
            payload_json = _ENCODE(nt.payload)
            conn.execute(
                SQL_INSERT_ID,
                (nt.queue, nt.task_type, payload_json, nt.priority, 1, now, None, None, None, now),
            )
            out.append(
                Task._new_queued(
                    id=conn.last_insert_rowid(),
                    queue=nt.queue,
                    task_type=nt.task_type,
                    payload=dict(nt.payload),
                    priority=nt.priority,
                    max_attempts=1,
                    run_after_us=now,
                    created_at_us=now,
                    idempotency_key=None,
                    timeout=None,
                    headers={},
                )
            )
    return out


def _make(
    variant: str, path: Path, durability: str, batch: int
) -> tuple[Callable[..., Any], Any, Any]:
    """(insert a batch of specs, whether it takes raw parameters, close). hookqueue runs
    ``enqueue`` for batches of one (W1), ``enqueue_many`` otherwise (W2)."""
    if variant == "raw":
        conn = open_conn(path, durability)
        create_schema(conn)
        rq = RawQueue(conn, "")
        return rq.insert_many, True, conn.close
    q = Queue(path, durability=durability, load_entrypoints=variant == "as installed")
    if variant == "floor":
        conn = q.db._cx.conn()
        return (lambda specs: _floor_insert(conn, specs, q.clock.now_us())), None, q.close
    if batch == 1:
        return (lambda specs: q.enqueue(**specs[0])), None, q.close
    return q.enqueue_many, None, q.close


def one_run(variant: str, durability: str, n: int, batch: int) -> float:
    """Tasks per second for ``n`` tasks in transactions of ``batch`` on a fresh file."""
    with tempfile.TemporaryDirectory() as tmp:
        insert, raw, close = _make(variant, Path(tmp) / "q.db", durability, batch)
        try:
            if raw:
                t = now_us()
                items: list[Any] = [insert_params(i, t) for i in range(n)]
            else:
                items = [{"task_type": "noop", "payload": {"i": i}} for i in range(n)]
            insert(items[:batch])  # warm: statements prepared, first pages written
            began = time.perf_counter()
            for lo in range(0, n, batch):
                insert(items[lo : lo + batch])
            return n / (time.perf_counter() - began)
        finally:
            close()


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table, write the JSON."""
    parser = argparse.ArgumentParser(prog="python benchmarks/floor.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (5)")
    parser.add_argument("--durability", choices=("normal", "full"), default="normal")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    # (name, tasks, tasks per transaction): W1 is one enqueue per transaction.
    workloads = [
        ("W1", 200 if args.quick else 5_000, 1),
        ("W2", 2_000 if args.quick else 100_000, 1_000),
    ]
    runs: dict[str, dict[str, list[float]]] = {
        w: {v: [] for v in VARIANTS} for w, _, _ in workloads
    }
    for _ in range(rounds):
        for name, n, batch in workloads:
            for variant in VARIANTS:  # alternating, so a noisy moment touches every variant
                runs[name][variant].append(one_run(variant, args.durability, n, batch))
    medians = {w: {v: statistics.median(r) for v, r in by.items()} for w, by in runs.items()}
    print(f"### floor: durability={args.durability}, medians of {rounds} round(s), tasks/s\n")
    print("| workload | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---:|" * len(VARIANTS))
    for name, by in medians.items():
        raw = by["raw"]
        cells = [f"{by[v]:,.0f} ({by[v] / raw:.2f}×)" for v in VARIANTS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    out = args.out or HERE / "results" / f"floor-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"durability": args.durability, "rounds": rounds, "medians": medians, "runs": runs},
            indent=2,
        )
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
