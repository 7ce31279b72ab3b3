"""Power loss: the power goes at a chosen sync or write; each unsynced write is kept, dropped or torn.

Each scenario plays a seeded workload (enqueue, enqueue_many, lease, complete, fail, lease
with outcomes, retry of a failed task, prune, a clean close and reopen; the worker's calls on
a thread, and so a connection, of their own) on a queue opened through the crash VFS of
``_crashvfs.py``, cuts the power at one sync or write of the database, its WAL or its
journal (or after the last call), reboots (every connection closed, the -shm removed, the
database opened through the ordinary VFS) and checks the database against a reference run
of the same workload without a cut.

The reference run records the ``tasks`` table after every commit. A recovered database is
sound only when ``PRAGMA integrity_check`` and ``Queue.check()`` find nothing and its
``tasks`` table is, row for row, the table after some commit made before the cut: a call
interrupted by the cut may or may not be there, never half there. It keeps every
acknowledged call (one that returned before the cut) whose commit was followed by a
completed sync of the WAL; at ``durability="full"`` it keeps every acknowledged call except
a lease that carries no outcome (a claim, which hookqueue commits unsynced on purpose:
losing it only runs the task again). At ``durability="normal"`` the loss is measured.

``HOOKQUEUE_POWERLOSS_SEEDS=N`` runs N seeds per durability instead of the default, for a
sweep (see docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import apsw
import pytest

from hookqueue import FakeClock, HookqueueError, Queue, QueueDatabase, Task
from hookqueue.core.models import TASK_COLUMNS
from hookqueue.core.storage import Settlement
from hookqueue.core.store import connection as store_connection

from ._crashvfs import CrashVFS, CutPoint, Disk
from .conftest import FaultRecord

WORKER = "pl-worker"
LEASE_SECONDS = 3600.0  # longer than any workload: no lease expires in these scenarios


def _worker_call(
    queue: Queue,
    *,
    lease: int = 0,
    outcomes: tuple[tuple[int, str, str], ...] = (),
    with_lease: bool = False,
) -> list[Task]:
    """Every worker-facing call of this module, in one place (the core refactor moves this
    API): write ``outcomes`` — ``(task_id, "complete" | "fail", result JSON or error)`` —
    and lease up to ``lease`` tasks. Outcomes go through ``settle`` alone, or with a lease
    (``lease > 0`` or ``with_lease``) in the lease's transaction, as a worker sends them.
    Returns the tasks leased, or the tasks settled."""
    settlements = [
        Settlement(task_id=i, kind="complete", result_json=text)
        if kind == "complete"
        else Settlement(task_id=i, kind="fail", error=text)
        for i, kind, text in outcomes
    ]
    if lease or with_lease or not settlements:
        return queue.runtime.lease(
            WORKER, limit=lease, lease_seconds=LEASE_SECONDS, settlements=settlements
        )
    return queue.runtime.settle(WORKER, settlements)


#: Seeds per durability: the default run, or the sweep asked for (read at import: the root
#: conftest hides HOOKQUEUE_* variables from running tests).
SEEDS = int(os.environ.get("HOOKQUEUE_POWERLOSS_SEEDS") or 24)
#: Calls per workload (after the first open).
STEPS = 28
#: Cut points per seed: the end of the workload, and this many syncs and writes.
#: At "normal" few syncs happen after the database is created, so more cuts fall on writes.
CUTS = {"full": (4, 2), "normal": (2, 4)}
#: Every other seed checkpoints after this many WAL pages (hookqueue's own checkpoint, at a
#: lower threshold than its 1000 pages, so checkpoints and WAL restarts fall inside the
#: workload); the others keep the real threshold.
SMALL_CHECKPOINT = 12

VFS_NAME = "hookqueue-powerloss"
SELECT_TASKS = f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks ORDER BY id"
_COL = {name: i for i, name in enumerate(TASK_COLUMNS)}


def _table(q: Queue) -> list[tuple[Any, ...]]:
    """Every task row as stored, read on the store's own connection of this thread."""
    return [tuple(r) for r in q.db._cx.conn().execute(SELECT_TASKS)]  # type: ignore[attr-defined]


#: The state before the schema exists.
ABSENT = None
#: A recovered database whose table cannot be read (matches no state).
UNREADABLE: list[tuple[Any, ...]] = [("unreadable",)]

Rows = list[tuple[Any, ...]]


class _PowerCut(Exception):
    """Ends a workload at the call the cut interrupted."""


