"""Mapping tasks with vmap, a loop or threads gives the same losses and meta-gradients; auto keeps the fastest, at a
cost bounded by the job's own."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from metarun.algos import maml, protonet
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import MAMLConfig
from metarun.config.datasets import SinusoidConfig
from metarun.data.sinusoid import SinusoidTasks
from metarun.data.tasks import TaskBatch
from metarun.mapping import task_parallel
from metarun.mapping.task_parallel import fastest, known_mapping, map_tasks, meta_backward, race, tune
from metarun.models.conv4 import Conv4
from metarun.models.mlp import MLP
from metarun.models.network import functional_forward
from metarun.runner.components import Components
from metarun.utils.errors import RunError


def test_vmap_and_loop_give_the_same_second_order_meta_gradient():
    torch.manual_seed(0)
    model = MLP((1,), 1, [40, 40])
    forward, params = functional_forward(model), dict(model.named_parameters())
    source = SinusoidTasks(OmegaConf.structured(SinusoidConfig), torch.device("cpu"))
    batch = source.sample(8, torch.Generator().manual_seed(0))
    cfg = OmegaConf.structured(MAMLConfig(inner_steps=2))
    task = lambda p, *t: maml.meta_loss(forward, p, *t, cfg, OBJECTIVES["regression"])  # noqa: E731
    results = {}
    for mapping in ("vmap", "loop"):
        losses, metrics = map_tasks(task, params, batch, mapping)
        assert losses.shape == metrics.shape == (8,)
        results[mapping] = (losses, torch.autograd.grad(losses.mean(), list(params.values())))
    torch.testing.assert_close(results["vmap"][0], results["loop"][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results["vmap"][1], results["loop"][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_inductive_scoring_normalises_each_query_with_the_support_set_and_itself_only():
    from metarun.models.batchnorm import in_context, support_context
    from tests.synthetic import TinyCNN

    torch.manual_seed(0)
    model = TinyCNN((1, 12, 12), 3, width=4)
    forward, params = functional_forward(model), dict(model.named_parameters())
    support, query = torch.randn(6, 1, 12, 12), torch.randn(4, 1, 12, 12)
    scored = support_context(forward, 3)(params, in_context(support, query))
    by_hand = torch.stack([forward(params, torch.cat([support, q[None]]))[-1] for q in query])
    torch.testing.assert_close(scored, by_hand)
    # no leak between queries: changing the others leaves query 0's output as it was
    others = torch.cat([query[:1], torch.randn(3, 1, 12, 12)])
    torch.testing.assert_close(support_context(forward, 3)(params, in_context(support, others))[0], scored[0])
    assert not torch.allclose(forward(params, query)[0], forward(params, others)[0])  # transductive would leak
    # support inputs pass through
    torch.testing.assert_close(support_context(forward, 3)(params, support), forward(params, support))


def _tiny_setup(mapping="auto", num_threads="auto"):
    torch.manual_seed(0)
    model = MLP((1,), 1, [8])
    params = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    hardware = SimpleNamespace(precision="fp32", compile=False, num_threads=num_threads, vmap_chunk=None)
    cfg = OmegaConf.structured(MAMLConfig(inner_steps=2))
    parts = Components(None, OBJECTIVES["regression"], maml.ALGORITHM, cfg, model, functional_forward(model), params,
                       torch.device("cpu"), mapping, hardware)
    assert task_parallel.MAPPINGS == ("vmap", "loop", "threads")
    source = SinusoidTasks(OmegaConf.structured(SinusoidConfig), torch.device("cpu"))
    task = lambda p, *t: maml.meta_loss(parts.forward, p, *t, cfg, OBJECTIVES["regression"])  # noqa: E731
    return parts, task, lambda n: source.sample(n, torch.Generator().manual_seed(0))


# vmap must be clearly faster (below 0.9 of the best other mapping's time): it holds every task's graph at once
@pytest.mark.parametrize("seconds, chosen", [({"vmap": 2.0, "loop": 0.5, "threads": 0.3}, "threads"),
                                             ({"vmap": 0.5, "loop": 2.0, "threads": 1.0}, "vmap"),
                                             ({"vmap": 0.95, "loop": 1.0, "threads": 1.2}, "loop"),
                                             ({"vmap": 2.0, "loop": 1.0}, "loop")])
def test_auto_keeps_the_fastest_mapping_and_vmap_only_when_clearly_faster(seconds, chosen):
    assert fastest(seconds) == chosen


def fake_race(per_task: dict, job_tasks: float, adaptive: bool = True, fits: dict = None) -> tuple:
    """``race`` over mappings whose steps take ``per_task`` seconds a task on a fake clock, and run out of memory above
    ``fits[mapping]`` tasks; also the steps run."""
    clock, stepped = [0.0], []

    def step(mapping, tasks):
        stepped.append((mapping, tasks))
        if tasks > (fits or {}).get(mapping, tasks):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        clock[0] += per_task[mapping] * tasks

    return (*race(step, list(per_task), job_tasks, timer=lambda: clock[0], adaptive=adaptive), stepped)


def test_the_race_times_every_close_mapping_and_drops_a_clearly_slower_one():
    seconds, complete, stepped = fake_race({"loop": 0.1, "vmap": 0.2, "threads": 0.12}, job_tasks=1e6)
    assert seconds == pytest.approx({"loop": 0.4, "vmap": 0.8, "threads": 0.48}) and complete
    # one untimed step of one task each, one timed of four; then vmap (twice the leader's time) is out
    assert stepped == [("loop", 1), ("vmap", 1), ("threads", 1), ("loop", 4), ("vmap", 4), ("threads", 4),
                       *[("loop", 4), ("threads", 4)] * 2]


def test_the_race_ends_once_one_mapping_is_clearly_ahead():
    seconds, complete, stepped = fake_race({"loop": 0.1, "vmap": 1.0}, job_tasks=1e6)
    assert seconds == pytest.approx({"loop": 0.4, "vmap": 4.0}) and complete and len(stepped) == 4


@pytest.mark.parametrize("job_tasks, steps_run", [(100, 1), (1e6, 3)])
def test_the_race_spends_at_most_a_twentieth_of_the_job_or_ten_seconds(job_tasks, steps_run):
    # 1 s a task: a job of 100 allows 5 s, too little to time both mappings (9 s more), so the first step ends the
    # race; a long job allows 10 s: the warm-ups and the loop's timed step, then the vmap's would pass it
    seconds, complete, stepped = fake_race({"loop": 1.0, "vmap": 1.25}, job_tasks)
    assert len(stepped) == steps_run and not complete
    assert seconds == {"loop": 4.0}  # the first mapping: measured, or estimated from its untimed step


def test_ranks_race_every_mapping_every_round_whatever_it_costs():
    # under ddp the ranks sum their timings mapping by mapping: none may stop early on its own clock
    seconds, complete, stepped = fake_race({"loop": 10.0, "vmap": 100.0}, job_tasks=1, adaptive=False)
    assert complete and set(seconds) == {"loop", "vmap"} and len(stepped) == 2 * (1 + task_parallel.TIMED_ROUNDS)


@pytest.mark.parametrize("adaptive", [True, False])
def test_a_mapping_that_runs_out_of_memory_is_out_of_the_race(capsys, adaptive):
    # vmap holds its 4 tasks' graphs at once and does not fit; the loop, one task's at a time, does
    seconds, complete, stepped = fake_race({"vmap": 0.01, "loop": 0.1}, 1e6, adaptive, fits={"vmap": 1})
    assert seconds["vmap"] == float("inf") and fastest(seconds) == "loop"
    assert not complete  # not remembered: another run of the setting, with more memory free, races again
    assert stepped.count(("vmap", 4)) == 1  # not tried again
    assert "hardware.task_parallel=auto: vmap ran out of memory with 4 tasks at once; it is left out" in \
        capsys.readouterr().out


def test_a_race_cut_short_after_a_mapping_ran_out_of_memory_keeps_one_that_did_not():
    # 1 s a task, a job of 100 allows 5 s: vmap fails its first step, the loop's then ends the race
    seconds, complete, _ = fake_race({"vmap": 1.0, "loop": 1.0}, 100, fits={"vmap": 0})
    assert not complete and seconds == {"vmap": float("inf"), "loop": 4.0} and fastest(seconds) == "loop"


def test_every_mapping_out_of_memory_is_one_line_with_the_fix(monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("metarun.utils.hardware.available_cores", lambda: 2)
    monkeypatch.setattr(task_parallel, "meta_backward", out_of_memory)
    parts, task, sample = _tiny_setup()
    with pytest.raises(RunError, match=r"^out of memory in every hardware.task_parallel mapping \(threads, vmap, "
                                       r"loop\) while timing them; lower the memory one task takes"):
        tune(parts, task, parts.params, sample, job_tasks=10 ** 6)


def test_tune_races_on_a_few_tasks_and_leaves_no_trace(monkeypatch):
    monkeypatch.setattr("metarun.utils.hardware.available_cores", lambda: 2)  # threads is a candidate with 2 cores
    parts, task, sample = _tiny_setup()
    threads, asked = torch.get_num_threads(), []
    rng = torch.get_rng_state()
    choice = tune(parts, task, parts.params, lambda n: asked.append(n) or sample(n), job_tasks=10 ** 6)
    assert asked == [task_parallel.TIMED_TASKS] and parts.task_parallel == fastest(choice["seconds"])
    assert set(choice["seconds"]) <= {"vmap", "loop", "threads"} and choice["cost"] > 0 and choice["why"] is None
    # the chosen mapping's thread count: the run's own, or one per worker for threads
    assert torch.get_num_threads() == (1 if parts.task_parallel == "threads" else threads) and parts.threads == threads
    # the timing leaves no trace: no gradients, the random stream where it was
    assert all(p.grad is None for p in parts.params.values())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_conv_net_on_one_cpu_thread_and_maml_on_a_gpu_are_not_timed(monkeypatch):
    parts, task, _ = _tiny_setup(num_threads=1)
    assert known_mapping(parts, 10 ** 6) is None  # a small network: vmap can win on one thread, so it is timed
    parts.model = Conv4((1, 28, 28), 5)
    assert known_mapping(parts, 10 ** 6)[0] == "loop"
    choice = tune(parts, task, parts.params, sample=None, job_tasks=10 ** 6)  # nothing sampled, nothing timed
    assert parts.task_parallel == "loop" and choice["seconds"] == {} and choice["cost"] == 0
    monkeypatch.setattr("metarun.utils.hardware.available_cores", lambda: 2)
    parts.hardware.num_threads = "auto"
    assert known_mapping(parts, 10 ** 6) is None  # threads may beat the loop on two cores
    parts.device = torch.device("cuda")
    assert known_mapping(parts, 10 ** 6)[0] == "vmap"
    parts.algorithm = protonet.ALGORITHM
    assert known_mapping(parts, 10 ** 6) is None
    # 60 episodes: a race's step of 4 would cost more than a twentieth of the job
    assert known_mapping(parts, 60) == ("vmap", "60 tasks are too few to be worth timing")


def test_one_core_leaves_threads_out_and_the_gpu_never_has_it(monkeypatch):
    monkeypatch.setattr("metarun.utils.hardware.available_cores", lambda: 1)
    parts, _, _ = _tiny_setup()
    assert parts.auto_choices() == ("vmap", "loop")
    monkeypatch.setattr("metarun.utils.hardware.available_cores", lambda: 4)
    assert parts.auto_choices() == ("vmap", "loop", "threads")
    parts.hardware.num_threads = 1  # the run is held to one thread: threads would use more
    assert parts.auto_choices() == ("vmap", "loop")
    parts.hardware.num_threads = "auto"
    parts.device = torch.device("cuda")
    assert parts.auto_choices() == ("vmap", "loop")


def _conv_meta_batch(tasks=6):
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(3).repeat(2).expand(tasks, -1).contiguous()
    return TaskBatch(torch.randn(tasks, 6, 1, 16, 16, generator=g), labels,
                     torch.randn(tasks, 6, 1, 16, 16, generator=g), labels)


@pytest.mark.parametrize("norm", ["batch", "running"])
def test_threads_give_the_loops_meta_gradient_bit_for_bit(monkeypatch, norm):
    monkeypatch.setattr("metarun.utils.hardware.available_cores", lambda: 3)
    torch.manual_seed(0)
    model = Conv4((1, 16, 16), 3, width=8, norm=norm)
    forward = functional_forward(model)
    cfg = OmegaConf.structured(MAMLConfig(inner_steps=2, inner_lr=0.3))
    task = lambda p, *t: maml.meta_loss(forward, p, *t, cfg, OBJECTIVES["classification"])  # noqa: E731
    batch, threads, results = _conv_meta_batch(), torch.get_num_threads(), {}
    torch.set_num_threads(1)  # the loop on one thread, as every worker runs: the same kernels, the same sums
    try:
        for mapping in ("loop", "threads"):
            params = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
            losses, metrics = meta_backward(task, params, batch, mapping, lambda loss: loss / 6)
            results[mapping] = losses, metrics, [p.grad for p in params.values()]
    finally:
        torch.set_num_threads(threads)
    assert all(g is not None for g in results["threads"][2])
    for a, b in zip(results["loop"], results["threads"]):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_threads_score_episodes_as_the_loop_with_the_callers_grad_mode_and_eval_mode(monkeypatch):
    monkeypatch.setattr("metarun.utils.hardware.available_cores", lambda: 2)
    torch.manual_seed(0)
    model = Conv4((1, 16, 16), 3, width=8, norm="running")
    forward, params = functional_forward(model), dict(model.named_parameters())
    model.get_submodule("1").running_mean.fill_(0.5)  # eval mode's normalisation differs from training's
    cfg = OmegaConf.structured(MAMLConfig(test_inner_steps=2, inner_lr=0.3))
    task = lambda p, *t: maml.evaluate_task(forward, p, *t, cfg, OBJECTIVES["classification"])  # noqa: E731
    batch = _conv_meta_batch(4)
    model.eval()
    try:
        with torch.no_grad():
            curves = {mapping: map_tasks(task, params, batch, mapping) for mapping in ("loop", "threads")}
    finally:
        model.train()
    assert curves["threads"].shape == (4, 3) and not curves["threads"].requires_grad
    torch.testing.assert_close(curves["threads"], curves["loop"])


def test_bf16_autocast_reaches_the_worker_threads(monkeypatch):
    monkeypatch.setattr("metarun.utils.hardware.available_cores", lambda: 2)
    torch.manual_seed(0)
    model = Conv4((1, 16, 16), 3, width=8)
    forward, params = functional_forward(model), dict(model.named_parameters())
    logits = lambda p, sx, sy, qx, qy: forward(p, qx)  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = map_tasks(logits, params, _conv_meta_batch(2), "threads")
    assert out.dtype == torch.bfloat16


def test_a_set_mapping_is_not_timed():
    parts, task, sample = _tiny_setup("loop")
    assert tune(parts, task, parts.params, sample, job_tasks=1, timer=None) == {} and parts.task_parallel == "loop"


@pytest.mark.parametrize("chunk, steps", [(None, ["forward 8", "backward"]), (8, ["forward 8", "backward"]),
                                          (3, ["forward 3", "backward"] * 2 + ["forward 2", "backward"])])
def test_vmap_in_chunks_backpropagates_each_chunk_before_the_next_and_gives_the_same_meta_gradient(monkeypatch, chunk,
                                                                                                    steps):
    torch.manual_seed(0)
    model = MLP((1,), 1, [40, 40])
    forward = functional_forward(model)
    source = SinusoidTasks(OmegaConf.structured(SinusoidConfig), torch.device("cpu"))
    batch = source.sample(8, torch.Generator().manual_seed(0))
    cfg = OmegaConf.structured(MAMLConfig(inner_steps=2))
    task = lambda p, *t: maml.meta_loss(forward, p, *t, cfg, OBJECTIVES["regression"])  # noqa: E731
    seen = []

    def mapped(task_fn, params, tasks, mapping):
        seen.append(f"forward {tasks.num_tasks}")
        return map_tasks(task_fn, params, tasks, mapping)

    def scale(loss):  # a backward follows each call: the graph of the tasks forwarded since the last is freed
        seen.append("backward")
        return loss

    monkeypatch.setattr(task_parallel, "map_tasks", mapped)
    gradients = {}
    for mapping, size in (("loop", None), ("vmap", chunk)):
        params = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
        seen.clear()
        losses, _ = meta_backward(task, params, batch, mapping, scale, vmap_chunk=size)
        assert losses.shape == (8,)
        gradients[mapping] = [p.grad for p in params.values()]
    assert seen == steps
    for a, b in zip(gradients["vmap"], gradients["loop"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
