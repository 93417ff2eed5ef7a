"""Closed-form least-squares fits of a batch's functions, to recover each task's parameters from its points."""

import torch


def points(batch):
    """A batch's support and query points together, in float64: x, y of shape [T, P, 1]."""
    return (torch.cat([batch.support_x, batch.query_x], 1).double(),
            torch.cat([batch.support_y, batch.query_y], 1).double())


def least_squares(basis: torch.Tensor, y: torch.Tensor) -> tuple:
    """Coefficients [..., B, 1] of ``y`` [..., P, 1] on ``basis`` [..., P, B] and each fit's largest residual."""
    coef = torch.linalg.lstsq(basis, y).solution
    return coef, (basis @ coef - y).abs().amax((-1, -2))


def line(x: torch.Tensor) -> torch.Tensor:
    """The basis [1, x]: coefficients (intercept, slope)."""
    return torch.cat([torch.ones_like(x), x], -1)


def sinusoid(x: torch.Tensor) -> torch.Tensor:
    """The basis [sin x, cos x]: A sin(x - phase) has coefficients (A cos(phase), -A sin(phase))."""
    return torch.cat([torch.sin(x), torch.cos(x)], -1)


def sinusoid_parameters(coef: torch.Tensor) -> tuple:
    """(amplitude, phase in (-pi, pi]) of each A sin(x - phase) fitted on ``sinusoid``."""
    a, b = coef[..., 0, 0], coef[..., 1, 0]
    return torch.hypot(a, b), torch.atan2(-b, a)
