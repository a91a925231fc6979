"""Reliability: no input, file or fault may lose predictions, checkpoints or disk; every failure is one line.

Each case was a defect once (or is a hostile case that must keep passing). The image corpus is generated
here, seeded; nothing is downloaded.
"""
import csv
import errno
import io
import json
import multiprocessing
import os
import random
import resource
import shutil
import signal
import stat
import struct
import time
from pathlib import Path
from typing import Dict

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

import sentizoo.engine as engine
from helpers import MODEL, TINY, Noisy, tiny, train_tiny, write_images
from sentizoo.cli import main
from sentizoo.images import ImageLoadError, load_image
from sentizoo.datasets import eval_transform, image_folder
from sentizoo.saving import save_pretrained
from sentizoo.weights import atomic_write

# --- images: any decoder failure is the file's error, never the run's ----------------------------------


def _dds(fourcc: bytes, flags: int = 0x4) -> bytes:
    """A 128-byte DDS header (4x4) with the given pixel format: some make Pillow raise NotImplementedError."""
    header = struct.pack('<4sIIIIIII', b'DDS ', 124, 0x1007, 4, 4, 0, 0, 0) + bytes(44)
    return header + struct.pack('<II4sIIIII', 32, flags, fourcc, 0, 0, 0, 0, 0) + bytes(20)


def _psd(channels: int, depth: int, mode: int) -> bytes:
    """A PSD header (8x8) without image data."""
    return struct.pack('>4sH6sHIIHH', b'8BPS', 1, bytes(6), channels, 8, 8, depth, mode) + bytes(12)


def _seeds() -> Dict[str, bytes]:
    """Small valid files of many formats and variants, and foreign headers, to mutate."""
    image = Image.effect_noise((24, 16), 50).convert('RGB')
    seeds = {}
    for name, mode, fmt, options in [
            ('png', 'RGBA', 'PNG', {}), ('p.png', 'P', 'PNG', {}), ('i16.png', 'I;16', 'PNG', {}),
            ('jpg', 'RGB', 'JPEG', {}), ('prog.jpg', 'RGB', 'JPEG', {'progressive': True}),
            ('cmyk.jpg', 'CMYK', 'JPEG', {}), ('gif', 'P', 'GIF', {}), ('bmp', 'RGB', 'BMP', {}),
            ('ico', 'RGBA', 'ICO', {'sizes': [(16, 16)]}), ('webp', 'RGB', 'WEBP', {}),
            ('raw.tif', 'RGB', 'TIFF', {}), ('lzw.tif', 'RGB', 'TIFF', {'compression': 'tiff_lzw'}),
            ('deflate.tif', 'RGBA', 'TIFF', {'compression': 'tiff_adobe_deflate'}),
            ('packbits.tif', 'L', 'TIFF', {'compression': 'packbits'}),
            ('jpeg.tif', 'RGB', 'TIFF', {'compression': 'jpeg'}), ('f.tif', 'F', 'TIFF', {}),
            ('1bit.tif', '1', 'TIFF', {'compression': 'group4'}), ('ppm', 'RGB', 'PPM', {})]:
        buffer = io.BytesIO()
        image.convert(mode).save(buffer, fmt, **options)
        seeds[name] = buffer.getvalue()
    seeds.update({f'dds_{fourcc.decode()}': _dds(fourcc) for fourcc in (b'XXXX', b'DX10', b'DXT1', b'ATI2')})
    seeds.update(dds_flags=_dds(bytes(4), 0x2), dds_rgb=_dds(bytes(4), 0x40))
    seeds.update({f'psd_{c}_{d}_{m}': _psd(c, d, m) for c, d, m in ((3, 8, 3), (4, 16, 4), (1, 32, 1), (9, 8, 7))})
    return seeds


_MAGIC = (b'\x89PNG\r\n\x1a\n', b'\xff\xd8\xff', b'GIF89a', b'BM', b'II*\x00', b'MM\x00*', b'\x00\x00\x01\x00',
          b'8BPS', b'DDS ', b'RIFF\x00\x00\x00\x00WEBPVP8 ', b'P6\n', b'\x00\x00\x00\x0cjP  ', b'icns', b'qoif')


