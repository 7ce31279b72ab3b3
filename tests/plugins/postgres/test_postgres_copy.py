"""``hookqueue copy`` between SQLite and PostgreSQL, both ways, on a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

import hookqueue.plugins.postgres as pg_plugin
from hookqueue import FakeClock, Queue, WorkerEngine
from hookqueue.core.cli import main
from hookqueue.plugins.postgres import PostgresStore


def test_sqlite_to_postgres_and_back_keeps_every_task(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SQLite queue copied to PostgreSQL and back is the same queue: ids, statuses,
    attempts, instants, payloads, results, errors, keys; a worker on PostgreSQL then works
    it, and new ids continue after the copied ones."""
    src, back = tmp_path / "src.db", tmp_path / "back.db"
    clock = FakeClock()
    with Queue(src, load_entrypoints=False, clock=clock) as q:
        q.handlers.register_handler("ok", lambda t: {"echo": t.payload})
        q.handlers.register_handler("bad", lambda t: 1 / 0)
        q.enqueue("ok", {"zoë": [1, 2.5, None]}, idempotency_key="first")
        q.enqueue("bad", None)
        q.cancel(q.enqueue("ok").id)
        WorkerEngine(q, worker_id="w").run_until_idle()
        q.enqueue("ok", {"n": 2}, priority=-5, headers={"tenant": "a"}, delay=60)
        q.enqueue("ok", {"n": 3})
        tasks = [t.to_dict() for t in q.list(limit=100)]
    assert main(["copy", "--from", str(src), "--to", postgres_url]) == 0
    out = capsys.readouterr().out
    assert f"copied {len(tasks)} task(s)" in out and "postgresql://postgres@/" in out
    with Queue(postgres_url, load_entrypoints=False, plugins=[pg_plugin], clock=clock) as pg:
        assert isinstance(pg.db, PostgresStore)
        assert [t.to_dict() for t in pg.list(limit=100)] == tasks
        assert pg.find("first") is not None
    assert main(["copy", "--from", postgres_url, "--to", str(back)]) == 0
    with Queue(back, load_entrypoints=False) as q:
        assert [t.to_dict() for t in q.list(limit=100)] == tasks
    assert main(["copy", "--from", str(src), "--to", postgres_url]) == 2
    assert "already holds" in capsys.readouterr().err
    with Queue(postgres_url, load_entrypoints=False, plugins=[pg_plugin], clock=clock) as pg:
        pg.handlers.register_handler("ok", lambda t: "done on postgres")
        assert WorkerEngine(pg, worker_id="pg").run_until_idle().completed == 1
        assert pg.enqueue("ok").id > max(int(t["id"]) for t in tasks)  # type: ignore[call-overload]
