"""Relation Networks: Sung, Yang, Zhang, Xiang, Torr & Hospedales (2018), "Learning to Compare: Relation Network
for Few-Shot Learning", CVPR.

Protocol: the backbone without its classifier head (the embedding module f) embeds every image; a class's
representation is the element-wise sum of its support embeddings (section 3.2, K-shot), and a learned relation
module g scores each (class, query) pair on their concatenated embeddings, r = g([f(x_class), f(x_query)]) in
[0, 1] (eq. 1). ``loss=mse`` is the paper's objective (eq. 2): the squared error of the scores against one-hot
targets (1 for the query's class, 0 for the others), averaged over the query set and the episode's classes;
``loss=ce`` is cross-entropy with the relation module's pre-sigmoid outputs as logits (the same ranking: sigmoid is
monotonic). A query's prediction is the class of highest score. There is no inner loop and no head
(``has_head=False``), so the number of ways may differ between meta-training and meta-test.

Difference: the paper's relation module is two convolutional blocks on the concatenated feature maps followed by
FC(8) + ReLU + FC(1) + sigmoid; metarun's backbones output a flat embedding (``model.embedding_dim``), so here it is
the MLP Linear(2D -> ``hidden``) + ReLU + Linear(hidden -> 1) + sigmoid, meta-learned as ``meta/relation/*``. It
starts as a comparison of the two embeddings (see ``meta_params``), not at the reference code's N(0, 0.01) weights
and unit biases. The paper trains and tests with the same number of shots: a class's sum grows with K, so a module
trained on 1-shot sums does not transfer to 5-shot ones.
"""

import torch
import torch.nn.functional as F

from metarun.algos.base import Algorithm
from metarun.algos.classes import absent_at_minus_inf, support_onehot
from metarun.algos.embedding import embed_episode
from metarun.algos.inner_loop import Params
from metarun.algos.maml import META
from metarun.config.algos import RelationNetConfig

RELATION = f"{META}relation/"


def meta_params(model: torch.nn.Module, settings) -> Params:
    """The embedding network's parameters and the relation module, sized by ``model.embedding_dim`` on the model's
    device: ``meta/relation/hidden.*`` (2D -> ``hidden``) and ``meta/relation/out.*`` (hidden -> 1).

    Initialised to compare: hidden weights [V, -V] with V ~ N(0, 2 / D) (He's for the D-dim difference) and zero
    biases, negative output weights, so each hidden unit starts as ReLU(v . (f(x_class) - f(x_query))) and the score
    falls as the two embeddings differ. An MLP on a concatenation is additive in its halves wherever its ReLUs are
    all on or all off; torch's and the reference code's initialisations (N(0, 0.01) weights, unit biases) start it
    there, where the score cannot rank the classes differently for different queries, and in short runs the MSE
    then settles on the constant 1/N.
    """
    params = dict(model.named_parameters())
    like, dim = next(iter(params.values())), model.embedding_dim

    def draw(fill, *shape):
        return fill(shape, dtype=like.dtype, device=like.device)

    half = draw(torch.randn, settings.hidden, dim) * (2.0 / dim) ** 0.5
    relation = {"hidden.weight": torch.cat([half, -half], 1), "hidden.bias": draw(torch.zeros, settings.hidden),
                "out.weight": -draw(torch.rand, 1, settings.hidden) / settings.hidden ** 0.5,
                "out.bias": draw(torch.zeros, 1)}
    params.update({f"{RELATION}{name}": torch.nn.Parameter(t) for name, t in relation.items()})
    return params


def relation_logits(forward, params: Params, support_x, support_y, query_x, settings) -> torch.Tensor:
    """The relation module's pre-sigmoid outputs [Q, S] for each (query, class) pair.

    Labels are 0..N-1; column c is class c, and columns past the last class present are -inf (score 0 after the
    sigmoid, below any present class's; the support size S bounds the number of classes and keeps shapes static
    under vmap).
    """
    support, query = embed_episode(forward, params, support_x, query_x, settings.embedding_pass)
    onehot = support_onehot(support_y, support.dtype)
    classes = onehot.T @ support  # [S, D]: the sum of each class's support embeddings
    weight, dim = params[f"{RELATION}hidden.weight"], support.shape[-1]
    # the first layer on [class, query] is the sum of its two halves' products: Q + S rows, not Q x S pairs of 2D
    hidden = F.relu((classes @ weight[:, :dim].T).unsqueeze(0) + (query @ weight[:, dim:].T).unsqueeze(1)
                    + params[f"{RELATION}hidden.bias"])
    logits = (hidden @ params[f"{RELATION}out.weight"].T + params[f"{RELATION}out.bias"]).squeeze(-1)
    return absent_at_minus_inf(logits, onehot)


def loss_and_scores(forward, params: Params, support_x, support_y, query_x, query_y, settings, objective):
    """The query loss (``settings.loss``) and the relation scores [Q, S] in [0, 1]."""
    logits = relation_logits(forward, params, support_x, support_y, query_x, settings)
    scores = torch.sigmoid(logits)
    if settings.loss == "ce":
        return objective.loss(logits, query_y), scores
    targets = (query_y.unsqueeze(1) == torch.arange(logits.shape[1], device=query_y.device)).to(scores.dtype)
    # the mean over the query set and the episode's classes; absent classes' columns add 0 (score and target 0)
    return ((scores - targets) ** 2).sum() / torch.isfinite(logits).sum(), scores


def meta_loss(forward, params, support_x, support_y, query_x, query_y, settings, objective):
    """The query loss (MSE against one-hot targets, or cross-entropy) and metric of the highest relation score."""
    loss, scores = loss_and_scores(forward, params, support_x, support_y, query_x, query_y, settings, objective)
    return loss, objective.metric(scores, query_y)


def evaluate_task(forward, params, support_x, support_y, query_x, query_y, settings, objective):
    """Query metric of the highest relation score: [1] (no inner steps)."""
    logits = relation_logits(forward, params, support_x, support_y, query_x, settings)
    return objective.metric(logits, query_y).unsqueeze(0)


def predict(forward, params, support_x, support_y, query_x, settings, objective):
    """Relation scores [Q, S] in [0, 1] of each query to each class (absent classes 0)."""
    return torch.sigmoid(relation_logits(forward, params, support_x, support_y, query_x, settings))


ALGORITHM = Algorithm(meta_loss, evaluate_task, predict, RelationNetConfig, meta_params=meta_params, has_head=False,
                      same_shots=True, objectives=("classification",),
                      scores="predicts relation scores in [0, 1] (a sigmoid each)")