def _corpus(count: int, seed: int = 0) -> Dict[str, bytes]:
    """``count`` hostile files: seeds truncated, bit-flipped, spliced, and random bytes after image magics."""
    rng = random.Random(seed)
    seeds = _seeds()
    corpus = dict(seeds)
    names = sorted(seeds)
    for i in range(count - len(corpus)):
        data = bytearray(seeds[rng.choice(names)])
        kind = i % 4
        if kind == 0:
            data = data[:rng.randrange(1, len(data))]
        elif kind == 1:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 2:
            cut = rng.randrange(len(data))
            data = data[:cut] + seeds[rng.choice(names)][cut:]
        else:
            data = bytearray(rng.choice(_MAGIC) + rng.randbytes(rng.randrange(0, 300)))
        corpus[f'{i:03d}_{kind}'] = bytes(data)
    return corpus


@pytest.mark.filterwarnings('ignore::UserWarning')  # Pillow warns about some corrupt TIFF tags
def test_fuzzed_files_are_rgb_images_or_image_load_errors(tmp_path):
    start = time.perf_counter()
    failures = []
    for name, data in _corpus(400).items():
        path = tmp_path / f'{name}.jpg'  # the suffix lies, as in the bug report
        path.write_bytes(data)
        try:
            assert load_image(path).mode == 'RGB'
        except ImageLoadError as e:
            assert str(path) in str(e) and '\n' not in str(e)
        except Exception as e:  # noqa: BLE001 -- exactly what must not escape
            failures.append(f'{name}: {type(e).__name__}: {e}')
    assert not failures, failures
    assert time.perf_counter() - start < 60  # wide slack: a hang would show


def test_unimplemented_dds_format_is_an_error_row(tmp_path):
    path = tmp_path / 'bad.jpg'
    path.write_bytes(_dds(b'XXXX'))
    with pytest.raises(ImageLoadError, match='bad.jpg'):
        load_image(path)


def test_predict_over_a_hostile_corpus_keeps_every_row(capsys, zoo, tmp_path):
    """The bug report's case (a DDS file named bad.jpg emptied --output) and a sample of the fuzz corpus,
    decoded in worker processes, beside good images."""
    for name, data in list(_corpus(60, seed=1).items())[::3]:
        (tmp_path / f'{name}.jpg').write_bytes(data)
    (tmp_path / 'bad.jpg').write_bytes(_dds(b'XXXX'))
    Image.new('RGB', (32, 32), (10, 130, 20)).save(tmp_path / 'good.jpg')
    out = tmp_path / 'out' / 'predictions.csv'
    out.parent.mkdir()
    code, _, err = _run(capsys, 'predict', MODEL, tmp_path, '--format', 'csv', '--output', out, '--workers', 2)
    rows = {Path(row['path']).name: row for row in csv.DictReader(out.open())}
    assert code == 1 and len(rows) == len(list(tmp_path.glob('*.jpg'))) and 'images predicted' in err
    assert rows['good.jpg']['error'] == '' and rows['bad.jpg']['error'].startswith('cannot decode')


@pytest.mark.parametrize('name', ['a,b "c".jpg', 'line\nbreak.jpg', '-rf.jpg', 'dots...jpg', ' lead space.jpg'])
def test_hostile_file_names_round_trip_through_csv(capsys, zoo, tmp_path, name):
    Image.new('RGB', (32, 32), (10, 130, 20)).save(tmp_path / name)
    code, out, _ = _run(capsys, 'predict', MODEL, tmp_path, '--format', 'csv', '--workers', 0)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [row['path'] for row in rows] == [str(tmp_path / name)]


# --- files on disk: atomic, no orphans, the umask's permissions -----------------------------------------

# Child processes are forked, not started afresh: importing torch again takes long on a busy machine.
FORK = multiprocessing.get_context('fork')


def _hang_mid_write(target: Path, written) -> None:
    atomic_write(target, lambda tmp: (Path(tmp).write_bytes(bytes(1000)), written.set(), time.sleep(600)))


def _kill_mid_write(target: Path) -> None:
    written = FORK.Event()
    writer = FORK.Process(target=_hang_mid_write, args=(target, written))
    writer.start()
    assert written.wait(60)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()


