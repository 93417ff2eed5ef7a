"""TaskBatch: the one type that flows from a sampler to an algorithm."""

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class TaskBatch:
    """A meta-batch of T tasks, each with a support set of S and a query set of Q examples.

    Attributes:
        support_x: [T, S, *input_shape] float inputs (images already normalised).
        support_y: [T, S] class indices (int64) or [T, S, out] regression targets (float).
        query_x: [T, Q, *input_shape].
        query_y: [T, Q] or [T, Q, out].
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @property
    def num_tasks(self) -> int:
        """Number of tasks T in the batch."""
        return self.support_x.shape[0]

    def tensors(self) -> tuple:
        """(support_x, support_y, query_x, query_y)."""
        return tuple(getattr(self, f.name) for f in fields(self))

    @staticmethod
    def cat(batches: list) -> "TaskBatch":
        """Concatenate batches along the task dimension."""
        return TaskBatch(*(torch.cat(parts) for parts in zip(*(b.tensors() for b in batches))))
