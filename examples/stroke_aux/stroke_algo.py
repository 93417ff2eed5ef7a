"""Prototypical Networks with a stroke-prediction auxiliary loss, an algorithm defined outside metarun
(``algo._target_=stroke_algo.ALGORITHM``), for the meta-training batches of stroke_data.py.

Besides ProtoNet's loss on the queries, the network predicts, for every meta-training image, the maps of the pen's
trajectory behind it (stroke_data.py: where strokes start and end, the pen's movement, the stroke order), averaged
over cells (7 x 7 of them): from the embedding through a linear decoder (``predict_from=embedding``), or from the
second block's feature map through a 1x1 convolution (``predict_from=block2``, Conv-4 only: a dense, local
prediction). The loss adds ``weight`` times the mean squared error of the prediction. Self-supervised auxiliary
losses helped few-shot learners before (Gidaris et al., 2019, "Boosting Few-Shot Visual Learning with
Self-Supervision", ICCV; Su et al., 2020, "When Does Self-supervision Improve Few-shot Learning?", ECCV); here the
supervision is the strokes people drew, which the challenge allows for learning. Validation and meta-test images
carry no maps and are scored as ProtoNet scores them.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from stroke_data import CHANNELS

from metarun.algos import protonet
from metarun.algos.base import Algorithm
from metarun.algos.embedding import embed_episode
from metarun.config import choice, setting
from metarun.config.algos import EmbeddingConfig

WEIGHT, BIAS = "meta/strokes_weight", "meta/strokes_bias"  # the decoder; "meta/" tensors never reach forward
GRID = 7  # the embedding's decoder predicts the maps on a grid of GRID x GRID cells (4 x 4 pixels at 28 px)
BLOCKS = 4  # Conv-4: parameters "4b.weight" (convolution) and "4b+1.weight" (batch norm) of block b


@dataclass
class StrokeAuxConfig(EmbeddingConfig):
    """The settings of ``algo._target_=stroke_algo.ALGORITHM`` (``algo.*``), validated when a run starts."""

    _target_: str = "stroke_algo.ALGORITHM"
    name: str = "stroke_aux"
    weight: float = setting(1.0, help="the auxiliary loss's weight (0: ProtoNet's loss alone)")
    predict_from: str = choice("embedding", "block2", help="embedding: a linear decoder from the embedding; block2: "
                                                           "a 1x1 convolution from Conv-4's second block")


def check(run_cfg) -> None:
    """Refuse what the prediction cannot run on, in one line naming the key."""
    settings = run_cfg.algo
    if settings.weight < 0:
        raise ValueError(f"algo.weight={settings.weight} is negative; set it to 0 or more (1 by default)")
    model = run_cfg.model
    conv4_net = model._target_ == "metarun.models.conv4.Conv4" and (model.max_pool, model.depth, model.norm) == (
        True, BLOCKS, "batch")
    if settings.predict_from == "block2" and not conv4_net:
        raise ValueError("algo.predict_from=block2 reads Conv-4's second block (model=conv4 as the papers build it: "
                         "model.max_pool=true, model.depth=4, model.norm=batch); set algo.predict_from=embedding for "
                         "other networks")


def meta_params(model: torch.nn.Module, settings) -> dict:
    """The network's parameters and the decoder: to the maps' cells from the embedding, or to the maps' channels
    from the second block's channels."""
    params = dict(model.named_parameters())
    width = [p for p in params.values() if p.dim() == 4][-1].shape[0]
    outputs = CHANNELS * GRID * GRID if settings.predict_from == "embedding" else CHANNELS
    device = next(model.parameters()).device
    params[WEIGHT] = torch.nn.Parameter(torch.randn(width, outputs, device=device) * 0.01)
    params[BIAS] = torch.nn.Parameter(torch.zeros(outputs, device=device))
    return params


def conv4(params: dict, x: torch.Tensor) -> tuple:
    """Conv-4's embedding [N, D] (metarun.models.conv4 with batch statistics, max-pooling) and its second block's
    feature map [N, D, H/4, W/4]."""
    maps = []
    for block in range(BLOCKS):
        conv, norm = 4 * block, 4 * block + 1
        x = F.conv2d(x, params[f"{conv}.weight"], params[f"{conv}.bias"], padding=1)
        x = F.batch_norm(x, None, None, params[f"{norm}.weight"], params[f"{norm}.bias"], True, 0.0, 1e-5)
        maps.append(x := F.max_pool2d(F.relu(x), 2))
    return maps[-1].flatten(1), maps[1]


def meta_loss(forward, params, support_x, support_y, query_x, query_y, settings, objective):
    """ProtoNet's loss and metric on the queries, plus ``weight`` times the error of the predicted stroke maps."""
    if support_x.shape[-3] == 1:  # an episode without maps
        return protonet.meta_loss(forward, params, support_x, support_y, query_x, query_y, settings, objective)
    images, maps = (support_x[:, :1], query_x[:, :1]), torch.cat([support_x[:, 1:], query_x[:, 1:]]).float()
    if settings.predict_from == "embedding":
        support, query = embed_episode(forward, params, *images, settings.embedding_pass)
        predicted = torch.cat([support, query]).float() @ params[WEIGHT] + params[BIAS]
        targets = F.adaptive_avg_pool2d(maps, GRID).flatten(1)
    else:  # one pass per set, or both together, as embed_episode's embedding_pass
        passes = [conv4(params, x) for x in ([torch.cat(images)] if settings.embedding_pass == "joint" else images)]
        embedded, blocks = torch.cat([e for e, _ in passes]), torch.cat([b for _, b in passes])
        support, query = embedded[: len(support_x)], embedded[len(support_x):]
        predicted = (torch.einsum("nchw,ck->nkhw", blocks.float(), params[WEIGHT])
                     + params[BIAS].view(1, -1, 1, 1)).flatten(1)
        targets = F.adaptive_avg_pool2d(maps, blocks.shape[-2:]).flatten(1)
    logits = protonet.embedding_logits(support, support_y, query)
    auxiliary = ((predicted - targets) ** 2).mean()
    return objective.loss(logits, query_y) + settings.weight * auxiliary, objective.metric(logits, query_y)


ALGORITHM = Algorithm(meta_loss, protonet.evaluate_task, protonet.predict, StrokeAuxConfig, meta_params=meta_params,
                      check=check, has_head=False, objectives=("classification",))
