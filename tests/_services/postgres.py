"""A real PostgreSQL server for the test session: never a mock.

Fixtures (registered in ``tests/conftest.py``):

``postgres_server`` (session)
    a :class:`PostgresServer`: a cluster made by ``initdb`` in a new temporary directory and
    started with ``pg_ctl``, on first use only (a run that asks for no PostgreSQL fixture
    starts nothing). ``.dsn`` reaches its ``postgres`` database as the superuser ``postgres``
    over the Unix socket in that directory; ``.tcp_dsn`` the same over 127.0.0.1 on a free
    port, with a password (scram-sha-256). Stopped and deleted when the session ends.
``postgres_dsn`` (function)
    the DSN (libpq conninfo) of a database of the test's own, created empty (from
    ``template1``) for it and dropped after it, connections and all.

The server runs with PostgreSQL's default durability settings (``fsync``,
``synchronous_commit``, ``full_page_writes`` on): tests of the PostgreSQL store's durability
mapping and crash behaviour need the real ones, and a database per test still costs only
about 25 ms (CREATE + DROP, measured on this project's 2-core machines).

PostgreSQL refuses to run as root. As root (CI), the server runs as the system user
``hookqueue-test`` (created with ``useradd --system`` when missing; ``nobody`` if that cannot
be done) through ``setpriv``, and owns the temporary directory (mode 0700, so only it and
root can reach the socket). Otherwise it runs as the current user.

Binaries are taken from ``/usr/lib/postgresql/<version>/bin`` (Debian's layout), the highest
version. Without them the fixtures skip, naming the fix (``apt-get install postgresql``) —
unless ``HOOKQUEUE_REQUIRE_SERVICES=1`` is set (``.ci/run`` sets it), where they fail, so CI
can never pass by skipping. Binaries that exist but do not start are always a failure.

Cleanup does not depend on pytest tearing down: a small reaper process (``_reaper.py``), in
a session of its own, holds a pipe from this process and stops the cluster and deletes the
directory when told to or when this process dies in any way (``kill -9`` included).
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import re
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import pytest

if TYPE_CHECKING:
    import psycopg

#: Read at import: the root conftest removes HOOKQUEUE_* variables while each test runs.
REQUIRE_SERVICES = os.environ.get("HOOKQUEUE_REQUIRE_SERVICES") == "1"
#: Where Debian puts each installed PostgreSQL version's programs (``<version>/bin``).
PG_ROOT = Path("/usr/lib/postgresql")
#: The unprivileged account the server runs as when the tests run as root.
SERVER_USER = "hookqueue-test"
SUPERUSER = "postgres"
INSTALL_FIX = "apt-get install postgresql (as root; .ci/run does this itself)"

_REAPER = Path(__file__).with_name("_reaper.py")
_TOOLS = ("initdb", "pg_ctl", "postgres")


class PostgresStartError(RuntimeError):
    """The binaries are installed but the cluster could not be made or started."""


class PgBinaries(NamedTuple):
    bindir: Path
    version: tuple[int, ...]

    @property
    def major(self) -> int:
        return self.version[0]


def _parse_version(name: str) -> tuple[int, ...] | None:
    """``"15"`` -> ``(15,)``, ``"9.6"`` -> ``(9, 6)``; None for other directory names."""
    if not re.fullmatch(r"\d+(\.\d+)*", name):
        return None
    return tuple(int(part) for part in name.split("."))


def find_binaries(root: Path = PG_ROOT) -> PgBinaries | None:
    """The highest installed version's ``bin`` directory that has initdb, pg_ctl and postgres."""
    found = []
    for bindir in root.glob("*/bin"):
        version = _parse_version(bindir.parent.name)
        if version is not None and all(os.access(bindir / t, os.X_OK) for t in _TOOLS):
            found.append(PgBinaries(bindir, version))
    return max(found, key=lambda b: b.version, default=None)


def unavailable(reason: str, fix: str, *, require: bool = REQUIRE_SERVICES) -> NoReturn:
    """Skip the test because the server cannot be had — or fail it when services are
    required (``HOOKQUEUE_REQUIRE_SERVICES=1``, as in CI)."""
    if require:
        pytest.fail(
            f"PostgreSQL test server required (HOOKQUEUE_REQUIRE_SERVICES=1) but {reason}. "
            f"Fix: {fix}",
            pytrace=False,
        )
    pytest.skip(f"PostgreSQL test server unavailable: {reason}. Fix: {fix}")


