"""scripts/bench.py: --quick measures every implementation of a setting of every algorithm in conf/algo/ against the
peers present, with its FLOPs and MFU, the variant lines (chunked vmap, one embedding pass) and the extras (the
evaluation's timing; the GPU-busy fraction, CUDA only); the plain loops and peers compute metarun's meta-gradient (so
the benchmark compares the same work); benchkit/flops.py counts FLOPs as a hand count does and finds a GPU's
datasheet peak by its name; benchkit/gpu_busy.py adds up the GPU's activity as a hand count does."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.autograd import DeviceType

from metarun.mapping import task_parallel
from metarun.utils import hardware
from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench.py"
# benchkit, the script's package, found as when the script runs (Python puts the script's folder on sys.path)
sys.path.insert(0, str(SCRIPT.parent))
from benchkit import evaluation, flops, gpu_busy, measure  # noqa: E402
from benchkit.impl import Options  # noqa: E402
from benchkit.implementations import NO_PLAIN, PEERS, implementations, peer_makers  # noqa: E402
from benchkit.metarun_impls import CPU_BF16, metarun  # noqa: E402
from benchkit.settings import SETTINGS, VARIANTS, configured, synthetic_batch  # noqa: E402

ALGOS = {path.stem for path in (REPO / "conf" / "algo").glob("*.yaml")}
KEYS = {"impl", "algo", "setting", "device", "network", "tasks_per_s", "peak_mem_mb", "meta_batch",
        "seconds_per_step", "warmup", "rounds", "threads", "cores", "clock", "best_peer", "vs_best_peer",
        "flops_per_step", "tflops", "mfu", "precision", "peak_tflops", "peak_source", "matmul_tflops",
        "load_avg_1min"}
LAYOUTS = {"metarun-auto-channels-last", "metarun-auto-contiguous"}  # the layout auto did not choose
METARUN = {"metarun-auto", "metarun-loop-checkpoint", "metarun-auto-joint", "metarun-vmap-chunk", "metarun-auto-bf16",
           *LAYOUTS, *(f"metarun-{mapping}" for mapping in task_parallel.MAPPINGS)}
PEER_MAKERS = peer_makers(None)


def _run(*args, out=None):
    """Run the script in quick mode on one CPU thread; returns (JSON lines, table rows, the other printed lines)."""
    command = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--threads", "1", *args]
    done = subprocess.run(command + (["--out", str(out)] if out else []), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    lines = [json.loads(line) for line in printed if line.startswith("{")]
    return lines, [row for row in printed if row.startswith("| ")], [t for t in printed if not t.startswith(("{", "|"))]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One run of every setting and extra, learn2learn looked for where it is not, shared by the tests that read it:
    (JSON lines, table rows, other printed lines, the --out file)."""
    out = tmp_path_factory.mktemp("bench") / "bench.jsonl"
    return (*_run("--learn2learn", "/nonexistent", out=out), out)


def _check_best_peer(measured: list) -> None:
    """Each line's best peer is the fastest peer measured on its setting (none without a peer), and vs_best_peer
    the ratio to it."""
    for setting in {line["setting"] for line in measured}:
        these = [line for line in measured if line["setting"] == setting]
        speeds = {line["impl"]: line["tasks_per_s"] for line in these if line["impl"] in PEERS}
        best = max(speeds, key=speeds.get, default=None)
        for line in these:
            assert line["best_peer"] == best, (setting, line["impl"])
            if best is None:
                assert line["vs_best_peer"] is None, setting
            else:
                assert line["vs_best_peer"] == pytest.approx(line["tasks_per_s"] / speeds[best], rel=1e-2, abs=2e-3)


