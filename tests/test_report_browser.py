"""The HTML run report opened in a real browser: headless Debian Chromium, driven by Playwright.

One Chromium is started per test session (a fresh profile, networking flags
off: this machine has no network and Chromium would keep trying), each test
opens a page in it. Every request the page makes is recorded and any that is
not the report file itself is aborted and fails the test; console errors and
uncaught page errors fail it too. Counts are read from the rendered DOM.

Skipped, saying why, where Playwright or Chromium is missing (``.ci/run``
installs Debian's ``chromium`` when it runs as root). The screenshots are
kept under pytest's temporary directory (``report-screens*``), printed with -s.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import shoal
from reportdata import realistic_report
from shoal._report.page import NO_TIMES
from shoal.cli import main as cli_main

pytest.importorskip("matplotlib", reason='the report needs matplotlib: pip install "shoal[report]"')
sync_api = pytest.importorskip(
    "playwright.sync_api", reason='playwright is not installed (pip install -e ".[dev]")')

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run "
                    "installs it when run as root)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=exe, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()


@dataclass
class Opened:
    page: Any
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def count(self, selector: str) -> int:
        return int(self.page.locator(selector).count())

    def attr(self, selector: str, name: str) -> str:
        return str(self.page.locator(selector).get_attribute(name))


@pytest.fixture
def open_report(browser: Any) -> Iterator[Any]:
    pages: list[Any] = []

    def open_(path: Path) -> Opened:
        page = browser.new_page()
        pages.append(page)
        url = path.absolute().as_uri()
        opened = Opened(page)

        def on_route(route: Any) -> None:
            opened.requests.append(route.request.url)
            if route.request.url == url:
                route.continue_()
            else:  # anything else would be a fetch a self-contained page must not make
                route.abort()

        page.route("**/*", on_route)
        page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: opened.errors.append(str(exc)))
        page.goto(url, wait_until="load")
        # All images decoded: a broken data: URI would show as naturalWidth 0.
        page.wait_for_function("() => [...document.images].every(i => i.complete)")
        return opened

    yield open_
    for page in pages:
        page.close()


def loaded_cleanly(opened: Opened, path: Path) -> None:
    assert opened.errors == []
    assert opened.requests == [path.absolute().as_uri()]
    broken = opened.page.evaluate("() => [...document.images].filter(i => !i.naturalWidth).length")
    assert broken == 0


def test_full_report_in_chromium(open_report: Any, tmp_path: Path,
                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    report, want = realistic_report()
    path = report.to_html(tmp_path / "report.html")
    opened = open_report(path)
    loaded_cleanly(opened, path)
    for section in ("run", "throughput", "workers", "latency", "failures"):
        assert opened.count(f"section#{section}") == 1
    cards = {k: opened.attr(f'#run .card[data-key="{k}"]', "data-count")
             for k in ("total", "ok", "failed", "retried", "retries", "restored")}
    assert cards == {"total": str(want.total), "ok": str(want.ok), "failed": str(want.failed),
                     "retried": str(want.retried), "retries": str(want.retries),
                     "restored": str(want.restored)}
    assert opened.count("#run table.settings tr") == len(report.settings)
    assert opened.page.locator('#run tr[data-key="backend_reason"] td').inner_text() == (
        report.backend_reason)
    assert opened.count("#throughput img.chart") == 1
    assert opened.attr("#workers", "data-rows") == str(want.workers)
    assert opened.count("#workers img.chart") == 1
    # Latency: the three percentiles as BatchReport computes them, the 10 slowest items.
    for q in (50, 95, 99):
        seconds = float(opened.attr(f'#latency [data-q="{q}"]', "data-seconds"))
        assert seconds == pytest.approx(report.latency(q))
    slow = opened.page.locator("#latency tr.slow-item")
    assert slow.count() == 10 and slow.first.get_attribute("data-index") == "77"
    # Failures: one group per exception type, with its count, examples and one traceback.
    assert opened.attr("#failures", "data-count") == str(want.failed)
    groups = opened.page.locator("#failures details.failure-group")
    seen = {}
    for i in range(groups.count()):
        group = groups.nth(i)
        n = int(str(group.get_attribute("data-count")))
        seen[str(group.get_attribute("data-type"))] = n
        assert group.locator("li.example").count() == min(n, 5)
        assert group.locator("pre.traceback").count() == 1
    assert seen == want.by_type
    crash = opened.page.locator('details[data-type="WorkerCrashed"]')
    crash.locator("summary").click()  # closed groups open on a click
    assert "segfault in native_call" in crash.locator("pre.traceback").inner_text()

    shots = tmp_path_factory.mktemp("report-screens")
    shot = shots / "report.png"
    opened.page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_report_without_start_times_in_chromium(open_report: Any, tmp_path: Path) -> None:
    report, want = realistic_report(timed=False)
    path = report.to_html(tmp_path / "untimed.html")
    opened = open_report(path)
    loaded_cleanly(opened, path)
    for section in ("throughput", "workers"):
        assert opened.page.locator(f"#{section} .no-times").inner_text() == NO_TIMES
        assert opened.count(f"#{section} img") == 0
    assert opened.count("#latency img.chart") == 1
    assert opened.count("#failures details.failure-group") == len(want.by_type)


def test_large_report_in_chromium(open_report: Any, tmp_path: Path) -> None:
    report, want = realistic_report(20_000, workers=16)
    path = report.to_html(tmp_path / "large.html")
    opened = open_report(path)
    loaded_cleanly(opened, path)
    assert opened.attr("#workers", "data-mode") == "occupancy"
    assert opened.attr("#run .card[data-key='total']", "data-count") == "20000"
    assert opened.attr("#failures", "data-count") == str(want.failed)


def fails_some(x: int) -> int:
    if x % 4 == 0:
        raise ValueError(f"multiple of four: {x}")
    return x


def test_checkpoint_report_from_the_cli_in_chromium(open_report: Any, tmp_path: Path) -> None:
    db, out = tmp_path / "run.db", tmp_path / "cli.html"
    shoal.run(fails_some, range(30), backend="threads", workers=2, checkpoint=str(db))
    assert cli_main(["report", str(db), "--html", str(out)]) == 0
    opened = open_report(out)
    loaded_cleanly(opened, out)
    assert opened.attr('#failures details[data-type="ValueError"]', "data-count") == "8"
    assert opened.attr("#run .card[data-key='total']", "data-count") == "30"


def test_the_checks_see_a_fetch_and_an_error(open_report: Any, tmp_path: Path) -> None:
    """A control: a page that does fetch and fail is caught by the same checks."""
    path = tmp_path / "leaky.html"
    path.write_text("<!doctype html><img src='http://127.0.0.1:9/x.png'>"
                    "<script>console.error('boom')</script>", encoding="utf-8")
    opened = open_report(path)
    assert "http://127.0.0.1:9/x.png" in opened.requests
    assert "boom" in opened.errors
