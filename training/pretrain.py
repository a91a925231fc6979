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

``--arch``: the paper's ResNets and VGGs (their official stages), or any timm architecture with four
``feature_info`` reductions (``convnext_atto``, ``efficientnet_b0``; not a plain ViT), the heads sized from it;
its export ``senti_<arch>.<tag>`` loads with ``sentizoo.amalgamation.load_teachers('<arch>', num_classes)``.

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
import dataclasses
import logging
import random
import shlex
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from sentizoo.checkpoint import CHECKPOINT_NAME, load as load_checkpoint, read_state_dict
from sentizoo.cli.arguments import add_dataclass_arguments
from sentizoo.engine import Loop
from sentizoo.models import ARCHS, BACKBONE_TAGS
from sentizoo.options import TrainOptions, option_problems
from sentizoo.runtime import autocast, process_group, rank_world, resolve_device

from .perception import check_arch
from .provenance import versions
from .run_log import RunLog

__all__ = ['PretrainConfig', 'pretrain', 'parse_args', 'main', 'MODELS', 'DATASETS']

_logger = logging.getLogger('training.pretrain')

MODELS = BACKBONE_TAGS  # --model choices: ST, HO, HP
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
_TRAIN = TrainOptions()  # the defaults pre-training shares with every training run: options.py's, never repeated
# PretrainConfig field -> the TrainOptions field it sets (save_every and amp are converted: 0 -> None, 'auto' -> True)
_AS_TRAIN_OPTIONS = {'epochs': 'epochs', 'lr': 'lr', 'momentum': 'momentum', 'weight_decay': 'weight_decay',
                     'lr_step': 'step_size', 'lr_gamma': 'gamma', 'seed': 'seed', 'out_dir': 'checkpoint_dir',
                     'save_every': 'checkpoint_every', 'amp': 'amp', 'channels_last': 'channels_last',
                     'device': 'device', 'progress': 'progress'}
_AMP = {'auto': _TRAIN.amp, 'bf16': 'bf16', 'off': False}


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    return dataclasses.field(default=default, metadata=dict(help=help, **kwargs))


