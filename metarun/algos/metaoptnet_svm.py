"""MetaOptNet-SVM: Lee, Maji, Ravichandran & Soatto (2019), "Meta-Learning with Differentiable Convex Optimization",
CVPR.

Protocol: the backbone without its head embeds every image (``has_head=False``); per task, a Crammer & Singer
multi-class linear SVM is fitted on the support embeddings x_n through its dual (the paper's equation 10): one
vector alpha_n per support example, maximising -1/2 sum_k ||w_k||^2 + sum_n alpha_n[y_n] with w_k = sum_n
alpha_n[k] x_n, subject to alpha_n <= C onehot(y_n) elementwise and sum_k alpha_n[k] = 0. A query's logit for class
k is scale * w_k . x_q = scale * sum_n alpha_n[k] (x_n . x_q), ``scale`` meta-learned (``meta/scale``, equation 12),
trained with cross-entropy on the query set.

The paper solves the dual with qpth's interior-point method (3 iterations in the paper; its code runs 15 in
training and 3 at test) and differentiates its KKT conditions. Here, with torch alone and static shapes (vmap), the
dual is solved by ``svm_iterations`` steps of accelerated projected gradient (FISTA, Beck & Teboulle, 2009, with
O'Donoghue & Candes' (2015) adaptive restart) from alpha = 0, unrolled, so autograd differentiates the computed
solution exactly (and, once it has converged, the SVM's own solution). Each row's feasible set is C onehot(y_n)
minus the simplex of mass C over the classes present, so the projection is a sorted simplex projection (Duchi et
al., 2008). The step is 1 / ||K||_F (the Frobenius norm bounds the Gram matrix K's largest eigenvalue, the
gradient's Lipschitz constant). Like the paper's early-stopped solver, 50 iterations do not always converge: on
random embeddings w came within about 1e-8 (relative) of the optimum on 5-way 1-shot tasks, 1e-3 on 20-way 1-shot
and 1e-2 on 5-way 5-shot ones. More iterations cost time and memory (a few S x S tensors each). Not used: the
reference code's identity added to the QP's quadratic term ("helps avoid PSD error" of qpth), which changes the
problem; first-order steps need no such help.
"""

import torch

from metarun.algos import from_logits, r2d2
from metarun.algos.base import Algorithm
from metarun.algos.classes import absent_at_minus_inf
from metarun.config.algos import MetaOptNetSVMConfig


def meta_params(model: torch.nn.Module, settings) -> dict:
    """The embedding network's parameters and the logit scale."""
    return {**dict(model.named_parameters()), r2d2.SCALE: r2d2.learned_scalar(model, settings.scale)}


def project(alpha: torch.Tensor, onehot: torch.Tensor, present: torch.Tensor, c: float) -> torch.Tensor:
    """Each row of ``alpha`` [S, S] projected onto {a <= c onehot, sum(a) = 0, a = 0 on the classes not ``present``}.

    With b = c onehot - a the set is the simplex {b >= 0, sum(b) = c} over the classes present, so b = max(u - tau, 0)
    with u = c onehot - alpha and tau the largest (sum of the k largest u - c) / k over k (Duchi et al., 2008;
    Condat, 2016). Absent classes enter at -inf: never among the largest, and their b, and alpha, come out 0.
    """
    u = torch.where(present, c * onehot - alpha, float("-inf"))
    largest = u.sort(-1, descending=True).values
    count = torch.arange(1, u.shape[-1] + 1, dtype=u.dtype, device=u.device)
    tau = ((largest.cumsum(-1) - c) / count).max(-1, keepdim=True).values
    return c * onehot - (u - tau).clamp(min=0)


def dual(gram: torch.Tensor, onehot: torch.Tensor, c: float, iterations: int) -> torch.Tensor:
    """The SVM's dual variables alpha [S, S] after ``iterations`` FISTA steps on min 1/2 tr(a^T K a) - <a, Y>."""
    step = 1 / torch.linalg.matrix_norm(gram).clamp(min=torch.finfo(gram.dtype).eps)
    present = onehot.sum(0) > 0
    alpha = lookahead = torch.zeros_like(onehot)
    momentum = torch.ones((), dtype=gram.dtype, device=gram.device)
    for _ in range(iterations):
        nxt = project(lookahead - step * (gram @ lookahead - onehot), onehot, present, c)
        # adaptive restart: momentum that points against the projected gradient step starts over
        momentum = torch.where(((lookahead - nxt) * (nxt - alpha)).sum() > 0, 1.0, momentum)
        following = (1 + (1 + 4 * momentum ** 2).sqrt()) / 2
        lookahead = nxt + (momentum - 1) / following * (nxt - alpha)
        alpha, momentum = nxt, following
    return alpha


def logits(forward, params, support_x, support_y, query_x, settings) -> torch.Tensor:
    """scale * w_k . x_q [Q, S] for the query set, w the SVM fitted on the support set."""
    support, query, onehot = r2d2.embed(forward, params, support_x, support_y, query_x, settings)
    with r2d2.full_precision(support.device):
        alpha = dual(support @ support.T, onehot, settings.c, settings.svm_iterations)
        return absent_at_minus_inf(params[r2d2.SCALE] * ((query @ support.T) @ alpha), onehot)


meta_loss, evaluate_task, predict = from_logits.per_task(logits)

ALGORITHM = Algorithm(meta_loss, evaluate_task, predict, MetaOptNetSVMConfig, meta_params=meta_params, has_head=False,
                      objectives=("classification",))