def test_checkpoints_killed_mid_write_leave_no_files_after_the_next_run(tmp_path):
    for name in (engine.CHECKPOINT_NAME, engine.BEST_NAME, engine.HISTORY_NAME):
        _kill_mid_write(tmp_path / name)
    assert len(list(tmp_path.iterdir())) == 3  # the orphans a kill -9 leaves
    train_tiny(tmp_path, epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([engine.CHECKPOINT_NAME, engine.HISTORY_NAME])


def test_atomic_write_keeps_the_temporary_files_of_live_writers(tmp_path):
    target = tmp_path / 'model.safetensors'
    live = tmp_path / f'.{target.name}.{os.getpid()}.0000.tmp'  # this process: alive
    live.touch()
    _kill_mid_write(target)
    atomic_write(target, lambda tmp: Path(tmp).write_text('new'))
    assert sorted(tmp_path.iterdir()) == [live, target] and target.read_text() == 'new'


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_saved_weights_and_checkpoints_obey_the_umask(tmp_path, umask_022):
    save_pretrained(timm.create_model('resnet18', num_classes=2, **TINY), tmp_path / 'zoo', verbose=False)
    train_tiny(tmp_path / 'ckpt', epochs=1)
    files = [*(tmp_path / 'zoo').iterdir(), *(tmp_path / 'ckpt').iterdir()]
    assert len(files) == 4 and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}


# --- predict: every prediction reaches the output, or stdout -------------------------------------------

def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope='module')
def odd_names(tmp_path_factory) -> Path:
    """A good image under a file name that is not UTF-8 (Latin-1 'é'), and one under a plain name."""
    root = tmp_path_factory.mktemp('odd')
    Image.new('RGB', (32, 32), (90, 30, 200)).save(root / os.fsdecode(b'caf\xe9.jpg'))
    Image.new('RGB', (32, 32), (10, 130, 20)).save(root / 'plain.jpg')
    return root


@pytest.mark.parametrize('fmt', ['csv', 'table', 'json'])
def test_file_names_that_are_not_utf8_are_written_escaped(capsys, zoo, odd_names, tmp_path, fmt):
    out = tmp_path / f'out.{fmt}'
    code, _, err = _run(capsys, 'predict', MODEL, odd_names, '--format', fmt, '--output', out, '--workers', 0)
    assert code == 0 and '2 images predicted, 0 failed' in err
    text = out.read_text(encoding='utf-8')
    assert text.count(str(odd_names)) == 2 if fmt != 'json' else len(json.loads(text)) == 2
    assert 'caf\\xe9.jpg' in text.replace('\\\\', '\\')  # JSON escapes the backslash once more


def test_an_existing_output_survives_a_model_that_fails_to_load(capsys, odd_names, tmp_path):
    out = tmp_path / 'predictions.csv'
    out.write_text('yesterday\'s results\n')
    code, _, err = _run(capsys, 'predict', 'senti_resnet50.fi', odd_names, '--output', out)  # no weights
    assert code == 1 and 'No weights found' in err
    assert out.read_text() == 'yesterday\'s results\n' and os.listdir(tmp_path) == [out.name]


def test_an_unwritable_output_fails_before_the_model_loads(capsys, odd_names, tmp_path):
    code, _, err = _run(capsys, 'predict', 'senti_resnet50.fi', odd_names, '--output', tmp_path / 'no' / 'out.csv')
    assert code == 2 and 'cannot create files in' in err and str(tmp_path / 'no') in err
    code, _, err = _run(capsys, 'predict', 'senti_resnet50.fi', odd_names, '--output', tmp_path)
    assert code == 2 and 'is a directory' in err


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')
def test_a_full_disk_at_the_end_sends_the_predictions_to_stdout(capsys, zoo, odd_names):
    code, out, err = _run(capsys, 'predict', MODEL, odd_names, '--format', 'csv', '--output', '/dev/full',
                          '--workers', 0)
    assert code == 1 and 'cannot write --output /dev/full (No space left on device)' in err
    assert len(list(csv.reader(io.StringIO(out)))) == 3  # the header and both images


# --- training data: every label row and file checked before the first step -------------------------------

COMMON = ['--batch-size', '4', '--workers', '0', '--img-size', '32', '--no-progress', '--epochs', '1',
          '--baseline', '--init', 'random']


