"""EpisodeSampler and ImageTasks on a synthetic store whose pixels encode each image's row."""

import pytest
import torch

from metarun.data.files.store import ImageStore
from metarun.data.sampling.image_tasks import ImageTasks
from metarun.data.sampling.sampler import EpisodeSampler, images_on_device
from metarun.logging import console

CPU = torch.device("cpu")


def coded_store(counts: list) -> ImageStore:
    """Images [N, 1, 2, 2] whose first two pixels hold the row number in base 256, classes of ``counts`` images."""
    rows = torch.arange(sum(counts))
    images = torch.stack([rows % 256, rows // 256, rows % 7, rows % 11], 1).to(torch.uint8).view(-1, 1, 2, 2)
    offsets = torch.tensor([0, *counts]).cumsum(0)
    return ImageStore(images, offsets, tuple(f"class{c}" for c in range(len(counts))))


def decode_rows(x: torch.Tensor) -> torch.Tensor:
    """The store row of each image of a batch normalised with mean 0, std 1."""
    pixels = (x.flatten(-3) * 255).round().long()
    return pixels[..., 0] + 256 * pixels[..., 1]


def class_of(store: ImageStore, rows: torch.Tensor) -> torch.Tensor:
    """The class index owning each store row."""
    return torch.searchsorted(store.offsets, rows, right=True) - 1


@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 15), (20, 5, 5), (3, 2, 0)])
def test_episode_invariants(ways, shots, queries):
    store = coded_store([20] * 30 + [6] * 10 + [40] * 5)
    sampler = EpisodeSampler(store, CPU, [0.0], [1.0])
    batch = sampler.sample(16, torch.Generator().manual_seed(0), ways, shots, queries)
    assert batch.support_x.shape == (16, ways * shots, 1, 2, 2) and batch.query_x.shape == (16, ways * queries, 1, 2, 2)
    assert batch.support_y.dtype == torch.long and batch.support_x.dtype == torch.float32
    for t in range(16):
        support, query = decode_rows(batch.support_x[t]), decode_rows(batch.query_x[t])
        assert len(set(support.tolist()) | set(query.tolist())) == ways * (shots + queries)  # distinct, disjoint
        for label in range(ways):
            assert (batch.support_y[t] == label).sum() == shots and (batch.query_y[t] == label).sum() == queries
        # every label maps to exactly one class, and different labels to different classes
        labels = torch.cat([batch.support_y[t], batch.query_y[t]])
        classes = class_of(store, torch.cat([support, query]))
        pairs = set(zip(labels.tolist(), classes.tolist()))
        assert len(pairs) == ways and len({c for _, c in pairs}) == ways
        # classes too small for shots + queries are never drawn
        assert all(store.counts[c] >= shots + queries for c in classes.tolist())


def test_sampling_covers_classes_and_images():
    store = coded_store([5] * 8)
    sampler = EpisodeSampler(store, CPU, [0.0], [1.0])
    batch = sampler.sample(200, torch.Generator().manual_seed(1), 3, 1, 1)
    seen = decode_rows(torch.cat([batch.support_x, batch.query_x], 1)).unique()
    assert len(seen) == 40  # every image of every class turns up


def test_same_generator_state_gives_same_batch_and_normalises():
    store = coded_store([10] * 6)
    sampler = EpisodeSampler(store, CPU, [0.5], [0.25])
    first = sampler.sample(4, torch.Generator().manual_seed(7), 5, 2, 3)
    second = sampler.sample(4, torch.Generator().manual_seed(7), 5, 2, 3)
    assert all(torch.equal(a, b) for a, b in zip(first.tensors(), second.tensors()))
    raw = store.images[decode_rows(first.support_x * 0.25 + 0.5)].float() / 255
    assert torch.allclose(first.support_x, (raw - 0.5) / 0.25, atol=1e-5)


def test_too_many_ways_or_shots_name_the_keys_and_the_maximum():
    sampler = EpisodeSampler(coded_store([20] * 4 + [5] * 3), CPU, [0.0], [1.0], split="test")
    with pytest.raises(ValueError, match=r"dataset.ways=5 .* 4 classes of the test split .* at most 4"):
        sampler.sample(1, torch.Generator(), 5, 1, 15)
    with pytest.raises(ValueError, match=r"dataset.shots\+dataset.queries=6\+15 exceeds the 20 .* at most 20"):
        sampler.sample(1, torch.Generator(), 2, 6, 15)
    assert sampler.sample(1, torch.Generator(), 7, 1, 4).support_x.shape[1] == 7  # small classes do for 5 images


def test_image_tasks_augments_training_batches_only():
    calls = []

    def augment(x, generator):
        calls.append(x.shape)
        return -x

    stores = {split: coded_store([8] * 6) for split in ("train", "val", "test")}
    tasks = ImageTasks(stores, 3, 1, 2, CPU, ([0.0], [1.0]), augment)
    assert tasks.input_shape == (1, 2, 2) and tasks.output_dim == 3 and tasks.objective == "classification"
    assert (tasks.sample(2, torch.Generator()).support_x <= 0).all() and calls == [(6, 1, 2, 2), (12, 1, 2, 2)]
    assert (tasks.episodes("val", 0, 0, 3).support_x >= 0).all() and len(calls) == 2


