"""load_learner: raw uint8 / PIL images and string labels in, labels out, preprocessing as in training."""

import io
import json
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from metarun import load_learner
from metarun.runner.checkpoint import load_checkpoint
from metarun.runner.evaluate import evaluate_checkpoint
from metarun.runner.train import run
from tests.conftest import compose_config
from tests.data.conftest import omniglot_cache, omniglot_dir  # noqa: F401  (the real subsets, skipped where absent)
from tests.synthetic import image_config, make_images

NOISE = 30.0  # an easy task, so that a briefly trained learner is far above chance whatever the algorithm
OVERRIDES = {"protonet": [], "maml": ["algo.inner_lr=0.1", "algo.test_inner_steps=5"],
             "reptile": ["algo.inner_lr=0.01", "algo.test_inner_steps=20"]}


def _task(classes=(60, 61, 62, 63, 64), shots=2):
    images = make_images(NOISE)
    names = [f"glyph-{c}" for c in classes]
    support = [images[c, i, 0].numpy() for c in classes for i in range(shots)]  # uint8 [H, W]
    query = torch.stack([images[c, i] for c in classes for i in range(shots, shots + 6)])  # uint8 [Q, 1, H, W]
    return support, [n for n in names for _ in range(shots)], query, [n for n in names for _ in range(6)]


@pytest.mark.parametrize("algo", ["protonet", "maml", "reptile"])
def test_load_learner_adapts_to_string_labels_on_raw_images(tmp_path, algo):
    run(image_config([f"algo={algo}", "train.iterations=10", "eval.episodes=10", *OVERRIDES[algo]], output_dir=tmp_path, noise=NOISE))
    learner = load_learner(tmp_path / "checkpoints" / "best.pt")
    support, labels, query, truth = _task()
    adapted = learner.adapt(support, labels)
    predicted = adapted.predict(query)
    assert set(predicted) <= set(labels) and len(predicted) == len(truth)
    accuracy = np.mean([p == t for p, t in zip(predicted, truth)])
    assert accuracy > 0.6, accuracy  # chance is 0.2
    # PIL images and a uint8 tensor give the same predictions as the arrays and the stacked tensor
    pil = [Image.fromarray(image) for image in support]
    assert learner.adapt(pil, labels).predict(query) == predicted
    assert learner.adapt(torch.from_numpy(np.stack(support)), labels).predict([q[0].numpy() for q in query]) == predicted


def test_learner_preprocessing_matches_the_training_batches(tmp_path):
    run(image_config(["algo=protonet", "train.iterations=1"], output_dir=tmp_path, noise=NOISE))
    learner = load_learner(tmp_path / "checkpoints" / "last.pt")
    images = make_images(NOISE)[60, :3]
    torch.testing.assert_close(learner.preprocess(images), (images.float() / 255.0 - 0.5) / 0.25)


def test_float_images_in_zero_one_preprocess_as_their_uint8_pixels_and_bad_ones_are_refused(tmp_path):
    run(image_config(["algo=protonet", "train.iterations=1"], output_dir=tmp_path, noise=NOISE))
    learner = load_learner(tmp_path / "checkpoints" / "last.pt")
    images = make_images(NOISE)[60, :3]  # uint8 [3, 1, 12, 12]
    expected = learner.preprocess(images)
    torch.testing.assert_close(learner.preprocess(images.float() / 255.0), expected)
    torch.testing.assert_close(learner.preprocess(list(images.numpy().astype(np.float64) / 255.0)), expected)
    with pytest.raises(ValueError, match=r"float images must hold pixels in \[0, 1\], got values in \[-2"):
        learner.preprocess(expected)  # already normalised: not pixels
    with pytest.raises(ValueError, match="integer images must hold pixels in 0..255"):
        learner.preprocess(images.long() * 4)
    with pytest.raises(ValueError, match="got no images; pass at least one"):
        learner.adapt(make_images(NOISE)[60:65, 0], ["a", "b", "c", "d", "e"]).predict([])


