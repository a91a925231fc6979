"""The training loop (:class:`Loop`) and its front doors :func:`amalgamate` and :func:`finetune`.

``amalgamate`` trains the target inside an :class:`~sentizoo.amalgamation.Amalgamator` (the paper's four
models and loss); ``finetune`` trains the target alone with the task loss (the paper's baseline);
``python -m training.pretrain`` runs the same loop over the two pretext tasks of a perception model.
All share the paper's defaults (:class:`~sentizoo.options.TrainOptions`: SGD lr 1e-3, momentum 0.9, weight
decay 1e-4, StepLR every 10 epochs by 0.1, 30 epochs; one optimizer over every trainable parameter), model
selection on ``val_loader``'s primary metric (the returned model holds the best epoch's weights, the last
ones without ``val_loader``), the history (``model.sentizoo_history``, ``history_path``,
``<checkpoint_dir>/history.json``; ``loggers`` such as TensorBoard get every step's and epoch's values,
:mod:`sentizoo.progress`), and:

* **Reproducible data** (:mod:`sentizoo.sampling`): the loader is rebuilt around the user's dataset with
  the order of a DistributedSampler (also for one process) or of the user's own sampler, seeded by ``seed``
  and the epoch; every sample is drawn with the generators seeded from ``(seed, epoch, index)``.
* **Checkpoints** (:mod:`sentizoo.checkpoint`): ``last.pt`` after every epoch (and every
  ``checkpoint_every`` steps), written atomically, and ``best.safetensors``; a write that fails raises
  :class:`~sentizoo.checkpoint.CheckpointWriteError` with the earlier files intact. A rerun with the same
  ``checkpoint_dir`` resumes exactly: on the CPU the final weights are bit-identical to an uninterrupted run.
* **Failing fast**: options, the first sample of each loader and the teachers are checked before the first
  step; a NaN/inf loss term stops training with :class:`NonFiniteLossError` before the optimizer step.
* **Speed and scale** (:mod:`sentizoo.runtime`): bf16 autocast on CUDA, channels_last, fused SGD, one host
  sync per step; under ``torchrun`` (one machine or several) one DistributedDataParallel wraps the whole
  step module, the loader's ``batch_size`` is per process, and rank 0 alone writes files and shows progress.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from .amalgamation import AmalgamationOutput, Amalgamator, FineTuner, init_target_from, num_outputs, teacher_family
from .checkpoint import CHECKPOINT_NAME, load, rng_state, save, save_weights, set_rng_state
from .cross_arch import same_architecture
from .evaluation import evaluate
from .options import TrainOptions, train_options
from .progress import EpochProgress, HistoryFiles, as_loggers, show_summary, summary
from .runtime import (all_gather, autocast, batch_size, distribute, process_group, rank_world, rebase_lr,
                      resolve_device, revert_sync_batchnorm, sgd, to_device, use_channels_last)
from .sampling import Stream, check_data, describe_loaders
from .saving import trained_cfg
from .tasks import Task, get_task
from .weights import remove_stale_temps

__all__ = ['NonFiniteLossError', 'amalgamate', 'finetune', 'evaluate', 'Loop', 'CHECKPOINT_NAME',
           'BEST_NAME', 'HISTORY_NAME']

BEST_NAME = 'best.safetensors'
HISTORY_NAME = 'history.json'

_logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the step and the terms."""


# --- front doors ---------------------------------------------------------------------------------------

_AMALGAMATOR_OPTIONS = tuple(p.name for p in inspect.signature(Amalgamator).parameters.values()
                             if p.kind == p.KEYWORD_ONLY)


