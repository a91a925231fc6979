"""The training loop behind :func:`amalgamate` and :func:`finetune`: one loop, two front doors.

``amalgamate`` trains the target inside an :class:`~sentizoo.amalgamation.Amalgamator` (the paper's four
models and loss); ``finetune`` trains the target alone with the task loss (the paper's baseline). Both
share everything else:

* **Paper defaults** (:class:`TrainOptions`): SGD lr 1e-3, momentum 0.9, weight decay 1e-4, StepLR
  every 10 epochs by 0.1, 30 epochs; one optimizer over every trainable parameter of all models.
* **Model selection** on ``val_loader``'s primary metric (:attr:`Task.primary_metric`); the returned
  model holds the best epoch's weights. Without ``val_loader`` the last epoch's weights are returned.
* **History**: ``model.sentizoo_history`` (a JSON-ready dict: per epoch the mean of every loss term and
  the validation metrics, plus ``best_epoch``), also written to ``history_path`` and
  ``<checkpoint_dir>/history.json``.
* **Reproducible data**: the loader is rebuilt around the user's dataset with a
  :class:`~torch.utils.data.DistributedSampler` (also for one process) seeded by ``seed`` and the epoch,
  and every sample is drawn with the torch, Python and NumPy generators seeded from
  ``(seed, epoch, index)``. Random augmentations therefore do not depend on the number of workers,
  processes, or where a run was resumed.
* **Checkpoints** (``checkpoint_dir``): ``last.pt`` after every epoch (and every ``checkpoint_every``
  steps) with model, optimizer, scheduler and generator states, written atomically (temporary file,
  fsync, rename) and read with ``torch.load(weights_only=True)``; ``best.safetensors`` (the target's best
  weights). A rerun with the same ``checkpoint_dir`` resumes exactly where the last checkpoint left off:
  on the CPU the final weights are bit-identical to an uninterrupted run.
* **Failing fast**: options, the first sample of each loader (``task.check_target``) and the teachers
  (missing weights, an architecture without senti teachers) are checked before the first step; a loss
  term that becomes NaN/inf stops training with :class:`NonFiniteLossError` before the optimizer step,
  so the weights in memory and the last checkpoint stay good.
* **Speed**: bf16 autocast on CUDA, channels_last, fused SGD (:func:`sgd`), on CPU the four models side by
  side in worker threads (:mod:`sentizoo.branches`), one host sync per step (the finiteness check, which
  also feeds the progress bar).
* **Distributed**: under ``torchrun`` one DistributedDataParallel wraps the whole Amalgamator (all four
  models); the loader's ``batch_size`` is per process; rank 0 alone writes files and draws the progress bar.
"""
from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import logging
import math
import os
import random
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler, Sampler
from torch.utils.data import SequentialSampler

from .amalgamation import AmalgamationOutput, Amalgamator, init_target_from, num_outputs
from .tasks import Task, get_task
from .weights import atomic_write, remove_stale_temps

__all__ = ['TrainOptions', 'NonFiniteLossError', 'amalgamate', 'finetune', 'evaluate', 'CHECKPOINT_NAME',
           'BEST_NAME', 'HISTORY_NAME', 'EpochSampler', 'SeededSamples', 'resolve_device', 'process_group', 'rank_world',
           'is_int', 'is_number', 'sgd', 'progress_mode', 'line_every', 'progress_line']

CHECKPOINT_NAME = 'last.pt'
BEST_NAME = 'best.safetensors'
HISTORY_NAME = 'history.json'
_FORMAT = 'sentizoo.engine/1'

_logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the step and the terms."""


@dataclasses.dataclass
class TrainOptions:
    """Options of the training loop (keyword arguments of :func:`amalgamate` and :func:`finetune`).

    Attributes:
        epochs: training epochs (paper: 30).
        lr, momentum, weight_decay: SGD (paper: 1e-3, 0.9, 1e-4; weight decay on every parameter).
        step_size, gamma: StepLR, stepped once per epoch (paper: 10, 0.1).
        seed: seeds model heads, data order and per-sample augmentation.
        checkpoint_dir: folder for ``last.pt``, ``best.safetensors``, ``history.json``; resumed from when it
            holds a checkpoint.
        checkpoint_every: also checkpoint every N optimizer steps (needs ``checkpoint_dir``).
        resume: continue from ``checkpoint_dir/last.pt`` when it exists; False refuses to overwrite one.
            The resumed run must have the same options except ``epochs`` and ``lr`` (e.g. lowered after a
            :class:`NonFiniteLossError`; the schedule continues from the new base lr).
        history_path: also write the history JSON here.
        device: e.g. ``'cuda:1'``; default this process's GPU (``LOCAL_RANK``) if any, else the CPU.
        amp: bf16 autocast on CUDA for the training steps (no effect on the CPU; validation always runs in fp32).
        channels_last: convert the models and the images to channels_last; ``None`` (default): on CUDA only,
            where it speeds convolutions up (on the CPU it measured ~20% slower, BENCHMARKS.md).
        sync_batchnorm: under DDP, normalise with the statistics of the global batch (SyncBatchNorm, CUDA
            only); the returned model has plain BatchNorm layers again.
        progress: on rank 0, a progress bar with the running loss terms on a terminal; in a pipe or a log
            file, plain lines on stderr instead (about ten per epoch, and the epoch's summary).
    """

    epochs: int = 30
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    step_size: int = 10
    gamma: float = 0.1
    seed: int = 0
    checkpoint_dir: Optional[str] = None
    checkpoint_every: Optional[int] = None
    resume: bool = True
    history_path: Optional[str] = None
    device: Optional[str] = None
    amp: bool = True
    channels_last: Optional[bool] = None
    sync_batchnorm: bool = False
    progress: bool = True

    # options that shape the trajectory: a resumed run must use the same values (lr and epochs may change)
    _TRAJECTORY = ('momentum', 'weight_decay', 'step_size', 'gamma', 'seed', 'amp', 'channels_last',
                   'sync_batchnorm')

    def __post_init__(self) -> None:
        for name in ('checkpoint_dir', 'history_path', 'device'):
            value = getattr(self, name)
            setattr(self, name, None if value is None else str(value))
        problems = [f'{name}={getattr(self, name)!r} ({why})' for name, ok, why in (
            ('epochs', is_int(self.epochs, 1), 'an integer >= 1'),
            ('step_size', is_int(self.step_size, 1), 'an integer >= 1'),
            ('seed', is_int(self.seed, 0), 'an integer >= 0'),
            ('checkpoint_every', self.checkpoint_every is None or is_int(self.checkpoint_every, 1),
             'None or an integer >= 1'),
            ('lr', is_number(self.lr) and self.lr > 0, 'a number > 0'),
            ('momentum', is_number(self.momentum) and self.momentum >= 0, 'a number >= 0'),
            ('weight_decay', is_number(self.weight_decay) and self.weight_decay >= 0, 'a number >= 0'),
            ('gamma', is_number(self.gamma) and self.gamma > 0, 'a number > 0'),
        ) if not ok]
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            problems.append('checkpoint_every needs a checkpoint_dir')
        if problems:
            raise ValueError('Invalid training options: ' + '; '.join(problems) + '.')


def is_int(value: Any, minimum: int) -> bool:
    """``value`` is an int (not a bool, which JSON ``true`` becomes) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_number(value: Any) -> bool:
    """``value`` is a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sgd(params: Any, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with the fused kernel where the parameters' device has one (CPU and CUDA), else the default.

    The fused kernel updates each parameter in one pass without temporaries. On a 2-core CPU it updates
    94M parameters (momentum + weight decay) in 47 ms against 802 ms for ``foreach`` and 177 ms for the
    for-loop, whose temporaries of hundreds of MB are fresh pages every step (BENCHMARKS.md).
    """
    params = list(params)
    try:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    except RuntimeError:  # a device or dtype without a fused kernel
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


# --- front doors ---------------------------------------------------------------------------------------

_AMALGAMATOR_OPTIONS = tuple(p.name for p in inspect.signature(Amalgamator).parameters.values()
                             if p.kind == p.KEYWORD_ONLY)


def amalgamate(model: nn.Module, loader: DataLoader, *, task: Union[str, Task] = 'sll',
               teachers: Optional[Mapping[str, nn.Module]] = None, val_loader: Optional[DataLoader] = None,
               target_init: str = 'hp', **options: Any) -> nn.Module:
    """Fine-tune ``model`` with the paper's multi-model amalgamation; returns it trained (in eval mode).

    Args:
        model: the target, a timm ResNet/VGG with its task head (``num_classes`` = task outputs). It is
            trained in place.
        loader: a map-style ``DataLoader`` yielding ``(images, targets)``; its dataset, ``batch_size`` (per
            process), ``shuffle``, workers and ``collate_fn`` are used, the sampling order is the engine's.
        task: ``'sll'``, ``'mll'``, ``'ldl'`` or a :class:`~sentizoo.tasks.Task`.
        teachers: ``{'st', 'ho', 'hp'}`` timm models; None loads ``senti_<arch>.st/.ho/.hp`` from the zoo.
        val_loader: validation data for model selection (never the test split).
        target_init: ``'hp'`` (default, the official recipe): the target's backbone starts as a copy of the HP
            teacher's (:func:`sentizoo.amalgamation.init_target_from`), its head stays; ``'given'``: train
            the target from the weights it has (ImageNet, random, your own).
        **options: the :class:`TrainOptions` (``epochs=30, lr=1e-3, momentum=0.9, weight_decay=1e-4,
            step_size=10, gamma=0.1, seed=0, checkpoint_dir, checkpoint_every, resume, history_path, device,
            amp, channels_last, sync_batchnorm, progress``) and the Amalgamator's ablation options
            (``feature_stages, logits_teachers, teacher_task_loss, freeze_teachers, loss_weights``).

    Returns:
        ``model`` with the best validation epoch's weights; ``model.sentizoo_history`` holds the history.

    Raises (before training): ValueError for bad options, loaders or targets and for an architecture
    without senti teachers; :class:`~sentizoo.weights.WeightsNotFoundError` when teacher weights are missing.
    During training: :class:`NonFiniteLossError`.
    """
    ablation = {k: options.pop(k) for k in list(options) if k in _AMALGAMATOR_OPTIONS}
    opts = _options(options, _AMALGAMATOR_OPTIONS)
    if target_init not in ('hp', 'given'):
        raise ValueError(f"target_init must be 'hp' (start from the HP backbone) or 'given'; got {target_init!r}.")
    task = get_task(task)
    _check_data(model, loader, val_loader, task)
    describe = {'mode': 'amalgamate', 'teachers': 'given' if teachers is not None else 'zoo',
                'target_init': target_init, **ablation}

    def build() -> Amalgamator:
        amalgamator = Amalgamator(model, teachers, task, **ablation)
        if target_init == 'hp':
            if 'hp' not in amalgamator.teachers:
                raise ValueError("target_init='hp' needs the HP teacher, which these terms do not use; pass "
                                 "target_init='given' to train the target from its own weights.")
            init_target_from(amalgamator.target, amalgamator.teachers['hp'])
        return amalgamator

    return _train(build, loader, val_loader, task, opts, describe)


def finetune(model: nn.Module, loader: DataLoader, *, task: Union[str, Task] = 'sll',
             val_loader: Optional[DataLoader] = None, **options: Any) -> nn.Module:
    """Plain fine-tuning (the paper's baseline): :func:`amalgamate`'s loop with the task loss only.

    Takes the same arguments as :func:`amalgamate` minus the teachers and ablation options; works for
    any timm classifier (not only ResNet/VGG).
    """
    opts = _options(options)
    task = get_task(task)
    _check_data(model, loader, val_loader, task)
    return _train(lambda: _FineTuner(model, task), loader, val_loader, task, opts, {'mode': 'finetune'})


def _train(build: Callable[[], nn.Module], loader: DataLoader, val_loader: Optional[DataLoader], task: Task,
           opts: TrainOptions, describe: Dict[str, Any]) -> nn.Module:
    device = resolve_device(opts.device)
    with process_group(device):
        return _Loop(build, loader, val_loader, task, opts, describe, device).run()


def _options(options: Mapping[str, Any], also_valid: Tuple[str, ...] = ()) -> TrainOptions:
    known = [f.name for f in dataclasses.fields(TrainOptions)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f'Unknown option(s) {unknown}; training options are {known}'
                        + (f', amalgamation options {list(also_valid)}' if also_valid else '') + '.')
    return TrainOptions(**options)


class _FineTuner(nn.Module):
    """The target alone, with the Amalgamator's interface (``.target``, train-mode output with terms)."""

    def __init__(self, target: nn.Module, task: Task):
        super().__init__()
        self.target = target
        self.task = task

    def forward(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, AmalgamationOutput]:
        logits = self.target(images)
        if not self.training:
            return logits
        loss = self.task.loss(logits, targets)
        return AmalgamationOutput(logits, loss, {'task/target': loss})


# --- data ----------------------------------------------------------------------------------------------

class SeededSamples(Dataset):
    """``dataset[index]`` for keys ``(epoch, index)``, drawn with the torch (CPU), Python and NumPy generators
    seeded from ``(seed, epoch, index)``; the caller's generator states are restored afterwards."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Any:
        epoch, index = key
        sample_seed = ((self.seed * 1_000_003 + epoch) * 1_000_003 + index) % 2 ** 63
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=()):
            torch.default_generator.manual_seed(sample_seed)
            random.seed(sample_seed)
            np.random.seed(sample_seed % 2 ** 32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class EpochSampler(Sampler):
    """Keys ``(epoch, index)`` of this process's shard (DistributedSampler order), from batch ``skip`` on."""

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int, rank: int, world: int):
        self.shard = DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size
        self.epoch = self.skip = 0

    def start(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches * self.batch_size
        self.shard.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, i) for i in itertools.islice(iter(self.shard), self.skip, None))

    def __len__(self) -> int:
        return len(self.shard) - self.skip


