"""Miniature copies of the nine datasets in their exact on-disk formats (docs/datasets.md), for the tests and the
release rehearsal (:mod:`training.release.rehearsal`): nothing here is downloaded, every image is generated.

* the downstream datasets (``make_*``, docs/datasets.md sections 4-9): each ``make_*`` writes 8x8 JPEGs plus the
  dataset's annotation files under ``root`` and returns the root to pass to the reader;
* the pre-training datasets (``write_*``, docs/datasets.md sections 1-3): every writer returns what it wrote, so
  tests can compare a reader's output with the truth. Their images are 8x8 JPEGs of one colour that encodes the
  sample (R = class, G = index), so a test can also check that a reader returns the right pixels for a label
  (:func:`write_labelled_image`).
"""
import csv
import json
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
from PIL import Image

# ------------------------------------------------------------- downstream datasets (docs/datasets.md 4-9)

FI_CLASSES = ('amusement', 'anger', 'awe', 'contentment', 'disgust', 'excitement', 'fear', 'sadness')
EMOSET_LABEL2IDX = {'amusement': 0, 'awe': 1, 'contentment': 2, 'excitement': 3,
                    'anger': 4, 'disgust': 5, 'fear': 6, 'sadness': 7}
UNBIASEDEMO_CLASSES = ('anger', 'fear', 'joy', 'love', 'sadness', 'surprise')
EMOTION6_EXAMPLE = 'disgust/1.jpg\t2.5\t3.8\t0.133333\t0.7\t0\t0.0666667\t0.1\t0\t0'  # an Emotion6 line as published
ABSTRACT_HEADER = "'','Amusement','Anger','Awe','Content','Disgust','Excitement','Fear','Sad'"


def write_image(path: Path, seed: int = 0) -> Path:
    """An 8x8 RGB JPEG of one colour derived from ``seed`` (the downstream writers' image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = tuple(int(c) for c in np.random.RandomState(seed).randint(0, 256, 3))
    Image.new('RGB', (8, 8), colour).save(path, 'JPEG')
    return path


def write_lines(path: Path, lines: Iterable[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(f'{line}\n' for line in lines))
    return path


def make_fi(root: Path, per_class: int = 20, presplit_test: int = 0) -> Path:
    """``emotion_dataset/<class>/<class>_NNNN.jpg``; with ``presplit_test`` > 0, ``FI/train|test/<class>/``.

    Class folders are created in reverse alphabetical order, so a reader that trusted the
    filesystem order would get the indices wrong on most filesystems.
    """
    for c, name in reversed(list(enumerate(FI_CLASSES))):
        for i in range(per_class):
            if presplit_test:
                sub = 'test' if i < presplit_test else 'train'
                write_image(root / 'FI' / sub / name / f'{name}_{i:04d}.jpg', seed=c * 100 + i)
            else:
                write_image(root / 'emotion_dataset' / name / f'{name}_{i:04d}.jpg', seed=c * 100 + i)
    return root / 'FI' if presplit_test else root


def make_emoset(root: Path, sizes: Dict[str, int] = None) -> Path:
    """``info.json``, ``<split>.json`` lists of [emotion, id, image, annotation], ``image/``, ``annotation/``.

    Image ``k`` of a split has emotion ``k % 8`` (in label2idx order); annotations drop keys in turn
    so that attribute loading must tolerate missing ones.
    """
    sizes = sizes or {'train': 16, 'val': 8, 'test': 8}
    emotions = sorted(EMOSET_LABEL2IDX, key=EMOSET_LABEL2IDX.get)
    info = {'emotion': {'label2idx': EMOSET_LABEL2IDX, 'idx2label': {str(v): k for k, v in EMOSET_LABEL2IDX.items()}},
            'scene': {'label2idx': {'bakery/shop': 0}}}
    (root / 'info.json').parent.mkdir(parents=True, exist_ok=True)
    (root / 'info.json').write_text(json.dumps(info))
    full = {'brightness': 0.4, 'colorfulness': 0.7, 'scene': 'bakery/shop', 'object': ['dog', 'cake'],
            'facial_expression': 'happy', 'human_action': 'eating'}
    n = 0
    for split, size in sizes.items():
        entries = []
        for k in range(size):
            emotion, image_id = emotions[k % 8], f'{emotions[k % 8]}_{n:05d}'
            image, annotation = f'image/{emotion}/{image_id}.jpg', f'annotation/{emotion}/{image_id}.json'
            write_image(root / image, seed=n)
            (root / annotation).parent.mkdir(parents=True, exist_ok=True)
            dropped = list(full)[n % len(full)]
            (root / annotation).write_text(json.dumps({k: v for k, v in full.items() if k != dropped}))
            entries.append([emotion, image_id, image, annotation])
            n += 1
        (root / f'{split}.json').write_text(json.dumps(entries))
    return root


def make_unbiasedemo(root: Path, per_class: int = 10) -> Path:
    """``UnBiasedEmo/images/<emotion>/<object-or-scene>/<n>.jpg``, two sub-folders per emotion."""
    for c, name in enumerate(UNBIASEDEMO_CLASSES):
        for i in range(per_class):
            write_image(root / 'UnBiasedEmo' / 'images' / name / f'thing{i % 2}' / f'{i}.jpg', seed=c * 100 + i)
    return root


def emotic_csv_rows(people: Sequence[Tuple[str, str, Sequence[int], Sequence[str]]]) -> List[str]:
    """Tandon-A's ``<split>.csv`` lines for ``(folder, filename, bbox, categories)`` people."""
    lines = ['Index,Folder,Filename,Image Size,BBox,Categorical_Labels,Continuous_Labels,Gender,Age']
    for i, (folder, filename, bbox, cats) in enumerate(people):
        lines.append(f'{i},{folder},{filename},"[64, 48]","{list(bbox)}","{list(cats)}",'
                     f'"[0.5, 0.3, 0.6]",Male,Adult')
    return lines