@dataclass
class Step:
    """One call of the workload."""

    kind: str
    #: Tasks this call added (0 for a repeated idempotency key), completions it wrote.
    new_tasks: int = 0
    completions: int = 0
    #: At durability="full" the call promises its commit is on disk when it returns.
    promised: bool = True
    #: What the call returned (ids and statuses), compared between the two runs.
    summary: Any = None
    acknowledged: bool = False
    #: A sync of the WAL completed during the call.
    wal_synced: bool = False
    error: str = ""


@dataclass
class Run:
    """A played workload."""

    steps: list[Step] = field(default_factory=list)
    #: Reference run only: ``(step index, tasks table)`` after each commit, in order; the
    #: first is ``(-1, ABSENT)``.
    states: list[tuple[int, Rows | None]] = field(default_factory=lambda: [(-1, ABSENT)])
    syncs: int = 0
    writes: int = 0


def _summary(result: Any) -> Any:
    if isinstance(result, Task):
        return (result.id, result.status.value)
    if isinstance(result, list):
        return [_summary(r) for r in result]
    return result


def _without(rows: Rows, status: str, cutoff: int) -> Rows:
    """``rows`` less the tasks ``prune`` deletes for ``status`` at ``cutoff``."""
    return [
        r
        for r in rows
        if not (
            r[_COL["status"]] == status
            and r[_COL["finished_at"]] is not None
            and r[_COL["finished_at"]] < cutoff
        )
    ]


