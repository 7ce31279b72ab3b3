"""The ``hq_*`` fixtures of ``hookqueue.contrib.pytest_plugin``, used from this very suite."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from hookqueue import FakeClock, Queue, ValidationError, hookimpl
from hookqueue.contrib import pytest_plugin
from hookqueue.contrib.testing import HookRecorder, InProcessWorker


def test_the_plugin_is_registered_under_its_entry_point_name(
    request: pytest.FixtureRequest,
) -> None:
    assert request.config.pluginmanager.get_plugin("hookqueue") is pytest_plugin


def test_the_plugin_defines_fixtures_only_and_none_is_autouse() -> None:
    hooks = [name for name in vars(pytest_plugin) if name.startswith("pytest_")]
    assert hooks == []
    fixtures = {
        name: obj._fixture_function_marker
        for name, obj in vars(pytest_plugin).items()
        if hasattr(obj, "_fixture_function_marker")
    }
    assert sorted(fixtures) == [
        "hq_clock",
        "hq_db_path",
        "hq_hooks",
        "hq_inline_queue",
        "hq_plugins",
        "hq_queue",
        "hq_queue_options",
        "hq_record_hooks",
        "hq_worker",
    ]
    assert [name for name, marker in fixtures.items() if marker.autouse] == []
    assert {marker.scope for marker in fixtures.values()} == {"function"}


def test_hq_queue_is_a_fresh_queue_on_a_temporary_file_and_the_shared_clock(
    hq_queue: Queue, hq_clock: FakeClock, hq_db_path: Path, tmp_path: Path
) -> None:
    assert hq_queue.db.path == hq_db_path and hq_db_path.parent == tmp_path
    assert hq_queue.clock is hq_clock
    assert hq_queue.db.durability == "normal"
    assert hq_queue.inline is False
    assert hq_queue.list() == []
    assert hq_queue.now() == hq_clock.now()


def test_hq_queue_loads_the_installed_plugins_as_in_production(hq_queue: Queue) -> None:
    # Compare with a queue built the way an application builds one.
    with Queue(hq_queue.db.path.with_name("app.db"), durability="normal") as app_queue:
        expected = {name for name, plugin in app_queue.pm.list_name_plugin() if plugin is not None}
    assert {
        name for name, plugin in hq_queue.pm.list_name_plugin() if plugin is not None
    } == expected


def test_hq_inline_queue_runs_at_once_on_its_own_file(
    hq_inline_queue: Queue, hq_queue: Queue, hq_clock: FakeClock
) -> None:
    assert hq_inline_queue.inline is True
    assert hq_inline_queue.db.path != hq_queue.db.path
    assert hq_inline_queue.clock is hq_clock
    hq_inline_queue.handlers.register_handler("job", lambda task: "ran")
    assert hq_inline_queue.enqueue("job").result == "ran"
    assert hq_queue.list() == []


def test_hq_worker_shares_the_clock_with_the_queue(
    hq_queue: Queue, hq_worker: InProcessWorker, hq_clock: FakeClock
) -> None:
    assert hq_worker.queue is hq_queue and hq_worker.clock is hq_clock
    hq_queue.handlers.register_handler("job", lambda task: None)
    task = hq_queue.enqueue("job", delay=30)
    assert hq_worker.run_until_idle().tasks == ()
    hq_clock.advance(30)
    assert hq_worker.run_until_idle().task_ids == [task.id]


def test_advance_to_refuses_the_past(hq_worker: InProcessWorker, hq_clock: FakeClock) -> None:
    start = hq_clock.now()
    hq_worker.advance(10)
    with pytest.raises(ValidationError, match="is before the clock's now"):
        hq_worker.advance_to(start)
    assert hq_clock.now() == start.replace(second=10)


def test_hq_hooks_records_the_queue_and_its_workers(
    hq_queue: Queue, hq_worker: InProcessWorker, hq_hooks: HookRecorder
) -> None:
    hq_queue.handlers.register_handler("job", lambda task: None)
    task = hq_queue.enqueue("job")
    hq_worker.run_until_idle()
    hq_hooks.assert_called("hookqueue_execute", task={"id": task.id})
    assert hq_hooks.event_kinds(task.id)[-1] == "completed"


def test_hq_record_hooks_records_any_queue(
    hq_inline_queue: Queue, hq_record_hooks: Callable[..., HookRecorder]
) -> None:
    hooks = hq_record_hooks(hq_inline_queue)
    quiet = hq_record_hooks(hq_inline_queue, events=False)
    hq_inline_queue.handlers.register_handler("job", lambda task: None)
    task = hq_inline_queue.enqueue("job")
    assert hooks.event_kinds(task.id) == ["enqueued", "started", "completed"]
    assert "hookqueue_execute" in quiet.names()


class Refuser:
    """A plugin that refuses tasks of type ``nope``."""

    hookqueue_name = "refuser"

    @hookimpl(wrapper=True)
    def hookqueue_enqueue(self, new_tasks: Any) -> Any:
        if any(t.task_type == "nope" for t in new_tasks):
            raise ValidationError("task_type", "nope", "is refused", "use another type")
        return (yield)


class TestOverridingThePluginsAndOptions:
    @pytest.fixture
    def hq_plugins(self) -> Sequence[Any]:
        return [Refuser()]

    @pytest.fixture
    def hq_queue_options(self) -> Mapping[str, Any]:
        return {"load_entrypoints": False, "max_payload_bytes": 64}

    def test_the_fixtures_use_the_overrides(self, hq_queue: Queue, hq_inline_queue: Queue) -> None:
        for queue in (hq_queue, hq_inline_queue):
            assert sorted(name for name, _ in queue.pm.list_name_plugin()) == ["core", "refuser"]
            with pytest.raises(ValidationError, match="is refused"):
                queue.enqueue("nope")
            with pytest.raises(ValidationError, match="max_payload_bytes=64"):
                queue.enqueue("fine", "x" * 100)


def test_plugins_given_in_the_options_join_hq_plugins(tmp_path: Path) -> None:
    queue = pytest_plugin._open_queue(
        tmp_path / "q.db",
        FakeClock(),
        [Refuser()],
        {"load_entrypoints": False, "plugins": [object()]},
    )
    with queue:
        assert len(queue.pm.get_plugins()) == 3


def test_bad_queue_options_are_refused_naming_the_fixture(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="hq_queue_options=.*must be a dict of Queue"):
        pytest_plugin._open_queue(tmp_path / "q.db", FakeClock(), (), ["inline"])  # type: ignore[arg-type]


def test_fixture_docstrings_are_there() -> None:
    for name in ("hq_clock", "hq_queue", "hq_worker", "hq_hooks", "hq_inline_queue"):
        function = getattr(pytest_plugin, name)._fixture_function
        assert inspect.getdoc(function), name


# -- in a separate pytest process ------------------------------------------------------------

SUITE = textwrap.dedent(
    """
    import threading

    QUEUES = []

    def test_uses_the_fixtures(hq_inline_queue, hq_queue, hq_worker, hq_hooks):
        QUEUES.extend([hq_inline_queue, hq_queue])
        hq_inline_queue.handlers.register_handler("job", lambda task: "ok")
        assert hq_inline_queue.enqueue("job").result == "ok"
        hq_queue.handlers.register_handler("job", lambda task: "ok")
        hq_queue.enqueue("job")
        hq_worker.run_until_idle().assert_all_completed()
        assert any(t.name.startswith("hookqueue-inline-store") for t in threading.enumerate())

    def test_the_fixtures_cleaned_up():
        assert [q._closed for q in QUEUES] == [True, True]
        assert not any(t.name.startswith("hookqueue-inline-store") for t in threading.enumerate())
        assert all(q.pm.get_plugin("core") is not None for q in QUEUES)
    """
)


def run_pytest(
    directory: Path, *args: str, autoload: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HOOKQUEUE_"))}
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            *args,
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_the_fixtures_close_their_queues_and_threads(tmp_path: Path) -> None:
    (tmp_path / "test_suite.py").write_text(SUITE)
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("how", ["-p hookqueue", "pytest_plugins"])
def test_the_plugin_loads_on_request_when_autoloading_is_off(tmp_path: Path, how: str) -> None:
    (tmp_path / "test_suite.py").write_text(SUITE)
    args: list[str] = []
    if how == "pytest_plugins":
        (tmp_path / "conftest.py").write_text(
            'pytest_plugins = ["hookqueue.contrib.pytest_plugin"]\n'
        )
    else:
        args = ["-p", "hookqueue"]
    result = run_pytest(tmp_path, *args, autoload=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.slow
def test_without_the_plugin_the_fixtures_do_not_exist(tmp_path: Path) -> None:
    (tmp_path / "test_suite.py").write_text("def test_needs(hq_queue):\n    pass\n")
    result = run_pytest(tmp_path, autoload=False)
    assert result.returncode == 1
    assert "fixture 'hq_queue' not found" in result.stdout


@pytest.mark.slow
def test_listing_the_autoloaded_plugin_in_pytest_plugins_is_refused_as_the_docs_say(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["hookqueue.contrib.pytest_plugin"]\n')
    result = run_pytest(tmp_path)
    assert result.returncode != 0
    assert "Plugin already registered under a different name" in result.stdout + result.stderr
