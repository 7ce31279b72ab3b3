"""Operating a queue: filters, bulk actions, history, paused queues, retention, dedup answers,
all-queues and recycled workers, and the ``tasklog`` plugin's lines."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import apsw
import pytest

from hookqueue import (
    FakeClock,
    Queue,
    TaskFilter,
    TaskNotFound,
    TaskStatus,
    ValidationError,
    WorkerEngine,
)
from hookqueue.core import logs


def _fail(task):  # type: ignore[no-untyped-def]
    raise ValueError(f"bad input {task.payload}")


def _ok(task):  # type: ignore[no-untyped-def]
    return task.payload


def _mixed_queue(q: Queue) -> dict[str, list[int]]:
    """Two queued 'a' tasks in queue x, one queued 'b' in y, two failed 'c' tasks."""
    q.handlers.register_handler("c", _fail)
    ids = {
        "a": [q.enqueue("a", i, queue="x").id for i in range(2)],
        "b": [q.enqueue("b", queue="y").id],
        "c": [q.enqueue("c", i, max_attempts=1).id for i in range(2)],
    }
    WorkerEngine(q, worker_id="w").run_until_idle()
    return ids


def test_filters_count_list_and_describe(core_queue: Queue, clock: FakeClock) -> None:
    ids = _mixed_queue(core_queue)
    assert core_queue.count() == 5
    assert core_queue.count(status="queued") == 3
    assert core_queue.count(status=["failed"], task_type="c") == 2
    assert core_queue.count(queue=["x", "y"]) == 3
    assert core_queue.count(error_contains="BAD INPUT 1") == 1
    assert core_queue.count(ids=[ids["a"][0], ids["c"][1]]) == 2
    clock.advance(3600)
    late = core_queue.enqueue("a", queue="x")
    assert core_queue.count(older_than=timedelta(minutes=30)) == 5
    flt = core_queue.filter(task_type="a", older_than=60)
    listed = core_queue.list(filter=flt, limit=10)
    assert [t.id for t in listed] == sorted(ids["a"])
    assert late.id not in {t.id for t in listed}
    assert all(flt.matches(t) for t in listed)
    assert "type a" in flt.describe() and "enqueued before" in flt.describe()
    assert TaskFilter().is_empty and not flt.is_empty


def test_a_bad_filter_names_the_field(core_queue: Queue) -> None:
    with pytest.raises(ValidationError, match="filter"):
        core_queue.count(status="finished-ish")
    with pytest.raises(ValidationError, match="older_than"):
        core_queue.count(older_than=-5)
    with pytest.raises(ValidationError):
        core_queue.count(ids=["seven"])


def test_bulk_cancel_retry_purge_and_delete(core_queue: Queue) -> None:
    ids = _mixed_queue(core_queue)
    q = core_queue
    # cancel touches queued (and running) tasks only
    assert q.cancel_matching(queue="x") == 2
    assert {q.get(i).status for i in ids["a"]} == {TaskStatus.CANCELLED}
    assert q.cancel_matching(status="failed") == 0, "finished tasks are left alone"
    # retry takes failed and cancelled tasks back to queued, clearing the error
    assert q.retry_matching(task_type="c") == 2
    again = q.get(ids["c"][0])
    assert again.status is TaskStatus.QUEUED and again.error_message is None
    assert again.attempts == 0
    # purge deletes queued tasks only
    assert q.purge(task_type="a") == 0, "cancelled tasks are not purged"
    assert q.purge(task_type=["b", "c"]) == 3
    with pytest.raises(TaskNotFound):
        q.get(ids["b"][0])
    # delete_matching takes finished ones too (never running)
    assert q.delete_matching(queue="x") == 2
    assert q.count() == 0


def test_bulk_actions_cover_more_than_one_batch(core_queue: Queue) -> None:
    core_queue.enqueue_many([{"task_type": "t", "payload": i} for i in range(1234)])
    assert core_queue.cancel_matching(task_type="t") == 1234
    assert core_queue.retry_matching(status="cancelled") == 1234
    assert core_queue.purge(status="queued") == 1234
    assert core_queue.count() == 0


def test_bulk_actions_count_a_damaged_task_they_changed(
    core_queue: Queue, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A task whose stored row cannot be decoded is cancelled and retried like the others,
    and counted: the CLI and the dashboard report that count after counting the matches. The
    store logs it; nothing raises after the batches committed."""
    ok, bad = (core_queue.enqueue("t", i).id for i in range(2))
    raw = apsw.Connection(str(db_path))
    raw.execute("UPDATE tasks SET payload = '{not json' WHERE id = ?", (bad,))
    raw.close()
    assert core_queue.count(task_type="t") == 2
    with caplog.at_level(logging.ERROR):
        assert core_queue.cancel_matching(task_type="t") == 2
    assert f"task {bad} is damaged" in caplog.text and "cancelled like the others" in caplog.text
    assert core_queue.count(status="cancelled") == 2
    assert core_queue.get(ok).status is TaskStatus.CANCELLED
    with caplog.at_level(logging.ERROR):
        assert core_queue.retry_matching(task_type="t") == 2
    assert core_queue.count(status="queued") == 2