class _Shard(Sampler):
    """Indices ``rank, rank + world, ...``: an unpadded shard, so summed metrics count every sample once."""

    def __init__(self, size: int, rank: int, world: int):
        self.indices = range(rank, size, world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _rebuild(loader: DataLoader, sampler: Sampler, dataset: Optional[Dataset] = None,
             generator: Optional[torch.Generator] = None) -> DataLoader:
    """A DataLoader like ``loader`` (batching, workers, collate) drawing from ``sampler``."""
    return DataLoader(dataset if dataset is not None else loader.dataset, batch_size=loader.batch_size,
                      sampler=sampler, generator=generator, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, drop_last=loader.drop_last, timeout=loader.timeout,
                      worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
                      prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers)


def _check_loader(name: str, loader: Any, task: Task, outputs: int) -> None:
    """The loader's structure and its first sample, collated as a batch of one."""
    if not isinstance(loader, DataLoader):
        raise ValueError(f'{name} must be a torch.utils.data.DataLoader; got {type(loader).__name__}.')
    if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        raise ValueError(f'{name}: the engine needs a map-style dataset and DataLoader(batch_size=...), because '
                         'it shards and seeds the sample order itself (no IterableDataset or batch_sampler).')
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        raise ValueError(f'{name}: custom samplers ({type(loader.sampler).__name__}) are not supported; build '
                         'the DataLoader with shuffle=True or False: the engine orders the samples and shards '
                         'them over torchrun processes itself.')
    if len(loader.dataset) == 0:
        raise ValueError(f'{name}: the dataset is empty.')
    _check_labels(name, loader.dataset, task, outputs)
    batch = loader.collate_fn([SeededSamples(loader.dataset, 0)[(0, 0)]])
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError(f'{name} must yield (images, targets) pairs; its first batch is a '
                         f'{type(batch).__name__}' + (f' of {len(batch)} items.' if hasattr(batch, '__len__') else '.'))
    images, targets = batch
    if not (isinstance(images, torch.Tensor) and images.ndim == 4 and images.is_floating_point()):
        raise ValueError(f'{name}: images must be float tensors (N, C, H, W); the first batch has '
                         f'{type(images).__name__} {tuple(getattr(images, "shape", ()))}.')
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f'{name}: targets must be tensors; the first batch has {type(targets).__name__}.')
    try:
        task.check_target(targets, outputs)
    except ValueError as e:
        raise ValueError(f'{name}: {e}') from None


