"""The benchmark suite still runs: ``benchmarks/run.py --quick`` end to end, in a subprocess.

Asserts on structure only — which workloads and systems produced figures, that the raw
baseline runs hookqueue's own statements, that no task was lost or run twice — never on
speed: timings on a shared machine are not a test result.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "run.py"
WORKLOADS = ["W1", "W1c", "W2", "W3", "W3p4", "W3c", "W4", "W4s", "W4lat", "W5", "W6", "memory"]


def _run(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("HOOKQUEUE_DISABLE_PLUGINS", None)
    return subprocess.run(
        [sys.executable, str(RUN), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
def test_quick_run_produces_every_workload_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    proc = _run(
        tmp_path,
        "--quick", "--durability", "normal", "--out", str(out), "--workdir", str(tmp_path / "dbs"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text(encoding="utf-8"))

    assert data["errors"] == []
    assert data["config"]["quick"] is True
    # The raw baseline must run the statements hookqueue runs; when the store's SQL changes,
    # update RawQueue in benchmarks/hqbench/raw.py (the diff is in the message).
    differing = {name: op for name, op in data["sql_check"]["operations"].items() if not op["same"]}
    assert not differing, differing
    assert data["sql_check"]["lease_sql"].startswith("UPDATE tasks SET status = 'running'")

    res = data["results"]["normal"]
    assert sorted(res) == sorted(WORKLOADS)
    # hookqueue and the raw baseline run every workload that has a raw counterpart.
    for workload in WORKLOADS:
        assert "hookqueue" in res[workload], workload
    for workload in ["W1", "W1c", "W2", "W3", "W3p4", "W4", "W4s", "W4lat", "W5", "W6"]:
        assert "raw" in res[workload], workload
    # huey and litequeue come with the bench extra; where installed, they run beside hookqueue.
    if importlib.util.find_spec("huey") is not None:
        for workload in ["W1", "W3", "W3p4", "W4", "W4s", "W4lat"]:
            assert "huey" in res[workload], workload
        assert _number(res["W3"]["huey"]["consumer_tasks_s"])
    else:
        assert "huey" in data["config"]["missing"]
    if importlib.util.find_spec("litequeue") is not None:
        for workload in ["W1", "W2", "W3", "W4lat", "W5"]:
            assert "litequeue" in res[workload], workload
    else:
        assert "litequeue" in data["config"]["missing"]
    # Where a system has no such operation it is left out, never given a made-up figure.
    assert "huey" not in res["W2"] and "litequeue" not in res["W4"]
    assert "litequeue" not in res["W4s"] and set(res["W3c"]) == {"hookqueue"}

    assert _number(res["W1"]["hookqueue"]["ops_s"]) and res["W1"]["hookqueue"]["ops_s"] > 0
    assert _number(res["W1"]["hookqueue"]["p99_us"])
    assert _number(res["W2"]["raw"]["rows_s"])
    assert _number(res["W5"]["hookqueue"]["cancel_p50_us"])
    assert _number(res["W6"]["hookqueue"]["queued_lease_growth"])
    assert res["W6"]["hookqueue"]["pruned"] == data["config"]["sizes"]["w6_large"]
    assert res["memory"]["hookqueue"]["completed"] == data["config"]["sizes"]["memory"]

    # Every task of the multi-process workloads ran exactly once, in every system.
    for workload in ["W3", "W3p4", "W3c", "W4", "W4s", "W4lat"]:
        for system, m in res[workload].items():
            assert (m["lost"], m["duplicated"], m["unexpected"]) == (0, 0, 0), (workload, system, m)
    assert res["W4"]["hookqueue"]["not_completed"] == 0
    assert res["W4s"]["hookqueue"]["not_completed"] == 0
    # W4s: the producer's latency with workers and alone, for the p99 ratio (hookqueue and raw).
    for system in ("hookqueue", "raw"):
        w4s = res["W4s"][system]
        for key in ("enqueue_p99_us", "alone_enqueue_p99_us", "enqueue_p99_ratio", "alone_ops_s"):
            assert _number(w4s[key]), (system, key)
    # W3c: the default concurrency and the other settings each drained, and the ratio.
    w3c = res["W3c"]["hookqueue"]
    for key in ("tasks_s_default", "tasks_s_32", "tasks_s_64", "default_vs_best"):
        assert _number(w3c[key]), key
    assert 0 < w3c["default_vs_best"] <= 1

    # The worker processes reported which plugins they ran with.
    names = {p["name"] for p in data["plugins"]}
    assert "core" in names

    # Targets are evaluated (met or not is the run's business, not the test's).
    assert data["targets"] and all(isinstance(t["met"], bool) for t in data["targets"])
    assert "| W1 | enqueue, ops/s |" in proc.stdout
    assert "| W4lat |" in proc.stdout

    # The core-alone rows, and the adapter's figures (the migration guide quotes them).
    assert _number(res["W1"]["hookqueue"]["core_p50_us"])
    assert _number(res["W2"]["hookqueue"]["core_rows_s"])
    adapter = data["adapter"]["normal"]
    for key in ("start_task_ms", "recorded_ms", "get_status_ms", "cancel_ms", "burst_runs_s"):
        assert _number(adapter[key]) and adapter[key] > 0, key
    assert "| `get_task_status` |" in proc.stdout


def test_docs_regenerate_from_json_without_running(tmp_path: Path) -> None:
    """``--docs-from`` renders the page from a results file (here a minimal one) alone."""
    sample = {
        "meta": {
            "cpu": "test cpu", "cpus": 2, "memory_gib": 1.0, "os": "Linux", "filesystem": "tmpfs",
            "python": "3.11", "sqlite": "3", "apsw": "3", "hookqueue": "0", "huey": "0",
            "litequeue": "0", "started_at": "now", "load_average_at_start": [0, 0, 0],
        },
        "config": {"runs": 1, "quick": True},
        "sql_check": {"same_sql": True},
        "plugins": [{"name": "core", "state": "active"}],
        "results": {
            "normal": {"W1": {"hookqueue": {"ops_s": 100.0, "p50_us": 10.0, "p99_us": 20.0},
                              "raw": {"ops_s": 200.0, "p50_us": 5.0, "p99_us": 9.0}}},
            "full": {"W1": {"hookqueue": {"ops_s": 50.0, "p50_us": 20.0, "p99_us": 40.0},
                            "raw": {"ops_s": 60.0, "p50_us": 15.0, "p99_us": 30.0}}},
        },
        "schedulers": {},
        "targets": [],
        "errors": [],
    }  # fmt: skip
    src = tmp_path / "sample.json"
    src.write_text(json.dumps(sample), encoding="utf-8")
    docs = tmp_path / "performance.md"
    proc = _run(tmp_path, "--docs-from", str(src), "--docs-out", str(docs), timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = docs.read_text(encoding="utf-8")
    assert "| W1 | enqueue, ops/s | 100 | 200 | 0.50× |" in text
    assert "## Durability: full vs normal" in text
    assert "| W1 hookqueue enqueue, ops/s | 100 | 50.0 | 0.50× |" in text
    assert "test cpu" in text
    # "Making it fast" quotes what was measured and leaves out what was not (no W2 here).
    assert "single enqueues 100/s instead of 50/s" in text
    assert "enqueue_many`**" not in text
    # The verdicts are worked out again from the results (the file's own list is empty).
    assert "| W1 | full | ≥ 0.8× raw | 0.83× raw | met |" in text
    assert (
        "| W1 | normal | ≥ 0.6× raw and p50 ≤ 50 µs | 0.50× raw, p50 10 µs | **missed** |" in text
    )


def test_w3_judges_the_absolute_target_and_the_ratio_to_hueys_consumer() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from hqbench.report import evaluate
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    w3: dict[str, dict[str, float]] = {
        "hookqueue": {"tasks_s": 26_000.0},
        "huey": {"tasks_s": 10_000.0, "consumer_tasks_s": 2_000.0},
    }

    def verdicts() -> list[tuple[str, str, bool]]:
        return [
            (t["target"], t["measured"], t["met"])
            for t in evaluate({"normal": {"W3": w3}})
            if t["workload"] == "W3"
        ]

    # "huey" is its consumer; the bare loop's ratio is shown, not judged.
    assert verdicts() == [
        ("≥ 25,000/s", "26,000/s", True),
        ("≥ 10× huey", "13.0× huey's consumer (2.6× its bare loop)", True),
    ]
    w3["huey"]["consumer_tasks_s"] = 3_000.0
    assert verdicts()[1] == (
        "≥ 10× huey",
        "8.7× huey's consumer (2.6× its bare loop)",
        False,
    )
    del w3["huey"]["consumer_tasks_s"]  # the consumer was not measured: no verdict
    assert [v[0] for v in verdicts()] == ["≥ 25,000/s"]
    del w3["huey"]  # huey not installed: only the absolute target applies
    assert [t["met"] for t in evaluate({"normal": {"W3": w3}})] == [True]


def test_bad_arguments_are_refused_with_the_choices(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--only", "W9", timeout=60)
    assert proc.returncode == 2
    assert "unknown workload(s) ['W9']" in proc.stderr and "W4lat" in proc.stderr


def test_the_floor_script_runs_every_variant_and_writes_its_medians(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "floor.py"), "--quick", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert sorted(data["medians"]) == ["W1", "W2"]
    for by_variant in data["medians"].values():
        assert sorted(by_variant) == sorted(["raw", "floor", "core alone", "as installed"])
        assert all(_number(v) and v > 0 for v in by_variant.values())
    assert "| W2 | " in proc.stdout and "(1.00×)" in proc.stdout


def test_speed_advice_quotes_each_figure_it_gives() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from hqbench.report import speed_advice
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    def hq(**figures: float) -> dict[str, dict[str, float]]:
        return {"hookqueue": figures}

    results = {
        "normal": {
            "W1": hq(ops_s=17_000.0, core_ops_s=24_000.0),
            "W1c": hq(ops_s=39_000.0),
            "W2": hq(rows_s=48_000.0),
            "W3": hq(tasks_s=30_000.0),
            "W3p4": hq(tasks_s=40_000.0),
        },
        "full": {"W1": hq(ops_s=3_900.0), "W1c": hq(ops_s=33_000.0), "W2": hq(rows_s=47_000.0)},
    }
    text = speed_advice(results)
    assert text.count("\n- **") == 5
    for figure in ["48,000 tasks/s against 17,000/s", "(47,000 against 3,900 at `full`)",
                   "reach 33,000/s at `full`", "(39,000/s at `normal`)",
                   "17,000/s instead of 3,900/s", "24,000/s instead of 17,000/s",
                   "drained 30,000 tasks/s, four processes 40,000/s"]:  # fmt: skip
        assert figure in text, figure
    assert speed_advice({"normal": {}, "full": {}}) == ""


def test_the_wait_benchmark_measures_every_way_of_waiting(tmp_path: Path) -> None:
    out = tmp_path / "wait.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "wait.py"), "--tasks", "20", "--batch", "20",
         "--durability", "normal", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    rows = data["results"]
    assert set(rows) == {"wait (thread)", "wait_async", "20 coroutines at once"}
    for row in rows.values():
        assert row["n"] == 20 and _number(row["p50_ms"]) and row["p50_ms"] >= 0
    assert rows["20 coroutines at once"]["threads"] <= 1, "one waiter thread for all waits"
    assert "| wait_async | 20 |" in proc.stdout


@pytest.mark.slow
def test_the_periodic_script_measures_firing_and_the_drain_beside_schedules(
    tmp_path: Path,
) -> None:
    out = tmp_path / "periodic.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "periodic.py"),
            "--quick",
            "--durability",
            "normal",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    firing = data["firing"]["normal"]
    assert sorted(firing) == sorted(
        [
            "enqueue_us",
            "one_schedule_us_per_tick",
            "wide_us_per_tick",
            "wide_ms_per_pass",
            "idle_pass_us",
            "idle_pass_wide_us",
        ]
    )
    assert all(_number(v) and v > 0 for v in firing.values())
    drains = data["drain"]["normal"]
    assert len(drains) == 4 and all(_number(v) and v > 0 for v in drains.values())
    assert "| scheduler off | " in proc.stdout and "(1.00×)" in proc.stdout


@pytest.mark.slow
def test_the_limits_script_measures_the_drain_under_limits_and_fairness(tmp_path: Path) -> None:
    """``benchmarks/limits.py --quick``: a figure for raw apsw and every variant of the drain
    (printed with its ratios), and the small tenant's waits in FIFO and round-robin order."""
    out = tmp_path / "limits.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "limits.py"),
            "--quick",
            "--durability",
            "normal",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert _number(data["raw"]["normal"]) and data["raw"]["normal"] > 0
    drains = data["drain"]["normal"]
    assert len(drains) == 6 and all(_number(v) and v > 0 for v in drains.values())
    assert "| no limit | " in proc.stdout and "; 1.00×)" in proc.stdout
    leases = data["lease"]["normal"]
    assert len(leases) == 5 and all(_number(v) and v > 0 for v in leases.values())
    fair = data["fairness"]["normal"]
    assert set(fair) == {"fifo", "round-robin"}
    assert all(_number(v) and v >= 0 for mode in fair.values() for v in mode.values())
    assert len(data["meta"]["load_average_at_end"]) == 3