class Workload:
    """One seed's workload, played until its end or the cut.

    With ``record`` (the reference run) it also records the tasks table after every commit
    and checks it, after every call, against what the calls returned: every task an
    acknowledged enqueue returned is stored with its payload, every acknowledged
    completion is ``completed`` with its result, and nothing else is stored.
    """

    def __init__(self, path: Path, disk: Disk, seed: int, durability: str, *, record: bool) -> None:
        self.path = path
        self.disk = disk
        self.seed = seed
        self.durability = durability
        self.record = record
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.run = Run()
        self.db: QueueDatabase | None = None
        self.q: Queue | None = None
        self.held: list[Task] = []
        #: Finished tasks by id: (status, finished_at in microseconds).
        self.finished: dict[int, tuple[str, int]] = {}
        #: What the calls acknowledged, by task id: status, payload, result, key.
        self.model: dict[int, dict[str, Any]] = {}
        self.serial = 0
        #: Worker calls run here: two connections share the WAL, as a producer's and a
        #: worker's do (a bare lease unsynced on one, the next enqueue synced on the other).
        self.worker_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pl-worker")

    # -- the calls -----------------------------------------------------------------------------

    def play(self) -> Run:
        """Run the workload; returns what happened (the cut ends it early)."""
        pages = SMALL_CHECKPOINT if self.seed % 2 else store_connection.WAL_CHECKPOINT_PAGES
        with mock.patch.object(store_connection, "WAL_CHECKPOINT_PAGES", pages):
            try:
                self.call(Step("open"), self.open)
                for _ in range(STEPS):
                    self.clock.advance(1)
                    self.one_call()
            except _PowerCut:
                pass
            finally:
                self.run.syncs, self.run.writes = self.disk.syncs, self.disk.writes
                if not self.record:
                    self.disk.cut_now()  # a workload that ran to its end: the power goes now
                self.close()
                self.worker_thread.shutdown()
        return self.run

    def open(self) -> None:
        self.db = QueueDatabase(self.path, vfs=VFS_NAME, durability=self.durability)  # type: ignore[arg-type]
        self.q = Queue(self.db, load_entrypoints=False, clock=self.clock)

    def worker(self, **kwargs: Any) -> list[Task]:
        """A worker-facing call, made on the worker's own thread (so its own connection, as
        a worker engine's store thread has), waited for."""
        assert self.q is not None
        return self.worker_thread.submit(_worker_call, self.q, **kwargs).result()

    def close(self) -> None:
        if self.q is not None:
            self.q.close()
        if self.db is not None:
            self.db.close()  # the worker thread's connection too

    def call(
        self,
        step: Step,
        fn: Callable[[], Any],
        commits: Callable[[Rows], list[Rows]] | None = None,
    ) -> Any:
        """Make one call; a call the cut interrupts ends the workload (_PowerCut).

        :param commits: for a call of several transactions, the table after each of its
            commits, computed from the table before it; the reference run records them all
            and checks the last against the table read after the call.
        """
        wal_syncs = self.disk.wal_syncs
        try:
            result = fn()
        except HookqueueError as exc:
            if not self.disk.dead:
                raise
            step.error = f"{type(exc).__name__}: {exc}"
            result = None
        step.wal_synced = self.disk.wal_syncs > wal_syncs
        step.acknowledged = not self.disk.dead
        self.run.steps.append(step)
        if not step.acknowledged:
            raise _PowerCut
        step.summary = _summary(result)
        if self.record:
            assert self.q is not None
            index = len(self.run.steps) - 1
            after = _table(self.q)
            if commits is not None:
                computed = commits(self.run.states[-1][1] or [])
                assert computed[-1] == after, f"{step.kind} changed other rows than modelled"
                self.run.states += [(index, rows) for rows in computed[:-1]]
            self.run.states.append((index, after))
        return result

    def payload(self) -> dict[str, Any]:
        self.serial += 1
        return {"n": self.serial, "pad": "p" * self.rng.choice((0, 40, 700, 2500, 6000))}

    def one_call(self) -> None:
        rng, q = self.rng, self.q
        assert q is not None
        now = self.clock.now_us()
        failed = sorted(t for t, (s, _) in self.finished.items() if s == "failed")
        choices = ["enqueue"] * 3 + ["enqueue_many"] * 2 + ["lease"] * 2 + ["prune"]
        if self.held:
            choices += ["complete", "complete", "fail", "lease_settle", "lease_settle"]
        if failed:
            choices.append("retry")
        if rng.random() < 0.08:
            choices.append("reopen")
        kind = rng.choice(choices)
        model = self.model
        if kind == "enqueue":
            key = f"key-{rng.randrange(6)}" if rng.random() < 0.25 else None
            p = self.payload()
            t = self.call(Step(kind), lambda: q.enqueue("job", p, idempotency_key=key))
            if t.created_at == self.clock.now():  # not an earlier task with this key
                self.run.steps[-1].new_tasks = 1
                model[t.id] = {"status": "queued", "payload": p}
        elif kind == "enqueue_many":
            specs = [
                {"task_type": "job", "payload": self.payload()} for _ in range(rng.randrange(2, 9))
            ]
            tasks = self.call(Step(kind, new_tasks=len(specs)), lambda: q.enqueue_many(specs))
            for t, spec in zip(tasks, specs, strict=True):
                model[t.id] = {"status": "queued", "payload": spec["payload"]}
        elif kind == "lease":
            n = rng.randrange(1, 5)
            leased = self.call(Step(kind, promised=False), lambda: self.worker(lease=n))
            self.lease_done(leased)
        elif kind in ("complete", "fail", "lease_settle"):
            rng.shuffle(self.held)
            k = rng.randrange(1, len(self.held) + 1)
            chosen, self.held = self.held[:k], self.held[k:]
            outcomes: list[tuple[int, str, str]] = []
            for t in chosen:
                if kind == "fail" or (kind == "lease_settle" and rng.random() < 0.25):
                    outcomes.append((t.id, "fail", f"attempt failed at {now}"))
                else:
                    result = {"n": t.payload["n"], "r": "r" * rng.choice((0, 900, 5000))}
                    outcomes.append((t.id, "complete", json.dumps(result)))
            n = rng.randrange(0, 4) if kind == "lease_settle" else 0
            step = Step(kind, completions=sum(1 for o in outcomes if o[1] == "complete"))
            got = self.call(
                step,
                lambda: self.worker(
                    lease=n, outcomes=tuple(outcomes), with_lease=kind == "lease_settle"
                ),
            )
            for tid, how, text in outcomes:
                if how == "complete":
                    self.finished[tid] = ("completed", now)
                    model[tid].update(status="completed", result=json.loads(text))
                else:
                    self.finished[tid] = ("failed", now)
                    model[tid]["status"] = "failed"
            if kind == "lease_settle":
                self.lease_done(got)
        elif kind == "retry":
            tid = rng.choice(failed)
            self.call(Step(kind), lambda: q.retry(tid))
            del self.finished[tid]
            model[tid]["status"] = "queued"
        elif kind == "prune":
            statuses = rng.sample(["completed", "failed", "cancelled"], rng.randrange(1, 4))
            older = rng.choice((0, 2, 5))
            cutoff = now - older * 1_000_000

            def commits(rows: Rows) -> list[Rows]:
                # prune() deletes each status in its own transaction.
                out = []
                for s in statuses:
                    rows = _without(rows, s, cutoff)
                    out.append(rows)
                return out

            self.call(Step(kind), lambda: q.prune(older_than=older, statuses=statuses), commits)
            for tid, (s, at) in list(self.finished.items()):
                if s in statuses and at < cutoff:
                    del self.finished[tid]
                    del model[tid]
        else:  # reopen: a clean close (checkpoint, WAL removed), then open again

            def reopen() -> None:
                self.close()
                self.open()

            self.call(Step(kind, promised=False), reopen)
        if self.record:
            self.check_model()

    def lease_done(self, leased: list[Task]) -> None:
        self.held += leased
        for t in leased:
            self.model[t.id]["status"] = "running"

    def check_model(self) -> None:
        """The reference run's table after the call agrees with what the calls returned."""
        rows = {r[0]: r for r in self.run.states[-1][1] or []}
        assert rows.keys() == self.model.keys(), (
            f"stored ids {sorted(rows)} != acknowledged {sorted(self.model)}"
        )
        for tid, want in self.model.items():
            row = rows[tid]
            assert row[_COL["status"]] == want["status"], (tid, row, want)
            assert json.loads(row[_COL["payload"]]) == want["payload"], (tid, row, want)
            if want["status"] == "completed":
                assert json.loads(row[_COL["result"]]) == want["result"], (tid, row, want)


