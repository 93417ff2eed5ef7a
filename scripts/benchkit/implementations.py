"""The line-up of a setting: metarun's implementations, then each peer that has the setting's algorithm and is
present, every peer on its own network from the same seeded weights and on torch's default intra-op threads
(or ``--threads``); a peer that cannot be loaded, or an algorithm without a plain loop, becomes a note saying why."""

import functools

import torch

from metarun.data.tasks import TaskBatch

from . import higher, learn2learn, plain, plain_metric, torchopt
from .impl import Impl, MissingPeer, Options
from .metarun_impls import metarun_impls
from .networks import peer_model

# every peer, by the name its lines carry (a line's best_peer is the fastest of these)
PEERS = ("plain", "learn2learn", "higher", "torchopt")
# the algorithms without a plain loop, and why: their note line
NO_PLAIN = {
    "metalstm": "no plain loop (the LSTM meta-learner over every weight coordinate is long to write by hand): "
                "metarun lines only",
    "metaoptnet_svm": "no plain loop (the paper's code solves the SVM's dual with qpth's QP solver, long to write "
                      "by hand): metarun lines only",
}


def peer_makers(learn2learn_root) -> dict:
    """Each algorithm's peers (learn2learn's loaded from ``learn2learn_root``, see ``learn2learn.maml_class``):
    makers ``make(setting, model, batch) -> (backward, the tensors it meta-learns beside the network's weights)``;
    the algorithms of ``NO_PLAIN`` have none."""
    return {
        "maml": {"plain": plain.maml, "learn2learn": functools.partial(learn2learn.maml, learn2learn_root),
                 "higher": higher.maml, "torchopt": torchopt.maml},
        "fomaml": {"plain": functools.partial(plain.maml, first_order=True)},
        "mamlpp": {"plain": plain.mamlpp},
        "anil": {"plain": functools.partial(plain.maml, head_only=True)},
        "metasgd": {"plain": functools.partial(plain.maml, learned_rates=True)},
        "reptile": {"plain": plain.reptile},
        "imaml": {"plain": plain.imaml, "torchopt": torchopt.imaml},
        "protonet": {"plain": plain_metric.protonet},
        "matchingnet": {"plain": plain_metric.matchingnet},
        "relationnet": {"plain": plain_metric.relationnet},
        "r2d2": {"plain": plain_metric.r2d2},
        "baseline": {"plain": plain_metric.baseline},
        "baselinepp": {"plain": functools.partial(plain_metric.baseline, cosine=True)},
    }


def implementations(setting: dict, batch: TaskBatch, options: Options) -> tuple:
    """``({impl: Impl}, {impl: note})`` for the setting: metarun's, its learned tensors starting from the plain
    loop's, then each peer present (on torch's default intra-op threads); the notes say why the others are
    missing."""
    peers, notes, extras = {}, {}, None
    for peer, make in peer_makers(options.learn2learn).get(setting["algo"], {}).items():
        model = peer_model(setting, options.device)
        try:
            backward, learned = make(setting, model, batch)
        except MissingPeer as err:
            notes[peer] = f"skipped: {err}"
            continue
        peers[peer] = Impl(backward, [*model.parameters(), *learned],
                           functools.partial(torch.set_num_threads, options.threads))
        if peer == "plain":
            extras = learned
    if setting["algo"] in NO_PLAIN:
        notes["plain"] = NO_PLAIN[setting["algo"]]
    return {**metarun_impls(setting, batch, options, notes, extras), **peers}, notes
