"""The evaluation timing (``--extras eval``): meta-testing MAML 5-way 1-shot, 600 fixed test episodes (100 on a CPU) of
10 test-time inner steps each on the maml-omniglot-5w1s network, scored as metarun's evaluation scores them
(``metarun.runner.evaluate.score``: chunks of at most ``eval.batch_size`` episodes, each mapped by the mapping
``task_parallel.tune`` picks for evaluation, as ``metarun mode=eval`` does: vmap on CUDA, the loop or threads on a
CPU), on synthetic episodes (their drawing is not timed, as the sampler is not in the training lines). On CUDA it is
timed a second time with its chunks replayed as CUDA graphs (``hardware.cuda_graphs``), after untimed passes that
warm up and capture the graph of every chunk size."""

import time

import torch
from omegaconf import OmegaConf

from metarun.config.run import EvalConfig
from metarun.mapping.task_parallel import map_tasks, tune
from metarun.models.batchnorm import evaluating
from metarun.runner.captured import WARMUP, CapturedEpisodes
from metarun.runner.distributed import Group
from metarun.runner.evaluate import MIN_CHUNK, score

from .flops import synchronize
from .impl import Options
from .metarun_impls import components
from .settings import configured, network, synthetic_batch

EVAL_SETTING, TEST_INNER_STEPS = "maml-omniglot-5w1s", 10
# the 600 on a GPU; on a CPU (about 0.2 s an episode on one core) fewer give the same rate
EPISODES = {"cpu": 100, "cuda": 600, "quick": 20}


class SyntheticEpisodes:
    """The test episodes as ``score`` asks a task source for them: the first of ``most`` synthetic episodes of the
    setting's sizes, made once."""

    def __init__(self, setting: dict, device: torch.device, most: int):
        """``most`` episodes of ``setting``'s ways, shots, queries and image shape on ``device``."""
        self.batch = synthetic_batch({**setting, "meta_batch": most}, device)

    def episodes(self, split: str, seed: int, first: int, count: int, **sizes):
        """``count`` episodes (whichever ``split``, ``seed``, ``first`` and ``sizes``: they are the setting's)."""
        return self.batch.tasks(0, count)


def time_evaluation(options: Options, quick: bool) -> dict:
    """The evaluation's JSON-ready line: ``EPISODES`` test episodes (a few with ``quick``) scored once after an untimed
    chunk of ``MIN_CHUNK`` (first-call costs), in ``options.clock``'s seconds, the device's work included."""
    device = options.device
    setting = configured(EVAL_SETTING, device, quick)
    episodes = EPISODES["quick" if quick else device.type]
    cfg = OmegaConf.structured(EvalConfig(episodes=episodes, ways=setting["ways"], shots=setting["shots"],
                                          queries=setting["queries"]))
    parts = components(setting, options, "auto", None, {"test_inner_steps": TEST_INNER_STEPS})
    source = SyntheticEpisodes(setting, device, cfg.batch_size)
    eval_task = parts.per_task(parts.eval_task(cfg.transductive))
    with torch.no_grad():  # as mode=eval times its mappings: no outer graph
        choice = tune(parts, eval_task, parts.params, lambda n: source.episodes("test", cfg.seed, 0, n), episodes)

    def scored(count: int, map_episodes=map_tasks):
        return score(eval_task, parts.params, source, "test", count, cfg, parts.task_parallel, Group(), parts.autocast,
                     map_episodes)

    def timed(map_episodes) -> tuple:
        synchronize(device)
        start = options.clock()
        curves = scored(episodes, map_episodes)  # [episodes, test inner steps + 1]: the metric after each step
        synchronize(device)
        return curves, options.clock() - start

    with evaluating(parts.model):
        scored(MIN_CHUNK)
        curves, seconds = timed(map_tasks)
        if device.type == "cuda":  # hardware.cuda_graphs: untimed until every chunk size is captured, then timed
            replayed = CapturedEpisodes()
            for _ in range(WARMUP + 1):
                scored(episodes, replayed)
            captured_seconds = timed(replayed)[1]
    scored_episodes, steps = curves.shape[0], curves.shape[1] - 1  # what ran, not what was asked
    line = dict(kind="eval", setting=EVAL_SETTING, algo=setting["algo"], device=str(device), network=network(setting),
                episodes=scored_episodes, test_inner_steps=steps, queries=setting["queries"],
                batch_size=cfg.batch_size, mapping=parts.task_parallel, tune_why=choice["why"],
                seconds=round(seconds, 4), episodes_per_s=round(scored_episodes / seconds, 3),
                clock="process" if options.clock is time.process_time else "wall", threads=torch.get_num_threads())
    if device.type == "cuda":
        line.update(seconds_graphs=round(captured_seconds, 4),
                    episodes_per_s_graphs=round(scored_episodes / captured_seconds, 3))
    return line
