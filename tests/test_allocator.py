"""Huge pages for torch's large CPU tensors: asked for by the ``metarun`` command, ``metarun.run`` and
``load_learner`` before torch allocates, never by importing metarun, which changes no environment variable and no
torch global. On one CPU core glibc's heap keeps freed memory (``keep_freed_memory``), unless the user set glibc's
allocator."""

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from metarun.runner import cli
from metarun.utils import hardware
from metarun.utils.allocator import SETTING
from tests.conftest import compose_config

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# page faults of allocating and filling a 64 MiB tensor, after asking for huge pages (or not)
FAULTS = """
import resource, sys
if sys.argv[1] == "asked":
    from metarun.utils.allocator import use_huge_pages
    use_huge_pages()
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(16 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
# what importing metarun's modules (the CLI's, the notebook API's, the learner's) leaves in the process
IMPORTS = """
import json, os, torch
state = lambda: (dict(os.environ), torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                 torch.backends.cuda.matmul.allow_tf32, torch.get_default_dtype().__repr__())
before = state()
import metarun, metarun.runner.cli, metarun.api, metarun.learner, metarun.runner.train, metarun.config.store
after = state()
print(json.dumps({"environment": sorted(set(after[0].items()) ^ set(before[0].items())),
                  "torch": [a for a, b in zip(after[1:], before[1:]) if a != b]}))
"""

# the memory given back to the system when a 64 MiB tensor is freed, after keeping freed memory (or not)
GIVEN_BACK = """
import os, sys
from metarun.utils.allocator import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "kept" else "-")
import torch
resident = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
held = torch.ones(16 * 2**20)
before = resident()
del held
print(before - resident())
"""
GLIBC = platform.libc_ver()[0] == "glibc"


def fresh(script: str, how: str, **env) -> list:
    """The words ``script`` prints in a fresh process, given ``how`` and only ``env`` besides an empty PATH."""
    done = subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True, check=True,
                          env={"PATH": "", **env})
    return done.stdout.split()


def faults(how: str, **env) -> int:
    """Minor page faults of one 64 MiB tensor in a fresh process that asks for huge pages (``asked``) or not."""
    count, = fresh(FAULTS, how, **env)
    return int(count)


@pytest.mark.skipif(not THP.is_file() or not re.search(r"\[(always|madvise)\]", THP.read_text()),
                    reason="the kernel offers no transparent huge pages")
def test_asking_for_huge_pages_cuts_page_faults_unless_the_environment_says_no():
    assert faults("not") > 10_000  # one per 4 KiB page
    assert faults("asked") < 1_000  # one per 2 MiB page
    assert faults("asked", THP_MEM_ALLOC_ENABLE="0") > 10_000


def test_importing_metarun_changes_no_environment_variable_and_no_torch_global():
    done = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {"environment": [], "torch": []}


def test_the_command_asks_for_huge_pages_first(monkeypatch, capsys):
    monkeypatch.setenv(SETTING, "unset below; restored after the test")
    monkeypatch.delenv(SETTING)
    monkeypatch.setattr(sys, "argv", ["metarun", "--version"])
    cli.main()
    assert os.environ[SETTING] == "1" and capsys.readouterr().out.startswith("metarun ")


def given_back(how: str, **env) -> tuple[str, int]:
    """What ``keep_freed_memory`` returned (``kept``) and the bytes given back to the system on freeing a 64 MiB
    tensor, in a fresh process."""
    took, count = fresh(GIVEN_BACK, how, **env)
    return took, int(count)


@pytest.mark.skipif(not GLIBC or not Path("/proc/self/statm").is_file(), reason="keep_freed_memory sets glibc's "
                    "allocator; the test reads Linux's /proc")
def test_kept_memory_stays_with_the_process_unless_the_user_set_glibc():
    assert given_back("not")[1] > 60 * 2**20  # glibc maps a block this large afresh, and unmaps it when freed
    took, back = given_back("kept")
    assert took == "True" and back < 4 * 2**20
    for own in ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, {"MALLOC_MMAP_MAX_": "65536"}):
        took, back = given_back("kept", **own)
        assert took == "False" and back > 60 * 2**20


@pytest.mark.parametrize("device, overrides, cores, kept", [
    ("cpu", ["hardware.num_threads=1"], 2, True), ("cpu", [], 1, True),  # one thread, or one core to the job
    ("cpu", [], 2, False), ("cpu", ["hardware.num_threads=2"], 8, False),  # the threads mapping's arenas
    ("cpu", ["hardware.keep_freed_memory=true"], 8, True), ("cpu", ["hardware.keep_freed_memory=false"], 1, False),
    ("cuda", ["hardware.num_threads=1"], 1, False), ("cuda", ["hardware.keep_freed_memory=true"], 1, False),
])
def test_configure_keeps_freed_memory_on_one_cpu_core_or_as_told(monkeypatch, device, overrides, cores, kept):
    calls = []
    monkeypatch.setattr(hardware, "keep_freed_memory", lambda: calls.append("kept"))
    monkeypatch.setattr(hardware, "available_cores", lambda: cores)
    monkeypatch.setattr(hardware, "resolve_device", lambda _: torch.device(device))
    before = torch.get_num_threads()
    try:
        hardware.configure(compose_config(overrides).hardware, seed=0)
    finally:
        torch.set_num_threads(before)
    assert calls == (["kept"] if kept else [])


def test_a_checkpoint_config_from_before_the_setting_keeps_freed_memory_as_auto_does():
    one_thread = compose_config(["hardware.num_threads=1"]).hardware
    with open_dict(one_thread):
        del one_thread["keep_freed_memory"]
    assert hardware.keeps_freed_memory(one_thread, torch.device("cpu"))
