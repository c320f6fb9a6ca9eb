"""Browser tests of the dashboard: Playwright driving Debian's headless Chromium against a live server.

The browser is the system's `chromium` (Debian's package, found on PATH and passed as
`executable_path`): nothing is downloaded. Where it (or the playwright package) is missing, the
tests fail when CI is set, so that a CI run can never pass without having run them, and skip
otherwise with the command that installs it (`make browser`, which the test target runs first).

Screenshots go to test-output/screenshots/ (gitignored), one per test at least, and one on failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, REPO_ROOT, LiveServer, free_port, live_server_env

SCREENSHOTS = REPO_ROOT / "test-output" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}


def _unavailable(reason: str) -> None:
    message = f"{reason}: run `make browser` (apt-get install -y chromium) and `make install`"
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run in CI: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        _unavailable("Debian's chromium is not installed")
    return str(path)


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("ui-server")
    port = free_port()
    data_dir = root / "data"
    srv = LiveServer(
        base_url=f"http://127.0.0.1:{port}",
        port=port,
        data_dir=data_dir,
        env=live_server_env(data_dir, port, {"MAX_UPLOAD_MB": "20", "SSE_PING_S": "1"}),
        log_path=root / "server.log",
    )
    srv.start()
    yield srv
    srv.close()


@dataclass
class Watched:
    """A page and what it did that a test must not miss: dialogs, script errors, CSP violations."""

    page: Any
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def ui(browser: Any, server: LiveServer, request: pytest.FixtureRequest) -> Iterator[Watched]:
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True, base_url=server.base_url)
    page = context.new_page()
    page.set_default_timeout(30_000)
    watched = Watched(page)

    def on_dialog(dialog: Any) -> None:
        watched.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_console(message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            watched.errors.append(message.text)

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("pageerror", lambda exc: watched.errors.append(f"page error: {exc}"))
    yield watched
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        watched.shot(f"FAILED-{request.node.name}")
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


def api_login(base_url: str) -> dict[str, str]:
    r = httpx.post(
        f"{base_url}/auth/login", json={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}, timeout=30
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def log_in(ui: Watched, password: str = ADMIN_PASSWORD) -> None:
    page = ui.page
    page.goto("/ui/")
    page.get_by_label("Username").fill(ADMIN_USERNAME)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
