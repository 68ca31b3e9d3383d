"""A screenshot of the search page with real results, for docs/search.md.

    .venv/bin/python benchmarks/search_screenshot.py --index INDEX [--query "..."] [--out docs/search-page.png]

Serves INDEX in this process (uvicorn in a thread), opens the page in Debian's headless chromium
(Selenium + chromedriver), types the query, waits until every result thumbnail has loaded
(naturalWidth > 0), and saves a PNG.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from itmatch.retrieval.service import create_app

from _common import REPO_ROOT

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", required=True)
    ap.add_argument("--query", default="a dog runs through the snow")
    ap.add_argument("--k", default="20")
    ap.add_argument("--out", default=str(REPO_ROOT / "docs" / "search-page.png"))
    ap.add_argument("--size", default="1280,1100")
    args = ap.parse_args()

    app = create_app(args.index)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in [*FLAGS, f"--window-size={args.size}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        Select(driver.find_element(By.ID, "k")).select_by_visible_text(args.k)
        driver.find_element(By.ID, "query").send_keys(args.query, Keys.ENTER)
        script = "return Array.from(document.querySelectorAll('#results img')).map(i => i.complete && i.naturalWidth > 0)"
        WebDriverWait(driver, 60).until(lambda d: (lambda v: len(v) == int(args.k) and all(v))(d.execute_script(script)))
        driver.save_screenshot(args.out)
        paths = [e.get_attribute("alt") for e in driver.find_elements(By.CSS_SELECTOR, "#results img")]
        print(f"wrote {args.out}; query {args.query!r}; top results: {paths[:5]}")
    finally:
        driver.quit()
        server.should_exit = True


if __name__ == "__main__":
    main()
