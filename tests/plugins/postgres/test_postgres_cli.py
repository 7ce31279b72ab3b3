"""The operator's commands (``tests/core/test_cli_operations.py``) on a PostgreSQL-backed
queue: bulk cancel/retry/purge by filter, ``show`` with the failed attempts, ``queues`` with
pause and resume, ``wait`` — the same functions, run with this module's fixtures (``db_path``
is the per-test database's URL; ``Queue`` in their module opens it with the PostgreSQL plugin
registered). And the read-only commands' refusal of a URL that holds no queue.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

import hookqueue.plugins.postgres as pg_plugin
from hookqueue import Queue, TaskStatus
from hookqueue.core.cli import main

TESTS = Path(__file__).resolve().parents[2]


def _load(relative: str) -> ModuleType:
    """A test module of the core, loaded again under a name of its own."""
    path = TESTS / relative
    spec = importlib.util.spec_from_file_location(f"_on_postgres_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PostgresQueue(Queue):
    """``Queue`` with the PostgreSQL plugin registered (the tests block entry points; the
    command line loads them, the PostgreSQL store's among them)."""

    def __init__(self, db_or_path: Any = None, **kwargs: Any) -> None:
        kwargs["plugins"] = [*kwargs.get("plugins", ()), pg_plugin]
        super().__init__(db_or_path, **kwargs)


_cli_tests = _load("core/test_cli_operations.py")
_cli_tests.Queue = PostgresQueue  # type: ignore[attr-defined]

#: The fixture and the tests that run here too, unchanged.
REUSED = (
    "filled",
    "test_bulk_commands_refuse_an_empty_filter_and_a_script_without_yes",
    "test_cancel_retry_purge_by_filter",
    "test_show_prints_the_failed_attempts_with_tracebacks",
    "test_queues_pause_resume",
    "test_wait_exit_codes",
)
for _name in REUSED:
    globals()[_name] = getattr(_cli_tests, _name)


@pytest.fixture
def db_path(postgres_url: str) -> str:
    """The per-test database's URL, where the CLI tests expect a file."""
    return postgres_url


def test_read_only_commands_never_create_a_schema(
    postgres_url: str, postgres_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command that only reads refuses a URL whose schema holds no queue (exit 2, naming
    the fix) and creates nothing there; ``enqueue`` creates the queue."""
    url = postgres_url + "&schema=typo"
    for argv in (["ls"], ["queues"], ["workers"], ["check"], ["wait", "1"], ["pause", "x"]):
        code = main([*argv, "--db", url])
        err = capsys.readouterr().err
        assert code == 2 and "no hookqueue schema there" in err and "Fix:" in err, argv
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'typo'"
        ).fetchone()
    assert found == (0,)
    assert main(["enqueue", "t", "--db", url]) == 0
    assert main(["ls", "--db", url, "--json"]) == 0
    assert TaskStatus.QUEUED.value in capsys.readouterr().out
