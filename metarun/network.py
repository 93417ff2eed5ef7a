"""The network as the algorithms call it: ``forward(params, x)`` over a parameter dict, and the backbone with
its meta-learned tensors as an algorithm uses them."""

import copy
import threading

import torch
from omegaconf import OmegaConf
from torch.func import functional_call

from metarun.models import build_model, without_head


def functional_forward(model: torch.nn.Module):
    """``forward(params, x)`` that runs ``model`` with the given parameters and its own buffers.

    Safe to call from several threads at once (``threads`` mode): ``functional_call`` swaps the parameters
    into the module it is given, so other threads run a copy of ``model`` each, in the same train/eval mode.
    """
    buffers = dict(model.named_buffers())
    replicas = threading.local()

    def module() -> torch.nn.Module:
        if threading.current_thread() is threading.main_thread():
            return model
        if not hasattr(replicas, "model"):
            replicas.model = copy.deepcopy(model)
        return replicas.model.train(model.training)

    return lambda params, x: functional_call(module(), (params, buffers), (x,))


def build_network(cfg, algorithm, settings, input_shape: tuple, output_dim: int, device: torch.device):
    """The backbone as ``algorithm`` (a ``metarun.algos.Algorithm`` with ``settings``) uses it, without its head
    when the algorithm has none, and the meta-learned tensors, on ``device``."""
    model = build_model(cfg.model, input_shape, output_dim)
    if not algorithm.has_head:
        model = without_head(model)
    model = model.to(device)
    if OmegaConf.select(cfg, "hardware.channels_last", default=False):
        # only 4-d tensors (convolution weights) change layout; the kernels then run channels-last
        model = model.to(memory_format=torch.channels_last)
    return model, algorithm.meta_params(model, settings)
