"""Shared test helpers: plain functions, constants and data writers (no pytest fixtures: those are in conftest.py).

Import them by name (``from helpers import make_fi``); tests/ is on ``sys.path`` when pytest runs. Sections:

* the Hugging Face cache layout (:func:`write_hf_cache`);
* the CLI's and the predict tests' model (:data:`MODEL`, :data:`BAD`) and a tiny labelled classifier;
* a checkpoint in ``training.pretrain``'s format (:func:`write_pretrain_checkpoint`);
* the assertion that a study refuses a weakened settings file (:func:`assert_edit_refused`);
* the VSO ontology text of the reader's test (:data:`ANP_LIST`); the tiny on-disk copies of every dataset in its
  exact release format are written by :mod:`training.datasets.miniature` (the release rehearsal uses them too).
"""
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Union

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import sentizoo.engine as engine
from sentizoo.amalgamation import TEACHER_TAGS
from sentizoo.progress import Logger


# ------------------------------------------------------------------------------------ Hugging Face cache

def write_hf_cache(cache_dir: Union[str, Path], repo_id: str, files: Dict[str, Union[str, Path]],
                   revision: str = 'a' * 40) -> Path:
    """Lay ``files`` out exactly as huggingface_hub caches a model repo; returns the snapshot folder.

    models--<org>--<name>/blobs/<sha256>, snapshots/<revision>/<file> -> ../../blobs/<sha256>, refs/main.
    """
    repo = Path(cache_dir) / f'models--{repo_id.replace("/", "--")}'
    snapshot = repo / 'snapshots' / revision
    (repo / 'blobs').mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / 'refs').mkdir(exist_ok=True)
    (repo / 'refs' / 'main').write_text(revision)
    for name, src in files.items():
        blob = repo / 'blobs' / hashlib.sha256(Path(src).read_bytes()).hexdigest()
        shutil.copyfile(src, blob)
        (snapshot / name).symlink_to(Path('..', '..', 'blobs', blob.name))
    return snapshot


# ------------------------------------------------------------------------- models for predict and the CLI

MODEL = 'senti_resnet18.fi'  # the zoo model of conftest's ``weights_dir`` / ``zoo`` fixtures
# the bad files of conftest's ``images`` fixture -> a word of the error each one gives
BAD = {'truncated.jpg': 'truncated', 'empty.jpg': 'empty', 'text.jpg': 'not an image', 'bomb.png': 'decompression bomb'}

TINY_LABELS = ['calm', 'happy', 'sad', 'tense']
TINY_SIZE = 64


def tiny_classifier(seed: int = 0) -> torch.nn.Module:
    """resnet18 with 4 labelled classes (:data:`TINY_LABELS`) at 64 px, random (seeded) weights."""
    torch.manual_seed(seed)
    model = timm.create_model('resnet18', num_classes=len(TINY_LABELS))
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, TINY_SIZE, TINY_SIZE), label_names=TINY_LABELS)
    return model.eval()


# --------------------------------------------------------------------------- a pre-training checkpoint

PRETRAIN_CONFIG = {'model': 'st', 'arch': 'resnet18', 'dataset': 'synthetic', 'lr': 0.0137, 'momentum': 0.87,
                   'weight_decay': 3e-5, 'lr_gamma': 0.3, 'lr_step': 5, 'epochs': 3, 'batch_size': 6,
                   'image_size': 48, 'seed': 4242}


def write_pretrain_checkpoint(path: Path, kind: str = 'st') -> dict:
    """A checkpoint in training.pretrain's format: backbone under 'backbone.', plus pretext-head tensors.
    Returns the backbone's state dict."""
    from sentizoo import checkpoint

    torch.manual_seed(0)
    backbone = timm.create_model('resnet18', num_classes=0)
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state['head.conv.weight'] = torch.randn(2, 512, 3, 3)
    history = {'best_epoch': None, 'epochs': [{'epoch': 3, 'lr': 0.0137, 'train': {'loss': 0.91827, kind: 0.5511}}]}
    checkpoint.save({'trainer': 'training.pretrain', 'model': state, 'config': dict(PRETRAIN_CONFIG, model=kind),
                     'history': json.dumps(history), 'epoch': 3, 'step': 0, 'global_step': 51, 'world_size': 1,
                     'init': 'random', 'precision': 'fp32',
                     'command': f'python -m training.pretrain --model {kind} --seed 4242'}, path)
    return backbone.state_dict()


# ------------------------------------------------ the tiny training runs (engine, CLI, sampling, ...)

# Runs tiny trainings in a fresh interpreter: python -c WORKER '<json kwargs of train_tiny, or a list of them>'.
WORKER = ('import sys; sys.path.insert(0, {tests!r}); import torch; torch.set_num_threads(1); '
          'from helpers import run_worker; run_worker(sys.argv[1])').format(tests=str(Path(__file__).resolve().parent))


TINY = dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64))
"""timm resnet18 cut to one block per stage and 8-64 channels (64-channel stem): a run takes about a second on a CPU."""


def tiny(num_classes: int = 3, group_norm: bool = False) -> torch.nn.Module:
    kwargs = dict(norm_layer=lambda c, **kw: torch.nn.GroupNorm(4, c, **kw)) if group_norm else {}
    return timm.create_model('resnet18', num_classes=num_classes, **TINY, **kwargs)


