"""The commit watcher sleeps while nobody writes the database (Linux inotify) and wakes when
another process writes its log; elsewhere it polls."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from hookqueue import Queue, QueueDatabase, WorkerEngine
from hookqueue.core.store import watch as watch_module
from hookqueue.core.store.walwatch import WalActivity

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


@linux_only
def test_wal_activity_reports_log_writes_by_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with Queue(path, load_entrypoints=False, durability="normal") as q:
        activity = WalActivity.open(path)
        assert activity is not None
        try:
            assert activity.wait(0) is False  # nothing written since the watch began
            with QueueDatabase(path) as other:  # another connection, as another process
                Queue(other, load_entrypoints=False).enqueue("job")
            began = time.monotonic()
            assert activity.wait(5) is True
            assert time.monotonic() - began < 1
            assert activity.wait(0) is False  # the events were consumed
            # Writes to other files of the directory are not the log's.
            (tmp_path / "unrelated.txt").write_text("x")
            assert activity.wait(0.05) is False
        finally:
            activity.close()
        assert q.counts()["queued"] == 1


@linux_only
def test_wal_activity_follows_a_symlinked_database_to_its_log(tmp_path: Path) -> None:
    """SQLite keeps the log beside the symlink's target, so that is what is watched."""
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    target = tmp_path / "real" / "q.db"
    Queue(target, load_entrypoints=False).close()
    link = tmp_path / "links" / "q.db"
    link.symlink_to(target)
    with Queue(link, load_entrypoints=False, durability="normal") as q:
        activity = WalActivity.open(link)
        assert activity is not None
        try:
            q.enqueue("job")
            assert activity.wait(5) is True
        finally:
            activity.close()


@linux_only
def test_wal_activity_wait_is_interrupted_from_another_thread(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    Queue(path, load_entrypoints=False).close()
    activity = WalActivity.open(path)
    assert activity is not None
    results: list[tuple[bool, float]] = []

    def waiter() -> None:
        began = time.monotonic()
        results.append((activity.wait(30), time.monotonic() - began))

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)
    activity.interrupt()
    thread.join(5)
    assert results and results[0][0] is False and results[0][1] < 5
    activity.close()
    assert activity.wait(0) is False  # closed: never blocks, never reports


def _count_polls(db_path: Path, monkeypatch: pytest.MonkeyPatch, **options: object) -> int:
    """How many times an idle worker's commit watcher reads data_version in 0.6 s."""
    polls = 0
    original = QueueDatabase.data_version

    def counting(self: QueueDatabase) -> int:
        nonlocal polls
        if threading.current_thread().name.startswith("hookqueue-watch"):
            polls += 1
        return original(self)

    monkeypatch.setattr(QueueDatabase, "data_version", counting)
    with Queue(db_path, load_entrypoints=False, durability="normal") as q:
        # Long leases: no heartbeat write (which would wake the watcher) in the window.
        worker = WorkerEngine(q, worker_id="idle", lease_seconds=60, **options)  # type: ignore[arg-type]
        thread = threading.Thread(target=worker.run)
        thread.start()
        assert worker.wait_started(10)
        time.sleep(0.2)  # past the start-up writes and the active span after them
        before = polls
        time.sleep(0.6)
        idle_polls = polls - before
        worker.stop()
        thread.join(10)
    return idle_polls


@linux_only
def test_an_idle_worker_sleeps_instead_of_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With inotify, an idle worker looks about every WAL_QUIET_CHECK (50 ms), not every
    wake_poll_interval (1 ms); without it (or switched off), it polls all the time."""
    sleeping = _count_polls(tmp_path / "a.db", monkeypatch)
    polling = _count_polls(tmp_path / "b.db", monkeypatch, wake_on_wal_writes=False)
    quiet_checks = 0.6 / watch_module.WAL_QUIET_CHECK
    assert sleeping <= 2 * quiet_checks, sleeping
    assert polling > 5 * quiet_checks, polling


@linux_only
def test_a_sleeping_worker_wakes_for_another_connections_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the active span the watcher sleeps on the log; a commit by another connection
    (as by another process) wakes it through the log's write event — the quiet check is
    set to 5 s here, so only the event can explain a pickup within a second."""
    monkeypatch.setattr(watch_module, "WAL_QUIET_CHECK", 5.0)
    path = tmp_path / "q.db"
    with Queue(path, load_entrypoints=False, durability="normal") as q:
        picked = threading.Event()
        q.handlers.register_handler("t", lambda task: picked.set())
        worker = WorkerEngine(q, worker_id="w", idle_poll_interval=60)
        thread = threading.Thread(target=worker.run)
        thread.start()
        assert worker.wait_started(10)
        time.sleep(0.3)  # asleep on the log by now
        delays = []
        for _ in range(3):
            picked.clear()
            with QueueDatabase(path) as other:
                began = time.monotonic()
                Queue(other, load_entrypoints=False).enqueue("t")
            assert picked.wait(10)
            delays.append(time.monotonic() - began)
            time.sleep(0.2)
        worker.stop()
        thread.join(10)
    assert sorted(delays)[1] < 1.0, delays
