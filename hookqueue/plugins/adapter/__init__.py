"""The BackgroundTaskManager-compatible adapter (see docs/migration.md)."""
