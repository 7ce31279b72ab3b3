"""Shared by the adapter's tests on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hookqueue.plugins.adapter import integration


@contextmanager
def fresh_database_cache() -> Iterator[None]:
    """``get_or_create_queue_database`` caches per process: start with none, and close and
    forget what was opened inside."""
    saved = dict(integration._databases)
    integration._databases.clear()
    try:
        yield
    finally:
        for db in integration._databases.values():
            db.close()
        integration._databases.clear()
        integration._databases.update(saved)
