"""The hookqueue command: every built-in subcommand, human and --json output, errors, the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _command import hookqueue_command

from hookqueue import Queue
from hookqueue.core.cli import main, parse_duration


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_enqueue_ls_show_cancel_retry(capsys: pytest.CaptureFixture[str], db_path: Path) -> None:
    db = str(db_path)
    code, out, _ = run(
        capsys,
        "enqueue",
        "email",
        "--payload",
        '{"to": "a@b.c"}',
        "--priority",
        "5",
        "--db",
        db,
        "--json",
    )
    assert code == 0
    task = json.loads(out)
    assert (
        task["task_type"] == "email"
        and task["payload"] == {"to": "a@b.c"}
        and task["priority"] == 5
    )
    code, out, _ = run(capsys, "enqueue", "later", "--delay", "15m", "--key", "k1", "--db", db)
    assert code == 0 and "enqueued task 2 (later)" in out

    code, out, _ = run(capsys, "ls", "--db", db)
    assert code == 0 and "email" in out and "later" in out and "queued" in out
    code, out, _ = run(capsys, "ls", "--db", db, "--json", "--type", "later")
    assert [t["id"] for t in json.loads(out)] == [2]

    code, out, _ = run(capsys, "show", "1", "--db", db)
    assert code == 0 and "a@b.c" in out and "priority: 5" in out

    code, out, _ = run(capsys, "cancel", "1", "--db", db)
    assert code == 0 and "task 1 cancelled" in out
    code, out, err = run(capsys, "cancel", "1", "--db", db)
    assert code == 2 and "cannot cancel task 1: it is cancelled" in err
    code, out, _ = run(capsys, "retry", "1", "--db", db, "--json")
    assert code == 0 and json.loads(out)["status"] == "queued"


def test_errors_are_one_clear_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], db_path: Path
) -> None:
    code, _, err = run(capsys, "enqueue", "t", "--payload", "{not json", "--db", str(db_path))
    assert code == 2 and "--payload" in err and "Fix:" in err
    # A command that only reads refuses a missing database instead of creating one.
    code, _, err = run(capsys, "show", "42", "--db", str(db_path))
    assert code == 2 and "no hookqueue database there" in err and "Fix:" in err
    assert not db_path.exists()
    Queue(db_path, load_entrypoints=False).close()
    code, _, err = run(capsys, "show", "42", "--db", str(db_path))
    assert code == 2 and "task 42 does not exist" in err
    foreign = db_path.parent / "notes.txt"
    foreign.write_text("hello\n" * 1000)
    code, _, err = run(capsys, "ls", "--db", str(foreign))
    assert code == 2 and str(foreign) in err
    assert foreign.read_text() == "hello\n" * 1000


@pytest.mark.parametrize(
    ("argv", "start", "words"),
    [
        (["enqueue", "t", "--delay", "inf"], "hookqueue enqueue: --delay: 'inf'", ["finite", "7d"]),
        (["enqueue", "t", "--priority", "x"], "hookqueue enqueue: --priority: 'x'", ["whole"]),
        (["ls", "--status", "bogus"], "hookqueue ls: --status: 'bogus'", ["'failed'"]),
        (["--log-format", "xml", "ls"], "hookqueue: --log-format: 'xml'", ["'json'"]),
        (["wait"], "hookqueue wait: task_id missing", ["give it"]),
        # a plugin's subcommand, two levels down, gets the same parser
        (
            ["schedules", "add", "n", "every 1s", "--type", "t", "--misfire", "bogus"],
            "hookqueue schedules add: --misfire: 'bogus'",
            ["'latest'"],
        ),
    ],
    ids=["duration", "integer", "choice", "top-level", "missing", "plugin-subcommand"],
)
def test_a_bad_option_value_is_one_line_and_exit_2(
    tmp_path: Path, argv: list[str], start: str, words: list[str]
) -> None:
    """No usage block and no traceback: one line with the option, the problem, the fix and
    where the help is."""
    result = hookqueue_command(*argv, "--db", str(tmp_path / "q.db"))
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(start) and "; " in line, line
    command = start.split(":")[0]
    assert line.endswith(f"(see {command} --help)"), line
    assert all(w in line for w in words), line
    assert not (tmp_path / "q.db").exists()


def test_help_still_shows_usage_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["enqueue", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert out.startswith("usage: hookqueue enqueue [-h]") and "--delay DELAY" in out


def test_a_repeated_key_says_it_answered_the_existing_task(
    capsys: pytest.CaptureFixture[str], db_path: Path
) -> None:
    db = str(db_path)
    code, out, _ = run(capsys, "enqueue", "report", "--key", "nov", "--db", db, "--json")
    first = json.loads(out)
    assert code == 0 and first["deduplicated"] is False
    code, out, _ = run(capsys, "enqueue", "report", "--key", "nov", "--db", db)
    assert code == 0
    assert out.strip() == (
        f"task {first['id']} (report) already holds key 'nov': nothing new was enqueued "
        "(it is queued)"
    )
    code, out, _ = run(capsys, "enqueue", "report", "--key", "nov", "--db", db, "--json")
    again = json.loads(out)
    assert code == 0 and again["deduplicated"] is True and again["id"] == first["id"]
    with Queue(db_path, load_entrypoints=False) as q:
        assert q.counts()["queued"] == 1


def test_options_before_the_subcommand(capsys: pytest.CaptureFixture[str], db_path: Path) -> None:
    assert run(capsys, "--db", str(db_path), "enqueue", "t")[0] == 0
    code, out, _ = run(capsys, "--db", str(db_path), "--json", "ls")
    assert code == 0 and [t["task_type"] for t in json.loads(out)] == ["t"]


def test_hookqueue_db_environment_variable(
    capsys: pytest.CaptureFixture[str], db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOKQUEUE_DB", str(db_path))
    assert run(capsys, "enqueue", "t")[0] == 0
    q = Queue(db_path, load_entrypoints=False)
    assert q.counts()["queued"] == 1
    q.close()


def test_prune_check_workers_plugins(capsys: pytest.CaptureFixture[str], db_path: Path) -> None:
    db = str(db_path)
    q = Queue(db_path, load_entrypoints=False)
    t = q.enqueue("t")
    q.cancel(t.id)
    q.close()
    code, out, _ = run(capsys, "prune", "--older-than", "0", "--db", db, "--json")
    assert code == 0 and json.loads(out) == {"removed": 1, "older_than_seconds": 0.0}
    code, out, _ = run(capsys, "check", "--db", db)
    assert code == 0 and "ok" in out
    code, out, _ = run(capsys, "check", "--db", db, "--json")
    assert json.loads(out)["ok"] is True
    code, out, _ = run(capsys, "workers", "--db", db, "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run(capsys, "plugins", "--json")
    names = {p["name"]: p for p in json.loads(out)}
    assert names["core"]["state"] == "active"
    code, out, _ = run(capsys, "plugins")
    assert code == 0 and "core" in out


def test_parse_duration() -> None:
    assert parse_duration("90").total_seconds() == 90
    assert parse_duration("15m").total_seconds() == 900
    assert parse_duration("7d").total_seconds() == 7 * 86400
    with pytest.raises(Exception, match="not a duration"):
        parse_duration("soon")


def test_worker_app_must_name_a_queue_or_registry(
    capsys: pytest.CaptureFixture[str], db_path: Path
) -> None:
    code, _, err = run(
        capsys, "worker", "--app", "json:dumps", "--db", str(db_path), "--until-idle"
    )
    assert code == 2 and "--app" in err
    code, _, err = run(capsys, "worker", "--app", "no_such_module_xyz:thing", "--db", str(db_path))
    assert code == 2 and "cannot import" in err


def test_supervised_worker_processes_drain_the_queue(tmp_path: Path) -> None:
    app = tmp_path / "myapp.py"
    app.write_text(
        "from hookqueue import TaskHandlerRegistry\n"
        "registry = TaskHandlerRegistry()\n"
        "registry.register_handler('t', lambda task: task.payload * 2)\n"
    )
    db = tmp_path / "q.db"
    q = Queue(db, load_entrypoints=False)
    q.enqueue_many([{"task_type": "t", "payload": i} for i in range(100)])
    result = subprocess.run(
        [sys.executable, "-m", "hookqueue", "worker", "--app", "myapp:registry", "--db", str(db),
         "--processes", "2", "--until-idle"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(tmp_path), "HOOKQUEUE_PLUGIN_AUTOLOAD": "0"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "supervising 2 worker process(es)" in result.stderr
    assert q.counts()["completed"] == 100
    assert sorted(t.result for t in q.list(limit=1000)) == [i * 2 for i in range(100)]
    q.close()


def test_the_demo_runs_end_to_end(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    result = subprocess.run(
        [sys.executable, "-m", "hookqueue", "demo", "--db", str(db), "--tasks", "120", "--processes", "2"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "summary" in result.stdout and "drained" in result.stdout
    q = Queue(db, load_entrypoints=False)
    counts = q.counts()
    assert counts["queued"] == counts["running"] == 0
    assert counts["completed"] + counts["failed"] == 121
    q.close()
