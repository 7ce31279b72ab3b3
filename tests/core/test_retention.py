"""Retention as a setting: ``HOOKQUEUE_RETENTION`` (read by ``Queue``), ``hookqueue prune``
with the environment's or an ``--app`` queue's retention, and workers that prune on their own
(``WorkerEngine(prune_interval=...)``, ``hookqueue worker --prune-every``)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _command import env as command_env
from _command import hookqueue_command

from hookqueue import FakeClock, Queue, QueueDatabase, ValidationError, WorkerEngine
from hookqueue.core.cli import build_parser
from hookqueue.core.supervisor import child_command


def _finished(db: Path, days_ago: float, n: int) -> list[int]:
    """``n`` tasks that completed ``days_ago`` days ago (by the real clock)."""
    clock = FakeClock(datetime.now(UTC) - timedelta(days=days_ago))
    with Queue(db, load_entrypoints=False, clock=clock) as q:
        q.handlers.register_handler("t", lambda task: None)
        tasks = q.enqueue_many([{"task_type": "t"} for _ in range(n)])
        WorkerEngine(q, worker_id="old").run_until_idle()
        return [t.id for t in tasks]


def _left(db: Path) -> int:
    with Queue(db, load_entrypoints=False) as q:
        return q.count(status="completed")


def test_queue_reads_hookqueue_retention(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Queue(db_path, load_entrypoints=False) as q:
        assert q.retention == timedelta(days=7)
    monkeypatch.setenv("HOOKQUEUE_RETENTION", "3d")
    with Queue(db_path, load_entrypoints=False) as q:
        assert q.retention == timedelta(days=3)
    with Queue(db_path, load_entrypoints=False, retention=60) as q:
        assert q.retention == timedelta(minutes=1), "an explicit retention wins"
    monkeypatch.setenv("HOOKQUEUE_RETENTION", "12h")
    with Queue(db_path, load_entrypoints=False) as q:
        assert q.retention == timedelta(hours=12)
    for bad in ("soon", "inf", "-1d"):
        monkeypatch.setenv("HOOKQUEUE_RETENTION", bad)
        with pytest.raises(ValidationError, match="HOOKQUEUE_RETENTION=") as info:
            Queue(db_path, load_entrypoints=False)
        assert "Fix: set it to how long finished tasks are kept" in str(info.value)


def test_prune_uses_the_retention_of_the_environment(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    _finished(db, days_ago=10, n=2)
    _finished(db, days_ago=2, n=3)
    _finished(db, days_ago=0, n=1)
    kept = hookqueue_command("prune", "--db", str(db), "--json")
    assert kept.returncode == 0 and '"removed": 2' in kept.stdout, "7 days by default"
    pruned = hookqueue_command(
        "prune", "--db", str(db), environ=command_env(HOOKQUEUE_RETENTION="1d")
    )
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith("removed 3 task(s) finished more than 1 day, 0:00:00 ago")
    assert _left(db) == 1
    refused = hookqueue_command(
        "prune", "--db", str(db), environ=command_env(HOOKQUEUE_RETENTION="a week")
    )
    assert refused.returncode == 2
    [line] = refused.stderr.splitlines()
    assert "HOOKQUEUE_RETENTION='a week': is not a duration" in line
    assert "Fix: set it to how long" in line and "3d" in line
    assert _left(db) == 1


RETENTION_APP = """
import os
from datetime import timedelta
from hookqueue import Queue, TaskHandlerRegistry
queue = Queue(os.environ["APP_DB"], retention=timedelta(hours=36))
registry = TaskHandlerRegistry()
"""


def test_prune_uses_the_retention_of_the_app_queue(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    _finished(db, days_ago=2, n=3)
    _finished(db, days_ago=1, n=2)
    (tmp_path / "retapp.py").write_text(RETENTION_APP)
    environ = command_env(APP_DB=str(db), HOOKQUEUE_PLUGIN_AUTOLOAD="0")
    result = hookqueue_command("prune", "--app", "retapp:queue", cwd=tmp_path, environ=environ)
    assert result.returncode == 0, result.stderr
    assert "removed 3 task(s) finished more than 1 day, 12:00:00 ago" in result.stdout
    assert _left(db) == 2
    # Another database, with the app's retention.
    other = tmp_path / "other.db"
    _finished(other, days_ago=2, n=4)
    result = hookqueue_command(
        "prune", "--app", "retapp:queue", "--db", str(other), cwd=tmp_path, environ=environ
    )
    assert result.returncode == 0 and "removed 4 task(s)" in result.stdout, result.stderr
    assert _left(db) == 2
    refused = hookqueue_command("prune", "--app", "retapp:registry", cwd=tmp_path, environ=environ)
    assert refused.returncode == 2 and "has no retention" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1


class _RecordingStore(QueueDatabase):
    """A store that notes the thread each prune runs on."""

    prune_threads: list[str]

    def prune(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.prune_threads.append(threading.current_thread().name)
        return super().prune(*args, **kwargs)


def test_a_worker_prunes_at_start_and_then_at_its_interval(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _RecordingStore(db_path)
    store.prune_threads = []
    clock = FakeClock()
    q = Queue(store, load_entrypoints=False, clock=clock, retention=timedelta(days=1))
    q.handlers.register_handler("t", lambda task: None)
    q.enqueue_many([{"task_type": "t"} for _ in range(3)])
    WorkerEngine(q, worker_id="first").run_until_idle()
    clock.advance(days=2)
    caplog.set_level(logging.INFO, logger="hookqueue.worker")

    async def main() -> None:
        worker = WorkerEngine(q, worker_id="pruner", prune_interval=0.2)
        run = asyncio.create_task(worker.run_async())
        loop_thread = threading.current_thread().name
        for _ in range(100):  # at start: the three old tasks go
            await asyncio.sleep(0.05)
            if q.count(status="completed") == 0:
                break
        assert q.count(status="completed") == 0
        # Two more finish now; they go at a later turn, once they are older than a day.
        q.enqueue_many([{"task_type": "t"} for _ in range(2)])
        for _ in range(100):
            await asyncio.sleep(0.05)
            if q.count(status="completed") == 2:
                break
        assert q.count(status="completed") == 2
        await asyncio.sleep(0.5)
        assert q.count(status="completed") == 2, "not older than the retention yet"
        clock.advance(days=2)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if q.count(status="completed") == 0:
                break
        worker.stop()
        await run
        assert q.count(status="completed") == 0
        assert store.prune_threads and loop_thread not in store.prune_threads, "off the loop"

    asyncio.run(main())
    counts = [r.pruned for r in caplog.records if hasattr(r, "pruned")]
    assert counts[0] == 3 and 2 in counts and sum(counts) == 5, counts
    assert "worker pruner pruned 3 task(s) finished more than 1 day, 0:00:00 ago" in caplog.text
    with pytest.raises(ValidationError, match="prune_interval"):
        WorkerEngine(q, prune_interval=0)
    q.close()


APP = """
from hookqueue import TaskHandlerRegistry
registry = TaskHandlerRegistry()
registry.register_handler("t", lambda task: None)
"""


def test_hookqueue_worker_prune_every(tmp_path: Path) -> None:
    """``--prune-every`` prunes with the queue's retention (here ``HOOKQUEUE_RETENTION``)
    as the worker starts, and logs how many went (``-v``)."""
    db = tmp_path / "q.db"
    _finished(db, days_ago=2, n=4)
    _finished(db, days_ago=0, n=1)
    (tmp_path / "pruneapp.py").write_text(APP)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookqueue", "worker", "--app", "pruneapp:registry",
         "--db", str(db), "--prune-every", "1h", "-v"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
        env=command_env(HOOKQUEUE_RETENTION="1d", HOOKQUEUE_PLUGIN_AUTOLOAD="0"),
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "pruned " in line and "task(s)" in line:
                break
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=60)[1]
    text = "".join(seen)
    assert "retention:   1 day, 0:00:00 (pruned every 1:00:00)" in text, text + rest
    assert "pruned 4 task(s) finished more than 1 day, 0:00:00 ago" in text, text + rest
    assert "next prune in 3600s" in text
    assert _left(db) == 1


def test_the_supervisor_lets_one_process_prune() -> None:
    args = build_parser().parse_args(
        ["worker", "--app", "m:q", "--processes", "3", "--prune-every", "90m"]
    )
    commands = [child_command(args, i) for i in range(3)]
    assert commands[0][commands[0].index("--prune-every") + 1] == "5400.0s"
    assert all("--prune-every" not in c for c in commands[1:])
    assert "--prune-every" in child_command(args, 0, restart=True), "its replacement too"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--prune-every", "0"])
