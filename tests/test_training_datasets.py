"""training.datasets (the subpackage, one section per module): the shared helpers (common), the downstream registry
and split (emotion), the six downstream readers (FI, EmoSet, UnBiasedEmo, EMOTIC, Emotion6, Abstract), the three
pre-training readers (Places365, VSO, ArtEmis) and the synthetic world, on generated copies of the release formats
(the writers are in training/datasets/miniature.py).

One file for the subpackage, not one per module: a file per reader would hold one to three tests (UnBiasedEmo
one, EmoSet, EMOTIC and Abstract two), and the readers share their test helpers (tests/README.md).
"""
import json
import logging
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

from helpers import ANP_LIST
from training.datasets.miniature import (EMOSET_LABEL2IDX, FI_CLASSES, PLACES_CATEGORIES, UNBIASEDEMO_CLASSES,
                                         emotic_csv_rows, make_abstract, make_emoset, make_emotic, make_emotion6,
                                         make_fi, make_unbiasedemo, write_artemis, write_emotic_mat, write_image,
                                         write_labelled_image, write_lines, write_places365_easy,
                                         write_places365_official, write_vso_folders, write_vso_split)
from sentizoo.models import FI_LABELS
from training.datasets import common, synthetic
from training.datasets.artemis import EMOTIONS as ARTEMIS_EMOTIONS
from training.datasets.artemis import ArtEmis, split_artworks
from training.datasets.common import DatasetFormatError, ImageDataset, pretrain_transform
from training.datasets.emotic import CATEGORIES
from training.datasets.emotion import DATASET_NAMES, distribution_to_multi_hot, get_dataset, load_or_make_split
from training.datasets.places365 import Places365, read_categories
from training.datasets.vso import VSO, read_anp_list


# --- common (training/datasets/common.py) --------------------------------------------------------------------------

def test_read_table_names_file_line_and_format(tmp_path):
    path = tmp_path / 'list.txt'
    path.write_text('a 0\n\nb 1\nc\n')
    with pytest.raises(DatasetFormatError, match=r'list\.txt:4: expected "<name> <id>", got \'c\''):
        common.read_table(path, '"<name> <id>"', n_fields=2)
    with pytest.raises(FileNotFoundError, match=r'missing\.txt not found; expected lines'):
        common.read_table(tmp_path / 'missing.txt', 'lines')
    path.write_text('\n')
    with pytest.raises(DatasetFormatError, match='empty'):
        common.read_table(path, 'lines')


@pytest.mark.parametrize('n,test_size,seed', [(20, 0.15, 2021), (20, 0.05 + 0.10, 2021), (37, 0.2, 0), (9, 3, 7)])
def test_train_test_indices_equals_sklearn(n, test_size, seed):
    from sklearn.model_selection import train_test_split
    train, test = common.train_test_indices(n, test_size, seed)
    ref_train, ref_test = train_test_split(np.arange(n), test_size=test_size, random_state=seed)
    assert train.tolist() == ref_train.tolist() and test.tolist() == ref_test.tolist()


def test_split_indices_sizes_partition_and_determinism():
    parts = common.split_indices(20, (0.8, 0.05, 0.15), seed=3)
    assert [len(p) for p in parts] == [16, 1, 3]
    assert sorted(np.concatenate(parts).tolist()) == list(range(20))
    assert all(a.tolist() == b.tolist() for a, b in zip(parts, common.split_indices(20, (0.8, 0.05, 0.15), 3)))
    assert parts[0].tolist() != common.split_indices(20, (0.8, 0.05, 0.15), 4)[0].tolist()
    assert [len(p) for p in common.split_indices(7, (0.8, 0.2), 0)] == [6, 1]
    with pytest.raises(ValueError, match='sum to 1'):
        common.split_indices(10, (0.5, 0.2), 0)


def test_split_per_class_is_stratified():
    labels = [0] * 10 + [1] * 5 + [2] * 2
    train, test = common.split_per_class(labels, (0.8, 0.2), seed=0)
    assert [sum(labels[i] == c for i in test) for c in range(3)] == [2, 1, 0]
    assert sorted(train.tolist() + test.tolist()) == list(range(17))


def test_bad_image_is_replaced_by_the_next_and_logged_once(tmp_path, caplog):
    good = [write_labelled_image(tmp_path / f'{k}.jpg', k) for k in range(3)]
    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(b'not a jpeg')
    ds = ImageDataset([good[0], bad, good[1], good[2]], [0, 1, 2, 3], transform=np.asarray)
    with caplog.at_level(logging.WARNING, logger='training.datasets.common'):
        image, target = ds[1]
        assert target == 2 and abs(int(image[0, 0, 0]) - 40) <= 6  # good[1]'s colour
        assert ds[1][1] == 2
    assert sum(str(bad) in r.getMessage() for r in caplog.records) == 1
    assert list(ds.bad_files) == [str(bad)]
    all_bad = ImageDataset([bad, bad], [0, 1])
    with pytest.raises(RuntimeError, match='2 unreadable images in a row'):
        all_bad[0]


def test_pretrain_transform_shapes_and_range():
    image = Image.new('RGB', (40, 30), (255, 0, 0))
    x = pretrain_transform(12, normalize=False)(image)
    assert x.shape == (3, 12, 12) and x.min() >= 0 and x.max() <= 1 and x[0].mean() == pytest.approx(1)
    y = pretrain_transform(12)(image)
    assert y[0, 0, 0] == pytest.approx((1 - 0.485) / 0.229, abs=1e-4)


# --- emotion: the downstream registry and split helper (training/datasets/emotion.py) ------------------------------

def splits_of(name, root, **kwargs):
    return {s: get_dataset(name, root, s, **kwargs) for s in ('train', 'val', 'test')}


