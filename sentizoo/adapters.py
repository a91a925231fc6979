"""Adapters that let a target learn from teachers of another architecture (FitNets' regressors, Romero et al. 2015).

A feature term compares a target tap with a teacher tap (:mod:`sentizoo.stages`). When their channels or
reductions differ, e.g. a ConvNeXt target taught by the zoo's ResNets, the target's tap first goes through a
small learned adapter: a 1x1 convolution (no bias) and a norm layer (BatchNorm by default) to the teacher's
channels, then a bilinear resize to the teacher's map size. The adapter sits on the target's side, so the
teacher's features are compared as they are, and it trains with the target (it belongs to the
:class:`~sentizoo.amalgamation.Amalgamator`, so training checkpoints and resume include it) but is never part of
the model that is kept: ``Amalgamator.target`` and what ``save_pretrained`` writes are the plain timm target.

When the target and the teacher match at a stage (the paper's setting: the same architecture), no adapter is
created and the term is the paper's MSE of the raw taps, bit for bit.
"""
from __future__ import annotations

from typing import Mapping, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_norm_layer

from .stages import stage_channels, stage_reductions

__all__ = ['Adapter', 'build_adapters', 'resize_to']


class Adapter(nn.Sequential):
    """A target tap's channels -> a teacher tap's: 1x1 conv (no bias) + norm.

    The resize to the teacher's map (:func:`resize_to`) is a function of the teacher's output, so it is applied
    where both maps meet; the adapter's parameters run in the target's branch (:mod:`sentizoo.branches`).
    """

    def __init__(self, in_chs: int, out_chs: int, norm_layer: str = 'batchnorm'):
        super().__init__(nn.Conv2d(in_chs, out_chs, 1, bias=False), get_norm_layer(norm_layer)(out_chs))


def resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` resized (bilinear) to ``like``'s height and width; ``x`` itself when they are equal."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode='bilinear', align_corners=False)


def _tap(model: nn.Module, stage: int) -> Tuple[int, int]:
    return stage_channels(model)[stage - 1], stage_reductions(model)[stage - 1]


def build_adapters(target: nn.Module, teachers: Mapping[str, Tuple[nn.Module, int]], norm_layer: str = 'batchnorm'
                   ) -> nn.ModuleDict:
    """One :class:`Adapter` per teacher whose tap differs from the target's in channels or reduction.

    Args:
        target: the target model.
        teachers: ``{tag: (teacher, stage)}``: the stage (1-3) at which each teacher's features are compared.
        norm_layer: the adapters' norm, a timm norm name (``'batchnorm'``; ``'groupnorm1'`` normalises each
            sample on its own, so DistributedDataParallel without SyncBatchNorm equals one process).

    Returns:
        ``{tag: Adapter}`` for the mismatched teachers only (empty in the paper's setting).
    """
    adapters = nn.ModuleDict()
    for tag, (teacher, stage) in teachers.items():
        (ours, our_reduction), (theirs, their_reduction) = _tap(target, stage), _tap(teacher, stage)
        if (ours, our_reduction) != (theirs, their_reduction):
            adapters[tag] = Adapter(ours, theirs, norm_layer)
    return adapters
