"""The operator's commands: bulk cancel/retry/purge with filters and confirmation, wait, queues,
pause/resume, show with history, --version, logs, broken pipes, and the worker's banner,
all-queues and recycling options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import apsw
import pytest
from _command import CONSOLE_SCRIPT, PACKAGE_PARENT, hookqueue_command
from _command import env as command_env

from hookqueue import Queue, TaskStatus, WorkerEngine, __version__
from hookqueue.core.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _boom(task):  # type: ignore[no-untyped-def]
    raise ValueError("smtp refused")


@pytest.fixture
def filled(db_path: Path) -> Path:
    """3 queued 'mail' tasks in queue 'm', 2 queued 'sms', 2 failed 'mail'."""
    q = Queue(db_path, load_entrypoints=False)
    q.handlers.register_handler("boom", _boom)
    q.enqueue_many([{"task_type": "mail", "queue": "m"} for _ in range(3)])
    q.enqueue_many([{"task_type": "sms"} for _ in range(2)])
    q.enqueue_many([{"task_type": "boom", "max_attempts": 1} for _ in range(2)])
    WorkerEngine(q, worker_id="w").run_until_idle()
    q.close()
    return db_path


def _counts(db: Path) -> dict[str, int]:
    with Queue(db, load_entrypoints=False) as q:
        return q.counts()


def test_bulk_commands_refuse_an_empty_filter_and_a_script_without_yes(
    capsys: pytest.CaptureFixture[str], filled: Path
) -> None:
    db = str(filled)
    code, _, err = run(capsys, "cancel", "--db", db)
    assert code == 2 and "--all" in err and "Fix:" in err
    code, _, err = run(capsys, "purge", "--type", "mail", "--db", db)
    assert code == 2 and "--yes" in err, "no terminal: confirmation must be explicit"
    assert _counts(filled)["queued"] == 5, "nothing was touched"


def test_cancel_retry_purge_by_filter(capsys: pytest.CaptureFixture[str], filled: Path) -> None:
    db = str(filled)
    code, out, _ = run(capsys, "cancel", "--queue", "m", "--yes", "--db", db)
    assert code == 0 and "cancel: 3 task(s)" in out
    code, out, _ = run(capsys, "retry", "--error", "SMTP", "--yes", "--db", db, "--json")
    assert code == 0 and json.loads(out)["retry"] == 2 and json.loads(out)["matched"] == 2
    code, out, _ = run(capsys, "purge", "--type", "sms", "--type", "boom", "-y", "--db", db)
    assert code == 0 and "purge: 4 task(s)" in out
    assert _counts(filled) == {
        "queued": 0,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 3,
    }
    code, out, _ = run(capsys, "retry", "--all", "--yes", "--db", db)
    assert code == 0 and "retry: 3 task(s)" in out
    code, out, _ = run(capsys, "cancel", "1", "2", "--yes", "--db", db)
    assert code == 0 and "cancel: 2 task(s)" in out


def test_a_bulk_command_asks_at_a_terminal(
    capsys: pytest.CaptureFixture[str], filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    answers = iter(["n", "y", "n", "y"])
    monkeypatch.setattr("builtins.input", lambda: next(answers))
    code, out, err = run(capsys, "purge", "--type", "sms", "--db", str(filled))
    assert code == 1 and "nothing done" in out
    assert "purge 2 task(s) (status queued; type sms)? [y/N]" in err, "asked on stderr"
    code, out, _ = run(capsys, "purge", "--type", "sms", "--db", str(filled))
    assert code == 0 and "purge: 2 task(s)" in out
    # --json asks too, and keeps stdout for the JSON answer.
    code, out, err = run(capsys, "cancel", "--type", "mail", "--json", "--db", str(filled))
    assert code == 1 and json.loads(out) == {
        "matched": 3,
        "cancel": 0,
        "filter": "status queued or running; type mail",
    }
    assert "cancel 3 task(s)" in err
    code, out, _ = run(capsys, "cancel", "--type", "mail", "--json", "--db", str(filled))
    assert code == 0 and json.loads(out)["cancel"] == 3


def test_json_output_does_not_confirm_a_bulk_command(filled: Path) -> None:
    """``--json`` changes only the output: a script without a terminal (stdin /dev/null)
    still has to pass ``--yes``, and is refused with one line naming it."""
    db = str(filled)
    for verb in ("cancel", "retry", "purge"):
        refused = hookqueue_command(verb, "--all", "--json", "--db", db)
        assert refused.returncode == 2, (verb, refused.stdout, refused.stderr)
        assert refused.stdout == ""
        [line] = refused.stderr.splitlines()
        assert "--yes" in line and "Fix:" in line and "Traceback" not in line
    assert _counts(filled) == {
        "queued": 5, "running": 0, "completed": 0, "failed": 2, "cancelled": 0,
    }, "nothing was touched"  # fmt: skip
    done = hookqueue_command("cancel", "--all", "--json", "--yes", "--db", db)
    assert done.returncode == 0 and json.loads(done.stdout)["cancel"] == 5


def test_a_bulk_command_reports_a_damaged_task_it_changed(
    capsys: pytest.CaptureFixture[str], filled: Path
) -> None:
    """A queued task whose stored row cannot be decoded is cancelled with the others: the
    command succeeds and reports as many as it matched; the damaged task is logged."""
    raw = apsw.Connection(str(filled))
    raw.execute("UPDATE tasks SET payload = '{not json' WHERE id = 1")
    raw.close()
    db = str(filled)
    code, out, _ = run(capsys, "cancel", "--type", "mail", "--yes", "--json", "--db", db)
    assert code == 0 and json.loads(out)["matched"] == json.loads(out)["cancel"] == 3
    assert _counts(filled)["cancelled"] == 3


def test_show_prints_the_failed_attempts_with_tracebacks(
    capsys: pytest.CaptureFixture[str], filled: Path
) -> None:
    code, out, _ = run(capsys, "show", "6", "--db", str(filled))
    assert code == 0 and "failed attempts:" in out
    assert "attempt 1" in out and "ValueError: smtp refused" in out and "Traceback" in out
    code, out, _ = run(capsys, "show", "6", "--db", str(filled), "--json")
    failures = json.loads(out)["failures"]
    assert failures[0]["worker_id"] == "w" and "_boom" in failures[0]["traceback"]


def test_queues_pause_resume(capsys: pytest.CaptureFixture[str], filled: Path) -> None:
    db = str(filled)
    code, out, _ = run(capsys, "pause", "m", "--db", db)
    assert code == 0 and "paused" in out
    code, out, _ = run(capsys, "queues", "--db", db, "--json")
    rows = {r["queue"]: r for r in json.loads(out)}
    assert rows["m"]["due"] == 3 and rows["m"]["paused_at"] is not None
    assert rows["default"]["due"] == 2 and rows["default"]["paused_at"] is None
    code, out, _ = run(capsys, "queues", "--db", db)
    assert "paused since" in out
    code, out, _ = run(capsys, "ls", "--queue", "m", "--db", db)
    assert "m (paused)" in out
    code, out, _ = run(capsys, "resume", "m", "--db", db)
    assert code == 0 and "resumed" in out
    code, out, _ = run(capsys, "resume", "m", "--db", db)
    assert code == 0 and "was not paused" in out


def test_wait_exit_codes(capsys: pytest.CaptureFixture[str], filled: Path) -> None:
    db = str(filled)
    code, out, err = run(capsys, "wait", "6", "--db", db)
    assert code == 1 and "failed" in err and "smtp refused" in err
    code, _, err = run(capsys, "wait", "1", "--timeout", "0.2", "--db", db)
    assert code == 4 and "still queued" in err
    code, out, _ = run(capsys, "wait", "1", "--timeout", "0.2", "--db", db, "--json")
    assert code == 4 and json.loads(out) == {
        "id": 1,
        "status": "timeout",
        "task_status": "queued",
        "waited_seconds": 0.2,
    }
    q = Queue(filled, load_entrypoints=False)
    q.handlers.register_handler("mail", lambda task: {"sent": task.id})
    worker = threading.Thread(
        target=lambda: WorkerEngine(q, worker_id="w2", queues=["m"]).run_until_idle()
    )
    threading.Timer(0.1, worker.start).start()
    code, out, _ = run(capsys, "wait", "1", "--timeout", "30", "--db", db)
    assert code == 0 and json.loads(out) == {"sent": 1}
    worker.join()
    q.close()


def test_version_and_bad_durations(capsys: pytest.CaptureFixture[str], db_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"hookqueue {__version__}"
    for bad in ("inf", "nan", "-5", "soon"):
        with pytest.raises(SystemExit) as info:
            main(["enqueue", "t", "--delay", bad, "--db", str(db_path)])
        assert info.value.code == 2
        assert "--delay" in capsys.readouterr().err
    assert not db_path.exists()


def _cli(
    args: list[str], cwd: Path | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOOKQUEUE_PLUGIN_AUTOLOAD": "0"}
    if cwd is not None:
        env["PYTHONPATH"] = str(cwd)
    return subprocess.run(
        [sys.executable, "-m", "hookqueue", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, env=env, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_closed_pipe_ends_the_command_quietly(filled: Path) -> None:
    with Queue(filled, load_entrypoints=False) as q:
        q.enqueue_many([{"task_type": "t"} for _ in range(3000)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookqueue", "ls", "--limit", "3000", "--db", str(filled)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "HOOKQUEUE_PLUGIN_AUTOLOAD": "0"},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # what `hookqueue ls | head -1` does
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(60) == 0
    assert "Traceback" not in err and "Broken pipe" not in err


APP = """
from hookqueue import TaskHandlerRegistry
registry = TaskHandlerRegistry()
registry.register_handler("t", lambda task: task.payload)
"""


def test_worker_banner_all_queues_and_json_logs(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    db = tmp_path / "q.db"
    with Queue(db, load_entrypoints=False) as q:
        q.enqueue_many([{"task_type": "t", "payload": i, "queue": f"q{i % 3}"} for i in range(30)])
    result = _cli(
        ["worker", "--app", "app:registry", "--db", str(db), "--all-queues", "--until-idle",
         "--log-level", "info", "--log-format", "json"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"hookqueue {__version__} worker" in result.stderr
    assert "queues:      every queue" in result.stderr
    assert "t " in result.stderr and "timeout: none" in result.stderr
    assert "stopped after" in result.stderr and "30 completed" in result.stderr
    with Queue(db, load_entrypoints=False) as q:
        assert q.counts()["completed"] == 30
    quiet = _cli(
        ["worker", "--app", "app:registry", "--db", str(db), "--until-idle", "-q"], cwd=tmp_path
    )
    assert quiet.returncode == 0 and "worker" not in quiet.stderr


def test_worker_processes_are_recycled_after_max_tasks(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        APP + "import os\nregistry.register_handler('pid', lambda task: os.getpid())\n"
    )
    db = tmp_path / "q.db"
    with Queue(db, load_entrypoints=False) as q:
        tasks = q.enqueue_many([{"task_type": "pid"} for _ in range(40)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookqueue", "worker", "--app", "app:registry", "--db", str(db),
         "--processes", "2", "--max-tasks-per-child", "5", "--concurrency", "1"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path), "HOOKQUEUE_PLUGIN_AUTOLOAD": "0"},
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with Queue(db, load_entrypoints=False) as q:
            deadline = time.monotonic() + 90
            while q.count(status="completed") < 40 and time.monotonic() < deadline:
                time.sleep(0.2)
            pids = {q.get(t.id).result for t in tasks}
            assert q.count(status="completed") == 40
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert len(pids) >= 8, f"each process ran at most 5 tasks: {len(pids)} processes seen"
    assert err.count("hookqueue 0.") == 1, "one banner for the group"


def test_the_supervisor_stops_when_its_children_refuse_to_start(tmp_path: Path) -> None:
    (tmp_path / "empty.py").write_text(
        "from hookqueue import TaskHandlerRegistry\nregistry = TaskHandlerRegistry()\n"
    )
    result = _cli(
        ["worker", "--app", "empty:registry", "--db", str(tmp_path / "q.db"), "--processes", "2"],
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "has no handlers registered" in result.stderr
    assert "refused to start" in result.stderr and "restarting" not in result.stderr


def test_read_only_commands_never_create_a_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "typo.db"
    for argv in (["ls"], ["queues"], ["workers"], ["check"], ["wait", "1"], ["pause", "x"]):
        code, _, err = run(capsys, *argv, "--db", str(missing))
        assert code == 2 and "no hookqueue database there" in err, argv
    assert not missing.exists()
    assert _cli(["enqueue", "t", "--db", str(missing)]).returncode == 0
    assert missing.exists()
    assert TaskStatus.QUEUED.value in run(capsys, "ls", "--db", str(missing))[1]


POLICY_APP = """
import os
from hookqueue import Queue
from hookqueue.plugins.retry import FixedDelay, NoRetry
queue = Queue(os.environ["APP_DB"], plugins=[FixedDelay(delay=30)])
queue.handlers.register_handler("plain", lambda task: None)
queue.handlers.register_handler("once", lambda task: None, options={"retry": NoRetry()})
"""


def test_the_banner_names_the_policy_a_handler_without_its_own_gets(tmp_path: Path) -> None:
    """A handler without a retry policy of its own is shown with the queue's: here the
    FixedDelay the app registered, not a vague "default"."""
    (tmp_path / "policyapp.py").write_text(POLICY_APP)
    result = hookqueue_command(
        "worker", "--app", "policyapp:queue", "--until-idle",
        cwd=tmp_path,
        environ=command_env(
            APP_DB=str(tmp_path / "q.db"),
            HOOKQUEUE_DISABLE_PLUGINS="prometheus,opentelemetry,dashboard,metrics",
        ),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stderr.splitlines() if "retry:" in line}
    assert "retry: FixedDelay(max_attempts=5" in lines["plain"]
    assert "delay_seconds=30" in lines["plain"] and "(the queue's default)" in lines["plain"]
    assert "retry: NoRetry(" in lines["once"] and "max_attempts=1" in lines["once"]
    assert "default policy" not in result.stderr


def test_default_retry_policy_follows_the_plugins(db_path: Path) -> None:
    from hookqueue.core.cli import banner, default_retry_policy
    from hookqueue.plugins.retry import NoRetry

    with Queue(db_path, block=["prometheus", "opentelemetry", "dashboard"]) as q:
        described, honoured = default_retry_policy(q.pm)
    assert described.startswith("ExponentialBackoff(max_attempts=5") and honoured
    with Queue(db_path, load_entrypoints=False) as q:
        described, honoured = default_retry_policy(q.pm)
        q.handlers.register_handler("t", _boom, options={"retry": NoRetry()})
        shown = banner(WorkerEngine(q, worker_id="w"), q, 1)
    assert described.startswith("none: a failed attempt is final") and not honoured
    assert "retry: none: a failed attempt is final" in shown
    assert "NoRetry(" in shown and "is unused: no retry plugin is active" in shown


MYMOD = """
from hookqueue import Queue
queue = Queue("q.db", load_entrypoints=False)
queue.handlers.register_handler("t", lambda task: task.payload + 1)
"""


def test_the_console_script_finds_the_app_in_the_current_directory(tmp_path: Path) -> None:
    """``hookqueue worker --app mymod:queue`` through the installed console script, whose
    ``sys.path`` starts at the script's directory, not the current one (``python -m``
    would put that there itself), imports ``./mymod.py``. PYTHONPATH holds only the package
    under test (see tests/_command.py), never the app's directory."""
    assert CONSOLE_SCRIPT.is_file(), f"no console script at {CONSOLE_SCRIPT}: pip install -e ."
    (tmp_path / "mymod.py").write_text(MYMOD)
    with Queue(tmp_path / "q.db", load_entrypoints=False) as q:
        q.enqueue_many([{"task_type": "t", "payload": i} for i in range(3)])
    environ = command_env(HOOKQUEUE_PLUGIN_AUTOLOAD="0")
    environ["PYTHONPATH"] = str(PACKAGE_PARENT)
    assert str(tmp_path) not in environ["PYTHONPATH"].split(os.pathsep)
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "worker", "--app", "mymod:queue", "--until-idle"],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3 completed" in result.stderr
    with Queue(tmp_path / "q.db", load_entrypoints=False) as q:
        assert sorted(t.result for t in q.list()) == [1, 2, 3]


