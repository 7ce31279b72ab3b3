"""``hookqueue.contrib.dashboard.data``: filters, paging, bulk previews and actions, the
timeline, prune previews, paused queues and worker states, on a fake clock; and that the
dashboard holds no SQL."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookqueue import FakeClock, Queue, TaskStatus, WorkerEngine
from hookqueue.contrib.dashboard import data as data_module
from hookqueue.contrib.dashboard.data import (
    BULK_ACTIONS,
    DashboardData,
    TaskFilter,
    filter_from_query,
    filter_to_query,
    parse_instant,
)
from hookqueue.core.errors import TaskNotFound, ValidationError
from hookqueue.core.models import WorkerInfo

START = datetime(2030, 1, 1, tzinfo=UTC)
PACKAGE = Path(data_module.__file__).parent


def _work(q: Queue) -> None:
    # run in a thread of its own: pytest-asyncio may hold a loop in this one
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(WorkerEngine(q, worker_id="w", queues=("x", "y")).run_until_idle).result()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Queue, FakeClock]]:
    """300 tasks over 300 minutes: types a/b, queues x/y; every fifth fails with one of two
    messages; one task finishes per minute."""
    clock = FakeClock(START)
    q = Queue(
        tmp_path_factory.mktemp("data") / "q.db",
        clock=clock,
        durability="normal",
        load_entrypoints=False,
    )

    def handler(task):  # type: ignore[no-untyped-def]
        n = task.payload["n"]
        if n % 5 == 0:
            raise RuntimeError("disk full on /var" if n % 10 == 0 else "Timeout talking to API")
        return n

    q.handlers.register_handler("a", handler)
    q.handlers.register_handler("b", handler)
    for n in range(300):
        q.enqueue("a" if n % 2 else "b", {"n": n}, queue="x" if n % 3 else "y")
        _work(q)
        clock.advance(60)
    yield q, clock
    q.close()


# -- filters ----------------------------------------------------------------------------------


def test_filter_round_trips_through_the_query() -> None:
    now = START
    flt = filter_from_query(
        {
            "status": ["failed", "cancelled", "failed"],
            "type": [" a ", "b", ""],
            "queue": "",
            "error": "disk",
            "from": "2h",
            "to": "2030-01-01T00:30",
            "finished_before": "1d",
        },
        now,
    )
    assert flt.statuses == (TaskStatus.FAILED, TaskStatus.CANCELLED)
    assert flt.task_types == ("a", "b") and flt.queues == () and flt.error_contains == "disk"
    assert flt.created_after == now - timedelta(hours=2)
    assert flt.created_before == datetime(2030, 1, 1, 0, 30, tzinfo=UTC)
    assert flt.finished_before == now - timedelta(days=1)
    pairs = filter_to_query(flt)
    again: dict[str, list[str]] = {}
    for key, value in pairs:
        again.setdefault(key, []).append(value)
    assert filter_from_query(again, now) == flt
    assert "status failed or cancelled" in flt.describe()
    assert filter_from_query({}, now) == TaskFilter()


@pytest.mark.parametrize(
    ("field", "value"),
    [("status", "lost"), ("from", "last tuesday"), ("to", "12x"), ("finished_before", "soon")],
)
def test_a_bad_filter_field_is_named(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        filter_from_query({field: value}, START)


def test_instants_are_utc_unless_they_say_otherwise() -> None:
    assert parse_instant("f", "2030-01-01T01:00+01:00", START) == START
    assert parse_instant("f", "2030-01-01", START) == START
    assert parse_instant("f", "90", START) == START - timedelta(seconds=90)
    with pytest.raises(ValidationError, match="before the year 1"):
        parse_instant("from", "99999999d", START)


# -- listing ----------------------------------------------------------------------------------


def all_pages(data: DashboardData, flt: TaskFilter, limit: int, newest_first: bool) -> list[int]:
    seen: list[int] = []
    after = None
    for _ in range(1000):
        page = data.list_tasks(flt, after_id=after, limit=limit, newest_first=newest_first)
        seen += [t.id for t in page.tasks]
        if page.next_after_id is None:
            return seen
        after = page.next_after_id
    raise AssertionError("paging did not end")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    statuses=st.sets(st.sampled_from([TaskStatus.COMPLETED, TaskStatus.FAILED])),
    task_types=st.sampled_from([(), ("a",), ("b",), ("a", "b")]),
    queues=st.sampled_from([(), ("x",), ("y",)]),
    error=st.sampled_from([None, "DISK", "timeout", "nothing like it"]),
    window=st.sampled_from([None, (10, 50), (250, 400), (0, 1)]),
    finished_before=st.sampled_from([None, 30, 200]),
    limit=st.integers(1, 40),
    newest_first=st.booleans(),
)
def test_paging_by_id_yields_exactly_the_matching_tasks_in_order(
    history: tuple[Queue, FakeClock],
    statuses: set[TaskStatus],
    task_types: tuple[str, ...],
    queues: tuple[str, ...],
    error: str | None,
    window: tuple[int, int] | None,
    finished_before: int | None,
    limit: int,
    newest_first: bool,
) -> None:
    q, _ = history
    flt = TaskFilter(
        statuses=tuple(sorted(statuses)),
        task_types=task_types,
        queues=queues,
        error_contains=error,
        created_after=None if window is None else START + timedelta(minutes=window[0]),
        created_before=None if window is None else START + timedelta(minutes=window[1]),
        finished_before=(
            None if finished_before is None else START + timedelta(minutes=finished_before)
        ),
    )
    data = DashboardData(q)
    everything = q.list(limit=100_000, newest_first=newest_first)
    expected = [t.id for t in everything if flt.matches(t)]
    assert all_pages(data, flt, limit, newest_first) == expected


def test_a_page_is_one_read_of_the_store(
    history: tuple[Queue, FakeClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every field is filtered by the store: a page costs one list call, however rare the
    matches are (the scan through the history in Python is gone)."""
    q, _ = history
    calls: list[dict[str, object]] = []
    real = q.list

    def counting(**kwargs: object) -> object:
        calls.append(kwargs)
        return real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(q, "list", counting)
    page = DashboardData(q).list_tasks(
        TaskFilter(error_contains="disk", created_before=START + timedelta(minutes=100)),
        limit=3,
    )
    assert [t.id for t in page.tasks] == [91, 81, 71]
    assert page.next_after_id == 71 and len(calls) == 1


