"""The reliability suite's recorder: every test's fault, injection count, figures and outcome.

A test takes the ``fault`` fixture, names its fault, counts each injection and records the
figures it measured. After the run the records, with each test's outcome and docstring (what
it checks), are written as JSON to ``$HOOKQUEUE_RELIABILITY_RESULTS``, else to
``<tempdir>/hookqueue-reliability/results.json`` — never into the repository.
``python -m tests.reliability.report`` renders them into ``docs/reliability.md``.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

#: Read at import: the root conftest removes HOOKQUEUE_* variables while each test runs.
RESULTS_PATH = Path(
    os.environ.get("HOOKQUEUE_RELIABILITY_RESULTS")
    or Path(tempfile.gettempdir()) / "hookqueue-reliability" / "results.json"
)


class FaultRecord:
    """What one test injected and measured (see the module docstring)."""

    def __init__(self, nodeid: str, checked: str) -> None:
        self.nodeid = nodeid
        #: Short name of the fault, for the report's table.
        self.name = ""
        #: What the test verifies (its docstring's first paragraph).
        self.checked = checked
        #: How many times the fault was injected.
        self.injected = 0
        #: Figures measured by the test, in insertion order.
        self.figures: dict[str, Any] = {}
        #: ``passed``, ``failed``, ``xfailed``, ``xpassed`` or ``skipped``, set after the test.
        self.outcome = "not run"
        #: The xfail reason (a known problem in the core), if any.
        self.known_problem = ""
        self.duration = 0.0
        #: The first line of the failure, when the test failed.
        self.failure = ""

    def describe(self, name: str) -> FaultRecord:
        """Name the fault this test injects."""
        self.name = name
        return self

    def inject(self, n: int = 1) -> None:
        """Count ``n`` injections of the fault."""
        self.injected += n

    def figure(self, key: str, value: Any) -> None:
        """Record a measured figure (JSON-serialisable)."""
        self.figures[key] = value

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data."""
        module, _, test = self.nodeid.partition("::")
        return {
            "nodeid": self.nodeid,
            "module": Path(module).stem,
            "test": test,
            "fault": self.name or test,
            "checked": self.checked,
            "injected": self.injected,
            "figures": self.figures,
            "outcome": self.outcome,
            "known_problem": self.known_problem,
            "duration_s": round(self.duration, 3),
            "failure": self.failure,
        }


_RECORDS: dict[str, FaultRecord] = {}
_MODULE_DOCS: dict[str, str] = {}


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def _record_for(item: pytest.Item) -> FaultRecord:
    record = _RECORDS.get(item.nodeid)
    if record is None:
        doc = getattr(getattr(item, "function", None), "__doc__", None)
        record = _RECORDS[item.nodeid] = FaultRecord(item.nodeid, _first_paragraph(doc))
        module = getattr(item, "module", None)
        if module is not None:
            _MODULE_DOCS[Path(item.nodeid.partition("::")[0]).stem] = _first_paragraph(
                module.__doc__
            )
    return record


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> FaultRecord:
    """This test's :class:`FaultRecord`."""
    return _record_for(request.node)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Copy each test's outcome into its record."""
    report = yield
    record = _record_for(item)
    xfail = getattr(report, "wasxfail", None)
    if report.when == "call" or (report.when == "setup" and not report.passed):
        record.duration += report.duration
        if xfail is not None:
            record.outcome = "xfailed" if report.skipped else "xpassed"
            record.known_problem = str(xfail)
        elif report.skipped:
            record.outcome = "skipped"
        else:
            record.outcome = report.outcome
    elif report.when == "teardown" and report.failed:
        record.outcome = "failed"
    if report.failed and xfail is None and not record.failure:
        if call.excinfo is not None:
            text = f"{call.excinfo.typename}: {call.excinfo.value}"
        else:  # e.g. a strict xfail that passed
            text = report.longreprtext or "failed"
        record.failure = text.strip().splitlines()[0][:300]
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the records of this run (only tests of this directory have records)."""
    if not _RECORDS:
        return
    data = {
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "environment": {
            "python": platform.python_version(),
            "sqlite": apsw.sqlite_lib_version(),
            "apsw": apsw.apsw_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "argv": sys.argv[1:],
        },
        "modules": _MODULE_DOCS,
        "tests": [r.as_dict() for r in _RECORDS.values()],
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    tmp.replace(RESULTS_PATH)
