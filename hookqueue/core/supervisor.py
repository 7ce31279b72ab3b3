"""Running several worker processes: ``hookqueue worker --processes N``.

The supervisor starts N child processes (``python -m hookqueue worker --processes 1 ...``),
restarts one that dies unexpectedly (after a growing delay), forwards SIGINT and SIGTERM to
all of them, and waits for them to stop.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any


def child_command(args: argparse.Namespace, index: int) -> list[str]:
    """The command line of the ``index``-th worker process."""
    cmd = [
        sys.executable,
        "-m",
        "hookqueue",
        "worker",
        "--processes",
        "1",
        "--concurrency",
        str(args.concurrency),
        "--lease-seconds",
        str(args.lease_seconds),
        "--shutdown-grace",
        str(args.shutdown_grace),
        "--queues",
        *args.queues,
    ]
    if args.app:
        cmd += ["--app", args.app]
    if args.db:
        cmd += ["--db", str(args.db)]
    if args.until_idle:
        cmd.append("--until-idle")
    base = args.worker_id or f"{os.uname().nodename}-{os.getpid()}"
    cmd += ["--worker-id", f"{base}-{index}"]
    if args.verbose:
        cmd.append("-v")
    return cmd


def child_env(args: argparse.Namespace, index: int) -> dict[str, str]:
    """The environment of the ``index``-th worker process."""
    env = dict(os.environ)
    if getattr(args, "metrics_port", None) is not None:
        # Read by the prometheus plugin's worker-start hook: each process its own port.
        env["HOOKQUEUE_METRICS_PORT"] = str(args.metrics_port + index)
    return env


def supervise(args: argparse.Namespace) -> int:
    """Start ``--processes`` worker processes, restart any that dies unexpectedly (with a
    growing delay), forward SIGINT/SIGTERM to all of them, and wait for them to stop."""
    children: dict[int, subprocess.Popen[bytes]] = {}
    restarts: dict[int, int] = {}
    stopping = False

    def start(i: int) -> None:
        children[i] = subprocess.Popen(child_command(args, i), env=child_env(args, i))

    def forward(sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(sig)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(args.processes):
            start(i)
        print(
            f"supervising {args.processes} worker process(es): pids {[c.pid for c in children.values()]}",
            file=sys.stderr,
        )
        while True:
            alive = False
            for i, child in list(children.items()):
                code = child.poll()
                if code is None:
                    alive = True
                    continue
                if stopping or args.until_idle or code == 0:
                    continue
                restarts[i] = restarts.get(i, 0) + 1
                delay = min(30.0, 0.5 * 2 ** (restarts[i] - 1))
                print(
                    f"worker process {child.pid} exited with {code}; restarting in {delay:.1f}s",
                    file=sys.stderr,
                )
                time.sleep(delay)
                if not stopping:
                    start(i)
                    alive = True
            if not alive:
                break
            time.sleep(0.2)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    codes = [c.returncode for c in children.values()]
    return 0 if all(c in (0, -signal.SIGTERM, -signal.SIGINT) for c in codes) else 1


__all__ = ["child_command", "child_env", "supervise"]
