"""Crashes: worker and producer processes killed with SIGKILL at random and at chosen points.

hookqueue promises at-least-once execution: a task whose worker dies while running it runs
again once its lease expires (the attempt is counted), and no other task runs twice. A batch
given to ``enqueue_many`` is stored whole or not at all, whenever the process dies.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path

import pytest

from hookqueue import FakeClock, Queue, TaskStatus, WorkerEngine

from . import _faults
from .conftest import FaultRecord

pytestmark = pytest.mark.slow

#: Short leases so a dead worker's tasks come back within a second.
LEASE_SECONDS = 1.0
HEARTBEAT = 0.2
CONCURRENCY = 4


def _open(db: Path | str) -> Queue:
    """The queue at a file or a ``postgresql://`` URL (entry points blocked, the store's
    plugin registered where one is needed)."""
    plugins: list[object] = []
    if str(db).startswith("postgresql://"):
        import hookqueue.plugins.postgres as pg_plugin

        plugins.append(pg_plugin)
    return Queue(db, load_entrypoints=False, plugins=plugins)


def _start_worker(db: Path | str, logs: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _faults.child_command(
            "_procs.py", "worker", db, logs, LEASE_SECONDS, HEARTBEAT, CONCURRENCY
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _has_worked(logs: Path, pid: int) -> bool:
    log = logs / f"{pid}.log"
    return log.exists() and log.stat().st_size > 0


def _wait_all_terminal(db: Path | str, n: int, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    with _open(db) as q:
        while True:
            counts = q.counts()
            total = sum(counts.values())
            done = counts["completed"] + counts["failed"] + counts["cancelled"]
            if total == n and done == n:
                return counts
            assert time.monotonic() < deadline, f"tasks still unfinished after {timeout}s: {counts}"
            time.sleep(0.1)


def test_sigkill_workers_while_producer_enqueues(tmp_path: Path, fault: FaultRecord) -> None:
    """Every task ends completed, none is lost, and a task ran more than once only when the
    process running it was SIGKILLed (at-least-once); no attempt ever ran in two processes."""
    fault.describe("Worker processes SIGKILLed at random moments while a producer enqueues")
    _sigkill_workers(tmp_path / "queue.db", tmp_path, fault, n_workers=3)


def test_sigkill_workers_on_postgresql(
    postgres_dsn: str, tmp_path: Path, fault: FaultRecord
) -> None:
    """The same on PostgreSQL, with four worker processes: every task ends completed, none
    is lost, a task ran more than once only when the process running it was SIGKILLed, and
    no attempt ever ran in two processes."""
    from _services.pgurl import url_of

    fault.describe("4 worker processes on PostgreSQL SIGKILLed at random while a producer enqueues")
    _sigkill_workers(url_of(postgres_dsn), tmp_path, fault, n_workers=4)


def _sigkill_workers(db: Path | str, tmp_path: Path, fault: FaultRecord, n_workers: int) -> None:
    seed = 8
    rng = random.Random(seed)
    n_tasks, kills = 600, 8
    logs = tmp_path / "logs"
    logs.mkdir()
    _open(db).close()
    started = time.monotonic()
    producer = subprocess.Popen(
        _faults.child_command("_procs.py", "producer", db, n_tasks, seed),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers = [_start_worker(db, logs) for _ in range(n_workers)]
    killed: set[int] = set()
    try:
        for _ in range(kills):
            # Kill a worker that has begun working (on a loaded machine a new process takes
            # a while to start), at a random moment: inside a handler, between tasks, or
            # while it leases, settles or renews.
            deadline = time.monotonic() + 30
            while not (busy := [w for w in workers if _has_worked(logs, w.pid)]):
                assert time.monotonic() < deadline, "no worker began working within 30s"
                time.sleep(0.05)
            time.sleep(rng.uniform(0.05, 0.4))
            victim = rng.choice(busy)
            victim.send_signal(signal.SIGKILL)
            victim.communicate(timeout=10)
            killed.add(victim.pid)
            fault.inject()
            workers.remove(victim)
            workers.append(_start_worker(db, logs))
        out, err = producer.communicate(timeout=60)
        assert producer.returncode == 0, f"the producer failed:\n{out}\n{err}"
        counts = _wait_all_terminal(db, n_tasks, timeout=60)
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                w.kill()
                w.communicate()
        if producer.poll() is None:
            producer.kill()
            producer.communicate()
    elapsed = time.monotonic() - started
    for w in workers:
        assert w.returncode == 0, f"worker {w.pid} did not shut down cleanly: {w.returncode}"

    # Which attempt of which task ran in which process.
    starts: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for log in logs.glob("*.log"):
        for line in log.read_text().splitlines():
            kind, tid, attempt, pid = line.split()
            if kind == "start":
                starts[int(tid)].append((int(attempt), int(pid)))
    lost_by: dict[int, int] = {}
    for stats in logs.glob("*.stats.json"):
        data = json.loads(stats.read_text())
        lost_by[data["pid"]] = data["lost"]

    with _open(db) as q:
        tasks = q.list(limit=100_000)
        problems = q.check()
    assert problems == []
    assert counts["completed"] == n_tasks, counts
    assert sorted(t.payload["i"] for t in tasks) == list(range(n_tasks)), "a task was lost"
    assert all(t.status is TaskStatus.COMPLETED and t.result == t.payload["i"] for t in tasks)

    unexplained = []
    rerun_by_killed: Counter[int] = Counter()
    duplicate_runs = 0
    for t in tasks:
        runs = starts[t.id]
        assert runs, f"task {t.id} is completed but no process logged running it"
        attempts = Counter(a for a, _ in runs)
        doubled = [a for a, c in attempts.items() if c > 1]
        assert not doubled, f"task {t.id}: attempt(s) {doubled} ran in two processes: {runs}"
        assert max(a for a, _ in runs) == t.attempts, (
            f"task {t.id}: {runs} vs attempts={t.attempts}"
        )
        for attempt, pid in runs:
            if attempt == t.attempts:
                continue  # the attempt that completed it
            duplicate_runs += 1
            if pid in killed:
                rerun_by_killed[pid] += 1
            elif not lost_by.get(pid):
                unexplained.append((t.id, attempt, pid))
    assert unexplained == [], (
        f"tasks ran again although the process running them was neither killed nor reported a "
        f"lost lease: {unexplained}"
    )
    # A process holds at most `concurrency` leases, so it can leave at most that many tasks
    # to be run again when it dies.
    assert all(n <= CONCURRENCY for n in rerun_by_killed.values()), rerun_by_killed
    fault.figure("tasks", n_tasks)
    fault.figure("SIGKILLs", len(killed))
    fault.figure("kills that interrupted a running task", len(rerun_by_killed))
    fault.figure("tasks run twice", sum(1 for t in tasks if len(starts[t.id]) > 1))
    fault.figure("extra runs", duplicate_runs)
    fault.figure("max runs of one task", max(len(starts[t.id]) for t in tasks))
    fault.figure("leases lost by live workers", sum(lost_by.values()))
    fault.figure("lost tasks", n_tasks - len({t.payload["i"] for t in tasks}))
    fault.figure("seconds", round(elapsed, 1))


def _batch_rows(db: Path) -> Counter[int]:
    return Counter(
        b
        for (b,) in _faults.rows(
            db, "SELECT json_extract(payload, '$.batch') FROM tasks WHERE task_type = 'job'"
        )
    )


def test_producer_sigkilled_during_enqueue_many(tmp_path: Path, fault: FaultRecord) -> None:
    """A producer SIGKILLed at a random moment while it enqueues 300-task batches leaves
    every batch stored whole or not at all, and every batch it saw committed is stored."""
    fault.describe("Producer SIGKILLed at a random moment during enqueue_many")
    rng = random.Random(5)
    size, rounds = 300, 6
    stored_inflight = absent_inflight = partial = 0
    for r in range(rounds):
        db = tmp_path / f"round{r}.db"
        Queue(db, load_entrypoints=False).close()
        proc = subprocess.Popen(
            _faults.child_command("_procs.py", "batches", db, size),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        # Let it commit a few batches, then kill it at a random moment.
        lines = [proc.stdout.readline().strip() for _ in range(2 * rng.randint(1, 3) + 1)]
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # Read the rest through the same buffered reader: communicate() would read the pipe
        # directly and skip lines the reader has already buffered.
        rest = proc.stdout.read()
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()
        fault.inject()
        lines += rest.splitlines()
        committed = {int(line.split()[1]) for line in lines if line.startswith("committed")}
        begun = {int(line.split()[1]) for line in lines if line.startswith("begin")}
        stored = _batch_rows(db)
        partial += sum(1 for n in stored.values() if n != size)
        assert all(n == size for n in stored.values()), f"round {r}: a partial batch: {stored}"
        assert committed <= set(stored), (
            f"round {r}: committed batches missing: {committed - set(stored)}"
        )
        assert set(stored) <= begun
        inflight = begun - committed
        stored_inflight += len(inflight & set(stored))
        absent_inflight += len(inflight - set(stored))
        assert _faults.integrity(db) == []
    fault.figure("rounds", rounds)
    fault.figure("batch size", size)
    fault.figure("in-flight batch stored whole", stored_inflight)
    fault.figure("in-flight batch absent", absent_inflight)
    fault.figure("partial batches", partial)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed database with 40 queued tasks, copied for each crash point."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    with Queue(path, load_entrypoints=False) as q:
        q.enqueue_many([{"task_type": "job", "payload": {"n": i}} for i in range(40)])
    return path


def _crash_points(writes: int, syncs: int) -> list[tuple[str, int]]:
    chosen = sorted({1, 2, max(1, writes // 2), max(1, writes - 1), writes})
    return [("write", k) for k in chosen] + [("sync", k) for k in range(1, syncs + 1)]


@pytest.mark.parametrize("op", ["enqueue_many", "lease", "complete"])
def test_sigkill_inside_a_transaction(
    op: str, template_db: Path, tmp_path: Path, fault: FaultRecord
) -> None:
    """SIGKILL inside the transaction — at the first, second, middle and last write of the
    WAL and at the commit's fsync — leaves the operation done whole or not at all; the
    database is sound and the tasks carry on (a lease the dead process held is taken over
    once it expires)."""
    fault.describe(f"Process SIGKILLed at each write and sync of {op}")
    probe = tmp_path / "probe.db"
    shutil.copy(template_db, probe)
    counted = _faults.run_child("_vfs_scenarios.py", "count", op, probe)
    outcomes: Counter[str] = Counter()
    for where, k in _crash_points(counted["writes"], counted["syncs"]):
        db = tmp_path / f"{where}{k}.db"
        shutil.copy(template_db, db)
        _faults.run_child("_vfs_scenarios.py", "kill", op, db, where, k, expect_killed=True)
        fault.inject()
        assert _faults.integrity(db) == [], f"{op}: corrupt after a kill at {where} #{k}"
        statuses = Counter(s for (s,) in _faults.rows(db, "SELECT status FROM tasks"))
        total = sum(statuses.values())
        if op == "enqueue_many":
            assert total in (40, 240), f"kill at {where} #{k}: {total} tasks (a partial batch)"
            outcomes["batch stored" if total == 240 else "batch absent"] += 1
            continue
        assert total == 40
        if op == "lease":
            assert statuses["running"] in (0, 5), f"kill at {where} #{k}: {statuses}"
            outcomes["lease stored" if statuses["running"] else "lease absent"] += 1
        else:
            assert statuses["running"] + statuses["completed"] == 5, statuses
            assert statuses["completed"] in (0, 5), f"kill at {where} #{k}: {statuses}"
            outcomes["completion stored" if statuses["completed"] else "completion absent"] += 1
        # The dead process's leases expire and another worker finishes the tasks.
        later = FakeClock()
        later.set(later.now() + timedelta(days=3650))
        with Queue(db, load_entrypoints=False, clock=later) as q:
            q.handlers.register_handler("job", lambda task: task.payload["n"])
            WorkerEngine(q, worker_id="rescuer").run_until_idle()
            after = q.counts()
            assert q.check() == []
        # Without a retry policy a crashed attempt ends `failed` (the core alone retries
        # nothing); either way every task is finished and none is missing.
        assert after["queued"] == after["running"] == 0, after
        assert sum(after.values()) == 40
    fault.figure("write points", counted["writes"])
    fault.figure("sync points", counted["syncs"])
    for key, value in sorted(outcomes.items()):
        fault.figure(key, value)
