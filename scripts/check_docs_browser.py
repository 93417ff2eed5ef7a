"""Open the built documentation site in headless Chromium, save screenshots, and check that it rendered.

    python scripts/check_docs_browser.py [--site build/site] [--out build/site-check] [--no-build]

Builds the site (``mkdocs build --strict`` into ``--site``) unless ``--no-build``, then opens the home page and the
algorithms page from their files (``file://``, no server and no network) and checks that the navigation shows the
site's pages, that the algorithms page shows the key tables generated from metarun/config/ (MAML's
``algo.inner_lr`` row among them), that the theme's stylesheet applied, and that the pages loaded nothing from
outside the site. Screenshots go to ``--out`` (``home.png``, ``algorithms.png``). Exits 1 naming what failed.

Needs Chromium and its WebDriver: on Debian or Ubuntu, ``apt-get install chromium chromium-driver`` (about 25 s
where the package lists are current). It talks to chromedriver over the W3C WebDriver protocol with the standard
library, so no Python package beyond metarun's ``dev`` extra is needed.
"""

import argparse
import base64
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver key of an element reference
PAGES = ("Quick start", "Configs and overrides", "Datasets", "Algorithms", "Paper presets", "Few-shot inference")
SCREENSHOT_ATTEMPTS = 4  # chromedriver answering 500 on a loaded machine: asked again after 2, 4 and 6 s


class WebDriver:
    """A minimal W3C WebDriver client: one chromedriver process and one headless Chromium session."""

    def __init__(self, chromedriver: str, chromium: str, width: int = 1400, height: int = 1000):
        """Start chromedriver on a free port and open a session (Chromium headless, its own window size)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen([chromedriver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self.wait_ready()
        options = {"binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                                "--disable-dev-shm-usage", f"--window-size={width},{height}"]}
        session = self.call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options}}})
        self.session = f"/session/{session['sessionId']}"

    def wait_ready(self, seconds: float = 20) -> None:
        """Wait until chromedriver answers /status."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                if self.call("GET", "/status").get("ready"):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromedriver did not answer on port {self.port} within {seconds} s")
            time.sleep(0.2)

    def call(self, method: str, path: str, body: dict = None):
        """One WebDriver command; its ``value``."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["value"]

    def open(self, url: str) -> None:
        """Load ``url`` and wait for the document to finish loading."""
        self.call("POST", f"{self.session}/url", {"url": url})

    def run(self, script: str):
        """The value of a JavaScript function body in the page."""
        return self.call("POST", f"{self.session}/execute/sync", {"script": script, "args": []})

    def visible_texts(self, css: str) -> list:
        """The texts of the elements matching ``css`` that are displayed."""
        found = self.call("POST", f"{self.session}/elements", {"using": "css selector", "value": css})
        texts = []
        for element in found:
            path = f"{self.session}/element/{element[ELEMENT]}"
            if self.call("GET", f"{path}/displayed"):
                texts.append(self.call("GET", f"{path}/text").strip())
        return texts

    def screenshot(self, path: Path) -> None:
        """A PNG of the window, asked for again, after a growing pause, where chromedriver answers 500: on a loaded
        machine its renderer can miss the capture's deadline (seen twice in a row while the test suite and a
        benchmark ran beside it)."""
        for attempt in range(1, SCREENSHOT_ATTEMPTS + 1):
            try:
                png = self.call("GET", f"{self.session}/screenshot")
                break
            except urllib.error.HTTPError as err:
                if err.code != 500 or attempt == SCREENSHOT_ATTEMPTS:
                    raise
                time.sleep(2 * attempt)
        path.write_bytes(base64.b64decode(png))

    def close(self) -> None:
        """End the session and stop chromedriver."""
        try:
            self.call("DELETE", self.session)
        finally:
            self.process.terminate()
            self.process.wait(timeout=10)


def page_problems(driver: WebDriver, site: Path) -> list:
    """What the loaded page lacks: the theme's styles applied, nothing loaded from outside the site."""
    problems = []
    background = driver.run("return getComputedStyle(document.querySelector('.md-header')).backgroundColor")
    if background in ("", "rgba(0, 0, 0, 0)", "transparent"):
        problems.append("the theme's stylesheet did not apply (the header has no background colour)")
    loaded = driver.run("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [url for url in loaded if not url.startswith(site.as_uri())]
    if outside:
        problems.append(f"loaded from outside the site: {', '.join(outside[:5])}")
    return problems


def check(driver: WebDriver, site: Path, out: Path) -> list:
    """Open the two pages, save their screenshots, and list what did not render."""
    problems = []
    driver.open((site / "index.html").as_uri())
    driver.screenshot(out / "home.png")
    navigation = driver.visible_texts(".md-sidebar--primary .md-nav__link")
    missing = [page for page in PAGES if page not in navigation]
    if missing:
        problems.append(f"home page: the navigation does not show {', '.join(missing)} (it shows {navigation[:20]})")
    problems += [f"home page: {p}" for p in page_problems(driver, site)]

    driver.open((site / "algorithms.html").as_uri())
    driver.run("document.getElementById('maml-and-first-order-maml').scrollIntoView(); return null")
    driver.screenshot(out / "algorithms.png")
    headers = driver.run("return [...document.querySelectorAll('article table')].map("
                         "t => [...t.querySelectorAll('th')].map(th => th.textContent.trim()).join(' '))")
    schema_tables = headers.count("key type default meaning")
    if schema_tables < 14:
        problems.append(f"algorithms page: {schema_tables} generated key tables, expected one per algo option (14+)")
    if "algo.inner_lr" not in driver.visible_texts("article table td code"):
        problems.append("algorithms page: no displayed algo.inner_lr row in the generated key tables")
    problems += [f"algorithms page: {p}" for p in page_problems(driver, site)]
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=REPO / "build" / "site",
                        help="the built site (default build/site)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "site-check", help="where the screenshots go")
    parser.add_argument("--no-build", action="store_true", help="check --site as it is, without building it first")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    chromedriver = shutil.which("chromedriver")
    if not (chromium and chromedriver):
        print("check_docs_browser: needs Chromium and chromedriver on PATH "
              "(Debian/Ubuntu: apt-get install chromium chromium-driver)", file=sys.stderr)
        return 1
    if not args.no_build:
        subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(args.site)],
                       cwd=REPO, check=True)
    site, out = args.site.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    driver = WebDriver(chromedriver, chromium)
    try:
        problems = check(driver, site, out)
    finally:
        driver.close()
    for problem in problems:
        print(f"check_docs_browser: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_docs_browser: the home and algorithms pages rendered; screenshots in {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