class Account(NamedTuple):
    """Who the server runs as."""

    name: str
    uid: int
    gid: int

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run as this account (unchanged when it is the current one)."""
        if self.uid == os.geteuid():
            return argv
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--",
            *argv,
        ]


def server_account() -> Account:
    """The current user, or as root the system user ``hookqueue-test`` (made if missing)."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        # Another session may create it at the same moment: useradd then fails, and the
        # look-up below finds that session's user.
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "hookqueue test database servers",
                SERVER_USER,
            ],
            capture_output=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError:
            entry = pwd.getpwnam("nobody")
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _base_dir(account: Account) -> Path:
    """Where to make the server's directory: the temporary directory, unless the server's
    user could not reach it, or the socket's path would pass its limit (107 bytes)."""
    base = Path(tempfile.gettempdir()).resolve()
    reachable = account.uid == os.geteuid() or all(
        p.stat().st_mode & 0o001 for p in (base, *base.parents)
    )
    return base if reachable and len(str(base)) <= 60 else Path("/tmp")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def conninfo(**params: object) -> str:
    """A libpq conninfo string; every value quoted, so paths with spaces are safe."""

    def quote(value: object) -> str:
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        return f"'{text}'"

    return " ".join(f"{key}={quote(value)}" for key, value in params.items())


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


