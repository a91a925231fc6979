"""Places365-Standard scene labels for the HO model's scene-recognition task.

Two published layouts are read (docs/datasets.md §1); ``layout='auto'`` picks the one found under ``root``:

* ``official``: the devkit lists beside the image archives::

      root/categories_places365.txt            "/a/airfield 0" ... 365 lines, id = line order
      root/places365_train_standard.txt        "/a/airfield/00000001.jpg 0"  (relative to data_256/)
      root/places365_val.txt                   "Places365_val_00000001.jpg 165"
      root/data_256/a/airfield/00000001.jpg    (or data_large/, or torchvision's data_256_standard/)
      root/val_256/Places365_val_00000001.jpg  (flat; or val_large/)

* ``easy`` (``places365standard_easyformat.tar``), ``root`` being ``places365_standard/`` or its parent::

      places365_standard/train.txt             "train/airfield/00000001.jpg" (no label)
      places365_standard/val.txt               "val/airfield/Places365_val_00000435.jpg"
      places365_standard/{train,val}/<class>/*.jpg   two-level classes flattened: apartment_building-outdoor

Class ids always follow ``categories_places365.txt`` (looked up in ``root``, ``places365_standard/`` and
their parent). Without it the easy layout uses the sorted folder names, which is the same order: the
flattening only turns '/' into '-', and no class name holds a character that sorts between the two.
Class names are the flattened easy-format names (``airfield``, ``apartment_building-outdoor``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Tuple

from .common import (DatasetFormatError, ImageDataset, PathLike, class_folders, class_to_idx, parse_int,
                     read_table, require_path)

__all__ = ['Places365', 'read_categories']

CATEGORIES = 'categories_places365.txt'
EASY_DIR = 'places365_standard'
_LISTS = {'train': 'places365_train_standard.txt', 'val': 'places365_val.txt'}
_IMAGE_DIRS = {  # split -> (small, large) candidates, first found wins
    'train': (('data_256', 'data_256_standard'), ('data_large', 'data_large_standard')),
    'val': (('val_256',), ('val_large',)),
}
_CATEGORIES_FORMAT = f'{CATEGORIES}: lines "/<letter>/<class>[/<sub>] <id>" with ids 0, 1, 2, ... in order'


def read_categories(path: PathLike) -> List[str]:
    """Class names in id order from ``categories_places365.txt``, flattened (``/a/b/c`` -> ``b-c``)."""
    names = []
    for line_no, (cat, idx) in read_table(path, _CATEGORIES_FORMAT, n_fields=2):
        parts = cat.split('/')
        if len(parts) < 3 or parts[0] or parse_int(path, line_no, idx, _CATEGORIES_FORMAT) != len(names):
            raise DatasetFormatError(path, _CATEGORIES_FORMAT, line_no, f'{cat} {idx}')
        names.append('-'.join(parts[2:]))
    class_to_idx(names)  # duplicates are an error
    return names


class Places365(ImageDataset):
    """Places365-Standard, ``(transform(image), class index)``.

    Args:
        root: folder holding either layout (see the module docstring).
        split: ``'train'`` or ``'val'`` (the test set has no labels).
        transform: applied to the RGB PIL image, e.g. ``common.pretrain_transform()``.
        layout: ``'auto'``, ``'official'`` or ``'easy'``.
        large: official layout only: read ``data_large``/``val_large`` instead of the 256 px images.
    """

    def __init__(self, root: PathLike, split: str = 'train', transform: Optional[Callable] = None,
                 layout: str = 'auto', large: bool = False):
        if split not in _LISTS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        root = require_path(root, 'a Places365-Standard folder (official devkit lists or places365_standard/)')
        if layout == 'auto':
            layout = 'official' if (root / CATEGORIES).is_file() and (root / _LISTS[split]).is_file() else 'easy'
        if layout == 'official':
            classes = read_categories(root / CATEGORIES)
            paths, labels = self._read_official(root, split, classes, large)
        elif layout == 'easy':
            paths, labels, classes = self._read_easy(root, split)
        else:
            raise ValueError(f"layout must be 'auto', 'official' or 'easy', got {layout!r}")
        super().__init__(paths, labels, transform, classes=classes)
        self.root, self.split, self.layout = root, split, layout

    @staticmethod
    def _read_official(root: Path, split: str, classes: List[str], large: bool) -> Tuple[List[str], List[int]]:
        list_file = root / _LISTS[split]
        expected = (f'{list_file.name}: lines "/<letter>/<class>[/<sub>]/<file>.jpg <id>"' if split == 'train'
                    else f'{list_file.name}: lines "Places365_val_<8 digits>.jpg <id>"')
        candidates = _IMAGE_DIRS[split][large]
        image_dir = next((root / d for d in candidates if (root / d).is_dir()), None)
        if image_dir is None:
            raise FileNotFoundError(f'no image folder {" or ".join(candidates)} in {root}; extract the '
                                    f'Places365 {split} image archive there')
        paths, labels = [], []
        for line_no, (rel, idx) in read_table(list_file, expected, n_fields=2):
            label = parse_int(list_file, line_no, idx, expected)
            if not 0 <= label < len(classes):
                raise DatasetFormatError(list_file, f'{expected} with 0 <= id < {len(classes)}', line_no, f'{rel} {idx}')
            if split == 'train':
                parts = rel.split('/')
                # the folder of the path must be the category of the id, else the lists are mixed up
                if len(parts) < 4 or parts[0] or '-'.join(parts[2:-1]) != classes[label]:
                    raise DatasetFormatError(list_file, f'{expected} whose folder is category <id>', line_no,
                                             f'{rel} {idx}')
                rel = rel[1:]
            paths.append(f'{image_dir}/{rel}')  # plain strings: 1.8M Path joins are slow
            labels.append(label)
        return paths, labels

    @staticmethod
    def _read_easy(root: Path, split: str) -> Tuple[List[str], List[int], List[str]]:
        base = root / EASY_DIR if (root / EASY_DIR).is_dir() else root
        list_file = base / f'{split}.txt'
        expected = f'{list_file.name}: lines "{split}/<class>/<file>.jpg" (easy format, no label)'
        require_path(list_file, f'{expected}, or the official layout ({CATEGORIES} + {_LISTS[split]})')
        categories = next((d / CATEGORIES for d in (root, base, base.parent) if (d / CATEGORIES).is_file()), None)
        classes = (read_categories(categories) if categories is not None
                   else class_folders(base / 'train', f'{base}/train/<class>/ folders of the easy format'))
        index = class_to_idx(classes)
        paths, labels = [], []
        for line_no, fields in read_table(list_file, expected, n_fields=1):
            parts = fields[0].split('/')
            if len(parts) != 3 or parts[0] != split or parts[1] not in index:
                raise DatasetFormatError(list_file, f'{expected} with a known class', line_no, fields[0])
            paths.append(f'{base}/{fields[0]}')
            labels.append(index[parts[1]])
        return paths, labels, classes
