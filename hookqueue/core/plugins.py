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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from . import hookspecs
from .defaults import CoreDefaults
from .errors import PluginError, ValidationError
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


def raising_plugin(caller: Any, exc: BaseException) -> str | None:
    """The name of the plugin whose implementation of ``caller``'s hook raised ``exc``: the
    innermost of its implementations whose code is in the exception's traceback — for a
    method, on that very plugin object (public pluggy API only: ``get_hookimpls`` and each
    implementation's function). Innermost, because a wrapper that lets an exception through
    (``try: yield ... except: ...; raise``) is in the traceback too, outside the raiser."""
    by_code: dict[Any, list[tuple[Any, str]]] = {}
    for impl in caller.get_hookimpls():
        function = getattr(impl.function, "__func__", impl.function)
        code = getattr(function, "__code__", None)
        if code is not None:
            owner = getattr(impl.function, "__self__", None)
            by_code.setdefault(code, []).append((owner, impl.plugin_name))
    found = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        for owner, name in by_code.get(frame.f_code, ()):
            if owner is None:
                found = name
                break
            args = frame.f_code.co_varnames[: frame.f_code.co_argcount]
            if args and frame.f_locals.get(args[0]) is owner:
                found = name
                break
        tb = tb.tb_next
    return found


class Hooks:
    """The typed facade through which the core calls every hook (keyword arguments only).

    Every call goes through pluggy's own machinery (``pm.hook.<name>(...)``), so tracing,
    hook-call monitoring, ``tryfirst``/``trylast`` and wrappers behave exactly as pluggy
    documents. What the facade adds is each hook kind's error handling: an observer's
    exception is logged and the other observers still run; a registration's duplicates are
    refused naming both plugins; a lifecycle hook's exception names its plugin.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._h = pm.hook

    # store

    def open_store(self, location: str, options: Mapping[str, Any]) -> TaskStore:
        """Run ``hookqueue_store``; returns the opened store."""
        result: TaskStore = self._h.hookqueue_store(location=location, options=options)
        return result

    # around / decision

    def enqueue(self, queue: Any, new_tasks: list[NewTask]) -> list[NewTask]:
        """Run ``hookqueue_enqueue`` once for a batch; returns the tasks to write."""
        result: list[NewTask] = self._h.hookqueue_enqueue(queue=queue, new_tasks=new_tasks)
        return result

    def enqueue_plugins(self) -> list[str]:
        """The plugins other than the core that take part in ``hookqueue_enqueue`` (for
        errors that must say who changed a task)."""
        return [
            impl.plugin_name
            for impl in reversed(self._h.hookqueue_enqueue.get_hookimpls())
            if impl.plugin_name != CORE_PLUGIN_NAME
        ]

    def enqueue_culprits(
        self, queue: Any, new_tasks: list[NewTask], is_wrong: Callable[[list[NewTask]], bool]
    ) -> list[str]:
        """Which enqueue plugins produce a wrong answer on their own: each of
        :meth:`enqueue_plugins` is called again alone (with the core, through a pluggy
        subset caller) on the same tasks, and named when ``is_wrong`` holds of its answer.

        Only for an error message, after the full chain's answer was refused and before
        anything is written: it runs each plugin's implementation once more. An answer that
        only the plugins together get wrong names none of them (the caller then lists them
        all)."""
        names = self.enqueue_plugins()
        if len(names) < 2:
            return names
        out = []
        for name in names:
            alone = self.pm.subset_hook_caller(
                "hookqueue_enqueue",
                remove_plugins=[self.pm.get_plugin(other) for other in names if other != name],
            )
            try:
                answer = alone(queue=queue, new_tasks=list(new_tasks))
            except Exception:  # it fails on its own too: not the answer asked about
                continue
            if is_wrong(answer):
                out.append(name)
        return out

    def lease(self, queue: Any, request: LeaseRequest) -> LeasePlan:
        """Run ``hookqueue_lease``; returns the plan."""
        result: LeasePlan = self._h.hookqueue_lease(queue=queue, request=request)
        return result

    def execute(self, task: Task, handler: HandlerSpec, worker_id: str) -> Awaitable[Any]:
        """Run ``hookqueue_execute``; returns the awaitable the worker awaits."""
        result: Awaitable[Any] = self._h.hookqueue_execute(
            task=task, handler=handler, worker_id=worker_id
        )
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
        return bool(self._h.hookqueue_event.get_hookimpls())

    def event(self, events: Sequence[TaskEvent]) -> None:
        """Send events to every observer, in one call of the hook. An observer's exception
        is logged naming its plugin, and the observers that had not run yet are called with
        the same events (again through pluggy); nothing is raised."""
        if not events:
            return
        caller: Any = self._h.hookqueue_event
        remaining: list[str] | None = None  # None: every observer, in pluggy's order
        while True:
            try:
                caller(events=events)
                return
            except Exception as exc:
                name = raising_plugin(caller, exc)
                log.error(
                    "plugin %r raised in hookqueue_event (%s: %s); the events are unaffected",
                    name or "?",
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
                order = self._observer_names() if remaining is None else remaining
                if name is None or name not in order:
                    return  # not an observer's own code (a wrapper's?): nothing to resume
                remaining = order[order.index(name) + 1 :]
                if not remaining:
                    return
                # The observers that had not run yet, with every wrapper, through pluggy.
                caller = self.pm.subset_hook_caller(
                    "hookqueue_event",
                    remove_plugins=[
                        self.pm.get_plugin(n) for n in self._observer_names() if n not in remaining
                    ],
                )

    def _observer_names(self) -> list[str]:
        """The plain (non-wrapper) observers, in pluggy's call order."""
        return [
            impl.plugin_name
            for impl in reversed(self._h.hookqueue_event.get_hookimpls())
            if not (impl.wrapper or impl.hookwrapper)
        ]

    # lifecycle

    def _lifecycle(self, hook_name: str, **kwargs: Any) -> None:
        caller = getattr(self._h, hook_name)
        try:
            caller(**kwargs)
        except ValidationError:
            # The plugin found the user's configuration wrong (a schedule declared on a
            # handler, say): that error already names the field and the fix.
            raise
        except Exception as exc:
            name = raising_plugin(caller, exc)
            raise PluginError(
                f"plugin {name or '?'!r} raised in {hook_name}: {type(exc).__name__}: {exc}. "
                f"Fix: correct the plugin, or block it (HOOKQUEUE_DISABLE_PLUGINS={name or '...'})"
            ) from exc

    def queue_open(self, queue: Any) -> None:
        """Run ``hookqueue_queue_open``; a plugin's exception becomes a PluginError naming it."""
        self._lifecycle("hookqueue_queue_open", queue=queue)

    def queue_close(self, queue: Any) -> None:
        """Run ``hookqueue_queue_close``; a plugin's exception becomes a PluginError naming it."""
        self._lifecycle("hookqueue_queue_close", queue=queue)

    def worker_start(self, worker: Any) -> None:
        """Run ``hookqueue_worker_start``; a plugin's exception becomes a PluginError naming
        it."""
        self._lifecycle("hookqueue_worker_start", worker=worker)

    def worker_stop(self, worker: Any) -> None:
        """Run ``hookqueue_worker_stop``; a plugin's exception becomes a PluginError naming
        it."""
        self._lifecycle("hookqueue_worker_stop", worker=worker)

    # registration

    def _merge(self, hook_name: str, key: str) -> list[Any]:
        """Call a registration hook once (wrappers may filter what it returns), then merge the
        records, refusing a name contributed twice with both plugins named."""
        merged: list[Any] = []
        seen: set[str] = set()
        duplicates: set[str] = set()
        for batch in getattr(self._h, hook_name)():
            for record in batch or ():
                name = getattr(record, key)
                if name in seen:
                    duplicates.add(name)
                seen.add(name)
                merged.append(record)
        if duplicates:
            name = sorted(duplicates)[0]
            owners = self._contributors(hook_name, key, name)
            raise PluginError(
                f"{hook_name}: {key} {name!r} is contributed by "
                + " and ".join(f"plugin {o!r}" for o in owners)
                + ". Fix: block one of them (HOOKQUEUE_DISABLE_PLUGINS) or rename"
            )
        return merged

    def _contributors(self, hook_name: str, key: str, name: str) -> list[str]:
        """Which plugins contribute ``name`` (each plain implementation called alone,
        through pluggy, on this error path only)."""
        impls = [
            i
            for i in getattr(self._h, hook_name).get_hookimpls()
            if not (i.wrapper or i.hookwrapper)
        ]
        owners = []
        for impl in reversed(impls):
            alone = self.pm.subset_hook_caller(
                hook_name, remove_plugins=[i.plugin for i in impls if i is not impl]
            )
            records = [r for batch in alone() for r in (batch or ())]
            if any(getattr(r, key) == name for r in records):
                owners.append(impl.plugin_name)
        return owners

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