def paths(ds):
    return [ds.path(i) for i in range(len(ds))]


def check_partition(splits, sizes):
    """Split sizes as given, no image in two splits."""
    assert {s: len(d) for s, d in splits.items()} == sizes
    listed = [p for d in splits.values() for p in paths(d)]
    assert len(set(listed)) == len(listed)


def test_get_dataset_registry(tmp_path):
    assert DATASET_NAMES == ('fi', 'emoset', 'unbiasedemo', 'emotic', 'emotion6', 'abstract')
    with pytest.raises(ValueError, match=r"Unknown downstream dataset 'imagenet'"):
        get_dataset('imagenet', tmp_path)
    with pytest.raises(FileNotFoundError, match=r'dataset root .*nowhere is not a directory'):
        get_dataset('FI', tmp_path / 'nowhere')
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val', 'test'\), got 'dev'"):
        get_dataset('emotion6', make_emotion6(tmp_path), 'dev')


def test_split_ignores_listing_order_and_fixed_parts_round_trip(tmp_path):
    items = [f'{i:02d}.jpg' for i in range(20)]
    fractions = {'train': 0.75, 'val': 0.25}
    a = load_or_make_split(tmp_path, 'x', items, fractions, seed=3, split_file=tmp_path / 'a.json',
                           fixed={'test': ['t.jpg']})
    b = load_or_make_split(tmp_path, 'x', items[::-1], fractions, seed=3, split_file=tmp_path / 'b.json',
                           fixed={'test': ['t.jpg']})
    assert a == b and len(a['train']) == 15 and a['test'] == ['t.jpg']
    assert load_or_make_split(tmp_path, 'x', items, fractions, seed=3, split_file=tmp_path / 'a.json',
                              fixed={'test': ['t.jpg']}) == a
    with pytest.raises(ValueError, match=r'a.json does not match'):
        load_or_make_split(tmp_path, 'x', items, fractions, seed=3, split_file=tmp_path / 'a.json',
                           fixed={'test': ['u.jpg']})


# --- FI (training/datasets/fi.py) ----------------------------------------------------------------------------------