@dataclasses.dataclass
class PretrainConfig:
    """Every option of a pre-training run; ``None`` means "the paper's value for this model"."""
    model: str = _opt(None, 'perception model to pre-train: st (colorization + super-resolution), '
                            'ho (scene + jigsaw) or hp (ANP + captioning)', choices=MODELS, required=True)
    arch: str = _opt('resnet50', f'backbone: a zoo architecture ({", ".join(ARCHS)}: the paper\'s taps), or any timm '
                                 'architecture with forward_intermediates and feature_info at four reductions (e.g. '
                                 'convnext_atto, efficientnet_b0; the heads are sized from feature_info; not a plain '
                                 'ViT)')
    dataset: Optional[str] = _opt(None, 'places365 (ST, HO), vso+artemis (HP) or synthetic (any model, no '
                                        'download); default: the paper\'s dataset of the model')
    data_root: Optional[str] = _opt(None, 'dataset folder: ' + '; '.join(f'{k}: {v}' for k, v in _DATA_LAYOUT.items()))
    image_size: int = _opt(224, 'training crop size; images are first resized to size*256/224 (paper: 256 -> 224)')
    epochs: Optional[int] = _opt(None, 'epochs (paper: ST 12, HO/HP 30)')
    steps_per_epoch: Optional[int] = _opt(None, 'steps per epoch (default: one pass over the larger task loader)')
    batch_size: Optional[int] = _opt(None, 'batch size per process and task (paper: ST 8, HO/HP 32 per GPU)')
    lr: float = _opt(0.01, 'SGD learning rate (the paper\'s pre-training lr, 10x its fine-tuning lr)')
    momentum: float = _opt(_TRAIN.momentum, 'SGD momentum')
    weight_decay: float = _opt(_TRAIN.weight_decay, 'SGD weight decay')
    lr_step: Optional[int] = _opt(None, 'multiply the lr by --lr-gamma every this many epochs (paper: ST 4, HO/HP 10)')
    lr_gamma: float = _opt(_TRAIN.gamma, 'lr decay factor of the step schedule')
    init: str = _opt('imagenet', "backbone initialisation: 'imagenet' (torchvision's ImageNet weights, "
                                 "timm/<arch>.tv_in1k on the Hugging Face hub, fetched once), 'random' (warned), "
                                 "or a file (.safetensors, or .pth/.pt state dict in torchvision or timm layout)")
    seed: int = _opt(_TRAIN.seed, 'seed of initialisation, shuffling, augmentation and pretext randomness')
    workers: int = _opt(4, 'data-loading worker processes per task loader (0: load in the main process)')
    amp: str = _opt('auto', 'mixed precision: auto (bf16 on CUDA, off on CPU), bf16, off',
                    choices=('auto', 'bf16', 'off'))
    channels_last: Optional[bool] = _opt(_TRAIN.channels_last, 'channels_last memory format (default: on for CUDA)')
    device: Optional[str] = _opt(_TRAIN.device, 'cpu, cuda, cuda:1, ... (default: this rank\'s GPU if any, else CPU)')
    out_dir: Optional[str] = _opt(None, 'output folder (default: runs/pretrain/<model>_<arch>)')
    resume: Optional[str] = _opt(None, "checkpoint to resume from exactly, or 'auto' for <out-dir>/last.pt if present")
    save_every: int = _opt(0, 'also checkpoint every N steps (0: only at the end of each epoch)')
    keep_epochs: bool = _opt(False, 'keep a copy of every epoch checkpoint (epoch_NNN.pt) besides last.pt')
    log_every: int = _opt(1, 'write a log.csv row (and refresh the progress bar) every N steps')
    max_samples: Optional[int] = _opt(None, 'use at most this many samples of each task dataset (quick runs)')
    progress: bool = _opt(_TRAIN.progress, 'show a progress bar (rank 0)')
    tensorboard: bool = _opt(False, 'also log each step and epoch to TensorBoard in <out-dir>/tensorboard (pip install '
                                    'tensorboard)')

    def resolved(self) -> 'PretrainConfig':
        """A copy with the model-dependent defaults filled in and every option checked (fails fast)."""
        c = dataclasses.replace(self)
        if c.model not in MODELS:
            raise ValueError(f'--model must be one of {MODELS}, got {c.model!r}')
        check_arch(c.arch)
        epochs, step, batch = SCHEDULES[c.model]
        c.dataset = c.dataset or DATASETS[c.model][0]
        c.epochs = epochs if c.epochs is None else c.epochs
        c.lr_step = step if c.lr_step is None else c.lr_step
        c.batch_size = batch if c.batch_size is None else c.batch_size
        c.out_dir = c.out_dir or f'runs/pretrain/{c.model}_{c.arch}'
        if c.dataset not in DATASETS[c.model]:
            raise ValueError(f'--dataset {c.dataset!r} does not feed the {c.model.upper()} tasks; '
                             f'use one of {DATASETS[c.model]}')
        problems = option_problems(c._train_values())  # the training loop's options: TrainOptions' checks
        if problems:
            ours = {theirs: name for name, theirs in _AS_TRAIN_OPTIONS.items()}
            raise ValueError('; '.join(f'--{ours[name].replace("_", "-")} {getattr(c, ours[name])!r} ({why})'
                                       for name, why in problems))
        for name in ('batch_size', 'image_size', 'log_every'):
            if getattr(c, name) < 1:
                raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(c, name)}')
        for name in ('steps_per_epoch', 'max_samples'):
            if getattr(c, name) is not None and getattr(c, name) < 1:
                raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(c, name)}')
        if c.workers < 0:
            raise ValueError('--workers must be >= 0')
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

    def _train_values(self) -> Dict[str, Any]:
        return dict({theirs: getattr(self, name) for name, theirs in _AS_TRAIN_OPTIONS.items()},
                    checkpoint_every=self.save_every or None, amp=_AMP.get(self.amp, self.amp))

    def train_options(self, device: Union[str, torch.device]) -> TrainOptions:
        """The training loop's options (:class:`~sentizoo.options.TrainOptions`) of this resolved run on ``device``."""
        return TrainOptions(**dict(self._train_values(), device=str(device)))

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

