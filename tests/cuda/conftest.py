"""Fixtures of the CUDA tests (marker ``cuda``, run by ``scripts/gpu_check.sh``), which skip without a GPU.

``METARUN_CUDA_TESTS_ON=cpu`` runs their logic on the CPU instead, to debug them where there is no GPU; the
tests that check what only CUDA has (fp16 loss scaling, host synchronisation) still skip there.
"""

import os

import pytest
import torch

from metarun.data import Dataset
from metarun.data.files.store import ImageStore
from metarun.data.sampling.image_tasks import ImageTasks
from tests.synthetic import SPLITS, SyntheticConfig, SyntheticImages, make_images

DEVICE = torch.device(os.environ.get("METARUN_CUDA_TESTS_ON", "cuda"))


@pytest.fixture(autouse=True)
def device():
    """The device under test, with TF32 off so fp32 results compare to float tolerance; skips without a GPU."""
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield DEVICE
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture
def cuda(device):
    """CUDA itself, for what has no CPU counterpart."""
    if device.type != "cuda":
        pytest.skip("checks what only CUDA has")
    return device


def device_images(cfg, device):
    """The classes of ``tests.synthetic`` as a real ``ImageTasks``: uint8 stores on ``device``, episodes drawn there."""
    images = make_images(cfg.noise)  # [classes, images per class, 1, 12, 12]
    per_class = images.shape[1]

    def store(low: int, high: int) -> ImageStore:
        offsets = torch.arange(0, (high - low) * per_class + 1, per_class)
        return ImageStore(images[low:high].flatten(0, 1), offsets, tuple(str(c) for c in range(low, high)))

    stores = {split: store(*bounds) for split, bounds in SPLITS.items()}
    return ImageTasks(stores, cfg.ways, cfg.shots, cfg.queries, device, SyntheticImages.normalisation)


@pytest.fixture
def images_on_device(monkeypatch):
    """``dataset.name=synthetic`` (``tests.synthetic.image_config``), sampled on the device by the real sampler."""
    monkeypatch.setattr("tests.synthetic.DATASET", Dataset(device_images, SyntheticConfig))