def test_fi_labels_split_and_file_list(tmp_path):
    root = make_fi(tmp_path)  # 8 classes x 20 images, folders created in reverse order
    splits = splits_of('fi', root, transform=ToTensor())
    assert splits['train'].classes == list(FI_LABELS) == list(FI_CLASSES)
    # stratified 80/5/15: per class 16/1/3
    check_partition(splits, {'train': 128, 'val': 8, 'test': 24})
    for ds in splits.values():
        for i in range(len(ds)):
            assert ds.path(i).split('/')[-2] == ds.classes[int(ds.targets[i])]
        assert torch.bincount(ds.targets, minlength=8).tolist() == [len(ds) // 8] * 8
    image, target = splits['train'][0]
    assert image.shape == (3, 8, 8) and target.dtype == torch.long and target.ndim == 0

    saved = json.loads((root / 'splits' / 'fi_seed0.json').read_text())
    assert saved['seed'] == 0 and saved['stratified']
    assert saved['fractions'] == {'train': 0.8, 'val': 0.05, 'test': 0.15}
    assert sorted(saved['splits']['test']) == sorted(p.split('emotion_dataset/')[1] for p in paths(splits['test']))

    # the same seed draws the same split again; another seed another split
    (root / 'splits' / 'fi_seed0.json').rename(tmp_path / 'first.json')
    assert paths(get_dataset('fi', root, 'test')) == paths(splits['test'])
    assert (root / 'splits' / 'fi_seed0.json').read_text() == (tmp_path / 'first.json').read_text()
    assert paths(get_dataset('fi', root, 'test', seed=1)) != paths(splits['test'])

    # a saved file is reloaded, not redrawn: move one image from test to train by hand
    moved = saved['splits']['test'].pop()
    saved['splits']['train'].append(moved)
    edited = tmp_path / 'edited.json'
    edited.write_text(json.dumps(saved))
    assert len(get_dataset('fi', root, 'test', split_file=edited)) == 23
    assert str(root / 'emotion_dataset' / moved) in paths(get_dataset('fi', root, 'train', split_file=edited))


def test_fi_presplit_layout_keeps_test_folder(tmp_path):
    root = make_fi(tmp_path, per_class=20, presplit_test=3)  # FI/train/<c>: 17, FI/test/<c>: 3
    splits = splits_of('fi', root)
    check_partition(splits, {'train': 128, 'val': 8, 'test': 24})  # val = 1/17 of train/, per class
    assert all('/FI/test/' in p for p in paths(splits['test']))
    assert all('/FI/train/' in p for p in paths(splits['train']) + paths(splits['val']))
    assert sorted(splits['test'].targets.tolist()) == sorted(list(range(8)) * 3)


def test_fi_errors_name_the_path(tmp_path):
    root = make_fi(tmp_path, per_class=2)
    shutil.rmtree(root / 'emotion_dataset' / 'awe')
    with pytest.raises(FileNotFoundError, match=r'emotion_dataset/awe not found.*found \[\'amusement\''):
        get_dataset('fi', root)
    root = make_fi(tmp_path / 'b', per_class=20)
    get_dataset('fi', root)  # saves the split
    write_image(root / 'emotion_dataset' / 'awe' / 'new.jpg')
    with pytest.raises(ValueError, match=r'fi_seed0.json does not match.*1 images not in the file.*awe/new.jpg'):
        get_dataset('fi', root)
    (root / 'splits' / 'fi_seed0.json').write_text('{"splits": [1, 2]}')
    with pytest.raises(DatasetFormatError, match=r'fi_seed0.json: expected a JSON object'):
        get_dataset('fi', root)


def test_class_folders_skip_hidden_files_and_folders(tmp_path):
    root = make_fi(tmp_path, per_class=20)
    write_image(root / 'emotion_dataset' / 'awe' / '.thumbnails' / 'awe_0000.jpg')  # a viewer's cache, not data
    write_image(root / 'emotion_dataset' / 'awe' / '._awe_0001.jpg')  # macOS metadata
    everything = [p for ds in splits_of('fi', root).values() for p in paths(ds)]
    assert len(everything) == 160 and not any('/.' in p for p in everything)


# --- EmoSet (training/datasets/emoset.py) --------------------------------------------------------------------------

def test_emoset_official_splits_and_label2idx(tmp_path):
    root = make_emoset(tmp_path)
    splits = splits_of('emoset', root, transform=ToTensor())
    assert {s: len(d) for s, d in splits.items()} == {'train': 16, 'val': 8, 'test': 8}
    ds = splits['train']
    assert ds.classes == ['amusement', 'awe', 'contentment', 'excitement', 'anger', 'disgust', 'fear', 'sadness']
    assert ds.targets.tolist() == [k % 8 for k in range(16)]  # written in label2idx order
    assert ds.path(4).endswith('image/anger/anger_00004.jpg') and EMOSET_LABEL2IDX['anger'] == 4
    assert ds.image_ids[4] == 'anger_00004'
    # annotation n misses key n % 6: brightness, colorfulness, scene, object, ...
    assert ds.attributes(0)['brightness'] is None and ds.attributes(1)['scene'] == 'bakery/shop'
    assert ds.attributes(3)['object'] == [] and ds.attributes(0)['object'] == ['dog', 'cake']
    assert ds.attributes(5) == {'brightness': 0.4, 'colorfulness': 0.7, 'scene': 'bakery/shop',
                                'object': ['dog', 'cake'], 'facial_expression': 'happy', 'human_action': None}


def test_emoset_errors(tmp_path):
    root = make_emoset(tmp_path)
    entries = json.loads((root / 'val.json').read_text())
    entries[1] = ['joy', 'x', 'image/x.jpg', 'annotation/x.json']
    (root / 'val.json').write_text(json.dumps(entries))
    with pytest.raises(DatasetFormatError, match=r'val.json: expected .*\(entry 1\), got .*joy'):
        get_dataset('emoset', root, 'val')
    (root / 'test.json').write_text('[\n["amusement", "a",\n')
    with pytest.raises(DatasetFormatError, match=r'test.json:3: expected valid JSON'):
        get_dataset('emoset', root, 'test')
    (root / 'image' / 'amusement' / 'amusement_00000.jpg').unlink()
    with pytest.raises(FileNotFoundError, match=r'1 images listed in .*train.json are missing.*amusement_00000.jpg'):
        get_dataset('emoset', root, 'train')
    (root / 'info.json').unlink()
    with pytest.raises(FileNotFoundError, match=r'info.json not found'):
        get_dataset('emoset', root, 'train')


# --- UnBiasedEmo (training/datasets/unbiasedemo.py) ----------------------------------------------------------------

def test_unbiasedemo_labels_and_split(tmp_path):
    root = make_unbiasedemo(tmp_path)  # 6 classes x 10 images in two sub-folders
    splits = splits_of('unbiasedemo', root)
    assert splits['train'].classes == list(UNBIASEDEMO_CLASSES)
    check_partition(splits, {'train': 42, 'val': 6, 'test': 12})  # 72/8/20 per class: 7/1/2
    for ds in splits.values():
        for i in range(len(ds)):
            assert ds.path(i).split('/images/')[1].split('/')[0] == ds.classes[int(ds.targets[i])]
    assert (root / 'splits' / 'unbiasedemo_seed0.json').is_file()
    assert paths(get_dataset('unbiasedemo', root, 'val')) == paths(splits['val'])
    shutil.rmtree(root / 'UnBiasedEmo')
    with pytest.raises(FileNotFoundError, match=r'images not found; expected the UnBiasedEmo folder'):
        get_dataset('unbiasedemo', root)


# --- Emotic (training/datasets/emotic.py) --------------------------------------------------------------------------

def multi_hot_of(*names):
    out = torch.zeros(26)
    out[[CATEGORIES.index(n) for n in names]] = 1
    return out


EMOTIC_EXPECTED = {
    'train': [('mscoco/images/a.jpg', ('Engagement', 'Happiness', 'Affection')),
              ('framesdb/images/b.jpg', ('Yearning',)),
              ('ade20k/images/d.jpg', ('Doubt/Confusion',))],
    'val': [('framesdb/images/e.jpg', ('Anger', 'Fear'))],
}


@pytest.mark.parametrize('source', ['csv', 'mat'])
def test_emotic_image_level_multi_hot(tmp_path, source):
    root = make_emotic(tmp_path, csv=source == 'csv', mat=source == 'mat')
    assert CATEGORIES[0] == 'Affection' and CATEGORIES[9] == 'Doubt/Confusion' and len(CATEGORIES) == 26
    for split, expected in EMOTIC_EXPECTED.items():
        ds = get_dataset('emotic', root, split, transform=ToTensor())
        assert ds.classes == list(CATEGORIES) and ds.task == 'mll'
        assert [p.split('/emotic/')[1] for p in paths(ds)] == [image for image, _ in expected]
        assert torch.equal(ds.targets, torch.stack([multi_hot_of(*names) for _, names in expected]))
        image, target = ds[0]
        assert image.shape == (3, 8, 8) and target.dtype == torch.float32


def test_emotic_errors(tmp_path):
    root = make_emotic(tmp_path)
    lines = emotic_csv_rows([('mscoco/images', 'a.jpg', [1, 2, 5, 6], ['Happiness']),
                             ('mscoco/images', 'a.jpg', [1, 2, 5, 6], ['Happyness'])])
    write_lines(root / 'emotic_pre' / 'train.csv', lines)
    with pytest.raises(DatasetFormatError, match=r"train.csv:3: expected .*unknown categories \['Happyness'\]"):
        get_dataset('emotic', root)
    write_lines(root / 'emotic_pre' / 'train.csv', [lines[0], lines[1].replace('[1, 2, 5, 6]', '[5, 2, 1, 6]')])
    with pytest.raises(DatasetFormatError, match=r'train.csv:2: expected BBox.*empty box'):
        get_dataset('emotic', root)
    write_lines(root / 'emotic_pre' / 'train.csv', [lines[0].replace('BBox', 'Box'), lines[1]])
    with pytest.raises(DatasetFormatError, match=r'train.csv:1: expected a header with the columns'):
        get_dataset('emotic', root)
    with pytest.raises(FileNotFoundError, match=r"no annotations for split 'test'.*emotic_pre/test.csv"):
        get_dataset('emotic', root, 'test')
    write_emotic_mat(tmp_path / 'other.mat', {'train': [('mscoco/images', 'zz.jpg', [1, 2, 5, 6], ['Pain'])]})
    with pytest.raises(FileNotFoundError, match=r'1 images listed in .*other.mat are missing.*zz.jpg'):
        get_dataset('emotic', root, annotations=tmp_path / 'other.mat')
    with pytest.raises(DatasetFormatError, match=r"other.mat: expected the MATLAB variable 'val'"):
        get_dataset('emotic', root, 'val', annotations=tmp_path / 'other.mat')


# --- Emotion6 (training/datasets/emotion6.py) ----------------------------------------------------------------------

def test_emotion6_ldl_mll_and_split(tmp_path):
    root = make_emotion6(tmp_path)  # 25 images
    splits = splits_of('emotion6', root)
    assert splits['train'].classes == ['anger', 'disgust', 'fear', 'joy', 'sadness', 'surprise', 'neutral']
    check_partition(splits, {'train': 18, 'val': 2, 'test': 5})  # 72/8/20
    for ds in splits.values():
        assert ds.task == 'ldl' and ds.targets.dtype == torch.float32
        assert torch.allclose(ds.targets.sum(1), torch.ones(len(ds)))
    everything = {p: t for ds in splits.values() for p, t in zip(paths(ds), ds.targets)}
    example = everything[str(root / 'images' / 'disgust' / '1.jpg')]
    raw = torch.tensor([0.133333, 0.7, 0, 0.0666667, 0.1, 0, 0])
    assert torch.allclose(example, raw / raw.sum())  # renormalised: the published sum is 0.9999997
    mll = get_dataset('emotion6', root, 'train', task='mll', transform=ToTensor())
    assert paths(mll) == paths(splits['train'])
    assert torch.equal(mll.targets, distribution_to_multi_hot(splits['train'].targets))
    loader = DataLoader(mll, batch_size=4)
    images, targets = next(iter(loader))
    assert images.shape == (4, 3, 8, 8) and targets.shape == (4, 7)
    with pytest.raises(ValueError, match=r"emotion6 supports the tasks \('ldl', 'mll'\), got task='sll'"):
        get_dataset('emotion6', root, task='sll')


def test_multi_label_rule_on_hand_made_rows():
    dist = torch.tensor([[0.133333, 0.7, 0, 0.0666667, 0.1, 0, 0],  # only disgust reaches 1/7
                         [0.45, 0.45, 0.10, 0, 0, 0, 0],  # a tie at the top: both
                         [1 / 7] * 7,  # uniform: every emotion has exactly its share
                         [0.15, 0.14, 0.71, 0, 0, 0, 0]])  # 0.15 >= 1/7 > 0.14
    assert distribution_to_multi_hot(dist).tolist() == [[0, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0],
                                                        [1] * 7, [1, 0, 1, 0, 0, 0, 0]]
    assert distribution_to_multi_hot(dist, threshold=0.5).tolist()[1] == [0] * 7


def test_emotion6_errors(tmp_path):
    good = 'joy/1.jpg\t5\t5\t0\t0\t0\t1\t0\t0\t0'
    make_emotion6(tmp_path / 'a', lines=[good, good.replace('joy/1', 'joy/2'), 'joy/3.jpg\t5\t5\t0\t0\t1'])
    with pytest.raises(DatasetFormatError, match=r'ground_truth.txt:4: expected 10 TAB-separated fields.*joy/3.jpg'):
        get_dataset('emotion6', tmp_path / 'a')
    make_emotion6(tmp_path / 'b', lines=[good, good.replace('\t1\t', '\t-1\t')])
    with pytest.raises(DatasetFormatError, match=r'ground_truth.txt:3: expected'):
        get_dataset('emotion6', tmp_path / 'b')
    make_emotion6(tmp_path / 'c', lines=[good, good])
    with pytest.raises(DatasetFormatError, match=r'ground_truth.txt:3: expected .*not listed before'):
        get_dataset('emotion6', tmp_path / 'c')
    root = make_emotion6(tmp_path / 'd')
    (root / 'images' / 'disgust' / '1.jpg').unlink()
    with pytest.raises(FileNotFoundError, match=r'listed in .*ground_truth.txt are missing.*disgust/1.jpg'):
        for split in ('train', 'val', 'test'):
            get_dataset('emotion6', root, split)
    (root / 'ground_truth.txt').unlink()
    with pytest.raises(FileNotFoundError, match=r'ground_truth.txt not found'):
        get_dataset('emotion6', root)


# --- Abstract (training/datasets/abstract.py) ----------------------------------------------------------------------

def test_abstract_votes_to_distribution(tmp_path):
    root = make_abstract(tmp_path)  # 20 paintings: 3 votes for emotion i % 8, 1 for (i + 1) % 8
    splits = splits_of('abstract', root)
    assert splits['train'].classes == list(FI_LABELS)
    check_partition(splits, {'train': 14, 'val': 2, 'test': 4})  # 72/8/20
    for ds in splits.values():
        for path, target in zip(paths(ds), ds.targets):
            i = int(path[-8:-4])
            expected = torch.zeros(8)
            expected[i % 8], expected[(i + 1) % 8] = 0.75, 0.25
            assert torch.equal(target, expected)
    mll = get_dataset('abstract', root, 'test', task='mll')
    assert (mll.targets.sum(1) == 2).all()  # 0.75 and 0.25 both reach 1/8
    assert mll.targets.tolist() == (splits['test'].targets > 0).float().tolist()


def test_abstract_zero_votes_and_errors(tmp_path):
    rows = ["'abstract_0001.jpg',4,4,0,0,0,0,0,2", "'abstract_0002.jpg',0,0,0,0,0,0,0,0",
            *(f"'abstract_{i:04d}.jpg',0,0,1,0,0,0,0,0" for i in range(3, 12))]
    root = make_abstract(tmp_path / 'a', rows=rows)
    with pytest.warns(UserWarning, match=r'lines \[3\] have no votes'):
        datasets = splits_of('abstract', root, task='mll')
    everything = {p.rsplit('/', 1)[1]: t for ds in datasets.values() for p, t in zip(paths(ds), ds.targets)}
    assert len(everything) == 10 and 'abstract_0002.jpg' not in everything
    # 0.4, 0.4 and 0.2 all reach the uniform share 1/8
    assert everything['abstract_0001.jpg'].tolist() == [1, 1, 0, 0, 0, 0, 0, 1]
    root = make_abstract(tmp_path / 'b', rows=[rows[0], "'abstract_0002.jpg',0,x,0,0,0,0,0,1"])
    with pytest.raises(DatasetFormatError, match=r'ABSTRACT_groundTruth.csv:3: expected .*8 non-negative integer'):
        get_dataset('abstract', root)
    header = root / 'testImages_abstract' / 'ABSTRACT_groundTruth.csv'
    header.write_text(header.read_text().replace("'Sad'", "'Sadness'"))
    with pytest.raises(DatasetFormatError, match=r'ABSTRACT_groundTruth.csv:1: expected the header'):
        get_dataset('abstract', root)
    header.unlink()
    with pytest.raises(FileNotFoundError, match=r'testImages_abstract/ABSTRACT_groundTruth.csv not found'):
        get_dataset('abstract', root)


# --- Places365 (training/datasets/places365.py) --------------------------------------------------------------------

PLACES_CLASSES = ['airfield', 'apartment_building-outdoor', 'badlands', 'bakery-shop', 'canyon', 'ski_resort']


def _as_truth(ds):
    return [(ds.path(i), t) for i, t in enumerate(ds.targets)]


def test_places365_official_layout(tmp_path):
    truth = write_places365_official(tmp_path, per_class=3, val_per_class=2)
    for split in ('train', 'val'):
        ds = Places365(tmp_path, split)
        assert ds.layout == 'official' and ds.classes == PLACES_CLASSES
        assert _as_truth(ds) == [(str(p), t) for p, t in truth[split]]
    image, label = Places365(tmp_path, 'val', transform=np.asarray)[3]
    assert label == truth['val'][3][1] and abs(int(image[0, 0, 0]) - 40 * label) <= 6


def test_places365_easy_layout_matches_official_ids(tmp_path):
    truth = write_places365_easy(tmp_path)
    ds = Places365(tmp_path, 'train')  # no categories file: sorted folders
    assert ds.layout == 'easy' and ds.classes == PLACES_CLASSES
    assert _as_truth(ds) == [(str(p), t) for p, t in truth['train']]
    assert len(Places365(tmp_path / 'places365_standard', 'val')) == 12
    # with categories_places365.txt the ids come from it
    (tmp_path / 'categories_places365.txt').write_text(''.join(f'{c} {i}\n' for i, c in enumerate(
        sorted(PLACES_CATEGORIES))))
    assert Places365(tmp_path, 'train').targets == ds.targets


def test_places365_label_order_is_the_categories_file(tmp_path):
    (tmp_path / 'categories_places365.txt').write_text('/b/badlands 0\n/a/airfield 1\n')
    assert read_categories(tmp_path / 'categories_places365.txt') == ['badlands', 'airfield']
    (tmp_path / 'categories_places365.txt').write_text('/a/airfield 0\n/b/badlands 2\n')
    with pytest.raises(DatasetFormatError, match=r'categories_places365\.txt:2: expected .*ids 0, 1, 2'):
        read_categories(tmp_path / 'categories_places365.txt')


@pytest.mark.parametrize('line,match', [
    ('/a/airfield/00000009.jpg', r'places365_train_standard\.txt:19: expected'),
    ('/a/airfield/00000009.jpg x', r':19: expected .*<id>'),
    ('/a/airfield/00000009.jpg 99', r':19: expected .*0 <= id < 6'),
    ('/b/badlands/00000009.jpg 0', r':19: expected .*whose folder is category <id>'),
])
def test_places365_malformed_list_fails_with_file_and_line(tmp_path, line, match):
    write_places365_official(tmp_path)
    with open(tmp_path / 'places365_train_standard.txt', 'a') as f:
        f.write(line + '\n')
    with pytest.raises(DatasetFormatError, match=match):
        Places365(tmp_path, 'train')


def test_places365_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'train\.txt not found; expected .*official layout'):
        Places365(tmp_path, 'train')
    write_places365_official(tmp_path)
    (tmp_path / 'val_256').rename(tmp_path / 'elsewhere')
    with pytest.raises(FileNotFoundError, match='no image folder val_256'):
        Places365(tmp_path, 'val')
    write_places365_easy(tmp_path / 'easy')
    with open(tmp_path / 'easy' / 'places365_standard' / 'val.txt', 'a') as f:
        f.write('val/no_such_class/x.jpg\n')
    with pytest.raises(DatasetFormatError, match=r'val\.txt:13: expected .*known class'):
        Places365(tmp_path / 'easy', 'val')


