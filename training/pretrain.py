"""Sentiment-oriented pre-training of the ST, HO and HP perception models (Feng et al., CVPR 2023).

    python -m training.pretrain --model hp --arch resnet50 --data-root /data/hp
    torchrun --nproc_per_node 2 -m training.pretrain --model ho --arch resnet50 --data-root /data/places365
    python -m training.pretrain --model st --arch resnet18 --dataset synthetic --image-size 64 --epochs 1

Each model trains two pretext tasks jointly (ST: colorization + super-resolution on Places365; HO:
scene recognition + jigsaw on Places365; HP: ANP classification on VSO + affective captioning on
ArtEmis). The two losses are summed every step; each task reads its own loader and the shorter one
is cycled, never paired by index. Defaults are the paper's: SGD lr 0.01, momentum 0.9, weight decay
1e-4; HO/HP 30 epochs with lr /10 every 10, ST 12 epochs with lr /10 every 4; the backbone starts
from torchvision's ImageNet weights (through timm).

Outputs in ``--out-dir``: ``last.pt`` (every epoch, and every ``--save-every`` steps; resume with
``--resume``), ``final.pt`` (the weights, config and history; export it with ``python -m
training.export``), ``log.csv`` (per step), ``history.json`` (per epoch) and ``loss.png``.

Programmatic use::

    from training.pretrain import PretrainConfig, pretrain
    final = pretrain(PretrainConfig(model='st', arch='resnet18', dataset='synthetic', image_size=64,
                                    epochs=1, steps_per_epoch=20, batch_size=8, out_dir='runs/st'))
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import random
import shlex
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from sentizoo.engine import (EpochSampler, NonFiniteLossError, SeededSamples, line_every, process_group,
                             progress_line, progress_mode, rank_world, resolve_device, sgd)
from sentizoo.models import ARCHS

from .checkpoint import load_checkpoint, read_state_dict, rng_state, save_checkpoint, set_rng_state

__all__ = ['PretrainConfig', 'pretrain', 'parse_args', 'main', 'CHECKPOINT_FORMAT', 'MODELS', 'DATASETS']

_logger = logging.getLogger('training.pretrain')

CHECKPOINT_FORMAT = 'sentizoo.pretrain/1'
MODELS = ('st', 'ho', 'hp')
DATASETS = {'st': ('places365', 'synthetic'), 'ho': ('places365', 'synthetic'), 'hp': ('vso+artemis', 'synthetic')}
HELDOUT_SPLITS = {'synthetic': 'test', 'places365': 'val', 'vso': 'test', 'artemis': 'val'}
"""The split of each pre-training dataset that pre-training never reads: where the pretext tasks are measured."""
# The paper's schedule per model: (epochs, lr step size in epochs, batch size per process).
SCHEDULES = {'st': (12, 4, 8), 'ho': (30, 10, 32), 'hp': (30, 10, 32)}
_DATA_LAYOUT = {
    'places365': 'a Places365-Standard folder: categories_places365.txt + places365_train_standard.txt + '
                 'data_256/ (official devkit layout) or places365_standard/{train.txt,train/<class>/} (easy format)',
    'vso+artemis': 'a folder holding vso/ (VSO ANP folders <adj>_<noun>/*.jpg, or anp/{train,test}/) and '
                   'artemis/ (wikiart/<style>/<painting>.jpg + the ArtEmis CSV)',
}


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    return dataclasses.field(default=default, metadata=dict(help=help, **kwargs))


@dataclasses.dataclass
class PretrainConfig:
    """Every option of a pre-training run; ``None`` means "the paper's value for this model"."""
    model: str = _opt(None, 'perception model to pre-train: st (colorization + super-resolution), '
                            'ho (scene + jigsaw) or hp (ANP + captioning)', choices=MODELS, required=True)
    arch: str = _opt('resnet50', 'backbone (timm architecture)', choices=ARCHS)
    dataset: Optional[str] = _opt(None, 'places365 (ST, HO), vso+artemis (HP) or synthetic (any model, no '
                                        'download); default: the paper\'s dataset of the model')
    data_root: Optional[str] = _opt(None, 'dataset folder: ' + '; '.join(f'{k}: {v}' for k, v in _DATA_LAYOUT.items()))
    image_size: int = _opt(224, 'training crop size; images are first resized to size*256/224 (paper: 256 -> 224)')
    epochs: Optional[int] = _opt(None, 'epochs (paper: ST 12, HO/HP 30)')
    steps_per_epoch: Optional[int] = _opt(None, 'steps per epoch (default: one pass over the larger task loader)')
    batch_size: Optional[int] = _opt(None, 'batch size per process and task (paper: ST 8, HO/HP 32 per GPU)')
    lr: float = _opt(0.01, 'SGD learning rate')
    momentum: float = _opt(0.9, 'SGD momentum')
    weight_decay: float = _opt(1e-4, 'SGD weight decay')
    lr_step: Optional[int] = _opt(None, 'multiply the lr by --lr-gamma every this many epochs (paper: ST 4, HO/HP 10)')
    lr_gamma: float = _opt(0.1, 'lr decay factor of the step schedule')
    init: str = _opt('imagenet', "backbone initialisation: 'imagenet' (torchvision's ImageNet weights, "
                                 "timm/<arch>.tv_in1k on the Hugging Face hub, fetched once), 'random' (warned), "
                                 "or a file (.safetensors, or .pth/.pt state dict in torchvision or timm layout)")
    seed: int = _opt(0, 'seed of initialisation, shuffling, augmentation and pretext randomness')
    workers: int = _opt(4, 'data-loading worker processes per task loader (0: load in the main process)')
    amp: str = _opt('auto', 'mixed precision: auto (bf16 on CUDA, off on CPU), bf16, off',
                    choices=('auto', 'bf16', 'off'))
    channels_last: Optional[bool] = _opt(None, 'channels_last memory format (default: on for CUDA)')
    device: Optional[str] = _opt(None, 'cpu, cuda, cuda:1, ... (default: this rank\'s GPU if any, else CPU)')
    out_dir: Optional[str] = _opt(None, 'output folder (default: runs/pretrain/<model>_<arch>)')
    resume: Optional[str] = _opt(None, "checkpoint to resume from exactly, or 'auto' for <out-dir>/last.pt if present")
    save_every: int = _opt(0, 'also checkpoint every N steps (0: only at the end of each epoch)')
    keep_epochs: bool = _opt(False, 'keep a copy of every epoch checkpoint (epoch_NNN.pt) besides last.pt')
    log_every: int = _opt(1, 'write a log.csv row (and refresh the progress bar) every N steps')
    max_samples: Optional[int] = _opt(None, 'use at most this many samples of each task dataset (quick runs)')
    progress: bool = _opt(True, 'show a progress bar (rank 0)')

    def resolved(self) -> 'PretrainConfig':
        """A copy with the model-dependent defaults filled in and every option checked (fails fast)."""
        c = dataclasses.replace(self)
        if c.model not in MODELS:
            raise ValueError(f'--model must be one of {MODELS}, got {c.model!r}')
        if c.arch not in ARCHS:
            raise ValueError(f'--arch {c.arch!r} is not supported; sentizoo pre-trains {", ".join(ARCHS)}')
        epochs, step, batch = SCHEDULES[c.model]
        c.dataset = c.dataset or DATASETS[c.model][0]
        c.epochs = epochs if c.epochs is None else c.epochs
        c.lr_step = step if c.lr_step is None else c.lr_step
        c.batch_size = batch if c.batch_size is None else c.batch_size
        c.out_dir = c.out_dir or f'runs/pretrain/{c.model}_{c.arch}'
        if c.dataset not in DATASETS[c.model]:
            raise ValueError(f'--dataset {c.dataset!r} does not feed the {c.model.upper()} tasks; '
                             f'use one of {DATASETS[c.model]}')
        for name in ('epochs', 'batch_size', 'lr_step', 'image_size', 'log_every'):
            if getattr(c, name) < 1:
                raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(c, name)}')
        for name in ('steps_per_epoch', 'max_samples'):
            if getattr(c, name) is not None and getattr(c, name) < 1:
                raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(c, name)}')
        if c.save_every < 0 or c.workers < 0:
            raise ValueError('--save-every and --workers must be >= 0')
        if not (c.lr > 0 and 0 <= c.momentum < 1 and c.weight_decay >= 0 and 0 < c.lr_gamma <= 1):
            raise ValueError(f'need lr > 0, 0 <= momentum < 1, weight_decay >= 0, 0 < lr_gamma <= 1; got lr={c.lr}, '
                             f'momentum={c.momentum}, weight_decay={c.weight_decay}, lr_gamma={c.lr_gamma}')
        if c.dataset != 'synthetic':
            if not c.data_root:
                raise ValueError(f'--data-root is required for --dataset {c.dataset}: {_DATA_LAYOUT[c.dataset]} '
                                 f'(or pass --dataset synthetic to run without data)')
            if not Path(c.data_root).is_dir():
                raise FileNotFoundError(f'--data-root {c.data_root} is not a folder; '
                                        f'expected {_DATA_LAYOUT[c.dataset]}')
        if c.init not in ('imagenet', 'random') and not Path(c.init).is_file():
            raise FileNotFoundError(f"--init {c.init}: no such file; pass a weight file, 'imagenet' or 'random'")
        if c.resume not in (None, 'auto') and not Path(c.resume).is_file():
            raise FileNotFoundError(f'--resume {c.resume}: no such checkpoint')
        return c

    def command(self) -> str:
        """The ``python -m training.pretrain`` command line that reproduces this run."""
        args = ['python', '-m', 'training.pretrain']
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ('resume', 'progress', 'device') or value is None or value == f.default:
                continue
            flag = '--' + f.name.replace('_', '-')
            if isinstance(value, bool):
                args.append(flag if value else f'--no-{f.name.replace("_", "-")}')
            else:
                args += [flag, str(value)]
        return shlex.join(args)


# ----------------------------------------------------------------------------------------------- data

class TaskStream:
    """An endless stream of batches for one task: passes over its dataset one after another.

    The position (pass number, batches consumed) is the whole state, so :meth:`state_dict` /
    :meth:`load_state_dict` resume the stream at the exact next batch.
    """

    def __init__(self, name: str, dataset: Dataset, batch_size: int, *, seed: int, workers: int,
                 collate_fn=None, pin_memory: bool = False):
        self.name = name
        # the library's reproducible sampling: DistributedSampler order by (seed, pass), each sample drawn
        # with the generators seeded from (seed, pass, index), whatever worker or rank loads it
        self.dataset = SeededSamples(dataset, seed)
        self.sampler = EpochSampler(len(dataset), batch_size, True, seed, *rank_world())
        per_process = len(self.sampler.shard)
        self.batches_per_pass = per_process // batch_size
        if self.batches_per_pass == 0:
            raise ValueError(f'task {name}: {len(dataset)} samples give {per_process} per process, fewer '
                             f'than --batch-size {batch_size}; lower the batch size or add data')
        self.batch_size, self.workers, self.collate_fn, self.pin_memory = batch_size, workers, collate_fn, pin_memory
        self.epoch, self.position = 0, 0
        self._iterator: Optional[Iterator] = None

    def _start_pass(self) -> None:
        self.sampler.start(self.epoch, self.position)
        # a private generator: creating the iterator draws a seed, which must not move the global stream
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler, drop_last=True,
                            num_workers=self.workers, collate_fn=self.collate_fn, pin_memory=self.pin_memory,
                            generator=torch.Generator().manual_seed(self.epoch))
        self._iterator = iter(loader)

    def next(self) -> Any:
        if self.position >= self.batches_per_pass:
            self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self._start_pass()
        self.position += 1
        return next(self._iterator)

    def state_dict(self) -> Dict[str, int]:
        return {'epoch': self.epoch, 'position': self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.position, self._iterator = int(state['epoch']), int(state['position']), None


def _subset(dataset: Dataset, max_samples: Optional[int], seed: int) -> Dataset:
    """A seeded random subset (lists are sorted by class, so the first N would be one class)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    keep = np.sort(np.random.RandomState(seed).choice(len(dataset), max_samples, replace=False))
    return Subset(dataset, keep.tolist())


