"""How the ``hookqueue`` command logs: a level and a format (``text`` or ``json``).

``--log-format json`` writes one JSON object per line — ``time``, ``level``, ``logger``,
``message`` and every structured field a record carries as ``extra`` (the ``tasklog``
plugin's ``task_id``, ``task_type``, ``attempt``, ``duration`` …) — for log shippers.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

#: The attributes every LogRecord has; anything else on a record came as ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

#: The levels the command line accepts.
LEVELS = ("debug", "info", "warning", "error")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docs)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(level: str = "warning", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send hookqueue's (and the root logger's) records to ``stream`` (stderr) at ``level``,
    as ``text`` or ``json`` lines. Replaces the handlers an earlier call installed."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.hookqueue_handler = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "hookqueue_handler", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


__all__ = ["LEVELS", "JsonFormatter", "configure"]
