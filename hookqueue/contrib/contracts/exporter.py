"""The contract every metrics exporter keeps. Subclass :class:`ExporterContract` in your tests.

An exporter is a plugin that observes ``hookqueue_event`` (and may wrap ``hookqueue_enqueue``
and ``hookqueue_execute``, e.g. for tracing, or add CLI subcommands). The contract runs it
against a real queue on a temporary SQLite file, with a fake clock, and checks that

- it registers cleanly and accepts every kind of event, in any batch, from several threads;
- tasks run, succeed, fail, retry, get cancelled and recover from a dead worker exactly as
  they would without it — results, errors, attempts and headers unchanged;
- when its backend breaks (raises on every call) no task fails, retries or changes outcome;
- if it can report what it counted, the counts are exact.

Example::

    from hookqueue.contrib.contracts.exporter import ExporterContract

    class TestMyExporter(ExporterContract):
        def make_exporter(self):
            return MyExporter()

        # optional: lets the contract check the exporter's numbers
        def counted(self, exporter, kind, task_type):
            return exporter.total(kind.value, task_type)

        # optional: lets the contract check that a broken backend never fails a task
        def break_exporter(self, exporter):
            exporter.client = AlwaysRaises()
            return True

Requires pytest (``pip install 'hookqueue[test]'``). Every test is synchronous, so no
asyncio plugin is needed.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from hookqueue import FakeClock, Queue, TaskStatus, WorkerEngine, current_execution
from hookqueue.core.errors import ValidationError
from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import EventKind, RetryDecision, Task, TaskEvent
from hookqueue.core.plugins import make_plugin_manager

__all__ = ["START", "AlwaysRaises", "ExporterContract", "RetryWhileAttemptsLeft", "make_event"]

#: The instant the contract's fake clocks start at.
START = datetime(2030, 1, 1, tzinfo=UTC)

#: The status a task has after each kind of event.
_STATUS_AFTER: dict[EventKind, TaskStatus] = {
    EventKind.ENQUEUED: TaskStatus.QUEUED,
    EventKind.STARTED: TaskStatus.RUNNING,
    EventKind.COMPLETED: TaskStatus.COMPLETED,
    EventKind.FAILED: TaskStatus.FAILED,
    EventKind.RETRY_SCHEDULED: TaskStatus.QUEUED,
    EventKind.CANCELLED: TaskStatus.CANCELLED,
    EventKind.CANCEL_REQUESTED: TaskStatus.RUNNING,
    EventKind.LEASE_EXPIRED: TaskStatus.QUEUED,
    EventKind.RELEASED: TaskStatus.QUEUED,
    EventKind.REQUEUED: TaskStatus.QUEUED,
}
_ENDS_ATTEMPT = {EventKind.COMPLETED, EventKind.FAILED, EventKind.RETRY_SCHEDULED}


def make_event(
    kind: EventKind,
    *,
    task_id: int = 1,
    task_type: str = "contract",
    at: datetime = START,
    duration: float | None = None,
    headers: dict[str, Any] | None = None,
) -> TaskEvent:
    """An event shaped as the core sends it: the task's status, attempts, timestamps and
    error match the kind of transition."""
    status = _STATUS_AFTER[kind]
    started = kind not in (EventKind.ENQUEUED, EventKind.REQUEUED)
    error = (
        "RuntimeError: contract" if kind in (EventKind.FAILED, EventKind.RETRY_SCHEDULED) else None
    )
    task = Task(
        id=task_id,
        queue="default",
        task_type=task_type,
        payload={"n": task_id},
        priority=100,
        status=status,
        attempts=1 if started else 0,
        max_attempts=3,
        run_after=at - timedelta(seconds=2),
        created_at=at - timedelta(seconds=3),
        error_message=error,
        locked_by="contract-worker" if status is TaskStatus.RUNNING else None,
        lease_expires_at=at + timedelta(seconds=10) if status is TaskStatus.RUNNING else None,
        headers=headers or {},
        started_at=at - timedelta(seconds=1) if started else None,
        finished_at=at if status.is_terminal else None,
    )
    if duration is None and kind in _ENDS_ATTEMPT:
        duration = 0.25
    return TaskEvent(
        kind=kind,
        task=task,
        at=at,
        worker_id=None if kind in (EventKind.ENQUEUED, EventKind.REQUEUED) else "contract-worker",
        duration=duration,
        error=error,
    )


class RetryWhileAttemptsLeft:
    """A minimal retry policy for the contract: run again at once while attempts are left
    (so the contract does not depend on the ``retry`` plugin)."""

    hookqueue_name = "contract-retry"

    @hookimpl(tryfirst=True)
    def hookqueue_retry(self, task: Task, now: datetime) -> RetryDecision | None:
        if task.attempts < task.max_attempts:
            return RetryDecision.at(now, "contract: attempts left")
        return RetryDecision.give_up("contract: no attempts left")


class AlwaysRaises:
    """A stand-in for a broken backend (client, provider, registry): every attribute access
    raises. Handy in :meth:`ExporterContract.break_exporter`."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"contract: the exporter's backend is broken ({name})")


