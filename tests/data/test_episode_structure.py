"""Omniglot's episode structure on coded stores: episodes within groups never mix alphabets, drawers_apart keeps the
support and query drawers apart; both on the real subsets through the Omniglot config."""

import pytest
import torch
from imagetrees import write_tree
from test_sampler import class_of, coded_store, decode_rows

from metarun.data.files.store import ImageStore
from metarun.data.omniglot import build
from metarun.data.sampling.image_tasks import ImageTasks
from metarun.data.sampling.sampler import EpisodeSampler
from metarun.models.conv4 import Conv4

CPU = torch.device("cpu")
# alphabet -> characters; "Tiny" is too small for 6-way episodes
ALPHABETS = {"Greek": 8, "Korean": 12, "Latin": 6, "Tiny": 3}


def alphabet_store(drawers: int = 10) -> ImageStore:
    """A coded store of ``drawers`` images per character, classes named <alphabet>/<character>."""
    coded = coded_store([drawers] * sum(ALPHABETS.values()))
    names = tuple(f"{alphabet}/character{c:02d}" for alphabet, count in ALPHABETS.items() for c in range(count))
    return ImageStore(coded.images, coded.offsets, names)


def episode_classes(store: ImageStore, batch) -> list:
    """The class names of each task's support and query images, per task."""
    rows = decode_rows(torch.cat([batch.support_x, batch.query_x], 1))
    return [[store.class_names[c] for c in class_of(store, task).tolist()] for task in rows]


def test_episodes_within_groups_never_mix_alphabets_and_skip_small_ones():
    store = alphabet_store()
    sampler = EpisodeSampler(store, CPU, [0.0], [1.0], within_groups=True)
    batch = sampler.sample(300, torch.Generator().manual_seed(0), 6, 1, 2)
    drawn = [{name.split("/")[0] for name in names} for names in episode_classes(store, batch)]
    assert all(len(alphabets) == 1 for alphabets in drawn)
    counts = {alphabet: sum(alphabets == {alphabet} for alphabets in drawn) for alphabet in ALPHABETS}
    assert counts["Tiny"] == 0  # 3 characters cannot fill a 6-way episode
    assert all(70 <= counts[a] <= 130 for a in ("Greek", "Korean", "Latin")), counts  # each usable alphabet alike
    assert sorted({len(set(names)) for names in episode_classes(store, batch)}) == [6]


def test_without_the_option_episodes_mix_alphabets():
    store = alphabet_store()
    batch = EpisodeSampler(store, CPU, [0.0], [1.0]).sample(50, torch.Generator().manual_seed(0), 6, 1, 2)
    assert any(len({name.split("/")[0] for name in names}) > 1 for names in episode_classes(store, batch))


def test_episodes_within_groups_errors_name_the_largest_group_and_flat_names():
    sampler = EpisodeSampler(alphabet_store(), CPU, [0.0], [1.0], split="test", within_groups=True)
    with pytest.raises(ValueError, match=r"dataset.ways=13 exceeds the 12 classes .* largest class group of the test split"):
        sampler.sample(1, torch.Generator(), 13, 1, 1)
    with pytest.raises(ValueError, match="class class0 of the val split has none"):
        EpisodeSampler(coded_store([5] * 4), CPU, [0.0], [1.0], split="val", within_groups=True)


def test_small_alphabets_are_named_in_a_warning(capsys):
    stores = {split: alphabet_store() for split in ("train", "val", "test")}
    ImageTasks(stores, 6, 1, 2, CPU, ([0.0], [1.0]), within_groups=True)
    out = capsys.readouterr().out
    assert "1 of the 4 class groups of the train split have fewer than 6 classes (dataset.ways)" in out and "Tiny (3)" in out


@pytest.mark.parametrize("shots,queries", [(1, 1), (2, 3)])
def test_drawers_apart_gives_support_and_query_different_drawers_shared_by_the_classes(shots, queries):
    store = alphabet_store(drawers=10)
    sampler = EpisodeSampler(store, CPU, [0.0], [1.0], drawers_apart=True, within_groups=True)
    batch = sampler.sample(200, torch.Generator().manual_seed(3), 5, shots, queries)
    drawer = lambda x: (decode_rows(x) - store.offsets[class_of(store, decode_rows(x))]).view(len(x), 5, -1)  # noqa: E731
    support, query = drawer(batch.support_x), drawer(batch.query_x)  # [T, N, K], [T, N, Q]
    assert bool((support == support[:, :1]).all()) and bool((query == query[:, :1]).all())  # the same for every class
    overlap = [set(s.tolist()) & set(q.tolist()) for s, q in zip(support[:, 0], query[:, 0])]
    assert not any(overlap) and all(len(set(s.tolist())) == shots for s in support[:, 0])
    assert len(support.unique()) == 10 and len(query.unique()) == 10  # every drawer serves both roles


def test_drawers_apart_needs_one_image_per_drawer_in_every_class():
    with pytest.raises(ValueError, match="classes of the train split hold 9 to 10 images"):
        EpisodeSampler(coded_store([10, 9, 10]), CPU, [0.0], [1.0], drawers_apart=True)


