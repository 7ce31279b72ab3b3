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
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from hookqueue.core.errors import HookqueueError, InvalidTransition, TaskNotFound, ValidationError
from hookqueue.core.models import Task, TaskStatus
from hookqueue.core.queue import Queue
from hookqueue.core.storage import TaskStore
from hookqueue.plugins.metrics import QueueMetrics

from .charts import timeline_chart
from .data import (
    BULK_ACTIONS,
    DashboardData,
    TaskFilter,
    filter_from_query,
    filter_to_query,
    parse_duration,
)
from .hookspecs import ActionRequest, DashboardPage, PageRequest, collect_pages

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
        #: Each plugin page's compiled template, by page name.
        self.page_templates = {name: env.from_string(p.template) for name, p in self.pages.items()}

    def csrf_token(self, session: str) -> str:
        """The CSRF token of a session id."""
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()

    def _flash_signature(self, message: str) -> str:
        digest = hmac.new(self.secret, b"flash\0" + message.encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    def flash_query(self, message: str) -> str:
        """The query string that shows ``message`` as the banner of the page after an action.
        It is signed with the app's secret, so a link made elsewhere cannot put words in the
        dashboard's mouth."""
        return urlencode({"flash": message, "flash_sig": self._flash_signature(message)})

    def flash_message(self, params: Any) -> str | None:
        """The banner a query asks for, if its signature holds (else none)."""
        message = params.get("flash")
        signature = params.get("flash_sig") or ""
        if not message or not hmac.compare_digest(signature, self._flash_signature(message)):
            return None
        return str(message)

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
        flash=dashboard.flash_message(request.query_params),
    )
    return dashboard.templates.TemplateResponse(request, template, context, status_code=status_code)


def _redirect(request: Request, path: str, message: str, query: str = "") -> Response:
    """303 to ``path`` (under the mount), with ``message`` shown there as the banner."""
    flash = _dashboard(request).flash_query(message)
    return RedirectResponse(
        f"{_base(request)}{path}?{query + '&' if query else ''}{flash}", status_code=303
    )


def _error(request: Request, status_code: int, heading: str, error: object) -> Response:
    return _render(
        request, "error.html", status_code=status_code, heading=heading, error=str(error)
    )


def _bad_request(request: Request, error: HookqueueError) -> Response:
    return _error(request, 400, "Bad request", error)


def _not_found() -> Response:
    return PlainTextResponse("404 Not Found\n", status_code=404)


def _tasks_phrase(n: int) -> str:
    return f"{n:,} task" if n == 1 else f"{n:,} tasks"


# -- views ------------------------------------------------------------------------------------


async def overview(request: Request) -> Response:
    """Health, the chart, queues (paused or not), counts per type and status, plugins."""
    dashboard = _dashboard(request)
    data = dashboard.data
    window = request.query_params.get("window", "1h")
    if window not in WINDOWS:
        window = "1h"

    def read() -> dict[str, Any]:
        health = data.health()
        return {
            "health": health,
            "queues": data.queue_rows(),
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
    return filter_from_query(params, _dashboard(request).data.now())


def _query(flt: TaskFilter, **extra: Any) -> str:
    pairs = filter_to_query(flt) + [(k, str(v)) for k, v in extra.items() if v is not None]
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
            "paused": data.paused_queues(),
            "now": data.now(),
        }

    try:
        figures = await run_in_threadpool(read)
    except ValidationError as exc:  # e.g. an instant no datetime can hold
        return _bad_request(request, exc)
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
        **figures,
    )


def _task_actions(task: Task) -> list[str]:
    """The actions that apply to a task as it is now."""
    out = []
    for action, statuses in BULK_ACTIONS.items():
        if task.status in statuses and not (action == "cancel" and task.cancel_requested):
            out.append(action)
    return out