# ---------------------------------------------------------------------------------------------
# Cutting, rebooting, checking
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one power cut left behind."""

    seed: int
    durability: str
    cut: str
    #: The call the cut interrupted ("end": after the last call).
    interrupted: str
    #: What must hold and did not (empty: sound).
    problems: list[str]
    #: Acknowledged tasks enqueued, completions and other promised calls that are gone.
    lost_enqueues: int = 0
    lost_completions: int = 0
    lost_other: int = 0
    #: The database came back without its schema although the open was acknowledged.
    came_back_empty: bool = False
    #: The class of the error the interrupted call raised ("" if none).
    error: str = ""
    fates: dict[str, int] = field(default_factory=dict)


def _final_state(ref: Run) -> dict[int, int]:
    """Step index -> index in ``ref.states`` of the table after the step's last commit."""
    out: dict[int, int] = {}
    for i, (step, _) in enumerate(ref.states):
        out[step] = i
    return out


def _changes(ref: Run, step: int) -> list[int]:
    """Indices in ``ref.states`` of the commits of call ``step`` that changed the table."""
    return [
        j
        for j, (s, table) in enumerate(ref.states)
        if s == step and j > 0 and table != ref.states[j - 1][1]
    ]


def _diff(want: Rows | None, got: Rows | None) -> str:
    """A short description of how ``got`` differs from ``want``."""
    if want is None or got is None:
        return f"expected {'no schema' if want is None else f'{len(want)} tasks'}, found " + (
            "no schema" if got is None else f"{len(got)} tasks"
        )
    w, g = {r[0]: r for r in want}, {r[0]: r for r in got}
    missing = sorted(w.keys() - g.keys())
    extra = sorted(g.keys() - w.keys())
    changed = sorted(
        f"{i} ({', '.join(c for c, a, b in zip(TASK_COLUMNS, w[i], g[i], strict=True) if a != b)})"
        for i in w.keys() & g.keys()
        if w[i] != g[i]
    )
    return f"missing tasks {missing[:10]}, unexpected tasks {extra[:10]}, changed {changed[:10]}"


def _read_back(path: Path, durability: str) -> tuple[list[str], Rows | None]:
    """Open the rebooted database through the ordinary VFS: the problems found and the
    tasks table (ABSENT when the schema is not there)."""
    problems: list[str] = []
    rows: Rows | None = ABSENT
    conn = apsw.Connection(str(path))
    try:
        problems += [
            f"integrity_check: {r[0]}"
            for r in conn.execute("PRAGMA integrity_check")
            if r[0] != "ok"
        ]
        if conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'tasks'").get:
            rows = [tuple(r) for r in conn.execute(SELECT_TASKS)]
    except (apsw.Error, UnicodeDecodeError) as exc:  # not SQLite, corrupt, a damaged row
        problems.append(f"the database cannot be read: {type(exc).__name__}: {exc}")
        rows = UNREADABLE
    finally:
        conn.close()
    try:
        with Queue(path, load_entrypoints=False, durability=durability) as q:  # type: ignore[arg-type]
            problems += [f"Queue.check(): {p}" for p in q.check()]
            reopened = _table(q)
        if rows is not UNREADABLE and reopened != (rows or []):
            problems.append("opening the queue changed its tasks")
    except HookqueueError as exc:
        problems.append(f"the queue does not open: {type(exc).__name__}: {exc}")
    return problems, rows