# --- VSO (training/datasets/vso.py) --------------------------------------------------------------------------------

VSO_COUNTS = {'happy_dog': 10, 'abandoned_asylum': 5, 'vicious_dog': 7, 'beautiful_flowers': 1}


def test_vso_folders_sorted_classes_and_seeded_per_anp_split(tmp_path):
    files = write_vso_folders(tmp_path, VSO_COUNTS)
    train, test = VSO(tmp_path, 'train'), VSO(tmp_path, 'test')
    names = sorted(VSO_COUNTS)
    assert train.classes == test.classes == names and len(names) == 4
    # 80/20 per ANP: test gets round(0.2 n)
    assert [test.targets.count(i) for i in range(4)] == [1, 0, 2, 1]
    assert [train.targets.count(i) for i in range(4)] == [4, 1, 8, 6]
    paths = {train.path(i) for i in range(len(train))} | {test.path(i) for i in range(len(test))}
    assert paths == {str(p) for ps in files.values() for p in ps} and len(paths) == len(train) + len(test)
    for i in range(len(train)):
        assert train.path(i).split('/')[-2] == names[train.targets[i]]
    assert _as_truth(VSO(tmp_path, 'test')) == _as_truth(test)
    assert _as_truth(VSO(tmp_path, 'test', seed=1)) != _as_truth(test)
    assert len(VSO(tmp_path, 'all')) == sum(VSO_COUNTS.values())


