"""The precomputed hook chain (``Hooks._chain``) answers exactly as pluggy does.

The enqueue and execute hooks run once per task, so ``Hooks`` calls their implementations
through a chain of its own instead of pluggy's generic ``_multicall``. These tests register
random mixes of plain implementations and new-style wrappers — returning, passing on,
replacing, catching, raising before and after ``yield``, never yielding, yielding twice —
and compare the chain's result, exception and call order with pluggy's own call on the same
plugin manager.
"""

from __future__ import annotations

from typing import Any

import pluggy
from hypothesis import given, settings
from hypothesis import strategies as st

from hookqueue.core import hookspecs
from hookqueue.core.hookspecs import PROJECT_NAME, hookimpl
from hookqueue.core.plugins import PASS_THROUGH_ATTR, Hooks

PLAIN = ["none", "value", "raise", "stop_iteration"]
WRAPPER = [
    "pass",
    "replace",
    "catch",
    "raise_after",
    "raise_before",
    "no_yield",
    "second_yield",
    # The plugin says the wrapper passes this call through (the chain skips it) and it does.
    "declared_pass",
    # The plugin's pass-through check raises: the chain must call the wrapper after all.
    "declared_broken",
    # The plugin says the wrapper does not pass through: the chain calls it.
    "declared_active",
]


def _plain(index: int, behaviour: str, log: list[str]) -> Any:
    def hookqueue_enqueue(self: Any, new_task: Any) -> Any:
        log.append(f"plain{index}")
        if behaviour == "value":
            return f"p{index}({new_task})"
        if behaviour == "raise":
            raise ValueError(f"plain{index}")
        if behaviour == "stop_iteration":
            raise StopIteration(f"plain{index}")
        return None

    return hookqueue_enqueue


def _wrapper(index: int, behaviour: str, log: list[str]) -> Any:
    if behaviour == "declared_pass":

        def passing(self: Any, new_task: Any) -> Any:
            return (yield)  # what a skipped wrapper must do: nothing, and no trace of it

        return passing

    def hookqueue_enqueue(self: Any, new_task: Any) -> Any:
        log.append(f"wrap{index}:before")
        if behaviour == "raise_before":
            raise LookupError(f"wrap{index} before")
        if behaviour == "no_yield":
            return f"w{index}"
        if behaviour == "catch":
            try:
                result = yield
            except Exception as exc:
                log.append(f"wrap{index}:caught")
                return f"w{index} caught {type(exc).__name__}: {exc}"
        else:
            result = yield
        log.append(f"wrap{index}:after")
        if behaviour == "replace":
            return f"w{index}({result})"
        if behaviour == "raise_after":
            raise KeyError(f"wrap{index} after")
        if behaviour == "second_yield":
            yield
        return result

    # Always a generator function (it contains ``yield``): for "no_yield" it ends before its
    # first yield, which pluggy reports as "did not yield".
    return hookqueue_enqueue


def _declared(behaviour: str) -> Any:
    def passes_through(self: Any, hook_name: str) -> bool:
        assert hook_name == "hookqueue_enqueue"
        if behaviour == "declared_broken":
            raise RuntimeError("a broken check")
        return behaviour == "declared_pass"

    return passes_through


def _order_opts(order: str) -> dict[str, bool]:
    return {"tryfirst": order == "first", "trylast": order == "last"}


impl_strategy = st.one_of(
    st.tuples(st.just("plain"), st.sampled_from(PLAIN), st.sampled_from(["", "first", "last"])),
    st.tuples(st.just("wrapper"), st.sampled_from(WRAPPER), st.sampled_from(["", "first", "last"])),
)


def _manager(specs: list[tuple[str, str, str]], log: list[str]) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for index, (kind, behaviour, order) in enumerate(specs):
        if kind == "plain":
            function = hookimpl(**_order_opts(order))(_plain(index, behaviour, log))
        else:
            function = hookimpl(wrapper=True, **_order_opts(order))(_wrapper(index, behaviour, log))
        attributes: dict[str, Any] = {"hookqueue_enqueue": function}
        if behaviour.startswith("declared_"):
            attributes[PASS_THROUGH_ATTR] = _declared(behaviour)
        plugin = type(f"Plugin{index}", (), attributes)()
        pm.register(plugin, name=f"plugin{index}")
    return pm


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "result", call()
    except BaseException as exc:  # every outcome is compared, errors included
        return "raised", (type(exc), str(exc))


