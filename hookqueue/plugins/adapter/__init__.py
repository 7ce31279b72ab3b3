"""The ``BackgroundTaskManager``-compatible adapter (see docs/migration.md).

Public names::

    from hookqueue.plugins.adapter import (
        QueuedTaskManager, BackgroundTaskManager, Run, RunStatus, RunRegistry,
        create_queued_task_manager, create_task_manager, get_or_create_queue_database,
        validate_queue_integration,
    )

The package is also the ``adapter`` plugin (entry point ``hookqueue.adapter``): its one hook,
``hookqueue_retry``, makes workers rerun runs whose process died (see :mod:`.plugin`).
"""

from __future__ import annotations

from .background import BackgroundTaskManager
from .integration import (
    create_queued_task_manager,
    create_task_manager,
    get_or_create_queue_database,
    use_queue_system,
    validate_queue_integration,
)
from .models import NoRunningLoop, Run, RunAlreadyActive, RunHistoryError, RunStatus
from .plugin import ADAPTER_HEADER, hookqueue_retry, rerun_now
from .queued import QueuedTaskManager, RecordError
from .registry import RunRegistry

__all__ = [
    "ADAPTER_HEADER",
    "BackgroundTaskManager",
    "NoRunningLoop",
    "QueuedTaskManager",
    "RecordError",
    "Run",
    "RunAlreadyActive",
    "RunHistoryError",
    "RunRegistry",
    "RunStatus",
    "create_queued_task_manager",
    "create_task_manager",
    "get_or_create_queue_database",
    "hookqueue_retry",
    "rerun_now",
    "use_queue_system",
    "validate_queue_integration",
]