async def task_detail(request: Request) -> Response:
    """One task: payload, result, error, timing, and the history of its failed attempts."""
    data = _dashboard(request).data
    task_id = request.path_params["task_id"]

    def read() -> tuple[Task, list[Any]]:
        return data.get_task(task_id), data.history(task_id)

    try:
        task, history = await run_in_threadpool(read)
    except TaskNotFound as exc:
        return _error(request, 404, "No such task", exc)
    return _render(
        request,
        "task.html",
        task=task,
        history=history,
        now=data.now(),
        actions=_task_actions(task),
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
    """Ask before retrying, cancelling or deleting one task."""
    action = _action_name(request)
    if action is None:
        return _not_found()
    data = _dashboard(request).data
    try:
        task = await run_in_threadpool(data.get_task, request.path_params["task_id"])
    except TaskNotFound as exc:
        return _error(request, 404, "No such task", exc)
    return _render(
        request, "confirm.html", task=task, action=action, applies=action in _task_actions(task)
    )


async def task_action(request: Request) -> Response:
    """Retry, cancel or delete one task, then back to its page (to the list after a delete)."""
    action = _action_name(request)
    if action is None:
        return _not_found()
    data = _dashboard(request).data
    task_id: int = request.path_params["task_id"]
    if action == "delete":
        deleted = await run_in_threadpool(data.delete_task, task_id)
        if deleted:
            return _redirect(request, "/tasks", f"Deleted task {task_id}.")
        try:
            task = await run_in_threadpool(data.get_task, task_id)
        except TaskNotFound as exc:
            return _error(request, 404, "No such task", exc)
        return _redirect(
            request,
            f"/tasks/{task_id}",
            f"Task {task_id} was not deleted: it is {task.status.value} "
            "(a running task belongs to its worker: cancel it first).",
        )
    act = data.retry_task if action == "retry" else data.cancel_task
    try:
        task = await run_in_threadpool(act, task_id)
    except InvalidTransition as exc:
        return _redirect(request, f"/tasks/{task_id}", f"Nothing done: {exc}")
    except TaskNotFound as exc:
        return _error(request, 404, "No such task", exc)
    if action == "retry":
        message = f"Task {task_id} queued again."
    elif task.status is TaskStatus.CANCELLED:
        message = f"Task {task_id} cancelled."
    else:
        message = f"Task {task_id} is running: its worker stops it within a heartbeat."
    return _redirect(request, f"/tasks/{task_id}", message)


async def bulk_preview(request: Request) -> Response:
    """Count the tasks a bulk action would change, and ask before doing it."""
    action = _action_name(request)
    if action is None:
        return _not_found()
    data = _dashboard(request).data
    try:
        flt = _filter(request, request.query_params)
        preview = await run_in_threadpool(data.preview, action, flt)
    except ValidationError as exc:
        return _bad_request(request, exc)
    return _render(
        request,
        "bulk.html",
        action=action,
        preview=preview,
        flt=flt,
        filter_query=_query(flt),
        hidden=filter_to_query(flt),
        statuses=[s.value for s in BULK_ACTIONS[action]],
    )


_BULK_VERBS = {"retry": "Retried", "cancel": "Cancelled", "delete": "Deleted"}


def _form_int(form: Any, name: str, fix: str) -> int:
    text = str(form.get(name, "")).strip()
    if not text.isdigit():
        raise ValidationError(name, text, "is not a whole number", fix)
    return int(text)


async def bulk_action(request: Request) -> Response:
    """Retry, cancel or delete every task matching the filter (up to the previewed id)."""
    action = _action_name(request)
    if action is None:
        return _not_found()
    data = _dashboard(request).data
    form = await request.form()
    try:
        flt = _filter(request, form)
        max_id = _form_int(form, "max_id", "preview again")
        previewed = _form_int(form, "count", "preview again")
        done = await run_in_threadpool(data.bulk, action, flt, max_id=max_id)
    except ValidationError as exc:
        return _bad_request(request, exc)
    message = f"{_BULK_VERBS[action]} {_tasks_phrase(done)}."
    if action == "cancel" and done:
        message = f"Cancelled {_tasks_phrase(done)} (running ones are stopped by their workers)."
    if done < previewed:
        message += (
            f" {previewed - done:,} of the {previewed:,} previewed had changed status meanwhile "
            "and were left alone."
        )
    elif done > previewed:
        message += (
            f" That is {done - previewed:,} more than previewed: they reached a status "
            f"{action} applies to meanwhile."
        )
    return _redirect(request, "/tasks", message, _query(flt))


async def prune_preview(request: Request) -> Response:
    """Count the finished tasks older than the cut-off, and ask before deleting them."""
    data = _dashboard(request).data
    older_than = request.query_params.get("older_than", "7d")
    try:
        age = parse_duration("older_than", older_than)
        preview = await run_in_threadpool(data.prune_preview, age)
    except ValidationError as exc:
        return _bad_request(request, exc)
    return _render(request, "prune.html", older_than=older_than, preview=preview)


async def prune_action(request: Request) -> Response:
    """Delete finished tasks older than the cut-off."""
    data = _dashboard(request).data
    form = await request.form()
    try:
        age = parse_duration("older_than", str(form.get("older_than", "")))
        deleted = await run_in_threadpool(data.prune, age)
    except ValidationError as exc:
        return _bad_request(request, exc)
    return _redirect(request, "/", f"Deleted {_tasks_phrase(deleted)}.")


async def queue_action(request: Request) -> Response:
    """Pause or resume one queue (form field ``queue``), then back to the overview."""
    action = request.path_params["action"]
    if action not in ("pause", "resume"):
        return _not_found()
    data = _dashboard(request).data
    form = await request.form()
    name = str(form.get("queue", ""))
    try:
        if action == "pause":
            changed = await run_in_threadpool(data.pause_queue, name)
            message = (
                f"Paused queue {name!r}: no worker leases its tasks until it is resumed "
                "(running tasks finish)."
                if changed
                else f"Queue {name!r} was paused already."
            )
        else:
            changed = await run_in_threadpool(data.resume_queue, name)
            message = (
                f"Resumed queue {name!r}: workers lease its tasks again."
                if changed
                else f"Queue {name!r} was not paused."
            )
    except ValidationError as exc:
        return _bad_request(request, exc)
    return _redirect(request, "/", message)


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


def _action_form_function(page_url: str, csrf_token: str, read_only: bool) -> Callable[..., Any]:
    """``action_form(action, label, danger=False, **fields)`` for plugin page templates: a
    form posting ``fields`` to ``<page_url>/<action>`` with the session's CSRF token; empty
    in read-only mode. Every value is escaped."""

    def action_form(action: str, label: str, danger: bool = False, **fields: Any) -> Markup:
        if read_only:
            return Markup("")
        inputs = Markup("").join(
            Markup('<input type="hidden" name="{}" value="{}">').format(name, value)
            for name, value in fields.items()
        )
        return Markup(
            '<form method="post" action="{}/{}" class="inline action" data-action="{}">'
            '<input type="hidden" name="{}" value="{}">{}'
            '<button type="submit"{}>{}</button></form>'
        ).format(
            page_url,
            action,
            action,
            CSRF_FIELD,
            csrf_token,
            inputs,
            Markup(' class="danger"') if danger else Markup(""),
            label,
        )

    return action_form


async def plugin_page(request: Request) -> Response:
    """A page contributed through ``hookqueue_dashboard_pages``."""
    dashboard = _dashboard(request)
    name = request.path_params["name"]
    page = dashboard.pages.get(name)
    if page is None:
        return _not_found()
    read_only = request.state.read_only
    page_request = PageRequest(
        data=dashboard.data, query=dict(request.query_params), read_only=read_only
    )
    template = dashboard.page_templates[name]
    page_url = f"{_base(request)}/x/{name}"

    def render() -> str:
        context = dict(page.context(page_request))
        context.setdefault("data", dashboard.data)
        context.setdefault("read_only", read_only)
        context.setdefault("base", _base(request))
        context.setdefault("page_url", page_url)
        context.setdefault(
            "action_form",
            _action_form_function(page_url, request.state.csrf_token, read_only),
        )
        return template.render(context)

    try:
        body = await run_in_threadpool(render)
    except HookqueueError as exc:
        return _error(request, 404 if isinstance(exc, LookupError) else 400, page.title, exc)
    return _render(request, "page.html", page=page, body=Markup(body))


async def plugin_action(request: Request) -> Response:
    """An action of a plugin page: the plugin's function, then back to the page."""
    dashboard = _dashboard(request)
    name = request.path_params["name"]
    action = request.path_params["action"]
    page = dashboard.pages.get(name)
    if page is None or action not in page.actions:
        return _not_found()
    form = await request.form()
    fields = {k: str(v) for k, v in form.items() if k != CSRF_FIELD}
    action_request = ActionRequest(data=dashboard.data, form=fields, action=action)

    def act() -> str | None:
        try:
            return page.actions[action](action_request)
        finally:
            dashboard.data.forget()

    try:
        message = await run_in_threadpool(act)
    except HookqueueError as exc:
        return _error(request, 404 if isinstance(exc, LookupError) else 400, page.title, exc)
    return _redirect(request, f"/x/{name}", message or f"{page.title}: {action} done.")


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
        Route("/queues/{action}", _guard(queue_action, action=True), methods=["POST"]),
        Route("/workers", _guard(workers), name="workers"),
        Route("/plugins", _guard(plugins), name="plugins"),
        Route("/x/{name}", _guard(plugin_page), name="plugin_page"),
        Route("/x/{name}/{action}", _guard(plugin_action, action=True), methods=["POST"]),
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
