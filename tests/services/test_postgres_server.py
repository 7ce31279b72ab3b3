"""The PostgreSQL test fixtures give a real server (tests/_services/postgres.py).

These tests hold the fixtures to what the PostgreSQL store's tests will rely on: a real
server of the installed version, committed rows visible across connections, LISTEN/NOTIFY
delivered on commit, a database per test, and no server left behind — even when the test
process is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from _services import postgres as pgsvc
from _services._reaper import _alive
from psycopg import sql

TESTS_DIR = Path(__file__).resolve().parents[1]


def test_server_is_the_installed_postgresql(
    postgres_server: pgsvc.PostgresServer, postgres_dsn: str
) -> None:
    """``SHOW server_version`` is the version whose binaries the fixture found."""
    with psycopg.connect(postgres_dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        user = conn.execute("SELECT current_user").fetchone()
        numeric = conn.info.server_version
    assert version is not None and user is not None
    assert version[0].split()[0].split(".")[0] == str(postgres_server.binaries.major)
    assert numeric // 10000 == postgres_server.binaries.major
    assert user[0] == pgsvc.SUPERUSER


def test_durability_settings_are_the_defaults(postgres_dsn: str) -> None:
    """The server syncs like a production one: the store's durability tests need that."""
    with psycopg.connect(postgres_dsn) as conn:
        for name in ("fsync", "synchronous_commit", "full_page_writes"):
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            assert row == ("on",), name


def test_table_round_trip(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE tasks (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
        conn.execute("INSERT INTO tasks (payload) VALUES (%s), (%s)", ['{"n": 1}', '{"n": 2}'])
        rows = conn.execute("SELECT id, payload->>'n' FROM tasks ORDER BY id").fetchall()
    assert rows == [(1, "1"), (2, "2")]


def test_two_connections_see_each_others_committed_rows(postgres_dsn: str) -> None:
    """A row is invisible to another connection until it is committed, then visible."""
    with (
        psycopg.connect(postgres_dsn, autocommit=True) as setup,
        psycopg.connect(postgres_dsn) as writer,
        psycopg.connect(postgres_dsn, autocommit=True) as reader,
    ):
        setup.execute("CREATE TABLE t (id int PRIMARY KEY, written_by text NOT NULL)")
        writer.execute("INSERT INTO t VALUES (1, 'writer')")
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (0,)
        writer.commit()
        assert reader.execute("SELECT id, written_by FROM t").fetchall() == [(1, "writer")]
        reader.execute("INSERT INTO t VALUES (2, 'reader')")  # autocommit: committed now
        assert writer.execute("SELECT count(*) FROM t").fetchone() == (2,)
        writer.rollback()


def test_listen_notify_between_two_connections(postgres_dsn: str) -> None:
    """NOTIFY reaches a listening connection when the sender commits, not before."""
    with (
        psycopg.connect(postgres_dsn, autocommit=True) as listener,
        psycopg.connect(postgres_dsn) as sender,
    ):
        listener.execute("LISTEN hookqueue_wakeup")
        sender.execute("SELECT pg_notify('hookqueue_wakeup', %s)", ["default:42"])
        early = list(listener.notifies(timeout=0.3))
        assert early == []  # held back until COMMIT
        sender.commit()
        got = list(listener.notifies(timeout=10, stop_after=1))
        sender_pid = sender.info.backend_pid
    assert [(n.channel, n.payload, n.pid) for n in got] == [
        ("hookqueue_wakeup", "default:42", sender_pid)
    ]


#: Database names seen by the two runs of the test below.
_SEEN: set[str] = set()


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_has_a_fresh_database(postgres_dsn: str, run: int) -> None:
    """Each run starts with no table and leaves one behind: were the database shared, the
    second run would find the first one's table."""
    with psycopg.connect(postgres_dsn) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        leftover = conn.execute("SELECT to_regclass('marker')").fetchone()
        conn.execute("CREATE TABLE marker (run int)")
        conn.execute("INSERT INTO marker VALUES (%s)", [run])
    assert name is not None and name[0] not in _SEEN
    _SEEN.add(name[0])
    assert leftover == (None,)


def test_database_is_dropped_with_connections_left_open(
    postgres_server: pgsvc.PostgresServer,
) -> None:
    """A test's database goes at teardown even when the test left a connection open."""
    name = postgres_server.database_name("dropped")
    with postgres_server.database(name) as dsn:
        leaked = psycopg.connect(dsn)
        leaked.execute("SELECT 1")
    try:
        with psycopg.connect(postgres_server.dsn) as admin:
            row = admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name])
            assert row.fetchone() == (0,)
        with pytest.raises(psycopg.OperationalError):
            leaked.execute("SELECT 1")
    finally:
        leaked.close()


