"""The page at ``/`` in a real headless Chromium: type a prompt, watch the text stream in."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ml_playground.configuration.models import ExperimentConfig
from tests.serving_helpers import REPO_ROOT, ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT = REPO_ROOT / ".cache" / "screenshots" / "serve-page.png"


@pytest.fixture
def browser() -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no Chromium on this machine: `make browser` (Debian's chromium and chromium-driver) installs it")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_typing_a_prompt_streams_the_same_text_the_api_gives(
    trained_tiny: tuple[ExperimentConfig, list[str]], browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    _, overrides = trained_tiny
    with ServerProcess("shakespeare", overrides) as server:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: "step 30" in d.find_element(By.ID, "model-info").text)
        prompt = browser.find_element(By.ID, "prompt")
        prompt.send_keys("ROMEO:")
        for field, value in (("max_tokens", "120"), ("seed", "11")):
            element = browser.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("done"))
        shown = browser.find_element(By.ID, "generated").text
        status = browser.find_element(By.ID, "status").text
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))
        body = {"prompt": "ROMEO:", "max_tokens": 120, "seed": 11, "temperature": 0.8}
        expected = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    finished = re.fullmatch(r"done \(length, (\d+) chunks\)", status)
    assert finished is not None, status
    assert 1 <= int(finished.group(1)) <= 120  # one chunk per token, or fewer where the page read slower
    # The page shows what the API returns for the same settings (the browser folds trailing spaces).
    assert shown.split() == expected.split()
    assert Path(SCREENSHOT).stat().st_size > 10_000
