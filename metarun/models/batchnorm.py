"""Batch norm for meta-learning, written with plain tensor ops, of two kinds (``model.norm``):

* ``batch`` (the MAML papers' transductive setting): every forward pass normalises with the statistics of
  the batch it sees — in training and at evaluation, where a task's query set is one batch (or, with
  ``eval.transductive=false``, each query with the support set). No buffers: the network is a pure function
  of its parameters.
* ``running``: training still normalises with batch statistics, and the train loop records exponential
  running averages of them (``recording``) once per iteration, outside the differentiated step; in eval mode
  (``model.eval()``: validation, meta-test, ``load_learner``) every layer uses those averages, so a
  prediction depends only on the parameters and that one image, never on other queries or the support set.

Outside vmap (a per-task loop, a single forward) the layer runs torch's fused ``F.batch_norm`` kernel, which
is several times faster than the same arithmetic in separate ops and keeps less for the backward pass (on
channels-last CPU tensors of second-order MAML, ``metarun.models.second_order.batch_norm``: the same kernels, with a
cheap second derivative and statistics summed in two passes). Under vmap it falls back to plain tensor ops: vmap's
batching rule for the fused kernel's backward still gives wrong second-order MAML gradients in torch 2.13
(pytorch/functorch#534; tests/models/test_batchnorm.py checks both paths against each other and the fallback
against the per-task loop). A ragged batch under vmap (episodes of
different sizes padded to the largest, ``metarun.mapping.ragged``) normalises each task with its real rows only
(``real_rows``), so its statistics are those of the unpadded task.
"""

import contextvars
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from metarun.config.models import NORMS
from metarun.models import second_order
from metarun.models.transforms import under_vmap


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
        averages = self.running and not self.training
        if not self.recording and not under_vmap():
            if averages:
                return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
            if second_order.applies(x) or second_order.adapted(x, self.weight):
                return second_order.batch_norm(x, self.weight, self.bias, self.eps)
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        rows = ROWS.get()
        if averages:
            mean, var = self.running_mean.view(1, -1, 1, 1), self.running_var.view(1, -1, 1, 1)
        elif rows is not None and rows.shape[0] == x.shape[0]:
            mean, var = real_rows_statistics(x, rows)
        else:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False, keepdim=True)
            if self.recording:
                self.running_mean.lerp_(mean.detach().flatten(), self.momentum)
                self.running_var.lerp_(var.detach().flatten(), self.momentum)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


# under vmap, which rows of the batch a forward pass normalises are real examples rather than a ragged batch's
# padding ([B] bool, set by ``real_rows`` for one forward pass): only they make the batch statistics
ROWS = contextvars.ContextVar("metarun_real_rows", default=None)


@contextmanager
def real_rows(rows):
    """Within the block, batch statistics count only the rows where ``rows`` ([B] bool, or None: all) is true."""
    token = ROWS.set(rows)
    try:
        yield
    finally:
        ROWS.reset(token)


def real_rows_statistics(x: torch.Tensor, rows: torch.Tensor) -> tuple:
    """Per-channel (mean, biased variance) of ``x`` [B, C, H, W] over its ``rows`` only, each [1, C, 1, 1]."""
    weights = rows.to(x.dtype).view(-1, 1, 1, 1)
    count = weights.sum() * x.shape[2] * x.shape[3]
    mean = (x * weights).sum((0, 2, 3), keepdim=True) / count
    return mean, ((x - mean).square() * weights).sum((0, 2, 3), keepdim=True) / count


def check_norm(norm: str) -> None:
    """Reject a ``model.norm`` other than batch or running (``check`` does for a composed config; this, for a model
    built directly)."""
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


def support_context(forward, example_dims: int):
    """``forward`` for inductive evaluation (Nichol et al., 2018, section 5, "non-transductive"): given queries
    stacked with the support set as [Q, S + 1, *example] (``in_context``), each query is normalised with the
    statistics of the support set plus itself and only its own output [Q, out] is returned; support inputs
    [S, *example] pass through unchanged."""

    def forward_in_context(params, x):
        if x.dim() == example_dims + 2:
            return vmap(lambda rows: forward(params, rows)[-1])(x)
        return forward(params, x)

    return forward_in_context


def in_context(support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
    """Each query appended to a copy of the support set: [Q, S + 1, *example]."""
    copies = support_x.expand(query_x.shape[0], *support_x.shape)
    return torch.cat([copies, query_x.unsqueeze(1)], 1)
