"""hookqueue's benchmark suite (run it with ``python benchmarks/run.py``).

Modules:

- :mod:`hqbench.common` — statistics, fresh database files, machine facts, RSS;
- :mod:`hqbench.raw` — the raw-apsw baseline, replaying hookqueue's own statements;
- :mod:`hqbench.peers` — huey's ``SqliteHuey`` and litequeue at the same ``synchronous``;
- :mod:`hqbench.procs` — the worker and producer processes the multi-process workloads spawn;
- :mod:`hqbench.workloads` — W1 … W6, memory and the scheduler costs;
- :mod:`hqbench.report` — the Markdown table, the target verdicts and ``docs/performance.md``.
"""