def _labels_csv(root: Path, rows) -> Path:
    write_images(root / 'images')
    with open(root / 'labels.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['path', 'calm', 'joy', 'rage'])
        writer.writerows(rows)
    return root / 'labels.csv'


def test_every_bad_label_row_and_missing_file_is_reported_before_training(tmp_path, capsys, tiny_resnet18,
                                                                        monkeypatch):
    good = [[f'images/calm/{i}.jpg', 0.5, 0.25, 0.25] for i in range(4)]
    data = _labels_csv(tmp_path, [*good, ['images/joy/0.jpg', 1.0, 0.9, 0.8], ['images/joy/1.jpg', 'nan', 0, 1],
                                  ['images/gone.jpg', 0.2, 0.3, 0.5]])
    monkeypatch.setattr(engine.Loop, '_train_step', None)  # a step would crash
    code, _, err = _run(capsys, 'amalgamate', 'resnet18', data, '--task', 'ldl', '--output', tmp_path / 'out',
                        *COMMON)
    assert code == 2 and '3 problem(s)' in err and len(err.splitlines()) == 1
    assert f'{data}:6: ldl task' in err and 'row sums in [2.7, 2.7]' in err and f'{data}:7: ldl task' in err
    assert f'{data}:8: image file {tmp_path / "images" / "gone.jpg"} does not exist' in err


def test_a_model_with_too_few_outputs_is_refused_before_training(tmp_path):
    write_images(tmp_path)
    loader = DataLoader(image_folder(tmp_path, ToTensor()), batch_size=4)
    with pytest.raises(ValueError, match=r'3 labels but the model has 2 outputs; .*rage/0.jpg: sll task'):
        engine.finetune(tiny(2), loader, epochs=1, progress=False)


def test_a_one_class_folder_is_refused_for_single_label_training(tmp_path, capsys, tiny_resnet18):
    write_images(tmp_path / 'data', classes=('joy',))
    code, _, err = _run(capsys, 'amalgamate', 'resnet18', tmp_path / 'data', '--output', tmp_path / 'out', *COMMON)
    assert code == 2 and "needs at least two classes; found ['joy']" in err


def test_evaluate_reports_a_missing_file_before_reading_images(tmp_path, capsys, tiny_resnet18):
    save_pretrained(timm.create_model('resnet18', num_classes=3), tmp_path / 'model', verbose=False)
    data = _labels_csv(tmp_path, [['images/calm/0.jpg', 1, 0, 0], ['images/gone.jpg', 0, 1, 0]])
    code, _, err = _run(capsys, 'evaluate', tmp_path / 'model', data, '--task', 'mll', *COMMON[:7])
    assert code == 2 and f'{data}:3: image file' in err


def test_the_nan_stop_advice_works_lower_lr_and_rerun_with_the_same_checkpoint_dir(tmp_path):
    torch.manual_seed(0)
    broken = DataLoader(Noisy(nan_index=9), batch_size=4)
    with pytest.raises(engine.NonFiniteLossError, match='lower lr.*rerun with the same checkpoint_dir'):
        engine.finetune(tiny(), broken, epochs=2, lr=0.1, step_size=1, gamma=0.5, checkpoint_dir=tmp_path,
                        checkpoint_every=1, progress=False)
    model = engine.finetune(tiny(), DataLoader(Noisy(), batch_size=4), epochs=2, lr=0.01, step_size=1,
                            gamma=0.5, checkpoint_dir=tmp_path, progress=False)  # resumes at batch 3
    assert [epoch['lr'] for epoch in model.sentizoo_history['epochs']] == [0.01, 0.005]


# --- weights: one verification on every path; every bad file one line naming it ------------------------

def _tamper(folder: Path) -> None:
    """+100 on fc.bias, as in the bug report; config.json (and its sha256) untouched."""
    state = load_file(folder / 'model.safetensors')
    state['fc.bias'] += 100
    save_file(state, folder / 'model.safetensors')


@pytest.fixture
def own_zoo(isolated_zoo, weights_dir) -> Path:
    """A copy of the senti_resnet18.fi folder in the zoo, free to break."""
    shutil.copytree(weights_dir, isolated_zoo / MODEL)
    return isolated_zoo / MODEL


@pytest.mark.parametrize('config, why', [('{"sha256": "0', 'is not valid JSON'), ('[1, 2]', 'holds a JSON list'),
                                         ('{"sha256": 5}', '"sha256" must be 64 lower-case hex digits')])
def test_a_malformed_config_is_an_error_not_a_skipped_checksum(capsys, own_zoo, odd_names, config, why):
    _tamper(own_zoo)
    (own_zoo / 'config.json').write_text(config)
    code, out, err = _run(capsys, 'predict', MODEL, odd_names / 'plain.jpg')
    assert code == 1 and out == '' and err.startswith(f'sentizoo predict: error: {own_zoo / "config.json"}')
    assert why in err and len(err.splitlines()) == 1


def _saved_folder(root: Path, classes: int = 3) -> Path:
    torch.manual_seed(0)
    save_pretrained(timm.create_model('resnet18', num_classes=classes), root / 'model', verbose=False)
    return root / 'model'


def test_evaluate_checks_the_recorded_sha256(capsys, tmp_path):
    folder = _saved_folder(tmp_path)
    write_images(tmp_path / 'data')
    args = ['evaluate', folder, tmp_path / 'data', '--img-size', 32, '--workers', 0, '--no-progress']
    assert _run(capsys, *args)[0] == 0
    _tamper(folder)
    code, out, err = _run(capsys, *args)
    assert code == 1 and out == '' and 'fail the sha256 check' in err


def test_evaluate_loads_no_pickle(capsys, tmp_path):
    folder = _saved_folder(tmp_path)
    torch.save(load_file(folder / 'model.safetensors'), folder / 'pytorch_model.bin')
    (folder / 'model.safetensors').unlink()
    write_images(tmp_path / 'data')
    code, _, err = _run(capsys, 'evaluate', folder, tmp_path / 'data', '--img-size', 32)
    assert code == 1 and 'only pytorch_model.bin: pickle files' in err and len(err.splitlines()) == 1


def _bad_weights(kind: str, path: Path) -> str:
    """Write a bad weight file of ``kind`` to ``path``; returns what the error must say."""
    state = timm.create_model(MODEL).state_dict()
    if kind == 'shapes':  # a classifier of another size is fine (its classes come from the file): the stem is not
        state['conv1.weight'] = torch.zeros(32, 3, 7, 7)
    elif kind == 'missing':
        del state['fc.weight']
    elif kind == 'extra':
        state['head.extra'] = torch.zeros(1)
    save_file(state, path)
    data = path.read_bytes()
    if kind == 'truncated':
        path.write_bytes(data[:len(data) // 2])
    elif kind == 'header':
        path.write_bytes(b'\xff' * 8 + data[8:])
    elif kind == 'pickle':
        torch.save(state, path)
    return {'shapes': 'size mismatch for conv1.weight', 'missing': 'Missing key(s) in state_dict: "fc.weight"',
            'extra': 'Unexpected key(s) in state_dict: "head.extra"', 'truncated': 'not a valid safetensors file',
            'header': 'not a valid safetensors file', 'pickle': 'not a valid safetensors file'}[kind]


@pytest.mark.parametrize('kind', ['shapes', 'missing', 'extra', 'truncated', 'header', 'pickle'])
def test_bad_weight_files_are_one_line_errors_naming_the_file(capsys, isolated_zoo, odd_names, tmp_path, kind):
    file = tmp_path / 'weights.safetensors'
    why = _bad_weights(kind, file)
    code, out, err = _run(capsys, 'predict', MODEL, odd_names / 'plain.jpg', '--checkpoint', file)
    assert code == 1 and out == '' and str(file) in err and why in err and len(err.splitlines()) == 1
    (isolated_zoo / MODEL).mkdir(parents=True)  # the same file in the zoo, found by name
    shutil.copyfile(file, isolated_zoo / MODEL / 'model.safetensors')
    code, _, err = _run(capsys, 'predict', MODEL, odd_names / 'plain.jpg')
    assert code == 1 and str(isolated_zoo / MODEL / 'model.safetensors') in err and why in err
    assert len(err.splitlines()) == 1


def test_info_says_the_weights_are_not_published_and_how_to_make_them(capsys):
    code, out, _ = _run(capsys, 'info', 'senti_resnet50.fi')
    assert code == 0 and 'not published yet' in out and 'python -m training.export' in out
    assert 'download from' not in out


# --- memory per image: bounded by aspect ratio, pixels and JPEG draft decoding ---------------------------

@pytest.mark.parametrize('size', [(1, 8000), (8000, 1), (2000, 1), (17, 1)])
def test_extreme_aspect_ratios_are_refused_before_decoding(tmp_path, size):
    path = tmp_path / 'strip.png'
    Image.new('L', size).save(path)  # ~100 bytes; resized to 256 on the short side: GBs
    with pytest.raises(ImageLoadError, match=rf'{size[0]}x{size[1]} pixels: an aspect ratio beyond 16:1'):
        load_image(path)


def test_the_widest_accepted_aspect_ratio_loads(tmp_path):
    Image.new('RGB', (16 * 20, 20)).save(tmp_path / 'panorama.png')
    assert load_image(tmp_path / 'panorama.png').size == (320, 20)


def test_large_jpegs_are_decoded_at_a_reduced_scale_not_below_the_draft_size(tmp_path):
    Image.new('RGB', (4200, 2100), (200, 30, 30)).save(tmp_path / 'big.jpg')
    image = load_image(tmp_path / 'big.jpg')
    assert image.size == (2100, 1050) and image.getpixel((5, 5))[0] > 150


def _load_and_resize(path: Path, result) -> None:
    """In a forked child: load_image + the evaluation transform; sends (error or '', peak RSS growth in MB)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    transform = eval_transform(dict(input_size=(3, 224, 224), interpolation='bilinear', mean=(0.5,) * 3,
                                    std=(0.5,) * 3, crop_pct=0.875))
    try:
        transform(load_image(path))
        error = ''
    except ImageLoadError as e:
        error = str(e)
    result.send((error, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024))


def test_a_1x8000_png_is_refused_within_little_memory(tmp_path):
    Image.new('L', (1, 8000)).save(tmp_path / 'bomb.png')  # 116 bytes; it peaked at 2.9 GB
    receive, send = FORK.Pipe(duplex=False)
    child = FORK.Process(target=_load_and_resize, args=(tmp_path / 'bomb.png', send))
    child.start()
    error, peak_mb = receive.recv()
    child.join()
    assert 'aspect ratio' in error and peak_mb < 200  # wide slack: the old path needed 2900


# --- symbolic links: broken ones and loops are error rows, wherever they are -----------------------------

@pytest.fixture
def links(tmp_path) -> Path:
    root = tmp_path / 'photos'
    (root / 'sub').mkdir(parents=True)
    Image.new('RGB', (32, 32), (10, 130, 20)).save(root / 'good.jpg')
    (root / 'broken.jpg').symlink_to(tmp_path / 'gone.jpg')
    (root / 'loop.jpg').symlink_to(root / 'loop.jpg')
    (root / 'alias.jpg').symlink_to(root / 'good.jpg')
    (root / 'sub' / 'up').symlink_to(root)  # a folder link back up: not followed
    return root


def test_broken_links_and_loops_in_a_folder_are_error_rows(capsys, zoo, links):
    code, out, err = _run(capsys, 'predict', MODEL, links, '--format', 'json', '--workers', 0)
    rows = {Path(row['path']).name: row['error'] for row in json.loads(out)}
    assert code == 1 and rows.keys() == {'good.jpg', 'alias.jpg', 'broken.jpg', 'loop.jpg'}
    assert rows['good.jpg'] is None and rows['alias.jpg'] is None
    assert rows['broken.jpg'].startswith('broken symbolic link') and 'symbolic links' in rows['loop.jpg']


def test_broken_links_and_loops_named_on_the_command_line_are_error_rows(capsys, zoo, links):
    code, out, err = _run(capsys, 'predict', MODEL, links / 'broken.jpg', links / 'loop.jpg', links / 'good.jpg',
                          '--format', 'csv', '--workers', 0)
    assert code == 1 and '1 images predicted, 2 failed' in err and len(out.splitlines()) == 4


# --- usage errors: one line, exit code 2 ------------------------------------------------------------------

@pytest.mark.parametrize('device, why', [('nonsense', "--device 'nonsense' is not a torch device"),
                                         ('cuda:99', '--device cuda:99:')])
@pytest.mark.parametrize('command', ['predict', 'evaluate', 'amalgamate'])
def test_a_device_torch_cannot_use_is_a_usage_error(capsys, tmp_path, command, device, why):
    argv = {'predict': ['predict', MODEL, tmp_path], 'evaluate': ['evaluate', MODEL, tmp_path],
            'amalgamate': ['amalgamate', 'resnet18', tmp_path, '--output', tmp_path / 'out']}[command]
    code, out, err = _run(capsys, *argv, '--device', device)
    assert code == 2 and out == '' and err.startswith(f'sentizoo {command}: error: {why}')
    assert len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_cuda_without_a_driver_is_a_usage_error(capsys, tmp_path):
    code, _, err = _run(capsys, 'predict', MODEL, tmp_path, '--device', 'cuda')
    assert code == 2 and 'CUDA is not available here' in err and len(err.splitlines()) == 1


def test_an_amalgamate_output_that_cannot_be_created_fails_before_training(capsys, tmp_path, monkeypatch):
    write_images(tmp_path / 'data')
    (tmp_path / 'file').touch()
    monkeypatch.setattr(engine.Loop, 'run', None)  # training would crash
    code, _, err = _run(capsys, 'amalgamate', 'resnet18', tmp_path / 'data', '--output', tmp_path / 'file' / 'out')
    assert code == 2 and f'--output {tmp_path / "file" / "out"}: cannot create the folder' in err
    code, _, err = _run(capsys, 'amalgamate', 'resnet18', tmp_path / 'data', '--output', tmp_path / 'out',
                        '--checkpoint-dir', tmp_path / 'file')
    assert code == 2 and '--checkpoint-dir' in err and len(err.splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes anywhere')
def test_a_read_only_working_directory_is_a_usage_error(capsys, tmp_path, monkeypatch):
    write_images(tmp_path / 'data')
    (tmp_path / 'ro').mkdir()
    (tmp_path / 'ro').chmod(0o555)
    monkeypatch.chdir(tmp_path / 'ro')
    code, _, err = _run(capsys, 'amalgamate', 'resnet18', tmp_path / 'data', '--output', 'out')
    assert code == 2 and 'cannot create the folder (Permission denied)' in err


def test_a_failed_save_after_training_points_to_the_checkpoints(capsys, tmp_path, tiny_resnet18, monkeypatch):
    write_images(tmp_path / 'data')

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr('sentizoo.saving.save_pretrained', disk_full)
    code, _, err = _run(capsys, 'amalgamate', 'resnet18', tmp_path / 'data', '--output', tmp_path / 'out', *COMMON)
    assert code == 1 and 'No space left on device' in err and f'safe in {tmp_path / "out" / "checkpoints"}' in err
    assert (tmp_path / 'out' / 'checkpoints' / engine.CHECKPOINT_NAME).is_file()


def test_an_output_behind_a_symbolic_link_is_written_through_it(capsys, zoo, odd_names, tmp_path):
    (tmp_path / 'real.csv').write_text('old\n')
    (tmp_path / 'link.csv').symlink_to(tmp_path / 'real.csv')
    code, _, _ = _run(capsys, 'predict', MODEL, odd_names / 'plain.jpg', '--format', 'csv', '--output',
                      tmp_path / 'link.csv', '--workers', 0)
    assert code == 0 and (tmp_path / 'link.csv').is_symlink() and 'plain.jpg' in (tmp_path / 'real.csv').read_text()


@pytest.mark.parametrize('name', ['config.json', 'model.safetensors'])
def test_an_unreadable_config_or_weight_file_says_permission_denied(capsys, own_zoo, odd_names, monkeypatch, name):
    """As a second user of a shared zoo saw 0600 files (simulated: the tests may run as root)."""
    def refusing(read):
        def wrapper(file, *args, **kwargs):
            if Path(file) == own_zoo / name:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return read(file, *args, **kwargs)
        return wrapper

    monkeypatch.setattr('builtins.open', refusing(open))
    monkeypatch.setattr(Path, 'read_text', refusing(Path.read_text))
    code, _, err = _run(capsys, 'predict', MODEL, odd_names / 'plain.jpg')
    assert code == 1 and f'{own_zoo / name}: permission denied' in err and len(err.splitlines()) == 1
