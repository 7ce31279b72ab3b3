"""``hookqueue.contrib.dashboard.data``: filters, scans, paging, bulk actions, the timeline,
prune previews and worker states, on a fake clock; and that the dashboard holds no SQL."""

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
from hookqueue.contrib.dashboard.data import DashboardData, TaskFilter, parse_instant
from hookqueue.core.errors import InvalidTransition, ValidationError
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
    flt = TaskFilter.from_query(
        {
            "status": ["failed", "cancelled", "failed"],
            "type": " a ",
            "queue": "",
            "error": "disk",
            "from": "2h",
            "to": "2030-01-01T00:30",
        },
        now,
    )
    assert flt.statuses == (TaskStatus.FAILED, TaskStatus.CANCELLED)
    assert flt.task_type == "a" and flt.queue is None and flt.error_contains == "disk"
    assert flt.created_from == now - timedelta(hours=2)
    assert flt.created_to == datetime(2030, 1, 1, 0, 30, tzinfo=UTC)
    assert (
        TaskFilter.from_query(dict(flt.to_query()) | {"status": ["failed", "cancelled"]}, now)
        == flt
    )
    assert "status failed or cancelled" in flt.describe()
    assert TaskFilter().describe() == "no filter: every task"


@pytest.mark.parametrize(
    ("field", "value"), [("status", "lost"), ("from", "last tuesday"), ("to", "12x")]
)
def test_a_bad_filter_field_is_named(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        TaskFilter.from_query({field: value}, START)


def test_instants_are_utc_unless_they_say_otherwise() -> None:
    assert parse_instant("f", "2030-01-01T01:00+01:00", START) == START
    assert parse_instant("f", "2030-01-01", START) == START
    assert parse_instant("f", "90", START) == START - timedelta(seconds=90)


def test_bulk_scope_is_the_intersection_with_the_actions_statuses() -> None:
    flt = TaskFilter(statuses=(TaskStatus.FAILED, TaskStatus.QUEUED))
    assert flt.restricted_to((TaskStatus.FAILED, TaskStatus.CANCELLED)).statuses == (
        TaskStatus.FAILED,
    )
    assert TaskFilter().restricted_to((TaskStatus.QUEUED,)).statuses == (TaskStatus.QUEUED,)


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
    task_type=st.sampled_from([None, "a", "b"]),
    queue_name=st.sampled_from([None, "x", "y"]),
    error=st.sampled_from([None, "DISK", "timeout", "nothing like it"]),
    window=st.sampled_from([None, (10, 50), (250, 400), (0, 1)]),
    limit=st.integers(1, 40),
    max_scan=st.integers(1, 400),
    newest_first=st.booleans(),
)
def test_paging_by_id_yields_exactly_the_matching_tasks_in_order(
    history: tuple[Queue, FakeClock],
    statuses: set[TaskStatus],
    task_type: str | None,
    queue_name: str | None,
    error: str | None,
    window: tuple[int, int] | None,
    limit: int,
    max_scan: int,
    newest_first: bool,
) -> None:
    q, _ = history
    flt = TaskFilter(
        statuses=tuple(sorted(statuses)),
        task_type=task_type,
        queue=queue_name,
        error_contains=error,
        created_from=None if window is None else START + timedelta(minutes=window[0]),
        created_to=None if window is None else START + timedelta(minutes=window[1]),
    )
    data = DashboardData(q, max_scan=max_scan)
    everything = q.list(limit=100_000, newest_first=newest_first)
    expected = [t.id for t in everything if flt.matches(t)]
    assert all_pages(data, flt, limit, newest_first) == expected


def test_a_scan_stops_at_its_budget_and_the_next_page_goes_on(
    history: tuple[Queue, FakeClock],
) -> None:
    q, _ = history
    data = DashboardData(q, max_scan=50)
    page = data.list_tasks(TaskFilter(error_contains="disk"), limit=100)
    assert page.scan_limited and page.scanned == 50
    assert len(page.tasks) == 5  # every tenth of the 50 newest
    assert page.next_after_id == q.list(limit=50, newest_first=True)[-1].id


def test_a_time_range_newest_first_stops_reading_at_its_start(
    history: tuple[Queue, FakeClock],
) -> None:
    q, _ = history
    data = DashboardData(q)
    page = data.list_tasks(TaskFilter(created_from=START + timedelta(minutes=290)), limit=100)
    assert [t.id for t in page.tasks] == list(range(300, 290, -1))
    # one task a minute: the first one more than ORDER_SLACK before the range ends the scan
    assert page.next_after_id is None and page.scanned == 11
    page = data.list_tasks(
        TaskFilter(created_to=START + timedelta(minutes=10)), limit=100, newest_first=False
    )
    assert [t.id for t in page.tasks] == list(range(1, 11))
    # task 11 sits on the edge (within ORDER_SLACK), task 12 is past it
    assert page.next_after_id is None and page.scanned == 12


# -- the timeline -----------------------------------------------------------------------------


