"""pytest fixtures for hookqueue's users and plugin authors (opt-in; see docs/testing.md)."""
