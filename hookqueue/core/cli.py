"""The ``hookqueue`` command.

Built on argparse, from the standard library: the core's dependencies stay pluggy, apsw and
attrs, and plugins add subcommands through ``hookqueue_cli_commands`` with a plain
``configure(parser)`` / ``run(args)`` pair that needs no CLI framework of their own.

Every subcommand takes ``--db PATH|URL`` (default ``$HOOKQUEUE_DB``, else the per-user data
directory), ``--json`` for machine-readable output, and ``-v`` / ``--log-level`` /
``--log-format json`` for logs; tables are the default. A subcommand that only reads refuses a
database that does not exist (a mistyped path must not create one). A refused command prints
one line — what is wrong and the fix — and exits 2; no traceback reaches a user.

Exit codes: 0 done, 1 the answer is "no" (``check`` found problems, ``wait`` saw the task fail
or be cancelled, ``stats --check`` unhealthy), 2 a refused command, 4 ``wait`` timed out,
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, NoReturn

import attrs
import pluggy

from . import clock, logs
from .errors import (
    HookqueueError,
    TaskDidNotComplete,
    ValidationError,
    WaitTimeout,
)
from .handlers import TaskHandlerRegistry
from .models import Task, TaskFilter, TaskStatus
from .plugins import CORE_PLUGIN_NAME, Hooks, make_plugin_manager, plugin_statuses
from .queue import Queue
from .render import error_line, print_json, shorten, table, when
from .store import user_database_path
from .supervisor import supervise

log = logging.getLogger("hookqueue.cli")

BUILTIN_COMMANDS = (
    "enqueue",
    "ls",
    "show",
    "cancel",
    "retry",
    "purge",
    "prune",
    "wait",
    "queues",
    "pause",
    "resume",
    "plugins",
    "check",
    "workers",
    "worker",
    "copy",
)

#: Exit code of ``hookqueue wait`` when the task has not finished in time.
EXIT_TIMEOUT = 4


def queue_from_args(args: argparse.Namespace, *, create: bool = False, **kwargs: Any) -> Queue:
    """Open the queue a subcommand works on (``--db``, else ``HOOKQUEUE_DB``, else the
    per-user default). Plugin subcommands use this too.

    :param create: create the database if it does not exist; by default a missing database
        is refused (a command that reads must not create one at a mistyped path).
    """
    return Queue(getattr(args, "db", None), create=create, **kwargs)


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w`` as a timedelta (finite, >= 0): an
    argparse ``type`` (plugin subcommands use it too) around
    :func:`hookqueue.core.clock.parse_duration`."""
    try:
        return clock.parse_duration(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc.problem}; {exc.fix}") from None


def _interval(text: str) -> timedelta:
    """A duration longer than zero (``--prune-every``)."""
    value = parse_duration(text)
    if not value:
        raise argparse.ArgumentTypeError(f"{text!r} is no time at all; use e.g. 1h or 30m")
    return value


def json_option(option: str, text: str | None) -> Any:
    """The JSON value an option holds (None when it was not given).

    :raises ValidationError: naming ``option`` when the text is not JSON.
    """
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            option, text, f"is not JSON ({exc.msg})", f'e.g. {option} \'{{"to": "a@b.c"}}\''
        ) from None


