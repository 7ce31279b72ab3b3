"""``hookqueue schedules ls|add|pause|resume|remove``: the stored schedules from the shell.

Every action takes ``--db`` and ``--json`` (also after the action's name); errors are one line
naming the problem and the fix, with exit code 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from hookqueue.core.models import CliCommand
from hookqueue.core.render import print_json, table, when

from .manage import (
    add_schedule,
    list_schedules,
    pause_schedule,
    remove_schedule,
    resume_schedule,
)
from .schedule import MISFIRE_POLICIES, Schedule, ScheduleInfo


def _row(info: ScheduleInfo) -> list[str]:
    s = info.schedule
    state = "paused" if info.paused else ("done" if info.next_tick is None else "active")
    return [
        s.key,
        s.when + ("" if s.tz == "UTC" else f" ({s.tz})"),
        s.task_type or "",
        state,
        when(info.next_tick, s.tz),
        when(info.last_tick, s.tz),
        f"{info.fired}/{info.skipped}",
        s.misfire + ("" if s.overlap else ", no overlap"),
        info.source,
    ]


def _show(info: ScheduleInfo, verb: str) -> None:
    s = info.schedule
    nxt = when(info.next_tick, s.tz) or "none"
    print(f"schedule {s.key!r} {verb}: {s.when} → {s.task_type}; next tick {nxt}")


def _queue(args: argparse.Namespace) -> Any:
    from hookqueue.core.cli import queue_from_args

    # Adding a schedule may create the database (as enqueue does); the other actions only
    # read or change what is there and refuse a database that does not exist.
    return queue_from_args(args, create=args.schedules_command == "add")


def _payload(text: str | None) -> Any:
    from hookqueue.core.cli import json_option

    return json_option("--payload", text)


def _duration(text: str) -> float:
    from hookqueue.core.cli import parse_duration

    return parse_duration(text).total_seconds()


def _run(args: argparse.Namespace) -> int:
    action = args.schedules_command
    with _queue(args) as queue:
        if action == "ls":
            infos = list_schedules(queue)
            if args.json:
                print_json([i.to_dict() for i in infos])
            elif not infos:
                print("no schedules (declare them on handlers, or: hookqueue schedules add)")
            else:
                headers = [
                    "name",
                    "when",
                    "type",
                    "state",
                    "next tick",
                    "last fired",
                    "fired/skipped",
                    "misfire",
                    "source",
                ]
                print(table([_row(i) for i in infos], headers))
            return 0
        if action == "add":
            schedule = Schedule(
                args.when,
                name=args.name,
                tz=args.tz,
                task_type=args.type,
                payload=_payload(args.payload),
                queue=args.queue,
                priority=args.priority,
                max_attempts=args.max_attempts,
                timeout=args.timeout,
                misfire=args.misfire,
                grace=args.grace,
                catch_up=args.catch_up,
                overlap=not args.no_overlap,
            )
            info = add_schedule(queue, schedule, paused=args.paused, replace=args.replace)
            verb = "added" + (" (paused)" if info.paused else "")
        elif action == "pause":
            info = pause_schedule(queue, args.name)
            verb = "paused"
        elif action == "resume":
            info = resume_schedule(queue, args.name)
            verb = "resumed"
        else:
            remove_schedule(queue, args.name, force=args.force)
            if args.json:
                print_json({"removed": args.name})
            else:
                print(f"schedule {args.name!r} removed")
            return 0
    if args.json:
        print_json(info.to_dict())
    else:
        _show(info, verb)
    return 0


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="schedules_command", metavar="ACTION")
    sub.required = True
    ls = sub.add_parser("ls", help="list the stored schedules")
    add = sub.add_parser("add", help="add a schedule to the database")
    add.add_argument("name", help="a unique name")
    add.add_argument("when", help="'*/5 * * * *', '@daily', 'every 30s', ...")
    add.add_argument("--type", required=True, help="the task type (handler) to enqueue")
    add.add_argument("--payload", help="JSON payload of every tick's task")
    add.add_argument("--tz", default="UTC", help="time zone of a cron expression (default UTC)")
    add.add_argument("--queue", default="default")
    add.add_argument("--priority", type=int, default=100)
    add.add_argument("--max-attempts", type=int)
    add.add_argument("--timeout", type=float, help="seconds one attempt may take")
    add.add_argument(
        "--misfire",
        choices=MISFIRE_POLICIES,
        default="latest",
        help="missed ticks: the newest within --grace (latest), none (skip), all (catch up)",
    )
    add.add_argument(
        "--grace", type=_duration, default=600.0, help="how late a tick may fire (default 10m)"
    )
    add.add_argument(
        "--catch-up", type=int, default=100, help="most ticks --misfire all fires at once"
    )
    add.add_argument(
        "--no-overlap",
        action="store_true",
        help="skip a tick while the previous tick's task is queued or running",
    )
    add.add_argument("--paused", action="store_true", help="store it paused")
    add.add_argument("--replace", action="store_true", help="replace a schedule of that name")
    pause = sub.add_parser("pause", help="stop a schedule firing (survives restarts)")
    resume = sub.add_parser("resume", help="fire a paused schedule again, from its next tick")
    remove = sub.add_parser("remove", help="delete a schedule (its tasks stay)")
    for p in (pause, resume, remove):
        p.add_argument("name")
    remove.add_argument(
        "--force", action="store_true", help="also a schedule declared in code (it comes back)"
    )
    for p in (ls, add, pause, resume, remove):
        # Also accept --db and --json after the action; SUPPRESS keeps a value given before.
        p.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
        )


#: ``hookqueue schedules``.
SCHEDULES_COMMAND = CliCommand(
    name="schedules",
    help="periodic schedules: ls, add, pause, resume, remove",
    configure=_configure,
    run=_run,
)

__all__ = ["SCHEDULES_COMMAND"]
