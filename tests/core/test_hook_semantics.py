"""Hooks behave as pluggy documents them, through pluggy's own machinery, plus each kind's
error handling: the enqueue hook takes a batch and its result is checked, an observer's error
never stops the other observers, a registration's duplicates name both plugins, a lifecycle
hook's error names its plugin."""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from hookqueue import (
    EventKind,
    HandlerSpec,
    NewTask,
    PluginError,
    Queue,
    TaskEvent,
    WorkerEngine,
    hookimpl,
)
from hookqueue.contrib.testing import HookRecorder


def _queue(path: Path, *plugins: Any) -> Queue:
    return Queue(path, load_entrypoints=False, plugins=plugins, durability="normal")


# -- enqueue: a batch per call, checked after the whole call -----------------------------------


def test_the_enqueue_hook_is_one_call_per_batch(tmp_path: Path) -> None:
    with _queue(tmp_path / "q.db") as q, HookRecorder(q) as hooks:
        q.enqueue_many([{"task_type": "t", "payload": i} for i in range(50)])
        q.enqueue("one")
    calls = hooks.getcalls("hookqueue_enqueue")
    assert [len(c.new_tasks) for c in calls] == [50, 1]


class SetsField:
    """An enqueue wrapper that writes one field of every task."""

    def __init__(self, name: str, **changes: Any) -> None:
        self.hookqueue_name = name
        self.changes = changes

    @hookimpl(wrapper=True)
    def hookqueue_enqueue(self, new_tasks: list[NewTask]) -> Generator[None, Any, Any]:
        result = yield
        return [attrs.evolve(t, **self.changes) for t in result]


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"queue": ""}, "queue"), ({"timeout": -5}, "timeout"), ({"priority": "high"}, "priority")],
)
def test_a_wrapper_that_writes_an_invalid_field_is_refused_naming_it(
    tmp_path: Path, changes: dict[str, Any], field: str
) -> None:
    with _queue(tmp_path / "q.db", SetsField("breaker", **changes)) as q:
        with pytest.raises(PluginError) as info:
            q.enqueue("t")
        assert "plugin 'breaker'" in str(info.value) and f"set {field}=" in str(info.value)
        with pytest.raises(PluginError, match=rf"tasks\[0\]\.{field}"):
            q.enqueue_many([{"task_type": "a"}, {"task_type": "b"}])
        assert q.counts()["queued"] == 0, "nothing was written"


def test_among_several_enqueue_plugins_the_one_that_broke_the_task_is_named(
    tmp_path: Path,
) -> None:
    """With other enqueue plugins installed (the default ones: retry, opentelemetry, ...),
    the error names the plugin that set the value, not the whole list."""
    breaker = SetsField("breaker", queue="")
    with Queue(tmp_path / "q.db", plugins=[SetsField("harmless", priority=3), breaker]) as q:
        assert len(q.hooks.enqueue_plugins()) >= 3, "the default plugins take part too"
        with pytest.raises(PluginError) as info:
            q.enqueue("t")
        message = str(info.value)
        assert "plugin 'breaker' set queue=''" in message
        assert "harmless" not in message and "one of the plugins" not in message
        assert q.counts()["queued"] == 0


def test_a_wrong_shape_among_several_plugins_names_the_one_that_returned_it(
    tmp_path: Path,
) -> None:
    class Drops:
        hookqueue_name = "drops"

        @hookimpl(wrapper=True)
        def hookqueue_enqueue(self, new_tasks: list[NewTask]) -> Generator[None, Any, Any]:
            result = yield
            return result[:-1]

    with _queue(tmp_path / "q.db", SetsField("harmless", priority=3), Drops()) as q:
        with pytest.raises(PluginError, match="plugin 'drops' returned"):
            q.enqueue_many([{"task_type": "a"}, {"task_type": "b"}])


def test_plugins_that_break_a_task_only_together_are_all_listed(tmp_path: Path) -> None:
    """Neither answer is wrong alone, so no single plugin can be named."""

    class Marks:
        hookqueue_name = "marks"

        @hookimpl(wrapper=True)
        def hookqueue_enqueue(self, new_tasks: list[NewTask]) -> Generator[None, Any, Any]:
            result = yield
            return [attrs.evolve(t, headers={**t.headers, "route": "none"}) for t in result]

    class Routes:
        hookqueue_name = "routes"

        @hookimpl(wrapper=True, tryfirst=True)  # outermost: it sees what "marks" did
        def hookqueue_enqueue(self, new_tasks: list[NewTask]) -> Generator[None, Any, Any]:
            result = yield
            return [
                attrs.evolve(t, queue="") if t.headers.get("route") == "none" else t for t in result
            ]

    with _queue(tmp_path / "q.db", Marks(), Routes()) as q:
        with pytest.raises(
            PluginError, match="one of the plugins ('marks', 'routes'|'routes', 'marks') set queue"
        ):
            q.enqueue("t")
        assert q.counts()["queued"] == 0