def _check_flops(line: dict) -> None:
    """A line's FLOPs are positive and finite, its FLOP rate theirs over its time, its MFU that over the measured
    peak of its one CPU core, in (0, 1]."""
    assert line["flops_per_step"] > 0 and math.isfinite(line["flops_per_step"]), line["impl"]
    steps_per_s = line["tasks_per_s"] / line["meta_batch"]
    assert line["tflops"] == pytest.approx(line["flops_per_step"] * steps_per_s / 1e12, rel=1e-2)
    precision = "bf16" if line["impl"] == "metarun-auto-bf16" else "fp32"  # bf16: a CPU with AMX
    assert line["peak_source"] == f"measured: 1024x1024 {precision} matmul, 1 core" and line["precision"] == precision
    assert line["peak_tflops"] == line["matmul_tflops"] > 0
    assert line["mfu"] == pytest.approx(line["tflops"] / line["peak_tflops"], rel=1e-2)
    assert 0 < line["mfu"] <= 1, (line["setting"], line["impl"])


def _check_model_flops(measured: list) -> None:
    """Every line of a setting reports the same model FLOPs."""
    for setting in {line["setting"] for line in measured}:
        assert len({line["flops_per_step"] for line in measured if line["setting"] == setting}) == 1, setting


def _check_line_up(measured: list, notes: list) -> None:
    """Every setting has metarun's mappings, a plain loop or a note line saying there is none, and each optional
    peer measured or noted as missing."""
    for setting, spec in SETTINGS.items():
        found = {line["impl"] for line in measured if line["setting"] == setting}
        noted = {line["impl"] for line in notes if line["setting"] == setting}
        metarun_found = {impl for impl in found if impl.startswith("metarun-")}
        # every mapping auto chooses between on this machine (threads only with several cores)
        assert {"metarun-auto", "metarun-vmap", "metarun-loop"} <= metarun_found <= METARUN, setting
        assert ("metarun-loop-checkpoint" in found) == (spec["algo"] == "maml"), setting
        assert ("metarun-auto-joint" in found) == ("joint" in VARIANTS.get(setting, ())), setting
        assert ("metarun-vmap-chunk" in found) == ("vmap-chunk" in VARIANTS.get(setting, ())), setting
        assert len(found & LAYOUTS) == 1, setting
        # a CPU's bf16 line: with AMX, for the algorithms precision=auto was measured for
        assert ("metarun-auto-bf16" in found) == (hardware.has_amx() and spec["algo"] in CPU_BF16), setting
        peers = PEER_MAKERS.get(spec["algo"], {})
        assert ("plain" in found) == ("plain" in peers) != ("plain" in noted), setting
        for peer in set(peers) - {"plain"}:
            assert (peer in found) != (peer in noted), (setting, peer)
        assert found <= metarun_found | set(peers), setting


def test_quick_mode_measures_every_algorithm_with_its_flops_and_mfu(quick_run):
    lines, table, _, out = quick_run
    measured = [line for line in lines if "tasks_per_s" in line]
    assert {line["algo"] for line in measured} == ALGOS == {spec["algo"] for spec in SETTINGS.values()}
    assert {line["setting"] for line in measured} == set(SETTINGS)
    assert all(KEYS <= set(line) and line["tasks_per_s"] > 0 for line in measured)
    assert all(line["threads"] == line["cores"] == 1 and line["clock"] == "process" for line in measured)
    for line in measured:
        _check_flops(line)
    _check_model_flops(measured)
    _check_line_up(measured, [line for line in lines if "note" in line])
    assert all(line["chose"] in task_parallel.MAPPINGS for line in measured if line["impl"] == "metarun-auto")
    _check_best_peer(measured)
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    assert table[0] == "| setting | network | impl | tasks/s | vs best peer | TFLOP/s | MFU | peak MB |"
    with_peers = {line["setting"] for line in measured if line["best_peer"]}
    assert len(table) == 1 + len(measured)
    assert sum("| 1.00x |" in row and "**" in row for row in table) == len(with_peers)
    assert all(row.split(" | ")[6].endswith("%") for row in table[1:])