def test_vso_min_images_and_fixed_class_list(tmp_path):
    write_vso_folders(tmp_path, VSO_COUNTS)
    ds = VSO(tmp_path, 'all', min_images=5)
    assert ds.classes == ['abandoned_asylum', 'happy_dog', 'vicious_dog']
    ds = VSO(tmp_path, 'all', classes=['vicious_dog', 'happy_dog'])
    assert ds.classes == ['vicious_dog', 'happy_dog'] and ds.targets == [0] * 7 + [1] * 10
    with pytest.raises(FileNotFoundError, match=r"ANP folders \['sad_cat'\] not found"):
        VSO(tmp_path, classes=['sad_cat'])
    # an ANP's train/test split does not move when other ANPs are dropped
    full, alone = VSO(tmp_path, 'test'), VSO(tmp_path, 'test', classes=['vicious_dog'])
    assert [p for p in map(full.path, range(len(full))) if '/vicious_dog/' in p] == list(map(alone.path, range(len(alone)))) != []


def test_vso_split_layout(tmp_path):
    write_vso_split(tmp_path, {'a_b': 3, 'c_d': 2}, {'a_b': 1, 'c_d': 2})
    train, test = VSO(tmp_path, 'train'), VSO(tmp_path, 'test')
    assert train.classes == test.classes == ['a_b', 'c_d']
    assert train.targets == [0, 0, 0, 1, 1] and test.targets == [0, 1, 1]
    with pytest.raises(ValueError, match='split must be one of'):
        VSO(tmp_path, 'all')
    (tmp_path / 'train' / 'e_f').mkdir()
    write_labelled_image(tmp_path / 'train' / 'e_f' / '1.jpg', 0)
    with pytest.raises(FileNotFoundError, match=r"ANP folders \['e_f'\] not found in .*test"):
        VSO(tmp_path, 'test')


