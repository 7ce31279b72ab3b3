"""A script that runs its tasks in-process with an inline queue: no worker to start.

Run it as ``python inline_script.py /tmp/orders.db``.
"""

from __future__ import annotations

import sys
from datetime import timedelta

from shop import Mailer, place_order, register_handlers

from hookqueue import FakeClock, Queue
from hookqueue.core.inline import run_due


def main(db_path: str) -> list[str]:
    clock = FakeClock()  # a script would leave this out and use the real clock
    mailer = Mailer()
    with Queue(db_path, inline=True, clock=clock) as queue:
        register_handlers(queue, mailer)
        place_order(queue, "o-1", "ada@example.com", total_cents=25_00)
        print("sent now:", [mail["template"] for mail in mailer.sent])

        clock.advance(timedelta(days=3).total_seconds())
        run = run_due(queue)  # delayed tasks run when they are due and run_due is called
        print("sent later:", [mail["template"] for mail in mailer.sent[1:]])
        print("ran:", [f"{task.task_type} {task.status.value}" for task in run.tasks])
    return [mail["template"] for mail in mailer.sent]


if __name__ == "__main__":
    main(sys.argv[1])
