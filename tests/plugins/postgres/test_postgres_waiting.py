"""``Queue.wait`` on the PostgreSQL store, on a real server: woken by the end of the task it
waits for (``task_waits`` and ``notify_waited``, see ``hookqueue/plugins/postgres/watch.py``),
not by the waiter thread's safety look — which these tests set to ten minutes, so that only
a notification can end a wait before its timeout."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hookqueue.core.waiting as waiting
from hookqueue import Queue, TaskNotFound, TaskStatus, TaskWasCancelled
from hookqueue.core.storage import ChangeWatcher, Settlement
from hookqueue.plugins.postgres import PostgresStore

APP = """
import time
from hookqueue import TaskHandlerRegistry
registry = TaskHandlerRegistry()

@registry.handler("echo")
def echo(task):
    time.sleep((task.payload or {}).get("sleep", 0))
    return task.payload
"""

#: A wait's timeout in these tests: far below the safety look, far above a notification.
TIMEOUT = 60.0
#: A backend pid no session has (pids are at most 2**22 on Linux).
DEAD_PID = 2**40


@pytest.fixture
def no_safety_look(monkeypatch: pytest.MonkeyPatch) -> None:
    """The waiter thread looks only when its watcher reports a change (or after 600 s)."""
    monkeypatch.setattr(waiting, "SAFETY_LOOK", 600.0)


@pytest.fixture
def worker_process(postgres_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``hookqueue worker`` in a process of its own, with an ``echo`` handler."""
    (tmp_path / "waitapp.py").write_text(APP)
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "HOOKQUEUE_DISABLE_PLUGINS": "prometheus,opentelemetry,dashboard,metrics",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookqueue", "worker", "--db", postgres_url,
         "--app", "waitapp:registry", "--worker-id", "pw", "-q"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck worker
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _waits(dsn: str, schema: str = "hookqueue") -> set[tuple[int, int]]:
    """The rows of ``task_waits``: ``(task_id, waiter pid)``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(f'SELECT task_id, waiter FROM "{schema}".task_waits').fetchall()
    return {(int(t), int(w)) for t, w in rows}


def _watcher(store: PostgresStore, ids: list[int]) -> ChangeWatcher:
    watcher = store.watch_changes()
    watcher.watch_tasks(ids)
    for _ in range(50):  # drained of what it saw while it was made
        if not watcher.wait(0.05):
            return watcher
    pytest.fail("the watcher reports a change on every wait while nothing is written")


def _running(store: PostgresStore, n: int = 1) -> list[int]:
    from hookqueue.contrib.contracts.store import LEASE_US, T0, make_row

    now = T0
    rows = store.insert([make_row(now) for _ in range(n)], now, claim=("w1", now + LEASE_US))
    return [tid for tid, _ in rows]


def _complete(store: PostgresStore, tid: int) -> None:
    from hookqueue.contrib.contracts.store import SECOND, T0

    settled = store.settle("w1", [Settlement(task_id=tid, kind="complete")], T0 + SECOND)
    assert [t.status for _, t in settled] == [TaskStatus.COMPLETED]


@pytest.mark.usefixtures("no_safety_look")
def test_a_wait_is_woken_by_a_worker_in_another_process(
    postgres_url: str, worker_process: subprocess.Popen[bytes]
) -> None:
    """``wait``, ``wait_async`` and ``handle().result`` return once a worker process
    completed the task — with the safety look at 600 s, only its notification can end them
    within the timeout."""
    with Queue(postgres_url) as queue:
        for n in range(3):
            task = queue.enqueue("echo", {"n": n})
            assert queue.wait(task.id, timeout=TIMEOUT).result == {"n": n}
        handle = queue.handle(queue.enqueue("echo", {"sleep": 0.2}))
        assert handle.result(timeout=TIMEOUT) == {"sleep": 0.2}

        async def waits() -> list[Any]:
            tasks = [await queue.enqueue_async("echo", {"n": n}) for n in range(20)]
            done = await asyncio.gather(*(queue.wait_async(t.id, timeout=TIMEOUT) for t in tasks))
            return [t.result for t in done]

        assert asyncio.run(waits()) == [{"n": n} for n in range(20)]
    assert worker_process.poll() is None


@pytest.mark.usefixtures("no_safety_look")
def test_a_bulk_cancel_or_delete_ends_the_wait(postgres_url: str) -> None:
    """A queued task cancelled by a filter, or deleted, wakes its waiter (no worker runs)."""
    with Queue(postgres_url) as queue, Queue(postgres_url) as other:
        task = queue.enqueue("echo", {"n": 1})
        timer = threading.Timer(0.2, other.cancel_matching, kwargs={"task_type": "echo"})
        timer.start()
        with pytest.raises(TaskWasCancelled):
            queue.wait(task.id, timeout=TIMEOUT)
        timer.join()
        gone = queue.enqueue("echo", {"n": 2})
        timer = threading.Timer(0.2, other.delete_matching, kwargs={"ids": [gone.id]})
        timer.start()
        with pytest.raises(TaskNotFound):
            queue.wait(gone.id, timeout=TIMEOUT)
        timer.join()


def test_only_the_end_of_a_watched_task_wakes_the_watcher(postgres_url: str) -> None:
    """Once watching tasks, the watcher no longer wakes for new work, nor for the end of a
    task it does not watch; the end of one it watches wakes it."""
    with PostgresStore(postgres_url) as store:
        watched, unwatched = _running(store, 2)
        watcher = _watcher(store, [watched])
        try:
            store.insert_one(_row(), 10)
            assert watcher.wait(0.3) is False
            _complete(store, unwatched)
            assert watcher.wait(0.3) is False
            _complete(store, watched)
            assert watcher.wait(10.0) is True
        finally:
            watcher.close()


def test_each_waiter_is_woken_by_its_own_tasks_only(postgres_url: str) -> None:
    """Two waiting sessions: a task's end wakes the one waiting for it, not the other."""
    with PostgresStore(postgres_url) as store:
        a, b = _running(store, 2)
        for_a, for_b = _watcher(store, [a]), _watcher(store, [b])
        try:
            _complete(store, a)
            assert for_a.wait(10.0) is True
            assert for_b.wait(0.3) is False
            _complete(store, b)
            assert for_b.wait(10.0) is True
        finally:
            for_a.close()
            for_b.close()


