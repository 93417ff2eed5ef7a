"""Convolution and training-mode batch norm whose second derivatives are cheap, for the MAML family on a CPU.

Second-order MAML differentiates each inner step's backward pass again. torch's double backward of a convolution
(``_convolution_double_backward``) computes the weight term as a convolution over batch-and-channel-transposed,
non-contiguous tensors, and the gradient of the inputs even where they are images that need none; its batch norm
double backward is some thirty separate tensor ops. Here each derivative is the matching fused kernel instead:

* a convolution's backward is ``aten.convolution_backward``; its derivative needs two forward convolutions (the
  gradient of the output gradient), a weight gradient (the weight's) and an input gradient (the input's, only where
  the input needs one), each one ``convolution``/``convolution_backward`` call;
* batch norm's backward is ``aten.native_batch_norm_backward``; its derivative is written out per channel (below),
  each output a per-channel combination of three tensors, with five reductions in all.

On channels-last activations (``hardware.channels_last``) these kernels run without the layout copies oneDNN makes
for NCHW tensors, which is where the speed comes from; torch's own channels-last batch-norm kernel sums each
channel's statistics in one naive pass (relative errors near 1e-5 that second-order steps amplify), so
``batch_norm`` computes them in two passes over the [pixels, channels] view. Both functions give torch's results
to float rounding (``tests/models/test_second_order.py``: ``gradgradcheck`` in float64, and the meta-gradient of
second-order MAML against float64).

Where they run (``applies``): in the forward passes of a second-order inner step (``differentiated_twice``, which
metarun/algos/inner_loop.py sets), on a CPU, outside vmap, on channels-last tensors; Conv-4's convolutions and
every batch norm call them there. Batch norm also sums its statistics here on the adapted weights of a query pass
(``adapted``). Everywhere else the layers compute exactly what torch's own kernels do.
"""

import contextvars
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from metarun.models.layout import is_channels_last
from metarun.models.transforms import under_vmap

aten = torch.ops.aten
CHANNEL = (1, -1, 1, 1)  # a per-channel vector broadcast over [B, C, H, W]
SPATIAL = (0, 2, 3)  # the dimensions batch norm reduces


# set by the inner loop around a forward pass whose backward is recorded to be differentiated again
_DIFFERENTIATED_TWICE = contextvars.ContextVar("metarun_differentiated_twice", default=False)


@contextmanager
def differentiated_twice():
    """Within the block, forward passes are differentiated twice (a second-order inner step): the layers run these
    functions where they ``apply``."""
    token = _DIFFERENTIATED_TWICE.set(True)
    try:
        yield
    finally:
        _DIFFERENTIATED_TWICE.reset(token)


def applies(laid_out: torch.Tensor) -> bool:
    """Whether a layer uses these functions: in a forward pass ``differentiated_twice``, on a CPU, in full precision
    (no autocast), outside vmap, with channels-last tensors (``laid_out``: a convolution's weight, batch norm's
    input). Only there were they measured faster (not yet timed on a GPU; in the default layout oneDNN's own copies
    remain, and under vmap the layers keep their batched paths), so elsewhere every run computes exactly what it did
    before."""
    return _DIFFERENTIATED_TWICE.get() and _full_precision_cpu(laid_out) and not under_vmap() and \
        is_channels_last(laid_out)


