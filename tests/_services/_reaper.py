"""Stops a test PostgreSQL cluster and deletes its directory when its owner is done or gone.

Run by ``postgres.PostgresServer`` as ``python _reaper.py SPEC`` (SPEC: JSON with ``command``,
the prefix that runs a program as the server's user; ``pg_ctl``; ``datadir``; ``root``, the
directory to delete; ``env``) in a session of its own, with a pipe from the owner (the pytest
process) as its standard input. It waits for a line on that pipe ("stop": a normal teardown)
or for end of file: the owner exited without tearing down — killed (``kill -9``, pytest-timeout's
thread method, the OOM killer, CI's time limit) — and the kernel closed the pipe. Either way it
stops the cluster and deletes the directory, so no server outlives the test session.

The owner's normal teardown goes through this same code, so the path that runs after a crash is
the one every test session exercises. Only the standard library is imported: it must start fast
and must not depend on the test environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def _postmaster_pid(datadir: Path) -> int | None:
    """The postmaster's pid from ``postmaster.pid`` (None: the server is not running)."""
    try:
        first = (datadir / "postmaster.pid").read_text().splitlines()[0]
        return int(first)
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, datadir: Path) -> bool:
    """True while ``pid`` is a live (not zombie) postmaster of ``datadir``; a pid the kernel
    reused for another program does not count."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X") and str(datadir).encode() in cmdline


def _wait_gone(pid: int, datadir: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid, datadir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_cluster(spec: dict[str, object]) -> list[str]:
    """Stop the cluster: ``pg_ctl stop -m fast``, then ``-m immediate``, then SIGKILL.
    Returns what went wrong (empty: the server is gone)."""
    datadir = Path(str(spec["datadir"]))
    pid = _postmaster_pid(datadir)
    if pid is None or not _alive(pid, datadir):
        return []
    problems: list[str] = []
    prefix = [str(a) for a in spec["command"]]  # type: ignore[attr-defined]
    env = {str(k): str(v) for k, v in spec["env"].items()}  # type: ignore[attr-defined]
    for mode, seconds in (("fast", 30), ("immediate", 10)):
        try:
            done = subprocess.run(
                [
                    *prefix,
                    str(spec["pg_ctl"]),
                    "-D",
                    str(datadir),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    str(seconds),
                    "stop",
                ],
                env=env,
                cwd=str(spec["root"]),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=seconds + 10,
            )
            if done.returncode != 0:
                problems.append(f"pg_ctl stop -m {mode}: {done.stdout}{done.stderr}".strip())
        except (OSError, subprocess.TimeoutExpired) as exc:
            problems.append(f"pg_ctl stop -m {mode}: {exc}")
        if _wait_gone(pid, datadir, 5):
            return []
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as exc:
        problems.append(f"kill -9 {pid}: {exc}")
    if _wait_gone(pid, datadir, 10):
        return []
    problems.append(f"the postmaster (pid {pid}) of {datadir} is still running")
    return problems


def main() -> int:
    spec = json.loads(sys.argv[1])
    # Ctrl-C in the owner's terminal is the owner's to handle; this process only waits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.readline()  # "stop\n" from the owner, or b"" once it is gone
    problems = stop_cluster(spec)
    root = Path(spec["root"])
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        problems.append(f"could not delete {root}")
    if not problems:
        return 0
    try:
        print("; ".join(problems), file=sys.stderr, flush=True)
    except OSError:  # the owner is gone and nobody reads the pipe
        pass
    return 1


if __name__ == "__main__":
    sys.exit(main())