# -- the timeline -----------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "buckets"), [(3600, 6), (3600, 30), (86400, 4), (600, 7)])
def test_the_timeline_counts_finished_and_failed_tasks_per_interval(
    history: tuple[Queue, FakeClock], window: int, buckets: int
) -> None:
    q, clock = history
    timeline = DashboardData(q, cache_seconds=0).timeline(window, buckets)
    assert len(timeline.buckets) == buckets
    tasks = q.list(limit=1000)
    now = clock.now()
    # the intervals are whole microseconds: the window may be a few of them short
    assert abs(timeline.buckets[0].start - (now - timedelta(seconds=window))) < timedelta(
        microseconds=buckets
    )
    assert timeline.buckets[-1].end == now
    for bucket in timeline.buckets:
        inside = [t for t in tasks if bucket.start <= t.finished_at < bucket.end]
        assert bucket.finished == len(inside)
        assert bucket.failed == sum(t.status is TaskStatus.FAILED for t in inside)
    in_window = [t for t in tasks if t.finished_at >= timeline.buckets[0].start]
    assert sum(b.finished for b in timeline.buckets) == len(in_window)
    assert sum(b.failed for b in timeline.buckets) == sum(
        t.status is TaskStatus.FAILED for t in in_window
    )


def test_the_timeline_of_the_whole_history(history: tuple[Queue, FakeClock]) -> None:
    q, _ = history
    timeline = DashboardData(q).timeline(86400, 4)
    assert sum(b.finished for b in timeline.buckets) == 300
    assert sum(b.failed for b in timeline.buckets) == 60  # every fifth, all of them


def test_a_task_finished_by_a_clock_ahead_counts_in_the_last_interval(tmp_path: Path) -> None:
    clock = FakeClock(START)
    q = Queue(tmp_path / "q.db", clock=clock, durability="normal", load_entrypoints=False)
    with q:
        q.cancel(q.enqueue("t", {}).id)  # finished at START
        clock.set(START - timedelta(seconds=5))  # this process's clock is behind
        timeline = DashboardData(q).timeline(60, 6)
        assert [b.finished for b in timeline.buckets] == [0, 0, 0, 0, 0, 1]


