"""A power-cut simulator for SQLite: an apsw VFS that keeps, per file, what is on the platter.

Modelled on the design of SQLite's own crash layer (``src/test6.c``), written anew for apsw:

- Every write and truncate goes through to the real file at once (so reads, through the OS
  page cache, see it, as they would on a running machine), and is also queued in
  :class:`Disk` as *unsynced* for that file.
- A sync of a file makes that file's queued writes durable, and nothing else: the other
  files' unsynced writes stay unsynced (test6.c's "normal" device, which has neither
  ``IOCAP_SEQUENTIAL`` nor ``IOCAP_SAFE_APPEND``). Files are keyed by path, so a sync through
  one connection's handle covers the writes made through another's (as ``fsync`` covers an
  inode), where test6.c keys them by handle.
- At the *cut point* (the n-th sync, or the n-th write, of any file) the power goes: the sync
  or write does not happen, and every unsynced write of every file is, by a seeded RNG,
  kept, dropped or torn. The result is one image per file: the synced bytes with the kept
  and torn writes applied in the order they were made.
- From then on the machine is dead: every write, truncate and sync fails with an I/O error,
  deletes are ignored, so the process can close its connections without touching the
  images. :meth:`Disk.reboot` then puts the images in place and removes the ``-shm`` file
  (shared memory does not survive a power cut), and the database is opened again through
  the ordinary VFS, which recovers it as after a real reboot.

Tearing follows the simulated sector size and what the device claims. With
``powersafe_overwrite`` (what the unix VFS reports, and so what hookqueue runs with) a torn
write changes only bytes inside its own range: a prefix of its sectors is written, or a
random subset of them, or some of them get garbage; 512-byte sectors (the default) tear it
finely. Without it (test6.c's default device, with its 4096-byte sectors) garbage may cover
the whole of every sector the write touches, bytes outside the write included; the VFS then
reports no ``POWERSAFE_OVERWRITE`` and its sector size, so SQLite pads each synced WAL
commit to a sector boundary, as it must.

Not modelled (neither does test6.c): directory entries. A file's creation and deletion are
durable at once; hookqueue keeps the database, its WAL and its journal in one directory, and
SQLite syncs that directory when it creates a journal or WAL.

Registered under its own name (never as the default VFS, so it is safe inside pytest); a
queue uses it with ``Queue(path, vfs=NAME)``.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

#: The simulated sector: the unit a torn write is torn in (the smallest real one).
SECTOR_SIZE = 512

KEEP, DROP, TEAR = "kept", "dropped", "torn"


@dataclass
class CutPoint:
    """Where the power goes: at the ``n``-th (1-based) ``"sync"`` or ``"write"`` counted over
    every tracked file since the :class:`Disk` was made. ``None`` never cuts (then
    :meth:`Disk.cut_now` can cut between two operations)."""

    kind: str
    n: int

    def __str__(self) -> str:
        return f"{self.kind} #{self.n}"


@dataclass
class _File:
    """One path's state: the bytes on the platter (None: no such file), the writes since."""

    durable: bytearray | None
    #: ``(offset, data)`` for a write, ``(size, None)`` for a truncate, in order.
    unsynced: list[tuple[int, bytes | None]] = field(default_factory=list)