class ExporterContract:
    """The tests every metrics exporter passes. Subclass it (name the subclass ``Test...``)
    and implement :meth:`make_exporter`; implement :meth:`counted` and
    :meth:`break_exporter` too when your exporter can support them.
    """

    #: Plugin names to block in the contract's queues (for example your own entry point, so
    #: a module-level copy does not run beside the instance under test). Entry points are
    #: not loaded anyway: the queue has the core, the exporter and a minimal retry policy.
    block: ClassVar[Sequence[str]] = ()

    # -- what a subclass provides --------------------------------------------------------------

    def make_exporter(self) -> Any:
        """A fresh exporter (the plugin object to register). Called once per test."""
        raise NotImplementedError("implement make_exporter() to return your exporter plugin")

    def counted(self, exporter: Any, kind: EventKind, task_type: str) -> int | None:
        """How many events of ``kind`` for ``task_type`` the exporter recorded so far, or None
        when it cannot tell (then the contract checks only that nothing breaks)."""
        return None

    def break_exporter(self, exporter: Any) -> bool:
        """Make the exporter's backend raise on every use; return False if you cannot (the
        broken-backend test is then skipped)."""
        return False

    # -- helpers -------------------------------------------------------------------------------

    @contextmanager
    def open_queue(self, path: Path, exporter: Any, clock: FakeClock) -> Iterator[Queue]:
        """A queue on ``path`` with the exporter and :class:`RetryWhileAttemptsLeft`."""
        queue = Queue(
            path,
            plugins=[exporter, RetryWhileAttemptsLeft()],
            block=self.block,
            load_entrypoints=False,
            clock=clock,
            durability="normal",
        )
        try:
            yield queue
        finally:
            queue.close()

    @staticmethod
    def hooks_of(exporter: Any) -> set[str]:
        """The hooks ``exporter`` implements."""
        pm = make_plugin_manager(load_entrypoints=False, plugins=[exporter])
        return {caller.name for caller in pm.get_hookcallers(exporter) or []}

    def check_count(self, exporter: Any, kind: EventKind, task_type: str, expected: int) -> None:
        """Assert the exporter counted ``expected`` events (when it can report counts)."""
        got = self.counted(exporter, kind, task_type)
        if got is not None:
            assert got == expected, (
                f"{kind.value} events of {task_type!r}: counted {got}, expected {expected}"
            )

    # -- the contract --------------------------------------------------------------------------

    def test_registers_and_implements_a_hook(self) -> None:
        hooks = self.hooks_of(self.make_exporter())
        assert hooks, "the exporter implements no hookqueue hook"
        assert hooks & {"hookqueue_event", "hookqueue_execute", "hookqueue_enqueue"}, (
            f"an exporter observes events or wraps execution; it implements only {sorted(hooks)}"
        )

    def test_accepts_every_event_kind(self) -> None:
        exporter = self.make_exporter()
        if "hookqueue_event" not in self.hooks_of(exporter):
            pytest.skip("the exporter does not observe hookqueue_event")
        pm = make_plugin_manager(load_entrypoints=False, plugins=[exporter])
        odd_types = ["contract", "émail ✉", "t" * 200]
        batch = [
            make_event(kind, task_id=i, task_type=odd_types[i % len(odd_types)])
            for i, kind in enumerate(list(EventKind) * len(odd_types))
        ]
        # Durations at the edges: zero, sub-microsecond and very long.
        batch += [
            make_event(EventKind.COMPLETED, task_id=900, duration=0.0),
            make_event(EventKind.COMPLETED, task_id=901, duration=1e-9),
            make_event(EventKind.FAILED, task_id=902, duration=86400.0 * 30),
        ]
        # Called through pluggy directly (not the core's isolating facade): it must not raise.
        pm.hook.hookqueue_event(events=batch)
        pm.hook.hookqueue_event(events=batch[:1])
        expected: dict[tuple[EventKind, str], int] = {}
        for event in [*batch, batch[0]]:
            key = (event.kind, event.task.task_type)
            expected[key] = expected.get(key, 0) + 1
        for (kind, task_type), n in expected.items():
            self.check_count(exporter, kind, task_type, n)

    def test_events_from_many_threads(self) -> None:
        exporter = self.make_exporter()
        if "hookqueue_event" not in self.hooks_of(exporter):
            pytest.skip("the exporter does not observe hookqueue_event")
        pm = make_plugin_manager(load_entrypoints=False, plugins=[exporter])
        threads, batches = 6, 150
        kinds = (EventKind.ENQUEUED, EventKind.STARTED, EventKind.COMPLETED)
        errors: list[BaseException] = []
        barrier = threading.Barrier(threads)

        def send(n: int) -> None:
            try:
                barrier.wait()
                for i in range(batches):
                    pm.hook.hookqueue_event(
                        events=[
                            make_event(k, task_id=n * 10_000 + i, task_type=f"t{n % 2}")
                            for k in kinds
                        ]
                    )
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        workers = [threading.Thread(target=send, args=(n,)) for n in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert not errors, errors
        for kind in kinds:
            for task_type in ("t0", "t1"):
                self.check_count(exporter, kind, task_type, threads // 2 * batches)

    def test_a_real_lifecycle_is_unchanged_and_counted(self, tmp_path: Path) -> None:
        exporter = self.make_exporter()
        clock = FakeClock(START)

        async def ok(task: Task) -> Any:
            assert current_execution().task.id == task.id
            return {"echo": task.payload}

        def flaky(task: Task) -> int:
            if task.attempts == 1:
                raise ConnectionError("first attempt fails")
            return task.attempts

        async def boom(task: Task) -> None:
            raise ValueError("always fails")

        with self.open_queue(tmp_path / "contract.db", exporter, clock) as queue:
            queue.handlers.register_handler("ok", ok)
            queue.handlers.register_handler("flaky", flaky)
            queue.handlers.register_handler("boom", boom)
            oks = [queue.enqueue("ok", {"n": i}, headers={"tenant": "a"}) for i in range(3)]
            flaky_task = queue.enqueue("flaky", max_attempts=3)
            boom_task = queue.enqueue("boom", max_attempts=2)
            cancelled = queue.enqueue("ok", {"n": "cancel me"})
            queue.cancel(cancelled.id)
            # A worker that died holding a task: its lease runs out and another worker takes
            # the task over.
            orphan = queue.enqueue_claimed(
                "dead-worker",
                lease_seconds=1.0,
                task_type="ok",
                payload={"n": "orphan"},
                max_attempts=2,
            )
            clock.advance(5)
            stats = WorkerEngine(queue, worker_id="contract-worker", concurrency=4).run_until_idle()

            for task in oks:
                got = queue.get(task.id)
                assert got.status is TaskStatus.COMPLETED, got
                assert got.result == {"echo": task.payload}
                assert got.attempts == 1
                assert got.headers.get("tenant") == "a"
            got = queue.get(flaky_task.id)
            assert (got.status, got.attempts, got.result) == (TaskStatus.COMPLETED, 2, 2)
            got = queue.get(boom_task.id)
            assert (got.status, got.attempts) == (TaskStatus.FAILED, 2)
            assert got.error_message is not None and "ValueError: always fails" in got.error_message
            assert queue.get(cancelled.id).status is TaskStatus.CANCELLED
            got = queue.get(orphan.id)
            assert (got.status, got.attempts) == (TaskStatus.COMPLETED, 2)
            assert stats.completed == 5 and stats.failed == 1 and stats.retried == 2

        self.check_count(exporter, EventKind.ENQUEUED, "ok", 5)
        self.check_count(exporter, EventKind.ENQUEUED, "flaky", 1)
        self.check_count(exporter, EventKind.STARTED, "ok", 5)
        self.check_count(exporter, EventKind.STARTED, "flaky", 2)
        self.check_count(exporter, EventKind.STARTED, "boom", 2)
        self.check_count(exporter, EventKind.COMPLETED, "ok", 4)
        self.check_count(exporter, EventKind.COMPLETED, "flaky", 1)
        self.check_count(exporter, EventKind.RETRY_SCHEDULED, "flaky", 1)
        self.check_count(exporter, EventKind.RETRY_SCHEDULED, "boom", 1)
        self.check_count(exporter, EventKind.FAILED, "boom", 1)
        self.check_count(exporter, EventKind.CANCELLED, "ok", 1)
        self.check_count(exporter, EventKind.LEASE_EXPIRED, "ok", 1)

    def test_enqueue_keeps_the_task_and_refusals(self, tmp_path: Path) -> None:
        exporter = self.make_exporter()
        with self.open_queue(tmp_path / "contract.db", exporter, FakeClock(START)) as queue:
            task = queue.enqueue(
                "ok", {"a": [1, 2]}, priority=7, delay=30, max_attempts=4,
                idempotency_key="k1", queue="mail", timeout=12.5, headers={"tenant": "a"},
            )  # fmt: skip
            stored = queue.get(task.id)
            assert stored.payload == {"a": [1, 2]}
            assert (stored.priority, stored.max_attempts, stored.queue, stored.timeout) == (
                7,
                4,
                "mail",
                12.5,
            )
            assert stored.run_after == START + timedelta(seconds=30)
            assert stored.idempotency_key == "k1"
            assert stored.headers.get("tenant") == "a"
            assert queue.enqueue("ok", idempotency_key="k1").id == task.id
            with pytest.raises(ValidationError) as info:
                queue.enqueue("ok", max_attempts=0)
            assert info.value.field == "max_attempts"
            assert queue.counts()["queued"] == 1

    def test_odd_headers_never_break_an_attempt(self, tmp_path: Path) -> None:
        exporter = self.make_exporter()

        async def ok(task: Task) -> str:
            return "done"

        odd: list[dict[str, Any]] = [
            {"traceparent": 42},
            {"traceparent": "not a trace context", "tracestate": "%%%"},
            {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},
            {"baggage": ["a", "b"], "traceparent": None},
        ]
        with self.open_queue(tmp_path / "contract.db", exporter, FakeClock(START)) as queue:
            queue.handlers.register_handler("ok", ok)
            tasks = [queue.enqueue("ok", headers=h) for h in odd]
            WorkerEngine(queue, worker_id="contract-worker").run_until_idle()
            for task, headers in zip(tasks, odd, strict=True):
                got = queue.get(task.id)
                assert (got.status, got.result, got.attempts) == (TaskStatus.COMPLETED, "done", 1)
                for key, value in headers.items():
                    assert got.headers[key] == value, "the exporter changed a header the caller set"

    def test_a_broken_backend_never_fails_a_task(self, tmp_path: Path) -> None:
        exporter = self.make_exporter()
        if not self.break_exporter(exporter):
            pytest.skip("break_exporter() is not implemented for this exporter")

        async def ok(task: Task) -> Any:
            return task.payload

        def boom(task: Task) -> None:
            raise KeyError("its own error")

        with self.open_queue(tmp_path / "contract.db", exporter, FakeClock(START)) as queue:
            queue.handlers.register_handler("ok", ok)
            queue.handlers.register_handler("boom", boom)
            oks = [queue.enqueue("ok", {"n": i}) for i in range(5)]
            bad = queue.enqueue("boom", max_attempts=1)
            cancelled = queue.enqueue("ok")
            queue.cancel(cancelled.id)
            stats = WorkerEngine(queue, worker_id="contract-worker").run_until_idle()
            for task in oks:
                got = queue.get(task.id)
                assert (got.status, got.attempts, got.result) == (
                    TaskStatus.COMPLETED,
                    1,
                    task.payload,
                )
            got = queue.get(bad.id)
            assert got.status is TaskStatus.FAILED
            assert got.error_message == "KeyError: 'its own error'"
            assert queue.get(cancelled.id).status is TaskStatus.CANCELLED
            # Nothing was retried or released because of the exporter.
            assert (stats.completed, stats.failed, stats.retried, stats.released) == (5, 1, 0, 0)

    def test_cli_commands_are_well_formed(self) -> None:
        exporter = self.make_exporter()
        if "hookqueue_cli_commands" not in self.hooks_of(exporter):
            pytest.skip("the exporter adds no CLI subcommand")
        from hookqueue.core.cli import BUILTIN_COMMANDS
        from hookqueue.core.plugins import Hooks

        commands = Hooks(
            make_plugin_manager(load_entrypoints=False, plugins=[exporter])
        ).cli_commands()
        assert commands
        for command in commands:
            assert command.name and command.name not in BUILTIN_COMMANDS, command.name
            assert command.help, f"subcommand {command.name!r} has no help text"
            assert callable(command.run)
            command.configure(argparse.ArgumentParser(prog=f"hookqueue {command.name}"))
