"""The line-up of a setting: metarun's implementations, then each peer that has the setting's algorithm and is
present, every peer on its own network from the same seeded weights and on torch's default intra-op threads
(or ``--threads``); a peer that cannot be loaded becomes a note saying why."""

import functools

import torch

from metarun.data.tasks import TaskBatch

from . import higher, learn2learn, plain, torchopt
from .impl import Impl, MissingPeer, Options
from .metarun_impls import metarun_impls
from .networks import peer_model

PEERS = ("plain", "learn2learn", "higher", "torchopt")


def implementations(setting: dict, batch: TaskBatch, options: Options) -> tuple:
    """``({impl: Impl}, {impl: note})`` for the setting: metarun's, then each peer present (on torch's default
    intra-op threads); the notes say why the others are missing."""
    notes = {}
    impls = metarun_impls(setting, batch, options, notes)
    peers = {"protonet": {"plain": plain.protonet},
             "maml": {"plain": plain.maml, "learn2learn": functools.partial(learn2learn.maml, options.learn2learn),
                      "higher": higher.maml, "torchopt": torchopt.maml},
             "imaml": {"plain": plain.imaml, "torchopt": torchopt.imaml}}[setting["algo"]]
    for peer, make in peers.items():
        model = peer_model(setting, options.device)
        try:
            impls[peer] = Impl(make(setting, model, batch), list(model.parameters()),
                               functools.partial(torch.set_num_threads, options.threads))
        except MissingPeer as err:
            notes[peer] = f"skipped: {err}"
    return impls, notes