def test_history_keeps_every_failed_attempt_with_its_traceback(
    queue: Queue, clock: FakeClock
) -> None:
    core_queue = queue  # with the retry plugin: the first failure is retried
    core_queue.handlers.register_handler("c", _fail)
    task = core_queue.enqueue("c", 7, max_attempts=2)
    worker = WorkerEngine(core_queue, worker_id="w1")
    worker.run_until_idle()
    clock.advance(3600)  # past the retry's backoff
    worker.run_until_idle()
    assert core_queue.get(task.id).status is TaskStatus.FAILED
    core_queue.retry(task.id)
    history = core_queue.history(task.id)
    assert [f.attempt for f in history] == [1, 2]
    assert all(f.worker_id == "w1" for f in history)
    assert history[0].error == "ValueError: bad input 7"
    assert history[0].traceback and "_fail" in history[0].traceback
    assert "raise ValueError" in history[0].traceback
    assert history[0].at <= history[1].at
    assert core_queue.history(core_queue.enqueue("c").id) == []
    with pytest.raises(TaskNotFound):
        core_queue.history(999)


def test_paused_queue_is_not_leased_by_any_worker_and_stays_paused(db_path: Path) -> None:
    q = Queue(db_path, load_entrypoints=False)
    q.handlers.register_handler("t", _ok)
    held = q.enqueue("t", 1, queue="mail")
    free = q.enqueue("t", 2)
    assert q.pause("mail") is True and q.pause("mail") is False
    WorkerEngine(q, worker_id="w", queues=["mail", "default"]).run_until_idle()
    assert q.get(held.id).status is TaskStatus.QUEUED
    assert q.get(free.id).status is TaskStatus.COMPLETED
    q.close()
    # persisted: another Queue on the same file sees it paused
    q = Queue(db_path, load_entrypoints=False)
    q.handlers.register_handler("t", _ok)
    assert set(q.paused_queues()) == {"mail"}
    WorkerEngine(q, worker_id="w2", queues=["mail"]).run_until_idle()
    assert q.get(held.id).status is TaskStatus.QUEUED
    assert q.resume("mail") is True and q.resume("mail") is False
    WorkerEngine(q, worker_id="w3", queues=["mail"]).run_until_idle()
    assert q.get(held.id).status is TaskStatus.COMPLETED
    with pytest.raises(ValidationError, match="queue"):
        q.pause("")
    q.close()


def test_a_repeated_idempotency_key_answers_the_existing_task_marked(core_queue: Queue) -> None:
    first = core_queue.enqueue("t", 1, idempotency_key="k")
    again = core_queue.enqueue("t", 2, idempotency_key="k")
    assert not first.deduplicated and again.deduplicated
    assert again.id == first.id and again == first  # not compared
    many = core_queue.enqueue_many(
        [{"task_type": "t", "idempotency_key": "k"}, {"task_type": "t", "idempotency_key": "n"}]
    )
    assert [t.deduplicated for t in many] == [True, False]
    assert core_queue.get(first.id).deduplicated is False, "not stored"


