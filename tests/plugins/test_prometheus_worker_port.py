"""`hookqueue worker --metrics-port`: a worker process started from the command line serves
its own event counters on 127.0.0.1, which a scrape over HTTP reads."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hookqueue import Queue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _finished(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "hookqueue_tasks_finished_total"
                and sample.labels.get("status") == "completed"
            ):
                total += sample.value
    return total


def test_worker_serves_its_event_counters_on_loopback(tmp_path: Path, db_path: Path) -> None:
    app = tmp_path / "portapp.py"
    app.write_text(
        "from hookqueue import TaskHandlerRegistry\n"
        "registry = TaskHandlerRegistry()\n"
        "registry.register_handler('t', lambda task: 1)\n"
    )
    q = Queue(db_path)
    q.enqueue_many([{"task_type": "t"} for _ in range(25)])
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookqueue", "worker", "--db", str(db_path), "--app", "portapp:registry",
         "--metrics-port", str(port)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        seen = 0.0
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    seen = _finished(r.read().decode())
            except OSError:
                seen = 0.0
            if seen >= 25:
                break
            time.sleep(0.1)
        assert seen == 25, "the worker's own counters are scraped"
        # loopback only: the port is not bound on other addresses
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    q.close()
