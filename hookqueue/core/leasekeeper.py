"""``LeaseKeeper``: renews a worker's leases from a thread of its own.

A lease stands for "the process holding this task is alive". Renewing it on the worker's event
loop ties it to the loop instead: an async handler that blocks the loop (``time.sleep`` or
heavy CPU work inside ``async def``) would stop the renewals, the lease would expire while the
task still runs fine, another worker would run it again, and the first run's success would
arrive too late to count. The keeper renews on its own thread, through its own store
connection, so only a dead or frozen process loses its leases.

Each beat renews every held lease in one store transaction (which also records the worker's
heartbeat), then reports back through callbacks called on the keeper's thread:

- ``on_lost(ids)`` — leases that are no longer ours (they expired and were taken over, or the
  task was ended by someone else): the attempt must stop and write nothing;
- ``on_cancel(ids)`` — tasks whose cancellation was requested.

A failed beat (the store locked or gone) is logged and retried at the next interval, then
every second until the store answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from .runtime import QueueRuntime

log = logging.getLogger("hookqueue.worker")


class LeaseKeeper:
    """Renews the leases of held tasks every ``interval`` seconds, on its own thread.

    :param runtime: the queue runtime (its store and clock).
    :param worker_id: whose leases.
    :param lease_seconds: each renewal extends a lease to now + this.
    :param interval: seconds between beats (well under ``lease_seconds``).
    :param on_lost: called with the ids of leases found lost.
    :param on_cancel: called with the ids whose cancellation was requested.
    :param beat_when_idle: beat (record the worker's heartbeat) even when no lease is held.
    :param on_beat: called on the keeper's thread after each beat interval, whether or not
        the beat succeeded (the worker checks there that its event loop is not blocked).
    :param still_running: given the held ids before each beat, returns those whose attempts
        can still finish; the others are released unrenewed, so their leases lapse and a
        worker takes them over (the adapter: a coroutine whose event loop closed).
    :param name: the thread's name.

    The thread starts on the first :meth:`hold` (or :meth:`start`); :meth:`stop` ends it.
    """

    def __init__(
        self,
        runtime: QueueRuntime,
        worker_id: str,
        *,
        lease_seconds: float,
        interval: float,
        on_lost: Callable[[set[int]], None],
        on_cancel: Callable[[set[int]], None],
        beat_when_idle: bool = False,
        on_beat: Callable[[], None] | None = None,
        still_running: Callable[[list[int]], list[int]] | None = None,
        name: str = "hookqueue-lease-keeper",
    ) -> None:
        self.runtime = runtime
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.interval = interval
        self._on_lost = on_lost
        self._on_cancel = on_cancel
        self._beat_when_idle = beat_when_idle
        self._on_beat = on_beat
        self._still_running = still_running
        self._name = name
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._beat_now = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        #: Beats made (each one store transaction), for tests and diagnostics.
        self.beats = 0
        #: When the last beat succeeded (``time.monotonic()``), or None.
        self.last_beat: float | None = None

    # -- what the worker calls -----------------------------------------------------------------

    def start(self) -> None:
        """Start the thread now (it also starts on the first :meth:`hold`)."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def hold(self, task_ids: Iterable[int]) -> None:
        """Renew these tasks' leases from now on."""
        with self._lock:
            self._held.update(task_ids)
            self._start_locked()

    def release(self, task_ids: Iterable[int]) -> None:
        """Stop renewing these tasks' leases (their attempts ended)."""
        with self._lock:
            self._held.difference_update(task_ids)

    def held(self) -> set[int]:
        """The ids whose leases are being renewed."""
        with self._lock:
            return set(self._held)

    def beat_now(self) -> None:
        """Beat at once (e.g. to pick up a cancellation without waiting for the interval)."""
        with self._lock:
            self._beat_now = True
            self._start_locked()
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """End the thread (after a beat in progress). Idempotent."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        next_beat = time.monotonic() + self.interval
        failing = False
        while True:
            timeout = max(0.0, next_beat - time.monotonic())
            if failing:
                timeout = max(timeout, 1.0)
            self._wake.wait(timeout)
            self._wake.clear()
            with self._lock:
                if self._stopped:
                    return
                now_asked, self._beat_now = self._beat_now, False
                held = sorted(self._held)
            if not now_asked and time.monotonic() < next_beat:
                continue
            next_beat = time.monotonic() + self.interval
            if held or self._beat_when_idle:
                failing = not self._beat(held)
            if self._on_beat is not None:
                try:
                    self._on_beat()
                except Exception:
                    log.debug("lease keeper on_beat failed", exc_info=True)

    def _beat(self, held: list[int]) -> bool:
        if self._still_running is not None and held:
            alive = self._still_running(held)
            dropped = set(held) - set(alive)
            if dropped:
                self.release(dropped)
            held = alive
            if not held and not self._beat_when_idle:
                return True
        try:
            kept, cancel = self.runtime.heartbeat(self.worker_id, held, self.lease_seconds)
        except Exception as exc:
            log.warning(
                "worker %s: renewing %d lease(s) failed (%s); retrying",
                self.worker_id,
                len(held),
                exc,
            )
            return False
        self.beats += 1
        self.last_beat = time.monotonic()
        with self._lock:
            # Attempts that ended while the beat ran are not lost: they were released.
            lost = (set(held) - kept) & self._held
            cancel &= self._held
        if lost:
            self._call(self._on_lost, lost)
        if cancel:
            self._call(self._on_cancel, cancel)
        return True

    def _call(self, callback: Callable[[set[int]], None], ids: set[int]) -> None:
        try:
            callback(ids)
        except Exception:  # the worker's loop closed under us: nothing left to tell
            log.debug("lease keeper callback failed", exc_info=True)


__all__ = ["LeaseKeeper"]
