"""Importing metarun gives torch's large CPU tensors transparent huge pages (far fewer page faults)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# page faults of allocating and filling a 64 MiB tensor, after importing metarun (or not)
FAULTS = """
import resource, sys
if sys.argv[1] == "metarun":
    import metarun
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(16 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(first: str, **env) -> int:
    """Minor page faults of one 64 MiB tensor in a fresh process that imports ``first`` before torch."""
    done = subprocess.run([sys.executable, "-c", FAULTS, first], capture_output=True, text=True, check=True,
                          env={"PATH": "", **env})
    return int(done.stdout)


@pytest.mark.skipif(not THP.is_file() or not re.search(r"\[(always|madvise)\]", THP.read_text()),
                    reason="the kernel offers no transparent huge pages")
def test_metarun_asks_torch_for_huge_pages_unless_the_environment_says_no():
    assert faults("torch") > 10_000  # one per 4 KiB page
    assert faults("metarun") < 1_000  # one per 2 MiB page
    assert faults("metarun", THP_MEM_ALLOC_ENABLE="0") > 10_000
