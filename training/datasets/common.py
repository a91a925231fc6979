"""Shared pieces of the dataset readers in ``training/datasets``.

* :class:`ImageDataset`: ``(transform(image), target)`` over parallel lists of paths and targets, images
  read with :func:`sentizoo.images.load_image`. **Bad-file policy**: an image that fails to load is
  logged once (per process) with its path and reason, recorded in ``bad_files``, and replaced by the
  next sample in index order (wrapping around), so an epoch never crashes on one corrupt file and the
  batch keeps its size. After ``max_bad_in_a_row`` consecutive failures the dataset raises instead,
  because then the problem is the data root, not a file.
* Fail-fast helpers: :func:`require_path`, :func:`read_table` and :class:`DatasetFormatError` name the
  file, the line and the expected format.
* Deterministic class lists: :func:`class_folders`, :func:`class_to_idx` (order given, never a set).
* Seeded splits on ``numpy.random.RandomState``, whose stream NumPy keeps frozen across versions, so a
  split made today is the same split next year: :func:`train_test_indices` (scikit-learn's
  ``train_test_split`` arithmetic, bit-identical for the same seed), :func:`split_indices` and
  :func:`split_per_class`.
* :func:`pretrain_transform`: the paper's pre-training augmentation.
"""
from __future__ import annotations

import logging
import math
import os
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from sentizoo.datasets import eval_transform, paper_data_config, train_transform
from sentizoo.images import IMAGE_EXTENSIONS, ImageLoadError, load_image

PathLike = Union[str, Path]

_logger = logging.getLogger(__name__)


class DatasetFormatError(ValueError):
    """A dataset file exists but does not have the expected format (message names file, line, format)."""

    def __init__(self, path: PathLike, expected: str, line_no: Optional[int] = None, line: Optional[str] = None):
        where = f'{path}:{line_no}' if line_no is not None else str(path)
        got = f', got {line!r}' if line is not None else ''
        super().__init__(f'{where}: expected {expected}{got}')
        self.path, self.line_no = Path(path), line_no


def require_path(path: PathLike, expected: str) -> Path:
    """``path`` as a Path if it exists, else FileNotFoundError saying what should be there."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'{path} not found; expected {expected}')
    return path


def read_table(path: PathLike, expected: str, n_fields: Optional[int] = None, sep: Optional[str] = None,
               ) -> List[Tuple[int, List[str]]]:
    """Non-blank lines of a text file as ``(line_no, fields)`` (1-based line numbers).

    ``sep=None`` splits on any run of whitespace. With ``n_fields`` every line must have exactly that many
    fields, else :class:`DatasetFormatError` naming the line and ``expected``.
    """
    path = require_path(path, expected)
    rows = []
    with open(path, encoding='utf-8') as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip('\r\n')
            if not line.strip():
                continue
            fields = line.strip().split(sep)
            if n_fields is not None and len(fields) != n_fields:
                raise DatasetFormatError(path, expected, line_no, line)
            rows.append((line_no, fields))
    if not rows:
        raise DatasetFormatError(path, f'{expected} (the file is empty)')
    return rows


def parse_int(path: PathLike, line_no: int, value: str, expected: str) -> int:
    """``int(value)``, or :class:`DatasetFormatError` pointing at the line."""
    try:
        return int(value)
    except ValueError:
        raise DatasetFormatError(path, expected, line_no, value) from None


def is_image_file(path: PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def class_folders(root: PathLike, expected: str) -> List[str]:
    """Sorted names of the non-hidden sub-folders of ``root``; an error if there are none."""
    root = require_path(root, expected)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
    if not names:
        raise FileNotFoundError(f'{root} has no class folders; expected {expected}')
    return names


def image_files(folder: PathLike) -> List[Path]:
    """Sorted image files directly inside ``folder`` (hidden files skipped)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith('.') and is_image_file(p))


def class_to_idx(classes: Sequence[str]) -> Dict[str, int]:
    """Name -> index in the given order; duplicates are an error (they would silently merge classes)."""
    dup = sorted(name for name, count in Counter(classes).items() if count > 1)
    if dup:
        raise ValueError(f'duplicate class names {dup[:5]}')
    return {name: i for i, name in enumerate(classes)}


