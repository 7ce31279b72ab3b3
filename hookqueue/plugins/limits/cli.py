"""``hookqueue limits ls|set|rm``: the stored limit rules from the shell.

Every action takes ``--db`` and ``--json`` (also after the action's name); errors are one line
naming the problem and the fix, with exit code 2 (``rm`` of an unknown name: exit 1).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import attrs

from hookqueue.core.clock import from_us
from hookqueue.core.models import CliCommand, LimitRule
from hookqueue.core.render import table

from .manage import LimitNotFound, limit_usage, list_limits, remove_limit, set_limit


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _rule_dict(rule: LimitRule) -> dict[str, Any]:
    return attrs.asdict(rule)


def _queue(args: argparse.Namespace) -> Any:
    from hookqueue.core.cli import queue_from_args

    # Setting a rule may create the database (as enqueue does); ls and rm refuse a missing one.
    return queue_from_args(args, create=args.limits_command == "set")


def _period(text: str) -> float:
    from hookqueue.core.cli import parse_duration

    try:
        seconds = parse_duration(text).total_seconds()
    except Exception as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than 0 seconds (e.g. 1s, 1m)")
    return seconds


def _weight(text: str) -> tuple[str | int, int]:
    """``VALUE=N``: a partition value (an integer if it reads as one) and its weight."""
    value, sep, weight = text.rpartition("=")
    if not sep or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not VALUE=N (e.g. premium=3)")
    try:
        n = int(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {weight!r} is not a whole number") from None
    key: str | int = int(value) if value.lstrip("-").isdigit() else value
    return key, n


def _ls(queue: Any, as_json: bool) -> int:
    rules = list_limits(queue)
    usage = limit_usage(queue)
    if as_json:
        _print_json(
            {
                "limits": [_rule_dict(r) for r in rules],
                "usage": [
                    {
                        **attrs.asdict(u),
                        "next_start": None
                        if u.next_start_us is None
                        else from_us(u.next_start_us).isoformat(),
                    }
                    for u in usage
                ],
            }
        )
        return 0
    if not rules:
        print("no limits (add one: hookqueue limits set NAME --concurrency N ...)")
        return 0
    totals: dict[str, list[int]] = {r.name: [0, 0, 0, 0] for r in rules}
    for u in usage:
        t = totals.setdefault(u.rule, [0, 0, 0, 0])
        t[0] += u.running
        t[1] += u.due
        t[2] += u.waiting
        t[3] += 1
    rows = [
        [r.name, r.describe(), *totals[r.name][:3], totals[r.name][3] if r.partition_by else ""]
        for r in rules
    ]
    print(table(rows, ["name", "limit", "running", "due", "waiting", "partitions"]))
    held = [u for u in usage if u.waiting]
    if held:
        print()
        print("waiting on a limit:")
        for u in held[:20]:
            part = "" if u.partition is None else f" [{u.partition}]"
            print(f"  {u.rule}{part}: {u.waiting} waiting, {u.running} running")
    return 0


def _run(args: argparse.Namespace) -> int:
    action = args.limits_command
    with _queue(args) as queue:
        if action == "ls":
            return _ls(queue, args.json)
        if action == "rm":
            try:
                remove_limit(queue, args.name)
            except LimitNotFound as exc:
                print(f"hookqueue limits rm: {exc}")
                return 1
            if args.json:
                _print_json({"removed": args.name})
            else:
                print(f"limit {args.name!r} removed")
            return 0
        rule = LimitRule(
            name=args.name,
            queue=args.queue,
            task_type=args.type,
            partition_by=args.partition_by,
            partition_in=args.partition_in,
            concurrency=args.concurrency,
            rate=args.rate,
            period=args.per,
            burst=args.burst,
            fair=args.fair,
            weights=dict(args.weight or ()),
        )
        outcome = set_limit(queue, rule)
    if args.json:
        _print_json({"outcome": outcome, "limit": _rule_dict(rule)})
    else:
        print(f"limit {rule.name!r} {outcome}: {rule.describe()}")
    return 0


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="limits_command", metavar="ACTION")
    sub.required = True
    ls = sub.add_parser("ls", help="list the stored limits and what waits on them")
    put = sub.add_parser("set", help="store a limit (replaces one of the same name)")
    put.add_argument("name", help="a unique name (letters, digits, _ . : -)")
    put.add_argument("--queue", help="limit only this queue's tasks (default: every queue)")
    put.add_argument("--type", help="limit only this task type (default: every type)")
    put.add_argument(
        "--partition-by", metavar="KEY", help="count each value of this top-level key on its own"
    )
    put.add_argument(
        "--partition-in",
        choices=("payload", "headers"),
        default="payload",
        help="where --partition-by is read (default: payload)",
    )
    put.add_argument("--concurrency", type=int, help="at most N running at once")
    put.add_argument("--rate", type=int, help="at most N starts per --per")
    put.add_argument(
        "--per", type=_period, default=1.0, help="the rate's period: 1s, 1m, 1h (default 1s)"
    )
    put.add_argument(
        "--burst", type=int, default=1, help="how many may start back to back (default 1)"
    )
    put.add_argument("--fair", action="store_true", help="round-robin between the partitions")
    put.add_argument(
        "--weight",
        type=_weight,
        action="append",
        metavar="VALUE=N",
        help="with --fair: N turns per round for the partition VALUE (repeat for more)",
    )
    rm = sub.add_parser("rm", help="delete a limit (the tasks it held may start)")
    rm.add_argument("name")
    for p in (ls, put, rm):
        # Also accept --db and --json after the action; SUPPRESS keeps a value given before.
        p.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
        )


#: ``hookqueue limits``.
LIMITS_COMMAND = CliCommand(
    name="limits",
    help="concurrency and rate limits, fairness: ls, set, rm",
    configure=_configure,
    run=_run,
)

__all__ = ["LIMITS_COMMAND"]
