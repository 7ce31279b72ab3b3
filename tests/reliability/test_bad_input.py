"""Bad and hostile input: generated payloads, edge numbers, SQL-looking names, huge payloads.

Anything JSON can hold round-trips exactly; anything else is refused with a ValidationError
naming the field and the fix, and nothing is written. Names that look like SQL are only
data: every statement binds its values.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookqueue import FakeClock, Queue, TaskStatus, ValidationError, WorkerEngine
from hookqueue.core.queue import MAX_PAYLOAD_BYTES

from . import _faults
from .conftest import FaultRecord

SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Every JSON value: null, booleans, integers of any size up to 4300 digits (Python's
#: str-conversion limit), finite floats, any text without lone surrogates, arrays, objects.
JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(), children, max_size=6)
    ),
    max_leaves=40,
)


def typed(value: Any) -> Any:
    """``value`` with every scalar tagged by its type, so 1 and 1.0 and True differ."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [typed(v) for v in value]
    if isinstance(value, float) and value == 0.0:
        return ("float", math.copysign(1.0, value))
    return (type(value).__name__, value)


@pytest.fixture
def q(db_path: Path, clock: FakeClock) -> Iterator[Queue]:
    """A core queue on a fake clock."""
    queue = Queue(db_path, load_entrypoints=False, clock=clock, durability="normal")
    yield queue
    queue.close()


def _total(q: Queue) -> int:
    return sum(q.counts().values())


def test_generated_payloads_round_trip(q: Queue, fault: FaultRecord) -> None:
    """Hypothesis-generated JSON values — nested lists and objects, huge and negative
    integers, float extremes, any Unicode text — come back from the database exactly, with
    their types, through enqueue and enqueue_many."""
    fault.describe("Generated payloads (hypothesis): nesting, Unicode, edge numbers")

    @SETTINGS
    @given(payload=JSON_VALUES, other=JSON_VALUES)
    def check(payload: Any, other: Any) -> None:
        fault.inject()
        task = q.enqueue("job", payload)
        assert typed(q.get(task.id).payload) == typed(payload)
        a, b = q.enqueue_many(
            [{"task_type": "job", "payload": other}, {"task_type": "job", "payload": payload}]
        )
        assert typed(q.get(a.id).payload) == typed(other)
        assert typed(q.get(b.id).payload) == typed(payload)

    check()
    fault.figure("payloads", fault.injected * 3)


def test_generated_payloads_survive_a_worker(
    db_path: Path, clock: FakeClock, fault: FaultRecord
) -> None:
    """A handler receives the generated payload exactly as enqueued and its return value
    (the same JSON) is stored as the result exactly."""
    fault.describe("Generated payloads (hypothesis) through a worker and back as results")
    with Queue(db_path, load_entrypoints=False, clock=clock, durability="normal") as q:
        seen: list[Any] = []

        def echo(task: Any) -> Any:
            seen.append(task.payload)
            return task.payload

        q.handlers.register_handler("echo", echo)

        @settings(SETTINGS, max_examples=30)
        @given(payload=JSON_VALUES)
        def check(payload: Any) -> None:
            fault.inject()
            seen.clear()
            task = q.enqueue("echo", payload)
            WorkerEngine(q, worker_id="w", concurrency=1).run_until_idle()
            done = q.get(task.id)
            assert done.status is TaskStatus.COMPLETED
            assert [typed(p) for p in seen] == [typed(payload)]
            assert typed(done.result) == typed(payload)

        check()


EDGE_NUMBERS = [
    0,
    -0.0,
    1,
    -1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**63) - 1,
    2**64,
    10**300,
    10**4000,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    0.1 + 0.2,
    1e16,
    123456789.123456789,
]


