"""A task's classes as the metric and closed-form algorithms see them (ProtoNet, Matching and Relation Networks,
R2-D2, MetaOptNet-SVM, Baseline's fitted head): labels are 0..N-1, and the support size S bounds the number of
classes, so every shape stays static under vmap whatever N is."""

import torch


def support_onehot(support_y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[S, S] one-hot of the support labels: row i is example i, column c class c (columns N..S-1 all zero)."""
    return (support_y.unsqueeze(1) == torch.arange(support_y.shape[0], device=support_y.device)).to(dtype)


def absent_at_minus_inf(scores: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """``scores`` [Q, S] with the columns of the classes absent from the support set (``onehot``) at -inf."""
    return torch.where(onehot.sum(0) > 0, scores, float("-inf"))
