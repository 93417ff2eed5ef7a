"""Dataset paths on disk: a symbolic link loop is one line naming it, where the datasets look for their files and
where a download makes its folder (through the CLI too); a failed download's folders go, ones made before stay."""

import pytest
from omegaconf import OmegaConf

from metarun.config.datasets import ImageFolderConfig, OmniglotConfig
from metarun.data import imagefolder, omniglot
from metarun.utils.disk import exists, made_folders
from metarun.utils.errors import RunError
from tests.conftest import TINY, run_cli


def loop(folder, name="a"):
    """Two symbolic links in ``folder`` pointing at each other (``ln -s a b; ln -s b a``); returns ``a`` (``name``)."""
    (folder / "b").symlink_to(name)
    (folder / name).symlink_to("b")
    return folder / name


def loop_message(link, setting="dataset.root"):
    return (f"{link} is a symbolic link loop (it points to b, and following it never reaches a file or folder); remove "
            f"it or point it at the real folder, or set {setting} elsewhere")


def test_exists_is_false_for_missing_paths_only(tmp_path):
    (tmp_path / "dangling").symlink_to("nowhere")
    (tmp_path / "file").write_text("")
    assert exists(tmp_path) and exists(tmp_path / "file")
    assert not any(exists(tmp_path / name) for name in ("missing", "dangling", "file/below"))


@pytest.mark.parametrize("below", ["", "images_background", "sub/images_background.zip"])
def test_a_loop_is_named_wherever_it_sits_on_the_path(below, tmp_path):
    link = loop(tmp_path)
    with pytest.raises(RunError) as caught:
        exists(link / below)
    assert str(caught.value) == loop_message(link)


def test_cli_with_download_names_a_looping_dataset_root(tmp_path, offline):
    link = loop(tmp_path)
    run = run_cli("algo=protonet", "dataset=omniglot", f"dataset.root={link}", "dataset.download=true", *TINY,
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == f"metarun: error: {loop_message(link)}"
    assert link.is_symlink() and (tmp_path / "b").is_symlink()


def test_a_looping_omniglot_zip_is_named_not_downloaded_over(tmp_path, offline):
    link = loop(tmp_path, "images_background.zip")
    cfg = OmniglotConfig(root=str(tmp_path), cache_dir=str(tmp_path / "cache"), download=True)
    with pytest.raises(RunError) as caught:
        omniglot.load_set(OmegaConf.structured(cfg), "images_background")
    assert str(caught.value) == loop_message(link)
    assert link.is_symlink()


def test_a_looping_imagefolder_tree_is_named(tmp_path):
    link = loop(tmp_path)
    cfg = OmegaConf.structured(ImageFolderConfig(train=str(link), val=str(link), test=str(link), cache_dir=str(tmp_path)))
    with pytest.raises(RunError) as caught:
        imagefolder.load_tree(cfg, link)
    assert str(caught.value) == loop_message(link, "dataset.train/val/test")


def test_made_folders_stay_when_the_block_succeeds_and_go_when_it_fails(tmp_path):
    (tmp_path / "before").mkdir()
    with made_folders(tmp_path / "before" / "new" / "deeper") as folder:
        assert folder.is_dir()
    with pytest.raises(KeyboardInterrupt):
        with made_folders(tmp_path / "before" / "other" / "deeper"):
            raise KeyboardInterrupt
    assert sorted(path.name for path in (tmp_path / "before").iterdir()) == ["new"]
    assert (tmp_path / "before" / "new" / "deeper").is_dir()


def test_a_made_folder_that_got_a_file_meanwhile_stays_with_the_file(tmp_path):
    with pytest.raises(RunError):
        with made_folders(tmp_path / "new" / "deeper"):
            (tmp_path / "new" / "other.zip").write_text("another job's download")
            raise RunError("this download failed")
    assert [path.name for path in (tmp_path / "new").iterdir()] == ["other.zip"]
