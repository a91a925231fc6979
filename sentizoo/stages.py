"""The three feature taps that amalgamation compares, for timm ResNets and VGGs.

Stage 1..3 are the official split's last three stages (DESIGN.md §2), post-activation:

* ResNet: the outputs of ``layer2``, ``layer3``, ``layer4``;
* VGG: the outputs of the official ``features`` slices 2-4 (vgg16_bn ``[13:23]``, ``[23:33]``, ``[33:43]``;
  vgg19_bn ``[13:26]``, ``[26:39]``, ``[39:52]``), i.e. the last ReLU of each conv block, before its max pool.

In timm's ``forward_intermediates`` numbering (0 = stem / first block) these are indices 2, 3 and 4 for both
families, so the taps come from timm's own forward and stay correct under gradient checkpointing,
channels_last and autocast.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.models import VGG, ResNet

__all__ = ['STAGES', 'stage_features', 'stage_channels']

STAGES = (1, 2, 3)
_TIMM_INDEX = {1: 2, 2: 3, 3: 4}  # amalgamation stage -> forward_intermediates index


def _check(model: nn.Module) -> None:
    if not isinstance(model, (ResNet, VGG)):
        raise ValueError(f'Amalgamation stages are defined for timm ResNet and VGG models; got '
                         f'{type(model).__name__}. Create the model with timm.create_model("resnet50") or similar '
                         '(unwrap DistributedDataParallel / torch.compile first).')


def _indices(stages: Sequence[int]) -> List[int]:
    bad = [s for s in stages if s not in _TIMM_INDEX]
    if bad or not stages:
        raise ValueError(f'stages must be a non-empty subset of {STAGES}; got {tuple(stages)}.')
    return [_TIMM_INDEX[s] for s in stages]


def stage_features(model: nn.Module, x: torch.Tensor, stages: Sequence[int] = STAGES,
                   with_logits: bool = True) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
    """One forward pass of ``model`` returning the stage taps and the logits.

    Args:
        model: a timm ResNet or VGG (any depth, with or without BN).
        x: input images (N, 3, H, W).
        stages: which of the stages 1, 2, 3 to return, in this order.
        with_logits: run the head too; when False the forward stops at the last requested stage and
            ``None`` is returned for the logits (what a teacher that only gives features needs).

    Returns:
        ``(feats, logits)``: ``feats[i]`` is the output of stage ``stages[i]``; ``logits`` equals ``model(x)``.
    """
    _check(model)
    indices = _indices(stages)
    if not with_logits:
        return model.forward_intermediates(x, indices=indices, stop_early=True, intermediates_only=True), None
    final, feats = model.forward_intermediates(x, indices=indices)
    return feats, model.forward_head(final)


def stage_channels(model: nn.Module) -> Tuple[int, int, int]:
    """Channels of the stage 1, 2 and 3 taps, e.g. ``(512, 1024, 2048)`` for resnet50."""
    _check(model)
    return tuple(model.feature_info[i]['num_chs'] for i in _TIMM_INDEX.values())
