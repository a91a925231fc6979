"""Jigsaw puzzles (HO model): recognise which permutation of a fixed set shuffled the 3x3 tiles of an image.

The image (resized to ``3 * tile``, paper: 192 px, tiles of 64 px) is cut into a row-major 3x3 grid
with integer arithmetic (the official code cut with float division, so tiles could differ in size);
one permutation per image is drawn from the set and the tiles are reordered by it: position ``j`` of
the puzzle holds tile ``perm[j]``. All tiles of the batch go through the backbone as one batch
(siamese weights), their pooled features are concatenated per image (9 x C) and a linear layer
predicts the permutation's index; cross-entropy.

The permutation set (Noroozi & Favaro, 2016): ``P`` rows of 0-based tile indices, chosen greedily: a
random first permutation, then each next one maximises the mean Hamming distance to those already
chosen (ties broken at random: the candidates are all 9! permutations in the order of
``numpy.random.default_rng(seed).permutation``, and the first best one is taken). The
greedy order makes the first ``k`` rows of a set the set of size ``k``. The 1,000-permutation set of
:data:`SEED` ships as :data:`PERMUTATIONS_FILE` (minimum pairwise distance 2, mean 8.008)::

    python -m training.pretext.jigsaw --check        # the shipped file equals the generator's output
    python -m training.pretext.jigsaw --regenerate   # rewrite it
"""
from __future__ import annotations

import argparse
import itertools
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import PretextTask, imagenet_normalize, images_of, pooled_dim

__all__ = ['Jigsaw', 'JigsawHead', 'generate_permutations', 'load_permutations', 'save_permutations',
           'cut_tiles', 'assemble_tiles', 'shuffle_tiles', 'PERMUTATIONS_FILE', 'SEED', 'GRID']

GRID = 3
SEED = 2023
NUM_PERMUTATIONS = 1000
PERMUTATIONS_FILE = Path(__file__).with_name(f'jigsaw_permutations_{NUM_PERMUTATIONS}.txt')


@lru_cache(maxsize=1)
def _all_permutations(n: int) -> np.ndarray:
    """Every permutation of ``range(n)`` in lexicographic order, (n!, n) int8 (read-only: shared)."""
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int8)
    perms.flags.writeable = False
    return perms


def generate_permutations(count: int = NUM_PERMUTATIONS, seed: int = SEED, grid: int = GRID) -> np.ndarray:
    """The greedy maximal-mean-Hamming-distance permutation set, ``(count, grid * grid)`` int64, 0-based."""
    n = grid * grid
    rng = np.random.default_rng(seed)
    # all permutations in a seeded random order: taking the first best candidate breaks ties at random
    candidates = rng.permutation(_all_permutations(n))
    if not 1 <= count <= len(candidates):
        raise ValueError(f'count must be in 1..{len(candidates)} for a {grid}x{grid} grid, got {count}')
    columns = np.ascontiguousarray(candidates.T)
    # matches[c] = positions where candidate c agrees with each chosen permutation, summed over them: the
    # mean Hamming distance to the chosen set is maximal where matches is minimal.
    matches = np.zeros(len(candidates), dtype=np.int32)
    step = np.empty(len(candidates), dtype=np.int8)
    taken = np.iinfo(np.int32).max // 2  # marks chosen rows; later additions cannot overflow it
    chosen = [0]
    while True:
        row = candidates[chosen[-1]]
        np.equal(columns[0], row[0], out=step, casting='unsafe')
        for position in range(1, n):
            step += columns[position] == row[position]
        matches += step
        matches[chosen[-1]] = taken
        if len(chosen) == count:
            return candidates[chosen].astype(np.int64)
        chosen.append(int(matches.argmin()))


def save_permutations(permutations: np.ndarray, path: Union[str, Path] = PERMUTATIONS_FILE, seed: int = SEED) -> Path:
    """Write a permutation set as text: a comment header, then one row of space-separated indices per line."""
    path = Path(path)
    header = (f'{len(permutations)} jigsaw permutations of a row-major {GRID}x{GRID} grid, 0-based: position j of '
              f'the puzzle holds tile perm[j].\ntraining.pretext.jigsaw.generate_permutations({len(permutations)}, '
              f'seed={seed}); regenerate with: python -m training.pretext.jigsaw --regenerate')
    np.savetxt(path, permutations, fmt='%d', header=header)
    return path