def test_a_tryfirst_plain_implementation_cannot_skip_the_checks(tmp_path: Path) -> None:
    """The built-in used to validate innermost, so a plain ``tryfirst`` answer skipped it;
    now the queue checks what the hook returns, whoever answered."""

    class Shortcut:
        hookqueue_name = "shortcut"

        @hookimpl(tryfirst=True)
        def hookqueue_enqueue(self, new_tasks: list[NewTask]) -> list[NewTask]:
            return [attrs.evolve(t, max_attempts=0) for t in new_tasks]

    with _queue(tmp_path / "q.db", Shortcut()) as q:
        with pytest.raises(PluginError, match="plugin 'shortcut' set max_attempts=0"):
            q.enqueue("t")
        assert q.counts()["queued"] == 0


def test_a_plain_implementation_returning_the_callers_tasks_is_fine(tmp_path: Path) -> None:
    class PassThrough:
        @hookimpl(tryfirst=True)
        def hookqueue_enqueue(self, new_tasks: list[NewTask]) -> list[NewTask]:
            return list(new_tasks)

    with _queue(tmp_path / "q.db", PassThrough()) as q:
        assert q.enqueue("t", priority=3).priority == 3


@pytest.mark.parametrize("answer", ["one task", "too few", "not tasks"])
def test_a_plugin_returning_the_wrong_shape_is_refused(tmp_path: Path, answer: str) -> None:
    class Wrong:
        hookqueue_name = "wrong"

        @hookimpl(wrapper=True)
        def hookqueue_enqueue(self, new_tasks: list[NewTask]) -> Generator[None, Any, Any]:
            result = yield
            if answer == "one task":
                return result[0]
            if answer == "too few":
                return result[:-1]
            return [t.task_type for t in result]

    with _queue(tmp_path / "q.db", Wrong()) as q:
        with pytest.raises(PluginError, match="plugin 'wrong' returned"):
            q.enqueue_many([{"task_type": "a"}, {"task_type": "b"}])
        assert q.counts()["queued"] == 0


def test_the_callers_own_mistake_is_a_validation_error_naming_the_field(tmp_path: Path) -> None:
    from hookqueue import ValidationError

    with _queue(tmp_path / "q.db", SetsField("harmless")) as q:
        with pytest.raises(ValidationError, match=r"tasks\[1\]\.priority"):
            q.enqueue_many([{"task_type": "a"}, {"task_type": "b", "priority": "x"}])


# -- events: one pluggy call; an observer's error stops nobody -------------------------------


class Observer:
    def __init__(self, name: str, log: list[str], broken: bool = False) -> None:
        self.hookqueue_name = name
        self.log = log
        self.broken = broken

    @hookimpl
    def hookqueue_event(self, events: Sequence[TaskEvent]) -> None:
        self.log.append(self.hookqueue_name)
        if self.broken:
            raise RuntimeError(f"{self.hookqueue_name} is broken")


class Around:
    hookqueue_name = "around"

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl(wrapper=True)
    def hookqueue_event(self, events: Sequence[TaskEvent]) -> Generator[None, None, None]:
        self.log.append("around:before")
        try:
            yield
        finally:
            self.log.append("around:after")


def test_an_event_wrapper_wraps_the_observers_in_one_call(tmp_path: Path) -> None:
    log: list[str] = []
    plugins = [Observer("a", log), Observer("b", log), Around(log)]
    with _queue(tmp_path / "q.db", *plugins) as q, HookRecorder(q, events=False) as hooks:
        q.enqueue("t")
    assert log == ["around:before", "b", "a", "around:after"]
    (call,) = hooks.getcalls("hookqueue_event")
    assert sorted(call.plugins) == ["a", "around", "b"]


