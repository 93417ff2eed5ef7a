"""The plain PyTorch loops of the algorithms without an inner loop, each scoring an episode's queries on the
backbone's embeddings (ProtoNet as the paper's code, jakesnell/prototypical-networks; Matching Networks, Relation
Networks, R2-D2) or classifying its images over every meta-train class (Baseline and Baseline++'s pre-training, one
batch of an episode's images). An episode is embedded as the algorithm's composed config has metarun do it
(``setting["embedding_pass"]``, its ``algo.embedding_pass``), so that both do the same work: support and query in
one forward (``joint``, as the reference codes of ProtoNet, R2-D2 and Matching Networks do) or one each
(``separate``, as Relation Networks' does). Each returns the ``backward()`` of one meta-step on the peer network it
is given and the tensors it meta-learns beside that network's weights, in the order of metarun's ``meta/``
tensors."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.tasks import TaskBatch

from .networks import embedding_dim


def embeddings(model: nn.Module, support_x, query_x, embedding_pass) -> tuple:
    """The support and query embeddings: from one forward of both sets together for ``joint`` (batch norm normalises
    both at once), else one forward each."""
    if embedding_pass != "joint":
        return model(support_x), model(query_x)
    both = model(torch.cat([support_x, query_x]))
    return both[: len(support_x)], both[len(support_x):]


def protonet(setting: dict, model: nn.Module, batch: TaskBatch):
    """ProtoNet's episode as the paper's code runs it: prototypes the mean support embedding per class, logits the
    negative squared Euclidean distances, ``backward()`` per episode."""
    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            support, query = embeddings(model, sx, qx, setting["embedding_pass"])
            prototypes = support.view(setting["ways"], setting["shots"], -1).mean(1)
            distances = (query.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(2)
            (F.cross_entropy(-distances, qy) / batch.num_tasks).backward()

    return backward, []


def matchingnet(setting: dict, model: nn.Module, batch: TaskBatch):
    """Matching Networks (without full context embeddings) as a loop over episodes: each query's attention the
    softmax of its cosine similarities to the support examples, summed per class, the negative log-likelihood of the
    query labels, ``backward()`` per episode."""
    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            support, query = (F.normalize(e, dim=-1) for e in embeddings(model, sx, qx, setting["embedding_pass"]))
            attention = torch.softmax(query @ support.T, -1)
            probabilities = attention @ F.one_hot(sy, setting["ways"]).to(attention.dtype)
            (F.nll_loss(probabilities.log(), qy) / batch.num_tasks).backward()

    return backward, []


def relationnet(setting: dict, model: nn.Module, batch: TaskBatch):
    """Relation Networks as a loop over episodes: a class the sum of its support embeddings, a relation module
    (``nn.Sequential`` of Linear, ReLU, Linear with torch's initialisation, then a sigmoid) on every concatenated
    (class, query) pair, the squared error against one-hot targets, ``backward()`` per episode; the relation module
    is meta-learned too."""
    dim = embedding_dim(model, setting["shape"])
    relation = nn.Sequential(nn.Linear(2 * dim, setting["hidden"]), nn.ReLU(), nn.Linear(setting["hidden"], 1))
    relation = relation.to(next(model.parameters()).device)

    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            support, query = embeddings(model, sx, qx, setting["embedding_pass"])
            classes = F.one_hot(sy, setting["ways"]).to(support.dtype).T @ support
            pairs = torch.cat([classes.expand(len(query), -1, -1), query.unsqueeze(1).expand(-1, len(classes), -1)], -1)
            scores = torch.sigmoid(relation(pairs).squeeze(-1))
            loss = F.mse_loss(scores, F.one_hot(qy, setting["ways"]).to(scores.dtype))
            (loss / batch.num_tasks).backward()

    return backward, list(relation.parameters())


def r2d2(setting: dict, model: nn.Module, batch: TaskBatch):
    """R2-D2 as a loop over episodes (bertinetto/r2d2's ridge regression): a constant 1 appended to every embedding
    (the bias), W = X^T (X X^T + S lambda I)^-1 Y solved in closed form, logits alpha X_q W, alpha and log lambda
    meta-learned, cross-entropy, ``backward()`` per episode."""
    device = next(model.parameters()).device
    scale = nn.Parameter(torch.tensor(float(setting["scale"]), device=device))
    log_lambda = nn.Parameter(torch.tensor(math.log(setting["ridge_lambda"]), device=device))

    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            pair = embeddings(model, sx, qx, setting["embedding_pass"])
            support, query = (F.pad(e, (0, 1), value=1.0) for e in pair)
            eye = torch.eye(len(support), dtype=support.dtype, device=device)
            targets = F.one_hot(sy, setting["ways"]).to(support.dtype)
            ridge = support.T @ torch.linalg.solve(support @ support.T + len(support) * log_lambda.exp() * eye, targets)
            (F.cross_entropy(scale * query @ ridge, qy) / batch.num_tasks).backward()

    return backward, [scale, log_lambda]


def baseline(setting: dict, model: nn.Module, batch: TaskBatch, cosine: bool = False):
    """Baseline's pre-training as an ordinary classification step: an episode's support and query images as one
    batch, cross-entropy over every meta-train class, ``backward()`` per batch. Baseline++ (``cosine``): the logits
    are ``scale`` times the cosine similarity of the embedding (the network up to its head) to each class's weight
    vector (the head's rows)."""
    def logits(x):
        if not cosine:
            return model(x)
        embedded = F.normalize(model[:-1](x), dim=-1)
        return setting["scale"] * embedded @ F.normalize(model[-1].weight, dim=-1).T

    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            (F.cross_entropy(logits(torch.cat([sx, qx])), torch.cat([sy, qy])) / batch.num_tasks).backward()

    return backward, []
