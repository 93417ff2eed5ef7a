"""scripts/bench.py: --quick measures every implementation of every setting against the peers present, and the
peers compute the same meta-gradient as the plain loop (so the benchmark compares the same work): MAML's and
iMAML's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metarun.mapping import task_parallel

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"
# benchkit, the script's package, found as when the script runs (Python puts the script's folder on sys.path)
sys.path.insert(0, str(SCRIPT.parent))
from benchkit.impl import Options  # noqa: E402
from benchkit.implementations import PEERS, implementations  # noqa: E402
from benchkit.settings import SETTINGS, configured, synthetic_batch  # noqa: E402

KEYS = {"impl", "algo", "setting", "device", "network", "tasks_per_s", "peak_mem_mb", "threads", "clock",
        "best_peer", "vs_best_peer"}
OPTIONAL_PEERS = {"maml": ("learn2learn", "higher", "torchopt"), "imaml": ("torchopt",)}
METARUN = {"metarun-auto", "metarun-loop-checkpoint", *(f"metarun-{mapping}" for mapping in task_parallel.MAPPINGS)}


def _run(*args, out=None):
    """Run the script in quick mode on one CPU thread; returns (JSON lines, table rows)."""
    command = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--threads", "1", *args]
    done = subprocess.run(command + (["--out", str(out)] if out else []), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return lines, [row for row in done.stdout.splitlines() if row.startswith("| ")]


def _check_best_peer(measured: list) -> None:
    """Each line's best peer is the fastest peer measured on its setting, and vs_best_peer the ratio to it."""
    for setting in {line["setting"] for line in measured}:
        these = [line for line in measured if line["setting"] == setting]
        peers = {line["impl"]: line["tasks_per_s"] for line in these if line["impl"] in PEERS}
        best = max(peers, key=peers.get)
        for line in these:
            assert line["best_peer"] == best, (setting, line["impl"])
            assert line["vs_best_peer"] == pytest.approx(line["tasks_per_s"] / peers[best], rel=1e-2, abs=2e-3)


def test_quick_mode_measures_every_implementation_of_every_setting(tmp_path):
    lines, table = _run(out=tmp_path / "bench.jsonl")
    measured = [line for line in lines if "tasks_per_s" in line]
    notes = [line for line in lines if "note" in line]
    assert all(KEYS <= set(line) and line["tasks_per_s"] > 0 for line in measured)
    assert all(line["threads"] == 1 and line["clock"] == "process" for line in measured)
    assert {line["setting"] for line in measured} == set(SETTINGS)
    for setting, spec in SETTINGS.items():
        found = {line["impl"] for line in measured if line["setting"] == setting}
        noted = {line["impl"] for line in notes if line["setting"] == setting}
        metarun = {impl for impl in found if impl.startswith("metarun-")}
        # every mapping auto chooses between on this machine (threads only with several cores)
        assert {"metarun-auto", "metarun-vmap", "metarun-loop"} <= metarun <= METARUN, setting
        if spec["algo"] in OPTIONAL_PEERS:
            assert "plain" in found and ("metarun-loop-checkpoint" in found) == (spec["algo"] == "maml"), setting
            # an optional peer is measured when it loads, otherwise a note line says why it was skipped
            for peer in OPTIONAL_PEERS[spec["algo"]]:
                assert (peer in found) != (peer in noted), (setting, peer)
            assert found <= METARUN | {"plain", *OPTIONAL_PEERS[spec["algo"]]}, setting
        else:
            assert found == metarun | {"plain"} and not noted, setting
    assert all(line["chose"] in task_parallel.MAPPINGS for line in measured if line["impl"] == "metarun-auto")
    _check_best_peer(measured)
    assert [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()] == lines
    assert table[0] == "| setting | network | impl | tasks/s | vs best peer | peak MB |"
    assert len(table) == 1 + len(measured) and sum("| 1.00x |" in row and "**" in row for row in table) == 6


def test_a_missing_peer_is_a_note_line_and_the_rest_is_measured():
    lines, _ = _run("--settings", "maml-omniglot-5w1s", "--learn2learn", "/nonexistent")
    (note,) = [line for line in lines if line.get("impl") == "learn2learn"]
    assert note["setting"] == "maml-omniglot-5w1s" and "/nonexistent" in note["note"]
    assert "pip download --no-deps --no-binary :all: learn2learn==0.2.0" in note["note"]
    measured = [line for line in lines if "tasks_per_s" in line]
    assert {"plain", "metarun-auto"} <= {line["impl"] for line in measured}
    _check_best_peer(measured)


@pytest.fixture
def float64():
    """Double precision for the block, so implementations agree to rounding."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def _meta_gradient(impl) -> list:
    impl.prepare()
    for p in impl.params:
        p.grad = None
    impl.backward()
    return [p.grad.clone() for p in impl.params]


@pytest.mark.parametrize("name", [name for name, spec in SETTINGS.items() if spec["algo"] in OPTIONAL_PEERS])
def test_every_implementation_computes_the_plain_loops_meta_gradient(name, float64):
    cpu = torch.device("cpu")
    setting = configured(name, cpu, quick=True)
    # one intra-op thread for the peers too: on a busy 2-core machine two make these tiny steps 100x slower
    options = Options(cpu, 1, 1, os.environ.get("METARUN_L2L"))
    impls, _ = implementations(setting, synthetic_batch(setting, cpu), options)
    expected = _meta_gradient(impls.pop("plain"))
    assert {"metarun-auto", "metarun-vmap", "metarun-loop"} <= set(impls)
    assert ("metarun-loop-checkpoint" in impls) == (setting["algo"] == "maml")
    for impl_name, impl in impls.items():
        for got, want in zip(_meta_gradient(impl), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9, msg=lambda m, n=impl_name: f"{n}: {m}")