def test_head_learners_need_the_trained_number_of_ways(tmp_path):
    run(image_config(["algo=maml", "train.iterations=1"], output_dir=tmp_path))
    learner = load_learner(tmp_path / "checkpoints" / "last.pt")
    support, labels, _, _ = _task(classes=(60, 61, 62))
    with pytest.raises(ValueError, match="meta-trained for 5-way tasks; give support images of exactly 5 labels"):
        learner.adapt(support, labels)


@pytest.mark.slow
def test_load_learner_on_raw_omniglot_pngs_with_string_labels(omniglot_dir, omniglot_cache, tmp_path):  # noqa: F811
    # a short ProtoNet run on images_background_small1, then a task from the alphabets only small2 has
    cfg = compose_config([
        "algo=protonet", "dataset=omniglot", f"dataset.root={omniglot_dir}", f"dataset.cache_dir={omniglot_cache}",
        "dataset.split=folders", "dataset.train=[images_background_small1.zip]",
        "dataset.val=[images_background_small2.zip]", "dataset.test=[images_background_small2.zip]",
        "dataset.ways=20", "dataset.queries=5", "eval.ways=5", "train.iterations=60", "train.meta_batch_size=1",
        "train.log_every=30", "train.val_every=30", "train.checkpoint_every=30", "eval.episodes=20",
        "eval.val_episodes=10", "logger.console=false", "hardware.num_threads=1"], output_dir=tmp_path / "run")
    run(cfg)
    learner = load_learner(tmp_path / "run" / "checkpoints" / "best.pt")
    with zipfile.ZipFile(omniglot_dir / "images_background_small1.zip") as archive:
        seen = {name.split("/")[1] for name in archive.namelist() if name.count("/") >= 3}
    with zipfile.ZipFile(omniglot_dir / "images_background_small2.zip") as archive:
        pngs = sorted(n for n in archive.namelist() if n.endswith(".png"))
        by_class = {}
        for name in pngs:
            by_class.setdefault(name.rsplit("/", 1)[0], []).append(name)
        unseen = [c for c in sorted(by_class) if c.split("/")[-2] not in seen][::7][:5]
        read = lambda name: Image.open(io.BytesIO(archive.read(name)))  # noqa: E731
        support = [read(by_class[c][0]) for c in unseen]
        query = [read(by_class[c][i]) for c in unseen for i in range(1, 11)]
    names = [c.split("/")[-2] + "/" + c.split("/")[-1] for c in unseen]
    predicted = learner.adapt(support, names).predict(query)
    accuracy = np.mean([p == t for p, t in zip(predicted, [n for n in names for _ in range(10)])])
    assert accuracy > 0.6, accuracy  # 5-way: chance is 0.2


@pytest.mark.parametrize("algo", ["protonet", "maml"])
def test_inductive_learner_predicts_single_images_as_in_a_batch(tmp_path, algo):
    # the run's own validation and test also score inductively, vmapped over tasks
    run(image_config([f"algo={algo}", "train.iterations=2", "eval.transductive=false", *OVERRIDES[algo]],
                     output_dir=tmp_path, noise=NOISE))
    learner = load_learner(tmp_path / "checkpoints" / "last.pt")
    assert not learner.transductive and load_learner(tmp_path / "checkpoints" / "last.pt", transductive=True).transductive
    support, labels, query, _ = _task()
    adapted = learner.adapt(support, labels)
    assert [adapted.predict(query[i : i + 1])[0] for i in range(len(query))] == adapted.predict(query)


def test_only_headless_algorithms_may_test_with_other_ways(tmp_path):
    with pytest.raises(ValueError, match=r"eval.ways=3 differs from dataset.ways=5, but algo=maml has a classifier head"):
        run(image_config(["algo=maml", "train.iterations=1", "eval.ways=3"], output_dir=tmp_path))
    # ProtoNet: 5-way training, 3-way meta-test
    run(image_config(["algo=protonet", "train.iterations=1", "eval.ways=3"], output_dir=tmp_path / "protonet"))