@settings(max_examples=400, deadline=None)
@given(st.lists(impl_strategy, min_size=1, max_size=6))
def test_the_chain_answers_as_pluggy_does(specs: list[tuple[str, str, str]]) -> None:
    log: list[str] = []
    pm = _manager(specs, log)
    hooks = Hooks(pm)
    assert hooks._chain(pm.hook.hookqueue_enqueue) is not None  # the fast path is taken

    expected = _outcome(lambda: pm.hook.hookqueue_enqueue(queue="q", new_task="t"))
    expected_log = log[:]
    log.clear()
    got = _outcome(lambda: hooks.enqueue("q", "t"))  # type: ignore[arg-type]
    assert got == expected
    assert log == expected_log


def test_the_chain_follows_registration_changes() -> None:
    log: list[str] = []
    pm = _manager([("plain", "value", "")], log)
    hooks = Hooks(pm)
    assert hooks.enqueue("q", "t") == "p0(t)"  # type: ignore[arg-type]
    later = type("Later", (), {"hookqueue_enqueue": _wrapper(1, "replace", log)})
    pm.register(later(), name="later")  # undecorated: not an impl; nothing changes
    assert hooks.enqueue("q", "t") == "p0(t)"  # type: ignore[arg-type]
    pm.unregister(name="later")
    wrapped = type(
        "Wrapped", (), {"hookqueue_enqueue": hookimpl(wrapper=True)(_wrapper(1, "replace", log))}
    )
    pm.register(wrapped(), name="wrapped")
    assert hooks.enqueue("q", "t") == "w1(p0(t))"  # type: ignore[arg-type]
    pm.unregister(name="wrapped")
    assert hooks.enqueue("q", "t") == "p0(t)"  # type: ignore[arg-type]


def test_monitoring_and_old_style_wrappers_go_through_pluggy() -> None:
    """With tracing on, hook calls are monitored, so the chain steps aside; an old-style
    ``hookwrapper`` is pluggy's alone to run."""
    log: list[str] = []
    pm = _manager([("plain", "value", "")], log)
    hooks = Hooks(pm)
    seen: list[str] = []
    undo = pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: seen.append(name), lambda *args: None
    )
    assert hooks._chain(pm.hook.hookqueue_enqueue) is None
    assert hooks.enqueue("q", "t") == "p0(t)"  # type: ignore[arg-type]
    assert seen == ["hookqueue_enqueue"]
    undo()
    assert hooks._chain(pm.hook.hookqueue_enqueue) is not None

    class OldStyle:
        @hookimpl(hookwrapper=True)
        def hookqueue_enqueue(self, new_task: Any) -> Any:
            outcome = yield
            outcome.force_result(f"old({outcome.get_result()})")

    pm.register(OldStyle(), name="old")
    assert hooks._chain(pm.hook.hookqueue_enqueue) is None
    assert hooks.enqueue("q", "t") == "old(p0(t))"  # type: ignore[arg-type]


def test_a_wrapper_whose_plugin_says_it_passes_through_is_not_called() -> None:
    """The skip happens (it is what saves the generator): a wrapper that says it would pass
    the call through is not entered at all — here it would mark the result if it were."""
    calls: list[str] = []

    class Declared:
        def __init__(self, passes: bool) -> None:
            self.passes = passes

        def _hookqueue_wrapper_passes_through(self, hook_name: str) -> bool:
            calls.append(hook_name)
            return self.passes

        @hookimpl(wrapper=True)
        def hookqueue_enqueue(self, new_task: Any) -> Any:
            result = yield
            return f"wrapped({result})"

    log: list[str] = []
    pm = _manager([("plain", "value", "")], log)
    pm.register(Declared(passes=True), name="declared")
    hooks = Hooks(pm)
    assert hooks.enqueue("q", "t") == "p0(t)"  # type: ignore[arg-type]
    assert calls == ["hookqueue_enqueue"]
    pm.unregister(name="declared")
    pm.register(Declared(passes=False), name="active")
    assert hooks.enqueue("q", "t") == "wrapped(p0(t))"  # type: ignore[arg-type]