def _check_labels(name: str, dataset: Dataset, task: Task, outputs: int) -> None:
    """Every label row and image file of a dataset that can check them itself (``check_labels``, e.g.
    :class:`sentizoo.datasets.LabelledImages`), before any image is read."""
    check = getattr(dataset, 'check_labels', None)
    if callable(check):
        try:
            check(task, outputs)
        except ValueError as e:
            raise ValueError(f'{name}: {e}') from None


def _check_data(model: nn.Module, loader: DataLoader, val_loader: Optional[DataLoader], task: Task) -> None:
    outputs = num_outputs(model, f'model ({type(model).__name__})')
    _check_loader('loader', loader, task, outputs)
    if val_loader is not None:
        _check_loader('val_loader', val_loader, task, outputs)


# --- devices and processes -----------------------------------------------------------------------------

def rank_world() -> Tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(device: Optional[str]) -> torch.device:
    """``device`` as given, else this process's GPU (``LOCAL_RANK`` under torchrun), else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        local = int(os.environ.get('LOCAL_RANK', 0))
        torch.cuda.set_device(local)
        return torch.device('cuda', local)
    return torch.device('cpu')


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join the process group that ``torchrun`` describes (NCCL on CUDA, else gloo) for the duration, unless
    there is none (a single process) or the caller already created one (which it then keeps)."""
    create = dist.is_available() and not dist.is_initialized() and int(os.environ.get('WORLD_SIZE', '1')) > 1
    if create:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    try:
        yield
    finally:
        if create:
            dist.destroy_process_group()


