"""Fixtures of the dashboard tests: a seeded database, live servers, headless Chromium.

Browser tests drive Debian's Chromium (``apt-get install chromium``) through Playwright's
Python client with ``executable_path`` — Playwright never downloads a browser here. Without
Chromium they skip with the install command, unless ``HOOKQUEUE_REQUIRE_SERVICES=1`` (set by
``.ci/run``), when they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _dashboard import LiveServer, seed

from hookqueue.contrib.dashboard import create_app

#: Read at import time: the autouse fixture of tests/conftest.py clears HOOKQUEUE_* variables
#: before each test.
REQUIRE_SERVICES = os.environ.get("HOOKQUEUE_REQUIRE_SERVICES") == "1"
CHROMIUM = os.environ.get("HOOKQUEUE_CHROMIUM", "/usr/bin/chromium")
INSTALL = "apt-get install -y chromium (Debian's Chromium; Playwright downloads nothing here)"
#: Without the networking switches Chromium calls home (updates, sync, field trials), which
#: floods a closed network with failing requests.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="session")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A database with an hour of realistic history, shared by the read-only views' tests;
    tests that act copy it (:func:`fresh_db`)."""
    path = tmp_path_factory.mktemp("seeded") / "queue.db"
    ids = seed(path)
    return path, ids


@pytest.fixture
def fresh_db(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A newly seeded database of this test's own."""
    path = tmp_path / "queue.db"
    return path, seed(path)


@pytest.fixture
def serve() -> Iterator[Callable[..., LiveServer]]:
    """``serve(app)`` starts a live uvicorn server on 127.0.0.1; all stop after the test."""
    servers: list[LiveServer] = []

    def start(app: Any) -> LiveServer:
        server = LiveServer(app)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def dashboard(serve: Callable[..., LiveServer], fresh_db: tuple[Path, dict[str, Any]]) -> Any:
    """A dashboard served live on a fresh seeded database (opened by path, like
    ``hookqueue dashboard --db``)."""
    path, ids = fresh_db
    server = serve(create_app(path))
    server.db_path = path  # type: ignore[attr-defined]
    server.ids = ids  # type: ignore[attr-defined]
    return server


@pytest.fixture(scope="session")
def screenshots(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Callable[[Any, str], Path]:
    """``shot(page, name)`` writes ``name.png`` under the run's temporary directory (and into
    ``--screenshots-dir`` when given); returns the first path."""
    out = tmp_path_factory.mktemp("screenshots")
    extra = pytestconfig.getoption("--screenshots-dir")

    def shot(page: Any, name: str) -> Path:
        path = out / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(extra) / path.name)
        return path

    return shot


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium per test module, with a fresh user-data-dir.

    Module-scoped on purpose: Playwright's synchronous API keeps an event loop in the main
    thread while it runs, and ``asyncio.run`` (``run_until_idle``) cannot start there until
    it stops."""
    if not os.path.exists(CHROMIUM):
        message = f"Chromium is not installed at {CHROMIUM}: {INSTALL}"
        if REQUIRE_SERVICES:
            pytest.fail(f"HOOKQUEUE_REQUIRE_SERVICES=1 and {message}")
        pytest.skip(message)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        message = "the playwright package is missing: pip install -e '.[test]'"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 860},
            timezone_id="UTC",
            locale="en-GB",
        )
        context.set_default_timeout(10_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    """A new tab with no cookies; fails the test on a JavaScript error or a console error
    (a Content-Security-Policy violation is one)."""
    browser_context.clear_cookies()
    tab = browser_context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    tab.on(
        "console",
        lambda msg: (
            errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )
    yield tab
    tab.close()
    assert not errors, errors
