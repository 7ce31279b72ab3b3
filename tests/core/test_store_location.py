"""Which store a location opens: ``hookqueue_store``, the core's SQLite default, and URLs
that no installed store serves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hookqueue import Queue, QueueDatabase, StoreError, ValidationError, hookimpl


def test_a_url_no_store_serves_is_refused_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a postgresql:// string silently made a local file under a 'postgresql:'
    folder. Now: an error naming the extra, the password hidden, and nothing created."""
    monkeypatch.chdir(tmp_path)
    url = "postgresql://app:s3cret@db.internal/jobs"
    with pytest.raises(StoreError) as info:
        Queue(url, load_entrypoints=False)
    message = str(info.value)
    assert "pip install 'hookqueue[postgres]'" in message
    assert "s3cret" not in message and "app:***@db.internal" in message
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_scheme_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match="no store is installed for redis:// locations"):
        Queue("redis://localhost/0", load_entrypoints=False)
    assert list(tmp_path.iterdir()) == []


def test_sqlite_urls_open_the_file(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with Queue(f"sqlite://{path}", load_entrypoints=False) as q:
        assert isinstance(q.db, QueueDatabase) and q.db.location == str(path)
        q.enqueue("t")
    assert path.exists()


def test_hookqueue_db_may_name_a_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOOKQUEUE_DB", "postgresql://localhost/jobs")
    with pytest.raises(StoreError, match=r"hookqueue\[postgres\]"):
        Queue(load_entrypoints=False)
    # A QueueDatabase is always a file: it refuses the URL instead of making a folder.
    with pytest.raises(ValidationError, match="HOOKQUEUE_DB"):
        QueueDatabase()
    with pytest.raises(ValidationError, match="is a URL, not a file path"):
        QueueDatabase("postgresql://localhost/jobs")
    assert not Path("postgresql:").exists()


def test_a_plugin_can_serve_a_scheme(tmp_path: Path) -> None:
    """A store plugin answers its own locations and leaves the others to the core."""
    seen: list[tuple[str, dict[str, Any]]] = []

    class MemStore:
        @hookimpl
        def hookqueue_store(self, location: str, options: dict[str, Any]) -> Any:
            seen.append((location, dict(options)))
            if location.startswith("mem://"):
                return QueueDatabase(tmp_path / "behind-mem.db", durability="normal")
            return None

    with Queue("mem://jobs", load_entrypoints=False, plugins=[MemStore()]) as q:
        q.enqueue("t")
        assert q.db.location == str(tmp_path / "behind-mem.db")
    with Queue(tmp_path / "plain.db", load_entrypoints=False, plugins=[MemStore()]) as q:
        assert q.db.location == str(tmp_path / "plain.db")
    assert [loc for loc, _ in seen] == ["mem://jobs", str(tmp_path / "plain.db")]
    assert seen[0][1] == {"durability": "full", "busy_timeout": 10.0, "vfs": None, "create": True}


def test_create_false_refuses_a_missing_database(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "queue.db"
    with pytest.raises(StoreError, match="no hookqueue database there"):
        Queue(missing, load_entrypoints=False, create=False)
    assert not missing.parent.exists()
    Queue(missing, load_entrypoints=False).close()
    with Queue(missing, load_entrypoints=False, create=False) as q:
        assert q.counts()["queued"] == 0
    assert os.stat(missing).st_mode & 0o777 == 0o600
