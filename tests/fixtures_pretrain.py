"""Tiny copies of the pre-training datasets in their exact published on-disk formats (docs/datasets.md §1-3).

Every writer returns what it wrote, so tests can compare a reader's output with the truth. Images are
8x8 JPEGs of one colour that encodes the sample (R = class, G = index), so a test can also check that
a reader returns the right pixels for a label.
"""
import csv
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from PIL import Image

# official Places365 category paths (two-level ones included), listed out of order on purpose:
# ids must come from categories_places365.txt, sorted by path as in the real file
PLACES_CATEGORIES = ('/a/airfield', '/a/apartment_building/outdoor', '/b/badlands', '/b/bakery/shop',
                     '/c/canyon', '/s/ski_resort')


def write_image(path: Path, label: int, index: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', (8, 8), (40 * label % 256, 10 * index % 256, 128)).save(path, quality=95)
    return path


def flat(category: str) -> str:
    """``/a/apartment_building/outdoor`` -> ``apartment_building-outdoor`` (the easy-format folder name)."""
    return '-'.join(category.split('/')[2:])


def write_places365_official(root: Path, per_class: int = 3, val_per_class: int = 2,
                             categories: Sequence[str] = PLACES_CATEGORIES) -> Dict[str, List[Tuple[Path, int]]]:
    """Devkit lists + ``data_256/`` + flat ``val_256/``; returns ``{split: [(image, label)]}``."""
    categories = sorted(categories)
    (root / 'categories_places365.txt').parent.mkdir(parents=True, exist_ok=True)
    (root / 'categories_places365.txt').write_text(''.join(f'{c} {i}\n' for i, c in enumerate(categories)))
    truth: Dict[str, List[Tuple[Path, int]]] = {'train': [], 'val': []}
    lines = []
    for label, cat in enumerate(categories):
        for k in range(per_class):
            rel = f'{cat}/{k + 1:08d}.jpg'
            truth['train'].append((write_image(root / 'data_256' / rel[1:], label, k), label))
            lines.append(f'{rel} {label}\n')
    (root / 'places365_train_standard.txt').write_text(''.join(lines))
    lines = []
    for k in range(val_per_class * len(categories)):
        label = (k * 5) % len(categories)  # val images are not grouped by class
        name = f'Places365_val_{k + 1:08d}.jpg'
        truth['val'].append((write_image(root / 'val_256' / name, label, k), label))
        lines.append(f'{name} {label}\n')
    (root / 'places365_val.txt').write_text(''.join(lines))
    return truth


def write_places365_easy(root: Path, per_class: int = 3, val_per_class: int = 2,
                         categories: Sequence[str] = PLACES_CATEGORIES) -> Dict[str, List[Tuple[Path, int]]]:
    """``places365_standard/{train,val}/<flat class>/`` + ``train.txt``/``val.txt`` (paths only)."""
    base = root / 'places365_standard'
    truth: Dict[str, List[Tuple[Path, int]]] = {'train': [], 'val': []}
    for split, n in (('train', per_class), ('val', val_per_class)):
        lines = []
        for label, cat in enumerate(sorted(categories)):
            for k in range(n):
                name = f'{k + 1:08d}.jpg' if split == 'train' else f'Places365_val_{label * n + k + 1:08d}.jpg'
                rel = f'{split}/{flat(cat)}/{name}'
                truth[split].append((write_image(base / rel, label, k), label))
                lines.append(rel + '\n')
        (base / f'{split}.txt').write_text(''.join(lines))
    return truth


def write_vso_folders(root: Path, counts: Dict[str, int]) -> Dict[str, List[Path]]:
    """``<root>/<adj>_<noun>/<flickr id>.jpg`` (bi_concepts1553 style); returns ``{anp: images}``."""
    out = {}
    for label, anp in enumerate(sorted(counts)):
        out[anp] = [write_image(root / anp / f'{1000003 * (label + 1) + k}.jpg', label, k) for k in range(counts[anp])]
    return out


def write_vso_split(root: Path, train: Dict[str, int], test: Dict[str, int]) -> None:
    """sentiment_pretraining's ``anp/{train,test}/<anp>/`` layout (with its 3-space label lists)."""
    for split, counts in (('train', train), ('test', test)):
        files = write_vso_folders(root / split, counts)
        labels = {a: i for i, a in enumerate(sorted(train))}
        (root / f'{split}.txt').write_text(''.join(f'./{split}/{a}/{p.name}   {labels[a]}\n'
                                                   for a in sorted(files) for p in files[a]))


ANP_LIST = """Visual Sentiment Ontology - 3244 ANPs
sorted by sentiment
====================
\tfrail_hand [sentiment: -1.44] [#imgs: 358]
\tbeautiful_flowers [sentiment: 1.76] [#imgs: 12,345]
ANPs with noun hand: 1
\tabandoned_asylum [sentiment: -0.95] [#imgs: 1,020]
\tangry_cat [sentiment: -1.2] [#imgs: 7]
"""


def write_artemis(root: Path, rows: Sequence[Tuple[str, str, str, str, int]], preprocessed_splits=None) -> Path:
    """``artemis_dataset_release_v0.csv`` (or, with ``preprocessed_splits``, ``processed/artemis_preprocessed.csv``
    with the extra columns of optas/artemis) and ``wikiart/<art_style>/<painting>.jpg``."""
    for i, (style, painting, *_) in enumerate(rows):
        write_image(root / 'wikiart' / style / f'{painting}.jpg', i % 7, i)
    columns = ['art_style', 'painting', 'emotion', 'utterance', 'repetition']
    if preprocessed_splits is None:
        path, records = root / 'artemis_dataset_release_v0.csv', [list(r) for r in rows]
    else:
        columns += ['tokens', 'tokens_len', 'utterance_spelled', 'tokens_encoded', 'emotion_label', 'split']
        path = root / 'processed' / 'artemis_preprocessed.csv'
        records = [[*r, str(r[3].lower().split()), len(r[3].split()), r[3].lower(), '[1, 4, 2]', 0, s]
                   for r, s in zip(rows, preprocessed_splits)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)  # quotes the utterances that hold commas, as pandas does
        writer.writerow(columns)
        writer.writerows(records)
    return path
