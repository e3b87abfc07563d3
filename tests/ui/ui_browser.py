"""Headless Chromium for the demo page's tests: finding it (or the reason to skip), starting it with the
browser log on, reading that log, and waiting on the page."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

# Importing this module skips the tests that use it when selenium is absent.
SKIP_REASON = "selenium is not installed (pip install -e '.[ui-test]')"
webdriver = pytest.importorskip("selenium.webdriver", reason=SKIP_REASON)
support_ui = pytest.importorskip("selenium.webdriver.support.ui", reason=SKIP_REASON)
exceptions = pytest.importorskip("selenium.common.exceptions", reason=SKIP_REASON)

# Debian names the binaries chromium / chromedriver; other distributions and Google's builds differ.
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVER_NAMES = ("chromedriver",)
INSTALL_HINT = "apt-get install chromium chromium-driver"
WAIT_S = 30.0  # a segmentation of the demo model on a busy 2-core machine, with room to spare
# Chromium logs every non-2xx answer of fetch() as a SEVERE "Failed to load resource" entry; tests that
# provoke an API error allow exactly that entry for that status.
FAILED_RESOURCE = "the server responded with a status of {status}"


def find_browser() -> tuple[str, str]:
    """Paths of Chromium and its driver; skips the calling test module (with the reason) when either is
    missing, before any server starts."""
    browser = next((path for name in BROWSER_NAMES if (path := shutil.which(name))), None)
    driver = next((path for name in DRIVER_NAMES if (path := shutil.which(name))), None)
    if browser is None:
        pytest.skip(
            f"no Chromium browser on PATH (looked for {', '.join(BROWSER_NAMES)}; {INSTALL_HINT})",
            allow_module_level=True,
        )
    if driver is None:
        pytest.skip(f"no chromedriver on PATH ({INSTALL_HINT})", allow_module_level=True)
    return browser, driver


def start_chromium(browser: str, driver: str, *, width: int, height: int, downloads: Path) -> webdriver.Chrome:
    """A headless Chromium session that records the page's console (``goog:loggingPrefs``) and saves
    downloads in ``downloads`` without asking."""
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def console_errors(driver: Any, allowed: Iterable[str] = ()) -> list[str]:
    """SEVERE entries of the browser log since the last call (reading drains it), minus those containing one
    of ``allowed``."""
    allowed = tuple(allowed)
    entries = driver.get_log("browser")
    return [
        entry["message"]
        for entry in entries
        if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in allowed)
    ]


def assert_no_console_errors(driver: Any, allowed: Iterable[str] = ()) -> None:
    errors = console_errors(driver, allowed)
    assert not errors, "the page logged errors:\n" + "\n".join(errors)


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """``condition``'s first truthy value; fails naming ``what`` and showing the page's status and error."""
    try:
        return support_ui.WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(condition)
    except exceptions.TimeoutException:
        status = driver.execute_script(
            "return [document.getElementById('status').textContent,"
            " document.getElementById('error').textContent, document.getElementById('model-summary').textContent]"
        )
        raise AssertionError(f"timed out waiting for {what}; status, error, model: {status}") from None


def visible_text(driver: Any, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById({element_id!r}).textContent").strip()


def is_shown(driver: Any, element_id: str) -> bool:
    return bool(driver.execute_script(f"return !document.getElementById({element_id!r}).hidden"))


SHARE = re.compile(r"^(<\s*)?([0-9.]+)\s*%$")


def legend(driver: Any) -> list[tuple[str, str]]:
    """(class name, share as shown) of every legend entry, in page order."""
    return [
        tuple(row)
        for row in driver.execute_script(
            "return Array.from(document.querySelectorAll('#legend li')).map(li =>"
            " [li.querySelector('.class-name').textContent, li.querySelector('.share').textContent])"
        )
    ]
