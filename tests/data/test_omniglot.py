"""Omniglot on the real subsets: splits, rotations, caching, torchmeta's hdf5, and bad input."""

import numpy as np
import pytest
import torch
from imagetrees import write_tree, zip_tree
from PIL import Image

from metarun.data import omniglot
from metarun.data.omniglot import alphabet, build, read_set, read_torchmeta
from metarun.utils.errors import RunError

CPU = torch.device("cpu")
ONLY_SMALL2 = {"Japanese_(katakana)", "Sanskrit", "Tagalog"}  # 47 + 42 + 17 characters


def alphabets(store) -> set:
    return {name.split("/")[0] for name in store.class_names}


def characters(store) -> set:
    return {name.rsplit("/rot", 1)[0] for name in store.class_names}


def test_folders_split_meta_tests_on_unseen_alphabets(omniglot_cfg, folders_cfg):
    tasks = build(omniglot_cfg(**folders_cfg, rotations=True), CPU)
    train, val, test = (tasks.samplers[s].store for s in ("train", "val", "test"))
    assert alphabets(train) == {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}
    assert alphabets(test) == alphabets(val) == ONLY_SMALL2
    assert train.num_classes == 4 * 136 and test.num_classes == 4 * 106
    assert tasks.input_shape == (1, 28, 28) and tasks.output_dim == 5
    kept = build(omniglot_cfg(**folders_cfg, exclude_train_alphabets=False), CPU)
    assert kept.samplers["test"].store.num_classes == 156  # rotations are off by default for folders


def test_rotations_are_new_classes_of_rotated_images(omniglot_cfg, folders_cfg):
    store = build(omniglot_cfg(**folders_cfg, rotations=True), CPU).samplers["train"].store
    names = list(store.class_names)
    assert len(names) == 4 * len(characters(store))
    for k in (1, 2, 3):
        rotated = names.index(f"Korean/character07/rot{90 * k:03d}")
        upright = names.index("Korean/character07/rot000")
        rows = slice(int(store.offsets[upright]), int(store.offsets[upright + 1]))
        turned = slice(int(store.offsets[rotated]), int(store.offsets[rotated + 1]))
        assert torch.equal(store.images[turned], store.images[rows].rot90(k, dims=(2, 3)))


def test_pixels_are_ink_one_on_background_zero(omniglot_cfg, folders_cfg):
    tasks = build(omniglot_cfg(**folders_cfg), CPU)
    batch = tasks.sample(8, torch.Generator().manual_seed(0))
    assert batch.support_x.min() == 0 and batch.support_x.max() == 1
    assert 0.02 < batch.query_x.mean() < 0.3  # mostly background


def test_vinyals_split_is_disjoint_and_fixed(omniglot_cfg):
    cfg = omniglot_cfg(background="images_background_small1.zip", evaluation="images_background_small2")
    tasks = build(cfg, CPU)
    stores = {s: tasks.samplers[s].store for s in ("train", "val", "test")}
    sets = {s: characters(store) for s, store in stores.items()}
    # Greek and Latin are in both subsets and count once: 136 + 156 - 24 - 26 characters
    assert [len(sets[s]) for s in ("train", "val", "test")] == [164, 15, 63]
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert all(store.num_classes == 4 * len(sets[s]) for s, store in stores.items())  # rotations on by default
    again = build(cfg, CPU)
    assert again.samplers["test"].store.class_names == stores["test"].class_names


def test_vinyals_sizes_on_the_full_dataset():
    assert omniglot.vinyals_sizes(1623) == (1100, 1200)


def test_lake_split_holds_out_background_alphabets(omniglot_cfg):
    tasks = build(omniglot_cfg(split="lake", background="images_background_small1.zip",
                               evaluation="images_background_small2.zip", val_alphabets=2), CPU)
    train, val, test = (tasks.samplers[s].store for s in ("train", "val", "test"))
    assert len(alphabets(val)) == 2 and len(alphabets(train)) == 3 and not alphabets(train) & alphabets(val)
    assert train.num_classes + val.num_classes == 136 and test.num_classes == 156
    with pytest.raises(ValueError, match="dataset.val_alphabets=5 must be between 0 and 4"):
        build(omniglot_cfg(split="lake", background="images_background_small1.zip",
                           evaluation="images_background_small2.zip", val_alphabets=5), CPU)


def test_evaluation_episodes_are_identical_across_builds(omniglot_cfg, folders_cfg):
    first = build(omniglot_cfg(**folders_cfg), CPU).episodes("test", 3, 10, 4)
    again = build(omniglot_cfg(**folders_cfg), CPU).episodes("test", 3, 10, 4)
    assert all(torch.equal(a, b) for a, b in zip(first.tensors(), again.tensors()))
    assert not torch.equal(first.support_x[0], first.support_x[1])


