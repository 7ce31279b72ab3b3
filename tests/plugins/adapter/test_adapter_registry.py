"""Run, RunStatus and RunRegistry: construction, queries, and the atomic history file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hookqueue import TaskStatus
from hookqueue.plugins.adapter import Run, RunHistoryError, RunRegistry, RunStatus
from hookqueue.plugins.adapter.registry import (
    load_history,
    run_from_dict,
    run_to_dict,
    write_history_atomically,
)

# -- Run and RunStatus ---------------------------------------------------------------------------


def test_run_status_strings_match_task_statuses_one_to_one() -> None:
    assert [s.value for s in RunStatus] == [s.value for s in TaskStatus]
    assert RunStatus("completed") is RunStatus.COMPLETED
    assert str(RunStatus.RUNNING) == "running"
    assert RunStatus.FAILED.is_terminal and not RunStatus.QUEUED.is_terminal


def test_run_keyword_construction_as_in_the_guide() -> None:
    created = datetime.now(UTC)
    run = Run(
        run_id="task-123",
        module_id="cleanup",
        module_name="Cleanup",
        status=RunStatus.QUEUED,
        created_at=created,
        parameters={"max_age_hours": 24},
    )
    assert run.parameters == {"max_age_hours": 24}
    assert run.started_at is None and run.exit_code is None and run.progress_percent is None
    assert (
        Run(
            run_id="a", module_id="m", module_name="M", status="queued", created_at=created
        ).parameters
        == {}
    )


def test_run_converts_and_validates_on_assignment() -> None:
    run = Run(
        run_id="a", module_id="m", module_name="M", status="queued", created_at=datetime.now(UTC)
    )
    run.status = "running"  # type: ignore[assignment]
    assert run.status is RunStatus.RUNNING
    with pytest.raises(ValueError, match="status='sleeping' is not a run status"):
        run.status = "sleeping"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="started_at=.* naive datetime"):
        run.started_at = datetime(2030, 1, 1)
    with pytest.raises(TypeError, match="exit_code='0' must be an integer"):
        run.exit_code = "0"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="parameters=.* must be a dict"):
        run.parameters = [1, 2]  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("run_id", "", "run_id='' must be a non-empty string"),
        ("created_at", datetime(2030, 1, 1), "created_at=.* naive"),
        ("created_at", "2030-01-01", "created_at='2030-01-01' must be a datetime"),
        ("duration_seconds", float("nan"), "finite"),
    ],
)
def test_run_refuses_bad_fields_naming_them(field: str, value: object, message: str) -> None:
    fields: dict[str, object] = {
        "run_id": "a",
        "module_id": "m",
        "module_name": "M",
        "status": "queued",
        "created_at": datetime.now(UTC),
    }
    fields[field] = value
    with pytest.raises((TypeError, ValueError), match=message):
        Run(**fields)  # type: ignore[arg-type]


def test_run_round_trips_through_json(make_run: Callable[..., Run]) -> None:
    run = make_run(status="completed", exit_code=0, duration_seconds=1.5, items_total=3)
    run.started_at = run.created_at + timedelta(seconds=1)
    text = json.dumps(run_to_dict(run))
    assert run_from_dict(json.loads(text)) == run


def test_run_from_dict_reads_the_originals_naive_timestamps_as_utc() -> None:
    run = run_from_dict(
        {
            "run_id": "old",
            "module_id": "m",
            "module_name": "M",
            "status": "completed",
            "created_at": "2024-05-01T10:00:00",
            "some_pydantic_extra": 1,
        }
    )
    assert run.created_at == datetime(2024, 5, 1, 10, tzinfo=UTC)


# -- queries ---------------------------------------------------------------------------------------


def test_registry_queries(make_run: Callable[..., Run]) -> None:
    registry = RunRegistry()
    now = datetime.now(UTC)
    a = make_run(module_id="a", created_at=now - timedelta(minutes=3))
    b = make_run(module_id="b", status="running", created_at=now - timedelta(minutes=2))
    c = make_run(module_id="a", status="failed", created_at=now - timedelta(minutes=1))
    for run in (a, b, c):
        registry.add_run(run)
    assert registry.get_run(a.run_id) is a and registry.get_run("nope") is None
    assert {r.run_id for r in registry.get_active_runs()} == {a.run_id, b.run_id}
    assert [r.run_id for r in registry.get_runs_by_module("a")] == [a.run_id, c.run_id]
    assert registry.get_runs_by_status(RunStatus.FAILED) == [c]
    assert registry.get_runs_by_status("running") == [b]
    assert [r.run_id for r in registry.get_recent_runs()] == [c.run_id, b.run_id, a.run_id]
    assert [r.run_id for r in registry.get_recent_runs(limit=1)] == [c.run_id]
    assert set(registry.runs) == {a.run_id, b.run_id, c.run_id}


def test_update_run_is_an_upsert(make_run: Callable[..., Run]) -> None:
    registry = RunRegistry()
    run = make_run()
    registry.update_run(run)
    assert registry.get_run(run.run_id) is run
    newer = make_run(run_id=run.run_id, status="completed")
    registry.update_run(newer)
    assert registry.get_run(run.run_id) is newer and len(registry) == 1


def test_cleanup_old_runs_keeps_active_and_recent_runs(make_run: Callable[..., Run]) -> None:
    registry = RunRegistry()
    old = datetime.now(UTC) - timedelta(days=40)
    finished_long_ago = make_run(status="completed", created_at=old, completed_at=old)
    running_long = make_run(status="running", created_at=old)
    finished_recently = make_run(status="failed", created_at=old, completed_at=datetime.now(UTC))
    for run in (finished_long_ago, running_long, finished_recently):
        registry.add_run(run)
    assert registry.cleanup_old_runs(days=30) == 1
    assert set(registry.runs) == {running_long.run_id, finished_recently.run_id}
    with pytest.raises(ValueError, match="days=-1 must be a number >= 0"):
        registry.cleanup_old_runs(days=-1)


def test_add_run_refuses_what_is_not_a_run() -> None:
    with pytest.raises(TypeError, match="must be a Run"):
        RunRegistry().add_run({"run_id": "x"})  # type: ignore[arg-type]


# -- the history file ------------------------------------------------------------------------------


def test_history_survives_a_new_registry(tmp_path: Path, make_run: Callable[..., Run]) -> None:
    path = tmp_path / "runs.json"
    registry = RunRegistry(path)
    run = make_run(status="completed", exit_code=0)
    registry.add_run(run)
    registry.flush()
    again = RunRegistry(path)
    assert again.get_run(run.run_id) == run
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_changes_are_written_by_the_background_thread(
    tmp_path: Path, make_run: Callable[..., Run]
) -> None:
    path = tmp_path / "runs.json"
    registry = RunRegistry(path)
    caller = threading.get_ident()
    writers: list[int] = []
    original = write_history_atomically

    def spy(p: Path, runs: object) -> None:
        writers.append(threading.get_ident())
        original(p, runs)  # type: ignore[arg-type]

    import hookqueue.plugins.adapter.registry as registry_module

    registry_module.write_history_atomically = spy  # type: ignore[assignment]
    try:
        for _ in range(50):
            registry.add_run(make_run())
        deadline = time.monotonic() + 10
        while not (path.exists() and len(load_history(path)) == 50):
            assert time.monotonic() < deadline, "the history was not written"
            time.sleep(0.01)
    finally:
        registry_module.write_history_atomically = original
    assert writers and caller not in writers
    # A burst of 50 changes is coalesced into far fewer writes.
    assert len(writers) < 50


def test_history_is_written_at_interpreter_exit(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    script = textwrap.dedent(
        f"""
        from datetime import datetime, timezone
        from hookqueue.plugins.adapter import Run, RunRegistry
        registry = RunRegistry({str(path)!r})
        registry.add_run(Run(run_id="r1", module_id="m", module_name="M", status="running",
                             created_at=datetime.now(timezone.utc)))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert [r.run_id for r in RunRegistry(path).runs.values()] == ["r1"]


