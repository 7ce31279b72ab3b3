"""Knowing when another process may have committed, without polling while nothing happens.

A commit in WAL mode writes its pages to the ``-wal`` file first; then it becomes visible
(the shared-memory index is updated, which no file event reports). A worker therefore polls
``PRAGMA data_version`` to see commits, but only while the log is being written: on Linux,
:class:`WalActivity` blocks on an inotify watch of the database's directory until the log is
written, so an idle worker sleeps instead of waking a thousand times a second (about 4 % of a
core per idle worker on the development machine). Elsewhere, or when inotify cannot be set
up, :meth:`WalActivity.open` returns None and the worker polls all the time, as before.

inotify is reached through ``ctypes`` (the standard library has no binding), so the core
keeps its three dependencies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import struct
import sys
from pathlib import Path

log = logging.getLogger("hookqueue.store")

# <sys/inotify.h>
_IN_MODIFY = 0x00000002
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_Q_OVERFLOW = 0x00004000
#: struct inotify_event: int wd; uint32_t mask, cookie, len; char name[len]
_EVENT = struct.Struct("iIII")


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_init1.restype = ctypes.c_int
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_add_watch.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


class WalActivity:
    """Waits until a database's write-ahead log is written by any process (Linux inotify).

    Use :meth:`open`; call :meth:`wait` from one thread, :meth:`interrupt` from any thread,
    and :meth:`close` from the waiting thread when done.
    """

    def __init__(self, inotify_fd: int, wal_name: bytes) -> None:
        self._fd = inotify_fd
        self._wal_name = wal_name
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN)
        self._poller.register(self._wake_r, select.POLLIN)
        self.closed = False

    @classmethod
    def open(cls, db_path: str | os.PathLike[str]) -> WalActivity | None:
        """Watch ``db_path``'s log, or None where inotify is not available."""
        if not sys.platform.startswith("linux"):
            return None
        libc = _libc()
        if libc is None:
            return None
        # SQLite follows a symlinked database to its target and keeps the log there.
        path = Path(os.path.realpath(db_path))
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            log.debug("inotify_init1 failed (errno %d); polling for commits", ctypes.get_errno())
            return None
        # The directory, not the file: the log may not exist yet, and may be recreated.
        mask = _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO
        if libc.inotify_add_watch(fd, os.fsencode(path.parent), mask) < 0:
            log.debug(
                "inotify_add_watch(%s) failed (errno %d); polling for commits",
                path.parent,
                ctypes.get_errno(),
            )
            os.close(fd)
            return None
        return cls(fd, os.fsencode(path.name) + b"-wal")

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds (0: just look); True if the log was written since
        the last call (or the watch overflowed, so it may have been). False on a timeout or
        after :meth:`interrupt`."""
        if self.closed:
            return False
        ready = self._poller.poll(max(0, int(timeout * 1000)))
        written = False
        for fd, _ in ready:
            if fd == self._fd:
                written = self._drain()
            else:  # interrupted: empty the pipe so the next wait blocks again
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
        return written

    def _drain(self) -> bool:
        written = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return written
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                name = data[start : start + length].rstrip(b"\0")
                if mask & _IN_Q_OVERFLOW or name == self._wal_name:
                    written = True
                offset = start + length

    def interrupt(self) -> None:
        """Make a :meth:`wait` in another thread return now (thread-safe)."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # closed, or the pipe is full: a wake-up is pending anyway
            pass

    def close(self) -> None:
        """Release the watch (call from the thread that waits, once it stopped waiting)."""
        if self.closed:
            return
        self.closed = True
        for fd in (self._fd, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:  # pragma: no cover - already closed
                pass


__all__ = ["WalActivity"]
