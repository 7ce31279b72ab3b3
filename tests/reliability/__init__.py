"""Reliability and security suite: crash, fault and bad-input tests (see docs/reliability.md)."""
