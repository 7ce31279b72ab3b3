"""Security: no unpickling, no SQL built from values, owner-only files, no imports by name.

The metrics endpoint's loopback default is tested with the metrics plugin, not here.
"""

from __future__ import annotations

import ast
import base64
import importlib.metadata
import pickle
import textwrap
from pathlib import Path
from typing import Any

import pytest

import hookqueue
from hookqueue import Queue, TaskStatus, ValidationError, WorkerEngine
from hookqueue.core import models

from . import _faults, _sqlscan
from .conftest import FaultRecord

PACKAGE = Path(hookqueue.__file__).resolve().parent
STORE = PACKAGE / "core" / "store"

#: Modules that deserialise code or objects; hookqueue imports none of them.
UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "marshal",
    "shelve",
    "dill",
    "cloudpickle",
    "jsonpickle",
    "yaml",
}
#: Builtins that run code from data.
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}
#: Where hookqueue imports a module by name at run time, and why the name is the user's.
ALLOWED_DYNAMIC_IMPORTS = {
    ("core/plugins.py", "EntryPoint.load"): "entry points of installed distributions only",
    ("core/cli.py", "importlib.import_module"): "`hookqueue worker --app module:attr`: typed "
    "by the user on the command line",
    ("contrib/contracts/_store_child.py", "importlib.import_module"): "the store contract's "
    "other process opens the store class the test author named in StoreOpener",
}


def _sources() -> list[tuple[str, ast.Module]]:
    return [
        (str(p.relative_to(PACKAGE)), ast.parse(p.read_text(), filename=str(p)))
        for p in sorted(PACKAGE.rglob("*.py"))
    ]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def test_package_never_unpickles_or_evaluates(fault: FaultRecord) -> None:
    """No module of the package imports pickle, marshal, shelve or the like, calls eval,
    exec, compile or __import__, and modules are imported by name only where the name comes
    from the user (entry points of installed distributions, ``--app`` on the command line)."""
    fault.describe("Package scan: unpickling, eval and imports by name")
    unsafe: list[str] = []
    dynamic: set[tuple[str, str]] = set()
    files = _sources()
    for rel, tree in files:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                for name in names:
                    if name.split(".")[0] in UNSAFE_MODULES:
                        unsafe.append(f"{rel}:{node.lineno}: imports {name}")
            elif isinstance(node, ast.Call):
                callee = _dotted(node.func)
                if isinstance(node.func, ast.Name) and node.func.id in UNSAFE_BUILTINS:
                    unsafe.append(f"{rel}:{node.lineno}: calls {node.func.id}()")
                elif callee in (
                    "importlib.import_module",
                    "pkgutil.resolve_name",
                    "runpy.run_module",
                    "runpy.run_path",
                ):
                    dynamic.add((rel, callee))
                elif (
                    isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load"
                    and not node.args
                ):
                    dynamic.add((rel, "EntryPoint.load"))
    fault.inject(len(files))
    assert unsafe == []
    unreviewed = sorted(dynamic - set(ALLOWED_DYNAMIC_IMPORTS))
    assert unreviewed == [], (
        f"new run-time imports by name: {unreviewed}. Check that no task type, payload, "
        "header or database value can reach the name, then add it to ALLOWED_DYNAMIC_IMPORTS "
        "with the reason"
    )
    fault.figure("modules scanned", len(files))
    fault.figure("imports by name", len(dynamic))


_TRIPPED: list[str] = []


def _tripwire(message: str) -> str:
    """What unpickling the decoy payload would call."""
    _TRIPPED.append(message)
    return message


class _Decoy:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_tripwire, ("a hookqueue payload was unpickled",))


PICKLE_BYTES = pickle.dumps(_Decoy(), protocol=0)
INERT_PAYLOADS: dict[str, Any] = {
    "pickle protocol 0 as text": PICKLE_BYTES.decode("latin-1"),
    "pickle protocol 5 as latin-1 text": pickle.dumps(_Decoy(), protocol=5).decode("latin-1"),
    "base64 pickle": base64.b64encode(PICKLE_BYTES).decode(),
    "jsonpickle-style object": {
        "py/object": "os.system",
        "py/reduce": [{"py/function": "os.system"}],
    },
    "reduce-shaped dict": {
        "__reduce__": ["os.system", ["echo pwned"]],
        "__class__": "os._wrap_close",
    },
}


