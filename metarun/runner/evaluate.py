"""Evaluation on fixed episodes: mean and 95% confidence interval, the curve over test-time inner steps, and
the re-evaluation of a saved checkpoint (``metarun mode=eval checkpoint=PATH``)."""

import contextlib
import importlib.resources
import math
from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from metarun.logging.console import tracked
from metarun.logging.episodes import FILE_NAME as EPISODES_FILE
from metarun.logging.episodes import write_episodes
from metarun.logging.results import write_results
from metarun.logging.table import metric_text, render_text
from metarun.mapping import remembered
from metarun.mapping.task_parallel import map_tasks, tune
from metarun.runner.checkpoint import load_checkpoint, peek_config, restore_buffers
from metarun.runner.components import build_components
from metarun.runner.distributed import Group
from metarun.runner.ensemble import ensemble_task, load_members, member_paths

# config groups: a checkpoint is re-evaluated with its own choices, only keys may be overridden
GROUPS = ("algo", "dataset", "model", "hardware", "logger", "paths", "experiment")
# the groups whose option mode=eval takes from the checkpoint, so that their keys compose (dataset.root=...)
OWN_GROUPS = ("algo", "dataset")
# what names an algorithm, a dataset or a model: another value would score something other than the checkpoint
IDENTITY = {f"{group}.{key}" for group in ("algo", "dataset", "model") for key in ("name", "_target_")}
ABSENT = object()
# an evaluation's chunks: about a tenth of its episodes each (a progress line each), never fewer than 10 episodes
# (vmap's batching pays less below)
PROGRESS_CHUNKS, MIN_CHUNK = 10, 10


def mean_ci95(values: torch.Tensor) -> tuple:
    """Mean and 95% confidence half-width 1.96·σ/√n of per-episode values."""
    values = values.double()
    if values.numel() < 2:
        return values.mean().item(), float("nan")
    return values.mean().item(), 1.96 * values.std().item() / math.sqrt(values.numel())


def evaluate(eval_task, params, source, split: str, episodes: int, cfg, task_parallel: str, metric: str,
             group: Group = Group(), autocast=contextlib.nullcontext, record=None, map_episodes=map_tasks) -> dict:
    """Score ``episodes`` fixed episodes of ``split`` (of each of its sources, for a multi-source dataset: see
    ``TaskSource.scored_splits``); ``eval_task`` returns each episode's per-step curve.

    Under ``hardware=ddp`` each rank of ``group`` scores a contiguous block of the episodes and the curves are
    gathered, so every rank returns the single-process figures. The episodes run in chunks of at most
    ``cfg.batch_size``, and of about a tenth of them, so that a long evaluation shows its progress.

    Args:
        record: called on the main rank with the gathered curves ``[episodes, steps]`` (``episodes_writer``;
            the sources' one after another).
        map_episodes: ``map_tasks``, or the run's CUDA graphs of it (``Components.map_episodes``).

    Returns:
        ``{split/metric, split/metric_ci95, split/metric_by_step, split/nonfinite}``: the metric after the last
        test-time inner step with its CI, the mean metric after 0, 1, ... steps, and how many episodes ended
        non-finite (an inner loop that diverged makes the mean NaN; the count says how often). With several
        sources, the same for each (``split/<source>/metric``, ...), ``split/sources`` naming them, and the
        average over sources under ``split/``.
    """
    names = source.scored_splits(split, cfg.get("sources"))  # a checkpoint's eval from before sources: none
    curves = {name: score(eval_task, params, source, name, episodes, cfg, task_parallel, group, autocast, map_episodes)
              for name in names}
    if record is not None and group.is_main:
        record(torch.cat(list(curves.values())))
    if names == (split,):
        return summary(split, curves[split], metric)
    results = {key: value for name in names for key, value in summary(name, curves[name], metric).items()}
    return {**results, **source_average(split, names, results, metric), f"{split}/sources": [n.split("/", 1)[1] for n in names]}


