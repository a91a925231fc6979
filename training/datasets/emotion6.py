"""Emotion6 (Peng et al., CVPR 2015): 1,980 images with 7-way emotion distributions (LDL, MLL).

Layout under ``root``: ``ground_truth.txt`` and ``images/<keyword>/N.jpg``. ``ground_truth.txt`` is
TAB separated; its first line is a header and is skipped. Every other line is ``file, valence,
arousal`` and 7 probabilities in the order of :attr:`Emotion6.classes` (anger, disgust, fear, joy,
sadness, surprise, neutral). ``file`` is relative to ``images/``.

- LDL target: the 7 probabilities renormalised to sum to 1 (the published ones are rounded).
- MLL target: an emotion is positive when its probability is at least ``mll_threshold`` (default
  1/7, the uniform share), so the dominant emotion(s) are always positive
  (:func:`~training.datasets.emotion.distribution_to_multi_hot`).

No split is published: a seeded 80/20 train/test split with a tenth of train held out for validation
(72/8/20), saved as ``<root>/splits/emotion6_seed0.json`` and reloaded when present.
"""
from typing import Callable, Dict, List, Optional

from .common import DatasetFormatError, read_table
from .emotion import DEFAULT_SEED, DistributionDataset, PathLike


class Emotion6(DistributionDataset):
    """Emotion6 reader: ``Emotion6(root, split, task='ldl'|'mll')[i] == (transform(image), 7-vector)``."""

    name = 'emotion6'
    classes = ('anger', 'disgust', 'fear', 'joy', 'sadness', 'surprise', 'neutral')

    def __init__(self, root: PathLike, split: str = 'train', transform: Optional[Callable] = None,
                 task: Optional[str] = None, *, seed: int = DEFAULT_SEED, split_file: Optional[PathLike] = None,
                 mll_threshold: Optional[float] = None):
        super().__init__(root, split, transform, task)
        truth = self.root / 'ground_truth.txt'
        expected = (f'10 TAB-separated fields: an image not listed before, valence, arousal, 7 probabilities '
                    f'{self.classes} (non-negative, sum > 0)')
        probs: Dict[str, List[float]] = {}
        for line_no, fields in read_table(truth, f'Emotion6 ground_truth.txt: a header line, then {expected}',
                                          sep='\t')[1:]:
            try:
                values = [float(x) for x in fields[1:]]
            except ValueError:
                values = []
            if len(values) != 9 or min(values[2:]) < 0 or sum(values[2:]) <= 0 or fields[0] in probs:
                raise DatasetFormatError(truth, expected, line_no, '\t'.join(fields))
            probs[fields[0]] = values[2:]
        self._set_distributions(self.root / 'images', probs, truth, seed, split_file, mll_threshold)