class Disk:
    """The platter under :class:`CrashVFS`: synced bytes, unsynced writes, the cut.

    :param rng: decides each unsynced write's fate at the cut (seed it).
    :param cut: where the power goes (None: only by :meth:`cut_now`).
    :param sector_size: the unit of tearing.
    :param powersafe_overwrite: a torn write damages only its own bytes (see the module
        docstring); the VFS reports the matching device characteristics.
    :param honour_syncs: False makes syncs no-ops for durability (a disk whose cache lies):
        only for tests that prove the checker finds the loss that follows.
    :param claims_powersafe_overwrite: what the VFS reports, when it is not the truth
        (None: it tells the truth); likewise only for the checker's own tests.
    """

    def __init__(
        self,
        rng: random.Random,
        cut: CutPoint | None = None,
        *,
        sector_size: int = SECTOR_SIZE,
        powersafe_overwrite: bool = True,
        honour_syncs: bool = True,
        claims_powersafe_overwrite: bool | None = None,
    ) -> None:
        self.rng = rng
        self.cut = cut
        self.sector_size = sector_size
        self.powersafe_overwrite = powersafe_overwrite
        self.honour_syncs = honour_syncs
        self.claims_powersafe_overwrite = (
            powersafe_overwrite
            if claims_powersafe_overwrite is None
            else claims_powersafe_overwrite
        )
        self.files: dict[str, _File] = {}
        #: Syncs and writes seen, over every tracked file.
        self.syncs = 0
        self.writes = 0
        #: Syncs of a WAL that returned (made its writes durable, unless the disk lies).
        self.wal_syncs = 0
        #: Syncs that returned, by file name.
        self.synced: Counter[str] = Counter()
        #: True from the cut on: every later write, truncate and sync fails.
        self.dead = False
        #: The fate of each unsynced write at the cut (kept, dropped, torn).
        self.fates: Counter[str] = Counter()
        #: What is on the platter after the cut: path -> bytes (None: no file).
        self.images: dict[str, bytes | None] = {}

    # -- what the VFS reports ------------------------------------------------------------------

    def track(self, path: str) -> None:
        """Start tracking ``path`` (just opened): what is on disk now counts as synced."""
        entry = self.files.get(path)
        if entry is None:
            data = Path(path).read_bytes() if os.path.exists(path) else b""
            self.files[path] = _File(bytearray(data))
        elif entry.durable is None:  # deleted, now created again
            entry.durable = bytearray()
            entry.unsynced.clear()

    def write(self, path: str, offset: int, data: bytes) -> None:
        """A write is about to go to the page cache; raises once the power is off."""
        self._alive("write", apsw.SQLITE_IOERR_WRITE)
        self.writes += 1
        self.files[path].unsynced.append((offset, data))
        if self.cut is not None and self.cut.kind == "write" and self.cut.n == self.writes:
            # The power goes while this write is under way: it is one of the unsynced ones.
            self._cut()
            self._alive("write", apsw.SQLITE_IOERR_WRITE)

    def truncate(self, path: str, size: int) -> None:
        """A truncate, queued like a write (never torn)."""
        self._alive("truncate", apsw.SQLITE_IOERR_TRUNCATE)
        self.files[path].unsynced.append((size, None))

    def sync(self, path: str, *, wal: bool) -> None:
        """A sync of ``path``: its unsynced writes become durable, unless this is the cut."""
        self._alive("sync", apsw.SQLITE_IOERR_FSYNC)
        self.syncs += 1
        if self.cut is not None and self.cut.kind == "sync" and self.cut.n == self.syncs:
            self._cut()
            self._alive("sync", apsw.SQLITE_IOERR_FSYNC)
        self.synced[Path(path).name] += 1
        if wal:
            self.wal_syncs += 1  # as far as SQLite knows, even on a disk that lies
        if not self.honour_syncs:
            return
        entry = self.files[path]
        assert entry.durable is not None
        for offset, data in entry.unsynced:
            _apply(entry.durable, offset, data)
        entry.unsynced.clear()

    def delete(self, path: str) -> bool:
        """A delete (durable at once); False once the power is off (then nothing happens)."""
        if self.dead:
            return False
        if path in self.files:
            self.files[path] = _File(None)
        return True

    def _alive(self, what: str, code: int) -> None:
        if self.dead:
            exc = apsw.exception_for(code)
            raise type(exc)(f"power cut: {what} after the cut")

    # -- the cut -------------------------------------------------------------------------------

    def cut_now(self) -> None:
        """Cut the power now (between two operations), if it is still on."""
        if not self.dead:
            self._cut()

    def _cut(self) -> None:
        """Decide every unsynced write's fate and freeze the platter's images."""
        self.dead = True
        for path, entry in self.files.items():
            if entry.durable is None:
                self.images[path] = None
                continue
            image = bytearray(entry.durable)
            for offset, data in entry.unsynced:
                fate = self._fate(data)
                self.fates[fate] += 1
                if fate == KEEP:
                    _apply(image, offset, data)
                elif fate == TEAR:
                    assert data is not None
                    self._tear(image, offset, data)
            self.images[path] = bytes(image)

    def _fate(self, data: bytes | None) -> str:
        # Like test6.c: kept 3/8, dropped 3/8, torn 1/4; a truncate is never torn.
        r = self.rng.randrange(8)
        if r < 2 and data is not None:
            return TEAR
        return KEEP if r < 5 else DROP

    def _tear(self, image: bytearray, offset: int, data: bytes) -> None:
        """Apply part of a write: some of its sectors, or garbage in some of them."""
        size = self.sector_size
        end = offset + len(data)
        first, last = offset // size, (end - 1) // size
        sectors = list(range(first, last + 1))
        how = self.rng.choice(("prefix", "subset", "garbage"))
        if how == "prefix" and len(sectors) > 1:
            chosen = sectors[: self.rng.randrange(1, len(sectors))]
        elif how == "subset" and len(sectors) > 1:
            chosen = [s for s in sectors if self.rng.random() < 0.5]
        else:
            how = "garbage"
            chosen = [s for s in sectors if self.rng.random() < 0.5] or [self.rng.choice(sectors)]
        for s in chosen:
            lo, hi = max(offset, s * size), min(end, (s + 1) * size)
            if how != "garbage":
                _apply(image, lo, data[lo - offset : hi - offset])
            elif self.powersafe_overwrite:
                _apply(image, lo, self.rng.randbytes(hi - lo))
            else:  # the whole sector, bytes outside this write's range included
                _apply(image, s * size, self.rng.randbytes(size))

    # -- the reboot ----------------------------------------------------------------------------

    def reboot(self, database: str | os.PathLike[str]) -> None:
        """Put the cut's images in place of the real files and drop ``database``'s -shm.

        Call it after every connection to the files is closed (a connection still open
        would write its view over the images): :raises RuntimeError: if one is open.
        """
        if not self.dead:
            raise RuntimeError("reboot() before the power was cut")
        database = os.fspath(database)
        real = os.path.realpath(database)
        still_open = [c for c in apsw.connections() if os.path.realpath(c.filename) == real]
        if still_open:
            raise RuntimeError(f"{len(still_open)} connection(s) to {database} still open")
        for path, image in self.images.items():
            if image is None:
                Path(path).unlink(missing_ok=True)
            else:
                Path(path).write_bytes(image)
        Path(database + "-shm").unlink(missing_ok=True)


