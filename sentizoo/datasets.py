"""Labelled image datasets for ``sentizoo amalgamate`` / ``evaluate`` and the paper's downstream transforms.

Two layouts, chosen by :func:`open_dataset` from the path:

* a **folder of class folders** (single-label): ``root/<class>/*.jpg``; classes are the sub-folder names in
  sorted order, the target of an image is its class index;
* a **CSV file** (multi-label or label distributions): a header ``path,<label 1>,...,<label C>``, then one
  row per image with its path (relative to the CSV's folder, or absolute) and C numbers: 0/1 for MLL,
  a distribution summing to 1 for LDL.

Images are read with :func:`sentizoo.images.load_image`; a bad file raises its ``ImageLoadError``.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from .images import ImageLoadError, check_image_header, list_images, load_image
from .tasks import Task

__all__ = ['LabelledImages', 'image_folder', 'image_csv', 'open_dataset', 'paper_data_config', 'resize_size',
           'train_transform', 'eval_transform']

PathLike = Union[str, 'os.PathLike[str]']


class LabelledImages(Dataset):
    """``dataset[i] -> (transform(load_image(paths[i])), targets[i])``.

    Args:
        paths: image files.
        targets: one row per image: class indices (N,) int64, or label vectors (N, C) float32.
        label_names: name of each class / label column.
        transform: applied to the RGB PIL image.
        sources: where each row comes from, for error messages (e.g. ``labels.csv:7``); default the path.
    """

    def __init__(self, paths: Sequence[PathLike], targets: torch.Tensor, label_names: Sequence[str],
                 transform: Optional[Callable] = None, sources: Optional[Sequence[str]] = None):
        if len(paths) != len(targets):
            raise ValueError(f'{len(paths)} images but {len(targets)} targets.')
        self.paths = [Path(p) for p in paths]
        self.targets = targets
        self.label_names = list(label_names)
        self.transform = transform
        self.sources = list(sources) if sources is not None else [str(p) for p in self.paths]

    def check_labels(self, task: Task, num_outputs: int, max_listed: int = 20) -> None:
        """Raise one ValueError listing every row whose target does not fit ``task`` and a model with
        ``num_outputs`` outputs, and every image file that is missing, empty or not an image by its header
        (:func:`~sentizoo.images.check_image_header`). Reads labels and headers, not pixels: cheap enough to run
        over the whole dataset before training (a bad row found mid-epoch wastes the epoch)."""
        problems = []
        if task.name == 'sll' and len(self.label_names) < 2:
            problems.append(f'single-label data needs at least two classes; found {self.label_names}')
        if len(self.label_names) != num_outputs:
            problems.append(f'{len(self.label_names)} labels but the model has {num_outputs} outputs')
        if _why_not(task, self.targets, num_outputs):  # the whole tensor at once; row by row only to name them
            for i, source in enumerate(self.sources):
                why = _why_not(task, self.targets[i:i + 1], num_outputs)
                if why:
                    problems.append(f'{source}: {why}')
        problems += [f'{source}: {why}' for source, path in zip(self.sources, self.paths) if (why := _bad_file(path))]
        if problems:
            raise ValueError(_listed(problems, 'in the data', max_listed))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[Any, torch.Tensor]:
        image = load_image(self.paths[index])
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def _bad_file(path: Path) -> Optional[str]:
    """Why the image file ``path`` cannot be trained on, from its size and header; None if it looks fine."""
    if not path.is_file():
        return f'image file {path} does not exist'
    try:
        check_image_header(path)
    except ImageLoadError as e:
        return f'image file {path}: {e.reason}'
    return None


def _listed(problems: Sequence[str], where: str, max_listed: int = 20) -> str:
    """One message with every problem (the first ``max_listed`` spelled out)."""
    more = len(problems) - max_listed
    return (f'{len(problems)} problem(s) {where}: ' + '; '.join(problems[:max_listed])
            + (f'; and {more} more' if more > 0 else '') + '.')


def _why_not(task: Task, targets: torch.Tensor, num_outputs: int) -> Optional[str]:
    try:
        task.check_target(targets, num_outputs)
    except ValueError as e:
        return str(e)
    return None


def image_folder(root: PathLike, transform: Optional[Callable] = None) -> LabelledImages:
    """Single-label images from ``root/<class>/...`` (classes sorted; images found recursively, sorted)."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
    if not classes:
        raise ValueError(f'{root} has no class folders; expected {root}/<class>/<image>.jpg.')
    paths: List[Path] = []
    targets: List[int] = []
    for index, name in enumerate(classes):
        files = list_images(root / name)
        if not files:
            raise ValueError(f'class folder {root / name} holds no images.')
        paths += files
        targets += [index] * len(files)
    return LabelledImages(paths, torch.tensor(targets), classes, transform)


