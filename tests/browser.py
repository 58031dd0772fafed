"""A real headless browser for the status page: Debian's ``chromium`` driven by Selenium
through ``chromium-driver`` (``/usr/bin/chromedriver``).

``make test`` installs both with apt where it can (root, apt-get present); elsewhere
``browser_unavailable()`` says why and the tests skip with that reason. The same helper
takes the README's screenshot (``tools/status_screenshot.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)
INSTALL_HINT = ("apt-get install -y chromium chromium-driver (as root), which `make test` "
                "does where apt is available")


def _find(env: str, names: tuple[str, ...]) -> str | None:
    given = os.environ.get(env)
    if given:
        return given if Path(given).exists() else None
    for n in names:
        found = shutil.which(n)
        if found:
            return found
    return None


def browser_paths() -> tuple[str | None, str | None]:
    """(chromium, chromedriver), either None when not found. ``MONITOR_CHROMIUM`` and
    ``MONITOR_CHROMEDRIVER`` override the search of ``PATH``."""
    return _find("MONITOR_CHROMIUM", CHROMIUM_NAMES), _find("MONITOR_CHROMEDRIVER", DRIVER_NAMES)


def browser_unavailable() -> str | None:
    """None when a headless Chromium can be driven here, else why not."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    chromium, driver = browser_paths()
    if chromium is None:
        return f"no chromium executable on PATH; {INSTALL_HINT}"
    if driver is None:
        return f"no chromedriver on PATH; {INSTALL_HINT}"
    return None


@contextlib.contextmanager
def chromium(*, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium under Selenium (``webdriver.Chrome``), closed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = browser_paths()
    assert binary is not None and driver_path is not None, browser_unavailable()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", "--hide-scrollbars",
                "--force-device-scale-factor=1", f"--window-size={width},{height}"):
        options.add_argument(arg)
    # the page must work without JavaScript: the browser runs with it off
    options.add_experimental_option(
        "prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()


def send_header(driver: Any, name: str, value: str) -> None:
    """Every request the page makes from now on carries this header (DevTools)."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {name: value}})


def screenshot_page(driver: Any, url: str, out: Path, *, width: int = 1280) -> None:
    """Load ``url`` and save the whole page (its full height) as a PNG."""
    driver.get(url)
    height = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]["height"]
    driver.set_window_size(width, int(height) + 140)  # + the window's own frame
    driver.get(url)
    out.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out))
