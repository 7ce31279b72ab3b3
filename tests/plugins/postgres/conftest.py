"""Fixtures of the PostgreSQL store's tests: URLs of the per-test database."""

from __future__ import annotations

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