def test_image_tasks_check_training_at_construction_and_each_evaluation_split_with_its_sizes():
    stores = {"train": coded_store([8] * 6), "val": coded_store([8] * 6), "test": coded_store([8] * 2)}
    with pytest.raises(ValueError, match="^dataset.ways=7 exceeds the 6 classes of the train split"):
        ImageTasks(stores, 7, 1, 2, CPU, ([0.0], [1.0]))
    tasks = ImageTasks(stores, 3, 1, 2, CPU, ([0.0], [1.0]))  # the engine checks val and test at start-up
    with pytest.raises(ValueError, match="^dataset.ways=3 exceeds the 2 classes of the test split"):
        tasks.check_episodes("test")
    tasks.check_episodes("test", ways=2)


def test_evaluation_episodes_are_a_function_of_split_seed_index():
    stores = {split: coded_store([10] * 12) for split in ("train", "val", "test")}
    tasks = ImageTasks(stores, 5, 1, 3, CPU, ([0.0], [1.0]))
    whole = tasks.episodes("test", 0, 0, 6)
    part = tasks.episodes("test", 0, 2, 3)
    assert all(torch.equal(a[2:5], b) for a, b in zip(whole.tensors(), part.tensors()))
    assert not torch.equal(whole.support_x[0], whole.support_x[1])
    assert not torch.equal(tasks.episodes("val", 0, 0, 1).support_x, whole.support_x[:1])
    assert not torch.equal(tasks.episodes("test", 1, 0, 1).support_x, whole.support_x[:1])
    # the sizes can differ from training's
    assert tasks.episodes("test", 0, 0, 2, ways=2, shots=3, queries=1).support_x.shape == (2, 6, 1, 2, 2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_episodes_are_drawn_on_the_gpu():
    cuda = torch.device("cuda")
    stores = {split: coded_store([10] * 12) for split in ("train", "val", "test")}
    tasks = ImageTasks(stores, 5, 2, 3, cuda, ([0.0], [1.0]))
    batch = tasks.sample(8, torch.Generator(device=cuda).manual_seed(0))
    assert all(t.device.type == "cuda" for t in batch.tensors())
    assert tasks.samplers["train"].store.images.device.type == "cuda"
    episodes = tasks.episodes("test", 0, 0, 3)
    assert torch.equal(episodes.support_x, tasks.episodes("test", 0, 0, 3).support_x)


def test_a_store_kept_on_the_host_gives_the_same_episodes_without_a_copy(tmp_path):
    coded_store([10] * 12).save(tmp_path / "train.store")
    mapped = ImageStore.load(tmp_path / "train.store")
    on_host = EpisodeSampler(mapped, CPU, [0.0], [1.0], store_on="host")
    on_device = EpisodeSampler(coded_store([10] * 12), CPU, [0.0], [1.0], store_on="device")
    assert not on_host.on_device and on_device.on_device
    assert on_host.store.images.data_ptr() == mapped.images.data_ptr()  # still the memory-mapped file
    batches = [s.sample(4, torch.Generator().manual_seed(0), 5, 2, 3) for s in (on_host, on_device)]
    assert all(torch.equal(a, b) for a, b in zip(*(b.tensors() for b in batches)))


def test_auto_keeps_on_the_host_a_split_over_half_the_free_device_memory(monkeypatch, capsys):
    store, cuda = coded_store([10] * 12), torch.device("cuda")  # no GPU needed: only its free memory is asked
    monkeypatch.setitem(console._shown, "progress", True)  # as logger.console=true sets it (another test may not have)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * store.images.numel(), 10**12))
    assert images_on_device(store, cuda, "auto", "train")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * store.images.numel() - 1, 10**12))
    assert not images_on_device(store, cuda, "auto", "train")
    assert "the train split's images" in capsys.readouterr().err
    assert images_on_device(store, cuda, "device", "train") and not images_on_device(store, CPU, "host", "train")
    assert images_on_device(store, CPU, "auto", "train")
    with pytest.raises(ValueError, match="dataset.store_on=gpu is not one of auto, device, host"):
        images_on_device(store, CPU, "gpu", "train")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_store_kept_on_the_host_gives_the_gpu_the_same_episodes():
    cuda = torch.device("cuda")
    samplers = [EpisodeSampler(coded_store([10] * 12), cuda, [0.0], [1.0], store_on=where) for where in ("host", "device")]
    assert samplers[0].store.images.device.type == "cpu" and samplers[1].store.images.device.type == "cuda"
    batches = [s.sample(4, torch.Generator(device=cuda).manual_seed(0), 5, 2, 3) for s in samplers]
    assert all(torch.equal(a, b) and a.device.type == "cuda" for a, b in zip(*(b.tensors() for b in batches)))
