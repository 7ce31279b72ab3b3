"""Small plugins the reliability tests register in code (in tests and in child scripts)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from hookqueue import RetryDecision, hookimpl
from hookqueue.core.models import Failure, TaskEvent


class RetryCrashes:
    """A retry policy for crash tests: a task whose worker died (its lease expired) runs
    again at once; any other failure ends the task ``failed``."""

    hookqueue_name = "retry-crashes"

    @hookimpl
    def hookqueue_retry(self, failure: Failure, now: datetime) -> RetryDecision:
        """Retry crashes now; give up on anything else."""
        if failure.kind == "crash":
            return RetryDecision.at(now, "its worker died")
        return RetryDecision.give_up(failure.message)


class EventRecorder:
    """Keeps every ``TaskEvent`` the queue emits, in order."""

    hookqueue_name = "event-recorder"

    def __init__(self) -> None:
        self.events: list[TaskEvent] = []

    @hookimpl
    def hookqueue_event(self, events: Sequence[TaskEvent]) -> None:
        """Record the events."""
        self.events.extend(events)