EMOTIC_PEOPLE = {
    # two people in one image (labels are united), one person without categories (left out)
    'train': [('mscoco/images', 'a.jpg', [10, 20, 50, 40], ['Engagement', 'Happiness']),
              ('mscoco/images', 'a.jpg', [0, 0, 20, 30], ['Happiness', 'Affection']),
              ('framesdb/images', 'b.jpg', [1, 2, 5, 6], ['Yearning']),
              ('emodb_small/images', 'c.jpg', [1, 2, 5, 6], []),
              ('ade20k/images', 'd.jpg', [1, 2, 5, 6], ['Doubt/Confusion'])],
    'val': [('framesdb/images', 'e.jpg', [1, 2, 5, 6], ['Anger', 'Fear'])],
}


def make_emotic(root: Path, people: Dict[str, list] = None, csv: bool = True, mat: bool = False) -> Path:
    """``emotic/<folder>/<file>`` images plus ``emotic_pre/<split>.csv`` and/or ``Annotations/Annotations.mat``."""
    people = EMOTIC_PEOPLE if people is None else people
    for split, persons in people.items():
        for n, (folder, filename, _, _) in enumerate(persons):
            write_image(root / 'emotic' / folder / filename, seed=n)
        if csv:
            write_lines(root / 'emotic_pre' / f'{split}.csv', emotic_csv_rows(persons))
    if mat:
        write_emotic_mat(root / 'Annotations' / 'Annotations.mat', people)
    return root


def _structs(*records: dict) -> np.ndarray:
    """A 1xN MATLAB struct array (savemat writes a structured object array as one)."""
    names = list(records[0])
    out = np.empty((1, len(records)), dtype=[(k, object) for k in names])
    for i, record in enumerate(records):
        for k in names:
            out[0, i][k] = record[k]
    return out


def _cell(strings: Sequence[str]) -> np.ndarray:
    out = np.empty((1, len(strings)), dtype=object)
    for i, s in enumerate(strings):
        out[0, i] = s
    return out


def write_emotic_mat(path: Path, people: Dict[str, list]) -> Path:
    """``Annotations.mat`` as the EMOTIC release lays it out (MATLAB v5 via scipy.io.savemat).

    Entry fields: filename, folder, image_size(n_col, n_row), original_database(name, info), person.
    Train person: body_bbox, annotations_categories(categories), annotations_continuous, gender, age.
    Val/test person: body_bbox, annotations_categories (one per annotator), combined_categories,
    annotations_continuous, combined_continuous, gender, age.
    """
    from scipy.io import savemat
    continuous = _structs({'valence': 5.0, 'arousal': 3.0, 'dominance': 6.0})
    variables = {}
    for split, persons in people.items():
        by_image: Dict[Tuple[str, str], list] = {}
        for folder, filename, bbox, cats in persons:
            box = np.asarray([bbox], dtype=float)
            if split == 'train':
                person = {'body_bbox': box, 'annotations_categories': _structs({'categories': _cell(cats)}),
                          'annotations_continuous': continuous, 'gender': 'Male', 'age': 'Adult'}
            else:  # two annotators: the first saw only the first category; combined = all
                annotators = _structs({'categories': _cell(cats[:1])}, {'categories': _cell(cats)})
                person = {'body_bbox': box, 'annotations_categories': annotators,
                          'combined_categories': _cell(cats), 'annotations_continuous': continuous,
                          'combined_continuous': continuous, 'gender': 'Female', 'age': 'Kid'}
            by_image.setdefault((folder, filename), []).append(person)
        variables[split] = _structs(*[
            {'filename': filename, 'folder': folder, 'image_size': _structs({'n_col': 64.0, 'n_row': 48.0}),
             'original_database': _structs({'name': folder.split('/')[0], 'info': _structs({'image_id': 1.0})}),
             'person': _structs(*group)}
            for (folder, filename), group in by_image.items()])
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, variables)
    return path


