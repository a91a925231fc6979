"""ANP classification (HP model): predict the adjective-noun pair of a VSO image, cross-entropy.

The number of ANPs is the length of the class list the dataset reads (the paper uses 1,200 VSO ANPs;
the official code hard-codes 1,513 whatever the data holds).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch.nn as nn

from .base import ClassificationTask

__all__ = ['ANPClassification']


class ANPClassification(ClassificationTask):
    """ANP classification: global pooling -> ``Linear(C, len(classes))``.

    Args:
        backbone: the timm backbone (read for its pooled feature width, :func:`~.base.pooled_dim`).
        classes: the ANP names in label order (``VSO.classes``) or their number; required, never assumed.
    """

    name = 'anp'

    def __init__(self, backbone: nn.Module, classes: Union[int, Sequence[str]]):
        super().__init__(backbone, classes)
