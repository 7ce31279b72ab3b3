"""The SQLite store against the store contract (:mod:`hookqueue.contrib.contracts.store`).

Where the store and the written contract (``hookqueue/core/storage.py`` and the records it
names) disagree, the test is listed in ``known_failures`` with the reason: it runs as
``xfail(strict=True)``, so whoever fixes the store (or changes the contract) removes the entry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from hookqueue import QueueDatabase
from hookqueue.contrib.contracts.store import StoreContract
from hookqueue.core.storage import TaskStore

_PARTITION = (
    "QueueDatabase reads Candidate.partition with SQLite's json_extract, which answers an "
    "object or a list as JSON text and true as 1, not the payload's value "
    "(LeasePlan.partition_key: 'the value at partition_key in the payload')"
)


class TestSqliteStore(StoreContract):
    """The contract, on a new SQLite file per test."""

    known_failures = {
        "test_run_after_zero_means_the_insert_instant": (
            "InsertRow.run_after_us: '0 means the insert's now_us', but QueueDatabase.insert "
            "and insert_one store 0 as it is (run_after = 1970-01-01, oldest_due_us = 0, and the "
            "task sorts before every other in FIFO/DUE order); Queue always passes now_us"
        ),
        "test_an_out_of_range_value_raises_a_hookqueue_error": (
            "a value beyond 64 bits escapes as apsw's OverflowError ('int too big to convert'), "
            "not a StoreError (storage.py: 'never its driver's exceptions'); the row is rolled "
            "back, and Queue validates its integers, so only direct store users meet it"
        ),
        "test_claim_answers_a_repeated_key_as_stored": (
            "QueueDatabase._insert reads the existing task of a key repeated in a claimed batch "
            "before it claims the batch, so it answers that task as queued (attempts 0, no "
            "lease) while the committed row is running"
        ),
        "test_ids_are_never_reused_after_a_prune": (
            "tasks.id is INTEGER PRIMARY KEY without AUTOINCREMENT: after the newest task is "
            "pruned, SQLite gives its id to the next task (Task.id: 'unique in one database, "
            "increasing in enqueue order'; an old id then names a different task)"
        ),
        "test_a_delayed_task_waits_for_its_run_after_whatever_was_enqueued_since": (
            "QueueDatabase._due_us compares due times with max(now_us, newest created_at), a "
            "guard against the wall clock stepping back: has_work, next_wakeup_delay_us and "
            "lease then treat tasks as due before their run_after. storage.py says time comes "
            "from the caller and does not mention it"
        ),
        "test_rerank_window_holds_at_most_window_candidates": (
            "QueueDatabase offers max(window, limit) candidates; LeasePlan.window and "
            "docs/scheduling.md say rerank receives up to `window`"
        ),
        "test_rerank_choosing_an_id_twice_leases_it_once": (
            "QueueDatabase._lease_rows keeps duplicate ids from rerank: the task is leased "
            "once (attempts 1) but returned twice, so one worker would run it twice at once"
        ),
        "test_candidate_partition_is_the_payload_value[object]": _PARTITION,
        "test_candidate_partition_is_the_payload_value[list]": _PARTITION,
        "test_candidate_partition_is_the_payload_value[true]": _PARTITION,
        "test_a_closed_store_refuses_every_call[watch_changes]": (
            "watch_changes() after close() returns a CommitWatcher (its first wait() raises "
            "StoreError); storage.py: after close, 'later calls raise StoreError'"
        ),
        "test_watcher_sees_a_commit_made_before_its_first_wait": (
            "CommitWatcher reads its first data_version in its first wait(), not when it is "
            "made, so a commit between watch_changes() and the first wait() is missed for that "
            "whole wait (ChangeWatcher.wait: 'since the previous call (or since the watcher "
            "was made)'; 'must not miss one for longer than the timeout')"
        ),
    }

    def make_store(self, tmp_path: Path) -> TaskStore:
        """A new SQLite file in the test's directory (not yet created: the store creates it)."""
        return QueueDatabase(tmp_path / "q.db", durability="normal")

    def store_opener(self, store: TaskStore) -> Callable[[], TaskStore]:
        """Another process opens the same file."""
        return functools.partial(QueueDatabase, store.location, durability="normal")
