"""The dashboard's ASGI app: Starlette routes, Jinja2 templates, htmx, no build step.

Every view reads the database through :class:`~hookqueue.contrib.dashboard.data.DashboardData`
(in Starlette's thread pool, so SQLite never blocks the event loop), so any process that can
open the file can serve the dashboard. Pages are plain HTML that work without JavaScript;
htmx (shipped in ``static/``) boosts links and forms and refreshes the overview.

Every request passes :func:`_guard`: the auth hook decides first (``/healthz`` and
``/static`` are exempt), then each POST must carry the session's CSRF token, and in
read-only mode every POST is refused with 403.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import inspect
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from hookqueue.core.errors import HookqueueError, InvalidTransition, TaskNotFound, ValidationError
from hookqueue.core.models import TaskStatus
from hookqueue.core.queue import Queue
from hookqueue.core.storage import TaskStore
from hookqueue.plugins.metrics import QueueMetrics

from .charts import timeline_chart
from .data import BULK_ACTIONS, DashboardData, TaskFilter, parse_duration
from .hookspecs import DashboardPage, PageRequest, collect_pages

__all__ = ["AuthHook", "Dashboard", "create_app"]

HERE = Path(__file__).parent
#: The session cookie: a random id; the CSRF token is an HMAC of it under the app's secret.
SESSION_COOKIE = "hookqueue_dashboard_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: The chart windows the overview offers: name -> seconds.
WINDOWS = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
#: ``auth(request)`` returns True (allowed), False (refused with 403), or ``"read-only"``
#: (views allowed, actions refused); it may be a coroutine function.
AuthHook = Callable[[Request], "bool | str | Awaitable[bool | str]"]
#: The security headers of every response. The CSP allows this origin's scripts and styles
#: only: htmx is configured not to inject its own style element nor to evaluate code.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def _format_seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    if value < 172800:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


def _format_instant(value: datetime | None) -> str:
    return "–" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


class Dashboard:
    """The dashboard's state: the queue, its data access, the pages and the secrets.

    Built by :func:`create_app` (``app.state.dashboard``); see there for the parameters.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        owns_queue: bool,
        read_only: bool,
        auth: AuthHook | None,
        secret: bytes,
        title: str,
        page_size: int,
        data: DashboardData,
    ) -> None:
        self.queue = queue
        self.owns_queue = owns_queue
        self.read_only = read_only
        self.auth = auth
        self.secret = secret
        self.title = title
        self.page_size = page_size
        self.data = data
        self.pages: dict[str, DashboardPage] = {p.name: p for p in collect_pages(queue.pm)}
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.filters["seconds"] = _format_seconds
        env.filters["instant"] = _format_instant
        env.filters["pretty_json"] = _pretty_json
        self.env = env
        self.templates = Jinja2Templates(env=env)
        self._page_templates = {name: env.from_string(p.template) for name, p in self.pages.items()}

    def csrf_token(self, session: str) -> str:
        """The CSRF token of a session id."""
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()

    def close(self) -> None:
        """Close the queue if the dashboard opened it (a Queue passed in stays open)."""
        if self.owns_queue:
            self.queue.close()


