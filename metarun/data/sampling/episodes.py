"""Seeds for fixed evaluation episodes, shared by every dataset."""

import zlib

import torch

from metarun.data.tasks import TaskBatch

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def episode_generator(split: str, seed: int, index: int, device: torch.device) -> torch.Generator:
    """A generator whose stream depends only on (split, seed, index), never on the training stream."""
    code = SPLIT_CODES.get(split, zlib.crc32(split.encode()))
    # distinct 64-bit seeds per (split, seed, index); a hash keeps nearby indices uncorrelated
    mixed = zlib.crc32(f"{code}:{seed}:{index}".encode()) | (index << 32)
    generator = torch.Generator(device=device)
    generator.manual_seed(mixed)
    return generator


def fixed_episodes(draw, split: str, seed: int, first: int, count: int, device: torch.device):
    """Episodes ``first .. first+count-1`` of ``split``, each ``draw(generator)`` with its own (split, seed, index)
    generator, concatenated into one TaskBatch."""
    return TaskBatch.cat([draw(episode_generator(split, seed, index, device)) for index in range(first, first + count)])
