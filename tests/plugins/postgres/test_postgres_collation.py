"""Names in byte order on a database whose collation is language-aware.

A database made with an ICU locale (or a libc one) sorts text as a dictionary would —
``'_x'``, ``'alpha'``, ``'Ärger'``, ``'beta'``, ``'Zeta'`` — where SQLite sorts bytes —
``'Zeta'``, ``'_x'``, ``'alpha'``, ``'beta'``, ``'Ärger'``. The store orders every listing of
names with ``COLLATE "C"``, so a queue lists the same on both. The test server's own
databases are made with ``--no-locale`` (byte order already): these tests make one of their
own with ICU's ``en-US``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from _services.postgres import PostgresServer
from psycopg import sql

from hookqueue import QueueDatabase
from hookqueue.contrib.contracts.store import T0, name_listings
from hookqueue.core.clock import from_us
from hookqueue.core.models import WorkerInfo
from hookqueue.plugins.postgres import PostgresStore

#: Names whose dictionary order is not their byte order.
SAMPLE = ["Zeta", "_x", "alpha", "beta", "Ärger"]


def _language_aware(conn: psycopg.Connection[tuple[object, ...]]) -> sql.Composable | None:
    """The locale clause of a database that sorts like a dictionary: ICU's ``en-US`` where
    the server has ICU, else a libc locale it knows other than C and POSIX; None without."""
    icu = conn.execute("SELECT count(*) FROM pg_collation WHERE collprovider = 'i'").fetchone()
    if conn.info.server_version >= 150000 and icu and icu[0]:
        return sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'")
    row = conn.execute(
        "SELECT collcollate FROM pg_collation WHERE collprovider = 'c' "
        "AND collencoding IN (-1, pg_char_to_encoding('UTF8')) "
        "AND collcollate NOT IN ('C', 'POSIX') AND collcollate NOT ILIKE 'C.%' "
        "ORDER BY collcollate ILIKE 'en_US%' DESC, collcollate LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    return sql.SQL("LOCALE {}").format(sql.Literal(row[0]))


@pytest.fixture
def dictionary_dsn(
    postgres_server: PostgresServer, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A database of this test's own whose default collation is language-aware."""
    name = postgres_server.database_name(request.node.name)
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        locale = _language_aware(conn)
        if locale is None:
            pytest.skip("the server has neither ICU nor a libc locale other than C and POSIX")
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' {}").format(
                sql.Identifier(name), locale
            )
        )
    try:
        dsn = postgres_server.dsn_for(name)
        with psycopg.connect(dsn) as conn:
            [(ordered,)] = conn.execute(
                "SELECT array_agg(x ORDER BY x) FROM unnest(%s::text[]) AS x", [SAMPLE]
            ).fetchall()
        assert ordered != sorted(SAMPLE), "the database sorts text in byte order after all"
        yield dsn
    finally:
        postgres_server.drop_database(name)


def test_every_listing_of_names_is_in_byte_order_as_on_sqlite(
    dictionary_dsn: str, tmp_path: Path
) -> None:
    """Queue gauges, due and queued queue names, paused queues, schedules (all, by name,
    due), limit rules and their usage list the same names in the same order on SQLite and
    on this database: byte order (``sorted``), not the database's."""
    with PostgresStore(dictionary_dsn) as store:
        on_postgres = name_listings(store)
    with QueueDatabase(tmp_path / "q.db") as db:
        on_sqlite = name_listings(db)
    assert on_postgres == on_sqlite
    for listing, names in on_postgres.items():
        assert names == sorted(names), listing


def test_workers_started_at_one_instant_are_listed_by_id_in_byte_order(
    dictionary_dsn: str,
) -> None:
    """Workers are listed oldest first; those that started at the same instant by id, in
    byte order."""
    with PostgresStore(dictionary_dsn) as store:
        for worker_id in SAMPLE:
            store.register_worker(
                WorkerInfo(
                    worker_id=worker_id,
                    hostname="h",
                    pid=1,
                    queues=("default",),
                    concurrency=1,
                    started_at=from_us(T0),
                    heartbeat_at=from_us(T0),
                )
            )
        assert [w.worker_id for w in store.workers()] == sorted(SAMPLE)