def _apply(image: bytearray, offset: int, data: bytes | None) -> None:
    """Apply a write (``data``) or a truncate to ``offset`` (``data`` None) to ``image``."""
    if data is None:  # a truncate (to a larger size, it extends with zeros)
        del image[offset:]
        image.extend(bytes(offset - len(image)))
        return
    if offset > len(image):
        image.extend(bytes(offset - len(image)))
    image[offset : offset + len(data)] = data


class CrashFile(apsw.VFSFile):
    """A file of the base VFS whose writes, truncates and syncs are reported to the disk.

    Reads and locks are the base VFS's; so is shared memory (apsw hands the xShm* methods
    of the inherited file to SQLite directly), which is why the -shm file is removed by
    :meth:`Disk.reboot` rather than modelled.
    """

    def __init__(self, vfs: CrashVFS, name: Any, flags: list[int]) -> None:
        super().__init__(vfs.base, name, flags)
        self.disk = vfs.disk
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        tracked = flags[0] & (
            apsw.SQLITE_OPEN_MAIN_DB | apsw.SQLITE_OPEN_WAL | apsw.SQLITE_OPEN_MAIN_JOURNAL
        )
        self.path: str | None = path if path and tracked else None
        self.is_wal = bool(flags[0] & apsw.SQLITE_OPEN_WAL)
        if self.path is not None:
            self.disk.track(self.path)

    def xWrite(self, data: Any, offset: int) -> None:
        """Queue the write as unsynced, then write it to the page cache."""
        if self.path is not None:
            self.disk.write(self.path, offset, bytes(data))
        super().xWrite(data, offset)

    def xTruncate(self, newsize: int) -> None:
        """Queue the truncate as unsynced, then truncate the real file."""
        if self.path is not None:
            self.disk.truncate(self.path, newsize)
        super().xTruncate(newsize)

    def xSync(self, flags: int) -> None:
        """Make this file's unsynced writes durable (or cut the power here)."""
        if self.path is not None:
            self.disk.sync(self.path, wal=self.is_wal)
        super().xSync(flags)

    def xSectorSize(self) -> int:
        """The simulated sector size."""
        return self.disk.sector_size

    def xDeviceCharacteristics(self) -> int:
        """POWERSAFE_OVERWRITE when the disk claims it, else nothing."""
        return apsw.SQLITE_IOCAP_POWERSAFE_OVERWRITE if self.disk.claims_powersafe_overwrite else 0


class CrashVFS(apsw.VFS):
    """A VFS that inherits everything from ``base`` and reports writes and syncs to a
    :class:`Disk`. Set :attr:`disk` to a fresh one for each scenario."""

    def __init__(self, name: str, disk: Disk, base: str = "") -> None:
        self.base = base or apsw.vfs_names()[0]
        self.disk = disk
        super().__init__(name, base=self.base)

    def xOpen(self, name: Any, flags: list[int]) -> CrashFile:
        """Open the file through the base VFS, reporting to the disk."""
        return CrashFile(self, name, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        """Delete the file (durably); after the cut, do nothing."""
        if self.disk.delete(filename):
            super().xDelete(filename, syncdir)
