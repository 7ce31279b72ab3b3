"""A static check that the store builds no SQL from values: every statement is a constant.

The store's contract (``hookqueue/core/store/statements.py``): "Each is a constant string with
``?`` parameters. The only SQL assembled at run time is built by the functions at the end
from constant pieces." This module checks that contract on the syntax tree of the store's
modules, read together as one (:func:`store_source`). The SQL argument of every ``execute``/``executemany`` call,
and the name and value of every ``pragma`` call, must be *safe*, where safe means built only
from:

- string literals, and module-level names bound to safe values (``SQL_*``, ``_COLS``,
  ``MIGRATIONS``, ``_ORDER_TERMS``...), and subscripts of them;
- f-strings, ``+`` and ``literal * n`` over safe parts, ``a if c else b`` with safe branches;
- ``"sep".join(x)`` where ``x`` is a safe list (a literal, a comprehension of safe items, or
  a local list whose every ``append`` is safe);
- calls of the helpers that assemble SQL from counts, flags and the closed SortKey
  vocabulary (:data:`SQL_HELPERS`: ``placeholders(n)``, ``sql_complete_held(n)``,
  ``sql_lease(keys, n_queues, n_types)``, ``order_by(keys)`` …) — and their own return
  values are checked by the same rules, so a helper that formats a value in is flagged;
- ``self.<cache>.get(...)`` for an attribute whose every stored value is safe;
- local names whose every assignment is safe.

There is no exception: the store runs no statement it is given. Anything else (a parameter, an attribute of a row, ``%`` or ``.format``) is reported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SQL_CALLS = {"execute", "executemany"}
SQL_HELPERS = {
    "placeholders",
    "order_by",
    "sql_complete_held",
    "sql_get_many",
    "sql_any_due_in_queue",
    "sql_next_due",
    "sql_list",
    "sql_lease",
    "sql_lease_window",
    "sql_lease_window_grouped",
    "sql_lease_chosen",
    "_type_filter",
    "_due_clause",
    "_filter_conditions",
    "sql_matching",
    "sql_cancel_queued_ids",
    "sql_flag_running_ids",
    "sql_requeue_ids",
    "sql_delete_ids",
    "sql_rule_running",
    "sql_rule_due",
    "sql_rule_any_due",
    "sql_limit_candidates",
    "sql_limit_fair",
    "sql_limit_buckets",
    "sql_limit_window_grouped",
    "_exclusions",
    "_part_columns",
}
#: Names imported from hookqueue.core.models that are tuples of column-name literals
#: (checked by the test against the real module).
IMPORTED_CONSTANTS = {"TASK_COLUMNS"}
#: Functions allowed to execute a statement they were given, and the guard they must set.
PASS_THROUGH: dict[str, str] = {}


def store_source(store_dir: Path) -> str:
    """The store package's modules as one source text (their imports of each other's
    names then resolve to the definitions), in a fixed order."""
    return "\n\n".join(p.read_text() for p in sorted(store_dir.glob("*.py")))


@dataclass
class _Scope:
    """What one function assigns to its local names and lists."""

    assigned: dict[str, list[ast.expr]] = field(default_factory=dict)
    appended: dict[str, list[ast.expr]] = field(default_factory=dict)


def _functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _scope(func: ast.AST) -> _Scope:
    scope = _Scope()
    for node in ast.walk(func):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    scope.assigned.setdefault(target.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            if node.value is not None:
                if isinstance(node, ast.AugAssign):
                    scope.appended.setdefault(node.target.id, []).append(node.value)
                else:
                    scope.assigned.setdefault(node.target.id, []).append(node.value)
        elif isinstance(node, ast.NamedExpr):
            scope.assigned.setdefault(node.target.id, []).append(node.value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("append", "extend", "insert")
            and isinstance(node.func.value, ast.Name)
            and node.args
        ):
            scope.appended.setdefault(node.func.value.id, []).append(node.args[-1])
    return scope


class Checker:
    """Checks one module's source; :meth:`findings` lists every unsafe SQL construction."""

    def __init__(self, source: str, filename: str = "store.py") -> None:
        self.filename = filename
        self.tree = ast.parse(source)
        self.constants: set[str] = set(IMPORTED_CONSTANTS)
        self.caches: dict[str, list[ast.expr]] = {}
        self._checking: set[str] = set()
        self._collect_constants()
        self._collect_caches()

    def _collect_constants(self) -> None:
        empty = _Scope()
        pending = {
            target.id: node.value
            for node in self.tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        }
        changed = True
        while changed:  # a constant may be built from constants defined above it
            changed = False
            for name, value in list(pending.items()):
                if self.safe(value, empty, set()):
                    self.constants.add(name)
                    del pending[name]
                    changed = True

    def _collect_caches(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if (
                        isinstance(target, ast.Subscript)
                        and isinstance(target.value, ast.Attribute)
                        and isinstance(target.value.value, ast.Name)
                        and target.value.value.id == "self"
                    ):
                        self.caches.setdefault(target.value.attr, []).append(node.value)

    # -- the rules ---------------------------------------------------------------------------

    def safe(self, node: ast.expr, scope: _Scope, seen: set[str]) -> bool:
        """True if ``node`` can only evaluate to SQL text built by the rules above."""
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str | int | float) or node.value is None
        if isinstance(node, ast.JoinedStr):
            return all(
                self.safe(v.value, scope, seen) if isinstance(v, ast.FormattedValue) else True
                for v in node.values
            )
        if isinstance(node, ast.Name):
            return self._safe_name(node.id, scope, seen)
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Add):
                return self.safe(node.left, scope, seen) and self.safe(node.right, scope, seen)
            if isinstance(node.op, ast.Mult):  # "?" * n repeats a literal
                return isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)
            return False
        if isinstance(node, ast.IfExp):
            return self.safe(node.body, scope, seen) and self.safe(node.orelse, scope, seen)
        if isinstance(node, ast.Subscript):
            return isinstance(node.value, ast.Name) and node.value.id in self.constants
        if isinstance(node, ast.Tuple | ast.List):
            return all(self.safe(e, scope, seen) for e in node.elts)
        if isinstance(node, ast.Dict):
            return all(v is not None and self.safe(v, scope, seen) for v in node.values)
        if isinstance(node, ast.ListComp | ast.GeneratorExp):
            return self.safe(node.elt, scope, seen)
        if isinstance(node, ast.Call):
            return self._safe_call(node, scope, seen)
        return False

    def _safe_name(self, name: str, scope: _Scope, seen: set[str]) -> bool:
        if name in self.constants:
            return True
        if name in seen or name not in scope.assigned:
            return False  # a parameter, a loop variable, or a cycle
        seen = seen | {name}
        values = scope.assigned[name] + scope.appended.get(name, [])
        return all(self.safe(v, scope, seen) for v in values)

    def _safe_call(self, node: ast.Call, scope: _Scope, seen: set[str]) -> bool:
        func = node.func
        if isinstance(func, ast.Name) and func.id in SQL_HELPERS:
            return True
        if isinstance(func, ast.Attribute):
            receiver = func.value
            if (
                func.attr in SQL_HELPERS
                and isinstance(receiver, ast.Name)
                and receiver.id == "self"
            ):
                return True
            if func.attr == "join" and isinstance(receiver, ast.Constant) and len(node.args) == 1:
                return self.safe(node.args[0], scope, seen)
            if (
                func.attr == "get"
                and isinstance(receiver, ast.Attribute)
                and isinstance(receiver.value, ast.Name)
                and receiver.value.id == "self"
                and receiver.attr in self.caches
            ):
                if receiver.attr in self._checking:
                    return True  # induction: the cache starts empty and only gets safe values
                self._checking.add(receiver.attr)
                try:
                    return all(self._safe_in_any_function(v) for v in self.caches[receiver.attr])
                finally:
                    self._checking.discard(receiver.attr)
        return False

    def _safe_in_any_function(self, value: ast.expr) -> bool:
        for func in _functions(self.tree):
            if any(n is value for n in ast.walk(func)):
                return self.safe(value, _scope(func), set())
        return False

    # -- the report --------------------------------------------------------------------------

    def findings(self) -> list[str]:
        """Every SQL construction that breaks the rules, as ``file:line: function: code``."""
        out: list[str] = []
        for func in _functions(self.tree):
            scope = _scope(func)
            if func.name in SQL_HELPERS:
                for ret in ast.walk(func):
                    if isinstance(ret, ast.Return) and ret.value is not None:
                        if not self.safe(ret.value, scope, set()):
                            out.append(self._where(func, ret.value, "helper returns"))
            for call in ast.walk(func):
                if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
                    continue
                attr = call.func.attr
                if attr in SQL_CALLS:
                    sql = (
                        call.args[0]
                        if call.args
                        else next(
                            (k.value for k in call.keywords if k.arg in ("statements", "sql")), None
                        )
                    )
                    if sql is None:
                        continue
                    if self.safe(sql, scope, set()):
                        continue
                    guard = PASS_THROUGH.get(func.name)
                    if (
                        guard
                        and isinstance(sql, ast.Name)
                        and sql.id in {a.arg for a in func.args.args}
                        and any(isinstance(n, ast.Name) and n.id == guard for n in ast.walk(func))
                    ):
                        continue
                    out.append(self._where(func, sql, "executes"))
                elif attr == "pragma":
                    for arg in call.args:
                        if not self.safe(arg, scope, set()):
                            out.append(self._where(func, arg, "pragma with"))
        return out

    def _where(self, func: ast.AST, node: ast.expr, what: str) -> str:
        name = getattr(func, "name", "?")
        return f"{self.filename}:{node.lineno}: {name}: {what} {ast.unparse(node)[:120]}"
