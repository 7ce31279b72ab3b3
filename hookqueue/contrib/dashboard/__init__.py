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
    from .hookspecs import ActionRequest, DashboardPage, PageRequest

__all__ = ["ActionRequest", "Dashboard", "DashboardPage", "PageRequest", "create_app"]


def __getattr__(name: str) -> Any:
    """Import ``create_app``, ``Dashboard``, ``DashboardPage``, ``PageRequest`` and
    ``ActionRequest`` on first use (static imports: nothing is imported by a name that comes
    from outside)."""
    if name in ("Dashboard", "create_app"):
        from . import app as module
    elif name in ("ActionRequest", "DashboardPage", "PageRequest"):
        from . import hookspecs as module  # type: ignore[no-redef]
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value
