"""docs/migration.md stays true: its imports resolve and its runnable examples run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "migration.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_every_import_in_the_guide_resolves() -> None:
    lines = [
        line.strip()
        for block in _python_blocks()
        for line in block.splitlines()
        if re.match(r"\s*(from hookqueue\S* import|import hookqueue)", line)
    ]
    assert len(lines) >= 4
    for line in lines:
        exec(line, {})


def test_the_import_table_names_only_real_modules_and_names() -> None:
    table = re.findall(
        r"^\|[^|]*\| `(from hookqueue[^`]+)` \|$", DOC.read_text(encoding="utf-8"), flags=re.M
    )
    assert len(table) == 6
    for line in table:
        exec(line, {})


def test_the_first_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(_python_blocks()[0], {"__name__": "__doc_example__"})
    status, duration = capsys.readouterr().out.split()
    assert status == "completed" and float(duration) >= 0.1
    assert (tmp_path / "runs.json").exists()


def test_the_validation_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    [block] = [b for b in _python_blocks() if "validate_queue_integration()" in b]
    exec(block, {})
    assert capsys.readouterr().out == "✓ Queue system is ready!\n"
