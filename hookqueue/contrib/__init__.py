"""Integrations with other ecosystems (pytest fixtures, ...)."""
