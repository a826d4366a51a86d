"""Headless Chromium for the tests that look at a page as a person would: ichseg's viewer, and a
PACS's own web viewer showing what ichseg sent it (a pytest plugin, see ``tests/conftest.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def headless_chromium() -> Any:
    """Debian's Chromium, headless, driven by its chromedriver (no driver download), its console log
    kept (``goog:loggingPrefs``); the caller quits it."""
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        # A failure, not a skip: make test installs them, and a skipped browser test would hide a broken viewer.
        pytest.fail(
            f"{CHROMIUM} and {CHROMEDRIVER} are needed: run `make browser` (apt-get install chromium chromium-driver)"
        )
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for (or download) a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    driver = headless_chromium()
    try:
        yield driver
    finally:
        driver.quit()