def build_datasets(config: PretrainConfig, heldout: bool = False) -> List[Tuple[str, Dataset]]:
    """The two ``(task, dataset)`` of the model, in ``training_step`` order, with the paper's augmentation.

    Resize to ``floor(image_size * 256 / 224)`` (:func:`sentizoo.datasets.resize_size`, the rule of every
    downstream path), random crop ``image_size``, horizontal flip; images stay RGB in
    [0, 1]: the tasks normalise them, and make their Lab / low-resolution / tile inputs, on the device.
    ``heldout=True`` gives images never trained on (:data:`HELDOUT_SPLITS`), centre-cropped, for
    measuring the pretext tasks (:mod:`training.pretext_eval`). A missing or malformed dataset file
    raises here, before anything trains.
    """
    from sentizoo.datasets import paper_data_config, resize_size

    from .datasets.common import pretrain_transform
    c = config
    resize = resize_size(paper_data_config(c.image_size))
    transform = pretrain_transform(resize, c.image_size, normalize=False, train=not heldout)
    split = {name: HELDOUT_SPLITS[name] if heldout else 'train' for name in HELDOUT_SPLITS}
    if c.dataset == 'synthetic':
        from .datasets import synthetic as syn
        kw = dict(n=c.max_samples or 1024, split=split['synthetic'], transform=transform, seed=c.seed, size=resize)
        pairs = {'st': (('colorization', syn.SyntheticImages(**kw)), ('super_resolution', syn.SyntheticImages(**kw))),
                 'ho': (('scene', syn.SyntheticScenes(**kw)), ('jigsaw', syn.SyntheticImages(**kw))),
                 'hp': (('anp', syn.SyntheticANP(**kw)), ('captioning', syn.SyntheticCaptions(**kw)))}
        return list(pairs[c.model])
    root = Path(c.data_root)
    if c.dataset == 'places365':
        from .datasets.places365 import Places365
        places = _subset(Places365(root, split['places365'], transform=transform), c.max_samples, c.seed)
        names = ('colorization', 'super_resolution') if c.model == 'st' else ('scene', 'jigsaw')
        return [(name, places) for name in names]
    from .datasets.artemis import ArtEmis
    from .datasets.vso import VSO
    return [('anp', _subset(VSO(root / 'vso', split['vso'], transform=transform), c.max_samples, c.seed)),
            ('captioning', _subset(ArtEmis(root / 'artemis', split['artemis'], transform=transform), c.max_samples,
                                   c.seed))]


