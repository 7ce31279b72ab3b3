"""Wake-ups through LISTEN/NOTIFY: the PostgreSQL store's
:class:`~hookqueue.core.storage.ChangeWatcher`.

Every write that makes work available — an enqueue (not a claimed one), a retry or a release
put back to ``queued``, an expired lease requeued, a task retried by hand — sends
``pg_notify('<schema>_work', <queue name>)`` in its own transaction, so the notification is
delivered exactly when the work becomes visible, never for a rolled-back write, and no crash
can fall between the two. PostgreSQL folds identical notifications of one transaction, so a
batch of a thousand tasks for one queue sends one. Completions and leases notify nobody:
they bring no work, and every notifying commit takes a database-wide lock at COMMIT — except
the end (settlement or expiry) of a task that a stored concurrency limit counts: its slot is
free, and workers it held back have work again.

:class:`ListenWatcher` holds a connection of its own (never one from the pool: ``LISTEN``
belongs to a session) and waits in ``select()`` on its socket and on a self-pipe that
:meth:`~ListenWatcher.interrupt` writes to. No polling: an idle worker costs nothing. When the
connection is lost it reconnects (with backoff, within the wait's timeout) and reports a
change, since notifications sent meanwhile are gone.

Waiting for tasks (``Queue.wait``): a completion would wake nobody, so a watcher given tasks
(:meth:`~ListenWatcher.watch_tasks`) registers them — a row per task in ``task_waits``,
keyed by its session's backend pid — and listens on a channel of its own,
``<schema>_done_<pid>``, instead of the work channel. Every statement that ends tasks
(settlement, expired lease, damaged row) calls ``notify_waited`` with their ids, which
notifies the sessions waiting for one of them, in the same statement and transaction: a
waiter is woken by its own tasks' ends only, and a settlement nobody waits for sends no
notification. Tasks cancelled or deleted by hand notify ``<schema>_done``, which every
waiter also listens on. The registration, then a ``FOR SHARE`` read of the newly waited
running tasks (it waits out a settlement in flight that looked for waiters too early), then
the caller's look at the tasks: no end falls between them. A reconnected watcher registers
again under its new pid; :meth:`~ListenWatcher.close` deletes its rows, and rows of
sessions that died are swept when a waiter connects (and every minute by each waiter).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import attrs
import psycopg
from psycopg import sql

from hookqueue.core.errors import StoreError

from .statements import WAITS_LOCK_TIMEOUT

if TYPE_CHECKING:
    from .connection import Connections

log = logging.getLogger("hookqueue.store.postgres")

#: The longest pause between two reconnection attempts, in seconds.
RECONNECT_MAX_DELAY = 2.0
#: How often a waiting session sweeps the registrations of sessions that died, in seconds
#: (also whenever it connects).
WAITS_SWEEP_EVERY = 60.0


@attrs.frozen(kw_only=True)
class WaitChannels:
    """What a watcher needs to wait for tasks' ends: channels and rendered statements."""

    #: The store's work channel (left once the watcher waits for tasks).
    work: str
    #: The channel tasks ended by hand are told on; a session's own is ``<done>_<pid>``.
    done: str
    #: ``WAITS_SET``: change the session's registered tasks (binds ``added``, ``removed``).
    register: str
    #: ``WAITS_SETTLE``: wait out writes in flight on newly waited running tasks.
    settle: str
    #: ``WAITS_CLEAR``: forget the session's registrations.
    clear: str
    #: ``WAITS_SWEEP``: forget the registrations of sessions that no longer exist.
    sweep: str
    #: ``lock_timeout`` of the listening session once it waits for tasks (e.g. ``10000ms``).
    lock_timeout: str


