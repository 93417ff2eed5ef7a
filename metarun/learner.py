"""Few-shot inference from a meta-trained checkpoint on a new task, from Python:

    learner = load_learner("outputs/.../checkpoints/best.pt")
    adapted = learner.adapt(support_images, support_labels)   # raw images, any hashable labels
    adapted.predict(query_images)                             # labels as given to adapt

Images are preprocessed as in training, from the checkpoint's ``data``: converted to the network's channels,
resized to its input size with antialiasing (``metarun.data.files.imagefiles.image_to_array``, as the image stores are
built), scaled to [0, 1], inverted where the task source was (Omniglot: ink = 1) and normalised with the
per-channel mean and std the task source used (e.g. miniImageNet's meta-train statistics).
Batch norm follows the checkpoint's ``eval.transductive`` unless ``load_learner(..., transductive=...)`` says
otherwise: transductive, the query images of one ``predict`` call are normalised with their own batch
statistics (predict a whole query set at once, as evaluation does); inductive, each query image is normalised
with the support set plus itself, so single images and any batch give the same predictions.
"""

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from metarun.algos.objectives import OBJECTIVES
from metarun.data.files.imagefiles import image_to_array
from metarun.mapping.ragged import episode_forward
from metarun.models.batchnorm import in_context, support_context
from metarun.models.network import build_network, functional_forward
from metarun.runner.checkpoint import Checkpoint, load_checkpoint, restore_buffers
from metarun.runner.components import algorithm_of
from metarun.utils.allocator import use_huge_pages


def load_learner(path, device: str = "cpu", transductive: Optional[bool] = None, trusted: bool = False) -> "Learner":
    """The meta-trained learner saved at ``path`` (a run's ``checkpoints/best.pt`` or ``last.pt``).

    Args:
        transductive: how query images are batch-normalised (see the module docstring); None = as the
            checkpoint's ``eval.transductive``.
        trusted: also load a file whose pickle asks for code, which is refused otherwise (only for a file whose
            author you trust).
    """
    use_huge_pages()
    return Learner(load_checkpoint(Path(path), torch.device(device), trusted), torch.device(device), transductive)


class Learner:
    """A meta-trained initialisation (or embedding) that adapts to new few-shot classification tasks."""

    def __init__(self, checkpoint: Checkpoint, device: torch.device, transductive: Optional[bool] = None):
        """Rebuild the network and its meta-parameters from ``checkpoint``."""
        self.cfg = OmegaConf.create(checkpoint.config)
        self.transductive = self.cfg.eval.transductive if transductive is None else transductive
        data = checkpoint.data
        if data["objective"] != "classification":
            raise ValueError(f"load_learner supports classification checkpoints; this one was trained on "
                             f"dataset={self.cfg.dataset.name} ({data['objective']})")
        self.algorithm, self.settings = algorithm_of(self.cfg)
        self.input_shape, self.output_dim = tuple(data["input_shape"]), data["output_dim"]
        model, _ = build_network(self.cfg, self.algorithm, self.settings, self.input_shape, self.output_dim, device)
        restore_buffers(model, checkpoint)
        model.eval()  # batch norm's running averages, where the model keeps them (model.norm=running)
        self.forward, self.params, self.device = functional_forward(model), checkpoint.params, device
        mean, std = data.get("normalisation") or ([0.0], [1.0])
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.inverted, self.warned_shots = data["inverted"], False
        # meta-trained on episodes of up to ``ways`` classes (Meta-Dataset's): a fixed head adapts to any fewer
        self.variable = self.cfg.dataset.get("episodes") == "variable"
        if self.input_shape[1] != self.input_shape[2]:
            raise ValueError(f"load_learner resizes raw images to a square; this checkpoint's inputs are "
                             f"{self.input_shape[1]}x{self.input_shape[2]}")

    def preprocess(self, images) -> torch.Tensor:
        """Raw images (PIL images, arrays [H, W] / [H, W, C], or a tensor [N, (C,) H, W]; uint8 in 0..255 or
        float in [0, 1]) as the float batch [N, C, H, W] the network was trained on."""
        channels, size = self.input_shape[0], self.input_shape[1]
        arrays = [image_to_array(image if isinstance(image, Image.Image) else
                                 Image.fromarray(as_uint8(np.asarray(image)).squeeze()), size, channels)
                  for image in image_list(images)]
        x = torch.from_numpy(np.stack(arrays)).float() / 255.0
        if self.inverted:
            x = 1.0 - x
        return ((x - self.mean) / self.std).to(self.device)

    def adapt(self, images, labels) -> "Adapted":
        """Adapt to the support set ``images`` with ``labels`` (any hashable values, e.g. strings)."""
        labels = [label.item() if isinstance(label, (torch.Tensor, np.generic)) else label for label in labels]
        classes = list(dict.fromkeys(labels))
        support_x = self.preprocess(images)
        if len(labels) != len(support_x):
            raise ValueError(f"adapt got {len(support_x)} images but {len(labels)} labels; give one label per image")
        ways = self.output_dim  # a fixed head has one output per way
        if self.algorithm.fixed_ways and (len(classes) > ways if self.variable else len(classes) != ways):
            trained, bound = (f"tasks of up to {ways} ways", "at most") if self.variable else \
                (f"{ways}-way tasks", "exactly")
            raise ValueError(f"this {self.cfg.algo.name} learner was meta-trained for {trained}; give support images "
                             f"of {bound} {ways} labels (got {len(classes)})")
        self.check_shots([labels.count(label) for label in classes])
        targets = torch.tensor([classes.index(label) for label in labels], device=self.device)
        return Adapted(self, support_x, targets, classes)

    def check_shots(self, shots: list) -> None:
        """Warn, once per learner, when support shots per class differ from meta-training's for an algorithm that
        needs them equal (``Algorithm.same_shots``)."""
        trained = self.cfg.dataset.shots
        if self.algorithm.same_shots and set(shots) != {trained} and not self.warned_shots:
            self.warned_shots = True
            warnings.warn(f"this {self.cfg.algo.name} learner was meta-trained with {trained} support shots per class "
                          f"and got {sorted(set(shots))}; its class summaries sum the shots, so expect worse "
                          f"predictions (give {trained} images per class)", stacklevel=3)


