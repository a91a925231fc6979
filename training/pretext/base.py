"""What every pretext task shares: the task interface, the backbone taps it reads, and the GAP classifier.

A task is an ``nn.Module`` holding only its head (the backbone is passed in, never owned, so a
perception model's state dict holds the backbone once). Its life in one training step::

    inputs, targets = task.prepare(batch)      # batched, on the batch's device (Lab, resizing, tiles, ...)
    outputs = task(backbone, inputs)           # the backbone run the task's way, then the head
    loss = task.loss(outputs, targets)         # a scalar
    # or all three at once: loss = task.step(backbone, batch)

``batch`` is what the task's loader yields, already on the device: images as float (N, 3, H, W) in
[0, 1] (``transforms.ToTensor()``, *not* ImageNet-normalised: tasks that feed RGB to the backbone
normalise it here, on the device, and the ST tasks compute their Lab / full-resolution targets from
the raw RGB), alone or as ``(images, labels)``.

Backbones are timm models with ``forward_intermediates`` and ``feature_info``; the heads read four stages
(:func:`pretext_indices`), and are sized from ``feature_info``. The paper's ResNets and VGGs: their four stages
(docs/method.md, "Stages": ResNet ``layer1``..``layer4``, VGG the official ``features`` slices, i.e. the last
ReLU of conv blocks 2..5), indices 1..4 of timm's ``forward_intermediates``. Other hierarchical models
(ConvNeXt, EfficientNet, RegNet, MobileNet ...): the last stage at each of the four largest reductions, as
ResNet's (strides 4/8/16/32). Plain ViTs, with one reduction, are refused: colorization fuses four scales, and
super-resolution and jigsaw feed the backbone inputs smaller than the crop (a quarter of it, tiles), which a
ViT built for one input size does not take.
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from sentizoo.stages import PAPER_STAGE_INDICES, check_stage_model, indices_by_reduction, is_paper_model

__all__ = ['PretextTask', 'ClassificationTask', 'pretext_indices', 'images_of', 'imagenet_normalize', 'stage_maps',
           'pooled_dim']


def pretext_indices(backbone: nn.Module) -> Tuple[int, ...]:
    """The ``forward_intermediates`` indices of the four stages the pretext heads read, in network order (the
    last one: what super-resolution and captioning read); see the module docstring.

    Raises:
        ValueError: one line naming the model and what it lacks (``forward_intermediates``, ``feature_info``,
            four reductions).
    """
    if is_paper_model(backbone):
        return PAPER_STAGE_INDICES
    check_stage_model(backbone, 'the pretext heads need to read its four stages')
    return indices_by_reduction(backbone, 4, 'the pretext heads read four stages at four reductions (strides '
                                             '4/8/16/32 of a CNN), so a plain ViT is not pre-trained')


def stage_maps(backbone: nn.Module, x: torch.Tensor, indices: Sequence[int]) -> List[torch.Tensor]:
    """The feature maps at ``indices`` (in network order); the forward stops at the last one."""
    return backbone.forward_intermediates(x, indices=list(indices), intermediates_only=True, stop_early=True)


def pooled_dim(backbone: nn.Module) -> int:
    """Width of ``backbone(x)`` for a timm model with ``num_classes=0``: the pooled pre-logits features.

    ResNet: global average pooling of ``layer4``. VGG (the paper's head, :class:`sentizoo.models.PaperVGG`):
    global average pooling of the last conv block, 512 wide (``head_hidden_size`` = ``num_features``), the
    features the downstream classifier sits on. A stock timm VGG would give its 4096-wide fc6/fc7 pre-logits.
    Other timm models: their ``head_hidden_size`` (e.g. a MobileNetV3's conv head after the pooling).
    """
    pretext_indices(backbone)  # refuses what the pretext tasks cannot train, in one line
    return getattr(backbone, 'head_hidden_size', None) or backbone.num_features


def images_of(batch: Union[torch.Tensor, Sequence[Any]]) -> torch.Tensor:
    """The images of a batch that is a tensor or ``(images, labels, ...)``."""
    images = batch if isinstance(batch, torch.Tensor) else batch[0]
    if not (isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[1] == 3):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f'expected RGB images (N, 3, H, W) in [0, 1] as the batch or its first item; got {got}')
    return images


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of [0, 1] RGB images, on their device."""
    mean = images.new_tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (images - mean) / std


class PretextTask(nn.Module):
    """Base class: ``prepare`` -> ``forward(backbone, inputs)`` -> ``loss``; ``head`` is the only parameters.

    Attributes:
        name: the task's key in a perception model (``'colorization'``, ...), also its loss term's name.
        head: the task head (``nn.Module``).
        collate_fn: the ``DataLoader`` collate function the task's loader needs (``None``: the default).
    """

    name: str = ''
    collate_fn = None

    def prepare(self, batch: Any) -> Tuple[Any, Any]:
        """``(inputs, targets)`` from a loader batch already on the device, batched."""
        raise NotImplementedError

    def forward(self, backbone: nn.Module, inputs: Any) -> Any:
        raise NotImplementedError

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        raise NotImplementedError

    def step(self, backbone: nn.Module, batch: Any) -> torch.Tensor:
        """The task's training loss on one loader batch: prepare, forward, loss."""
        inputs, targets = self.prepare(batch)
        return self.loss(self(backbone, inputs), targets)


class ClassificationTask(PretextTask):
    """Image classification on the pooled backbone features: ``Linear(pooled_dim, num_classes)``, cross-entropy.

    Args:
        backbone: the timm backbone (read for its feature width only).
        classes: the class names (their number sets the head; kept as :attr:`classes`) or just a count.
    """

    def __init__(self, backbone: nn.Module, classes: Union[int, Sequence[str]]):
        super().__init__()
        self.classes = None if isinstance(classes, int) else tuple(classes)
        self.num_classes = classes if isinstance(classes, int) else len(self.classes)
        if self.num_classes < 2:
            raise ValueError(f'{type(self).__name__}: need at least 2 classes, got {classes!r}')
        self.head = nn.Linear(pooled_dim(backbone), self.num_classes)

    def prepare(self, batch: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, torch.Tensor) or len(batch) < 2:
            raise ValueError(f'{self.name}: expected an (images, labels) batch')
        return imagenet_normalize(images_of(batch)), batch[1].long()

    def forward(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return self.head(backbone(images))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)
