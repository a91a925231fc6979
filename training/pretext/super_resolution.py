"""Super-resolution (ST model): reconstruct the full-resolution image from a ``scale``-times smaller one.

Input: the image downsampled by ``scale`` (paper: 256 -> 64, i.e. 4; antialiased bilinear, on the
device in the training step), ImageNet-normalised; target: the full image, RGB in [0, 1] (the official
code used the BGR image as target). Head (:class:`SRHead`) on the last stage's feature map; MSE.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from sentizoo.stages import tap_channels

from .base import PretextTask, imagenet_normalize, images_of, pretext_indices, stage_maps

__all__ = ['SuperResolution', 'SRHead', 'GemmConvTranspose2d']


class GemmConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (groups 1) computed as one matrix product and a ``fold`` (col2im).

    Same parameters, state dict and result (to float rounding) as the stock module. On the SR head's
    shape, 2048 -> 2048 channels on a 1x1 or 2x2 map, the stock CPU kernel runs at a few GFLOP/s; the
    matrix product is 3-4x faster per forward + backward (BENCHMARKS.md, pretext section).
    """

    def forward(self, x: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        if self.groups != 1 or output_size is not None or self.padding_mode != 'zeros':
            return super().forward(x, output_size)
        size = tuple((i - 1) * s - 2 * p + d * (k - 1) + op + 1 for i, s, p, d, k, op in zip(
            x.shape[-2:], self.stride, self.padding, self.dilation, self.kernel_size, self.output_padding))
        cols = x.flatten(2).transpose(1, 2) @ self.weight.flatten(1)  # (N, H*W, C_out * kh * kw)
        # fold sums each input pixel's C_out x kh x kw block into the output at stride, like the transpose conv
        out = F.fold(cols.transpose(1, 2), size, self.kernel_size, dilation=self.dilation, padding=self.padding,
                     stride=self.stride)
        return out if self.bias is None else out + self.bias.to(out.dtype).view(1, -1, 1, 1)


class SRHead(nn.Module):
    """Two ``ConvTranspose2d(C, C, 3, stride 2, padding 1, output_padding 1)`` + ReLU (x4), a 3x3 conv to
    RGB and a sigmoid, then bilinear upsampling to the requested size."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            GemmConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1), nn.ReLU(inplace=True),
            GemmConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, 3, 3, padding=1), nn.Sigmoid())

    def forward(self, feat: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.body(feat), size=tuple(size), mode='bilinear', align_corners=False)


class SuperResolution(PretextTask):
    """x``scale`` super-resolution from the last backbone stage.

    Args:
        backbone: the timm backbone (read for its last stage and its width, :func:`~.base.pretext_indices`).
        scale: the downsampling factor of the input (paper: 4).
    """

    name = 'super_resolution'

    def __init__(self, backbone: nn.Module, scale: int = 4):
        super().__init__()
        if scale < 1:
            raise ValueError(f'SuperResolution: scale must be >= 1, got {scale}')
        self.scale, self.index = scale, pretext_indices(backbone)[-1]
        self.head = SRHead(tap_channels(backbone, [self.index])[0])

    def prepare(self, batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        """RGB in [0, 1] -> (normalised input (N, 3, H/s, W/s), target (N, 3, H, W) in [0, 1]).

        A size that is not a multiple of ``scale`` loses its last ``H mod scale`` rows (columns) from the
        target, so that target and output sizes agree.
        """
        images = images_of(batch)
        h, w = (d - d % self.scale for d in images.shape[-2:])
        if h == 0 or w == 0:
            raise ValueError(f'SuperResolution: images of {tuple(images.shape[-2:])} px are smaller than '
                             f'scale={self.scale}')
        target = images[..., :h, :w]
        small = F.interpolate(target, size=(h // self.scale, w // self.scale), mode='bilinear', antialias=True,
                              align_corners=False)
        return imagenet_normalize(small), target

    def forward(self, backbone: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        feat = stage_maps(backbone, inputs, [self.index])[0]
        return self.head(feat, tuple(d * self.scale for d in inputs.shape[-2:]))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs.float(), targets)
