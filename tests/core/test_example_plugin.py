"""The example third-party plugin, installed into a fresh virtual environment, is found through
its entry point, runs, adds a subcommand, and can be blocked by name."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hookqueue-audit"

SCRIPT = """
import json, sys
from hookqueue import Queue, WorkerEngine
from hookqueue.core.plugins import plugin_statuses
q = Queue(sys.argv[1])
q.handlers.register_handler("greet", lambda task: "hello")
task = q.enqueue("greet")
WorkerEngine(q, worker_id="w").run_until_idle()
states = {s.name: s.state for s in plugin_statuses(q.pm)}
print(json.dumps({"audit": states.get("audit"), "headers": dict(task.headers),
                  "status": q.get(task.id).status.value}))
"""


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    # The fresh environment sees this one's packages (hookqueue, editable or not, and its
    # dependencies) through a .pth line that runs site.addsitedir, so their own .pth files
    # (the editable install's finder) are processed too; hookqueue is not rebuilt.
    child_site = Path(
        subprocess.run(
            [str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    parents = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    lines = [f"import site; site.addsitedir({p!r})" for p in sorted(parents)]
    (child_site / "_hookqueue_parent.pth").write_text("\n".join(lines) + "\n")
    subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", str(EXAMPLE)],
        check=True, capture_output=True,
    )  # fmt: skip
    return env


def _run(env: Path, args: list[str], **extra_env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HOOKQUEUE_")}
    environ.update(extra_env)
    return subprocess.run(
        [str(env / "bin" / "python"), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )


def test_installed_plugin_loads_runs_and_can_be_blocked(fresh_env: Path, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    db = tmp_path / "q.db"
    result = _run(fresh_env, ["-c", SCRIPT, str(db)], HOOKQUEUE_AUDIT_LOG=str(log))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["audit"] == "active"
    assert "enqueued_by" in out["headers"]
    assert out["status"] == "completed"
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events == ["enqueued", "started", "completed"]

    cli = _run(fresh_env, ["-m", "hookqueue", "audit", "--log", str(log)])
    assert cli.returncode == 0, cli.stderr
    assert "completed" in cli.stdout and "enqueued" in cli.stdout

    plugins = _run(fresh_env, ["-m", "hookqueue", "plugins", "--json"])
    assert {"name": "audit", "state": "active"}.items() <= next(
        p for p in json.loads(plugins.stdout) if p["name"] == "audit"
    ).items()

    log.unlink()
    blocked = _run(
        fresh_env, ["-c", SCRIPT, str(tmp_path / "q2.db")],
        HOOKQUEUE_AUDIT_LOG=str(log), HOOKQUEUE_DISABLE_PLUGINS="audit",
    )  # fmt: skip
    assert blocked.returncode == 0, blocked.stderr
    out = json.loads(blocked.stdout)
    assert out["audit"] == "blocked" and out["headers"] == {} and out["status"] == "completed"
    assert not log.exists()


def test_the_plugin_is_not_visible_outside_its_environment(db_path: Path) -> None:
    from hookqueue import Queue
    from hookqueue.core.plugins import plugin_statuses

    q = Queue(db_path)
    assert "audit" not in {s.name for s in plugin_statuses(q.pm)}
    q.close()
