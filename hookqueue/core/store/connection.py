"""The SQLite store's connection layer: one connection per thread, opened safely.

What it owns, so the statements in :mod:`.database` can assume a ready connection:

- creating the file owner-only (0600, its directory 0700) before SQLite opens it, also
  through a symlink;
- one connection per thread (and per process: a forked child opens its own), closed when its
  thread ends or when the store closes;
- refusing foreign and newer files (:mod:`.schema`) before anything is written;
- write-ahead logging, switched on safely when several processes open a new file at once;
- a busy handler with short sleeps, a ``BEGIN`` for workers' claims that gives way to other
  writers (:meth:`Connections.begin_yielding`), and hookqueue's own WAL checkpoint after
  commits (:class:`WalCheckpointer`: passive, then RESTART, never waiting);
- ``BEGIN IMMEDIATE`` / ``COMMIT`` / ``ROLLBACK`` that release the GIL while waiting;
- turning apsw's exceptions into hookqueue's errors, each naming the file and the fix.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apsw
import apsw.bestpractice

from ..errors import (
    CommitOutcomeUnknown,
    DamagedRow,
    DatabaseBusy,
    DatabaseFull,
    NotAHookqueueDatabase,
    StoreError,
    ValidationError,
)
from ..storage import Durability
from .schema import verify_identity

log = logging.getLogger("hookqueue.store")

#: ``PRAGMA synchronous`` for each durability level.
SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}

# A connection must not be used in a process forked after it was opened (its locks and file
# descriptors belong to the parent). Each fork bumps this number in the child, so an inherited
# thread-local connection is recognised without a getpid() system call per statement.
_fork_generation = 0


def _count_fork() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_count_fork)


def default_database_path() -> Path:
    """``$HOOKQUEUE_DB``, else :func:`user_database_path`.

    :raises ValidationError: ``$HOOKQUEUE_DB`` is a store URL (``Queue()`` opens those).
    """
    env = os.environ.get("HOOKQUEUE_DB")
    if env and "://" in env:
        raise ValidationError(
            "HOOKQUEUE_DB",
            env,
            "is a store URL, and a QueueDatabase is always a SQLite file",
            "open it with Queue(), the adapter's get_or_create_queue_database() or the "
            "hookqueue command (they read HOOKQUEUE_DB and open the store that serves it), or "
            "set HOOKQUEUE_DB to a file path",
        )
    if env:
        return Path(env).expanduser()
    return user_database_path()


def user_database_path() -> Path:
    """``hookqueue/queue.db`` in the user's data directory: ``$XDG_DATA_HOME`` (else
    ``~/.local/share``) on Linux and other Unixes, ``~/Library/Application Support`` on macOS
    and ``%LOCALAPPDATA%`` on Windows — never a temporary directory, which the system may
    empty."""
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif os.uname().sysname == "Darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "hookqueue" / "queue.db"


class ErrorTranslator:
    """A context manager that turns apsw exceptions into hookqueue errors naming the
    database and the fix (``with connections.errors: ...``)."""

    __slots__ = ("owner",)

    def __init__(self, owner: Connections) -> None:
        self.owner = owner

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, UnicodeDecodeError):
            # apsw decodes TEXT columns as it fetches them: invalid UTF-8 is a damaged row.
            raise DamagedRow(
                f"{self.owner.path}: a row contains text that is not valid UTF-8, so it is "
                "damaged. Fix: run 'hookqueue check', or restore the database from a backup"
            ) from exc
        if isinstance(exc, OverflowError):
            # apsw refuses to bind an int beyond SQLite's 64 bits, before anything is written.
            raise StoreError(
                f"{self.owner.path}: a value does not fit SQLite's 64-bit integers ({exc}); "
                "nothing was written. Fix: keep integers within -2**63 .. 2**63-1"
            ) from exc
        if exc is None or not isinstance(exc, apsw.Error):
            return
        path = self.owner.path
        if isinstance(exc, apsw.BusyError):
            raise DatabaseBusy(
                f"{path}: the database stayed locked by another connection for longer than "
                f"busy_timeout={self.owner.busy_timeout}s. Nothing was written. Fix: retry, "
                "find the process holding a long write transaction, or raise busy_timeout"
            ) from exc
        if isinstance(exc, apsw.FullError):
            raise DatabaseFull(
                f"{path}: the disk or the database size limit is full; the transaction was "
                "rolled back and earlier data is intact. Fix: free space, or prune finished "
                "tasks (hookqueue prune)"
            ) from exc
        if isinstance(exc, apsw.NotADBError | apsw.CorruptError):
            raise NotAHookqueueDatabase(
                f"{path}: {exc} — the file is not a readable SQLite database (corrupt, "
                "truncated or another kind of file). It was not modified. Fix: point "
                "HOOKQUEUE_DB / --db at a hookqueue database or restore it from a backup"
            ) from exc
        if isinstance(exc, apsw.ReadOnlyError | apsw.PermissionsError | apsw.CantOpenError):
            raise StoreError(
                f"{path}: cannot write the database ({exc}). Fix: check the file's and its "
                "directory's permissions and owner, and that the file system is writable"
            ) from exc
        if isinstance(exc, apsw.IOError):
            raise StoreError(
                f"{path}: disk I/O error ({exc}); the transaction was rolled back"
            ) from exc
        raise StoreError(f"{path}: {type(exc).__name__}: {exc}") from exc


#: WAL pages after which a commit checkpoints (SQLite's own automatic threshold).
WAL_CHECKPOINT_PAGES = 1000


def checkpoint_after_commit(
    conn: apsw.Connection, dbname: str, pages: int, mode: int = apsw.SQLITE_CHECKPOINT_PASSIVE
) -> int:
    """hookqueue's own automatic checkpoint (it replaces SQLite's; a WAL hook).

    SQLite's checkpoints after a commit, and when that checkpoint fails it reports the error
    from COMMIT although the transaction is committed — so a caller would be told "rolled
    back" about data that is stored. Here a failed checkpoint is logged and the commit stands;
    the WAL keeps the data and the next checkpoint tries again.

    :param mode: SQLite's checkpoint mode (:class:`WalCheckpointer` runs a passive one, then
        a ``RESTART`` one).
    """
    if pages >= WAL_CHECKPOINT_PAGES:
        _checkpoint(conn, dbname, mode)
    return int(apsw.SQLITE_OK)


def _checkpoint(conn: apsw.Connection, dbname: str, mode: int) -> bool:
    """One checkpoint; False (logged) when it could not run to its end."""
    try:
        conn.wal_checkpoint(dbname, mode)
    except (apsw.BusyError, apsw.LockedError) as exc:
        # Another process is checkpointing right now, or (RESTART without waiting) another
        # connection writes or reads an old snapshot: routine when several workers commit at
        # once. Not worth a warning per commit.
        log.debug(
            "%s: WAL checkpoint skipped (%s); another connection runs one", conn.filename, exc
        )
        return False
    except apsw.Error as exc:
        log.warning(
            "%s: checkpointing the WAL failed (%s); the commit stands, the next commit tries again",
            conn.filename,
            exc,
        )
        return False
    return True


class WalCheckpointer:
    """A connection's WAL hook: :func:`checkpoint_after_commit`, then a ``RESTART`` checkpoint,
    neither waiting for anyone.

    A passive checkpoint copies the log into the database, but the log starts over only when
    the next writer began reading after the copy. With workers reading and writing all the
    time that rarely happens, so the log stayed over the threshold and every commit of every
    connection ran another checkpoint — each a sync of the database file, or a busy
    checkpoint lock: a quarter of a producer's time with four workers running, and logs of
    2,000-4,000 pages (docs/performance.md, issue #22). So once the passive checkpoint has
    copied the log (without blocking writers), a ``RESTART`` checkpoint — with the busy
    handler impatient, so it takes the writer lock only if it is free and waits for no
    reader — copies what was committed meanwhile (usually nothing) and, when no other
    connection reads an old snapshot, makes the next writer start the log over: it comes
    back under the threshold and the next ~1,000 pages of commits run no checkpoint at all.
    Durability is unchanged: checkpoints run at the same threshold, and each syncs what it
    copies.
    """

    __slots__ = ("busy",)

    def __init__(self, busy: BusyHandler) -> None:
        #: The connection's busy handler, made impatient while the checkpoints run.
        self.busy = busy

    def __call__(self, conn: apsw.Connection, dbname: str, pages: int) -> int:
        """SQLite's WAL hook, called after each commit with the log's size in pages."""
        if pages < WAL_CHECKPOINT_PAGES:
            return int(apsw.SQLITE_OK)
        self.busy.patient = False
        try:
            if _checkpoint(conn, dbname, apsw.SQLITE_CHECKPOINT_PASSIVE):
                _checkpoint(conn, dbname, apsw.SQLITE_CHECKPOINT_RESTART)
        finally:
            self.busy.patient = True
        return int(apsw.SQLITE_OK)


#: The busy handler's first and longest sleep, in seconds.
BUSY_FIRST_SLEEP = 0.00005
BUSY_MAX_SLEEP = 0.002


class BusyHandler:
    """A busy handler that retries a locked database for ``timeout`` seconds, sleeping
    :data:`BUSY_FIRST_SLEEP` at first and doubling to at most :data:`BUSY_MAX_SLEEP`, so a
    waiting writer takes the lock soon after it is free. ``time.sleep`` releases the GIL, so
    other threads of the process (the one holding the lock, perhaps) run meanwhile.

    While :attr:`patient` is False it does not wait at all (SQLite answers SQLITE_BUSY at
    once): :meth:`Connections.begin_yielding` sets that around its ``BEGIN``.
    """

    # SQLite's own busy timeout sleeps 1, 2, 5, 10 ... 100 ms: a write lock held for a
    # fraction of a millisecond (one lease) would cost a waiting worker 10 ms or more.
    __slots__ = ("deadline", "patient", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = 0.0
        #: False: give up at once instead of waiting for the lock.
        self.patient = True

    def __call__(self, prior_calls: int) -> bool:
        """SQLite's callback: True to try again (after a sleep), False to give up."""
        if not self.patient:
            return False
        now = time.monotonic()
        if prior_calls == 0:
            self.deadline = now + self.timeout
        remaining = self.deadline - now
        if remaining <= 0:
            return False  # SQLite raises SQLITE_BUSY: DatabaseBusy
        delay = BUSY_FIRST_SLEEP * (1 << prior_calls) if prior_calls < 6 else BUSY_MAX_SLEEP
        time.sleep(min(delay, BUSY_MAX_SLEEP, remaining))
        return True


def busy_handler(timeout: float) -> BusyHandler:
    """A :class:`BusyHandler` for ``timeout`` seconds (what every connection is given)."""
    return BusyHandler(timeout)


#: A yielding ``BEGIN`` (:meth:`Connections.begin_yielding`) that finds the write lock taken
#: sleeps this long before it looks again, doubling up to :data:`YIELD_MAX_SLEEP` — ten times
#: the busy handler's sleeps, so a writer waiting in the busy handler (a producer's enqueue)
#: takes the lock first.
YIELD_FIRST_SLEEP = 0.0005
YIELD_MAX_SLEEP = 0.004


class _ThreadConnection:
    """Owned by one thread's thread-local storage; closes that thread's connection when the
    thread ends, unless :meth:`Connections.close` closed it first."""

    __slots__ = ("conn", "owner")

    def __init__(self, owner: Connections, conn: apsw.Connection) -> None:
        self.owner = weakref.ref(owner)
        self.conn = conn

    def __del__(self) -> None:
        owner = self.owner()
        if owner is None:
            return
        if not owner._forget(self.conn):
            return  # already closed by Connections.close()
        try:
            self.conn.close()
        except apsw.Error:  # pragma: no cover - nothing useful to do in a finaliser
            pass


class Connections:
    """The connections of one database file: one per thread, configured alike.

    :param path: the database file (a symlink is followed; a new file is created 0600).
    :param durability: ``"full"`` or ``"normal"`` (``PRAGMA synchronous``).
    :param busy_timeout: seconds to wait for another connection's write lock.
    :param vfs: a registered SQLite VFS to open the file through (None: the default).
    :param create: create the file (and its directory) when it does not exist; False refuses
        a missing file with a :class:`~hookqueue.core.errors.StoreError` (read-only tools
        must not create a database at a mistyped path).
    :param prepare: called with each new connection once it is configured (the store brings
        the schema up to date through it).
    """

    def __init__(
        self,
        path: Path,
        *,
        durability: Durability,
        busy_timeout: float,
        vfs: str | None,
        create: bool = True,
        prepare: Callable[[apsw.Connection], None] | None = None,
    ) -> None:
        self.path = path
        self.durability: Durability = durability
        self.busy_timeout = busy_timeout
        self.vfs = vfs
        self.create = create
        self._prepare = prepare
        self._local = threading.local()
        self._open: list[apsw.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        #: ``with connections.errors:`` translates apsw's exceptions.
        self.errors = ErrorTranslator(self)

    # -- connections -------------------------------------------------------------------------

    def conn(self) -> apsw.Connection:
        """This thread's connection, opened on first use."""
        local = self._local
        conn: apsw.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.fork_generation == _fork_generation:
            return conn
        return self._open_connection()

    def _create_file(self) -> None:
        """Create the file 0600 (and its directory 0700) before SQLite opens it.

        SQLite creates the -wal and -shm files with the database file's permissions, so they
        are owner-only too. A symlink is followed: SQLite opens (and puts the -wal beside)
        its target, so the target is what must be created owner-only.
        """
        target = Path(os.path.realpath(self.path))
        if target.exists():
            return
        if not self.create:
            raise StoreError(
                f"{self.path}: no hookqueue database there. Fix: check the path (--db, "
                "HOOKQUEUE_DB); commands that only read never create a database"
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return  # another process created it meanwhile
        except OSError as exc:
            raise StoreError(
                f"{self.path}: cannot create the database ({exc.strerror or exc}). Fix: choose "
                "a directory you can write to, on a writable file system (--db, HOOKQUEUE_DB)"
            ) from exc
        os.close(fd)

    def _open_connection(self) -> apsw.Connection:
        self.check_open()
        self._create_file()
        with self.errors:
            conn = apsw.Connection(
                str(self.path),
                flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE,
                vfs=self.vfs,
            )
            try:
                handler = BusyHandler(self.busy_timeout)
                conn.set_busy_handler(handler)
                verify_identity(conn, self.path)
                # apsw's best practice, per connection: never bestpractice.apply(), which
                # would change every connection in the host application.
                apsw.bestpractice.connection_dqs(conn)
                apsw.bestpractice.connection_recursive_triggers(conn)
                apsw.bestpractice.connection_enable_foreign_keys(conn)
                self._switch_to_wal(conn)
                conn.pragma("synchronous", SYNCHRONOUS[self.durability])
                conn.transaction_mode = "IMMEDIATE"
                conn.set_wal_hook(WalCheckpointer(handler))
            except BaseException:
                conn.close()
                raise
        self._local.conn = conn
        self._local.busy = handler
        self._local.fork_generation = _fork_generation
        # Closes the connection when its thread ends (the thread-local dies with it), so
        # short-lived threads (a worker's store thread, asyncio.to_thread) do not leak one.
        self._local.owner = _ThreadConnection(self, conn)
        with self._lock:
            self._open.append(conn)
        if self._prepare is not None:
            self._prepare(conn)
        return conn

    def _switch_to_wal(self, conn: apsw.Connection) -> None:
        """Put the file in WAL mode (a no-op when it is already), as apsw's best practice does,
        but safe when several processes open a new file at once.

        Switching takes a read lock and then the write lock. While another connection holds
        the write lock (another process creating the schema, or switching too), SQLite sees
        a possible deadlock and answers SQLITE_BUSY at once, without calling the busy
        handler; the switch is retried here instead, within ``busy_timeout`` (once the other
        process has switched, the next try is a no-op).
        """
        wait = busy_handler(self.busy_timeout)  # the same sleeps and deadline as SQLite's waits
        tries = 0
        while True:
            try:
                mode = conn.pragma("journal_mode", "wal")
                break
            except apsw.BusyError:
                if not wait(tries):
                    raise
                tries += 1
        if mode != "wal":
            # SQLite keeps the old mode, without an error, where it has no shared memory
            # (some network file systems, VFSes without it). In rollback mode readers block
            # the writer, workers' wake-ups watch a WAL that never changes, and NORMAL
            # durability is weaker than documented: refuse rather than run degraded.
            raise StoreError(
                f"{self.path}: SQLite cannot use write-ahead logging for this file (its "
                f"journal mode stays {mode!r}), and hookqueue needs it. The file was not "
                "modified. Fix: put the database on a local file system (not a network "
                "share)" + (f", or open it without vfs={self.vfs!r}" if self.vfs else "")
            )

    def _forget(self, conn: apsw.Connection) -> bool:
        """Drop ``conn`` from the open list; False if it was not there (already closed)."""
        with self._lock:
            if not any(c is conn for c in self._open):
                return False
            self._open = [c for c in self._open if c is not conn]
            return True

    def close(self) -> None:
        """Close every connection (in any thread). Idempotent; later use raises."""
        with self._lock:
            conns, self._open = self._open, []
            self._closed = True
        for conn in conns:
            try:
                conn.close()
            except apsw.Error:  # pragma: no cover - closing a connection in use elsewhere
                log.exception("closing a connection of %s", self.path)
        self._local = threading.local()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def check_open(self) -> None:
        """Raise :class:`StoreError` after :meth:`close` — for a call that has nothing to
        read or change, and so would not reach a connection (every call after ``close``
        raises, by the store contract)."""
        if self._closed:
            raise StoreError(f"{self.path}: this QueueDatabase was closed; open a new one")

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[apsw.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction, with apsw errors translated.

        BEGIN, COMMIT and ROLLBACK go through ``execute`` rather than apsw's ``with conn:``:
        ``execute`` releases the GIL while SQLite waits out the busy timeout, whereas the
        context manager's BEGIN holds it — and a thread holding the GIL while it waits for the
        write lock starves the very thread that holds the lock (a whole-process stall of up to
        ``busy_timeout`` with several writer threads).
        """
        with self.errors:
            conn = self.begin()
            try:
                yield conn
            except BaseException:
                self.rollback(conn)
                raise
            self.commit(conn)

    @contextmanager
    def read(self) -> Iterator[apsw.Connection]:
        """One read transaction (``BEGIN DEFERRED``), with apsw errors translated: several
        statements see one snapshot, and no write lock is taken — apsw's ``with conn:``
        begins as the connection's ``transaction_mode`` says (IMMEDIATE here), which would
        queue a read behind every writer and hold writers up while it runs."""
        with self.errors:
            conn = self.conn()
            conn.execute("BEGIN DEFERRED")
            try:
                yield conn
            finally:
                self.rollback(conn)  # nothing was written: ending the snapshot is all

    def begin(self) -> apsw.Connection:
        """``BEGIN IMMEDIATE`` on this thread's connection, for the hot paths that write
        without :meth:`write`'s generator (call inside ``with self.errors``; end with
        :meth:`commit` or :meth:`rollback`)."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        return conn

    def begin_yielding(self, still_wanted: Callable[[], bool]) -> apsw.Connection | None:
        """``BEGIN IMMEDIATE`` that gives way to other writers — for a worker's claim, which
        can wait, while the producers' enqueues keep the normal busy wait.

        It tries without waiting. When another connection holds the write lock it sleeps
        :data:`YIELD_FIRST_SLEEP`, doubling to :data:`YIELD_MAX_SLEEP`, asks ``still_wanted``
        (a read, no lock: is there still something to claim?) and tries again, within
        ``busy_timeout`` like any other write. Call inside ``with self.errors`` and end with
        :meth:`commit` or :meth:`rollback`.

        :returns: this thread's connection in a transaction, or None when ``still_wanted``
            said no (nothing was written).
        :raises apsw.BusyError: the lock stayed taken for ``busy_timeout`` (``self.errors``
            turns it into :class:`~hookqueue.core.errors.DatabaseBusy`).
        """
        conn = self.conn()
        handler: BusyHandler = self._local.busy
        delay = YIELD_FIRST_SLEEP
        deadline: float | None = None
        while True:
            handler.patient = False
            try:
                conn.execute("BEGIN IMMEDIATE")
                return conn
            except apsw.BusyError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.busy_timeout
                elif now >= deadline:
                    raise
            finally:
                handler.patient = True
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, YIELD_MAX_SLEEP)
            if not still_wanted():
                return None

    @staticmethod
    def rollback(conn: apsw.Connection) -> None:
        """``ROLLBACK``, unless SQLite already rolled back by itself (disk full)."""
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def commit(self, conn: apsw.Connection) -> None:
        """``COMMIT``; an I/O error while committing becomes
        :class:`~hookqueue.core.errors.CommitOutcomeUnknown` (the change may be stored)."""
        try:
            conn.execute("COMMIT")
        except apsw.IOError as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except apsw.Error:
                    pass
            raise CommitOutcomeUnknown(
                f"{self.path}: disk I/O error while committing ({exc}); the change may or "
                "may not be stored. Fix: check (e.g. find() by idempotency key) before "
                "repeating it, or repeat it with an idempotency key so it cannot be "
                "stored twice; check the disk"
            ) from exc

    @contextmanager
    def unsynced(self) -> Iterator[None]:
        """Commits inside this block do not wait for the disk (``synchronous=NORMAL``) — for
        writes whose loss on power failure is harmless (a lease without outcomes: the task
        runs again, as its lease's expiry would bring about). At ``durability="normal"`` this
        changes nothing."""
        if self.durability != "full":
            yield
            return
        self.conn().execute("PRAGMA synchronous = NORMAL")
        try:
            yield
        finally:
            self._restore_full_sync()

    def _restore_full_sync(self) -> None:
        """Back to ``synchronous=FULL``. If that cannot be done (the connection is stuck in a
        transaction after a failed rollback), the connection is closed and forgotten, so no
        later write on this thread commits unsynced."""
        conn = self.conn()
        try:
            conn.execute("PRAGMA synchronous = FULL")
        except apsw.Error:
            self._forget(conn)
            self._local.conn = None  # the next call on this thread opens a new one
            self._local.owner = None
            try:
                conn.close()
            except apsw.Error:  # pragma: no cover - nothing more to do
                pass
