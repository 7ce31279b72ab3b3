"""The PostgreSQL store against the store contract (:mod:`hookqueue.contrib.contracts.store`),
on a real server (``tests/_services/postgres.py``): a database of its own per test.

Each store the contract makes gets a schema of its own in that database (the state machine
makes one per example), so every store starts empty without a database per example.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from hookqueue.contrib.contracts.store import StoreContract, StoreOpener
from hookqueue.core.storage import TaskStore
from hookqueue.plugins.postgres import PostgresStore

_SCHEMAS = itertools.count(1)


class TestPostgresStore(StoreContract):
    """The contract, on a new schema of a new database per test."""

    #: Tests this store is known to fail, with the reason (none now; see StoreContract).
    known_failures: dict[str, str] = {}

    @pytest.fixture(autouse=True)
    def _database(self, postgres_dsn: str) -> None:
        self.dsn = postgres_dsn

    def make_store(self, tmp_path: Path) -> TaskStore:
        """A new schema in the test's database (created on first use)."""
        return PostgresStore(self.dsn, schema=f"hq{next(_SCHEMAS)}", durability="normal")

    def store_opener(self, store: TaskStore) -> StoreOpener:
        """Another process opens the same schema of the same database."""
        assert isinstance(store, PostgresStore)
        return StoreOpener(
            "hookqueue.plugins.postgres:PostgresStore",
            (self.dsn,),
            {"schema": store.schema, "durability": "normal"},
        )

    def damage_worker(self, store: TaskStore, worker_id: str, queues_text: str) -> bool:
        """A connection of its own writes the text into the store's schema."""
        assert isinstance(store, PostgresStore)
        table = sql.Identifier(store.schema, "workers")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("UPDATE {} SET queues = %s WHERE worker_id = %s").format(table),
                (queues_text, worker_id),
            )
        return True
