"""Running several worker processes: ``hookqueue worker --processes N``.

The supervisor starts N child processes (``python -m hookqueue worker --processes 1 ...``),
restarts one that dies unexpectedly (after a growing delay) or that finished its
``--max-tasks-per-child`` (at once), forwards SIGINT and SIGTERM to all of them, and waits for
them to stop. A child that exits 2 refused its command line (a bad ``--app``, a database it
cannot open): every child would refuse the same way, so the supervisor stops them all and
exits 2 instead of restarting them for ever.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any


def child_command(args: argparse.Namespace, index: int, *, restart: bool = False) -> list[str]:
    """The command line of the ``index``-th worker process (``restart``: a replacement,
    which prints no banner)."""
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
    if getattr(args, "all_queues", False):
        cmd.append("--all-queues")
    if getattr(args, "max_tasks_per_child", None):
        cmd += ["--max-tasks-per-child", str(args.max_tasks_per_child)]
    if getattr(args, "prune_every", None) and index == 0:
        # One process prunes for the group (the others would only wait for its lock).
        cmd += ["--prune-every", f"{args.prune_every.total_seconds()}s"]
    if getattr(args, "quiet", False) or index > 0 or restart:
        # One banner is enough: the first child prints it for all of them.
        cmd.append("--quiet")
    else:
        cmd += ["--total-processes", str(args.processes)]
    if getattr(args, "no_scheduler", False):
        cmd.append("--no-scheduler")
    base = args.worker_id or f"{os.uname().nodename}-{os.getpid()}"
    cmd += ["--worker-id", f"{base}-{index}"]
    if args.verbose:
        cmd.append("-v")
    if getattr(args, "log_level", None):
        cmd += ["--log-level", args.log_level]
    if getattr(args, "log_format", "text") != "text":
        cmd += ["--log-format", args.log_format]
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
    refused = False

    def start(i: int) -> None:
        command = child_command(args, i, restart=i in children)
        children[i] = subprocess.Popen(command, env=child_env(args, i))

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
                if stopping:
                    continue
                if code == 2:
                    # The child refused its command line; so would every restart.
                    print(
                        f"worker process {child.pid} refused to start (exit 2); stopping all",
                        file=sys.stderr,
                    )
                    forward(signal.SIGTERM, None)
                    refused = True
                    continue
                if args.until_idle:
                    continue
                if code == 0:
                    if not getattr(args, "max_tasks_per_child", None):
                        continue
                    start(i)  # recycled after --max-tasks-per-child: replace it at once
                    alive = True
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
    if refused:
        return 2
    codes = [c.returncode for c in children.values()]
    return 0 if all(c in (0, -signal.SIGTERM, -signal.SIGINT) for c in codes) else 1


__all__ = ["child_command", "child_env", "supervise"]
