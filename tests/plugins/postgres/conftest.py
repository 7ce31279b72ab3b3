"""Fixtures of the PostgreSQL store's tests: URLs of the per-test database, and that
database with parallel plans forced."""

from __future__ import annotations

import psycopg
import pytest
from _services.pgurl import url_of
from _services.postgres import PostgresServer
from psycopg.conninfo import conninfo_to_dict


@pytest.fixture
def postgres_url(postgres_dsn: str) -> str:
    """The per-test database as a ``postgresql://`` URL (over the Unix socket)."""
    return url_of(postgres_dsn)


@pytest.fixture
def postgres_tcp_url(postgres_server: PostgresServer, postgres_dsn: str) -> str:
    """The per-test database over TCP, with the superuser's password in the URL."""
    dbname = conninfo_to_dict(postgres_dsn)["dbname"]
    return url_of(postgres_server.dsn_for(str(dbname), tcp=True))


#: What makes the planner choose a parallel plan wherever one is allowed: no cost for starting
#: workers or passing rows, tables of any size, and (the name changed in PostgreSQL 16) a
#: Gather put over any plan that is parallel safe, workers or not.
PARALLEL_EVERYWHERE = (
    ("parallel_setup_cost", "0"),
    ("parallel_tuple_cost", "0"),
    ("min_parallel_table_scan_size", "0"),
    ("min_parallel_index_scan_size", "0"),
    ("max_parallel_workers_per_gather", "2"),
)


@pytest.fixture
def postgres_parallel_dsn(postgres_dsn: str) -> str:
    """The per-test database, where every session opened from now on plans in parallel
    wherever PostgreSQL may (``ALTER DATABASE ... SET``)."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        dbname = conn.info.dbname
        force = (
            "debug_parallel_query" if conn.info.server_version >= 160000 else "force_parallel_mode"
        )
        for setting, value in (*PARALLEL_EVERYWHERE, (force, "on")):
            conn.execute(f'ALTER DATABASE "{dbname}" SET {setting} = {value}')
    return postgres_dsn
