"""Channels-last activations: where a network's run of them begins and ends (``hardware.channels_last``).

With channels-last weights, oneDNN's convolutions return channels-last activations and every layer after them
keeps that layout, forward and backward. Two places would break the run and leave a backward pass mixing layouts
(each mixed elementwise kernel or convolution then copies, or strides through memory 10x slower):

* a convolution of one input channel: its input and (once an inner step has updated it) its weight are both
  layouts at once, and with default strides it returns the default one. Its input is given channels-last strides
  instead (``channels_last_strides``: a view of the same memory), and oneDNN, which follows the strides, returns
  channels-last activations from the first layer on, without a copy;
* the flatten before the head, whose gradient comes back in the default layout: ``to_layout`` converts the value
  there and every gradient through it the other way, to the layout each side runs in.

A residual network's global average pool is a mean over the image (``GlobalAveragePool``): torch's adaptive pool
restrides a channels-last result in place, which vmap cannot batch.
"""

import torch
from torch import nn

from metarun.models.transforms import under_vmap

CHANNELS_LAST, CONTIGUOUS = torch.channels_last, torch.contiguous_format


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether 4-d ``x`` is laid out channels-last and not also contiguous (a tensor of one channel or one pixel is
    both)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=CHANNELS_LAST) and not x.is_contiguous()


def to_layout(x: torch.Tensor, layout, gradient_layout) -> torch.Tensor:
    """``x`` in memory format ``layout``; its gradient comes back in ``gradient_layout``, and a gradient of that
    gradient (second-order MAML) in ``layout`` again."""
    return _ToLayout.apply(x, layout, gradient_layout)


class _ToLayout(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, layout, gradient_layout):
        return x.contiguous(memory_format=layout)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.layouts = inputs[1:]

    @staticmethod
    def backward(ctx, grad):
        layout, gradient_layout = ctx.layouts
        return to_layout(grad, gradient_layout, layout), None, None


class Flatten(nn.Flatten):
    """``nn.Flatten`` of [B, C, H, W] features in the default (C, H, W) order whatever their layout; from
    channels-last features the gradient goes back channels-last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not under_vmap() and is_channels_last(x):
            x = to_layout(x, CONTIGUOUS, CHANNELS_LAST)
        return super().forward(x)


def lay_out_channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its convolution weights channels-last, and its convolutions of one input channel (whose input
    and weight are both layouts) fed inputs with channels-last strides, so that the run starts at the first layer.

    Measured on one core of our CPU (second-order MAML, Omniglot 20-way 1-shot, in one process): 1.11x the meta-step
    that converted the first layer's output instead (a copy forward and one backward), and that conversion had been
    1.13x leaving it in the default layout."""
    model = model.to(memory_format=CHANNELS_LAST)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 1:
            module.register_forward_pre_hook(_channels_last_input)
    return model


def channels_last_strides(x: torch.Tensor) -> torch.Tensor:
    """``x`` [B, 1, H, W] as a view with channels-last strides: the same memory (a channel dimension of size one has
    no stride that matters), which oneDNN reads as the layout to run and return."""
    return x.squeeze(1).unsqueeze(-1).permute(0, 3, 1, 2)


def _channels_last_input(module, inputs):
    """The input of a convolution of one input channel with channels-last strides (outside vmap, whose batched
    layers keep their own layout)."""
    x = inputs[0]
    return (channels_last_strides(x),) if x.dim() == 4 and x.shape[1] == 1 and not under_vmap() else None


class GlobalAveragePool(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)`` as a mean over height and width: the same values, but torch's kernel restrides a
    channels-last result with ``as_strided_``, which vmap has no batching rule for (it falls back to a loop over
    the tasks, with a warning)."""

    def __init__(self):
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((-2, -1), keepdim=True)
