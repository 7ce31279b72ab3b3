"""The demo plugin: ``hookqueue demo`` deletes only a database it made itself."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
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


#: The progress bar.
BAR = re.compile(r"\[[#.]{30}\] \d+/\d+  queued ")
#: A tasklog line as the demo shows it (worker stderr, text format).
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ WARNING hookqueue\.tasks: task \d+ ")


def _screen_lines(raw: bytes) -> list[str]:
    """What a terminal shows of ``raw``, line by line: a carriage return starts the line
    over and ``ESC [ K`` clears what followed, so the text after the last one stays."""
    lines = []
    for line in raw.decode(errors="replace").split("\n"):
        shown = line.rstrip("\r").split("\r")[-1].replace("\033[K", "")
        lines.append(shown)
    return lines


def test_the_demo_prints_worker_lines_on_their_own_lines_at_a_terminal(tmp_path: Path) -> None:
    """At a terminal the progress bar is redrawn in place; the banner and the workers' log
    lines (import_feed's failure) are printed above it, each on its own line, never glued
    to the bar."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookqueue", "demo", "--db", str(tmp_path / "demo.db"),
         "--tasks", "40", "--processes", "2"],
        stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.PIPE, env=env(),
    )  # fmt: skip
    os.close(terminal)
    raw = bytearray()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            raw += chunk
    finally:
        os.close(controller)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
        assert proc.wait(60) == 0, err
    assert b"\r[" in raw, "the bar is redrawn in place at a terminal"
    lines = _screen_lines(bytes(raw))
    assert any(line.startswith("hookqueue 0.") and " worker demo-0 " in line for line in lines)
    assert any(line.startswith("  handlers:") for line in lines)
    failures = [line for line in lines if "(import_feed) attempt 2/2 failed" in line]
    assert failures and all(LOG_LINE.match(line) for line in failures), failures
    bars = [line for line in lines if BAR.search(line)]
    assert bars, "the last state of the bar stays on screen"
    for line in bars:  # nothing of a worker's output on the bar's line, before or after it
        assert BAR.match(line) and "hookqueue" not in line and "WARNING" not in line, line
    assert "summary" in lines and any(line.startswith("  drained 41 tasks") for line in lines)
