"""The three feature taps that amalgamation compares, for timm ResNets and VGGs.

Stage 1..3 are the official split's last three stages (docs/method.md, "Stages"), post-activation:

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

__all__ = ['AMALGAMATION_STAGES', 'check_stage_model', 'stage_features', 'stage_channels', 'tap_channels']

AMALGAMATION_STAGES = (1, 2, 3)
_TIMM_INDEX = {1: 2, 2: 3, 3: 4}  # amalgamation stage -> forward_intermediates index


def check_stage_model(model: nn.Module) -> None:
    """Raise ValueError unless ``model`` is a timm ResNet or VGG: the models whose stages are defined (here and
    in the pretext tasks of ``training.pretext``)."""
    if not isinstance(model, (ResNet, VGG)):
        raise ValueError(f'Stages are defined for timm ResNet and VGG models; got '
                         f'{type(model).__name__}. Create the model with timm.create_model("resnet50") or similar '
                         '(unwrap DistributedDataParallel / torch.compile first).')


def stage_features(model: nn.Module, x: torch.Tensor, stages: Sequence[int] = AMALGAMATION_STAGES,
                   with_logits: bool = True) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
    """One forward pass of ``model`` returning the stage taps and the logits.

    Args:
        model: a timm ResNet or VGG (any depth, with or without BN).
        x: input images (N, 3, H, W).
        stages: which of the stages 1, 2, 3 to return, in this order (may be empty: logits only).
        with_logits: run the head too; when False the forward stops at the last requested stage and
            ``None`` is returned for the logits (what a teacher that only gives features needs).

    Returns:
        ``(feats, logits)``: ``feats[i]`` is the output of stage ``stages[i]``; ``logits`` equals ``model(x)``.
    """
    check_stage_model(model)
    if any(s not in _TIMM_INDEX for s in stages) or not (stages or with_logits):
        raise ValueError(f'stages must be a subset of {AMALGAMATION_STAGES} (non-empty unless with_logits); '
                         f'got {tuple(stages)}.')
    if not stages:
        return [], model(x)
    ordered = sorted(set(stages))  # forward_intermediates returns taps in network order
    indices = [_TIMM_INDEX[s] for s in ordered]
    if with_logits:
        final, taps = model.forward_intermediates(x, indices=indices)
        logits = model.forward_head(final)
    else:
        taps = model.forward_intermediates(x, indices=indices, stop_early=True, intermediates_only=True)
        logits = None
    by_stage = dict(zip(ordered, taps))
    return [by_stage[s] for s in stages], logits


def stage_channels(model: nn.Module) -> Tuple[int, int, int]:
    """Channels of the stage 1, 2 and 3 taps, e.g. ``(512, 1024, 2048)`` for resnet50."""
    return tuple(tap_channels(model, _TIMM_INDEX.values()))


def tap_channels(model: nn.Module, indices: Sequence[int]) -> List[int]:
    """Channels of the ``forward_intermediates`` taps ``indices`` (timm's numbering) of a timm ResNet / VGG."""
    check_stage_model(model)
    return [model.feature_info[i]['num_chs'] for i in indices]
