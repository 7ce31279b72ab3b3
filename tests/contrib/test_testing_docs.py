"""docs/testing.md and examples/testing/: the page shows the example files as they are, and
the examples pass."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hookqueue.contrib import pytest_plugin, testing

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "testing.md"
EXAMPLES = ROOT / "examples" / "testing"

BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def doc_blocks() -> list[str]:
    return BLOCK.findall(DOC.read_text())


def test_every_python_block_is_an_example_file_shown_whole() -> None:
    shown: list[str] = []
    for block in doc_blocks():
        first, _, body = block.partition("\n")
        match = re.fullmatch(r"# (examples/testing/[\w.]+\.py)", first)
        assert match, f"a python block of docs/testing.md does not name its example file: {first!r}"
        path = ROOT / match.group(1)
        assert path.is_file(), f"docs/testing.md shows {match.group(1)}, which does not exist"
        assert body == path.read_text(), f"docs/testing.md shows an outdated {match.group(1)}"
        shown.append(path.name)
    assert sorted(shown) == sorted(p.name for p in EXAMPLES.glob("*.py")), "show every example once"


def test_the_page_names_every_fixture_and_helper() -> None:
    text = DOC.read_text()
    fixtures = [n for n, o in vars(pytest_plugin).items() if hasattr(o, "_fixture_function_marker")]
    helpers = [n for n in testing.__all__ if not n.isupper()]
    missing = [n for n in fixtures + helpers if f"`{n}" not in text]
    assert missing == []


def test_the_sections_the_issue_asks_for_are_there() -> None:
    headings = re.findall(r"^## (.+)$", DOC.read_text(), re.M)
    for wanted in ("Testing code that enqueues", "Testing handlers", "Testing a plugin"):
        assert wanted in headings


@pytest.mark.slow
def test_the_examples_pass(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HOOKQUEUE_"))}
    # From a temporary directory, so hypothesis keeps its example database there.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(EXAMPLES), "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = int(re.search(r"(\d+) passed", output).group(1))  # type: ignore[union-attr]
    assert passed >= 40, output
    # Skips may only come from the contracts' own conditions (a plan without rerank, ...).
    skip_lines = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert all("hookqueue/contrib/contracts/" in line for line in skip_lines), skip_lines


def test_the_inline_script_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    for name in ("shop", "inline_script"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    spec = importlib.util.spec_from_file_location("inline_script", EXAMPLES / "inline_script.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    sent = module.main(str(tmp_path / "orders.db"))

    assert sent == ["order_confirmation", "review_request"]
    assert capsys.readouterr().out.splitlines() == [
        "sent now: ['order_confirmation']",
        "sent later: ['review_request']",
        "ran: ['send_email completed']",
    ]