def _subset(dataset: Dataset, max_samples: Optional[int], seed: int) -> Dataset:
    """A seeded random subset (lists are sorted by class, so the first N would be one class)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    keep = np.sort(np.random.RandomState(seed).choice(len(dataset), max_samples, replace=False))
    return Subset(dataset, keep.tolist())


def build_datasets(config: PretrainConfig, heldout: bool = False, split: Optional[str] = None
                   ) -> List[Tuple[str, Dataset]]:
    """The two ``(task, dataset)`` of the model, in ``training_step`` order, with the paper's augmentation.

    Resize to ``floor(image_size * 256 / 224)`` (:func:`sentizoo.datasets.resize_size`, the rule of every
    downstream path), random crop ``image_size``, horizontal flip; images stay RGB in
    [0, 1]: the tasks normalise them, and make their Lab / low-resolution / tile inputs, on the device.
    ``heldout=True`` gives images never trained on (:data:`HELDOUT_SPLITS`), centre-cropped, for
    measuring the pretext tasks (:mod:`training.pretext_eval`); ``split`` then names another held-out split
    for every dataset (``'val'`` of the synthetic world: where choices are made, the test split being kept for
    the report). A missing or malformed dataset file raises here, before anything trains.
    """
    from sentizoo.datasets import paper_data_config, resize_size

    from .datasets.common import pretrain_transform
    c = config
    resize = resize_size(paper_data_config(c.image_size))
    transform = pretrain_transform(c.image_size, normalize=False, train=not heldout)
    split = {name: (split or HELDOUT_SPLITS[name]) if heldout else 'train' for name in HELDOUT_SPLITS}
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

    ``init``: ``'imagenet'`` (torchvision's weights, timm's ``<arch>.tv_in1k``; for an architecture outside the zoo,
    timm's default ImageNet weights; loaded as the library's
    :func:`~sentizoo.amalgamation.create_target` loads them), ``'random'`` (warned) or a file, in timm or
    torchvision key layout (VGG: torchvision ``classifier.*`` keys go through timm's VGG checkpoint filter).
    Returns a short description of where the weights came from, for the log and the model card. Classifier
    weights are dropped; any other missing or unexpected key is an error: the weights are another architecture's.
    """
    if init == 'random':
        warnings.warn(f'pre-training {arch} from a random initialisation: the paper starts every backbone from '
                      f'ImageNet weights (--init imagenet, or --init FILE)', stacklevel=2)
        return 'random'
    if init == 'imagenet':
        from sentizoo.amalgamation import init_target_from, load_imagenet, target_weights
        name = target_weights(arch, 'imagenet')
        repo = f'timm/{name}'
        try:
            weights = load_imagenet(name)
        except Exception as e:  # offline and not cached, no network, hub error: say what to do instead
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RuntimeError(f'could not load the ImageNet weights {repo} from the Hugging Face hub or cache '
                               f'({reason}); fetch them once with network access (HF_HUB_OFFLINE unset), or pass '
                               f'--init FILE (torchvision/timm state dict or .safetensors) or --init random') from e
        init_target_from(backbone, weights)  # drops the classifier (and a stock VGG's fc6/fc7)
        source = 'torchvision weights' if arch in ARCHS else "timm's default weights"
        return f'ImageNet ({source}, {weights.pretrained_cfg.get("hf_hub_id") or repo})'
    path = Path(init)
    state = read_state_dict(path)
    if arch.startswith('vgg') and any(k.startswith('classifier.') for k in state):
        import timm.models.vgg as timm_vgg  # torchvision VGG layout -> timm's (classifier.N -> pre_logits / head)
        state = (getattr(timm_vgg, 'checkpoint_filter_fn', None) or timm_vgg._filter_fn)(state)
    from .perception import load_backbone
    load_backbone(backbone, state)  # drops the classifier; any other mismatch is an error
    return f'ImageNet file {path.name}'