def test_a_replaced_file_is_whole_even_if_the_writer_dies_mid_write(
    tmp_path: Path, make_run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs.json"
    first = make_run()
    write_history_atomically(path, [first])
    before = path.read_bytes()

    def crash(*args: object) -> None:
        raise OSError("disk died during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk died"):
        write_history_atomically(path, [first, make_run()])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["runs.json"]  # no temporary file left


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "is empty"),
        ('{"runs": [', "is not valid JSON"),
        ("42", "not a list or object of runs"),
        ('[{"run_id": "a"}]', "run #0 .*missing field"),
        (
            '[{"run_id": "a", "module_id": "m", "module_name": "M", "status": "odd", '
            '"created_at": "2024-01-01T00:00:00+00:00"}]',
            "run #0 .*status='odd'",
        ),
        ('{"format": "hookqueue.run-history", "version": 99, "runs": []}', "newer hookqueue"),
    ],
)
def test_a_corrupt_history_is_reported_and_never_overwritten(
    tmp_path: Path, content: str, problem: str, make_run: Callable[..., Run]
) -> None:
    path = tmp_path / "runs.json"
    path.write_text(content)
    with pytest.raises(RunHistoryError, match=problem) as info:
        RunRegistry(path)
    assert "was left as it is" in str(info.value) and "move it aside" in str(info.value)
    assert path.read_text() == content


def test_the_original_registrys_shapes_are_read(tmp_path: Path) -> None:
    entry = {
        "run_id": "a",
        "module_id": "m",
        "module_name": "M",
        "status": "completed",
        "created_at": "2024-01-01T00:00:00+00:00",
    }
    for document in ([entry], {"a": entry}, {"runs": [entry]}):
        path = tmp_path / "runs.json"
        path.write_text(json.dumps(document))
        assert list(RunRegistry(path).runs) == ["a"]


def test_interrupted_runs_are_those_active_in_the_file(
    tmp_path: Path, make_run: Callable[..., Run]
) -> None:
    path = tmp_path / "runs.json"
    write_history_atomically(
        path,
        [
            make_run(run_id="r", status="running"),
            make_run(run_id="q"),
            make_run(run_id="d", status="completed"),
        ],
    )
    registry = RunRegistry(path)
    assert registry.interrupted_run_ids() == ["q", "r"]
    registry.update_run(registry.runs["r"])
    assert registry.interrupted_run_ids() == ["q"]


def test_a_failing_write_is_kept_pending_and_reported_by_flush(
    tmp_path: Path, make_run: Callable[..., Run]
) -> None:
    path = tmp_path / "runs.json"
    registry = RunRegistry(path)
    path.mkdir()  # os.replace onto a directory fails, even for root
    registry.add_run(make_run())
    with pytest.raises(OSError):
        registry.flush()
    path.rmdir()
    registry.flush()  # the change stayed pending and is written now
    assert len(RunRegistry(path).runs) == 1
