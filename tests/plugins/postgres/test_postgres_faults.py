"""The PostgreSQL store when the connection fails, on a real server: a connection cut right
after COMMIT was sent is ``CommitOutcomeUnknown`` (and the change is there); one cut before is
a plain ``StoreError`` (and nothing is there); the listening connection killed by the server
is re-established and reported as a change."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from _services.pgurl import url_of
from _services.postgres import PostgresServer
from psycopg.conninfo import conninfo_to_dict

from hookqueue.contrib.contracts.store import make_row
from hookqueue.core.errors import CommitOutcomeUnknown, StoreError
from hookqueue.plugins.postgres import PostgresStore


class CuttingProxy:
    """A TCP proxy to the server that, once armed with a marker, forwards the client's bytes
    holding it and then (after ``delay``) closes the client's connection without passing the
    server's answer — or, with ``forward=False``, closes it without forwarding them."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.marker: bytes | None = None
        self.forward = True
        self.cuts = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, marker: bytes, *, forward: bool) -> None:
        """Cut the next connection whose client sends ``marker``."""
        with self._lock:
            self.marker, self.forward = marker, forward

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            cutting = threading.Event()  # set: the server's answers are no longer passed on
            for args in ((client, server, True, cutting), (server, client, False, cutting)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, from_client: bool, cutting: threading.Event
    ) -> None:
        try:
            while data := src.recv(65536):
                if not from_client and cutting.is_set():
                    continue
                cut = False
                if from_client:
                    with self._lock:
                        if self.marker is not None and self.marker in data:
                            cut, self.marker = True, None
                            forward = self.forward
                if cut:
                    cutting.set()
                    self.cuts += 1
                    if forward:
                        dst.sendall(data)
                        time.sleep(0.3)  # the server commits; its answer never arrives
                    for s in (src, dst):
                        s.shutdown(socket.SHUT_RDWR)
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxied(
    postgres_server: PostgresServer, postgres_dsn: str
) -> Iterator[tuple[str, CuttingProxy]]:
    """The per-test database's URL through a :class:`CuttingProxy` (TCP, with password)."""
    proxy = CuttingProxy(postgres_server.port)
    dbname = str(conninfo_to_dict(postgres_dsn)["dbname"])
    params = conninfo_to_dict(postgres_server.dsn_for(dbname, tcp=True))
    params["port"] = proxy.port
    yield url_of(psycopg.conninfo.make_conninfo("", **params)), proxy
    proxy.close()


def test_a_connection_lost_after_commit_was_sent_is_commit_outcome_unknown(
    proxied: tuple[str, CuttingProxy], postgres_dsn: str
) -> None:
    """COMMIT reached the server, its answer did not reach the store: the caller is told the
    outcome is unknown (naming the fix), and the task is in fact stored."""
    url, proxy = proxied
    with PostgresStore(url, pool_min=1, pool_max=1) as store:
        store.initialize_schema()
        proxy.arm(b"COMMIT", forward=True)
        with pytest.raises(CommitOutcomeUnknown, match="may or may not be stored.*Fix"):
            store.insert([make_row(1_000_000, idempotency_key="k1")], 1_000_000)
        assert proxy.cuts == 1
        found = store.find_by_key("k1")  # a new connection: the store goes on
        assert found is not None
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM hookqueue.tasks").fetchone() == (1,)


def test_a_connection_lost_before_commit_is_a_plain_store_error(
    proxied: tuple[str, CuttingProxy], postgres_dsn: str
) -> None:
    """Cut while the insert itself is sent: a StoreError that says nothing was written (not
    CommitOutcomeUnknown), and nothing is stored."""
    url, proxy = proxied
    with PostgresStore(url, pool_min=1, pool_max=1) as store:
        store.initialize_schema()
        proxy.arm(b"INSERT INTO", forward=False)
        with pytest.raises(StoreError, match="nothing was written") as caught:
            store.insert([make_row(1_000_000, idempotency_key="k1")], 1_000_000)
        assert not isinstance(caught.value, CommitOutcomeUnknown)
        assert store.find_by_key("k1") is None
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM hookqueue.tasks").fetchone() == (0,)


def test_the_watcher_listens_again_after_the_server_ends_its_session(postgres_dsn: str) -> None:
    """``pg_terminate_backend`` of the listening session: the next wait reports a change
    (notifications may have been missed), and later enqueues wake it again."""
    with PostgresStore(postgres_dsn) as store:
        store.initialize_schema()
        watcher = store.watch_changes()
        try:
            assert watcher.wait(0.1) is False
            with psycopg.connect(postgres_dsn, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN %%' AND pid <> pg_backend_pid()"
                ).fetchall()
            assert killed == [(True,)]
            assert watcher.wait(10.0) is True, "a lost listener reports a possible change"
            while watcher.wait(0.05):
                pass
            store.insert_one(make_row(1_000_000), 1_000_000)
            assert watcher.wait(10.0) is True
        finally:
            watcher.close()
