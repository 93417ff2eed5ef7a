"""The settings the benchmark measures (the papers' protocols: algorithm, ways, shots, queries, image shape,
meta-batch, inner loop, network), as measured on a device or shrunk for ``--quick``, the network's name in the
JSON lines, and the synthetic meta-batch of random images each setting is measured on."""

import torch

from metarun.data.tasks import TaskBatch

OMNIGLOT, MINIIMAGENET = (1, 28, 28), (3, 84, 84)
SETTINGS = {
    "maml-omniglot-5w1s": dict(algo="maml", ways=5, shots=1, queries=15, shape=OMNIGLOT, meta_batch=32,
                               inner_steps=1, inner_lr=0.4, width=64, max_pool=False),
    "maml-omniglot-20w1s": dict(algo="maml", ways=20, shots=1, queries=15, shape=OMNIGLOT, meta_batch=16,
                                inner_steps=5, inner_lr=0.1, width=64, max_pool=False),
    "maml-miniimagenet-5w1s": dict(algo="maml", ways=5, shots=1, queries=15, shape=MINIIMAGENET, meta_batch=4,
                                   inner_steps=5, inner_lr=0.01, width=32, max_pool=True),
    "imaml-omniglot-5w1s": dict(algo="imaml", ways=5, shots=1, queries=15, shape=OMNIGLOT, meta_batch=16,
                                inner_steps=16, inner_lr=0.1, lam=2.0, cg_steps=5, width=64, max_pool=False),
    "protonet-omniglot-60w1s": dict(algo="protonet", ways=60, shots=1, queries=5, shape=OMNIGLOT, meta_batch=1,
                                    width=64, max_pool=True),
    "protonet-miniimagenet-5w5s": dict(algo="protonet", ways=5, shots=5, queries=15, shape=MINIIMAGENET,
                                       meta_batch=2, widths=(64, 160, 320, 640)),
}
CPU_RESNET12_WIDTHS = (16, 40, 80, 160)
QUICK = dict(meta_batch=2, queries=2, width=4, widths=(4, 4, 4, 4))
QUICK_SIDE = 28  # --quick's images are at most this wide: miniImageNet's 84 px made most of a smoke test's time


def configured(name: str, device, quick: bool) -> dict:
    """Setting ``name`` as measured on ``device``: ResNet-12's widths quartered on a CPU, tiny with ``quick``
    (narrow networks, small batches and images)."""
    setting = dict(SETTINGS[name])
    if device.type == "cpu" and "widths" in setting:
        setting["widths"] = CPU_RESNET12_WIDTHS
    if quick:
        setting.update({key: value for key, value in QUICK.items() if key in setting})
        channels, *sides = setting["shape"]
        setting["shape"] = (channels, *(min(side, QUICK_SIDE) for side in sides))
    return setting


def network(setting: dict) -> str:
    """The setting's network in words, e.g. ``conv4-64-stride2`` or ``resnet12-16-40-80-160``."""
    if "widths" in setting:
        return "resnet12-" + "-".join(map(str, setting["widths"]))
    return f"conv4-{setting['width']}-{'maxpool' if setting['max_pool'] else 'stride2'}"


def synthetic_batch(setting: dict, device) -> TaskBatch:
    """A meta-batch of random images and balanced labels (class-major), as the sampler hands it over."""
    generator = torch.Generator(device=device).manual_seed(0)

    def split(per_class: int):
        x = torch.randn(setting["meta_batch"], setting["ways"] * per_class, *setting["shape"], device=device,
                        generator=generator)
        y = torch.arange(setting["ways"], device=device).repeat_interleave(per_class).expand(setting["meta_batch"], -1)
        return x, y.contiguous()

    return TaskBatch(*split(setting["shots"]), *split(setting["queries"]))