@pytest.mark.parametrize("algo", ["protonet", "maml"])
def test_running_norm_evaluates_with_the_recorded_averages(tmp_path, algo):
    run(image_config([f"algo={algo}", "train.iterations=20", *OVERRIDES[algo]], output_dir=tmp_path / "run",
                     noise=NOISE, norm="running"))
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    means = [t for name, t in best.buffers.items() if name.endswith("running_mean")]
    assert len(means) == 2 and all(m.abs().sum() > 0 for m in means)  # recorded during training
    # mode=eval restores best.pt's averages and reproduces the run's own meta-test
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    again = evaluate_checkpoint(compose_config([f"checkpoint={tmp_path}/run/checkpoints/best.pt"],
                                               output_dir=tmp_path / "eval"))
    # twice chance (0.2): 20 iterations land near 0.5, a little either side depending on the task mapping
    assert again["test/acc"] == pytest.approx(results["test/acc"], abs=1e-6) and results["test/acc"] > 0.4
    # even transductive scoring no longer depends on the other queries: there are no batch statistics
    adapted = load_learner(tmp_path / "run" / "checkpoints" / "best.pt", transductive=True).adapt(*_task()[:2])
    query = _task()[2]
    assert [adapted.predict(query[i : i + 1])[0] for i in range(len(query))] == adapted.predict(query)


def test_per_step_batch_norm_needs_batch_statistics(tmp_path):
    with pytest.raises(ValueError, match="algo.per_step_bn=true normalises each inner step .*use model.norm=batch"):
        run(image_config(["algo=mamlpp", "train.iterations=1"], output_dir=tmp_path, norm="running"))


def test_degenerate_images_and_a_single_image_are_refused_in_one_line(tmp_path):
    run(image_config(["algo=protonet", "train.iterations=1"], output_dir=tmp_path, noise=NOISE))
    learner = load_learner(tmp_path / "checkpoints" / "last.pt")
    one = make_images(NOISE)[60, 0, 0].numpy()  # uint8 [H, W]
    cases = [
        (Image.fromarray(one), r"got one image \(a 12x12 PIL image\) where a list or batch is expected; pass \[image\]"),
        (one, r"got one image \(an array of shape \[12, 12\]\) where a list or batch is expected"),
        (np.zeros((12, 12, 3), np.uint8), r"got one image \(an array of shape \[12, 12, 3\]\)"),
        ([one, "glyph.png"], r"image 1 is a str, not an image; pass PIL images or arrays .* PIL.Image.open"),
        ("glyph.png", r"got a str; pass a list of images"),
        ([one, np.zeros((1, 1), np.uint8)], r"image 1 is an array of shape \[1, 1\], too small to be an image"),
        ([Image.new("L", (0, 0))], r"image 0 is a 0x0 PIL image, too small to be an image"),
        (np.zeros((5,), np.uint8), r"got an array of shape \[5\]; pass a batch"),
    ]
    for images, message in cases:
        with pytest.raises(ValueError, match=message):
            learner.adapt(images, ["a"] * 5)
    with pytest.raises(ValueError, match="adapt got 1 images but 5 labels"):
        learner.adapt([one], ["a", "b", "c", "d", "e"])


def test_a_relation_network_learner_warns_once_when_the_shots_differ_from_training(tmp_path):
    run(image_config(["algo=relationnet", "train.iterations=1"], output_dir=tmp_path, noise=NOISE, shots=1))
    learner = load_learner(tmp_path / "checkpoints" / "last.pt")
    support, labels, query, _ = _task(shots=2)
    with pytest.warns(UserWarning, match=r"meta-trained with 1 support shots per class and got \[2\]; its class "
                                         r"summaries sum the shots"):
        learner.adapt(support, labels).predict(query)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per learner, and never for the trained shots
        learner.adapt(support, labels)
        one_shot, one_labels, _, _ = _task(shots=1)
        load_learner(tmp_path / "checkpoints" / "last.pt").adapt(one_shot, one_labels)
