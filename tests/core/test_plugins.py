"""The plugin manager: built-ins, entry points, blocking, load failures, tracing, the facade."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import attrs
import pytest

from hookqueue import (
    HandlerSpec,
    LeasePlan,
    NewTask,
    PluginError,
    Queue,
    SortKey,
    TaskStatus,
    ValidationError,
    WorkerEngine,
    hookimpl,
)
from hookqueue.core.plugins import make_plugin_manager, plugin_statuses


def _install_fake_distribution(
    root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]
) -> None:
    """A distribution on sys.path that importlib.metadata finds: its .dist-info declares the
    entry points, and the modules sit beside it."""
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[hookqueue]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


GOOD = """
from hookqueue import hookimpl
import attrs
@hookimpl(wrapper=True)
def hookqueue_enqueue(new_tasks):
    result = yield
    return [attrs.evolve(t, headers={**t.headers, "stamped": "yes"}) for t in result]
"""
BROKEN_IMPORT = "raise RuntimeError('this plugin is broken on import')\n"
MISSING_DEP = "import a_module_that_is_not_installed_anywhere\n"
MISSPELLED = """
from hookqueue import hookimpl
@hookimpl
def hookqueue_enqeue(new_tasks):
    return new_tasks
"""


@pytest.fixture
def fake_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    _install_fake_distribution(
        root,
        "hq-fake-plugins",
        {"stamper": "hq_fake_stamper", "broken": "hq_fake_broken", "needsdep": "hq_fake_needsdep"},
        {"hq_fake_stamper": GOOD, "hq_fake_broken": BROKEN_IMPORT, "hq_fake_needsdep": MISSING_DEP},
    )
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield root
    for mod in ("hq_fake_stamper", "hq_fake_broken", "hq_fake_needsdep", "hq_fake_misspelled"):
        sys.modules.pop(mod, None)


def _status(pm, name):  # type: ignore[no-untyped-def]
    return {s.name: s for s in plugin_statuses(pm)}[name]


def test_entry_points_load_and_a_broken_plugin_does_not_stop_the_others(
    fake_plugins: Path, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hookqueue.plugins")
    q = Queue(db_path)
    assert _status(q.pm, "stamper").state == "active"
    assert "hookqueue_enqueue" in _status(q.pm, "stamper").hooks
    broken = _status(q.pm, "broken")
    assert broken.state == "unavailable" and "broken on import" in broken.reason
    needsdep = _status(q.pm, "needsdep")
    assert (
        needsdep.state == "unavailable"
        and "a_module_that_is_not_installed_anywhere" in needsdep.reason
    )
    assert "broken" in caplog.text and "needsdep" in caplog.text
    assert q.enqueue("t").headers == {"stamped": "yes"}, "the good plugin runs"
    q.close()


def test_blocking_by_argument_and_by_environment(
    fake_plugins: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = Queue(db_path, block=["stamper"])
    assert _status(q.pm, "stamper").state == "blocked"
    assert q.enqueue("t").headers == {}
    q.close()
    monkeypatch.setenv("HOOKQUEUE_DISABLE_PLUGINS", "stamper, broken")
    q = Queue(db_path)
    assert _status(q.pm, "stamper").state == "blocked"
    assert _status(q.pm, "broken").state == "blocked"
    q.close()
    monkeypatch.delenv("HOOKQUEUE_DISABLE_PLUGINS")
    monkeypatch.setenv("HOOKQUEUE_PLUGIN_AUTOLOAD", "0")
    q = Queue(db_path)
    assert "stamper" not in {s.name for s in plugin_statuses(q.pm) if s.state == "active"}
    assert q.enqueue("t").headers == {}
    q.close()


def test_a_misspelled_hook_is_an_error_naming_the_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "site"
    _install_fake_distribution(
        root,
        "hq-misspelled",
        {"misspelled": "hq_fake_misspelled"},
        {"hq_fake_misspelled": MISSPELLED},
    )
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    with pytest.raises(PluginError, match="misspelled.*hookqueue_enqeue"):
        make_plugin_manager()
    sys.modules.pop("hq_fake_misspelled", None)


def test_the_core_cannot_be_blocked() -> None:
    with pytest.raises(PluginError, match="'core' plugin cannot be blocked"):
        make_plugin_manager(block=["core"])


def test_tracing_goes_to_the_log(
    monkeypatch: pytest.MonkeyPatch, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOOKQUEUE_TRACE_PLUGINS", "1")
    caplog.set_level(logging.DEBUG, "hookqueue.plugins")
    q = Queue(db_path, load_entrypoints=False)
    q.enqueue("t")
    assert "hookqueue_enqueue" in caplog.text
    q.close()


def test_plugins_registered_in_code_are_named_and_blockable(db_path: Path) -> None:
    class Named:
        hookqueue_name = "named"

        @hookimpl(wrapper=True)
        def hookqueue_enqueue(self, new_tasks: list[NewTask]):  # type: ignore[no-untyped-def]
            result = yield
            return [attrs.evolve(t, priority=1) for t in result]

    q = Queue(db_path, load_entrypoints=False, plugins=[Named()])
    assert q.enqueue("t").priority == 1
    assert _status(q.pm, "named").state == "active"
    q.close()
    q = Queue(db_path, load_entrypoints=False, plugins=[Named()], block=["named"])
    assert q.enqueue("t").priority == 100
    assert _status(q.pm, "named").state == "blocked"
    q.close()


def test_an_enqueue_wrapper_can_refuse_and_nothing_is_written(db_path: Path) -> None:
    class Refuser:
        @hookimpl(wrapper=True)
        def hookqueue_enqueue(self, new_tasks: list[NewTask]):  # type: ignore[no-untyped-def]
            for t in new_tasks:
                if t.task_type == "forbidden":
                    raise ValidationError(
                        "task_type", t.task_type, "is not allowed here", "use another"
                    )
            return (yield)

    q = Queue(db_path, load_entrypoints=False, plugins=[Refuser()])
    q.enqueue("allowed")
    with pytest.raises(ValidationError, match="not allowed"):
        q.enqueue("forbidden")
    with pytest.raises(ValidationError):
        q.enqueue_many([{"task_type": "allowed"}, {"task_type": "forbidden"}])
    assert q.counts()["queued"] == 1
    q.close()


def test_a_lease_plan_from_a_plugin_orders_the_lease(db_path: Path) -> None:
    class ByPriority:
        @hookimpl
        def hookqueue_lease(self) -> LeasePlan:
            return LeasePlan(order=(SortKey.PRIORITY,), name="priority")

    q = Queue(db_path, load_entrypoints=False, plugins=[ByPriority()])
    for p in (5, 1, 3, 1):
        q.enqueue("t", p, priority=p)
    assert [t.payload for t in q.runtime.lease("w", limit=4)] == [1, 1, 3, 5]
    q.close()


def test_rerank_window_and_partition_key(db_path: Path) -> None:
    offered: list[list[object]] = []

    class RoundRobin:
        @hookimpl
        def hookqueue_lease(self) -> LeasePlan:
            def rerank(candidates, limit):  # type: ignore[no-untyped-def]
                offered.append([c.partition for c in candidates])
                seen: set[object] = set()
                picked = []
                for c in candidates:
                    if c.partition not in seen:
                        seen.add(c.partition)
                        picked.append(c.id)
                return picked[:limit]

            return LeasePlan(
                order=(SortKey.FIFO,), window=10, rerank=rerank, partition_key="tenant"
            )

    q = Queue(db_path, load_entrypoints=False, plugins=[RoundRobin()])
    ids = [q.enqueue("t", {"tenant": tenant}).id for tenant in ["a", "a", "a", "b", "c"]]
    leased = q.runtime.lease("w", limit=5)
    assert [t.id for t in leased] == [ids[0], ids[3], ids[4]]
    assert offered[0] == ["a", "a", "a", "b", "c"]
    q.close()


def test_plugins_contribute_handlers_and_duplicates_are_refused(db_path: Path) -> None:
    class Mailer:
        hookqueue_name = "mailer"

        @hookimpl
        def hookqueue_handlers(self) -> list[HandlerSpec]:
            return [HandlerSpec(task_type="send_email", handler=lambda task: "sent")]

    class Other:
        hookqueue_name = "other"

        @hookimpl
        def hookqueue_handlers(self) -> list[HandlerSpec]:
            return [HandlerSpec(task_type="send_email", handler=lambda task: "dup")]

    q = Queue(db_path, load_entrypoints=False, plugins=[Mailer()])
    t = q.enqueue("send_email")
    WorkerEngine(q, worker_id="w").run_until_idle()
    assert q.get(t.id).status is TaskStatus.COMPLETED and q.get(t.id).result == "sent"
    q.close()
    with pytest.raises(PluginError, match="send_email.*mailer.*other|send_email.*other.*mailer"):
        Queue(db_path, load_entrypoints=False, plugins=[Mailer(), Other()])


def test_lifecycle_hooks_are_called(db_path: Path) -> None:
    seen: list[str] = []

    class Watcher:
        @hookimpl
        def hookqueue_queue_open(self, queue: Queue) -> None:
            seen.append("open")

        @hookimpl
        def hookqueue_queue_close(self, queue: Queue) -> None:
            seen.append("close")

        @hookimpl
        def hookqueue_worker_start(self, worker: WorkerEngine) -> None:
            seen.append(f"start:{worker.worker_id}")

        @hookimpl
        def hookqueue_worker_stop(self, worker: WorkerEngine) -> None:
            seen.append(f"stop:{worker.worker_id}")

    q = Queue(db_path, load_entrypoints=False, plugins=[Watcher()])
    WorkerEngine(q, worker_id="w9").run_until_idle()
    q.close()
    assert seen == ["open", "start:w9", "stop:w9", "close"]
