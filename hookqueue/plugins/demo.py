"""``hookqueue demo``: enqueue a realistic batch and work it with several worker processes.

A first-party plugin (entry point ``demo``) that adds the ``demo`` subcommand, the README's
main job. The handlers below are what the worker processes run (``hookqueue worker --app
hookqueue.plugins.demo:registry``). The batch mixes task types, priorities, delayed tasks, a
webhook that fails before it succeeds and an import that always fails, so every part of the
lifecycle shows up in the summary.

``hookqueue demo --json`` prints the progress on standard error and the final summary as one
JSON object on standard output.

The demo works on a database of its own (``demo.db`` in the user's data directory, or
``--db``), which it starts afresh each run. It only ever deletes a database it made itself —
marked by a file beside it (``<db>.hookqueue-demo``) — and refuses any other existing file.
"""

from __future__ import annotations

import argparse
import asyncio
import queue as stdlib_queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hookqueue import QueueDatabase
from hookqueue.core.cli import positive_int
from hookqueue.core.errors import ValidationError
from hookqueue.core.handlers import TaskHandlerRegistry
from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import CliCommand, Task, TaskStatus
from hookqueue.core.plugins import plugin_statuses
from hookqueue.core.queue import Queue
from hookqueue.core.render import print_json

#: The handlers the demo's worker processes run.
registry = TaskHandlerRegistry()


