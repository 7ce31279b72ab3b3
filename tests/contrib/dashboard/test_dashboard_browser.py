"""The dashboard in a real browser: headless Chromium, a live uvicorn server, a real file.

Every view is rendered from a seeded database and photographed; every action is clicked
(through its confirmation, where it has one) and then checked in the database.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from _dashboard import TenantsPage, seed

from hookqueue import Queue, TaskStatus
from hookqueue.contrib.dashboard import create_app
from hookqueue.plugins.limits import LimitRule, limit_usage, list_limits, set_limit
from hookqueue.plugins.periodic import list_schedules


def db(server: Any) -> Queue:
    """A separate connection to the served file, to check what the clicks changed."""
    return Queue(server.db_path, load_entrypoints=False)


def ids_on_page(page: Any) -> list[int]:
    return [
        int(x)
        for x in page.locator("#task-table tbody tr[data-task-id]").evaluate_all(
            "rows => rows.map(r => r.dataset.taskId)"
        )
    ]


def test_overview_shows_counts_chart_workers_and_plugins(
    dashboard: Any, page: Any, screenshots: Any
) -> None:
    page.goto(dashboard.url + "/")
    with db(dashboard) as q:
        counts = q.counts()
    assert page.locator("[data-figure=failed]").inner_text() == str(counts["failed"])
    assert page.locator("[data-figure=running]").inner_text() == "1"
    # the due backlog: 5 + 3 waiting (the delayed task is not due)
    assert page.locator("[data-figure=due]").inner_text() == "8"
    assert page.locator("[data-figure=delayed]").inner_text() == "1"
    assert page.locator("[data-figure=workers]").inner_text() == "1 alive, 1 stale"
    # one bar per interval; the hour of history puts finished tasks in several of them
    bars = page.locator("svg.chart rect.finished")
    assert bars.count() == 30
    heights = [float(h) for h in bars.evaluate_all("rs => rs.map(r => r.getAttribute('height'))")]
    assert sum(1 for h in heights if h > 0) >= 8
    failed_heights = page.locator("svg.chart rect.failed").evaluate_all(
        "rs => rs.map(r => parseFloat(r.getAttribute('height')))"
    )
    assert any(h > 0 for h in failed_heights)
    legend = page.locator(".legend").inner_text()
    assert f"{counts['failed']} failed" in legend
    # counts per queue and per type and status; every queue open to workers
    assert page.locator("#queues tr[data-queue=images]").count() == 1
    assert set(page.locator("#queues .queue-state .state").all_inner_texts()) == {"yes"}
    row = page.locator("#by-type tbody tr", has_text="resize_image")
    with db(dashboard) as q:
        per_type = q.counts(by_type=True)["resize_image"]
    assert row.locator("td").nth(4).inner_text() == str(per_type["failed"])
    assert page.locator(".plugins .pill", has_text="metrics").count() == 1
    assert page.locator(".plugins .pill", has_text="dashboard").count() == 1
    # unhealthy: a worker went silent while holding a task
    assert "batch-7" in page.locator(".verdict").inner_text()
    screenshots(page, "overview")


def test_pause_and_resume_a_queue(dashboard: Any, page: Any, screenshots: Any) -> None:
    page.goto(dashboard.url + "/")
    row = page.locator("#queues tr[data-queue=images]")
    row.locator("button", has_text="Pause").click()
    page.wait_for_url(re.compile(r"flash="))
    assert page.locator(".flash").inner_text().startswith("Paused queue 'images'")
    with db(dashboard) as q:
        assert set(q.paused_queues()) == {"images"}
    row = page.locator("#queues tr[data-queue=images]")
    assert row.locator(".queue-state .state").inner_text() == "paused"
    assert page.locator("#queues tr[data-queue=default] .queue-state .state").inner_text() == "yes"
    screenshots(page, "queue-paused")
    # the task list marks its tasks
    page.goto(dashboard.url + "/tasks?queue=images&status=queued")
    assert set(page.locator("#task-table .hint.paused").all_inner_texts()) == {"paused"}
    page.goto(dashboard.url + "/")
    page.locator("#queues tr[data-queue=images] button", has_text="Resume").click()
    page.wait_for_url(re.compile(r"flash="))
    assert page.locator(".flash").inner_text().startswith("Resumed queue 'images'")
    with db(dashboard) as q:
        assert q.paused_queues() == {}


def test_chart_window_switch(dashboard: Any, page: Any) -> None:
    page.goto(dashboard.url + "/")
    page.locator(".windows a", has_text="24h").click()
    page.wait_for_url(re.compile(r"window=24h"))
    assert page.locator(".windows a[aria-current]").inner_text() == "24h"
    assert "last 24h" in page.locator(".legend").inner_text()


def test_task_list_newest_first_filters_and_paging(
    dashboard: Any, page: Any, screenshots: Any
) -> None:
    page.goto(dashboard.url + "/tasks")
    shown = ids_on_page(page)
    with db(dashboard) as q:
        newest = [t.id for t in q.list(limit=50, newest_first=True)]
    assert shown == newest  # newest first by default, 50 a page
    screenshots(page, "tasks")
    page.locator("#next-page").click()
    page.wait_for_url(re.compile(r"after=\d+"))
    second = ids_on_page(page)
    assert second and max(second) < min(shown)
    # filter: failed resize_image tasks, through the form
    page.goto(dashboard.url + "/tasks")
    page.locator("input[name=status][value=failed]").check()
    page.locator("input[name=type]").fill("resize_image")
    page.locator("#filters button[type=submit]").click()
    page.wait_for_url(re.compile(r"status=failed"))
    with db(dashboard) as q:
        expected = [
            t.id for t in q.list(status="failed", task_type="resize_image", newest_first=True)
        ]
    assert ids_on_page(page) == expected
    assert all(s == "failed" for s in page.locator("#task-table .status").all_inner_texts())
    screenshots(page, "tasks-filtered")
    # text search in the error message, and oldest first
    page.goto(dashboard.url + "/tasks?error=RESET+THE&order=oldest")
    found = ids_on_page(page)
    with db(dashboard) as q:
        expected = [t.id for t in q.list(status="failed") if "reset the" in t.error_message]
    assert found == expected and found


def test_task_detail_shows_payload_result_error_and_timing(
    dashboard: Any, page: Any, screenshots: Any
) -> None:
    with db(dashboard) as q:
        failed = q.list(status="failed", task_type="resize_image", limit=1)[0]
        done = q.list(status="completed", task_type="resize_image", limit=1)[0]
    page.goto(dashboard.url + "/tasks?status=failed&type=resize_image&order=oldest")
    page.locator(f"#task-table a[href$='/tasks/{failed.id}']").click()
    page.wait_for_url(re.compile(rf"/tasks/{failed.id}$"))
    assert failed.payload["image"] in page.locator("#task-payload").inner_text()
    assert "cannot identify image file" in page.locator("#task-error").inner_text()
    fields = page.locator("#task-fields").inner_text()
    assert "1 of 1" in fields and "images" in fields
    assert page.locator("#task-history tbody tr").count() == 1
    page.goto(f"{dashboard.url}/tasks/{done.id}")
    assert '"width": 640' in page.locator("#task-result").inner_text()
    assert page.locator("#task-history").inner_text() == "no failed attempt"


def test_task_detail_shows_every_failed_attempt_with_its_traceback(
    dashboard: Any, page: Any, screenshots: Any
) -> None:
    task_id = dashboard.ids["payment"]
    with db(dashboard) as q:
        history = q.history(task_id)
    assert [f.outcome for f in history] == ["retry_scheduled", "retry_scheduled", "failed"]
    page.goto(f"{dashboard.url}/tasks/{task_id}")
    rows = page.locator("#task-history tbody tr")
    assert rows.count() == 3
    for row, failure in zip(rows.all(), history, strict=True):
        assert row.get_attribute("data-attempt") == str(failure.attempt)
        cells = row.locator("td").all_inner_texts()
        assert cells[2] == "worker-a"
        assert cells[3] == failure.outcome.replace("_", " ")
        assert "card 4242 declined" in cells[4]
    # tracebacks are folded until asked for
    last = rows.nth(2)
    traceback = last.locator("details.traceback pre")
    assert not traceback.is_visible()
    last.locator("details.traceback summary").click()
    assert traceback.is_visible()
    text = traceback.inner_text()
    assert "in _gateway" in text and "PermissionError: card 4242 declined" in text
    assert history[2].traceback is not None and text.strip() == history[2].traceback.strip()
    screenshots(page, "task")


def test_workers_view_shows_every_state(dashboard: Any, page: Any, screenshots: Any) -> None:
    page.goto(dashboard.url + "/")
    page.locator("header nav a", has_text="Workers").click()
    page.wait_for_url(re.compile(r"/workers$"))
    states = {
        row.get_attribute("data-worker"): row.locator(".state").inner_text()
        for row in page.locator("#workers tbody tr").all()
    }
    assert states == {"web-1": "active", "batch-7": "stale", "worker-a": "stopped"}
    screenshots(page, "workers")


def test_plugins_view_lists_active_plugins(dashboard: Any, page: Any, screenshots: Any) -> None:
    page.goto(dashboard.url + "/plugins")
    rows = {
        r.get_attribute("data-plugin"): r.locator(".state").inner_text()
        for r in page.locator("#plugins tbody tr").all()
    }
    for name in ("core", "retry", "priority", "metrics", "dashboard"):
        assert rows.get(name) == "active", (name, rows)
    assert "hookqueue_cli_commands" in page.locator("tr[data-plugin=dashboard]").inner_text()
    screenshots(page, "plugins")


def test_navigation_is_boosted_by_htmx(dashboard: Any, page: Any) -> None:
    """htmx (served from /static, under the CSP) swaps pages in place: the window survives."""
    page.goto(dashboard.url + "/")
    assert page.evaluate("typeof window.htmx") == "object"
    page.evaluate("window.__still_here = 1")
    page.locator("header nav a", has_text="Tasks").click()
    page.wait_for_url(re.compile(r"/tasks$"))
    page.locator("#task-table").wait_for()
    assert page.evaluate("window.__still_here") == 1


def test_retry_one_task_after_confirmation(dashboard: Any, page: Any, screenshots: Any) -> None:
    with db(dashboard) as q:
        task = q.list(status="failed", task_type="sync_crm", limit=1)[0]
    page.goto(f"{dashboard.url}/tasks/{task.id}")
    page.locator(".actions a", has_text="Retry").click()
    page.wait_for_url(re.compile(rf"/tasks/{task.id}/retry$"))
    with db(dashboard) as q:
        assert q.get(task.id).status is TaskStatus.FAILED  # nothing happens before confirming
    screenshots(page, "confirm-retry")
    page.locator("#confirm").click()
    page.wait_for_url(re.compile(rf"/tasks/{task.id}\?flash="))
    assert page.locator(".flash").inner_text() == f"Task {task.id} queued again."
    with db(dashboard) as q:
        after = q.get(task.id)
    assert after.status is TaskStatus.QUEUED and after.attempts == 0


def test_cancel_one_task_after_confirmation(dashboard: Any, page: Any) -> None:
    task_id = dashboard.ids["backlog"][0]
    page.goto(f"{dashboard.url}/tasks/{task_id}")
    page.locator(".actions a", has_text="Cancel").click()
    page.locator("#confirm").click()
    page.wait_for_url(re.compile(rf"/tasks/{task_id}\?flash="))
    assert page.locator(".flash").inner_text() == f"Task {task_id} cancelled."
    with db(dashboard) as q:
        assert q.get(task_id).status is TaskStatus.CANCELLED
    # a cancelled task can be retried or deleted, not cancelled again
    assert page.locator(".actions a").all_inner_texts() == ["Retry…", "Delete…"]


def test_delete_one_task_after_confirmation(dashboard: Any, page: Any, screenshots: Any) -> None:
    task_id = dashboard.ids["payment"]
    page.goto(f"{dashboard.url}/tasks/{task_id}")
    page.locator(".actions a", has_text="Delete").click()
    page.wait_for_url(re.compile(rf"/tasks/{task_id}/delete$"))
    with db(dashboard) as q:
        assert q.get(task_id).status is TaskStatus.FAILED  # nothing happens before confirming
    screenshots(page, "confirm-delete")
    page.locator("#confirm").click()
    page.wait_for_url(re.compile(r"/tasks\?flash="))
    assert page.locator(".flash").inner_text() == f"Deleted task {task_id}."
    with db(dashboard) as q:
        assert not q.list(filter=q.filter(ids=task_id))
    # a running task offers no delete, and its confirmation page says why
    running = dashboard.ids["running"]
    page.goto(f"{dashboard.url}/tasks/{running}")
    assert "Delete…" not in page.locator(".actions").inner_text()
    page.goto(f"{dashboard.url}/tasks/{running}/delete")
    assert "cannot be deleted" in page.locator("#not-applicable").inner_text()
    assert page.locator("#confirm").count() == 0


def test_bulk_retry_of_all_tasks_matching_the_filter(
    dashboard: Any, page: Any, screenshots: Any
) -> None:
    with db(dashboard) as q:
        failed_images = [t.id for t in q.list(status="failed", task_type="resize_image")]
        other_failed = [t.id for t in q.list(status="failed", task_type="sync_crm")]
    assert len(failed_images) >= 2 and other_failed
    page.goto(dashboard.url + "/tasks?status=failed&type=resize_image")
    page.locator(".bulk a", has_text="Retry all").click()
    page.wait_for_url(re.compile(r"/bulk/retry\?"))
    # the count comes first ...
    assert page.locator("#bulk-count").get_attribute("data-count") == str(len(failed_images))
    assert page.locator("h1").inner_text() == f"Retry {len(failed_images)} tasks?"
    with db(dashboard) as q:
        assert all(q.get(i).status is TaskStatus.FAILED for i in failed_images)
    screenshots(page, "bulk-retry-confirm")
    # ... then the confirmation acts on exactly those tasks
    page.locator("#confirm").click()
    page.wait_for_url(re.compile(r"/tasks\?.*flash="))
    assert page.locator(".flash").inner_text() == f"Retried {len(failed_images)} tasks."
    with db(dashboard) as q:
        assert all(q.get(i).status is TaskStatus.QUEUED for i in failed_images)
        assert all(q.get(i).status is TaskStatus.FAILED for i in other_failed)
    # the list the user comes back to keeps the filter, and shows nothing failed any more
    assert page.locator("#task-table tbody tr[data-task-id]").count() == 0
    screenshots(page, "bulk-retry-done")


def test_bulk_cancel_by_queue_spares_tasks_enqueued_after_the_preview(
    dashboard: Any, page: Any
) -> None:
    page.goto(dashboard.url + "/tasks?queue=images&status=queued")
    page.locator(".bulk a", has_text="Cancel all").click()
    page.wait_for_url(re.compile(r"/bulk/cancel\?"))
    assert page.locator("#bulk-count").get_attribute("data-count") == "3"
    with db(dashboard) as q:
        late = q.enqueue("resize_image", {"image": "after-preview.png"}, queue="images")
    page.locator("#confirm").click()
    page.wait_for_url(re.compile(r"flash="))
    assert page.locator(".flash").inner_text() == (
        "Cancelled 3 tasks (running ones are stopped by their workers)."
    )
    with db(dashboard) as q:
        assert q.get(late.id).status is TaskStatus.QUEUED
        assert not [t for t in q.list(status="queued", queue="images") if t.id != late.id]
        assert len(q.list(status="queued", queue="default")) == 6  # untouched


def test_bulk_delete_of_finished_tasks_matching_the_filter(
    dashboard: Any, page: Any, screenshots: Any
) -> None:
    """Delete what a filter shows: the completed emails that finished over 30 minutes ago."""
    page.goto(dashboard.url + "/tasks")
    page.locator("input[name=status][value=completed]").check()
    page.locator("input[name=type]").fill("send_email")
    page.locator("input[name=finished_before]").fill("30m")
    page.locator("#filters button[type=submit]").click()
    page.wait_for_url(re.compile(r"finished_before="))
    with db(dashboard) as q:
        cutoff = q.now() - timedelta(minutes=30)
        everything = q.list(limit=100_000)
    doomed = {
        t.id
        for t in everything
        if t.status is TaskStatus.COMPLETED
        and t.task_type == "send_email"
        and t.finished_at is not None
        and t.finished_at < cutoff
    }
    assert doomed and set(ids_on_page(page)) <= doomed
    page.locator(".bulk a", has_text="Delete all").click()
    page.wait_for_url(re.compile(r"/bulk/delete\?"))
    assert page.locator("#bulk-count").get_attribute("data-count") == str(len(doomed))
    assert "finished before" in page.locator("#bulk-filter").inner_text()
    screenshots(page, "bulk-delete-confirm")
    page.locator("#confirm").click()
    page.wait_for_url(re.compile(r"/tasks\?.*flash="))
    assert page.locator(".flash").inner_text() == f"Deleted {len(doomed)} tasks."
    with db(dashboard) as q:
        remaining = {t.id for t in q.list(limit=100_000)}
    assert remaining == {t.id for t in everything} - doomed
    assert page.locator("#task-table tbody tr[data-task-id]").count() == 0


def test_prune_deletes_history_after_showing_the_count(
    dashboard: Any, page: Any, screenshots: Any
) -> None:
    with db(dashboard) as q:
        old = [
            t.id
            for t in q.list(status=["completed", "failed", "cancelled"], limit=1000)
            if t.finished_at is not None and (q.now() - t.finished_at).total_seconds() > 1800
        ]
    assert old
    page.goto(dashboard.url + "/")
    page.locator("input[name=older_than]").fill("30m")
    page.locator(".maintenance button").click()
    page.wait_for_url(re.compile(r"/prune\?older_than=30m"))
    assert page.locator("#prune-count").get_attribute("data-count") == str(len(old))
    screenshots(page, "prune-confirm")
    page.locator("#confirm").click()
    page.wait_for_url(re.compile(r"flash="))
    assert page.locator(".flash").inner_text() == f"Deleted {len(old)} tasks."
    with db(dashboard) as q:
        remaining = {t.id for t in q.list(limit=100_000)}
    assert not remaining & set(old)
    assert dashboard.ids["running"] in remaining  # unfinished tasks are never deleted


def test_read_only_mode_shows_no_action(
    serve: Any, seeded_db: tuple[Path, dict[str, Any]], page: Any, screenshots: Any
) -> None:
    path, ids = seeded_db
    server = serve(create_app(path, read_only=True))
    page.goto(server.url + "/tasks?status=failed")
    assert page.locator(".badge.read-only").inner_text() == "read-only"
    assert page.locator(".bulk").count() == 0
    first = ids_on_page(page)[0]
    page.goto(f"{server.url}/tasks/{first}")
    assert page.locator(".actions").count() == 0
    page.goto(server.url + "/x/schedules")
    assert page.locator("#schedules tbody tr").count() == 2
    assert page.locator("#schedules form, #schedules button").count() == 0
    page.goto(server.url + "/")
    assert page.locator(".maintenance").count() == 0
    assert page.locator("#queues form, #queues button").count() == 0
    screenshots(page, "read-only")


def test_a_plugin_adds_a_page_with_an_action(
    serve: Any, tmp_path: Path, page: Any, screenshots: Any
) -> None:
    path = tmp_path / "queue.db"
    seed(path)
    with Queue(path, load_entrypoints=False) as q:
        acme = q.enqueue("send_email", {"to": "a@example.com"}, headers={"tenant": "acme"})
        globex = q.enqueue("send_email", {"to": "b@example.com"}, headers={"tenant": "<globex>"})
    queue = Queue(path, plugins=[TenantsPage()])
    try:
        server = serve(create_app(queue))
        page.goto(server.url + "/")
        page.locator("header nav a", has_text="Tenants").click()
        page.wait_for_url(re.compile(r"/x/tenants$"))
        assert page.locator("#tenant-count").inner_text() == "3 tenants"
        items = page.locator(".plugin-page li").all_inner_texts()
        assert any(item.startswith("<globex>: 1 queued") for item in items)  # text: escaped
        assert page.locator(".plugin-page globex").count() == 0
        screenshots(page, "plugin-page")
        page.locator("li[data-tenant=acme] button", has_text="Cancel queued").click()
        page.wait_for_url(re.compile(r"/x/tenants\?flash="))
        assert page.locator(".flash").inner_text() == "Cancelled 1 queued task(s) of tenant acme."
        assert page.locator("#tenant-count").inner_text() == "2 tenants"
        with Queue(path, load_entrypoints=False) as q:
            assert q.get(acme.id).status is TaskStatus.CANCELLED
            assert q.get(globex.id).status is TaskStatus.QUEUED
    finally:
        queue.close()


def test_the_periodic_plugins_schedules_page(dashboard: Any, page: Any, screenshots: Any) -> None:
    """The first-party periodic plugin adds its page through the same hook as a third party:
    every schedule's ticks and state, with pause and resume."""
    page.goto(dashboard.url + "/")
    page.locator("header nav a", has_text="Schedules").click()
    page.wait_for_url(re.compile(r"/x/schedules$"))
    with db(dashboard) as q:
        infos = {i.schedule.key: i for i in list_schedules(q)}
    digest = page.locator("#schedules tr[data-schedule=digest]")
    nightly = page.locator("#schedules tr[data-schedule=nightly-report]")
    assert digest.locator(".schedule-state").inner_text() == "active"
    assert nightly.locator(".schedule-state").inner_text() == "paused"
    # The seed runs the scheduler over 49.5 minutes of its fake clock ending at the real
    # time: 4 or 5 ten-minute ticks fall in that span, depending on the wall clock.
    assert digest.locator(".fired").inner_text() == str(infos["digest"].fired)
    assert infos["digest"].fired in (4, 5)
    assert digest.locator(".skipped").inner_text() == "0"
    next_tick = infos["digest"].next_tick
    assert next_tick is not None
    assert next_tick.strftime("%Y-%m-%d %H:%M:%S") in digest.locator(".next-tick").inner_text()
    last = digest.locator(".last-tick")
    assert f"task {infos['digest'].last_task_id}" in last.inner_text()
    assert nightly.locator(".last-tick").inner_text() == "never"
    assert "Europe/Paris" in nightly.inner_text()
    screenshots(page, "schedules")
    # pause one, resume the other: the database changes, the page says so
    digest.locator("button", has_text="Pause").click()
    page.wait_for_url(re.compile(r"/x/schedules\?flash="))
    assert page.locator(".flash").inner_text().startswith("Paused schedule 'digest'")
    page.locator("#schedules tr[data-schedule=nightly-report] button", has_text="Resume").click()
    page.wait_for_url(re.compile(r"/x/schedules\?flash=Resumed"))
    assert page.locator(".flash").inner_text().startswith("Resumed schedule 'nightly-report'")
    with db(dashboard) as q:
        after = {i.schedule.key: i.paused for i in list_schedules(q)}
    assert after == {"digest": True, "nightly-report": False}
    states = page.locator("#schedules .schedule-state").all_inner_texts()
    assert states == ["paused", "active"]
    screenshots(page, "schedules-after")


