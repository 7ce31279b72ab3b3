"""Limits: concurrency limits, rate limits and round-robin fairness, exact across every worker
process (docs/limits.md).

Store a rule and every worker keeps it from its next lease on::

    from hookqueue.plugins.limits import LimitRule, set_limit

    set_limit(queue, LimitRule(name="payments-api", task_type="charge", rate=10, period=1.0))
    set_limit(queue, LimitRule(name="per-tenant", partition_by="tenant", concurrency=2))
    set_limit(queue, LimitRule(name="turns", partition_by="tenant", fair=True))

or from the shell: ``hookqueue limits set per-tenant --partition-by tenant --concurrency 2``.

Rules live in the database. The plugin answers ``hookqueue_lease`` around the scheduler's
plan (a wrapper: the scheduler still orders the tasks) by asking the store to apply the
stored rules, which it does inside the lease's one transaction: it counts the running tasks
of each rule's buckets, keeps each rate's state and each fair rule's turns, and leases only
what the rules allow. A task held back stays ``queued`` and spends no attempt; workers sleep
until a settlement frees a slot (the store's change notification) or a rate allows the next
start (their wake-up delay), never polling.

Public names: :class:`LimitRule`, :class:`LimitUsage`, :func:`set_limit`,
:func:`remove_limit`, :func:`list_limits`, :func:`get_limit`, :func:`limit_usage`,
:class:`LimitNotFound`.

The package is also the ``limits`` plugin (entry point ``hookqueue.limits``; block it with
``HOOKQUEUE_DISABLE_PLUGINS=limits``, after which stored rules are not applied): its hooks are
in :mod:`.plugin`. Where a web dashboard is built, it adds the *Limits* page (:mod:`.dashboard`).
"""

from __future__ import annotations

from hookqueue.core.models import LimitRule
from hookqueue.core.storage import LimitUsage

from .manage import LimitNotFound, get_limit, limit_usage, list_limits, remove_limit, set_limit
from .plugin import hookqueue_cli_commands, hookqueue_dashboard_pages, hookqueue_lease

__all__ = [
    "LimitNotFound",
    "LimitRule",
    "LimitUsage",
    "get_limit",
    "hookqueue_cli_commands",
    "hookqueue_dashboard_pages",
    "hookqueue_lease",
    "limit_usage",
    "list_limits",
    "remove_limit",
    "set_limit",
]
