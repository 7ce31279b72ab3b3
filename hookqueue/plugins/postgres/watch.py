"""Wake-ups through LISTEN/NOTIFY: the PostgreSQL store's
:class:`~hookqueue.core.storage.ChangeWatcher`.

Every write that makes work available — an enqueue (not a claimed one), a retry or a release
put back to ``queued``, an expired lease requeued, a task retried by hand — sends
``pg_notify('<schema>_work', <queue name>)`` in its own transaction, so the notification is
delivered exactly when the work becomes visible, never for a rolled-back write, and no crash
can fall between the two. PostgreSQL folds identical notifications of one transaction, so a
batch of a thousand tasks for one queue sends one. Completions and leases notify nobody:
they bring no work, and every notifying commit takes a database-wide lock at COMMIT.

:class:`ListenWatcher` holds a connection of its own (never one from the pool: ``LISTEN``
belongs to a session) and waits in ``select()`` on its socket and on a self-pipe that
:meth:`~ListenWatcher.interrupt` writes to. No polling: an idle worker costs nothing. When the
connection is lost it reconnects (with backoff, within the wait's timeout) and reports a
change, since notifications sent meanwhile are gone.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from .connection import Connections

log = logging.getLogger("hookqueue.store.postgres")

#: The longest pause between two reconnection attempts, in seconds.
RECONNECT_MAX_DELAY = 2.0


class ListenWatcher:
    """Waits for a notification on the store's work channel; see the module docs.

    Made and used on one thread (:meth:`wait`, :meth:`close`); :meth:`interrupt` from any.

    :param connections: the store's connections (its conninfo and error translation).
    :param listen: the ``LISTEN`` statement of the store's channel.
    """

    def __init__(self, connections: Connections, listen: str) -> None:
        self._cx = connections
        self._listen = listen
        self._lock = threading.Lock()
        self._closed = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._conn: psycopg.Connection[Any] | None = None
        self._delay = 0.05
        try:
            # LISTEN now, on the maker's thread: a commit made between now and the first
            # wait() is delivered to it.
            self._conn = self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> psycopg.Connection[Any]:
        conn = self._cx.connect()
        try:
            with self._cx.errors(write=False):
                conn.execute(self._listen)
        except BaseException:
            conn.close()
            raise
        return conn

    def wait(self, timeout: float) -> bool:
        """Block until a notification arrives (True), or ``timeout`` seconds pass or
        :meth:`interrupt` is called (False). After a lost connection, True once reconnected."""
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                return False
            conn = self._conn
            if conn is None or conn.closed:
                if self._reconnect(deadline):
                    return True
                return False
            remaining = max(0.0, deadline - time.monotonic())
            try:
                readable, _, _ = select.select([conn.fileno(), self._read_fd], [], [], remaining)
            except (OSError, ValueError, psycopg.Error):
                self._drop()
                continue
            if self._read_fd in readable:
                self._drain_pipe()
                return False
            if not readable:
                return False
            try:
                pgconn = conn.pgconn
                pgconn.consume_input()
                got = False
                while pgconn.notifies() is not None:
                    got = True
            except (psycopg.Error, OSError) as exc:
                log.warning(
                    "%s: the listening connection failed (%s); reconnecting", self._cx.location, exc
                )
                self._drop()
                continue
            if got:
                return True
            if time.monotonic() >= deadline:
                return False

    def _reconnect(self, deadline: float) -> bool:
        """Connect again, trying until ``deadline``; True once listening again."""
        while not self._closed:
            try:
                conn = self._connect()
            except Exception as exc:  # reported, retried after a pause
                log.warning("%s: cannot listen for wake-ups (%s)", self._cx.location, exc)
                pause = min(self._delay, max(0.0, deadline - time.monotonic()))
                self._delay = min(RECONNECT_MAX_DELAY, self._delay * 2)
                if pause <= 0 or self._wait_pipe(pause):
                    return False
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    return False
                self._conn = conn
            self._delay = 0.05
            return True
        return False

    def _wait_pipe(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (and drained) when interrupted meanwhile."""
        readable, _, _ = select.select([self._read_fd], [], [], seconds)
        if readable:
            self._drain_pipe()
            return True
        return False

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:  # pragma: no cover - already broken
                pass

    def _drain_pipe(self) -> None:
        try:
            while os.read(self._read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def interrupt(self) -> None:
        """Make a :meth:`wait` in progress (or the next one) return False at once."""
        try:
            os.write(self._write_fd, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (already interrupted) or closed

    def close(self) -> None:
        """Close the listening connection and the pipe. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn = self._conn, None
        self.interrupt()
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:  # pragma: no cover - already broken
                pass
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


__all__ = ["ListenWatcher"]
