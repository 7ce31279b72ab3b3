"""The operator's commands (``tests/core/test_cli_operations.py``) on a PostgreSQL-backed
queue: bulk cancel/retry/purge by filter, ``show`` with the failed attempts, ``queues`` with
pause and resume, ``wait`` — the same functions, run with this module's fixtures (``db_path``
is the per-test database's URL; ``Queue`` in their module opens it with the PostgreSQL plugin
registered). And the read-only commands' refusal of a URL that holds no queue.
"""

from __future__ import annotations

import pytest
from _onpg import db_path, load_again, refuse_a_missing_schema  # noqa: F401

from hookqueue import TaskStatus
from hookqueue.core.cli import main

_cli_tests = load_again("core/test_cli_operations.py")

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


def test_read_only_commands_never_create_a_schema(
    postgres_url: str, postgres_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command that only reads refuses a URL whose schema holds no queue (exit 2, naming
    the fix) and creates nothing there; ``enqueue`` creates the queue."""
    read_only = (["ls"], ["queues"], ["workers"], ["check"], ["wait", "1"], ["pause", "x"])
    url = refuse_a_missing_schema(read_only, postgres_url, postgres_dsn, capsys)
    assert main(["enqueue", "t", "--db", url]) == 0
    assert main(["ls", "--db", url, "--json"]) == 0
    assert TaskStatus.QUEUED.value in capsys.readouterr().out
