"""Fixtures for the image-data tests: the real Omniglot subsets (skipped with the reason where absent) and a local
HTTP server for the download tests."""

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from metarun.config.datasets import OmniglotConfig

REPO = Path(__file__).resolve().parents[2]
SMALL = ("images_background_small1.zip", "images_background_small2.zip")


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """The folder of the real Omniglot subsets: $METARUN_SHARED/data/omniglot, else <repo>/../shared/data/omniglot."""
    shared = Path(os.environ.get("METARUN_SHARED", REPO.parent / "shared"))
    folder = shared / "data" / "omniglot"
    if not all((folder / name).exists() for name in SMALL):
        pytest.skip(f"the real Omniglot subsets {', '.join(SMALL)} are not in {folder} (set METARUN_SHARED)")
    return folder


def session_folder(tmp_path_factory, name: str) -> Path:
    """The folder ``name`` of this pytest session, shared by its xdist workers (beside their own folders)."""
    session = tmp_path_factory.getbasetemp()
    folder = (session.parent if "PYTEST_XDIST_WORKER" in os.environ else session) / name
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def omniglot_cache(omniglot_dir, tmp_path_factory) -> Path:
    """One cache folder for the real subsets, shared by every test of the session and by its xdist workers: each
    subset is decoded once, and a worker that finds the file another wrote reads it (the store is written under
    another name and renamed, so it is never read half-written). The tests of building the cache keep their own."""
    return session_folder(tmp_path_factory, "omniglot-cache")


@pytest.fixture(scope="session")
def omniglot_cfg(omniglot_dir, tmp_path_factory):
    """``omniglot_cfg(**keys)``: an OmniglotConfig on the real subsets, decoded once per session into one cache."""
    cache = session_folder(tmp_path_factory, "omniglot-cache")

    def make(**keys):
        base = OmniglotConfig(root=str(omniglot_dir), cache_dir=str(cache), download=False)
        return OmegaConf.merge(OmegaConf.structured(base), keys)

    return make


@pytest.fixture(scope="session")
def folders_cfg():
    """Keys of the folders split: meta-train on small1's alphabets, meta-test on those only small2 has."""
    return {"split": "folders", "train": [SMALL[0]], "val": [SMALL[1]], "test": [SMALL[1]]}


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path / "served"``; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def offline(monkeypatch):
    """Every HTTP(S) request of this test and its subprocesses goes to a closed local port (a proxy that is not
    there), so a download fails at once as it would without a network, and never reaches the internet."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