def test_edge_numbers_round_trip(q: Queue, fault: FaultRecord) -> None:
    """Integers beyond 64 bits (up to 4000 digits), the smallest subnormal, the largest
    float, negative zero and inexact decimals round-trip bit for bit."""
    fault.describe("Numbers at the edges (64-bit bounds, bigints, subnormals, -0.0)")
    for number in EDGE_NUMBERS:
        task = q.enqueue("job", {"n": number, "list": [number]})
        fault.inject()
        assert typed(q.get(task.id).payload) == typed({"n": number, "list": [number]})
    fault.figure("values", len(EDGE_NUMBERS))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_numbers_refused(value: float, q: Queue, fault: FaultRecord) -> None:
    """NaN and infinities, which JSON cannot hold, are refused with a ValidationError naming
    the payload; nothing is written."""
    fault.describe(f"Non-finite number in the payload ({value})")
    fault.inject()
    with pytest.raises(ValidationError) as info:
        q.enqueue("job", {"x": [1, value]})
    assert info.value.field == "payload"
    assert _total(q) == 0


def _bad(field: str, value: Any, label: str, known_problem: str | None = None) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=known_problem)] if known_problem else []
    return pytest.param(field, value, id=label, marks=marks)


BAD_VALUES: list[Any] = [
    _bad(
        "payload",
        {"a": 10**5000},
        "int-with-5000-digits",
    ),
    _bad("payload", "\ud800", "lone-surrogate-in-payload"),
    _bad("payload", {"\udc00": 1}, "lone-surrogate-in-payload-key"),
    _bad("headers", {"h": "\ud800"}, "lone-surrogate-in-headers"),
    _bad("task_type", "job\ud800", "lone-surrogate-in-task-type"),
    _bad("idempotency_key", "k\ud800", "lone-surrogate-in-key"),
    _bad("queue", "q\ud800", "lone-surrogate-in-queue"),
    _bad(
        "payload",
        "nested",
        "nesting-100000-deep",
    ),
    _bad("delay", 1e300, "delay-1e300-seconds"),
    _bad("delay", timedelta.max, "delay-timedelta-max"),
    _bad("payload", {1, 2, 3}, "set-payload"),
    _bad("payload", b"\x80pickle?", "bytes-payload"),
    _bad("payload", object(), "object-payload"),
    _bad("payload", {"when": datetime(2030, 1, 1, tzinfo=UTC)}, "datetime-in-payload"),
    _bad("task_type", b"job", "bytes-task-type"),
    _bad("task_type", "", "empty-task-type"),
    _bad("task_type", "x" * 201, "201-char-task-type"),
    _bad("priority", "1", "str-priority"),
    _bad("priority", 2**64, "priority-over-64-bits"),
    _bad("priority", True, "bool-priority"),
    _bad("max_attempts", 0, "zero-max-attempts"),
    _bad("delay", -1, "negative-delay"),
    _bad("delay", math.nan, "nan-delay"),
    _bad("run_after", datetime(2030, 1, 1), "naive-run-after"),
    _bad("idempotency_key", "", "empty-key"),
    _bad("idempotency_key", "k" * 501, "501-char-key"),
    _bad("queue", "", "empty-queue"),
    _bad("timeout", 0, "zero-timeout"),
    _bad("timeout", math.inf, "infinite-timeout"),
    _bad("headers", {1: "not a str key"}, "non-str-header-key"),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_value_refused_with_a_clear_error(
    field: str, value: Any, request: pytest.FixtureRequest, q: Queue, fault: FaultRecord
) -> None:
    """A value hookqueue cannot store faithfully raises ValidationError naming the field,
    with a fix in the message; nothing is written, and enqueue_many names the index too."""
    fault.describe(f"Bad {field}: {request.node.callspec.id}")
    if isinstance(value, str) and value == "nested":
        for _ in range(100_000):
            value = [value]
    kwargs: dict[str, Any] = {"task_type": "job", field: value}
    fault.inject()
    with pytest.raises(ValidationError) as info:
        q.enqueue(**kwargs)
    assert info.value.field == field
    assert "Fix:" in str(info.value)
    fault.inject()
    with pytest.raises(ValidationError) as many:
        q.enqueue_many([{"task_type": "job"}, {"task_type": "job"}, kwargs])
    assert many.value.field == f"tasks[2].{field}"
    assert _total(q) == 0


#: Aware datetimes whose wall time is a valid datetime but whose UTC instant is not.
OUT_OF_RANGE_RUN_AFTER = {
    "datetime.min at +14:00": datetime.min.replace(tzinfo=timezone(timedelta(hours=14))),
    "9999-12-31 23:00 at -05:00": datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),
}


