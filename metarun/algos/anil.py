"""ANIL: Raghu, Raghu, Bengio & Vinyals (2020), "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR (arXiv:1909.09157, 2019).

Protocol: MAML with the inner loop restricted to the head (Almost No Inner Loop): the support-set steps
update only the parameters whose names start with ``head`` (null: the last layer's, e.g. ``17.`` for Conv-4
and the final ``nn.Linear`` of every metarun backbone); the body is shared across tasks and meta-learned
through the head's adaptation (second order unless ``first_order``).
"""

from metarun.algos import maml
from metarun.algos.base import Algorithm
from metarun.config.algos import ANILConfig


def head_prefix(params, settings) -> str:
    """The parameter-name prefix of the head: ``settings.head`` or the last model parameter's layer."""
    return settings.head or maml.head_prefix(params)


def _head(params, settings):
    prefix = head_prefix(params, settings)
    if not any(name.startswith(prefix) for name in params):
        raise ValueError(f"algo.head={prefix} matches no parameter; set it to the head layer's name prefix, e.g. 17.")
    return lambda name: name.startswith(prefix)


def meta_loss(forward, params, support_x, support_y, query_x, query_y, settings, objective):
    """Query loss and metric of one task after inner steps on the head only."""
    return maml.meta_loss(forward, params, support_x, support_y, query_x, query_y, settings, objective,
                          _head(params, settings))


def evaluate_task(forward, params, support_x, support_y, query_x, query_y, settings, objective):
    """Query metric after 0 .. ``test_inner_steps`` head-only inner steps: [steps + 1]."""
    return maml.evaluate_task(forward, params, support_x, support_y, query_x, query_y, settings, objective,
                              _head(params, settings))


def predict(forward, params, support_x, support_y, query_x, settings, objective):
    """Query predictions after ``test_inner_steps`` head-only inner steps."""
    return maml.predict(forward, params, support_x, support_y, query_x, settings, objective, _head(params, settings))


ALGORITHM = Algorithm(meta_loss, evaluate_task, predict, ANILConfig, check=maml.check, runs_in=maml.runs_in, pads=True)
