"""Noticing other connections' commits to a SQLite database (the store's
:class:`~hookqueue.core.storage.ChangeWatcher`).

A commit by another connection changes ``PRAGMA data_version`` (a counter in shared memory:
reading it reads no table). The watcher polls it every ``poll_interval`` — but only while the
write-ahead log is being written and for :data:`WAL_ACTIVE_SPAN` seconds after: a commit
becomes visible after its pages are written, and no file event reports that moment. While
the log is quiet, on Linux, it sleeps on an inotify watch of the log
(:class:`~hookqueue.core.store.walwatch.WalActivity`), looking anyway every
:data:`WAL_QUIET_CHECK` seconds in case an event was missed; an idle worker then costs
nothing instead of a thousand reads a second. Without inotify it polls all the time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

from .walwatch import WalActivity

if TYPE_CHECKING:
    from .database import QueueDatabase

#: After the write-ahead log was last written, how long the watcher keeps polling.
WAL_ACTIVE_SPAN = 0.05
#: While the log is quiet, how often the watcher looks anyway (a missed event costs at most
#: this much latency).
WAL_QUIET_CHECK = 0.05


class CommitWatcher:
    """Waits for another connection's commit; see the module docs.

    Make it and use it on one thread (:meth:`wait`, :meth:`close`); :meth:`interrupt` from
    any thread.
    ``data_version`` is read on the waiting thread's own connection, which is what makes it
    report the *other* connections' commits.
    """

    def __init__(
        self, db: QueueDatabase, poll_interval: float, *, sleep_while_idle: bool = True
    ) -> None:
        self._db = db
        self._poll_interval = poll_interval
        self._activity = WalActivity.open(db.path) if sleep_while_idle else None
        self._interrupted = threading.Event()
        # Read now, on the thread that makes (and then waits on) the watcher: a commit made
        # between now and the first wait() is seen by it.
        self._last: int = db.data_version()
        self._active_until = time.monotonic() + WAL_ACTIVE_SPAN

    def wait(self, timeout: float) -> bool:
        """Block until another connection's commit is seen (True) or ``timeout`` seconds
        pass or :meth:`interrupt` is called (False)."""
        db = self._db
        activity = self._activity
        monotonic = time.monotonic
        deadline = monotonic() + timeout
        while True:
            if self._interrupted.is_set():
                self._interrupted.clear()
                return False
            now = monotonic()
            remaining = deadline - now
            if activity is None or now < self._active_until:
                if self._interrupted.wait(min(self._poll_interval, max(remaining, 0.0))):
                    continue
                written = activity is not None and activity.wait(0)
            else:
                written = activity.wait(min(WAL_QUIET_CHECK, max(remaining, 0.0)))
            if written:
                # The log is being written: a commit becomes visible after its pages are
                # written, so keep looking for a while.
                self._active_until = monotonic() + WAL_ACTIVE_SPAN
            current = db.data_version()
            if current != self._last:
                self._last = current
                return True
            if monotonic() >= deadline:
                return False

    def interrupt(self) -> None:
        """Make a :meth:`wait` in progress (or the next one) return False at once."""
        self._interrupted.set()
        if self._activity is not None:
            self._activity.interrupt()

    def watch_tasks(self, task_ids: Collection[int]) -> None:
        """Ignored: every commit of another connection changes ``data_version``, so the end
        of any task is reported already."""

    def close(self) -> None:
        """Release the inotify watch (from the waiting thread)."""
        if self._activity is not None:
            self._activity.close()
            self._activity = None


__all__ = ["WAL_ACTIVE_SPAN", "WAL_QUIET_CHECK", "CommitWatcher"]
