"""The PostgreSQL store's connections: locations, the pool, transactions, fork, errors.

What it owns, so the operations in :mod:`.store` can assume a ready connection:

- reading a location (a ``postgresql://`` URL or a libpq conninfo string), taking
  hookqueue's own parameters out of it (``schema``), and naming it without its password;
- a :class:`psycopg_pool.ConnectionPool` of autocommit connections, configured alike
  (``synchronous_commit`` from the durability, ``lock_timeout`` from ``busy_timeout``), opened
  on first use — and a new one in a process forked after that (the parent's connections and
  pool threads belong to the parent: the inherited pool is kept, never closed, since closing
  would end the parent's sessions on the shared sockets);
- explicit transactions (``BEGIN`` ... ``COMMIT``), knowing when COMMIT was sent, so a
  connection lost before its answer is :class:`~hookqueue.core.errors.CommitOutcomeUnknown`
  and one lost earlier a plain "nothing was written";
- turning psycopg's exceptions into hookqueue's, each naming the store (without password)
  and the fix.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from hookqueue.core.errors import (
    CommitOutcomeUnknown,
    DatabaseBusy,
    DatabaseFull,
    NotAHookqueueDatabase,
    StoreError,
    ValidationError,
)

from . import SCHEMES
from .statements import CONFIGURE

log = logging.getLogger("hookqueue.store.postgres")

#: Query parameters of a location that are hookqueue's, not libpq's.
OWN_PARAMETERS = ("schema",)

# A pool must not be used in a process forked after it was opened. Each fork bumps this
# number in the child, so an inherited pool is recognised without a getpid() per call.
_fork_generation = 0
#: Pools inherited through fork: kept referenced, never closed or collected (closing one
#: would send Terminate on the parent's sockets).
_INHERITED: list[Any] = []


def _count_fork() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_count_fork)


def parse_location(location: str) -> tuple[str, dict[str, str]]:
    """``(libpq conninfo, hookqueue's own parameters)`` of a location: a ``postgresql://``
    or ``postgres://`` URL, or a conninfo string (``host=... dbname=...``).

    :raises ValidationError: the location cannot be read.
    """
    if not isinstance(location, str) or not location.strip():
        raise ValidationError(
            "dsn",
            location,
            "must be a postgresql:// URL or a libpq conninfo string",
            "e.g. 'postgresql://app@db.example.com/app'",
        )
    own: dict[str, str] = {}
    scheme, sep, _ = location.partition("://")
    if sep:
        if scheme.lower() not in SCHEMES:
            raise ValidationError(
                "dsn", _redact_url(location), "is not a PostgreSQL URL", "use postgresql://..."
            )
        parts = urllib.parse.urlsplit(location)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        kept = []
        for key, value in query:
            if key in OWN_PARAMETERS:
                own[key] = value
            else:
                kept.append((key, value))
        location = urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc, parts.path, urllib.parse.urlencode(kept), parts.fragment)
        )
    try:
        params = conninfo_to_dict(location)
    except psycopg.ProgrammingError as exc:
        raise ValidationError(
            "dsn",
            _redact_url(location),
            f"cannot be read as a PostgreSQL location ({_scrub(str(exc), None)})",
            "use postgresql://user@host:port/dbname or 'host=... dbname=...'",
        ) from None
    for key in OWN_PARAMETERS:
        if key in params:  # a conninfo string may carry them too
            own[key] = str(params.pop(key))
    return make_conninfo("", **params), own


def describe(conninfo: str, schema: str) -> str:
    """The store's location for messages: a URL without the password."""
    params = conninfo_to_dict(conninfo)
    user = params.get("user")
    host = str(params.get("host") or "")
    port = params.get("port")
    dbname = params.get("dbname") or ""
    query: dict[str, str] = {}
    netloc = urllib.parse.quote(str(user), safe="") + "@" if user else ""
    if host and not host.startswith("/"):
        netloc += host + (f":{port}" if port else "")
    else:
        if host:
            query["host"] = host
        if port:
            query["port"] = str(port)
    query["schema"] = schema
    path = "/" + urllib.parse.quote(str(dbname), safe="")
    return f"postgresql://{netloc}{path}?" + urllib.parse.urlencode(query, safe="/")


def _redact_url(location: str) -> str:
    """A URL with ``user:secret@`` shown as ``user:***@``."""
    scheme, sep, rest = location.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return location
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def _scrub(message: str, password: str | None) -> str:
    """``message`` without the password in it (drivers may echo parts of a conninfo)."""
    if password:
        message = message.replace(password, "***")
    return message


#: SQLSTATEs after which the session is gone (the server ended it, or cannot take it).
_SESSION_GONE = {"57P01", "57P02", "57P03"}
#: SQLSTATEs that mean "another transaction was in the way; nothing written, try again".
_BUSY = {"55P03", "57014", "40P01", "40001"}


def connection_lost(exc: BaseException, conn: psycopg.Connection[Any] | None) -> bool:
    """True when ``exc`` means the connection is gone (the server closed it or the network
    failed), as opposed to an error the server reported on a live session."""
    if not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    state = getattr(exc, "sqlstate", None)
    if state is None or state in _SESSION_GONE or state.startswith("08"):
        return True
    return conn is not None and (conn.closed or conn.broken)


class Translate:
    """Turns psycopg's exceptions into hookqueue's, naming the store and the fix.

    :param owner: the connections of the store (its location, password, busy timeout).
    :param write: the block writes; a connection lost once :attr:`sent` is set means the
        outcome of the write is unknown.
    """

    __slots__ = ("conn", "owner", "sent", "write")

    def __init__(self, owner: Connections, write: bool) -> None:
        self.owner = owner
        self.write = write
        #: Set when the statement (or COMMIT) that makes the change durable was sent.
        self.sent = False
        self.conn: psycopg.Connection[Any] | None = None

    def __enter__(self) -> Translate:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            return
        where = self.owner.location
        if isinstance(exc, PoolTimeout):
            raise DatabaseBusy(
                f"{where}: no connection of the pool (pool_max={self.owner.pool_max}) became "
                f"free within busy_timeout={self.owner.busy_timeout}s. Nothing was written. "
                "Fix: retry, raise pool_max, or find what holds the connections"
            ) from exc
        if not isinstance(exc, psycopg.Error):
            return
        text = _scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "", None)
        text = _scrub(text, self.owner.password)
        state = getattr(exc, "sqlstate", None)
        if connection_lost(exc, self.conn):
            if self.write and self.sent:
                raise CommitOutcomeUnknown(
                    f"{where}: the connection to the server was lost while committing "
                    f"({text}); the change may or may not be stored. Fix: check (e.g. find() "
                    "by idempotency key) before repeating it, or repeat it with an idempotency "
                    "key so it cannot be stored twice; check the server and the network"
                ) from exc
            raise StoreError(
                f"{where}: cannot reach the PostgreSQL server ({text}); nothing was written. "
                "Fix: check that the server is up and reachable, the credentials, and that "
                "max_connections leaves room for every worker's pool (pool_max)"
            ) from exc
        if state in _BUSY:
            raise DatabaseBusy(
                f"{where}: another transaction held the rows or tables needed for longer than "
                f"busy_timeout={self.owner.busy_timeout}s, or a deadlock was broken ({text}). "
                "Nothing was written. Fix: retry, find the long transaction "
                "(pg_stat_activity), or raise busy_timeout"
            ) from exc
        if state == "53100":
            raise DatabaseFull(
                f"{where}: the server's disk is full ({text}); the transaction was rolled back "
                "and earlier data is intact. Fix: free space on the server, or prune finished "
                "tasks (hookqueue prune)"
            ) from exc
        if state in ("42P01", "3F000"):
            raise NotAHookqueueDatabase(
                f"{where}: the hookqueue tables are missing ({text}); the schema was dropped "
                "or renamed while in use. Fix: point the store at the right schema (?schema=), "
                "or open it again to create a new one"
            ) from exc
        if state == "42501":
            raise StoreError(
                f"{where}: permission denied ({text}). Fix: GRANT the role USAGE and CREATE on "
                "the schema and SELECT, INSERT, UPDATE, DELETE on its tables, or let an owner "
                "create the schema first"
            ) from exc
        if state == "25006":
            raise StoreError(
                f"{where}: the server is read-only ({text}) — a standby, or after a failover. "
                "Nothing was written. Fix: connect to the primary "
                "(target_session_attrs=read-write in the URL)"
            ) from exc
        if state in ("22021", "22P05") or "(0x00)" in text:
            raise StoreError(
                f"{where}: a text value contains a NUL character (\\x00), which PostgreSQL "
                f"cannot store ({text}); nothing was written. Fix: remove NUL characters from "
                "queue names, task types, idempotency keys and worker ids"
            ) from exc
        if isinstance(exc, psycopg.IntegrityError | psycopg.DataError):
            raise StoreError(
                f"{where}: the server refused the values ({text}); nothing was written. Fix: "
                "keep integers within -2**63 .. 2**63-1 and max_attempts >= 1"
            ) from exc
        if isinstance(exc, psycopg.errors.FeatureNotSupported | psycopg.ProgrammingError):
            raise StoreError(f"{where}: {type(exc).__name__}: {text}") from exc
        raise StoreError(f"{where}: {type(exc).__name__}: {text}") from exc


