"""UnBiasedEmo (Panda et al., ECCV 2018): 6 emotions, single-label (SLL).

Layout: ``images/<emotion>/<object-or-scene>/<file>.jpg`` under ``root`` (or under
``root/UnBiasedEmo/``); images are collected at any depth below each emotion folder.
Classes are alphabetical (there is no canonical index): anger, fear, joy, love, sadness, surprise.

There is no official split; common practice is a random 80/20 train/test split. We draw it seeded and
stratified by class, holding a tenth of the training part out for model selection: 72% train / 8% val
/ 20% test, saved as a file list (default ``<root>/splits/unbiasedemo_seed0.json``) and reloaded when
present.
"""
from typing import Callable, Optional

from .common import require_path
from .emotion import (DEFAULT_SEED, EIGHTY_TWENTY, DownstreamDataset, PathLike, class_folder_files,
                         index_targets, load_or_make_split)


class UnBiasedEmo(DownstreamDataset):
    """UnBiasedEmo reader: ``UnBiasedEmo(root, split)[i] == (transform(image), class index)``."""

    name = 'unbiasedemo'
    classes = ('anger', 'fear', 'joy', 'love', 'sadness', 'surprise')
    tasks = ('sll',)
    fractions = EIGHTY_TWENTY

    def __init__(self, root: PathLike, split: str = 'train', transform: Optional[Callable] = None,
                 task: Optional[str] = None, *, seed: int = DEFAULT_SEED, split_file: Optional[PathLike] = None):
        super().__init__(root, split, transform, task)
        nested = self.root / 'UnBiasedEmo' / 'images'
        base = require_path(nested if nested.is_dir() else self.root / 'images',
                            'the UnBiasedEmo folder images/<emotion>/<object-or-scene>/<file>.jpg')
        labels = class_folder_files(base, self.classes, self.name)
        files = load_or_make_split(self.root, self.name, list(labels), self.fractions, seed, split_file,
                                   labels=list(labels.values()))[split]
        self._set_samples([base / f for f in files], index_targets(labels[f] for f in files))