def image_csv(path: PathLike, transform: Optional[Callable] = None) -> LabelledImages:
    """Label vectors from a CSV: header ``path,<label 1>,...``; image paths relative to the CSV's folder."""
    path = Path(path)
    expected = 'a header "path,<label 1>,...,<label C>" and rows "<image path>,<C numbers>"'
    try:
        with open(path, newline='', encoding='utf-8') as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except UnicodeDecodeError as e:
        raise ValueError(f'{path}: not UTF-8 text (it holds the byte {e.object[e.start]:#04x}, e.g. Latin-1); '
                         f'save the file as UTF-8.') from None
    except csv.Error as e:
        raise ValueError(f'{path}: not a readable CSV file ({e}).') from None
    if len(rows) < 2 or len(rows[0][1]) < 2:
        raise ValueError(f'{path}: expected {expected}; got {len(rows)} non-empty line(s).')
    header, paths, targets, problems = rows[0][1], [], [], []
    for line_no, row in rows[1:]:
        try:
            if len(row) != len(header):
                raise ValueError(f'{len(row)} fields for {len(header)} columns')
            targets.append([float(cell) for cell in row[1:]])
        except ValueError as e:
            problems.append(f'{path}:{line_no}: got {row!r} ({e})')
        paths.append(path.parent / row[0].strip())
    if problems:
        raise ValueError(_listed(problems, f'in {path} (expected {expected})'))
    return LabelledImages(paths, torch.tensor(targets, dtype=torch.float32), [h.strip() for h in header[1:]],
                          transform, sources=[f'{path}:{line_no}' for line_no, _ in rows[1:]])


def open_dataset(path: PathLike, transform: Optional[Callable] = None) -> LabelledImages:
    """:func:`image_folder` for a directory, :func:`image_csv` for a file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'{path} does not exist; expected a folder of class folders or a CSV file.')
    return image_folder(path, transform) if path.is_dir() else image_csv(path, transform)


def paper_data_config(img_size: int = 224) -> Dict[str, Any]:
    """The paper's preprocessing at ``img_size`` as a timm data config (the ``senti_*`` weights' own)."""
    from .models import PREPROCESSING
    return dict(input_size=(3, img_size, img_size), **PREPROCESSING)


def resize_size(data_config: Dict[str, Any]) -> int:
    """The side of the square an image is resized to before the crop: ``floor(size / crop_pct)``, timm's rule."""
    return math.floor(data_config['input_size'][-1] / data_config['crop_pct'])


def train_transform(data_config: Dict[str, Any]) -> Callable:
    """The paper's training augmentation: resize to a square of :func:`resize_size` (256 for 224) with the
    config's interpolation, random crop ``size``, horizontal flip, normalise with its mean/std.

    The transform keeps ``data_config`` as its ``data_config`` attribute: a model trained on a dataset with this
    transform (:func:`sentizoo.amalgamate`, :func:`sentizoo.finetune`) records it as its preprocessing."""
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms as T

    size, resize = data_config['input_size'][-1], resize_size(data_config)
    transform = T.Compose([T.Resize((resize, resize), interpolation=str_to_interp_mode(data_config['interpolation'])),
                           T.RandomCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(data_config['mean'], data_config['std'])])
    transform.data_config = dict(data_config)
    return transform


def eval_transform(data_config: Dict[str, Any]) -> Callable:
    """Evaluation: timm's eval transform of the data config. With the paper's (``crop_mode='squash'``) it
    resizes to a square of :func:`resize_size` and centre-crops ``size``, as
    ``timm.data.create_transform(**resolve_data_config(model=model))`` does for a ``senti_*`` model."""
    from timm.data import create_transform
    return create_transform(**data_config)
