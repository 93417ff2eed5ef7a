"""Huge pages for torch's large CPU tensors, asked for before torch allocates anything: the first step of the
``metarun`` command, ``metarun.run`` and ``load_learner`` (importing metarun changes nothing).

glibc serves large blocks with a fresh ``mmap`` and unmaps them when they are freed, so every training step
faults its large activations in again, one 4 KiB page at a time: on our CPU that was about 40% of a ProtoNet
60-way step (140,000 page faults). torch backs blocks of 2 MiB and more with transparent huge pages when
``THP_MEM_ALLOC_ENABLE=1`` (read once, at its first CPU allocation), which cuts those faults 512-fold and
leaves peak memory as it was. It takes effect where the kernel's transparent huge pages are ``always`` or
``madvise`` (most Linux distributions); elsewhere the setting does nothing.

On one core the faults that remain cost more than the memory they save, and ``hardware.configure`` has glibc keep
what a step frees (``keep_freed_memory``), for the rest of the process.
"""

import ctypes
import os

SETTING = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> None:
    """Ask torch for transparent huge pages on large CPU blocks, unless the environment already decided; it takes
    effect only before the process's first CPU tensor."""
    os.environ.setdefault(SETTING, "1")


# glibc's mallopt parameters (malloc.h); mallopt takes a C int, so 2 GiB - 1 is the largest trim threshold
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
NEVER_TRIM = 2**31 - 1
# the environment variables by which a user gives glibc's allocator settings of their own
GLIBC_MALLOC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """On glibc, serve every block from the heap and keep what is freed there, so that a step reuses the pages of
    the step before instead of faulting fresh ones in (docs/speed.md, "Page faults on one core"). Leaves the
    allocator alone where the user set glibc's malloc settings (``GLIBC_TUNABLES`` or ``MALLOC_*_``) or the C
    library is not glibc. Returns whether the settings took.

    Huge pages cut each fault's cost, but glibc still maps blocks above its moving threshold afresh and unmaps them
    when freed, and trims the heap's free top: long MAML runs on one core ran 1.16-1.22x faster without that (kernel
    time 136-158 s to 2 s), for 8-14% more peak memory.
    """
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or any(map(os.environ.get, GLIBC_MALLOC_VARIABLES)):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no C library to load (Windows), or one without mallopt (macOS)
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
