"""Make docs/report.png, the README's picture of an HTML run report.

    python docs/report_screenshot.py

The report is of tests/reportdata.py's hand-built run (400 items on 4
threads: retries, restored items, three failure types including a crashed
worker), drawn by ``BatchReport.to_html`` and shot in headless Chromium.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from _browser import browser_page  # noqa: E402

from reportdata import realistic_report  # noqa: E402


def main() -> None:
    report, _ = realistic_report()
    with tempfile.TemporaryDirectory() as tmp, browser_page() as page:
        path = report.to_html(Path(tmp, "report.html"))
        page.set_viewport_size({"width": 1180, "height": 900})
        page.goto(path.as_uri(), wait_until="load")
        out = ROOT / "docs" / "report.png"
        page.screenshot(path=str(out), full_page=True)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