def _judge(ref: Run, run: Run, problems: list[str], rows: Rows | None, outcome: Outcome) -> Outcome:
    """Compare the recovered table with the reference run's commits (see the module
    docstring); fills ``outcome``."""
    for i, step in enumerate(run.steps):
        if step.acknowledged:  # the two runs made the same calls with the same results
            assert (step.kind, step.summary) == (ref.steps[i].kind, ref.steps[i].summary), i
    last = run.steps[-1] if run.steps else None
    cut_at = len(run.steps) - 1 if last is not None and not last.acknowledged else len(run.steps)
    outcome.interrupted = run.steps[cut_at].kind if cut_at < len(run.steps) else "end"
    final = _final_state(ref)
    candidates = [i for i, (s, table) in enumerate(ref.states) if s <= cut_at and table == rows]
    # What must be there: every commit followed by a completed sync of the WAL, and at
    # durability="full" every acknowledged call that promises durability.
    synced = max((i for i, s in enumerate(run.steps) if s.wal_synced), default=-1)
    required = final[synced - 1] if synced > 0 else 0
    required_by = f"a WAL sync completed in call {synced} ({run.steps[synced].kind})" * (synced > 0)
    if outcome.durability == "full":
        # A promised call's own commits (those that changed the table; one that changed
        # nothing wrote nothing, so synced nothing either).
        for i, step in enumerate(run.steps):
            if not (step.acknowledged and step.promised):
                continue
            changed = _changes(ref, i)
            if changed and changed[-1] > required:
                required = changed[-1]
                required_by = f"call {i} ({step.kind}) returned"
    if not candidates:
        nearest = ref.states[required][1]
        problems.append(
            "the tasks table is not the one after any commit (a call half there, or damage): "
            + _diff(nearest, rows)
        )
        kept = 0
    else:
        kept = max(candidates)
    if candidates and kept < required:
        problems.append(
            f"acknowledged work lost: {required_by}, but the table is the one after call "
            f"{ref.states[kept][0]}: {_diff(ref.states[required][1], rows)}"
        )
    if candidates:
        for i, step in enumerate(run.steps):
            changed = _changes(ref, i)
            if step.acknowledged and changed and changed[-1] > kept:
                outcome.lost_enqueues += step.new_tasks
                outcome.lost_completions += step.completions
                if step.promised and step.kind not in ("enqueue", "enqueue_many", "open"):
                    outcome.lost_other += 1
    # An interrupted call whose error says it was rolled back must not be stored.
    if cut_at < len(run.steps) and "rolled back" in run.steps[cut_at].error:
        changed = _changes(ref, cut_at)
        if (
            changed
            and any(ref.states[j][1] == rows for j in changed)
            and ref.states[changed[0] - 1][1] != rows
        ):
            problems.append(
                f"call {cut_at} ({run.steps[cut_at].kind}) raised "
                f"{run.steps[cut_at].error!r}, yet its change is stored"
            )
    outcome.error = run.steps[cut_at].error.split(":")[0] if cut_at < len(run.steps) else ""
    outcome.came_back_empty = rows is ABSENT and bool(run.steps) and run.steps[0].acknowledged
    outcome.problems = problems
    return outcome


