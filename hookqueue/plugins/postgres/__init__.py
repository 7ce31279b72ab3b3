"""The PostgreSQL store, chosen by a ``postgresql://`` location (extra ``hookqueue[postgres]``).

``Queue("postgresql://app@db/app")``, ``HOOKQUEUE_DB=postgresql://...`` and
``hookqueue --db postgresql://...`` open a :class:`PostgresStore` through this plugin's
``hookqueue_store``: the same queue, workers, plugins, adapter and command line as on SQLite,
on a server that several hosts share. See ``docs/postgres.md``.

The only package besides the SQLite store that holds SQL, and the only one that imports
psycopg (installing the extra brings it; without it the plugin is listed as unavailable with
the install command). Its parts:

- :mod:`.schema` — versions and migration steps;
- :mod:`.statements` — every SQL statement, by name;
- :mod:`.connection` — locations, the pool, transactions, fork, errors;
- :mod:`.store` — :class:`PostgresStore`, the store's operations;
- :mod:`.watch` — wake-ups through LISTEN/NOTIFY.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hookqueue.core.hookspecs import hookimpl

from .schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from hookqueue.core.storage import TaskStore

    from .store import PostgresStore

# The plugin is unavailable (listed with its install command) when the extra is not
# installed; when it is, psycopg is imported only once a postgresql:// location is opened, so
# a process working an SQLite file does not carry it (about 13 MB per worker process).
for _needed in ("psycopg", "psycopg_pool"):
    if importlib.util.find_spec(_needed) is None:
        raise ImportError(f"No module named {_needed!r}", name=_needed)

#: The URL schemes this store serves.
SCHEMES = ("postgresql", "postgres")


def __getattr__(name: str) -> Any:
    """``PostgresStore``, imported (with psycopg) on first use."""
    if name == "PostgresStore":
        from .store import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_postgres_location(location: str) -> bool:
    """True for ``postgresql://`` and ``postgres://`` URLs (any case)."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


@hookimpl
def hookqueue_store(location: str, options: Mapping[str, Any]) -> PostgresStore | None:
    """Open a :class:`PostgresStore` for ``postgresql://`` and ``postgres://`` locations
    (``durability``, ``busy_timeout`` and ``create`` taken from the queue's options); None
    for any other location."""
    if not is_postgres_location(location):
        return None
    from .store import PostgresStore

    return PostgresStore(
        location,
        durability=options.get("durability", "full"),
        busy_timeout=options.get("busy_timeout", 10.0),
        create=options.get("create", True),
    )


if TYPE_CHECKING:  # mypy checks that the PostgreSQL store keeps the whole store contract

    def _keeps_the_contract(store: PostgresStore) -> TaskStore:
        return store


__all__ = ["SCHEMA_VERSION", "PostgresStore", "hookqueue_store", "is_postgres_location"]
