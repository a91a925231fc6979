"""The three feature taps that amalgamation compares, for any timm model with ``forward_intermediates``.

Stage 1..3 of the paper are the official split's last three stages (docs/method.md, "Stages"), post-activation.
The taps come from timm's own ``forward_intermediates``, so they stay correct under gradient checkpointing,
channels_last and autocast. Which intermediates they are:

* **ResNet and VGG** (the paper's models), fixed as in the official code: ResNet's ``layer2``, ``layer3``,
  ``layer4``; VGG's official ``features`` slices 2-4 (vgg16_bn ``[13:23]``, ``[23:33]``, ``[33:43]``; vgg19_bn
  ``[13:26]``, ``[26:39]``, ``[39:52]``), i.e. the last ReLU of each conv block, before its max pool. Both are
  ``forward_intermediates`` indices 2, 3 and 4.
* **Other hierarchical models** (ConvNeXt, EfficientNet, RegNet, MobileNet, Swin, LeViT ...): by reduction, as
  ResNet's stages are: the last ``feature_info`` entry at each of the three largest distinct reductions
  (strides 8/16/32 on a standard CNN). timm numbers ``forward_intermediates`` like ``feature_info`` (one entry
  per intermediate); every call checks the tap's channels against ``feature_info``.
* **Plain ViTs** (DeiT, ViT: one reduction throughout): three evenly spaced blocks, the ends of the first,
  second and last third of the network (blocks 4, 8 and 12 of 12), as NCHW maps of the patch tokens (prefix
  tokens dropped, no final norm): low-, mid- and high-level features as in a CNN, the last one feeding the head.

A model without ``forward_intermediates`` or ``feature_info`` (not a timm model, or an old timm), or with too
few reductions or blocks, is refused with one line that names it and what is missing.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.models import VGG, ResNet

__all__ = ['AMALGAMATION_STAGES', 'PAPER_STAGE_INDICES', 'check_stage_model', 'is_paper_model', 'model_name',
           'indices_by_reduction', 'stage_features', 'stage_channels', 'stage_reductions', 'stage_indices',
           'tap_channels']

AMALGAMATION_STAGES = (1, 2, 3)
PAPER_STAGE_INDICES = (1, 2, 3, 4)
"""The ``forward_intermediates`` indices of the four stages of the paper's models (docs/method.md, "Stages"):
ResNet's ``layer1``..``layer4``, VGG's official ``features`` slices 1-4. The pretext heads read all four,
amalgamation's stages 1, 2, 3 are the last three."""


