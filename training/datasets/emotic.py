"""EMOTIC (Kosti et al., CVPR 2017 / PAMI 2019): 26 emotion categories, multi-label (MLL).

Images live at ``<root>/emotic/<folder>/<filename>`` (``folder`` e.g. ``mscoco/images``; ``root``
itself when it has no ``emotic/``). The official train/val/test split is read from, in this order:

1. ``annotations=`` (a CSV of the split, or ``Annotations.mat``);
2. ``<root>/emotic_pre/<split>.csv`` or ``<root>/<split>.csv``: Tandon-A's preprocessed CSV
   (``Index,Folder,Filename,Image Size,BBox,Categorical_Labels,Continuous_Labels,Gender,Age``, list
   columns as Python reprs; val/test rows hold the annotators' combined labels);
3. ``<root>/Annotations/Annotations.mat`` (needs scipy; read positionally as Tandon-A's ``mat2py.py``:
   train persons' categories, val/test persons' combined categories).

EMOTIC annotates *people*; the paper trains image-level classifiers, so a sample here is an image and
its target the union of the categories of its people (26-dim multi-hot). People without any category
are left out, as in ``mat2py.py``; so is an image left with none. Body boxes are validated but unused.
"""
import ast
import csv
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

from .common import DatasetFormatError, require_path
from .emotion import DownstreamDataset, PathLike, check_files_exist, multi_hot

CATEGORIES = ('Affection', 'Anger', 'Annoyance', 'Anticipation', 'Aversion', 'Confidence', 'Disapproval',
              'Disconnection', 'Disquietment', 'Doubt/Confusion', 'Embarrassment', 'Engagement', 'Esteem',
              'Excitement', 'Fatigue', 'Fear', 'Happiness', 'Pain', 'Peace', 'Pleasure', 'Sadness', 'Sensitivity',
              'Suffering', 'Surprise', 'Sympathy', 'Yearning')
"""The 26 categories in the canonical order of the EMOTIC release."""

CSV_COLUMNS = ('Folder', 'Filename', 'BBox', 'Categorical_Labels')


class Person(NamedTuple):
    image: str  # '<folder>/<filename>'
    bbox: Tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    labels: Tuple[int, ...]  # indices into CATEGORIES


class Emotic(DownstreamDataset):
    """EMOTIC reader: ``Emotic(root, split)[i] == (transform(image), 26-dim multi-hot)``."""

    name = 'emotic'
    classes = CATEGORIES
    tasks = ('mll',)

    def __init__(self, root: PathLike, split: str = 'train', transform: Optional[Callable] = None,
                 task: Optional[str] = None, *, annotations: Optional[PathLike] = None):
        super().__init__(root, split, transform, task)
        source = self._find_annotations(annotations)
        people = read_mat(source, split) if source.suffix == '.mat' else read_csv(source)
        union: Dict[str, Set[int]] = {}  # image -> categories, images in order of first appearance
        for person in people:
            if person.labels:
                union.setdefault(person.image, set()).update(person.labels)
        image_root = self.root / 'emotic' if (self.root / 'emotic').is_dir() else self.root
        paths = [image_root / image for image in union]
        check_files_exist(paths, self.name, source)
        self._set_samples(paths, multi_hot(list(union.values()), self.num_classes))

    def _find_annotations(self, annotations: Optional[PathLike]) -> Path:
        if annotations is not None:
            return require_path(annotations, 'an EMOTIC annotation file (<split>.csv or Annotations.mat)')
        candidates = [self.root / 'emotic_pre' / f'{self.split}.csv', self.root / f'{self.split}.csv',
                      self.root / 'Annotations' / 'Annotations.mat']
        for path in candidates:
            if path.is_file():
                return path
        raise FileNotFoundError(f'emotic: no annotations for split {self.split!r}; looked for '
                                f'{[str(p) for p in candidates]} (or pass annotations=).')


def _parse_labels(names: Sequence[str]) -> Tuple[int, ...]:
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        raise ValueError(f'unknown categories {unknown}')
    return tuple(sorted({CATEGORIES.index(n) for n in names}))


def _parse_bbox(values: Sequence[float]) -> Tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in values)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f'empty box {list(values)}')
    return x1, y1, x2, y2


def read_csv(path: Path) -> List[Person]:
    """The people of Tandon-A's preprocessed ``<split>.csv``."""
    people = []
    with open(path, newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise DatasetFormatError(path, f'a header with the columns {CSV_COLUMNS}', 1, str(reader.fieldnames))
        for row in reader:
            try:
                labels = ast.literal_eval(row['Categorical_Labels'])
                if not isinstance(labels, list):
                    raise ValueError('Categorical_Labels is not a list')
                people.append(Person(f"{row['Folder']}/{row['Filename']}",
                                     _parse_bbox(ast.literal_eval(row['BBox'])), _parse_labels(labels)))
            except (ValueError, SyntaxError, TypeError) as e:
                raise DatasetFormatError(path, 'BBox as "[x1, y1, x2, y2]" and Categorical_Labels as a list of '
                                         f"EMOTIC categories like \"['Engagement', 'Happiness']\" ({e})",
                                         reader.line_num, str({c: row[c] for c in CSV_COLUMNS})) from None
    return people


def read_mat(path: Path, split: str) -> List[Person]:
    """The people of ``split`` in the official ``Annotations.mat`` (scipy is imported only here).

    Read positionally like Tandon-A's ``mat2py.py``: an entry is ``(filename, folder, image_size,
    original_database, person)``; a person starts with its body box, then (train) its categories or
    (val/test) the per-annotator categories followed by the combined categories, which we use.
    """
    from scipy.io import loadmat
    mat = loadmat(path)
    if split not in mat:
        raise DatasetFormatError(path, f"the MATLAB variable {split!r} (of 'train', 'val', 'test')", None,
                                 str(sorted(k for k in mat if not k.startswith('__'))))
    people = []
    for i, entry in enumerate(mat[split].ravel()):
        try:
            image = f'{_strings(entry[1])[0]}/{_strings(entry[0])[0]}'
            for person in entry[4].ravel():
                people.append(Person(image, _parse_bbox(person[0].ravel()[:4]),
                                     _parse_labels(_strings(person[1 if split == 'train' else 2]))))
        except (IndexError, ValueError, TypeError, AttributeError) as e:
            raise DatasetFormatError(path, f'{split} entry {i} as (filename, folder, image_size, original_database, '
                                     f'person(body_bbox, categories, ...)) ({e})') from None
    return people


def _strings(value) -> List[str]:
    """Every string inside a loadmat value (char arrays, cell arrays and structs, nested), in order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, np.void):  # one struct: its fields
        return [s for field in value for s in _strings(field)]
    if isinstance(value, np.ndarray):
        if value.dtype.kind == 'U':
            return [str(s) for s in value.ravel()]
        if value.dtype.kind in 'OV':
            return [s for item in value.ravel() for s in _strings(item)]
    return []
