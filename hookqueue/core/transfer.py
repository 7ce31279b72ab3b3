"""Moving a queue from one store to another: ``hookqueue copy --from SRC --to DST``.

Store-neutral mechanism: it reads the source with
:meth:`~hookqueue.core.storage.TaskStore.export_rows` a page at a time and writes the
destination with one :meth:`~hookqueue.core.storage.TaskStore.import_rows` transaction, so
any two stores that keep the contract — SQLite to PostgreSQL, PostgreSQL to SQLite, SQLite to
a new file — copy the same way. Tasks keep their ids, statuses, attempts, instants, payloads,
results, errors and idempotency keys; the destination is either fully written or untouched.

The source is read in pages (one snapshot each), so the copy is exact when nothing writes the
source meanwhile: stop producers and workers first. The report says when the source changed
during the copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from .errors import StoreError
from .storage import RawRow, TaskStore

#: Rows read from the source per call.
PAGE = 1000


@attrs.frozen(kw_only=True)
class CopyReport:
    """What :func:`copy_tasks` did."""

    #: The source's location (no password).
    source: str
    #: The destination's location (no password).
    destination: str
    #: How many tasks were copied.
    copied: int
    #: The source's tasks per status when the copy began.
    by_status: dict[str, int]
    #: True when the source's counts differed after the copy (something wrote it meanwhile).
    source_changed: bool


def copy_tasks(
    source: TaskStore, destination: TaskStore, *, allow_non_empty: bool = False, page: int = PAGE
) -> CopyReport:
    """Copy every task of ``source`` into ``destination`` in one destination transaction.

    :param allow_non_empty: copy into a destination that already holds tasks (their ids and
        idempotency keys must not clash with the source's; a clash refuses the whole copy).
    :param page: rows read from the source per call.
    :raises StoreError: the destination holds tasks and ``allow_non_empty`` is not given, or
        the import was refused (nothing was written to the destination then).
    """
    destination.initialize_schema()
    held = sum(destination.counts().values())
    if held and not allow_non_empty:
        raise StoreError(
            f"{destination.location}: the destination already holds {held} task(s); nothing "
            "was copied. Fix: copy into a new, empty store, or pass --allow-non-empty (the "
            "source's ids and idempotency keys must not be in use there)"
        )
    before = source.counts()

    def rows() -> Iterator[RawRow]:
        after = 0
        while batch := source.export_rows(after_id=after, limit=page):
            yield from batch
            after = int(batch[-1][0])

    copied = destination.import_rows(rows())
    after: dict[str, Any] = source.counts()
    return CopyReport(
        source=source.location,
        destination=destination.location,
        copied=copied,
        by_status=dict(before),
        source_changed=after != before or copied != sum(before.values()),
    )


__all__ = ["PAGE", "CopyReport", "copy_tasks"]
