"""The plugin manager factory, entry-point loading, blocking and tracing, and the typed hook facade.

Load order: the core's built-ins (``trylast``), then entry points of the ``hookqueue`` group,
then plugins passed in code, then ``check_pending()`` so a misspelled hook name is an error
instead of a silently ignored function. Nothing relies on pluggy's registration order:
implementations that care say ``tryfirst`` or ``trylast``.

Environment:

- ``HOOKQUEUE_DISABLE_PLUGINS=a,b`` blocks plugins by name (entry-point name, or the
  ``name`` given at registration).
- ``HOOKQUEUE_PLUGIN_AUTOLOAD=0`` skips entry points altogether (plugins passed in code load).
- ``HOOKQUEUE_TRACE_PLUGINS=1`` sends pluggy's hook-call tracing to the ``hookqueue.plugins``
  logger at DEBUG level.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from . import hookspecs
from .defaults import CoreDefaults
from .errors import PluginError
from .hookspecs import PROJECT_NAME

if TYPE_CHECKING:
    from .models import (
        CliCommand,
        Failure,
        HandlerSpec,
        LeasePlan,
        LeaseRequest,
        NewTask,
        RetryDecision,
        Task,
        TaskEvent,
    )
    from .storage import TaskStore

log = logging.getLogger("hookqueue.plugins")

CORE_PLUGIN_NAME = "core"
#: A plugin manager's hook executor while no tracing or monitoring is installed.
_PLAIN_HOOKEXEC = pluggy.PluginManager(PROJECT_NAME)._inner_hookexec

#: Extras that first-party plugins need, for the install hint when their import fails.
EXTRAS = {
    "prometheus": "prometheus",
    "opentelemetry": "otel",
    "dashboard": "web",
    "postgres": "postgres",
}


@attrs.frozen(kw_only=True)
class PluginStatus:
    """One plugin as ``hookqueue plugins`` shows it."""

    #: Registration or entry-point name.
    name: str
    #: ``active``, ``blocked`` or ``unavailable``.
    state: str
    #: Where it came from: ``core``, ``entry point <dist>``, ``code``.
    source: str
    #: The hooks it implements (active plugins).
    hooks: tuple[str, ...] = ()
    #: Why it is blocked or unavailable, with the fix.
    reason: str = ""


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in {"0", "false", "no", "off", ""}


def make_plugin_manager(
    *,
    load_entrypoints: bool = True,
    block: Iterable[str] = (),
    plugins: Iterable[Any] = (),
) -> pluggy.PluginManager:
    """Build a plugin manager with the core built-ins, entry points and the given plugins.

    :param load_entrypoints: load the ``hookqueue`` entry-point group (also switched off by
        ``HOOKQUEUE_PLUGIN_AUTOLOAD=0``).
    :param block: plugin names not to load (added to ``HOOKQUEUE_DISABLE_PLUGINS``).
    :param plugins: plugin objects (modules, classes' instances) to register after the entry
        points; an object may carry its name in a ``hookqueue_name`` attribute.
    :returns: the manager; ``pm.hookqueue_status`` lists every plugin's state for the CLI.
    :raises PluginError: a hook implementation does not match its spec, or names an unknown
        hook (``check_pending``).

    A plugin that fails to import or register is logged with its name and the reason and
    listed as ``unavailable``; the rest still load.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    statuses: list[PluginStatus] = []
    blocked = set(block) | set(_env_list("HOOKQUEUE_DISABLE_PLUGINS"))
    if CORE_PLUGIN_NAME in blocked:
        raise PluginError(
            "the 'core' plugin cannot be blocked: it gives the built-in answers every hook "
            "call relies on. Fix: block the plugin whose behaviour you want to remove instead"
        )
    if _env_flag("HOOKQUEUE_TRACE_PLUGINS", False):
        pm.trace.root.setwriter(lambda msg: log.debug("%s", msg.rstrip()))
        pm.enable_tracing()

    pm.register(CoreDefaults(), name=CORE_PLUGIN_NAME)
    statuses.append(
        PluginStatus(
            name=CORE_PLUGIN_NAME,
            state="active",
            source="core",
            hooks=_hooks_of(pm, CORE_PLUGIN_NAME),
        )
    )
    for name in blocked:
        pm.set_blocked(name)

    if load_entrypoints and _env_flag("HOOKQUEUE_PLUGIN_AUTOLOAD", True):
        statuses += _load_entrypoints(pm, blocked)
    elif load_entrypoints:
        statuses.append(
            PluginStatus(
                name="(entry points)",
                state="blocked",
                source="environment",
                reason="HOOKQUEUE_PLUGIN_AUTOLOAD=0",
            )
        )

    for plugin in plugins:
        name = getattr(plugin, "hookqueue_name", None) or _default_name(plugin)
        if name in blocked:
            statuses.append(
                PluginStatus(name=name, state="blocked", source="code", reason="blocked by name")
            )
            continue
        try:
            pm.register(plugin, name=name)
        except ValueError as exc:
            raise PluginError(f"plugin {name!r} cannot be registered: {exc}") from exc
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} is invalid: {exc}") from exc
        statuses.append(
            PluginStatus(name=name, state="active", source="code", hooks=_hooks_of(pm, name))
        )

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        plugin_name = pm.get_name(exc.plugin) if exc.plugin is not None else "?"
        raise PluginError(
            f"plugin {plugin_name!r} implements a hook that does not exist: {exc}. "
            "Fix: check the spelling against hookqueue.core.hookspecs, or mark optional "
            "hooks with @hookimpl(optionalhook=True)"
        ) from exc
    pm.hookqueue_status = statuses  # type: ignore[attr-defined]
    return pm


