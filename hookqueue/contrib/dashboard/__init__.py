"""The web dashboard (extra ``hookqueue[web]``): ``hookqueue dashboard``, or mount
:func:`create_app` in your own ASGI app.

Everything is read from the database, so any process can serve it. See ``docs/dashboard.md``.

The names below are imported on first use, so that loading the ``dashboard`` plugin (every
``Queue`` loads the entry points) does not import Starlette and Jinja2 into workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Dashboard, create_app
    from .hookspecs import DashboardPage, PageRequest

__all__ = ["Dashboard", "DashboardPage", "PageRequest", "create_app"]

_WHERE = {
    "Dashboard": ".app",
    "create_app": ".app",
    "DashboardPage": ".hookspecs",
    "PageRequest": ".hookspecs",
}


def __getattr__(name: str) -> Any:
    """Import ``create_app``, ``Dashboard``, ``DashboardPage`` and ``PageRequest`` lazily."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value
