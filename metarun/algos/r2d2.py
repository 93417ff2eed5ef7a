"""R2-D2: Bertinetto, Henriques, Torr & Vedaldi (2019), "Meta-learning with differentiable closed-form solvers", ICLR
(the same head as MetaOptNet-RR: Lee, Maji, Ravichandran & Soatto (2019), "Meta-Learning with Differentiable Convex
Optimization", CVPR, section 3.3).

Protocol: the backbone without its head embeds every image (``has_head=False``, so the number of ways may differ
between meta-training and meta-test); per task, ridge regression from the support embeddings X (with a constant 1
appended, the regression's bias) onto the one-hot labels Y, minimising the mean squared error over the S support
examples plus lambda ||W||^2, in closed form through the Woodbury identity, W = X^T (X X^T + S lambda I)^-1 Y: an
S x S solve (the reference code's scaling of X and Y by 1/sqrt(S), so lambda means the same at every support size).
The query logits are alpha * X_q W, alpha a meta-learned scale (``meta/scale``: regression outputs are too flat for a
softmax), trained with cross-entropy on the query set; lambda is meta-learned too (``meta/log_lambda``, so it stays
positive) unless ``learn_lambda=false``. The paper's adjustment also adds a learned offset beta to every logit; a
common offset leaves the softmax, its loss and its argmax unchanged (beta's gradient is zero), so it is left out.
The meta-gradient flows through the solve (``torch.linalg.solve_ex``, which also runs under vmap).
"""

import math

import torch

from metarun.algos import from_logits
from metarun.algos.base import Algorithm
from metarun.algos.classes import absent_at_minus_inf, support_onehot
from metarun.algos.embedding import embed_episode
from metarun.algos.maml import META
from metarun.config.algos import R2D2Config

SCALE, LOG_LAMBDA = f"{META}scale", f"{META}log_lambda"


def learned_scalar(model: torch.nn.Module, value: float) -> torch.nn.Parameter:
    """A meta-learned scalar starting at ``value``, on the model's device."""
    return torch.nn.Parameter(torch.tensor(float(value), device=next(model.parameters()).device))


def meta_params(model: torch.nn.Module, settings) -> dict:
    """The embedding network's parameters, the logit scale and, when learned, lambda's logarithm."""
    params = {**dict(model.named_parameters()), SCALE: learned_scalar(model, settings.scale)}
    if settings.learn_lambda:
        params[LOG_LAMBDA] = learned_scalar(model, math.log(settings.ridge_lambda))
    return params


def embed(forward, params, support_x, support_y, query_x, settings):
    """The support and query embeddings and the support set's one-hot labels [S, S], in float32 or wider.

    The solvers need full precision (``hardware.precision`` may embed in bf16 or fp16; their kernels run outside
    autocast, see ``full_precision``). Labels are 0..N-1; the support size S bounds the number of classes and keeps
    shapes static under vmap, so columns N..S-1 of the labels are zero.
    """
    support, query = embed_episode(forward, params, support_x, query_x, settings.embedding_pass)
    dtype = torch.promote_types(support.dtype, torch.float32)
    onehot = support_onehot(support_y, dtype)
    return support.to(dtype), query.to(dtype), onehot


def full_precision(device: torch.device):
    """A context without autocast: the solvers' matrix products and solves in the embeddings' own precision."""
    return torch.autocast(device.type, enabled=False)


def logits(forward, params, support_x, support_y, query_x, settings) -> torch.Tensor:
    """alpha * X_q W [Q, S] for the query set, W the ridge regression fitted on the support set."""
    support, query, onehot = embed(forward, params, support_x, support_y, query_x, settings)
    ridge = params[LOG_LAMBDA].exp() if LOG_LAMBDA in params else settings.ridge_lambda
    eye = torch.eye(len(onehot), dtype=onehot.dtype, device=onehot.device)
    with full_precision(support.device):
        # the bias column: a constant 1 appended to every embedding adds 1 to every inner product
        # solve_ex: solve's check of the factorisation reads it back from a GPU (a host sync, which a CUDA graph cannot
        # capture); the matrix is positive definite for any ridge > 0
        dual = torch.linalg.solve_ex(support @ support.T + 1 + len(onehot) * ridge * eye, onehot)[0]  # W = X^T dual
        return absent_at_minus_inf(params[SCALE] * ((query @ support.T + 1) @ dual), onehot)


meta_loss, evaluate_task, predict = from_logits.per_task(logits)

ALGORITHM = Algorithm(meta_loss, evaluate_task, predict, R2D2Config, meta_params=meta_params, has_head=False,
                      objectives=("classification",))