def test_a_timeline_needs_buckets(history: tuple[Queue, FakeClock]) -> None:
    with pytest.raises(ValidationError, match="buckets"):
        DashboardData(history[0]).timeline(3600, 0)


# -- actions -------------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Queue]:
    """12 failed tasks (queues x and y), then 4 queued ones in queue x, an hour ago."""
    clock = FakeClock(START)
    q = Queue(tmp_path / "q.db", clock=clock, durability="normal", load_entrypoints=False)
    q.handlers.register_handler("bad", lambda task: 1 / 0)
    for i in range(12):
        q.enqueue("bad", {"i": i}, queue="x" if i % 2 else "y")
    _work(q)
    for i in range(4):
        q.enqueue("later", {"i": i}, queue="x")
    clock.advance(3600)
    yield q
    q.close()


@pytest.mark.parametrize(
    ("action", "flt", "expected"),
    [
        ("retry", TaskFilter(), 12),  # only failed/cancelled tasks can be retried
        ("retry", TaskFilter(queues="x"), 6),
        ("retry", TaskFilter(task_types="bad", statuses="failed"), 12),
        ("retry", TaskFilter(statuses="queued"), 0),
        ("retry", TaskFilter(error_contains="ZeroDivision", queues="y"), 6),
        ("cancel", TaskFilter(queues="x"), 4),
        ("cancel", TaskFilter(statuses="failed"), 0),
        ("delete", TaskFilter(queues="x"), 10),
        ("delete", TaskFilter(), 16),
        ("delete", TaskFilter(statuses="running"), 0),
    ],
)
def test_the_preview_counts_what_the_bulk_action_then_does(
    small: Queue, action: str, flt: TaskFilter, expected: int
) -> None:
    data = DashboardData(small)
    before = {t.id: t for t in small.list(limit=1000)}
    preview = data.preview(action, flt)
    assert preview.count == expected
    assert preview.max_id == 16
    assert data.bulk(action, flt, max_id=preview.max_id) == expected
    after = {t.id: t for t in small.list(limit=1000)}
    changed = {i for i in before if i not in after or after[i].status != before[i].status}
    scope = flt.restricted_to(BULK_ACTIONS[action])
    assert changed == {i for i, t in before.items() if scope is not None and scope.matches(t)}


def test_bulk_acts_only_up_to_the_previewed_id(small: Queue) -> None:
    data = DashboardData(small)
    preview = data.preview("cancel", TaskFilter())
    late = small.enqueue("later", {"i": 99}, queue="x")
    assert data.bulk("cancel", TaskFilter(), max_id=preview.max_id) == 4
    assert small.get(late.id).status is TaskStatus.QUEUED
    assert data.bulk("delete", TaskFilter(statuses="queued"), max_id=preview.max_id) == 0
    assert small.get(late.id).status is TaskStatus.QUEUED


def test_bulk_leaves_a_task_that_changed_meanwhile(small: Queue) -> None:
    data = DashboardData(small)
    preview = data.preview("retry", TaskFilter())
    small.retry(1)  # somebody else was quicker
    assert data.bulk("retry", TaskFilter(), max_id=preview.max_id) == preview.count - 1


def test_delete_never_removes_a_running_task(small: Queue) -> None:
    data = DashboardData(small)
    [running] = small.runtime.lease("w2", queues=("x",), limit=1, lease_seconds=60)
    assert data.preview("delete", TaskFilter(queues="x")).count == 9
    assert not data.delete_task(running.id)
    assert data.bulk("delete", TaskFilter(queues="x"), max_id=100) == 9
    assert [t.id for t in small.list(queue="x")] == [running.id]
    assert data.delete_task(2) is False  # gone already
    assert data.delete_task(running.id - 1) is False


def test_delete_one_task_with_its_history(small: Queue) -> None:
    data = DashboardData(small)
    assert data.history(1)[0].error.startswith("ZeroDivisionError")
    assert data.delete_task(1)
    with pytest.raises(TaskNotFound):
        small.get(1)
    with pytest.raises(TaskNotFound):
        data.history(1)