@pytest.mark.parametrize("label", list(OUT_OF_RANGE_RUN_AFTER))
def test_run_after_outside_the_datetime_range_in_utc_writes_nothing(
    label: str, q: Queue, fault: FaultRecord
) -> None:
    """An aware `run_after` whose UTC instant falls outside the years 1 to 9999 raises a
    ValidationError naming `run_after` (`tasks[i].run_after` in `enqueue_many`) and writes
    nothing — not the task, nor the other tasks of its batch — so `Queue.list()` still
    works; the first and last representable instants are stored and read back."""
    fault.describe(f"run_after outside years 1..9999 in UTC: {label}")
    value = OUT_OF_RANGE_RUN_AFTER[label]
    fault.inject()
    with pytest.raises(ValidationError) as info:
        q.enqueue("job", run_after=value)
    assert info.value.field == "run_after"
    assert "Fix:" in str(info.value)
    fault.inject()
    with pytest.raises(ValidationError) as many:
        q.enqueue_many(
            [{"task_type": "job"}, {"task_type": "job", "run_after": value}, {"task_type": "job"}]
        )
    assert many.value.field == "tasks[1].run_after"
    assert _total(q) == 0
    assert q.list() == []
    edges = [datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)]
    stored = [q.enqueue("job", run_after=edge) for edge in edges]
    assert [q.get(t.id).run_after for t in stored] == edges
    assert len(q.list()) == 2


#: Timeouts no attempt can mean: beyond a float, beyond the largest accepted (a year).
ABSURD_TIMEOUTS: dict[str, Any] = {
    "2**1100": 2**1100,
    "-(2**1100)": -(2**1100),
    "2**64": 2**64,
    "1e300": 1e300,
    "1.8e308 (float max)": 1.7976931348623157e308,
    "a year and a second": 365 * 86400 + 1,
    "nan": math.nan,
}


@pytest.mark.parametrize("label", list(ABSURD_TIMEOUTS))
def test_absurd_timeouts_refused(label: str, q: Queue, fault: FaultRecord) -> None:
    """A timeout that is not a positive, finite number of seconds of at most a year
    (`2**1100`, `1e300`, NaN...) raises a ValidationError naming `timeout` in `enqueue`,
    `enqueue_many` (`tasks[i].timeout`) and `register_handler`, and nothing is written;
    a year exactly is stored."""
    fault.describe(f"Absurd timeout: {label}")
    value = ABSURD_TIMEOUTS[label]
    fault.inject()
    with pytest.raises(ValidationError) as info:
        q.enqueue("job", timeout=value)
    assert info.value.field == "timeout"
    assert "Fix:" in str(info.value)
    with pytest.raises(ValidationError) as many:
        q.enqueue_many([{"task_type": "job"}, {"task_type": "job", "timeout": value}])
    assert many.value.field == "tasks[1].timeout"
    assert _total(q) == 0
    fault.inject()
    with pytest.raises(ValidationError) as handler:
        q.handlers.register_handler("job", lambda task: None, timeout=value)
    assert handler.value.field == "timeout"
    assert not q.handlers.is_registered("job")
    year = q.enqueue("job", timeout=365 * 86400)
    assert q.get(year.id).timeout == 365 * 86400