def score(eval_task, params, source, split: str, episodes: int, cfg, task_parallel: str, group: Group,
          autocast, map_episodes) -> torch.Tensor:
    """The curves ``[episodes, steps]`` of ``split``'s fixed episodes, gathered from every rank."""
    sizes = {"ways": cfg.ways, "shots": cfg.shots, "queries": cfg.queries}
    if cfg.get("support_copies"):  # a checkpoint's eval from before support copies has none
        sizes["support_copies"] = cfg.support_copies
    curves = []
    # no outer graph is needed; torch.func.grad still differentiates the inner steps inside no_grad
    with torch.no_grad(), autocast():
        share = group.block(episodes)
        chunk = min(cfg.batch_size, max(MIN_CHUNK, math.ceil(len(share) / PROGRESS_CHUNKS)))
        firsts = range(share.start, share.stop, chunk)
        for first in tracked(firsts, len(firsts), f"{split} ({episodes} episodes)", unit="chunk"):
            batch = source.episodes(split, cfg.seed, first, min(chunk, share.stop - first), **sizes)
            curves.append(map_episodes(eval_task, params, batch, task_parallel))
    return torch.cat(group.gather(curves))


def summary(split: str, curves: torch.Tensor, metric: str) -> dict:
    """``evaluate``'s figures of one split's curves."""
    mean, ci95 = mean_ci95(curves[:, -1])
    return {
        f"{split}/{metric}": mean,
        f"{split}/{metric}_ci95": ci95,
        f"{split}/{metric}_by_step": curves.double().mean(0).tolist(),
        f"{split}/nonfinite": int((~torch.isfinite(curves[:, -1])).sum()),
    }


def source_average(split: str, names: tuple, results: dict, metric: str) -> dict:
    """The average over sources of their figures (Meta-Dataset's "average accuracy"); its CI combines theirs as
    the mean of independent means: sqrt(sum ci_i²) / n."""
    means = [results[f"{name}/{metric}"] for name in names]
    cis = [results[f"{name}/{metric}_ci95"] for name in names]
    curves = torch.tensor([results[f"{name}/{metric}_by_step"] for name in names], dtype=torch.float64)
    return {
        f"{split}/{metric}": sum(means) / len(means),
        f"{split}/{metric}_ci95": math.sqrt(sum(ci * ci for ci in cis)) / len(cis),
        f"{split}/{metric}_by_step": curves.mean(0).tolist(),
        f"{split}/nonfinite": sum(results[f"{name}/nonfinite"] for name in names),
    }


def source_table(results: dict, split: str, metric: str) -> str:
    """The per-source lines of a multi-source evaluation (none for one source): each source's metric ± CI, then
    the average over sources."""
    names = results.get(f"{split}/sources")
    if not names:
        return ""
    rows = [[name, metric_text(f"{split}/{metric}", results[f"{split}/{name}/{metric}"],
                                results[f"{split}/{name}/{metric}_ci95"])] for name in names]
    rows.append(["average", metric_text(f"{split}/{metric}", results[f"{split}/{metric}"], results[f"{split}/{metric}_ci95"])])
    return render_text(["source", f"{split}/{metric}"], rows)


def episodes_writer(cfg, metric: str, path: Path):
    """The ``record`` of ``evaluate`` that writes a meta-test's per-episode results to ``path``
    (``test_episodes.npz``, for ``metarun-report --paired``) with what fixed its episodes, from the run's ``cfg``."""
    # the sizes the episodes were drawn with: eval's, or the dataset's where eval leaves them null
    sizes = {key: cfg.eval[key] or OmegaConf.select(cfg, f"dataset.{key}", default=None)
             for key in ("ways", "shots", "queries")}
    return lambda curves: write_episodes(path, curves, indices=range(len(curves)), seed=cfg.eval.seed, split="test",
                                         metric=metric, dataset=cfg.dataset.name, algo=cfg.algo.name, **sizes)


