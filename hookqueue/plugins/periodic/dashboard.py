"""The dashboard's *Schedules* page, contributed by the ``periodic`` plugin.

The plugin's ``hookqueue_dashboard_pages`` (in :mod:`.plugin`) imports this module only when a
dashboard is being built, so workers and the CLI never load it. It uses the dashboard's page
hook exactly as a third-party plugin would: a :class:`DashboardPage` with a template, a
context function and two actions, ``pause`` and ``resume``, which the dashboard guards (auth
hook, CSRF token, read-only mode) before calling them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import attrs

from hookqueue.contrib.dashboard.hookspecs import ActionRequest, DashboardPage, PageRequest

from .manage import list_schedules, pause_schedule, resume_schedule
from .schedule import ScheduleInfo

__all__ = ["TEMPLATE", "ScheduleRow", "schedules_page"]


@attrs.frozen(kw_only=True)
class ScheduleRow:
    """One schedule as the page shows it."""

    info: ScheduleInfo
    #: ``active``, ``paused`` or ``done`` (no tick ahead).
    state: str
    #: The next and the last tick in the schedule's own time zone ("" when none).
    next_local: str
    last_local: str
    #: Seconds until the next tick, and since the last one (None when there is none).
    next_in: float | None
    last_ago: float | None


def _local(value: datetime | None, tz: str) -> str:
    if value is None:
        return ""
    return value.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")


def _row(info: ScheduleInfo, now: datetime) -> ScheduleRow:
    tz = info.schedule.tz
    if info.paused:
        state = "paused"
    elif info.next_tick is None:
        state = "done"
    else:
        state = "active"
    return ScheduleRow(
        info=info,
        state=state,
        next_local=_local(info.next_tick, tz),
        last_local=_local(info.last_tick, tz),
        next_in=None if info.next_tick is None else (info.next_tick - now).total_seconds(),
        last_ago=None if info.last_tick is None else (now - info.last_tick).total_seconds(),
    )


def _context(request: PageRequest) -> Mapping[str, Any]:
    queue = request.data.queue
    now = request.data.now()
    rows = [_row(info, now) for info in list_schedules(queue)]
    return {"schedules": rows, "now": now}


def _name(request: ActionRequest) -> str:
    return request.form.get("name", "")


def _pause(request: ActionRequest) -> str:
    info = pause_schedule(request.data.queue, _name(request))
    return f"Paused schedule {info.schedule.key!r}: no tick fires until it is resumed."


def _resume(request: ActionRequest) -> str:
    info = resume_schedule(request.data.queue, _name(request))
    nxt = _local(info.next_tick, info.schedule.tz) or "none"
    return (
        f"Resumed schedule {info.schedule.key!r} from its next tick ({nxt}); "
        "ticks that fell while it was paused do not fire."
    )


#: The page body: one row per stored schedule, with a pause or resume button.
TEMPLATE = """\
<p class="hint">Schedules stored in the database (declared on handlers or added with
<code>hookqueue schedules add</code>). Every worker's scheduler fires each tick exactly once;
times are in each schedule's time zone. Pausing survives restarts and redeploys.</p>
<table class="grid-table" id="schedules">
  <thead><tr>
    <th>schedule</th><th>when</th><th>task type</th><th>queue</th><th>state</th>
    <th>next tick</th><th>last tick</th><th class="num">fired</th><th class="num">skipped</th>
    <th>missed ticks</th><th>source</th>{% if not read_only %}<th></th>{% endif %}
  </tr></thead>
  <tbody>
  {% for row in schedules %}{% set s = row.info.schedule %}
    <tr data-schedule="{{ s.key }}">
      <td>{{ s.key }}</td>
      <td><code>{{ s.when }}</code>{% if s.tz != "UTC" %} <span class="hint">{{ s.tz }}</span>{% endif %}</td>
      <td><a href="{{ base }}/tasks?type={{ s.task_type | urlencode }}">{{ s.task_type }}</a></td>
      <td>{{ s.queue }}</td>
      <td class="schedule-state"><span class="state state-{{ row.state }}">{{ row.state }}</span></td>
      <td class="next-tick">{% if row.state == "active" %}{{ row.next_local }}
        <span class="hint">({% if row.next_in >= 0 %}in {{ row.next_in | seconds }}{% else %}due {{ (0 - row.next_in) | seconds }} ago{% endif %})</span>
        {% elif row.state == "paused" %}<span class="hint">paused</span>{% else %}–{% endif %}</td>
      <td class="last-tick">{% if row.last_local %}{{ row.last_local }}
        <span class="hint">({{ row.last_ago | seconds }} ago{% if row.info.last_task_id %}, <a href="{{ base }}/tasks/{{ row.info.last_task_id }}">task {{ row.info.last_task_id }}</a>{% endif %})</span>
        {% else %}<span class="hint">never</span>{% endif %}</td>
      <td class="num fired">{{ "{:,}".format(row.info.fired) }}</td>
      <td class="num skipped">{{ "{:,}".format(row.info.skipped) }}</td>
      <td>{{ s.misfire }}{% if not s.overlap %}, no overlap{% endif %}</td>
      <td>{{ row.info.source }}</td>
      {% if not read_only %}<td>{% if row.info.paused %}{{ action_form("resume", "Resume", name=s.key) }}{% else %}{{ action_form("pause", "Pause", danger=True, name=s.key) }}{% endif %}</td>{% endif %}
    </tr>
  {% else %}
    <tr><td colspan="12" class="empty">no schedules (declare them on handlers, or:
      <code>hookqueue schedules add NAME "*/5 * * * *" --type TYPE</code>)</td></tr>
  {% endfor %}
  </tbody>
</table>
"""


def schedules_page() -> DashboardPage:
    """The *Schedules* page at ``/x/schedules``: every stored schedule with its next and last
    tick, fired and skipped counts, state, and a pause or resume button."""
    return DashboardPage(
        name="schedules",
        title="Schedules",
        template=TEMPLATE,
        context=_context,
        actions={"pause": _pause, "resume": _resume},
    )
