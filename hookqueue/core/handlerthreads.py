"""``HandlerThreads``: the threads sync handlers run in, which never keep a process alive.

``concurrent.futures.ThreadPoolExecutor`` joins its threads when the interpreter exits, so a
sync handler that never returns (a hung socket read, even after its timeout fired: a thread
cannot be interrupted) would keep a worker process alive after SIGTERM for ever. These threads
are daemon threads that nothing joins: once the worker has released the stuck attempt's lease
at shutdown, the process exits and the thread goes with it.
"""

from __future__ import annotations

import queue as stdlib_queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")


class HandlerThreads(Executor):
    """An executor of at most ``max_workers`` daemon threads, started as work arrives.

    :param max_workers: the most threads (the worker's concurrency).
    :param name: the threads' name prefix.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max_workers
        self._name = name
        self._work: stdlib_queue.SimpleQueue[Any] = stdlib_queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._shutdown = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on one of the threads."""
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot run a handler after the worker shut down")
            self._work.put((future, fn, args, kwargs))
            if self._idle > 0:
                self._idle -= 1  # an idle thread takes it
            elif len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # handed to the awaiting attempt
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del item, future, fn, args, kwargs
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; idle threads end. ``wait`` joins threads that are not stuck in a
        handler (those end when the handler returns, or with the process)."""
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except stdlib_queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()


__all__ = ["HandlerThreads"]
