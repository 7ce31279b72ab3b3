"""The demo plugin: ``hookqueue demo`` deletes only a database it made itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from hookqueue import Queue


def _demo(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookqueue", "demo", "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_demo_refuses_to_delete_a_database_it_did_not_make(tmp_path: Path) -> None:
    db = tmp_path / "production.db"
    with Queue(db, load_entrypoints=False) as q:
        q.enqueue("precious", {"keep": True})
    result = _demo(db, "--tasks", "10", "--processes", "1")
    assert result.returncode == 2
    assert "exists and was not made by the demo" in result.stderr
    assert "Traceback" not in result.stderr
    with Queue(db, load_entrypoints=False) as q:
        assert [t.task_type for t in q.list()] == ["precious"], "untouched"
    assert not Path(f"{db}.hookqueue-demo").exists()


def test_the_demo_starts_its_own_database_afresh(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    first = _demo(db, "--tasks", "20", "--processes", "1")
    assert first.returncode == 0, first.stderr
    assert Path(f"{db}.hookqueue-demo").exists()
    second = _demo(db, "--tasks", "30", "--processes", "1")
    assert second.returncode == 0, second.stderr
    drained = int(re.search(r"drained (\d+) tasks", second.stdout).group(1))  # type: ignore[union-attr]
    with Queue(db, load_entrypoints=False) as q:
        assert sum(q.counts().values()) == drained, "the earlier run's tasks are gone"
