"""The search page in a real headless browser (Debian's chromium + chromedriver, driven by
Selenium): type a sentence and see the result thumbnails load; choose a photo and see similar
photos and sentences. scripts/test.sh installs the browser when it is missing."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from test_retrieval_support import search_setup

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                "--disable-dev-shm-usage"]  # fmt: skip


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        pytest.skip(f"headless browser test: {', '.join(missing)} not installed and scripts/test.sh could not "
                    "install Debian's chromium + chromium-driver here")  # fmt: skip
    pytest.importorskip("selenium", reason="headless browser test: the selenium package is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need_browser()
    import uvicorn

    from itmatch.retrieval import SearchEngine
    from itmatch.retrieval.service import create_app

    setup = search_setup(tmp_path_factory)
    app = create_app(engine=SearchEngine.open(setup.index))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        if time.time() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield setup, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


LOADED_IMAGES = """
const imgs = Array.from(document.querySelectorAll('#results img'));
return imgs.map(i => [i.complete, i.naturalWidth, i.getAttribute('src')]);
"""


def _wait(driver, condition, what: str, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition, message=f"timed out waiting for {what}")


def _results_loaded(n: int):
    def check(driver):
        imgs = driver.execute_script(LOADED_IMAGES)
        return imgs if len(imgs) == n and all(c and w > 0 for c, w, _ in imgs) else False

    return check


def test_typing_a_sentence_shows_result_photos(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    setup, url = server
    browser.get(url + "/")
    _wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), "the health check")
    assert "20 photos, 160 sentences" in browser.find_element(By.ID, "status").text
    Select(browser.find_element(By.ID, "k")).select_by_visible_text("10")
    box = browser.find_element(By.ID, "query")
    box.send_keys("a large green triangle on a striped background", Keys.ENTER)
    imgs = _wait(browser, _results_loaded(10), "10 result thumbnails to load")
    assert all(src.startswith("/thumbs/") for _, _, src in imgs)
    scores = [float(e.text) for e in browser.find_elements(By.CSS_SELECTOR, "#results .score")]
    assert len(scores) == 10 and scores == sorted(scores, reverse=True)
    assert "10 photos for" in browser.find_element(By.ID, "message").text

    # "similar" on the first result: a new grid without that photo.
    first = browser.find_element(By.CSS_SELECTOR, "#results figure img").get_attribute("alt")
    browser.find_element(By.CSS_SELECTOR, "#results figure button").click()
    _wait(browser, lambda d: f"photos like {first}" in d.find_element(By.ID, "query-photo").text, "similar photos")
    _wait(browser, _results_loaded(10), "similar photos to load")
    alts = [e.get_attribute("alt") for e in browser.find_elements(By.CSS_SELECTOR, "#results img")]
    assert first not in alts


def test_choosing_a_photo_shows_similar_photos_and_sentences(server, browser):
    from selenium.webdriver.common.by import By

    setup, url = server
    browser.get(url + "/")
    _wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), "the health check")
    query = setup.spare[0]
    browser.find_element(By.ID, "file").send_keys(str(query))
    _wait(browser, _results_loaded(20), "20 result thumbnails to load (default k)")
    sentences = browser.find_elements(By.CSS_SELECTOR, "#sentences li")
    assert len(sentences) == 20 and browser.find_element(By.ID, "sentences").is_displayed()
    assert query.name in browser.find_element(By.ID, "query-photo").text


def test_errors_are_shown_on_the_page(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    _, url = server
    browser.get(url + "/")
    _wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), "the health check")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not a png")
    browser.find_element(By.ID, "file").send_keys(str(fake))
    _wait(browser, lambda d: "400" in d.find_element(By.ID, "message").text, "the error message")
    assert "error" in browser.find_element(By.ID, "message").get_attribute("class")