def _default_name(plugin: Any) -> str:
    if isinstance(plugin, type) or hasattr(plugin, "__name__"):
        return str(getattr(plugin, "__name__", repr(plugin)))
    return f"{type(plugin).__module__}.{type(plugin).__qualname__}"


def _hooks_of(pm: pluggy.PluginManager, name: str) -> tuple[str, ...]:
    plugin = pm.get_plugin(name)
    if plugin is None:
        return ()
    callers = pm.get_hookcallers(plugin) or []
    return tuple(sorted(c.name for c in callers))


def _load_entrypoints(pm: pluggy.PluginManager, blocked: set[str]) -> list[PluginStatus]:
    statuses: list[PluginStatus] = []
    eps = sorted(importlib.metadata.entry_points(group=PROJECT_NAME), key=lambda ep: ep.name)
    for ep in eps:
        dist = ep.dist.name if ep.dist is not None else "?"
        source = f"entry point ({dist})"
        if ep.name in blocked or pm.is_blocked(ep.name):
            statuses.append(
                PluginStatus(name=ep.name, state="blocked", source=source, reason="blocked by name")
            )
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
        except ImportError as exc:
            extra = EXTRAS.get(ep.name)
            fix = (
                f"pip install 'hookqueue[{extra}]'"
                if extra and dist == "hookqueue"
                else f"install the package that provides {getattr(exc, 'name', None) or exc}"
            )
            reason = f"cannot import {ep.value}: {exc}. Fix: {fix}"
            # An optional first-party exporter without its extra is expected, not a fault.
            log.log(
                logging.INFO if extra else logging.WARNING,
                "plugin %r is unavailable: %s",
                ep.name,
                reason,
            )
            statuses.append(
                PluginStatus(name=ep.name, state="unavailable", source=source, reason=reason)
            )
            continue
        except Exception as exc:  # a broken plugin must not stop the others from loading
            reason = f"importing {ep.value} raised {type(exc).__name__}: {exc}"
            log.error("plugin %r failed to load: %s", ep.name, reason)
            statuses.append(
                PluginStatus(name=ep.name, state="unavailable", source=source, reason=reason)
            )
            continue
        try:
            pm.register(plugin, name=ep.name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            reason = f"registering {ep.value} failed: {exc}"
            log.error("plugin %r failed to load: %s", ep.name, reason)
            statuses.append(
                PluginStatus(name=ep.name, state="unavailable", source=source, reason=reason)
            )
            continue
        statuses.append(
            PluginStatus(name=ep.name, state="active", source=source, hooks=_hooks_of(pm, ep.name))
        )
    return statuses


#: One implementation in a precomputed chain: (function, argument names, new-style wrapper?,
#: the plugin's "would this wrapper pass the call through unchanged?" or None).
_Link = tuple[Any, tuple[str, ...], bool, Any]

#: A plugin may define this method, ``(hook_name) -> bool``: True when its new-style wrapper of
#: that hook would, for the call about to be made, pass the inner result through unchanged.
#: The precomputed chain then skips the wrapper (saving its generator). Private to hookqueue's
#: first-party plugins; pluggy's own path (tracing on) always calls the wrapper.
PASS_THROUGH_ATTR = "_hookqueue_wrapper_passes_through"


def _wrapfail(gen: Any, problem: str) -> RuntimeError:
    """pluggy's error for a misbehaving wrapper, word for word."""
    code = gen.gi_code
    return RuntimeError(
        f"wrap_controller at {code.co_name!r} {code.co_filename}:{code.co_firstlineno} {problem}"
    )


def _call_first_result(chain: Sequence[_Link], kwargs: dict[str, Any], hook_name: str) -> Any:
    """Call a firstresult hook's chain exactly as pluggy's ``_multicall`` does: wrappers run
    up to their ``yield`` in call order; plain implementations are called until one returns
    something other than None; then each wrapper, innermost first, receives the result (or
    the exception) and returns the result it passes outwards (or raises instead). A wrapper
    whose plugin says it would pass this call through unchanged (:data:`PASS_THROUGH_ATTR`)
    is left out."""
    teardowns: list[Any] = []
    result: Any = None
    exception: BaseException | None = None
    try:
        for function, argnames, wrapper, passes_through in chain:
            if passes_through is not None and passes_through(hook_name):
                continue
            args = [kwargs[name] for name in argnames]
            if wrapper:
                gen = function(*args)
                try:
                    next(gen)
                except StopIteration:
                    raise _wrapfail(gen, "did not yield") from None
                teardowns.append(gen)
            else:
                answer = function(*args)
                if answer is not None:
                    result = answer
                    break
    except BaseException as exc:
        exception = exc
    for gen in reversed(teardowns):
        try:
            if exception is not None:
                try:
                    gen.throw(exception)
                except RuntimeError as error:
                    # A StopIteration thrown into a generator comes back as RuntimeError.
                    if isinstance(exception, StopIteration) and error.__cause__ is exception:
                        gen.close()
                        continue
                    raise
            else:
                gen.send(result)
            gen.close()
        except StopIteration as stop:
            result = stop.value
            exception = None
            continue
        except BaseException as exc:
            exception = exc
            continue
        raise _wrapfail(gen, "has second yield")
    if exception is not None:
        raise exception
    return result


def _pass_through_check(impl: Any) -> Any:
    """The plugin's :data:`PASS_THROUGH_ATTR` method, made safe: an exception in it means
    "call the wrapper"."""
    check = getattr(impl.plugin, PASS_THROUGH_ATTR, None)
    if check is None:
        return None

    def passes_through(hook_name: str) -> bool:
        try:
            return bool(check(hook_name))
        except Exception:
            return False

    return passes_through


class Hooks:
    """The typed facade through which the core calls every hook (keyword arguments only).

    Keeping the calls here gives one place that knows each hook's kind: decisions and arounds
    return the first result, observations isolate each implementation's errors, registrations
    merge and refuse duplicates.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._h = pm.hook
        #: hook name -> (the implementations it was built from, the chain or None)
        self._chains: dict[str, tuple[list[Any], tuple[_Link, ...] | None]] = {}

    # around / decision

    def _chain(self, caller: Any) -> tuple[_Link, ...] | None:
        """The hook's implementations as a precomputed call chain, or None to go through
        pluggy. A chain is used while nothing monitors hook calls (tracing is off) and every
        implementation is a plain one or a new-style wrapper (``wrapper=True``); old-style
        ``hookwrapper``s and impls with keyword arguments take pluggy's path. The enqueue and
        execute hooks run once per task: the chain saves pluggy's generic per-call work and
        gives exactly its answer (``tests/core/test_hook_chain.py`` checks this against
        pluggy itself). Rebuilt whenever the implementations change."""
        if self.pm._inner_hookexec is not _PLAIN_HOOKEXEC:
            return None
        impls = caller._hookimpls
        cached = self._chains.get(caller.name)
        if cached is not None and cached[0] == impls:
            return cached[1]
        chain: tuple[_Link, ...] | None = tuple(
            (
                impl.function,
                tuple(impl.argnames),
                impl.wrapper,
                _pass_through_check(impl) if impl.wrapper else None,
            )
            for impl in reversed(impls)
        )
        if any(impl.hookwrapper or impl.kwargnames for impl in impls):
            chain = None
        self._chains[caller.name] = (list(impls), chain)
        return chain

    def enqueue(self, queue: Any, new_task: NewTask) -> NewTask:
        """Run ``hookqueue_enqueue``; returns the task to write."""
        caller = self._h.hookqueue_enqueue
        chain = self._chain(caller)
        if chain is not None:
            direct: NewTask = _call_first_result(
                chain, {"queue": queue, "new_task": new_task}, "hookqueue_enqueue"
            )
            return direct
        result: NewTask = caller(queue=queue, new_task=new_task)
        return result

    def lease(self, queue: Any, request: LeaseRequest) -> LeasePlan:
        """Run ``hookqueue_lease``; returns the plan."""
        result: LeasePlan = self._h.hookqueue_lease(queue=queue, request=request)
        return result

    def execute(self, task: Task, handler: HandlerSpec, worker_id: str) -> Awaitable[Any]:
        """Run ``hookqueue_execute``; returns the awaitable the worker awaits."""
        caller = self._h.hookqueue_execute
        chain = self._chain(caller)
        if chain is not None:
            direct: Awaitable[Any] = _call_first_result(
                chain,
                {"task": task, "handler": handler, "worker_id": worker_id},
                "hookqueue_execute",
            )
            return direct
        result: Awaitable[Any] = caller(task=task, handler=handler, worker_id=worker_id)
        return result

    def retry(
        self, task: Task, failure: Failure, handler: HandlerSpec | None, now: Any
    ) -> RetryDecision:
        """Run ``hookqueue_retry``; returns the decision."""
        result: RetryDecision = self._h.hookqueue_retry(
            task=task, failure=failure, handler=handler, now=now
        )
        return result

    # observation

    def has_event_observers(self) -> bool:
        """True if any plugin implements ``hookqueue_event`` (the core skips building events
        otherwise)."""
        return bool(self._h.hookqueue_event._hookimpls)

    def event(self, events: Sequence[TaskEvent]) -> None:
        """Send events to every observer; an observer's exception is logged, never raised."""
        if not events:
            return
        caller = self._h.hookqueue_event
        impls = caller._hookimpls[:]  # a copy: an observer may register plugins
        if not impls:
            return
        # Each implementation is called on its own, in pluggy's call order: one exporter
        # that raises must not keep the next one from seeing the events. While nothing
        # monitors hook calls (tracing is off), a plain observer is called directly, which
        # saves pluggy's per-call machinery for every enqueue, lease and cancel; otherwise
        # (and for wrappers) through the manager's hook executor, so tracing sees it.
        direct = self.pm._inner_hookexec is _PLAIN_HOOKEXEC
        # One arguments object for every observer: a recorder shows the calls as one.
        kwargs = {"events": events}
        for impl in reversed(impls):
            try:
                if direct and not (impl.wrapper or impl.hookwrapper or impl.kwargnames):
                    # The spec's one argument; an implementation may also take none.
                    if impl.argnames:
                        impl.function(events)
                    else:
                        impl.function()
                else:
                    self.pm._hookexec(caller.name, [impl], kwargs, False)
            except Exception:
                log.exception(
                    "plugin %r raised in hookqueue_event; the events are unaffected",
                    impl.plugin_name,
                )

    # store

    def open_store(self, location: str, options: Mapping[str, Any]) -> TaskStore:
        """Run ``hookqueue_store``; returns the opened store."""
        result: TaskStore = self._h.hookqueue_store(location=location, options=options)
        return result

    # lifecycle

    def queue_open(self, queue: Any) -> None:
        """Run ``hookqueue_queue_open``."""
        self._h.hookqueue_queue_open(queue=queue)

    def queue_close(self, queue: Any) -> None:
        """Run ``hookqueue_queue_close``."""
        self._h.hookqueue_queue_close(queue=queue)

    def worker_start(self, worker: Any) -> None:
        """Run ``hookqueue_worker_start``."""
        self._h.hookqueue_worker_start(worker=worker)

    def worker_stop(self, worker: Any) -> None:
        """Run ``hookqueue_worker_stop``."""
        self._h.hookqueue_worker_stop(worker=worker)

    # registration

    def _merge(self, hook_name: str, key: str) -> list[Any]:
        caller = getattr(self._h, hook_name)
        seen: dict[str, str] = {}
        merged: list[Any] = []
        for impl in reversed(caller.get_hookimpls()):
            records: Any = self.pm._hookexec(hook_name, [impl], {}, False)
            for batch in records:
                for record in batch or ():
                    name = getattr(record, key)
                    if name in seen:
                        raise PluginError(
                            f"{hook_name}: {key} {name!r} is contributed by both plugin "
                            f"{seen[name]!r} and plugin {impl.plugin_name!r}. Fix: block one "
                            "of them (HOOKQUEUE_DISABLE_PLUGINS) or rename"
                        )
                    seen[name] = impl.plugin_name
                    merged.append(record)
        return merged

    def handlers(self) -> list[HandlerSpec]:
        """Every handler contributed by plugins; duplicates by task type are refused."""
        return self._merge("hookqueue_handlers", "task_type")

    def cli_commands(self) -> list[CliCommand]:
        """Every CLI subcommand contributed by plugins; duplicates by name are refused."""
        return self._merge("hookqueue_cli_commands", "name")


def plugin_statuses(pm: pluggy.PluginManager) -> list[PluginStatus]:
    """Every plugin's state (active, blocked, unavailable) for ``hookqueue plugins``."""
    statuses: list[PluginStatus] = list(getattr(pm, "hookqueue_status", []))
    known = {s.name for s in statuses}
    # Plugins registered after the factory ran (e.g. Queue(..., plugins=...) later on).
    for name, plugin in pm.list_name_plugin():
        if name not in known and plugin is not None:
            statuses.append(
                PluginStatus(name=name, state="active", source="code", hooks=_hooks_of(pm, name))
            )
    return statuses