PG_RUN = ROOT / "benchmarks" / "postgres.py"
PG_WORKLOADS = ["W1", "W2", "W3", "W3p4", "W4", "W5"]


@pytest.mark.slow
def test_postgres_quick_run_measures_every_workload(tmp_path: Path, postgres_server: Any) -> None:
    """``benchmarks/postgres.py --quick`` on the test server: every workload gives figures
    for hookqueue, and for procrastinate and pgqueuer where they are installed (the bench
    extra) on the two drains, so their adapters cannot rot unseen."""
    peers = [p for p in ("procrastinate", "pgqueuer") if importlib.util.find_spec(p) is not None]
    runs = [("hookqueue", PG_WORKLOADS)] + [(p, ["W3", "W3p4"]) for p in peers]
    for system, workloads in runs:
        out = tmp_path / f"{system}.json"
        proc = subprocess.run(
            [sys.executable, str(PG_RUN), "--quick", "--dsn", postgres_server.dsn,
             "--systems", system, "--only", ",".join(workloads), "--out", str(out)],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        data = json.loads(out.read_text(encoding="utf-8"))
        for workload in workloads:
            figures = data["medians"][workload][system]
            assert figures and all(_number(v) for v in figures.values()), (workload, figures)
        assert f"| {system} |" in proc.stdout


@pytest.mark.slow
def test_the_scheduler_window_script_measures_both_windows_beside_raw_and_under_limits(
    tmp_path: Path,
) -> None:
    out = tmp_path / "window.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "scheduler_window.py"),
            "--quick",
            "--backlogs",
            "100",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    rows = data["medians"]["sqlite"]["100"]
    assert len(rows) == 4
    for row in rows.values():
        assert sorted(row) == [
            "head",
            "head, limit",
            "per group",
            "per group, fair rule",
            "per group, limit",
            "raw head",
            "raw per group",
        ]
        assert all(_number(v) and v > 0 for v in row.values())
    assert "| sqlite | 100 | `FairShare()` |" in proc.stdout
    assert "| head, limit (before), µs |" in proc.stdout


PG_LIMITS = ROOT / "benchmarks" / "postgres_limits.py"


@pytest.mark.slow
def test_the_postgres_limits_benchmark_measures_every_case(
    tmp_path: Path, postgres_server: Any
) -> None:
    """``benchmarks/postgres_limits.py --quick`` on the test server: a figure per case,
    baseline and contention case, the binding case starting 5 of the 10 it asks for, the
    load average kept."""
    out = tmp_path / "limits.json"
    proc = subprocess.run(
        [sys.executable, str(PG_LIMITS), "--quick", "--dsn", postgres_server.dsn,
         "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    medians = data["medians"]
    assert set(medians) == {
        "raw apsw",
        "raw psycopg",
        "no plugin",
        "plugin, no rules",
        "concurrency (not binding)",
        "tenant concurrency (not binding)",
        "rate",
        "binding",
        "fair turns",
        "fair turns, weighted",
        "contention, no rule",
        "contention, one rule",
    }
    per_lease = [m["us_per_lease"] for m in medians.values() if "us_per_lease" in m]
    assert len(per_lease) == 10 and all(_number(v) and v > 0 for v in per_lease)
    for name in ("contention, no rule", "contention, one rule"):
        assert _number(medians[name]["leases_per_s"]) and medians[name]["tasks_per_s"] > 0
    assert medians["binding"]["tasks_per_lease"] == 5
    assert medians["fair turns"]["tasks_per_lease"] == 10
    assert medians["fair turns, weighted"]["tasks_per_lease"] == 10
    assert len(data["load_average_at_start"]) == 3
    assert "| fair turns |" in proc.stdout


@pytest.mark.slow
def test_the_producer_p99_script_measures_every_case(tmp_path: Path) -> None:
    """``benchmarks/producer_p99.py``: the producer alone, beside idle workers and beside
    draining workers, for hookqueue and raw apsw; every case has its figures."""
    out = tmp_path / "p99.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "producer_p99.py"), "--rounds", "1",
         "--tasks", "50", "--durability", "normal", "--out", str(out),
         "--workdir", str(tmp_path / "dbs")],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    medians = json.loads(out.read_text(encoding="utf-8"))["medians"]["normal"]
    for system in ("hookqueue", "raw"):
        assert set(medians[system]) == {"alone", "4 idle workers", "4 workers draining"}
        for case in medians[system].values():
            assert _number(case["p99_us"]) and _number(case["ops_s"]) and case["ops_s"] > 0
    assert "| normal | hookqueue | 4 workers draining |" in proc.stdout


def test_regenerating_the_page_keeps_the_sections_other_scripts_wrote(tmp_path: Path) -> None:
    """``run.py --write-docs`` renders only its own sections: a section of the old page it does
    not render (the dashboard's, wait's, PostgreSQL's) is kept, in place before the targets or
    at the end from ``## PostgreSQL`` on; a heading inside a code block is not a section."""
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(run)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    old = tmp_path / "performance.md"
    old.write_text(
        "# Performance\n\n## Results\n\nold figures\n\n## The web dashboard\n\ndash\n\n"
        "```\n## not a heading\n```\n\n## Targets\n\nold targets\n\n## PostgreSQL\n\npg\n\n"
        "## PostgreSQL: what limits cost a lease\n\npg limits\n",
        encoding="utf-8",
    )
    page = run.keep_other_sections(
        "# Performance\n\n## Results\n\nnew\n\n## Targets\n\nnew t\n", old
    )
    assert page.index("## The web dashboard") < page.index("## Targets")
    assert "dash\n\n```\n## not a heading\n```" in page
    assert "old figures" not in page and "old targets" not in page
    assert page.index("new t") < page.index("## PostgreSQL\n") < page.index("pg limits")
    assert page.count("## Results") == 1