@dataclass
class Sweep:
    """Seeds × cut points at one durability, on one kind of disk."""

    vfs: CrashVFS
    tmp: Path
    durability: str
    disk_options: dict[str, Any] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.durability}-", dir=self.tmp))

    def reference(self, seed: int) -> Run:
        """The workload of ``seed`` without a cut, with its table after every commit."""
        path = self.tmp / f"{self.durability}-{seed}-reference-{len(self.outcomes)}" / "queue.db"
        path.parent.mkdir(parents=True)
        disk = Disk(random.Random(0), None, **self.disk_options)
        self.vfs.disk = disk
        ref = Workload(path, disk, seed, self.durability, record=True).play()
        shutil.rmtree(path.parent)
        return ref

    def cut_points(self, ref: Run, seed: int) -> list[CutPoint | None]:
        """The end of the workload, and syncs and writes drawn from the reference run."""
        rng = random.Random(f"cuts/{seed}")
        n_syncs, n_writes = CUTS[self.durability]
        syncs = sorted(rng.sample(range(1, ref.syncs + 1), min(n_syncs, ref.syncs)))
        writes = sorted(rng.sample(range(1, ref.writes + 1), min(n_writes, ref.writes)))
        return [
            None,
            *(CutPoint("sync", n) for n in syncs),
            *(CutPoint("write", n) for n in writes),
        ]

    def scenario(
        self,
        ref: Run,
        seed: int,
        cut: CutPoint | None,
        tamper: Callable[[Path], None] | None = None,
    ) -> Outcome:
        """Play ``seed`` with the power cut at ``cut``, reboot, check."""
        name = str(cut or "end").replace(" #", "-")
        path = self.tmp / f"{self.durability}-{seed}-{name}-{len(self.outcomes)}" / "queue.db"
        path.parent.mkdir(parents=True)
        disk = Disk(random.Random(f"{seed}/{self.durability}/{name}"), cut, **self.disk_options)
        self.vfs.disk = disk
        run = Workload(path, disk, seed, self.durability, record=False).play()
        disk.reboot(path)
        if tamper is not None:
            tamper(path)
        problems, rows = _read_back(path, self.durability)
        outcome = Outcome(seed, self.durability, str(cut or "end"), "", [], fates=dict(disk.fates))
        _judge(ref, run, problems, rows, outcome)
        if not outcome.problems:
            shutil.rmtree(path.parent)
        self.outcomes.append(outcome)
        return outcome

    def play(self, seeds: range) -> list[Outcome]:
        """Every cut point of every seed."""
        for seed in seeds:
            ref = self.reference(seed)
            for cut in self.cut_points(ref, seed):
                self.scenario(ref, seed, cut)
        return self.outcomes

    def figures(self) -> dict[str, Any]:
        """What the sweep measured."""
        outs = self.outcomes
        fates: dict[str, int] = {}
        for o in outs:
            for k, v in o.fates.items():
                fates[k] = fates.get(k, 0) + v
        interrupted: dict[str, int] = {}
        for o in outs:
            interrupted[o.interrupted] = interrupted.get(o.interrupted, 0) + 1
        return {
            "power cuts": len(outs),
            "seeds": len({o.seed for o in outs}),
            "unsynced writes kept / dropped / torn": (
                f"{fates.get('kept', 0)} / {fates.get('dropped', 0)} / {fates.get('torn', 0)}"
            ),
            "calls interrupted": dict(sorted(interrupted.items())),
            "errors raised by interrupted calls": dict(
                sorted(
                    Counter(
                        o.error or "none (returned)" for o in outs if o.interrupted != "end"
                    ).items()
                )
            ),
            "cuts with a problem": sum(1 for o in outs if o.problems),
            "cuts that lost acknowledged work": sum(
                1 for o in outs if o.lost_enqueues or o.lost_completions or o.lost_other
            ),
            "most acknowledged enqueues lost": max((o.lost_enqueues for o in outs), default=0),
            "most acknowledged completions lost": max(
                (o.lost_completions for o in outs), default=0
            ),
            "most other acknowledged calls lost": max((o.lost_other for o in outs), default=0),
            f"most acknowledged enqueues lost, checkpoint every {SMALL_CHECKPOINT} pages": max(
                (o.lost_enqueues for o in outs if o.seed % 2), default=0
            ),
            "came back without its schema": sum(1 for o in outs if o.came_back_empty),
        }


def _report(outcomes: list[Outcome]) -> str:
    bad = [o for o in outcomes if o.problems]
    return "\n".join(
        f"seed {o.seed} {o.durability} cut at {o.cut} (in {o.interrupted}): {'; '.join(o.problems)}"
        for o in bad[:10]
    )


@pytest.fixture(scope="module")
def crash_vfs() -> Any:
    """The crash VFS, registered under its own name for this module."""
    vfs = CrashVFS(VFS_NAME, Disk(random.Random(0)))
    yield vfs
    vfs.unregister()


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_power_cut_at_full_durability_loses_nothing_acknowledged(
    crash_vfs: CrashVFS, tmp_path: Path, fault: FaultRecord
) -> None:
    """At durability="full", a power cut at any sync or write (or after the last call)
    leaves a database that passes integrity_check and Queue.check(), whose tasks table is
    the one after some commit made before the cut (an interrupted call is there whole or
    not at all), and that holds every acknowledged enqueue with its payload, every
    acknowledged completion with its result, and every other acknowledged call but a lease
    without outcomes."""
    fault.describe('Power cut at a sync or write, durability="full"')
    sweep = Sweep(crash_vfs, tmp_path, "full")
    outcomes = sweep.play(range(SEEDS))
    fault.inject(len(outcomes))
    for key, value in sweep.figures().items():
        fault.figure(key, value)
    assert all(not o.problems for o in outcomes), _report(outcomes)


