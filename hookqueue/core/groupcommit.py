"""Group commit: concurrent writes share one transaction, so they share one fsync.

``Queue.enqueue_async`` hands its task to a :class:`GroupCommitter`; one writer thread takes
every request waiting when it is free and writes them together. At ``durability="full"`` a
commit costs a disk sync, so a hundred coroutines enqueueing at once pay for one sync, not a
hundred. If the shared write fails, each request is written on its own, so only the one that
caused the failure fails.
"""

from __future__ import annotations

import asyncio
import queue as stdlib_queue
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - an item to write
R = TypeVar("R")  # what writing one item gives back


class GroupCommitter(Generic[I, R]):
    """One writer thread that writes every waiting request in one call of ``write``.

    :param write: ``write(items, now_us) -> results``, one result per item, all or nothing
        (one transaction).
    :param name: the writer thread's name.
    """

    def __init__(self, write: Callable[[list[I], int], list[R]], name: str) -> None:
        self._write = write
        self._requests: stdlib_queue.SimpleQueue[Any] = stdlib_queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, items: Sequence[I], now_us: int) -> Future[list[R]]:
        """Write ``items`` with whatever else is waiting; a future of their results."""
        future: Future[list[R]] = Future()
        self._requests.put((items, now_us, future))
        return future

    def submit_async(
        self, items: Sequence[I], now_us: int, waiter: asyncio.Future[list[R]]
    ) -> None:
        """Like :meth:`submit`, resolving an asyncio future of the caller's loop: the writer
        resolves every waiter of one loop in one ``call_soon_threadsafe`` per batch."""
        self._requests.put((items, now_us, waiter))

    def stop(self) -> None:
        """Write what is waiting, then end the thread (waits up to 30 s)."""
        self._requests.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while True:
                try:
                    nxt = self._requests.get_nowait()
                except stdlib_queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[Any]) -> None:
        items = [item for request_items, _, _ in batch for item in request_items]
        now_us = max(n for _, n, _ in batch)
        try:
            results = self._write(items, now_us)
        except Exception:
            if len(batch) == 1:
                exc = sys.exc_info()[1]
                assert exc is not None
                _settle_waiters([(batch[0][2], None, exc)])
                return
            # One request spoiled the batch: write each on its own so only it fails.
            for request in batch:
                self._commit([request])
            return
        offset = 0
        outcomes: list[tuple[Any, Any, BaseException | None]] = []
        for request_items, _, future in batch:
            n = len(request_items)
            outcomes.append((future, results[offset : offset + n], None))
            offset += n
        _settle_waiters(outcomes)


def _settle_waiters(outcomes: Sequence[tuple[Any, Any, BaseException | None]]) -> None:
    """Give each request its result or exception: concurrent Futures directly, asyncio
    futures with one ``call_soon_threadsafe`` per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
    for future, result, exc in outcomes:
        if isinstance(future, asyncio.Future):
            by_loop.setdefault(future.get_loop(), []).append((future, result, exc))
        elif exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    for loop, pending in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve_on_loop, pending)
        except RuntimeError:  # the caller's loop closed: nobody is waiting any more
            pass


def _resolve_on_loop(pending: Sequence[tuple[Any, Any, BaseException | None]]) -> None:
    for future, result, exc in pending:
        if future.done():  # the awaiting coroutine was cancelled
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


__all__ = ["GroupCommitter"]
