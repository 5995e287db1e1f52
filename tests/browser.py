"""Headless Chromium for browser tests (Playwright with Debian's chromium).

    with browser_page() as page:
        login(page, live_server.url, "reviewer", "password")
        page.goto(f"{live_server.url}/proposals/")
        screenshot(page, "proposals")

Screenshots go to test-artifacts/ (git-ignored). Tests using this are marked
``@pytest.mark.browser`` and skip when Playwright or Chromium is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not path:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    return path


@contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A fresh page in a fresh headless Chromium; console errors are collected on the page."""
    sync_api = pytest.importorskip("playwright.sync_api")
    # Django refuses ORM calls from a thread with a running event loop; Playwright's sync
    # API runs one, and tests still use the ORM between browser steps.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            page.console_errors = []  # type: ignore[attr-defined]
            page.on(
                "console",
                lambda message: (
                    page.console_errors.append(message.text)  # type: ignore[attr-defined]
                    if message.type == "error"
                    else None
                ),
            )
            page.failed_requests = []  # type: ignore[attr-defined]
            page.on(
                "response",
                lambda response: (
                    page.failed_requests.append(f"{response.status} {response.url}")  # type: ignore[attr-defined]
                    if response.status >= 400 and not response.url.endswith("/favicon.ico")
                    else None
                ),
            )
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


def roles_ensure() -> None:
    """Browser tests run on live_server (a transactional database): the flush between tests
    removes the role groups the roles migration made. Call this before creating users."""
    from django.contrib.auth.models import Group

    from controlplane.roles import ROLE_NAMES

    for name in ROLE_NAMES:
        Group.objects.get_or_create(name=name)


def login(page: Any, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
