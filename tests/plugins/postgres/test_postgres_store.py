"""What the PostgreSQL store promises beyond the store contract, on a real server: chosen by
URL through ``hookqueue_store``; never a password in a message; foreign and newer schemas
refused untouched; several schemas in one database; text PostgreSQL cannot hold; fork."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
from _services.pgurl import url_of

from hookqueue import Queue, TaskStatus, WorkerEngine
from hookqueue.core.clock import from_us
from hookqueue.core.errors import (
    DatabaseBusy,
    HookqueueError,
    NotAHookqueueDatabase,
    SchemaTooNew,
    StoreError,
    ValidationError,
)
from hookqueue.core.storage import Settlement
from hookqueue.plugins.postgres import PostgresStore, hookqueue_store
from hookqueue.plugins.postgres.schema import SCHEMA_VERSION


def test_a_postgresql_url_opens_the_postgres_store_through_the_hook(postgres_url: str) -> None:
    """``Queue("postgresql://...")`` (and ``postgres://``) gets a PostgresStore from the
    plugin's ``hookqueue_store``; a task goes in and is worked like on SQLite."""
    for url in (postgres_url, "postgres://" + postgres_url.split("://", 1)[1]):
        with Queue(url) as queue:
            assert isinstance(queue.db, PostgresStore)
            queue.handlers.register_handler("add", lambda t: t.payload["a"] + t.payload["b"])
            task = queue.enqueue("add", {"a": 2, "b": 3})
            WorkerEngine(queue, worker_id="w").run_until_idle()
            assert queue.get(task.id).result == 5
    assert hookqueue_store(location="tasks.db", options={}) is None
    assert hookqueue_store(location="sqlite:///tasks.db", options={}) is None


def test_hookqueue_db_and_the_cli_take_a_url(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``HOOKQUEUE_DB=postgresql://...`` is what ``Queue()`` opens; ``--db`` takes a URL."""
    from hookqueue.core.cli import main

    monkeypatch.setenv("HOOKQUEUE_DB", postgres_url)
    with Queue() as queue:
        assert isinstance(queue.db, PostgresStore)
        queue.enqueue("job", {"n": 1})
    monkeypatch.delenv("HOOKQUEUE_DB")
    assert main(["--db", postgres_url, "enqueue", "job", "--payload", '{"n": 2}']) in (0, None)
    assert main(["ls", "--db", postgres_url, "--json"]) in (0, None)
    out = capsys.readouterr().out
    assert '"n": 2' in out and '"n": 1' in out


def test_the_password_never_appears_in_repr_location_or_errors(postgres_tcp_url: str) -> None:
    """A URL's password is in no repr, location or error message — also when the server
    refuses the password, or the database does not exist."""
    password = postgres_tcp_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert password
    with Queue(postgres_tcp_url) as queue:
        assert password not in repr(queue) and password not in queue.db.location
        assert password not in repr(queue.db)
        queue.enqueue("job")
    wrong = postgres_tcp_url.replace(password, "not-" + password, 1)
    missing = postgres_tcp_url.rsplit("/", 1)[0] + "/no_such_database"
    for url in (wrong, missing):
        with pytest.raises(StoreError) as caught:
            Queue(url)
        text = str(caught.value)
        assert password not in text
        assert "postgresql://postgres@127.0.0.1" in text, text
        assert "Fix:" in text
    with pytest.raises(ValidationError) as refused:
        PostgresStore(postgres_tcp_url.replace("postgresql://", "mysql://"))
    assert password not in str(refused.value)


def test_a_schema_written_by_a_newer_hookqueue_is_refused_untouched(postgres_dsn: str) -> None:
    """``SchemaTooNew`` names the version and the fix; the schema is not modified."""
    with PostgresStore(postgres_dsn) as made:
        made.initialize_schema()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE hookqueue.meta SET value = %s WHERE key = 'schema_version'",
            [str(SCHEMA_VERSION + 1)],
        )
        before = conn.execute("SELECT key, value FROM hookqueue.meta ORDER BY key").fetchall()
    store = PostgresStore(postgres_dsn)
    try:
        with pytest.raises(SchemaTooNew, match="newer hookqueue.*Fix: upgrade"):
            store.initialize_schema()
        with pytest.raises(SchemaTooNew):
            store.counts()
    finally:
        store.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        after = conn.execute("SELECT key, value FROM hookqueue.meta ORDER BY key").fetchall()
    assert after == before


def _schema_of_version(conn: psycopg.Connection[Any], version: int) -> None:
    """Make schema ``hookqueue`` as a hookqueue of schema ``version`` made it (its first
    ``version`` migration steps), in the caller's transaction."""
    from hookqueue.plugins.postgres.schema import MIGRATIONS
    from hookqueue.plugins.postgres.statements import CREATE_SCHEMA, UPSERT_META, Statements

    old = Statements("hookqueue")
    conn.execute(old(CREATE_SCHEMA))
    for step in MIGRATIONS[:version]:
        conn.execute(old(step))
    conn.execute(old(UPSERT_META), {"version": str(version)})


def test_a_version_1_schema_migrates_forward_keeping_every_task(postgres_dsn: str) -> None:
    """A schema made by the first PostgreSQL store (version 1: tasks and workers only) is
    migrated in place on first use: its tasks stay as they were, and the history, paused
    queues and schedules work on them."""
    from hookqueue.contrib.contracts.store import make_schedule

    with psycopg.connect(postgres_dsn, autocommit=True) as conn, conn.transaction():
        _schema_of_version(conn, 1)
        conn.execute(
            "INSERT INTO hookqueue.tasks (queue, task_type, payload, priority, status, "
            "attempts, max_attempts, run_after, created_at, locked_by, lease_expires_at, "
            "started_at) VALUES ('default', 'old', '{\"n\": 1}', 100, 'running', 1, 3, 10, 10, "
            "'w1', 99999999, 10), ('mail', 'old', '{}', 100, 'queued', 0, 1, 10, 10, NULL, "
            "NULL, NULL)"
        )
    store = PostgresStore(postgres_dsn)
    try:
        assert store.schema_version() == 1
        running, queued = store.list()
        assert store.schema_version() == SCHEMA_VERSION
        assert (running.status, running.payload, running.locked_by) == (
            TaskStatus.RUNNING,
            {"n": 1},
            "w1",
        )
        store.settle(
            "w1", [Settlement(task_id=running.id, kind="retry", error="e", run_after_us=20)], 20
        )
        assert [f.error for f in store.task_failures(running.id)] == ["e"]
        assert store.pause_queue("mail", 20) and store.queued_queue_names() == ["default", "mail"]
        assert store.upsert_schedules([make_schedule("s", 30)], 20) == ["created"]
        [(new, _)] = store.insert([_row()], 30)
        assert new > queued.id and store.check() == []
    finally:
        store.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        meta = dict(conn.execute("SELECT key, value FROM hookqueue.meta").fetchall())
    assert meta == {"application": "hookqueue", "schema_version": str(SCHEMA_VERSION)}


def test_a_version_2_schema_migrates_forward_and_its_tasks_can_be_waited_for(
    postgres_dsn: str,
) -> None:
    """A schema of version 2 (before waits were registered) gains ``task_waits`` and
    ``notify_waited`` on first use; its running task, once watched, wakes the watcher when
    it is settled."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn, conn.transaction():
        _schema_of_version(conn, 2)
        conn.execute(
            "INSERT INTO hookqueue.tasks (queue, task_type, payload, priority, status, "
            "attempts, max_attempts, run_after, created_at, locked_by, lease_expires_at, "
            "started_at) VALUES ('default', 'old', '{}', 100, 'running', 1, 3, 10, 10, "
            "'w1', 99999999, 10)"
        )
    store = PostgresStore(postgres_dsn)
    try:
        assert store.schema_version() == 2
        [running] = store.list()
        assert store.schema_version() == SCHEMA_VERSION
        watcher = store.watch_changes()
        try:
            watcher.watch_tasks([running.id])
            while watcher.wait(0.05):
                pass
            store.settle("w1", [Settlement(task_id=running.id, kind="complete")], 20)
            assert watcher.wait(10.0) is True
        finally:
            watcher.close()
        assert store.get(running.id).status is TaskStatus.COMPLETED and store.check() == []
    finally:
        store.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        persistence = conn.execute(
            "SELECT relpersistence FROM pg_class WHERE oid = 'hookqueue.task_waits'::regclass"
        ).fetchone()
    assert persistence == ("u",), "task_waits is UNLOGGED"


def test_a_version_3_schema_migrates_forward_and_its_queue_can_be_limited(
    postgres_dsn: str,
) -> None:
    """A schema of version 3 (before limits) gains the limit tables and the bucket function
    on first use: a rule is stored, its running task (there from before) counts against it,
    and a lease keeps it; a weighted fair rule is stored and listed as set."""
    from hookqueue.core.models import LeasePlan, LimitRule

    with psycopg.connect(postgres_dsn, autocommit=True) as conn, conn.transaction():
        _schema_of_version(conn, 3)
        conn.execute(
            "INSERT INTO hookqueue.tasks (queue, task_type, payload, priority, status, "
            "attempts, max_attempts, run_after, created_at, locked_by, lease_expires_at, "
            "started_at) VALUES ('default', 'old', '{\"tenant\": \"a\"}', 100, 'running', 1, "
            "3, 10, 10, 'w1', 99999999, 10), ('default', 'old', '{\"tenant\": \"a\"}', 100, "
            "'queued', 0, 3, 10, 10, NULL, NULL, NULL), ('default', 'old', "
            "'{\"tenant\": \"b\"}', 100, 'queued', 0, 3, 10, 10, NULL, NULL, NULL)"
        )
    store = PostgresStore(postgres_dsn)
    try:
        assert store.schema_version() == 3
        rule = LimitRule(name="tenant", concurrency=1, partition_by="tenant")
        assert store.set_limit(rule, 20) == "created"
        assert store.schema_version() == SCHEMA_VERSION
        leased, _ = store.lease(
            worker_id="w2",
            queues=["default"],
            limit=5,
            now_us=20,
            lease_us=1_000_000,
            plan=LeasePlan(stored_limits=True),
            decide_expired=lambda t: (None, ""),
        )
        assert [t.payload for t in leased] == [{"tenant": "b"}]
        assert store.list_limits() == [rule] and store.check() == []
        # The v4 step's limits table stores a fair rule's weights too.
        weighted = LimitRule(name="w", fair=True, partition_by="tenant", weights={"a": 2, 5: 3})
        assert store.set_limit(weighted, 30) == "created"
        assert store.list_limits() == [rule, weighted]
    finally:
        store.close()


def test_a_version_4_schema_migrates_forward_and_its_key_functions_run_under_parallel_plans(
    postgres_parallel_dsn: str,
) -> None:
    """A schema of version 4 declared ``payload_part`` and ``limit_bucket`` PARALLEL SAFE,
    though each catches a damaged payload in an exception block, which PostgreSQL before 17
    refuses in a parallel plan; where parallel plans are forced, a query calling one failed.
    On first use they are marked PARALLEL UNSAFE: the same query, a fair lease over a
    damaged payload (ranked again by ``limit_bucket``) and a lease whose window is drawn
    per partition (``payload_part``) run."""
    from hookqueue.contrib.contracts.store import make_row
    from hookqueue.core.models import LeasePlan, LimitRule

    dsn = postgres_parallel_dsn
    bucketing = (
        "SELECT count(*) FROM hookqueue.tasks WHERE hookqueue.limit_bucket(payload, 'tenant') = ''"
    )
    marks = (
        "SELECT proname, proparallel FROM pg_proc "
        "WHERE pronamespace = 'hookqueue'::regnamespace "
        "AND proname IN ('payload_part', 'limit_bucket') ORDER BY 1"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            _schema_of_version(conn, 4)
            conn.execute(
                "INSERT INTO hookqueue.tasks (queue, task_type, payload, priority, status, "
                "attempts, max_attempts, run_after, created_at) SELECT 'default', 'old', "
                "p, 100, 'queued', 0, 3, 10, 10 FROM unnest(%s::text[]) AS p",
                [['{"tenant": "a"}'] * 3 + ['{"tenant": "b"}', "{not json"]],
            )
        assert conn.execute(marks).fetchall() == [("limit_bucket", "s"), ("payload_part", "s")]
        if conn.info.server_version < 170000:
            with pytest.raises(psycopg.Error, match="cannot start subtransactions"):
                conn.execute(bucketing)
    store = PostgresStore(dsn)

    def tenants(plan: LeasePlan, limit: int, now_us: int) -> list[str]:
        leased, _ = store.lease(
            worker_id="w",
            queues=["default"],
            limit=limit,
            now_us=now_us,
            lease_us=1_000_000,
            plan=plan,
            decide_expired=lambda t: (None, ""),
        )
        return [t.payload["tenant"] for t in leased]

    try:
        assert store.schema_version() == 4
        fair = LeasePlan(limits=(LimitRule(name="f", fair=True, partition_by="tenant"),))
        assert tenants(fair, 10, 20) == ["a", "b", "a", "a"]
        assert store.schema_version() == SCHEMA_VERSION == 5
        store.insert([make_row(30, payload_json=json.dumps({"tenant": x})) for x in "ccd"], 30)
        grouped = LeasePlan(
            window=8,
            rerank=lambda window, limit: list({c.partition: c.id for c in window[::-1]}.values()),
            partition_key="tenant",
            group_by="partition",
        )
        assert sorted(tenants(grouped, 2, 30)) == ["c", "d"]
        assert store.check() == []
    finally:
        store.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(marks).fetchall() == [("limit_bucket", "u"), ("payload_part", "u")]
        assert conn.execute(bucketing).fetchone() == (1,)  # the damaged payload's


def test_a_foreign_schema_is_refused_untouched(postgres_dsn: str) -> None:
    """A schema of that name holding someone else's tables is refused, naming the fix; a
    ``meta`` table that is not hookqueue's too."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app")
        conn.execute("CREATE TABLE app.orders (id int)")
        conn.execute("CREATE SCHEMA other")
        conn.execute("CREATE TABLE other.meta (key text, value text)")
        conn.execute("INSERT INTO other.meta VALUES ('application', 'something-else')")
    for schema in ("app", "other"):
        with PostgresStore(postgres_dsn, schema=schema) as store:
            with pytest.raises(NotAHookqueueDatabase, match="not hookqueue's.*Fix"):
                store.initialize_schema()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('app', 'other') ORDER BY 1, 2"
        ).fetchall()
    assert tables == [("app", "orders"), ("other", "meta")]