TASKLOG_PLUGINS_OFF = "prometheus,opentelemetry,dashboard,metrics,periodic,limits,postgres"


def _tasklog_worker(tmp_path: Path, *options: str) -> tuple[list[int], str]:
    (tmp_path / "app.py").write_text(APP)
    db = tmp_path / "q.db"
    with Queue(db, load_entrypoints=False) as q:
        ids = [t.id for t in q.enqueue_many([{"task_type": "t", "payload": i} for i in range(3)])]
    result = hookqueue_command(
        "worker", "--app", "app:registry", "--db", str(db), "--until-idle", *options,
        cwd=tmp_path, environ=command_env(HOOKQUEUE_DISABLE_PLUGINS=TASKLOG_PLUGINS_OFF),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return ids, result.stderr


def test_worker_v_logs_one_line_per_task_start_and_completion(tmp_path: Path) -> None:
    ids, err = _tasklog_worker(tmp_path, "-v")
    lines = [line for line in err.splitlines() if " INFO hookqueue.tasks: " in line]
    for tid in ids:
        head = f"hookqueue.tasks: task {tid} (t) attempt 1/1"
        assert sum(line.endswith(f"{head} started") for line in lines) == 1, lines
        assert sum(f"{head} completed in " in line for line in lines) == 1, lines
    assert len(lines) == 2 * len(ids), "nothing else at INFO from the tasklog plugin"
    (tmp_path / "quiet").mkdir()
    _, quiet = _tasklog_worker(tmp_path / "quiet")
    assert "hookqueue.tasks" not in quiet, "starts and completions only at -v"


def test_worker_json_logs_are_one_object_per_task_event(tmp_path: Path) -> None:
    ids, err = _tasklog_worker(tmp_path, "-v", "--log-format", "json", "-q")
    records = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    tasks = [r for r in records if r["logger"] == "hookqueue.tasks"]
    for tid in ids:
        events = [r for r in tasks if r["task_id"] == tid]
        assert [r["event"] for r in events] == ["started", "completed"], events
        done = events[1]
        assert done["task_type"] == "t" and done["attempt"] == 1 and done["level"] == "info"
        assert isinstance(done["duration"], float) and done["duration"] >= 0
        assert done["message"].startswith(f"task {tid} (t) attempt 1/1 completed in ")
