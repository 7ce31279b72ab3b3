"""``hookqueue schedules ls|add|pause|resume|remove`` and ``hookqueue worker --no-scheduler``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from hookqueue import Queue
from hookqueue.core.cli import build_parser, main
from hookqueue.core.supervisor import child_command as _child_command
from hookqueue.plugins.periodic import Schedule, list_schedules
from hookqueue.plugins.periodic.scheduler import Scheduler


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_add_ls_pause_resume_remove(capsys: pytest.CaptureFixture[str], db_path: Path) -> None:
    db = str(db_path)
    code, out, _ = run(
        capsys,
        "schedules", "add", "nightly", "30 2 * * *", "--type", "cleanup", "--tz", "Europe/Paris",
        "--payload", '{"days": 7}', "--misfire", "all", "--catch-up", "5", "--no-overlap",
        "--grace", "15m", "--db", db,
    )  # fmt: skip
    assert code == 0 and "schedule 'nightly' added: 30 2 * * * → cleanup" in out
    code, out, _ = run(capsys, "schedules", "add", "beat", "every 30s", "--type", "b", "--db", db)
    assert code == 0
    code, out, _ = run(capsys, "schedules", "ls", "--db", db)
    assert code == 0
    assert "nightly  30 2 * * * (Europe/Paris)  cleanup  active" in out
    assert "all, no overlap" in out and "beat" in out
    code, out, _ = run(capsys, "--db", db, "schedules", "ls", "--json")
    listed = {s["name"]: s for s in json.loads(out)}
    assert listed["nightly"]["payload"] == {"days": 7}
    assert (listed["nightly"]["grace"], listed["nightly"]["catch_up"]) == (900.0, 5)
    assert listed["nightly"]["overlap"] is False and listed["nightly"]["source"] == "added"
    assert listed["beat"]["tz"] == "UTC" and listed["beat"]["misfire"] == "latest"

    code, out, _ = run(capsys, "schedules", "pause", "nightly", "--db", db, "--json")
    assert code == 0 and json.loads(out)["paused"] is True
    code, out, _ = run(capsys, "schedules", "ls", "--db", db)
    assert "paused" in out
    code, out, _ = run(capsys, "schedules", "resume", "nightly", "--db", db)
    assert code == 0 and "resumed" in out and "next tick" in out
    code, out, _ = run(capsys, "schedules", "remove", "beat", "--db", db, "--json")
    assert code == 0 and json.loads(out) == {"removed": "beat"}
    code, out, _ = run(capsys, "schedules", "ls", "--db", db, "--json")
    assert [s["name"] for s in json.loads(out)] == ["nightly"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["add", "x", "61 * * * *", "--type", "t"], "not a valid cron expression"),
        (["add", "x", "every 5m", "--type", "t", "--tz", "Europe/Paris"], "elapsed time"),
        (["add", "x", "@daily", "--type", "t", "--payload", "{nope"], "is not JSON"),
        (["pause", "nobody"], "no schedule is named 'nobody'"),
        (["resume", "nobody"], "no schedule is named 'nobody'"),
        (["remove", "nobody"], "no schedule is named 'nobody'"),
    ],
)
def test_errors_name_the_problem_and_the_fix(
    capsys: pytest.CaptureFixture[str], db_path: Path, argv: list[str], says: str
) -> None:
    Queue(db_path, load_entrypoints=False).close()
    code, _, err = run(capsys, "schedules", *argv, "--db", str(db_path))
    assert code == 2 and says in err and "Fix:" in err


def test_only_add_creates_a_database(capsys: pytest.CaptureFixture[str], db_path: Path) -> None:
    for argv in (["ls"], ["pause", "x"], ["remove", "x"]):
        code, _, err = run(capsys, "schedules", *argv, "--db", str(db_path))
        assert code == 2 and "no hookqueue database there" in err
    assert not db_path.exists()
    assert (
        run(capsys, "schedules", "add", "x", "@daily", "--type", "t", "--db", str(db_path))[0] == 0
    )
    assert db_path.exists()


def test_a_taken_name_and_a_code_schedule(
    capsys: pytest.CaptureFixture[str], db_path: Path
) -> None:
    db = str(db_path)
    assert run(capsys, "schedules", "add", "x", "@daily", "--type", "t", "--db", db)[0] == 0
    code, _, err = run(capsys, "schedules", "add", "x", "@hourly", "--type", "t", "--db", db)
    assert code == 2 and "taken" in err
    code, out, _ = run(
        capsys, "schedules", "add", "x", "@hourly", "--type", "t", "--replace", "--db", db
    )
    assert code == 0
    with Queue(db_path, durability="normal") as q:
        Scheduler(q).declare([Schedule("every 1m", task_type="coded")])
    code, _, err = run(capsys, "schedules", "remove", "coded", "--db", db)
    assert code == 2 and "declared in code" in err
    assert run(capsys, "schedules", "remove", "coded", "--force", "--db", db)[0] == 0
    with Queue(db_path, durability="normal") as q:
        assert [i.schedule.key for i in list_schedules(q)] == ["x"]


def test_ls_of_an_empty_database(capsys: pytest.CaptureFixture[str], db_path: Path) -> None:
    Queue(db_path, load_entrypoints=False).close()
    code, out, _ = run(capsys, "schedules", "ls", "--db", str(db_path))
    assert code == 0 and "no schedules" in out


def test_worker_no_scheduler_reaches_the_worker_and_its_children() -> None:
    parser = build_parser()
    args = parser.parse_args(["worker", "--no-scheduler", "--processes", "2"])
    assert args.no_scheduler is True
    assert "--no-scheduler" in _child_command(args, 0)
    plain = parser.parse_args(["worker"])
    assert plain.no_scheduler is False and "--no-scheduler" not in _child_command(plain, 0)
    assert isinstance(plain, argparse.Namespace)


@pytest.mark.parametrize("opt_out", [False, True])
def test_hookqueue_worker_declares_schedules_unless_no_scheduler(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    opt_out: bool,
) -> None:
    module = f"periodic_app_{int(opt_out)}"
    (tmp_path / f"{module}.py").write_text(
        "from hookqueue import TaskHandlerRegistry\n"
        "from hookqueue.plugins.periodic import Schedule\n"
        "registry = TaskHandlerRegistry()\n"
        "registry.register_handler('beat', lambda task: None,\n"
        "                          options={'periodic': Schedule('@hourly')})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    db = str(db_path)
    argv = ["worker", "--until-idle", "--app", f"{module}:registry", "--db", db]
    code, _, err = run(capsys, *argv, *(["--no-scheduler"] if opt_out else []))
    assert code == 0, err
    code, out, _ = run(capsys, "schedules", "ls", "--json", "--db", db)
    assert [s["name"] for s in json.loads(out)] == ([] if opt_out else ["beat"])
