"""The six downstream readers on generated copies of their release formats (tests/fixtures_downstream.py)."""
import json
import shutil

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

from fixtures_downstream import (EMOSET_LABEL2IDX, FI_CLASSES, UNBIASEDEMO_CLASSES, emotic_csv_rows, make_abstract,
                                 make_emoset, make_emotic, make_emotion6, make_fi, make_unbiasedemo, write_emotic_mat,
                                 write_image, write_lines)
from sentizoo.models import FI_LABELS
from training.datasets.common import DatasetFormatError
from training.datasets.emotion import (DATASET_NAMES, distribution_to_multi_hot, get_dataset,
                                          load_or_make_split)
from training.datasets.emotic import CATEGORIES


def splits_of(name, root, **kwargs):
    return {s: get_dataset(name, root, s, **kwargs) for s in ('train', 'val', 'test')}


def paths(ds):
    return [ds.path(i) for i in range(len(ds))]


def check_partition(splits, sizes):
    """Split sizes as given, no image in two splits."""
    assert {s: len(d) for s, d in splits.items()} == sizes
    listed = [p for d in splits.values() for p in paths(d)]
    assert len(set(listed)) == len(listed)


# --- FI ------------------------------------------------------------------------------------------------

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


# --- EmoSet --------------------------------------------------------------------------------------------

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


# --- UnBiasedEmo ---------------------------------------------------------------------------------------

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


# --- Emotic --------------------------------------------------------------------------------------------

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


# --- Emotion6 ------------------------------------------------------------------------------------------

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


# --- Abstract ------------------------------------------------------------------------------------------

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


# --- registry and split helper -------------------------------------------------------------------------

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
