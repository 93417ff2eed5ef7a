"""Baseline and Baseline++: Chen, Liu, Kira, Wang & Huang (2019), "A Closer Look at Few-shot Classification", ICLR.

Protocol: pre-training is ordinary classification over every meta-train class, one head with an output per class
(``class_labels``: the sampler labels each image with its class's index in the train split; a training batch is
the meta-batch's episodes, a class-balanced draw of ways × (shots + queries) images, where Chen et al. draw 16
images at random). At meta-test the backbone is frozen and a new head is fitted on the support embeddings alone
with ``fit_steps`` SGD steps (momentum 0.9, weight decay), then scores the queries: the paper's "is
meta-learning needed" row. ``classifier``:
    linear (Baseline): logits W·f(x) + b.
    cosine (Baseline++): logits ``scale`` · cos(f(x), w_c), each class a weight vector compared by angle, which
        the paper finds reduces intra-class variation.
Differences from the paper: the new head is fitted on the whole support set at once (Chen et al. use batches of
4) and starts from zero (linear) or from the class means of the support embeddings (cosine), instead of a random
draw, so that scoring an episode stays a pure function of it.
"""

from functools import partial

import torch
import torch.nn.functional as F

from metarun.algos.base import Algorithm
from metarun.algos.classes import absent_at_minus_inf, support_onehot
from metarun.algos.embedding import embed_episode
from metarun.algos.inner_loop import gradients
from metarun.algos.maml import META
from metarun.config.algos import BaselineConfig

MOMENTUM = 0.9


def head_names(params) -> tuple:
    """The head's (weight, bias) names: the model's last layer, a linear one (see ``metarun.models``)."""
    last = [name for name in params if not name.startswith(META)][-1].rsplit(".", 1)[0]
    return f"{last}.weight", f"{last}.bias"


def embed(forward, params, x) -> torch.Tensor:
    """The backbone's embedding [B, D]: the network with its head swapped for the identity (``forward`` takes any
    tensors in place of the parameters), so the pre-trained head's weights stay the class vectors."""
    weight, bias = head_names(params)
    dim = params[weight].shape[1]
    identity = torch.eye(dim, dtype=params[weight].dtype, device=params[weight].device)
    return forward({**params, weight: identity, bias: torch.zeros_like(identity[0])}, x)


def cosine_logits(embeddings, weights, scale: float) -> torch.Tensor:
    """``scale`` times the cosine similarity [B, C] of each embedding to each class's weight vector."""
    return scale * F.normalize(embeddings, dim=-1) @ F.normalize(weights, dim=-1).T


def classify(forward, params, x, settings) -> torch.Tensor:
    """Logits over every meta-train class with the pre-training head."""
    if settings.classifier == "linear":
        return forward(params, x)
    return cosine_logits(embed(forward, params, x), params[head_names(params)[0]], settings.scale)


def meta_loss(forward, params, support_x, support_y, query_x, query_y, settings, objective):
    """Pre-training: cross-entropy and accuracy over every meta-train class on the episode's images (support and
    query alike; the labels are class indices in the train split)."""
    x, y = torch.cat([support_x, query_x]), torch.cat([support_y, query_y])
    logits = classify(forward, params, x, settings)
    return objective.loss(logits, y), objective.metric(logits, y)


def head_logits(head: dict, embeddings, settings) -> torch.Tensor:
    """The new head's logits for ``embeddings``."""
    if settings.classifier == "linear":
        return embeddings @ head["weight"].T + head["bias"]
    return cosine_logits(embeddings, head["weight"], settings.scale)


def fitted_head(support, support_y, settings, objective) -> dict:
    """A new head (one row per possible class, S of them) fitted on the frozen support embeddings [S, D]."""
    onehot = support_onehot(support_y, support.dtype)
    start = onehot.T @ support / onehot.sum(0).clamp(min=1).unsqueeze(1) if settings.classifier == "cosine" \
        else torch.zeros(support.shape[0], support.shape[1], dtype=support.dtype, device=support.device)
    head = {"weight": start, "bias": torch.zeros_like(start[:, 0])}
    velocity = {name: torch.zeros_like(value) for name, value in head.items()}
    for _ in range(settings.fit_steps):
        grads = gradients(lambda h: objective.loss(head_logits(h, support, settings), support_y), head, support,
                          first_order=True)
        for name in head:
            velocity[name] = MOMENTUM * velocity[name] + grads[name] + settings.fit_weight_decay * head[name]
            head[name] = head[name] - settings.fit_lr * velocity[name]
    return head


def predict(forward, params, support_x, support_y, query_x, settings, objective):
    """Query logits [Q, S] of a head fitted on the support set; columns past the last class present are -inf."""
    support, query = embed_episode(partial(embed, forward), params, support_x, query_x, settings.embedding_pass)
    support, query = support.detach(), query.detach()
    head = fitted_head(support, support_y, settings, objective)
    return absent_at_minus_inf(head_logits(head, query, settings), support_onehot(support_y, support.dtype))


def evaluate_task(forward, params, support_x, support_y, query_x, query_y, settings, objective):
    """Query metric of the head fitted on the support set: [1] (the backbone is not adapted)."""
    predictions = predict(forward, params, support_x, support_y, query_x, settings, objective)
    return objective.metric(predictions, query_y).unsqueeze(0)


ALGORITHM = Algorithm(meta_loss, evaluate_task, predict, BaselineConfig, class_labels=True,
                      objectives=("classification",))
