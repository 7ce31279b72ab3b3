"""The design's rules (shared/DESIGN.md §1–3), checked on the code itself.

- Only the SQLite store (``hookqueue/core/store/``) imports apsw, and only the PostgreSQL
  store (``hookqueue/plugins/postgres/``) imports psycopg.
- No SQL outside a store (those two packages): plugins, contrib and the rest of the core
  reach data through the store's named methods (:class:`~hookqueue.core.storage.TaskStore`).
- Arrows point one way: ``core`` never imports ``plugins`` or ``contrib``.
- Plugins and contrib never import the SQLite store's modules: they use the public
  ``hookqueue.QueueDatabase`` and the store contract in ``hookqueue.core.storage``.

Each rule has a test that the scan itself catches a violation, so none passes vacuously.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import hookqueue

PACKAGE = Path(hookqueue.__file__).resolve().parent
STORE = PACKAGE / "core" / "store"
PG_STORE = PACKAGE / "plugins" / "postgres"
#: The packages allowed to hold SQL: the stores.
STORES = (STORE, PG_STORE)

#: A statement's opening words, as SQL is written here (upper-case keywords).
SQL_TEXT = re.compile(
    r"\b(SELECT\s+[\w*(]|INSERT\s+(OR\s+\w+\s+)?INTO\b|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b"
    r"|CREATE\s+(TABLE|INDEX|UNIQUE\s+INDEX|TRIGGER|VIEW)\b|DROP\s+(TABLE|INDEX)\b"
    r"|PRAGMA\s+\w+|BEGIN\s+(IMMEDIATE|EXCLUSIVE|DEFERRED)\b|WITH\s+\w+\s+AS\s*\()"
)


def _modules(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    yield from sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _imports(tree: ast.AST, module: str) -> Iterator[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in the tree (function-level too)."""
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:  # "from . import store" imports a module too
                yield node.lineno, f"{name}.{alias.name}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] + ["__init__"]
    return ".".join(parts)


