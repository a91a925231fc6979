"""ArtEmis affective captions over WikiArt for the HP model's captioning task (docs/datasets.md §3).

``root`` holds ``wikiart/<art_style>/<painting>.jpg`` and one of (first found wins, or pass ``csv``):

* ``processed/artemis_preprocessed.csv`` or ``artemis_preprocessed.csv``: the output of optas/artemis
  ``preprocess_artemis_data.py`` (what the paper trained on); its ``split`` column is used as is, and the
  text is ``utterance_spelled`` (the spell-checked text its tokens come from);
* ``artemis_dataset_release_v0.csv``: the raw release (``art_style,painting,emotion,utterance,repetition``),
  split by artwork with :func:`split_artworks`; the text is ``utterance``.

Samples are ``(transform(image), utterance string)``; tokenisation belongs to the captioning task, which
builds its vocabulary from :attr:`ArtEmis.utterances` of the train split.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .common import DatasetFormatError, ImageDataset, PathLike, class_to_idx, require_path, train_test_indices

__all__ = ['ArtEmis', 'EMOTIONS', 'split_artworks']

# index = label, as in optas/artemis artemis/emotions.py
EMOTIONS = ('amusement', 'awe', 'contentment', 'excitement', 'anger', 'disgust', 'fear', 'sadness', 'something else')
RAW_CSV = 'artemis_dataset_release_v0.csv'
PREPROCESSED_CSV = 'artemis_preprocessed.csv'
_REQUIRED = ('art_style', 'painting', 'emotion')


def split_artworks(unique_ids: Sequence[str], fractions: Sequence[float] = (0.85, 0.05, 0.10), seed: int = 2021
                   ) -> Dict[str, str]:
    """``{artwork id: 'train'|'val'|'test'}``, the scheme of optas/artemis ``make_train_test_val_splits``.

    Ids (``art_style + painting``) are de-duplicated and sorted; a seeded shuffle split takes
    ``val + test`` of them out of train, and a second one, with the same seed, takes
    ``round(test * N)`` of those as test, the rest being val. The shuffle splits are
    :func:`common.train_test_indices`, scikit-learn's ``train_test_split`` arithmetic, so the result is
    the same as optas/artemis's for the same ids (checked against scikit-learn in the tests).
    """
    ids = sorted(set(unique_ids))
    _, val_size, test_size = fractions
    train, rest = train_test_indices(len(ids), val_size + test_size, seed)
    split = {ids[i]: 'train' for i in train}
    rest_ids = [ids[i] for i in rest]
    if val_size == 0:
        split.update((a, 'test') for a in rest_ids)
        return split
    val, test = train_test_indices(len(rest_ids), round(test_size * len(ids)), seed)
    split.update((rest_ids[i], 'val') for i in val)
    split.update((rest_ids[i], 'test') for i in test)
    return split


class ArtEmis(ImageDataset):
    """ArtEmis, ``(transform(image), utterance)``, one sample per annotation.

    Args:
        root: folder with ``wikiart/`` and the CSV (see the module docstring).
        split: ``'train'``, ``'val'``, ``'test'`` or ``'all'`` (every row, including the preprocessed ``rest``).
        transform: applied to the RGB PIL image.
        csv_path: the annotation CSV, if not in ``root``.
        image_root: the WikiArt folder, if not ``root/wikiart``.
        fractions, seed: the artwork split of the raw CSV (ignored when the CSV has a ``split`` column).

    Attributes:
        utterances: the text of every sample (same as ``targets``), for vocabulary building.
        emotions: the emotion label index (into :data:`EMOTIONS`) of every sample.
    """

    def __init__(self, root: PathLike, split: str = 'train', transform: Optional[Callable] = None,
                 csv_path: Optional[PathLike] = None, image_root: Optional[PathLike] = None,
                 fractions: Sequence[float] = (0.85, 0.05, 0.10), seed: int = 2021):
        if split not in ('train', 'val', 'test', 'all'):
            raise ValueError(f"split must be 'train', 'val', 'test' or 'all', got {split!r}")
        root = Path(root)
        csv_path = Path(csv_path) if csv_path is not None else next(
            (p for p in (root / 'processed' / PREPROCESSED_CSV, root / PREPROCESSED_CSV, root / RAW_CSV) if p.is_file()),
            root / RAW_CSV)
        image_root = require_path(image_root or root / 'wikiart', 'the WikiArt images as <art_style>/<painting>.jpg')
        rows = _read_csv(csv_path)
        if 'split' not in rows[0]:
            by_artwork = split_artworks([r['art_style'] + r['painting'] for r in rows], fractions, seed)
            for r in rows:
                r['split'] = by_artwork[r['art_style'] + r['painting']]
        rows = [r for r in rows if split == 'all' or r['split'] == split]
        if not rows:
            raise DatasetFormatError(csv_path, f'rows of split {split!r}')
        self.utterances: List[str] = [r['text'] for r in rows]
        self.emotions: List[int] = [r['emotion'] for r in rows]
        super().__init__([f"{image_root}/{r['art_style']}/{r['painting']}.jpg" for r in rows], self.utterances,
                         transform)
        self.root, self.split, self.csv_path = root, split, csv_path


def _read_csv(path: Path) -> List[dict]:
    """Rows as dicts with art_style, painting, emotion (index), text and, if present, split."""
    require_path(path, f'the ArtEmis annotations ({RAW_CSV} or {PREPROCESSED_CSV})')
    emotion_index = class_to_idx(EMOTIONS)
    rows = []
    with open(path, newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        text_column = 'utterance_spelled' if 'utterance_spelled' in header else 'utterance'
        if not all(c in header for c in (*_REQUIRED, text_column)):
            raise DatasetFormatError(path, f'a CSV header with the columns {", ".join((*_REQUIRED, "utterance"))}',
                                     1, ','.join(header))
        for r in reader:
            if None in r or None in r.values() or r['emotion'] not in emotion_index or not (r['art_style'] and r['painting']):
                raise DatasetFormatError(path, f'art_style, painting, one of the emotions {EMOTIONS}, utterance, ...',
                                         reader.line_num, ','.join(str(v) for v in r.values()))
            row = {'art_style': r['art_style'], 'painting': r['painting'], 'emotion': emotion_index[r['emotion']],
                   'text': r[text_column]}
            if 'split' in r:
                row['split'] = r['split']
            rows.append(row)
    if not rows:
        raise DatasetFormatError(path, 'at least one annotation row after the header')
    return rows
