"""The network as the algorithms call it: ``forward(params, x)`` over a parameter dict, and the backbone with
its meta-learned tensors as an algorithm uses them."""

import copy
import threading
from typing import Optional

import torch
from omegaconf import OmegaConf
from torch.func import functional_call
from torch.nn.utils import parametrize

from metarun.config.algos import ANILConfig, EmbeddingConfig, MAMLConfig, MetaSGDConfig
from metarun.config.validate import written
from metarun.models import build_model, without_head
from metarun.models.layout import lay_out_channels_last
from metarun.utils import hardware


def functional_forward(model: torch.nn.Module, buffers_of: torch.nn.Module = None):
    """``forward(params, x)`` that runs ``model`` with the given parameters and the buffers of ``buffers_of``
    (``model`` itself by default), in ``buffers_of``'s train/eval mode: ``functional_call``'s result, through
    ``swapped_call``.

    Safe to call from several threads at once (``threads`` mapping): the parameters are swapped into the module
    that runs, so other threads run a copy of ``model`` each, in the same train/eval mode. The forward is bound to
    the layers ``model`` has when it is built: after replacing a layer or tying weights, build it again.
    Where ``model`` has a linear head (the last child of every backbone), ``forward.embed(params, x)`` runs it
    without that head: the embedding a Proto-MAML head is initialised from (``algo.head_init=prototypes``).
    """
    owner = model if buffers_of is None else buffers_of
    buffers = dict(owner.named_buffers())
    own = set(dict(model.named_parameters()))
    main = (model, tensor_slots(model))
    replicas = threading.local()

    def module() -> tuple:
        if threading.current_thread() is threading.main_thread():
            if model.training != owner.training:
                model.train(owner.training)
            return main
        if not hasattr(replicas, "model"):
            replica = copy.deepcopy(model)
            replicas.model = (replica, tensor_slots(replica))
        replicas.model[0].train(owner.training)
        return replicas.model

    def forward(params, x):
        if buffers and not buffers.keys().isdisjoint(params):  # as functional_call refuses it
            raise ValueError(f"parameters {sorted(buffers.keys() & params.keys())} are the model's buffers too")
        # the same parameter dict runs a headless copy: names stay ``buffers_of``'s, and the head's are left out
        tensors = {**(params if buffers_of is None else {k: v for k, v in params.items() if k in own}), **buffers}
        return swapped_call(*module(), tensors, x)

    if buffers_of is None and isinstance(model, torch.nn.Sequential) and isinstance(model[-1], torch.nn.Linear):
        forward.embed = functional_forward(without_head(model), buffers_of=model)
    return forward


def tensor_slots(module: torch.nn.Module) -> Optional[dict]:
    """``{name: (table, key)}``: where each parameter and buffer of ``module`` lives (the ``_parameters`` or
    ``_buffers`` dict of its submodule, and its key there); None where ``functional_call``'s own care is needed, for
    a tensor under two names (tied weights) or a parametrization."""
    slots, tensors = {}, set()
    for table, named in (("_parameters", module.named_parameters(remove_duplicate=False)),
                         ("_buffers", module.named_buffers(remove_duplicate=False))):
        for name, tensor in named:
            prefix, _, key = name.rpartition(".")
            slots[name] = (getattr(module.get_submodule(prefix), table), key)
            tensors.add(id(tensor))
    if len(tensors) < len(slots) or any(parametrize.is_parametrized(m) for m in module.modules()):
        return None
    return slots


def swapped_call(module: torch.nn.Module, slots: Optional[dict], tensors: dict, x):
    """``functional_call(module, tensors, (x,))``: each of ``tensors`` put into its slot (``tensor_slots``) for
    the call and the module's own put back after, as ``functional_call`` does, without its search of the module
    for tied tensors on every call (0.15-0.2 ms, a tenth of a small Conv-4's forward on a CPU core). Where
    ``slots`` is None, a name has no slot, or torch.compile traces, ``functional_call`` itself runs."""
    if slots is None or torch.compiler.is_compiling() or not slots.keys() >= tensors.keys():
        return functional_call(module, tensors, (x,))
    places = [slots[name] for name in tensors]
    originals = [table[key] for table, key in places]
    try:
        for (table, key), tensor in zip(places, tensors.values()):
            table[key] = tensor
        return module(x)
    finally:
        for (table, key), original in zip(places, originals):
            table[key] = original


def build_network(cfg, algorithm, settings, input_shape: tuple, output_dim: int, device: torch.device):
    """The backbone as ``algorithm`` (a ``metarun.algos.Algorithm`` with ``settings``) uses it, without its head
    when the algorithm has none, and the meta-learned tensors, on ``device``."""
    model = build_model(cfg.model, input_shape, output_dim)
    if not algorithm.has_head:
        model = without_head(model)
    model = model.to(device)
    if channels_last(OmegaConf.select(cfg, "hardware.channels_last", default=False), settings, device, input_shape,
                     OmegaConf.select(cfg, "hardware.num_threads", default="auto")):
        model = lay_out_channels_last(model)
    return model, algorithm.meta_params(model, settings)


# the MAML family's images from which channels-last pays wherever the run may map tasks to threads: miniImageNet's
# 84 px gained 1.27-1.5x on one core and two; Omniglot's 28 px gained on one core (1.12x 5-way, 1.20x 20-way) but
# lost with the threads mapping on two (0.89-0.91x 5-way: on small tasks second_order.py's functions, mostly its
# batch-norm statistics, cost more than they save); sizes between were not measured
MAML_CHANNELS_LAST_SIDE = 84


def channels_last(setting, settings, device: torch.device, input_shape: tuple, num_threads="auto") -> bool:
    """Whether convolution weights go channels-last: ``hardware.channels_last`` (``setting``), where auto means on a
    CPU for the algorithms that score a task on embeddings (their ``settings`` are an ``EmbeddingConfig``), and for
    MAML, first-order MAML, MAML++ and ANIL (a ``MAMLConfig`` or ``ANILConfig``) on images (``input_shape``, C, H, W)
    of at least ``MAML_CHANNELS_LAST_SIDE`` pixels a side; on smaller images, for those and Meta-SGD where the run has
    one core (``hardware.num_threads=1``, or one core available: no threads mapping).

    Measured with scripts/bench.py's settings on one core of our CPU (Xeon, AVX-512), metarun's loop with
    channels-last weights against contiguous ones: 1.3-1.56x for every embedding algorithm (ProtoNet Conv-4 and
    ResNet-12, Matching and Relation Networks, MetaOptNet-SVM, Baseline); for the MAML family, with the second
    derivatives of metarun/models/second_order.py and the unbroken layout of metarun/models/layout.py, 1.27-1.99x
    on miniImageNet's max-pool Conv-4 (MAML, first-order MAML, MAML++, ANIL; 1.27x for MAML with the threads mapping
    on two cores), 1.15-1.20x on Omniglot 20-way and 1.03-1.12x on 5-way (but 0.89-0.91x with threads on two
    cores), Meta-SGD on Omniglot 1.05x. Reptile (0.98x) and iMAML (0.97x) lose, and keep contiguous weights.
    Precision is float32's either way: over 16 random 20-way tasks and initialisations the MAML meta-gradient left
    float64's by more than 1e-4 in 7 channels-last and 3 contiguous cases (a ReLU mask flipping at a value within
    rounding of zero), the worst 7e-3 and 2.5e-2; a paired debug=quick run on the Omniglot subsets scored the same
    (-0.6 points [-1.6, +0.4]; docs/speed.md).
    """
    if setting != "auto":
        return bool(setting)
    if device.type != "cpu":
        return False
    images = len(input_shape) == 3
    large = images and min(input_shape[1:]) >= MAML_CHANNELS_LAST_SIDE
    one_core = images and not hardware.several_cores(device, num_threads)
    return isinstance(settings, EmbeddingConfig) or \
        isinstance(settings, (MAMLConfig, ANILConfig)) and (large or one_core) or \
        isinstance(settings, MetaSGDConfig) and one_core


def describe(model: torch.nn.Module, cfg_model) -> str:
    """One line for start-up: the backbone ``cfg_model._target_`` names, the settings ``cfg_model`` gives it and the
    parameter count of ``model`` as built (without the head where the algorithm has none), e.g.
    ``model: conv4 (width=64, depth=4, max_pool=true, norm=batch), 112,261 parameters`` (Omniglot, 5 ways)."""
    name = cfg_model._target_.rsplit(".", 1)[-1].lower()
    values = OmegaConf.to_container(cfg_model, resolve=True)
    settings = ", ".join(f"{key}={written(value)}" for key, value in values.items() if key != "_target_")
    count = sum(p.numel() for p in model.parameters())
    return f"model: {name}{f' ({settings})' if settings else ''}, {count:,} parameters"