def test_non_string_keys_are_not_silently_merged(q: Queue, fault: FaultRecord) -> None:
    """A payload whose object keys are not strings is either stored faithfully or refused
    with a ValidationError — never changed silently."""
    fault.describe("Payload with non-string keys ({1: 'a', '1': 'b'})")
    payload = {1: "a", "1": "b"}
    fault.inject()
    try:
        task = q.enqueue("job", payload)
    except ValidationError:
        return
    assert q.get(task.id).payload == payload


def _nested(depth: int, kinds: list[bool], leaf: Any) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if kinds[level % len(kinds)] else {str(level): value}
    return value


def test_deep_nesting_round_trips(q: Queue, fault: FaultRecord) -> None:
    """Payloads nested up to 400 levels (hypothesis: any mix of lists and objects) round-trip;
    the deepest payload enqueue accepts is measured (Python's recursion limit bounds it)."""
    fault.describe("Deeply nested payloads (hypothesis, up to 400 levels)")

    @settings(SETTINGS, max_examples=40)
    @given(
        depth=st.integers(1, 400),
        kinds=st.lists(st.booleans(), min_size=1, max_size=8),
        leaf=JSON_LEAVES,
    )
    def check(depth: int, kinds: list[bool], leaf: Any) -> None:
        fault.inject()
        payload = _nested(depth, kinds, leaf)
        assert typed(q.get(q.enqueue("job", payload).id).payload) == typed(payload)

    check()
    low, high = 400, 100_000  # accepted / not accepted
    while high - low > 1:
        mid = (low + high) // 2
        try:
            q.enqueue("job", _nested(mid, [True], None))
        except (ValidationError, RecursionError):
            high = mid
        else:
            low = mid
    fault.figure("deepest payload accepted (levels)", low)


def test_nesting_limit_is_exact_and_a_worker_runs_the_deepest(
    db_path: Path, clock: FakeClock, fault: FaultRecord
) -> None:
    """A payload nested one level deeper than `MAX_DEPTH` (lists or objects) raises a
    ValidationError naming the payload, in `enqueue` and `enqueue_many`, and nothing is
    written; one nested exactly `MAX_DEPTH` deep is stored, and a worker runs it (its
    handler returns it as the result) and the task leased with it, and goes on."""
    from hookqueue.core.encoding import MAX_DEPTH

    fault.describe(f"Payloads nested MAX_DEPTH ({MAX_DEPTH}) and MAX_DEPTH + 1 levels")
    with Queue(db_path, load_entrypoints=False, clock=clock, durability="normal") as q:
        for kinds in ([True], [False], [True, False]):
            too_deep = _nested(MAX_DEPTH + 1, kinds, "leaf")
            fault.inject()
            with pytest.raises(ValidationError) as info:
                q.enqueue("job", too_deep)
            assert info.value.field == "payload"
            assert str(MAX_DEPTH) in str(info.value)
            with pytest.raises(ValidationError) as many:
                q.enqueue_many([{"task_type": "job"}, {"task_type": "job", "payload": too_deep}])
            assert many.value.field == "tasks[1].payload"
        assert _total(q) == 0
        deepest = _nested(MAX_DEPTH, [True, False], "leaf")
        q.handlers.register_handler("echo", lambda task: task.payload)
        deep = q.enqueue("echo", deepest)
        plain = q.enqueue("echo", {"plain": True})
        fault.inject()
        stats = WorkerEngine(q, worker_id="w", concurrency=2).run_until_idle()
        assert (stats.completed, stats.failed) == (2, 0)
        done = q.get(deep.id)
        assert done.status is TaskStatus.COMPLETED
        assert done.payload == deepest and done.result == deepest
        assert q.get(plain.id).status is TaskStatus.COMPLETED
        later = q.enqueue("echo", "after")
        assert WorkerEngine(q, worker_id="w").run_until_idle().completed == 1
        assert q.get(later.id).result == "after"
    fault.figure("MAX_DEPTH", MAX_DEPTH)