def _autocast(device: torch.device, amp: bool):
    enabled = amp and device.type == 'cuda' and torch.cuda.is_bf16_supported()
    return torch.autocast('cuda', dtype=torch.bfloat16) if enabled else nullcontext()


def _channels_last(flag: Optional[bool], device: torch.device) -> bool:
    return device.type == 'cuda' if flag is None else flag


def _to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def progress_mode(progress: bool) -> Optional[str]:
    """How this process shows progress: ``'bar'`` (tqdm) on a terminal, ``'lines'`` in a pipe or a log file
    (one line every :func:`line_every` steps and per epoch, on stderr: no carriage returns), ``None`` when
    ``progress`` is off and on every rank but 0."""
    if not progress or rank_world()[0] != 0:
        return None
    return 'bar' if sys.stderr.isatty() else 'lines'


def line_every(steps: int) -> int:
    """Steps between two progress lines in a pipe: about ten per epoch."""
    return max(1, steps // 10)


def progress_line(text: str) -> None:
    """One progress line on stderr, flushed (readable in a pipe or a log file as it happens)."""
    print(text, file=sys.stderr, flush=True)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, task: Union[str, Task] = 'sll', *, device: Optional[str] = None,
             channels_last: Optional[bool] = None, progress: bool = False) -> Dict[str, float]:
    """The task's metrics of ``model`` over ``loader`` (every sample once, also under torchrun).

    The model is moved to ``device`` and put in eval mode. It runs in fp32, with autocast switched off even
    inside a caller's autocast: bf16 logits tie, which moves the ranking loss by ~1e-3, the size of the
    paper's gaps. The targets of every batch are checked against the logits (``task.check_target``).
    """
    task = get_task(task)
    if getattr(model, 'num_classes', 0):  # labels and files checked before any image is read
        _check_labels('loader', loader.dataset, task, model.num_classes)
    device = resolve_device(device)
    model.to(device).eval()
    channels_last = _channels_last(channels_last, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    rank, world = rank_world()
    if world > 1:
        if len(loader.dataset) < world:
            raise ValueError(f'evaluate: {len(loader.dataset)} samples cannot be shared by {world} processes.')
        loader = _rebuild(loader, _Shard(len(loader.dataset), rank, world))
    from tqdm.auto import tqdm
    metrics = task.metrics()
    for images, targets in tqdm(loader, desc='evaluate', leave=False, disable=progress_mode(progress) != 'bar'):
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=False):
            logits = model(_to_device(images, device, channels_last)).float()
        task.check_target(targets, logits.shape[1])
        metrics.update(logits, targets)
    metrics.sync()
    return metrics.compute()


def _revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """SyncBatchNorm layers back to BatchNorm2d (same parameters and buffers)."""
    if isinstance(module, nn.SyncBatchNorm):
        state = module.state_dict()
        plain = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, device=next(iter(state.values())).device)
        plain.load_state_dict(state)
        return plain.train(module.training)
    for name, child in module.named_children():
        setattr(module, name, _revert_sync_batchnorm(child))
    return module