def test_registrations_are_replaced_cleared_and_swept(postgres_url: str) -> None:
    """``watch_tasks`` replaces the session's rows; ``close`` deletes them; rows of a
    session that no longer exists are swept by the next registration."""
    with PostgresStore(postgres_url) as store:
        ids = _running(store, 3)
        watcher = store.watch_changes()
        try:
            watcher.watch_tasks(ids[:2])
            [pid] = {w for _, w in _waits(postgres_url)}
            assert _waits(postgres_url) == {(ids[0], pid), (ids[1], pid)}
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO hookqueue.task_waits (task_id, waiter) VALUES (%s, %s)",
                    [ids[0], DEAD_PID],
                )
            watcher.watch_tasks(ids[1:])
            assert _waits(postgres_url) == {(ids[1], pid), (ids[2], pid)}
            watcher.watch_tasks([])
            assert _waits(postgres_url) == set()
            watcher.watch_tasks(ids[:1])
            assert _waits(postgres_url) == {(ids[0], pid)}
        finally:
            watcher.close()
        assert _waits(postgres_url) == set()


def test_a_watcher_registers_again_after_its_session_was_terminated(postgres_url: str) -> None:
    """``pg_terminate_backend`` of the listening session: the next wait reconnects (and
    reports a change), registers the same tasks under the new session, and the end of one
    wakes it."""
    with PostgresStore(postgres_url) as store:
        [tid] = _running(store)
        watcher = _watcher(store, [tid])
        try:
            [(_, old)] = _waits(postgres_url)
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", [old])
            assert watcher.wait(10.0) is True
            [(task, new)] = _waits(postgres_url)
            assert task == tid and new != old
            assert watcher.wait(0.3) is False
            _complete(store, tid)
            assert watcher.wait(10.0) is True
        finally:
            watcher.close()


def test_a_registration_waits_out_a_settlement_in_flight(postgres_url: str) -> None:
    """A settlement that looked for waiters before the registration committed (so told
    nobody) is waited out by ``watch_tasks``: once that returns, the task is seen ended."""
    with PostgresStore(postgres_url) as store:
        [tid] = _running(store)
        watcher = store.watch_changes()
        registered = threading.Event()
        try:
            with psycopg.connect(postgres_url) as conn:  # a transaction, left open
                told = conn.execute(
                    "WITH s AS (UPDATE hookqueue.tasks SET status = 'completed', "
                    "finished_at = 1, locked_by = NULL, lease_expires_at = NULL "
                    "WHERE id = %s RETURNING id) "
                    "SELECT hookqueue.notify_waited(array_agg(id), 'hookqueue_done_') FROM s",
                    [tid],
                ).fetchone()
                assert told == (0,)
                thread = threading.Thread(
                    target=lambda: (watcher.watch_tasks([tid]), registered.set())
                )
                thread.start()
                assert not registered.wait(0.5), "registered while the settlement holds the row"
                conn.commit()
            thread.join(10)
            assert registered.is_set()
            assert store.get(tid).status is TaskStatus.COMPLETED
        finally:
            watcher.close()


def test_a_worker_watcher_still_wakes_for_new_work(postgres_url: str) -> None:
    """A watcher never given tasks (a worker's) is woken by new work, as before."""
    with PostgresStore(postgres_url) as store:
        store.initialize_schema()
        watcher = store.watch_changes()
        try:
            watcher.watch_tasks([])
            while watcher.wait(0.05):
                pass
            store.insert_one(_row(), 10)
            assert watcher.wait(10.0) is True
        finally:
            watcher.close()


def test_nobody_waiting_sends_no_done_notification(postgres_url: str) -> None:
    """A settlement nobody waits for notifies nobody (``notify_waited`` answers 0), and one
    that somebody waits for notifies that session once."""
    with PostgresStore(postgres_url) as store:
        a, b = _running(store, 2)
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            probe = "SELECT hookqueue.notify_waited(%s::bigint[], 'hookqueue_done_')"
            assert conn.execute(probe, [[a, b]]).fetchone() == (0,)
            watcher = _watcher(store, [a])
            try:
                assert conn.execute(probe, [[a, b]]).fetchone() == (1,)
            finally:
                watcher.close()
            assert conn.execute(probe, [[a, b]]).fetchone() == (0,)


def _row() -> Any:
    from hookqueue.contrib.contracts.store import make_row

    return make_row(10)
