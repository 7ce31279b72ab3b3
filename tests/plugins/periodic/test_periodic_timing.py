"""Timings: parsing, intervals, cron through cronsim, and daylight-saving changes as cron
handles them (both transitions, two time zones)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from hookqueue import ValidationError
from hookqueue.core.clock import from_us, to_us
from hookqueue.plugins.periodic import timing
from hookqueue.plugins.periodic.timing import STEP_BUDGET, Cron, Interval, parse, step

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
SECOND = 1_000_000


def ticks(t: timing.Timing, start: datetime, until: datetime) -> list[datetime]:
    """Every tick of ``t`` after ``start`` up to ``until``."""
    out: list[datetime] = []
    at: int | None = to_us(start, "start")
    end = to_us(until, "until")
    while True:
        assert at is not None
        at = t.next_after(at)
        if at is None or at > end:
            return out
        out.append(from_us(at))


@pytest.mark.parametrize(
    ("when", "every_us"),
    [
        ("every 30s", 30 * SECOND),
        ("every 5m", 300 * SECOND),
        ("every  250ms", 250_000),
        ("EVERY 2h", 7200 * SECOND),
        ("every 1d", 86400 * SECOND),
        ("every 1.5s", 1_500_000),
    ],
)
def test_intervals_are_elapsed_time_aligned_to_the_epoch(when: str, every_us: int) -> None:
    t = parse(when)
    assert isinstance(t, Interval) and t.every_us == every_us
    assert t.next_after(0) == every_us
    assert t.next_after(every_us) == 2 * every_us
    assert t.next_after(every_us * 7 + 1) == every_us * 8


def test_nicknames_are_cron_expressions() -> None:
    t = parse("@daily", "Europe/Paris")
    assert isinstance(t, Cron) and t.text == "0 0 * * *"
    start = datetime(2030, 6, 1, 12, tzinfo=PARIS)
    assert ticks(t, start, start + timedelta(days=2)) == [
        datetime(2030, 6, 2, tzinfo=PARIS),
        datetime(2030, 6, 3, tzinfo=PARIS),
    ]
    assert parse("@hourly").text == "0 * * * *"


@pytest.mark.parametrize(
    ("when", "tz", "field", "says"),
    [
        ("61 * * * *", "UTC", "when", "not a valid cron expression"),
        ("*/5 * * * * *", "UTC", "when", "has 6 fields"),
        ("* * * *", "UTC", "when", "has 4 fields"),
        ("every 5 fortnights", "UTC", "when", "not an interval"),
        ("every 0s", "UTC", "when", "from 1ms"),
        ("@reboot", "UTC", "when", "nickname"),
        ("", "UTC", "when", "not a schedule"),
        ("every 5m", "Europe/Paris", "tz", "interval measures elapsed time"),
        ("0 3 * * *", "Mars/Olympus", "tz", "not a time zone"),
        (5, "UTC", "when", "not a schedule"),
    ],
)
def test_bad_timings_are_refused_with_the_fix(when: object, tz: str, field: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says) as caught:
        parse(when, tz)
    assert caught.value.field == field and "Fix:" in str(caught.value)


# -- daylight saving: 2030-03-31 Paris 02:00 -> 03:00; 2030-10-27 Paris 03:00 -> 02:00;
# -- 2030-03-10 New York 02:00 -> 03:00; 2030-11-03 New York 02:00 -> 01:00.


@pytest.mark.parametrize(
    ("tz", "day"),
    [(PARIS, datetime(2030, 3, 31)), (NEW_YORK, datetime(2030, 3, 10))],
)
def test_a_fixed_time_in_the_skipped_hour_fires_once_after_the_change(
    tz: ZoneInfo, day: datetime
) -> None:
    t = parse("30 2 * * *", tz.key)
    start = (day - timedelta(days=1)).replace(hour=12, tzinfo=tz)
    got = ticks(t, start, start + timedelta(days=3))
    local = [g.astimezone(tz) for g in got]
    # One tick a day; on the day of the change 02:30 does not exist: it fires at 03:00.
    assert [x.date() for x in local] == [day.date() + timedelta(days=i) for i in range(3)]
    assert local[0].strftime("%H:%M") == "03:00"
    assert [x.strftime("%H:%M") for x in local[1:]] == ["02:30", "02:30"]


@pytest.mark.parametrize(
    ("tz", "day", "repeated"),
    [(PARIS, datetime(2030, 10, 27), 2), (NEW_YORK, datetime(2030, 11, 3), 1)],
)
def test_a_fixed_time_in_the_repeated_hour_fires_once(
    tz: ZoneInfo, day: datetime, repeated: int
) -> None:
    t = parse(f"30 {repeated} * * *", tz.key)
    start = (day - timedelta(days=1)).replace(hour=12, tzinfo=tz)
    got = ticks(t, start, start + timedelta(days=3))
    assert len(got) == 3, got
    first = got[0].astimezone(tz)
    assert (first.date(), first.hour, first.minute, first.fold) == (day.date(), repeated, 30, 0)
    # Every tick is a day (24 or 25 real hours) after the previous: none in the repeat.
    assert all(b - a >= timedelta(hours=24) for a, b in zip(got, got[1:], strict=False))


def test_starting_inside_the_repeated_hour_does_not_fire_its_first_pass_again() -> None:
    t = parse("30 2 * * *", "Europe/Paris")
    # 02:15 of the second pass (CET): 02:30 CEST of the first pass already fell.
    inside = datetime(2030, 10, 27, 2, 15, fold=1, tzinfo=PARIS)
    nxt = from_us(t.next_after(to_us(inside, "x")) or 0).astimezone(PARIS)
    assert (nxt.day, nxt.hour, nxt.minute) == (28, 2, 30)


@pytest.mark.parametrize(
    ("tz", "spring", "autumn"),
    [
        (PARIS, datetime(2030, 3, 31), datetime(2030, 10, 27)),
        (NEW_YORK, datetime(2030, 3, 10), datetime(2030, 11, 3)),
    ],
)
def test_hourly_and_every_15_minutes_follow_real_time_across_both_changes(
    tz: ZoneInfo, spring: datetime, autumn: datetime
) -> None:
    for day, real_hours in ((spring, 23), (autumn, 25)):
        start = day.replace(tzinfo=tz)
        end = (day + timedelta(days=1)).replace(tzinfo=tz)
        hourly = ticks(parse("0 * * * *", tz.key), start - timedelta(seconds=1), end)
        # Midnight to midnight inclusive: one tick per real hour, plus the closing midnight.
        assert len(hourly) == real_hours + 1
        assert all(b - a == timedelta(hours=1) for a, b in zip(hourly, hourly[1:], strict=False))
        quarter = ticks(parse("*/15 * * * *", tz.key), start - timedelta(seconds=1), end)
        assert len(quarter) == real_hours * 4 + 1
        assert len(set(quarter)) == len(quarter)


def test_cron_in_utc_and_weekday_fields() -> None:
    t = parse("0 9 * * MON-FRI")
    start = datetime(2030, 1, 4, 10, tzinfo=UTC)  # a Friday
    got = ticks(t, start, start + timedelta(days=4))
    assert [g.strftime("%a %H:%M") for g in got] == ["Mon 09:00", "Tue 09:00"]


def test_step_of_an_interval_is_closed_form() -> None:
    t = parse("every 1s")
    s = step(t, SECOND, 10 * 86400 * SECOND + SECOND // 2, 3)
    assert s.complete and s.covered == 10 * 86400
    assert s.newest == tuple(SECOND * n for n in range(864_000 - 2, 864_001))
    assert s.next_us == 864_001 * SECOND


def test_step_of_cron_covers_a_long_outage_in_bounded_chunks() -> None:
    t = parse("* * * * *")
    minute = 60 * SECOND
    first, now = minute, minute * (2 * STEP_BUDGET + 50)
    covered = 0
    at: int | None = first
    newest: tuple[int, ...] = ()
    while True:
        assert at is not None
        s = step(t, at, now, 2)
        covered += s.covered
        at = s.next_us
        if s.complete:
            newest = s.newest
            break
        assert s.newest == () and s.covered == STEP_BUDGET
    assert covered == 2 * STEP_BUDGET + 50
    assert newest == (now - minute, now) and at == now + minute