class Connections:
    """The pooled connections of one store.

    :param conninfo: the libpq conninfo (with its password, if any).
    :param location: the store's location for messages (no password).
    :param durability: ``"full"`` (``synchronous_commit = on``) or ``"normal"`` (``off``).
    :param busy_timeout: seconds to wait for a row or table lock (``lock_timeout``) and for
        a free connection of the pool.
    :param pool_min: connections the pool keeps open.
    :param pool_max: connections the pool opens at most.
    :param connect_timeout: seconds to wait for the server when connecting.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        location: str,
        durability: str,
        busy_timeout: float,
        pool_min: int,
        pool_max: int,
        connect_timeout: float,
    ) -> None:
        params = conninfo_to_dict(conninfo)
        params.setdefault("application_name", "hookqueue")
        params.setdefault("connect_timeout", str(max(1, round(connect_timeout))))
        # Notice a server that vanished (a failover, a cut network) within a minute.
        params.setdefault("keepalives", "1")
        params.setdefault("keepalives_idle", "30")
        params.setdefault("keepalives_interval", "10")
        params.setdefault("keepalives_count", "3")
        #: The conninfo every connection uses (the watchers' too).
        self.conninfo = make_conninfo("", **params)
        password = params.get("password")
        self.password: str | None = None if password is None else str(password)
        self.location = location
        self.durability = durability
        self.busy_timeout = busy_timeout
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._generation = -1
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            CONFIGURE,
            {
                "sync": "on" if self.durability == "full" else "off",
                "lock_timeout": f"{int(self.busy_timeout * 1000)}ms",
                # A transaction left open by a process that hung mid-way (or a stopped
                # debugger) would hold its leases' row locks: end it after a minute.
                "idle": "60s",
            },
            prepare=False,
        )

    def connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection of the store's own, outside the pool (the watchers'
        listening connections). Errors are translated."""
        with self.errors(write=False):
            conn = psycopg.connect(self.conninfo, autocommit=True)
        return conn

    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        """The pool of this process, opened on first use."""
        pool = self._pool
        if pool is not None and self._generation == _fork_generation:
            return pool
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.location}: this store was closed; open a new one")
            if self._pool is not None and self._generation != _fork_generation:
                _INHERITED.append(self._pool)  # the parent's: never closed here
                self._pool = None
            if self._pool is None:
                self._pool = self._open_pool()
                self._generation = _fork_generation
            return self._pool

    def _open_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        # Connect once directly first: a wrong password or host fails here with the
        # server's own message, where the pool would only time out.
        with self.errors(write=False):
            psycopg.connect(self.conninfo, autocommit=True).close()
        pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.conninfo,
            min_size=self.pool_min,
            max_size=self.pool_max,
            open=False,
            kwargs={"autocommit": True},
            configure=self._configure,
            timeout=self.busy_timeout,
            name="hookqueue",
            reconnect_timeout=max(30.0, self.connect_timeout),
        )
        with self.errors(write=False):
            pool.open(wait=True, timeout=max(self.connect_timeout, 1.0))
        return pool

    def errors(self, *, write: bool) -> Translate:
        """A context translating psycopg's errors (see :class:`Translate`)."""
        return Translate(self, write)

    @contextmanager
    def read(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for reads (autocommit: each statement its own snapshot)."""
        with self.errors(write=False) as state, self.pool().connection() as conn:
            state.conn = conn
            yield conn

    @contextmanager
    def write(self) -> Iterator[tuple[psycopg.Connection[Any], Translate]]:
        """A connection for one autocommit statement that writes; set ``state.sent``
        (the second item) just before executing it."""
        with self.errors(write=True) as state, self.pool().connection() as conn:
            state.conn = conn
            yield conn, state

    @contextmanager
    def transaction(self, *, unsynced: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """``BEGIN`` ... ``COMMIT`` on a pooled connection; rolled back when the block
        raises. ``unsynced``: the commit does not wait for the WAL flush (at durability
        "full" too) — for writes whose loss in a server crash is harmless."""
        with self.errors(write=True) as state, self.pool().connection() as conn:
            state.conn = conn
            conn.execute("BEGIN")
            try:
                if unsynced and self.durability == "full":
                    conn.execute("SET LOCAL synchronous_commit = off")
                yield conn
            except BaseException:
                if not conn.closed and not conn.broken:
                    try:
                        conn.execute("ROLLBACK")
                    except psycopg.Error:
                        pass
                raise
            state.sent = True
            conn.execute("COMMIT")

    @contextmanager
    def pipeline(self, *, unsynced: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """Like :meth:`transaction`, in psycopg's pipeline mode: ``BEGIN``, the block's
        statements and ``COMMIT`` travel together, a round trip only where the block reads a
        result it needs before going on (``fetch*``). A cursor's rows may be fetched after the
        block, once committed."""
        with self.errors(write=True) as state, self.pool().connection() as conn:
            state.conn = conn
            try:
                with conn.pipeline():
                    conn.execute("BEGIN")
                    if unsynced and self.durability == "full":
                        conn.execute("SET LOCAL synchronous_commit = off")
                    yield conn
                    state.sent = True
                    conn.execute("COMMIT")
            except BaseException:
                if (
                    not conn.closed
                    and not conn.broken
                    and conn.info.transaction_status != TransactionStatus.IDLE
                ):
                    try:
                        conn.execute("ROLLBACK")
                    except psycopg.Error:
                        pass
                raise

    @contextmanager
    def snapshot(self) -> Iterator[psycopg.Connection[Any]]:
        """One ``REPEATABLE READ READ ONLY`` transaction on a pooled connection: several
        reads that see one snapshot (ended by ROLLBACK: it wrote nothing)."""
        with self.errors(write=False) as state, self.pool().connection() as conn:
            state.conn = conn
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield conn
            finally:
                if (
                    not conn.closed
                    and not conn.broken
                    and conn.info.transaction_status != TransactionStatus.IDLE
                ):
                    try:
                        conn.execute("ROLLBACK")
                    except psycopg.Error:
                        pass

    def close(self) -> None:
        """Close the pool of this process (its connections). Idempotent."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            if self._generation == _fork_generation:
                pool.close(timeout=5.0)
            else:
                _INHERITED.append(pool)


__all__ = [
    "Connections",
    "Translate",
    "connection_lost",
    "describe",
    "parse_location",
]