def image_list(images) -> list:
    """``images`` (a list of images, or a batch array/tensor [N, (C,) H, W]) as a list of [H, W] / [H, W, C]
    arrays and PIL images.

    Raises:
        ValueError: no images, one image where a list or batch is expected, an object that is not an image, or
            an image with a side under 2 pixels; one line naming it.
    """
    if isinstance(images, Image.Image) or is_one_array_image(images):
        raise ValueError(f"got one image ({describe(images)}) where a list or batch is expected; pass [image] for one")
    if isinstance(images, (torch.Tensor, np.ndarray)):
        array = images.cpu().numpy() if isinstance(images, torch.Tensor) else images
        if array.ndim not in (3, 4):
            raise ValueError(f"got an array of shape {list(array.shape)}; pass a batch [N, H, W] or [N, C, H, W]")
        images = list(array.transpose(0, 2, 3, 1) if array.ndim == 4 and array.shape[1] in (1, 3) else array)
    elif isinstance(images, (str, bytes, dict)) or not hasattr(images, "__iter__"):
        raise ValueError(f"got {describe(images)}; pass a list of images (PIL images or arrays) or a batch array")
    images = list(images)  # any iterable of images, generators included
    if not images:
        raise ValueError("got no images; pass at least one (PIL images, arrays or a tensor [N, (C,) H, W])")
    for index, image in enumerate(images):
        check_image(index, image)
    return images


def is_one_array_image(images) -> bool:
    """Whether an array or tensor is one [H, W] image, or one [H, W, C] colour image rather than N gray ones."""
    shape = tuple(images.shape) if isinstance(images, (torch.Tensor, np.ndarray)) else ()
    return len(shape) == 2 or len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4


def check_image(index: int, image) -> None:
    """Refuse image number ``index`` unless it is a PIL image or an array [H, W] / [H, W, C] / [1, H, W] of at least
    2x2 pixels."""
    if isinstance(image, Image.Image):
        sides = [image.height, image.width]
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        sides = [side for side in image.shape if side != 1][:2]  # a [1, H, W] or [H, W, 1] image is [H, W]
    else:
        raise ValueError(f"image {index} is {describe(image)}, not an image; pass PIL images or arrays [H, W] / "
                         "[H, W, C] (open files with PIL.Image.open)")
    if len(sides) < 2 or min(sides) < 2:
        raise ValueError(f"image {index} is {describe(image)}, too small to be an image; pass the images themselves "
                         "(at least 2x2 pixels)")


def describe(value) -> str:
    """What ``value`` is, for an error line: its type, and its shape for arrays."""
    if isinstance(value, Image.Image):
        return f"a {value.width}x{value.height} PIL image"
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"an array of shape {list(value.shape)}"
    return f"a {type(value).__name__}"


def as_uint8(array: np.ndarray) -> np.ndarray:
    """Pixels as uint8 0..255: floats in [0, 1] are scaled (a plain cast would make them all 0 or 1)."""
    if array.dtype == np.uint8:
        return array
    low, high = array.min(), array.max()
    if np.issubdtype(array.dtype, np.floating) or array.dtype == bool:
        if not 0 <= low <= high <= 1:
            raise ValueError(f"float images must hold pixels in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                             "pass uint8 images (0..255) or scale them to [0, 1] (not normalised ones)")
        return np.round(array * 255.0).astype(np.uint8)
    if not 0 <= low <= high <= 255:
        raise ValueError(f"integer images must hold pixels in 0..255, got values in [{low}, {high}]")
    return array.astype(np.uint8)


class Adapted:
    """A learner adapted to one support set; ``predict`` labels query images."""

    def __init__(self, learner: Learner, support_x: torch.Tensor, support_y: torch.Tensor, classes: list):
        """Keep the preprocessed support set; adaptation runs with each ``predict`` (it is cheap and pure)."""
        self.learner, self.support_x, self.support_y, self.classes = learner, support_x, support_y, classes

    def logits(self, images) -> torch.Tensor:
        """Class scores [Q, ways] for the query ``images``, columns in the order labels first appeared."""
        learner = self.learner
        forward, query = learner.forward, learner.preprocess(images)
        if learner.variable and learner.algorithm.fixed_ways:  # the head scores this task's classes only
            forward = episode_forward(forward, self.support_x, self.support_y, query, None, learner.output_dim)
        if not learner.transductive:
            forward, query = support_context(forward, len(learner.input_shape)), in_context(self.support_x, query)
        with torch.no_grad():
            scores = learner.algorithm.predict(forward, learner.params, self.support_x, self.support_y, query,
                                               learner.settings, OBJECTIVES["classification"])
        return scores[:, : len(self.classes)]

    def predict(self, images) -> list:
        """The predicted label of each query image, as given to ``adapt``."""
        return [self.classes[i] for i in self.logits(images).argmax(-1).tolist()]
