"""Data parallelism over tasks under ``torchrun`` (``hardware=ddp``): each rank meta-trains on its share of the
meta-batch and scores its share of the evaluation episodes; gradients and results are summed across ranks."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from metarun.data.tasks import TaskBatch
from metarun.utils.errors import RunError

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Group:
    """This process's place among ``world`` ranks; a world of 1 is the plain single-process run."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # where collectives run: NCCL reduces CUDA tensors only

    @property
    def is_main(self) -> bool:
        """Whether this rank logs, writes results and checkpoints (rank 0)."""
        return self.rank == 0

    def block(self, count: int) -> range:
        """This rank's contiguous share of indices ``0 .. count-1``, in rank order so gathering keeps the order."""
        per = -(-count // self.world)
        return range(min(self.rank * per, count), min((self.rank + 1) * per, count))

    def shard(self, batch: TaskBatch) -> TaskBatch:
        """This rank's tasks of a meta-batch that every rank drew identically."""
        share = self.block(batch.num_tasks)
        return batch.tasks(share.start, share.stop)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over ranks, in place."""
        if self.world > 1:
            torch_dist.all_reduce(tensor)
        return tensor

    def reduce_gradients(self, params: dict) -> None:
        """Sum each parameter's gradient over ranks; with per-rank losses divided by the whole meta-batch's size
        the sum is the single-process mean-over-tasks gradient, however unevenly the tasks split."""
        if self.world > 1:
            for p in params.values():
                torch_dist.all_reduce(p.grad)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank, so that all ranks stop at the same iteration (e.g. on a signal)."""
        if self.world == 1:
            return flag
        return bool(self.sum(torch.tensor(float(flag), device=self.device)) > 0)

    def gather(self, chunks: list) -> list:
        """Every rank's list of tensors, concatenated in rank order (on the CPU when there are several ranks)."""
        if self.world == 1:
            return chunks
        everyone = [None] * self.world
        torch_dist.all_gather_object(everyone, [c.cpu() for c in chunks])
        return [c for part in everyone for c in part]

    def barrier(self) -> None:
        """Wait for every rank (e.g. until rank 0 has written a checkpoint the others read)."""
        if self.world > 1:
            torch_dist.barrier()


def setup(cfg, run_dir: str) -> Group:
    """Join torchrun's process group when ``hardware.distributed`` is set; else the single-process group.

    Args:
        cfg: the ``hardware`` config.
        run_dir: this rank's ``paths.output_dir``; every rank must name the same one, as they share its checkpoints.
    """
    if not cfg.distributed:
        return Group()
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise RunError(f"hardware=ddp needs torchrun's environment ({', '.join(missing)} unset); launch with "
                       "torchrun --nproc_per_node=N -m metarun.runner.cli hardware=ddp hydra.run.dir=DIR ...")
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = cfg.device != "cpu" and torch.cuda.is_available()
    if cuda:
        # torch.device("cuda") then means this rank's own GPU
        torch.cuda.set_device(local_rank)
    torch_dist.init_process_group("nccl" if cuda else "gloo")
    group = Group(torch_dist.get_rank(), torch_dist.get_world_size(), "cuda" if cuda else "cpu")
    dirs = [None] * group.world
    torch_dist.all_gather_object(dirs, str(run_dir))
    if len(set(dirs)) > 1:
        close(group)
        raise RunError(f"ranks disagree on the run directory ({' vs '.join(sorted(set(dirs)))}: Hydra's default "
                       "is timestamped); pass hydra.run.dir=DIR to torchrun's command")
    return group


def close(group: Group) -> None:
    """Leave the process group (torch warns at exit about a group left open)."""
    if group.world > 1:
        torch_dist.destroy_process_group()
