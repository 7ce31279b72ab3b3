"""Periodic ticks: worker processes that fire ticks are SIGKILLed at random, all at once too.

Every worker runs the periodic plugin's scheduler (there is no leader) over one database
file. A tick is fired by writing its task and its mark, unique per (schedule, tick), in one
transaction, and only by a process that read the schedule as it still is; so whichever
workers die, and whenever, each tick enqueues exactly one task, and with ``misfire="all"``
the ticks that fell while no worker ran are made up when one starts again.

``HOOKQUEUE_PERIODIC_CHAOS_SECONDS=N`` runs the chaos for N seconds instead of the default
(see docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hookqueue import Queue

from . import _faults
from ._ticks import audit_ticks
from .conftest import FaultRecord

pytestmark = pytest.mark.slow

#: Seconds of chaos (read at import: the root conftest hides HOOKQUEUE_* variables).
SECONDS = float(os.environ.get("HOOKQUEUE_PERIODIC_CHAOS_SECONDS") or 28)
WORKERS = 8
SCHEDULES = 20
EVERY_MS = 50


def _start(db: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        _faults.child_command("_periodic_worker.py", db, SCHEDULES, EVERY_MS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


def test_sigkilled_schedulers_fire_every_tick_exactly_once(
    tmp_path: Path, fault: FaultRecord
) -> None:
    """Eight worker processes share one database and twenty schedules ticking every 50 ms;
    one of them at a time is SIGKILLed at random and restarted, and every few seconds all of
    them are killed and stay down for up to two seconds: every tick from the schedules'
    creation to where they stand at the end enqueued exactly one task (none twice, none
    missed), the ticks that fell while all were down included."""
    fault.describe("Worker processes firing periodic ticks SIGKILLed at random, and all at once")
    rng = random.Random(18)
    db = tmp_path / "queue.db"
    procs = [_start(db) for _ in range(WORKERS)]
    kills = outages = 0
    down = 0.0
    started = time.monotonic()
    next_outage = started + rng.uniform(3, 6)
    try:
        while time.monotonic() - started < SECONDS:
            time.sleep(rng.uniform(0.25, 0.9))
            if time.monotonic() >= next_outage:
                for proc in procs:
                    _kill(proc)
                kills += len(procs)
                outages += 1
                gap = rng.uniform(0.5, 2.0)
                down += gap
                time.sleep(gap)
                procs = [_start(db) for _ in range(WORKERS)]
                next_outage = time.monotonic() + rng.uniform(4, 8)
            else:
                i = rng.randrange(WORKERS)
                _kill(procs[i])
                kills += 1
                procs[i] = _start(db)
        time.sleep(2.0)  # the last restarted workers catch up
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        errors = []
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode not in (0, -signal.SIGTERM):
                errors.append(err.decode(errors="replace")[-2000:])
    fault.inject(kills)
    elapsed = time.monotonic() - started
    assert errors == [], errors[0]

    with Queue(db, load_entrypoints=False, durability="normal") as q:
        audit = audit_ticks(q, EVERY_MS * 1000)
    rows, late = audit.rows, audit.late
    assert all(row.skipped == 0 for row in rows)
    fault.figure("ticks", len(audit.expected))
    fault.figure("schedules", len(rows))
    fault.figure("worker processes", WORKERS)
    fault.figure("SIGKILLs", kills)
    fault.figure("outages with every worker killed", outages)
    fault.figure("seconds with no worker", round(down, 1))
    fault.figure("duplicate ticks", audit.duplicates)
    fault.figure("missed ticks", audit.missed)
    fault.figure("ticks fired that were not due", audit.extra)
    fault.figure("tick to enqueue, median s", round(late[len(late) // 2], 3))
    fault.figure("ticks enqueued over 1 s late (outages)", sum(1 for x in late if x > 1.0))
    fault.figure("seconds", round(elapsed, 1))
    assert len(rows) == SCHEDULES
    assert len(audit.expected) >= SECONDS * 1000 / EVERY_MS * SCHEDULES * 0.9
    assert audit.duplicates == 0 and audit.missed == 0 and audit.extra == 0
    assert sum(row.fired for row in rows) == audit.tasks == len(audit.expected)