def make_emotion6(root: Path, lines: Sequence[str] = None, n: int = 25) -> Path:
    """``ground_truth.txt`` (header + TAB-separated lines) and ``images/<keyword>/N.jpg``.

    Default lines: the published example line (:data:`EMOTION6_EXAMPLE`), then ``n - 1`` generated images with a one-hot
    distribution cycling over the 7 emotions.
    """
    if lines is None:
        keywords = ('anger', 'disgust', 'fear', 'joy', 'sadness', 'surprise')
        lines = [EMOTION6_EXAMPLE]
        for i in range(1, n):
            probs = ['0'] * 7
            probs[i % 7] = '1'
            lines.append('\t'.join([f'{keywords[i % 6]}/{i + 1}.jpg', '5', '5', *probs]))
    header = '[image_filename]\t[valence]\t[arousal]\t[prob. anger]\t[prob. disgust]\t[prob. fear]\t' \
             '[prob. joy]\t[prob. sadness]\t[prob. surprise]\t[prob. neutral]'
    write_lines(root / 'ground_truth.txt', [header, *lines])
    for i, line in enumerate(lines):
        write_image(root / 'images' / line.split('\t')[0], seed=i)
    return root


def make_abstract(root: Path, rows: Sequence[str] = None, n: int = 20) -> Path:
    """``testImages_abstract/`` with ``abstract_NNNN.jpg`` and ``ABSTRACT_groundTruth.csv``.

    Default rows: image ``i`` gets 3 votes for emotion ``i % 8`` and 1 for ``(i + 1) % 8``.
    """
    folder = root / 'testImages_abstract'
    if rows is None:
        rows = []
        for i in range(1, n + 1):
            votes = [0] * 8
            votes[i % 8] += 3
            votes[(i + 1) % 8] += 1
            rows.append(','.join([f"'abstract_{i:04d}.jpg'", *map(str, votes)]))
    write_lines(folder / 'ABSTRACT_groundTruth.csv', [ABSTRACT_HEADER, *rows])
    for i, row in enumerate(rows):
        write_image(folder / row.split(',')[0].strip("'"), seed=i)
    return root


# ---------------------------------------------------------- pre-training datasets (docs/datasets.md 1-3)

# official Places365 category paths (two-level ones included), listed out of order on purpose:
# ids must come from categories_places365.txt, sorted by path as in the real file
PLACES_CATEGORIES = ('/a/airfield', '/a/apartment_building/outdoor', '/b/badlands', '/b/bakery/shop',
                     '/c/canyon', '/s/ski_resort')


def write_labelled_image(path: Path, label: int, index: int = 0) -> Path:
    """An 8x8 JPEG whose colour encodes the sample: R = 40 * label, G = 10 * index (mod 256)."""
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
            truth['train'].append((write_labelled_image(root / 'data_256' / rel[1:], label, k), label))
            lines.append(f'{rel} {label}\n')
    (root / 'places365_train_standard.txt').write_text(''.join(lines))
    lines = []
    for k in range(val_per_class * len(categories)):
        label = (k * 5) % len(categories)  # val images are not grouped by class
        name = f'Places365_val_{k + 1:08d}.jpg'
        truth['val'].append((write_labelled_image(root / 'val_256' / name, label, k), label))
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
                truth[split].append((write_labelled_image(base / rel, label, k), label))
                lines.append(rel + '\n')
        (base / f'{split}.txt').write_text(''.join(lines))
    return truth


def write_vso_folders(root: Path, counts: Dict[str, int]) -> Dict[str, List[Path]]:
    """``<root>/<adj>_<noun>/<flickr id>.jpg`` (bi_concepts1553 style); returns ``{anp: images}``."""
    out = {}
    for label, anp in enumerate(sorted(counts)):
        out[anp] = [write_labelled_image(root / anp / f'{1000003 * (label + 1) + k}.jpg', label, k) for k in range(counts[anp])]
    return out


def write_vso_split(root: Path, train: Dict[str, int], test: Dict[str, int]) -> None:
    """sentiment_pretraining's ``anp/{train,test}/<anp>/`` layout (with its 3-space label lists)."""
    for split, counts in (('train', train), ('test', test)):
        files = write_vso_folders(root / split, counts)
        labels = {a: i for i, a in enumerate(sorted(train))}
        (root / f'{split}.txt').write_text(''.join(f'./{split}/{a}/{p.name}   {labels[a]}\n'
                                                   for a in sorted(files) for p in files[a]))




def write_artemis(root: Path, rows: Sequence[Tuple[str, str, str, str, int]], preprocessed_splits=None) -> Path:
    """``artemis_dataset_release_v0.csv`` (or, with ``preprocessed_splits``, ``processed/artemis_preprocessed.csv``
    with the extra columns of optas/artemis) and ``wikiart/<art_style>/<painting>.jpg``."""
    for i, (style, painting, *_) in enumerate(rows):
        write_labelled_image(root / 'wikiart' / style / f'{painting}.jpg', i % 7, i)
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