class ImageDataset(Dataset):
    """``(transform(image), target)`` for parallel lists of image paths and targets; bad files are skipped.

    Paths are kept in one NumPy bytes array rather than a list of objects, so DataLoader workers that
    touch them do not copy the list page by page (copy-on-write through reference counts), which matters
    at Places365's 1.8M images.

    Args:
        paths: image files.
        targets: one target per path (any picklable object).
        transform: applied to the RGB PIL image; None keeps the PIL image.
        classes: class names, index = label (for class-labelled datasets).
        max_bad_in_a_row: consecutive unreadable files after which loading raises.
    """

    def __init__(self, paths: Sequence[PathLike], targets: Sequence[Any], transform: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None, max_bad_in_a_row: int = 32):
        if len(paths) != len(targets):
            raise ValueError(f'{len(paths)} paths but {len(targets)} targets')
        if not len(paths):
            raise ValueError(f'{type(self).__name__}: no samples')
        self._paths = np.array([os.fsencode(p) for p in paths])
        self.targets = targets
        self.transform = transform
        self.classes = list(classes) if classes is not None else None
        self.max_bad_in_a_row = max_bad_in_a_row
        self.bad_files: Dict[str, str] = {}

    def path(self, index: int) -> str:
        return os.fsdecode(self._paths[index])

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        n = len(self)
        tries = min(n, self.max_bad_in_a_row)
        for k in range(tries):
            j = (index + k) % n
            path = self.path(j)
            if path in self.bad_files:
                continue
            try:
                image = load_image(path)
            except ImageLoadError as e:
                self.bad_files[path] = str(e)
                _logger.warning('skipping unreadable image %s (%s); using the next sample instead', path, e)
                continue
            return (self.transform(image) if self.transform is not None else image), self.targets[j]
        raise RuntimeError(f'{type(self).__name__}: {tries} unreadable images in a row from index {index} '
                           f'(first: {self.path(index % n)}); check the data root')


def pretrain_transform(image_size: int = 224, normalize: bool = True, train: bool = True
                       ) -> Callable[[Any], torch.Tensor]:
    """The paper's pre-training augmentation: :func:`sentizoo.datasets.train_transform` of the paper's data
    config (resize to a square of ``floor(image_size / 0.875)``, random crop ``image_size``, flip).

    Returns a float tensor (3, image_size, image_size), ImageNet-normalised when ``normalize`` (scene / ANP /
    captioning / jigsaw); ``normalize=False`` keeps [0, 1] for the ST tasks, whose Lab and super-resolution
    targets are computed from the RGB image on the device. ``train=False`` gives the held-out view of the same
    images (:func:`sentizoo.datasets.eval_transform`): the centre crop, no flip.
    """
    config = paper_data_config(image_size)
    if not normalize:  # mean 0, std 1: the identity, exactly, in floating point
        config.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return train_transform(config) if train else eval_transform(config)


def train_test_indices(n: int, test_size: Union[float, int], seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` index arrays of a seeded shuffle split of ``range(n)``.

    Same arithmetic as scikit-learn's ``train_test_split(range(n), test_size=..., random_state=seed)``
    (a float ``test_size`` gives ``ceil(test_size * n)`` test items; the test part is the head of
    ``RandomState(seed).permutation(n)`` and train the rest, in permutation order), so the result is
    bit-identical to it (checked against scikit-learn in the tests) without depending on it.
    """
    n_test = math.ceil(test_size * n) if isinstance(test_size, float) else int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f'test_size={test_size} leaves an empty part of {n} items')
    perm = np.random.RandomState(seed).permutation(n)
    return perm[n_test:], perm[:n_test]


def split_indices(n: int, fractions: Sequence[float], seed: Union[int, Sequence[int]]) -> List[np.ndarray]:
    """Seeded partition of ``range(n)`` into ``len(fractions)`` sorted index arrays.

    Part ``k >= 1`` gets ``round(fractions[k] * n)`` items (half up), part 0 the rest, so small splits are
    never starved by flooring; e.g. ``(0.8, 0.2)`` of 7 gives 6/1 and of 5 gives 4/1.
    """
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f'fractions {tuple(fractions)} must be non-negative and sum to 1')
    sizes = [int(math.floor(f * n + 0.5)) for f in fractions[1:]]
    if sum(sizes) > n:
        raise ValueError(f'cannot split {n} items into {tuple(fractions)}')
    perm = np.random.RandomState(seed).permutation(n)
    bounds = np.cumsum([n - sum(sizes)] + sizes)[:-1]
    return [np.sort(part) for part in np.split(perm, bounds)]


def split_per_class(labels: Iterable[Any], fractions: Sequence[float], seed: int) -> List[np.ndarray]:
    """:func:`split_indices` within each class (stratified).

    Each class is shuffled with its own seed ``(seed, crc32(str(label)))``, so a class's split does not
    change when other classes are added or dropped (pass class names, not indices, to get that).
    """
    by_class: Dict[Any, List[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    parts: List[List[int]] = [[] for _ in fractions]
    for label, members in by_class.items():
        class_seed = (seed, zlib.crc32(str(label).encode()))
        for part, idx in zip(parts, split_indices(len(members), fractions, class_seed)):
            part.extend(np.asarray(members)[idx].tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
