"""Backbones. ``build_model`` instantiates ``model._target_`` with the dataset's input and output sizes.

Every backbone is an ``nn.Sequential`` whose last child is the linear head, so ``without_head`` gives the
embedding network for algorithms that have no head (ProtoNet) and ANIL finds the head by name.
"""

import copy

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate


def build_model(settings, input_shape: tuple, output_dim: int) -> torch.nn.Module:
    """The backbone named by ``settings._target_`` for inputs of ``input_shape`` and ``output_dim`` outputs.

    Raises:
        ValueError: the backbone's own, for settings it cannot build (e.g. ``model.depth`` too large).
    """
    try:
        return instantiate(settings, input_shape=tuple(input_shape), out_features=output_dim)
    except InstantiationException as err:
        # Hydra wraps the backbone's one-line error in its own "Error in call to target ..." report
        if isinstance(err.__cause__, ValueError):
            raise err.__cause__ from None
        raise


def max_pools(input_shape: tuple) -> int:
    """How many 2x2 max-pools images of ``input_shape`` (C, H, W) go through before a side would vanish."""
    return min(input_shape[1:]).bit_length() - 1


def without_head(model: torch.nn.Sequential) -> torch.nn.Sequential:
    """The backbone without its last child (the head), of the backbone's own class, so its forward (e.g. the MLP's
    flattening of image inputs) still applies; parameter names stay the same. Its ``embedding_dim`` is the size of
    the embedding it outputs (the head's input size), for algorithms that build their own layers on it."""
    headless = copy.deepcopy(model)
    del headless[-1]
    headless.embedding_dim = model[-1].in_features
    return headless
