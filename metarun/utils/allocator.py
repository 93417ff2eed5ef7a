"""Huge pages for torch's large CPU tensors, asked for before torch allocates anything: the first step of the
``metarun`` command, ``metarun.run`` and ``load_learner`` (importing metarun changes nothing).

glibc serves large blocks with a fresh ``mmap`` and unmaps them when they are freed, so every training step
faults its large activations in again, one 4 KiB page at a time: on our CPU that was about 40% of a ProtoNet
60-way step (140,000 page faults). torch backs blocks of 2 MiB and more with transparent huge pages when
``THP_MEM_ALLOC_ENABLE=1`` (read once, at its first CPU allocation), which cuts those faults 512-fold and
leaves peak memory as it was. It takes effect where the kernel's transparent huge pages are ``always`` or
``madvise`` (most Linux distributions); elsewhere the setting does nothing.
"""

import os

SETTING = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> None:
    """Ask torch for transparent huge pages on large CPU blocks, unless the environment already decided; it takes
    effect only before the process's first CPU tensor."""
    os.environ.setdefault(SETTING, "1")