def test_the_structure_applies_to_every_split_on_the_real_subsets(omniglot_cfg, folders_cfg):
    cfg = omniglot_cfg(**folders_cfg, val_alphabets=1, rotations=True, extended_splits=["train"], episodes_within="group",
                       drawers_apart=True, ways=20, shots=1, queries=1)
    tasks = build(cfg, CPU)
    assert all(name.endswith(("rot000", "rot090", "rot180", "rot270")) for name in tasks.samplers["train"].store.class_names)
    test = tasks.samplers["test"]
    assert test.group_names == ("Japanese_(katakana)", "Sanskrit", "Tagalog") and test.store.num_classes == 106  # unrotated
    generator = torch.Generator().manual_seed(0)
    for split, sampler in tasks.samplers.items():
        classes = sampler.pick_classes(100, 20, 2, generator)
        alphabets = sampler.groups[classes]
        assert bool((alphabets == alphabets[:, :1]).all()), split
        drawers = sampler.pick_positions(classes, 2, generator)
        assert bool((drawers == drawers[:, :1]).all()) and bool((drawers[..., 0] != drawers[..., 1]).all()), split
    assert set(test.groups[test.pick_classes(100, 20, 2, generator)][:, 0].tolist()) == {0, 1}  # never Tagalog's 17
    assert tasks.episodes("test", 0, 0, 3).support_x.shape == (3, 20, 1, 28, 28)


def test_rotations_extend_only_the_listed_splits_and_bad_keys_fail_at_build(omniglot_cfg, folders_cfg):
    tasks = build(omniglot_cfg(**folders_cfg, rotations=True, extended_splits=["train", "val"]), CPU)
    assert tasks.samplers["val"].store.num_classes == 4 * tasks.samplers["test"].store.num_classes == 4 * 106
    with pytest.raises(ValueError, match=r"dataset.extended_splits=\['train', 'tset'\] names tset, not a split"):
        build(omniglot_cfg(**folders_cfg, rotations=True, extended_splits=["train", "tset"]), CPU)
    with pytest.raises(ValueError, match=r"dataset.affine.scale=\[1.2, 0.8\] is not \[low, high\] with 0 < low <= high"):
        build(omniglot_cfg(**folders_cfg, augment=True, affine={"scale": [1.2, 0.8]}), CPU)
    # with rotations as classes, a turn past 45 degrees looks like the next class: refused before the sets are read
    with pytest.raises(ValueError, match=r"dataset.affine.rotation=60.0 is outside \[0, 45\]: with dataset.rotations"):
        build(omniglot_cfg(**folders_cfg, rotations=True, affine={"rotation": 60.0}, root="/no/such/folder"), CPU)


def test_augmented_omniglot_training_batches_are_reproducible_and_evaluation_is_untouched(omniglot_cfg, folders_cfg):
    plain, augmented = (build(omniglot_cfg(**folders_cfg, augment=on), CPU) for on in (False, True))
    batches = [tasks.sample(4, torch.Generator().manual_seed(0)) for tasks in (plain, augmented, augmented)]
    assert torch.equal(batches[1].support_x, batches[2].support_x)
    assert not torch.equal(batches[0].support_x, batches[1].support_x)
    assert torch.equal(batches[0].support_y, batches[1].support_y)  # the same episode, distorted
    assert torch.equal(plain.episodes("test", 0, 0, 2).query_x, augmented.episodes("test", 0, 0, 2).query_x)


def test_mirrors_are_new_classes_of_mirrored_images_after_rotations(omniglot_cfg, folders_cfg):
    store = build(omniglot_cfg(**folders_cfg, rotations=True, mirrors=True, extended_splits=["train"]), CPU).samplers["train"].store
    names = list(store.class_names)
    assert len(names) == 8 * 136
    upright, mirrored = names.index("Korean/character07/rot090"), names.index("Korean/character07/rot090/mirror")
    rows, flipped = (slice(int(store.offsets[c]), int(store.offsets[c + 1])) for c in (upright, mirrored))
    assert torch.equal(store.images[flipped], store.images[rows].flip(3))


def test_inputs_above_28_pixels_reach_conv4(omniglot_cfg, tmp_path):
    for name, alphabets in (("background", ("A", "B")), ("evaluation", ("C",))):
        write_tree(tmp_path / name, {f"{a}/character{c:02d}": 3 for a in alphabets for c in range(6)}, size=105)
    tasks = build(omniglot_cfg(root=str(tmp_path), split="folders", train=["background"], val=["evaluation"],
                               test=["evaluation"], image_size=56, queries=2, cache_dir=str(tmp_path / "cache")), CPU)
    batch = tasks.sample(2, torch.Generator().manual_seed(0))
    assert tasks.input_shape == (1, 56, 56) and batch.support_x.shape == (2, 5, 1, 56, 56)
    assert Conv4(tasks.input_shape, 5)(batch.support_x[0]).shape == (5, 5)
