"""The ``limits`` plugin's hooks.

- ``hookqueue_lease`` (a wrapper around the scheduler's decision): the plan the scheduler
  chose, asking the store to apply the stored limit rules too (``stored_limits=True``). The
  order stays the scheduler's; the store applies the rules in the lease's transaction.
- ``hookqueue_cli_commands``: ``hookqueue limits ls|set|rm``.
- ``hookqueue_dashboard_pages``: the dashboard's *Limits* page (only where a dashboard is
  built).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import attrs

from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import CliCommand, LeasePlan, LeaseRequest

#: The last plan seen and its copy with ``stored_limits``: schedulers return the same plan
#: object on every lease, so the copy is made once.
_last: tuple[LeasePlan | None, LeasePlan | None] = (None, None)


@hookimpl(wrapper=True)
def hookqueue_lease(queue: Any, request: LeaseRequest) -> Generator[None, Any, LeasePlan | None]:
    """Ask the store to keep the stored limits on whatever plan the scheduler chose."""
    global _last
    plan: LeasePlan | None = yield
    if plan is None or plan.stored_limits:
        return plan
    seen, limited = _last
    if seen is plan and limited is not None:
        return limited
    limited = attrs.evolve(plan, stored_limits=True)
    _last = (plan, limited)
    return limited


@hookimpl
def hookqueue_cli_commands() -> list[CliCommand]:
    """Contribute ``hookqueue limits``."""
    from .cli import LIMITS_COMMAND

    return [LIMITS_COMMAND]


@hookimpl(optionalhook=True)
def hookqueue_dashboard_pages() -> list[Any]:
    """Contribute the dashboard's *Limits* page. Only a dashboard being built calls this
    hook, so the page's module (and the dashboard's records) are imported only then."""
    from .dashboard import limits_page

    return [limits_page()]


__all__ = ["hookqueue_cli_commands", "hookqueue_dashboard_pages", "hookqueue_lease"]
