"""VSO / SentiBank adjective-noun-pair (ANP) images for the HP model's ANP classification task.

Layouts (docs/datasets.md §2); ``root`` is one of:

* the ANP folders of the CC image set, ``Images_with_CC/bi_concepts1553/<adj>_<noun>/*.jpg``. It has no
  published split, so each ANP's images are split ``fractions`` (default 80/20, like SentiBank's
  detectors) with a seed: :func:`common.split_per_class`;
* the split layout of tinglyfeng/sentiment_pretraining, ``anp/{train,test}/<adj>_<noun>/*.jpg``
  (detected by the ``train/`` folder). The two splits must hold the same ANPs.

Labels index the sorted ANP folder names, so the number of classes is whatever the data holds (the
official code hard-codes 1,513; the paper says 1,200). ``classes`` fixes the list instead, e.g. to the
1,200 SentiBank ANPs; ``min_images`` drops ANPs with fewer images (logged).

:func:`read_anp_list` parses ``3244ANPs.txt`` for the ANPs' sentiment scores and image counts.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

from .common import (DatasetFormatError, ImageDataset, PathLike, class_folders, class_to_idx, image_files,
                     require_path, split_per_class)

__all__ = ['VSO', 'ANPInfo', 'read_anp_list']

_logger = logging.getLogger(__name__)
_FOLDERS = '<adj>_<noun>/ folders of images (bi_concepts1553) or train/ and test/ holding them'
# "frail_hand [sentiment: -1.44] [#imgs: 358]"; other lines of the file are summaries, not ANPs
_ANP_LINE = re.compile(r'(\S+_\S+)\s\[sentiment:\s(\S+)\]\s\[#imgs:\s([\d,]+)\]')


class ANPInfo(NamedTuple):
    sentiment: float
    images: int


def read_anp_list(path: PathLike) -> Dict[str, ANPInfo]:
    """``{anp: ANPInfo(sentiment, images)}`` from VSO's ``3244ANPs.txt`` (lines that are not ANPs are skipped)."""
    expected = 'ANP lines like "frail_hand [sentiment: -1.44] [#imgs: 358]"'
    path = require_path(path, f"VSO's 3244ANPs.txt with {expected}")
    anps = {}
    with open(path, encoding='utf-8', errors='replace') as f:
        for line_no, line in enumerate(f, 1):
            m = _ANP_LINE.search(line)
            if m is None:
                continue
            try:
                anps[m.group(1)] = ANPInfo(float(m.group(2)), int(m.group(3).replace(',', '')))
            except ValueError:
                raise DatasetFormatError(path, expected, line_no, line.strip()) from None
    if not anps:
        raise DatasetFormatError(path, f'{expected} (none found)')
    return anps


class VSO(ImageDataset):
    """VSO ANP images, ``(transform(image), ANP index)``.

    Args:
        root: ANP folders, or the folder holding ``train/`` and ``test/`` (see the module docstring).
        split: ``'train'`` or ``'test'``; ``'all'`` too when ``root`` has no split.
        transform: applied to the RGB PIL image.
        classes: the ANPs to use, in label order (default: all folders, sorted).
        min_images: ANPs with fewer images (in ``root``, or in ``train/``) are dropped.
        fractions, seed: the per-ANP (train, test) split when ``root`` has none.
    """

    def __init__(self, root: PathLike, split: str = 'train', transform: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None, min_images: int = 1,
                 fractions: Sequence[float] = (0.8, 0.2), seed: int = 0):
        root = require_path(root, _FOLDERS)
        has_split = (root / 'train').is_dir()
        splits = ('train', 'test') if has_split else ('train', 'test', 'all')
        if split not in splits:
            raise ValueError(f'split must be one of {splits} for {root}, got {split!r}')
        source = root / 'train' if has_split else root
        files = self._anp_files(source, classes)
        dropped = sorted(a for a, f in files.items() if len(f) < min_images)
        if dropped:
            _logger.info('VSO: dropping %d ANPs with fewer than %d images: %s', len(dropped), min_images, dropped[:10])
        names = [a for a in files if a not in dropped]
        if not names:
            raise FileNotFoundError(f'{source} has no ANP folder with at least {min_images} images; expected {_FOLDERS}')
        if has_split and split == 'test':  # labels come from train/, whose ANPs test/ must also hold
            files = self._anp_files(require_path(root / 'test', _FOLDERS), names)
        paths = [p for a in names for p in files[a]]
        labels = [i for i, a in enumerate(names) for _ in files[a]]
        if not has_split and split != 'all':
            train, test = split_per_class([names[i] for i in labels], fractions, seed)  # stable per ANP
            keep = train if split == 'train' else test
            paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        super().__init__(paths, labels, transform, classes=names)
        self.root, self.split = root, split

    @staticmethod
    def _anp_files(folder: Path, classes: Optional[Sequence[str]]) -> Dict[str, List[Path]]:
        names = list(class_to_idx(classes)) if classes is not None else class_folders(folder, _FOLDERS)
        missing = [a for a in names if not (folder / a).is_dir()]
        if missing:
            raise FileNotFoundError(f'ANP folders {missing[:10]} not found in {folder}; expected {_FOLDERS} '
                                    f'(train/ and test/ hold the same ANPs)')
        return {a: image_files(folder / a) for a in names}
