"""``hookqueue dashboard --db postgresql://...``: the real command in a subprocess, serving a
queue kept on the test server (the dashboard reads everything through the store contract, so
its views are the SQLite ones; this checks the command itself starts and serves on
PostgreSQL, and that the password in the URL is not printed)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx
import pytest

import hookqueue.plugins.postgres as pg_plugin
from hookqueue import Queue

pytest.importorskip("starlette", reason="the dashboard needs the web extra")


def test_hookqueue_dashboard_serves_a_postgresql_queue(postgres_tcp_url: str) -> None:
    with Queue(postgres_tcp_url, load_entrypoints=False, plugins=[pg_plugin]) as q:
        for i in range(3):
            q.enqueue("send_report", {"n": i})
    password = re.search(r"://[^:/@]+:([^@]+)@", postgres_tcp_url)
    assert password, "the fixture's URL carries a password"
    command = [sys.executable, "-m", "hookqueue", "dashboard", "--db", postgres_tcp_url]
    with subprocess.Popen(
        [*command, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
            assert match, (line, process.stderr.read() if process.poll() is not None else "")
            assert password.group(1) not in line, "the password is not printed"
            url = match.group(1)
            deadline = time.monotonic() + 10
            while True:
                try:
                    health = httpx.get(url + "/healthz")
                    break
                except httpx.ConnectError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            assert health.status_code == 200
            assert health.json()["tasks"]["queued"] == 3
            page = httpx.get(url + "/tasks")
            assert page.status_code == 200 and page.text.count("send_report") >= 3
        finally:
            process.terminate()
            _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