def test_tcp_listens_on_loopback_and_needs_the_password(
    postgres_server: pgsvc.PostgresServer,
) -> None:
    with psycopg.connect(postgres_server.tcp_dsn) as conn:
        row = conn.execute("SELECT host(inet_server_addr()), inet_server_port()").fetchone()
    assert row == ("127.0.0.1", postgres_server.port)
    no_password = pgsvc.conninfo(
        host="127.0.0.1", port=postgres_server.port, user="postgres", dbname="postgres"
    )
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(no_password, connect_timeout=10).close()


def test_server_runs_as_an_unprivileged_user(postgres_server: pgsvc.PostgresServer) -> None:
    """As root, the cluster belongs to and runs as another user; the socket's directory is
    closed to everyone else."""
    pid = postgres_server.postmaster_pid()
    assert pid is not None
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid == postgres_server.account.uid == postgres_server.datadir.stat().st_uid
    if os.geteuid() == 0:
        assert uid != 0
        assert postgres_server.account.name in (pgsvc.SERVER_USER, "nobody")
    assert postgres_server.root.stat().st_mode & 0o777 == 0o700


# -- without a server ---------------------------------------------------------------------------


def _fake_version(root: Path, name: str, tools: tuple[str, ...] = pgsvc._TOOLS) -> Path:
    bindir = root / name / "bin"
    bindir.mkdir(parents=True)
    for tool in tools:
        (bindir / tool).write_text("#!/bin/sh\n")
        (bindir / tool).chmod(0o755)
    return bindir


def test_binaries_of_the_highest_complete_version_are_chosen(tmp_path: Path) -> None:
    _fake_version(tmp_path, "9.6")
    best = _fake_version(tmp_path, "13")
    _fake_version(tmp_path, "16", tools=("initdb", "pg_ctl"))  # no server binary
    _fake_version(tmp_path, "devel")
    assert pgsvc.find_binaries(tmp_path) == pgsvc.PgBinaries(best, (13,))
    assert pgsvc.find_binaries(tmp_path / "missing") is None


def test_missing_server_skips_naming_the_fix() -> None:
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        pgsvc.unavailable("no binaries", pgsvc.INSTALL_FIX, require=False)


def test_missing_server_fails_when_services_are_required() -> None:
    with pytest.raises(pytest.fail.Exception, match="HOOKQUEUE_REQUIRE_SERVICES=1.*apt-get"):
        pgsvc.unavailable("no binaries", pgsvc.INSTALL_FIX, require=True)


def test_loading_the_fixtures_starts_and_imports_nothing() -> None:
    """conftest imports the fixture module in every run: it must cost nothing there."""
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); import _services.postgres; "
        "print('psycopg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- cleanup when the owner dies ----------------------------------------------------------------

_OWNER = """
import json, sys, time
sys.path.insert(0, {tests!r})
from _services.postgres import PostgresServer, find_binaries, server_account
server = PostgresServer(find_binaries(), server_account())
server.start()
print(json.dumps({{"root": str(server.root), "pid": server.postmaster_pid()}}), flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_server_is_removed_when_its_owner_is_killed() -> None:
    """``kill -9`` of the process that started a server (no teardown runs) still stops the
    server and deletes its directory: the reaper sees its pipe close."""
    pgsvc.require_binaries()
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER.format(tests=str(TESTS_DIR))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        started = json.loads(owner.stdout.readline())
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    root, pid = Path(started["root"]), started["pid"]
    datadir = root / "data"
    assert pid is not None
    deadline = time.monotonic() + 60
    while (root.exists() or _alive(pid, datadir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid, datadir), f"postmaster {pid} outlived its owner"
    assert not root.exists(), f"{root} outlived its owner"