def with_own_groups(args: list) -> list:
    """The command line ``args`` of ``mode=eval`` with the checkpoint's own algo and dataset options first, so that
    their keys compose (``dataset.root=...`` where the data moved, a ProtoNet option) instead of the defaults'.

    ``args`` come back unchanged when they are not ``mode=eval`` of one checkpoint, when the checkpoint cannot be
    read safely (the job then says why, or opens it with ``trust_checkpoint=true``) or when it names an option
    conf/ lacks (your own algorithm or dataset).
    """
    try:
        overrides = [arg for arg in args if "=" in arg and not arg.startswith("-")]  # not --cfg, -m
        values = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}
        if values.get("mode") != "eval" or not isinstance(values.get("checkpoint"), str):
            return args
        # never trusted here: a file that needs trust_checkpoint is opened once, by the job
        saved = peek_config(Path(values["checkpoint"]))
    except Exception:  # noqa: BLE001: the job reads the same overrides and checkpoint, and reports what failed
        return args
    names = {group: saved[group].get("name") for group in OWN_GROUPS if group not in values}
    conf = importlib.resources.files("metarun.conf")
    return [f"{group}={name}" for group, name in names.items() if (conf / group / f"{name}.yaml").is_file()] + args


def checkpoint_config(cfg, saved: dict, overrides: list) -> DictConfig:
    """The checkpoint's own resolved config ``saved`` with this command's ``key=value`` overrides applied.

    Args:
        cfg: this command's composed config (``checkpoint``, ``paths.output_dir`` and the overridden values).
        overrides: the command line's overrides, e.g. ``["eval.episodes=1000", "algo.test_inner_steps=20"]``.

    Raises:
        ValueError: an override of a group (other than to the checkpoint's own option), of what names the
            algorithm, dataset or model, or of a key the checkpoint's algorithm, dataset or model lacks.
    """
    saved = OmegaConf.create(saved)
    # hardware keys newer than the checkpoint take this command's values
    saved.hardware = OmegaConf.merge(cfg.hardware, saved.hardware)
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key in ("mode", "checkpoint", "trust_checkpoint") or key.startswith("hydra"):
            continue
        check_eval_override(saved, cfg, key, value)
        if "." not in key:
            continue  # the checkpoint's own option, as saved
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    saved.paths.output_dir = cfg.paths.output_dir
    return saved


def member_config(cfg, saved: dict, overrides: list) -> DictConfig:
    """An ``eval.ensemble`` member's saved config with this command's overrides (``checkpoint_config``) where the
    member has their keys: the group options the command composed for the evaluated checkpoint
    (``with_own_groups``) and ``algo.``/``model.`` keys of another algorithm or network are left out."""
    node = OmegaConf.create(saved)
    keys = [override.lstrip("+").partition("=")[0] for override in overrides]
    own = [override for override, key in zip(overrides, keys)
           if "." in key and (key.partition(".")[0] not in ("algo", "model") or has_key(node, key))]
    return checkpoint_config(cfg, saved, own)


def check_eval_override(saved: DictConfig, cfg: DictConfig, key: str, value: str) -> None:
    """Refuse ``key=value`` (composed into ``cfg``) where it would re-evaluate something other than the checkpoint
    ``saved`` holds."""
    group, _, rest = key.partition(".")
    if not rest:
        own = OmegaConf.select(saved, f"{group}.name") if group in OWN_GROUPS else None
        if group in GROUPS and value != own:
            raise ValueError(f"mode=eval re-evaluates the checkpoint's own {group}; drop {key}={value} "
                             f"and override keys instead (e.g. eval.episodes=1000, algo.test_inner_steps=20)")
        return
    if group not in ("algo", "dataset", "model"):
        return  # eval, hardware, paths, ...: keys newer than the checkpoint are added
    own = saved[group].get("name") or saved[group].get("_target_")
    if key in IDENTITY:
        raise ValueError(f"mode=eval scores the checkpoint's own {group} ({own}); drop {key}={value}, or train a "
                         "run with it")
    # the command composed the checkpoint's own option (``with_own_groups``): its schema knows keys newer than the file
    same_option = all(cfg[group].get(k) == saved[group].get(k) for k in ("name", "_target_"))
    if not (has_key(saved, key) or same_option and has_key(cfg, key)):
        parent = key.rpartition(".")[0]
        node = OmegaConf.select(saved, parent)
        keys = node if isinstance(node, DictConfig) else saved[group]
        raise ValueError(f"{key} is not a key of the checkpoint's {group} ({own}); {parent} has {', '.join(keys)}")


