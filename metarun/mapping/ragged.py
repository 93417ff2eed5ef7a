"""Ragged meta-batches: episodes of different ways and shots in one ``TaskBatch`` (Meta-Dataset's variable
episodes, ``dataset.episodes=variable``).

A sampler pads every task's support and query sets to the batch's largest with examples labelled ``PAD``. The
loop and threads mappings run each task without its padding (``TaskBatch.task``). Under vmap the tasks stay padded,
and every part of a task's computation counts its real examples only, so its loss and gradients are the
unpadded task's:
- the losses and metrics skip ``PAD`` labels (``metarun.algos.objectives``), and a class summary (a prototype)
  gives padding no class (``metarun.algos.classes.support_onehot``);
- batch norm's statistics skip padded rows (``episode_forward`` marks them for each forward pass);
- a fixed head (the MAML family's, of ``dataset.ways`` outputs, the largest way count) scores only the
  episode's own classes: the logits of the others are -inf, so a 5-way episode is a 5-way problem.
Algorithms whose computation mixes examples in other ways (attention over the support set, a ridge regression)
declare ``Algorithm.pads=False`` and run variable episodes in the loop or threads only.
"""

import torch

from metarun.data.tasks import PAD
from metarun.models.batchnorm import real_rows
from metarun.models.transforms import under_vmap


def episode_forward(forward, support_x, support_y, query_x, query_y, head_width=None):
    """``forward(params, x)`` (and its ``embed``) as one variable-size episode's functions call it.

    Args:
        query_y: the query labels, or None where there are none (few-shot inference): the queries are then real.
        head_width: the outputs of the network's fixed head (the largest way count), whose columns past the
            episode's classes (labels 0 .. N-1 of ``support_y``) are masked to -inf; None: no fixed head.
    """
    # the inputs an algorithm passes are the episode's own tensors, found by identity; under vmap they are padded
    rows = {id(support_x): support_y != PAD, id(query_x): None if query_y is None else query_y != PAD} \
        if under_vmap() else {}
    absent = None
    if head_width is not None:
        absent = torch.arange(head_width, device=support_y.device) > support_y.max()

    def on_real_rows(network):
        def run(params, x):
            with real_rows(rows.get(id(x))):
                return network(params, x)
        return run

    def logits(params, x):
        out = on_real_rows(forward)(params, x)
        return out if absent is None else out.masked_fill(absent, float("-inf"))

    if hasattr(forward, "embed"):
        logits.embed = on_real_rows(forward.embed)
    return logits
