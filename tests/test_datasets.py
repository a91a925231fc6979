"""sentizoo.datasets: the two labelled layouts of `sentizoo amalgamate` / `evaluate` (a folder of class folders, a
CSV of label vectors), the label check run before training, and the paper's transforms; on tiny generated data,
against values worked out by hand."""
import math

import pytest
import torch
from PIL import Image

from sentizoo.datasets import (LabelledImages, eval_transform, image_csv, image_folder, open_dataset, paper_data_config,
                               resize_size, train_transform)
from sentizoo.tasks import get_task

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])  # ImageNet's, the paper's


def _image(path, colour=(0, 0, 0), size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, colour).save(path)
    return path


def _normalised(rgb_uint8: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 -> the (3, H, W) tensor ToTensor + Normalize(ImageNet) make of it."""
    return (rgb_uint8.permute(2, 0, 1).float() / 255 - MEAN[:, None, None]) / STD[:, None, None]


@pytest.fixture
def folder(tmp_path):
    """root/<class>/: classes made out of order, a nested image, a hidden folder and a file that is not an image."""
    root = tmp_path / 'moods'
    _image(root / 'rage' / 'r1.png', (255, 0, 0))
    _image(root / 'calm' / 'b.png', (0, 0, 255))
    _image(root / 'calm' / 'a.png', (0, 0, 255))
    _image(root / 'joy' / 'sub' / 'j1.png', (0, 255, 0))
    _image(root / '.cache' / 'x.jpg')  # a hidden folder is no class
    (root / 'joy' / 'notes.txt').write_text('not an image')
    return root


# --- image_folder -----------------------------------------------------------------------------------------

def test_image_folder_classes_sorted_and_images_found_recursively(folder):
    data = image_folder(folder)
    assert data.label_names == ['calm', 'joy', 'rage']
    assert [p.relative_to(folder).as_posix() for p in data.paths] == ['calm/a.png', 'calm/b.png', 'joy/sub/j1.png',
                                                                       'rage/r1.png']
    assert data.targets.tolist() == [0, 0, 1, 2] and data.targets.dtype == torch.int64
    assert len(data) == 4 and data.sources == [str(p) for p in data.paths]
    image, target = data[2]  # no transform: the RGB PIL image
    assert image.mode == 'RGB' and image.getpixel((0, 0)) == (0, 255, 0) and target == 1


def test_image_folder_errors_name_the_folder(tmp_path):
    (tmp_path / 'flat').mkdir()
    _image(tmp_path / 'flat' / 'a.jpg')  # images, but no class folders
    with pytest.raises(ValueError, match=r'flat has no class folders; expected .*flat/<class>/<image>\.jpg'):
        image_folder(tmp_path / 'flat')
    _image(tmp_path / 'two' / 'calm' / 'a.png')
    (tmp_path / 'two' / 'joy').mkdir()
    with pytest.raises(ValueError, match=r'class folder .*two/joy holds no images'):
        image_folder(tmp_path / 'two')


# --- image_csv --------------------------------------------------------------------------------------------

def test_image_csv_rows_paths_and_line_numbers(tmp_path):
    outside = _image(tmp_path / 'elsewhere' / 'c.png', (10, 20, 30))
    _image(tmp_path / 'data' / 'img' / 'a.jpg')
    _image(tmp_path / 'data' / 'b.jpg')
    csv = tmp_path / 'data' / 'labels.csv'
    csv.write_text('path, calm ,joy,rage\n'
                   'img/a.jpg,1,0,1\n'
                   '\n'  # blank lines are skipped but still counted for the line numbers
                   ' b.jpg ,0.25,0.5,0.25\n'
                   f'{outside},0,0,0\n')
    data = image_csv(csv)
    assert data.label_names == ['calm', 'joy', 'rage']
    assert data.paths == [tmp_path / 'data' / 'img' / 'a.jpg', tmp_path / 'data' / 'b.jpg', outside]
    assert data.targets.dtype == torch.float32
    assert data.targets.tolist() == [[1, 0, 1], [0.25, 0.5, 0.25], [0, 0, 0]]
    assert data.sources == [f'{csv}:2', f'{csv}:4', f'{csv}:5']
    image, target = data[2]
    assert image.getpixel((3, 3)) == (10, 20, 30) and target.tolist() == [0, 0, 0]


@pytest.mark.parametrize('text, match', [
    ('path,calm\n', r'got 1 non-empty line\(s\)'),
    ('path\na.jpg\n', r'got 2 non-empty line\(s\)'),  # a header without a label column
    ('path,calm,joy\na.jpg,1,0\nb.jpg,1\n', r'labels\.csv:3: got .*\(2 fields for 3 columns\)'),
    ('path,calm,joy\n\na.jpg,1,high\n', r"labels\.csv:3: got \['a\.jpg', '1', 'high'\]"),
], ids=['header only', 'no label column', 'short row', 'not a number'])
def test_image_csv_errors_name_the_file_and_line(tmp_path, text, match):
    (tmp_path / 'labels.csv').write_text(text)
    with pytest.raises(ValueError, match=match):
        image_csv(tmp_path / 'labels.csv')


def test_image_csv_reports_every_bad_row_at_once(tmp_path):
    csv = tmp_path / 'labels.csv'
    csv.write_text('path,calm,joy\na.jpg,1\nb.jpg,0,1\nc.jpg,x,0\nd.jpg,1,0,1\n')
    with pytest.raises(ValueError) as info:
        image_csv(csv)
    message = str(info.value)
    assert message.startswith(f'3 problem(s) in {csv} (expected a header "path,<label 1>,...')
    assert f'{csv}:2: got' in message and '(2 fields for 3 columns)' in message
    assert f"{csv}:4: got ['c.jpg', 'x', '0']" in message and f'{csv}:5: got' in message
    assert f'{csv}:3' not in message


def test_a_csv_that_is_not_utf8_is_one_error_naming_the_file(tmp_path):
    csv = tmp_path / 'labels.csv'
    csv.write_bytes('path,café,joy\na.jpg,1,0\n'.encode('latin-1'))
    with pytest.raises(ValueError, match=rf'^{csv}: not UTF-8 text \(it holds the byte 0xe9, e\.g\. '
                                         r'Latin-1\); save the file as UTF-8\.$'):
        image_csv(csv)


# --- open_dataset and LabelledImages ----------------------------------------------------------------------

def test_open_dataset_picks_the_layout_from_the_path(folder, tmp_path):
    assert open_dataset(folder).label_names == ['calm', 'joy', 'rage']
    (tmp_path / 'l.csv').write_text('path,x,y\nmoods/calm/a.png,0.5,0.5\n')
    data = open_dataset(tmp_path / 'l.csv')
    assert data.label_names == ['x', 'y'] and data.paths == [folder / 'calm' / 'a.png']
    with pytest.raises(FileNotFoundError, match=r'nowhere does not exist; expected a folder of class folders or a CSV'):
        open_dataset(tmp_path / 'nowhere')


def test_labelled_images_apply_the_transform_and_check_lengths(folder):
    data = image_folder(folder, transform=lambda image: torch.tensor(image.getpixel((0, 0))))
    assert [(x.tolist(), int(y)) for x, y in data] == [([0, 0, 255], 0), ([0, 0, 255], 0), ([0, 255, 0], 1),
                                                        ([255, 0, 0], 2)]
    with pytest.raises(ValueError, match='2 images but 3 targets'):
        LabelledImages(['a.jpg', 'b.jpg'], torch.tensor([0, 1, 1]), ['x', 'y'])


def test_check_labels_passes_good_data(folder, tmp_path):
    image_folder(folder).check_labels(get_task('sll'), 3)
    (tmp_path / 'l.csv').write_text('path,x,y\nmoods/calm/a.png,0.25,0.75\nmoods/joy/sub/j1.png,1,0\n')
    image_csv(tmp_path / 'l.csv').check_labels(get_task('ldl'), 2)
    with pytest.raises(ValueError, match=r'l\.csv:2: mll task: targets must be multi-hot'):  # 0.25 is no 0/1 label
        image_csv(tmp_path / 'l.csv').check_labels(get_task('mll'), 2)


def test_check_labels_lists_every_problem_at_once(tmp_path):
    _image(tmp_path / 'ok.jpg')
    rows = ['ok.jpg,0.5,0.5', 'ok.jpg,0.9,0.9', 'missing.jpg,1,0', 'ok.jpg,-1,2']
    (tmp_path / 'l.csv').write_text('path,x,y\n' + '\n'.join(rows) + '\n')
    data = image_csv(tmp_path / 'l.csv')
    with pytest.raises(ValueError) as info:
        data.check_labels(get_task('ldl'), 3)
    message = str(info.value)
    csv = tmp_path / 'l.csv'
    # 2 labels for 3 outputs: the shape is wrong for every row (4), plus the one missing file
    assert message.startswith('6 problem(s) in the data: 2 labels but the model has 3 outputs; ')
    assert all(f'{csv}:{line}: ldl task: targets must be distributions of shape (N, 3)' in message
               for line in (2, 3, 4, 5))
    assert message.endswith(f'{csv}:4: image file {tmp_path / "missing.jpg"} does not exist.')
    with pytest.raises(ValueError) as info:  # the right number of outputs: only the bad rows and the file
        data.check_labels(get_task('ldl'), 2)
    message = str(info.value)
    assert message.startswith('3 problem(s) in the data: ')
    assert f'{csv}:3: ldl task' in message and 'row sums in [1.8, 1.8]' in message
    assert f'{csv}:5: ldl task' in message and 'negative values' in message
    assert f'{csv}:2:' not in message
    with pytest.raises(ValueError) as info:  # the first problem listed, the others counted
        data.check_labels(get_task('ldl'), 2, max_listed=1)
    message = str(info.value)
    assert message.startswith(f'3 problem(s) in the data: {csv}:3: ldl task') and message.endswith('; and 2 more.')
    assert f'{csv}:5' not in message and 'missing.jpg' not in message


def test_check_labels_reads_the_header_of_every_image_file(tmp_path):
    _image(tmp_path / 'good.png')
    (tmp_path / 'empty.jpg').touch()
    (tmp_path / 'text.jpg').write_text('not an image')
    data = LabelledImages([tmp_path / name for name in ('good.png', 'empty.jpg', 'text.jpg')], torch.tensor([0, 1, 0]),
                          ['calm', 'joy'])
    with pytest.raises(ValueError) as info:
        data.check_labels(get_task('sll'), 2)
    empty, text = tmp_path / 'empty.jpg', tmp_path / 'text.jpg'
    assert str(info.value) == (f'2 problem(s) in the data: {empty}: image file {empty}: the file is empty (0 bytes); '
                               f'{text}: image file {text}: not an image file, or a format Pillow cannot read.')


def test_check_labels_single_label_needs_two_classes_and_indices_in_range(tmp_path):
    one = LabelledImages([tmp_path / 'a.jpg'], torch.tensor([0]), ['calm'], sources=['row 1'])
    _image(tmp_path / 'a.jpg')
    with pytest.raises(ValueError, match=r"^1 problem\(s\) in the data: single-label data needs at least two "
                                         r"classes; found \['calm'\]\.$"):
        one.check_labels(get_task('sll'), 1)
    bad = LabelledImages([tmp_path / 'a.jpg'] * 3, torch.tensor([0, 2, 1]), ['calm', 'joy'], sources=['r1', 'r2', 'r3'])
    with pytest.raises(ValueError, match=r'^1 problem\(s\) in the data: r2: sll task: .*values in \[2, 2\]'):
        bad.check_labels(get_task('sll'), 2)


# --- the paper's preprocessing ----------------------------------------------------------------------------

@pytest.mark.parametrize('size, resize', [(224, 256), (14, 16), (32, 36), (448, 512), (100, 114)])
def test_resize_size_is_floor_of_size_over_crop_pct(size, resize):
    config = paper_data_config(size)
    assert config['input_size'] == (3, size, size) and config['crop_pct'] == 0.875
    assert resize_size(config) == resize == math.floor(size / 0.875)
    assert resize_size(dict(input_size=(3, 90, 90), crop_pct=0.9)) == 100  # any config, not only the paper's


def test_paper_data_config_is_the_models_preprocessing():
    config = paper_data_config()
    assert config == dict(input_size=(3, 224, 224), crop_pct=0.875, crop_mode='squash', interpolation='bilinear',
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def test_eval_transform_squashes_to_a_square_then_centre_crops():
    # 32 x 16, black left quarter: squashed to 16 x 16 (aspect ratio not kept) the black part is 4 columns wide,
    # and the centre crop of 14 keeps columns 1..14, so output column 0 is black and columns 4.. are white. A
    # resize that kept the aspect ratio would crop columns 9..22 of the original: all white.
    pixels = torch.full((16, 32, 3), 255, dtype=torch.uint8)
    pixels[:, :8] = 0
    out = eval_transform(paper_data_config(14))(Image.fromarray(pixels.numpy()))
    assert out.shape == (3, 14, 14)
    black, white = _normalised(torch.zeros(1, 1, 3, dtype=torch.uint8)), _normalised(
        torch.full((1, 1, 3), 255, dtype=torch.uint8))
    torch.testing.assert_close(out[:, :, :1], black.expand(3, 14, 1))
    torch.testing.assert_close(out[:, :, 4:], white.expand(3, 14, 10))


def test_train_transform_is_a_random_crop_or_its_mirror_of_the_resized_image():
    # a 16 x 16 image at size 14 is resized to its own size (the identity), so every output must be one of the
    # 3 x 3 crops of 14, or its mirror image; over 60 draws, more than one crop and both flips occur
    pixels = torch.arange(16 * 16 * 3).remainder(251).to(torch.uint8).reshape(16, 16, 3)
    candidates = {}
    for top in range(3):
        for left in range(3):
            crop = _normalised(pixels[top:top + 14, left:left + 14])
            candidates[(top, left, False)] = crop
            candidates[(top, left, True)] = crop.flip(-1)
    transform = train_transform(paper_data_config(14))
    image = Image.fromarray(pixels.numpy())
    torch.manual_seed(0)
    seen = set()
    for _ in range(60):
        out = transform(image)
        match = [key for key, expected in candidates.items() if torch.allclose(out, expected, atol=1e-6)]
        assert len(match) == 1, 'not a 14 x 14 crop (or its mirror) of the image'
        seen.add(match[0])
    assert len({(top, left) for top, left, _ in seen}) > 1 and {flip for _, _, flip in seen} == {False, True}