def _summary(record: Dict[str, Any], epochs: int) -> str:
    """One line per epoch: ``epoch 3/30  loss 4.12 (task/target 1.03 ...)  val accuracy 0.61``."""
    train = record['train']
    terms = ' '.join(f'{k} {v:.4g}' for k, v in train.items() if k != 'loss')
    val = ''.join(f'  val {k} {v:.4g}' for k, v in record.get('val', {}).items())
    return f'epoch {record["epoch"]}/{epochs}  loss {train["loss"]:.4g} ({terms}){val}'


# --- the loop ------------------------------------------------------------------------------------------

class _Loop:
    """One training run: set-up (device, DDP, optimizer, resume), epochs, checkpoints, model selection."""

    def __init__(self, build: Callable[[], nn.Module], loader: DataLoader, val_loader: Optional[DataLoader],
                 task: Task, opts: TrainOptions, describe: Dict[str, Any], device: torch.device):
        self.task, self.opts, self.val_loader, self.device = task, opts, val_loader, device
        self.rank, self.world = rank_world()
        self.dir = Path(opts.checkpoint_dir) if opts.checkpoint_dir else None
        shuffle = isinstance(loader.sampler, RandomSampler)
        # What a resumed run must share with the checkpoint for the continuation to be exact.
        self.fingerprint = json.loads(json.dumps(dict(
            {k: getattr(opts, k) for k in TrainOptions._TRAJECTORY}, task=task.name, batch_size=loader.batch_size,
            dataset_size=len(loader.dataset), shuffle=shuffle, drop_last=loader.drop_last, world_size=self.world,
            **describe), default=repr))

        torch.manual_seed(opts.seed)  # the teachers' fresh heads are seeded
        self.module = build()
        self.outputs = num_outputs(self.module.target)
        if opts.sync_batchnorm and self.world > 1:
            self.module = nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
        self.module.to(self.device)
        self.channels_last = _channels_last(opts.channels_last, self.device)
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.net = self.module
        if self.world > 1:
            self.net = DistributedDataParallel(
                self.module, device_ids=[self.device] if self.device.type == 'cuda' else None,
                find_unused_parameters=getattr(self.module, 'has_unused_parameters', False))
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = sgd(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, opts.step_size, opts.gamma)
        self.sampler = EpochSampler(len(loader.dataset), loader.batch_size, shuffle, opts.seed, self.rank,
                                     self.world)
        # Its own generator: creating an iterator then draws no number from the global one, which a resumed
        # run would otherwise draw once more than the interrupted one (worker seeds are unused: samples are
        # seeded by SeededSamples).
        self.loader = _rebuild(loader, self.sampler, SeededSamples(loader.dataset, opts.seed),
                               torch.Generator().manual_seed(opts.seed))

        self.history: Dict[str, Any] = {'task': task.name, 'primary_metric': task.primary_metric,
                                        'higher_is_better': task.higher_is_better, 'best_epoch': None, 'epochs': []}
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.epoch = self.step = self.global_step = 0
        self.term_names: List[str] = []
        self.sums = torch.zeros(0, dtype=torch.float64)  # per term (and 'loss'): sum of batch mean * batch size
        self.seen = 0

    # -- checkpoints --

    def _path(self, name: str) -> Path:
        assert self.dir is not None
        return self.dir / name

    def _resume(self) -> None:
        path = self._path(CHECKPOINT_NAME)
        if not path.exists():
            return
        if not self.opts.resume:
            raise FileExistsError(f'{path} exists and resume=False: pass resume=True to continue that run or '
                                  'choose an empty checkpoint_dir.')
        try:
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:
            raise ValueError(f'{path} is not a readable sentizoo training checkpoint ({type(e).__name__}: {e}); '
                             'delete it to start afresh.') from e
        if ckpt.get('format') != _FORMAT:
            raise ValueError(f'{path} is not a sentizoo.engine checkpoint (format {ckpt.get("format")!r}).')
        saved = json.loads(ckpt['fingerprint'])
        changed = {k: (saved.get(k), v) for k, v in self.fingerprint.items() if saved.get(k) != v}
        if changed:
            raise ValueError(f'{path} was written by a run with other settings; (checkpoint, now): {changed}. '
                             'Resume with the same settings or use a new checkpoint_dir.')
        self.module.load_state_dict(ckpt['model'])
        self.optimizer.load_state_dict(ckpt['optimizer'])
        self.scheduler.load_state_dict(ckpt['scheduler'])
        self._set_base_lr(self.opts.lr)
        self.epoch, self.step, self.global_step = ckpt['epoch'], ckpt['step'], ckpt['global_step']
        self.history = json.loads(ckpt['history'])
        self.term_names, self.sums, self.seen = list(ckpt['term_names']), ckpt['sums'], ckpt['seen']
        rng = ckpt['rng'][self.rank]
        torch.set_rng_state(rng['cpu'])
        if 'cuda' in rng and self.device.type == 'cuda':
            torch.cuda.set_rng_state(rng['cuda'], self.device)
        if self.history['best_epoch'] is not None:
            from safetensors.torch import load_file
            self.best_state = load_file(self._path(BEST_NAME))
        if self.rank == 0:
            _logger.info('resuming from %s: epoch %d, batch %d', path, self.epoch + 1, self.step)

    def _set_base_lr(self, lr: float) -> None:
        """Rescale the schedule restored from a checkpoint to the base ``lr`` of this run."""
        old = self.scheduler.base_lrs[0]
        if lr == old:
            return
        for group in self.optimizer.param_groups:
            group['lr'] *= lr / old
            group['initial_lr'] = lr
        self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
        self.scheduler._last_lr = [group['lr'] for group in self.optimizer.param_groups]
        if self.rank == 0:
            _logger.info('resuming with base lr %g (the checkpoint had %g)', lr, old)

    def _save(self) -> None:
        """``last.pt`` for the current position (collective: every rank sends its generator state)."""
        rng = {'cpu': torch.get_rng_state()}
        if self.device.type == 'cuda':
            rng['cuda'] = torch.cuda.get_rng_state(self.device)
        rngs = [rng]
        if self.world > 1:
            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng)
        if self.rank != 0:
            return
        state = dict(format=_FORMAT, fingerprint=json.dumps(self.fingerprint), epoch=self.epoch, step=self.step,
                     global_step=self.global_step, model=self.module.state_dict(),
                     optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                     history=json.dumps(self.history), term_names=self.term_names, sums=self.sums, seen=self.seen,
                     rng=rngs)
        atomic_write(self._path(CHECKPOINT_NAME), lambda tmp: torch.save(state, tmp))

    def _write_history(self) -> None:
        if self.rank != 0:
            return
        text = json.dumps(self.history, indent=2) + '\n'
        for path in (self.opts.history_path, self.dir and self._path(HISTORY_NAME)):
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))

    # -- training --

    def _checkpoint_note(self) -> str:
        if self.dir is None:
            return 'No checkpoint was written (checkpoint_dir=None).'
        path = self._path(CHECKPOINT_NAME)
        if not path.exists():
            return f'No checkpoint had been written to {self.dir} yet.'
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        return (f'The last good checkpoint, {path} (epoch {ckpt["epoch"] + 1}, batch {ckpt["step"]}), is kept: '
                'fix the cause (lower lr, bad inputs) and rerun with the same checkpoint_dir to resume.')

    def _train_step(self, images: torch.Tensor, targets: torch.Tensor, batches: int) -> None:
        images = _to_device(images, self.device, self.channels_last)
        targets = targets.to(self.device, non_blocking=True)
        self.task.check_shape(targets, self.outputs)  # every batch: an (N, 1) target would broadcast in the loss
        with _autocast(self.device, self.opts.amp):
            out = self.net(images, targets)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        values = torch.stack([out.loss.detach().float()] + [t.detach().float() for t in out.terms.values()])
        if self.world > 1:  # every rank must see the same values, so that all stop together
            dist.all_reduce(values)
            values /= self.world
        values = values.tolist()  # the step's one host sync
        bad = [f'{name}={v}' for name, v in zip(out.terms, values[1:]) if not math.isfinite(v)]
        if bad or not math.isfinite(values[0]):
            raise NonFiniteLossError(
                f'Non-finite loss at step {self.global_step + 1} (epoch {self.epoch + 1}, batch {self.step + 1}/'
                f'{batches}): {", ".join(bad) or "the weighted sum overflowed"}; stopped before the optimizer '
                f'step. {self._checkpoint_note()}')
        self.optimizer.step()
        if not self.term_names:
            self.term_names, self.sums = ['loss', *out.terms], torch.zeros(len(values), dtype=torch.float64)
        self.sums += torch.tensor(values, dtype=torch.float64) * len(targets)
        self.seen += len(targets)

    def _train_epoch(self) -> None:
        from tqdm.auto import tqdm
        self.sampler.start(self.epoch, self.step)
        batches = self.step + len(self.loader)
        self.module.train()
        every = self.opts.checkpoint_every
        mode = progress_mode(self.opts.progress)
        desc = f'epoch {self.epoch + 1}/{self.opts.epochs}'
        with tqdm(total=batches, initial=self.step, desc=desc, disable=mode != 'bar', leave=False,
                  dynamic_ncols=True) as bar:
            for images, targets in self.loader:
                self._train_step(images, targets, batches)
                self.step += 1
                self.global_step += 1
                bar.update()
                terms = {name: f'{s / self.seen:.4g}' for name, s in zip(self.term_names, self.sums.tolist())}
                bar.set_postfix(terms, refresh=False)
                if mode == 'lines' and self.step % line_every(batches) == 0 and self.step < batches:
                    progress_line(f'{desc}  step {self.step}/{batches}  '
                                  + ' '.join(f'{k} {v}' for k, v in terms.items()))
                if every and self.step % every == 0 and self.step < batches:
                    self._save()

    def _end_epoch(self, seconds: float) -> None:
        record: Dict[str, Any] = {'epoch': self.epoch + 1, 'lr': self.optimizer.param_groups[0]['lr']}
        self.scheduler.step()
        record['train'] = dict(zip(self.term_names, (self.sums / max(self.seen, 1)).tolist()))
        if self.val_loader is not None:
            record['val'] = evaluate(self.module.target, self.val_loader, self.task, device=str(self.device),
                                     channels_last=self.channels_last,
                                     progress=self.opts.progress)
            self._select(record['val'][self.task.primary_metric])
        record['seconds'] = round(seconds, 3)
        self.history['epochs'].append(record)
        self.epoch, self.step, self.seen = self.epoch + 1, 0, 0
        self.sums = torch.zeros_like(self.sums)
        mode = progress_mode(self.opts.progress)
        if mode == 'bar':
            from tqdm.auto import tqdm
            tqdm.write(_summary(record, self.opts.epochs))
        elif mode == 'lines':
            progress_line(_summary(record, self.opts.epochs))
        elif self.rank == 0:
            _logger.info(_summary(record, self.opts.epochs))
        self._write_history()
        if self.dir is not None:
            self._save()

    def _select(self, value: float) -> None:
        best = self.history['best_epoch']
        best_value = best and self.history['epochs'][best - 1]['val'][self.task.primary_metric]
        better = best is None or (value > best_value if self.task.higher_is_better else value < best_value)
        if not better:
            return
        self.history['best_epoch'] = self.epoch + 1
        self.best_state = {k: v.detach().to('cpu', copy=True).contiguous()
                           for k, v in self.module.target.state_dict().items()}
        if self.dir is not None and self.rank == 0:
            from safetensors.torch import save_file
            atomic_write(self._path(BEST_NAME), lambda tmp: save_file(self.best_state, tmp))

    def run(self) -> nn.Module:
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.rank == 0:  # partial files of a run killed mid-write: they can be GBs each
                for name in (CHECKPOINT_NAME, BEST_NAME, HISTORY_NAME):
                    remove_stale_temps(self._path(name))
            self._resume()
        while self.epoch < self.opts.epochs:
            start = time.perf_counter()
            self._train_epoch()
            self._end_epoch(time.perf_counter() - start)
        target = self.module.target
        if self.best_state is not None:
            target.load_state_dict(self.best_state)
        if self.opts.sync_batchnorm:
            _revert_sync_batchnorm(target)
        target.sentizoo_history = self.history
        return target.eval()
