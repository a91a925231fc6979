"""Colorization (ST model): regress the ab channels of CIE Lab from the L channel (after Zhang et al., 2016).

Input: L scaled ``(L - 50) / 50`` (in [-1, 1]) repeated to 3 channels; target: ab scaled
``(ab + 127) / 255`` (in [0, 1]); head "upCat" (:class:`UpCatHead`) over the four backbone stages; MSE.
The Lab conversion runs batched on the device inside the training step, in float32, from RGB
(the official code fed BGR images to ``rgb2lab``).
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from sentizoo.stages import tap_channels

from .base import PretextTask, images_of, pretext_indices, stage_maps

__all__ = ['Colorization', 'UpCatHead', 'bilinear_matrix', 'rgb_to_lab', 'lab_to_rgb']

# sRGB (IEC 61966-2-1) linear RGB -> CIE XYZ, and the D65 reference white.
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
               (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_DELTA = 6 / 29  # CIE Lab: f(t) = t^(1/3) above DELTA^3, linear below


def _fp32(x: torch.Tensor):
    """Colour maths in float32 even under autocast (cube roots and 2.4 powers lose too much in bf16)."""
    return torch.autocast(x.device.type, enabled=False)


def _channel_matmul(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum('ij,njhw->nihw', matrix, x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], (N, 3, H, W) -> CIE Lab (D65, 2 degrees): L in [0, 100], a and b about [-128, 128]."""
    with _fp32(rgb):
        rgb = rgb.float()
        linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp_min(0) + 0.055) / 1.055) ** 2.4)
        xyz = _channel_matmul(rgb.new_tensor(_RGB_TO_XYZ), linear) / rgb.new_tensor(_WHITE_D65).view(1, 3, 1, 1)
        f = torch.where(xyz > _DELTA ** 3, xyz.clamp_min(_DELTA ** 3) ** (1 / 3), xyz / (3 * _DELTA ** 2) + 4 / 29)
        fx, fy, fz = f.unbind(1)
        return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_lab`; colours outside the sRGB gamut are clipped to [0, 1]."""
    with _fp32(lab):
        lab = lab.float()
        fy = (lab[:, 0] + 16) / 116
        f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], 1)
        xyz = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4 / 29))
        xyz = xyz * lab.new_tensor(_WHITE_D65).view(1, 3, 1, 1)
        linear = _channel_matmul(torch.linalg.inv(lab.new_tensor(_RGB_TO_XYZ)), xyz).clamp(0, 1)
        return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055).clamp(0, 1)


def bilinear_matrix(size_out: int, size_in: int, like: torch.Tensor) -> torch.Tensor:
    """The ``(size_out, size_in)`` matrix of 1-D bilinear resampling as ``F.interpolate(mode='bilinear',
    align_corners=False)`` does it for an explicit output size, on ``like``'s device and dtype: the 2-D resampling
    of ``x`` (..., H, W) is ``bilinear_matrix(H', H) @ x @ bilinear_matrix(W', W).T``."""
    source = ((torch.arange(size_out, dtype=torch.float64) + 0.5) * (size_in / size_out) - 0.5).clamp_min(0)
    low = source.floor().long().clamp_max(size_in - 1)
    high = (low + 1).clamp_max(size_in - 1)
    fraction = source - low
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    matrix.index_put_((rows, low), 1 - fraction, accumulate=True)
    matrix.index_put_((rows, high), fraction, accumulate=True)
    return matrix.to(device=like.device, dtype=like.dtype)


class UpCatHead(nn.Module):
    """"upCat": a 1x1 conv per stage (``width`` channels) -> bilinear upsampling to the input size ->
    concatenation -> 3x3 conv -> ``out_channels`` -> sigmoid.

    Every step before the sigmoid is linear, so the head is evaluated in an equivalent order that
    never builds the ``len(stages) * width``-channel map at full resolution (205 MB per 224 px image in
    float32): each 1x1 conv is folded with its slice of the 3x3 kernel into one 1x1 conv to
    ``out_channels * 9`` maps (one per output channel and kernel tap), those are upsampled and summed
    over stages, and a fixed one-hot 3x3 conv adds each tap's map at its offset. Bilinear upsampling
    acts per channel with weights summing to one, so it commutes with 1x1 convs (biases included);
    zero padding happens after upsampling in both orders. Bilinear upsampling is separable,
    ``A_h @ x @ A_w.T`` (:func:`bilinear_matrix`), so the sum over stages is one matrix product
    (CPU forward + backward about 2.5x faster than ``F.interpolate``'s, BENCHMARKS.md). The parameters are the
    plain convs (``reduce[i]``, ``fuse``), so the state dict is that of the naive head.
    """

    def __init__(self, in_channels: Sequence[int], width: int = 256, out_channels: int = 2):
        super().__init__()
        self.width, self.out_channels = width, out_channels
        self.reduce = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.fuse = nn.Conv2d(width * len(in_channels), out_channels, 3, padding=1)
        taps = torch.eye(9).view(1, 9, 3, 3).repeat(out_channels, 1, 1, 1)  # map (o, k) -> offset k of output o
        self.register_buffer('taps', taps, persistent=False)

    def forward(self, feats: Sequence[torch.Tensor], size: Tuple[int, int]) -> torch.Tensor:
        if len(feats) != len(self.reduce):
            raise ValueError(f'UpCatHead expects {len(self.reduce)} feature maps, got {len(feats)}')
        height, width = size
        upsampled_rows, column_weights = [], []
        for i, (feat, reduce) in enumerate(zip(feats, self.reduce)):
            # the fuse kernel's slice for this stage as rows (output channel, ky, kx) x width
            kernel = self.fuse.weight[:, i * self.width:(i + 1) * self.width].permute(0, 2, 3, 1).flatten(0, 2)
            weight = (kernel @ reduce.weight.flatten(1))[:, :, None, None]
            maps = F.conv2d(feat, weight, kernel @ reduce.bias)
            upsampled_rows.append(bilinear_matrix(height, maps.shape[-2], maps) @ maps)
            column_weights.append(bilinear_matrix(width, maps.shape[-1], maps))
        # sum_i A_h,i X_i A_w,i^T as [A_h,1 X_1 | A_h,2 X_2 | ...] @ [A_w,1 | A_w,2 | ...]^T
        total = torch.cat(upsampled_rows, -1) @ torch.cat(column_weights, 1).T
        out = F.conv2d(total, self.taps.to(total.dtype), self.fuse.bias.to(total.dtype), padding=1,
                       groups=self.out_channels)
        return torch.sigmoid(out)


class Colorization(PretextTask):
    """Lab colorization on the four backbone stages.

    Args:
        backbone: the timm backbone (read for its four stages and their widths, :func:`~.base.pretext_indices`).
        width: channels of each stage's 1x1 conv in the upCat head (paper: 256).
    """

    name = 'colorization'

    def __init__(self, backbone: nn.Module, width: int = 256):
        super().__init__()
        self.indices = pretext_indices(backbone)
        self.head = UpCatHead(tap_channels(backbone, self.indices), width, out_channels=2)

    def prepare(self, batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        """RGB in [0, 1] -> (L input (N, 3, H, W) in [-1, 1], ab target (N, 2, H, W) in [0, 1])."""
        lab = rgb_to_lab(images_of(batch))
        return ((lab[:, :1] - 50) / 50).repeat(1, 3, 1, 1), (lab[:, 1:] + 127) / 255

    def forward(self, backbone: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(stage_maps(backbone, inputs, self.indices), inputs.shape[-2:])

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs.float(), targets)
