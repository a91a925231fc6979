"""pytest fixtures only (plain helper functions and data writers are in helpers.py).

Every test runs offline against an empty, private zoo directory and HF cache (``isolated_zoo``, autouse).
The other fixtures are shared by the predict / CLI / ONNX tests: a random ``senti_resnet18.fi`` in the zoo
format (``weights_dir``), a zoo holding it (``zoo``), a folder of good and bad images (``images``), a lowered
decompression-bomb limit (``bomb_limit``) and a tiny 4-class model saved as a zoo folder (``tiny_folder``).
"""
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from helpers import MODEL, TINY, tiny_classifier
from sentizoo.saving import save_pretrained


@pytest.fixture(autouse=True)
def isolated_zoo(tmp_path_factory, monkeypatch) -> Path:
    """``$SENTIZOO_HOME`` for this test (empty), with the HF cache beside it and the hub offline."""
    root = tmp_path_factory.mktemp('zoo')
    monkeypatch.setenv('SENTIZOO_HOME', str(root / 'zoo'))
    monkeypatch.setenv('HF_HUB_CACHE', str(root / 'hf'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    return root / 'zoo'


@pytest.fixture(scope='module')
def weights_dir(tmp_path_factory) -> Path:
    """A random senti_resnet18.fi in the zoo format (seeded, so its predictions are not all ties)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp('weights') / MODEL
    save_pretrained(timm.create_model(MODEL), folder, verbose=False)
    return folder


@pytest.fixture
def zoo(isolated_zoo, weights_dir) -> Path:
    """The test's zoo with :data:`helpers.MODEL` in it (a link to ``weights_dir``)."""
    isolated_zoo.mkdir(parents=True)
    (isolated_zoo / MODEL).symlink_to(weights_dir)
    return isolated_zoo


@pytest.fixture(scope='module')
def images(tmp_path_factory) -> Path:
    """Two good JPEGs (one nested), a good PNG, and one bad file of each kind (:data:`helpers.BAD`)."""
    root = tmp_path_factory.mktemp('images')
    (root / 'sub').mkdir()
    Image.radial_gradient('L').resize((40, 30)).convert('RGB').save(root / 'a_gradient.jpg')
    Image.effect_noise((30, 40), 60).convert('RGB').save(root / 'sub' / 'noise.jpg')
    Image.new('RGBA', (32, 32), (200, 40, 40, 128)).save(root / 'b_alpha.png')
    full = (root / 'a_gradient.jpg').read_bytes()
    (root / 'truncated.jpg').write_bytes(full[:len(full) // 2])
    (root / 'empty.jpg').touch()
    (root / 'text.jpg').write_text('not an image\n')
    Image.new('RGB', (400, 400)).save(root / 'bomb.png')  # a bomb once MAX_IMAGE_PIXELS is lowered
    return root


@pytest.fixture
def bomb_limit(monkeypatch):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100_000)  # above the good images, resized to 341x256


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """A zoo folder (as `sentizoo amalgamate` writes it) of :func:`helpers.tiny_classifier`."""
    save_pretrained(tiny_classifier(), tmp_path / 'tiny', verbose=False)
    return tmp_path / 'tiny'


@pytest.fixture
def one_thread():
    """One torch thread, as in the worker processes: the same kernels and summation order for bit-identical
    comparisons, and no slowdown from oversubscribed cores (these models are far too small to gain from two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_resnet18(monkeypatch):
    """Every timm resnet18 the CLI creates (targets, zoo teachers, saved folders) is the tiny one."""
    create = timm.create_model
    monkeypatch.setattr(timm, 'create_model', lambda name, *args, **kwargs: create(name, *args, **TINY, **kwargs))
