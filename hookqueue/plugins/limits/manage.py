"""Managing the stored limit rules: the functions behind ``hookqueue limits`` and the API.

Each takes a :class:`~hookqueue.Queue` and works through its store's named methods
(``set_limit``, ``delete_limit``, ``list_limits``, ``limit_usage``); a store that does not
implement limits refuses ``set_limit`` with a :class:`~hookqueue.core.errors.StoreError`.
"""

from __future__ import annotations

from typing import Any

from hookqueue.core.errors import HookqueueError, ValidationError
from hookqueue.core.models import LimitRule
from hookqueue.core.storage import LimitUsage


class LimitNotFound(HookqueueError, LookupError):
    """No stored limit rule has the given name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"no limit named {name!r} is stored. Fix: list them with 'hookqueue limits ls'"
        )


def set_limit(queue: Any, rule: LimitRule | str, /, **fields: Any) -> str:
    """Store a limit rule (created, or replaced as a whole); workers apply it from their next
    lease, in every process.

    :param queue: the :class:`~hookqueue.Queue`.
    :param rule: a :class:`LimitRule`, or its name with the rule's other fields as keywords
        (``set_limit(queue, "per-tenant", partition_by="tenant", concurrency=2)``).
    :returns: ``"created"``, ``"updated"`` or ``"unchanged"``.
    :raises ValidationError: a bad field (nothing is stored).
    :raises StoreError: the store does not implement limits.
    """
    if isinstance(rule, str):
        rule = LimitRule(name=rule, **fields)
    elif fields:
        raise ValidationError(
            "fields",
            sorted(fields),
            "are given beside a LimitRule",
            "pass a LimitRule, or a name and the fields",
        )
    elif not isinstance(rule, LimitRule):
        raise ValidationError(
            "rule", rule, "is not a LimitRule or a name", "e.g. LimitRule(name='api', rate=10)"
        )
    outcome: str = queue.db.set_limit(rule, queue.clock.now_us())
    # A looser rule may free held tasks: this process's workers look at once (others see
    # the commit through the store's change notification).
    queue.runtime.wake("enqueue")
    return outcome


def remove_limit(queue: Any, name: str) -> None:
    """Delete a stored rule (with its rate state and turns); the tasks it held become
    leasable at once.

    :raises LimitNotFound: no rule has that name.
    """
    if not queue.db.delete_limit(name):
        raise LimitNotFound(name)
    queue.runtime.wake("enqueue")


def list_limits(queue: Any) -> list[LimitRule]:
    """The stored rules, by name."""
    return list(queue.db.list_limits())


def get_limit(queue: Any, name: str) -> LimitRule:
    """The stored rule with this name.

    :raises LimitNotFound: no rule has that name.
    """
    rule: LimitRule
    for rule in queue.db.list_limits():
        if rule.name == name:
            return rule
    raise LimitNotFound(name)


def limit_usage(queue: Any) -> list[LimitUsage]:
    """Per stored rule and bucket with running or due tasks: how many run, are due, and wait
    on the limit now, and when a rate next allows a start."""
    return list(queue.db.limit_usage(queue.clock.now_us()))


__all__ = ["LimitNotFound", "get_limit", "limit_usage", "list_limits", "remove_limit", "set_limit"]
