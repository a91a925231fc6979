"""FI (Flickr & Instagram, You et al., AAAI 2016): 8 Mikels emotions, single-label (SLL).

Accepted layouts under ``root``:

- ``emotion_dataset/<class>/*.jpg`` (the distributed archive) or ``<class>/*.jpg``: no official
  split exists, so the de-facto protocol is drawn: a seeded random 80% train / 5% val / 15% test
  split, stratified by class (each class keeps its share in every split);
- ``train/<class>/*`` and ``test/<class>/*`` (pre-split, as the official amalgamation code expects):
  the test folder is kept; validation is a seeded, stratified 1/17 of ``train/`` (5% of the whole
  when the test folder holds 15%), because model selection must never look at the test split.

The split is saved as a file list (default ``<root>/splits/fi_seed0.json``, seed
:data:`~training.datasets.emotion.DEFAULT_SEED`) and reloaded when present.
Class indices follow :data:`sentizoo.models.FI_LABELS` (alphabetical), never the filesystem order.
"""
from typing import Callable, Optional

from sentizoo.models import FI_LABELS

from .emotion import (DEFAULT_SEED, DownstreamDataset, PathLike, class_folder_files, index_targets,
                         load_or_make_split)


class FI(DownstreamDataset):
    """FI reader: ``FI(root, split)[i] == (transform(image), class index)``."""

    name = 'fi'
    classes = FI_LABELS
    tasks = ('sll',)
    fractions = {'train': 0.80, 'val': 0.05, 'test': 0.15}

    def __init__(self, root: PathLike, split: str = 'train', transform: Optional[Callable] = None,
                 task: Optional[str] = None, *, seed: int = DEFAULT_SEED, split_file: Optional[PathLike] = None):
        super().__init__(root, split, transform, task)
        if (self.root / 'train').is_dir() and (self.root / 'test').is_dir():
            base = self.root
            train, test = ({f'{sub}/{k}': v for k, v in class_folder_files(base / sub, self.classes, self.name).items()}
                           for sub in ('train', 'test'))
            within = self.fractions['train'] + self.fractions['val']
            splits = load_or_make_split(self.root, self.name, list(train),
                                        {k: self.fractions[k] / within for k in ('train', 'val')}, seed,
                                        split_file, labels=list(train.values()), fixed={'test': list(test)})
            labels = {**train, **test}
        else:
            base = self.root / 'emotion_dataset' if (self.root / 'emotion_dataset').is_dir() else self.root
            labels = class_folder_files(base, self.classes, self.name)
            splits = load_or_make_split(self.root, self.name, list(labels), self.fractions, seed, split_file,
                                        labels=list(labels.values()))
        files = splits[split]
        self._set_samples([base / f for f in files], index_targets(labels[f] for f in files))
