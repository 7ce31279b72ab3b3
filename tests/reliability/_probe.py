"""Security probes that need a fresh interpreter (run as scripts, not imported).

``perms DIR``
    With umask 000, create a queue in a new directory under DIR, enqueue, and report the
    modes of the directory, the database and its -wal and -shm while they exist.
``symlink DIR``
    With umask 000, create a queue through ``DIR/link.db``, a dangling symlink to
    ``DIR/elsewhere/target.db``, enqueue, and report the modes of the target and its -wal and
    -shm while they exist, and which files appeared beside the link.
``readonly DIR``
    Try to create a queue at ``DIR/queue.db`` and at ``DIR/sub/queue.db`` (``DIR`` is on a
    read-only file system) and report what each raised, and what exists afterwards.
``imports DB``
    Enqueue tasks whose types and payloads name modules (``os:system``, ``this``, ...),
    work them and read them back; report which modules were imported meanwhile.
``plugins``
    Build a Queue with entry points loaded under the HOOKQUEUE_* variables the caller set;
    report which ``hookqueue`` entry-point modules, and which decoy modules, were imported.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
import stat
import sys
from pathlib import Path

import _faults

#: Modules with visible side effects on import, used as decoys: ``this`` prints the Zen of
#: Python, ``antigravity`` opens a web browser.
DECOYS = ("this", "antigravity", "webbrowser", "turtle", "tkinter")


def _mode(path: str) -> str:
    return oct(stat.S_IMODE(os.stat(path).st_mode))


def perms(parent: str) -> None:
    """See the module docstring."""
    os.umask(0)
    from hookqueue import Queue

    db = Path(parent) / "fresh" / "nested" / "queue.db"
    q = Queue(db, load_entrypoints=False)
    q.enqueue("job", {"secret": "payload"})
    q.runtime.lease("w", limit=1)
    modes = {
        "directory": _mode(str(db.parent)),
        "database": _mode(str(db)),
        "wal": _mode(str(db) + "-wal"),
        "shm": _mode(str(db) + "-shm"),
    }
    q.close()
    _faults.emit(modes)


def symlink(parent: str) -> None:
    """See the module docstring."""
    os.umask(0)
    from hookqueue import Queue

    base = Path(parent)
    target = base / "elsewhere" / "target.db"
    target.parent.mkdir(mode=0o700)
    link = base / "link.db"
    link.symlink_to(target)
    q = Queue(link, load_entrypoints=False)
    q.enqueue("job", {"secret": "payload"})
    q.runtime.lease("w", limit=1)
    modes = {
        "target": _mode(str(target)),
        "wal": _mode(str(target) + "-wal"),
        "shm": _mode(str(target) + "-shm"),
        "link is a symlink": link.is_symlink(),
        "beside the link": sorted(p.name for p in base.iterdir() if p.name != "elsewhere"),
    }
    q.close()
    _faults.emit(modes)


def readonly(parent: str) -> None:
    """See the module docstring."""
    from hookqueue import Queue

    report = {}
    for name in ("queue.db", "sub/queue.db"):
        path = Path(parent) / name
        try:
            Queue(path, load_entrypoints=False).close()
        except Exception as exc:
            report[name] = {"error": type(exc).__name__, "message": str(exc)}
        else:
            report[name] = {"error": None, "message": ""}
    report["left"] = sorted(str(p.relative_to(parent)) for p in Path(parent).rglob("*"))
    _faults.emit(report)


TASK_TYPES = [
    "this",
    "antigravity",
    "os:system",
    "subprocess.run",
    "this:main",
    "antigravity.fly",
    "importlib:import_module",
    "builtins:eval",
    "webbrowser:open",
    "hookqueue.plugins.not_a_module:attack",
]


def imports(db: str) -> None:
    """See the module docstring."""
    from hookqueue import Queue, WorkerEngine
    from hookqueue.core.inline import run_due

    logging.disable(logging.CRITICAL)  # the expected "no handler" errors are not news here
    q = Queue(db)
    before = set(sys.modules)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for task_type in TASK_TYPES:
            q.enqueue(
                task_type,
                {"module": task_type, "callable": "os.system", "args": ["echo pwned"]},
                headers={"plugin": task_type},
            )
        # A worker leases only the types it has handlers for (none of these); an in-process
        # run leases every due task and fails each for want of a handler.
        WorkerEngine(q, worker_id="probe", concurrency=2).run_until_idle()
        after_worker = sorted({t.status.value for t in q.list(limit=100)})
        run_due(q)
        tasks = q.list(limit=100)
        [t.to_dict() for t in tasks]
    q.close()
    new = sorted(set(sys.modules) - before)
    _faults.emit(
        {
            "new_modules": new,
            "decoys_imported": [m for m in DECOYS if m in sys.modules],
            "printed": printed.getvalue(),
            "statuses_after_worker": after_worker,
            "statuses": sorted({t.status.value for t in tasks}),
            "errors": sorted({(t.error_message or "")[:60] for t in tasks}),
        }
    )


def plugins() -> None:
    """See the module docstring."""
    from hookqueue import Queue

    logging.disable(logging.CRITICAL)  # plugins not written yet are "unavailable": fine here
    names = os.environ.get("PROBE_BLOCK", "")
    q = Queue(os.environ["PROBE_DB"], block=[n for n in names.split(",") if n])
    eps = importlib.metadata.entry_points(group="hookqueue")
    modules = {ep.name: ep.value.split(":")[0] for ep in eps}
    statuses = {s.name: s.state for s in q.pm.hookqueue_status}
    q.close()
    _faults.emit(
        {
            "imported": sorted(name for name, module in modules.items() if module in sys.modules),
            "entry_points": sorted(modules),
            "decoys_imported": [m for m in DECOYS if m in sys.modules],
            "statuses": statuses,
        }
    )


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "perms":
        perms(args[0])
    elif command == "symlink":
        symlink(args[0])
    elif command == "readonly":
        readonly(args[0])
    elif command == "imports":
        imports(args[0])
    elif command == "plugins":
        plugins()
    else:
        raise SystemExit(f"unknown subcommand {command!r}")
