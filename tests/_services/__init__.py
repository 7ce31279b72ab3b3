"""Real services (database servers) that tests start for themselves; see ``postgres.py``."""
