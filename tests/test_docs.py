"""The documentation site: `mkdocs build --strict` passes (broken links and anchors are errors), the key tables are
generated from the schema dataclasses, the API reference renders the docstrings, the pages load nothing from outside
the site, the README's links into docs/ land, and the headless-browser check passes where Chromium is installed."""

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from metarun.config.fields import SCHEMAS
from metarun.config.validate import field_rules
from tests.conftest import REPO

for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
    pytest.importorskip(module, reason=f"{module} is not installed: the site needs the docs extra "
                                       "(pip install -e \".[dev]\" includes it)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as `mkdocs build --strict` writes it, into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _tables(html: str) -> list:
    """The rows of each table of a page, as lists of cell texts (tags stripped)."""
    tables = []
    for table in re.findall(r"<table>(.*?)</table>", html, re.S):
        rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
        cells = [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S) for row in rows]
        tables.append([[re.sub(r"<[^>]+>", "", cell).strip() for cell in row] for row in cells])
    return tables


def _key_tables(html: str) -> list:
    """A page's generated key tables (header: key, type, default, meaning), as _tables gives them."""
    return [table for table in _tables(html) if table and table[0] == ["key", "type", "default", "meaning"]]


def test_the_site_builds_strictly_with_the_generated_schema_tables(site):
    algorithms = (site / "algorithms.html").read_text()
    tables = dict(zip(re.findall(r"<code>algo=(\w+)</code> keys", algorithms), _key_tables(algorithms)))
    assert sorted(tables) == sorted(path.stem for path in (REPO / "conf" / "algo").glob("*.yaml"))
    inner_lr = next(row for row in tables["maml"] if row[0] == "algo.inner_lr")
    assert inner_lr[1:3] == ["float", "0.01"]
    assert field_rules(SCHEMAS["algo"]["maml"])["inner_lr"]["help"] in inner_lr[3]  # the schema field's own help line
    # each option's values, not only its schema's defaults
    assert next(row for row in tables["fomaml"] if row[0] == "algo.first_order")[2] == "true"
    assert next(row for row in tables["mamlpp"] if row[0] == "algo.inner_steps")[2] == "5"
    datasets = (site / "datasets.html").read_text()
    assert sorted(re.findall(r"<code>dataset=(\w+)</code> keys", datasets)) == sorted(
        path.stem for path in (REPO / "conf" / "dataset").glob("*.yaml"))
    assert len(_key_tables(datasets)) == len(list((REPO / "conf" / "dataset").glob("*.yaml")))
    configs = (site / "configs.html").read_text()
    keys = {row[0] for table in _key_tables(configs) for row in table[1:]}
    assert {"train.iterations", "optim.lr", "eval.episodes", "hardware.task_parallel", "paths.cache_dir",
            "seed"} <= keys


def test_the_api_reference_renders_the_docstrings(site):
    learner = (site / "api" / "learner.html").read_text()
    assert 'id="metarun.learner.load_learner"' in learner
    assert "The meta-trained learner saved at" in learner  # load_learner's docstring
    assert 'id="metarun.algos.base.Algorithm"' in (site / "api" / "algos_base.html").read_text()
    data = (site / "api" / "data.html").read_text()
    assert 'id="metarun.data.Dataset"' in data and 'id="metarun.data.tasks.TaskBatch"' in data
    assert 'id="metarun.config.algos.MAMLConfig"' in (site / "api" / "config.html").read_text()


class _Assets(HTMLParser):
    """The URLs a page loads by itself: scripts, stylesheets, images, frames, media (not the links a reader follows)."""

    LOADS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "video": "src", "audio": "src",
             "embed": "src", "object": "data"}

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "link" and attrs.get("href") and attrs.get("rel") != "canonical":
            self.urls.append(attrs["href"])
        elif tag in self.LOADS and attrs.get(self.LOADS[tag]):
            self.urls.append(attrs[self.LOADS[tag]])


def test_the_site_loads_nothing_from_outside_it(site):
    external = re.compile(r"^(https?:)?//")
    found = []
    for page in site.rglob("*.html"):
        parser = _Assets()
        parser.feed(page.read_text())
        found += [f"{page.relative_to(site)}: {url}" for url in parser.urls if external.match(url)]
    for sheet in site.rglob("*.css"):
        found += [f"{sheet.relative_to(site)}: {url}" for url in
                  re.findall(r"(?:url\(|@import\s+)['\"]?((?:https?:)?//[^'\")\s]+)", sheet.read_text())]
    assert not found, "\n".join(found)


def test_the_readmes_links_into_the_docs_land_on_a_page_and_heading(site):
    links = re.findall(r"\]\(docs/([\w/]+)\.md(?:#([\w-]+))?\)", (REPO / "README.md").read_text())
    assert len(links) > 20
    for page, anchor in links:
        html = (site / f"{page}.html").read_text()
        assert not anchor or f'id="{anchor}"' in html, f"docs/{page}.md has no heading #{anchor}"


@pytest.mark.slow
def test_the_browser_check_opens_the_built_site(site, tmp_path):
    if not (any(map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))) and shutil.which("chromedriver")):
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    done = subprocess.run([sys.executable, "scripts/check_docs_browser.py", "--site", str(site), "--no-build",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("home.png", "algorithms.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