def test_pickle_shaped_payloads_stay_inert(db_path: Path, fault: FaultRecord) -> None:
    """Payloads that are pickles (as text, base64 or jsonpickle-shaped JSON) are stored,
    handed to the handler and returned as the plain strings and dicts they are — nothing in
    hookqueue unpickles them — and raw pickle bytes are refused as not JSON."""
    fault.describe("Pickle payloads (text, base64, jsonpickle-shaped)")
    _TRIPPED.clear()
    with Queue(db_path, load_entrypoints=False, durability="normal") as q:
        q.handlers.register_handler("echo", lambda task: task.payload)
        ids = {name: q.enqueue("echo", payload).id for name, payload in INERT_PAYLOADS.items()}
        with pytest.raises(ValidationError):
            q.enqueue("echo", PICKLE_BYTES)
        fault.inject(len(INERT_PAYLOADS) + 1)
        WorkerEngine(q, worker_id="w", concurrency=2).run_until_idle()
        for name, tid in ids.items():
            task = q.get(tid)
            assert task.status is TaskStatus.COMPLETED, name
            assert task.payload == INERT_PAYLOADS[name] and task.result == INERT_PAYLOADS[name]
            assert task.to_dict()["payload"] == INERT_PAYLOADS[name]
    assert _TRIPPED == []


def test_pickle_written_into_the_database_is_never_loaded(
    db_path: Path, fault: FaultRecord
) -> None:
    """A pickle written straight into the payload and result columns (by another tool or an
    attacker with file access) is never unpickled when hookqueue reads the task."""
    fault.describe("Pickle text written into the payload and result columns")
    _TRIPPED.clear()
    with Queue(db_path, load_entrypoints=False) as q:
        task = q.enqueue("echo", {"ok": True})
    conn = _faults.raw_connection(db_path)
    conn.execute(
        "UPDATE tasks SET payload = ?, result = ? WHERE id = ?",
        (PICKLE_BYTES.decode("latin-1"), PICKLE_BYTES.decode("latin-1"), task.id),
    )
    conn.close()
    fault.inject()
    with Queue(db_path, load_entrypoints=False) as q:
        for read in (lambda: q.get(task.id), lambda: q.list()):
            try:
                read()
            except Exception as exc:  # the row is unreadable JSON; the error is tested elsewhere
                assert not isinstance(exc, pickle.UnpicklingError)
    assert _TRIPPED == []


