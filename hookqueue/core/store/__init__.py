"""The embedded SQLite store: the default :class:`~hookqueue.core.storage.TaskStore`.

The only package that imports apsw. Its parts:

- :mod:`.schema` — versions, migration steps, recognising a hookqueue file;
- :mod:`.statements` — every SQL statement, by name;
- :mod:`.connection` — one connection per thread, WAL, busy handling, checkpoints, errors;
- :mod:`.database` — :class:`QueueDatabase`, the store's operations;
- :mod:`.watch` and :mod:`.walwatch` — noticing other processes' commits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..storage import Durability, InsertRow, Settlement, TaskStore
from .connection import default_database_path, user_database_path
from .database import QueueDatabase
from .schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Durability",
    "InsertRow",
    "QueueDatabase",
    "Settlement",
    "default_database_path",
    "user_database_path",
]


if TYPE_CHECKING:  # mypy checks that the SQLite store keeps the whole store contract

    def _keeps_the_contract(db: QueueDatabase) -> TaskStore:
        return db
