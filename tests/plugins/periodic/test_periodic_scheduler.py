"""The scheduler: misfire policies, overlap, declaring from code, what code and database do
when they disagree, the tick in the task, workers that opt out, the plugin blocked."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from _periodic import START, make_queue

from hookqueue import FakeClock, Queue, Task, TaskStatus, ValidationError, WorkerEngine
from hookqueue.core.clock import to_us
from hookqueue.plugins.periodic import (
    HEADER,
    Schedule,
    Scheduler,
    add_schedule,
    get_schedule,
    list_schedules,
    pause_schedule,
    remove_schedule,
    resume_schedule,
    tick_of,
)
from hookqueue.plugins.periodic.plugin import scheduler_of
from hookqueue.plugins.periodic.scheduler import plan

SECOND = 1_000_000
T0 = to_us(START, "START")


def ticks_enqueued(queue: Queue, schedule: str | None = None) -> list[int]:
    """The tick of every task a schedule enqueued, in id order."""
    out = []
    for task in queue.list(limit=100_000):
        tick = tick_of(task)
        if tick is not None and (schedule is None or tick.schedule == schedule):
            out.append(tick.at_us)
    return out


def declare(queue: Queue, *schedules: Schedule, task_type: str = "job") -> Scheduler:
    """Register a no-op handler of ``task_type`` carrying ``schedules``; a scheduler with
    them declared."""
    queue.handlers.register_handler(
        task_type, lambda task: None, options={"periodic": list(schedules)}, allow_override=True
    )
    scheduler = Scheduler(queue)
    scheduler.declare([s.for_handler(task_type) for s in schedules])
    return scheduler


# -- misfire policies (pure) --------------------------------------------------------------------


def test_plan_latest_fires_the_newest_due_tick_within_grace() -> None:
    s = Schedule("every 10s", task_type="t", grace=60)
    p = plan(s, T0, T0 + 35 * SECOND)
    assert p.fire == (T0 + 30 * SECOND,) and p.skipped == 3 and p.next_us == T0 + 40 * SECOND
    sparse = Schedule("every 2m", task_type="t", grace=60)
    late = plan(sparse, T0, T0 + 330 * SECOND)  # the newest tick, 4m, is 90 s old
    assert late.fire == () and late.skipped == 3 and late.next_us == T0 + 360 * SECOND


def test_plan_skip_fires_only_a_tick_that_came_due_alone_on_time() -> None:
    s = Schedule("every 10s", task_type="t", misfire="skip", grace=5)
    assert plan(s, T0, T0 + 2 * SECOND).fire == (T0,)
    assert plan(s, T0, T0 + 6 * SECOND).fire == ()  # alone, but later than grace
    two = plan(s, T0, T0 + 11 * SECOND)
    assert two.fire == () and two.skipped == 2 and two.next_us == T0 + 20 * SECOND


def test_plan_all_catches_up_at_most_catch_up_ticks_oldest_first() -> None:
    s = Schedule("every 10s", task_type="t", misfire="all", catch_up=3)
    p = plan(s, T0, T0 + 25 * SECOND)
    assert p.fire == (T0, T0 + 10 * SECOND, T0 + 20 * SECOND) and p.skipped == 0
    capped = plan(s, T0, T0 + 95 * SECOND)
    assert capped.fire == tuple(T0 + k * 10 * SECOND for k in (7, 8, 9))
    assert capped.skipped == 7


# -- firing through the store ---------------------------------------------------------------------


def test_each_tick_fires_once_with_its_tick_in_the_headers(queue: Queue, clock: FakeClock) -> None:
    scheduler = declare(queue, Schedule("every 1m", payload={"n": 1}, misfire="all"))
    assert scheduler.run_once().fired == ()
    clock.advance(minutes=3)
    report = scheduler.run_once()
    assert [tick for _, tick, _ in report.fired] == [T0 + k * 60 * SECOND for k in (1, 2, 3)]
    assert scheduler.run_once().fired == ()  # nothing new is due
    task = queue.get(report.fired[0][2])
    assert task.payload == {"n": 1} and task.task_type == "job"
    assert task.headers[HEADER] == {
        "schedule": "job",
        "tick": "2030-01-01T00:01:00+00:00",
        "tick_us": T0 + 60 * SECOND,
    }
    tick = tick_of(task)
    assert tick is not None and tick.at == START + timedelta(minutes=1)
    assert tick_of(queue.enqueue("other")) is None
    # Through the enqueue hooks: the retry plugin gave the task its default budget.
    assert task.max_attempts == 5


def test_the_tick_header_is_in_the_schedules_time_zone(queue: Queue, clock: FakeClock) -> None:
    clock.set(datetime(2030, 7, 1, 0, 59, tzinfo=UTC))
    scheduler = declare(queue, Schedule("0 3 * * *", tz="Europe/Paris"))
    clock.set(datetime(2030, 7, 1, 1, 0, 30, tzinfo=UTC))
    [(_, _, task_id)] = scheduler.run_once().fired
    tick = tick_of(queue.get(task_id))
    assert tick is not None and tick.at.isoformat() == "2030-07-01T03:00:00+02:00"


def test_overlap_false_skips_while_the_previous_run_is_active(
    queue: Queue, clock: FakeClock
) -> None:
    scheduler = declare(queue, Schedule("every 10s", overlap=False))
    clock.advance(10)
    [(_, _, first)] = scheduler.run_once().fired
    clock.advance(10)
    report = scheduler.run_once()
    assert report.fired == () and report.overlapped == 1  # the first is still queued
    WorkerEngine(queue, worker_id="w", scheduler=False).run_until_idle()
    assert queue.get(first).status is TaskStatus.COMPLETED
    clock.advance(10)
    assert len(scheduler.run_once().fired) == 1
    info = get_schedule(queue, "job")
    assert (info.fired, info.skipped) == (2, 1)


def test_a_second_scheduler_finds_nothing_left_to_fire(queue: Queue, clock: FakeClock) -> None:
    a = declare(queue, Schedule("every 1s", misfire="all", catch_up=1000))
    b = Scheduler(queue)
    for _ in range(20):
        clock.advance(0.7)
        first, second = (a, b) if int(clock.monotonic() * 10) % 2 else (b, a)
        first.run_once()
        second.run_once()
    assert sorted(ticks_enqueued(queue)) == [T0 + k * SECOND for k in range(1, 15)]


def test_a_long_cron_catch_up_takes_several_steps_and_keeps_the_newest(
    queue: Queue, clock: FakeClock
) -> None:
    scheduler = declare(queue, Schedule("* * * * *", misfire="all", catch_up=2))
    clock.advance(minutes=12_000)
    report = scheduler.run_once()
    assert [t for _, t, _ in report.fired] == [T0 + k * 60 * SECOND for k in (11_999, 12_000)]
    info = get_schedule(queue, "job")
    assert (info.fired, info.skipped) == (2, 11_998)
    assert info.next_tick == START + timedelta(minutes=12_001)


def test_a_broken_stored_definition_is_logged_and_left(
    queue: Queue, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    from hookqueue.core.storage import ScheduleDefinition

    queue.db.upsert_schedules(
        [
            ScheduleDefinition(
                name="future",
                definition_json='{"version": 99}',
                timing="?",
                source="added",
                next_tick_us=T0,
            )
        ],
        T0,
    )
    clock.advance(1)
    assert Scheduler(queue).run_once().fired == ()
    assert "cannot be read" in caplog.text


def test_a_tick_whose_task_a_plugin_refuses_is_skipped_and_counted(
    db_path: Path, clock: FakeClock
) -> None:
    from hookqueue import hookimpl

    class Refuse:
        @hookimpl(wrapper=True)
        def hookqueue_enqueue(self, new_tasks):  # type: ignore[no-untyped-def]
            result = yield
            if any(t.payload == "refuse" for t in new_tasks):
                raise ValidationError("payload", "refuse", "is refused", "do not")
            return result

    with make_queue(db_path, clock, plugins=[Refuse()]) as q:
        scheduler = declare(q, Schedule("every 1s", payload="refuse"))
        clock.advance(1)
        assert scheduler.run_once().fired == ()
        assert get_schedule(q, "job").skipped == 1


# -- the same clock, two Paris days with changes, through the scheduler ------------------------


@pytest.mark.parametrize("day", [datetime(2030, 3, 31), datetime(2030, 10, 27)])
def test_daylight_saving_days_fire_fixed_times_once_and_hours_by_real_time(
    db_path: Path, day: datetime
) -> None:
    paris = ZoneInfo("Europe/Paris")
    clock = FakeClock((day - timedelta(days=1)).replace(hour=22, tzinfo=paris))
    with make_queue(db_path, clock) as q:
        scheduler = declare(
            q,
            Schedule("30 2 * * *", name="fixed", tz="Europe/Paris"),
            Schedule("0 * * * *", name="hourly", tz="Europe/Paris"),
        )
        end = (day + timedelta(days=1)).replace(hour=2, tzinfo=paris)
        while clock.now() < end:
            clock.advance(minutes=5)
            scheduler.run_once()
        fixed = ticks_enqueued(q, "fixed")
        hourly = ticks_enqueued(q, "hourly")
    assert len(fixed) == 1  # the tick of that day, once
    local = datetime.fromtimestamp(fixed[0] / 1e6, paris)
    assert local.date() == day.date()
    assert local.strftime("%H:%M") == ("03:00" if day.month == 3 else "02:30")
    assert len(set(hourly)) == len(hourly)
    begin = (day - timedelta(days=1)).replace(hour=22, tzinfo=paris)
    real_hours = (end.astimezone(UTC) - begin.astimezone(UTC)) // timedelta(hours=1)
    assert real_hours == (27 if day.month == 3 else 29)
    assert len(hourly) == real_hours  # one per real hour after the start, the end's included


# -- declaring from code: what a worker start does -------------------------------------------


def test_a_worker_declares_its_handlers_schedules_and_fires_what_is_due(
    queue: Queue, clock: FakeClock
) -> None:
    ran: list[Task] = []
    queue.handlers.register_handler(
        "beat", ran.append, options={"periodic": Schedule("every 10s", payload={"x": 1})}
    )
    worker = WorkerEngine(queue, worker_id="w1")
    worker.run_until_idle()
    [info] = list_schedules(queue)
    assert (info.source, info.schedule.task_type, info.next_tick) == (
        "code",
        "beat",
        START + timedelta(seconds=10),
    )
    assert info.declared_at == START and ran == []
    clock.advance(10)
    worker.run_until_idle()  # the tick due at start fires before the first lease
    assert [tick_of(t).at_us for t in ran] == [T0 + 10 * SECOND]  # type: ignore[union-attr]
    assert scheduler_of(worker) is None  # stopped with the worker


def test_code_and_database_disagree(queue: Queue, clock: FakeClock) -> None:
    """Code wins for the definition; the next tick is kept unless the timing changed; the
    pause state belongs to the database; schedules no longer in code stay until removed."""
    declare(queue, Schedule("every 1h", payload=1))
    pause_schedule(queue, "job")
    clock.advance(60)
    declare(queue, Schedule("every 1h", payload=2))
    info = get_schedule(queue, "job")
    assert info.schedule.payload == 2 and info.paused and info.revision == 3
    assert info.next_tick == START + timedelta(hours=1)
    declare(queue, Schedule("every 30m", payload=2))
    info = get_schedule(queue, "job")
    assert info.paused and info.next_tick == START + timedelta(minutes=30)
    resumed = resume_schedule(queue, "job")
    assert not resumed.paused and resumed.next_tick == START + timedelta(minutes=30)
    declare(queue, Schedule("every 1m", name="other"), task_type="other")
    assert [i.schedule.key for i in list_schedules(queue)] == ["job", "other"]


def test_pausing_survives_a_restart_and_resume_skips_the_paused_ticks(
    db_path: Path, clock: FakeClock
) -> None:
    with make_queue(db_path, clock) as q:
        declare(q, Schedule("every 10s", misfire="all"))
        pause_schedule(q, "job")
    clock.advance(60)
    with make_queue(db_path, clock) as q:
        scheduler = declare(q, Schedule("every 10s", misfire="all"))
        assert scheduler.run_once().fired == () and get_schedule(q, "job").paused
        info = resume_schedule(q, "job")
        assert info.next_tick == START + timedelta(seconds=70)
        clock.advance(10)
        assert [t for _, t, _ in scheduler.run_once().fired] == [T0 + 70 * SECOND]


def test_two_schedules_with_one_name_stop_the_worker_from_starting(queue: Queue) -> None:
    queue.handlers.register_handler("a", lambda t: None, options={"periodic": Schedule("@daily")})
    queue.handlers.register_handler(
        "b", lambda t: None, options={"periodic": [Schedule("@hourly", name="a")]}
    )
    with pytest.raises(ValidationError, match="two schedules"):
        WorkerEngine(queue, worker_id="w").run_until_idle()


def test_an_option_that_is_not_a_schedule_is_refused(queue: Queue) -> None:
    queue.handlers.register_handler("a", lambda t: None, options={"periodic": "0 3 * * *"})
    with pytest.raises(ValidationError, match="is not a Schedule"):
        WorkerEngine(queue, worker_id="w").run_until_idle()


def test_a_schedule_naming_another_task_type_is_refused(queue: Queue) -> None:
    queue.handlers.register_handler(
        "a", lambda t: None, options={"periodic": Schedule("@daily", task_type="b")}
    )
    with pytest.raises(ValidationError, match="differs from the handler"):
        WorkerEngine(queue, worker_id="w").run_until_idle()


def test_a_worker_that_opted_out_declares_and_fires_nothing(queue: Queue, clock: FakeClock) -> None:
    add_schedule(queue, Schedule("every 1s", name="added", task_type="job"))
    queue.handlers.register_handler(
        "job", lambda t: None, options={"periodic": Schedule("every 1s")}
    )
    clock.advance(5)
    WorkerEngine(queue, worker_id="w", scheduler=False).run_until_idle()
    assert [i.schedule.key for i in list_schedules(queue)] == ["added"]
    assert queue.counts()["completed"] == 0


def test_blocking_the_plugin_turns_schedules_off(db_path: Path, clock: FakeClock) -> None:
    with Queue(db_path, clock=clock, block=["periodic"]) as q:
        q.handlers.register_handler(
            "job", lambda t: None, options={"periodic": Schedule("every 1s")}
        )
        WorkerEngine(q, worker_id="w").run_until_idle()
        assert q.db.list_schedules() == []


def test_removing_and_adding_by_hand(queue: Queue) -> None:
    declare(queue, Schedule("every 1m"))
    with pytest.raises(ValidationError, match="declared in code"):
        remove_schedule(queue, "job")
    remove_schedule(queue, "job", force=True)
    added = add_schedule(queue, Schedule("@daily", name="n", task_type="job"), paused=True)
    assert added.source == "added" and added.paused
    with pytest.raises(ValidationError, match="taken"):
        add_schedule(queue, Schedule("@hourly", name="n", task_type="job"))
    replaced = add_schedule(queue, Schedule("@hourly", name="n", task_type="job"), replace=True)
    assert replaced.schedule.when == "@hourly" and replaced.paused
    with pytest.raises(LookupError):
        pause_schedule(queue, "nobody")


# -- real time: the scheduler thread, several workers in one process -------------------------


@pytest.mark.slow
def test_worker_threads_fire_within_a_second_of_due_and_never_twice(db_path: Path) -> None:
    """Real clock: three workers each run a scheduler; a schedule added while they run
    fires its first tick within a second of due; no tick fires twice."""
    queue = Queue(db_path, durability="normal", block=["metrics", "opentelemetry"])
    queue.handlers.register_handler(
        "fast", lambda t: None, options={"periodic": Schedule("every 100ms", misfire="all")}
    )
    queue.handlers.register_handler("slow", lambda t: None)
    workers = [WorkerEngine(queue, worker_id=f"w{i}", idle_poll_interval=0.2) for i in range(3)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for w, t in zip(workers, threads, strict=True):
        t.start()
        w.wait_started(10)
    try:
        add_schedule(queue, Schedule("every 1s", name="added", task_type="slow"))
        time.sleep(2.6)
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(30)
        queue.close()
    with Queue(db_path, load_entrypoints=False) as q:
        tasks = q.list(limit=10_000)
    by_tick = Counter((tick_of(t).schedule, tick_of(t).at_us) for t in tasks)  # type: ignore[union-attr]
    assert max(by_tick.values()) == 1
    added = [t for t in tasks if tick_of(t).schedule == "added"]  # type: ignore[union-attr]
    assert len(added) >= 2
    lateness = [
        (to_us(t.created_at, "c") - tick_of(t).at_us) / 1e6  # type: ignore[union-attr]
        for t in tasks
    ]
    assert max(lateness) < 1.0, max(lateness)
    fast = sorted(tick for (name, tick) in by_tick if name == "fast")
    assert fast == list(range(fast[0], fast[-1] + 1, 100_000)), "a tick missed"
