"""The demo plugin: ``hookqueue demo`` deletes only a database it made itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from _command import env

from hookqueue import Queue


def _demo(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookqueue", "demo", "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
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


def test_the_demo_json_summary_is_one_object_on_stdout(tmp_path: Path) -> None:
    """``--json``: standard output is the summary as one JSON object; the progress and the
    workers' lines go to standard error."""
    db = tmp_path / "demo.db"
    result = _demo(db, "--tasks", "30", "--processes", "1", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True and summary["tasks"] == 31 and summary["processes"] == 1
    assert sum(summary["by_status"].values()) == 31
    assert summary["by_type"]["import_feed"] == {"failed": 1}
    assert [f["task_type"] for f in summary["failed"]] == ["import_feed"]
    assert "not valid XML" in summary["failed"][0]["error"]
    assert set(summary["tasks_per_worker"]) == {"demo-0"}
    assert "hookqueue demo: 31 tasks" in result.stderr and "31/31" in result.stderr
    with Queue(db, load_entrypoints=False) as q:
        assert q.counts()["completed"] == summary["by_status"]["completed"]
