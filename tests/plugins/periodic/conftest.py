"""Fixtures of the periodic plugin's tests: a fake clock, a queue with the plugin (defined in
``_periodic``, where the PostgreSQL twins of these tests find them too)."""

from __future__ import annotations

from _periodic import clock, queue  # noqa: F401