# ---------------------------------------------------------------------------------------------
# Names that look like SQL
# ---------------------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "'; DROP TABLE tasks; --",
    '" OR 1=1 --',
    "Robert'); DROP TABLE tasks;--",
    "x' UNION SELECT worker_id, hostname FROM workers --",
    "job' OR task_type LIKE '%",
    "%",
    "_",
    "a%b_c",
    "*",
    "?",
    "?1",
    ":name",
    "$1",
    "@p",
    "\\",
    "'",
    "''",
    "`",
    "[tasks]",
    "--",
    "/* comment */",
    ";",
    "NULL",
    "null",
    "nul\x00after",
    "line\nbreak\r\ttab",
    "𝕏😀 emoji",
    "ΩΣ √ ünïcödé",
    "../../etc/passwd",
    "os:system",
    "__import__('os').system('id')",
    "{{7*7}}",
    "${jndi:ldap://example.invalid/a}",
    " leading and trailing ",
    "t" * 200,
]


def test_sql_looking_names_are_only_data(
    db_path: Path, clock: FakeClock, fault: FaultRecord
) -> None:
    """Task types, idempotency keys, queue names and header values built to look like SQL
    (quotes, comments, LIKE wildcards, placeholders, NUL bytes) are stored and found exactly:
    each lookup matches only its own task, each task runs under its own handler, and the
    schema and every other row are untouched."""
    fault.describe("Task types, keys and queue names built to look like SQL")
    with Queue(db_path, load_entrypoints=False, clock=clock, durability="normal") as q:
        schema = _faults.rows(db_path, "SELECT type, name, sql FROM sqlite_schema ORDER BY name")
        control = q.enqueue("job", {"control": True}, idempotency_key="job")
        ids = {}
        for name in HOSTILE_NAMES:
            task = q.enqueue(
                name, {"name": name}, idempotency_key=name, queue=name, headers={"x": name}
            )
            fault.inject()
            ids[name] = task.id
            assert q.enqueue(name, idempotency_key=name).id == task.id
        for name, tid in ids.items():
            assert q.find(name).id == tid, name
            assert [t.id for t in q.list(task_type=name)] == [tid], name
            assert [t.id for t in q.list(queue=name)] == [tid], name
            got = q.get(tid)
            assert (got.task_type, got.idempotency_key, got.queue, got.headers) == (
                name,
                name,
                name,
                {"x": name},
            )
        ran: dict[str, int] = {}
        for name in HOSTILE_NAMES:
            q.handlers.register_handler(name, lambda task: ran.setdefault(task.task_type, task.id))
        WorkerEngine(q, worker_id="w", queues=HOSTILE_NAMES, concurrency=4).run_until_idle()
        assert ran == ids
        assert q.get(control.id).status is TaskStatus.QUEUED  # not in any of those queues
        assert q.counts()["completed"] == len(HOSTILE_NAMES)
        assert q.check() == []
    assert (
        _faults.rows(db_path, "SELECT type, name, sql FROM sqlite_schema ORDER BY name") == schema
    )
    fault.figure("names", len(HOSTILE_NAMES))


def test_generated_names_match_exactly(q: Queue, fault: FaultRecord) -> None:
    """Hypothesis-generated task types and keys (any Unicode, 1–200 characters) are found by
    exact match only: no LIKE wildcards, no case folding, no trimming."""
    fault.describe("Generated task types and keys (hypothesis): exact matching")
    names = st.text(min_size=1, max_size=200).filter(lambda s: s.strip())

    @settings(SETTINGS, max_examples=60)
    @given(name=names)
    def check(name: str) -> None:
        fault.inject()
        key = f"key:{name}"
        task = q.enqueue(name, idempotency_key=key)
        assert q.find(key).id == task.id
        assert [t.id for t in q.list(task_type=name)] == [task.id]
        for other in {name.upper(), name.lower(), name.strip(), "%", "_"} - {name}:
            found = q.find(f"key:{other}")
            assert found is None or found.idempotency_key == f"key:{other}"

    check()


