"""The other process of the store contract's multi-process tests; not an API.

:class:`~hookqueue.contrib.contracts.store.StoreContract` starts this module with
``python -m hookqueue.contrib.contracts._store_child`` and writes two pickles to its stdin: the
parent's ``sys.path`` (so the store's opener unpickles wherever it was defined), then
``(opener, job, arguments)``. The child opens the store with ``opener()``, prepares, prints
``ready``, waits for a line (``go``) so that several children start the job at the same
moment, runs the job, prints its result as one JSON line and closes the store.

It imports only hookqueue's core (no pytest), so it starts quickly.
"""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hookqueue.core.models import LeasePlan, Task
from hookqueue.core.storage import InsertRow, TaskStore


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


#: The jobs a child can run, by name.
JOBS: dict[str, Callable[..., Any]] = {
    "insert_each": insert_each,
    "lease_all": lease_all,
    "insert_one": insert_one,
    "initialize": initialize,
}
#: Jobs that start on a store whose schema is not yet created (the others create it while
#: preparing, so the job itself races only with the other children's jobs).
UNPREPARED = frozenset({"initialize"})


def main() -> None:
    """Run one job as the parent asks (see the module docs)."""
    stdin = sys.stdin.buffer
    stdout = sys.stdout
    for entry in reversed(pickle.load(stdin)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    opener, job, arguments = pickle.load(stdin)
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
