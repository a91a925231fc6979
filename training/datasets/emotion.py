"""The emotion datasets of the paper's downstream experiments (Table 1): the shared reader base and
:func:`get_dataset` (the experiments themselves: :mod:`training.downstream`).

Every reader is a :class:`DownstreamDataset` (an :class:`~training.datasets.common.ImageDataset`, so
it shares its bad-image policy): ``dataset[i]`` is ``(transform(image), target)`` with the target
shaped for ``dataset.task``:

- ``'sll'``: a class index (0-dim ``int64`` tensor; a batch is ``(N,)``);
- ``'mll'``: a multi-hot ``float32`` vector over ``dataset.classes``;
- ``'ldl'``: a ``float32`` distribution over ``dataset.classes`` that sums to 1.

``dataset.classes`` holds the label names in the canonical order of the dataset and ``dataset.tasks``
the tasks it supports (the first is the default). Annotation files are checked when the dataset is
built: a missing file or image, or a malformed line, raises at once with the path and line.

Datasets without an official split are split by a seeded shuffle (:data:`DEFAULT_SEED`) that is
saved as a JSON file list, by default ``<root>/splits/<name>_seed<seed>.json``, and reloaded on
later runs, so runs compare (see :func:`load_or_make_split`).
"""
import json
import os
from importlib import import_module
from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from sentizoo.images import list_images

from .common import DatasetFormatError, ImageDataset, PathLike, split_indices, split_per_class

SPLITS = ('train', 'val', 'test')
DEFAULT_SEED = 0
"""Seed of every split drawn here (it is part of the saved split file's name)."""
EIGHTY_TWENTY = {'train': 0.72, 'val': 0.08, 'test': 0.20}
"""The common 80/20 train/test practice, with a tenth of train held out for model selection."""

# the reader of each dataset, imported on first use (emotic's .mat path needs scipy, the others do not)
_READERS = {
    'fi': 'training.datasets.fi:FI',
    'emoset': 'training.datasets.emoset:EmoSet',
    'unbiasedemo': 'training.datasets.unbiasedemo:UnBiasedEmo',
    'emotic': 'training.datasets.emotic:Emotic',
    'emotion6': 'training.datasets.emotion6:Emotion6',
    'abstract': 'training.datasets.abstract:Abstract',
}
DATASET_NAMES = tuple(_READERS)


def get_dataset(name: str, root: PathLike, split: str = 'train', transform: Optional[Callable] = None,
                task: Optional[str] = None, **kwargs) -> 'DownstreamDataset':
    """The reader of dataset ``name`` (one of :data:`DATASET_NAMES`) on ``root``.

    ``task=None`` picks the dataset's default task; ``kwargs`` go to the reader (``seed``,
    ``split_file``, ``mll_threshold``, ``annotations``, as each reader documents).
    """
    key = name.lower()
    if key not in _READERS:
        raise ValueError(f'Unknown downstream dataset {name!r}; choose one of {DATASET_NAMES}.')
    module, cls = _READERS[key].split(':')
    return getattr(import_module(module), cls)(root, split=split, transform=transform, task=task, **kwargs)


class DownstreamDataset(ImageDataset):
    """Base of the downstream readers.

    A subclass's ``__init__`` calls ``super().__init__`` (which checks the arguments), parses its
    annotation files and finishes with :meth:`_set_samples`.
    """

    name: ClassVar[str]
    classes: Sequence[str]
    tasks: ClassVar[Tuple[str, ...]]

    def __init__(self, root: PathLike, split: str, transform: Optional[Callable], task: Optional[str]):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f'{self.name}: dataset root {self.root} is not a directory.')
        if split not in SPLITS:
            raise ValueError(f'{self.name}: split must be one of {SPLITS}, got {split!r}.')
        task = self.tasks[0] if task is None else task
        if task not in self.tasks:
            raise ValueError(f'{self.name} supports the tasks {self.tasks}, got task={task!r}.')
        self.split, self.task, self.transform = split, task, transform

    def _set_samples(self, paths: Sequence[Path], targets: torch.Tensor) -> None:
        if not paths:
            raise ValueError(f'{self.name}: the {self.split!r} split of {self.root} has no images.')
        super().__init__(paths, targets, self.transform, classes=self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, task={self.task!r}, '
                f'{len(self)} images, {self.num_classes} classes)')


class DistributionDataset(DownstreamDataset):
    """Base of the datasets annotated with an emotion distribution (or vote counts) per image.

    The LDL target is the row normalised to sum to 1; the MLL target is its
    :func:`distribution_to_multi_hot` view. No official split exists for them: a seeded
    :data:`EIGHTY_TWENTY` split is drawn and saved (see :func:`load_or_make_split`).
    """

    tasks = ('ldl', 'mll')
    fractions = EIGHTY_TWENTY

    def _set_distributions(self, image_dir: Path, weights: Mapping[str, Sequence[float]], listed_in: Path,
                           seed: int, split_file: Optional[PathLike], mll_threshold: Optional[float]) -> None:
        """Split ``{path under image_dir: non-negative weights with a positive sum}``; keep ``self.split``."""
        files = load_or_make_split(self.root, self.name, list(weights), self.fractions, seed, split_file)[self.split]
        paths = [image_dir / f for f in files]
        check_files_exist(paths, self.name, listed_in)
        dist = torch.tensor([list(weights[f]) for f in files], dtype=torch.float32).reshape(-1, self.num_classes)
        dist = dist / dist.sum(1, keepdim=True)
        self._set_samples(paths, dist if self.task == 'ldl' else distribution_to_multi_hot(dist, mll_threshold))


