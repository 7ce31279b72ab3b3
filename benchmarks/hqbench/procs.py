"""The processes the multi-process workloads spawn: workers and producers of each system.

Run as ``python -m hqbench.procs ROLE [options]`` (``run.py`` does this). The protocol on the
pipes is one JSON object per line:

1. the process sets itself up (imports, opens the database) and prints ``{"ready": ...}``;
2. drain workers and producers wait for the line ``go`` on stdin, so start-up is never timed
   and every process starts together; ``--mode run`` workers start working at once and work
   until SIGTERM (hookqueue's ``WorkerEngine.run()`` shuts down through its own handler);
3. at the end it writes what each handler saw to ``--log`` (``i t_enqueued_ns t_started_ns``
   per line; i is the task's sequence number from its payload) and prints ``{"result": ...}``.

Handlers record, they do no work: the figures are the queue's own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .common import latency_summary, rss_kib

Record = tuple[int, int, int]


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _wait_go() -> int:
    line = sys.stdin.readline().strip()
    if line != "go":
        raise SystemExit(f"expected 'go' on stdin, got {line!r}")
    return time.time_ns()


def _write_log(path: str | None, records: list[Record]) -> None:
    if not path:
        return
    with open(path, "w", encoding="ascii") as f:
        f.writelines(f"{i} {t} {s}\n" for i, t, s in records)


class _StopFlag:
    """Set by SIGTERM (for the loops that are not hookqueue's worker)."""

    def __init__(self) -> None:
        self.stop = False
        signal.signal(signal.SIGTERM, self._on)

    def _on(self, signum: int, frame: Any) -> None:
        self.stop = True


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


def hq_worker(args: argparse.Namespace) -> None:
    """A hookqueue ``WorkerEngine`` with every installed plugin, running an async no-op."""
    from hookqueue import Queue, WorkerEngine

    queue = Queue(args.db, durability=args.durability)
    records: list[Record] = []
    keep = not args.sample
    count = [0]

    async def noop(task: Any) -> None:
        started = time.time_ns()
        if keep:
            p = task.payload
            records.append((p["i"], p.get("t", 0), started))
        else:
            count[0] += 1

    queue.handlers.register_handler("noop", noop)
    # --concurrency 0: the worker's own default (what `hookqueue worker` runs with).
    options: dict[str, Any] = {"concurrency": args.concurrency} if args.concurrency else {}
    engine = WorkerEngine(queue, worker_id=f"bench-{os.getpid()}", **options)
    plugins = [
        {"name": s.name, "state": s.state, "reason": s.reason}
        for s in getattr(queue.pm, "hookqueue_status", [])
    ]
    samples: list[tuple[float, int, int]] = []
    sampler_stop = threading.Event()

    def sample() -> None:
        # RSS against progress, every 50 ms, from a thread of the worker process itself.
        while not sampler_stop.wait(0.05):
            samples.append((time.monotonic(), engine.stats.processed, rss_kib()))

    _say({"ready": True, "pid": os.getpid(), "plugins": plugins, "rss_kib": rss_kib()})
    if args.mode == "idle":
        start = _wait_go()
    else:
        start = time.time_ns()
    sampler = threading.Thread(target=sample, daemon=True) if args.sample else None
    if sampler is not None:
        samples.append((time.monotonic(), 0, rss_kib()))
        sampler.start()
    stats = engine.run_until_idle() if args.mode == "idle" else engine.run()
    end = time.time_ns()
    if sampler is not None:
        sampler_stop.set()
        sampler.join()
        samples.append((time.monotonic(), engine.stats.processed, rss_kib()))
    queue.close()
    _write_log(args.log, records)
    _say(
        {
            "result": {
                "start_ns": start,
                "end_ns": end,
                "completed": stats.completed,
                "failed": stats.failed,
                "lost_leases": stats.lost,
                "records": len(records) if keep else count[0],
                "samples": [[p, r] for _, p, r in samples],
            }
        }
    )


def raw_worker(args: argparse.Namespace) -> None:
    """The raw-apsw lease loop: settle the last batch and lease the next in one transaction,
    then wait for another connection's commit by polling ``PRAGMA data_version`` every 1 ms
    (what hookqueue's worker does)."""
    from .raw import RawQueue, open_conn

    flag = _StopFlag()
    conn = open_conn(args.db, args.durability)
    rq = RawQueue(conn, args.lease_sql, worker_id=f"raw-{os.getpid()}")
    rq.register_worker(os.getpid())
    records: list[Record] = []
    loads = json.loads
    _say({"ready": True, "pid": os.getpid()})
    start = _wait_go() if args.mode == "idle" else time.time_ns()
    done: list[int] = []
    while not flag.stop:
        version = conn.pragma("data_version")
        rows = rq.lease(args.batch, done=done)
        done = []
        for row in rows:
            started = time.time_ns()
            p = loads(row[3])
            records.append((p["i"], p.get("t", 0), started))
            done.append(row[0])
        if rows:
            continue
        if args.mode == "idle":
            break
        while not flag.stop and conn.pragma("data_version") == version:
            time.sleep(0.001)
    if done:
        rq.lease(0, done=done)
    end = time.time_ns()
    conn.close()
    _write_log(args.log, records)
    _say({"result": {"start_ns": start, "end_ns": end, "records": len(records)}})


def huey_worker(args: argparse.Namespace) -> None:
    """huey's worker loop without its idle back-off: ``dequeue`` then ``execute`` until empty
    (what a huey consumer worker does while there is work)."""
    from .peers import HUEY_LOG_DIR_ENV, make_huey

    os.environ[HUEY_LOG_DIR_ENV] = args.huey_log_dir
    huey = make_huey(args.db, args.durability)
    _say({"ready": True, "pid": os.getpid()})
    start = _wait_go()
    n = 0
    while True:
        task = huey.dequeue()
        if task is None:
            break
        huey.execute(task)
        n += 1
    end = time.time_ns()
    _say({"result": {"start_ns": start, "end_ns": end, "records": n}})


def huey_consumer(args: argparse.Namespace) -> None:
    """huey's own consumer with ``--workers`` worker processes and its default polling; works
    until SIGTERM."""
    from .peers import HUEY_LOG_DIR_ENV, make_huey

    os.environ[HUEY_LOG_DIR_ENV] = args.huey_log_dir
    huey = make_huey(args.db, args.durability)
    consumer = huey.create_consumer(workers=args.workers, worker_type="process")
    _say({"ready": True, "pid": os.getpid()})
    start = time.time_ns()
    consumer.run()
    _say({"result": {"start_ns": start, "end_ns": time.time_ns(), "records": 0}})


def lq_worker(args: argparse.Namespace) -> None:
    """litequeue has no worker: ``pop`` then ``done`` per message, polling every 1 ms when
    empty in ``--mode run``."""
    from .peers import make_litequeue

    flag = _StopFlag()
    q = make_litequeue(args.db, args.durability)
    records: list[Record] = []
    loads = json.loads
    _say({"ready": True, "pid": os.getpid()})
    start = _wait_go() if args.mode == "idle" else time.time_ns()
    while not flag.stop:
        message = q.pop()
        if message is None:
            if args.mode == "idle":
                break
            time.sleep(0.001)
            continue
        started = time.time_ns()
        p = loads(message.data)
        records.append((p["i"], p.get("t", 0), started))
        q.done(message.message_id)
    end = time.time_ns()
    q.close()
    _write_log(args.log, records)
    _say({"result": {"start_ns": start, "end_ns": end, "records": len(records)}})


# ---------------------------------------------------------------------------------------------
# Producers
# ---------------------------------------------------------------------------------------------


def _produce(
    args: argparse.Namespace,
    one: Callable[[int, int], Any],
    many: Callable[[list[tuple[int, int]]], Any] | None,
) -> None:
    """Enqueue ``--n`` tasks, paced at ``--rate`` per second (one at a time) or as fast as
    possible in batches of ``--batch`` (``many``), each payload stamped with its enqueue time."""
    _say({"ready": True, "pid": os.getpid()})
    start = _wait_go()
    n, batch, rate = args.n, args.batch, args.rate
    if rate > 0:
        interval = 1e9 / rate
        base = time.time_ns()
        for i in range(n):
            due = base + int(i * interval)
            delay = due - time.time_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            one(i, time.time_ns())
    elif batch > 1 and many is not None:
        for lo in range(0, n, batch):
            t = time.time_ns()
            many([(i, t) for i in range(lo, min(n, lo + batch))])
    else:
        # One call per task as fast as it goes (W4s): each call's duration is kept, so the
        # producer's latency with workers running can be set beside its latency alone.
        clock = time.perf_counter_ns
        lat = [0] * n
        for i in range(n):
            t0 = clock()
            one(i, time.time_ns())
            lat[i] = clock() - t0
        summary = latency_summary(lat)
        _say(
            {
                "result": {
                    "start_ns": start,
                    "end_ns": time.time_ns(),
                    "enqueue_p50_us": summary["p50_us"],
                    "enqueue_p99_us": summary["p99_us"],
                }
            }
        )
        return
    _say({"result": {"start_ns": start, "end_ns": time.time_ns()}})


def hq_producer(args: argparse.Namespace) -> None:
    """Enqueues through ``Queue.enqueue`` (paced) or ``Queue.enqueue_many`` (batches)."""
    from hookqueue import Queue

    queue = Queue(args.db, durability=args.durability)
    try:
        _produce(
            args,
            lambda i, t: queue.enqueue("noop", {"i": i, "t": t}),
            lambda items: queue.enqueue_many(
                [{"task_type": "noop", "payload": {"i": i, "t": t}} for i, t in items]
            ),
        )
    finally:
        queue.close()


def raw_producer(args: argparse.Namespace) -> None:
    """Inserts with ``SQL_INSERT_ID``: one per transaction (paced) or a batch per transaction."""
    from .raw import RawQueue, insert_params, now_us, open_conn

    conn = open_conn(args.db, args.durability)
    rq = RawQueue(conn, "")
    try:
        _produce(
            args,
            lambda i, t: rq.insert(insert_params(i, now_us(), t)),
            lambda items: rq.insert_many([insert_params(i, now_us(), t) for i, t in items]),
        )
    finally:
        conn.close()


def huey_producer(args: argparse.Namespace) -> None:
    """huey has no batch enqueue: one ``enqueue`` (one commit) per task."""
    from .peers import huey_enqueue, make_huey

    huey = make_huey(args.db, args.durability)
    _produce(args, lambda i, t: huey_enqueue(huey, i, t), None)


def lq_producer(args: argparse.Namespace) -> None:
    """``LiteQueue.put``: one per commit (paced) or a batch inside ``transaction()``."""
    from .peers import make_litequeue

    q = make_litequeue(args.db, args.durability)

    def many(items: list[tuple[int, int]]) -> None:
        with q.transaction():
            for i, t in items:
                q.put(f'{{"i":{i},"t":{t}}}')

    try:
        _produce(args, lambda i, t: q.put(f'{{"i":{i},"t":{t}}}'), many)
    finally:
        q.close()


ROLES: dict[str, Callable[[argparse.Namespace], None]] = {
    "hq-worker": hq_worker,
    "raw-worker": raw_worker,
    "huey-worker": huey_worker,
    "huey-consumer": huey_consumer,
    "lq-worker": lq_worker,
    "hq-producer": hq_producer,
    "raw-producer": raw_producer,
    "huey-producer": huey_producer,
    "lq-producer": lq_producer,
}


def main(argv: list[str] | None = None) -> None:
    """Parse the role and its options and run it."""
    parser = argparse.ArgumentParser(prog="python -m hqbench.procs")
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--db", required=True)
    parser.add_argument("--durability", choices=("normal", "full"), required=True)
    parser.add_argument("--mode", choices=("idle", "run"), default="idle")
    parser.add_argument("--log", default=None)
    parser.add_argument("--concurrency", type=int, default=32, help="0: the worker's default")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--lease-sql", default="")
    parser.add_argument("--huey-log-dir", default="")
    parser.add_argument("--sample", action="store_true")
    args = parser.parse_args(argv)
    ROLES[args.role](args)


if __name__ == "__main__":
    main()
