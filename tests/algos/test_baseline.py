"""Baseline and Baseline++: class-labelled pre-training batches, the frozen-backbone head fitted at meta-test, and
what a user gets from them (load_learner with any number of ways, the one-line errors)."""

import pytest
import torch
from omegaconf import OmegaConf

from metarun import load_learner
from metarun.algos import baseline
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import BaselineConfig
from metarun.data import TaskSource, build_tasks
from metarun.models import without_head
from metarun.models.network import functional_forward
from metarun.runner.components import build_components
from metarun.runner.train import run
from tests.algos.shared import few_shot_accuracy
from tests.data.conftest import folders_cfg, omniglot_cfg, omniglot_dir  # noqa: F401  (the real subsets)
from tests.synthetic import SyntheticImages, TinyCNN, image_config

CE = OBJECTIVES["classification"]


def test_class_labels_name_each_images_class_in_the_train_split(omniglot_cfg, folders_cfg):  # noqa: F811
    tasks = build_tasks(omniglot_cfg(**folders_cfg, ways=4, shots=2, queries=3), torch.device("cpu"))
    tasks.label_by_class()
    store, sampler = tasks.samplers["train"].store, tasks.samplers["train"]
    assert tasks.output_dim == store.num_classes > 4
    batch = tasks.sample(3, torch.Generator().manual_seed(0))
    for x, y in ((batch.support_x, batch.support_y), (batch.query_x, batch.query_y)):
        for image, label in zip(x.flatten(0, 1), y.flatten()):
            members = store.images[store.offsets[label]:store.offsets[label + 1]].float() * sampler.scale - sampler.shift
            assert (members == image).flatten(1).all(1).any(), int(label)  # the image is one of its class's
    # the episodes stay class-major with 4 distinct classes each; validation and test keep 0..N-1
    assert all(len(set(task.tolist())) == 4 for task in batch.support_y)
    assert set(tasks.episodes("test", 0, 0, 2).support_y.flatten().tolist()) == set(range(4))


def test_the_embedding_is_the_network_without_its_head():
    model = TinyCNN((1, 12, 12), 7)
    x = torch.randn(6, 1, 12, 12)
    torch.testing.assert_close(baseline.embed(functional_forward(model), dict(model.named_parameters()), x),
                               without_head(model)(x))


def test_the_fitted_head_is_sgd_with_momentum_and_weight_decay_on_the_support_embeddings():
    torch.manual_seed(0)
    support, labels = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2])
    cfg = BaselineConfig(fit_steps=7, fit_lr=0.3, fit_weight_decay=0.01)
    head = baseline.fitted_head(support, labels, cfg, CE)
    # torch's SGD on a zero-initialised linear layer with one output per possible class (6: the support size)
    layer = torch.nn.Linear(4, 6).double()
    torch.nn.init.zeros_(layer.weight), torch.nn.init.zeros_(layer.bias)
    optimiser = torch.optim.SGD(layer.parameters(), lr=0.3, momentum=0.9, weight_decay=0.01)
    for _ in range(7):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(layer(support), labels).backward()
        optimiser.step()
    torch.testing.assert_close(head["weight"], layer.weight.detach())
    torch.testing.assert_close(head["bias"], layer.bias.detach())


@pytest.mark.parametrize("classifier", ["linear", "cosine"])
def test_pretraining_gradient_matches_finite_differences(classifier):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4)).double()
    forward, params = functional_forward(model), {n: p.detach().clone() for n, p in model.named_parameters()}
    sx, qx = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    sy, qy = torch.tensor([3, 1, 0, 2]), torch.tensor([3, 1, 0, 2])
    cfg = BaselineConfig(classifier=classifier, scale=5.0)
    # the loss as a function of the body's first weight matrix and of the head's weights
    for name in ("0.weight", "2.weight"):
        def loss(w, name=name):
            return baseline.meta_loss(forward, {**params, name: w}, sx, sy, qx, qy, cfg, CE)[0]
        assert torch.autograd.gradcheck(loss, (params[name].clone().requires_grad_(),))


def test_scoring_under_vmap_equals_the_loop():
    source = SyntheticImages(OmegaConf.create({"noise": 60.0, "ways": 3, "shots": 2, "queries": 4}), torch.device("cpu"))
    batch = source.episodes("test", 0, 0, 4)
    model = TinyCNN((1, 12, 12), 40)
    forward, params = functional_forward(model), dict(model.named_parameters())
    for classifier in ("linear", "cosine"):
        cfg = BaselineConfig(classifier=classifier, fit_steps=20)
        score = lambda *task: baseline.evaluate_task(forward, params, *task, cfg, CE)  # noqa: E731
        with torch.no_grad():
            looped = torch.stack([score(*task) for task in zip(*batch.tensors())])
            torch.testing.assert_close(torch.vmap(score)(*batch.tensors()), looped)


@pytest.mark.parametrize("algo", ["baseline", "baselinepp"])
def test_load_learner_fits_a_head_for_any_number_of_ways(tmp_path, algo):
    run(image_config([f"algo={algo}", "train.iterations=40", "eval.episodes=10", "train.meta_batch_size=2"],
                     output_dir=tmp_path, noise=30.0))
    learner = load_learner(tmp_path / "checkpoints" / "best.pt")
    for classes in ((60, 61, 62), (60, 61, 62, 63, 64, 65, 66)):  # meta-trained 5-way: 3 and 7 ways work too
        assert few_shot_accuracy(learner, classes) > 0.6, classes  # chance is 1/3 and 1/7


def test_a_source_that_cannot_label_by_class_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(SyntheticImages, "label_by_class", TaskSource.label_by_class)  # the interface's default
    with pytest.raises(ValueError, match="algo=baseline trains one classifier over every meta-train class, which "
                                         "dataset=synthetic cannot label; pick an image dataset"):
        build_components(image_config(["algo=baseline"]))


def test_an_unknown_classifier_is_refused_in_one_line():
    with pytest.raises(ValueError, match="algo.classifier=softmax is not one of linear, cosine"):
        build_components(image_config(["algo=baseline", "algo.classifier=softmax"]))
