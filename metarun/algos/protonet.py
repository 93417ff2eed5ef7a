"""Prototypical Networks: Snell, Swersky & Zemel (2017), "Prototypical Networks for Few-shot Learning", NeurIPS.

Protocol: the backbone without its classifier head embeds every image; a class prototype is the mean
embedding of its support examples, and the logits of a query are the negative squared Euclidean distances
to the prototypes, trained with cross-entropy on the query set. There is no inner loop, so the model has no
head (``has_head=False``) and the number of ways may differ between meta-training and meta-test: the paper
trains Omniglot with 60 ways (``dataset.ways=60``) and tests with 5 or 20 (``eval.ways``).
"""

import torch

from metarun.algos import from_logits
from metarun.algos.base import Algorithm
from metarun.algos.classes import absent_at_minus_inf, support_onehot
from metarun.algos.embedding import embed_episode
from metarun.config.algos import ProtoNetConfig


def logits(forward, params, support_x, support_y, query_x, settings) -> torch.Tensor:
    """Negative squared distances [Q, S] from each query embedding to each class prototype.

    Labels are 0..N-1; column c is class c, and columns past the last class present are -inf (the support
    size S bounds the number of classes and keeps shapes static under vmap).
    """
    support, query = embed_episode(forward, params, support_x, query_x, settings.embedding_pass)
    return embedding_logits(support, support_y, query)


def embedding_logits(support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``logits`` of the support and query embeddings [S, D] and [Q, D] (an algorithm that embeds them itself)."""
    onehot = support_onehot(support_y, support.dtype)
    prototypes = onehot.T @ support / onehot.sum(0).clamp(min=1).unsqueeze(1)
    distances = ((query.unsqueeze(1) - prototypes.unsqueeze(0)) ** 2).sum(-1)
    return absent_at_minus_inf(-distances, onehot)


meta_loss, evaluate_task, predict = from_logits.per_task(logits)

ALGORITHM = Algorithm(meta_loss, evaluate_task, predict, ProtoNetConfig, has_head=False, pads=True,
                      objectives=("classification",))