def test_the_timeline_counts_finished_and_failed_tasks_per_interval(
    history: tuple[Queue, FakeClock],
) -> None:
    q, clock = history
    data = DashboardData(q)
    timeline = data.timeline(3600, 6)
    assert len(timeline.buckets) == 6 and not timeline.sampled
    # one task finished a minute: ten per ten-minute interval; every fifth failed
    tasks = q.list(limit=1000)
    start = clock.now() - timedelta(hours=1)
    for bucket in timeline.buckets:
        inside = [t for t in tasks if bucket.start <= t.finished_at < bucket.end]
        assert bucket.finished == len(inside)
        assert bucket.failed == sum(t.status is TaskStatus.FAILED for t in inside)
    assert timeline.buckets[0].start == start
    assert sum(b.finished for b in timeline.buckets) == 60
    assert sum(b.failed for b in timeline.buckets) == 12


def test_failures_come_from_a_bounded_sample(history: tuple[Queue, FakeClock]) -> None:
    q, _ = history
    timeline = DashboardData(q).timeline(86400, 4, failure_sample=10)
    assert timeline.sampled
    assert sum(b.failed for b in timeline.buckets) == 10
    assert sum(b.finished for b in timeline.buckets) == 300


# -- actions -------------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Queue]:
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


def test_count_matching_is_what_the_bulk_action_then_does(small: Queue) -> None:
    data = DashboardData(small)
    max_id = data.newest_id()
    for flt, expected in (
        (TaskFilter(), 12),  # only failed/cancelled tasks can be retried
        (TaskFilter(queue="x"), 6),
        (TaskFilter(task_type="bad", statuses=(TaskStatus.FAILED,)), 12),
        (TaskFilter(statuses=(TaskStatus.QUEUED,)), 0),
        (TaskFilter(error_contains="ZeroDivision", queue="y"), 6),
    ):
        assert data.count_matching("retry", flt, max_id=max_id) == expected, flt
    assert data.count_matching("cancel", TaskFilter(queue="x"), max_id=max_id) == 4
    result = data.bulk("retry", TaskFilter(queue="x"), max_id=max_id)
    assert (result.done, result.skipped, result.limited) == (6, 0, False)
    assert {t.queue for t in small.list(status="failed")} == {"y"}


def test_bulk_acts_only_up_to_the_previewed_id(small: Queue) -> None:
    data = DashboardData(small)
    max_id = data.newest_id()
    late = small.enqueue("later", {"i": 99}, queue="x")
    result = data.bulk("cancel", TaskFilter(), max_id=max_id)
    assert result.done == 4
    assert small.get(late.id).status is TaskStatus.QUEUED


def test_bulk_stops_at_its_limit_and_says_so(small: Queue) -> None:
    data = DashboardData(small, bulk_limit=5)
    result = data.bulk("retry", TaskFilter(), max_id=data.newest_id())
    assert (result.done, result.limited) == (5, True)
    again = data.bulk("retry", TaskFilter(), max_id=data.newest_id())
    assert (again.done, again.limited) == (5, True)
    last = data.bulk("retry", TaskFilter(), max_id=data.newest_id())
    assert (last.done, last.limited) == (2, False)


def test_bulk_skips_a_task_that_changed_meanwhile(
    small: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = DashboardData(small)
    real_retry = small.retry
    first = small.list(status="failed", newest_first=True, limit=1)[0].id

    def racing_retry(task_id: int) -> object:
        if task_id == first:
            real_retry(task_id)  # somebody else was quicker
        return real_retry(task_id)

    monkeypatch.setattr(small, "retry", racing_retry)
    result = data.bulk("retry", TaskFilter(), max_id=data.newest_id())
    assert (result.done, result.skipped) == (11, 1)
    with pytest.raises(InvalidTransition):
        real_retry(first)


def test_an_unknown_bulk_action_is_refused(small: Queue) -> None:
    with pytest.raises(ValidationError, match="is not a bulk action"):
        DashboardData(small).bulk("delete", TaskFilter(), max_id=10)


def test_the_prune_preview_counts_what_prune_deletes(small: Queue) -> None:
    data = DashboardData(small)
    small.cancel(13)  # finished now: inside any window
    preview = data.prune_preview(timedelta(minutes=30))
    assert preview.tasks == 12
    assert data.prune(timedelta(minutes=30)) == 12
    assert data.prune_preview(timedelta(0)).tasks == 1


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
    QueueMetrics API: no SQL text, no apsw, no ``queue.db``."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        # ``queue.db.path`` (the file's name, printed by the command) is not a read
        path_of_db = {
            id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "path"
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not SQL_WORDS.search(node.value), f"{path.name}: {node.value[:60]!r}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.startswith("apsw") for n in names), path.name
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"db", "query", "_conn"}
                and id(node) not in path_of_db
            ):
                raise AssertionError(f"{path.name}:{node.lineno} reaches .{node.attr}")
    # and outside data.py nothing calls the queue's reads or actions itself
    queue_api = {"list", "counts", "get", "retry", "cancel", "prune", "workers", "enqueue"}
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