def _unwrap(dataset: Dataset) -> Dataset:
    """The dataset itself, or the one a ``--max-samples`` :class:`Subset` draws from."""
    return dataset.dataset if isinstance(dataset, Subset) else dataset


def build_model_and_data(config: PretrainConfig) -> Tuple[nn.Module, List[Tuple[str, Dataset, Any]], Dict[str, Any]]:
    """The perception model (random backbone), its ``(task, dataset, collate_fn)`` pairs in step order,
    and the data facts recorded in the checkpoint (dataset, sample count, class list, vocabulary)."""
    from .perception import build_perception_model
    tasks = build_datasets(config)
    data = dict(tasks)
    facts: Dict[str, Dict[str, Any]] = {name: {'dataset': config.dataset, 'samples': len(d)} for name, d in tasks}
    options: Dict[str, Dict[str, Any]] = {}
    for name in ('scene', 'anp'):
        if name in data:
            classes = _unwrap(data[name]).classes
            options[name] = {'classes': classes}
            facts[name]['classes'] = list(classes)
    if 'jigsaw' in data:  # the paper's 64 px tiles of a 192 px image at a 224 crop, scaled with the crop
        options['jigsaw'] = {'tile': max(1, config.image_size * 64 // 224)}
    if 'captioning' in data:
        from .pretext.captioning import Vocabulary
        vocab = Vocabulary.build(_unwrap(data['captioning']).utterances)
        options['captioning'] = {'vocab': vocab}
        facts['captioning']['vocabulary'] = vocab.state_dict()
    model = build_perception_model(config.model, config.arch, **options)
    return model, [(name, d, collate) for (name, d), collate in zip(tasks, model.collate_fns)], facts


# -------------------------------------------------------------------------------------- initialisation

def init_backbone(backbone: nn.Module, arch: str, init: str) -> str:
    """Load the ImageNet initialisation into ``backbone`` (a timm model, ``num_classes=0``).

    Returns a short description of where the weights came from, for the log and the model card.
    Accepts timm and torchvision key layouts (VGG: torchvision ``classifier.*`` keys go through
    timm's VGG checkpoint filter). Classifier weights are dropped; any other missing or unexpected
    key is an error, because the file belongs to another architecture.
    """
    if init == 'random':
        warnings.warn(f'pre-training {arch} from a random initialisation: the paper starts every backbone from '
                      f'ImageNet weights (--init imagenet, or --init FILE)', stacklevel=2)
        return 'random'
    if init == 'imagenet':
        from huggingface_hub import hf_hub_download
        from sentizoo.models import imagenet_name
        from sentizoo.weights import hf_offline  # the library's reading of HF_HUB_OFFLINE
        repo = f'timm/{imagenet_name(arch)}'
        try:
            state = read_state_dict(hf_hub_download(repo, 'model.safetensors', local_files_only=hf_offline()))
        except Exception as e:  # offline and not cached, no network, hub error: say what to do instead
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RuntimeError(f'could not load the ImageNet weights {repo} from the Hugging Face hub or cache '
                               f'({reason}); fetch them once with network access (HF_HUB_OFFLINE unset), or pass '
                               f'--init FILE (torchvision/timm state dict or .safetensors) or --init random') from e
        source = f'ImageNet (torchvision weights, {repo})'
    else:
        path = Path(init)
        state = read_state_dict(path)
        source = f'ImageNet file {path.name}'
    if arch.startswith('vgg') and any(k.startswith('classifier.') for k in state):
        import timm.models.vgg as timm_vgg  # torchvision VGG layout -> timm's (classifier.N -> pre_logits / head)
        state = (getattr(timm_vgg, 'checkpoint_filter_fn', None) or timm_vgg._filter_fn)(state)
    from .perception import load_backbone
    load_backbone(backbone, state)  # drops the classifier; any other mismatch is an error
    return source


# --------------------------------------------------------------------------------------------- logging

class RunLog:
    """``log.csv`` (one row per logged step), ``history.json`` (per epoch) and ``loss.png`` in ``folder``.

    On resume the CSV is cut back to the checkpoint's step, so rows of steps that are trained again
    are not duplicated. Only rank 0 writes.
    """

    def __init__(self, folder: Path, enabled: bool, resume_step: Optional[int] = None):
        self.csv_path, self.json_path, self.plot_path = folder / 'log.csv', folder / 'history.json', folder / 'loss.png'
        self.enabled = enabled
        self.fields: Optional[List[str]] = None
        if not enabled:
            return
        rows = []
        if resume_step is not None and self.csv_path.is_file():
            with open(self.csv_path, newline='') as f:
                rows = [r for r in csv.DictReader(f) if int(r['step']) <= resume_step]
        self.csv_path.unlink(missing_ok=True)
        self._write_rows(rows, 'w')

    def _write_rows(self, rows: Sequence[Mapping[str, Any]], mode: str) -> None:
        if not rows:
            return
        self.fields = self.fields or list(rows[0])
        with open(self.csv_path, mode, newline='') as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            if mode == 'w':
                writer.writeheader()
            writer.writerows(rows)

    def step(self, row: Mapping[str, Any]) -> None:
        if self.enabled:
            self._write_rows([row], 'a' if self.fields is not None else 'w')

    def epoch(self, history: Sequence[Mapping[str, Any]]) -> None:
        if not self.enabled:
            return
        self.json_path.write_text(json.dumps(list(history), indent=2) + '\n')
        self.plot()

    def plot(self) -> None:
        """Every loss term against the step, on a log scale when all values are positive."""
        import matplotlib  # training-only dependency, imported when first needed
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        with open(self.csv_path, newline='') as f:
            rows = list(csv.DictReader(f))
        terms = [k for k in rows[0] if k not in ('step', 'epoch', 'lr', 'time')]
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [int(r['step']) for r in rows]
        for term in terms:
            ax.plot(steps, [float(r[term]) for r in rows], lw=1.5 if term == 'loss' else 1, label=term)
        if all(float(r[t]) > 0 for r in rows for t in terms):
            ax.set_yscale('log')
        ax.set(xlabel='step', ylabel='training loss', title='pre-training loss per step')
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=100)
        plt.close(fig)


# ------------------------------------------------------------------------------------------- training

def _to_device(batch: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device, channels_last) for k, v in batch.items()}
    return batch


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _versions() -> Dict[str, str]:
    import timm
    import sentizoo
    return {'sentizoo': str(sentizoo.__version__), 'torch': str(torch.__version__), 'timm': str(timm.__version__)}


