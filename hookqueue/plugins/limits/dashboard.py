"""The dashboard's *Limits* page, contributed by the ``limits`` plugin.

The plugin's ``hookqueue_dashboard_pages`` (in :mod:`.plugin`) imports this module only when a
dashboard is being built. It uses the dashboard's page hook as a third-party plugin would: a
:class:`DashboardPage` with a template, a context function and one action, ``remove``, which
the dashboard guards (auth hook, CSRF token, read-only mode) before calling it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from hookqueue.contrib.dashboard.hookspecs import ActionRequest, DashboardPage, PageRequest
from hookqueue.core.clock import from_us
from hookqueue.core.models import LimitRule
from hookqueue.core.storage import LimitUsage

from .manage import limit_usage, list_limits, remove_limit

__all__ = ["TEMPLATE", "LimitRow", "limits_page"]


@attrs.frozen(kw_only=True)
class LimitRow:
    """One stored rule as the page shows it: the rule and its usage summed over buckets."""

    rule: LimitRule
    running: int
    due: int
    waiting: int
    #: The buckets holding tasks back now, most waiting first (at most 10).
    held: tuple[LimitUsage, ...]
    #: Buckets with running or due tasks.
    partitions: int
    #: Seconds until the rate next allows a start in a held bucket (None: none is held by it).
    next_start_in: float | None


def _rows(rules: list[LimitRule], usage: list[LimitUsage], now_us: int) -> list[LimitRow]:
    by_rule: dict[str, list[LimitUsage]] = {}
    for u in usage:
        by_rule.setdefault(u.rule, []).append(u)
    rows = []
    for rule in rules:
        mine = by_rule.get(rule.name, [])
        starts = [u.next_start_us for u in mine if u.next_start_us is not None]
        rows.append(
            LimitRow(
                rule=rule,
                running=sum(u.running for u in mine),
                due=sum(u.due for u in mine),
                waiting=sum(u.waiting for u in mine),
                held=tuple(u for u in mine if u.waiting)[:10],
                partitions=len(mine),
                next_start_in=(min(starts) - now_us) / 1e6 if starts else None,
            )
        )
    return rows


def _context(request: PageRequest) -> Mapping[str, Any]:
    queue = request.data.queue
    now_us = queue.clock.now_us()
    return {
        "limits": _rows(list_limits(queue), limit_usage(queue), now_us),
        "now": from_us(now_us),
    }


def _remove(request: ActionRequest) -> str:
    name = request.form.get("name", "")
    remove_limit(request.data.queue, name)
    return f"Removed limit {name!r}: the tasks it held may start now."


#: The page body: one row per stored rule with its usage and a remove button.
TEMPLATE = """\
<p class="hint">Limits stored in the database (<code>hookqueue limits set</code>, or
<code>set_limit</code> from Python). Every worker keeps them inside its lease transaction: a
task held back stays queued and spends no attempt. <em>Waiting</em> counts the due tasks a
limit holds back now.</p>
<table class="grid-table" id="limits">
  <thead><tr>
    <th>limit</th><th>scope</th><th>rule</th><th class="num">running</th><th class="num">due</th>
    <th class="num">waiting</th><th>held buckets</th>{% if not read_only %}<th></th>{% endif %}
  </tr></thead>
  <tbody>
  {% for row in limits %}{% set r = row.rule %}
    <tr data-limit="{{ r.name }}">
      <td>{{ r.name }}</td>
      <td>{% if r.queue %}queue <code>{{ r.queue }}</code>{% else %}every queue{% endif %},
        {% if r.task_type %}<a href="{{ base }}/tasks?type={{ r.task_type | urlencode }}">{{ r.task_type }}</a>{% else %}every type{% endif %}
        {% if r.partition_by %}<br><span class="hint">per {{ r.partition_in }}.{{ r.partition_by }} ({{ row.partitions }} active)</span>{% endif %}</td>
      <td class="limit-rule">{% if r.concurrency %}{{ r.concurrency }} running{% endif %}
        {% if r.rate %}{% if r.concurrency %}<br>{% endif %}{{ r.rate }} per {{ "%g" % r.period }}s{% if r.burst > 1 %}, burst {{ r.burst }}{% endif %}{% endif %}
        {% if r.fair %}{% if r.concurrency or r.rate %}<br>{% endif %}round-robin{% if r.weights %} <span class="hint">(weights {% for k, w in r.weights %}{{ k }}×{{ w }}{% if not loop.last %}, {% endif %}{% endfor %})</span>{% endif %}{% endif %}</td>
      <td class="num running">{{ "{:,}".format(row.running) }}</td>
      <td class="num due">{{ "{:,}".format(row.due) }}</td>
      <td class="num waiting">{{ "{:,}".format(row.waiting) }}</td>
      <td class="held">{% for u in row.held %}<span class="state state-paused">{% if u.partition is not none %}{{ u.partition }}{% elif r.partition_by %}(no value){% else %}all{% endif %}: {{ u.waiting }}</span> {% else %}<span class="hint">none</span>{% endfor %}
        {% if row.next_start_in is not none %}<br><span class="hint">next start in {{ row.next_start_in | seconds }}</span>{% endif %}</td>
      {% if not read_only %}<td>{{ action_form("remove", "Remove", danger=True, name=r.name) }}</td>{% endif %}
    </tr>
  {% else %}
    <tr><td colspan="8" class="empty">no limits (add one:
      <code>hookqueue limits set NAME --concurrency N</code>)</td></tr>
  {% endfor %}
  </tbody>
</table>
"""


def limits_page() -> DashboardPage:
    """The *Limits* page at ``/x/limits``: every stored limit rule with its running, due and
    waiting tasks and the buckets it holds back, and a remove button."""
    return DashboardPage(
        name="limits",
        title="Limits",
        template=TEMPLATE,
        context=_context,
        actions={"remove": _remove},
    )
