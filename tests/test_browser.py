"""The generated pages in a real browser: headless Chromium against ``artstore serve``.

Chromium and chromedriver are Debian packages (``chromium``, ``chromium-driver``) that
``.ci/run`` installs; this test installs nothing and is skipped when they are missing.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import pytest
import requests

from .archives import site_tgz
from .conftest import ADMIN, AUTH, Server, start_server, write_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs the Debian packages chromium and chromium-driver "
           "(/usr/bin/chromium, /usr/bin/chromedriver); .ci/run installs them")

IMG_NAME = "<img src=x onerror=alert(1)>.txt"
# A file name cannot hold "/", so "</script>" is out; an attribute breakout that needs
# no closing tag is the strongest variant a collection accepts.
SVG_NAME = "\"><svg onload=\"document.title='pwned'\">.bin"
LONG_NAME = "artstore-nightly-linux-x86_64-2025-11-25-0123456789abcdef0123456789abcdef.tar.gz"
LATEST_NAME = "notes 1.0.txt"
# Wraps window.alert & co. before any page script could run: records calls, never blocks.
SPY = ("window.__calls = [];"
       "for (const f of ['alert', 'confirm', 'prompt'])"
       "  window[f] = (...a) => { window.__calls.push([f, ...a.map(String)]); };")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``artstore serve`` with files at / and the API under /artstore, holding a project.

    Shared by the tests of this module, which only read it.
    """
    tmp_path = tmp_path_factory.mktemp("site")
    config = write_config(tmp_path / "state", serve_files=True)
    srv = start_server(tmp_path, ["--config", str(config), "--workers", "2"],
                       {"ARTSTORE_ADMIN_TOKEN": ADMIN}, tmp_path / "server.log",
                       api_prefix="/artstore")
    try:
        items = {"builds": {"type": "collection", "depth": 10}, "docs": {"type": "tgz"},
                 "report": {"type": "html"}}
        r = requests.post(f"{srv.url}/demo", json={"description": "Demo <b>project</b>",
                                                    "items": items}, headers=AUTH, timeout=30)
        assert r.status_code == 201, r.text

        def put(name: str, data: bytes, **meta: str) -> requests.Response:
            return requests.put(f"{srv.url}/demo/builds", params={"filename": name, **meta},
                                data=data, headers=AUTH, timeout=30)

        # The name the issue suggests holds a "/", which no collection file name may.
        r = put("\"><script>document.title='pwned'</script>.bin", b"x")
        assert r.status_code == 400, r.text
        for name, data, meta in [(SVG_NAME, b"\x00binary", {}),
                                 (IMG_NAME, b"hello from a hostile name\n", {}),
                                 (LONG_NAME, b"x" * 300_000, {"commit": "0123456789abcdef" * 4}),
                                 (LATEST_NAME, b"release notes\n",
                                  {"commit": "abc123", "branch": "<main>"})]:
            r = put(name, data, **meta)
            assert r.status_code == 201, r.text
        r = requests.post(f"{srv.url}/demo/docs", headers=AUTH, timeout=30, files={
            "item": ("site.tgz", site_tgz({"index.html": b"<!doctype html><title>Docs home</title>"
                                                     b"<h1>Hello docs</h1>"}))})
        assert r.status_code == 201, r.text
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def chromium(folder: Path, *args: str) -> Iterator[Any]:
    """A headless Chromium driven by selenium, its profile and driver log in ``folder``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # Root in a container, no network: without these Chromium hangs or refuses to start.
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions", "--window-size=1280,900",
                f"--user-data-dir={folder / 'chromium-profile'}", *args]:
        options.add_argument(arg)
    # Leave any dialog open so the test can see it, instead of an exception at a random step.
    options.unhandled_prompt_behavior = "ignore"
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(folder / "driver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module; each test starts by loading a page."""
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": SPY})
        yield driver


def _no_dialog(driver: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        text = None
    assert text is None, f"a dialog opened: {text!r}"
    assert driver.execute_script("return window.__calls") == []


def _wait_for(driver: Any, check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 15
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what} at {driver.current_url}"
        time.sleep(0.05)


def _assert_plain_page(driver: Any) -> None:
    """Generated pages: no script, no external asset, nothing loaded besides the page."""
    assert driver.execute_script("return document.scripts.length") == 0
    assert driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)") == []


def _assert_png(path: Path, width: int) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    w, h = struct.unpack(">II", data[16:24])
    assert w >= width and h > 100, (path, w, h)
    assert len(data) > 5000, (path, len(data))  # a blank page compresses to far less


def _link(driver: Any, href: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f"a[href=\"{href}\"]")


