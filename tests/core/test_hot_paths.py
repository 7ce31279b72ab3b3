"""The fast paths of enqueue, lease, settle and cancel keep the slow paths' behaviour."""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import apsw
import attrs
import pytest

from hookqueue import FakeClock, Queue
from hookqueue.core.errors import DatabaseBusy
from hookqueue.core.execution import Execution
from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import EventKind, Task, TaskEvent, TaskStatus
from hookqueue.core.storage import Settlement
from hookqueue.core.store import QueueDatabase


def _raw(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(10_000)
    return conn


class _Recorder:
    def __init__(self) -> None:
        self.events: list[TaskEvent] = []

    @hookimpl
    def hookqueue_event(self, events: list[TaskEvent]) -> None:
        self.events.extend(events)


def test_from_row_reads_what_the_attrs_constructor_would_build(core_queue: Queue) -> None:
    """Task.from_row skips attrs' __init__; the task equals one built field by field."""
    core_queue.enqueue("job", {"a": [1, 2]}, headers={"tenant": "t"}, idempotency_key="k")
    (task,) = core_queue.runtime.lease("w", limit=1)
    rebuilt = Task(**{f: getattr(task, f) for f in task.to_dict() if f != "type"})
    assert rebuilt == task
    assert task.status is TaskStatus.RUNNING and task.lease_expires_at is not None
    assert task.payload == {"a": [1, 2]} and task.headers == {"tenant": "t"}


def test_held_completion_equals_the_row_for_every_result_shape(core_queue: Queue) -> None:
    """The held-task completion path decodes the result as a read of the row would."""
    results = [None, 0, "s", [1, {"a": None}], {"nested": {"x": [1.5, True]}}]
    core_queue.enqueue_many([{"task_type": "job", "payload": {"n": n}} for n in range(5)])
    leased = core_queue.runtime.lease("w", limit=5)
    settled = core_queue.runtime.settle(
        "w",
        [
            Settlement(
                task_id=t.id,
                kind="complete",
                result_json=None if r is None else json.dumps(r),
                task=t,
            )
            for t, r in zip(leased, results, strict=True)
        ],
    )
    assert [t.result for t in settled] == results
    assert settled == [core_queue.get(t.id) for t in leased]


def test_batched_completion_skips_lost_leases_and_keeps_each_result(
    core_queue: Queue, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Held completions are written in one statement; a task whose lease another worker took
    over is left alone (and logged), the others get their own results, and a completion
    without the held task takes the row-by-row path in the same transaction."""
    core_queue.enqueue_many(
        [{"task_type": "job", "payload": {"n": n}, "max_attempts": 3} for n in range(4)]
    )
    a, b, c, d = core_queue.runtime.lease("w1", limit=4, lease_seconds=1)
    clock.advance(2)  # every lease expires ...
    core_queue.runtime.heartbeat("w1", [a.id, c.id, d.id], 10)  # ... but w1 renews three in time
    taken = core_queue.runtime.lease("w2", limit=4)  # w2 takes over b only
    assert [t.id for t in taken] == [b.id]
    with caplog.at_level(logging.WARNING, logger="hookqueue.store"):
        settled = core_queue.runtime.settle(
            "w1",
            [
                Settlement(task_id=a.id, kind="complete", result_json='"a"', task=a),
                Settlement(task_id=b.id, kind="complete", result_json='"b"', task=b),
                Settlement(task_id=c.id, kind="complete", result_json=None, task=c),
                Settlement(task_id=d.id, kind="complete", result_json='"d"'),  # not held
            ],
        )
    assert [(t.id, t.result) for t in settled] == [(a.id, "a"), (c.id, None), (d.id, "d")]
    assert core_queue.get(b.id).status is TaskStatus.RUNNING
    assert core_queue.get(b.id).locked_by == "w2"
    assert f"no longer holds the lease of task {b.id}" in caplog.text
    assert settled == [core_queue.get(t.id) for t in (a, c, d)]


def test_fast_constructors_build_what_init_builds(core_queue: Queue) -> None:
    """The hot paths build tasks, events and settlements without attrs' __init__; each
    equals the __init__-built record and sets every field (a field added to a class
    without its fast constructor fails here)."""
    task = core_queue.enqueue("job", {"n": 1}, headers={"h": "v"})
    (leased,) = core_queue.runtime.lease("w", limit=1)
    at = core_queue.now()
    pairs = [
        (
            TaskEvent._make(EventKind.STARTED, leased, at, "w", 0.5, "boom", "why"),
            TaskEvent(
                kind=EventKind.STARTED,
                task=leased,
                at=at,
                worker_id="w",
                duration=0.5,
                error="boom",
                reason="why",
            ),
        ),
        (
            Settlement.completed(leased, '"x"', 0.25),
            Settlement(
                task_id=leased.id, kind="complete", result_json='"x"', duration=0.25, task=leased
            ),
        ),
        (task._replaced({}), Task(**{f.name: getattr(task, f.name) for f in attrs.fields(Task)})),
    ]
    for fast, built in pairs:
        assert fast == built
        assert vars(fast).keys() == {f.name for f in attrs.fields(type(built))}
        assert attrs.asdict(fast, recurse=False) == attrs.asdict(built, recurse=False)


def test_from_row_reuses_a_known_tasks_payload_only_for_the_same_id(core_queue: Queue) -> None:
    first, second = core_queue.enqueue_many(
        [{"task_type": "job", "payload": {"n": 1}}, {"task_type": "job", "payload": {"n": 2}}]
    )
    row = core_queue.db._cx.conn().execute("SELECT * FROM tasks WHERE id = ?", (first.id,)).get
    assert Task.from_row(row, first).payload is first.payload
    assert Task.from_row(row, second).payload == {"n": 1}


def test_enqueued_task_owns_its_payload(core_queue: Queue) -> None:
    """The returned task does not share the caller's (mutable) payload object."""
    payload: dict[str, Any] = {"items": [1]}
    task = core_queue.enqueue("job", payload)
    payload["items"].append(2)
    assert task.payload == {"items": [1]}
    assert core_queue.enqueue("job", "text").payload == "text"
    assert core_queue.enqueue("job", (1, 2)).payload == [1, 2]  # what is stored: a list


class _Colour(enum.StrEnum):
    RED = "red"


@pytest.mark.parametrize(
    "payload",
    [
        {"n": 1, "s": "x", "f": -0.0, "b": True, "none": None},  # flat: copied as it is
        {"colour": _Colour.RED},  # a str subclass value: stored as its plain value
        {_Colour.RED: 1},  # a str subclass key
        {"nested": {"a": (1, 2)}},  # nested, with a tuple: decoded from the stored JSON
    ],
)
def test_enqueued_payload_is_what_a_read_returns(core_queue: Queue, payload: Any) -> None:
    """Whatever path copies the payload, the returned task equals the stored one, with the
    exact types a read gives (plain str, lists for tuples), and does not share the caller's
    dict."""
    task = core_queue.enqueue("job", payload)
    stored = core_queue.get(task.id)
    assert task == stored
    assert [type(k) for k in task.payload] == [type(k) for k in stored.payload]
    assert [type(v) for v in task.payload.values()] == [type(v) for v in stored.payload.values()]
    assert task.payload is not payload


def test_leased_tasks_come_in_plan_order(core_queue: Queue, clock: FakeClock) -> None:
    """Rows are sorted by their integer columns before decoding: due order, then id."""
    later = core_queue.enqueue("job", {"n": "later"}, delay=1)
    first = core_queue.enqueue("job", {"n": "first"})
    second = core_queue.enqueue("job", {"n": "second"})
    clock.advance(2)
    leased = core_queue.runtime.lease("w", limit=3)
    assert [t.id for t in leased] == [first.id, second.id, later.id]


def test_settle_event_carries_the_stored_outcome(db_path: Path, clock: FakeClock) -> None:
    """A completion event built from the worker's task shows the row after the change,
    including a cancellation requested while the attempt ran."""
    recorder = _Recorder()
    with Queue(db_path, load_entrypoints=False, clock=clock, plugins=[recorder]) as q:
        q.enqueue("job", {"n": 1})
        (task,) = q.runtime.lease("w", limit=1)
        q.cancel(task.id)  # marks it; the attempt still completes
        recorder.events.clear()
        q.runtime.lease(
            "w",
            limit=0,
            settlements=[
                Settlement(task_id=task.id, kind="complete", result_json='{"ok":1}', task=task)
            ],
        )
        stored = q.get(task.id)
    (event,) = recorder.events
    # Built from the held task without reading the row back, yet equal to the stored row.
    assert event.task == stored
    assert event.task.status is TaskStatus.COMPLETED
    assert event.task.result == {"ok": 1} and event.task.cancel_requested is True
    assert event.task.payload == {"n": 1} and event.task.locked_by is None


def test_damaged_settled_row_keeps_its_outcome_and_loses_only_its_event(
    db_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The outcome is committed before rows are decoded: a row that cannot be read after
    the change is stored as settled; only its event is skipped, and the log says so."""
    recorder = _Recorder()
    with Queue(db_path, load_entrypoints=False, clock=clock, plugins=[recorder]) as q:
        q.enqueue_many([{"task_type": "job", "payload": {"n": n}} for n in range(2)])
        bad, good = q.runtime.lease("w", limit=2)
        conn = _raw(db_path)
        conn.execute("UPDATE tasks SET payload = '{broken' WHERE id = ?", (bad.id,))
        conn.close()
        recorder.events.clear()
        with caplog.at_level(logging.ERROR, logger="hookqueue.store"):
            settled = q.runtime.settle(
                "w",
                [Settlement(task_id=t.id, kind="complete") for t in (bad, good)],
            )
        statuses = dict(q.db._cx.conn().execute("SELECT id, status FROM tasks"))
    assert [t.id for t in settled] == [good.id]
    assert [e.task.id for e in recorder.events] == [good.id]
    assert statuses == {bad.id: "completed", good.id: "completed"}
    assert f"task {bad.id} was settled" in caplog.text


def test_execution_cancel_event_is_one_event_from_any_thread() -> None:
    task = Task.from_row(
        (1, "q", "job", "null", 1, "running", 1, 1, 0, None, None, None, "w", 1, 0)
        + (None, None, 0, 0, None)
    )
    execution = Execution(task=task, worker_id="w")
    assert not execution.cancelled
    execution.check_cancelled()  # no event needed to say "not cancelled"
    seen: list[threading.Event] = []
    threads = [
        threading.Thread(target=lambda: seen.append(execution.cancel_event)) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(e is seen[0] for e in seen)
    execution.cancel("by test")
    assert execution.cancelled and seen[0].is_set()
    given = threading.Event()
    assert Execution(task=task, worker_id="w", cancel_event=given).cancel_event is given


def test_busy_handler_waits_busy_timeout_then_raises(tmp_path: Path) -> None:
    """The short-sleep busy handler still gives up after busy_timeout, with DatabaseBusy."""
    path = tmp_path / "q.db"
    db = QueueDatabase(path, busy_timeout=0.3, durability="normal")
    db.initialize_schema()
    holder = _raw(path)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseBusy):
            db.cancel(1, 0)
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert 0.25 <= waited < 2.0
    with pytest.raises(Exception, match="not found|1"):
        db.cancel(1, 0)  # the lock is gone: the call reaches the table
    db.close()


def test_busy_handler_takes_a_lock_soon_after_it_is_released(tmp_path: Path) -> None:
    """A writer waiting for another connection's transaction gets in within milliseconds of
    the release. SQLite's own busy timeout sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50 … ms,
    so after a 0.2 s hold it would look again only about 28 ms after the release."""
    path = tmp_path / "q.db"
    q = Queue(path, load_entrypoints=False, durability="normal")
    gaps = []
    for _ in range(3):
        holder = _raw(path)
        holder.execute("BEGIN IMMEDIATE")
        released: list[float] = []

        def release(conn: apsw.Connection = holder, out: list[float] = released) -> None:
            time.sleep(0.2)
            out.append(time.monotonic())
            conn.execute("ROLLBACK")

        thread = threading.Thread(target=release)
        thread.start()
        q.enqueue("job")
        done = time.monotonic()
        thread.join()
        holder.close()
        gaps.append(done - released[0])
    q.close()
    assert min(gaps) < 0.012, gaps


async def test_group_commit_survives_a_cancelled_caller(core_queue: Queue) -> None:
    """Concurrent enqueue_async calls resolve on their loop together; a caller cancelled
    while its request is queued does not disturb the others (its task may be stored)."""
    calls = [asyncio.create_task(core_queue.enqueue_async("job", {"n": n})) for n in range(50)]
    await asyncio.sleep(0)  # every call has submitted its request and awaits its future
    calls[7].cancel()
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(done[7], asyncio.CancelledError)
    tasks = [t for i, t in enumerate(done) if i != 7]
    assert all(isinstance(t, Task) for t in tasks)
    assert [t.payload["n"] for t in tasks] == [n for n in range(50) if n != 7]  # type: ignore[union-attr]
    stored = {t.id for t in core_queue.list(limit=100)}
    assert {t.id for t in tasks} <= stored  # type: ignore[union-attr]


async def test_group_commit_reports_each_callers_own_error(core_queue: Queue) -> None:
    """One bad request in a shared batch fails alone; the others are stored."""
    core_queue.enqueue("job", idempotency_key="taken")
    conn = _raw(core_queue.db.path)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON tasks WHEN NEW.task_type = 'bad' "
        "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
    )
    conn.close()
    results = await asyncio.gather(
        core_queue.enqueue_async("job", {"n": 1}),
        core_queue.enqueue_async("bad"),
        core_queue.enqueue_async("job", {"n": 2}),
        return_exceptions=True,
    )
    assert isinstance(results[0], Task) and isinstance(results[2], Task)
    assert isinstance(results[1], Exception) and "refused by test" in str(results[1])


def test_enqueue_many_defaults_are_enqueues() -> None:
    """enqueue_many fills missing keys from a table of enqueue()'s defaults: the table must
    follow the signature."""
    import inspect

    from hookqueue.core.queue import _ENQUEUE_ARGS, _ENQUEUE_DEFAULTS

    params = inspect.signature(Queue.enqueue).parameters
    signature_defaults = {
        name: p.default
        for name, p in params.items()
        if name not in ("self", "task_type") and p.default is not inspect.Parameter.empty
    }
    assert signature_defaults == _ENQUEUE_DEFAULTS
    assert _ENQUEUE_ARGS == {"task_type", *signature_defaults}