@pytest.mark.slow
def test_power_cut_at_normal_durability_is_measured(
    crash_vfs: CrashVFS, tmp_path: Path, fault: FaultRecord
) -> None:
    """At durability="normal", the same power cuts leave a sound database (integrity_check,
    Queue.check()) whose tasks table is the one after some commit made before the cut, and
    that keeps every commit followed by a completed sync of the WAL (a checkpoint, a clean
    close); what else is lost is measured, not asserted."""
    fault.describe('Power cut at a sync or write, durability="normal"')
    sweep = Sweep(crash_vfs, tmp_path, "normal")
    outcomes = sweep.play(range(SEEDS))
    fault.inject(len(outcomes))
    for key, value in sweep.figures().items():
        fault.figure(key, value)
    assert all(not o.problems for o in outcomes), _report(outcomes)


@pytest.mark.slow
def test_power_cut_on_a_disk_without_powersafe_overwrite(
    crash_vfs: CrashVFS, tmp_path: Path, fault: FaultRecord
) -> None:
    """On a disk that does not promise powersafe overwrite (a torn write may garble whole
    4096-byte sectors, bytes next to it included, as test6.c's default device),
    durability="full" still loses nothing acknowledged and leaves a sound database:
    SQLite, told so by the VFS, pads each synced WAL commit to a sector boundary."""
    fault.describe('Power cut, durability="full", disk without powersafe overwrite')
    sweep = Sweep(crash_vfs, tmp_path, "full", {"powersafe_overwrite": False, "sector_size": 4096})
    outcomes = sweep.play(range(max(1, SEEDS // 3)))
    fault.inject(len(outcomes))
    for key, value in sweep.figures().items():
        fault.figure(key, value)
    assert all(not o.problems for o in outcomes), _report(outcomes)


#: Disks that break their promises, for the checker's own test: (durability, seeds, disk).
LYING_DISKS: dict[str, tuple[str, range, dict[str, Any]]] = {
    "ignores syncs, durability=full": ("full", range(2), {"honour_syncs": False}),
    "ignores syncs, durability=normal": ("normal", range(1, 4, 2), {"honour_syncs": False}),
    "claims powersafe overwrite but garbles whole 4096-byte sectors": (
        "full",
        range(4),
        {"powersafe_overwrite": False, "sector_size": 4096, "claims_powersafe_overwrite": True},
    ),
}


def test_checker_finds_the_loss_a_lying_disk_causes(
    crash_vfs: CrashVFS, tmp_path: Path, fault: FaultRecord
) -> None:
    """The checker is not blind: on a disk that acknowledges syncs without making anything
    durable (a write cache that lies) it reports acknowledged enqueues and completions lost
    at durability="full", and lost or damaged data at "normal" once a checkpoint has run;
    on a disk that claims powersafe overwrite but garbles the bytes next to a torn write
    (so SQLite does not pad its WAL commits) it reports acknowledged commits lost."""
    fault.describe("Power cut on disks that break their promises (the checker's own test)")
    for name, (durability, seeds, options) in LYING_DISKS.items():
        sweep = Sweep(crash_vfs, tmp_path, durability, options)
        outcomes = sweep.play(seeds)
        fault.inject(len(outcomes))
        lost = sum(
            1 for o in outcomes if any(p.startswith("acknowledged work lost") for p in o.problems)
        )
        bad = sum(1 for o in outcomes if o.problems)
        fault.figure(name, f"{bad}/{len(outcomes)} cuts reported ({lost} losing acknowledged work)")
        if durability == "full":
            assert lost > 0, f"a disk that {name}: no loss found"
        else:
            assert bad > 0, f"a disk that {name}: no loss or damage found"


def _tamper(sql: str, *params: Any) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        conn = apsw.Connection(str(path))
        try:
            conn.execute(sql, params)
            assert conn.changes() > 0, f"tampering changed nothing: {sql} {params}"
        finally:
            conn.close()

    return run


def test_checker_finds_a_half_there_or_altered_table(
    crash_vfs: CrashVFS, tmp_path: Path, fault: FaultRecord
) -> None:
    """The checker is precise: a rebooted database that is sound for SQLite but holds one
    task less of an enqueue_many batch, an altered payload or result, a completion undone,
    or misses the last acknowledged enqueue is reported; the same database untouched is
    not."""
    fault.describe("Recovered database altered after the reboot (the checker's own test)")
    sweep = Sweep(crash_vfs, tmp_path, "full")
    seed = 0
    ref = sweep.reference(seed)
    final = {r[0]: r for r in ref.states[-1][1] or []}
    batches = [
        [tid for tid, _ in s.summary]
        for s in ref.steps
        if s.kind == "enqueue_many" and all(tid in final for tid, _ in s.summary)
    ]
    completed = [tid for tid, r in final.items() if r[_COL["status"]] == "completed"]
    # The tasks of the last enqueue whose tasks are all still there at the end.
    enqueued = [
        [tid for tid, _ in (s.summary if isinstance(s.summary, list) else [s.summary])]
        for s in ref.steps
        if s.kind in ("enqueue", "enqueue_many") and s.new_tasks
    ]
    last_enqueued = [ids for ids in enqueued if all(tid in final for tid in ids)][-1]
    assert batches and completed, "seed 0's workload has no batch or completion left to alter"
    assert sweep.scenario(ref, seed, None).problems == [], "the untouched database is reported"
    tampers = {
        "one task of a batch deleted": _tamper("DELETE FROM tasks WHERE id = ?", batches[0][-1]),
        "a payload altered": _tamper(
            "UPDATE tasks SET payload = json_set(payload, '$.n', -1) WHERE id = ?", batches[0][0]
        ),
        "a result altered": _tamper(
            "UPDATE tasks SET result = '{\"forged\":true}' WHERE id = ?", completed[-1]
        ),
        "a completion undone": _tamper(
            "UPDATE tasks SET status = 'running', result = NULL, finished_at = NULL, "
            "locked_by = ?, lease_expires_at = started_at + 3600000000 WHERE id = ?",
            WORKER,
            completed[-1],
        ),
        "the last acknowledged enqueue lost": _tamper(
            f"DELETE FROM tasks WHERE id IN ({', '.join('?' * len(last_enqueued))})",
            *last_enqueued,
        ),
    }
    for name, tamper in tampers.items():
        outcome = sweep.scenario(ref, seed, None, tamper)
        fault.inject()
        assert outcome.problems, f"{name}: not reported"
        fault.figure(name, outcome.problems[0].split(":")[0])


def test_crash_disk_keeps_synced_bytes_and_tears_within_sectors(
    tmp_path: Path, fault: FaultRecord
) -> None:
    """The simulated disk itself, without SQLite: a sync makes durable that file's writes
    and no other file's; at the cut each unsynced write is kept, dropped or torn; with
    powersafe overwrite a torn write never changes a byte outside its own range, without
    it garbage can cover the rest of the sectors it touches (synced bytes included); a
    truncate is kept or dropped whole."""
    fault.describe("The crash VFS's disk model on its own")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    synced = bytes(range(1, 256)) * 5  # 1275 bytes over sectors 0, 1 and 2
    written = b"X" * 700  # unsynced, at 1000: shares sectors 1 and 2 with synced bytes
    fates: dict[str, int] = {}
    neighbours_garbled = {True: 0, False: 0}
    b_sizes: set[int] = set()
    for psow in (True, False):
        for seed in range(300):
            disk = Disk(random.Random(seed), powersafe_overwrite=psow)
            disk.track(a)
            disk.track(b)
            disk.write(a, 0, synced)
            disk.write(b, 0, b"b" * 600)
            disk.sync(a, wal=False)  # a's write only
            disk.write(a, 1000, written)
            disk.truncate(b, 100)
            disk.cut_now()
            for k, v in disk.fates.items():
                fates[k] = fates.get(k, 0) + v
            image_a, image_b = disk.images[a], disk.images[b]
            assert image_a is not None and image_b is not None
            assert image_a[:512] == synced[:512], "a sector no unsynced write touched changed"
            # Whole sectors of the write (the last one ends at 1700), or its whole sectors
            # of garbage without powersafe overwrite (to 2048).
            assert len(image_a) in (1275, 1536, 1700) + (() if psow else (2048,))
            if image_a[:1000] != synced[:1000] or image_a[1700:] != synced[1700:]:
                neighbours_garbled[psow] += 1
            b_sizes.add(len(image_b))
            assert len(image_b) in (0, 100, 512, 600) + (() if psow else (1024,))
    fault.inject(600)
    fault.figure(
        "unsynced writes kept / dropped / torn",
        f"{fates['kept']} / {fates['dropped']} / {fates['torn']}",
    )
    fault.figure(
        "synced bytes garbled by a neighbour's torn write (no powersafe overwrite)",
        neighbours_garbled[False],
    )
    assert fates["kept"] and fates["dropped"] and fates["torn"]
    assert 0 in b_sizes, "a sync of one file made another file's write durable"
    assert neighbours_garbled[True] == 0, "a torn write changed bytes outside its range"
    assert neighbours_garbled[False] > 0, "without powersafe overwrite no neighbour was hit"