# ------------------------------------------------------------------------------------------- training

def pretrain(config: Union[PretrainConfig, argparse.Namespace, Mapping[str, Any], Sequence[str]],
             loggers: Sequence[Any] = ()) -> Path:
    """Pre-train one perception model; returns the path of the final checkpoint (``<out_dir>/final.pt``).

    ``config`` is a :class:`PretrainConfig`, the argparse namespace of :func:`parse_args`, a mapping of
    its fields, or a list of command-line arguments. Every option is checked before anything runs.
    ``loggers``: more :class:`sentizoo.progress.Logger` hooks (rank 0), besides ``log.csv`` and TensorBoard.
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
        return _train(config, device, loggers)


def _train(config: PretrainConfig, device: torch.device, loggers: Sequence[Any]) -> Path:
    rank, world = rank_world()
    out = Path(config.out_dir)
    last_path, final_path = out / CHECKPOINT_NAME, out / 'final.pt'
    resume = last_path if config.resume == 'auto' and last_path.is_file() else (
        Path(config.resume) if config.resume not in (None, 'auto') else None)
    ckpt = load_checkpoint(resume, resumable=True) if resume else None  # an old or a final file fails here

    random.seed(config.seed)  # the same initialisation on every rank
    np.random.seed(config.seed % 2 ** 32)
    torch.manual_seed(config.seed)
    model, tasks, data_facts = build_model_and_data(config)
    init = ckpt['init'] if ckpt is not None else init_backbone(model.backbone, config.arch, config.init)
    if ckpt is None:  # per-rank stream for in-step randomness (a resumed run restores the checkpoint's)
        torch.manual_seed(config.seed + rank)
    opts = config.train_options(device)
    loaders = {f'task {name}': DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                          num_workers=config.workers, collate_fn=collate,
                                          pin_memory=device.type == 'cuda')
               for name, dataset, collate in tasks}
    precision = 'fp32' if isinstance(autocast(device, opts.amp), nullcontext) else 'bf16 autocast'
    facts = {'trainer': 'training.pretrain', 'config': dataclasses.asdict(config), 'command': config.command(),
             'init': init, 'precision': precision, 'world_size': world, 'data': data_facts,
             'tasks': [name for name, _, _ in tasks], 'versions': versions()}
    same_run = {k: getattr(config, k) for k in ('model', 'arch', 'dataset', 'image_size', 'max_samples')}
    loggers = [RunLog(out, config.log_every), *loggers, *['tensorboard'] * config.tensorboard]
    loop = Loop(model, loaders, opts, device=device, describe=dict(mode='pretrain', **same_run), resume_from=resume,
                steps_per_epoch=config.steps_per_epoch, loggers=loggers, facts=facts,
                keep_epochs=config.keep_epochs, label=f'{config.model.upper()} ')
    if rank == 0:
        _logger.info('pre-training %s/%s on %s: %d epochs x %d steps, batch %d x %d process(es), %s, init: %s',
                     config.model.upper(), config.arch, config.dataset, config.epochs, loop.steps_per_epoch,
                     config.batch_size, world, precision, init)
    loop.run()
    loop.save(final_path, resumable=False)
    if rank == 0:
        _logger.info('final checkpoint: %s (export: python -m training.export --checkpoint %s --tag %s)',
                     final_path, final_path, config.model)
    return final_path


# ------------------------------------------------------------------------------------------------- CLI

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line of ``python -m training.pretrain`` (one option per :class:`PretrainConfig` field)."""
    p = argparse.ArgumentParser(prog='python -m training.pretrain', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(p, PretrainConfig)
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
