"""Running another directory's tests on a PostgreSQL-backed queue.

A test module is loaded again under a name of its own (:func:`load_again`), with ``Queue`` in
it swapped for :class:`PostgresQueue`, which opens a URL whatever plugins the test loads or
blocks; its chosen tests and fixtures are bound into the PostgreSQL module, whose ``db_path``
fixture (imported from here) is the per-test database's URL.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

import hookqueue.plugins.postgres as pg_plugin
from hookqueue import Queue
from hookqueue.core.cli import main

TESTS = Path(__file__).resolve().parents[2]


class PostgresQueue(Queue):
    """``Queue`` with the PostgreSQL plugin registered from code, so a test that blocks the
    entry points still opens a URL; its entry point is blocked instead, so a test that loads
    the entry points does not register the plugin twice."""

    def __init__(self, db_or_path: Any = None, **kwargs: Any) -> None:
        kwargs["plugins"] = [*kwargs.get("plugins", ()), pg_plugin]
        kwargs["block"] = [*kwargs.get("block", ()), "postgres"]
        super().__init__(db_or_path, **kwargs)


def load_again(relative: str) -> ModuleType:
    """The test module at ``tests/<relative>``, loaded again under a name of its own, with its
    directory on ``sys.path`` (as pytest puts it there) for its helper modules, and its
    ``Queue`` a :class:`PostgresQueue`."""
    path = TESTS / relative
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"_on_postgres_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "Queue"):
        module.Queue = PostgresQueue
    return module


@pytest.fixture
def db_path(postgres_url: str) -> str:
    """The per-test database's URL, where the tests run again take a file."""
    return postgres_url


def refuse_a_missing_schema(
    commands: Iterable[list[str]],
    postgres_url: str,
    postgres_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """Check that each command, given a URL whose schema holds no queue, refuses (exit 2,
    naming the fix) and creates nothing there; that URL."""
    url = postgres_url + "&schema=typo"
    for argv in commands:
        code = main([*argv, "--db", url])
        err = capsys.readouterr().err
        assert code == 2 and "no hookqueue schema there" in err and "Fix:" in err, argv
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'typo'"
        ).fetchone()
    assert found == (0,)
    return url
