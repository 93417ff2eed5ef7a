"""The downloader against a local HTTP server (never the internet): checksums, errors, nothing half-written, no
folder left by a failed download."""

import hashlib
import re

import pytest
import torch
from imagetrees import write_tree, zip_tree
from omegaconf import OmegaConf

from metarun.config.datasets import OmniglotConfig
from metarun.data import omniglot
from metarun.data.files.download import download
from metarun.utils.errors import RunError
from tests.conftest import run_cli


@pytest.fixture
def served_zip(tmp_path, server):
    """A small Omniglot-layout zip on the server: (url, md5)."""
    write_tree(tmp_path / "tree", {f"Alphabet{a}/character{c:02d}": 20 for a in range(2) for c in range(1, 5)}, size=16)
    path = zip_tree(tmp_path / "tree", tmp_path / "served" / "images_background.zip", wrapper="images_background/")
    return f"{server}/images_background.zip", hashlib.md5(path.read_bytes()).hexdigest()


def test_good_checksum_downloads_the_file(tmp_path, served_zip):
    url, md5 = served_zip
    dest = download(url, tmp_path / "data" / "images_background.zip", md5)
    assert dest.read_bytes() == (tmp_path / "served" / "images_background.zip").read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["images_background.zip"]


def test_bad_checksum_is_an_error_and_leaves_nothing(tmp_path, served_zip):
    url, _ = served_zip
    with pytest.raises(RunError, match=f"images_background.zip from {url} has md5 .* expected 0+; download .* yourself "
                                       "and put it at .*data/images_background.zip"):
        download(url, tmp_path / "data" / "images_background.zip", "0" * 32)
    assert not (tmp_path / "data").exists()  # nor the folder made for it


def test_offline_or_missing_file_is_one_line_with_the_fix(tmp_path, server):
    with pytest.raises(RunError, match=r"cannot download nothing.zip from .*nothing.zip \(.*\); download .* yourself"):
        download(f"{server}/nothing.zip", tmp_path / "data" / "nothing.zip", "0" * 32)
    with pytest.raises(RunError, match="cannot download x.zip from http://127.0.0.1:9/x.zip"):
        download("http://127.0.0.1:9/x.zip", tmp_path / "data" / "x.zip", "0" * 32, timeout=5)
    assert not (tmp_path / "data").exists()


def test_omniglot_downloads_missing_official_sets(tmp_path, served_zip, monkeypatch):
    url, md5 = served_zip
    monkeypatch.setattr(omniglot, "URL", url.replace("images_background", "{}"))
    monkeypatch.setattr(omniglot, "MD5", {"images_background": md5, "images_evaluation": md5})
    cfg = OmniglotConfig(root=str(tmp_path / "root"), cache_dir=str(tmp_path / "cache"), split="lake",
                         evaluation="images_background", val_alphabets=1, ways=2, queries=5)
    tasks = omniglot.build(OmegaConf.structured(cfg), torch.device("cpu"))
    assert (tmp_path / "root" / "images_background.zip").exists()
    assert tasks.samplers["train"].store.num_classes == 4 and tasks.samplers["test"].store.num_classes == 8


def test_headline_command_offline_in_an_empty_folder_leaves_no_data_folder(tmp_path, offline):
    run = run_cli("algo=maml", "dataset=omniglot", "dataset.download=true", cwd=tmp_path)
    assert run.returncode == 1
    url = omniglot.URL.format("images_background")
    assert re.fullmatch(rf"metarun: error: cannot download images_background.zip from {re.escape(url)} \(.*\); download "
                        rf"{re.escape(url)} yourself and put it at data/omniglot/images_background.zip",
                        run.stderr.strip().splitlines()[-1])
    assert not (tmp_path / "data").exists()


def test_a_failed_download_keeps_the_folders_that_were_there(tmp_path, server):
    (tmp_path / "data").mkdir()
    with pytest.raises(RunError, match="cannot download nothing.zip"):
        download(f"{server}/nothing.zip", tmp_path / "data" / "omniglot" / "nothing.zip", "0" * 32)
    assert (tmp_path / "data").is_dir() and not any((tmp_path / "data").iterdir())