def adapted(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether batch norm of channels-last ``x`` on a CPU, in full precision, runs with a ``weight`` an inner loop
    adapted (a query pass of the MAML family; outside vmap, where the caller checks): the meta-gradient then
    differentiates through the inner loop what torch's kernel sums naively, so ``batch_norm`` sums the statistics
    instead (five second-order inner steps had amplified its errors to 1e-3 of the meta-gradient)."""
    return weight.grad_fn is not None and _full_precision_cpu(x) and is_channels_last(x)


def _full_precision_cpu(x: torch.Tensor) -> bool:
    """Whether ``x`` is on a CPU, outside autocast (bf16 runs keep torch's mixed-precision kernels)."""
    return x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias, stride: tuple, padding: tuple) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (dilation 1, one group) with a cheap second derivative."""
    return _Conv.apply(x, weight, bias, tuple(stride), tuple(padding))


def batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Batch norm with the batch's statistics (``F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)``) with a
    cheap second derivative."""
    return _BatchNorm.apply(x, weight, bias, eps)[0]


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (dilation 1, one group, zero padding) that runs ``conv2d`` where it ``applies``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if applies(self.weight):
            return conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


def _convolution_backward(grad_out, x, weight, stride, padding, mask):
    """(input, weight, bias) gradients of ``conv2d`` that ``mask`` asks for (None for the others)."""
    bias_sizes = [weight.shape[0]] if mask[2] else None
    return aten.convolution_backward(grad_out, x, weight, bias_sizes, list(stride), list(padding), [1, 1], False,
                                     [0, 0], 1, list(mask))


class _Conv(torch.autograd.Function):
    """``conv2d``; its backward is ``_ConvBackward``, so that differentiating the backward again stays cheap."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, stride, padding):
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.shape = (stride, padding, bias is not None)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, has_bias = ctx.shape
        need = (ctx.needs_input_grad[0], True, has_bias and ctx.needs_input_grad[2])
        # without a graph of the backward (the outer one), the kernel alone
        backward = _ConvBackward.apply if torch.is_grad_enabled() else _ConvBackward.forward
        dx, dweight, dbias = backward(grad_out, x, weight, stride, padding, need)
        return dx, dweight, dbias, None, None


class _ConvBackward(torch.autograd.Function):
    """The input, weight and bias gradients of a convolution (each None where ``need`` says so), as functions of
    its output gradient, input and weight. Their derivative, for incoming gradients (gx, gw, gb) of those three:
    of the output gradient, conv(gx, weight) + conv(x, gw) + gb; of the weight, the weight gradient of gx against
    the output gradient; of the input, the input gradient of the output gradient through gw."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, x, weight, stride, padding, need):
        return tuple(_convolution_backward(grad_out, x, weight, stride, padding, need))

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, x, weight, stride, padding, need = inputs
        ctx.save_for_backward(grad_out, x, weight)
        ctx.shape = (stride, padding)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gx, gw, gb):
        grad_out, x, weight = ctx.saved_tensors
        stride, padding = ctx.shape
        d_grad_out = d_x = d_weight = None
        if ctx.needs_input_grad[0]:
            terms = [term for term in (F.conv2d(gx, weight, None, stride, padding) if gx is not None else None,
                                       F.conv2d(x, gw, None, stride, padding) if gw is not None else None,
                                       gb.view(CHANNEL) if gb is not None else None) if term is not None]
            if terms:  # summed onto the first, not onto 0 (a pass over the whole tensor)
                d_grad_out = sum(terms[1:], terms[0]).expand_as(grad_out)
        if ctx.needs_input_grad[1] and gw is not None:
            d_x = _convolution_backward(grad_out, x, gw, stride, padding, (True, False, False))[0]
        if ctx.needs_input_grad[2] and gx is not None:
            d_weight = _convolution_backward(grad_out, gx, weight, stride, padding, (False, True, False))[1]
        return d_grad_out, d_x, d_weight, None, None, None


def _statistics(x: torch.Tensor) -> tuple:
    """Per-channel mean and biased variance of a channels-last ``x``, in two passes over its [pixels, channels]
    view (torch's kernel sums that layout in one naive pass). The centred values are squared in place: one
    temporary fewer, 1.15-1.6x as fast on one core for Conv-4's activations, the same sums."""
    pixels = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # a view of a channels-last tensor
    mean = pixels.sum(0) / pixels.shape[0]
    variance = (pixels - mean).square_().sum(0) / pixels.shape[0]
    return mean, variance


