"""Abstract paintings (Machajdik & Hanbury, ACM MM 2010): 280 paintings with emotion votes (LDL, MLL).

Layout: ``testImages_abstract/`` (under ``root``, or ``root`` itself) holding flat
``abstract_NNNN.jpg`` files and ``ABSTRACT_groundTruth.csv``: comma separated, single-quoted strings,
a header of an unnamed first column then ``'Amusement','Anger','Awe','Content','Disgust','Excitement',
'Fear','Sad'``, and one row of integer vote counts per painting. The 8 columns are the FI emotions in
FI order, so :attr:`Abstract.classes` is :data:`sentizoo.models.FI_LABELS`.

- LDL target: votes / total votes.
- MLL target: an emotion is positive when it got at least 1/8 of the votes, the uniform share
  (``mll_threshold``; :func:`~training.datasets.emotion.distribution_to_multi_hot`).
- A painting with zero votes has no distribution: it is left out with a warning that names its lines.

No split is published: a seeded 72/8/20 train/val/test split (80/20 with a tenth of train for
validation), saved as ``<root>/splits/abstract_seed0.json`` and reloaded when present.
"""
import warnings
from typing import Callable, Dict, List, Optional

from sentizoo.models import FI_LABELS

from .common import DatasetFormatError, read_table
from .emotion import DEFAULT_SEED, DistributionDataset, PathLike

HEADER = ('Amusement', 'Anger', 'Awe', 'Content', 'Disgust', 'Excitement', 'Fear', 'Sad')


class Abstract(DistributionDataset):
    """Abstract reader: ``Abstract(root, split, task='ldl'|'mll')[i] == (transform(image), 8-vector)``."""

    name = 'abstract'
    classes = FI_LABELS

    def __init__(self, root: PathLike, split: str = 'train', transform: Optional[Callable] = None,
                 task: Optional[str] = None, *, seed: int = DEFAULT_SEED, split_file: Optional[PathLike] = None,
                 mll_threshold: Optional[float] = None):
        super().__init__(root, split, transform, task)
        folder = self.root / 'testImages_abstract'
        folder = folder if folder.is_dir() else self.root
        table = folder / 'ABSTRACT_groundTruth.csv'
        header = f'an unnamed column, then {HEADER}'
        rows = read_table(table, f'the Abstract ground truth: a header of {header}, then one row per image', sep=',')
        # single-quoted strings ('abstract_0001.jpg'); file names hold no commas, so stripping quotes suffices
        rows = [(line_no, [f.strip().strip("'") for f in fields]) for line_no, fields in rows]
        if tuple(rows[0][1][1:]) != HEADER:
            raise DatasetFormatError(table, f'the header: {header}', rows[0][0], ','.join(rows[0][1]))
        votes: Dict[str, List[int]] = {}
        unvoted = []
        for line_no, fields in rows[1:]:
            try:
                counts = [int(x) for x in fields[1:]]
            except ValueError:
                counts = []
            if len(counts) != 8 or min(counts) < 0 or fields[0] in votes:
                raise DatasetFormatError(table, f'an image not listed before, then 8 non-negative integer vote '
                                         f'counts {HEADER}', line_no, ','.join(fields))
            if sum(counts) == 0:
                unvoted.append(line_no)
            else:
                votes[fields[0]] = counts
        if unvoted:
            warnings.warn(f'{table}: lines {unvoted} have no votes; these images are left out.')
        self._set_distributions(folder, votes, table, seed, split_file, mll_threshold)
