"""Helpers of the dashboard tests: a realistic database, a live uvicorn server, plugins."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn

from hookqueue import FakeClock, Queue, WorkerEngine, hookimpl
from hookqueue.contrib.dashboard import DashboardPage
from hookqueue.core.errors import ValidationError
from hookqueue.core.models import WorkerInfo
from hookqueue.plugins.periodic import Schedule, Scheduler, add_schedule


class Boom(Exception):
    """A handler failure with a recognisable message."""


def seed(path: Path, *, now: datetime | None = None) -> dict[str, Any]:
    """:func:`seed_here` in a thread of its own: its workers run ``asyncio.run``, which
    cannot run in a thread where Playwright's synchronous API keeps an event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(seed_here, path, now=now).result()


def seed_here(path: Path, *, now: datetime | None = None) -> dict[str, Any]:
    """Write a database that looks like an hour of production: three task types in two
    queues worked every five minutes (some fail with distinct errors), a payment that failed
    three attempts, a due backlog, delayed tasks, a running task held by a worker that went
    silent, workers in every state, and periodic schedules (one paused) that have fired.

    Finished times spread over the hour before ``now`` (default: the real current time), so
    a dashboard serving the file with the real clock charts them. Returns a few ids."""
    now = now or datetime.now(UTC)
    clock = FakeClock(now - timedelta(minutes=58))
    q = Queue(path, clock=clock, durability="normal")
    counter = {"n": 0}
    add_schedule(
        q, Schedule("every 10m", name="digest", task_type="send_email", payload={"to": "ops@"})
    )
    add_schedule(
        q,
        Schedule("0 3 * * *", name="nightly-report", tz="Europe/Paris", task_type="sync_crm"),
        paused=True,
    )
    scheduler = Scheduler(q, name="seed-scheduler")

    def charge_card(task: Any) -> None:
        _gateway(task.payload["card"])

    def send_email(task: Any) -> dict[str, Any]:
        return {"sent": True, "to": task.payload["to"]}

    def resize_image(task: Any) -> dict[str, Any]:
        if task.payload["image"].endswith(".heic"):
            raise Boom(f"cannot identify image file {task.payload['image']!r}")
        return {"width": 640, "height": 480}

    def sync_crm(task: Any) -> None:
        counter["n"] += 1
        if counter["n"] % 3 == 0:
            raise ConnectionResetError("crm.internal:443 reset the connection")

    q.handlers.register_handler("send_email", send_email)
    q.handlers.register_handler("resize_image", resize_image)
    q.handlers.register_handler("sync_crm", sync_crm)
    q.handlers.register_handler("charge_card", charge_card)
    payment = q.enqueue("charge_card", {"card": "4242"}, max_attempts=3, queue="payments")
    for step in range(12):
        batch: list[dict[str, Any]] = []
        for i in range(6 + step % 4):
            batch.append(
                {"task_type": "send_email", "payload": {"to": f"user{step}-{i}@example.com"}}
            )
        for i in range(3):
            ext = ".heic" if (step + i) % 4 == 0 else ".png"
            batch.append(
                {
                    "task_type": "resize_image",
                    "payload": {"image": f"photo-{step}-{i}{ext}"},
                    "queue": "images",
                    "max_attempts": 1,
                }
            )
        batch.append(
            {"task_type": "sync_crm", "payload": {"account": 1000 + step}, "max_attempts": 1}
        )
        q.enqueue_many(batch)
        scheduler.run_once()
        WorkerEngine(
            q, worker_id="worker-a", queues=("default", "images", "payments")
        ).run_until_idle()
        clock.advance(minutes=4.5)
    clock.set(now - timedelta(seconds=30))
    # A backlog: due tasks, delayed ones, and one cancelled before it ran.
    backlog = q.enqueue_many(
        [{"task_type": "send_email", "payload": {"to": f"late{i}@example.com"}} for i in range(5)]
        + [
            {"task_type": "resize_image", "payload": {"image": f"later-{i}.png"}, "queue": "images"}
            for i in range(3)
        ]
    )
    delayed = q.enqueue("send_email", {"to": "tomorrow@example.com"}, delay=86400)
    cancelled = q.enqueue("sync_crm", {"account": 7})
    q.cancel(cancelled.id)
    # A worker that leased a task and went silent ten minutes ago, and one alive now.
    clock.set(now - timedelta(minutes=10))
    q.runtime.register_worker(_worker("batch-7", clock.now()))
    q.enqueue("sync_crm", {"account": 99}, queue="reports")
    [held] = q.runtime.lease("batch-7", queues=("reports",), limit=1, lease_seconds=3600)
    clock.set(now)
    q.runtime.register_worker(_worker("web-1", now))
    q.close()
    return {
        "payment": payment.id,
        "backlog": [t.id for t in backlog],
        "delayed": delayed.id,
        "cancelled": cancelled.id,
        "running": held.id,
    }


def _gateway(card: str) -> None:
    """A payment gateway that declines: a nested call, so the traceback has depth."""
    raise PermissionError(f"card {card} declined by the gateway (code 51)")


def _worker(worker_id: str, at: datetime) -> WorkerInfo:
    return WorkerInfo(
        worker_id=worker_id,
        hostname="app-host-1",
        pid=4242,
        queues=("default", "reports"),
        concurrency=8,
        started_at=at - timedelta(minutes=30),
        heartbeat_at=at,
    )


class LiveServer:
    """A real uvicorn server for an ASGI app, on 127.0.0.1 and a free port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the command does
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", ws="none"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 10 s")
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the server (its lifespan shutdown runs) and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TenantsPage:
    """A plugin that adds a page listing the tenants found in queued tasks' headers, with an
    action that cancels one tenant's queued tasks."""

    hookqueue_name = "tenants-page"

    @hookimpl(optionalhook=True)
    def hookqueue_dashboard_pages(self) -> list[DashboardPage]:
        return [
            DashboardPage(
                name="tenants",
                title="Tenants",
                template=(
                    "<p id='tenant-count'>{{ tenants | length }} tenants</p>"
                    "<ul>{% for name, n in tenants %}<li data-tenant='{{ name }}'>"
                    "{{ name }}: {{ n }} queued "
                    "{{ action_form('cancel-queued', 'Cancel queued', danger=True, tenant=name) }}"
                    "</li>{% endfor %}</ul>"
                ),
                context=self.context,
                actions={"cancel-queued": self.cancel_queued},
            )
        ]

    @staticmethod
    def _queued(queue: Queue) -> list[Any]:
        return queue.list(status="queued", limit=1000)

    def context(self, request: Any) -> dict[str, Any]:
        seen: dict[str, int] = {}
        for task in self._queued(request.data.queue):
            tenant = task.headers.get("tenant", "(none)")
            seen[tenant] = seen.get(tenant, 0) + 1
        return {"tenants": sorted(seen.items())}

    def cancel_queued(self, request: Any) -> str:
        tenant = request.form.get("tenant", "")
        tasks = [t for t in self._queued(request.data.queue) if t.headers.get("tenant") == tenant]
        if not tasks:
            raise ValidationError("tenant", tenant, "has no queued task", "reload the page")
        for task in tasks:
            request.data.queue.cancel(task.id)
        return f"Cancelled {len(tasks)} queued task(s) of tenant {tenant}."
