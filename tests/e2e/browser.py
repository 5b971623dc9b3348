"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Playwright for Python.

Playwright cannot download its own browsers here, so the tests drive the system's Chromium
(``apt-get install -y chromium``; ``.ci/run`` installs it when missing). A missing browser or
Playwright fails the test with that hint; nothing is skipped. The browser is closed by the context
manager whatever happens, so no Chromium process outlives a test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = os.environ.get("TRIGGER_KIT_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INSTALL_HINT = (
    "the browser tests need Debian's Chromium and Playwright for Python: `apt-get install -y chromium` "
    "and `make install` (Playwright is in the test extra); set TRIGGER_KIT_CHROMIUM for another binary"
)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser (Playwright ``Browser``), closed on exit."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: {INSTALL_HINT}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright is not installed: {INSTALL_HINT}", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