def test_the_limits_plugins_limits_page(dashboard: Any, page: Any, screenshots: Any) -> None:
    """The first-party limits plugin adds its page through the same hook: every stored limit
    with its running, due and waiting tasks and the buckets it holds back, with remove."""
    with db(dashboard) as q:
        set_limit(q, LimitRule(name="one-at-a-time", concurrency=1))
        set_limit(
            q,
            LimitRule(
                name="email-per-recipient",
                task_type="send_email",
                partition_by="to",
                rate=5,
                period=60.0,
                burst=2,
            ),
        )
        usage = limit_usage(q)
    waiting = sum(u.waiting for u in usage if u.rule == "one-at-a-time")
    running = sum(u.running for u in usage if u.rule == "one-at-a-time")
    assert waiting > 0 and running == 1  # the silent worker's task holds the one slot
    page.goto(dashboard.url + "/")
    page.locator("header nav a", has_text="Limits").click()
    page.wait_for_url(re.compile(r"/x/limits$"))
    one = page.locator("#limits tr[data-limit=one-at-a-time]")
    assert one.locator(".running").inner_text() == "1"
    assert one.locator(".waiting").inner_text() == f"{waiting:,}"
    assert one.locator(".limit-rule").inner_text() == "1 running"
    assert "none" not in one.locator(".held").inner_text()
    email = page.locator("#limits tr[data-limit=email-per-recipient]")
    assert "5 per 60s, burst 2" in email.locator(".limit-rule").inner_text()
    assert "per payload.to" in email.inner_text()
    screenshots(page, "limits")
    one.locator("button", has_text="Remove").click()
    page.wait_for_url(re.compile(r"/x/limits\?flash="))
    assert page.locator(".flash").inner_text().startswith("Removed limit 'one-at-a-time'")
    with db(dashboard) as q:
        assert [r.name for r in list_limits(q)] == ["email-per-recipient"]
    assert page.locator("#limits tbody tr").count() == 1
