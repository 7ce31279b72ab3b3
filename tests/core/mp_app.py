"""Handlers run by the worker processes that tests/core/test_multiprocess.py starts.

Each handler appends ``task_id pid attempt`` to ``$HQ_TEST_LOG`` (one line, opened in append
mode and written in one call, so lines from several processes never interleave), which is how
the test sees which process ran what, and how often.
"""

from __future__ import annotations

import os
import time

from hookqueue import TaskHandlerRegistry

registry = TaskHandlerRegistry()


def _record(task_id: int, attempt: int) -> None:
    with open(os.environ["HQ_TEST_LOG"], "a") as log:
        log.write(f"{task_id} {os.getpid()} {attempt}\n")


@registry.handler("work")
def work(task):  # type: ignore[no-untyped-def]
    _record(task.id, task.attempts)
    time.sleep((task.payload or {}).get("sleep", 0))
    return task.id


@registry.handler("slow")
def slow(task):  # type: ignore[no-untyped-def]
    _record(task.id, task.attempts)
    if task.attempts == 1:
        # The first attempt announces itself and hangs until the test kills its process.
        with open(os.environ["HQ_TEST_LOG"] + ".started", "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(120)
    return "second attempt"