def _docstrings(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def sql_in_source(source: str, filename: str) -> list[str]:
    """Every string (not a docstring) in ``source`` that holds SQL text."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if SQL_TEXT.search(node.value):
                found.append(f"{filename}:{node.lineno}: {node.value.strip()[:70]!r}")
    return found


def apsw_importers(source: str, filename: str) -> list[str]:
    tree = ast.parse(source)
    return [
        f"{filename}:{line}: imports {name}"
        for line, name in _imports(tree, "hookqueue.x")
        if name == "apsw" or name.startswith("apsw.")
    ]


def test_only_the_sqlite_store_imports_apsw() -> None:
    found = [
        hit
        for path in _modules(PACKAGE)
        if STORE not in path.parents
        for hit in apsw_importers(path.read_text(), _rel(path))
    ]
    assert found == []
    store_users = [p for p in _modules(STORE) if apsw_importers(p.read_text(), _rel(p))]
    assert store_users, "the scan found no apsw import even in the store: it is broken"


def _in_a_store(path: Path) -> bool:
    return any(store in path.parents for store in STORES)


def test_no_sql_outside_a_store() -> None:
    found = [
        hit
        for path in _modules(PACKAGE)
        if not _in_a_store(path)
        for hit in sql_in_source(path.read_text(), _rel(path))
    ]
    assert found == [], "SQL outside the store; give it a named store method instead"
    # Each store is skipped for holding SQL, not for being empty: the scan finds its SQL.
    for store in STORES:
        assert any(sql_in_source(p.read_text(), _rel(p)) for p in _modules(store)), store


def psycopg_importers(source: str, filename: str) -> list[str]:
    tree = ast.parse(source)
    return [
        f"{filename}:{line}: imports {name}"
        for line, name in _imports(tree, "hookqueue.x")
        if name.split(".")[0] in ("psycopg", "psycopg_pool")
    ]


def test_only_the_postgres_store_imports_psycopg() -> None:
    found = [
        hit
        for path in _modules(PACKAGE)
        if PG_STORE not in path.parents
        for hit in psycopg_importers(path.read_text(), _rel(path))
    ]
    assert found == [], "psycopg belongs to the PostgreSQL store (the extra hookqueue[postgres])"
    assert [p for p in _modules(PG_STORE) if psycopg_importers(p.read_text(), _rel(p))]


@pytest.mark.parametrize(
    "snippet",
    [
        'SQL = "SELECT queue, count(*) FROM tasks GROUP BY queue"',
        'def f(db):\n    return db.run(f"UPDATE tasks SET status = {x}")',
        'X = """\nDELETE FROM tasks WHERE id = ?\n"""',
        'Y = "PRAGMA user_version"',
        'import apsw\nZ = apsw.Connection(":memory:")',
    ],
)
def test_the_scans_catch_sql_and_apsw(snippet: str) -> None:
    assert sql_in_source(snippet, "x.py") or apsw_importers(snippet, "x.py")


def test_the_sql_scan_ignores_prose() -> None:
    prose = '"""Select the tasks to update; delete from the list what is done."""\nA = "select one"'
    assert sql_in_source(prose, "x.py") == []
    # Inside the store there is SQL to find: the scan would see it.
    assert sql_in_source((STORE / "statements.py").read_text(), "statements.py")


def _import_violations(root: Path, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in _modules(root):
        tree = ast.parse(path.read_text())
        for line, name in _imports(tree, _module_name(path)):
            if name.startswith(forbidden):
                found.append(f"{_rel(path)}:{line}: imports {name}")
    return found


def test_core_never_imports_plugins_or_contrib() -> None:
    assert _import_violations(PACKAGE / "core", ("hookqueue.plugins", "hookqueue.contrib")) == []


def test_plugins_and_contrib_never_import_the_sqlite_store() -> None:
    forbidden = ("hookqueue.core.store",)
    found = _import_violations(PACKAGE / "plugins", forbidden)
    found += _import_violations(PACKAGE / "contrib", forbidden)
    assert found == [], "use hookqueue.QueueDatabase and hookqueue.core.storage instead"
    # The scan sees imports of the store where they are allowed (the core's own).
    assert _import_violations(PACKAGE / "core" / "queue.py", forbidden)


def _runtime_imports(tree: ast.Module, module: str) -> Iterator[tuple[int, str]]:
    """Like :func:`_imports`, leaving out imports under ``if TYPE_CHECKING:`` (they never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        holder = ast.Module(body=[node], type_ignores=[])
        yield from _imports(holder, module)


def import_cycles(files: dict[str, str]) -> list[list[str]]:
    """Cycles among modules (``{module name: source}``), counting every import that runs —
    at module level or inside a function. Packages' ``__init__`` modules are left out: a
    submodule importing a sibling through its package is not a cycle of the design."""
    modules = {name for name in files if not name.endswith(".__init__")}
    graph = {
        name: sorted(
            {target for _, target in _runtime_imports(ast.parse(source), name)} & modules - {name}
        )
        for name, source in files.items()
        if name in modules
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycles_in_hookqueue() -> None:
    files = {_module_name(p): p.read_text() for p in _modules(PACKAGE)}
    assert import_cycles(files) == []


def test_the_cycle_check_finds_a_cycle_even_through_a_function() -> None:
    files = {
        "hookqueue.core.a": "from . import b\n",
        "hookqueue.core.b": "def later():\n    from .a import x\n",
        "hookqueue.core.c": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n",
    }
    assert import_cycles(files) == [["hookqueue.core.a", "hookqueue.core.b", "hookqueue.core.a"]]


#: pluggy's private attributes: the core uses pluggy through its public API only.
PLUGGY_PRIVATES = {"_inner_hookexec", "_hookexec", "_hookimpls", "_multicall", "_nonwrappers"}


def _core_private_names() -> set[str]:
    """Private names the core defines: functions, methods, class attributes and ``self._x``."""
    names: set[str] = set()
    for path in _modules(PACKAGE / "core"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_doors(source: str, filename: str, core_privates: set[str]) -> list[str]:
    """Where ``source`` reaches a private name of the core (``obj._name`` on anything but
    ``self``/``cls``, or ``from hookqueue.core... import _name``), or pluggy's privates."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            receiver = node.value
            own = isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")
            if node.attr in PLUGGY_PRIVATES or (node.attr in core_privates and not own):
                found.append(f"{filename}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hookqueue.core"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{filename}:{node.lineno}: imports {alias.name}")
    return found


def test_plugins_and_contrib_use_no_private_door_of_the_core_or_of_pluggy() -> None:
    privates = _core_private_names()
    found = [
        hit
        for root in (PACKAGE / "plugins", PACKAGE / "contrib")
        for path in _modules(root)
        for hit in private_doors(path.read_text(), _rel(path), privates)
    ]
    assert found == [], "make it public and documented for every plugin, or do without"


def test_the_core_uses_pluggy_through_its_public_api() -> None:
    found = [
        hit
        for path in _modules(PACKAGE / "core")
        for hit in private_doors(path.read_text(), _rel(path), set())
    ]
    assert found == []


def test_the_private_door_scan_sees_one() -> None:
    privates = {"_in_thread", "_replace"}
    code = "async def f(queue, t):\n    await queue._in_thread(g)\n    return t._replace(x=1)\n"
    assert len(private_doors(code, "x.py", privates)) == 2
    assert private_doors("def f(pm):\n    return pm._inner_hookexec\n", "x.py", set())
    assert private_doors("def f(self):\n    return self._in_thread\n", "x.py", privates) == []


# -- the store contract says each member's errors ---------------------------------------------

#: The store protocols, in ``hookqueue/core/storage.py``.
STORAGE = PACKAGE / "core" / "storage.py"
#: What a member says when it raises nothing of its own: the errors :class:`TaskStore`'s
#: docstring defines as store-wide.
STORE_WIDE = "only the store-wide errors"
_RAISES_LINE = re.compile(r"^\s*:raises\b", re.MULTILINE)


def _says_its_errors(doc: str) -> bool:
    """A ``:raises`` line, or the store-wide phrase (however the lines wrap it)."""
    return bool(_RAISES_LINE.search(doc)) or STORE_WIDE in " ".join(doc.split())


def undocumented_errors(source: str, class_name: str) -> list[str]:
    """The public members of class ``class_name`` in ``source`` whose errors are not written
    down: a method or property without a docstring, or whose docstring has neither a
    ``:raises`` line nor :data:`STORE_WIDE`; an attribute without a ``#:`` comment (reading
    an attribute runs no store code)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    found: list[str] = []
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                found.append(f"{class_name}.{node.name}: no docstring")
            elif not _says_its_errors(doc):
                found.append(
                    f"{class_name}.{node.name}: no ':raises X: when ...' line and not "
                    f"{STORE_WIDE!r}"
                )
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
            if not node.target.id.startswith("_") and not above.startswith("#:"):
                found.append(f"{class_name}.{node.target.id}: no '#:' comment")
    return found


def _members(source: str, class_name: str) -> list[str]:
    tree = ast.parse(source)
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    return [
        n.name
        for n in cls.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and not n.name.startswith("_")
    ]


@pytest.mark.parametrize("protocol", ["TaskStore", "ChangeWatcher"])
def test_every_member_of_the_store_protocols_says_which_errors_it_raises(protocol: str) -> None:
    source = STORAGE.read_text()
    assert undocumented_errors(source, protocol) == [], (
        "say what the member raises (':raises X: when ...') or that it raises "
        f"{STORE_WIDE} (TaskStore's docstring lists them)"
    )
    # Not vacuous: the scan sees the members (55 of them in TaskStore).
    assert len(_members(source, protocol)) >= (50 if protocol == "TaskStore" else 4)


def test_the_store_wide_errors_are_defined_where_the_members_point() -> None:
    from hookqueue.core.storage import TaskStore

    doc = " ".join((TaskStore.__doc__ or "").split())
    assert "store-wide errors" in doc
    for name in ("StoreError", "DatabaseBusy", "CommitOutcomeUnknown", "SchemaTooNew"):
        assert name in doc


def test_the_error_scan_sees_a_member_that_says_nothing_of_its_errors() -> None:
    source = (
        "class P:\n"
        '    """A protocol."""\n'
        "    size: int\n"
        "    #: documented\n"
        "    kept: int\n"
        "    def bare(self) -> None: ...\n"
        "    def vague(self) -> None:\n"
        '        """Does a thing; may fail."""\n'
        "    def raises(self) -> None:\n"
        '        """Does a thing.\n\n        :raises KeyError: when it fails.\n        """\n'
        "    def wide(self) -> None:\n"
        '        """Does a thing. Raises only the\n        store-wide errors."""\n'
        "    def _private(self) -> None: ...\n"
    )
    assert undocumented_errors(source, "P") == [
        "P.size: no '#:' comment",
        "P.bare: no docstring",
        f"P.vague: no ':raises X: when ...' line and not {STORE_WIDE!r}",
    ]
