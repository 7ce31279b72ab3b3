"""``hookqueue copy``: a queue moved between stores keeps every task exactly (SQLite to SQLite
here; tests/plugins/postgres/test_postgres_copy.py does SQLite <-> PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hookqueue import FakeClock, Queue, WorkerEngine
from hookqueue.core.cli import main
from hookqueue.core.errors import StoreError
from hookqueue.core.transfer import copy_tasks


def _history(path: Path) -> list[dict[str, object]]:
    """A queue with every status, a key, a result, an error and a delayed task; its tasks."""
    clock = FakeClock()
    with Queue(path, load_entrypoints=False, clock=clock) as q:
        q.handlers.register_handler("ok", lambda t: {"echo": t.payload})
        q.handlers.register_handler("bad", lambda t: 1 / 0)
        q.enqueue("ok", {"n": 1}, idempotency_key="first")
        q.enqueue("bad", [1, 2])
        q.cancel(q.enqueue("ok", "cancel me").id)
        WorkerEngine(q, worker_id="w").run_until_idle()
        q.enqueue("ok", {"later": True}, delay=3600)
        q.enqueue("ok", {"n": 2}, priority=-5, headers={"tenant": "a"})
        return [t.to_dict() for t in q.list(limit=100)]


def test_copy_keeps_every_task_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ids, statuses, attempts, instants, payloads, results, errors and keys survive; the
    count is reported; the copy deduplicates the keys like the original."""
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    tasks = _history(src)
    assert main(["copy", "--from", str(src), "--to", str(dst)]) == 0
    out = capsys.readouterr().out
    assert f"copied {len(tasks)} task(s) from {src} to {dst}" in out
    assert "2 queued" in out and "1 completed" in out and "1 failed" in out
    with Queue(dst, load_entrypoints=False) as q:
        assert [t.to_dict() for t in q.list(limit=100)] == tasks
        again = q.enqueue("ok", {"n": 9}, idempotency_key="first")
        assert again.id == min(int(t["id"]) for t in tasks)  # type: ignore[call-overload]
        new = q.enqueue("ok")
        assert new.id > max(int(t["id"]) for t in tasks)  # type: ignore[call-overload]


def test_copy_refuses_a_destination_that_holds_tasks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A non-empty destination is refused (nothing copied) unless --allow-non-empty; a
    clash of ids then refuses the whole copy."""
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    tasks = _history(src)
    with Queue(dst, load_entrypoints=False) as q:
        q.enqueue("other")
    assert main(["copy", "--from", str(src), "--to", str(dst)]) == 2
    assert "already holds 1 task(s)" in capsys.readouterr().err
    assert main(["copy", "--from", str(src), "--to", str(dst), "--allow-non-empty"]) == 2
    with Queue(dst, load_entrypoints=False) as q:
        assert [t.task_type for t in q.list()] == ["other"]
    fresh = tmp_path / "fresh.db"
    with Queue(fresh, load_entrypoints=False) as q:
        q.db.import_rows([])  # the schema, no tasks
    assert main(["copy", "--from", str(src), "--to", str(fresh), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["copied"] == len(tasks) and report["source_changed"] is False


def test_copy_from_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    """A mistyped source is an error; neither store is created."""
    assert main(["copy", "--from", str(tmp_path / "nope.db"), "--to", str(tmp_path / "d.db")]) == 2
    assert not (tmp_path / "nope.db").exists() and not (tmp_path / "d.db").exists()


def test_copy_reports_a_source_that_changed(tmp_path: Path) -> None:
    """When the source's counts differ after the copy, the report says so."""
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    _history(src)
    with Queue(src, load_entrypoints=False) as a, Queue(dst, load_entrypoints=False) as b:
        export = a.db.export_rows

        def writing_meanwhile(**kwargs):  # type: ignore[no-untyped-def]
            rows = export(**kwargs)
            if kwargs.get("after_id") == 0:
                a.enqueue("late")
            return rows

        a.db.export_rows = writing_meanwhile  # type: ignore[method-assign]
        report = copy_tasks(a.db, b.db)
        assert report.source_changed is True
    with pytest.raises(StoreError, match="already holds"):
        with Queue(src, load_entrypoints=False) as a, Queue(dst, load_entrypoints=False) as b:
            copy_tasks(a.db, b.db)