def test_collection_index_shows_hostile_names_as_text_and_links_work(
        site: Server, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    index = site.root + "/demo/builds/"
    browser.get(index)
    assert browser.current_url == index
    assert browser.title == "demo / builds"
    _no_dialog(browser)
    _assert_plain_page(browser)
    # Nothing from a file name became markup: no img, no svg, only the page's own elements.
    assert browser.execute_script(
        "return document.querySelectorAll('img, svg, script, iframe, object, embed').length") == 0
    assert browser.execute_script(
        "return [...document.querySelectorAll('*')].filter("
        "  e => [...e.attributes].some(a => a.name.startsWith('on'))).length") == 0
    body = browser.find_element(By.TAG_NAME, "body").text
    for name in (IMG_NAME, SVG_NAME, LONG_NAME, LATEST_NAME):
        assert name in body
    assert "branch: <main>" in body
    names = browser.execute_script(
        "return [...document.querySelectorAll('tbody a')].map(a => a.textContent)")
    assert names == [LATEST_NAME, LONG_NAME, IMG_NAME, SVG_NAME]  # newest first
    shot = tmp_path / "collection.png"
    assert browser.save_screenshot(str(shot))
    _assert_png(shot, 1000)

    # "latest" goes to the newest file.
    latest = browser.find_element(By.CSS_SELECTOR, "a.latest")
    assert LATEST_NAME in latest.text
    latest.click()
    _wait_for(browser, lambda: browser.current_url != index, "the latest file")
    assert browser.current_url == index + quote(LATEST_NAME)
    assert browser.find_element(By.TAG_NAME, "body").text == "release notes"
    _no_dialog(browser)

    # The hostile name's link is URL-encoded and leads to that very file.
    browser.back()
    _wait_for(browser, lambda: browser.current_url == index, "back to the index")
    _link(browser, quote(IMG_NAME)).click()
    _wait_for(browser, lambda: browser.current_url != index, "the hostile file")
    assert browser.current_url == index + quote(IMG_NAME)
    assert browser.find_element(By.TAG_NAME, "body").text == "hello from a hostile name"
    _no_dialog(browser)
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0

    # Up to the project through the breadcrumb.
    browser.get(index)
    _link(browser, "../").click()
    _wait_for(browser, lambda: browser.current_url == site.root + "/demo/", "the project page")
    assert browser.title == "demo"


def test_collection_index_fits_a_phone(site: Server, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 375, "height": 800, "deviceScaleFactor": 2, "mobile": True})
    try:
        for path, shot in [("/demo/builds/", "collection-phone.png"),
                           ("/demo/", "project-phone.png"), ("/", "root-phone.png")]:
            browser.get(site.root + path)
            _no_dialog(browser)
            # The layout viewport is the phone's width (the page has a viewport meta), and
            # nothing is wider than it: no sideways scrolling, no zoomed-out page.
            assert browser.execute_script("return document.documentElement.clientWidth") == 375
            assert browser.execute_script(
                "return document.documentElement.scrollWidth") <= 375, path
            assert browser.execute_script(
                "return window.innerWidth") == 375, path
            assert browser.save_screenshot(str(tmp_path / shot))
            _assert_png(tmp_path / shot, 375)
        browser.get(site.root + "/demo/builds/")
        # Every file's name is still there to tap, hostile or long.
        links = browser.find_elements(By.CSS_SELECTOR, "tbody a")
        assert [a.text for a in links] == [LATEST_NAME, LONG_NAME, IMG_NAME, SVG_NAME]
        for a in links:
            assert a.is_displayed() and a.size["height"] >= 16, (a.text, a.size)
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_root_and_project_index_lead_to_a_published_site(
        site: Server, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(site.root + "/")
    assert browser.title == "Projects"
    _no_dialog(browser)
    _assert_plain_page(browser)
    assert "Demo <b>project</b>" in browser.find_element(By.TAG_NAME, "body").text
    assert browser.execute_script("return document.querySelectorAll('b').length") == 0
    assert browser.save_screenshot(str(tmp_path / "root.png"))
    _assert_png(tmp_path / "root.png", 1000)
    _link(browser, "demo/").click()
    project = site.root + "/demo/"
    _wait_for(browser, lambda: browser.current_url == project, "the project page")

    assert browser.title == "demo"
    _no_dialog(browser)
    _assert_plain_page(browser)
    body = browser.find_element(By.TAG_NAME, "body").text
    for item in ("builds", "docs", "report"):
        assert item in body
    assert "never published" in body  # the html item has no upload yet
    assert browser.find_elements(By.CSS_SELECTOR, "a[href=\"report/\"]") == []
    shot = tmp_path / "project.png"
    assert browser.save_screenshot(str(shot))
    _assert_png(shot, 1000)

    _link(browser, "docs/").click()
    _wait_for(browser, lambda: browser.current_url == project + "docs/", "the docs site")
    assert browser.title == "Docs home"
    assert browser.find_element(By.TAG_NAME, "h1").text == "Hello docs"

    browser.back()
    _wait_for(browser, lambda: browser.current_url == project, "back to the project page")
    _link(browser, "builds/").click()
    _wait_for(browser, lambda: browser.current_url == project + "builds/", "the collection")
    assert browser.title == "demo / builds"
    _link(browser, "../../").click()
    _wait_for(browser, lambda: browser.current_url == site.root + "/", "the root page")
    assert browser.title == "Projects"
