"""The dashboard's own hookspec: plugins add pages to the dashboard.

The spec lives here, not in ``hookqueue/core/hookspecs.py``: the core knows nothing of the
dashboard. :func:`hookqueue.contrib.dashboard.create_app` adds this module to the queue's
plugin manager with ``pm.add_hookspecs(...)`` (pluggy lets plugins define hookspecs), then
collects the pages with :func:`collect_pages`.

A plugin loaded through the ``hookqueue`` entry points is registered before the dashboard
adds the spec, so its implementation must be marked ``@hookimpl(optionalhook=True)``: the
plugin manager's ``check_pending()`` then accepts it in processes that never start the
dashboard (workers, the CLI).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from hookqueue.core.errors import PluginError, ValidationError
from hookqueue.core.hookspecs import PROJECT_NAME

if TYPE_CHECKING:
    from .data import DashboardData

__all__ = [
    "ActionRequest",
    "DashboardPage",
    "PageActionFunction",
    "PageRequest",
    "add_dashboard_hookspecs",
    "collect_pages",
]

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

_PAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _page_name(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not _PAGE_NAME.match(value):
        raise ValidationError(
            attribute.name,
            value,
            "must be 1-63 lowercase letters, digits and dashes (it is part of the page's URL)",
            "e.g. 'tenants'",
        )


@attrs.frozen(kw_only=True)
class PageRequest:
    """What a plugin page's ``context`` function receives on each request."""

    #: The dashboard's data access (read the queue through it: ``data.queue``,
    #: ``data.metrics``, ``data.list_tasks(...)``).
    data: DashboardData
    #: The request's query parameters (last value of each).
    query: Mapping[str, str]
    #: True when actions are refused for this request (read-only mode or the auth hook).
    read_only: bool


@attrs.frozen(kw_only=True)
class ActionRequest:
    """What a plugin page's action receives: the confirmed POST of one of its forms."""

    #: The dashboard's data access (act on the queue through it: ``data.queue``).
    data: DashboardData
    #: The form's fields (last value of each), without the CSRF token.
    form: Mapping[str, str]
    #: The action's name (the last segment of ``/x/<page>/<action>``).
    action: str


def _no_context(request: PageRequest) -> Mapping[str, Any]:
    return {}


#: ``action(request: ActionRequest) -> message``: the message is shown on the page after it
#: (None: a generic one); raise a :class:`~hookqueue.core.errors.HookqueueError` to refuse
#: the action with its message (a ``LookupError`` among them is answered 404, others 400).
PageActionFunction = Callable[[ActionRequest], "str | None"]


def _actions(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Mapping):
        raise ValidationError(
            attribute.name, value, "must be a mapping of names to functions", "{'pause': f}"
        )
    for name, function in value.items():
        _page_name(instance, attribute, name)
        if not callable(function):
            raise ValidationError(
                f"actions[{name!r}]", function, "is not callable", "pass a function"
            )


@attrs.frozen(kw_only=True)
class DashboardPage:
    """A page a plugin adds to the dashboard, at ``/x/<name>``, linked in the navigation.

    The template is Jinja source rendered by the dashboard's environment, so it is
    autoescaped like the dashboard's own pages and has its filters (``instant``,
    ``seconds``, ``pretty_json``); its variables come from ``context``, plus ``read_only``,
    ``data``, ``base`` (the dashboard's URL prefix), ``page_url`` and ``action_form``.

    Each of ``actions`` answers a POST to ``/x/<name>/<action>``, which the dashboard guards
    like its own actions (the auth hook, the session's CSRF token, refused in read-only mode)
    before it calls the function in a worker thread, then redirects back to the page with
    the message it returned. ``action_form(action, label, **fields)`` in the template draws
    the button that posts it (nothing in read-only mode).
    """

    #: The URL segment (``/x/<name>``): lowercase letters, digits and dashes.
    name: str = attrs.field(validator=_page_name)
    #: The navigation label and the page's heading.
    title: str
    #: Jinja template source of the page body.
    template: str
    #: ``context(request: PageRequest) -> mapping`` of template variables; it runs in a worker
    #: thread, so it may read the database.
    context: Callable[[PageRequest], Mapping[str, Any]] = _no_context
    #: Action name (lowercase letters, digits and dashes) -> the function that does it.
    actions: Mapping[str, PageActionFunction] = attrs.field(factory=dict, validator=_actions)


@hookspec
def hookqueue_dashboard_pages() -> Sequence[DashboardPage]:  # type: ignore[empty-body]
    """**registration** — contribute pages to the web dashboard.

    Called once when :func:`hookqueue.contrib.dashboard.create_app` builds the app (never in a
    process that serves no dashboard, so a plugin may import its page's code inside the
    implementation). Two pages with the same name are an error naming both plugins.

    :returns: a list of :class:`DashboardPage`.

    The spec exists only once a dashboard is created, so implementations are marked
    ``optionalhook=True``. Example (the ``periodic`` plugin's *Schedules* page is a complete
    one: ``hookqueue/plugins/periodic/dashboard.py``)::

        class TenantsPage:
            @hookimpl(optionalhook=True)
            def hookqueue_dashboard_pages(self):
                return [DashboardPage(
                    name="tenants", title="Tenants",
                    template=(
                        "<ul>{% for t in tenants %}<li>{{ t }} "
                        "{{ action_form('block', 'Block', tenant=t) }}</li>{% endfor %}</ul>"
                    ),
                    context=lambda request: {"tenants": ["acme", "globex"]},
                    actions={"block": self.block},
                )]

            def block(self, request):
                tenant = request.form["tenant"]
                ...  # through request.data.queue
                return f"Tenant {tenant} blocked."
    """


def add_dashboard_hookspecs(pm: pluggy.PluginManager) -> None:
    """Add :func:`hookqueue_dashboard_pages` to ``pm`` once (a second app on the same queue
    finds it there)."""
    caller = getattr(pm.hook, "hookqueue_dashboard_pages", None)
    if caller is None or caller.spec is None:
        pm.add_hookspecs(sys.modules[__name__])


def collect_pages(pm: pluggy.PluginManager) -> list[DashboardPage]:
    """Every plugin's pages, in plugin registration order; a name given twice is refused.

    :raises PluginError: naming both plugins, or the plugin that returned something that is
        not a :class:`DashboardPage`.
    """
    add_dashboard_hookspecs(pm)
    seen: dict[str, str] = {}
    pages: list[DashboardPage] = []
    for impl in reversed(pm.hook.hookqueue_dashboard_pages.get_hookimpls()):
        for page in impl.function() or ():
            if not isinstance(page, DashboardPage):
                raise PluginError(
                    f"hookqueue_dashboard_pages: plugin {impl.plugin_name!r} returned {page!r}, "
                    "not a DashboardPage. Fix: return DashboardPage(name=..., title=..., "
                    "template=...)"
                )
            if page.name in seen:
                raise PluginError(
                    f"hookqueue_dashboard_pages: page {page.name!r} is contributed by both "
                    f"plugin {seen[page.name]!r} and plugin {impl.plugin_name!r}. Fix: block "
                    "one of them (HOOKQUEUE_DISABLE_PLUGINS) or rename"
                )
            seen[page.name] = impl.plugin_name
            pages.append(page)
    return pages
