"""A table's "Export CSV" in a real Chromium: the CSV is built on click (a deferred download), and holds the
table's columns."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from .e2e_stack import CHROMIUM, PAGE_TIMEOUT_MS, Stack, launch_chromium, open_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Debian's chromium is not at {CHROMIUM}"),
]


def test_the_system_heartbeat_table_exports_its_rows_on_click() -> None:
    from playwright.sync_api import sync_playwright

    with Stack(bar_interval=0.5) as stack, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1400}, accept_downloads=True)
            page = context.new_page()
            open_page(page, stack.url, "System")
            with page.expect_download(timeout=PAGE_TIMEOUT_MS) as download:
                page.get_by_role("button", name="Export CSV").first.click()
            text = open(download.value.path(), encoding="utf-8", newline="").read()  # noqa: SIM115 - a temp file
        finally:
            browser.close()
    rows: list[Any] = list(csv.reader(io.StringIO(text)))
    assert rows and "daemon" in rows[0]
    assert {"stream", "monitor"} <= {r[rows[0].index("daemon")] for r in rows[1:]}
