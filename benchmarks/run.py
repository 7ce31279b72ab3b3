"""hookqueue's benchmark suite: every workload of the performance issue, beside raw apsw doing
the same SQL work and beside huey and litequeue, on fresh database files, medians over runs.

Usage::

    python benchmarks/run.py                       # everything, both durability levels
    python benchmarks/run.py --only W1,W3 --runs 3
    python benchmarks/run.py --durability full
    python benchmarks/run.py --quick               # tiny sizes (the smoke test uses this)
    python benchmarks/run.py --write-docs          # run, then regenerate docs/performance.md
    python benchmarks/run.py --docs-from benchmarks/results/latest.json

Prints one Markdown table per durability level and writes the JSON (medians plus every run's
figures) to ``benchmarks/results/``. Exit status: 0 when every workload ran (missed targets
are reported, not failed), 1 when a workload raised, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hqbench.adapter import adapter_costs  # noqa: E402
from hqbench.common import WorkDir, machine_info, median_of_runs  # noqa: E402
from hqbench.raw import capture_and_check  # noqa: E402
from hqbench.report import evaluate, render_docs, table, verdict_cells  # noqa: E402
from hqbench.workloads import (  # noqa: E402
    FULL_SIZES,
    QUICK_SIZES,
    SINGLE_RUN,
    SYSTEMS,
    WORKLOADS,
    Context,
    schedulers,
)

RESULTS_DIR = HERE / "results"
DOCS_PATH = HERE.parent / "docs" / "performance.md"
#: ``--only`` accepts the workload names, ``sched`` (the schedulers' lease costs) and
#: ``adapter`` (the migration guide's figures for QueuedTaskManager).
CHOICES = [*WORKLOADS, "sched", "adapter"]
#: The other queues, measured beside hookqueue and the raw baseline.
PEERS = ("huey", "litequeue")


#: The sections of docs/performance.md that other scripts write (benchmarks/postgres.py,
#: postgres_limits.py, wait.py, dashboard.py) or that were written by hand: a section of the
#: old page whose heading the new page lacks is kept. Those from this heading on stay at the
#: end of the page; the others go before the targets, in the old page's order.
PG_HEADING = "## PostgreSQL"
TARGETS_HEADING = "## Targets"


def _sections(text: str) -> list[tuple[str, str]]:
    """``text`` cut at each level-2 heading: (heading line, the section's text) pairs; the
    text before the first heading has the heading ''."""
    parts: list[tuple[str, str]] = []
    heading, start = "", 0
    for line_start, line in _lines(text):
        if line.startswith("## "):
            parts.append((heading, text[start:line_start]))
            heading, start = line.rstrip("\n"), line_start
    parts.append((heading, text[start:]))
    return parts


def _lines(text: str) -> list[tuple[int, str]]:
    out, pos, fenced = [], 0, False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        if not fenced:
            out.append((pos, line))
        pos += len(line)
    return out


def keep_other_sections(page: str, old_path: Path) -> str:
    """``page`` with the sections of the page at ``old_path`` that it does not generate."""
    try:
        old = old_path.read_text(encoding="utf-8")
    except OSError:
        return page
    have = {heading for heading, _ in _sections(page)}
    middle: list[str] = []
    tail: list[str] = []
    in_tail = False
    for heading, text in _sections(old):
        in_tail = in_tail or heading == PG_HEADING
        if heading and heading not in have:
            (tail if in_tail else middle).append(text.rstrip() + "\n")
    if middle:
        at = page.find("\n" + TARGETS_HEADING + "\n")
        at = len(page) if at < 0 else at + 1
        page = page[:at] + "\n".join(middle) + "\n" + page[at:]
    if tail:
        page = page.rstrip() + "\n\n" + "\n".join(tail)
    return page


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Run hookqueue's benchmark suite; print Markdown tables, write JSON.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run (a smoke test)")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of {','.join(CHOICES)} (default: all)"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per workload (default 3; --quick: 1)"
    )
    parser.add_argument(
        "--peer-runs",
        type=int,
        default=1,
        help="runs of huey and litequeue per workload (default 1: they are context, and slow)",
    )
    parser.add_argument(
        "--durability",
        choices=("normal", "full", "both"),
        default="both",
        help="synchronous level(s) to measure at (default both: normal, then full)",
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)",
    )
    parser.add_argument(
        "--workdir", default=None, help="where the database files go (default: the temp dir)"
    )
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/bench-<time>.json)"
    )
    parser.add_argument("--write-docs", action="store_true", help="regenerate docs/performance.md")
    parser.add_argument(
        "--docs-from", default=None, help="regenerate the docs from this JSON; run nothing"
    )
    parser.add_argument(
        "--docs-out",
        default=str(DOCS_PATH),
        help="where the docs page goes (default docs/performance.md)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one phase may take")
    args = parser.parse_args(argv)
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in only if w not in CHOICES]
    if unknown:
        parser.error(f"--only: unknown workload(s) {unknown}; choose from {CHOICES}")
    args.only = only or CHOICES
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad or "hookqueue" not in systems:
        parser.error(
            f"--systems: {bad or systems} — choose from {list(SYSTEMS)}, hookqueue included"
        )
    # huey and litequeue come with the ``bench`` extra; without them the suite still runs
    # hookqueue against raw apsw and says what is missing.
    args.missing = {
        s: "not installed (pip install 'hookqueue[bench]')"
        for s in systems
        if s in PEERS and importlib.util.find_spec(s) is None
    }
    args.systems = [s for s in systems if s not in args.missing]
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    if args.peer_runs < 1:
        parser.error(f"--peer-runs must be >= 1, got {args.peer_runs}")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen workloads; returns the JSON document."""
    workdir = WorkDir(args.workdir)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    durabilities = ["normal", "full"] if args.durability == "both" else [args.durability]
    meta = machine_info(workdir.root)
    for system, why in args.missing.items():
        log(f"{system}: {why}; its columns show n/a")
    log(
        f"hookqueue benchmarks on {meta['cpu']} ×{meta['cpus']}, load {meta['load_average_at_start']}"
    )
    sql_check = capture_and_check(workdir.fresh)
    if not sql_check["same_sql"]:
        differing = [k for k, v in sql_check["operations"].items() if not v["same"]]
        log(f"WARNING: the raw baseline's statements differ from hookqueue's for {differing}")
    ctx = Context(
        sizes=dict(sizes),
        workdir=workdir,
        lease_sql=sql_check["lease_sql"],
        say=log,
        timeout=args.timeout,
    )
    results: dict[str, dict[str, dict[str, Any]]] = {}
    sched: dict[str, Any] = {}
    adapter: dict[str, Any] = {}
    errors: list[str] = []
    started = time.perf_counter()
    for durability in durabilities:
        res: dict[str, dict[str, Any]] = {}
        results[durability] = res
        for name, fn in WORKLOADS.items():
            if name not in args.only:
                continue
            runs = 1 if name in SINGLE_RUN else args.runs
            per_system: dict[str, list[dict[str, Any]]] = {s: [] for s in args.systems}
            skipped: set[str] = set()
            t0 = time.perf_counter()
            for r in range(runs):
                # Rotate the order each run so no system always goes first (or last).
                order = (
                    args.systems[r % len(args.systems) :] + args.systems[: r % len(args.systems)]
                )
                for system in order:
                    if system in skipped or (system in PEERS and r >= args.peer_runs):
                        continue
                    try:
                        got = fn(ctx, system, durability)
                    except Exception as exc:  # report it and go on with the rest of the suite
                        message = f"{name} {system} {durability}: {type(exc).__name__}: {exc}"
                        errors.append(message)
                        log("ERROR " + message + "\n" + traceback.format_exc())
                        skipped.add(system)
                        per_system[system] = [{"error": message}]
                        continue
                    if got is None:
                        skipped.add(system)
                        continue
                    per_system[system].append(got)
            res[name] = {
                s: (median_of_runs(v) if v and "error" not in v[0] else v[0] if v else None)
                for s, v in per_system.items()
                if v
            }
            log(f"  {durability:6s} {name:6s} done in {time.perf_counter() - t0:5.1f}s")
        # The hookqueue-only parts: one figure set per durability level each.
        for part, measure, into in (
            ("sched", schedulers, sched),
            ("adapter", adapter_costs, adapter),
        ):
            if part not in args.only:
                continue
            try:
                into[durability] = measure(ctx, durability)
            except Exception as exc:  # report it and go on
                message = f"{part} {durability}: {type(exc).__name__}: {exc}"
                errors.append(message)
                log("ERROR " + message + "\n" + traceback.format_exc())
            log(f"  {durability:6s} {part:6s} done")
    meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    data = {
        "meta": meta,
        "config": {
            "quick": args.quick,
            "runs": args.runs,
            "peer_runs": min(args.peer_runs, args.runs),
            "durabilities": durabilities,
            "only": args.only,
            "systems": args.systems,
            "missing": args.missing,
            "sizes": sizes,
        },
        "sql_check": sql_check,
        "plugins": ctx.plugin_status,
        "results": results,
        "schedulers": sched,
        "adapter": adapter,
        "errors": errors,
    }
    data["targets"] = evaluate(results)
    return data


def print_tables(data: dict[str, Any]) -> None:
    plugins = ", ".join(f"{p['name']}={p['state']}" for p in data.get("plugins", []))
    if plugins:
        print(f"hookqueue plugins in the workers: {plugins}\n")
    for durability, res in data["results"].items():
        print(f"### durability={durability} (medians of {data['config']['runs']} run(s))\n")
        print(table(res, verdict_cells(data["targets"], durability)))
        print()
    for durability, sched in data.get("schedulers", {}).items():
        from hqbench.report import scheduler_table

        print(f"### schedulers at {durability}\n")
        print(scheduler_table(sched))
        print()
    if data.get("adapter"):
        from hqbench.report import adapter_table

        print("### the adapter (QueuedTaskManager)\n")
        print(adapter_table(data["adapter"]))
        print()
    missed = [t for t in data["targets"] if not t["met"]]
    for t in missed:
        print(
            f"missed: {t['workload']} ({t['durability']}): {t['target']} — measured {t['measured']}"
        )
    if data["errors"]:
        print("\nerrors:\n" + "\n".join(f"- {e}" for e in data["errors"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.docs_from:
        data = json.loads(Path(args.docs_from).read_text(encoding="utf-8"))
        # The verdicts follow today's targets, not the ones stored with the run.
        data["targets"] = evaluate(data["results"])
        docs = Path(args.docs_out)
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(keep_other_sections(render_docs(data), docs), encoding="utf-8")
        log(f"wrote {docs}")
        return 0
    data = run_suite(args)
    print_tables(data)
    out = (
        Path(args.out) if args.out else RESULTS_DIR / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, default=str)
    out.write_text(text, encoding="utf-8")
    if not args.out:
        (RESULTS_DIR / "latest.json").write_text(text, encoding="utf-8")
    log(f"wrote {out}")
    if args.write_docs:
        docs = Path(args.docs_out)
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(keep_other_sections(render_docs(data), docs), encoding="utf-8")
        log(f"wrote {docs}")
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
