"""The in-memory BackgroundTaskManager: the original's behaviour, and the fixes COMPAT.md decides."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import Callable

import pytest

from hookqueue import FakeClock, ValidationError
from hookqueue.plugins.adapter import (
    BackgroundTaskManager,
    NoRunningLoop,
    Run,
    RunAlreadyActive,
    RunRegistry,
    RunStatus,
)


async def test_a_run_goes_running_then_completed_with_timestamps(
    make_run: Callable[..., Run], clock: FakeClock
) -> None:
    registry = RunRegistry()
    manager = BackgroundTaskManager(registry, clock=clock)
    run = make_run()
    seen: list[RunStatus] = []

    async def work() -> str:
        seen.append(registry.get_run(run.run_id).status)  # type: ignore[union-attr]
        clock.advance(2.5)
        return "done"

    assert manager.start_task(run, work()) == run.run_id
    assert run.status is RunStatus.RUNNING and run.started_at == clock.now()
    assert manager.is_task_active(run.run_id)
    assert await manager.wait_all() is True
    assert seen == [RunStatus.RUNNING]
    assert run.status is RunStatus.COMPLETED and run.exit_code == 0
    assert run.completed_at == clock.now()
    assert run.duration_seconds == 2.5
    assert manager.tasks == {} and not manager.is_task_active(run.run_id)


async def test_a_failure_is_recorded_logged_and_swallowed(
    make_run: Callable[..., Run], caplog: pytest.LogCaptureFixture
) -> None:
    manager = BackgroundTaskManager(RunRegistry())
    run = make_run()

    async def work() -> None:
        raise ValueError("disk full")

    manager.start_task(run, work())
    with caplog.at_level(logging.ERROR, logger="hookqueue.adapter"):
        assert await manager.wait_all() is True
    assert run.status is RunStatus.FAILED and run.error_message == "disk full"
    assert run.exit_code is None and run.duration_seconds is not None
    assert "disk full" in caplog.text and "ValueError" in caplog.text


async def test_cancel_task_cancels_and_awaits(make_run: Callable[..., Run]) -> None:
    manager = BackgroundTaskManager(RunRegistry())
    run = make_run()
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.sleep(3600)

    manager.start_task(run, work())
    await started.wait()
    assert await manager.cancel_task(run.run_id) is True
    assert run.status is RunStatus.CANCELLED and run.completed_at is not None
    assert manager.get_active_task_count() == 0
    assert await manager.cancel_task(run.run_id) is False  # finished
    assert await manager.cancel_task("unknown") is False


async def test_cancelling_before_the_first_step_ends_cancelled_and_untracked(
    make_run: Callable[..., Run],
) -> None:
    manager = BackgroundTaskManager(RunRegistry())
    run = make_run()
    stepped: list[bool] = []

    async def work() -> None:
        stepped.append(True)

    manager.start_task(run, work())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine was never awaited" would fail here
        assert await manager.cancel_task(run.run_id) is True
        gc.collect()
    assert stepped == []
    assert run.status is RunStatus.CANCELLED
    assert manager.get_active_task_ids() == [] and manager.tasks == {}


async def test_a_coroutine_that_swallows_cancellation_is_not_reported_cancelled(
    make_run: Callable[..., Run],
) -> None:
    manager = BackgroundTaskManager(RunRegistry())
    run = make_run()
    started = asyncio.Event()

    async def stubborn() -> str:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "finished anyway"
        return "unreachable"

    manager.start_task(run, stubborn())
    await started.wait()
    assert await manager.cancel_task(run.run_id) is False
    assert run.status is RunStatus.COMPLETED


async def test_starting_an_active_run_id_again_is_refused(make_run: Callable[..., Run]) -> None:
    manager = BackgroundTaskManager(RunRegistry())
    run = make_run()
    gate = asyncio.Event()

    async def work() -> None:
        await gate.wait()

    manager.start_task(run, work())
    second = work()
    with pytest.raises(RunAlreadyActive, match=f"run_id='{run.run_id}' is already active"):
        manager.start_task(run, second)
    assert second.cr_frame is None  # closed: no "never awaited" warning later
    gate.set()
    await manager.wait_all()
    manager.start_task(run, work())  # finished runs may be started again
    gate.set()
    await manager.wait_all()


def test_outside_a_running_loop_start_task_raises_and_leaks_nothing(
    make_run: Callable[..., Run],
) -> None:
    manager = BackgroundTaskManager(RunRegistry())
    run = make_run()

    async def work() -> None:
        return None

    coro = work()
    with pytest.raises(NoRunningLoop, match="needs a running asyncio event loop"):
        manager.start_task(run, coro)
    assert coro.cr_frame is None
    assert run.status is RunStatus.QUEUED and manager.tasks == {}
    assert manager.registry.get_run(run.run_id) is None


async def test_a_function_instead_of_a_coroutine_gets_a_clear_error(
    make_run: Callable[..., Run],
) -> None:
    async def work() -> None:
        return None

    with pytest.raises(
        ValidationError,
        match=r"coro=.* is not awaitable. Fix: call it: start_task\(run, work\(\)\)",
    ):
        BackgroundTaskManager().start_task(make_run(), work)  # type: ignore[arg-type]


async def test_wait_all_never_raises_and_covers_runs_started_while_waiting(
    make_run: Callable[..., Run],
) -> None:
    manager = BackgroundTaskManager(RunRegistry())
    later = make_run()

    async def spawner() -> None:
        await asyncio.sleep(0)
        manager.start_task(later, failing())

    async def failing() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    manager.start_task(make_run(), spawner())
    assert await manager.wait_all() is True
    assert later.status is RunStatus.FAILED


async def test_wait_all_with_a_timeout_returns_false_while_runs_go_on(
    make_run: Callable[..., Run],
) -> None:
    manager = BackgroundTaskManager(RunRegistry())
    gate = asyncio.Event()
    run = make_run()

    async def work() -> None:
        await gate.wait()

    manager.start_task(run, work())
    assert await manager.wait_all(timeout=0.01) is False
    assert manager.get_active_task_ids() == [run.run_id] and manager.get_active_task_count() == 1
    gate.set()
    assert await manager.wait_all(timeout=5) is True


async def test_active_counts_are_only_running_runs(make_run: Callable[..., Run]) -> None:
    manager = BackgroundTaskManager(RunRegistry())
    gate = asyncio.Event()

    async def wait() -> None:
        await gate.wait()

    async def quick() -> None:
        return None

    slow_run, quick_run = make_run(), make_run()
    manager.start_task(slow_run, wait())
    manager.start_task(quick_run, quick())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert manager.get_active_task_ids() == [slow_run.run_id]
    assert manager.is_task_active(slow_run.run_id) and not manager.is_task_active(quick_run.run_id)
    gate.set()
    await manager.wait_all()
    assert manager.get_active_task_count() == 0