def test_sizes_too_large_for_a_split_fail_at_start_up(omniglot_cfg, folders_cfg):
    with pytest.raises(ValueError, match="dataset.ways=140 exceeds the 136 classes of the train split"):
        build(omniglot_cfg(**folders_cfg, ways=140), CPU)
    # validation and meta-test episodes take dataset.ways unless eval.ways says otherwise (checked by setup)
    with pytest.raises(ValueError, match="dataset.ways=120 exceeds the 106 classes of the val split"):
        build(omniglot_cfg(**folders_cfg, ways=120), CPU).check_episodes("val")
    with pytest.raises(ValueError, match=r"dataset.shots\+dataset.queries=10\+15 exceeds the 20 images"):
        build(omniglot_cfg(**folders_cfg, shots=10), CPU)
    with pytest.raises(ValueError, match="dataset.split=nope is not a split; choose one of vinyals, lake, folders"):
        build(omniglot_cfg(split="nope"), CPU)
    with pytest.raises(ValueError, match=r"dataset.split=folders needs dataset.test=\[<set>, ...\]"):
        build(omniglot_cfg(split="folders", train=["images_background_small1.zip"]), CPU)
    with pytest.raises(ValueError, match="leaves no characters for test"):
        build(omniglot_cfg(split="folders", train=["images_background_small2.zip"], val=["images_background_small1.zip"],
                           test=["images_background_small2.zip"]), CPU)


def test_folders_without_val_sets_validate_on_train_alphabets_held_out(omniglot_cfg):
    tasks = build(omniglot_cfg(split="folders", train=["images_background_small1.zip"], val_alphabets=1,
                               test=["images_background_small2.zip"]), CPU)
    alphabets = {split: {alphabet(name) for name in sampler.store.class_names} for split, sampler in tasks.samplers.items()}
    small1 = {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}
    assert len(alphabets["val"]) == 1 and alphabets["train"] | alphabets["val"] == small1
    assert not alphabets["train"] & alphabets["val"]
    # the test alphabets are the ones no training or validation episode drew from
    assert alphabets["test"] == {"Japanese_(katakana)", "Sanskrit", "Tagalog"}
    with pytest.raises(ValueError, match=r"dataset.val_alphabets=5 must be between 0 and 4 \(dataset.train has 5"):
        build(omniglot_cfg(split="folders", train=["images_background_small1.zip"], test=["images_background_small2.zip"]), CPU)
    every = build(omniglot_cfg(split="folders", train=["images_background_small1.zip"], val_alphabets=0,
                               test=["images_background_small2.zip"]), CPU)
    assert every.samplers["val"].store.class_names == every.samplers["train"].store.class_names  # nothing held out
    assert every.samplers["train"].store.num_classes == 136


def test_missing_sets_name_the_files_and_the_url(omniglot_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images_background is not in .*: expected images_background.zip.*"
                                                r"https://raw.githubusercontent.com/brendenlake/omniglot/.*set dataset.root"):
        build(omniglot_cfg(root=str(tmp_path)), CPU)


def test_cache_is_written_once_reused_and_rebuilt_after_a_bad_file(omniglot_cfg, folders_cfg, tmp_path, monkeypatch):
    cfg = omniglot_cfg(**folders_cfg, cache_dir=str(tmp_path / "cache"))
    build(cfg, CPU)
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and all(p.startswith("omniglot-images_background_small") and "-28px-" in p for p in cached)

    def no_decoding(*args):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(omniglot, "read_images", no_decoding)
    reused = build(cfg, CPU)
    assert reused.samplers["train"].store.num_classes == 136
    (tmp_path / "cache" / cached[0]).write_bytes(b"garbage")
    with pytest.raises(RunError, match=f"cannot read the dataset cache .*{cached[0]}.*delete it and rerun"):
        build(cfg, CPU)
    monkeypatch.undo()
    (tmp_path / "cache" / cached[0]).unlink()
    assert build(cfg, CPU).samplers["train"].store.num_classes == 136
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == cached


def test_bad_zip_leaves_no_cache_and_a_rerun_after_the_fix_works(omniglot_cfg, omniglot_dir, tmp_path):
    root, cache = tmp_path / "root", tmp_path / "cache"
    root.mkdir()
    good = (omniglot_dir / "images_background_small1.zip").read_bytes()
    (root / "small.zip").write_bytes(good[:-5000])
    cfg = omniglot_cfg(root=str(root), cache_dir=str(cache), split="folders", train=["small.zip"], val=["small.zip"],
                       test=["small.zip"], exclude_train_alphabets=False)
    with pytest.raises(RunError, match="small.zip is not a readable zip"):
        build(cfg, CPU)
    assert not cache.exists() or not any(cache.iterdir())
    (root / "small.zip").write_bytes(good)
    assert build(cfg, CPU).samplers["test"].store.num_classes == 136