def test_vso_wrong_root_fails_fast(tmp_path):
    write_vso_folders(tmp_path / 'bi_concepts1553', VSO_COUNTS)
    with pytest.raises(FileNotFoundError, match='no ANP folder with at least 1 images'):
        VSO(tmp_path)


def test_read_anp_list(tmp_path):
    (tmp_path / '3244ANPs.txt').write_text(ANP_LIST)
    anps = read_anp_list(tmp_path / '3244ANPs.txt')
    assert list(anps) == ['frail_hand', 'beautiful_flowers', 'abandoned_asylum', 'angry_cat']
    assert anps['beautiful_flowers'] == (1.76, 12345) and anps['frail_hand'].sentiment == -1.44
    (tmp_path / 'empty.txt').write_text('header\n')
    with pytest.raises(DatasetFormatError, match='none found'):
        read_anp_list(tmp_path / 'empty.txt')


# --- ArtEmis (training/datasets/artemis.py) ------------------------------------------------------------------------

def _artemis_rows(n_artworks=20):
    rows = []
    for a in range(n_artworks):
        style = ('Romanticism', 'Ukiyo_e', 'Abstract_Expressionism')[a % 3]
        for k in range(1 + a % 3):
            rows.append((style, f'painter-{a}_work-{a}-18{a:02d}', ARTEMIS_EMOTIONS[(a + k) % 9],
                         f'the colours, so "bright", make me feel {a}-{k}', 1 + a % 3))
    return rows


def _optas_split_with_sklearn(unique_ids, loads=(0.85, 0.05, 0.10), seed=2021):
    """optas/artemis make_train_test_val_splits, restated with scikit-learn (docs/datasets.md §3)."""
    from sklearn.model_selection import train_test_split
    ids = np.array(sorted(set(unique_ids)), dtype=object)
    train, rest = train_test_split(ids, test_size=loads[1] + loads[2], random_state=seed)
    val, test = train_test_split(rest, test_size=round(loads[2] * len(ids)), random_state=seed)
    return {**{i: 'train' for i in train}, **{i: 'val' for i in val}, **{i: 'test' for i in test}}