def _dashboard(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _forbidden(request: Request, message: str) -> Response:
    return PlainTextResponse(f"403 Forbidden: {message}\n", status_code=403)


Handler = Callable[[Request], Awaitable[Response]]


def _guard(handler: Handler, *, action: bool = False) -> Handler:
    """Wrap an endpoint: auth hook, session cookie, CSRF check on POST, read-only refusal for
    actions, and the security headers on the response."""

    async def endpoint(request: Request) -> Response:
        dashboard = _dashboard(request)
        read_only = dashboard.read_only
        if dashboard.auth is not None:
            decision = dashboard.auth(request)
            if inspect.isawaitable(decision):
                decision = await decision
            if decision == "read-only":
                read_only = True
            elif decision is not True:
                return _secured(
                    _forbidden(request, "the dashboard's auth hook refused this request")
                )
        request.state.read_only = read_only
        session = request.cookies.get(SESSION_COOKIE)
        new_session = session is None or len(session) < 32
        if new_session:
            session = secrets.token_urlsafe(32)
        assert session is not None
        request.state.csrf_token = dashboard.csrf_token(session)
        if request.method == "POST":
            if read_only:
                return _secured(_forbidden(request, "the dashboard is read-only"))
            form = await request.form()
            sent = request.headers.get(CSRF_HEADER) or str(form.get(CSRF_FIELD) or "")
            if new_session or not hmac.compare_digest(sent, request.state.csrf_token):
                return _secured(
                    _forbidden(
                        request,
                        "missing or wrong CSRF token (reload the page and try again)",
                    )
                )
        elif action and read_only:
            return _secured(_forbidden(request, "the dashboard is read-only"))
        response = await handler(request)
        if new_session:
            response.set_cookie(
                SESSION_COOKIE,
                session,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path=_base(request) or "/",
            )
        return _secured(response)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def _secured(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    dashboard = _dashboard(request)
    context.update(
        base=_base(request),
        title=dashboard.title,
        read_only=request.state.read_only,
        csrf_token=request.state.csrf_token,
        pages=list(dashboard.pages.values()),
        path=request.url.path,
        done=_done_message(request),
    )
    return dashboard.templates.TemplateResponse(request, template, context, status_code=status_code)


_DONE = {
    "retry": ("retried", "Retried"),
    "cancel": ("cancelled", "Cancelled"),
    "prune": ("deleted", "Deleted"),
}


def _done_message(request: Request) -> str | None:
    """The banner after an action, from fixed wording: the query only carries numbers."""
    action = request.query_params.get("done")
    if action not in _DONE:
        return None

    def number(name: str) -> int:
        text = request.query_params.get(name, "0")
        return int(text) if text.isdigit() else 0

    n, skipped, more = number("n"), number("skipped"), number("more")
    _, verb = _DONE[action]
    noun = "task" if n == 1 else "tasks"
    message = f"{verb} {n:,} {noun}."
    if skipped:
        message += f" {skipped:,} had changed status meanwhile and were left alone."
    if more:
        message += " More tasks match: the action stopped at its limit; run it again."
    return message


def _bad_request(request: Request, error: HookqueueError) -> Response:
    return _render(request, "error.html", status_code=400, heading="Bad request", error=str(error))


# -- views ------------------------------------------------------------------------------------


async def overview(request: Request) -> Response:
    """Counts per queue and status, the chart, health, workers and plugins."""
    dashboard = _dashboard(request)
    data = dashboard.data
    window = request.query_params.get("window", "1h")
    if window not in WINDOWS:
        window = "1h"

    def read() -> dict[str, Any]:
        health = data.health()
        return {
            "health": health,
            "by_queue": data.depth_by_queue(),
            "by_type": health["depth_by_type"],
            "timeline": data.timeline(WINDOWS[window], 30),
            "plugins": data.plugins(),
        }

    figures = await run_in_threadpool(read)
    return _render(
        request,
        "overview.html",
        window=window,
        windows=list(WINDOWS),
        chart=timeline_chart(figures.pop("timeline")),
        statuses=[s.value for s in TaskStatus],
        **figures,
    )


def _filter(request: Request, params: Any) -> TaskFilter:
    return TaskFilter.from_query(params, _dashboard(request).data.now())


def _query(flt: TaskFilter, **extra: Any) -> str:
    pairs = flt.to_query() + [(k, str(v)) for k, v in extra.items() if v is not None]
    return urlencode(pairs)


async def tasks(request: Request) -> Response:
    """The task list: filters, newest first by default, paged by id."""
    dashboard = _dashboard(request)
    data = dashboard.data
    params = request.query_params
    try:
        flt = _filter(request, params)
        after_text = params.get("after", "").strip()
        after_id = int(after_text) if after_text else None
    except ValidationError as exc:
        return _bad_request(request, exc)
    except ValueError:
        return _bad_request(
            request, ValidationError("after", params.get("after"), "is not a task id", "e.g. 42")
        )
    newest_first = params.get("order", "newest") != "oldest"

    def read() -> dict[str, Any]:
        return {
            "page": data.list_tasks(
                flt, after_id=after_id, limit=dashboard.page_size, newest_first=newest_first
            ),
            "task_types": data.task_types(),
            "queue_names": data.queue_names(),
            "now": data.now(),
        }

    figures = await run_in_threadpool(read)
    order = "newest" if newest_first else "oldest"
    page = figures["page"]
    return _render(
        request,
        "tasks.html",
        flt=flt,
        filter_query=_query(flt),
        order=order,
        other_order="oldest" if newest_first else "newest",
        first_page=after_id is None,
        next_query=(
            _query(flt, order=order, after=page.next_after_id)
            if page.next_after_id is not None
            else None
        ),
        first_query=_query(flt, order=order),
        statuses=[s.value for s in TaskStatus],
        bulk_actions=list(BULK_ACTIONS),
        **figures,
    )


async def task_detail(request: Request) -> Response:
    """One task: payload, result, error, attempts and timing."""
    data = _dashboard(request).data
    try:
        task = await run_in_threadpool(data.get_task, request.path_params["task_id"])
    except TaskNotFound as exc:
        return _render(
            request, "error.html", status_code=404, heading="No such task", error=str(exc)
        )
    now = data.now()
    return _render(
        request,
        "task.html",
        task=task,
        now=now,
        can_retry=task.status in BULK_ACTIONS["retry"],
        can_cancel=task.status in BULK_ACTIONS["cancel"] and not task.cancel_requested,
        waited=(
            (task.started_at - max(task.created_at, task.run_after)).total_seconds()
            if task.started_at is not None
            else None
        ),
        ran=(
            (task.finished_at - task.started_at).total_seconds()
            if task.finished_at is not None and task.started_at is not None
            else None
        ),
    )


def _action_name(request: Request) -> str | None:
    action = request.path_params["action"]
    return action if action in BULK_ACTIONS else None


async def task_confirm(request: Request) -> Response:
    """Ask before retrying or cancelling one task."""
    action = _action_name(request)
    if action is None:
        return PlainTextResponse("404 Not Found\n", status_code=404)
    data = _dashboard(request).data
    try:
        task = await run_in_threadpool(data.get_task, request.path_params["task_id"])
    except TaskNotFound as exc:
        return _render(
            request, "error.html", status_code=404, heading="No such task", error=str(exc)
        )
    return _render(request, "confirm.html", task=task, action=action)


async def task_action(request: Request) -> Response:
    """Retry or cancel one task, then back to its page."""
    action = _action_name(request)
    if action is None:
        return PlainTextResponse("404 Not Found\n", status_code=404)
    data = _dashboard(request).data
    task_id = request.path_params["task_id"]
    act = data.retry_task if action == "retry" else data.cancel_task
    try:
        await run_in_threadpool(act, task_id)
        n, skipped = 1, 0
    except InvalidTransition:
        n, skipped = 0, 1
    except TaskNotFound as exc:
        return _render(
            request, "error.html", status_code=404, heading="No such task", error=str(exc)
        )
    return RedirectResponse(
        f"{_base(request)}/tasks/{task_id}?done={action}&n={n}&skipped={skipped}", status_code=303
    )


async def bulk_preview(request: Request) -> Response:
    """Count the tasks a bulk action would change, and ask before doing it."""
    action = _action_name(request)
    if action is None:
        return PlainTextResponse("404 Not Found\n", status_code=404)
    data = _dashboard(request).data
    try:
        flt = _filter(request, request.query_params)
    except ValidationError as exc:
        return _bad_request(request, exc)

    def read() -> tuple[int, int]:
        max_id = data.newest_id()
        return max_id, data.count_matching(action, flt, max_id=max_id)

    max_id, count = await run_in_threadpool(read)
    return _render(
        request,
        "bulk.html",
        action=action,
        flt=flt,
        filter_query=_query(flt),
        hidden=flt.to_query(),
        max_id=max_id,
        count=count,
        statuses=[s.value for s in BULK_ACTIONS[action]],
        bulk_limit=data.bulk_limit,
    )


async def bulk_action(request: Request) -> Response:
    """Retry or cancel every task matching the filter (up to the previewed id)."""
    action = _action_name(request)
    if action is None:
        return PlainTextResponse("404 Not Found\n", status_code=404)
    data = _dashboard(request).data
    form = await request.form()
    try:
        flt = _filter(request, form)
        max_id_text = str(form.get("max_id", ""))
        if not max_id_text.isdigit():
            raise ValidationError("max_id", max_id_text, "is not a task id", "preview again")
    except ValidationError as exc:
        return _bad_request(request, exc)
    result = await run_in_threadpool(data.bulk, action, flt, max_id=int(max_id_text))
    query = _query(
        flt, done=action, n=result.done, skipped=result.skipped, more=int(result.limited)
    )
    return RedirectResponse(f"{_base(request)}/tasks?{query}", status_code=303)


async def prune_preview(request: Request) -> Response:
    """Count the finished tasks older than the cut-off, and ask before deleting them."""
    data = _dashboard(request).data
    older_than = request.query_params.get("older_than", "7d")
    try:
        age = parse_duration("older_than", older_than)
    except ValidationError as exc:
        return _bad_request(request, exc)
    preview = await run_in_threadpool(data.prune_preview, age)
    return _render(request, "prune.html", older_than=older_than, preview=preview)


async def prune_action(request: Request) -> Response:
    """Delete finished tasks older than the cut-off."""
    data = _dashboard(request).data
    form = await request.form()
    try:
        age = parse_duration("older_than", str(form.get("older_than", "")))
    except ValidationError as exc:
        return _bad_request(request, exc)
    deleted = await run_in_threadpool(data.prune, age)
    return RedirectResponse(f"{_base(request)}/?done=prune&n={deleted}", status_code=303)


async def workers(request: Request) -> Response:
    """Recorded workers, their state and last heartbeat."""
    data = _dashboard(request).data
    rows = await run_in_threadpool(data.workers)
    return _render(request, "workers.html", workers=rows)


async def plugins(request: Request) -> Response:
    """Every plugin: active, blocked or unavailable, with hooks or the reason."""
    data = _dashboard(request).data
    rows = await run_in_threadpool(data.plugins)
    return _render(
        request, "plugins.html", plugins=rows, dashboard_pages=list(_dashboard(request).pages)
    )


async def plugin_page(request: Request) -> Response:
    """A page contributed through ``hookqueue_dashboard_pages``."""
    dashboard = _dashboard(request)
    name = request.path_params["name"]
    page = dashboard.pages.get(name)
    if page is None:
        return PlainTextResponse("404 Not Found\n", status_code=404)
    page_request = PageRequest(
        data=dashboard.data,
        query=dict(request.query_params),
        read_only=request.state.read_only,
    )
    template = dashboard._page_templates[name]

    def render() -> str:
        context = dict(page.context(page_request))
        context.setdefault("data", dashboard.data)
        context.setdefault("read_only", request.state.read_only)
        return template.render(context)

    body = await run_in_threadpool(render)
    return _render(request, "page.html", page=page, body=jinja2.utils.markupsafe.Markup(body))


async def healthz(request: Request) -> Response:
    """Liveness: 200 when the database answers a status count, 503 otherwise. No auth."""
    data = _dashboard(request).data
    try:
        counts = await run_in_threadpool(data.ping)
    except Exception as exc:  # any failure to read is what this endpoint reports
        return _secured(
            JSONResponse({"status": "error", "error": f"{type(exc).__name__}: {exc}"}, 503)
        )
    return _secured(JSONResponse({"status": "ok", "tasks": dict(counts)}))


def create_app(
    queue_or_path: Queue | TaskStore | str | os.PathLike[str],
    *,
    read_only: bool = False,
    auth: AuthHook | None = None,
    secret: str | bytes | None = None,
    title: str = "hookqueue",
    page_size: int = 50,
    max_scan: int = 20_000,
    bulk_limit: int = 10_000,
    cache_seconds: float = 30.0,
    metrics: QueueMetrics | None = None,
    debug: bool = False,
) -> Starlette:
    """The dashboard as an ASGI app: serve it with uvicorn, or mount it in your own app
    (``Mount("/queue", app=create_app(queue))``; links follow the mount path).

    :param queue_or_path: a :class:`~hookqueue.Queue` (kept open), a
        :class:`~hookqueue.QueueDatabase` (any task store), or a database path (opened now, closed at the app's
        shutdown).
    :param read_only: show no action buttons and refuse every POST with 403.
    :param auth: ``auth(request)`` decides per request: True allows, ``"read-only"`` allows
        views only, anything else is refused with 403. May be ``async``. ``/healthz`` and
        ``/static`` are not asked.
    :param secret: the key of the CSRF tokens; several processes serving one dashboard behind
        a load balancer need the same one. Default: random per app (tokens end with it).
    :param title: shown in the header and the page titles.
    :param page_size: tasks per page.
    :param max_scan: the most tasks one list request reads for filters the store cannot
        apply (error text, time range).
    :param bulk_limit: the most tasks one bulk action changes.
    :param cache_seconds: how long the filter form's suggestions and the chart are reused
        (the chart at most a tenth of one of its intervals); actions clear them.
    :param metrics: the :class:`QueueMetrics` (and its thresholds) the overview reads.
    :param debug: Starlette's debug tracebacks (never in production).
    :returns: a Starlette app; ``app.state.dashboard`` is its :class:`Dashboard`.
    """
    if isinstance(queue_or_path, Queue):
        queue, owns = queue_or_path, False
    elif isinstance(queue_or_path, TaskStore):
        queue, owns = Queue.for_database(queue_or_path), False
    else:
        queue, owns = Queue(queue_or_path), True
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 1000:
        raise ValidationError(
            "page_size", page_size, "must be an integer from 1 to 1000", "e.g. 50"
        )
    if isinstance(secret, str):
        secret = secret.encode()
    dashboard = Dashboard(
        queue,
        owns_queue=owns,
        read_only=read_only,
        auth=auth,
        secret=secret if secret is not None else secrets.token_bytes(32),
        title=title,
        page_size=page_size,
        data=DashboardData(
            queue,
            metrics or QueueMetrics(queue),
            max_scan=max_scan,
            bulk_limit=bulk_limit,
            cache_seconds=cache_seconds,
        ),
    )
    routes = [
        Route("/", _guard(overview), name="overview"),
        Route("/tasks", _guard(tasks), name="tasks"),
        Route("/tasks/{task_id:int}", _guard(task_detail), name="task"),
        Route("/tasks/{task_id:int}/{action}", _guard(task_confirm, action=True), methods=["GET"]),
        Route("/tasks/{task_id:int}/{action}", _guard(task_action, action=True), methods=["POST"]),
        Route("/bulk/{action}", _guard(bulk_preview, action=True), methods=["GET"]),
        Route("/bulk/{action}", _guard(bulk_action, action=True), methods=["POST"]),
        Route("/prune", _guard(prune_preview, action=True), methods=["GET"]),
        Route("/prune", _guard(prune_action, action=True), methods=["POST"]),
        Route("/workers", _guard(workers), name="workers"),
        Route("/plugins", _guard(plugins), name="plugins"),
        Route("/x/{name}", _guard(plugin_page), name="plugin_page"),
        Route("/healthz", healthz, name="healthz"),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]

    app = Starlette(debug=debug, routes=routes, lifespan=_lifespan(dashboard))
    app.state.dashboard = dashboard
    return app


def _lifespan(dashboard: Dashboard) -> Callable[[Starlette], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        dashboard.close()

    return lifespan
