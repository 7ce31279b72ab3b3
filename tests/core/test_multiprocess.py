"""Several worker processes on one database file: everything runs, nothing runs twice while
its lease is live, and a worker killed with SIGKILL mid-task loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from hookqueue import Queue, TaskStatus

HERE = Path(__file__).resolve().parent


def _start_worker(
    db: Path, log: Path, worker_id: str, *extra: str, stderr: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE),
        "HQ_TEST_LOG": str(log),
        "HOOKQUEUE_PLUGIN_AUTOLOAD": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "hookqueue", "worker", "--db", str(db), "--app", "mp_app:registry",
         "--worker-id", worker_id, *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=stderr,
    )  # fmt: skip


def _runs(log: Path) -> list[tuple[int, int, int]]:
    if not log.exists():
        return []
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]  # type: ignore[misc]


def test_three_worker_processes_run_every_task_exactly_once(tmp_path: Path) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = Queue(db, load_entrypoints=False)
    tasks = q.enqueue_many([{"task_type": "work", "payload": {"sleep": 0.002}} for _ in range(600)])
    workers = [
        _start_worker(
            db, log, f"w{i}", "--until-idle", "--concurrency", "8", stderr=subprocess.PIPE
        )
        for i in range(3)
    ]
    for w in workers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err.decode()
    runs = _runs(log)
    per_task = Counter(task_id for task_id, _, _ in runs)
    assert set(per_task) == {t.id for t in tasks}, "every task ran"
    assert max(per_task.values()) == 1, "no task ran twice"
    assert len({pid for _, pid, _ in runs}) >= 2, "the work was shared between processes"
    assert q.counts()["completed"] == 600
    assert q.check() == []
    q.close()


def test_a_worker_killed_mid_task_loses_nothing(tmp_path: Path) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = Queue(db, load_entrypoints=False)
    victim_task = q.enqueue("slow", max_attempts=3)
    others = q.enqueue_many([{"task_type": "work"} for _ in range(50)])
    victim = _start_worker(db, log, "victim", "--lease-seconds", "1", "--concurrency", "1")
    started = Path(str(log) + ".started")
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert started.exists(), "the victim never started the slow task"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    assert q.get(victim_task.id).status is TaskStatus.RUNNING, "its lease is still live"

    survivor = _start_worker(db, log, "survivor", "--lease-seconds", "1", "--until-idle")
    deadline = time.monotonic() + 60
    while q.counts()["completed"] < 51 and time.monotonic() < deadline:
        time.sleep(0.05)
        if survivor.poll() is not None:  # it went idle before the lease expired: start again
            survivor = _start_worker(db, log, "survivor", "--lease-seconds", "1", "--until-idle")
    survivor.terminate()
    survivor.wait(timeout=30)
    recovered = q.get(victim_task.id)
    assert recovered.status is TaskStatus.COMPLETED, recovered
    assert recovered.attempts == 2 and recovered.result == "second attempt"
    assert all(q.get(t.id).status is TaskStatus.COMPLETED for t in others)
    attempts = [a for task_id, _, a in _runs(log) if task_id == victim_task.id]
    assert attempts == [1, 2]
    q.close()
