"""Running ``hookqueue`` in a process of its own, on the code under test.

The virtual environment's ``hookqueue`` may be an editable install of another checkout (a
worktree's tests would then run that checkout's code in their subprocesses). :func:`env` puts
the directory holding the ``hookqueue`` package this test run imports first on
``PYTHONPATH`` — and nothing else: never a test's working directory, which ``--app`` must
find by itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hookqueue

#: The directory that holds the ``hookqueue`` package under test.
PACKAGE_PARENT = Path(hookqueue.__file__).resolve().parents[1]
#: The installed console script, beside the interpreter running the tests.
CONSOLE_SCRIPT = Path(sys.executable).parent / "hookqueue"


def env(**extra: str) -> dict[str, str]:
    """``os.environ`` with ``extra``, and the package under test first on ``PYTHONPATH``."""
    out = {**os.environ, **extra}
    rest = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    out["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT), *rest])
    return out


def hookqueue_command(
    *args: str, cwd: Path | None = None, environ: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """``python -m hookqueue ARGS``, its output captured as text, standard input empty (no
    terminal), at most two minutes."""
    return subprocess.run(
        [sys.executable, "-m", "hookqueue", *args],
        cwd=cwd,
        env=environ if environ is not None else env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )
