"""Batch norm for meta-learning, written with plain tensor ops, in two modes (``model.norm``):

* ``batch`` (the MAML papers' transductive setting): every forward pass normalises with the statistics of
  the batch it sees — in training and at evaluation, where a task's query set is one batch (or, with
  ``eval.transductive=false``, each query with the support set). No buffers: the network is a pure function
  of its parameters.
* ``running``: training still normalises with batch statistics, and the train loop records exponential
  running averages of them (``recording``) once per iteration, outside the differentiated step; in eval mode
  (``model.eval()``: validation, meta-test, ``load_learner``) every layer uses those averages, so a
  prediction depends only on the parameters and that one image, never on other queries or the support set.

Not ``F.batch_norm``: under vmap its backward batching rule gives wrong second-order MAML gradients
(pytorch/functorch#534); these ops match the per-task loop.
"""

from contextlib import contextmanager

import torch
from torch import nn

NORMS = ("batch", "running")


class BatchNorm2d(nn.Module):
    """BatchNorm over (batch, height, width); ``running=True`` adds running averages used in eval mode."""

    def __init__(self, channels: int, eps: float = 1e-5, running: bool = False, momentum: float = 0.1):
        """Per-channel scale (ones) and shift (zeros), as ``nn.BatchNorm2d``; running mean 0 and variance 1."""
        super().__init__()
        self.eps, self.running, self.momentum, self.recording = eps, running, momentum, False
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        if running:
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each channel of ``x`` [B, C, H, W] by its batch statistics, or the running ones in eval mode."""
        if self.running and not self.training:
            mean, var = self.running_mean.view(1, -1, 1, 1), self.running_var.view(1, -1, 1, 1)
        else:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False, keepdim=True)
            if self.recording:
                self.running_mean.lerp_(mean.detach().flatten(), self.momentum)
                self.running_var.lerp_(var.detach().flatten(), self.momentum)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def check_norm(norm: str) -> None:
    """Reject a ``model.norm`` other than batch or running."""
    if norm not in NORMS:
        raise ValueError(f"model.norm={norm} is not one of {', '.join(NORMS)}")


def has_running_stats(model: nn.Module) -> bool:
    """Whether any batch-norm layer of ``model`` keeps running averages (``model.norm=running``)."""
    return any(isinstance(m, BatchNorm2d) and m.running for m in model.modules())


@contextmanager
def recording(model: nn.Module):
    """Within the block, forward passes in training mode update the running averages of ``model``'s layers."""
    layers = [m for m in model.modules() if isinstance(m, BatchNorm2d) and m.running]
    for layer in layers:
        layer.recording = True
    try:
        yield
    finally:
        for layer in layers:
            layer.recording = False


@contextmanager
def evaluating(model: nn.Module):
    """``model`` in eval mode within the block (running averages where kept), back in training mode after."""
    model.eval()
    try:
        yield
    finally:
        model.train()