def test_create_false_refuses_a_database_without_a_queue(postgres_url: str) -> None:
    """Tools that only read (``create=False``) do not create a schema at a mistyped URL."""
    with pytest.raises(StoreError, match="no hookqueue schema"):
        Queue(postgres_url, create=False)
    Queue(postgres_url).close()
    Queue(postgres_url, create=False).close()


def test_two_schemas_in_one_database_are_two_queues(postgres_url: str) -> None:
    """The URL's ``schema`` parameter picks the schema; each is a queue of its own, and their
    wake-ups do not cross."""
    with Queue(postgres_url + "&schema=alpha") as a, Queue(postgres_url + "&schema=beta") as b:
        assert a.db.location.endswith("schema=alpha")
        watcher = b.db.watch_changes()
        try:
            while watcher.wait(0.05):
                pass
            a.enqueue("job")
            assert watcher.wait(0.3) is False
            b.enqueue("job")
            assert watcher.wait(5.0) is True
        finally:
            watcher.close()
        assert a.counts()["queued"] == b.counts()["queued"] == 1


def test_error_messages_with_nul_characters_are_stored(postgres_dsn: str) -> None:
    """PostgreSQL's text cannot hold NUL; an exception message with one (a handler's error)
    is stored with it escaped instead of failing the whole settlement."""
    with PostgresStore(postgres_dsn) as store:
        [(tid, _)] = store.insert([_row()], 1_000_000, claim=("w", 2_000_000))
        [(kind, task)] = store.settle(
            "w", [Settlement(task_id=tid, kind="fail", error="bad\x00byte")], 1_500_000
        )
        assert kind == "failed" and task.error_message == "bad\\x00byte"
        with pytest.raises(StoreError, match="NUL character"):
            store.insert([_row(task_type="a\x00b")], 1_000_000)


