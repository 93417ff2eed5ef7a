"""Thread sizing: the cores a job may use, and torch's intra-op threads for ``hardware.num_threads``."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

from metarun.models import build_model
from metarun.runner.components import build_components
from metarun.runner.train import run
from metarun.utils import hardware
from tests.conftest import compose_config
from tests.synthetic import image_config


@pytest.fixture
def eight_cores(monkeypatch):
    """A process allowed on 8 cores, with no sweep or torchrun beside it."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv(hardware.PARALLEL_JOBS, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


@pytest.mark.parametrize("jobs, ranks, cores", [(None, None, 8), ("2", None, 4), ("3", None, 2), ("16", None, 1),
                                                (None, "4", 2), ("2", "2", 2)])
def test_available_cores_divides_the_affinity_among_the_jobs_and_ranks_beside_it(eight_cores, monkeypatch, jobs,
                                                                                 ranks, cores):
    for name, value in ((hardware.PARALLEL_JOBS, jobs), ("LOCAL_WORLD_SIZE", ranks)):
        if value is not None:
            monkeypatch.setenv(name, value)
    assert hardware.available_cores() == cores


def test_available_cores_counts_all_cores_where_affinity_is_unknown(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.setenv(hardware.PARALLEL_JOBS, "2")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert hardware.available_cores() == 3


def model(overrides, input_shape, output_dim):
    """The network a run with ``overrides`` builds for its dataset's shapes."""
    return build_model(compose_config(overrides).model, input_shape, output_dim)


def test_auto_threads_are_one_for_the_sinusoid_mlp_and_the_free_cores_for_conv4(eight_cores, monkeypatch):
    monkeypatch.setenv(hardware.PARALLEL_JOBS, "2")
    auto = SimpleNamespace(num_threads="auto")
    assert hardware.intra_op_threads(auto, model([], (1,), 1)) == 1
    assert hardware.intra_op_threads(auto, model(["dataset=omniglot"], (1, 28, 28), 5)) == 4


def test_a_given_thread_count_is_kept_whatever_the_model(eight_cores):
    conv4 = model(["dataset=omniglot"], (1, 28, 28), 5)
    assert hardware.intra_op_threads(SimpleNamespace(num_threads=3), conv4) == 3


def test_configure_sets_a_given_thread_count_and_leaves_auto_to_the_engine():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        hardware.configure(compose_config(["hardware.device=cpu"]).hardware, seed=0)
        assert torch.get_num_threads() == 2
        hardware.configure(compose_config(["hardware.device=cpu", "hardware.num_threads=1"]).hardware, seed=0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.fixture(params=[True, False], ids=["amx", "no-amx"])
def amx(request, monkeypatch):
    """A CPU where torch does or does not run bf16 on AMX tiles (oneDNN's fast bf16 convolutions)."""
    monkeypatch.setattr(hardware, "has_amx", lambda: request.param)
    return request.param


@pytest.mark.parametrize("isa, capability, amx", [
    ("ALL", "AVX512", True), ("AVX512_CORE_AMX", "AVX512", True),  # torch may use the tiles
    ("SSE41", "AVX512", False), ("AVX512_CORE_BF16", "AVX512", False),  # oneDNN held below AMX
    ("ALL", "DEFAULT", False), ("ALL", "AVX2", False),  # ATEN_CPU_CAPABILITY held below AVX-512
])
def test_amx_counts_only_where_torch_may_use_it(monkeypatch, isa, capability, amx):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert hardware.has_amx() == amx
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # a CPU without tiles
    assert not hardware.has_amx()


def test_auto_precision_is_bf16_only_where_it_was_measured_faster_at_the_same_accuracy(amx):
    auto = SimpleNamespace(precision="auto")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for measured_same in ("protonet", "matchingnet", "relationnet", "r2d2", "metaoptnet_svm"):
        assert hardware.precision(auto, cpu, measured_same) == ("bf16" if amx else "fp32")
    assert hardware.precision(auto, cpu, "maml") == "fp32"  # 4 points lower in bf16
    assert hardware.precision(auto, cpu, "baseline") == "fp32"  # half a point lower in bf16
    assert hardware.precision(auto, cpu, "anil") == "fp32"  # not measured
    assert hardware.precision(auto, cuda, "protonet") == "fp32"  # GPUs: not measured yet
    for given in ("fp32", "bf16"):
        assert hardware.precision(SimpleNamespace(precision=given), cpu, "maml") == given


def test_a_run_with_auto_precision_autocasts_and_records_what_it_resolved_to(amx, tmp_path):
    cfg = image_config(["algo=protonet", "hardware.precision=auto", "train.iterations=4"], output_dir=tmp_path)
    with build_components(cfg).autocast():
        assert torch.is_autocast_enabled("cpu") == amx
        assert not amx or torch.get_autocast_dtype("cpu") == torch.bfloat16
    run(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["hardware/precision"] == ("bf16" if amx else "fp32")