def load_permutations(count: Optional[int] = None, path: Union[str, Path] = PERMUTATIONS_FILE) -> np.ndarray:
    """The first ``count`` rows (default: all) of a permutation file, checked: distinct permutations of 0..n-1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'jigsaw permutation file {path} is missing; create it with '
                                f'python -m training.pretext.jigsaw --regenerate')
    perms = np.loadtxt(path, dtype=np.int64, ndmin=2)
    n = perms.shape[1]
    if (np.sort(perms, axis=1) != np.arange(n)).any() or len(np.unique(perms, axis=0)) != len(perms):
        raise ValueError(f'{path}: every row must be a distinct permutation of 0..{n - 1}')
    if count is not None and not 1 <= count <= len(perms):
        raise ValueError(f'{path} holds {len(perms)} permutations; asked for {count}')
    return perms[:count]


def cut_tiles(images: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """(N, C, grid*t, grid*t) -> (N, grid*grid, C, t, t), tiles in row-major order."""
    n, c, h, w = images.shape
    if h != w or h % grid:
        raise ValueError(f'cut_tiles: images must be square with a side divisible by {grid}; got {h}x{w}')
    t = h // grid
    return images.reshape(n, c, grid, t, grid, t).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, t, t)


def assemble_tiles(tiles: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """The inverse of :func:`cut_tiles`: (N, grid*grid, C, t, t) -> (N, C, grid*t, grid*t)."""
    n, _, c, t, _ = tiles.shape
    return tiles.reshape(n, grid, grid, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(n, c, grid * t, grid * t)


def shuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Reorder each image's tiles: ``out[i, j] = tiles[i, perms[i, j]]``; ``perms`` is (N, grid*grid)."""
    return tiles[torch.arange(len(tiles), device=tiles.device)[:, None], perms]


class JigsawHead(nn.Module):
    """Concatenated pooled tile features (9 x C) -> ``Linear`` -> permutation logits."""

    def __init__(self, features: int, num_permutations: int, tiles: int = GRID * GRID):
        super().__init__()
        self.tiles = tiles
        self.fc = nn.Linear(tiles * features, num_permutations)

    def forward(self, tile_features: torch.Tensor) -> torch.Tensor:
        """``tile_features``: (N * tiles, C), the tiles of each image consecutive."""
        return self.fc(tile_features.reshape(-1, self.tiles * tile_features.shape[-1]))


class Jigsaw(PretextTask):
    """3x3 jigsaw puzzles over a fixed permutation set.

    Args:
        backbone: the timm backbone (read for its pooled feature width, :func:`~.base.pooled_dim`).
        permutations: the set, ``(P, 9)`` 0-based (array or tensor), or ``P`` for the first ``P`` rows of
            the shipped set, or ``None`` for all 1,000 of them. Kept as the buffer ``permutations``
            (saved with the model, so a checkpoint records its set).
        tile: tile side in pixels; images are resized to ``3 * tile`` (paper: 64 -> 192 px).
    """

    name = 'jigsaw'

    def __init__(self, backbone: nn.Module, permutations: Union[None, int, np.ndarray, torch.Tensor] = None,
                 tile: int = 64):
        super().__init__()
        if permutations is None or isinstance(permutations, int):
            permutations = load_permutations(permutations)
        perms = torch.as_tensor(np.asarray(permutations), dtype=torch.long)
        if perms.dim() != 2 or perms.shape[1] != GRID * GRID:
            raise ValueError(f'Jigsaw: permutations must have shape (P, {GRID * GRID}), got {tuple(perms.shape)}')
        self.tile = tile
        self.register_buffer('permutations', perms)
        self.head = JigsawHead(pooled_dim(backbone), len(perms))

    def prepare(self, batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        """RGB in [0, 1] -> (shuffled tiles (N, 9, 3, tile, tile), permutation index (N,)).

        The permutations are drawn from torch's default generator of the batch's device.
        """
        images = imagenet_normalize(images_of(batch))
        side = GRID * self.tile
        if images.shape[-2:] != (side, side):
            images = F.interpolate(images, size=(side, side), mode='bilinear', antialias=True, align_corners=False)
        index = torch.randint(len(self.permutations), (len(images),), device=images.device)
        return shuffle_tiles(cut_tiles(images), self.permutations[index]), index

    def forward(self, backbone: nn.Module, tiles: torch.Tensor) -> torch.Tensor:
        return self.head(backbone(tiles.flatten(0, 1)))

    def loss(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, index)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m training.pretext.jigsaw',
                                description='Generate or check the shipped jigsaw permutation set.')
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument('--regenerate', action='store_true', help='(re)write the permutation file')
    action.add_argument('--check', action='store_true', help='exit 1 unless the file equals the generator output')
    p.add_argument('--count', type=int, default=NUM_PERMUTATIONS, help='number of permutations')
    p.add_argument('--seed', type=int, default=SEED, help='generator seed')
    p.add_argument('--output', type=Path, default=PERMUTATIONS_FILE, help='the permutation file')
    args = p.parse_args(argv)
    perms = generate_permutations(args.count, args.seed)
    if args.check:
        same = np.array_equal(load_permutations(path=args.output), perms)
        print(f'{args.output}: {"equals" if same else "DIFFERS FROM"} generate_permutations({args.count}, '
              f'seed={args.seed})')
        return 0 if same else 1
    save_permutations(perms, args.output, args.seed)
    dist = (perms[:, None] != perms[None]).sum(-1)[np.triu_indices(len(perms), 1)]
    print(f'wrote {args.output}: {len(perms)} permutations, Hamming distance min {dist.min()}, mean {dist.mean():.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