@pytest.mark.parametrize('n', [20, 41, 200])
def test_split_artworks_equals_the_sklearn_scheme(n):
    ids = [f'Style{i % 4}painting-{i}' for i in range(n)]
    assert split_artworks(ids[::-1] + ids[:5]) == _optas_split_with_sklearn(ids)


def test_artemis_raw_csv_split_by_artwork(tmp_path):
    rows = _artemis_rows()
    write_artemis(tmp_path, rows)
    splits = {s: ArtEmis(tmp_path, s) for s in ('train', 'val', 'test')}
    assert sum(len(d) for d in splits.values()) == len(rows) == len(ArtEmis(tmp_path, 'all'))
    expected = split_artworks([r[0] + r[1] for r in rows])
    # 20 artworks: ceil((0.05 + 0.10) * 20) = ceil(3.0000000000000004) = 4 leave train (float sum, as
    # optas/artemis computes it), round(0.10 * 20) = 2 of them are test
    assert [list(expected.values()).count(s) for s in ('train', 'val', 'test')] == [16, 2, 2]
    for name, ds in splits.items():
        for i, text in enumerate(ds.utterances):
            style, painting = ds.path(i).split('/')[-2:]
            assert expected[style + painting[:-4]] == name
            row = next(r for r in rows if r[3] == text)  # the quoted commas survived
            assert (row[0], row[1] + '.jpg') == (style, painting) and ds.emotions[i] == ARTEMIS_EMOTIONS.index(row[2])
    image, text = ArtEmis(tmp_path, 'train', transform=pretrain_transform(12))[0]
    assert image.shape == (3, 12, 12) and text == splits['train'].utterances[0] and ',' in text


def test_artemis_preprocessed_csv_uses_its_split_and_spelled_text(tmp_path):
    rows = _artemis_rows(6)
    split_col = ['train', 'rest', 'val', 'test', 'train', 'train', 'val', 'test', 'train', 'train', 'train', 'test']
    write_artemis(tmp_path, rows, preprocessed_splits=split_col[:len(rows)])
    train = ArtEmis(tmp_path, 'train')
    assert train.csv_path.name == 'artemis_preprocessed.csv'
    assert train.utterances == [r[3].lower() for r, s in zip(rows, split_col) if s == 'train']
    assert len(ArtEmis(tmp_path, 'all')) == len(rows)


@pytest.mark.parametrize('bad_row,match', [
    ('Romanticism,p-1,joy,"nice, very",1', r'artemis_dataset_release_v0\.csv:5: expected .*one of the emotions'),
    ('Romanticism,p-1,awe', r':5: expected'),
])
def test_artemis_malformed_csv_names_file_and_line(tmp_path, bad_row, match):
    write_artemis(tmp_path, _artemis_rows(2))
    with open(tmp_path / 'artemis_dataset_release_v0.csv', 'a') as f:
        f.write(bad_row + '\n')
    with pytest.raises(DatasetFormatError, match=match):
        ArtEmis(tmp_path)


def test_artemis_missing_column_or_images(tmp_path):
    write_artemis(tmp_path, _artemis_rows(2))
    (tmp_path / 'artemis_dataset_release_v0.csv').write_text('art_style,painting,utterance\nA,b,c\n')
    with pytest.raises(DatasetFormatError, match=r':1: expected a CSV header with the columns art_style'):
        ArtEmis(tmp_path)
    with pytest.raises(FileNotFoundError, match='wikiart not found'):
        ArtEmis(tmp_path / 'nowhere')


# --- synthetic affect world (training/datasets/synthetic.py) -------------------------------------------------------

def test_synthetic_is_a_pure_function_of_seed_and_index():
    a, b = synthetic.SyntheticEmotion(50, seed=3, view='ldl'), synthetic.SyntheticEmotion(50, seed=3, view='ldl')
    for i in (0, 17, 49):
        (ia, ta), (ib, tb) = a[i], b[i]
        assert np.array_equal(np.asarray(ia), np.asarray(ib)) and torch.equal(ta, tb)
    other = synthetic.SyntheticEmotion(50, seed=4)[17][0]
    assert not np.array_equal(np.asarray(a[17][0]), np.asarray(other))
    val = synthetic.SyntheticScenes(50, split='val', seed=3)
    assert not np.array_equal(np.asarray(val[17][0]), np.asarray(a[17][0]))
    assert a.targets[17].tolist() == a[17][1].tolist()  # targets without rendering agree


def test_synthetic_cues_index_like_the_samples():
    sll = synthetic.SyntheticEmotion(4, split='val', seed=2)
    assert sll.cues(-1) == sll.cues(3) and sll[-1][1] == sll.cues(-1).emotion
    with pytest.raises(IndexError, match='index 4 out of range for 4 samples'):
        sll.cues(4)  # not a sample of this dataset


def test_synthetic_views_agree():
    world = synthetic.AffectWorld(seed=0)
    for i in range(200):
        c = world.cues(i)
        assert sum(c.votes) == 12 and c.distribution.sum().item() == pytest.approx(1)
        assert c.multi_hot[c.emotion] == 1 and c.votes[c.emotion] == max(c.votes)
        assert synthetic.ANPS[c.anp] == f'{synthetic.ADJECTIVES[c.adjective]}_{synthetic.NOUNS[c.noun]}'
        assert c.caption.startswith(f'a {synthetic.ADJECTIVES[c.adjective]} ') and synthetic.NOUNS[c.noun] in c.caption
    assert synthetic.SyntheticEmotion(2, view='mll')[0][1].dtype == torch.float32


