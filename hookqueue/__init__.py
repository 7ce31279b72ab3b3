"""hookqueue: a persistent task queue — a small core plus pluggy plugins, on embedded SQLite.

The public names::

    from hookqueue import Queue, QueueDatabase, WorkerEngine, Task, TaskStatus
    from hookqueue import TaskHandlerRegistry, hookimpl
"""

from __future__ import annotations

from .core.clock import FakeClock, SystemClock
from .core.errors import (
    DatabaseBusy,
    DatabaseFull,
    HandlerAlreadyRegistered,
    HandlerNotFound,
    HookqueueError,
    InvalidTransition,
    NotAHookqueueDatabase,
    PluginError,
    RetryLater,
    SchemaTooNew,
    StoreError,
    TaskCancelled,
    TaskDidNotComplete,
    TaskFailed,
    TaskNotFound,
    TaskWasCancelled,
    ValidationError,
    WaitTimeout,
    WorkerError,
)
from .core.execution import Execution, current_execution
from .core.handlers import TaskHandlerRegistry
from .core.hookspecs import hookimpl
from .core.models import (
    AttemptFailure,
    EventKind,
    Failure,
    HandlerSpec,
    LeasePlan,
    LeaseRequest,
    NewTask,
    RetryDecision,
    SortKey,
    Task,
    TaskEvent,
    TaskFilter,
    TaskStatus,
)
from .core.queue import Queue
from .core.store import QueueDatabase
from .core.waiting import TaskHandle
from .core.worker import WorkerEngine

__version__ = "0.2.0"

__all__ = [
    "AttemptFailure",
    "DatabaseBusy",
    "DatabaseFull",
    "EventKind",
    "Execution",
    "Failure",
    "FakeClock",
    "HandlerAlreadyRegistered",
    "HandlerNotFound",
    "HandlerSpec",
    "HookqueueError",
    "InvalidTransition",
    "LeasePlan",
    "LeaseRequest",
    "NewTask",
    "NotAHookqueueDatabase",
    "PluginError",
    "Queue",
    "QueueDatabase",
    "RetryDecision",
    "RetryLater",
    "SchemaTooNew",
    "SortKey",
    "StoreError",
    "SystemClock",
    "Task",
    "TaskCancelled",
    "TaskDidNotComplete",
    "TaskEvent",
    "TaskFailed",
    "TaskFilter",
    "TaskHandle",
    "TaskHandlerRegistry",
    "TaskNotFound",
    "TaskStatus",
    "TaskWasCancelled",
    "ValidationError",
    "WaitTimeout",
    "WorkerEngine",
    "WorkerError",
    "__version__",
    "current_execution",
    "hookimpl",
]
