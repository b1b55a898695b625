"""A real headless Chromium for the browser tests (Debian's `chromium`, driven by Playwright).

Installed by scripts/install-chromium.sh when it is missing; a test that asks for it is skipped, saying
why, where Chromium cannot be installed or Playwright is not.
"""

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> Path:
    if not CHROMIUM.exists():
        script = ROOT / "scripts" / "install-chromium.sh"
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not CHROMIUM.exists():
            pytest.skip(
                f"no Chromium at {CHROMIUM} and {script.name} could not install it: {done.stderr.strip()}"
            )
    return CHROMIUM


@contextlib.contextmanager
def headless_chromium() -> Iterator:
    """A Playwright browser on Chromium, closed on the way out (the test skips if there can be none)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (uv sync)")
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=ARGS)
        yield browser
        browser.close()
