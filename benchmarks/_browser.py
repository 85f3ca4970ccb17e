"""Headless Debian Chromium for the report benchmarks (Playwright drives /usr/bin/chromium).

The flags keep Chromium off the network: this machine has none, and without
them Chromium tries to reach Google's hosts at every start.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def browser_page() -> Iterator[Any]:
    """A fresh Playwright page in headless Chromium with its own profile."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=exe, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield ctx.new_page()
        finally:
            ctx.close()


def render_seconds(page: Any, path: Path, ready_js: str) -> float:
    """Seconds from navigation to the page drawn: ``ready_js`` true, then two frames."""
    t0 = time.perf_counter()
    page.goto(path.absolute().as_uri(), wait_until="load", timeout=120_000)
    page.wait_for_function(ready_js, timeout=120_000, polling=10)
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    return time.perf_counter() - t0
