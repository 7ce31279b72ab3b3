"""The ``hookqueue`` command.

Built on argparse, from the standard library: the core's dependencies stay pluggy, apsw and
attrs, and plugins add subcommands through ``hookqueue_cli_commands`` with a plain
``configure(parser)`` / ``run(args)`` pair that needs no CLI framework of their own.

Every subcommand takes ``--db PATH`` (default ``$HOOKQUEUE_DB``, else the per-user data
directory) and ``--json`` for machine-readable output; tables are the default.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import attrs

from .errors import HookqueueError, ValidationError
from .handlers import TaskHandlerRegistry
from .models import Task, TaskStatus
from .plugins import Hooks, make_plugin_manager, plugin_statuses
from .queue import Queue
from .store import user_database_path

log = logging.getLogger("hookqueue.cli")

BUILTIN_COMMANDS = (
    "enqueue",
    "ls",
    "show",
    "cancel",
    "retry",
    "prune",
    "plugins",
    "check",
    "workers",
    "worker",
    "demo",
    "copy",
)


def queue_from_args(args: argparse.Namespace, **kwargs: Any) -> Queue:
    """Open the queue a subcommand works on (``--db``, else ``HOOKQUEUE_DB``, else the
    per-user default). Plugin subcommands use this too."""
    return Queue(getattr(args, "db", None), **kwargs)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _short(value: Any, width: int = 40) -> str:
    text = (
        json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if not isinstance(value, str)
        else value
    )
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w`` as a timedelta."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    raw = text.strip().lower()
    unit = raw[-1] if raw and raw[-1] in units else "s"
    number = raw[:-1] if raw and raw[-1] in units else raw
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; use e.g. 90, 30s, 15m, 12h, 7d"
        ) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration cannot be negative")
    return timedelta(seconds=seconds)


# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------


def cmd_enqueue(args: argparse.Namespace) -> int:
    """``hookqueue enqueue``: add one task."""
    try:
        payload = json.loads(args.payload) if args.payload is not None else None
    except json.JSONDecodeError as exc:
        raise ValidationError(
            "--payload",
            args.payload,
            f"is not JSON ({exc.msg})",
            'e.g. --payload \'{"to": "a@b.c"}\'',
        ) from None
    with queue_from_args(args) as queue:
        task = queue.enqueue(
            args.task_type,
            payload,
            priority=args.priority,
            delay=args.delay,
            max_attempts=args.max_attempts,
            idempotency_key=args.key,
            queue=args.queue,
            timeout=args.timeout,
        )
    if args.json:
        _print_json(task.to_dict())
    else:
        print(
            f"enqueued task {task.id} ({task.task_type}) in queue {task.queue!r}, run after {_when(task.run_after)} UTC"
        )
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """``hookqueue ls``: list tasks, newest first, paged by id."""
    with queue_from_args(args) as queue:
        tasks = queue.list(
            status=args.status or None,
            task_type=args.type,
            queue=args.queue,
            limit=args.limit,
            after_id=args.after,
            newest_first=not args.oldest_first,
        )
    if args.json:
        _print_json([t.to_dict() for t in tasks])
        return 0
    rows = [
        (
            t.id,
            t.task_type,
            t.status.value,
            t.priority,
            f"{t.attempts}/{t.max_attempts}",
            _when(t.run_after),
            _short(t.error_message or "", 50),
        )
        for t in tasks
    ]
    print(_table(rows, ["id", "type", "status", "prio", "attempts", "run_after (UTC)", "error"]))
    if len(tasks) == args.limit:
        print(f"(more: --after {tasks[-1].id})")
    return 0


def _show(task: Task) -> str:
    lines = []
    for key, value in task.to_dict().items():
        if key == "type":
            continue
        if key in ("payload", "result", "headers"):
            value = json.dumps(value, ensure_ascii=False)
        lines.append(f"{key:>17}: {'' if value is None else value}")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    """``hookqueue show``: every field of one task."""
    with queue_from_args(args) as queue:
        task = queue.get(args.task_id)
    if args.json:
        _print_json(task.to_dict())
    else:
        print(_show(task))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """``hookqueue cancel``: cancel a queued task or mark a running one."""
    with queue_from_args(args) as queue:
        task = queue.cancel(args.task_id)
    if args.json:
        _print_json(task.to_dict())
    elif task.status is TaskStatus.CANCELLED:
        print(f"task {task.id} cancelled")
    else:
        print(f"task {task.id} is running; its worker cancels it within a heartbeat")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """``hookqueue retry``: queue a failed or cancelled task again."""
    with queue_from_args(args) as queue:
        task = queue.retry(args.task_id)
    if args.json:
        _print_json(task.to_dict())
    else:
        print(f"task {task.id} queued again")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """``hookqueue prune``: delete finished tasks (and optionally vacuum)."""
    statuses = args.status or ["completed", "failed", "cancelled"]
    with queue_from_args(args) as queue:
        removed = queue.prune(older_than=args.older_than, statuses=statuses)
        if args.vacuum:
            queue.db.vacuum()
    if args.json:
        _print_json({"removed": removed})
    else:
        print(f"removed {removed} task(s) finished more than {args.older_than} ago")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """``hookqueue plugins``: every plugin's state, hooks or reason."""
    pm = make_plugin_manager(load_entrypoints=True)
    statuses = plugin_statuses(pm)
    if args.json:
        _print_json(
            [
                {
                    "name": s.name,
                    "state": s.state,
                    "source": s.source,
                    "hooks": list(s.hooks),
                    "reason": s.reason,
                }
                for s in statuses
            ]
        )
        return 0
    rows = [
        (
            s.name,
            s.state,
            s.source,
            ", ".join(h.removeprefix("hookqueue_") for h in s.hooks) or s.reason,
        )
        for s in statuses
    ]
    print(_table(rows, ["plugin", "state", "source", "hooks / reason"]))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """``hookqueue check``: integrity and consistency problems; exit 1 if any."""
    with queue_from_args(args) as queue:
        problems = queue.check()
        version = queue.db.schema_version()
        path = queue.db.location
    if args.json:
        _print_json(
            {"ok": not problems, "problems": problems, "path": path, "schema_version": version}
        )
    elif problems:
        print(f"{path}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
    else:
        print(f"{path}: ok (schema version {version})")
    return 0 if not problems else 1


def cmd_workers(args: argparse.Namespace) -> int:
    """``hookqueue workers``: recorded workers and their last heartbeat."""
    with queue_from_args(args) as queue:
        workers = queue.workers()
        now = queue.now()
    if args.json:
        _print_json(
            [
                {
                    "worker_id": w.worker_id,
                    "hostname": w.hostname,
                    "pid": w.pid,
                    "queues": list(w.queues),
                    "concurrency": w.concurrency,
                    "started_at": w.started_at.isoformat(),
                    "heartbeat_at": w.heartbeat_at.isoformat(),
                    "stopped_at": w.stopped_at.isoformat() if w.stopped_at else None,
                    "processed": w.processed,
                }
                for w in workers
            ]
        )
        return 0
    rows = [
        (
            w.worker_id,
            w.pid,
            ",".join(w.queues),
            w.concurrency,
            w.processed,
            "stopped" if w.stopped_at else f"{(now - w.heartbeat_at).total_seconds():.1f}s ago",
        )
        for w in workers
    ]
    print(_table(rows, ["worker", "pid", "queues", "concurrency", "processed", "heartbeat"]))
    return 0


# -- worker -------------------------------------------------------------------------------------


def load_app(spec: str) -> tuple[Queue | None, TaskHandlerRegistry | None]:
    """Import ``module:attr`` (the user named it) and return the queue or registry it names.

    ``attr`` may be a :class:`Queue`, a :class:`TaskHandlerRegistry`, or a callable returning
    one of them.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValidationError(
            "--app", spec, "must be module:attribute", "e.g. --app myapp.tasks:queue"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValidationError(
            "--app",
            spec,
            f"cannot import {module_name!r} ({exc})",
            "check the module path and PYTHONPATH",
        ) from None
    try:
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ValidationError(
            "--app",
            spec,
            f"module {module_name!r} has no attribute {attr!r}",
            "name a Queue or TaskHandlerRegistry",
        ) from None
    if callable(obj) and not isinstance(obj, Queue | TaskHandlerRegistry):
        try:
            inspect.signature(obj).bind()
        except (TypeError, ValueError):
            raise ValidationError(
                "--app",
                spec,
                "names a callable that needs arguments",
                "name a Queue, a TaskHandlerRegistry, or a function without arguments returning one",
            ) from None
        obj = obj()
    if isinstance(obj, Queue):
        return obj, None
    if isinstance(obj, TaskHandlerRegistry):
        return None, obj
    raise ValidationError(
        "--app",
        spec,
        f"names a {type(obj).__name__}",
        "name a Queue, a TaskHandlerRegistry, or a function returning one",
    )


def _worker_child(args: argparse.Namespace) -> int:
    from .worker import WorkerEngine, describe_stats

    app_queue, registry = load_app(args.app) if args.app else (None, None)
    if app_queue is not None and args.db is not None and app_queue.db.location != str(args.db):
        queue = Queue(args.db)
        registry = app_queue.handlers
    else:
        queue = app_queue or queue_from_args(args)
    worker = WorkerEngine(
        queue,
        worker_id=args.worker_id,
        handler_registry=registry,
        queues=args.queues,
        concurrency=args.concurrency,
        lease_seconds=args.lease_seconds,
        shutdown_grace=args.shutdown_grace,
    )
    log.info(
        "worker %s working %s on %s", worker.worker_id, ",".join(worker.queues), queue.db.location
    )
    stats = worker.run_until_idle() if args.until_idle else worker.run()
    log.info("worker %s stopped: %s", worker.worker_id, describe_stats(stats))
    queue.close()
    return 0


def _child_command(args: argparse.Namespace, index: int) -> list[str]:
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


def _child_env(args: argparse.Namespace, index: int) -> dict[str, str]:
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
        children[i] = subprocess.Popen(_child_command(args, i), env=_child_env(args, i))

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


def cmd_worker(args: argparse.Namespace) -> int:
    """``hookqueue worker``: be the worker (one process) or supervise several."""
    if args.processes == 1:
        if args.metrics_port is not None:
            os.environ["HOOKQUEUE_METRICS_PORT"] = str(args.metrics_port)
        return _worker_child(args)
    return supervise(args)


def cmd_demo(args: argparse.Namespace) -> int:
    """``hookqueue demo``: the README's main job (see :mod:`hookqueue.demo`)."""
    from .. import demo

    return demo.main(args)


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def cmd_copy(args: argparse.Namespace) -> int:
    """``hookqueue copy --from SRC --to DST``: move a queue between stores (see
    :mod:`hookqueue.core.transfer`); exit code 1 when the source changed meanwhile."""
    from .transfer import copy_tasks

    hooks = Hooks(make_plugin_manager(load_entrypoints=True))
    options: dict[str, Any] = {"durability": "full", "busy_timeout": 10.0, "vfs": None}
    source = hooks.open_store(args.source, {**options, "create": False})
    try:
        source.initialize_schema()  # a mistyped source fails before a destination is made
        destination = hooks.open_store(args.destination, {**options, "create": True})
        try:
            report = copy_tasks(source, destination, allow_non_empty=args.allow_non_empty)
        finally:
            destination.close()
    finally:
        source.close()
    if args.json:
        _print_json(attrs.asdict(report))
    else:
        statuses = ", ".join(f"{n} {s}" for s, n in report.by_status.items() if n)
        print(
            f"copied {report.copied} task(s) from {report.source} to {report.destination}"
            + (f" ({statuses})" if statuses else "")
        )
        running = report.by_status.get("running", 0)
        if running:
            print(
                f"note: {running} task(s) were running in the source; in the destination a "
                "worker takes each over once its lease expires"
            )
    if report.source_changed:
        print(
            "hookqueue: the source changed while it was copied (a producer or worker was "
            "running); the copy may miss those changes. Fix: stop them and copy again into a "
            "new, empty store",
            file=sys.stderr,
        )
        return 1
    return 0


def build_parser(hooks: Hooks | None = None) -> argparse.ArgumentParser:
    """The parser with the built-in subcommands and every plugin's."""

    def options(parser: argparse.ArgumentParser, suppress: bool) -> argparse.ArgumentParser:
        # The options are accepted before and after the subcommand. The subcommands' copies
        # default to SUPPRESS so that "hookqueue --db X ls" keeps the top-level value instead
        # of the subparser writing its own default over it.
        default: Any = argparse.SUPPRESS if suppress else None
        flag: Any = argparse.SUPPRESS if suppress else False
        parser.add_argument(
            "--db",
            default=default,
            help="database file or store URL (default: $HOOKQUEUE_DB, else "
            f"{user_database_path()})",
        )
        parser.add_argument(
            "--json", action="store_true", default=flag, help="machine-readable output"
        )
        parser.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=flag,
            help="log at INFO level (DEBUG with HOOKQUEUE_TRACE_PLUGINS=1)",
        )
        return parser

    common = options(argparse.ArgumentParser(add_help=False), suppress=True)
    parser = options(
        argparse.ArgumentParser(prog="hookqueue", description="A persistent task queue on SQLite."),
        suppress=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("enqueue", parents=[common], help="add a task")
    p.add_argument("task_type")
    p.add_argument("--payload", help="JSON payload")
    p.add_argument("--priority", type=int, default=100, help="lower runs first (default 100)")
    p.add_argument("--delay", type=parse_duration, help="run after this long (e.g. 30s, 15m)")
    p.add_argument("--max-attempts", type=_positive_int)
    p.add_argument("--key", help="idempotency key")
    p.add_argument("--queue", default="default")
    p.add_argument("--timeout", type=float, help="seconds one attempt may take")
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("ls", parents=[common], help="list tasks (newest first)")
    p.add_argument("--status", action="append", choices=[s.value for s in TaskStatus])
    p.add_argument("--type")
    p.add_argument("--queue")
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--after", type=int, help="continue after this id")
    p.add_argument("--oldest-first", action="store_true")
    p.set_defaults(func=cmd_ls)

    for name, func, text in (
        ("show", cmd_show, "show one task"),
        ("cancel", cmd_cancel, "cancel a queued or running task"),
        ("retry", cmd_retry, "queue a failed or cancelled task again"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("task_id", type=int)
        p.set_defaults(func=func)

    p = sub.add_parser("prune", parents=[common], help="delete finished tasks")
    p.add_argument(
        "--older-than", type=parse_duration, default=timedelta(days=7), help="default 7d"
    )
    p.add_argument("--status", action="append", choices=["completed", "failed", "cancelled"])
    p.add_argument("--vacuum", action="store_true", help="give the space back to the file system")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "plugins", parents=[common], help="list plugins: active, blocked, unavailable"
    )
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("check", parents=[common], help="integrity and consistency check")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser(
        "workers", parents=[common], help="list recorded workers and their heartbeats"
    )
    p.set_defaults(func=cmd_workers)

    p = sub.add_parser("worker", parents=[common], help="run worker processes")
    p.add_argument("--app", help="module:attribute of your Queue or TaskHandlerRegistry")
    p.add_argument("--processes", type=_positive_int, default=1)
    p.add_argument("--concurrency", type=_positive_int, default=10)
    p.add_argument("--queues", nargs="+", default=["default"])
    p.add_argument("--lease-seconds", type=float, default=10.0)
    p.add_argument("--shutdown-grace", type=float, default=30.0)
    p.add_argument("--worker-id")
    p.add_argument("--until-idle", action="store_true", help="exit when nothing is due")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on 127.0.0.1:PORT (PORT+i for the i-th process; "
        "needs hookqueue[prometheus])",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="enqueue a realistic batch and work it with several processes",
    )
    p.add_argument("--processes", type=_positive_int, default=3)
    p.add_argument("--tasks", type=_positive_int, default=600)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "copy",
        parents=[common],
        help="copy every task from one store to another (e.g. SQLite to PostgreSQL)",
    )
    p.add_argument("--from", dest="source", required=True, help="the store to read: path or URL")
    p.add_argument(
        "--to", dest="destination", required=True, help="the store to write: path or URL"
    )
    p.add_argument(
        "--allow-non-empty",
        action="store_true",
        help="copy into a store that already holds tasks (ids and keys must not clash)",
    )
    p.set_defaults(func=cmd_copy)

    if hooks is not None:
        for command in hooks.cli_commands():
            if command.name in BUILTIN_COMMANDS:
                raise HookqueueError(
                    f"a plugin's subcommand {command.name!r} clashes with the built-in one; block that plugin or rename"
                )
            p = sub.add_parser(command.name, parents=[common], help=command.help)
            command.configure(p)
            p.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failed check, 2 error)."""
    hooks: Hooks | None
    try:
        hooks = Hooks(make_plugin_manager(load_entrypoints=True))
    except HookqueueError as exc:
        print(f"hookqueue: {exc}", file=sys.stderr)
        hooks = None
    parser = build_parser(hooks)
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    if os.environ.get("HOOKQUEUE_TRACE_PLUGINS") == "1":
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except HookqueueError as exc:
        print(f"hookqueue: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