def test_store_builds_no_sql_from_values(fault: FaultRecord) -> None:
    """Every execute/executemany/pragma in the store package runs a constant statement, or
    one assembled only from literals, named constants, the ``?`` placeholder list and ORDER
    BY terms from the closed SortKey vocabulary (the contract in store/statements.py)."""
    fault.describe("AST scan of core/store/ for SQL built from values")
    checker = _sqlscan.Checker(_sqlscan.store_source(STORE), filename="hookqueue/core/store/")
    calls = [
        n
        for n in ast.walk(checker.tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in (*_sqlscan.SQL_CALLS, "pragma")
    ]
    fault.inject(len(calls))
    assert checker.findings() == []
    # The one imported constant the rules trust is a tuple of plain column names.
    assert all(c.isidentifier() and c.islower() for c in models.TASK_COLUMNS)
    fault.figure("SQL calls checked", len(calls))
    fault.figure("named constants", len(checker.constants))


#: Code someone might add to the store; the scan must flag every one.
INJECTIONS = {
    "f-string with a parameter": """
        def by_type(conn, task_type):
            return conn.execute(f"SELECT id FROM tasks WHERE task_type = '{task_type}'").fetchall()
    """,
    "%-formatting": """
        def by_type(conn, task_type):
            return conn.execute("SELECT id FROM tasks WHERE task_type = '%s'" % task_type)
    """,
    ".format()": """
        def by_type(conn, task_type):
            return conn.execute("SELECT id FROM tasks WHERE task_type = '{}'".format(task_type))
    """,
    "concatenation": """
        def by_key(conn, key):
            return conn.execute("SELECT id FROM tasks WHERE idempotency_key = '" + key + "'")
    """,
    "through a local variable": """
        def by_queue(conn, queue):
            sql = SQL_GET + " AND queue = '" + queue + "'"
            return conn.execute(sql, ())
    """,
    "through a WHERE list": """
        def listing(conn, task_type):
            where = ["status = ?"]
            where.append(f"task_type = '{task_type}'")
            return conn.execute("SELECT id FROM tasks WHERE " + " AND ".join(where), ("queued",))
    """,
    "one branch of a conditional": """
        def ordered(conn, column):
            sql = "SELECT id FROM tasks ORDER BY " + (column if column else "id")
            return conn.execute(sql)
    """,
    "an attribute of a row": """
        def copy(conn, task):
            conn.execute(f"INSERT INTO tasks (task_type) VALUES ('{task.task_type}')")
    """,
    "executemany": """
        def many(conn, table, rows):
            conn.executemany(f"INSERT INTO {table} VALUES (?)", rows)
    """,
    "pragma name from a value": """
        def tune(conn, name):
            conn.pragma(name, 1)
    """,
    "ORDER BY helper returning a term it was given": """
        def order_by(keys, term):
            return ", ".join(ORDER_TERMS[k] for k in keys) + term
    """,
    "placeholder helper returning a value": """
        def placeholders(n, extra):
            return ", ".join("?" * n) + extra
    """,
}


@pytest.mark.parametrize("name", list(INJECTIONS))
def test_sql_scan_catches_injected_code(name: str, fault: FaultRecord) -> None:
    """The scan is not vacuous: the store with one string-built statement added (f-string,
    %, .format, +, via a variable or a list, a poisoned ORDER BY cache...) is flagged."""
    fault.describe(f"SQL scan self-test: {name}")
    source = _sqlscan.store_source(STORE) + "\n\n" + textwrap.dedent(INJECTIONS[name])
    fault.inject()
    findings = _sqlscan.Checker(source).findings()
    assert findings, f"the scan missed: {name}"


def test_database_files_are_owner_only(tmp_path: Path, fault: FaultRecord) -> None:
    """Even with umask 000, a new database and its -wal and -shm files are created 0600 and
    a directory hookqueue creates for it 0700: task payloads are readable by their owner
    only."""
    fault.describe("File permissions of a new database (umask 000)")
    modes = _faults.run_child("_probe.py", "perms", tmp_path)
    fault.inject()
    assert modes == {"directory": "0o700", "database": "0o600", "wal": "0o600", "shm": "0o600"}
    fault.figure("modes", ", ".join(f"{k} {v[2:]}" for k, v in modes.items()))


def test_database_through_a_dangling_symlink_is_owner_only(
    tmp_path: Path, fault: FaultRecord
) -> None:
    """Even with umask 000, a database opened through a dangling symlink is created at the
    symlink's target 0600, and so are its -wal and -shm (SQLite puts them beside the
    target); the symlink stays a symlink and nothing else appears beside it."""
    fault.describe("A new database through a dangling symlink (umask 000)")
    modes = _faults.run_child("_probe.py", "symlink", tmp_path)
    fault.inject()
    assert modes == {
        "target": "0o600",
        "wal": "0o600",
        "shm": "0o600",
        "link is a symlink": True,
        "beside the link": ["link.db"],
    }
    fault.figure("modes", ", ".join(f"{k} {modes[k][2:]}" for k in ("target", "wal", "shm")))


def test_task_types_never_import_modules(tmp_path: Path, fault: FaultRecord) -> None:
    """Tasks whose types, payloads and headers name modules and callables (``os:system``,
    ``this``, ``antigravity``, ``importlib:import_module``...) are left queued by a worker
    (it has no handler for them), fail for want of a handler in an in-process run, and import
    nothing: no module is imported while they are enqueued, worked and read."""
    fault.describe("Task types that name modules (os:system, this, antigravity...)")
    report = _faults.run_child("_probe.py", "imports", tmp_path / "queue.db")
    fault.inject(10)
    assert report["decoys_imported"] == []
    assert report["printed"] == ""  # importing `this` prints the Zen of Python
    named = ("this", "antigravity", "webbrowser", "subprocess", "hookqueue.plugins.not_a_module")
    assert not [m for m in report["new_modules"] if m.startswith(named)], report["new_modules"]
    assert report["statuses_after_worker"] == ["queued"]
    assert report["statuses"] == ["failed"]
    assert all(e.startswith("no handler is registered") for e in report["errors"])
    fault.figure("modules imported while working them", len(report["new_modules"]))


def _plugins(tmp_path: Path, **env: str) -> dict[str, Any]:
    result: dict[str, Any] = _faults.run_child(
        "_probe.py", "plugins", env={"PROBE_DB": str(tmp_path / "queue.db"), **env}
    )
    return result


def test_plugin_loading_imports_only_what_is_installed_and_allowed(
    tmp_path: Path, fault: FaultRecord
) -> None:
    """Plugins come only from the ``hookqueue`` entry points of installed distributions:
    names in HOOKQUEUE_DISABLE_PLUGINS or ``block=`` are never imported (even names of
    modules like ``this``), every entry point blocked means no plugin module is imported,
    and HOOKQUEUE_PLUGIN_AUTOLOAD=0 imports none."""
    fault.describe("Plugin names: blocked, unknown, autoload off")
    installed = sorted(ep.name for ep in importlib.metadata.entry_points(group="hookqueue"))
    default = _plugins(tmp_path)
    assert set(default["imported"]) <= set(installed)
    assert default["decoys_imported"] == []
    decoys = _plugins(
        tmp_path, HOOKQUEUE_DISABLE_PLUGINS="this,antigravity,os", PROBE_BLOCK="webbrowser,turtle"
    )
    assert decoys["decoys_imported"] == []
    assert not {"this", "antigravity", "os", "webbrowser", "turtle"} & set(decoys["statuses"])
    blocked = _plugins(tmp_path, HOOKQUEUE_DISABLE_PLUGINS=",".join(installed))
    assert blocked["imported"] == []
    assert {blocked["statuses"][n] for n in installed} == {"blocked"}
    off = _plugins(tmp_path, HOOKQUEUE_PLUGIN_AUTOLOAD="0")
    assert off["imported"] == []
    fault.inject(4)
    fault.figure("entry points installed", len(installed))
    fault.figure("imported by default", len(default["imported"]))