def test_an_unknown_bulk_action_is_refused(small: Queue) -> None:
    with pytest.raises(ValidationError, match="is not a bulk action"):
        DashboardData(small).bulk("explode", TaskFilter(), max_id=10)
    with pytest.raises(ValidationError, match="is not a bulk action"):
        DashboardData(small).preview("explode", TaskFilter())


def test_the_prune_preview_counts_what_prune_deletes(small: Queue) -> None:
    data = DashboardData(small)
    small.cancel(13)  # finished now: inside any window
    preview = data.prune_preview(timedelta(minutes=30))
    assert preview.tasks == 12
    assert preview.finished_before == small.now() - timedelta(minutes=30)
    assert data.prune(timedelta(minutes=30)) == 12
    assert data.prune_preview(timedelta(0)).tasks == 0  # finished now, not before now
    small.clock.advance(1)  # type: ignore[attr-defined]
    assert data.prune_preview(timedelta(0)).tasks == 1
    assert data.prune(timedelta(0)) == 1


def test_queue_rows_show_paused_queues_even_without_tasks(small: Queue) -> None:
    data = DashboardData(small)
    assert data.pause_queue("x") is True
    assert data.pause_queue("x") is False
    assert data.pause_queue("empty") is True
    rows = {r.name: r for r in data.queue_rows()}
    assert set(rows) == {"x", "empty"}
    assert rows["x"].due == 4 and rows["x"].paused_at == small.now()
    assert rows["empty"].due == 0 and rows["empty"].paused_at is not None
    assert "empty" in data.queue_names()
    assert data.resume_queue("x") is True and data.resume_queue("x") is False
    assert {r.name: r.paused_at for r in data.queue_rows()}["x"] is None
    assert small.paused_queues().keys() == {"empty"}


def test_worker_states(small: Queue) -> None:
    now = small.now()

    def worker(worker_id: str, silent: float) -> WorkerInfo:
        at = now - timedelta(seconds=silent)
        return WorkerInfo(
            worker_id=worker_id,
            hostname="h",
            pid=1,
            queues=("x",),
            concurrency=1,
            started_at=at,
            heartbeat_at=at,
        )

    small.runtime.register_worker(worker("fresh", 5))
    small.runtime.register_worker(worker("silent", 600))
    small.runtime.register_worker(worker("gone", 86400))
    rows = DashboardData(small).workers()
    assert [(r.info.worker_id, r.state) for r in rows] == [
        ("fresh", "active"),
        ("silent", "stale"),
        ("gone", "lost"),
        ("w", "stopped"),
    ]
    assert rows[1].silent_seconds == 600


# -- no SQL -----------------------------------------------------------------------------------------

SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|PRAGMA|CREATE|WHERE)\b")


def test_the_dashboard_contains_no_sql_and_reaches_no_store_internals() -> None:
    """The dashboard reads through data.py, and data.py through the public Queue and
    QueueMetrics API and one named method of the store contract (``finished_buckets``, for
    the chart): no SQL text, no apsw, no other use of ``queue.db``."""
    # ``queue.db.location`` (what the command prints: a file's name, a URL without its
    # password) is not a read
    allowed = {"plugin.py": {"location"}, "data.py": {"finished_buckets"}}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        named_method = {
            id(n.value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr in allowed.get(path.name, set())
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not SQL_WORDS.search(node.value), f"{path.name}: {node.value[:60]!r}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.startswith(("apsw", "hookqueue.core.store")) for n in names), (
                    path.name
                )
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"db", "query", "_conn"}
                and id(node) not in named_method
            ):
                raise AssertionError(f"{path.name}:{node.lineno} reaches .{node.attr}")
    # and outside data.py nothing calls the queue's reads or actions itself
    queue_api = {
        "list",
        "count",
        "counts",
        "get",
        "history",
        "retry",
        "cancel",
        "retry_matching",
        "cancel_matching",
        "delete_matching",
        "purge",
        "prune",
        "pause",
        "resume",
        "paused_queues",
        "workers",
        "enqueue",
    }
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "data.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in queue_api
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "queue"
            ):
                raise AssertionError(f"{path.name}:{node.lineno} calls queue.{node.attr}")