@pytest.mark.parametrize("broken", ["first", "middle", "last"])
def test_an_observer_that_raises_is_logged_by_name_and_the_rest_still_observe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    log: list[str] = []
    # pluggy calls the last registered first: c, b, a.
    names = {"first": "c", "middle": "b", "last": "a"}
    plugins = [Observer(n, log, broken=(n == names[broken])) for n in "abc"]
    with caplog.at_level(logging.ERROR), _queue(tmp_path / "q.db", *plugins) as q:
        task = q.enqueue("t")
        assert q.get(task.id).status.value == "queued", "the enqueue is unaffected"
    assert sorted(log) == ["a", "b", "c"], "every observer saw the events exactly once"
    assert f"plugin {names[broken]!r} raised in hookqueue_event" in caplog.text


def test_after_an_observer_raises_the_wrappers_see_the_error_then_wrap_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the event hook departs from pluggy (hookspecs.hookqueue_event says why): the
    wrapper sees the observer's exception in the first call, and wraps a second call made
    for the observers that had not run."""
    log: list[str] = []
    seen: list[str] = []

    class Watching(Around):
        @hookimpl(wrapper=True)
        def hookqueue_event(self, events: Sequence[TaskEvent]) -> Generator[None, None, None]:
            try:
                yield
                seen.append("ok")
            except RuntimeError as exc:
                seen.append(str(exc))
                raise

    # pluggy calls the last registered first: c (broken), then b, a.
    plugins = [Observer("a", log), Observer("b", log), Observer("c", log, broken=True)]
    with caplog.at_level(logging.ERROR), _queue(tmp_path / "q.db", *plugins, Watching(log)) as q:
        q.enqueue("t")
    assert [x for x in log if x in "abc"] == ["c", "b", "a"], "each observer ran once"
    assert seen == ["c is broken", "ok"], "the wrapper saw the error, then wrapped the rest"


# -- registrations: wrappers may filter; duplicates name both plugins --------------------------


class Contributes:
    def __init__(self, name: str, *types: str) -> None:
        self.hookqueue_name = name
        self.types = types

    @hookimpl
    def hookqueue_handlers(self) -> list[HandlerSpec]:
        return [HandlerSpec(task_type=t, handler=lambda task, t=t: t) for t in self.types]


def test_a_handlers_wrapper_can_filter_what_plugins_contribute(tmp_path: Path) -> None:
    class OnlyEmail:
        @hookimpl(wrapper=True)
        def hookqueue_handlers(self) -> Generator[None, Any, Any]:
            batches = yield
            return [[s for s in batch if s.task_type == "email"] for batch in batches]

    plugins = [Contributes("mail", "email", "sms"), OnlyEmail()]
    with _queue(tmp_path / "q.db", *plugins) as q:
        assert q.handlers.get_registered_types() == ["email"]


def test_a_task_type_contributed_twice_names_both_plugins(tmp_path: Path) -> None:
    with pytest.raises(PluginError) as info:
        _queue(tmp_path / "q.db", Contributes("one", "email"), Contributes("two", "x", "email"))
    message = str(info.value)
    assert "'email'" in message and "plugin 'one'" in message and "plugin 'two'" in message


# -- lifecycle: an error names its plugin ------------------------------------------------------


def test_a_queue_open_hook_that_raises_names_its_plugin(tmp_path: Path) -> None:
    class Faulty:
        hookqueue_name = "faulty-open"

        @hookimpl
        def hookqueue_queue_open(self, queue: Queue) -> None:
            raise OSError("cannot reach the metrics server")

    with pytest.raises(PluginError, match="plugin 'faulty-open' raised in hookqueue_queue_open"):
        _queue(tmp_path / "q.db", Faulty())


def test_a_worker_start_hook_that_raises_names_its_plugin(tmp_path: Path) -> None:
    class Faulty:
        hookqueue_name = "faulty-start"

        @hookimpl
        def hookqueue_worker_start(self, worker: Any) -> None:
            raise ValueError("no port")

    with _queue(tmp_path / "q.db", Faulty()) as q:
        with pytest.raises(PluginError, match="plugin 'faulty-start' raised in hookqueue_worker"):
            WorkerEngine(q, worker_id="w").run_until_idle()


def test_tracing_sees_every_hook_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOOKQUEUE_TRACE_PLUGINS", "1")
    with caplog.at_level(logging.DEBUG, logger="hookqueue.plugins"):
        with _queue(tmp_path / "q.db", Observer("o", [])) as q:
            q.handlers.register_handler("t", lambda task: "ok")
            q.enqueue("t")
            WorkerEngine(q, worker_id="w").run_until_idle()
    traced = caplog.text
    for hook in ("hookqueue_enqueue", "hookqueue_lease", "hookqueue_execute", "hookqueue_event"):
        assert hook in traced, f"{hook} went through pluggy's tracing"
    assert EventKind.COMPLETED.value in traced