@registry.handler("resize_image", description="an async I/O-bound task")
async def resize_image(task: Task) -> dict[str, Any]:
    """Pretend to make a thumbnail (async, I/O-bound)."""
    await asyncio.sleep(random.uniform(0.005, 0.03))
    width = task.payload["width"]
    return {"thumbnail": f"{task.payload['image']}-thumb.jpg", "width": width // 4}


@registry.handler("send_email", description="a sync task, run in the worker's thread pool")
def send_email(task: Task) -> dict[str, Any]:
    """Pretend to send an email (sync: runs in the worker's thread pool)."""
    time.sleep(random.uniform(0.002, 0.01))
    return {"delivered_to": task.payload["to"]}


@registry.handler("generate_report", description="a slower, high-priority task")
async def generate_report(task: Task) -> dict[str, Any]:
    """A slower task, enqueued with a high priority."""
    await asyncio.sleep(0.1)
    return {"rows": sum(range(task.payload["rows"]))}


@registry.handler("flaky_webhook", description="fails on its first attempt, then succeeds")
async def flaky_webhook(task: Task) -> str:
    """Fail on the first attempt, succeed on the second (the retry plugin retries it)."""
    if task.attempts < 2:
        raise ConnectionError(f"{task.payload['url']} timed out (attempt {task.attempts})")
    return "200 OK"


@registry.handler("import_feed", description="always fails: the feed is malformed")
def import_feed(task: Task) -> None:
    """Always fail, so the summary shows a task that used up its attempts."""
    raise ValueError(f"feed {task.payload['feed']} is not valid XML")


def build_batch(n: int) -> list[dict[str, Any]]:
    """About ``n`` tasks in a realistic mix."""
    rng = random.Random(7)
    batch: list[dict[str, Any]] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.45:
            batch.append(
                {
                    "task_type": "resize_image",
                    "payload": {"image": f"img-{i}", "width": rng.choice([800, 1600, 3200])},
                }
            )
        elif roll < 0.85:
            batch.append(
                {
                    "task_type": "send_email",
                    "payload": {"to": f"user{i}@example.com"},
                    "priority": 50,
                }
            )
        elif roll < 0.90:
            batch.append(
                {"task_type": "generate_report", "payload": {"rows": 10_000}, "priority": 10}
            )
        elif roll < 0.97:
            batch.append(
                {
                    "task_type": "send_email",
                    "payload": {"to": f"later{i}@example.com"},
                    "delay": rng.uniform(1, 4),
                }
            )
        else:
            batch.append(
                {
                    "task_type": "flaky_webhook",
                    "payload": {"url": f"https://hooks.example.com/{i}"},
                    "max_attempts": 3,
                }
            )
    batch.append({"task_type": "import_feed", "payload": {"feed": "news.xml"}, "max_attempts": 2})
    return batch


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return "#" * filled + "." * (width - filled)


#: The file beside a database the demo made: only such a database is ever deleted.
MARKER_SUFFIX = ".hookqueue-demo"


def _marker(path: Path) -> Path:
    return Path(f"{path}{MARKER_SUFFIX}")


def _start_afresh(path: Path) -> None:
    """Delete the demo's own previous database (and its -wal/-shm); refuse any other file."""
    if path.exists() and not _marker(path).exists():
        raise ValidationError(
            "--db",
            str(path),
            "exists and was not made by the demo, which would delete it",
            "pass a path that does not exist yet (or one an earlier demo made)",
        )
    for suffix in ("", "-wal", "-shm"):
        candidate = Path(f"{path}{suffix}")
        if candidate.exists():
            candidate.unlink()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _marker(path).touch(mode=0o600)


def main(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code. With ``--json`` the progress goes to standard
    error and standard output holds only the summary, as one JSON object."""
    path = Path(args.db) if args.db else QueueDatabase.default_path().parent / "demo.db"
    _start_afresh(path)
    queue = Queue(path, durability="normal")
    batch = build_batch(args.tasks)
    started = time.monotonic()
    queue.enqueue_many(batch)
    total = len(batch)
    out = sys.stderr if args.json else sys.stdout
    active = [s.name for s in plugin_statuses(queue.pm) if s.state == "active"]
    print(f"hookqueue demo: {total} tasks in {path}", file=out)
    print(f"plugins: {', '.join(active)}", file=out)
    print(f"starting {args.processes} worker processes x 20 concurrent tasks ...", file=out)
    cmd = [
        sys.executable,
        "-m",
        "hookqueue",
        "worker",
        "--app",
        "hookqueue.plugins.demo:registry",
        "--db",
        str(path),
        "--concurrency",
        "20",
        "--lease-seconds",
        "5",
    ]
    # The first worker prints the banner for all of them; each one's log lines (a failed
    # task's warning) are read here and printed above the progress bar, not through it.
    output: stdlib_queue.SimpleQueue[str] = stdlib_queue.SimpleQueue()
    workers = []
    readers = []
    for i in range(args.processes):
        extra = ["--total-processes", str(args.processes)] if i == 0 else ["--quiet"]
        worker = subprocess.Popen(
            [*cmd, *extra, "--worker-id", f"demo-{i}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        reader = threading.Thread(target=_forward_lines, args=(worker, output), daemon=True)
        reader.start()
        readers.append(reader)
        workers.append(worker)
    tty = out.isatty()
    last_print = 0.0
    deadline = started + 120
    try:
        while True:
            counts = queue.counts()
            done = counts["completed"] + counts["failed"] + counts["cancelled"]
            elapsed = time.monotonic() - started
            line = (
                f"[{_bar(done, total)}] {done}/{total}  queued {counts['queued']:>4}  "
                f"running {counts['running']:>3}  completed {counts['completed']:>4}  "
                f"failed {counts['failed']:>2}  {done / elapsed if elapsed else 0:7.0f} tasks/s"
            )
            while not output.empty():
                text = output.get()
                print(("\r\033[K" if tty else "") + text, file=out, flush=True)
                last_print = 0.0
            if tty:
                print("\r" + line, end="", file=out, flush=True)
            elif time.monotonic() - last_print >= 1 or done == total:
                print(line, file=out, flush=True)
                last_print = time.monotonic()
            if done == total:
                break
            if time.monotonic() > deadline or all(w.poll() is not None for w in workers):
                print("\nthe workers stopped or the demo ran out of time", file=sys.stderr)
                return 1
            time.sleep(0.1)
        drained = time.monotonic() - started
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
    if tty:
        print(file=out)
    for reader in readers:  # the workers have exited: their pipes end
        reader.join(timeout=5)
    while not output.empty():
        print(output.get(), file=out)
    summary = _summary(queue, path, total, args.processes, drained)
    queue.close()
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary)
    return 0 if summary["ok"] else 1


def _summary(
    queue: Queue, path: Path, total: int, processes: int, drained: float
) -> dict[str, Any]:
    """What the demo reports at the end (printed as text, or as JSON with ``--json``)."""
    tasks = queue.list(limit=100_000)
    by_status = Counter(t.status.value for t in tasks)
    by_type: dict[str, dict[str, int]] = {}
    for t in tasks:
        per_type = by_type.setdefault(t.task_type, {})
        per_type[t.status.value] = per_type.get(t.status.value, 0) + 1
    ready = [t for t in tasks if t.run_after <= t.created_at and t.attempts == 1 and t.finished_at]
    ready_at_once = None
    if ready:
        first = min(t.created_at for t in ready)
        last = max(t.finished_at for t in ready if t.finished_at is not None)
        span = max((last - first).total_seconds(), 1e-6)
        ready_at_once = {
            "tasks": len(ready),
            "seconds": span,
            "tasks_per_second": len(ready) / span,
        }
    failed = [t for t in tasks if t.status is TaskStatus.FAILED]
    return {
        "database": str(path),
        "tasks": total,
        "processes": processes,
        "drained_seconds": drained,
        "ready_at_once": ready_at_once,
        "by_status": {s.value: by_status.get(s.value, 0) for s in TaskStatus},
        "by_type": {name: dict(sorted(c.items())) for name, c in sorted(by_type.items())},
        "retries": sum(max(0, t.attempts - 1) for t in tasks),
        "tasks_per_worker": {w.worker_id: w.processed for w in queue.workers()},
        "failed": [
            {"id": t.id, "task_type": t.task_type, "error": t.error_message} for t in failed
        ],
        "ok": by_status.get("completed", 0) + len(failed) == total,
    }


def _print_summary(summary: dict[str, Any]) -> None:
    path = summary["database"]
    print("\nsummary")
    print(
        f"  drained {summary['tasks']} tasks in {summary['drained_seconds']:.1f}s with "
        f"{summary['processes']} processes "
        "(the delayed tasks set that pace: they are due 1-4 s after enqueue)"
    )
    ready = summary["ready_at_once"]
    if ready:
        print(
            f"  {ready['tasks']} tasks ready at once ran in {ready['seconds']:.2f}s: "
            f"{ready['tasks_per_second']:,.0f} tasks/s"
        )
    print("  by status: " + ", ".join(f"{s} {n}" for s, n in summary["by_status"].items()))
    for task_type, counts in summary["by_type"].items():
        print(f"  {task_type:<16} " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    print(
        f"  retries: {summary['retries']} (flaky_webhook succeeds on attempt 2; "
        "import_feed fails after 2 attempts)"
    )
    print(
        "  tasks per worker: "
        + ", ".join(f"{w} {n}" for w, n in sorted(summary["tasks_per_worker"].items()))
    )
    failed = summary["failed"]
    for t in failed[:3]:
        print(f"  failed task {t['id']} ({t['task_type']}): {t['error']}")
    print(
        f"\ninspect it: hookqueue ls --db {path}   |   "
        f"hookqueue show {failed[0]['id'] if failed else 1} --db {path}"
    )


def _forward_lines(worker: subprocess.Popen[str], output: stdlib_queue.SimpleQueue[str]) -> None:
    """Pass a worker's stderr lines to the demo's output queue until the worker ends."""
    assert worker.stderr is not None
    with worker.stderr:
        for line in worker.stderr:
            output.put(line.rstrip("\n"))


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processes", type=positive_int, default=3)
    parser.add_argument("--tasks", type=positive_int, default=600)


@hookimpl
def hookqueue_cli_commands() -> list[CliCommand]:
    """``hookqueue demo``."""
    return [
        CliCommand(
            name="demo",
            help="enqueue a realistic batch and work it with several processes",
            configure=_configure,
            run=main,
        )
    ]
