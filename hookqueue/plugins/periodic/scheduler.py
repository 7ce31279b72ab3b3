"""``Scheduler``: fires the due ticks of every schedule in the database, from inside a worker.

Each worker process with the ``periodic`` plugin runs one (unless it opted out:
``WorkerEngine(scheduler=False)``, ``hookqueue worker --no-scheduler``). There is no leader:
any scheduler may fire any due tick, and the store makes each tick enqueue exactly one task
(:meth:`~hookqueue.core.storage.TaskStore.fire_ticks` writes the tick's task and its mark,
unique per schedule and tick, in one transaction, and applies a step only to a schedule
still as it was read). So a tick is fired whichever worker is alive, never twice, and a
worker killed half-way leaves either the whole step or nothing.

A pass (:meth:`Scheduler.run_once`) reads the due schedules (a read, no lock), works out each
one's step under its misfire policy (:func:`plan`), builds each fired tick's task through the
``hookqueue_enqueue`` hook like any other task, and fires every step in one transaction. The
thread (:meth:`Scheduler.start`) sleeps until the earliest next tick, at most
``poll_interval`` (so schedules added or resumed by another process are seen within it),
plus a random ``jitter`` that spreads the workers of a deployment: the first awake fires,
and the others find nothing left to do without taking the write lock.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from hookqueue.core.clock import seconds_to_us
from hookqueue.core.errors import PluginError, StoreError, ValidationError
from hookqueue.core.models import NewTask
from hookqueue.core.storage import (
    FireOutcome,
    InsertRow,
    ScheduleDefinition,
    ScheduleRow,
    TaskStore,
    TickFire,
)

from . import timing as _timing
from .schedule import Schedule

log = logging.getLogger("hookqueue.plugins.periodic")

#: The task header that carries the tick: ``{"schedule", "tick", "tick_us"}``.
HEADER = "hookqueue_periodic"
#: Seconds a scheduler sleeps at most between passes (it wakes for each tick anyway).
POLL_INTERVAL = 0.5
#: Up to this many seconds are added to each sleep, at random (see the module docs).
JITTER = 0.02
#: Passes in a row that one :meth:`Scheduler.run_once` makes while steps leave ticks due.
MAX_PASSES = 64


@attrs.frozen
class Plan:
    """One schedule's step: the ticks to fire, how many due ticks it passes over, and the
    next tick after it."""

    fire: tuple[int, ...]
    skipped: int
    next_us: int | None
    #: False when ticks are still due after this step (a long catch-up of a cron schedule).
    complete: bool


def plan(schedule: Schedule, next_tick_us: int, now_us: int) -> Plan:
    """The step of ``schedule`` whose stored next tick ``next_tick_us`` is due at ``now_us``,
    under its misfire policy (see :class:`Schedule`)."""
    keep = schedule.catch_up if schedule.misfire == "all" else 1
    found = _timing.step(schedule.timing, next_tick_us, now_us, keep)
    if not found.complete:
        return Plan((), found.covered, found.next_us, False)
    grace_us = seconds_to_us(schedule.grace)
    newest = found.newest
    if schedule.misfire == "all":
        fire = newest
    elif schedule.misfire == "latest":
        fire = newest[-1:] if now_us - newest[-1] <= grace_us else ()
    else:  # skip: only a tick that came due alone, on time
        fire = newest if found.covered == 1 and now_us - newest[0] <= grace_us else ()
    return Plan(fire, found.covered - len(fire), found.next_us, True)


@attrs.frozen
class PassReport:
    """What one :meth:`Scheduler.run_once` did."""

    #: ``(schedule, tick_us, task id)`` per tick fired by this scheduler.
    fired: tuple[tuple[str, int, int], ...] = ()
    #: Due ticks passed over by the misfire policy, and ticks skipped for overlap.
    skipped: int = 0
    overlapped: int = 0
    #: Steps another process took first (or that a change made stale).
    lost: int = 0


class Scheduler:
    """Fires the due ticks of the schedules stored in a queue's database.

    :param queue: the :class:`~hookqueue.Queue` (its store, clock, hooks and in-process
        workers' wake-ups).
    :param poll_interval: the longest sleep between passes, in seconds.
    :param jitter: the most seconds added at random to each sleep.
    :param name: the thread's name.
    """

    def __init__(
        self,
        queue: Any,
        *,
        poll_interval: float = POLL_INTERVAL,
        jitter: float = JITTER,
        name: str = "hookqueue-periodic",
    ) -> None:
        self.queue = queue
        self.db = queue.db
        self.clock = queue.clock
        self.poll_interval = float(poll_interval)
        self.jitter = float(jitter)
        self.name = name
        self._cache: dict[tuple[str, str, bool], Schedule] = {}
        self._broken: set[tuple[str, int]] = set()
        #: Schedules still to declare (a declaration that failed at start is retried by
        #: the thread before its first pass).
        self.pending: list[Schedule] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()

    # -- declaring -----------------------------------------------------------------------------

    def declare(self, schedules: Sequence[Schedule]) -> list[str]:
        """Upsert code-declared schedules (one transaction). A new one starts at its next
        tick; one whose definition changed is updated (its next tick recomputed only when
        its timing changed); its pause state is kept.

        :returns: per schedule, ``"created"``, ``"updated"`` or ``"unchanged"``.
        """
        now_us = self.clock.now_us()
        db: TaskStore = self.db
        return db.upsert_schedules([definition(s, now_us) for s in schedules], now_us)

    # -- firing --------------------------------------------------------------------------------

    def run_once(self) -> PassReport:
        """Fire every tick due now (one transaction per pass; more passes while a long
        catch-up leaves ticks due, at most :data:`MAX_PASSES`)."""
        fired: list[tuple[str, int, int]] = []
        skipped = overlapped = lost = 0
        for _ in range(MAX_PASSES):
            now_us = self.clock.now_us()
            due = self.db.list_schedules(due_by_us=now_us)
            if not due:
                break
            steps: list[TickFire] = []
            again = False
            for row in due:
                step = self._step(row, now_us)
                if step is None:
                    continue
                steps.append(step[0])
                again = again or not step[1]
            if not steps:
                break
            outcomes = self.db.fire_ticks(steps, now_us)
            self._announce(outcomes, now_us)
            for s, o in zip(steps, outcomes, strict=True):
                if not o.applied:
                    lost += 1
                    continue
                fired += [(o.schedule, tick, task_id) for tick, task_id in o.fired]
                skipped += s.skipped
                overlapped += len(o.overlapped)
            if not again:
                break
        return PassReport(tuple(fired), skipped, overlapped, lost)

    def _schedule(self, row: ScheduleRow) -> Schedule | None:
        key = (row.definition_json, row.timing, row.overlap)
        found = self._cache.get(key)
        if found is not None:
            return found
        try:
            found = Schedule.from_row(row)
        except ValidationError as exc:
            if (row.name, row.revision) not in self._broken:
                self._broken.add((row.name, row.revision))
                log.error("schedule %r cannot be read, so it does not fire: %s", row.name, exc)
            return None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _step(self, row: ScheduleRow, now_us: int) -> tuple[TickFire, bool] | None:
        schedule = self._schedule(row)
        if schedule is None or row.next_tick_us is None:
            return None
        p = plan(schedule, row.next_tick_us, now_us)
        ticks: list[tuple[int, InsertRow]] = []
        refused = 0
        for tick in p.fire:
            try:
                ticks.append((tick, self._task_row(schedule, tick)))
            except (ValidationError, PluginError) as exc:
                refused += 1
                log.error(
                    "schedule %r: the task of tick %s was refused (%s); the tick is skipped",
                    schedule.key,
                    _timing.local_iso(tick, schedule.tz),
                    exc,
                )
        fire = TickFire(
            schedule=row.name,
            expect_next_tick_us=row.next_tick_us,
            expect_revision=row.revision,
            ticks=tuple(ticks),
            next_tick_us=p.next_us,
            skipped=p.skipped + refused,
        )
        return fire, p.complete

    def _task_row(self, schedule: Schedule, tick_us: int) -> InsertRow:
        """The task of one tick, through ``hookqueue_enqueue`` like any enqueued task."""
        queue = self.queue
        assert schedule.task_type is not None
        header = {
            "schedule": schedule.key,
            "tick": _timing.local_iso(tick_us, schedule.tz),
            "tick_us": tick_us,
        }
        new_task = NewTask(
            task_type=schedule.task_type,
            payload=schedule.payload,
            priority=schedule.priority,
            max_attempts=schedule.max_attempts,
            queue=schedule.queue,
            timeout=schedule.timeout,
            headers={HEADER: header},
        )
        [row] = queue.prepare_rows([new_task])
        if row.idempotency_key is not None:
            log.warning(
                "schedule %r: an enqueue plugin gave tick %s an idempotency key; it is dropped "
                "(the tick's mark is what makes it unique)",
                schedule.key,
                header["tick"],
            )
            row = attrs.evolve(row, idempotency_key=None)
        return row

    def _announce(self, outcomes: Iterable[FireOutcome], now_us: int) -> None:
        """Log what fired, send ``enqueued`` events and wake this process's workers."""
        ids = [task_id for o in outcomes for _, task_id in o.fired]
        for o in outcomes:
            for tick, task_id in o.fired:
                log.info("schedule %r fired tick %d: task %d", o.schedule, tick, task_id)
            for tick in o.overlapped:
                log.info(
                    "schedule %r skipped tick %d: its previous task is still queued or running",
                    o.schedule,
                    tick,
                )
        if not ids:
            return
        runtime = self.queue.runtime
        if runtime.hooks.has_event_observers():
            runtime.enqueued(self.db.get_many(ids), now_us)
        else:
            runtime.wake()  # no observer: no need to read the tasks back for events

    # -- the thread ----------------------------------------------------------------------------

    def start(self) -> None:
        """Run passes on a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (after the pass in progress, if any)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if self.pending:
                    self.declare(self.pending)
                    self.pending = []
                self.run_once()
                wait = self._sleep_for()
                failures = 0
            except StoreError as exc:
                failures += 1
                wait = min(5.0, 0.05 * 2**failures)
                log.warning(
                    "periodic scheduler: the database failed (%s); again in %.2fs", exc, wait
                )
            except Exception:  # a bug must not end the scheduler of a long-running worker
                log.exception(
                    "periodic scheduler: a pass failed; again in %.1fs", self.poll_interval
                )
                wait = self.poll_interval
            self._stop.wait(wait)

    def _sleep_for(self) -> float:
        """Seconds until the earliest next tick (at most ``poll_interval``), plus jitter."""
        wait = self.poll_interval
        upcoming = self.db.next_schedule_tick_us()
        if upcoming is not None:
            wait = min(wait, max(0.0, (upcoming - self.clock.now_us()) / 1e6))
        return wait + self._rng.uniform(0.0, self.jitter)


def definition(
    schedule: Schedule, now_us: int, *, source: str = "code", paused: bool = False
) -> ScheduleDefinition:
    """What the store keeps for ``schedule``, its next tick counted from ``now_us``."""
    return ScheduleDefinition(
        name=schedule.key,
        definition_json=schedule.definition_json(),
        timing=schedule.timing_key(),
        overlap=schedule.overlap,
        source=source,
        next_tick_us=schedule.next_tick_after(now_us),
        paused=paused,
    )


__all__ = ["HEADER", "PassReport", "Plan", "Scheduler", "definition", "plan"]
