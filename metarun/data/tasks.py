"""TaskBatch: the one type that flows from a sampler to an algorithm."""

from dataclasses import dataclass

import torch

# the label of a padding example: a ragged batch (episodes of different ways and shots, Meta-Dataset's) pads
# every task's support and query sets to the batch's largest with examples of this label, which no loss, metric
# or class summary counts (``metarun.mapping.ragged``)
PAD = -1


@dataclass(frozen=True)
class TaskBatch:
    """A meta-batch of T tasks, each with a support set of S and a query set of Q examples.

    Attributes:
        support_x: [T, S, *input_shape] float inputs (images already normalised).
        support_y: [T, S] class indices (int64) or [T, S, out] regression targets (float).
        query_x: [T, Q, *input_shape].
        query_y: [T, Q] or [T, Q, out].
        padded: some tasks are smaller than S or Q: their last examples are padding, labelled ``PAD``.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    padded: bool = False

    @property
    def num_tasks(self) -> int:
        """Number of tasks T in the batch."""
        return self.support_x.shape[0]

    def tensors(self) -> tuple:
        """(support_x, support_y, query_x, query_y)."""
        return self.support_x, self.support_y, self.query_x, self.query_y

    def tasks(self, start: int, stop: int) -> "TaskBatch":
        """Tasks ``start .. stop-1`` as a batch."""
        return TaskBatch(*(t[start:stop] for t in self.tensors()), padded=self.padded)

    def task(self, index: int) -> tuple:
        """Task ``index``'s (support_x, support_y, query_x, query_y), without its padding."""
        sx, sy, qx, qy = (t[index] for t in self.tensors())
        if not self.padded:
            return sx, sy, qx, qy
        support, query = sy != PAD, qy != PAD  # padding comes last, so the real examples are a prefix
        s, q = int(support.sum()), int(query.sum())
        return sx[:s], sy[:s], qx[:q], qy[:q]

    @staticmethod
    def cat(batches: list) -> "TaskBatch":
        """Concatenate batches along the task dimension, padding sets of different sizes to the largest."""
        sizes = {(b.support_x.shape[1], b.query_x.shape[1]) for b in batches}
        if len(sizes) == 1:
            return TaskBatch(*(torch.cat(parts) for parts in zip(*(b.tensors() for b in batches))),
                             padded=any(b.padded for b in batches))
        support, query = (max(size[i] for size in sizes) for i in (0, 1))
        grown = [b.padded_to(support, query) for b in batches]
        return TaskBatch(*(torch.cat(parts) for parts in zip(*(b.tensors() for b in grown))), padded=True)

    def padded_to(self, support: int, query: int) -> "TaskBatch":
        """The batch with its support and query sets padded to ``support`` and ``query`` examples (inputs zero,
        labels ``PAD``)."""

        def grow(x, y, size):
            extra = size - x.shape[1]
            if extra == 0:
                return x, y
            zeros = x.new_zeros(x.shape[0], extra, *x.shape[2:])
            pads = y.new_full((y.shape[0], extra, *y.shape[2:]), PAD)
            return torch.cat([x, zeros], 1), torch.cat([y, pads], 1)

        return TaskBatch(*grow(self.support_x, self.support_y, support), *grow(self.query_x, self.query_y, query),
                         padded=True)
