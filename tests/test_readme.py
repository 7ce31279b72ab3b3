"""The README's promises: its example runs as printed, and CI runs the test command it shows."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_example_runs(tmp_path: Path) -> None:
    [example] = re.findall(r"```python\n(.*?)```", README, re.S)
    result = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "sending to ada@example.com" in result.stdout
    counts = ast.literal_eval(result.stdout.strip().splitlines()[-1])  # the printed dict
    assert counts["completed"] == 3 and counts["queued"] == 1
    assert (tmp_path / "tasks.db").exists()


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```sh\n(.*?)```", README, re.S)
    test_command = next(c.strip() for c in commands if "pytest" in c)
    demo_command = next(c.strip() for c in commands if "hookqueue demo" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/pip install --quiet -e '.[test]'" in ci and ".venv/bin/pytest" in ci
    assert "pip install -e '.[test]'" in test_command and ".venv/bin/pytest" in test_command
    assert "hookqueue demo" in demo_command