def amalgamate(model: nn.Module, loader: DataLoader, *, task: Union[str, Task] = 'sll',
               teachers: Union[None, str, Mapping[str, nn.Module]] = None, val_loader: Optional[DataLoader] = None,
               target_init: Optional[str] = None, loggers: Sequence[Any] = (), **options: Any) -> nn.Module:
    """Fine-tune ``model`` with the paper's multi-model amalgamation; returns it trained (in eval mode).

    Args:
        model: the target, a timm model (:mod:`sentizoo.stages`) with its task head (``num_classes`` = task
            outputs). It is trained in place.
        loader: a map-style ``DataLoader`` yielding ``(images, targets)``; its dataset, ``batch_size`` (per
            process), ``shuffle`` or sampler (e.g. a ``WeightedRandomSampler``; seeded through its
            ``generator`` or ``set_epoch``), ``drop_last``, workers and ``collate_fn`` are used.
        task: ``'sll'``, ``'mll'``, ``'ldl'`` or a :class:`~sentizoo.tasks.Task`.
        teachers: ``{'st', 'ho', 'hp'}`` timm models, or an architecture whose ``senti_<arch>.st/.ho/.hp`` load
            from the zoo (``'resnet50'``; None: the target's). Another architecture's get adapters.
        val_loader: validation data for model selection (never the test split).
        target_init: ``'hp'`` (default with teachers of the target's architecture, the official recipe): the
            target's backbone starts as a copy of the HP teacher's (:func:`sentizoo.amalgamation.init_target_from`),
            its head stays; ``'given'`` (default with others): train the target from the weights it has.
        loggers: :class:`~sentizoo.progress.Logger` objects, ``'tensorboard'`` (writes to
            ``<checkpoint_dir>/tensorboard``) or a TensorBoard ``SummaryWriter``: they get every step's and
            epoch's values on rank 0.
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
    opts = train_options(options, _AMALGAMATOR_OPTIONS)
    target_init = target_init or ('hp' if same_architecture(model, teachers) else 'given')
    if target_init not in ('hp', 'given'):
        raise ValueError(f"target_init must be 'hp' (start from the HP backbone) or 'given'; got {target_init!r}.")
    task = get_task(task)
    check_data(model, loader, val_loader, task)
    origin = 'zoo' if teachers is None else teacher_family(teachers) if isinstance(teachers, str) else 'given'
    describe = {'mode': 'amalgamate', 'teachers': origin, 'target_init': target_init, **ablation}

    def build() -> Amalgamator:
        amalgamator = Amalgamator(model, teachers, task, **ablation)
        if target_init == 'hp':
            if 'hp' not in amalgamator.teachers:
                raise ValueError("target_init='hp' needs the HP teacher, which these terms do not use; pass "
                                 "target_init='given' to train the target from its own weights.")
            init_target_from(amalgamator.target, amalgamator.teachers['hp'])
        return amalgamator

    return _train(build, loader, val_loader, task, opts, describe, loggers)


def finetune(model: nn.Module, loader: DataLoader, *, task: Union[str, Task] = 'sll',
             val_loader: Optional[DataLoader] = None, loggers: Sequence[Any] = (), **options: Any) -> nn.Module:
    """Plain fine-tuning (the paper's baseline): :func:`amalgamate`'s loop with the task loss only.

    Takes the same arguments as :func:`amalgamate` minus the teachers and ablation options; works for
    any timm classifier (not only ResNet/VGG).
    """
    opts = train_options(options)
    task = get_task(task)
    check_data(model, loader, val_loader, task)
    return _train(lambda: FineTuner(model, task), loader, val_loader, task, opts, {'mode': 'finetune'}, loggers)


def _train(build: Callable[[], nn.Module], loader: DataLoader, val_loader: Optional[DataLoader], task: Task,
           opts: TrainOptions, describe: Dict[str, Any], loggers: Sequence[Any]) -> nn.Module:
    folder = Path(opts.checkpoint_dir) if opts.checkpoint_dir else None
    resume_from = folder / CHECKPOINT_NAME if folder and (folder / CHECKPOINT_NAME).exists() else None
    if resume_from and not opts.resume:
        raise FileExistsError(f'{resume_from} exists and resume=False: pass resume=True to continue that run or '
                              'choose an empty checkpoint_dir.')
    files = [path for path in (opts.history_path, folder and folder / HISTORY_NAME) if path]
    loggers = [HistoryFiles(files), *as_loggers(loggers, str(folder / 'tensorboard') if folder else None)]
    device = resolve_device(opts.device)
    with process_group(device):
        torch.manual_seed(opts.seed)  # the teachers' fresh heads are seeded
        module = build()
        outputs = num_outputs(module.target)

        def check(images: torch.Tensor, targets: torch.Tensor) -> None:  # every batch: an (N, 1) target broadcasts
            task.check_format(targets, outputs)

        target = Loop(module, {'loader': loader}, opts, device=device, task=task, val_loader=val_loader,
                      describe=describe, resume_from=resume_from, loggers=loggers, check_batch=check).run()
    if getattr(target, 'pretrained_cfg', None) is not None:  # new weights: no tag or licence of the initial ones
        transform = getattr(loader.dataset, 'transform', None)  # sentizoo.datasets.train_transform's records its config
        target.pretrained_cfg = trained_cfg(target.pretrained_cfg, getattr(transform, 'data_config', None))
    return target


# --- the loop ------------------------------------------------------------------------------------------

def _loss_terms(out: Any) -> tuple:
    """A step's ``(loss, {term: value})``: an :class:`AmalgamationOutput` or that pair itself."""
    return (out.loss, out.terms) if isinstance(out, AmalgamationOutput) else out


class Loop:
    """One training run of ``module``: device, DDP, optimizer, resume, epochs, checkpoints, model selection.

    Each step takes the next batch of every loader (:class:`~sentizoo.sampling.Stream`; a loader shorter than
    the epoch is cycled), moves it to the device and calls ``module(*batch)`` for one loader,
    ``module(*batches)`` (one batch per loader) for several. The step returns ``(loss, {term: value})``
    (or an :class:`~sentizoo.amalgamation.AmalgamationOutput`); the loss is minimised with SGD and a StepLR
    schedule stepped per epoch (:class:`TrainOptions`). An epoch is ``steps_per_epoch`` steps, by default
    one pass over the longest loader.

    Args:
        module: the step module. A ``target`` attribute names the model that is validated, selected and
            returned (default the module itself).
        loaders: ``{name: DataLoader}``; loader ``k`` is seeded with ``opts.seed + 7919 * k``.
        opts: the options (paper defaults).
        device: where to train (:func:`~sentizoo.runtime.resolve_device`).
        task, val_loader: validate the target on ``val_loader`` after every epoch and keep the best epoch.
        describe: JSON-ready facts that a resumed run must share with its checkpoint (besides the options
            that shape the trajectory, the loaders' sizes and the number of processes).
        resume_from: a checkpoint to continue from exactly.
        steps_per_epoch: optimizer steps per epoch.
        loggers: :class:`~sentizoo.progress.Logger` objects (rank 0).
        check_batch: called like ``module`` with each step's batches on the device (e.g. a shape check).
        facts: entries written into every checkpoint (e.g. the run's configuration).
        keep_epochs: also keep ``epoch_NNN.pt``, a copy of every epoch's checkpoint.
        label: prefix of the progress lines (e.g. ``'HO '``).
    """

    def __init__(self, module: nn.Module, loaders: Mapping[str, DataLoader], opts: TrainOptions, *,
                 device: torch.device, task: Optional[Task] = None, val_loader: Optional[DataLoader] = None,
                 describe: Optional[Mapping[str, Any]] = None, resume_from: Optional[Path] = None,
                 steps_per_epoch: Optional[int] = None, loggers: Sequence[Any] = (),
                 check_batch: Optional[Callable[..., None]] = None, facts: Optional[Mapping[str, Any]] = None,
                 keep_epochs: bool = False, label: str = ''):
        self.task, self.opts, self.val_loader, self.device = task, opts, val_loader, device
        self.rank, self.world = rank_world()
        self.dir = Path(opts.checkpoint_dir) if opts.checkpoint_dir else None
        self.resume_from, self.check_batch, self.facts = resume_from, check_batch, dict(facts or {})
        self.keep_epochs, self.label = keep_epochs, label
        self.loggers = as_loggers(loggers, self.dir and str(self.dir / 'tensorboard')) if self.rank == 0 else []
        self.fingerprint = json.loads(json.dumps(dict(
            opts.trajectory(), task=task and task.name, world_size=self.world,
            **describe_loaders(list(loaders.values())), **(describe or {})), default=repr))

        if opts.sync_batchnorm and self.world > 1:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        self.module = module.to(device)
        self.target: nn.Module = getattr(module, 'target', module)
        self.channels_last = use_channels_last(opts.channels_last, device)
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.net = distribute(self.module, device)
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = sgd(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, opts.step_size, opts.gamma)
        self.streams = [Stream(loader, opts.seed + 7919 * k, self.rank, self.world, name)
                        for k, (name, loader) in enumerate(loaders.items())]
        self.steps_per_epoch = steps_per_epoch or max(s.batches_per_pass for s in self.streams)

        self.history: Dict[str, Any] = {'best_epoch': None, 'epochs': []}
        if task is not None:
            self.history = {'task': task.name, 'primary_metric': task.primary_metric,
                            'higher_is_better': task.higher_is_better, **self.history}
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.epoch = self.step = self.global_step = 0
        self.term_names: List[str] = []
        self.sums = torch.zeros(0, dtype=torch.float64)  # per term (and 'loss'): sum of batch mean * batch size
        self.seen = 0

    # -- checkpoints --

    def _resume(self, path: Path) -> None:
        ckpt = load(path, resumable=True)
        saved = json.loads(ckpt['fingerprint'])
        changed = {k: (saved.get(k), v) for k, v in self.fingerprint.items() if saved.get(k) != v}
        if changed:
            raise ValueError(f'{path} was written by a run with other settings (' + ', '.join(
                f'{k}: checkpoint {a!r}, now {b!r}' for k, (a, b) in changed.items()) + '). Resume with the same '
                'settings or start a new run elsewhere.')
        for stream in self.streams:
            if stream.sampler.not_replayable:
                raise ValueError(f'{path} cannot be continued exactly: {stream.name}: {stream.sampler.not_replayable}. '
                                 'Delete the checkpoint to start afresh, or seed the sampler.')
        self.module.load_state_dict(ckpt['model'])
        self.optimizer.load_state_dict(ckpt['optimizer'])
        self.scheduler.load_state_dict(ckpt['scheduler'])
        old_lr = rebase_lr(self.scheduler, self.opts.lr)
        if old_lr != self.opts.lr and self.rank == 0:
            _logger.info('resuming with base lr %g (the checkpoint had %g)', self.opts.lr, old_lr)
        self.epoch, self.step, self.global_step = ckpt['epoch'], ckpt['step'], ckpt['global_step']
        self.history = json.loads(ckpt['history'])
        self.term_names, self.sums, self.seen = list(ckpt['term_names']), ckpt['sums'], ckpt['seen']
        for stream, state in zip(self.streams, ckpt['streams']):
            stream.load_state_dict(state)
        set_rng_state(ckpt['rng'][self.rank], self.device)
        if self.history['best_epoch'] is not None and self.dir is not None:
            self.best_state = load_file(self.dir / BEST_NAME)
        if self.rank == 0:  # a progress line, as the epochs' summaries: the run does not start afresh
            into = f' and {self.step}/{self.steps_per_epoch} steps' if self.step else ''
            show_summary(f'{self.label}resuming from {path}: {self.epoch}/{self.opts.epochs} epochs{into} done',
                         self.opts.progress, _logger)

    def save(self, path: Path, resumable: bool = True) -> None:
        """A checkpoint of the current position; without ``resumable``, the weights and facts only.
        Collective when resumable: every rank sends its generator states."""
        rngs = all_gather(rng_state(self.device)) if resumable else None
        if self.rank != 0:
            return
        state = dict(self.facts, fingerprint=json.dumps(self.fingerprint), epoch=self.epoch, step=self.step,
                     global_step=self.global_step, model=self.module.state_dict(), history=json.dumps(self.history),
                     term_names=self.term_names, sums=self.sums, seen=self.seen,
                     streams=[s.state_dict() for s in self.streams])
        if resumable:
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(), rng=rngs)
        save(state, path)

    def _checkpoint_note(self) -> str:
        path = self.dir / CHECKPOINT_NAME if self.dir else None
        if path is None:
            return 'No checkpoint was written (checkpoint_dir=None).'
        if not path.exists():
            return f'No checkpoint had been written to {self.dir} yet.'
        ckpt = load(path)
        return (f'The last good checkpoint, {path} (epoch {ckpt["epoch"] + 1}, batch {ckpt["step"]}), is kept: '
                'fix the cause (lower lr, bad inputs) and rerun with the same checkpoint_dir to resume.')

    # -- training --

    def _train_step(self) -> List[float]:
        batches = [to_device(stream.next(), self.device, self.channels_last) for stream in self.streams]
        inputs = batches[0] if len(batches) == 1 else batches
        if self.check_batch is not None:
            self.check_batch(*inputs)
        with autocast(self.device, self.opts.amp):
            loss, terms = _loss_terms(self.net(*inputs))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        values = torch.stack([loss.detach().float()] + [t.detach().float() for t in terms.values()])
        if self.world > 1:  # every rank must see the same values, so that all stop together
            dist.all_reduce(values)
            values /= self.world
        values = values.tolist()  # the step's one host sync
        bad = [f'{name}={v}' for name, v in zip(terms, values[1:]) if not math.isfinite(v)]
        if bad or not math.isfinite(values[0]):
            raise NonFiniteLossError(
                f'Non-finite loss at step {self.global_step + 1} (epoch {self.epoch + 1}, batch {self.step + 1}/'
                f'{self.steps_per_epoch}): {", ".join(bad) or "the weighted sum overflowed"}; stopped before the '
                f'optimizer step. {self._checkpoint_note()}')
        self.optimizer.step()
        if not self.term_names:
            self.term_names, self.sums = ['loss', *terms], torch.zeros(len(values), dtype=torch.float64)
        size = batch_size(batches[0])
        self.sums += torch.tensor(values, dtype=torch.float64) * size
        self.seen += size
        return values

    def _train_epoch(self) -> None:
        steps, every = self.steps_per_epoch, self.opts.checkpoint_every
        self.module.train()
        started = time.perf_counter()
        with EpochProgress(self.opts.progress, f'{self.label}epoch {self.epoch + 1}/{self.opts.epochs}', steps,
                           self.step) as progress:
            while self.step < steps:
                values = self._train_step()
                self.step += 1
                self.global_step += 1
                row = {'step': self.global_step, 'epoch': self.epoch + 1, 'lr': self.optimizer.param_groups[0]['lr'],
                       **dict(zip(self.term_names, values)), 'time': round(time.perf_counter() - started, 3)}
                for logger in self.loggers:
                    logger.log_step(row)
                progress.update(self.step, {k: s / self.seen for k, s in zip(self.term_names, self.sums.tolist())})
                if every and self.step % every == 0 and self.step < steps:
                    self.save(self.dir / CHECKPOINT_NAME)

    def _end_epoch(self, seconds: float) -> None:
        record: Dict[str, Any] = {'epoch': self.epoch + 1, 'lr': self.optimizer.param_groups[0]['lr']}
        self.scheduler.step()
        record['train'] = dict(zip(self.term_names, (self.sums / max(self.seen, 1)).tolist()))
        if self.val_loader is not None:
            record['val'] = evaluate(self.target, self.val_loader, self.task, device=str(self.device),
                                     channels_last=self.channels_last, progress=self.opts.progress)
            self._select(record['val'][self.task.primary_metric])
        record['seconds'] = round(seconds, 3)
        self.history['epochs'].append(record)
        self.epoch, self.step, self.seen = self.epoch + 1, 0, 0
        self.sums = torch.zeros_like(self.sums)
        show_summary(summary(record, self.opts.epochs, self.label), self.opts.progress, _logger)
        for logger in self.loggers:
            logger.log_epoch(record, self.history)
        if self.dir is not None:
            self.save(self.dir / CHECKPOINT_NAME)
            if self.keep_epochs:
                self.save(self.dir / f'epoch_{self.epoch:03d}.pt')

    def _select(self, value: float) -> None:
        best = self.history['best_epoch']
        best_value = best and self.history['epochs'][best - 1]['val'][self.task.primary_metric]
        if best is not None and not (value > best_value if self.task.higher_is_better else value < best_value):
            return
        self.history['best_epoch'] = self.epoch + 1
        self.best_state = {k: v.detach().to('cpu', copy=True).contiguous()
                           for k, v in self.target.state_dict().items()}
        if self.dir is not None and self.rank == 0:
            save_weights(self.best_state, self.dir / BEST_NAME)

    def run(self) -> nn.Module:
        """Train to ``opts.epochs`` (from the checkpoint, when resuming); returns the target in eval mode, with
        the best epoch's weights and ``sentizoo_history``."""
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.rank == 0:  # partial files of a run killed mid-write: they can be GBs each
                for name in (CHECKPOINT_NAME, BEST_NAME, HISTORY_NAME):
                    remove_stale_temps(self.dir / name)
        if self.resume_from is not None:
            self._resume(self.resume_from)
        for logger in self.loggers:
            logger.start(self.global_step, self.steps_per_epoch)
        try:
            while self.epoch < self.opts.epochs:
                start = time.perf_counter()
                self._train_epoch()
                self._end_epoch(time.perf_counter() - start)
        finally:
            for logger in self.loggers:
                logger.close()
        if self.best_state is not None:
            self.target.load_state_dict(self.best_state)
        if self.opts.sync_batchnorm:
            revert_sync_batchnorm(self.target)
        self.target.sentizoo_history = self.history
        return self.target.eval()
