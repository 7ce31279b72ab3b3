"""Write ``docs/reliability.md`` from a run of the reliability suite, so it cannot drift.

Usage, from the repository root::

    python -m tests.reliability.report                   # run tests/reliability, then write the page
    python -m tests.reliability.report --results FILE    # write the page from an earlier run's JSON
    python -m tests.reliability.report --output -        # print instead of writing

The suite records every test's fault, injection count, figures and outcome (see
``tests/reliability/conftest.py``) into ``$HOOKQUEUE_RELIABILITY_RESULTS`` (default
``<tempdir>/hookqueue-reliability/results.json``); this script renders that file. CI runs
the suite but never this script, so a CI run changes no tracked file. The exit status is
pytest's (0 when rendering an existing file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = ROOT / "docs" / "reliability.md"
SUITE = "tests/reliability"
#: Tells the suite that this run rewrites the page, so the page's own check is skipped.
REGENERATING_VARIABLE = "HOOKQUEUE_RELIABILITY_REGENERATING"

OUTCOMES = {
    "passed": "pass",
    "failed": "**FAIL**",
    "xfailed": "known problem",
    "xpassed": "**XPASS** (fixed? drop the xfail)",
    "skipped": "skipped in this run",
    "not run": "not run",
}

#: The promises this page makes, each with the tests whose outcome decides it. A promise
#: is "held" only when every one of its tests passed in the run.
GUARANTEES: list[tuple[str, list[str]]] = [
    (
        "At-least-once execution: a task whose worker is SIGKILLed while running it runs "
        "again after its lease expires; no other task runs twice, no attempt runs in two "
        "processes, no task is lost.",
        ["test_kill.py::test_sigkill_workers_while_producer_enqueues"],
    ),
    (
        "Periodic schedules: each tick enqueues exactly one task whichever worker processes "
        "fire it and whenever they are SIGKILLed (one at a time, or all at once); with "
        '`misfire="all"` no tick is missed, those that fell while no worker ran included.',
        ["test_periodic.py::test_sigkilled_schedulers_fire_every_tick_exactly_once"],
    ),
    (
        "`enqueue_many`, lease and complete are all or none whenever the process dies "
        "(random SIGKILL, or SIGKILL at each write and at the fsync of the transaction).",
        [
            "test_kill.py::test_producer_sigkilled_during_enqueue_many",
            "test_kill.py::test_sigkill_inside_a_transaction",
        ],
    ),
    (
        "An I/O error, a full disk or a read-only file system fails the call with a "
        "StoreError (DatabaseFull for a full disk) naming the database; a call that fails "
        "changed nothing; the same call succeeds once the disk behaves; no acknowledged task "
        "is lost.",
        [
            "test_io_faults.py::test_io_error_at_every_write_and_sync",
            "test_io_faults.py::test_disk_full_through_the_vfs",
            "test_io_faults.py::test_disk_full_max_page_count",
            "test_io_faults.py::test_failed_checkpoints_lose_nothing",
            "test_io_faults.py::test_worker_meets_a_full_disk_and_loses_nothing",
            "test_io_faults.py::test_failed_fsync_is_not_reported_as_rolled_back",
            "test_io_faults.py::test_commit_not_reported_failed_when_only_the_checkpoint_failed",
            "test_io_faults.py::test_new_database_on_a_read_only_file_system",
        ],
    ),
    (
        "A power cut at any sync or write leaves a database that passes integrity_check and "
        "`Queue.check()` and holds the tasks of some commit made before the cut (a call is "
        'there whole or not at all); at `durability="full"` every acknowledged enqueue, '
        "completion and other outcome survives (a lease that carries no outcome may be lost: "
        "the task runs again).",
        [
            "test_powerloss.py::test_power_cut_at_full_durability_loses_nothing_acknowledged",
            "test_powerloss.py::test_power_cut_at_normal_durability_is_measured",
            "test_powerloss.py::test_power_cut_on_a_disk_without_powersafe_overwrite",
        ],
    ),
    (
        "A lock held by another process beyond `busy_timeout` gives DatabaseBusy naming the "
        "database after `busy_timeout`, writes nothing, and work resumes when the lock goes "
        "(a running worker included).",
        [
            "test_locking.py::test_write_lock_held_longer_than_busy_timeout",
            "test_locking.py::test_lock_holder_killed_mid_transaction",
            "test_locking.py::test_exclusive_lock_blocks_readers_too",
            "test_locking.py::test_running_worker_resumes_after_the_lock_goes",
        ],
    ),
    (
        "A worker never misses a wake-up: a task enqueued at any moment starts without "
        "waiting for a poll.",
        ["test_races.py::test_wake_up_during_the_workers_read_is_not_lost"],
    ),
    (
        "A handler's fault costs only its own task: an async handler that blocks the event "
        "loop longer than its lease still runs once (and the block is logged, naming the "
        "task); a sync handler that never returns does not keep its worker from exiting on "
        "SIGTERM, and its lease is released; a worker leases only the task types it has "
        "handlers for, and the worker command refuses to start with none.",
        ["test_worker_faults.py::"],
    ),
    (
        "A file that is not a hookqueue database (not SQLite, another application's, a newer "
        "schema, truncated) is refused with an error naming the path and is never modified.",
        [
            "test_corruption.py::test_file_that_is_not_sqlite",
            "test_corruption.py::test_sqlite_database_of_another_application",
            "test_corruption.py::test_empty_sqlite_file_with_foreign_application_id",
            "test_corruption.py::test_database_from_a_newer_hookqueue",
            "test_corruption.py::test_truncated_database",
        ],
    ),
    (
        "Damage inside a hookqueue database is reported (check(), errors naming the path), "
        "never hidden, and one damaged task does not stop the others.",
        [
            "test_corruption.py::test_damaged_page_is_reported_not_hidden",
            "test_corruption.py::test_torn_write_in_the_wal",
            "test_corruption.py::test_unreadable_row_error_names_database_and_task",
            "test_corruption.py::test_unreadable_row_does_not_stop_the_queue",
            "test_corruption.py::test_payload_too_deep_to_decode_from_an_older_version",
            "test_corruption.py::test_random_damage_gives_only_clear_errors",
        ],
    ),
    (
        "Leases and delayed tasks behave when the wall clock jumps: no live lease is taken "
        "over early by a backward jump, a forward jump costs at most one extra attempt, "
        "ready tasks stay ready, durations use the monotonic clock.",
        ["test_clock.py::"],
    ),
    (
        "Every JSON value round-trips exactly; anything else gets a ValidationError naming "
        "the field, and nothing is written; payloads over `max_payload_bytes` (1 MiB by "
        "default, in UTF-8 bytes) are refused; SQL-looking names are only data.",
        ["test_bad_input.py::"],
    ),
    (
        "Nothing is unpickled or evaluated; every SQL statement in the store is constant or "
        "built from placeholders and the closed ORDER BY vocabulary; database files are 0600; "
        "task types and plugin names never import modules.",
        ["test_security.py::"],
    ),
]

#: The order of the sections (the rest follow, by name).
MODULE_ORDER = [
    "test_kill",
    "test_periodic",
    "test_io_faults",
    "test_powerloss",
    "test_locking",
    "test_races",
    "test_worker_faults",
    "test_corruption",
    "test_clock",
    "test_bad_input",
    "test_security",
    "test_report",
]

NOT_COVERED = [
    "Power loss beyond the simulated disk: file creation and deletion (directory entries) "
    "are durable at once there; a disk or controller that acknowledges a sync it did not do, "
    "or garbles bytes next to a write while claiming powersafe overwrite, loses acknowledged "
    "data (the checker's own test shows that it would be seen); the workloads run in one "
    "process (two connections), and the worker engine's own loop is not cut.",
    "Network file systems (NFS, SMB) and several hosts: SQLite's locking is not reliable "
    "there; hookqueue supports one machine.",
    "Read errors (EIO on read) and memory exhaustion (SQLITE_NOMEM).",
    "Size limits on `headers` and on handler results: none is enforced today.",
]


#: Prose printed under a module's table: how its tests work and figures of runs larger than
#: the suite's (each says when and how it was measured).
MODULE_NOTES: dict[str, list[str]] = {
    "test_periodic": [
        "The workers are `tests/reliability/_periodic_worker.py`: a `WorkerEngine` each, "
        "with the periodic plugin, declaring the same twenty schedules on its handler "
        '(`every 50ms`, `misfire="all"`), so each restart also declares them again. Ticks '
        "are real ticks of the wall clock fired by those processes. At the end the test reads "
        "every task back: each (schedule, tick) from the schedule's first tick to its next "
        "tick must have exactly one task. A longer run:",
        "",
        "```",
        "HOOKQUEUE_PERIODIC_CHAOS_SECONDS=300 pytest tests/reliability/test_periodic.py "
        "--timeout=0",
        "```",
        "",
    ],
    "test_powerloss": [
        "### How the simulation works",
        "",
        "`tests/reliability/_crashvfs.py` is an apsw VFS built on the design of SQLite's own "
        "crash layer (`src/test6.c`). It inherits every method of the default VFS and watches "
        "the database file, its WAL and its rollback journal:",
        "",
        "- A write goes to the real file at once (reads see it, as they see the page cache of "
        "a running machine) and is queued as unsynced for that file; so is a truncate.",
        "- A sync of a file makes that file's queued writes durable, and no other file's.",
        "- At the cut point (the n-th sync or the n-th write over those files, or after the "
        "workload's last call) the power goes: that sync or write does not complete, and "
        "each unsynced write of every file is kept (3 in 8), dropped (3 in 8) or torn "
        "(1 in 4). A torn write keeps a prefix of its 512-byte sectors, or a random subset "
        "of them, or gets garbage in some of them; it changes no byte outside its own range, "
        "as the VFS reports `POWERSAFE_OVERWRITE` like the unix VFS does. One test uses "
        "test6.c's default device instead: 4096-byte sectors, no powersafe overwrite, "
        "garbage over whole sectors (SQLite, told so, pads its synced WAL commits).",
        "- From the cut on every write and sync fails, so the call in progress raises and the "
        "connections close without changing what the disk holds. Then the reboot: the files "
        "are replaced by what the disk held, the `-shm` file is deleted (shared memory does "
        "not survive a power cut), and the database is opened through the ordinary VFS, "
        "which recovers it.",
        "",
        "A seed is a workload of 28 calls after the queue creates a new database: `enqueue` "
        "(a quarter with an idempotency key; payloads of 0 to 6,000 bytes), `enqueue_many` "
        "(2 to 8 tasks), leases, completions and failures (through `settle` or inside a "
        "lease), `Queue.retry` of failed tasks, `prune`, and now and then a clean close and "
        "reopen. The worker's calls run on a thread, and so a connection, of their own. Every "
        "other seed lowers hookqueue's checkpoint threshold from 1,000 WAL pages to 12, so "
        "that checkpoints and WAL restarts happen inside the workload and get cut too.",
        "",
        "The workload is first played without a cut, recording the `tasks` table after every "
        "commit (and checking it against what the calls returned). After a cut the rebooted "
        "database must:",
        "",
        "- pass `PRAGMA integrity_check` and `Queue.check()`;",
        "- hold, row for row, the `tasks` table after one of the commits made before the "
        "cut: a call the cut interrupted is stored whole or not at all, and one whose error "
        'says "rolled back" is not stored;',
        "- keep every commit that a completed sync of the WAL covered, at either durability;",
        '- at `durability="full"`, keep every call that returned before the cut except a '
        "lease that carries no outcome: each enqueued task with its payload, each completion "
        "with its result, each failure, retry and prune.",
        "",
        "The checker is tested as well: on a disk that ignores syncs, and on one that "
        "garbles the bytes next to a torn write while claiming powersafe overwrite, it "
        "reports the acknowledged work lost; on a rebooted database altered afterwards (a "
        "task of a batch deleted, a payload or result changed, a completion undone, the "
        "last enqueue deleted) it reports each change.",
        "",
        "### How much runs",
        "",
        'The suite runs 24 seeds × 7 cut points at each durability (at `"full"` the end, '
        '4 syncs and 2 writes; at `"normal"`, which syncs little, the end, 2 syncs and '
        '4 writes) and 8 seeds × 7 at `"full"` on the device without powersafe '
        "overwrite: 392 power cuts in about 10 s. The sweep below ran 500 seeds the same way.",
        "",
        "### A 500-seed sweep",
        "",
        "Run once on 2026-12-04 (SQLite 3.54.1, apsw 3.54.1.0, Python 3.11.7, 2 CPUs; 6 "
        "minutes) with the command below; 8,162 power cuts:",
        "",
        "| Durability | Power cuts | Unsound databases | Cuts that lost acknowledged work "
        "| Most acknowledged enqueues lost | Most acknowledged completions lost "
        "| Came back without its schema |",
        "|---|---:|---:|---:|---:|---:|---:|",
        '| `"full"` | 3,500 | 0 | 0 | 0 | 0 | 0 |',
        '| `"full"`, no powersafe overwrite | 1,162 | 0 | 0 | 0 | 0 | 0 |',
        '| `"normal"` | 3,500 | 0 | 1,667 | 77 | 20 | 1,080 |',
        "",
        'At `"full"` nothing acknowledged was lost. The calls the cut interrupted raised '
        "`CommitOutcomeUnknown` (3,077 times) or a `StoreError` saying the transaction was "
        "rolled back (251, never stored), or returned (668: the cut fell in the checkpoint "
        "hookqueue runs after a commit, or in a clean close, which log a failure instead of "
        "raising it).",
        "",
        'At `"normal"` a commit does not wait for the disk: the WAL is synced only when a '
        "checkpoint runs (hookqueue's own, once the WAL holds 1,000 pages, about 4 MB) or the "
        "last connection to the file closes (a queue closed while another process has the file "
        "open syncs nothing). A power cut loses every acknowledged call since then. In these "
        "28-call workloads on a new database that is up to all of them: 77 enqueued tasks and "
        "20 completions at most, and in 1,080 of the 3,500 cuts the database came back "
        "without even its schema, so the next open made a new, empty queue without an error. "
        "With a checkpoint every 12 pages the loss stayed within the calls since the last "
        "checkpoint (at most 14 enqueued tasks). No commit covered by a completed sync was "
        "lost and no database was unsound.",
        "",
        "### Running the sweep",
        "",
        "```",
        "HOOKQUEUE_POWERLOSS_SEEDS=500 pytest tests/reliability/test_powerloss.py --timeout=0",
        "```",
        "",
        "`HOOKQUEUE_POWERLOSS_SEEDS` sets the seeds per durability (a third of them on the "
        "device without powersafe overwrite); `--timeout=0` lifts the suite's 120 s limit per "
        "test. The figures go to the results file like any run's, and "
        "`python -m tests.reliability.report --results FILE --output -` shows them as this "
        "page would.",
        "",
    ],
}


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return " ".join(text.split()).replace("|", "\\|")


def _figures(figures: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {_cell(v)}" for k, v in figures.items())


def _matches(nodeid: str, ref: str) -> bool:
    path, _, name = nodeid.partition("::")
    file, _, test = ref.partition("::")
    if not path.endswith("/" + file):
        return False
    return not test or name == test or name.startswith(test + "[")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _verdict(outcomes: list[str]) -> str:
    if not outcomes:
        return "not measured (its tests were not in this run)"
    if all(o == "passed" for o in outcomes):
        return f"yes ({_plural(len(outcomes), 'test')})"
    bad = [o for o in outcomes if o not in ("passed", "xfailed", "skipped")]
    if bad:
        return "**NO** — " + ", ".join(sorted(set(bad)))
    known = outcomes.count("xfailed")
    return f"not yet — {_plural(known, 'known problem')} (below); {outcomes.count('passed')} passed"


def _groups(tests: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Records grouped by test function (the cases of a parametrized test together)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for t in tests:
        grouped.setdefault(t["nodeid"].split("[")[0], []).append(t)
    return list(grouped.values())


def _row(group: list[dict[str, Any]]) -> str:
    first = group[0]
    function = first["test"].split("[")[0]
    if len(group) == 1:
        fault = _cell(first["fault"])
        result = OUTCOMES.get(first["outcome"], first["outcome"])
        if first.get("failure"):
            result += f" ({_cell(first['failure'])})"
        figures = _figures(first["figures"])
    else:
        fault = "<br>".join(
            f"{_cell(t['fault'])}: {OUTCOMES.get(t['outcome'], t['outcome'])}"
            + (f" ({_cell(t['failure'])})" if t.get("failure") else "")
            for t in group
        )
        counts: dict[str, int] = defaultdict(int)
        for t in group:
            counts[OUTCOMES.get(t["outcome"], t["outcome"])] += 1
        result = ", ".join(f"{n} {label}" for label, n in counts.items())
        figures = "<br>".join(
            f"{t['test'].partition('[')[2].rstrip(']')}: {_figures(t['figures'])}"
            for t in group
            if t["figures"]
        )
    injected = sum(t["injected"] for t in group)
    return (
        f"| {fault}<br>`{function}` | {injected} | {_cell(first['checked'])} | {result} "
        f"| {figures} |"
    )


def render(data: dict[str, Any]) -> str:
    """The Markdown page for one run's results."""
    tests: list[dict[str, Any]] = data["tests"]
    env = data["environment"]
    counts: dict[str, int] = defaultdict(int)
    for t in tests:
        counts[t["outcome"]] += 1
    injected = sum(t["injected"] for t in tests)
    seconds = sum(t["duration_s"] for t in tests)
    lines = [
        "# Reliability and security",
        "",
        "<!-- Generated by `python -m tests.reliability.report` from a run of "
        "tests/reliability. Do not edit by hand: change the tests, then regenerate. -->",
        "",
        "What happens to hookqueue under the faults its users meet — crashes, I/O errors, a full "
        "disk, locks, damaged files, clock jumps, hostile input — as measured by the tests in "
        "`tests/reliability/`. Every row below is one test of the last run: the fault, how many "
        "times it was injected, what was checked, the outcome and the figures measured.",
        "",
        f"**Run:** {data['generated_at']} · Python {env['python']} · SQLite {env['sqlite']} · "
        f"apsw {env['apsw']} · {env['cpus']} CPUs · {env['platform']}",
        "",
        f"**Result:** {len(tests)} tests (parametrized cases counted one by one) — "
        f"{counts['passed']} passed, "
        f"{counts['xfailed']} known problems (expected failures, listed below), "
        f"{counts['failed']} failed"
        + (f", {counts['xpassed']} unexpectedly passed" if counts["xpassed"] else "")
        + (f", {counts['skipped']} skipped" if counts["skipped"] else "")
        + f"; {injected} faults injected in {seconds:.0f} s of test time.",
        "",
        "## Guarantees",
        "",
        "| Guarantee | Held in this run |",
        "|---|---|",
    ]
    for claim, refs in GUARANTEES:
        outcomes = [t["outcome"] for t in tests if any(_matches(t["nodeid"], r) for r in refs)]
        lines.append(f"| {_cell(claim)} | {_verdict(outcomes)} |")
    lines += [
        "",
        "Delivery is at least once: a task may run again when its worker dies after the "
        "handler finished but before the outcome was committed. Give handlers idempotent "
        "effects, and give enqueues an `idempotency_key` when a caller may retry them.",
        "",
    ]
    by_module: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in tests:
        by_module[t["module"]].append(t)
    modules = data.get("modules", {})
    order = {name: i for i, name in enumerate(MODULE_ORDER)}
    for module in sorted(by_module, key=lambda m: (order.get(m, len(order)), m)):
        title = modules.get(module) or module
        heading, _, summary = title.partition(":")
        summary = summary.strip()
        lines += [
            f"## {heading}",
            "",
            f"{summary[:1].upper()}{summary[1:]} (`tests/reliability/{module}.py`)".lstrip(),
            "",
            "| Fault | Injected | What is checked | Result | Figures |",
            "|---|---:|---|---|---|",
        ]
        lines += [_row(group) for group in _groups(by_module[module])]
        lines.append("")
        lines += MODULE_NOTES.get(module, [])
    known: dict[str, list[dict[str, Any]]] = {}
    for t in tests:
        if t["outcome"] in ("xfailed", "xpassed"):
            known.setdefault(t["known_problem"], []).append(t)
    lines += ["## Known problems", ""]
    if known:
        lines += [
            "Each is a test marked `xfail(strict=True)`: it fails today for the reason given, "
            "and the suite fails as soon as it passes, so the mark goes with the fix.",
            "",
        ]
        for reason, cases in known.items():
            names = ", ".join(f"`{t['test']}`" for t in cases)
            lines.append(f"- {_cell(reason)} — {names}")
    else:
        lines.append("None in this run.")
    lines += ["", "## Not covered", ""]
    lines += [f"- {item}" for item in NOT_COVERED]
    lines += [
        "",
        "## Regenerating this page",
        "",
        "```",
        "python -m tests.reliability.report                 # runs the suite (under a minute), writes this file",
        "python -m tests.reliability.report --results FILE  # renders a results file of an earlier run",
        "```",
        "",
        "`pytest tests/reliability` alone writes the results to `$HOOKQUEUE_RELIABILITY_RESULTS` "
        "(default `<tempdir>/hookqueue-reliability/results.json`) and changes no tracked file. "
        "The check that this page lists every test of the suite is skipped in the run that "
        "rewrites the page and runs in every other run, CI included.",
        "",
    ]
    return "\n".join(lines)


def run_suite(results: Path, pytest_args: list[str]) -> int:
    """Run the suite with its results going to ``results``; returns pytest's exit status."""
    env = dict(os.environ, HOOKQUEUE_RELIABILITY_RESULTS=str(results))
    env[REGENERATING_VARIABLE] = "1"
    command = [sys.executable, "-m", "pytest", SUITE, "-q", *pytest_args]
    print("running:", " ".join(command), file=sys.stderr)
    return subprocess.call(command, cwd=ROOT, env=env)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run or read, render, write."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--results", type=Path, help="render this results file instead of running the suite"
    )
    parser.add_argument(
        "--output", default=str(DEFAULT_OUTPUT), help="where to write ('-' for stdout)"
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    status = 0
    if args.results is None:
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "results.json"
            status = run_suite(results, args.pytest_args)
            if not results.exists():
                print("the suite wrote no results", file=sys.stderr)
                return status or 1
            data = json.loads(results.read_text())
    else:
        data = json.loads(args.results.read_text())
    page = render(data)
    if args.output == "-":
        sys.stdout.write(page)
    else:
        Path(args.output).write_text(page)
        print(f"wrote {args.output}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
