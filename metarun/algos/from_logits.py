"""The per-task functions of an algorithm without inner steps whose query scores are logits fitted on the support set.

ProtoNet, Matching Networks, R2-D2 and MetaOptNet-SVM differ only in their ``logits(forward, params, support_x,
support_y, query_x, settings) -> [Q, N]`` (log-probabilities are logits too: cross-entropy on them is their NLL);
``per_task`` turns one into the ``meta_loss``, ``evaluate_task`` and ``predict`` of an ``Algorithm``.
"""

from functools import partial


def meta_loss(forward, params, support_x, support_y, query_x, query_y, settings, objective, logits):
    """The objective's loss and metric of the ``logits`` of the query set."""
    scores = logits(forward, params, support_x, support_y, query_x, settings)
    return objective.loss(scores, query_y), objective.metric(scores, query_y)


def evaluate_task(forward, params, support_x, support_y, query_x, query_y, settings, objective, logits):
    """Query metric of the ``logits``: [1] (no inner steps)."""
    return objective.metric(logits(forward, params, support_x, support_y, query_x, settings), query_y).unsqueeze(0)


def predict(forward, params, support_x, support_y, query_x, settings, objective, logits):
    """The ``logits`` of the query set."""
    return logits(forward, params, support_x, support_y, query_x, settings)


def per_task(logits) -> tuple:
    """(meta_loss, evaluate_task, predict) of the algorithm whose query scores are ``logits``."""
    return partial(meta_loss, logits=logits), partial(evaluate_task, logits=logits), partial(predict, logits=logits)