def test_a_lock_held_past_busy_timeout_is_database_busy(postgres_dsn: str) -> None:
    """A transaction holding the table longer than ``busy_timeout`` makes a write fail with
    DatabaseBusy (nothing written), not hang."""
    with PostgresStore(postgres_dsn, busy_timeout=0.3) as store:
        store.initialize_schema()
        with psycopg.connect(postgres_dsn) as locker:
            locker.execute("LOCK TABLE hookqueue.tasks IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(DatabaseBusy, match="busy_timeout=0.3s.*Fix"):
                store.insert([_row()], 1_000_000)
            locker.rollback()
        assert store.counts()["queued"] == 0


def test_a_forked_child_opens_its_own_connections(postgres_dsn: str) -> None:
    """After ``fork()``, the child's calls go through a pool of its own; the parent's
    connections keep working (the child never closes them)."""
    store = PostgresStore(postgres_dsn)
    try:
        [(first, _)] = store.insert([_row()], 1_000_000)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                [(tid, _)] = store.insert([_row()], 1_000_000)
                code = 0 if store.get(tid).id == tid else 3
                store.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.get(first).id == first
        assert store.counts()["queued"] == 2
    finally:
        store.close()


def test_the_plugin_is_listed_unavailable_without_psycopg(tmp_path: Path) -> None:
    """Without psycopg, ``hookqueue plugins`` lists the plugin as unavailable with the
    install command (a blocked import stands in for a missing package)."""
    import subprocess

    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('psycopg', 'psycopg_pool'):\n"
        "            raise ImportError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "hookqueue", "plugins", "--db", str(tmp_path / "q.db")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("postgres"))
    assert "unavailable" in line and "pip install 'hookqueue[postgres]'" in line


def test_the_store_refuses_bad_arguments(postgres_dsn: str) -> None:
    """Bad options are ValidationErrors naming the field."""
    for kwargs, field in (
        ({"durability": "fast"}, "durability"),
        ({"busy_timeout": 0}, "busy_timeout"),
        ({"pool_max": 0}, "pool_max"),
        ({"schema": ""}, "schema"),
    ):
        with pytest.raises(ValidationError, match=field):
            PostgresStore(postgres_dsn, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="conflicts"):
        PostgresStore(url_of(postgres_dsn) + "&schema=a", schema="b")


def _row(**changes: object):  # type: ignore[no-untyped-def]
    from hookqueue.contrib.contracts.store import make_row

    return make_row(1_000_000, **changes)


def test_no_value_is_ever_formatted_into_a_statement(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every operation, driven with a marker in every value it takes (queue, type, key,
    worker, payload, headers, error, traceback, result, partition key, filter, schedule;
    schema aside), sends statements whose text never holds the marker: values travel as
    bound parameters only."""
    from hookqueue.contrib.contracts.store import make_row, make_schedule
    from hookqueue.core.models import LeasePlan, SortKey, TaskFilter, WorkerInfo
    from hookqueue.core.storage import Settlement, TickFire

    mark = "Xq7mark'\"; --"
    sent: list[str] = []
    execute = psycopg.Cursor.execute

    def spy(self: psycopg.Cursor[Any], query: Any, params: Any = None, **kw: Any) -> Any:
        sent.append(query if isinstance(query, str) else query.as_string(self))
        return execute(self, query, params, **kw)

    monkeypatch.setattr(psycopg.Cursor, "execute", spy)
    now = 1_000_000_000
    row = make_row(
        now,
        queue=f"q{mark}",
        task_type=f"t{mark}",
        payload_json=json.dumps({"tenant": mark}),
        headers_json=json.dumps({"h": mark}),
        max_attempts=3,
    )
    with PostgresStore(postgres_dsn) as store:
        worker = f"w{mark}"
        [(claimed, _)] = store.insert([row], now, claim=(worker, now + 10))
        store.insert([attrs.evolve(row, idempotency_key=f"k{mark}")] * 2, now, key_window_us=5)
        store.insert_one(row, now)
        plan = LeasePlan(
            order=(SortKey.AGED_PRIORITY,),
            rerank=lambda c, n: [x.id for x in c][:n],
            partition_key=f"tenant{mark}",
        )
        for queues in ([row.queue], [row.queue, f"other{mark}"]):
            store.lease(
                worker_id=worker, queues=queues, limit=1, now_us=now, lease_us=10,
                plan=plan, decide_expired=lambda t: (now, f"expired{mark}"),
                task_types=[row.task_type],
            )  # fmt: skip
        leased, _ = store.lease(
            worker_id=worker, queues=[row.queue], limit=5, now_us=now, lease_us=10,
            plan=LeasePlan(), decide_expired=lambda t: (now, f"expired{mark}"),
            settlements=[Settlement(task_id=claimed, kind="retry", error=f"e{mark}", run_after_us=now)],
        )  # fmt: skip
        store.renew(worker, [t.id for t in leased], now, 10)
        outcomes = [
            Settlement(
                task_id=t.id, kind=k, error=f"e{mark}", result_json=json.dumps(mark), traceback=mark
            )  # type: ignore[arg-type]
            for t, k in zip(leased, ["complete", "fail", "cancelled", "release"], strict=False)
        ]
        store.settle(worker, outcomes, now)
        store.lease(
            worker_id=f"v{mark}", queues=[row.queue], limit=0, now_us=now + 100, lease_us=10,
            plan=LeasePlan(), decide_expired=lambda t: (None, f"gone{mark}"),
        )  # fmt: skip
        for task in store.list(limit=100):
            with contextlib.suppress(HookqueueError):
                store.cancel(task.id, now)
            with contextlib.suppress(HookqueueError):
                store.requeue(task.id, now)
        store.register_worker(
            WorkerInfo(
                worker_id=worker, hostname=f"h{mark}", pid=1, queues=(row.queue,), concurrency=1,
                started_at=from_us(now), heartbeat_at=from_us(now),
            )
        )  # fmt: skip
        store.worker_stopped(worker, now)
        store.find_by_key(f"k{mark}")
        store.list(task_type=row.task_type, queue=row.queue, statuses=list(TaskStatus))
        store.counts(by_type=True)
        store.queue_gauges(now)
        store.has_work([row.queue], now, [row.task_type])
        store.next_wakeup_delay_us([row.queue], now)
        store.due_queue_names(now)
        store.pause_queue(row.queue, now)
        store.has_work([row.queue, f"other{mark}"], now)
        store.paused_queues()
        store.resume_queue(row.queue)
        store.queued_queue_names()
        flt = TaskFilter(
            statuses=list(TaskStatus), task_types=row.task_type, queues=row.queue,
            error_contains=mark, created_after=from_us(0), created_before=from_us(now + 1),
            finished_before=from_us(now + 1), max_id=10**6,
        )  # fmt: skip
        store.list_matching(flt, after_id=1, newest_first=True)
        store.count_matching(flt)
        store.finished_buckets(0, 10)
        for task in store.list(limit=100):
            store.task_failures(task.id)
        store.cancel_matching(TaskFilter(queues=row.queue), now, f"stop{mark}")
        store.requeue_matching(TaskFilter(task_types=row.task_type), now)
        schedule = make_schedule(
            f"s{mark}", now, definition_json=json.dumps(mark), timing=f"every{mark}",
            source=f"src{mark}",
        )  # fmt: skip
        store.upsert_schedules([schedule], now)
        store.upsert_schedules([attrs.evolve(schedule, timing=mark)], now)
        [sched] = store.list_schedules(names=[schedule.name])
        store.list_schedules(due_by_us=now)
        store.fire_ticks(
            [
                TickFire(
                    schedule=sched.name, expect_next_tick_us=now, expect_revision=sched.revision,
                    ticks=((now, row),), next_tick_us=now + 1,
                )
            ],
            now,
        )  # fmt: skip
        store.set_schedule_paused(sched.name, True, now)
        store.next_schedule_tick_us()
        store.delete_schedule(sched.name)
        store.delete_matching(TaskFilter(queues=row.queue, statuses="queued"))
        rows = store.export_rows()
        store.prune(older_than_us=now + 10**9, statuses=[TaskStatus.COMPLETED])
        store.check()
        store.watch_changes().close()
    with PostgresStore(postgres_dsn, schema="copy") as other:
        other.import_rows(rows)
    assert len(sent) > 40
    assert [q for q in sent if "Xq7mark" in q] == []


@pytest.mark.parametrize(("durability", "expected"), [("full", "on"), ("normal", "off")])
def test_durability_maps_to_synchronous_commit(
    postgres_dsn: str, durability: str, expected: str
) -> None:
    """``full`` commits wait for the WAL flush (``synchronous_commit = on``), ``normal`` does
    not (``off``) — on every pooled connection of the store."""
    with PostgresStore(postgres_dsn, durability=durability, pool_min=2) as store:  # type: ignore[arg-type]
        store.initialize_schema()
        with store._cx.read() as conn:
            row = conn.execute("SHOW synchronous_commit").fetchone()
    assert row == (expected,)


def test_a_lease_passes_over_rows_another_transaction_holds(postgres_dsn: str) -> None:
    """``FOR UPDATE SKIP LOCKED``: while another transaction holds the first task's row, a
    lease takes the next ones at once instead of waiting for it."""
    from hookqueue.contrib.contracts.store import FIFO, make_row

    with PostgresStore(postgres_dsn, busy_timeout=5.0) as store:
        ids = [tid for tid, _ in store.insert([make_row(1_000_000) for _ in range(3)], 1_000_000)]
        with psycopg.connect(postgres_dsn) as holder:
            holder.execute("SELECT 1 FROM hookqueue.tasks WHERE id = %s FOR UPDATE", [ids[0]])
            started = time.monotonic()
            leased, _ = store.lease(
                worker_id="w", queues=["default"], limit=3, now_us=1_000_000, lease_us=10**7,
                plan=FIFO, decide_expired=lambda t: (None, ""),
            )  # fmt: skip
            assert time.monotonic() - started < 2.0
            holder.rollback()
        assert [t.id for t in leased] == ids[1:]
        assert store.get(ids[0]).status is TaskStatus.QUEUED


def test_a_queue_on_a_file_does_not_import_psycopg(tmp_path: Path) -> None:
    """With the extra installed, psycopg is imported only when a postgresql:// location is
    opened: worker processes on an SQLite file do not carry it (about 13 MB each)."""
    import subprocess

    probe = (
        "import sys\n"
        "from hookqueue import Queue, WorkerEngine\n"
        f"q = Queue({str(tmp_path / 'q.db')!r})\n"
        "WorkerEngine(q).run_until_idle()\n"
        "from hookqueue.core.plugins import plugin_statuses\n"
        "assert any(s.name == 'postgres' and s.state == 'active' for s in plugin_statuses(q.pm))\n"
        "print('psycopg' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