# ---------------------------------------------------------------------------------------------
# Huge payloads against the documented limit
# ---------------------------------------------------------------------------------------------


def _string_payload(n_bytes: int, char: str = "x") -> str:
    """A string whose JSON encoding (with quotes) is exactly ``n_bytes`` bytes of UTF-8."""
    width = len(char.encode())
    assert (n_bytes - 2) % width == 0
    return char * ((n_bytes - 2) // width)


@pytest.mark.parametrize(
    "char", ["x", "é", "€", "😀"], ids=["1-byte", "2-byte", "3-byte", "4-byte"]
)
def test_payload_size_limit_is_exact(char: str, q: Queue, fault: FaultRecord) -> None:
    """The default limit (max_payload_bytes = 1 MiB of UTF-8 JSON) is exact whatever the
    characters' width: a payload of exactly the limit is stored and round-trips; one
    character more is refused with a ValidationError naming the payload and the limit;
    nothing is written."""
    fault.describe(f"Payload at the 1 MiB limit ({len(char.encode())}-byte characters)")
    limit = MAX_PAYLOAD_BYTES
    width = len(char.encode())
    size = limit - ((limit - 2) % width)
    fits = _string_payload(size, char)
    assert len(json.dumps(fits, ensure_ascii=False).encode()) == size
    task = q.enqueue("job", fits)
    assert q.get(task.id).payload == fits
    fault.inject()
    with pytest.raises(ValidationError) as info:
        q.enqueue("job", fits + char)
    assert info.value.field == "payload"
    assert f"max_payload_bytes={limit}" in str(info.value)
    assert _total(q) == 1
    fault.figure("limit (bytes)", limit)
    fault.figure("largest stored (bytes)", size)
    fault.figure("smallest refused (bytes)", size + width)


def test_oversized_task_in_a_batch_stores_nothing(q: Queue, fault: FaultRecord) -> None:
    """enqueue_many with one task over the limit raises a ValidationError naming that task's
    index and stores none of the batch."""
    fault.describe("One oversized payload inside an enqueue_many batch")
    batch = [{"task_type": "job", "payload": {"i": i}} for i in range(5)]
    batch.insert(3, {"task_type": "job", "payload": "x" * MAX_PAYLOAD_BYTES})
    with pytest.raises(ValidationError) as info:
        q.enqueue_many(batch)
    fault.inject()
    assert info.value.field == "tasks[3].payload"
    assert _total(q) == 0


def test_huge_payload_refused_quickly(db_path: Path, clock: FakeClock, fault: FaultRecord) -> None:
    """A 64 MiB payload is refused with a ValidationError naming the payload before anything
    reaches the database; a queue with a raised max_payload_bytes stores a 4 MiB one."""
    fault.describe("64 MiB payload against the default limit; 4 MiB with a raised limit")
    with Queue(db_path, load_entrypoints=False, clock=clock, durability="normal") as q:
        huge = {"blob": "h" * (64 * 1024 * 1024)}
        started = time.perf_counter()
        with pytest.raises(ValidationError) as info:
            q.enqueue("job", huge)
        refused_in = time.perf_counter() - started
        fault.inject()
        assert info.value.field == "payload"
        assert len(str(info.value)) < 1000, "the error message carries the payload"
        assert _total(q) == 0
        del huge
    with Queue(
        db_path, load_entrypoints=False, clock=clock, max_payload_bytes=8 * 1024 * 1024
    ) as big:
        blob = "b" * (4 * 1024 * 1024)
        task = big.enqueue("job", {"blob": blob})
        fault.inject()
        assert big.get(task.id).payload == {"blob": blob}
    fault.figure("refused 64 MiB in (s)", round(refused_in, 3))
