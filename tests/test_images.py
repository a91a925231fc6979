"""sentizoo.images: load_image on every kind of image file (generated), the bad-file errors, list_images, ImageFiles
and default_workers."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sentizoo.images import IMAGE_EXTENSIONS, ImageFiles, ImageLoadError, collate_images, list_images, load_image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _close(actual, expected, tol=8):
    return all(abs(a - e) <= tol for a, e in zip(actual, expected))


def _pixels(image: Image.Image) -> list:
    return [tuple(p) for p in np.asarray(image).reshape(-1, 3).tolist()]


def _grey(image: Image.Image) -> list:
    """The single grey level of each pixel (asserting R == G == B)."""
    rgb = np.asarray(image).reshape(-1, 3)
    assert (rgb == rgb[:, :1]).all()
    return rgb[:, 0].tolist()


def _loaded(image: Image.Image, path: Path, **save) -> Image.Image:
    image.save(path, **save)
    out = load_image(path)
    assert out.mode == 'RGB'
    return out


def test_exif_orientation_is_applied(tmp_path):
    # Stored landscape 40x20, left half red; orientation 6 = "rotate 90 degrees clockwise to display",
    # so the upright image is 20x40 with the red half on top.
    stored = Image.new('RGB', (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = _loaded(stored, tmp_path / 'rotated.jpg', exif=exif, quality=95)
    assert out.size == (20, 40)
    assert _close(out.getpixel((10, 5)), RED) and _close(out.getpixel((10, 35)), BLUE)


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new('P', (4, 1))
    image.putpalette(RED + GREEN + (0, 0, 0) * 254)
    image.putdata([0, 1, 0, 1])
    out = _loaded(image, tmp_path / 'palette.png', transparency=0)
    assert _pixels(out) == [WHITE, GREEN, WHITE, GREEN]
    out = _loaded(image, tmp_path / 'opaque.png')  # the same palette without transparency
    assert _pixels(out) == [RED, GREEN, RED, GREEN]


@pytest.mark.parametrize('mode, opaque', [('LA', (0,)), ('RGBA', RED)])
def test_alpha_is_composited_on_white(tmp_path, mode, opaque):
    image = Image.new(mode, (3, 1))
    image.putdata([opaque + (255,), opaque + (0,), opaque + (128,)])
    out = _loaded(image, tmp_path / f'{mode}.png')
    full = opaque * 3 if mode == 'LA' else opaque
    half = tuple(round((c * 128 + 255 * 127) / 255) for c in full)
    assert out.getpixel((0, 0)) == full and out.getpixel((1, 0)) == WHITE
    assert _close(out.getpixel((2, 0)), half, tol=1)


def test_cmyk_jpeg(tmp_path):
    out = _loaded(Image.new('CMYK', (8, 8), (0, 255, 255, 0)), tmp_path / 'cmyk.jpg', quality=95)
    assert _close(out.getpixel((4, 4)), RED)


def test_16bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 25700, 65535, 1000]], dtype=np.uint16)  # 25700 = 100 * 257
    expected = [0, 100, 255, 4]  # 1000 * 255 / 65535 = 3.89
    png = Image.fromarray(values)
    assert png.mode == 'I;16'
    out = _loaded(png, tmp_path / 'deep.png')
    assert _grey(out) == expected
    big_endian = Image.frombytes('I;16B', (4, 1), values.astype('>u2').tobytes())
    assert _grey(_loaded(big_endian, tmp_path / 'deep_be.tif')) == expected
    as_int32 = Image.fromarray(values.astype(np.int32))
    assert as_int32.mode == 'I'
    assert _grey(_loaded(as_int32, tmp_path / 'deep32.tif')) == expected


def test_float_images(tmp_path):
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert _grey(_loaded(unit, tmp_path / 'unit.tif')) == [0, 128, 255]
    bytes_range = Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32))
    assert _grey(_loaded(bytes_range, tmp_path / 'f255.tif')) == [0, 100, 255]


def test_greyscale_and_1bit(tmp_path):
    grey = Image.new('L', (2, 1))
    grey.putdata([30, 200])
    assert _pixels(_loaded(grey, tmp_path / 'grey.png')) == [(30,) * 3, (200,) * 3]
    bits = Image.new('1', (2, 1))
    bits.putdata([0, 1])
    assert _pixels(_loaded(bits, tmp_path / 'bits.png')) == [(0,) * 3, WHITE]


def _truncated_jpeg(path: Path) -> Path:
    Image.effect_noise((64, 64), 50).convert('RGB').save(path.with_suffix('.full.jpg'))
    data = path.with_suffix('.full.jpg').read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


@pytest.mark.parametrize('kind, reason', [
    ('truncated', 'truncated'),
    ('empty', 'empty'),
    ('text', 'not an image'),
    ('missing', 'No such file'),
])
def test_bad_files_raise_naming_the_file(tmp_path, kind, reason):
    path = tmp_path / f'{kind}.jpg'
    if kind == 'truncated':
        _truncated_jpeg(path)
    elif kind == 'empty':
        path.touch()
    elif kind == 'text':
        path.write_text('these are not the pixels you are looking for\n')
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(path) in str(info.value) and reason in str(info.value)
    assert info.value.path == str(path) and isinstance(info.value, OSError)


@pytest.mark.parametrize('size', [(15, 10), (20, 20)])  # past the warning limit; past the error limit (2x)
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, size):
    path = tmp_path / 'bomb.png'
    Image.new('RGB', size).save(path)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)
    with pytest.raises(ImageLoadError, match='decompression bomb') as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_load_error_pickles():  # crosses DataLoader worker processes
    error = pickle.loads(pickle.dumps(ImageLoadError('a/b.jpg', 'why')))
    assert (error.path, error.reason, str(error)) == ('a/b.jpg', 'why', 'Cannot load image a/b.jpg: why')


def test_list_images(tmp_path):
    for name in ['b/z.JPG', 'b/a.png', 'a.jpeg', 'notes.txt', '.hidden/x.jpg', 'b/._y.jpg']:
        (tmp_path / 'root' / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / 'root' / name).touch()
    (tmp_path / 'explicit.txt').touch()
    root = tmp_path / 'root'
    assert list_images(root) == [root / 'a.jpeg', root / 'b' / 'a.png', root / 'b' / 'z.JPG']
    # explicit files are kept whatever their suffix; order of arguments kept; duplicates dropped
    assert list_images([tmp_path / 'explicit.txt', root / 'a.jpeg', root]) == [
        tmp_path / 'explicit.txt', root / 'a.jpeg', root / 'b' / 'a.png', root / 'b' / 'z.JPG']
    with pytest.raises(FileNotFoundError, match='nowhere'):
        list_images([root, tmp_path / 'nowhere'])
    assert all(ext == ext.lower() and ext.startswith('.') for ext in IMAGE_EXTENSIONS)


def test_image_files_in_a_dataloader_keeps_going_past_bad_files(tmp_path):
    for i, colour in enumerate([RED, GREEN]):
        Image.new('RGB', (6, 4), colour).save(tmp_path / f'{i}_good.png')
    (tmp_path / '2_bad.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    dataset = ImageFiles(tmp_path, transform=lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1))
    assert [f.name for f in dataset.files] == ['0_good.png', '1_good.png', '2_bad.png']
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_images)
    first, second = list(loader)
    assert first.indices == [0, 1] and first.failures == [] and first.images.shape == (2, 3, 4, 6)
    assert first.images[1, :, 0, 0].tolist() == list(GREEN)
    assert second.images is None and second.indices == []
    (index, error), = second.failures
    assert index == 2 and error.path == str(tmp_path / '2_bad.png')


def test_workers_default_to_the_cores(monkeypatch):
    from sentizoo.cli import build_parser
    from sentizoo.images import default_workers
    from training.downstream import validate_config

    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1}, raising=False)
    assert default_workers() == 2
    config = validate_config({'arch': 'resnet18', 'dataset': 'synthetic', 'task': 'sll',
                              'runs': {'a': {'mode': 'finetune', 'init': 'random'}}})
    assert config['workers'] == 2  # was 4: more processes than cores, and torch's warning twice per run
    assert build_parser().parse_args(['amalgamate', 'resnet18', 'data', '--output', 'out']).workers is None