def has_key(node: DictConfig, key: str) -> bool:
    """Whether the dotted ``key`` exists in ``node`` (whatever its value, None included)."""
    return OmegaConf.select(node, key, default=ABSENT) is not ABSENT


def evaluate_checkpoint(cfg, overrides: list = (), record=None) -> dict:
    """Meta-test ``cfg.checkpoint`` with its config plus ``overrides``; write results.json in ``paths.output_dir``.

    Args:
        record: called with the config actually evaluated, before evaluating (``RunDirectory.record``).
    """
    checkpoint = load_checkpoint(Path(cfg.checkpoint), trusted=cfg.trust_checkpoint)
    run_cfg = checkpoint_config(cfg, checkpoint.config, overrides)
    if record is not None:
        record(run_cfg)
    parts = build_components(run_cfg)
    params = {name: p.to(parts.device) for name, p in checkpoint.params.items()}
    restore_buffers(parts.model, checkpoint)
    parts.model.eval()  # batch norm's running averages, where the model keeps them (model.norm=running)
    metric, sizes = parts.objective.metric_name, {key: run_cfg.eval[key] for key in ("ways", "shots", "queries")}
    paths = member_paths(run_cfg.eval.get("ensemble") or (), cfg.checkpoint)  # an older checkpoint's eval has none
    members = load_members(paths, lambda saved: member_config(cfg, saved, overrides), parts, run_cfg, checkpoint.data,
                           cfg.trust_checkpoint)
    eval_task = parts.per_task(ensemble_task(parts, members, run_cfg.eval.transductive))
    with torch.no_grad():
        # timed on the first test episodes (evaluation has no backward pass)
        memory = remembered.for_run(run_cfg, "eval", parts.device, transductive=run_cfg.eval.transductive,
                                    **({"ensemble": paths} if paths else {}))
        episodes = run_cfg.eval.episodes
        first = parts.source.scored_splits("test", run_cfg.eval.get("sources"))[0]  # a multi-source set's first source
        tune(parts, eval_task, params, lambda n: parts.source.episodes(first, run_cfg.eval.seed, 0, min(n, episodes),
                                                                      **sizes), episodes, memory=memory)
    results = {
        **evaluate(eval_task, params, parts.source, "test", run_cfg.eval.episodes, run_cfg.eval,
                   parts.task_parallel, metric, autocast=parts.autocast,
                   record=episodes_writer(run_cfg, metric, Path(run_cfg.paths.output_dir) / EPISODES_FILE),
                   map_episodes=parts.map_episodes),
        "checkpoint": str(cfg.checkpoint),
        "checkpoint/iteration": checkpoint.iteration,
        **({"ensemble": paths} if paths else {}),
        "algo": run_cfg.algo.name,
        "dataset": run_cfg.dataset.name,
        "hardware/task_parallel": parts.task_parallel,
        "hardware/precision": parts.precision,
        "test/episodes": run_cfg.eval.episodes,
        "test/inner_steps": OmegaConf.select(run_cfg, "algo.test_inner_steps", default=0),
        "seed": run_cfg.seed,
    }
    write_results(Path(run_cfg.paths.output_dir) / "results.json", results)
    score = metric_text(f"test/{metric}", results[f"test/{metric}"], results[f"test/{metric}_ci95"])
    scored = f"{cfg.checkpoint} and {len(paths)} more: an ensemble" if paths else cfg.checkpoint
    print(f"{run_cfg.algo.name} on {run_cfg.dataset.name} ({scored}): test/{metric} = {score} "
          f"({run_cfg.eval.episodes} episodes{' per source' if 'test/sources' in results else ''})")
    if "test/sources" in results:
        print(source_table(results, "test", metric))
    return results
