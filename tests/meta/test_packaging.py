"""What the distribution ships: ``py.typed`` (PEP 561: the annotations are part of the API),
and extras that keep the test run free of the benchmark's peers."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import hookqueue

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(hookqueue.__file__).resolve().parent


def _names(requirements: list[str]) -> set[str]:
    """The project names of requirement strings (``psycopg[binary]>=3.1`` → ``psycopg``)."""
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_py_typed_is_shipped(tmp_path: Path) -> None:
    assert (PACKAGE / "py.typed").is_file(), "the installed package holds py.typed"
    listed = [str(f) for f in importlib.metadata.files("hookqueue") or []]
    if any(f.startswith("hookqueue/") for f in listed):  # a regular (not editable) install
        assert "hookqueue/py.typed" in listed
    # What a wheel holds: setuptools' build_py with the project's own configuration, on a
    # copy of the source (the build leaves its files beside it).
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "hookqueue", source / "hookqueue", ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    build = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", "import setuptools; setuptools.setup()",
         "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
        cwd=source, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert (tmp_path / "lib" / "hookqueue" / "py.typed").is_file()


def test_the_test_extra_holds_no_benchmark_peers() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    test, bench = _names(extras["test"]), _names(extras["bench"])
    assert {"huey", "litequeue"} <= bench, "the peers live in [bench]"
    assert not test & bench, f"[test] holds benchmark peers: {sorted(test & bench)}"
