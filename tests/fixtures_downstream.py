"""Tiny on-disk copies of the downstream datasets in their exact release formats (tests only).

Each ``make_*`` writes 8x8 JPEGs plus the dataset's annotation files under ``root`` and returns the
root to pass to the reader. Formats follow docs/datasets.md sections 4-9.
"""
import json
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
from PIL import Image

FI_CLASSES = ('amusement', 'anger', 'awe', 'contentment', 'disgust', 'excitement', 'fear', 'sadness')
EMOSET_LABEL2IDX = {'amusement': 0, 'awe': 1, 'contentment': 2, 'excitement': 3,
                    'anger': 4, 'disgust': 5, 'fear': 6, 'sadness': 7}
UNBIASEDEMO_CLASSES = ('anger', 'fear', 'joy', 'love', 'sadness', 'surprise')
EMOTION6_EXAMPLE = 'disgust/1.jpg\t2.5\t3.8\t0.133333\t0.7\t0\t0.0666667\t0.1\t0\t0'  # an Emotion6 line as published
ABSTRACT_HEADER = "'','Amusement','Anger','Awe','Content','Disgust','Excitement','Fear','Sad'"


def write_image(path: Path, seed: int = 0) -> Path:
    """An 8x8 RGB JPEG of one colour derived from ``seed``."""
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