# --- targets -------------------------------------------------------------------------------------------

def index_targets(indices: Sequence[int]) -> torch.Tensor:
    """SLL targets: class indices as ``int64``."""
    return torch.tensor(list(indices), dtype=torch.long)


def multi_hot(label_sets: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """MLL targets: one ``float32`` multi-hot row per set of class indices."""
    out = torch.zeros(len(label_sets), num_classes)
    for row, labels in zip(out, label_sets):
        row[list(labels)] = 1.0
    return out


def distribution_to_multi_hot(dist: torch.Tensor, threshold: Optional[float] = None) -> torch.Tensor:
    """The multi-label view of label distributions: class ``c`` is positive where ``p_c >= threshold``.

    The default threshold is ``1 / C``, the uniform share: an emotion is present when it got at least
    its share of the votes. The arg-max always reaches ``1 / C``, so every row has a positive label,
    and ties at the maximum are all positive. A tolerance of 1e-6 absorbs float rounding.
    """
    threshold = 1.0 / dist.shape[1] if threshold is None else threshold
    return (dist >= threshold - 1e-6).float()


# --- files ---------------------------------------------------------------------------------------------

def check_files_exist(paths: Sequence[Path], dataset: str, listed_in: Path) -> None:
    """FileNotFoundError naming the missing images (the first few and the count) and the file listing them."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f'{dataset}: {len(missing)} images listed in {listed_in} are missing, '
                                f'e.g. {missing[:3]}.')


def class_folder_files(base: Path, classes: Sequence[str], dataset: str) -> Dict[str, int]:
    """``{posix path relative to base: class index}`` of the images under ``base/<class>/`` (any depth; hidden
    files and folders skipped, as :func:`sentizoo.images.list_images`).

    Classes are indexed by their position in ``classes``, never by the order the filesystem lists
    folders in. A missing or empty class folder is an error naming it.
    """
    labels = {}
    for index, name in enumerate(classes):
        folder = base / name
        if not folder.is_dir():
            found = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
            raise FileNotFoundError(f'{dataset}: class folder {folder} not found; expected one folder per class '
                                    f'{tuple(classes)} under {base}, found {found}.')
        files = list_images(folder)  # sorted, recursive, hidden files and folders skipped
        if not files:
            raise FileNotFoundError(f'{dataset}: class folder {folder} holds no images.')
        labels.update((p.relative_to(base).as_posix(), index) for p in files)
    return labels


# --- seeded splits saved as file lists -----------------------------------------------------------------

def load_or_make_split(root: Path, dataset: str, items: Sequence[str], fractions: Mapping[str, float],
                       seed: int, split_file: Optional[PathLike] = None, labels: Optional[Sequence[int]] = None,
                       fixed: Optional[Mapping[str, Sequence[str]]] = None) -> Dict[str, List[str]]:
    """The split of ``items`` saved in ``split_file``, or a new seeded split saved there.

    A new split orders ``items`` by name (so the listing order does not matter) and cuts them with
    :func:`~training.datasets.common.split_indices` into ``fractions`` (in the order given), or with
    :func:`~training.datasets.common.split_per_class` when ``labels`` (one per item) are given.
    ``split_file`` defaults to ``<root>/splits/<dataset>_seed<seed>.json``. ``fixed`` holds splits
    given by the dataset itself (e.g. an official test folder), saved alongside. A saved file is
    reloaded only if it lists exactly ``items`` plus ``fixed``: a file made for another copy of the
    dataset fails with the difference rather than silently dropping or adding images.
    """
    split_file = Path(split_file) if split_file else root / 'splits' / f'{dataset}_seed{seed}.json'
    fixed = {k: sorted(v) for k, v in (fixed or {}).items()}
    if split_file.is_file():
        splits = _read_split_file(split_file)
        listed = {p for k, v in splits.items() if k not in fixed for p in v}
        missing, extra = sorted(set(items) - listed), sorted(listed - set(items))
        if missing or extra or any(sorted(splits[k]) != v for k, v in fixed.items()):
            raise ValueError(
                f'{dataset}: the split file {split_file} does not match the images under {root} '
                f'({len(missing)} images not in the file, e.g. {missing[:3]}; {len(extra)} listed images not '
                f'found, e.g. {extra[:3]}). Delete it to draw a new split, or pass split_file= for this copy.')
        return splits
    order = sorted(range(len(items)), key=lambda i: items[i])
    if labels is None:
        parts = split_indices(len(order), list(fractions.values()), seed)
    else:
        parts = split_per_class([labels[i] for i in order], list(fractions.values()), seed)
    splits = {name: [items[order[i]] for i in part] for name, part in zip(fractions, parts)}
    splits.update(fixed)
    split_file.parent.mkdir(parents=True, exist_ok=True)
    payload = {'dataset': dataset, 'seed': seed, 'fractions': dict(fractions),
               'stratified': labels is not None, 'splits': splits}
    # write-then-rename: DDP ranks drawing the same split at once never read a half-written file
    tmp = split_file.with_name(f'{split_file.name}.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, split_file)
    return splits


def _read_split_file(split_file: Path) -> Dict[str, List[str]]:
    expected = f'a JSON object whose "splits" maps {SPLITS} to lists of relative image paths'
    try:
        splits = json.loads(split_file.read_text())['splits']
    except (ValueError, KeyError, TypeError):
        raise DatasetFormatError(split_file, expected) from None
    if not isinstance(splits, dict) or sorted(splits) != sorted(SPLITS):
        raise DatasetFormatError(split_file, expected)
    return splits