def _check_resumable(ckpt: Mapping[str, Any], config: PretrainConfig, path: Path) -> None:
    if ckpt.get('format') != CHECKPOINT_FORMAT or 'optimizer' not in ckpt:
        raise ValueError(f'{path} is not a resumable training.pretrain checkpoint (use last.pt or epoch_NNN.pt)')
    saved = ckpt['config']
    keys = ('model', 'arch', 'dataset', 'image_size', 'batch_size', 'seed', 'max_samples')
    changed = {k: (saved.get(k), getattr(config, k)) for k in keys if saved.get(k) != getattr(config, k)}
    if changed:
        raise ValueError(f'--resume {path}: the run was made with different settings ' +
                         ', '.join(f'{k}: checkpoint {a!r}, now {b!r}' for k, (a, b) in changed.items()))
    if ckpt['world_size'] != rank_world()[1]:
        raise ValueError(f'--resume {path}: saved by {ckpt["world_size"]} processes, resumed with '
                         f'{rank_world()[1]}; resume with the same number for an exact continuation')


def pretrain(config: Union[PretrainConfig, argparse.Namespace, Mapping[str, Any], Sequence[str]]) -> Path:
    """Pre-train one perception model; returns the path of the final checkpoint (``<out_dir>/final.pt``).

    ``config`` is a :class:`PretrainConfig`, the argparse namespace of :func:`parse_args`, a mapping of
    its fields, or a list of command-line arguments. Every option is checked before anything runs.
    Under ``torchrun`` the process group is created here (and destroyed at the end) unless the caller
    already made one.
    """
    if isinstance(config, argparse.Namespace):
        config = PretrainConfig(**vars(config))
    elif isinstance(config, Mapping):
        config = PretrainConfig(**config)
    elif not isinstance(config, PretrainConfig):
        config = PretrainConfig(**vars(parse_args(list(config))))
    config = config.resolved()
    device = resolve_device(config.device)  # this rank's GPU (LOCAL_RANK) if any, else the CPU
    with process_group(device):
        return _train(config, device)


