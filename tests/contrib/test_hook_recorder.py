"""``HookRecorder``: hook calls recorded through pluggy's hook-call monitoring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pluggy
import pytest

from hookqueue import (
    EventKind,
    FakeClock,
    NewTask,
    Queue,
    Task,
    TaskEvent,
    ValidationError,
    hookimpl,
)
from hookqueue.contrib.testing import HookRecorder, RecordedHookCall, run_due


@pytest.fixture
def hq_queue_options() -> Mapping[str, Any]:
    return {"load_entrypoints": False}


class Stamp:
    """An enqueue wrapper that adds a header, or refuses tasks of type ``forbidden``."""

    hookqueue_name = "stamp"

    @hookimpl(wrapper=True)
    def hookqueue_enqueue(self, new_tasks: list[NewTask]) -> Any:
        if any(t.task_type == "forbidden" for t in new_tasks):
            raise ValidationError("task_type", "forbidden", "is refused by stamp", "pick another")
        result = yield
        return [attrs.evolve(t, headers={**t.headers, "stamped": True}) for t in result]


class Collector:
    """Collects events; raises on the first batch when ``broken``."""

    def __init__(self, name: str, broken: bool = False) -> None:
        self.hookqueue_name = name
        self.broken = broken
        self.seen: list[TaskEvent] = []

    @hookimpl
    def hookqueue_event(self, events: Sequence[TaskEvent]) -> None:
        if self.broken:
            raise RuntimeError(f"{self.hookqueue_name} is broken")
        self.seen.extend(events)


def make_queue(tmp_path: Path, clock: FakeClock, *plugins: Any) -> Queue:
    return Queue(tmp_path / "q.db", clock=clock, load_entrypoints=False, plugins=plugins)


def test_records_each_call_with_its_arguments_plugins_thread_and_result(
    tmp_path: Path, hq_clock: FakeClock
) -> None:
    with make_queue(tmp_path, hq_clock, Stamp()) as q, HookRecorder(q) as hooks:
        q.handlers.register_handler("add", lambda task: 1)
        task = q.enqueue("add", {"a": 1})
        run_due(q)

    call = hooks.getcall("hookqueue_enqueue")
    assert isinstance(call, RecordedHookCall)
    assert call.new_tasks[0].task_type == "add" and call.queue is q
    assert call.plugins == ["core", "stamp"]
    assert call.result[0].headers == {"stamped": True}
    assert call.exception is None
    assert call.at == hq_clock.now()
    assert call.thread == "MainThread"
    lease = hooks.getcalls("hookqueue_lease")[0]
    assert lease.thread.startswith("hookqueue-inline-store")
    assert lease.request.worker_id == "inline"
    execute = hooks.getcall("hookqueue_execute")
    assert execute.task.id == task.id and execute.worker_id == "inline"
    with pytest.raises(AttributeError, match="was not called with an argument 'nope'; it has"):
        _ = execute.nope
    assert repr(execute).startswith(
        f"hookqueue_execute(task=Task(id={task.id}, task_type='add', status=running"
    )


def test_records_the_exception_of_a_call_that_raised(tmp_path: Path, hq_clock: FakeClock) -> None:
    with make_queue(tmp_path, hq_clock, Stamp()) as q, HookRecorder(q) as hooks:
        with pytest.raises(ValidationError):
            q.enqueue("forbidden")
    call = hooks.getcall("hookqueue_enqueue")
    assert isinstance(call.exception, ValidationError) and call.result is None


def test_an_event_call_to_several_observers_is_one_call_naming_them_all(
    tmp_path: Path, hq_clock: FakeClock
) -> None:
    broken, good = Collector("broken", broken=True), Collector("good")
    with make_queue(tmp_path, hq_clock, broken, good) as q, HookRecorder(q) as hooks:
        task = q.enqueue("job")

    (call,) = hooks.getcalls("hookqueue_event")
    assert sorted(call.plugins) == ["broken", "good"]
    assert isinstance(call.exception, RuntimeError)
    assert [e.kind for e in good.seen] == [EventKind.ENQUEUED]
    assert hooks.events(task_id=task.id)[0].task.id == task.id


def test_events_are_sent_while_recording_even_without_observers(
    hq_queue: Queue, hq_hooks: HookRecorder
) -> None:
    hq_queue.handlers.register_handler("job", lambda task: None)
    task = hq_queue.enqueue("job")
    run_due(hq_queue)
    assert hq_hooks.event_kinds(task.id) == ["enqueued", "started", "completed"]
    # The recorder's own event sink is left out of the plugins.
    assert hq_hooks.getcalls("hookqueue_event")[0].plugins == []
    assert (
        hq_hooks.events("completed", worker_id="inline", task={"attempts": 1})[0].task.id == task.id
    )
    assert hq_hooks.events(EventKind.FAILED) == []


def test_without_the_event_sink_no_events_are_built(hq_queue: Queue) -> None:
    with HookRecorder(hq_queue, events=False) as hooks:
        hq_queue.enqueue("job")
    assert hooks.names() == ["hookqueue_enqueue"]
    assert hooks.events() == []


def test_assert_called_matches_arguments_and_counts(
    hq_queue: Queue, hq_hooks: HookRecorder
) -> None:
    hq_queue.handlers.register_handler("job", lambda task: None)
    hq_queue.enqueue("job", {"n": 1})
    hq_queue.enqueue("job", {"n": 2}, priority=7)
    run_due(hq_queue)

    calls = hq_hooks.assert_called("hookqueue_execute", times=2)
    assert [c.task.payload["n"] for c in calls] == [1, 2]
    (one,) = hq_hooks.assert_called("hookqueue_execute", task={"payload": {"n": 2}, "priority": 7})
    assert one.task.payload == {"n": 2}
    hq_hooks.assert_called("hookqueue_enqueue", new_tasks=lambda nts: nts[0].priority == 7)
    hq_hooks.assert_not_called("hookqueue_retry")
    hq_hooks.assert_not_called("hookqueue_execute", task={"payload": {"n": 3}})


def test_assert_called_failure_lists_the_recorded_calls(
    hq_queue: Queue, hq_hooks: HookRecorder
) -> None:
    hq_queue.enqueue("job", {"n": 1})
    with pytest.raises(AssertionError) as excinfo:
        hq_hooks.assert_called(
            "hookqueue_enqueue", new_tasks=lambda nts: nts[0].task_type == "other"
        )
    message = str(excinfo.value)
    assert "expected at least 1 call(s) of hookqueue_enqueue(new_tasks=<function" in message
    assert "); found 0" in message
    assert "  > hookqueue_enqueue(queue=Queue(" in message
    assert "    hookqueue_event(events=[TaskEvent(enqueued, task=1, worker=None)])" in message

    with pytest.raises(AssertionError, match="expected exactly 2 call"):
        hq_hooks.assert_called("hookqueue_enqueue", times=2)
    with pytest.raises(AssertionError, match="expected no call of hookqueue_enqueue; found 1"):
        hq_hooks.assert_not_called("hookqueue_enqueue")


def test_an_unknown_hook_name_is_refused(hq_hooks: HookRecorder) -> None:
    with pytest.raises(ValidationError, match="hookqueue_enqeue.*is not a hook.*hookqueue_enqueue"):
        hq_hooks.assert_called("hookqueue_enqeue")
    with pytest.raises(ValidationError):
        hq_hooks.assert_not_called("nope")
    with pytest.raises(ValidationError):
        hq_hooks.assert_called_in_order("hookqueue_lease", "nope")


def test_assert_called_in_order(hq_queue: Queue, hq_hooks: HookRecorder) -> None:
    hq_queue.handlers.register_handler("job", lambda task: None)
    hq_queue.enqueue("job")
    run_due(hq_queue)
    hq_hooks.assert_called_in_order("hookqueue_enqueue", "hookqueue_lease", "hookqueue_execute")
    with pytest.raises(AssertionError, match="no hookqueue_enqueue after the earlier ones"):
        hq_hooks.assert_called_in_order("hookqueue_execute", "hookqueue_enqueue")


def test_getcall_needs_exactly_one(hq_queue: Queue, hq_hooks: HookRecorder) -> None:
    with pytest.raises(AssertionError, match="expected exactly 1 call of hookqueue_enqueue, got 0"):
        hq_hooks.getcall("hookqueue_enqueue")
    hq_queue.enqueue("a")
    hq_queue.enqueue("b")
    with pytest.raises(AssertionError, match="got 2"):
        hq_hooks.getcall("hookqueue_enqueue")
    assert len(hq_hooks.getcalls("hookqueue_enqueue hookqueue_event")) == 4
    hq_hooks.clear()
    assert hq_hooks.calls == []


def test_closing_stops_recording_and_unregisters_the_sink(hq_queue: Queue) -> None:
    before = {name for name, _ in hq_queue.pm.list_name_plugin()}
    hooks = HookRecorder(hq_queue)
    assert len({name for name, _ in hq_queue.pm.list_name_plugin()}) == len(before) + 1
    hq_queue.enqueue("a")
    hooks.close()
    hooks.close()  # idempotent
    hq_queue.enqueue("b")
    assert [c.new_tasks[0].task_type for c in hooks.getcalls("hookqueue_enqueue")] == ["a"]
    assert {name for name, _ in hq_queue.pm.list_name_plugin()} == before
    assert "closed" in repr(hooks)


@pytest.mark.parametrize("close_first", ["older", "newer"])
def test_recorders_stop_in_any_order_without_unhooking_each_other(
    hq_queue: Queue, close_first: str
) -> None:
    older = HookRecorder(hq_queue)
    newer = HookRecorder(hq_queue)
    first, second = (older, newer) if close_first == "older" else (newer, older)
    first.close()
    hq_queue.enqueue("after")
    assert [c.new_tasks[0].task_type for c in second.getcalls("hookqueue_enqueue")] == ["after"]
    assert first.getcalls("hookqueue_enqueue") == []
    second.close()
    hq_queue.enqueue("later")
    assert second.getcalls("hookqueue_enqueue")[-1].new_tasks[0].task_type == "after"


def test_a_foreign_monitor_installed_later_survives_our_close(hq_queue: Queue) -> None:
    ours = HookRecorder(hq_queue)
    theirs: list[str] = []
    undo = hq_queue.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: theirs.append(name), lambda *a: None
    )
    try:
        ours.close()
        hq_queue.enqueue("x")
        assert "hookqueue_enqueue" in theirs
        # A new recorder still works on top of both.
        with HookRecorder(hq_queue, events=False) as again:
            hq_queue.enqueue("y")
        assert again.names() == ["hookqueue_enqueue"]
    finally:
        undo()


def test_a_plugin_manager_can_be_recorded_directly() -> None:
    pm = pluggy.PluginManager("hookqueue")
    from hookqueue.core import hookspecs

    pm.add_hookspecs(hookspecs)
    with HookRecorder(pm, events=False) as hooks:
        pm.hook.hookqueue_queue_open(queue=None)
    call = hooks.getcall("hookqueue_queue_open")
    assert call.at is None and call.plugins == []


def test_a_bad_target_is_refused() -> None:
    with pytest.raises(ValidationError, match="is neither a Queue nor a pluggy PluginManager"):
        HookRecorder("queue.db")  # type: ignore[arg-type]


def test_calls_from_a_worker_thread_are_recorded_with_their_results(
    hq_queue: Queue, hq_hooks: HookRecorder
) -> None:
    def fails(task: Task) -> None:
        raise OSError("disk")

    hq_queue.handlers.register_handler("fails", fails)
    hq_queue.enqueue("fails")
    run_due(hq_queue)
    retry = hq_hooks.getcall("hookqueue_retry")
    assert retry.failure.kind == "error" and "OSError: disk" in retry.failure.message
    assert retry.result.retry is False  # the core alone gives up
    assert retry.plugins == ["core"]  # run_due's own failure capture is hidden