def is_paper_model(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ResNet or VGG, whose taps are fixed as in the official code."""
    return isinstance(model, (ResNet, VGG))


def check_stage_model(model: nn.Module, needed_by: str = 'amalgamation needs to tap stages 1-3') -> None:
    """Raise ValueError unless ``model`` has timm's ``forward_intermediates`` and ``feature_info``, which
    ``needed_by`` (the end of the error's sentence) needs."""
    missing = [attr for attr in ('forward_intermediates', 'feature_info') if not hasattr(model, attr)]
    if missing:
        raise ValueError(f'{model_name(model)} has no {" and no ".join(missing)}, which {needed_by}: use a timm '
                         'model (timm >= 1.0, created with timm.create_model; unwrap DistributedDataParallel / '
                         'torch.compile first).')


def model_name(model: nn.Module) -> str:
    """The timm architecture a model was created as (``pretrained_cfg['architecture']``), else its class name."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


def stage_indices(model: nn.Module) -> Tuple[int, int, int]:
    """The ``forward_intermediates`` indices of stages 1, 2 and 3 (see the module docstring).

    Raises:
        ValueError: one line naming the model and what it lacks (``forward_intermediates``, ``feature_info``,
            three reductions or three blocks).
    """
    if is_paper_model(model):
        return PAPER_STAGE_INDICES[1:]
    check_stage_model(model)
    reductions = [info['reduction'] for info in model.feature_info]
    if len(set(reductions)) == 1 and len(reductions) >= 3:  # a plain ViT: the ends of its three thirds
        return tuple(round(k * len(reductions) / 3) - 1 for k in (1, 2, 3))
    return indices_by_reduction(model, 3, 'amalgamation taps three stages at three reductions (or three blocks of '
                                          'a plain ViT)')


def indices_by_reduction(model: nn.Module, count: int, requirement: str) -> Tuple[int, ...]:
    """The ``forward_intermediates`` indices of the last ``feature_info`` entry at each of the ``count`` largest
    distinct reductions, in network order (strides 8/16/32 for ``count=3`` on a standard CNN).

    Raises:
        ValueError: one line naming the model, its reductions and ``requirement`` (why ``count`` are needed),
            when it has fewer than ``count`` distinct reductions.
    """
    reductions = [info['reduction'] for info in model.feature_info]
    distinct = sorted(set(reductions))
    if len(distinct) < count:
        raise ValueError(f'{model_name(model)} has feature_info reductions {distinct} in {len(reductions)} entries; '
                         f'{requirement}.')
    last = {r: i for i, r in enumerate(reductions)}  # the last entry at each reduction
    return tuple(last[r] for r in distinct[-count:])


def _stage_info(model: nn.Module, key: str) -> Tuple[int, int, int]:
    return tuple(model.feature_info[i][key] for i in stage_indices(model))


def stage_channels(model: nn.Module) -> Tuple[int, int, int]:
    """Channels of the stage 1, 2 and 3 taps, e.g. ``(512, 1024, 2048)`` for resnet50."""
    return _stage_info(model, 'num_chs')


def stage_reductions(model: nn.Module) -> Tuple[int, int, int]:
    """Reductions (input size / map size) of the stage 1, 2 and 3 taps, e.g. ``(8, 16, 32)`` for resnet50."""
    return _stage_info(model, 'reduction')


def stage_features(model: nn.Module, x: torch.Tensor, stages: Sequence[int] = AMALGAMATION_STAGES,
                   with_logits: bool = True) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
    """One forward pass of ``model`` returning the stage taps and the logits.

    Args:
        model: a timm model with ``forward_intermediates`` and ``feature_info`` (:func:`stage_indices`).
        x: input images (N, 3, H, W).
        stages: which of the stages 1, 2, 3 to return, in this order (may be empty: logits only).
        with_logits: run the head too; when False the forward stops at the last requested stage and
            ``None`` is returned for the logits (what a teacher that only gives features needs).

    Returns:
        ``(feats, logits)``: ``feats[i]`` is the (N, C, H, W) output of stage ``stages[i]``; ``logits`` equals
        ``model(x)``.
    """
    indices = stage_indices(model)
    if any(s not in AMALGAMATION_STAGES for s in stages) or not (stages or with_logits):
        raise ValueError(f'stages must be a subset of {AMALGAMATION_STAGES} (non-empty unless with_logits); '
                         f'got {tuple(stages)}.')
    if not stages:
        return [], model(x)
    ordered = sorted(set(stages))  # forward_intermediates returns taps in network order
    wanted = [indices[s - 1] for s in ordered]
    if with_logits:
        final, taps = model.forward_intermediates(x, indices=wanted)
        logits = model.forward_head(final)
    else:
        taps = model.forward_intermediates(x, indices=wanted, stop_early=True, intermediates_only=True)
        logits = None
    for index, tap in zip(wanted, taps):
        channels = model.feature_info[index]['num_chs']
        if tap.ndim != 4 or tap.shape[1] != channels:
            raise ValueError(f'{model_name(model)}: forward_intermediates index {index} gave a tap of shape '
                             f'{tuple(tap.shape)}, feature_info says {channels} channels (NCHW); this timm model '
                             'does not number its intermediates like its feature_info.')
    by_stage = dict(zip(ordered, taps))
    return [by_stage[s] for s in stages], logits


def tap_channels(model: nn.Module, indices: Sequence[int]) -> List[int]:
    """Channels of the ``forward_intermediates`` taps ``indices`` (timm's numbering, as ``feature_info``'s)."""
    return [model.feature_info[i]['num_chs'] for i in indices]
