"""Meta tests: every hookspec is documented, has a kind, is in the plugin guide, and is called."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from hookqueue import Queue, WorkerEngine
from hookqueue.core import hookspecs
from hookqueue.core.cli import build_parser
from hookqueue.core.plugins import Hooks

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted(n for n in dir(hookspecs) if n.startswith("hookqueue_"))


def test_every_hookspec_has_a_kind_and_a_full_docstring() -> None:
    assert set(SPECS) == set(hookspecs.HOOK_KINDS)
    for name in SPECS:
        fn = getattr(hookspecs, name)
        doc = inspect.getdoc(fn) or ""
        kind = hookspecs.HOOK_KINDS[name]
        assert doc.startswith(f"**{kind}**"), f"{name}: the docstring starts with its kind"
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc, f"{name} documents :param {param}:"
        if kind in ("decision", "around", "registration"):
            assert ":returns:" in doc, f"{name} documents what it returns"
        firstresult = fn.hookqueue_spec["firstresult"]
        assert firstresult == (kind in ("decision", "around")), name


def test_every_hook_is_explained_in_the_plugin_guide() -> None:
    guide = (ROOT / "docs" / "plugins.md").read_text()
    for name in SPECS:
        assert re.search(rf"### .*`{name}[`(]", guide), f"docs/plugins.md has a section on {name}"


def test_every_hook_is_called_by_the_core(db_path: Path) -> None:
    called: set[str] = set()
    q = Queue(db_path, load_entrypoints=False)

    def before(hook_name, hook_impls, kwargs):  # type: ignore[no-untyped-def]
        called.add(hook_name)

    def after(outcome, hook_name, hook_impls, kwargs):  # type: ignore[no-untyped-def]
        pass

    undo = q.pm.add_hookcall_monitoring(before, after)

    class Observer:
        from hookqueue import hookimpl

        @hookimpl
        def hookqueue_event(self, events):  # type: ignore[no-untyped-def]
            pass

        @hookimpl
        def hookqueue_handlers(self):  # type: ignore[no-untyped-def]
            return []

        @hookimpl
        def hookqueue_cli_commands(self):  # type: ignore[no-untyped-def]
            return []

    q.pm.register(Observer())
    q.hooks.handlers()  # registration hooks run at construction; call once more under watch
    build_parser(Hooks(q.pm))
    q.handlers.register_handler("ok", lambda task: 1)
    q.handlers.register_handler("bad", lambda task: 1 / 0)
    q.enqueue("ok")
    q.enqueue("bad")
    WorkerEngine(q, worker_id="w").run_until_idle()
    q.close()
    undo()
    assert called >= set(SPECS) - {"hookqueue_queue_open", "hookqueue_store"}
    # hookqueue_store and hookqueue_queue_open ran before monitoring could start; check them
    # separately
    opened: list[object] = []

    class Opener:
        from hookqueue import hookimpl

        @hookimpl
        def hookqueue_store(self, location, options):  # type: ignore[no-untyped-def]
            opened.append(location)  # and leave it to the core's store

        @hookimpl
        def hookqueue_queue_open(self, queue):  # type: ignore[no-untyped-def]
            opened.append(queue)

    q2 = Queue(db_path, load_entrypoints=False, plugins=[Opener()])
    assert opened == [str(db_path), q2]
    q2.close()
