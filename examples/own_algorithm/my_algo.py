"""Cosine prototypes: Prototypical Networks with a scaled cosine similarity, an algorithm defined outside metarun.

Chen, Liu, Xu, Darrell & Wang (2021), "Meta-Baseline: Exploring Simple Meta-Learning for Few-Shot Learning",
ICCV (its meta-learning stage), after the cosine classifier with a learned scale of Gidaris & Komodakis (2018),
"Dynamic Few-Shot Visual Learning without Forgetting", CVPR.

Protocol: as in Prototypical Networks (Snell et al., 2017) a class prototype is the mean embedding of its
support examples (the backbone without its head), but a query's logit for a class is the cosine similarity of
their embeddings times a temperature tau, trained with cross-entropy on the query set. Cosine logits lie in
[-1, 1], too flat for a softmax, so tau scales them: meta-learned as the tensor ``meta/scale`` (initialised at
``scale``, 10 in Meta-Baseline) or held at ``scale`` with ``temperature=fixed``. Every function is pure and
handles one task; metarun maps it over the meta-batch.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metarun.algos import from_logits
from metarun.algos.base import Algorithm
from metarun.config import choice, positive
from metarun.config.algos import AlgorithmConfig

# meta-learned tensors that are not the network's start with "meta/"; they never reach forward
SCALE = "meta/scale"


@dataclass
class CosinePrototypesConfig(AlgorithmConfig):
    """The settings of ``algo=my_algo`` (``algo.*``), validated when a run starts."""

    _target_: str = "my_algo.ALGORITHM"  # this module's ALGORITHM, imported from the folder metarun starts in
    name: str = "my_algo"
    scale: float = positive(10.0, help="the temperature tau: its initial value when learned")
    temperature: str = choice("learned", "fixed", help="learned (the default): tau is meta-learned (meta/scale)")


def meta_params(model: torch.nn.Module, settings) -> dict:
    """The embedding network's parameters and, unless ``temperature=fixed``, the learned temperature."""
    params = dict(model.named_parameters())
    if settings.temperature == "learned":
        device = next(model.parameters()).device
        params[SCALE] = torch.nn.Parameter(torch.tensor(float(settings.scale), device=device))
    return params


def logits(forward, params, support_x, support_y, query_x, settings) -> torch.Tensor:
    """tau times the cosine similarity [Q, S] of each query embedding to each class prototype.

    Labels are 0..N-1; column c is class c, and columns past the last class present are -inf (the support size
    S bounds the number of classes and keeps shapes static under vmap).
    """
    network = {name: t for name, t in params.items() if not name.startswith("meta/")}
    support, query = forward(network, support_x), forward(network, query_x)
    onehot = (support_y.unsqueeze(1) == torch.arange(support_y.shape[0], device=support_y.device)).to(support.dtype)
    counts = onehot.sum(0)
    prototypes = onehot.T @ support / counts.clamp(min=1).unsqueeze(1)
    cosine = F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).T
    return torch.where(counts > 0, params.get(SCALE, settings.scale) * cosine, float("-inf"))


# the per-task functions (meta_loss: the objective's loss and metric of these logits on the query set; evaluate_task;
# predict) follow from the logits alone, as ProtoNet's do; an algorithm with inner steps or its own loss writes them
meta_loss, evaluate_task, predict = from_logits.per_task(logits)

# no head: the backbone is an embedding, so eval.ways may differ from dataset.ways
ALGORITHM = Algorithm(meta_loss, evaluate_task, predict, CosinePrototypesConfig, meta_params=meta_params,
                      has_head=False, objectives=("classification",))
