"""The SQLite store against the store contract (:mod:`hookqueue.contrib.contracts.store`).

Where the store and the written contract (``hookqueue/core/storage.py`` and the records it
names) disagree, the test is listed in ``known_failures`` with the reason: it runs as
``xfail(strict=True)``, so whoever fixes the store (or changes the contract) removes the entry.
"""

from __future__ import annotations

from pathlib import Path

import apsw

from hookqueue import QueueDatabase
from hookqueue.contrib.contracts.limits import LimitStoreContract
from hookqueue.contrib.contracts.store import StoreContract, StoreOpener
from hookqueue.core.storage import TaskStore


class TestSqliteStore(StoreContract):
    """The contract, on a new SQLite file per test."""

    #: Tests this store is known to fail, with the reason (none now; see StoreContract).
    known_failures: dict[str, str] = {}

    def make_store(self, tmp_path: Path) -> TaskStore:
        """A new SQLite file in the test's directory (not yet created: the store creates it)."""
        return QueueDatabase(tmp_path / "q.db", durability="normal")

    def store_opener(self, store: TaskStore) -> StoreOpener:
        """Another process opens the same file."""
        return StoreOpener("hookqueue:QueueDatabase", (store.location,), {"durability": "normal"})

    def damage_worker(self, store: TaskStore, worker_id: str, queues_text: str) -> bool:
        """A connection of its own writes the text into the file."""
        conn = apsw.Connection(store.location)
        try:
            conn.execute(
                "UPDATE workers SET queues = ? WHERE worker_id = ?", (queues_text, worker_id)
            )
        finally:
            conn.close()
        return True


class TestSqliteLimits(LimitStoreContract):
    """The limit vocabulary's contract, on a new SQLite file per test."""

    def make_store(self, tmp_path: Path) -> TaskStore:
        """A new SQLite file in the test's directory."""
        return QueueDatabase(tmp_path / "q.db", durability="normal")
