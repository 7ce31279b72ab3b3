"""The worker's tests (``tests/core/test_worker.py``) on a PostgreSQL-backed queue, and the
multi-process ones (``tests/core/test_multiprocess.py``) on a real server.

The worker tests are the same functions, run with this module's fixtures: ``db_path`` is the
per-test database's URL and ``Queue`` in their module opens it with the PostgreSQL plugin
registered (they block entry points). Those that only make sense for a SQLite file (a SIGTERM
test of a file's worker, QueueDatabase) stay with the core; the commit-from-another-process
test has its PostgreSQL form below.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from _onpg import TESTS, PostgresQueue, db_path, load_again  # noqa: F401

from hookqueue import FakeClock, Queue, TaskStatus, WorkerEngine

_worker_tests = load_again("core/test_worker.py")

#: The worker tests that run here too, unchanged.
REUSED = (
    "test_async_and_sync_handlers_store_their_results",
    "test_a_worker_leases_only_the_task_types_it_has_handlers_for",
    "test_a_handler_removed_after_the_lease_fails_the_task_naming_the_registered_types",
    "test_base_exceptions_fail_the_task_not_the_worker",
    "test_a_result_that_is_not_json_fails_the_task_clearly",
    "test_timeouts_from_the_task_and_from_the_registration",
    "test_retry_hook_and_execute_wrapper_are_used",
    "test_delayed_tasks_wait_for_their_time",
    "test_cancelling_running_tasks",
    "test_cancellation_from_another_connection_arrives_with_the_heartbeat",
    "test_graceful_shutdown_releases_unfinished_leases_without_counting_them",
    "test_an_expired_lease_is_taken_over_and_counts_an_attempt",
    "test_heartbeats_keep_a_long_task_leased",
    "test_in_process_enqueue_wakes_an_idle_worker_at_once",
    "test_bad_worker_options",
    "test_a_worker_on_its_own_loop_leases_on_the_loop_only_while_no_task_runs",
    "test_a_worker_on_a_shared_loop_never_runs_the_store_on_it",
)
for _name in REUSED:
    globals()[_name] = getattr(_worker_tests, _name)


@pytest.fixture
def core_queue(postgres_url: str, clock: FakeClock) -> Iterator[Queue]:
    """The core alone (every entry point blocked) and the PostgreSQL store."""
    q = PostgresQueue(postgres_url, load_entrypoints=False, clock=clock, durability="normal")
    yield q
    q.close()


def test_a_commit_by_another_process_wakes_an_idle_worker(postgres_url: str) -> None:
    """An enqueue by another process (the CLI) reaches an idle worker through NOTIFY, long
    before its idle poll (60 s)."""
    q = PostgresQueue(postgres_url, load_entrypoints=False)
    picked = threading.Event()
    q.handlers.register_handler("t", lambda task: picked.set())
    worker = WorkerEngine(q, worker_id="w", idle_poll_interval=60)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert worker.wait_started(10)
        time.sleep(0.2)  # let it go idle
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "hookqueue", "enqueue", "t", "--db", postgres_url],
            check=True, capture_output=True, env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert picked.wait(20)
        assert time.monotonic() - started < 15
    finally:
        worker.stop()
        thread.join(20)
        q.close()


# -- several worker processes (tests/core/test_multiprocess.py on PostgreSQL) -------------------

HERE_CORE = TESTS / "core"


def _start_worker(
    url: str, log: Path, worker_id: str, *extra: str, stderr: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE_CORE),
        "HQ_TEST_LOG": str(log),
        # Entry points load (the PostgreSQL store is one); the others are not needed.
        "HOOKQUEUE_DISABLE_PLUGINS": "prometheus,opentelemetry,dashboard,metrics",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "hookqueue", "worker", "--db", url, "--app", "mp_app:registry",
         "--worker-id", worker_id, *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=stderr,
    )  # fmt: skip


def _runs(log: Path) -> list[tuple[int, int, int]]:
    if not log.exists():
        return []
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]  # type: ignore[misc]


@pytest.mark.slow
def test_three_worker_processes_run_every_task_exactly_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """Three worker processes share 600 tasks: every task runs, none twice, the work is
    shared."""
    log = tmp_path / "runs.log"
    q = PostgresQueue(postgres_url, load_entrypoints=False)
    tasks = q.enqueue_many([{"task_type": "work", "payload": {"sleep": 0.002}} for _ in range(600)])
    workers = [
        _start_worker(
            postgres_url, log, f"w{i}", "--until-idle", "--concurrency", "8", stderr=subprocess.PIPE
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


@pytest.mark.slow
def test_a_worker_killed_mid_task_loses_nothing(postgres_url: str, tmp_path: Path) -> None:
    """A worker SIGKILLed inside a task: its lease expires and another worker runs the
    task's second attempt; nothing else is lost."""
    log = tmp_path / "runs.log"
    q = PostgresQueue(postgres_url, load_entrypoints=False)
    victim_task = q.enqueue("slow", max_attempts=3)
    others = q.enqueue_many([{"task_type": "work"} for _ in range(50)])
    victim = _start_worker(
        postgres_url, log, "victim", "--lease-seconds", "1", "--concurrency", "1"
    )
    started = Path(str(log) + ".started")
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert started.exists(), "the victim never started the slow task"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    assert q.get(victim_task.id).status is TaskStatus.RUNNING, "its lease is still live"
    survivor = _start_worker(postgres_url, log, "survivor", "--lease-seconds", "1", "--until-idle")
    deadline = time.monotonic() + 60
    while q.counts()["completed"] < 51 and time.monotonic() < deadline:
        time.sleep(0.05)
        if survivor.poll() is not None:  # it went idle before the lease expired: start again
            survivor = _start_worker(
                postgres_url, log, "survivor", "--lease-seconds", "1", "--until-idle"
            )
    survivor.terminate()
    survivor.wait(timeout=30)
    recovered = q.get(victim_task.id)
    assert recovered.status is TaskStatus.COMPLETED, recovered
    assert recovered.attempts == 2 and recovered.result == "second attempt"
    assert all(q.get(t.id).status is TaskStatus.COMPLETED for t in others)
    assert [a for task_id, _, a in _runs(log) if task_id == victim_task.id] == [1, 2]
    q.close()
