"""The ``limits`` plugin's tests (``tests/plugins/limits/test_limits_plugin.py``) on a
PostgreSQL-backed queue: the same functions, run with this module's ``db_path`` (the per-test
database's URL; their ``Queue`` loads the entry points, the PostgreSQL store's and the limits
plugin among them) — real workers keeping stored rules, the API's and the CLI's answers,
stats and metrics — and those of ``test_limits_wakeups.py``: a held worker woken on time by a
reopening rate, a freed slot and another worker process, never polling."""

from __future__ import annotations

from _onpg import db_path, load_again  # noqa: F401

_plugin_tests = load_again("plugins/limits/test_limits_plugin.py")
_wakeup_tests = load_again("plugins/limits/test_limits_wakeups.py")

#: The fixture and the tests that run here too, unchanged.
REUSED = (
    "q",
    "test_a_worker_keeps_the_stored_limits",
    "test_blocking_the_plugin_leaves_stored_rules_unapplied",
    "test_the_plan_stays_the_schedulers",
    "test_removing_a_limit_releases_what_it_held",
    "test_loosening_a_rate_lets_what_it_held_start",
    "test_bad_definitions_name_the_field_and_store_nothing",
    "test_a_bad_name_and_mixed_arguments_are_refused",
    "test_usage_stats_and_metrics_show_what_waits",
    "test_stats_health_and_prometheus_report_the_real_counts",
    "test_cli_set_ls_rm",
)
for _name in REUSED:
    globals()[_name] = getattr(_plugin_tests, _name)
#: All of them: how a held worker is woken.
for _name in dir(_wakeup_tests):
    if _name.startswith("test_"):
        globals()[_name] = getattr(_wakeup_tests, _name)
