"""Scene recognition (HO model): 365-way Places365 classification on the pooled backbone features, cross-entropy."""
from __future__ import annotations

from typing import Sequence, Union

import torch.nn as nn

from .base import ClassificationTask

__all__ = ['SceneRecognition', 'PLACES365_CLASSES']

PLACES365_CLASSES = 365


class SceneRecognition(ClassificationTask):
    """Scene classification: global pooling -> ``Linear(C, num_classes)``.

    Args:
        backbone: the timm backbone (read for its pooled feature width, :func:`~.base.pooled_dim`).
        classes: the scene names in label order (e.g. ``Places365.classes``, from categories_places365.txt)
            or their number (default: Places365's 365).
    """

    name = 'scene'

    def __init__(self, backbone: nn.Module, classes: Union[int, Sequence[str]] = PLACES365_CLASSES):
        super().__init__(backbone, classes)