CROSS_ARCH = 'test_vit'
"""A target of another architecture than :func:`tiny`'s teachers: timm's 6-block ViT (64 channels, LayerNorm) at
32 px, whose 2x2 taps need an adapter at every stage (channels 16/32 vs 64; maps 4x4/1x1 vs 2x2)."""


def tiny_target(arch: str = 'resnet18', group_norm: bool = False) -> torch.nn.Module:
    """:func:`tiny` or, for :data:`CROSS_ARCH`, that ViT with 3 classes."""
    return timm.create_model(arch, num_classes=3, img_size=32) if arch == CROSS_ARCH else tiny(group_norm=group_norm)


class Noisy(Dataset):
    """Fixed 32 px images plus random noise drawn per access (a random augmentation), SLL or MLL targets."""

    def __init__(self, n: int = 12, num_classes: int = 3, task: str = 'sll', delay: float = 0.0, nan_index=None):
        self.images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        labels = torch.arange(n) % num_classes
        self.targets = labels if task == 'sll' else torch.nn.functional.one_hot(labels, num_classes).float()
        self.delay, self.nan_index = delay, nan_index

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        time.sleep(self.delay)
        image = self.images[i] + 0.1 * torch.randn(3, 32, 32)
        return (image * float('nan') if i == self.nan_index else image), self.targets[i]


def train_tiny(checkpoint_dir=None, epochs=2, batch_size=4, group_norm=False, delay=0.0, validate=False,
               target='resnet18', **options):
    """amalgamate a tiny target (``target``: :func:`tiny_target`) with tiny teachers on Noisy(12); the same weights
    for the same arguments. ``validate``: select on the noise-free images."""
    torch.manual_seed(0)
    target = tiny_target(target, group_norm)
    teachers = {tag: tiny(0, group_norm) for tag in TEACHER_TAGS}
    data = Noisy(delay=delay)
    val = DataLoader(torch.utils.data.TensorDataset(data.images, data.targets), batch_size=batch_size)
    return engine.amalgamate(target, DataLoader(data, batch_size=batch_size, shuffle=True), teachers=teachers,
                             val_loader=val if validate else None, epochs=epochs, checkpoint_dir=checkpoint_dir,
                             progress=False, **options)


def run_worker(runs: str) -> None:
    """:data:`WORKER`'s body: ``train_tiny`` for each of the JSON kwargs, in one process group under torchrun."""
    from sentizoo.runtime import process_group
    runs = json.loads(runs)
    with process_group(torch.device('cpu')):
        for kwargs in runs if isinstance(runs, list) else [runs]:
            train_tiny(**kwargs)


def state(path: Path) -> dict:
    return torch.load(path / engine.CHECKPOINT_NAME, weights_only=True)


def worker(args: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', WORKER, json.dumps(args)], stderr=subprocess.PIPE, text=True)



def write_images(root: Path, classes=('calm', 'joy', 'rage'), per_class: int = 4) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((40, 48, 3)) * 80 + 80 * c).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f'{i}.jpg')


def write_ldl_csv(root: Path) -> Path:
    """An LDL CSV over :func:`write_images`'s non-square (48x40) images: continuous metrics show any change
    in preprocessing."""
    write_images(root / 'images')
    rng = np.random.default_rng(1)
    with open(root / 'labels.csv', 'w', newline='') as f:
        rows = csv.writer(f)
        rows.writerow(['path', 'calm', 'joy', 'rage'])
        for name in ('calm', 'joy', 'rage'):
            for i in range(4):
                votes = rng.integers(1, 10, 3)
                rows.writerow([f'images/{name}/{i}.jpg', *(votes / votes.sum()).tolist()])
    return root / 'labels.csv'


class Recorder(Logger):
    def __init__(self):
        self.started, self.rows, self.records, self.closed = None, [], [], False

    def start(self, global_step, steps_per_epoch):
        self.started = (global_step, steps_per_epoch)

    def log_step(self, row):
        self.rows.append(dict(row))

    def log_epoch(self, record, history):
        self.records.append(dict(record))

    def close(self):
        self.closed = True


# ----------------------------------------------------------------------------- settings files of the studies

def assert_edit_refused(tmp_path: Path, source: Path, edit, load, error: type, problem: str) -> None:
    """The JSON settings file ``source``, changed by ``edit`` (a function of its dict) and written under
    ``tmp_path``, is refused by ``load(path)`` with ``error``, whose message matches ``problem`` and names the file."""
    settings = json.loads(Path(source).read_text())
    edit(settings)
    path = Path(tmp_path) / 'weak.json'
    path.write_text(json.dumps(settings))
    with pytest.raises(error, match=problem) as e:
        load(path)
    assert str(path) in str(e.value)


# ------------------------------------------------------------------ dataset files (the writers: miniature.py)

ANP_LIST = """Visual Sentiment Ontology - 3244 ANPs
sorted by sentiment
====================
\tfrail_hand [sentiment: -1.44] [#imgs: 358]
\tbeautiful_flowers [sentiment: 1.76] [#imgs: 12,345]
ANPs with noun hand: 1
\tabandoned_asylum [sentiment: -0.95] [#imgs: 1,020]
\tangry_cat [sentiment: -1.2] [#imgs: 7]
"""
