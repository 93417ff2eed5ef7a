"""Channels-last activations: where a network's run of them begins and ends (``hardware.channels_last``).

With channels-last weights, oneDNN's convolutions return channels-last activations and every layer after them
keeps that layout, forward and backward. Two places would break the run and leave a backward pass mixing layouts
(each mixed elementwise kernel or convolution then copies, or strides through memory 10x slower): a convolution of
one input channel, whose input and (once an inner step has updated it) weight are both layouts at once, so it
returns the default one; and the flatten before the head, whose gradient comes back in the default layout.
``to_layout`` converts the value there and every gradient through it the other way, to the layout each side runs
in.
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
    """``model`` with its convolution weights channels-last, and its strided convolutions of one input channel
    (whose weight is both layouts) returning channels-last activations, so the run of them starts there.

    Only strided ones: measured on one core of our CPU, the conversion after MAML's stride-2 first layer made the
    second-order meta-step of Omniglot 20-way 1-shot 1.13x as fast, but after the full-size output of ProtoNet's
    stride-1 one (60-way) it cost more than the mixed layouts it saves (0.83x), so that network's run starts at
    its second convolution, as oneDNN converts the input there."""
    model = model.to(memory_format=CHANNELS_LAST)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 1 and max(module.stride) > 1:
            module.register_forward_hook(_channels_last_output)
    return model


def _channels_last_output(module, inputs, output):
    """The output of a convolution of one input channel, channels-last, its gradient back in the default layout
    (the layout that convolution's own backward runs fastest in)."""
    return to_layout(output, CHANNELS_LAST, CONTIGUOUS) if output.dim() == 4 and not under_vmap() else output
