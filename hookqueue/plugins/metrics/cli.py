"""``hookqueue stats``: the health summary on the command line (table or ``--json``), with
``--check`` for monitoring scripts and ``--watch`` to follow it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from hookqueue.core.cli import parse_duration, queue_from_args
from hookqueue.core.errors import ValidationError
from hookqueue.core.models import CliCommand, TaskStatus
from hookqueue.core.render import duration, table

from .health import QueueMetrics

_STATUSES = [s.value for s in TaskStatus]


def render_summary(summary: Mapping[str, Any], *, database: str = "") -> str:
    """The health summary as the text table ``hookqueue stats`` prints."""
    verdict = "HEALTHY" if summary["healthy"] else "UNHEALTHY"
    when = summary["timestamp"].replace("T", " ").split(".")[0].replace("+00:00", "")
    title = ["hookqueue stats", database, f"{when} UTC", verdict]
    lines = ["  ".join(part for part in title if part), ""]
    depth = summary["depth_by_type"]
    rows: list[list[Any]] = [[t, *(depth[t].get(s, 0) for s in _STATUSES)] for t in sorted(depth)]
    rows.append(["(all)", *(summary["queue_depth"].get(s, 0) for s in _STATUSES)])
    lines += table(rows, ["type", *_STATUSES]).splitlines()
    lines.append("")
    window = summary["window_seconds"]
    times = summary["processing_time_seconds"]
    retry = summary["retry"]
    workers = summary["workers"]
    lines += [
        f"queued:      {summary['queued_due']} due, {summary['queued_delayed']} delayed; "
        f"oldest due task waited {duration(summary['oldest_queued_task_age_seconds'])}",
        f"last {window:g}s:  {summary['finished_in_window']} finished, "
        f"{summary['throughput_per_second']:.2f}/s, success {summary['success_rate']:.1%}, "
        f"failure {summary['failure_rate']:.1%}",
        f"run time:    p50 {duration(times['p50'])}  p90 {duration(times['p90'])}  "
        f"p95 {duration(times['p95'])}  p99 {duration(times['p99'])}  "
        f"max {duration(times['max'])}  ({times['count']} completed)",
        f"retries:     {retry['waiting_retry']} waiting, {retry['retried_tasks']} finished "
        f"after more than one attempt ({retry['retry_rate']:.1%}), "
        f"{retry['exhausted']} ran out of attempts",
        f"workers:     {workers['active']} active, {workers['stale']} stale, "
        f"{workers['lost']} lost, {workers['stopped']} stopped",
    ]
    limits = summary.get("limits") or {}
    if limits:
        shown = ", ".join(
            f"{name} {v['running']} running/{v['waiting']} waiting"
            for name, v in sorted(limits.items())
        )
        lines.append(f"limits:      {shown}")
    if summary["reasons"]:
        lines.append("")
        lines.append("unhealthy because:")
        lines += [f"  - {reason}" for reason in summary["reasons"]]
    return "\n".join(lines)


def _duration_arg(text: str) -> float:

    seconds = parse_duration(text).total_seconds()
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than 0 seconds")
    return seconds


def _fraction_arg(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a fraction; use e.g. 0.2 or 20%"
        ) from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 0 to 1 (or 0% to 100%)")
    return value


def _configure_stats(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window",
        type=_duration_arg,
        default=None,
        metavar="DURATION",
        help="history that rates and percentiles cover (default 5m; e.g. 60s, 15m, 1h)",
    )
    parser.add_argument(
        "--watch",
        type=_duration_arg,
        nargs="?",
        const=2.0,
        default=None,
        metavar="INTERVAL",
        help="refresh in place every INTERVAL (default 2s) until Ctrl-C; with --json, "
        "print one JSON object per line",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        metavar="N",
        help="with --watch: stop after N refreshes",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when the queue is unhealthy (for monitoring scripts)",
    )
    parser.add_argument(
        "--max-failure-rate",
        type=_fraction_arg,
        default=None,
        metavar="FRACTION",
        help="unhealthy above this failure rate (default 0.2)",
    )
    parser.add_argument(
        "--worker-timeout",
        type=_duration_arg,
        default=None,
        metavar="DURATION",
        help="a worker silent this long is not active (default 60s)",
    )
    parser.add_argument(
        "--max-queue-age",
        type=_duration_arg,
        default=None,
        metavar="DURATION",
        help="unhealthy when the oldest due task waited longer (default 10m)",
    )


def _thresholds_from_args(args: argparse.Namespace) -> dict[str, Any]:
    options = {
        "window_seconds": args.window,
        "max_failure_rate": args.max_failure_rate,
        "worker_timeout_seconds": args.worker_timeout,
        "max_oldest_queued_age_seconds": args.max_queue_age,
    }
    return {k: v for k, v in options.items() if v is not None}


def _run_stats(args: argparse.Namespace) -> int:

    if args.count is not None and args.count < 1:
        raise ValidationError("--count", args.count, "must be >= 1", "e.g. --count 10")
    out = sys.stdout
    healthy = True
    with queue_from_args(args) as queue:
        metrics = QueueMetrics(queue, **_thresholds_from_args(args))
        database = queue.db.location
        shown = 0
        try:
            while True:
                summary = metrics.get_queue_health_summary()
                healthy = summary["healthy"]
                if args.json:
                    text = json.dumps(
                        {"database": database, **summary},
                        sort_keys=True,
                        indent=None if args.watch is not None else 2,
                    )
                else:
                    text = render_summary(summary, database=database)
                if args.watch is not None and not args.json and out.isatty():
                    # Home the cursor and clear the screen, then draw: the table refreshes
                    # in place instead of scrolling.
                    out.write("\x1b[H\x1b[2J")
                out.write(text + "\n")
                if args.watch is not None and not args.json and not out.isatty():
                    out.write("\n")
                out.flush()
                shown += 1
                if args.watch is None or (args.count is not None and shown >= args.count):
                    break
                time.sleep(args.watch)
        except KeyboardInterrupt:
            pass
    return 1 if args.check and not healthy else 0


STATS_COMMAND = CliCommand(
    name="stats",
    help="queue health: depth, throughput, failure rate, run time percentiles, workers",
    configure=_configure_stats,
    run=_run_stats,
)
