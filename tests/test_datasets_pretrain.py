"""Pre-training dataset readers (Places365, VSO, ArtEmis), their shared helpers and the synthetic world."""
import logging
import time

import numpy as np
import pytest
import torch
from fixtures_pretrain import (ANP_LIST, PLACES_CATEGORIES, flat, write_artemis, write_image, write_places365_easy,
                               write_places365_official, write_vso_folders, write_vso_split)
from PIL import Image

from training.datasets import common, synthetic
from training.datasets.artemis import EMOTIONS as ARTEMIS_EMOTIONS
from training.datasets.artemis import ArtEmis, split_artworks
from training.datasets.common import DatasetFormatError, ImageDataset, pretrain_transform
from training.datasets.places365 import Places365, read_categories
from training.datasets.vso import VSO, read_anp_list

PLACES_CLASSES = ['airfield', 'apartment_building-outdoor', 'badlands', 'bakery-shop', 'canyon', 'ski_resort']


# --- common ------------------------------------------------------------------------------------------------

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
    good = [write_image(tmp_path / f'{k}.jpg', k) for k in range(3)]
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
    x = pretrain_transform(resize=16, crop=12, normalize=False)(image)
    assert x.shape == (3, 12, 12) and x.min() >= 0 and x.max() <= 1 and x[0].mean() == pytest.approx(1)
    y = pretrain_transform(resize=16, crop=12)(image)
    assert y[0, 0, 0] == pytest.approx((1 - 0.485) / 0.229, abs=1e-4)


# --- Places365 ----------------------------------------------------------------------------------------------

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


# --- VSO ----------------------------------------------------------------------------------------------------

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
    write_image(tmp_path / 'train' / 'e_f' / '1.jpg', 0)
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


# --- ArtEmis ------------------------------------------------------------------------------------------------

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
    image, text = ArtEmis(tmp_path, 'train', transform=pretrain_transform(16, 12))[0]
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


# --- synthetic affect world ----------------------------------------------------------------------------------

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
    transform = pretrain_transform(resize=36, crop=32)
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
