"""The periodic plugin (``tests/plugins/periodic``) on a PostgreSQL-backed queue.

The scheduler's and the ``hookqueue schedules`` command's tests are the same functions, run
with this module's fixtures: ``db_path`` is the per-test database's URL, ``clock`` and
``queue`` are the periodic tests' own (``_periodic``: a queue with the periodic and retry
plugins, the PostgreSQL store's among the entry points it loads), and ``Queue`` in their
modules opens a URL even where a test blocks the entry points.

Left with SQLite, as they never reach the store: the misfire policies' arithmetic
(``test_plan_*``), the handler options a worker refuses before it starts (two schedules with
one name, an option that is not a Schedule, a schedule naming another task type) and the
``--no-scheduler`` flag's way through the argument parser. ``test_only_add_creates_a_database``
looks for a file; its PostgreSQL form, on a schema, is below. And worker processes firing
ticks together, one of them SIGKILLed and started again: every tick enqueued exactly once.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _onpg import PostgresQueue, db_path, load_again, refuse_a_missing_schema  # noqa: F401
from reliability._ticks import audit_ticks

from hookqueue.core.cli import main

_scheduler_tests = load_again("plugins/periodic/test_periodic_scheduler.py")
_cli_tests = load_again("plugins/periodic/test_periodic_cli.py")
#: The periodic tests' helpers, on sys.path now: their ``clock`` and ``queue`` fixtures.
_periodic = importlib.import_module("_periodic")

#: The fixtures and the tests that run here too, unchanged.
REUSED = {
    _periodic: ("clock", "queue"),
    _scheduler_tests: (
        "test_each_tick_fires_once_with_its_tick_in_the_headers",
        "test_the_tick_header_is_in_the_schedules_time_zone",
        "test_overlap_false_skips_while_the_previous_run_is_active",
        "test_a_second_scheduler_finds_nothing_left_to_fire",
        "test_a_long_cron_catch_up_takes_several_steps_and_keeps_the_newest",
        "test_a_broken_stored_definition_is_logged_and_left",
        "test_a_tick_whose_task_a_plugin_refuses_is_skipped_and_counted",
        "test_daylight_saving_days_fire_fixed_times_once_and_hours_by_real_time",
        "test_a_worker_declares_its_handlers_schedules_and_fires_what_is_due",
        "test_code_and_database_disagree",
        "test_pausing_survives_a_restart_and_resume_skips_the_paused_ticks",
        "test_a_worker_that_opted_out_declares_and_fires_nothing",
        "test_blocking_the_plugin_turns_schedules_off",
        "test_removing_and_adding_by_hand",
        "test_worker_threads_fire_within_a_second_of_due_and_never_twice",
    ),
    _cli_tests: (
        "test_add_ls_pause_resume_remove",
        "test_errors_name_the_problem_and_the_fix",
        "test_a_taken_name_and_a_code_schedule",
        "test_ls_of_an_empty_database",
        "test_hookqueue_worker_declares_schedules_unless_no_scheduler",
    ),
}
for _module, _names in REUSED.items():
    for _name in _names:
        globals()[_name] = getattr(_module, _name)


def test_only_add_creates_a_schema(
    postgres_url: str, postgres_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``schedules ls|pause|remove`` on a URL whose schema holds no queue refuse (exit 2) and
    create nothing there; ``schedules add`` creates the queue."""
    read_only = (["schedules", "ls"], ["schedules", "pause", "x"], ["schedules", "remove", "x"])
    url = refuse_a_missing_schema(read_only, postgres_url, postgres_dsn, capsys)
    assert main(["schedules", "add", "x", "@daily", "--type", "t", "--db", url]) == 0
    capsys.readouterr()
    assert main(["schedules", "ls", "--json", "--db", url]) == 0
    assert [s["name"] for s in json.loads(capsys.readouterr().out)] == ["x"]


# -- worker processes firing ticks together -------------------------------------------------

SCHEDULES = 4
EVERY_MS = 100
RELIABILITY = Path(__file__).resolve().parents[2] / "reliability"


def _start(url: str, app_dir: Path, worker_id: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(app_dir), str(RELIABILITY)]),
        # Entry points load (the PostgreSQL store and periodic are two); these are not needed.
        "HOOKQUEUE_DISABLE_PLUGINS": "prometheus,opentelemetry,dashboard,metrics",
    }
    with (app_dir / f"{worker_id}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "hookqueue", "worker", "--db", url, "--app", "ticking:registry",
             "--worker-id", worker_id, "--lease-seconds", "2", "--shutdown-grace", "2"],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip


@pytest.mark.slow
def test_worker_processes_fire_every_tick_exactly_once(postgres_url: str, tmp_path: Path) -> None:
    """Three ``hookqueue worker`` processes on one PostgreSQL database each run the periodic
    scheduler for four schedules ticking every 100 ms; half-way, one is SIGKILLed and started
    again. Every tick from the schedules' creation to where they stand at the end enqueued
    exactly one task: none twice, none missed, none that was not due."""
    (tmp_path / "ticking.py").write_text(
        "from _periodic_worker import schedules\n"
        "from hookqueue import TaskHandlerRegistry\n"
        "registry = TaskHandlerRegistry()\n"
        "registry.register_handler('tick', lambda task: None,\n"
        f"                          options={{'periodic': schedules({SCHEDULES}, {EVERY_MS})}})\n"
    )
    workers = [_start(postgres_url, tmp_path, f"w{i}") for i in range(3)]
    with PostgresQueue(postgres_url, load_entrypoints=False) as q:
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not q.db.list_schedules():
                assert all(w.poll() is None for w in workers), "a worker exited"
                time.sleep(0.1)
            assert q.db.list_schedules(), "no worker declared the schedules"
            time.sleep(2.0)
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(timeout=10)
            workers[0] = _start(postgres_url, tmp_path, "w0")
            time.sleep(2.5)
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            codes = []
            for w in workers:
                try:
                    codes.append(w.wait(timeout=30))
                except subprocess.TimeoutExpired:
                    w.kill()
                    codes.append(w.wait())
        logs = {p.name: p.read_text()[-2000:] for p in sorted(tmp_path.glob("w*.log"))}
        assert codes == [0, 0, 0], logs
        audit = audit_ticks(q, EVERY_MS * 1000)
    assert len(audit.rows) == SCHEDULES
    assert all(row.skipped == 0 for row in audit.rows)
    assert (audit.duplicates, audit.missed, audit.extra) == (0, 0, 0)
    assert sum(row.fired for row in audit.rows) == audit.tasks == len(audit.expected)
    assert len(audit.expected) >= SCHEDULES * 4000 // EVERY_MS, "the schedules ticked ~4.5 s"
    assert audit.late[-1] < 1.0, "the other workers fired on time while one was down"