def test_unwritable_cache_dir_names_the_key(omniglot_cfg, folders_cfg, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(RunError, match="cannot write the dataset cache .*set dataset.cache_dir to a writable folder"):
        build(omniglot_cfg(**folders_cfg, cache_dir=str(tmp_path / "file" / "cache")), CPU)


def test_torchmeta_hdf5_cache_reads_like_the_png_files(omniglot_cfg, tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py is the optional extra metarun[h5]")
    rng = np.random.default_rng(0)
    ink = {group: {f"{group[7:]}{a}/character{c:02d}": (rng.random((20, 105, 105)) < 0.1).astype(np.uint8) * 255
                   for a in range(2) for c in range(1, 4)}
           for group in ("images_background", "images_evaluation")}
    with h5py.File(tmp_path / "data.hdf5", "w") as cache:
        for group, datasets in ink.items():
            for name, array in datasets.items():
                cache.create_dataset(f"{group}/{name}", data=array)
    # the same images as the official PNG layout (black ink on white)
    for name, array in ink["images_background"].items():
        (tmp_path / "pngs" / name).mkdir(parents=True)
        for i, image in enumerate(array):
            Image.fromarray(255 - image).save(tmp_path / "pngs" / name / f"{i:04d}_{i + 1:02d}.png")
    from_hdf5 = read_torchmeta(tmp_path / "data.hdf5", 28, "images_background")
    from_pngs = read_set(tmp_path / "pngs", 28)
    assert from_hdf5.class_names == from_pngs.class_names and torch.equal(from_hdf5.images, from_pngs.images)
    tasks = build(omniglot_cfg(root=str(tmp_path), cache_dir=str(tmp_path / "cache"), ways=2), CPU)
    assert sum(tasks.samplers[s].store.num_classes for s in ("train", "val", "test")) == 4 * 12
    with pytest.raises(RunError, match="has no group images_background_small1"):
        read_torchmeta(tmp_path / "data.hdf5", 28, "images_background_small1")


def test_eval_sizes_a_split_cannot_supply_fail_at_start_up_naming_the_eval_key(omniglot_cfg, folders_cfg):
    tasks = build(omniglot_cfg(**folders_cfg), CPU)
    with pytest.raises(ValueError, match=r"^eval.ways=500 exceeds the 106 classes of the val split with at least 16 "
                                         r"images; lower eval.ways to at most 106$"):
        tasks.check_episodes("val", ways=500)
    with pytest.raises(ValueError, match=r"^eval.shots\+dataset.queries=10\+15 exceeds the 20 images"):
        tasks.check_episodes("test", shots=10)
    with pytest.raises(ValueError, match=r"^dataset.shots\+eval.queries=1\+25 exceeds"):
        tasks.check_episodes("test", queries=25)
    tasks.check_episodes("test", ways=20, shots=5, queries=15)


def test_a_set_wrapped_in_extra_folders_keeps_its_alphabets(tmp_path, omniglot_cfg):
    # wrapper/images_background/<Alphabet>/<character>/: the alphabet is the folder under the set's own
    classes = {f"{alphabet}/character0{c}": 3 for alphabet in ("Greek", "Latin") for c in (1, 2)}
    write_tree(tmp_path / "tree", classes)
    zip_tree(tmp_path / "tree", tmp_path / "wrapped.zip", wrapper="wrapper/images_background/")
    assert read_set(tmp_path / "wrapped.zip", 12).class_names == tuple(sorted(classes))
    # and so a folders split still drops from val/test the alphabets that meta-train has
    write_tree(tmp_path / "other", {"Latin/character09": 3, "Runic/character01": 3})
    cfg = omniglot_cfg(root=str(tmp_path), cache_dir=str(tmp_path / "cache"), split="folders", train=["wrapped.zip"],
                       val=["other"], test=["other"], ways=1, shots=1, queries=1)
    assert build(cfg, CPU).samplers["test"].store.class_names == ("Runic/character01",)
    # a layout that is not <Alphabet>/<character>/ below its wrappers is refused, not guessed
    write_tree(tmp_path / "deep", {"Greek/character01/stroke1": 3, "Latin/character01": 3})
    with pytest.raises(RunError, match=r"deep holds images in Greek/character01/stroke1/, not <Alphabet>/<character>/"):
        read_set(tmp_path / "deep", 12)
