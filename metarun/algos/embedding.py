"""How the algorithms that score a task on the backbone's embeddings (ProtoNet, Matching and Relation Networks,
R2-D2, MetaOptNet-SVM, Baseline at meta-test) embed an episode, ``algo.embedding_pass``:

* ``joint``: the support and query sets go through the backbone in one pass, concatenated along the example axis
  and split after, as Snell et al.'s ProtoNet code does: one larger batch, so half the kernel launches on a GPU.
  Under ``vmap`` each of the backbone's layers then runs once for the whole meta-batch's images.
* ``separate``: one pass each.

Only batch norm with batch statistics tells them apart (``model.norm=batch``, or ``running`` in training): a joint
pass normalises support and query with the statistics of both sets together. With running averages in eval mode,
or without batch norm, the two agree to float rounding.
"""

import torch

from metarun.algos.maml import META


def embed_episode(forward, params, support_x, query_x, embedding_pass: str) -> tuple:
    """The support and query embeddings ([S, D], [Q, D]) of the network's tensors in ``params`` (``meta/`` ones
    left out), in one ``forward`` call (``embedding_pass="joint"``) or one per set (``"separate"``)."""
    network = {name: t for name, t in params.items() if not name.startswith(META)}
    # a query set stacked in context for inductive evaluation ([Q, S + 1, *example], models.batchnorm.in_context)
    # keeps its own pass: each query is already embedded beside a copy of the support set, never beside another
    if embedding_pass == "separate" or query_x.dim() != support_x.dim():
        return forward(network, support_x), forward(network, query_x)
    both = forward(network, torch.cat([support_x, query_x]))
    return both[: len(support_x)], both[len(support_x):]
