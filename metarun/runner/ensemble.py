"""An ensemble of checkpoints scored as one classifier: ``metarun mode=eval checkpoint=A eval.ensemble=[B,C]``.

Every member predicts the queries of the same fixed episodes, and the ensemble's prediction is the mean of the
members' class probabilities, as Dvornik, Schmid & Mairal (2019, "Diversity with Cooperation: Ensemble Methods for
Few-Shot Classification") average independently trained networks. Members may differ in algorithm and network
(a ProtoNet with a MAML, a Conv-4 with a ResNet-12); they must have been trained on the same inputs: images of the
same shape and normalisation, and the same classes where a network has a head.
"""

import glob
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from metarun.models.network import build_network, functional_forward
from metarun.runner.checkpoint import load_checkpoint, restore_buffers
from metarun.runner.components import Components, algorithm_of

# what a checkpoint's ``data`` says of its inputs, which every member must share with the evaluated checkpoint (the
# classes a head has are checked by its tensors' shapes)
SAME_INPUTS = ("input_shape", "objective", "normalisation", "inverted")


def member_paths(entries, checkpoint: str) -> list:
    """``eval.ensemble``'s ``entries`` as files: one with ``*`` or ``?`` stands for the files it matches, sorted, less
    ``checkpoint`` itself (``eval.ensemble=[outputs/challenge/*/checkpoints/best.pt]`` for a sweep's runs).

    Raises:
        ValueError: a pattern that matches no file other than ``checkpoint``.
    """
    paths = []
    for entry in entries:
        if not any(magic in entry for magic in "*?"):
            paths.append(entry)
            continue
        matches = [path for path in sorted(glob.glob(entry)) if Path(path).resolve() != Path(checkpoint).resolve()]
        if not matches:
            raise ValueError(f"eval.ensemble: {entry} matches no checkpoint besides checkpoint={checkpoint}; list "
                             "the members' files (a run's checkpoints/best.pt)")
        paths += matches
    return paths


def load_members(paths: list, config_of, parts: Components, data: dict, trusted: bool) -> list:
    """The members ``paths`` (``eval.ensemble``) as ``Components`` with their own algorithm, network and tensors, and
    the task source, device and mapping of ``parts``, the evaluated checkpoint's.

    Args:
        config_of: a checkpoint's saved config with the command's overrides applied and checked
            (``metarun.runner.evaluate.checkpoint_config``).
        data: the evaluated checkpoint's ``data`` (its inputs' shape, classes and normalisation).

    Raises:
        ValueError: a dataset that is not classification, a member trained on other inputs or whose tensors do not
            fit its own network, or a command override the member's algorithm or network lacks; each names the
            member.
    """
    if paths and parts.source.objective != "classification":
        raise ValueError(f"eval.ensemble averages class probabilities, and this dataset's task is "
                         f"{parts.source.objective}; set eval.ensemble=[] to evaluate the checkpoint alone")
    return [member(path, config_of, parts, data, trusted) for path in paths]


def member(path: str, config_of, parts: Components, data: dict, trusted: bool) -> Components:
    """One member of ``load_members``: its network and algorithm built from its own config, its tensors loaded."""
    checkpoint = load_checkpoint(Path(path), trusted=trusted)
    differing = [key for key in SAME_INPUTS if checkpoint.data.get(key) != data.get(key)]
    if differing:
        key = differing[0]
        raise ValueError(f"eval.ensemble: {path} was trained on other inputs than checkpoint ({key} "
                         f"{checkpoint.data.get(key)} against {data.get(key)}); an ensemble scores one set of episodes: "
                         "list checkpoints of the same dataset and image size")
    try:
        cfg = config_of(checkpoint.config)
        algorithm, settings = algorithm_of(cfg)
    except ValueError as err:
        raise ValueError(f"eval.ensemble: {path}: {err}") from err
    model, params = build_network(cfg, algorithm, settings, parts.source.input_shape, parts.source.output_dim,
                                  parts.device)
    check_shapes(path, checkpoint.params, params)
    restore_buffers(model, checkpoint)
    model.eval()  # batch norm's running averages, where the member keeps them
    return replace(parts, algorithm=algorithm, settings=settings, model=model, forward=functional_forward(model),
                   params={name: tensor.to(parts.device) for name, tensor in checkpoint.params.items()})


def check_shapes(path: str, saved: dict, built: dict) -> None:
    """Refuse a member whose ``saved`` tensors differ from those of its network ``built`` for these episodes: a head
    trained for another number of ways (or a file metarun did not write)."""
    shapes = {name: tuple(tensor.shape) for name, tensor in built.items()}
    for name, tensor in saved.items():
        if shapes.pop(name, None) != tuple(tensor.shape):
            raise ValueError(f"eval.ensemble: {path}'s {name} is {list(tensor.shape)}, and its network for these "
                             f"episodes has {list(built[name].shape) if name in built else 'no such tensor'} (a head for "
                             "another number of ways?); list checkpoints trained for these episodes' ways")
    if shapes:
        raise ValueError(f"eval.ensemble: {path} lacks {next(iter(shapes))}, which its network has; pass a checkpoint "
                         "metarun wrote")


def ensemble_task(parts: Components, members: list, transductive: bool):
    """``task_fn(params, *task)`` scoring one episode for ``parts`` with ``params`` and the ``members`` of
    ``load_members`` as one classifier: the metric [1] of the mean of their class probabilities; without members,
    ``parts.eval_task`` (the metric after each test-time inner step).

    Every member predicts in the evaluation's precision (the evaluated checkpoint's ``hardware.precision``).
    """
    if not members:
        return parts.eval_task(transductive)
    own = parts.predict_task(transductive)
    others = [partial(member.predict_task(transductive), member.params) for member in members]

    def task(params, support_x, support_y, query_x, query_y):
        task = (support_x, support_y, query_x, query_y)
        probabilities = own(params, *task).float().softmax(-1)
        for predict in others:
            probabilities = probabilities + predict(*task).float().softmax(-1)
        # an absent class (padding) has probability 0 in every member, so -inf as its own logit
        return parts.objective.metric(torch.log(probabilities / (1 + len(others))), query_y).unsqueeze(0)

    return task
