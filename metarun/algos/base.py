"""The algorithm interface: what every algorithm provides, and the defaults of what is optional.

An algorithm is an ``Algorithm`` record of pure per-task functions over a parameter dict; ``metarun.mapping.task_parallel``
maps them over the meta-batch (a loop, threads or ``vmap``, set by ``hardware.task_parallel``). A config names its
algorithm by import path (``algo._target_: metarun.algos.maml.ALGORITHM``, or ``my_module.ALGORITHM`` for your
own), and generic code only ever calls these fields: it never asks an algorithm what it is.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from metarun.mapping.task_parallel import MAPPINGS

OBJECTIVES = ("classification", "regression")


def model_parameters(model: torch.nn.Module, settings) -> dict:
    """The meta-learned tensors of most algorithms: the model's own parameters."""
    return dict(model.named_parameters())


def same_settings(settings, iteration: int, clock=None):
    """Settings that do not change over training."""
    return settings


def no_check(run_cfg) -> None:
    """An algorithm without settings that depend on the rest of the run."""


def every_mapping(settings) -> Tuple[str, ...]:
    """Per-task functions that run in every mapping."""
    return MAPPINGS


@dataclass(frozen=True)
class Algorithm:
    """One meta-learning algorithm.

    Required (``settings`` is an instance of the algorithm's ``schema`` dataclass; ``objective`` a
    ``metarun.algos.objectives.Objective``; ``forward(params, x)`` the network):
        meta_loss(forward, params, sx, sy, qx, qy, settings, objective) -> (loss, metric): one task's outer loss
        evaluate_task(forward, params, sx, sy, qx, qy, settings, objective) -> [steps + 1]: query metric after 0..
            steps
        predict(forward, params, sx, sy, qx, settings, objective) -> [Q, out]: query outputs after adapting
        schema: the settings' dataclass (``algo.*``, with a ``name``: results and run names show it), validated
            at start-up.
    Optional:
        meta_params(model, settings) -> dict: the meta-learned tensors. Extra tensors (learned learning rates,
            per-step batch norm) use names starting ``meta/``, which never reach ``forward``.
        at_iteration(settings, iteration, clock=None) -> settings: the settings of one outer iteration (annealed
            quantities). With ``clock`` (the iteration as a 0-d tensor on the device), annealed numbers are tensors
            computed from it, so a captured iteration (``hardware.cuda_graphs``) replays them; what changes the
            computation's shape (a derivative order) still comes from ``iteration``.
        check(run_cfg): raise ValueError for settings that clash with the rest of the run.
        runs_in(settings) -> tuple: the ``hardware.task_parallel`` mappings its functions run in.
        has_head: False: the backbone runs without its final layer (an embedding, e.g. ProtoNet), so the
            number of ways may differ between meta-training and meta-test.
        class_labels: True: one classifier over every meta-train class (Baseline): training examples are labelled
            with their class's index in the train split, the head has one output per class, and the number of
            ways at meta-test is free (``evaluate_task`` fits a head of its own).
        same_shots: True: a class's summary grows with its number of support shots (Relation Networks sum the
            embeddings), so meta-test shots should be meta-training's; ``load_learner`` warns otherwise.
        objectives: the dataset objectives it supports.
        pads: True: its functions give a padded task (examples labelled ``PAD``, see ``metarun.mapping.ragged``) the
            results of the unpadded task, so ragged batches of variable episodes run under vmap too.
        scores: what ``predict`` gives where it is not logits whose softmax is the class probabilities (Relation
            Networks' sigmoid scores), said where probabilities are needed (``eval.ensemble``); None: logits.
    The outer update is the training loop's optimiser step on the mean ``loss``; Reptile gets its
    interpolation through a surrogate loss (see ``metarun.algos.reptile``).
    """

    meta_loss: Callable
    evaluate_task: Callable
    predict: Callable
    schema: type
    meta_params: Callable = model_parameters
    at_iteration: Callable = same_settings
    check: Callable = no_check
    runs_in: Callable = every_mapping
    has_head: bool = True
    class_labels: bool = False
    same_shots: bool = False
    objectives: Tuple[str, ...] = OBJECTIVES
    pads: bool = False
    scores: Optional[str] = None

    @property
    def fixed_ways(self) -> bool:
        """Whether meta-test tasks must have meta-training's number of ways (a head of that many outputs)."""
        return self.has_head and not self.class_labels
