"""The other process of the store contract's multi-process tests; not an API.

:class:`~hookqueue.contrib.contracts.store.StoreContract` starts this module with
``python -m hookqueue.contrib.contracts._store_child`` and writes one JSON line to its stdin:
the parent's ``sys.path`` (so the store's class imports wherever it was defined), the
:class:`StoreOpener` (the store class's import path and its arguments), the job's name and its
arguments (rows as dicts). Nothing is unpickled. The child opens the store, prepares, prints
``ready``, waits for a line (``go``) so that several children start the job at the same
moment, runs the job, prints its result as one JSON line and closes the store.

It imports only hookqueue's core (no pytest), so it starts quickly.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from hookqueue.core.models import LeasePlan, Task
from hookqueue.core.storage import InsertRow, TaskStore, TickFire


@attrs.frozen
class StoreOpener:
    """How to open a store again, in this or another process: ``factory`` is the import path
    of its class or of a function returning it (``"package.module:Name"``), called with
    ``args`` and ``kwargs`` (JSON values: a path, a DSN, a durability)."""

    factory: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.field(factory=dict)

    def __call__(self) -> TaskStore:
        """Open the store."""
        module_name, _, name = self.factory.partition(":")
        target: Any = importlib.import_module(module_name)
        for part in name.split("."):
            target = getattr(target, part)
        store: TaskStore = target(*self.args, **self.kwargs)
        return store

    def to_json(self) -> dict[str, Any]:
        """As a JSON object (for the other process)."""
        return {"factory": self.factory, "args": list(self.args), "kwargs": self.kwargs}


#: Argument names whose values are InsertRow records (sent as dicts).
_ROW_ARGUMENTS = {"row", "rows"}


def encode_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """A job's arguments as JSON values (rows as dicts of their fields)."""
    out: dict[str, Any] = {}
    for name, value in arguments.items():
        if name == "row":
            value = attrs.asdict(value)
        elif name == "rows":
            value = [attrs.asdict(row) for row in value]
        out[name] = value
    return out


def _decode_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    out = dict(arguments)
    if "row" in out:
        out["row"] = InsertRow(**out["row"])
    if "rows" in out:
        out["rows"] = [InsertRow(**row) for row in out["rows"]]
    return out


def insert_each(store: TaskStore, rows: Sequence[InsertRow], now_us: int) -> list[int]:
    """Insert each row in a transaction of its own; the ids ``insert`` answered."""
    return [store.insert([row], now_us)[0][0] for row in rows]


def lease_all(store: TaskStore, worker_id: str, now_us: int, limit: int) -> list[int]:
    """Lease ``limit`` at a time until nothing is leased; the ids leased, in order."""
    leased: list[int] = []

    def never_expires(task: Task) -> tuple[int | None, str]:
        raise AssertionError(f"no lease may expire in this test (task {task.id})")

    while True:
        tasks, _ = store.lease(
            worker_id=worker_id,
            queues=["default"],
            limit=limit,
            now_us=now_us,
            lease_us=60_000_000,
            plan=LeasePlan(),
            decide_expired=never_expires,
        )
        if not tasks:
            return leased
        leased += [t.id for t in tasks]


def insert_one(store: TaskStore, row: InsertRow, now_us: int) -> int:
    """Insert one task (a commit another process's watcher should see); its id."""
    return store.insert_one(row, now_us)


def initialize(store: TaskStore, row: InsertRow, now_us: int) -> int:
    """Create the schema (several processes at once), then insert one task; its id."""
    store.initialize_schema()
    return store.insert_one(row, now_us)


def fire_steps(
    store: TaskStore, schedule: str, every_us: int, until_us: int, now_us: int
) -> list[list[int]]:
    """Act as a scheduler of an ``every_us`` schedule: read it, fire its next tick, again,
    until its next tick is past ``until_us``; the ``[tick, task id]`` this process fired."""
    fired: list[list[int]] = []
    while True:
        [row] = store.list_schedules(names=[schedule])
        if row.next_tick_us is None or row.next_tick_us > until_us:
            return fired
        tick = row.next_tick_us
        task = InsertRow(
            queue="default",
            task_type="tick",
            payload_json=json.dumps({"tick": tick}),
            priority=100,
            max_attempts=1,
            run_after_us=0,
            idempotency_key=None,
            timeout=None,
            headers_json=None,
        )
        [outcome] = store.fire_ticks(
            [
                TickFire(
                    schedule=schedule,
                    expect_next_tick_us=tick,
                    expect_revision=row.revision,
                    ticks=((tick, task),),
                    next_tick_us=tick + every_us,
                )
            ],
            now_us,
        )
        fired += [[t, task_id] for t, task_id in outcome.fired]


#: The jobs a child can run, by name.
JOBS: dict[str, Callable[..., Any]] = {
    "insert_each": insert_each,
    "lease_all": lease_all,
    "insert_one": insert_one,
    "initialize": initialize,
    "fire_steps": fire_steps,
}
#: Jobs that start on a store whose schema is not yet created (the others create it while
#: preparing, so the job itself races only with the other children's jobs).
UNPREPARED = frozenset({"initialize"})


def main() -> None:
    """Run one job as the parent asks (see the module docs)."""
    stdin = sys.stdin
    stdout = sys.stdout
    message = json.loads(stdin.readline())
    for entry in reversed(message["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    opener = StoreOpener(
        message["opener"]["factory"],
        tuple(message["opener"]["args"]),
        message["opener"]["kwargs"],
    )
    job = message["job"]
    arguments = _decode_arguments(message["arguments"])
    store: TaskStore = opener()
    try:
        if job not in UNPREPARED:
            store.initialize_schema()
        stdout.write("ready\n")
        stdout.flush()
        stdin.readline()
        result = JOBS[job](store, **arguments)
        stdout.write(json.dumps(result) + "\n")
        stdout.flush()
    finally:
        store.close()


if __name__ == "__main__":
    main()
