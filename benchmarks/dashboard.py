"""How fast the dashboard's pages load on a large database (target: the task list in 200 ms).

Builds (or reuses) a database of ``--rows`` tasks (default 10⁶) through the public API —
``enqueue_many`` in batches, then ``lease`` and ``settle`` in batches so most tasks end
completed and some failed, their finish times spread over the last day — serves the
dashboard with a real uvicorn server on 127.0.0.1, and times full page loads (HTTP GET of the
rendered HTML) with httpx: the median of ``--loads`` loads after one warm-up load.

Usage::

    python benchmarks/dashboard.py                       # 10⁶ rows (builds once, ~2 min)
    python benchmarks/dashboard.py --rows 20000 --loads 3
    python benchmarks/dashboard.py --db /tmp/big.db      # keep the file between runs

Then, on a copy of the database, it times each action once through the dashboard (confirmation
page, then the POST with the session's CSRF token, until its redirect): a bulk retry, cancel
and delete, *Delete history* and pausing a queue (``--no-actions`` skips them).

Prints Markdown tables and writes the JSON to ``benchmarks/results/dashboard-<time>.json``.
Exit status 0 when every page loaded (a missed target is reported, not failed).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import platform
import re
import shutil
import socket
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from hookqueue import FakeClock, Queue
from hookqueue.contrib.dashboard import create_app
from hookqueue.core.storage import Settlement

HERE = Path(__file__).resolve().parent
TARGET_MS = 200.0
TYPES = ("send_email", "resize_image", "sync_crm", "render_report")
#: The traceback kept in the history of each failed attempt.
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "app/tasks.py", line 42, in sync\n'
    "    response = client.post(url, json=payload)\n"
    "ConnectionResetError: upstream reset the connection\n"
)


def build(path: Path, rows: int, *, batch: int = 20_000) -> dict[str, Any]:
    """Write ``rows`` tasks: 5 % stay queued (a fifth of them delayed), 1 % end failed with an
    error message, the rest completed; finish times spread over the 24 hours before now."""
    now = datetime.now(UTC)
    clock = FakeClock(now - timedelta(hours=24))
    started = time.perf_counter()
    queue = Queue(path, clock=clock, durability="normal", load_entrypoints=False)
    queued = rows // 20
    to_finish = rows - queued
    written = 0
    while written < to_finish:
        n = min(batch, to_finish - written)
        queue.enqueue_many(
            {
                "task_type": TYPES[(written + i) % len(TYPES)],
                "payload": {"n": written + i, "to": f"user{written + i}@example.com"},
                "queue": "default" if (written + i) % 3 else "bulk",
            }
            for i in range(n)
        )
        written += n
    step = timedelta(hours=24) / max(1, to_finish // batch + 1)
    finished = 0
    while finished < to_finish:
        leased = queue.runtime.lease(
            "bench", queues=("default", "bulk"), limit=batch, lease_seconds=600
        )
        if not leased:
            break
        settlements = [
            Settlement(
                task_id=t.id,
                kind="fail",
                error=f"ConnectionResetError: upstream {t.id % 7} reset the connection",
                traceback=TRACEBACK,
            )
            if t.id % 100 == 0
            else Settlement(task_id=t.id, kind="complete", result_json='{"ok":true}')
            for t in leased
        ]
        queue.runtime.settle("bench", settlements)
        finished += len(leased)
        clock.advance(step.total_seconds())
    clock.set(now - timedelta(seconds=5))
    queue.enqueue_many(
        {
            "task_type": TYPES[i % len(TYPES)],
            "payload": {"n": i},
            **({"delay": 3600} if i % 5 == 0 else {}),
        }
        for i in range(queued)
    )
    counts = queue.counts()
    queue.close()
    return {"seconds": time.perf_counter() - started, "counts": counts}


class Server:
    """The dashboard on a real uvicorn server in a thread, on 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        # as `hookqueue dashboard` does: no 40 ms delayed-ACK wait per kept-alive response
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", access_log=False, ws="none")
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the server and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def time_page(client: httpx.Client, url: str, loads: int) -> dict[str, Any]:
    """One warm-up load, then ``loads`` timed ones; the median and every figure, in ms."""
    response = client.get(url)
    response.raise_for_status()
    figures = []
    for _ in range(loads):
        t0 = time.perf_counter()
        response = client.get(url)
        response.raise_for_status()
        figures.append((time.perf_counter() - t0) * 1000)
    return {
        "url": url,
        "median_ms": statistics.median(figures),
        "min_ms": min(figures),
        "max_ms": max(figures),
        "runs_ms": figures,
        "bytes": len(response.content),
    }


HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
FLASH = re.compile(r'<p class="flash" role="status">([^<]*)</p>')
#: The actions timed on a copy of the database: name -> (the confirmation page, the form).
ACTIONS = {
    "retry every failed task": ("/bulk/retry?status=failed", "/bulk/retry"),
    "cancel the queued tasks of one queue": ("/bulk/cancel?status=queued&queue=bulk", None),
    "delete the completed tasks finished over 23 h ago": (
        "/bulk/delete?status=completed&finished_before=23h",
        "/bulk/delete",
    ),
    "delete history: finished over 22 h ago (prune)": ("/prune?older_than=22h", "/prune"),
    "pause a queue": ("/", "/queues/pause"),
}


def time_actions(path: Path) -> list[dict[str, Any]]:
    """Each of :data:`ACTIONS` once, through the dashboard on a copy of the database: open
    the confirmation page, post its form (with the session's CSRF token), time the POST
    until its redirect, and keep the banner."""
    copy = path.with_name(path.stem + "-actions.db")
    for suffix in ("", "-wal"):
        if Path(str(path) + suffix).exists():
            shutil.copyfile(Path(str(path) + suffix), Path(str(copy) + suffix))
    server = Server(create_app(copy))
    results = []
    try:
        with httpx.Client(base_url=server.url, timeout=1800) as client:
            for name, (preview, action) in ACTIONS.items():
                page = client.get(preview)
                page.raise_for_status()
                fields = {k: html.unescape(v) for k, v in HIDDEN.findall(page.text)}
                if action is None:
                    action = preview.split("?")[0]
                if action == "/queues/pause":
                    fields = {"csrf_token": fields["csrf_token"], "queue": "default"}
                t0 = time.perf_counter()
                response = client.post(action, data=fields)
                ms = (time.perf_counter() - t0) * 1000
                if response.status_code != 303:
                    raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
                banner = FLASH.search(client.get(response.headers["location"]).text)
                results.append(
                    {
                        "action": name,
                        "ms": ms,
                        "banner": html.unescape(banner.group(1)) if banner else "",
                    }
                )
                print(f"{name}: {ms:.0f} ms", file=sys.stderr, flush=True)
    finally:
        server.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(copy) + suffix).unlink(missing_ok=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Build or reuse the database, time every page, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--loads", type=int, default=7, help="timed loads per page (median)")
    parser.add_argument("--db", type=Path, default=None, help="database file (kept if given)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--no-actions", action="store_true", help="skip timing the actions (on a copy)"
    )
    args = parser.parse_args(argv)

    tmp = None
    if args.db is None:
        import tempfile

        tmp = tempfile.TemporaryDirectory(
            prefix="hq-dashboard-bench-", dir=os.environ.get("TMPDIR")
        )
        path = Path(tmp.name) / "queue.db"
    else:
        path = args.db
    build_info: dict[str, Any] | None = None
    if not path.exists():
        print(f"building {args.rows:,} tasks in {path} ...", file=sys.stderr, flush=True)
        build_info = build(path, args.rows)
        print(f"built in {build_info['seconds']:.1f} s", file=sys.stderr, flush=True)

    queue = Queue(path, load_entrypoints=False)
    total = sum(queue.counts().values())
    oldest = queue.list(limit=1)[0].id
    deep_after = oldest + 1000  # a page among the oldest tasks, newest first: ~10⁶ ids below
    server = Server(create_app(queue))
    # the same app without its 30 s cache of the filter suggestions and the chart: what the
    # first view after the cache expired costs
    uncached = Server(create_app(queue, cache_seconds=0))
    failed_id = queue.list(status="failed", limit=1, newest_first=True, after_id=total // 2)[0].id
    pages = {
        "task list, first page": "/tasks",
        "task list, deep page (after_id near the oldest)": f"/tasks?after={deep_after}",
        "task list, oldest first, deep page": f"/tasks?order=oldest&after={total // 2}",
        "failed tasks, first page": "/tasks?status=failed",
        "completed tasks, first page": "/tasks?status=completed",
        "queued tasks, first page": "/tasks?status=queued",
        "one type, first page": "/tasks?type=resize_image",
        "error text search in failed tasks": "/tasks?status=failed&error=upstream+3",
        "error text search, every status": "/tasks?error=upstream+3",
        "enqueued in the last hour": "/tasks?from=1h",
        "enqueued more than 12 h ago (newest first)": "/tasks?to=12h",
        "completed, finished more than 12 h ago": "/tasks?status=completed&finished_before=12h",
        "task detail (a failed task and its history)": f"/tasks/{failed_id}",
        "delete history preview (a count)": "/prune?older_than=12h",
        "bulk retry preview: failed, one type (a count)": "/bulk/retry?status=failed&type=sync_crm",
        "bulk delete preview: finished more than 12 h ago": "/bulk/delete?finished_before=12h",
        "overview (health, chart, counts)": "/",
        "overview, 7-day chart": "/?window=7d",
    }
    results = []
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for name, url in pages.items():
                figure = time_page(client, url, args.loads)
                figure["page"] = name
                results.append(figure)
                print(f"{name}: {figure['median_ms']:.1f} ms", file=sys.stderr, flush=True)
        with httpx.Client(base_url=uncached.url, timeout=120) as client:
            for name, url in (
                ("task list, first page, cache off", "/tasks"),
                ("overview, cache off", "/"),
                ("overview, 7-day chart, cache off", "/?window=7d"),
            ):
                figure = time_page(client, url, args.loads)
                figure["page"] = name
                results.append(figure)
                print(f"{name}: {figure['median_ms']:.1f} ms", file=sys.stderr, flush=True)
    finally:
        uncached.close()
        server.close()
        queue.close()
    try:
        actions = [] if args.no_actions else time_actions(path)
    finally:
        if tmp is not None:
            tmp.cleanup()

    print(
        f"\nDashboard page loads, {total:,} tasks, median of {args.loads} (target for the "
        f"task list: {TARGET_MS:.0f} ms)\n"
    )
    print("| page | median ms | min | max | KiB |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['page']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['max_ms']:.1f} "
            f"| {r['bytes'] / 1024:.0f} |"
        )
    if actions:
        print(f"\nActions on a copy of the database ({total:,} tasks), each once\n")
        print("| action | ms | what the banner said |")
        print("|---|---:|---|")
        for a in actions:
            print(f"| {a['action']} | {a['ms']:.0f} | {a['banner']} |")
    first, deep = results[0], results[1]
    verdict = all(r["median_ms"] <= TARGET_MS for r in (first, deep))
    print(
        f"\ntask list target {TARGET_MS:.0f} ms: {'met' if verdict else 'MISSED'} "
        f"(first page {first['median_ms']:.1f} ms, deep page {deep['median_ms']:.1f} ms)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"dashboard-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "dashboard page loads",
                "at": stamp,
                "tasks": total,
                "loads": args.loads,
                "target_ms": TARGET_MS,
                "target_met": verdict,
                "build": build_info,
                "machine": {
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                },
                "pages": results,
                "actions": actions,
            },
            indent=2,
        )
    )
    print(f"wrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