def positive_int(text: str) -> int:
    """An argparse ``type`` for a count: an integer >= 1. Plugin subcommands use it too."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number; use one from 1 up, e.g. 10"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is below 1; use 1 or more")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds; use e.g. 30 or 2.5"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive, finite number of seconds; use e.g. 30 or 2.5"
        )
    return value


def _task_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a task id; use the integer id hookqueue ls shows"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a task id; ids start at 1")
    return value


#: argparse's own complaints, reworded as "problem; fix" (the rest are kept as they are).
_ARGPARSE_MESSAGES = (
    (re.compile(r"^argument ([^:]+): "), r"\1: "),
    (
        re.compile(r"invalid choice: (.+?) \(choose from (.+)\)$"),
        r"\1 is not one of the choices; use one of \2",
    ),
    (re.compile(r"invalid int value: (.+)$"), r"\1 is not a whole number; give one, e.g. 5"),
    (re.compile(r"invalid float value: (.+)$"), r"\1 is not a number; give one, e.g. 2.5"),
    (re.compile(r"expected one argument$"), "needs a value; give one after it"),
    (re.compile(r"^the following arguments are required: (.+)$"), r"\1 missing; give it"),
    (
        re.compile(r"^unrecognized arguments: (.+)$"),
        r"\1 not understood; check the spelling (no option may be abbreviated)",
    ),
)


class CommandParser(argparse.ArgumentParser):
    """argparse's parser, except that a refused command line is one line on standard error —
    ``hookqueue enqueue: --delay: 'inf' is not finite; use e.g. 30s, 12h or 7d (see hookqueue
    enqueue --help)`` — and exit code 2, without the usage block. ``--help`` is unchanged.
    Subcommands (plugins' included) get this class from ``add_subparsers``."""

    def error(self, message: str) -> NoReturn:
        """Print the problem and where the help is, then exit 2."""
        for pattern, replacement in _ARGPARSE_MESSAGES:
            message = pattern.sub(replacement, message)
        line = " ".join(message.split())
        self.exit(2, f"{self.prog}: {line} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------
# filters and confirmation (cancel, retry, purge, ls)
# ---------------------------------------------------------------------------------------------


def _add_filter_options(parser: argparse.ArgumentParser, *, statuses: Sequence[str]) -> None:
    parser.add_argument(
        "--status", action="append", choices=list(statuses), help="only tasks in this status"
    )
    parser.add_argument("--type", action="append", help="only tasks of this type")
    parser.add_argument("--queue", action="append", help="only tasks in this queue")
    parser.add_argument(
        "--older-than", type=parse_duration, help="only tasks enqueued more than this long ago"
    )
    parser.add_argument("--error", help="only tasks whose last error contains this text")


def _filter(queue: Queue, args: argparse.Namespace, ids: Sequence[int] = ()) -> TaskFilter:
    return queue.filter(
        status=args.status,
        task_type=args.type,
        queue=args.queue,
        ids=list(ids) or None,
        error_contains=args.error,
        older_than=args.older_than,
    )


def _confirm(args: argparse.Namespace, question: str) -> bool:
    """Ask ``question`` on the terminal (``--yes`` answers it); a script without a terminal
    must pass ``--yes``, with or without ``--json``. The question goes to standard error, so
    standard output holds only the answer's report (JSON with ``--json``)."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise ValidationError(
            "--yes",
            None,
            "is needed to confirm when no one is at a terminal",
            "add --yes (or run it interactively)",
        )
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = input().strip().lower()
    return answer in ("y", "yes")


def _bulk(
    args: argparse.Namespace,
    verb: str,
    scope: Sequence[TaskStatus],
    act: Callable[[Queue, TaskFilter], int],
) -> int:
    """A filtered action: count what matches, confirm, act; prints the count."""
    with queue_from_args(args) as queue:
        flt = _filter(queue, args, args.ids)
        if flt.is_empty and not args.all:
            raise ValidationError(
                "filter",
                None,
                f"is empty: {verb} would touch every task",
                f"name task ids or filters (--status, --type, --queue, --older-than, --error), "
                f"or pass --all to {verb} every task it applies to",
            )
        scoped = flt.restricted_to(scope)
        what = scoped.describe() if scoped is not None else flt.describe()
        if scoped is not None:
            newest = queue.list(limit=1, newest_first=True)
            if newest:  # tasks enqueued after the confirmation are left alone
                scoped = attrs.evolve(scoped, max_id=newest[0].id)
        matching = 0 if scoped is None else queue.count(scoped)
        done: int | None = 0  # None: the confirmation was declined
        if matching and _confirm(args, f"{verb} {matching} task(s) ({what})?"):
            done = act(queue, scoped) if scoped is not None else 0
        elif matching:
            done = None
    if args.json:
        print_json({"matched": matching, verb.replace(" ", "_"): done or 0, "filter": what})
    else:
        print("nothing done" if done is None else f"{verb}: {done} task(s) ({what})")
    return 1 if done is None else 0


# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------


def cmd_enqueue(args: argparse.Namespace) -> int:
    """``hookqueue enqueue``: add one task (or answer the existing one for a repeated key)."""
    payload = json_option("--payload", args.payload)
    with queue_from_args(args, create=True) as queue:
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
        print_json(task.to_dict())
    elif task.deduplicated:
        print(
            f"task {task.id} ({task.task_type}) already holds key {task.idempotency_key!r}: "
            f"nothing new was enqueued (it is {task.status.value})"
        )
    else:
        print(
            f"enqueued task {task.id} ({task.task_type}) in queue {task.queue!r}, "
            f"run after {when(task.run_after)} UTC"
        )
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """``hookqueue ls``: list tasks, newest first, paged by id."""
    with queue_from_args(args) as queue:
        tasks = queue.list(
            filter=_filter(queue, args),
            limit=args.limit,
            after_id=args.after,
            newest_first=not args.oldest_first,
        )
        paused = queue.paused_queues()
    if args.json:
        print_json([t.to_dict() for t in tasks])
        return 0
    rows = [
        (
            t.id,
            t.queue + (" (paused)" if t.queue in paused else ""),
            t.task_type,
            t.status.value,
            t.priority,
            f"{t.attempts}/{t.max_attempts}",
            when(t.run_after),
            shorten(t.error_message or "", 50),
        )
        for t in tasks
    ]
    print(
        table(
            rows, ["id", "queue", "type", "status", "prio", "attempts", "run_after (UTC)", "error"]
        )
    )
    if len(tasks) == args.limit:
        print(f"(more: --after {tasks[-1].id})")
    return 0


def _show(task: Task) -> str:
    lines = []
    for key, value in task.to_dict().items():
        if key in ("type", "deduplicated"):
            continue
        if key in ("payload", "result", "headers"):
            value = json.dumps(value, ensure_ascii=False)
        lines.append(f"{key:>17}: {'' if value is None else value}")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    """``hookqueue show``: every field of one task, and the history of its failed attempts
    (with their tracebacks)."""
    with queue_from_args(args) as queue:
        task = queue.get(args.task_id)
        history = queue.history(args.task_id)
    if args.json:
        out = task.to_dict()
        out["failures"] = [
            {
                "attempt": f.attempt,
                "at": f.at.isoformat(),
                "worker_id": f.worker_id,
                "outcome": f.outcome,
                "error": f.error,
                "traceback": f.traceback,
            }
            for f in history
        ]
        print_json(out)
        return 0
    print(_show(task))
    if history:
        print("\nfailed attempts:")
        for f in history:
            print(
                f"  attempt {f.attempt} at {when(f.at)} UTC on {f.worker_id or '?'}: "
                f"{f.outcome}: {f.error}"
            )
            if f.traceback:
                print("    " + f.traceback.rstrip().replace("\n", "\n    "))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """``hookqueue cancel``: cancel tasks by id or filter (queued ones now, running ones by
    their workers)."""
    if len(args.ids) == 1 and not _has_filter(args):
        with queue_from_args(args) as queue:
            task = queue.cancel(args.ids[0])
        if args.json:
            print_json(task.to_dict())
        elif task.status is TaskStatus.CANCELLED:
            print(f"task {task.id} cancelled")
        else:
            print(f"task {task.id} is running; its worker cancels it within a heartbeat")
        return 0
    return _bulk(
        args,
        "cancel",
        (TaskStatus.QUEUED, TaskStatus.RUNNING),
        lambda q, f: q.cancel_matching(f),
    )


def cmd_retry(args: argparse.Namespace) -> int:
    """``hookqueue retry``: queue failed or cancelled tasks again, by id or filter."""
    if len(args.ids) == 1 and not _has_filter(args):
        with queue_from_args(args) as queue:
            task = queue.retry(args.ids[0])
        if args.json:
            print_json(task.to_dict())
        else:
            print(f"task {task.id} queued again")
        return 0
    return _bulk(
        args,
        "retry",
        (TaskStatus.FAILED, TaskStatus.CANCELLED),
        lambda q, f: q.retry_matching(f),
    )


def cmd_purge(args: argparse.Namespace) -> int:
    """``hookqueue purge``: delete queued tasks that match (they never run)."""
    return _bulk(args, "purge", (TaskStatus.QUEUED,), lambda q, f: q.purge(f))


def _has_filter(args: argparse.Namespace) -> bool:
    return bool(args.status or args.type or args.queue or args.older_than or args.error)


def _prune_queue(args: argparse.Namespace) -> Queue:
    """The queue ``hookqueue prune`` works on: ``--app``'s (its database and retention; with
    another ``--db``, that database with the app's retention), else ``--db``'s."""
    if not args.app:
        return queue_from_args(args)
    app_queue, _ = load_app(args.app)
    if app_queue is None:
        raise ValidationError(
            "--app",
            args.app,
            "names a TaskHandlerRegistry, which has no retention",
            "name the Queue whose retention prune should use, e.g. --app myapp.tasks:queue",
        )
    if args.db is None or app_queue.db.location == str(args.db):
        return app_queue
    return queue_from_args(args, retention=app_queue.retention)


def cmd_prune(args: argparse.Namespace) -> int:
    """``hookqueue prune``: delete finished tasks older than the retention (and vacuum)."""
    statuses = args.status or ["completed", "failed", "cancelled"]
    with _prune_queue(args) as queue:
        older = args.older_than if args.older_than is not None else queue.retention
        removed = queue.prune(older_than=older, statuses=statuses)
        if args.vacuum:
            queue.db.vacuum()
    if args.json:
        print_json({"removed": removed, "older_than_seconds": older.total_seconds()})
    else:
        print(f"removed {removed} task(s) finished more than {older} ago")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """``hookqueue wait``: wait for a task to finish; print its result (exit 0), or why it
    did not complete (exit 1), or that time ran out (exit 4)."""
    with queue_from_args(args) as queue:
        try:
            task = queue.wait(args.task_id, timeout=args.timeout)
        except TaskDidNotComplete as exc:
            if args.json:
                print_json(exc.task.to_dict())
            else:
                print(error_line(exc), file=sys.stderr)
            return 1
        except WaitTimeout as exc:
            if args.json:
                print_json(
                    {
                        "id": exc.task_id,
                        "status": "timeout",
                        "task_status": exc.status,
                        "waited_seconds": exc.timeout,
                    }
                )
            print(error_line(exc), file=sys.stderr)
            return EXIT_TIMEOUT
    if args.json:
        print_json(task.to_dict())
    else:
        print(json.dumps(task.result, ensure_ascii=False))
    return 0


def cmd_queues(args: argparse.Namespace) -> int:
    """``hookqueue queues``: each queue's due, delayed and running tasks, and whether it is
    paused."""
    with queue_from_args(args) as queue:
        gauges = {g.queue: g for g in queue.db.queue_gauges(queue.clock.now_us())}
        paused = queue.paused_queues()
    names = sorted(set(gauges) | set(paused))
    out: list[dict[str, Any]] = []
    for name in names:
        g = gauges.get(name)
        out.append(
            {
                "queue": name,
                "due": g.due if g else 0,
                "delayed": g.delayed if g else 0,
                "running": g.running if g else 0,
                "paused_at": paused[name].isoformat() if name in paused else None,
            }
        )
    if args.json:
        print_json(out)
        return 0
    rows = [
        (
            q["queue"],
            q["due"],
            q["delayed"],
            q["running"],
            "paused since " + when(paused[str(q["queue"])]) if q["paused_at"] else "",
        )
        for q in out
    ]
    print(table(rows, ["queue", "due", "delayed", "running", "state"]))
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    """``hookqueue pause``: stop every worker leasing from a queue (persisted)."""
    with queue_from_args(args) as queue:
        changed = queue.pause(args.queue_name)
    if args.json:
        print_json({"queue": args.queue_name, "paused": True, "changed": changed})
    else:
        state = "paused" if changed else "was paused already"
        print(f"queue {args.queue_name!r} {state}: workers lease nothing from it")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """``hookqueue resume``: let workers lease from a paused queue again."""
    with queue_from_args(args) as queue:
        changed = queue.resume(args.queue_name)
    if args.json:
        print_json({"queue": args.queue_name, "paused": False, "changed": changed})
    else:
        print(f"queue {args.queue_name!r} " + ("resumed" if changed else "was not paused"))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """``hookqueue plugins``: every plugin's state, hooks or reason."""
    pm = make_plugin_manager(load_entrypoints=True)
    statuses = plugin_statuses(pm)
    if args.json:
        print_json(
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
    print(table(rows, ["plugin", "state", "source", "hooks / reason"]))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """``hookqueue check``: integrity and consistency problems; exit 1 if any."""
    with queue_from_args(args) as queue:
        problems = queue.check()
        version = queue.db.schema_version()
        path = queue.db.location
    if args.json:
        print_json(
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
        print_json(
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
    print(table(rows, ["worker", "pid", "queues", "concurrency", "processed", "heartbeat"]))
    return 0


# -- worker -------------------------------------------------------------------------------------


def load_app(spec: str) -> tuple[Queue | None, TaskHandlerRegistry | None]:
    """Import ``module:attr`` (the user named it) and return the queue or registry it names.

    The current directory is searched first (as ``huey_consumer`` does), so ``--app
    tasks:queue`` finds ``./tasks.py``. ``attr`` may be a :class:`Queue`, a
    :class:`TaskHandlerRegistry`, or a callable returning one of them.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValidationError(
            "--app", spec, "must be module:attribute", "e.g. --app myapp.tasks:queue"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValidationError(
            "--app",
            spec,
            f"cannot import {module_name!r} ({exc})",
            "run from the directory that holds it, or add it to PYTHONPATH",
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


#: The fix shown when a worker would start without handlers.
_APP_FIX = (
    "name the Queue or TaskHandlerRegistry your handlers are registered on, "
    "e.g. --app myapp.tasks:queue"
)


def banner(worker: Any, queue: Queue, processes: int) -> str:
    """What a worker prints as it starts: version, store, queues, concurrency, processes,
    durability, and every handler with its retry setting and timeout."""
    from .. import __version__

    queues = "every queue" if worker.all_queues else ", ".join(worker.queues)
    durability = getattr(queue.db, "durability", "?")
    lines = [
        f"hookqueue {__version__} worker {worker.worker_id} (pid {os.getpid()} on "
        f"{socket.gethostname()})",
        f"  store:       {queue.db.location} (durability {durability})",
        f"  queues:      {queues}",
        f"  concurrency: {worker.concurrency} per process x {processes} process(es), "
        f"lease {worker.lease_seconds:g}s"
        + (f", recycled after {worker.max_tasks} tasks" if worker.max_tasks else ""),
        f"  retention:   {queue.retention} ("
        + (
            f"pruned every {timedelta(seconds=worker.prune_interval)})"
            if worker.prune_interval
            else "pruned by hookqueue prune; --prune-every to have workers do it)"
        ),
        "  handlers:",
    ]
    default, honours_options = default_retry_policy(queue.pm)
    for task_type in worker.handler_registry.get_registered_types():
        spec = worker.handler_registry.find(task_type)
        retry = spec.options.get("retry") if spec is not None else None
        timeout = f"{spec.timeout:g}s" if spec is not None and spec.timeout else "none"
        if retry is None:
            policy = f"{default} (the queue's default)"
        elif honours_options:
            policy = repr(retry)
        else:
            policy = f"{default} ({retry!r} is unused: no retry plugin is active)"
        lines.append(f"    {task_type:<24} retry: {policy}; timeout: {timeout}")
    return "\n".join(lines)


def default_retry_policy(pm: pluggy.PluginManager) -> tuple[str, bool]:
    """The retry policy of a task type without one of its own, as the banner names it: that
    of the first ``hookqueue_retry`` implementation pluggy calls — a registered policy
    (``Queue(plugins=[FixedDelay(delay=30)])``), a plugin module's ``DEFAULT_POLICY`` (the
    ``retry`` plugin's ``ExponentialBackoff``), another plugin by name, or the core's, which
    retries nothing (only a crashed worker's task runs again).

    :returns: the description, and whether a type's own policy (``options["retry"]``) is
        honoured — not when the core answers alone.
    """
    for impl in reversed(pm.hook.hookqueue_retry.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            continue
        for candidate in (impl.plugin, getattr(impl.plugin, "DEFAULT_POLICY", None)):
            if callable(getattr(candidate, "decide", None)) and isinstance(
                getattr(candidate, "max_attempts", None), int
            ):
                return repr(candidate), True
        if impl.plugin_name == CORE_PLUGIN_NAME:
            break
        return f"what plugin {impl.plugin_name!r} decides", True
    return "none: a failed attempt is final (no retry plugin is active)", False


def _worker_child(args: argparse.Namespace) -> int:
    from .attempt import describe_stats
    from .worker import WorkerEngine

    app_queue, registry = load_app(args.app)
    handlers = registry if registry is not None else getattr(app_queue, "handlers", None)
    # A worker without handlers would lease nothing and look healthy: refuse before it
    # opens the database or registers itself.
    if handlers is None or not handlers.get_registered_types():
        raise ValidationError(
            "--app",
            args.app,
            "has no handlers registered, so the worker would run nothing",
            _APP_FIX,
        )
    if app_queue is not None and args.db is not None and app_queue.db.location != str(args.db):
        queue = Queue(args.db)
        registry = app_queue.handlers
    else:
        queue = app_queue or queue_from_args(args, create=True)
    worker = WorkerEngine(
        queue,
        worker_id=args.worker_id,
        handler_registry=registry,
        queues=args.queues,
        all_queues=args.all_queues,
        concurrency=args.concurrency,
        lease_seconds=args.lease_seconds,
        shutdown_grace=args.shutdown_grace,
        max_tasks=args.max_tasks_per_child,
        scheduler=not args.no_scheduler,
        prune_interval=args.prune_every,
    )
    if not args.quiet:
        print(banner(worker, queue, args.total_processes or args.processes), file=sys.stderr)
    started = time.monotonic()
    stats = worker.run_until_idle() if args.until_idle else worker.run()
    if not args.quiet:
        print(
            f"hookqueue worker {worker.worker_id} stopped after "
            f"{time.monotonic() - started:.1f}s: {describe_stats(stats)}",
            file=sys.stderr,
        )
    queue.close()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """``hookqueue worker``: be the worker (one process) or supervise several."""
    if not args.app:
        raise ValidationError(
            "--app",
            None,
            "is missing, so the worker would have no handlers and run nothing",
            _APP_FIX,
        )
    if args.processes == 1:
        if args.metrics_port is not None:
            os.environ["HOOKQUEUE_METRICS_PORT"] = str(args.metrics_port)
        return _worker_child(args)
    return supervise(args)


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------


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
        print_json(attrs.asdict(report))
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
    from .. import __version__

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
            help="log at INFO level: one line per task a worker starts and finishes",
        )
        parser.add_argument(
            "--log-level",
            choices=logs.LEVELS,
            default=default,
            help="log level (default warning; info with -v)",
        )
        parser.add_argument(
            "--log-format",
            choices=("text", "json"),
            default=default if suppress else "text",
            help="log lines as text (default) or one JSON object per line",
        )
        return parser

    common = options(CommandParser(add_help=False, allow_abbrev=False), suppress=True)
    parser = options(
        # No abbreviations: a plugin's "--log" must not collide with a prefix of ours.
        CommandParser(prog="hookqueue", description="A persistent task queue.", allow_abbrev=False),
        suppress=False,
    )
    parser.add_argument("--version", action="version", version=f"hookqueue {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    statuses = [s.value for s in TaskStatus]

    p = sub.add_parser("enqueue", parents=[common], help="add a task")
    p.add_argument("task_type")
    p.add_argument("--payload", help="JSON payload")
    p.add_argument("--priority", type=int, default=100, help="lower runs first (default 100)")
    p.add_argument("--delay", type=parse_duration, help="run after this long (e.g. 30s, 15m)")
    p.add_argument("--max-attempts", type=positive_int)
    p.add_argument("--key", help="idempotency key")
    p.add_argument("--queue", default="default")
    p.add_argument("--timeout", type=_positive_seconds, help="seconds one attempt may take")
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("ls", parents=[common], help="list tasks (newest first)")
    _add_filter_options(p, statuses=statuses)
    p.add_argument("--limit", type=positive_int, default=50)
    p.add_argument("--after", type=int, help="continue after this id")
    p.add_argument("--oldest-first", action="store_true")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", parents=[common], help="show one task and its failed attempts")
    p.add_argument("task_id", type=_task_id)
    p.set_defaults(func=cmd_show)

    for name, func, text, scope in (
        (
            "cancel",
            cmd_cancel,
            "cancel tasks by id or filter (queued now, running by their workers)",
            ["queued", "running"],
        ),
        ("retry", cmd_retry, "queue failed or cancelled tasks again", ["failed", "cancelled"]),
        ("purge", cmd_purge, "delete queued tasks that match (they never run)", ["queued"]),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("ids", nargs="*", type=_task_id, metavar="ID", help="task ids")
        _add_filter_options(p, statuses=scope)
        p.add_argument("--all", action="store_true", help=f"{name} every task it applies to")
        p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
        p.set_defaults(func=func)

    p = sub.add_parser("prune", parents=[common], help="delete finished tasks")
    p.add_argument(
        "--older-than",
        type=parse_duration,
        help="finished more than this long ago (default: the queue's retention: --app's, "
        "else $HOOKQUEUE_RETENTION, else 7d)",
    )
    p.add_argument(
        "--app", help="module:attribute of the Queue whose retention (and database) to use"
    )
    p.add_argument("--status", action="append", choices=["completed", "failed", "cancelled"])
    p.add_argument("--vacuum", action="store_true", help="give the space back to the file system")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("wait", parents=[common], help="wait for a task and print its result")
    p.add_argument("task_id", type=_task_id)
    p.add_argument("--timeout", type=_positive_seconds, help="seconds to wait at most")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("queues", parents=[common], help="list queues: tasks, paused or not")
    p.set_defaults(func=cmd_queues)
    for name, func, text in (
        ("pause", cmd_pause, "stop every worker leasing from a queue (persisted)"),
        ("resume", cmd_resume, "let workers lease from a paused queue again"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("queue_name", metavar="QUEUE")
        p.set_defaults(func=func)

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
    p.add_argument("--processes", type=positive_int, default=1)
    p.add_argument("--concurrency", type=positive_int, default=10)
    p.add_argument("--queues", nargs="+", default=["default"])
    p.add_argument(
        "--all-queues", action="store_true", help="lease from every queue that has tasks"
    )
    p.add_argument("--lease-seconds", type=_positive_seconds, default=10.0)
    p.add_argument("--shutdown-grace", type=float, default=30.0)
    p.add_argument("--worker-id")
    p.add_argument("--until-idle", action="store_true", help="exit when nothing is due")
    p.add_argument(
        "--max-tasks-per-child",
        type=positive_int,
        help="restart each worker process after it finished this many tasks",
    )
    p.add_argument(
        "--prune-every",
        type=_interval,
        help="delete finished tasks older than the queue's retention at start and then this "
        "often (e.g. 1h; off by default; with --processes, the first process does it)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no start banner and stop line")
    # Set by the supervisor on its first child, whose banner speaks for all of them.
    p.add_argument("--total-processes", type=positive_int, help=argparse.SUPPRESS)
    p.add_argument(
        "--no-scheduler",
        action="store_true",
        help="take no part in periodic schedules (the periodic plugin): declare none, fire no tick",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on 127.0.0.1:PORT (PORT+i for the i-th process; "
        "needs hookqueue[prometheus])",
    )
    p.set_defaults(func=cmd_worker)

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
                    f"a plugin's subcommand {command.name!r} clashes with the built-in one; "
                    "block that plugin or rename"
                )
            p = sub.add_parser(
                command.name, parents=[common], help=command.help, allow_abbrev=False
            )
            command.configure(p)
            p.set_defaults(func=command.run)
    return parser


def _log_level(args: argparse.Namespace) -> str:
    if os.environ.get("HOOKQUEUE_TRACE_PLUGINS") == "1":
        return "debug"
    if args.log_level:
        return str(args.log_level)
    return "info" if args.verbose else "warning"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docs)."""
    hooks: Hooks | None
    try:
        hooks = Hooks(make_plugin_manager(load_entrypoints=True))
    except HookqueueError as exc:
        print(error_line(exc), file=sys.stderr)
        hooks = None
    parser = build_parser(hooks)
    args = parser.parse_args(argv)
    logs.configure(_log_level(args), args.log_format)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except HookqueueError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``hookqueue ls | head``): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: one line, and the traceback on request
        if os.environ.get("HOOKQUEUE_DEBUG") == "1":
            raise
        print(
            f"hookqueue: internal error: {type(exc).__name__}: {exc}. Fix: report it with "
            "the output of the same command run with HOOKQUEUE_DEBUG=1",
            file=sys.stderr,
        )
        return 70
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