def _sky_warmth(image):
    sky = np.asarray(image, dtype=np.float32)[:8]  # the top rows are always sky
    return float(sky[..., 0].mean() - sky[..., 2].mean())


def test_synthetic_labels_follow_the_cues():
    world = synthetic.AffectWorld(seed=1)
    samples = [world.sample(i) for i in range(600)]
    # low level: positive emotions (the first 4 corners of the cube) come with warmer skies
    positive = {synthetic.EMOTIONS.index(e) for e in ('amusement', 'excitement', 'contentment', 'awe')}
    warm_pos = np.mean([_sky_warmth(im) for im, c in samples if c.emotion in positive])
    warm_neg = np.mean([_sky_warmth(im) for im, c in samples if c.emotion not in positive])
    assert warm_pos - warm_neg > 15
    # high level: the adjective alone predicts valence well above chance
    adj_pos = [c.emotion in positive for _, c in samples if synthetic.ADJECTIVES[c.adjective] in ('smooth', 'bright')]
    assert np.mean(adj_pos) > 0.7
    # mid level: the scene is recoverable from the pixels: horizon = largest row-to-row colour jump,
    # texture = spread of the ground rows
    hits = 0
    for image, c in samples:
        rows = np.asarray(image, dtype=np.float32)
        jump = np.abs(np.diff(rows.mean(1), axis=0)).sum(1)
        horizon = int(np.argmin([abs(np.argmax(jump) + 1 - f * 64) for f in (0.35, 0.5, 0.65)]))
        hits += horizon == c.horizon
    assert hits / len(samples) > 0.8


def test_synthetic_datasets_batch_through_a_loader():
    transform = pretrain_transform(32)
    for ds, shape in ((synthetic.SyntheticImages(8, transform=transform), (4,)),
                      (synthetic.SyntheticScenes(8, transform=transform), (4,)),
                      (synthetic.SyntheticANP(8, transform=transform), (4,)),
                      (synthetic.SyntheticEmotion(8, transform=transform, view='ldl'), (4, 8))):
        images, targets = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
        assert images.shape == (4, 3, 32, 32) and targets.shape == shape
    captions = synthetic.SyntheticCaptions(6)
    assert captions.utterances == [captions[i][1] for i in range(6)]
    assert len(synthetic.SyntheticScenes.classes) == 12 and len(synthetic.SyntheticANP.classes) == 36


def test_synthetic_generation_speed():
    world = synthetic.AffectWorld(seed=0, size=64)
    start = time.perf_counter()
    for i in range(200):
        world.sample(i)
    assert (time.perf_counter() - start) / 200 < 0.01  # ~0.5-1 ms per 64 px image; loose for a busy CI core


def test_write_image_folder_is_an_fi_style_dataset(tmp_path):
    root = synthetic.write_image_folder(tmp_path / 'fi', 24, size=32)
    assert sorted(p.name for p in root.iterdir()) == list(synthetic.EMOTIONS)
    files = sorted(root.glob('*/*.jpg'))
    assert len(files) == 24
    world = synthetic.AffectWorld(seed=0, size=32)
    for f in files:
        label, index = f.stem.rsplit('_', 1)
        assert f.parent.name == label == synthetic.EMOTIONS[world.cues(int(index)).emotion]
        assert Image.open(f).size == (32, 32)


def test_datasets_of_one_world_draw_each_image_once(monkeypatch):
    """A pre-training model's two tasks read the same images: before, each dataset drew its own."""
    calls = []
    sample = synthetic.AffectWorld.sample
    monkeypatch.setattr(synthetic.AffectWorld, 'sample', lambda self, i: calls.append(i) or sample(self, i))
    images, anp = synthetic.SyntheticImages(4, seed=5, size=40), synthetic.SyntheticANP(6, seed=5, size=40)
    other_world = synthetic.SyntheticImages(4, seed=6, size=40)
    for dataset in (images, anp, other_world):
        [dataset[i] for i in range(len(dataset))]
    assert calls == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]  # anp drew only its two images that images lacked
    assert np.array_equal(np.asarray(anp[3][0]), np.asarray(images[3][0]))
    del images, anp
    calls.clear()
    synthetic.SyntheticImages(4, seed=5, size=40)[0]
    assert calls == [0]  # the cache went with the last dataset that read it


def test_synthetic_keeps_rendered_images_of_small_sets_only(monkeypatch):
    calls = []
    sample = synthetic.AffectWorld.sample
    monkeypatch.setattr(synthetic.AffectWorld, 'sample', lambda self, i: calls.append(i) or sample(self, i))
    kept = synthetic.SyntheticEmotion(5, split='val', seed=3, transform=ToTensor())
    first = [kept[i] for i in range(5)]
    again = [kept[i] for i in (4, 0, -1)]
    assert calls == [synthetic.SPLIT_OFFSETS['val'] + i for i in range(5)]  # each drawn once
    assert all(torch.equal(a[0], first[i][0]) and a[1] == first[i][1] for a, i in zip(again, (4, 0, 4)))
    plain = synthetic.SyntheticEmotion(5, split='val', seed=3)
    image = plain[2][0]
    image.paste((0, 0, 0), (0, 0, 8, 8))  # the caller's copy: the kept image is untouched
    assert np.array_equal(np.asarray(plain[2][0]), np.asarray(synthetic.AffectWorld(3).sample(
        synthetic.SPLIT_OFFSETS['val'] + 2)[0]))
    monkeypatch.setattr(synthetic, 'CACHE_LIMIT', 4)
    calls.clear()
    large = synthetic.SyntheticEmotion(5, split='val', seed=3)
    large[1], large[1]
    assert calls == [synthetic.SPLIT_OFFSETS['val'] + 1] * 2  # over the limit: drawn at every read
