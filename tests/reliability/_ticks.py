"""What the periodic ticks stored in a queue add up to, for the tests whose worker processes
fire interval schedules (the SIGKILL chaos test here, its PostgreSQL counterpart in
``tests/plugins/postgres``): every tick due from a schedule's creation to where it stands
now, and how many tasks each tick enqueued."""

from __future__ import annotations

from collections import Counter

import attrs

from hookqueue import Queue
from hookqueue.core.clock import to_us
from hookqueue.core.storage import ScheduleRow
from hookqueue.plugins.periodic import tick_of


@attrs.frozen(kw_only=True)
class TickAudit:
    """The stored schedules, the tasks their ticks enqueued, and how the two compare."""

    rows: list[ScheduleRow]
    #: How many tasks were read (every one must carry a tick).
    tasks: int
    #: ``(schedule, tick in µs)`` of every tick due from each schedule's creation to its
    #: next tick.
    expected: set[tuple[str, int]]
    #: Tasks enqueued per ``(schedule, tick in µs)``.
    fired: Counter[tuple[str, int]]
    #: Seconds from each tick to its task's creation, sorted.
    late: list[float]

    @property
    def duplicates(self) -> int:
        """Tasks beyond the first of their tick."""
        return sum(n - 1 for n in self.fired.values() if n > 1)

    @property
    def missed(self) -> int:
        """Ticks due that enqueued nothing."""
        return len(self.expected - set(self.fired))

    @property
    def extra(self) -> int:
        """Ticks that enqueued a task but were not due."""
        return len(set(self.fired) - self.expected)


def audit_ticks(queue: Queue, every_us: int) -> TickAudit:
    """Read every schedule and task of ``queue``, whose schedules all tick every
    ``every_us`` microseconds from their creation, and compare (every task must carry a
    tick)."""
    rows = queue.db.list_schedules()
    tasks = queue.list(limit=100_000)
    while len(tasks) % 100_000 == 0 and tasks:
        page = queue.list(limit=100_000, after_id=tasks[-1].id)
        if not page:
            break
        tasks += page
    fired: Counter[tuple[str, int]] = Counter()
    late: list[float] = []
    for task in tasks:
        tick = tick_of(task)
        assert tick is not None, task
        fired[(tick.schedule, tick.at_us)] += 1
        late.append((to_us(task.created_at, "created_at") - tick.at_us) / 1e6)
    expected: set[tuple[str, int]] = set()
    for row in rows:
        assert row.next_tick_us is not None
        first = (row.created_us // every_us + 1) * every_us
        expected |= {(row.name, t) for t in range(first, row.next_tick_us, every_us)}
    return TickAudit(rows=rows, tasks=len(tasks), expected=expected, fired=fired, late=sorted(late))