class PostgresServer:
    """One PostgreSQL cluster of the test session's own (see the module docstring)."""

    def __init__(self, binaries: PgBinaries, account: Account) -> None:
        self.binaries = binaries
        self.account = account
        #: The temporary directory: ``data/`` (the cluster), ``server.log`` and the socket.
        self.root = Path()
        self.datadir = Path()
        self.log_path = Path()
        self.port = 0
        #: The superuser's password, needed over TCP only.
        self.password = secrets.token_urlsafe(18)
        self._reaper: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)

    # -- addresses -----------------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        return self.root

    def dsn_for(self, dbname: str, *, tcp: bool = False) -> str:
        """The DSN of database ``dbname`` on this server, over the socket or over TCP."""
        if tcp:
            return conninfo(
                host="127.0.0.1",
                port=self.port,
                user=SUPERUSER,
                password=self.password,
                dbname=dbname,
            )
        return conninfo(host=self.socket_dir, port=self.port, user=SUPERUSER, dbname=dbname)

    @property
    def dsn(self) -> str:
        """The ``postgres`` database over the Unix socket, as the superuser."""
        return self.dsn_for("postgres")

    @property
    def tcp_dsn(self) -> str:
        """The ``postgres`` database over 127.0.0.1, as the superuser, with its password."""
        return self.dsn_for("postgres", tcp=True)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, IndexError, ValueError):
            return None

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def _env(self) -> dict[str, str]:
        # A clean environment: no PG* variable of the developer's reaches initdb or pg_ctl.
        return {
            "PATH": f"{self.binaries.bindir}:/usr/bin:/bin",
            "LC_ALL": "C",
            "TZ": "UTC",
            "HOME": str(self.root),
        }

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.account.command(argv),
            env=self._env,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _tool(self, name: str) -> str:
        return str(self.binaries.bindir / name)

    def start(self) -> None:
        """Make the directory, start the reaper, ``initdb`` and ``pg_ctl start``."""
        self.root = Path(tempfile.mkdtemp(prefix="hookqueue-pg-", dir=_base_dir(self.account)))
        self.datadir = self.root / "data"
        self.log_path = self.root / "server.log"
        os.chown(self.root, self.account.uid, self.account.gid)
        self.root.chmod(0o700)
        self._start_reaper()
        self._initdb()
        self._configure()
        for _ in range(5):
            self.port = _free_port()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            done = self._run(
                [
                    self._tool("pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.log_path),
                    "-o",
                    f"-p {self.port}",
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                timeout=90,
            )
            if done.returncode == 0:
                return
            with self.log_path.open(errors="replace") as log:
                log.seek(offset)
                new = log.read()
            # Another program took the port between _free_port() and the bind: take another.
            if "could not bind" not in new and "Address already in use" not in new:
                break
        raise PostgresStartError(
            f"pg_ctl start failed in {self.datadir} (port {self.port}): "
            f"{done.stdout}{done.stderr}\n--- {self.log_path} ---\n{_tail(self.log_path)}"
        )

    def _start_reaper(self) -> None:
        spec = {
            "command": self.account.command([]),
            "pg_ctl": self._tool("pg_ctl"),
            "datadir": str(self.datadir),
            "root": str(self.root),
            "env": self._env,
        }
        self._reaper = subprocess.Popen(
            [sys.executable, str(_REAPER), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # not in the terminal's process group: Ctrl-C spares it
        )

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        os.chown(pwfile, self.account.uid, self.account.gid)
        try:
            done = self._run(
                [
                    self._tool("initdb"),
                    "-D",
                    str(self.datadir),
                    "--username",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    # The socket lives in a directory only the server's user (and root) can
                    # enter; TCP needs the password.
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                ],
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise PostgresStartError(
                f"initdb failed in {self.datadir} as {self.account.name}: "
                f"{done.stdout}{done.stderr}"
            )

    def _configure(self) -> None:
        socket_dir = str(self.socket_dir).replace("'", "''")
        settings = f"""
# Added by hookqueue's tests (tests/_services/postgres.py). Durability settings (fsync,
# synchronous_commit, full_page_writes) keep their defaults on purpose. The port is given
# on pg_ctl's command line.
listen_addresses = '127.0.0.1'
unix_socket_directories = '{socket_dir}'
unix_socket_permissions = 0700
timezone = 'UTC'
log_timezone = 'UTC'
"""
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(settings)

    def stop(self) -> None:
        """Stop the cluster and delete its directory (through the reaper). Idempotent."""
        reaper, self._reaper = self._reaper, None
        if reaper is None:
            return
        try:
            _, err = reaper.communicate(b"stop\n", timeout=120)
        except subprocess.TimeoutExpired:
            reaper.kill()
            reaper.communicate()
            raise PostgresStartError(f"stopping the test server in {self.root} timed out") from None
        if reaper.returncode != 0 or self.root.exists():
            raise PostgresStartError(
                f"stopping the test server in {self.root} failed: "
                f"{err.decode(errors='replace').strip() or reaper.returncode}"
            )

    # -- databases -----------------------------------------------------------------------------

    def database_name(self, hint: str) -> str:
        """A new database name, unique in this session, readable in the server log."""
        slug = re.sub(r"[^a-z0-9]+", "_", hint.lower()).strip("_")
        return f"t{next(self._names):04d}_{slug}"[:63]

    def _admin(self) -> psycopg.Connection[Any]:
        import psycopg

        # A connection per call, not one kept for the session: a test process that forks
        # would share a kept connection's socket with its children.
        return psycopg.connect(self.dsn, autocommit=True)

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its DSN (over the socket)."""
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending any connection a test left open to it."""
        from psycopg import sql

        force = sql.SQL(" WITH (FORCE)") if self.binaries.major >= 13 else sql.SQL("")
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force)
            )

    @contextmanager
    def database(self, name: str) -> Iterator[str]:
        """A database that exists inside the ``with`` block only; yields its DSN."""
        dsn = self.create_database(name)
        try:
            yield dsn
        finally:
            self.drop_database(name)


# -- fixtures ----------------------------------------------------------------------------------


def require_binaries() -> PgBinaries:
    """The binaries :func:`find_binaries` finds, else a skip (or in CI a failure)."""
    binaries = find_binaries()
    if binaries is None:
        unavailable(f"no PostgreSQL server binaries under {PG_ROOT}/*/bin", INSTALL_FIX)
    return binaries


def _open_server() -> PostgresServer:
    binaries = require_binaries()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("the psycopg driver is not installed", "pip install -e '.[test]'")
    server = PostgresServer(binaries, server_account())
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, started on first use (see the module docstring)."""
    server = _open_server()
    yield server
    server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The DSN of a new, empty database for this test alone; dropped after it."""
    with postgres_server.database(postgres_server.database_name(request.node.name)) as dsn:
        yield dsn