class ListenWatcher:
    """Waits for a notification on the store's work channel — or, once given tasks, for the
    end of one of them; see the module docs.

    Made and used on one thread (:meth:`wait`, :meth:`watch_tasks`, :meth:`close`);
    :meth:`interrupt` from any.

    :param connections: the store's connections (its conninfo and error translation).
    :param listen: the ``LISTEN`` statement of the store's work channel.
    :param waits: channels and statements for :meth:`watch_tasks`; None: the watcher cannot
        wait for tasks (``watch_tasks`` is then ignored, and the work channel reports).
    """

    def __init__(
        self, connections: Connections, listen: str, waits: WaitChannels | None = None
    ) -> None:
        self._cx = connections
        self._listen = listen
        self._waits = waits
        #: The tasks waited for (None: never asked to wait; listen for work).
        self._watched: frozenset[int] | None = None
        #: Tasks registered on the current connection (None: not registered there yet).
        self._registered: frozenset[int] | None = None
        #: A notification consumed by psycopg while a statement ran on the connection.
        self._noticed = False
        self._swept_at = 0.0
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
        # Notifications that arrive while a statement runs are taken off the socket by
        # psycopg; this keeps word of them for the next wait.
        conn.add_notify_handler(self._on_notify)
        self._registered = None
        try:
            with self._cx.errors(write=False):
                if self._watched is None:
                    conn.execute(self._listen)
                else:
                    self._register(conn, self._watched)
        except BaseException:
            conn.close()
            raise
        return conn

    def _on_notify(self, _notify: psycopg.Notify) -> None:
        self._noticed = True

    def watch_tasks(self, task_ids: Collection[int]) -> None:
        """Be woken by the ends of these tasks only (the whole set, replacing the previous
        one): registered on the listening connection before this returns, together with a
        wait for any settlement of them already in flight (see the module docs). A lost
        connection is not an error: the next :meth:`wait` reconnects and registers again.

        :raises StoreError: the server refused the registration (it is retried by the
            next call that changes the set, or after a reconnection).
        """
        if self._waits is None:
            return
        ids = frozenset(int(i) for i in task_ids)
        if self._watched is None and not ids:
            return  # never waited: keep listening for work
        if ids == self._watched and self._registered == ids:
            return
        self._watched = ids
        conn = self._conn
        if conn is None or conn.closed:
            return  # the next wait reconnects, and registers
        try:
            with self._cx.errors(write=False):
                self._register(conn, ids)
        except StoreError:
            if conn.closed or conn.broken:
                self._drop()  # reconnected and registered by the next wait
                return
            raise

    def _register(self, conn: psycopg.Connection[Any], ids: frozenset[int]) -> None:
        """Register ``ids`` for the session of ``conn`` (listening on its channels first,
        when it has not yet), then wait out in-flight writes on the new running ones."""
        waits = self._waits
        assert waits is not None
        before = self._registered
        if before is None:
            pid = conn.info.backend_pid
            conn.execute(WAITS_LOCK_TIMEOUT, {"timeout": waits.lock_timeout})
            for channel in (waits.done, f"{waits.done}_{pid}"):
                conn.execute("LISTEN " + sql.Identifier(channel).as_string(conn))
            conn.execute("UNLISTEN " + sql.Identifier(waits.work).as_string(conn))
            conn.execute(waits.clear)
            self._swept_at = 0.0
            before = frozenset()
        now = time.monotonic()
        if not self._swept_at or now - self._swept_at >= WAITS_SWEEP_EVERY:
            conn.execute(waits.sweep)
            self._swept_at = now
        new = ids - before
        conn.execute(waits.register, {"added": sorted(new), "removed": sorted(before - ids)})
        self._registered = ids
        if new:
            conn.execute(waits.settle, {"ids": sorted(new)}).fetchall()

    def wait(self, timeout: float) -> bool:
        """Block until a notification arrives (True), or ``timeout`` seconds pass or
        :meth:`interrupt` is called (False). After a lost connection, True once reconnected."""
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                return False
            if self._noticed:
                self._noticed = False
                return True
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
        """Forget the tasks this watcher registered, close the listening connection and the
        pipe. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn = self._conn, None
        self.interrupt()
        if conn is not None:
            if self._registered and self._waits is not None and not conn.closed:
                try:
                    conn.execute(self._waits.clear)
                except psycopg.Error as exc:  # swept by the next registration instead
                    log.warning(
                        "%s: cannot forget the tasks this waiter registered (%s)",
                        self._cx.location,
                        exc,
                    )
            try:
                conn.close()
            except psycopg.Error:  # pragma: no cover - already broken
                pass
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


__all__ = ["WAITS_SWEEP_EVERY", "ListenWatcher", "WaitChannels"]
