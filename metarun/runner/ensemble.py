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
import torch.nn.functional as F
from omegaconf import OmegaConf

from metarun.algos.base import Algorithm
from metarun.models.network import build_network, functional_forward
from metarun.runner.checkpoint import load_checkpoint, restore_buffers
from metarun.runner.components import Components, algorithm_of, padded_mappings

# what a checkpoint's ``data`` says of its inputs, which every member must share with the evaluated checkpoint (the
# classes a head has are checked by its tensors' shapes)
SAME_INPUTS = ("input_shape", "objective", "normalisation", "inverted")


def member_paths(entries, checkpoint: str) -> list:
    """``eval.ensemble``'s ``entries`` as files, each once and never ``checkpoint`` itself: an entry with ``*`` or
    ``?`` stands for the files it matches, sorted (``eval.ensemble=[outputs/challenge/*/checkpoints/best.pt]`` for a
    sweep's runs).

    Raises:
        ValueError: a pattern that matches no file, or entries that name ``checkpoint`` alone.
    """
    paths, seen = [], {Path(checkpoint).resolve()}
    for entry in entries:
        matches = sorted(glob.glob(entry)) if any(magic in entry for magic in "*?") else [entry]
        if not matches:
            raise ValueError(f"eval.ensemble: {entry} matches no file; list the members' checkpoints (a run's "
                             "checkpoints/best.pt)")
        for path, resolved in zip(matches, (Path(path).resolve() for path in matches)):
            if resolved not in seen:
                seen.add(resolved)
                paths.append(path)
    if entries and not paths:
        raise ValueError(f"eval.ensemble={list(entries)} names no checkpoint besides checkpoint={checkpoint}; list "
                         "other runs' checkpoints")
    return paths


def load_members(paths: list, config_of, parts: Components, cfg, data: dict, trusted: bool) -> list:
    """The members ``paths`` (``eval.ensemble``) as ``Components`` with their own algorithm, network and tensors, and
    the task source and device of ``parts``, the evaluated checkpoint's, whose task mappings are narrowed to those
    every member runs in.

    Args:
        config_of: a member's saved config with the command's overrides applied where it has their keys
            (``metarun.runner.evaluate.member_config``).
        cfg: the evaluated checkpoint's run config, with the command's overrides.
        data: the evaluated checkpoint's ``data`` (its inputs' shape, classes and normalisation).

    Raises:
        ValueError: a dataset that is not classification, a member trained on other inputs, for other ways or whose
            tensors do not fit its own network, an algorithm whose scores are not logits, or a task mapping a member
            cannot run in; each names the member.
    """
    if not paths:
        return []
    if parts.source.objective != "classification":
        raise ValueError(f"eval.ensemble averages class probabilities, and this dataset's task is "
                         f"{parts.source.objective}; set eval.ensemble=[] to evaluate the checkpoint alone")
    check_scores("checkpoint", cfg.algo.name, parts.algorithm)
    # the classes of the episodes, which a member with a fixed head must have been trained for
    ways = cfg.eval.ways or OmegaConf.select(cfg, "dataset.ways", default=None) or parts.source.output_dim
    members = [member(path, config_of, parts, data, trusted, ways, cfg.eval.transductive) for path in paths]
    runs_in = tuple(mapping for mapping in parts.runs_in if all(mapping in other.runs_in for other in members))
    if parts.task_parallel not in (*runs_in, "auto"):
        raise ValueError(f"hardware.task_parallel={parts.task_parallel}: a member of eval.ensemble does not run "
                         f"these episodes in it; set hardware.task_parallel={' or '.join(runs_in)} or auto")
    parts.runs_in = runs_in
    return members


def member(path: str, config_of, parts: Components, data: dict, trusted: bool, ways: int,
           transductive: bool) -> Components:
    """One member of ``load_members``: its network and algorithm built from its own config, its tensors loaded, and
    the task mappings it runs the evaluation's episodes in (``transductive`` or not, as the evaluation scores them)."""
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
    check_scores(f"eval.ensemble: {path}", cfg.algo.name, algorithm)
    output_dim = checkpoint.data["output_dim"]
    if algorithm.fixed_ways and output_dim != ways:
        raise ValueError(f"eval.ensemble: {path} has a head for {output_dim}-way tasks (algo={cfg.algo.name}), and "
                         f"these episodes are {ways}-way; list checkpoints trained for {ways} ways, or of an "
                         "algorithm without a head (protonet, matchingnet, r2d2, metaoptnet_svm, baseline)")
    model, params = build_network(cfg, algorithm, settings, parts.source.input_shape, output_dim, parts.device)
    check_shapes(path, checkpoint.params, params)
    restore_buffers(model, checkpoint)
    model.eval()  # batch norm's running averages, where the member keeps them
    runs_in = algorithm.runs_in(settings)
    return replace(parts, algorithm=algorithm, settings=settings, model=model, forward=functional_forward(model),
                   params={name: tensor.to(parts.device) for name, tensor in checkpoint.params.items()},
                   runs_in=padded_mappings(algorithm, transductive, runs_in) if parts.variable else runs_in)


def check_scores(what: str, algo: str, algorithm: Algorithm) -> None:
    """Refuse an algorithm whose ``predict`` gives scores that a softmax does not turn into its probabilities
    (``Algorithm.scores``)."""
    if algorithm.scores:
        raise ValueError(f"{what}: algo={algo} {algorithm.scores}, not logits whose softmax is its probabilities; "
                         "leave its checkpoints out of eval.ensemble")


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
        scores = [own(params, *task), *(predict(*task) for predict in others)]
        # columns are classes: [Q, S] for an algorithm without a head (S bounds the classes), [Q, ways] with one;
        # the columns past a member's own are classes it gives probability 0
        width = max(score.shape[-1] for score in scores)
        probabilities = sum(F.pad(score.float().softmax(-1), (0, width - score.shape[-1])) for score in scores)
        # an absent class has probability 0 in every member, so -inf as the ensemble's logit
        return parts.objective.metric(torch.log(probabilities / len(scores)), query_y).unsqueeze(0)

    return task
