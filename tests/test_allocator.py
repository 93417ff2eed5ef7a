"""Huge pages for torch's large CPU tensors: asked for by the ``metarun`` command, ``metarun.run`` and
``load_learner`` before torch allocates, never by importing metarun, which changes no environment variable and no
torch global."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from metarun.runner import cli
from metarun.utils.allocator import SETTING

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


def faults(how: str, **env) -> int:
    """Minor page faults of one 64 MiB tensor in a fresh process that asks for huge pages (``asked``) or not."""
    done = subprocess.run([sys.executable, "-c", FAULTS, how], capture_output=True, text=True, check=True,
                          env={"PATH": "", **env})
    return int(done.stdout)


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
