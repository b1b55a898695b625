"""The report in a real headless Chromium (Debian's `chromium`, driven by Playwright): every chart renders,
nothing is logged to the console, and no request leaves the file (the network is blocked, so a request
for a script would also fail the page). Skipped, saying why, where Chromium cannot be installed.

    NANOSTUDY_UPDATE_SCREENSHOT=1 pytest tests/test_report_browser.py    # also rewrites docs/report.png
"""

import os
import shutil
from pathlib import Path

import pytest
from browser_fixtures import headless_chromium
from report_fixtures import build_study, empty_study, sparse_study

from reports.report import write_report

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "report.png"
MAX_SCREENSHOT_BYTES = 500_000
RENDERED = "[...document.querySelectorAll('div.chart')].every((d) => d.dataset.rendered)"


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as browser:
        yield browser


def _open(browser, path: Path):
    """The page loaded and rendered, with what it logged and every request it made."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    console, requests, blocked = [], [], []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    page.on("request", lambda request: requests.append(request.url))

    def only_files(route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_files)
    page.goto(path.as_uri())
    page.wait_for_function(RENDERED, timeout=60_000)
    return page, console, requests, blocked


def test_every_chart_renders_offline_with_a_clean_console(browser, tmp_path: Path) -> None:
    store = build_study(tmp_path / "nanostudy.db")
    out = tmp_path / "synthetic.html"
    write_report(store, "synthetic", out, n_boot=100)  # with reports.fit
    page, console, requests, blocked = _open(browser, out)

    charts = page.evaluate(
        "[...document.querySelectorAll('div.chart')].map((d) => [d.dataset.name, d.dataset.rendered,"
        " d.querySelectorAll('svg g').length])"
    )
    assert len(charts) == 9
    for name, rendered, num_groups in charts:
        assert rendered == "true" and num_groups > 10, f"chart {name}: {rendered}, {num_groups} svg groups"
    assert console == []
    assert blocked == [] and requests == [out.as_uri()]

    # The top of the report (summary, isoflop curves, N* and D*) for the docs.
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": 2000})
    assert 50_000 < shot.stat().st_size < MAX_SCREENSHOT_BYTES
    if os.environ.get("NANOSTUDY_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, SCREENSHOT)

    # The table of cells filters as you type.
    page.fill("#cell-filter", "diverged")
    assert page.locator("#cells tbody tr:not(.hidden)").count() == 1
    page.fill("#cell-filter", "")
    page.select_option("#cell-state", "done")
    assert page.locator("#cells tbody tr:not(.hidden)").count() == 12
    page.select_option("#cell-state", "")

    page.close()


def test_bad_input_renders_what_it_has(browser, tmp_path: Path) -> None:
    """No finished cell; budgets with too few points for a parabola or a bootstrap interval."""
    store = empty_study(tmp_path / "empty.db")
    out = tmp_path / "empty.html"
    write_report(store, "empty", out)
    page, console, requests, blocked = _open(browser, out)
    assert page.locator("div.chart[data-rendered=true]").count() == 2
    assert "no finished pretraining cell" in page.inner_text(".notice")
    assert console == [] and blocked == [] and requests == [out.as_uri()]
    page.close()

    store = sparse_study(tmp_path / "sparse.db")
    out = tmp_path / "sparse.html"
    write_report(store, "sparse", out, n_boot=20)
    page, console, requests, blocked = _open(browser, out)
    assert page.locator("div.chart[data-rendered=true]").count() == 6  # isoflop, 3 optima, curves, speed
    assert "budget 1e+18: 1 point(s)" in page.inner_text(".notice")
    assert console == [] and blocked == [] and requests == [out.as_uri()]  # no interval: no empty layer
    page.close()
