"""The settings the benchmark measures, one or more per algorithm in conf/algo/ (the papers' protocols: algorithm,
ways, shots, queries, image shape, meta-batch, inner loop, network), as measured on a device or shrunk for
``--quick``, the network's name in the JSON lines, and the synthetic meta-batch of random images each setting is
measured on."""

import torch

from metarun.data.tasks import TaskBatch

from .algorithms import algorithm_settings

OMNIGLOT, MINIIMAGENET = (1, 28, 28), (3, 84, 84)
# ``algo`` names a conf/algo/ option; the keys that option's config has (inner_lr, lam, ...) set it, as algo.KEY=VALUE
# would, so a key of another meaning must not share an algo key's name (ANIL's ``head``, a parameter-name prefix);
# ``iteration``: the outer iteration whose settings run (annealed ones), 1 unless given
SETTINGS = {
    "maml-omniglot-5w1s": dict(algo="maml", ways=5, shots=1, queries=15, shape=OMNIGLOT, meta_batch=32,
                               inner_steps=1, inner_lr=0.4, width=64, max_pool=False),
    "maml-omniglot-20w1s": dict(algo="maml", ways=20, shots=1, queries=15, shape=OMNIGLOT, meta_batch=16,
                                inner_steps=5, inner_lr=0.1, width=64, max_pool=False),
    "maml-miniimagenet-5w1s": dict(algo="maml", ways=5, shots=1, queries=15, shape=MINIIMAGENET, meta_batch=4,
                                   inner_steps=5, inner_lr=0.01, width=32, max_pool=True),
    "fomaml-miniimagenet-5w1s": dict(algo="fomaml", ways=5, shots=1, queries=15, shape=MINIIMAGENET, meta_batch=4,
                                     inner_steps=5, inner_lr=0.01, width=32, max_pool=True),
    # MAML++ runs first order until iteration 25,000 (conf/algo/mamlpp.yaml) and anneals its multi-step loss by 5,000
    "mamlpp-miniimagenet-5w1s": dict(algo="mamlpp", ways=5, shots=1, queries=15, shape=MINIIMAGENET, meta_batch=2,
                                     inner_steps=5, inner_lr=0.1, width=48, max_pool=True, iteration=25001),
    "anil-miniimagenet-5w5s": dict(algo="anil", ways=5, shots=5, queries=15, shape=MINIIMAGENET, meta_batch=2,
                                   inner_steps=5, inner_lr=0.01, width=32, max_pool=True),
    "metasgd-omniglot-5w1s": dict(algo="metasgd", ways=5, shots=1, queries=15, shape=OMNIGLOT, meta_batch=32,
                                  inner_steps=1, inner_lr=0.1, width=64, max_pool=False),
    "reptile-omniglot-5w10s": dict(algo="reptile", ways=5, shots=10, queries=1, shape=OMNIGLOT, meta_batch=5,
                                   inner_steps=5, inner_lr=0.001, inner_batch=10, width=64, max_pool=False),
    "imaml-omniglot-5w1s": dict(algo="imaml", ways=5, shots=1, queries=15, shape=OMNIGLOT, meta_batch=16,
                                inner_steps=16, inner_lr=0.1, lam=2.0, cg_steps=5, width=64, max_pool=False),
    "metalstm-miniimagenet-5w1s": dict(algo="metalstm", ways=5, shots=1, queries=15, shape=MINIIMAGENET,
                                       meta_batch=1, inner_steps=12, inner_lr=0.01, hidden_size=20, width=32,
                                       max_pool=True),
    "protonet-omniglot-60w1s": dict(algo="protonet", ways=60, shots=1, queries=5, shape=OMNIGLOT, meta_batch=1,
                                    width=64, max_pool=True),
    "protonet-miniimagenet-5w5s": dict(algo="protonet", ways=5, shots=5, queries=15, shape=MINIIMAGENET,
                                       meta_batch=2, widths=(64, 160, 320, 640)),
    "matchingnet-omniglot-5w1s": dict(algo="matchingnet", ways=5, shots=1, queries=15, shape=OMNIGLOT, meta_batch=1,
                                      width=64, max_pool=True),
    "relationnet-omniglot-5w1s": dict(algo="relationnet", ways=5, shots=1, queries=19, shape=OMNIGLOT, meta_batch=1,
                                      hidden=8, width=64, max_pool=True),
    "r2d2-miniimagenet-16w1s": dict(algo="r2d2", ways=16, shots=1, queries=14, shape=MINIIMAGENET, meta_batch=1,
                                    scale=1e-4, ridge_lambda=50.0, width=64, max_pool=True),
    "metaoptnet_svm-miniimagenet-5w15s": dict(algo="metaoptnet_svm", ways=5, shots=15, queries=6, shape=MINIIMAGENET,
                                              meta_batch=8, svm_iterations=50, widths=(64, 160, 320, 640)),
    # ``classes``: the head's outputs, one per meta-train class (the synthetic labels are some of them)
    "baseline-miniimagenet-8w1s": dict(algo="baseline", ways=8, shots=1, queries=1, shape=MINIIMAGENET, meta_batch=1,
                                       classes=64, width=64, max_pool=True),
    "baselinepp-miniimagenet-8w1s": dict(algo="baselinepp", ways=8, shots=1, queries=1, shape=MINIIMAGENET,
                                         meta_batch=1, classes=64, scale=10.0, width=64, max_pool=True),
}
# metarun lines beyond the mappings, on the settings where they answer a question (``metarun_impls.variant_impls``):
# vmap-chunk, how much memory ``hardware.vmap_chunk`` saves vmap and what speed it costs (MAML 20-way: vmap held
# 2.2x torchopt's memory on the H200); joint, what one embedding pass of support and query gains
# (``algo.embedding_pass=joint``) on the algorithms that embed episodes in training (Baseline does so at meta-test only)
VARIANTS = {
    "maml-omniglot-20w1s": ("vmap-chunk",),
    "protonet-omniglot-60w1s": ("joint",),
    "protonet-miniimagenet-5w5s": ("joint",),
    "matchingnet-omniglot-5w1s": ("joint",),
    "relationnet-omniglot-5w1s": ("joint",),
    "r2d2-miniimagenet-16w1s": ("joint",),
    "metaoptnet_svm-miniimagenet-5w15s": ("joint",),
}
CPU_RESNET12_WIDTHS = (16, 40, 80, 160)
QUICK = dict(meta_batch=2, queries=2, width=4, widths=(4, 4, 4, 4))
QUICK_SIDE = 28  # --quick's images are at most this wide: miniImageNet's 84 px made most of a smoke test's time


def configured(name: str, device, quick: bool) -> dict:
    """Setting ``name`` as measured on ``device``: ResNet-12's widths quartered on a CPU, tiny with ``quick``
    (narrow networks, small batches and images); its ``outputs`` are the head's (None: the algorithm runs the
    backbone without its head), its ``embedding_pass`` the composed config's (None: the algorithm has none), its
    ``variants`` those of ``VARIANTS``."""
    setting = dict(SETTINGS[name])
    if device.type == "cpu" and "widths" in setting:
        setting["widths"] = CPU_RESNET12_WIDTHS
    if quick:
        setting.update({key: value for key, value in QUICK.items() if key in setting})
        channels, *sides = setting["shape"]
        setting["shape"] = (channels, *(min(side, QUICK_SIDE) for side in sides))
    algorithm, settings = algorithm_settings(setting)
    setting["outputs"] = setting.get("classes", setting["ways"]) if algorithm.has_head else None
    # the plain loops embed an episode as metarun does (one pass of support and query, or one each)
    setting["embedding_pass"] = getattr(settings, "embedding_pass", None)
    setting["variants"] = VARIANTS.get(name, ())
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