def test_retention_is_what_prune_deletes_by_default(db_path: Path, clock: FakeClock) -> None:
    q = Queue(db_path, load_entrypoints=False, clock=clock, retention=timedelta(hours=1))
    done = q.enqueue("t")
    q.cancel(done.id)
    clock.advance(1800)
    assert q.prune() == 0
    clock.advance(1801)
    assert q.prune() == 1
    with pytest.raises(ValidationError, match="retention"):
        Queue(db_path, load_entrypoints=False, retention=-1)
    q.close()


def test_an_all_queues_worker_leases_from_every_queue(core_queue: Queue) -> None:
    core_queue.handlers.register_handler("t", _ok)
    tasks = [core_queue.enqueue("t", i, queue=name) for i, name in enumerate("abc")]
    core_queue.pause("c")
    stats = WorkerEngine(core_queue, worker_id="w", all_queues=True).run_until_idle()
    assert stats.completed == 2
    assert [core_queue.get(t.id).status.value for t in tasks] == [
        "completed",
        "completed",
        "queued",
    ]
    assert core_queue.workers()[0].queues == ("*",)


def test_a_worker_with_max_tasks_stops_after_that_many(core_queue: Queue) -> None:
    core_queue.handlers.register_handler("t", _ok)
    core_queue.enqueue_many([{"task_type": "t", "payload": i} for i in range(25)])
    worker = WorkerEngine(core_queue, worker_id="w", concurrency=4, max_tasks=10)
    stats = worker.run()
    assert stats.processed == 10
    assert core_queue.count(status="completed") == 10
    assert core_queue.count(status="queued") == 15
    with pytest.raises(ValidationError, match="max_tasks"):
        WorkerEngine(core_queue, max_tasks=0)


def test_tasklog_logs_one_line_per_event(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    q = Queue(db_path)  # the installed plugins, tasklog among them
    q.handlers.register_handler("ok", _ok)
    q.handlers.register_handler("bad", _fail)
    with caplog.at_level(logging.INFO, logger="hookqueue.tasks"):
        good = q.enqueue("ok", 1)
        bad = q.enqueue("bad", 2, max_attempts=1)
        WorkerEngine(q, worker_id="w").run_until_idle()
    lines = {(r.task_id, r.event): r for r in caplog.records if r.name == "hookqueue.tasks"}  # type: ignore[attr-defined]
    assert (good.id, "started") in lines and (good.id, "completed") in lines
    failed = lines[(bad.id, "failed")]
    assert failed.levelno == logging.WARNING
    assert "ValueError: bad input 2" in failed.getMessage()
    assert failed.worker_id == "w" and failed.duration is not None  # type: ignore[attr-defined]
    q.close()
    blocked = Queue(db_path, block=["tasklog"])
    blocked.handlers.register_handler("ok", _ok)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hookqueue.tasks"):
        blocked.enqueue("ok", 3)
        WorkerEngine(blocked, worker_id="w").run_until_idle()
    assert not [r for r in caplog.records if r.name == "hookqueue.tasks"]
    blocked.close()


def test_json_log_lines_carry_the_structured_fields() -> None:
    import io

    stream = io.StringIO()
    logs.configure("info", "json", stream)
    try:
        logging.getLogger("hookqueue.tasks").info(
            "task 1 done", extra={"task_id": 1, "event": "completed", "duration": 0.25}
        )
    finally:
        logs.configure("warning", "text")
    line = json.loads(stream.getvalue().strip())
    assert line["message"] == "task 1 done" and line["level"] == "info"
    assert line["task_id"] == 1 and line["event"] == "completed" and line["duration"] == 0.25
    assert line["logger"] == "hookqueue.tasks" and line["time"].endswith("+00:00")