def _all_gather(obj: Any) -> List[Any]:
    """``obj`` of every rank, in rank order (a one-element list in a single process)."""
    world = rank_world()[1]
    if world == 1:
        return [obj]
    out: List[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def _train(config: PretrainConfig, device: torch.device) -> Path:
    from tqdm.auto import tqdm

    rank, world = rank_world()
    main_process = rank == 0
    out = Path(config.out_dir)
    last_path, final_path = out / 'last.pt', out / 'final.pt'
    resume = last_path if config.resume == 'auto' and last_path.is_file() else (
        Path(config.resume) if config.resume not in (None, 'auto') else None)
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None:
        _check_resumable(ckpt, config, resume)

    _seed_everything(config.seed)  # the same initialisation on every rank
    model, tasks, data_facts = build_model_and_data(config)
    init = ckpt['init'] if ckpt is not None else init_backbone(model.backbone, config.arch, config.init)
    channels_last = device.type == 'cuda' if config.channels_last is None else config.channels_last
    amp = config.amp == 'bf16' or (config.amp == 'auto' and device.type == 'cuda')
    precision = 'bf16 autocast' if amp else 'fp32'
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = sgd(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    streams = [TaskStream(name, dataset, config.batch_size, seed=config.seed + 7919 * k, workers=config.workers,
                          collate_fn=collate, pin_memory=device.type == 'cuda')
               for k, (name, dataset, collate) in enumerate(tasks)]
    steps_per_epoch = config.steps_per_epoch or max(s.batches_per_pass for s in streams)

    epoch, step_in_epoch, step, history, sums = 0, 0, 0, [], {}
    if ckpt is not None:
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        scheduler.load_state_dict(ckpt['scheduler'])
        for stream, state in zip(streams, ckpt['streams']):
            stream.load_state_dict(state)
        epoch, step_in_epoch, step, history = ckpt['epoch'], ckpt['step_in_epoch'], ckpt['step'], ckpt['history']
        sums = dict(ckpt['epoch_sums'])
        set_rng_state(ckpt['rng'][rank])
    else:
        torch.manual_seed(config.seed + rank)  # per-rank stream for in-step randomness (dropout, permutations)
    step_module: nn.Module = model  # forward(*batches) is the training step, so DDP syncs all of it
    if world > 1:
        # the ST tasks tap VGG's conv stages only: its pre-logits (fc6/fc7) get no gradient there
        step_module = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None,
            find_unused_parameters=config.model == 'st' and config.arch.startswith('vgg'))

    if main_process:  # only now: a bad dataset or initialisation has failed without leaving a folder behind
        out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out, main_process, resume_step=step if ckpt is not None else None)
    facts = {'format': CHECKPOINT_FORMAT, 'config': dataclasses.asdict(config), 'command': config.command(),
             'init': init, 'precision': precision, 'world_size': world, 'data': data_facts,
             'tasks': [s.name for s in streams], 'versions': _versions()}

    def save(path: Path, full: bool = True) -> None:
        # collective (every rank calls save with the same ``full``); only a resumable checkpoint needs it
        rng = _all_gather(rng_state()) if full else None
        if not main_process:
            return
        state = dict(facts, model=model.state_dict(), epoch=epoch, step=step, step_in_epoch=step_in_epoch,
                     history=history)
        if full:
            state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng,
                         streams=[s.state_dict() for s in streams],
                         epoch_sums=dict(sums))
        save_checkpoint(state, path)

    if main_process:
        _logger.info('pre-training %s/%s on %s: %d epochs x %d steps, batch %d x %d process(es), %s, init: %s',
                     config.model.upper(), config.arch, config.dataset, config.epochs, steps_per_epoch,
                     config.batch_size, world, precision, init)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    while epoch < config.epochs:
        model.train()
        mode = progress_mode(main_process and config.progress)  # a bar on a terminal, plain lines in a pipe
        desc = f'{config.model.upper()} epoch {epoch + 1}/{config.epochs}'
        bar = tqdm(total=steps_per_epoch, initial=step_in_epoch, disable=mode != 'bar', desc=desc, dynamic_ncols=True)
        started = time.perf_counter()
        while step_in_epoch < steps_per_epoch:
            batches = [_to_device(s.next(), device, channels_last) for s in streams]
            with autocast:
                loss, terms = step_module(*batches)
            values = torch.stack([loss.detach().float()] + [v.detach().float() for v in terms.values()])
            if world > 1:  # every rank sees the same values, so that all stop together (no hung collective)
                torch.distributed.all_reduce(values)
                values /= world
            values = dict(zip(['loss', *terms], values.tolist()))  # the step's one host sync
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            if bad:
                raise NonFiniteLossError(f'non-finite {", ".join(bad)} at step {step + 1} (epoch {epoch + 1}); '
                                         f'the last good checkpoint is {last_path}')
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step, step_in_epoch = step + 1, step_in_epoch + 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % config.log_every == 0 or step_in_epoch == steps_per_epoch:
                log.step({'step': step, 'epoch': epoch + 1, 'lr': optimizer.param_groups[0]['lr'], **values,
                          'time': round(time.perf_counter() - started, 3)})
                bar.set_postfix({k: f'{v:.4g}' for k, v in values.items()}, refresh=False)
            bar.update()
            if mode == 'lines' and (step_in_epoch % line_every(steps_per_epoch) == 0
                                    or step_in_epoch == steps_per_epoch):
                progress_line(f'{desc}  step {step_in_epoch}/{steps_per_epoch}  '
                              + ' '.join(f'{k} {v:.4g}' for k, v in values.items()))
            if config.save_every and step % config.save_every == 0 and step_in_epoch < steps_per_epoch:
                save(last_path)
        bar.close()
        history.append({'epoch': epoch + 1, 'lr': optimizer.param_groups[0]['lr'], 'steps': steps_per_epoch,
                        **{k: v / steps_per_epoch for k, v in sums.items()}})
        scheduler.step()
        epoch, step_in_epoch, sums = epoch + 1, 0, {}
        save(last_path)
        if config.keep_epochs:
            save(out / f'epoch_{epoch:03d}.pt')
        log.epoch(history)
    save(final_path, full=False)
    if main_process:
        _logger.info('final checkpoint: %s (export: python -m training.export --checkpoint %s --tag %s)',
                     final_path, final_path, config.model)
    return final_path


# ------------------------------------------------------------------------------------------------- CLI

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line of ``python -m training.pretrain`` (one option per :class:`PretrainConfig` field)."""
    p = argparse.ArgumentParser(prog='python -m training.pretrain', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(PretrainConfig):
        meta, flag = dict(f.metadata), '--' + f.name.replace('_', '-')
        if f.type in ('bool', 'Optional[bool]'):
            p.add_argument(flag, default=f.default, help=meta['help'], action=argparse.BooleanOptionalAction)
            continue
        kind = {'int': int, 'float': float}.get(f.type.removeprefix('Optional[').removesuffix(']'), str)
        p.add_argument(flag, type=kind, default=f.default, **meta)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    try:
        config = PretrainConfig(**vars(parse_args(argv))).resolved()
    except (ValueError, FileNotFoundError) as e:  # a bad configuration: one line, before anything runs
        print(f'python -m training.pretrain: error: {e}', file=sys.stderr)
        return 2
    final = pretrain(config)
    if rank_world()[0] == 0:
        print(final)
    return 0


if __name__ == '__main__':
    sys.exit(main())