def test_quick_mode_adds_the_chunked_vmap_and_one_pass_lines(quick_run):
    lines = quick_run[0]
    (chunked,) = [line for line in lines if line.get("impl") == "metarun-vmap-chunk"]
    assert chunked["setting"] == "maml-omniglot-20w1s" and chunked["vmap_chunk"] == max(1, chunked["meta_batch"] // 4)
    assert chunked["peak_mem_mb"] is not None  # on Linux, where the tests run
    joint = {line["setting"]: line for line in lines if line.get("impl") == "metarun-auto-joint"}
    assert {"protonet-omniglot-60w1s", "protonet-miniimagenet-5w5s"} <= set(joint)
    assert all(line["embedding_pass"] == "joint" and line["chose"] in task_parallel.MAPPINGS for line in joint.values())


def test_quick_mode_times_the_evaluation_and_says_the_gpu_busy_fraction_is_cuda_only(quick_run):
    lines, _, printed, _ = quick_run
    (evaluated,) = [line for line in lines if line.get("kind") == "eval"]
    assert (evaluated["setting"], evaluated["episodes"], evaluated["test_inner_steps"]) == \
        ("maml-omniglot-5w1s", evaluation.EPISODES["quick"], 10)
    assert evaluated["mapping"] in task_parallel.MAPPINGS and evaluated["clock"] == "process"
    assert evaluated["episodes_per_s"] == pytest.approx(evaluated["episodes"] / evaluated["seconds"], rel=1e-2)
    (text,) = [line for line in printed if line.startswith("eval: ")]
    assert text.startswith("eval: 20 test episodes of maml-omniglot-5w1s (10 test inner steps") and \
        text.endswith(" episodes/s")
    assert "gpu-busy: CUDA only" in printed and not any(line.get("kind") == "gpu-busy" for line in lines)


def test_a_missing_peer_is_a_note_line_and_the_rest_is_measured(quick_run):
    lines = [line for line in quick_run[0] if line.get("setting") == "maml-omniglot-5w1s"]
    (note,) = [line for line in lines if line.get("impl") == "learn2learn"]
    assert "/nonexistent" in note["note"]
    assert "pip download --no-deps --no-binary :all: learn2learn==0.2.0" in note["note"]
    measured = [line for line in lines if "tasks_per_s" in line]
    assert {"plain", "metarun-auto"} <= {line["impl"] for line in measured}
    _check_best_peer(measured)


def test_every_algorithm_has_a_setting_and_a_plain_loop_or_a_note_saying_why_not():
    assert {spec["algo"] for spec in SETTINGS.values()} == ALGOS
    for algo in ALGOS:
        assert ("plain" in PEER_MAKERS.get(algo, {})) != (algo in NO_PLAIN), algo


@pytest.mark.parametrize("threads, cores, kept", [("1", 2, True), ("2", 2, False), ("all", 2, False),
                                                  ("all", 1, True)])
def test_the_freed_memory_is_kept_where_a_run_on_those_cores_keeps_it(threads, cores, kept, monkeypatch):
    bench = load_script(SCRIPT, "bench_script")
    calls = []
    monkeypatch.setattr(bench, "keep_freed_memory", lambda: calls.append("kept"))
    monkeypatch.setattr(bench, "use_huge_pages", lambda: None)  # the test process's allocator stays as it is
    monkeypatch.setattr(bench.os, "sched_setaffinity", lambda pid, chosen: None)
    monkeypatch.setattr(bench.torch, "set_num_threads", lambda count: None)
    monkeypatch.setattr(hardware, "available_cores", lambda: cores if threads == "all" else int(threads))
    bench.main(["--device", "cpu", "--threads", threads, "--settings", "none", "--extras", "none"])
    assert calls == (["kept"] if kept else [])


@pytest.fixture
def float64():
    """Double precision for the block, so implementations agree to rounding."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def _meta_gradient(impl) -> list:
    """The meta-gradient of every tensor the implementation learns that gets one, flat (the plain MAML++ loop's
    network keeps batch-norm weights it replaces with per-step ones; Meta-SGD's rates differ in shape only)."""
    impl.prepare()
    for p in impl.params:
        p.grad = None
    impl.backward()
    return [p.grad.flatten().clone() for p in impl.params if p.grad is not None]


def _check_parity(name: str) -> None:
    """Every implementation of setting ``name`` (quick, on the CPU) computes the plain loop's meta-gradient."""
    cpu = torch.device("cpu")
    setting = configured(name, cpu, quick=True)
    # one intra-op thread for the peers too: on a busy 2-core machine two make these tiny steps 100x slower
    options = Options(cpu, 1, 1, os.environ.get("METARUN_L2L"))
    impls, _ = implementations(setting, synthetic_batch(setting, cpu), options)
    expected = _meta_gradient(impls.pop("plain"))
    assert {"metarun-auto", "metarun-vmap", "metarun-loop"} <= set(impls)
    for impl_name, impl in impls.items():
        if impl.extra.get("embedding_pass", setting["embedding_pass"]) != setting["embedding_pass"]:
            continue  # another pass than the plain loop's: tests/algos/test_embedding_pass.py compares the two
        for got, want in zip(_meta_gradient(impl), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9, msg=lambda m, n=impl_name: f"{n}: {m}")


@pytest.mark.parametrize("name", [name for name, spec in SETTINGS.items() if spec["algo"] not in NO_PLAIN])
def test_every_implementation_computes_the_plain_loops_meta_gradient(name, float64):
    _check_parity(name)


@pytest.mark.parametrize("embedding_pass", ["joint", "separate"])
@pytest.mark.parametrize("name", [name for name, spec in SETTINGS.items()
                                  if spec["algo"] in ("protonet", "matchingnet", "relationnet", "r2d2")])
def test_the_metric_plain_loops_embed_an_episode_as_metarun_does(name, embedding_pass, float64, monkeypatch):
    # whichever pass conf/algo/ picks: the setting's value sets algo.embedding_pass, the plain loop follows it
    monkeypatch.setitem(SETTINGS, name, {**SETTINGS[name], "embedding_pass": embedding_pass})
    assert configured(name, torch.device("cpu"), quick=True)["embedding_pass"] == embedding_pass
    _check_parity(name)


def test_the_model_flops_are_the_per_task_loops_whichever_mapping_a_line_ran():
    # vmap's batched convolutions over each task's own weights count more for the same step: its MFU would pass 100%
    cpu = torch.device("cpu")
    setting = configured("maml-omniglot-5w1s", cpu, quick=True)
    batch, options = synthetic_batch(setting, cpu), Options(cpu, 1, 1, None)
    impls = {f"metarun-{mapping}": metarun(setting, batch, options, mapping, None)[0] for mapping in ("vmap", "loop")}
    impls["metarun-vmap"].prepare()
    vmapped = flops.count_flops(impls["metarun-vmap"].step)
    assert 0 < measure.model_flops(impls) < vmapped


def test_flops_of_a_linear_layer_and_a_convolution_are_the_hand_counts():
    linear, x = nn.Linear(3, 5), torch.randn(7, 3)
    assert flops.count_flops(lambda: linear(x)) == 2 * 3 * 5 * 7
    # backward: the weight's gradient, another product of the same size (the input needs none)
    assert flops.count_flops(lambda: linear(x).sum().backward()) == 2 * (2 * 3 * 5 * 7)
    conv = nn.Conv2d(2, 4, 3, padding=1)
    # every one of the 4 x 5 x 5 outputs is a dot product over 2 x 3 x 3 inputs
    assert flops.count_flops(lambda: conv(torch.randn(1, 2, 5, 5))) == 2 * (4 * 5 * 5) * (2 * 3 * 3)


def test_a_gpus_dense_peak_is_found_by_its_device_name():
    assert flops.table_peak("NVIDIA H100 80GB HBM3", "bf16") == (989.5, "table: H100 SXM bf16")
    assert flops.table_peak("NVIDIA H100 PCIe", "tf32") == (378.0, "table: H100 PCIe tf32")
    assert flops.table_peak("NVIDIA H200", "fp32") == (67.0, "table: H200 fp32")
    assert flops.table_peak("NVIDIA A100-SXM4-80GB", "fp16") == flops.table_peak("NVIDIA A100 80GB PCIe", "fp16")
    assert flops.table_peak("NVIDIA A100-PCIE-40GB", "tf32") == (156.0, "table: A100 tf32")
    # parts the table does not hold are measured instead
    for name in ("NVIDIA H100 NVL", "NVIDIA H200 NVL", "NVIDIA GeForce RTX 4090", "NVIDIA L40S"):
        assert flops.table_peak(name, "bf16") is None, name


def test_a_measured_matmul_peak_is_a_positive_flop_rate():
    assert flops.matmul_tflops(torch.device("cpu"), "fp32", 128, reps=2) > 0


def test_on_cuda_a_gpu_in_the_table_gets_its_datasheet_peak_and_another_the_measured_one(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(flops, "measured_peak", lambda device, precision, cores, size, clock: 700.0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    assert flops.peak(cuda, "bf16", 1, 8192, None) == (989.5, "table: H100 SXM bf16", 700.0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA L40S")
    assert flops.peak(cuda, "bf16", 1, 8192, None) == (700.0, "measured: 8192x8192 bf16 matmul", 700.0)


def test_a_lines_precision_is_its_autocast_and_fp32_on_cuda_runs_its_convolutions_in_tf32(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert (flops.precision_of("fp32", cpu), flops.precision_of("fp32", cuda), flops.precision_of("bf16", cuda)) == \
        ("fp32", "tf32", "bf16")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert flops.precision_of("fp32", cuda) == "fp32"



def test_the_gpus_busy_time_is_the_union_of_its_activities_intervals():
    assert gpu_busy.union_length([]) == 0
    # unsorted; overlapping (two streams), nested, touching and apart
    intervals = [(10, 20), (0, 4), (15, 30), (16, 18), (30, 35), (40, 41)]
    assert gpu_busy.union_length(intervals) == 4 + (35 - 10) + 1
    assert gpu_busy.busy_fraction(intervals, 50) == 30 / 50
    assert gpu_busy.busy_fraction([(0, 5), (0, 5)], 5) == 1


def test_the_gpus_activities_are_the_cuda_events_of_the_profile_without_annotations():
    def event(device, start, end, annotation=False):
        return SimpleNamespace(device_type=device, time_range=SimpleNamespace(start=start, end=end),
                               is_user_annotation=annotation)

    events = [event(DeviceType.CPU, 0, 100), event(DeviceType.CUDA, 5, 9), event(DeviceType.CUDA, 0, 100, True),
              event(DeviceType.CUDA, 20, 21)]
    assert gpu_busy.device_intervals(events) == [(5, 9), (20, 21)]


def _cuda_options() -> Options:
    return Options(torch.device("cuda"), torch.get_num_threads(), "auto", None, flops.MATMUL_SIZE["quick"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_profiler_sees_the_gpu_busy_over_training_iterations():
    line = gpu_busy.measure_gpu_busy(_cuda_options(), quick=True)
    assert line["iterations"] == gpu_busy.ITERATIONS["quick"] and line["chose"] == "vmap" and "note" not in line
    assert 0 < line["busy_fraction"] <= 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_evaluation_maps_its_episodes_with_vmap_and_times_its_cuda_graphs_too():
    import bench  # the script's own module: its eval_text prints the line
    line = evaluation.time_evaluation(_cuda_options(), quick=True)
    assert (line["mapping"], line["episodes"], line["test_inner_steps"]) == ("vmap", evaluation.EPISODES["quick"], 10)
    assert line["episodes_per_s_graphs"] == pytest.approx(line["episodes"] / line["seconds_graphs"], rel=1e-2)
    assert "with CUDA graphs: " in bench.eval_text(line)
