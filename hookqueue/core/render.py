"""How hookqueue's command line shows things: tables, durations, instants, errors — one way
for the core's subcommands and for every plugin's.

Plugins that add subcommands (``hookqueue_cli_commands``) print with these, and report a
problem by raising a :class:`~hookqueue.core.errors.HookqueueError` (a ``ValidationError``
naming the argument and the fix, usually): the command line prints it as one line,
:func:`error_line`, and exits 2 — no traceback reaches a user.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from numbers import Number
from typing import Any


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table: a header line, a rule, one line per row. A column whose values
    are all numbers is right-aligned; None shows as an empty cell."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        bool(rows) and all(isinstance(r[i], Number) and not isinstance(r[i], bool) for r in rows)
        for i in range(len(headers))
    ]

    def line(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(row, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def shorten(value: Any, width: int = 40) -> str:
    """``value`` as one line of at most ``width`` characters (JSON unless it is a string)."""
    text = (
        json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if not isinstance(value, str)
        else value
    )
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def when(value: datetime | None, tz: str | None = None) -> str:
    """An instant as ``YYYY-MM-DD HH:MM:SS`` (UTC), or an empty string; with ``tz`` (an IANA
    name), in that zone and followed by its abbreviation."""
    if value is None:
        return ""
    if tz is None:
        return value.strftime("%Y-%m-%d %H:%M:%S")
    from zoneinfo import ZoneInfo

    return value.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")


def duration(seconds: float | None) -> str:
    """A duration for people: ``12.5ms``, ``3.20s``, ``4.5m``, ``2.0h``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 120:
        return f"{seconds:.2f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def error_line(exc: BaseException) -> str:
    """The one line the command line prints for a refused command."""
    return f"hookqueue: {exc}"


def print_json(value: Any) -> None:
    """``value`` as indented, key-sorted JSON on stdout (what ``--json`` prints)."""
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


__all__ = ["duration", "error_line", "print_json", "shorten", "table", "when"]
