"""The dashboard over plain HTTP (httpx against a live uvicorn server): CSRF, read-only mode,
the auth hook, /healthz, escaping, mounting, plugin pages, the plugin and its command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _dashboard import TenantsPage
from starlette.applications import Starlette
from starlette.routing import Mount

from hookqueue import Queue, TaskStatus, WorkerEngine, hookimpl
from hookqueue.contrib.dashboard import DashboardPage, create_app
from hookqueue.contrib.dashboard import plugin as dashboard_plugin
from hookqueue.core.cli import build_parser, main
from hookqueue.core.errors import PluginError, ValidationError
from hookqueue.core.plugins import Hooks, make_plugin_manager, plugin_statuses

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


@pytest.fixture
def small_db(tmp_path: Path) -> Path:
    """Two failed tasks, one queued."""
    path = tmp_path / "queue.db"
    with Queue(path, load_entrypoints=False, durability="normal") as q:
        q.handlers.register_handler("bad", lambda task: 1 / 0)
        for i in range(2):
            q.enqueue("bad", {"i": i})
        WorkerEngine(q, worker_id="w").run_until_idle()
        q.enqueue("ok", {"to": "<script>alert(1)</script>"})
    return path


def statuses(path: Path) -> list[str]:
    with Queue(path, load_entrypoints=False) as q:
        return [t.status.value for t in q.list(limit=100)]


def token_from(client: httpx.Client, url: str) -> str:
    """Open a confirmation page (which sets the session cookie) and read its CSRF token."""
    response = client.get(url)
    assert response.status_code == 200, response.text
    match = CSRF.search(response.text)
    assert match, response.text
    return match.group(1)


# -- CSRF ---------------------------------------------------------------------------------------


def test_a_post_without_the_csrf_token_is_refused(serve: Any, small_db: Path) -> None:
    server = serve(create_app(small_db))
    before = statuses(small_db)
    with httpx.Client(base_url=server.url) as client:
        token_from(client, "/tasks/1/retry")  # a session exists, but the POST omits its token
        response = client.post("/tasks/1/retry", data={})
        assert response.status_code == 403
        assert "CSRF" in response.text
        # a token of another session
        with httpx.Client(base_url=server.url) as other:
            foreign = token_from(other, "/tasks/1/retry")
        response = client.post("/tasks/1/retry", data={"csrf_token": foreign})
        assert response.status_code == 403
        # every other action too
        for url, data in (
            ("/tasks/3/delete", {}),
            ("/bulk/retry", {"status": "failed", "max_id": "10", "count": "2"}),
            ("/bulk/delete", {"max_id": "10", "count": "3"}),
            ("/prune", {"older_than": "0"}),
            ("/queues/pause", {"queue": "default"}),
        ):
            assert client.post(url, data=data).status_code == 403, url
    # no session cookie at all (a cross-site form post)
    with httpx.Client(base_url=server.url) as stranger:
        response = stranger.post("/tasks/1/retry", data={"csrf_token": foreign})
        assert response.status_code == 403
    assert statuses(small_db) == before
    with Queue(small_db, load_entrypoints=False) as q:
        assert q.paused_queues() == {}


def test_a_post_with_the_sessions_token_acts(serve: Any, small_db: Path) -> None:
    server = serve(create_app(small_db))
    with httpx.Client(base_url=server.url) as client:
        token = token_from(client, "/tasks/1/retry")
        response = client.post("/tasks/1/retry", data={"csrf_token": token})
        assert response.status_code == 303
        location = response.headers["location"]
        assert location.startswith("/tasks/1?flash=Task+1+queued+again.&flash_sig=")
        assert "Task 1 queued again." in client.get(location).text
        # htmx sends the token as a header instead of a form field
        response = client.post("/tasks/2/retry", headers={"X-CSRF-Token": token})
        assert response.status_code == 303
        response = client.post("/tasks/3/delete", data={"csrf_token": token})
        assert response.headers["location"].startswith("/tasks?flash=Deleted+task+3.")
    with Queue(small_db, load_entrypoints=False) as q:
        assert q.get(1).status is TaskStatus.QUEUED
        assert q.get(2).status is TaskStatus.QUEUED
        assert [t.id for t in q.list()] == [1, 2]


def test_a_banner_needs_the_apps_signature(serve: Any, small_db: Path) -> None:
    """The banner after an action comes from the query, signed: a link made elsewhere
    cannot make the dashboard say something."""
    app = create_app(small_db)
    server = serve(app)
    signed = app.state.dashboard.flash_query("Deleted 3 tasks.")
    assert "Deleted 3 tasks." in httpx.get(f"{server.url}/?{signed}").text
    forged = signed.replace("3", "300")
    assert "Deleted 300 tasks." not in httpx.get(f"{server.url}/?{forged}").text
    assert "Hi" not in httpx.get(f"{server.url}/?flash=Hi").text
    other = create_app(small_db).state.dashboard.flash_query("Deleted 3 tasks.")
    assert "Deleted 3 tasks." not in httpx.get(f"{server.url}/?{other}").text


def test_the_session_cookie_is_httponly_and_same_site(serve: Any, small_db: Path) -> None:
    server = serve(create_app(small_db))
    response = httpx.get(server.url + "/")
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie


def test_a_bulk_action_rechecks_its_form(serve: Any, small_db: Path) -> None:
    server = serve(create_app(small_db))
    with httpx.Client(base_url=server.url) as client:
        token = token_from(client, "/bulk/retry?status=failed")
        form = {"csrf_token": token, "status": "failed", "count": "2"}
        bad = client.post("/bulk/retry", data=form)
        assert bad.status_code == 400 and "max_id" in bad.text
        bad = client.post("/bulk/retry", data={**form, "status": "nope", "max_id": 9})
        assert bad.status_code == 400 and "is not a task status" in bad.text
        bad = client.post("/bulk/retry", data={**form, "max_id": 9, "count": "x"})
        assert bad.status_code == 400 and "count" in bad.text
        assert client.post("/bulk/explode", data={"csrf_token": token}).status_code == 404
        # max_id bounds the action to what the preview saw; the banner says what differed
        ok = client.post("/bulk/retry", data={**form, "max_id": 1})
        assert ok.status_code == 303
        banner = client.get(ok.headers["location"]).text
        assert "Retried 1 task. 1 of the 2 previewed had changed status" in banner
        assert "status=failed" in ok.headers["location"]  # back to the same filter
    with Queue(small_db, load_entrypoints=False) as q:
        assert [q.get(1).status, q.get(2).status] == [TaskStatus.QUEUED, TaskStatus.FAILED]


def test_the_bulk_preview_counts_and_bounds_what_it_shows(serve: Any, small_db: Path) -> None:
    server = serve(create_app(small_db))
    with httpx.Client(base_url=server.url) as client:
        page = client.get("/bulk/delete?status=failed&status=running")
        assert 'data-count="2"' in page.text and 'name="max_id" value="3"' in page.text
        # running tasks are never deleted: the filter, as the action applies it, says so
        assert '<span id="bulk-filter">status failed</span>' in page.text
        page = client.get("/bulk/delete?status=running")
        assert 'data-count="0"' in page.text and 'id="confirm"' not in page.text
        assert client.get("/bulk/retry?from=whenever").status_code == 400


# -- read-only and auth -------------------------------------------------------------------------


def test_read_only_refuses_every_action(serve: Any, small_db: Path) -> None:
    writable = serve(create_app(small_db))
    server = serve(create_app(small_db, read_only=True))
    with httpx.Client(base_url=writable.url) as other:
        token = token_from(other, "/tasks/1/retry")
    with httpx.Client(base_url=server.url) as client:
        page = client.get("/tasks/1")
        assert page.status_code == 200 and "Retry…" not in page.text
        assert "read-only" in page.text
        for url in (
            "/tasks/1/retry",
            "/tasks/1/delete",
            "/bulk/retry?status=failed",
            "/bulk/delete",
            "/prune?older_than=1d",
        ):
            assert client.get(url).status_code == 403, url
        assert "Pause" not in client.get("/").text
        for url in (
            "/tasks/1/retry",
            "/tasks/1/delete",
            "/bulk/retry",
            "/bulk/delete",
            "/prune",
            "/queues/pause",
        ):
            response = client.post(url, data={"csrf_token": token}, headers={"X-CSRF-Token": token})
            assert response.status_code == 403, url
            assert "read-only" in response.text
    assert statuses(small_db) == ["failed", "failed", "queued"]
    with Queue(small_db, load_entrypoints=False) as q:
        assert q.paused_queues() == {}


def test_the_auth_hook_decides_per_request(serve: Any, small_db: Path) -> None:
    def auth(request: Any) -> bool | str:
        key = request.headers.get("x-api-key")
        return {"admin": True, "viewer": "read-only"}.get(key, False)

    server = serve(create_app(small_db, auth=auth))
    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.get("/").status_code == 403
        assert anonymous.get("/tasks/1").status_code == 403
        assert anonymous.get("/healthz").status_code == 200  # probes need no credentials
        assert anonymous.get("/static/htmx.min.js").status_code == 200
    with httpx.Client(base_url=server.url, headers={"x-api-key": "viewer"}) as viewer:
        assert viewer.get("/tasks").status_code == 200
        assert "Retry all" not in viewer.get("/tasks").text
        assert viewer.get("/tasks/1/retry").status_code == 403
    with httpx.Client(base_url=server.url, headers={"x-api-key": "admin"}) as admin:
        token = token_from(admin, "/tasks/1/retry")
        assert admin.post("/tasks/1/retry", data={"csrf_token": token}).status_code == 303
    assert statuses(small_db)[0] == "queued"


def test_an_async_auth_hook(serve: Any, small_db: Path) -> None:
    async def auth(request: Any) -> bool:
        return request.query_params.get("pass") == "1"

    server = serve(create_app(small_db, auth=auth))
    assert httpx.get(server.url + "/workers").status_code == 403
    assert httpx.get(server.url + "/workers?pass=1").status_code == 200


# -- healthz, headers, escaping, errors -----------------------------------------------------------


def test_healthz(serve: Any, small_db: Path) -> None:
    server = serve(create_app(small_db))
    response = httpx.get(server.url + "/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "tasks": {"queued": 1, "running": 0, "completed": 0, "failed": 2, "cancelled": 0},
    }


def test_healthz_reports_an_unreadable_database(serve: Any, small_db: Path) -> None:
    queue = Queue(small_db, load_entrypoints=False)
    server = serve(create_app(queue))
    queue.db.close()
    response = httpx.get(server.url + "/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "error"
    queue.close()


def test_pages_send_security_headers_and_escape_task_data(serve: Any, small_db: Path) -> None:
    server = serve(create_app(small_db))
    response = httpx.get(server.url + "/tasks/3")
    assert "<script>alert(1)</script>" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_bad_input_is_a_400_naming_the_field(serve: Any, small_db: Path) -> None:
    server = serve(create_app(small_db))
    response = httpx.get(server.url + "/tasks?from=yesterday-ish")
    assert response.status_code == 400 and "from" in response.text
    assert httpx.get(server.url + "/tasks?from=99999999d").status_code == 400
    assert httpx.get(server.url + "/tasks?finished_before=later").status_code == 400
    assert httpx.get(server.url + "/tasks?after=x").status_code == 400
    assert httpx.get(server.url + "/tasks/999").status_code == 404
    assert httpx.get(server.url + "/prune?older_than=soon").status_code == 400


def test_the_htmx_file_and_its_licence_are_served_from_the_package(
    serve: Any, small_db: Path
) -> None:
    server = serve(create_app(small_db))
    page = httpx.get(server.url + "/").text
    assert 'src="/static/htmx.min.js"' in page and "//unpkg" not in page and "cdn" not in page
    js = httpx.get(server.url + "/static/htmx.min.js")
    assert js.status_code == 200 and "htmx" in js.text[:200]
    static = Path(dashboard_plugin.__file__).parent / "static"
    assert "Zero-Clause BSD" in (static / "htmx.LICENSE").read_text()


# -- mounting -----------------------------------------------------------------------------------


def test_mounted_under_a_prefix_links_follow_it(serve: Any, small_db: Path) -> None:
    outer = Starlette(routes=[Mount("/ops/queue", app=create_app(small_db))])
    server = serve(outer)
    with httpx.Client(base_url=server.url) as client:
        page = client.get("/ops/queue/tasks")
        assert page.status_code == 200
        assert 'href="/ops/queue/tasks/1"' in page.text
        assert 'src="/ops/queue/static/htmx.min.js"' in page.text
        assert client.get("/ops/queue/static/dashboard.css").status_code == 200
        token = token_from(client, "/ops/queue/tasks/1/retry")
        response = client.post("/ops/queue/tasks/1/retry", data={"csrf_token": token})
        assert response.headers["location"].startswith("/ops/queue/tasks/1?")


# -- plugin pages ---------------------------------------------------------------------------------


def test_a_plugin_page_is_linked_and_rendered(serve: Any, small_db: Path) -> None:
    with Queue(small_db, plugins=[TenantsPage()]) as queue:
        server = serve(create_app(queue))
        home = httpx.get(server.url + "/").text
        assert 'href="/x/tenants"' in home
        page = httpx.get(server.url + "/x/tenants")
        assert page.status_code == 200 and "1 tenants" in page.text
        assert httpx.get(server.url + "/x/nope").status_code == 404
        # a second app on the same queue finds the hookspec already added
        assert "tenants" in create_app(queue).state.dashboard.pages


def test_plugin_pages_with_the_same_name_are_refused(small_db: Path) -> None:
    class Other:
        hookqueue_name = "other-tenants"

        @hookimpl(optionalhook=True)
        def hookqueue_dashboard_pages(self) -> list[DashboardPage]:
            return [DashboardPage(name="tenants", title="T", template="")]

    with Queue(small_db, plugins=[TenantsPage(), Other()], load_entrypoints=False) as queue:
        with pytest.raises(
            PluginError, match="contributed by both plugin '[a-z-]+' and plugin '[a-z-]+'"
        ):
            create_app(queue)


def test_a_page_name_must_fit_in_a_url() -> None:
    with pytest.raises(ValidationError, match="lowercase letters"):
        DashboardPage(name="../etc", title="x", template="")


# -- paused queues ------------------------------------------------------------------------------


def test_pause_and_resume_a_queue(serve: Any, small_db: Path) -> None:
    server = serve(create_app(small_db))
    with httpx.Client(base_url=server.url) as client:
        home = client.get("/")
        token = CSRF.search(home.text).group(1)  # type: ignore[union-attr]
        assert 'action="/queues/pause"' in home.text
        response = client.post("/queues/pause", data={"csrf_token": token, "queue": "default"})
        assert response.status_code == 303
        page = client.get(response.headers["location"]).text
        assert "Paused queue &#39;default&#39;" in page
        assert 'action="/queues/resume"' in page
        with Queue(small_db, load_entrypoints=False) as q:
            assert set(q.paused_queues()) == {"default"}
        again = client.post("/queues/pause", data={"csrf_token": token, "queue": "default"})
        assert "was paused already" in client.get(again.headers["location"]).text
        # the task list marks the tasks of a paused queue
        assert 'class="hint paused"' in client.get("/tasks?status=queued").text
        response = client.post("/queues/resume", data={"csrf_token": token, "queue": "default"})
        assert "Resumed queue" in client.get(response.headers["location"]).text
        assert client.post("/queues/resume", data={"csrf_token": token}).status_code == 400
        assert client.post("/queues/drain", data={"csrf_token": token}).status_code == 404
    with Queue(small_db, load_entrypoints=False) as q:
        assert q.paused_queues() == {}


# -- plugin pages with actions ------------------------------------------------------------------


@pytest.fixture
def tenants_db(small_db: Path) -> Path:
    with Queue(small_db, load_entrypoints=False) as q:
        q.enqueue("ok", {"n": 1}, headers={"tenant": "acme"})
        q.enqueue("ok", {"n": 2}, headers={"tenant": "acme"})
        q.enqueue("ok", {"n": 3}, headers={"tenant": '"><b>globex'})
    return small_db


def test_a_plugin_page_action_is_guarded_like_the_dashboards_own(
    serve: Any, tenants_db: Path
) -> None:
    def auth(request: Any) -> bool | str:
        return True if request.headers.get("x-role") == "admin" else "read-only"

    with Queue(tenants_db, plugins=[TenantsPage()], load_entrypoints=False) as queue:
        server = serve(create_app(queue, auth=auth))
        admin = httpx.Client(base_url=server.url, headers={"x-role": "admin"})
        viewer = httpx.Client(base_url=server.url)
        with admin, viewer:
            page = admin.get("/x/tenants").text
            # the form posts to the action, with the token and the fields escaped
            assert 'action="/x/tenants/cancel-queued"' in page
            assert 'value="&#34;&gt;&lt;b&gt;globex"' in page and "<b>globex" not in page
            token = CSRF.search(page).group(1)  # type: ignore[union-attr]
            # a viewer sees no button and is refused
            assert "cancel-queued" not in viewer.get("/x/tenants").text
            refused = viewer.post(
                "/x/tenants/cancel-queued", data={"tenant": "acme", "csrf_token": token}
            )
            assert refused.status_code == 403
            # no token, no action
            no_token = admin.post("/x/tenants/cancel-queued", data={"tenant": "acme"})
            assert no_token.status_code == 403 and "CSRF" in no_token.text
            assert queue.count(status="cancelled") == 0
            # the plugin's error is the answer, as the dashboard's own are
            bad = admin.post(
                "/x/tenants/cancel-queued", data={"tenant": "initech", "csrf_token": token}
            )
            assert bad.status_code == 400 and "has no queued task" in bad.text
            assert admin.post("/x/tenants/explode", data={"csrf_token": token}).status_code == 404
            assert (
                admin.post("/x/nope/cancel-queued", data={"csrf_token": token}).status_code == 404
            )
            done = admin.post(
                "/x/tenants/cancel-queued", data={"tenant": "acme", "csrf_token": token}
            )
            assert done.status_code == 303 and done.headers["location"].startswith("/x/tenants?")
            after = admin.get(done.headers["location"]).text
            assert "Cancelled 2 queued task(s) of tenant acme." in after
        assert queue.count(status="cancelled") == 2


def test_plugin_page_actions_follow_the_mount_path(serve: Any, tenants_db: Path) -> None:
    with Queue(tenants_db, plugins=[TenantsPage()], load_entrypoints=False) as queue:
        outer = Starlette(routes=[Mount("/ops", app=create_app(queue))])
        server = serve(outer)
        with httpx.Client(base_url=server.url) as client:
            page = client.get("/ops/x/tenants").text
            assert 'action="/ops/x/tenants/cancel-queued"' in page
            token = CSRF.search(page).group(1)  # type: ignore[union-attr]
            done = client.post(
                "/ops/x/tenants/cancel-queued", data={"tenant": "acme", "csrf_token": token}
            )
            assert done.headers["location"].startswith("/ops/x/tenants?flash=")


def test_a_page_action_name_must_fit_in_a_url() -> None:
    with pytest.raises(ValidationError, match="lowercase letters"):
        DashboardPage(name="p", title="P", template="", actions={"Drop All": lambda r: None})
    with pytest.raises(ValidationError, match="is not callable"):
        DashboardPage(name="p", title="P", template="", actions={"go": "not a function"})


# -- the periodic plugin's page ---------------------------------------------------------------------


def test_the_periodic_plugin_adds_the_schedules_page(serve: Any, small_db: Path) -> None:
    from hookqueue.plugins.periodic import Schedule, add_schedule

    with Queue(small_db) as queue:
        add_schedule(queue, Schedule("every 1h", name="hourly", task_type="ok"))
        app = create_app(queue)
        assert "schedules" in app.state.dashboard.pages
        server = serve(app)
        home = httpx.get(server.url + "/").text
        assert 'href="/x/schedules"' in home
        page = httpx.get(server.url + "/x/schedules").text
        assert 'data-schedule="hourly"' in page and "every 1h" in page
    # blocking the plugin takes its page away
    with Queue(small_db, block=["periodic"]) as queue:
        assert "schedules" not in create_app(queue).state.dashboard.pages


def test_a_worker_process_never_imports_the_dashboard(small_db: Path) -> None:
    """The periodic plugin's page module, Starlette and Jinja2 are imported only where a
    dashboard is built: a worker (every entry point loaded) does not import them."""
    code = (
        "import sys\n"
        "from hookqueue import Queue, WorkerEngine\n"
        f"q = Queue({str(small_db)!r})\n"
        "WorkerEngine(q, worker_id='w').run_until_idle()\n"
        "q.close()\n"
        "loaded = [m for m in ('starlette', 'jinja2', 'hookqueue.plugins.periodic.dashboard',"
        " 'hookqueue.contrib.dashboard.app') if m in sys.modules]\n"
        "print(loaded)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


# -- the plugin, its extra and its command -----------------------------------------------------------


def test_without_the_web_extra_the_plugin_is_unavailable_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What a user without Starlette has: the plugin's check finds no module.
    monkeypatch.setitem(sys.modules, "starlette", None)
    monkeypatch.delitem(sys.modules, "hookqueue.contrib.dashboard.plugin")
    status = {s.name: s for s in plugin_statuses(make_plugin_manager())}["dashboard"]
    assert status.state == "unavailable"
    assert "pip install 'hookqueue[web]'" in status.reason
    assert main(["plugins"]) == 0
    line = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("dashboard")
    )
    assert "unavailable" in line and "pip install 'hookqueue[web]'" in line
    with pytest.raises(SystemExit):
        main(["dashboard"])
    assert "'dashboard' is not one of the choices" in capsys.readouterr().err


def test_the_command_binds_loopback_by_default() -> None:
    args = build_parser(Hooks(make_plugin_manager())).parse_args(["dashboard", "--db", "x.db"])
    assert (args.host, args.port, args.read_only) == ("127.0.0.1", 8765, False)


def test_hookqueue_dashboard_serves_the_file(small_db: Path) -> None:
    """The real command in a subprocess: it prints where it listens (127.0.0.1), serves,
    and exits 0 on SIGTERM."""
    command = [sys.executable, "-m", "hookqueue", "dashboard", "--db", str(small_db)]
    with subprocess.Popen(
        [*command, "--port", "0", "--read-only"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
            assert match, line
            assert "(read-only)" in line
            url = match.group(1)
            deadline = time.monotonic() + 10
            while True:
                try:
                    response = httpx.get(url + "/healthz")
                    break
                except httpx.ConnectError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            assert response.json()["tasks"]["failed"] == 2
            assert "read-only" in httpx.get(url + "/tasks").text
        finally:
            process.terminate()
            _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err


@pytest.mark.parametrize(("require", "outcome"), [("0", "1 skipped"), ("1", "1 error")])
def test_without_chromium_browser_tests_skip_with_the_fix_unless_required(
    require: str, outcome: str
) -> None:
    """A machine without Chromium skips the browser tests and says how to install it; CI
    (``HOOKQUEUE_REQUIRE_SERVICES=1`` in ``.ci/run``) fails instead."""
    browser_tests = Path(__file__).with_name("test_dashboard_browser.py")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HOOKQUEUE_")},
        "HOOKQUEUE_CHROMIUM": "/nonexistent/chromium",
        "HOOKQUEUE_REQUIRE_SERVICES": require,
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:randomly",
            str(browser_tests),
            "-k",
            "workers_view",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert outcome in run.stdout, run.stdout + run.stderr
    assert "apt-get install -y chromium" in run.stdout


def test_the_docs_show_every_view_and_are_linked() -> None:
    root = Path(__file__).resolve().parents[3]
    text = (root / "docs" / "dashboard.md").read_text()
    images = re.findall(r"\]\((images/dashboard/[^)]+\.png)\)", text)
    shown = {Path(image).stem for image in images}
    assert {"overview", "tasks", "task", "workers", "plugins", "plugin-page"} <= shown
    assert {"bulk-retry-confirm", "bulk-retry-done", "bulk-delete-confirm"} <= shown
    assert {"queue-paused", "schedules"} <= shown
    # the Core-candidate list of the first version is gone: the store has those methods
    assert "Core candidate" not in text
    for image in images:
        assert (root / "docs" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
    assert "(docs/dashboard.md)" in (root / "README.md").read_text()
    assert "`hookqueue dashboard" in (root / "docs" / "cli.md").read_text()
