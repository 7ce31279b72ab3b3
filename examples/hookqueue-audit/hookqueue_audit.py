"""hookqueue-audit: an example third-party plugin.

It shows three kinds of hook in one small module:

- an **around** hook (``hookqueue_enqueue`` as a wrapper) that stamps who enqueued a task;
- an **observation** hook (``hookqueue_event``) that appends each transition to a JSON-lines
  file named by ``HOOKQUEUE_AUDIT_LOG`` (nothing is written when it is unset);
- a **registration** hook (``hookqueue_cli_commands``) that adds ``hookqueue audit``.

Installed, it is found through the ``hookqueue`` entry-point group; ``hookqueue plugins``
lists it, and ``HOOKQUEUE_DISABLE_PLUGINS=audit`` turns it off.
"""

from __future__ import annotations

import getpass
import json
import os
from collections import Counter

import attrs

from hookqueue import hookimpl
from hookqueue.core.models import CliCommand


@hookimpl(wrapper=True)
def hookqueue_enqueue(new_tasks):
    result = yield
    user = getpass.getuser()
    return [attrs.evolve(t, headers={**t.headers, "enqueued_by": user}) for t in result]


@hookimpl
def hookqueue_event(events):
    path = os.environ.get("HOOKQUEUE_AUDIT_LOG")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as log:
        for event in events:
            record = {
                "at": event.at.isoformat(),
                "event": event.kind.value,
                "task": event.task.id,
                "type": event.task.task_type,
                "by": event.task.headers.get("enqueued_by"),
            }
            log.write(json.dumps(record) + "\n")


def _configure(parser):
    parser.add_argument(
        "--log", default=os.environ.get("HOOKQUEUE_AUDIT_LOG"), help="the audit file"
    )


def _run(args):
    if not args.log or not os.path.exists(args.log):
        print("no audit log yet (set HOOKQUEUE_AUDIT_LOG)")
        return 1
    with open(args.log, encoding="utf-8") as log:
        counts = Counter(json.loads(line)["event"] for line in log)
    for event, n in sorted(counts.items()):
        print(f"{event:<16} {n}")
    return 0


@hookimpl
def hookqueue_cli_commands():
    return [
        CliCommand(name="audit", help="summarise the audit log", configure=_configure, run=_run)
    ]