class _BatchNorm(torch.autograd.Function):
    """``batch_norm``: returns (output, mean, 1/std), the last two saved for the backward, ``_BatchNormBackward``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, eps):
        mean, variance = _statistics(x)  # then normalised by the eval-mode kernel, elementwise
        return aten.native_batch_norm(x, weight, bias, mean, variance, False, 0.0, eps)[0], mean, \
            (variance + eps).rsqrt()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, eps = inputs
        _, mean, inverse_std = output
        ctx.save_for_backward(x, weight, mean, inverse_std)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, inverse_std)

    @staticmethod
    def backward(ctx, grad_out, _mean, _inverse_std):
        x, weight, mean, inverse_std = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad[:3])
        backward = _BatchNormBackward.apply if torch.is_grad_enabled() else _BatchNormBackward.forward
        dx, dweight, dbias = backward(grad_out, x, weight, mean, inverse_std, ctx.eps, need)
        return dx, dweight, dbias, None


class _BatchNormBackward(torch.autograd.Function):
    """(dx, dweight, dbias) of training-mode batch norm as functions of the output gradient dy, x and the weight g.

    Per channel, over its M values, with xh = (x - mean) r and r = 1/std: dbias = sum(dy), dweight = sum(dy xh) and
    dx = g r (dy - A - xh B), where A = mean(dy) and B = mean(dy xh). For incoming gradients (gx, gg, gb) of the
    three, with P(v) = v - mean(v) - xh mean(v xh) (the derivative of xh is r P):
    of dy, g r P(gx) + gg xh + gb; of g, r (sum(gx dy) - A sum(gx) - B sum(gx xh));
    of x, -(g r^2 / M)(S - B Q) xh + (r / M)(M gg - g r Q) P(dy) - g r^2 B P(gx), with S = sum(gx dy) - A sum(gx) and
    Q = sum(gx xh)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, x, weight, mean, inverse_std, eps, need):
        return tuple(aten.native_batch_norm_backward(grad_out, x, weight, None, None, mean, inverse_std, True, eps,
                                                     list(need)))

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, x, weight, mean, inverse_std, eps, need = inputs
        ctx.save_for_backward(grad_out, x, weight, mean, inverse_std)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gx, gg, gb):
        grad_out, x, weight, mean, inverse_std = ctx.saved_tensors
        count = grad_out.numel() // grad_out.shape[1]
        r, g = inverse_std.view(CHANNEL), weight.view(CHANNEL)
        xh = (x - mean.view(CHANNEL)) * r
        mean_dy = grad_out.mean(SPATIAL, keepdim=True)
        mean_dy_xh = (grad_out * xh).mean(SPATIAL, keepdim=True)
        gg = gg.view(CHANNEL) if gg is not None else torch.zeros_like(r)
        terms = _gx_terms(gx, grad_out, xh, mean_dy) if gx is not None else None
        d_grad_out = d_x = d_weight = None
        if ctx.needs_input_grad[0]:
            d_grad_out = _grad_out_gradient(gx, xh, g, r, gg, gb, count, terms)
        if ctx.needs_input_grad[1]:
            d_x = _x_gradient(gx, grad_out, xh, g, r, gg, count, mean_dy, mean_dy_xh, terms)
        if ctx.needs_input_grad[2] and terms is not None:
            _, q, s = terms
            d_weight = (r * (s - mean_dy_xh * q)).view(-1)
        return d_grad_out, d_x, d_weight, None, None, None, None


def _gx_terms(gx, grad_out, xh, mean_dy) -> tuple:
    """Per channel: mean(gx), Q = sum(gx xh) and S = sum(gx dy) - mean(dy) sum(gx)."""
    count = gx.numel() // gx.shape[1]
    mean_gx = gx.mean(SPATIAL, keepdim=True)
    q = (gx * xh).sum(SPATIAL, keepdim=True)
    s = (gx * grad_out).sum(SPATIAL, keepdim=True) - mean_dy * mean_gx * count
    return mean_gx, q, s


def _combination(constant, *terms) -> torch.Tensor:
    """``constant + sum(tensor * coefficient)`` over the (tensor, per-channel coefficient) ``terms``: one pass over
    the activations per term (the formulas' projections expanded into per-channel coefficients, instead of a
    temporary per operation), in the first tensor's layout."""
    (first, coefficient), *rest = terms
    out = torch.addcmul(constant, first, coefficient)
    for tensor, coefficient in rest:
        out = out.addcmul_(tensor, coefficient)
    return out


def _grad_out_gradient(gx, xh, g, r, gg, gb, count, terms):
    """The derivative of batch norm's backward with respect to dy: g r P(gx) + gg xh + gb, as
    g r gx + (gg - g r Q / M) xh + (gb - g r mean(gx))."""
    constant = gb.view(CHANNEL) if gb is not None else torch.zeros_like(r)
    if terms is None:
        return _combination(constant, (xh, gg))
    mean_gx, q, _ = terms
    gain = g * r
    return _combination(constant - gain * mean_gx, (gx, gain), (xh, gg - gain * (q / count)))


def _x_gradient(gx, grad_out, xh, g, r, gg, count, mean_dy, mean_dy_xh, terms):
    """The derivative of batch norm's backward with respect to x (``_BatchNormBackward``'s formula), with P(dy) =
    dy - mean(dy) - xh B and P(gx) = gx - mean(gx) - xh Q / M expanded: a dy + b gx + c xh + d per channel."""
    if terms is None:  # only the weight gradient is differentiated: (r / M) M gg P(dy)
        on_dy = r * gg
        return _combination(-on_dy * mean_dy, (grad_out, on_dy), (xh, -on_dy * mean_dy_xh))
    mean_gx, q, s = terms
    on_xh = -(g * r * r / count) * (s - mean_dy_xh * q)
    on_dy = (r / count) * (count * gg - g * r * q)
    on_gx = -g * r * r * mean_dy_xh
    constant = -(on_dy * mean_dy + on_gx * mean_gx)
    on_xh = on_xh - on_dy * mean_dy_xh - on_gx * (q / count)  # with P(dy)'s and P(gx)'s xh terms
    return _combination(constant, (grad_out, on_dy), (gx, on_gx), (xh, on_xh))
