"""Shared helpers: statistics, fresh database files, machine facts, RSS.

Every workload runs on a database file of its own, in a directory of its own that is deleted
afterwards, on the same disk the user's queue would live on (the working directory given by
``--workdir``, default the system's temporary directory).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

#: The durability levels and the ``PRAGMA synchronous`` value each one means.
SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def latency_summary(ns: Sequence[int]) -> dict[str, float]:
    """p50/p99/max of durations given in nanoseconds, as microseconds."""
    return {
        "p50_us": percentile(ns, 50) / 1000.0,
        "p99_us": percentile(ns, 99) / 1000.0,
        "max_us": (max(ns) / 1000.0) if ns else float("nan"),
        "samples": len(ns),
    }


def median_of_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per numeric key, the median over runs; other values are taken from the first run.

    Keys holding numbers in every run become medians; the per-run values are kept under
    ``runs`` so the JSON shows the spread the median hides.
    """
    if not runs:
        return {}
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = statistics.median(values)  # type: ignore[type-var]
        else:
            out[key] = values[0]
    out["runs"] = list(runs)
    return out


class WorkDir:
    """Hands out fresh database paths, each in a new directory removed when it is done."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.gettempdir())
        self.root.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def fresh(self, name: str) -> Iterator[Path]:
        """A path ``<new dir>/<name>.db`` that does not exist yet; the directory is deleted
        afterwards (WAL and SHM files included)."""
        directory = Path(tempfile.mkdtemp(prefix=f"hqbench-{name}-", dir=self.root))
        try:
            yield directory / f"{name}.db"
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def file_size(path: Path) -> int:
    """Bytes of the database file plus its ``-wal`` file (what the disk holds)."""
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


def rss_kib(pid: int | None = None) -> int:
    """Resident set size of a process in KiB (Linux ``/proc``); 0 where unavailable."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    return float("nan")


def _filesystem(path: Path) -> str:
    """The mount (device and type) holding ``path``, from ``/proc/mounts``."""
    best = ("", "unknown", "unknown")
    resolved = str(path.resolve())
    with contextlib.suppress(OSError):
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                dev, mount, fstype = line.split()[:3]
                if resolved.startswith(mount) and len(mount) > len(best[0]):
                    best = (mount, dev, fstype)
    return f"{best[1]} ({best[2]}) mounted on {best[0] or '?'}"


def machine_info(workdir: Path) -> dict[str, Any]:
    """What the numbers were measured on: CPU, memory, disk, versions, load."""
    import apsw

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "sqlite": apsw.sqlite_lib_version(),
        "apsw": apsw.apsw_version(),
        "hookqueue": _version("hookqueue"),
        "huey": _version("huey"),
        "litequeue": _version("litequeue"),
        "pluggy": _version("pluggy"),
        "workdir": str(workdir),
        "filesystem": _filesystem(workdir),
        "load_average_at_start": [round(x, 2) for x in load],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
