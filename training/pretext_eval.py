"""How well a pre-trained ST, HO or HP model does its pretext tasks on held-out images, beside a reference.

    python -m training.pretext_eval runs/pretrain/hp_resnet18/final.pt --samples 1000

A falling training loss says little on its own: each task is measured on images pre-training never read
(:data:`training.pretrain.HELDOUT_SPLITS`, centre crops) and printed beside what a model that learned
nothing about the images would score:

================  ===========================  ======================================================  =======================
task              metric                       reference                                               goal
================  ===========================  ======================================================  =======================
scene, jigsaw,    accuracy and cross-entropy   chance: ``1 / K`` and ``ln K`` (``K`` classes or        accuracy >= 5x chance
anp                                            permutations)                                           and loss <= 0.7 ln K
colorization      MSE of the scaled ab map     the mean ab of the training images, everywhere          <= 0.8x the reference
super_resolution  MSE of the RGB image         each low-resolution input's own mean colour,            <= 0.8x the reference
                                               everywhere (bilinear upsampling is shown as well)
captioning        per-token cross-entropy      a unigram model of the training captions (add-one       below the reference
                  (teacher forcing, words +    smoothed over the vocabulary)
                  end token, no regulariser)
================  ===========================  ======================================================  =======================

Jigsaw permutations are drawn from a generator seeded by ``seed``, so a measurement repeats exactly.

**BatchNorm statistics.** Pre-training normalises each task's batch by that batch's own statistics, but the
running statistics a model stores average the inputs of both its tasks, which can differ a lot (ST: grey
64 px images for colorization, colour 16 px images for super-resolution; HO: whole images and jigsaw tiles).
No task was trained under that blend. So each task is measured with the backbone's BatchNorm statistics
re-estimated from that task's own training inputs (:func:`task_statistics`; the population version of what
training used, as Wu and Johnson recommend for batches drawn from different domains in "Rethinking 'Batch'
in BatchNorm", 2021), and the goals are judged on that. The score with the stored statistics, what the
exported backbone carries, is reported beside it (``extra['stored_statistics']``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, Subset

from .perception import PerceptionModel
from .pretext.base import ClassificationTask, PretextTask
from .pretext.captioning import PAD, Captioning
from .pretext.colorization import Colorization
from .pretext.jigsaw import Jigsaw
from .pretext.super_resolution import SuperResolution

__all__ = ['PretextScore', 'evaluate_pretext', 'task_statistics', 'load_perception_model', 'format_scores',
           'scores_table', 'unigram_cross_entropy', 'main']

ACCURACY_GOAL, LOSS_GOAL, MSE_GOAL = 5.0, 0.7, 0.8
"""Competence goals: accuracy >= 5x chance, loss <= 0.7 ln K, MSE <= 0.8x the trivial predictor's."""


@dataclasses.dataclass
class PretextScore:
    """One task's held-out measurement: ``value`` of ``metric`` beside ``reference`` (lower is better,
    except accuracy), measured with the task's own BatchNorm statistics; ``extra`` holds the other figures
    (``stored_statistics``: the value with the model's stored statistics; accuracy and chance for
    classification, the bilinear MSE for super-resolution)."""
    task: str
    metric: str
    value: float
    reference: float
    reference_name: str
    goal: str
    passed: bool
    samples: int
    extra: Dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """``value / reference``: below 1 means better than the reference."""
        return self.value / self.reference if self.reference else math.inf


def _batches(task: PretextTask, dataset: Dataset, batch_size: int, device: torch.device, drop_last: bool = False):
    """``(inputs, targets)`` of ``task`` over ``dataset`` in order, prepared on ``device``."""
    from sentizoo.runtime import to_device  # the training step's own batch transfer
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=task.collate_fn, drop_last=drop_last):
        yield task.prepare(to_device(batch, device))


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextlib.contextmanager
def task_statistics(task: PretextTask, backbone: nn.Module, dataset: Dataset, batch_size: int,
                    device: torch.device) -> Iterator[None]:
    """Within the block, ``backbone``'s BatchNorm running statistics are those of ``task``'s inputs over
    ``dataset`` (an equal-weight average over its batches, as :class:`~torch.nn.BatchNorm2d` computes with
    ``momentum=None``); on exit the stored statistics are back, bit for bit. A last, smaller batch is left
    out when there is a full one (it would weigh as much as a full batch, and may hold a single image, whose
    1x1 maps have no variance)."""
    norms = [m for m in backbone.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    stored = [(m.momentum, {k: v.clone() for k, v in m.named_buffers(recurse=False)}) for m in norms]
    training = backbone.training
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        backbone.train()
        for inputs, _ in _batches(task, dataset, batch_size, device, drop_last=len(dataset) > batch_size):
            task(backbone, inputs)
        backbone.eval()
        yield
    finally:
        for m, (momentum, buffers) in zip(norms, stored):
            m.momentum = momentum
            for k, v in buffers.items():
                getattr(m, k).copy_(v)
        backbone.train(training)


def _classification(task: PretextTask, backbone, dataset: Dataset, batch_size: int, device) -> PretextScore:
    correct, loss, n = 0, 0.0, 0
    for inputs, labels in _batches(task, dataset, batch_size, device):
        logits = task(backbone, inputs).float()
        loss += F.cross_entropy(logits, labels, reduction='sum').item()
        correct += int((logits.argmax(1) == labels).sum())
        n += len(labels)
    classes = len(task.permutations) if isinstance(task, Jigsaw) else task.num_classes
    chance_loss, accuracy = math.log(classes), correct / n
    passed = accuracy >= ACCURACY_GOAL / classes and loss / n <= LOSS_GOAL * chance_loss
    return PretextScore(task.name, 'cross-entropy', loss / n, chance_loss, f'chance (ln {classes})',
                        f'accuracy >= {ACCURACY_GOAL:g}x chance and loss <= {LOSS_GOAL:g} ln K', passed, n,
                        {'accuracy': accuracy, 'chance_accuracy': 1 / classes})


def _mean_ab(task: Colorization, dataset: Dataset, batch_size: int, device) -> torch.Tensor:
    """The mean of the scaled ab target over ``dataset``: the trivial colorization."""
    total, pixels = torch.zeros(2, device=device), 0
    for _, ab in _batches(task, dataset, batch_size, device):
        total += ab.sum((0, 2, 3))
        pixels += ab[:, 0].numel()
    return total / pixels


def _colorization(task: Colorization, backbone, dataset: Dataset, train: Dataset, batch_size: int, device
                  ) -> PretextScore:
    mean_ab = _mean_ab(task, train, batch_size, device).view(1, 2, 1, 1)
    error, trivial, n = 0.0, 0.0, 0
    for inputs, ab in _batches(task, dataset, batch_size, device):
        error += F.mse_loss(task(backbone, inputs).float(), ab, reduction='sum').item()
        trivial += F.mse_loss(mean_ab.expand_as(ab), ab, reduction='sum').item()
        n += ab.numel()
    return PretextScore(task.name, 'MSE (ab)', error / n, trivial / n, 'training-set mean ab',
                        f'<= {MSE_GOAL:g}x the reference', error <= MSE_GOAL * trivial, len(dataset))


def _super_resolution(task: SuperResolution, backbone, dataset: Dataset, batch_size: int, device) -> PretextScore:
    error, trivial, bilinear, n = 0.0, 0.0, 0.0, 0
    for small, target in _batches(task, dataset, batch_size, device):
        mean = small.new_tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
        rgb = small * small.new_tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1) + mean  # the input, in [0, 1]
        error += F.mse_loss(task(backbone, small).float(), target, reduction='sum').item()
        trivial += F.mse_loss(rgb.mean((2, 3), keepdim=True).expand_as(target), target, reduction='sum').item()
        upsampled = F.interpolate(rgb, size=target.shape[-2:], mode='bilinear', align_corners=False)
        bilinear += F.mse_loss(upsampled, target, reduction='sum').item()
        n += target.numel()
    return PretextScore(task.name, 'MSE (RGB)', error / n, trivial / n, "the input's mean colour",
                        f'<= {MSE_GOAL:g}x the reference', error <= MSE_GOAL * trivial, len(dataset),
                        {'bilinear_mse': bilinear / n})


def unigram_cross_entropy(train_tokens: torch.Tensor, test_tokens: torch.Tensor, vocab_size: int) -> float:
    """Per-token cross-entropy on ``test_tokens`` of the add-one unigram model of ``train_tokens``.

    Both are (N, T) id tensors from ``<sos>``, padded with ``<pad>``; the predicted tokens are the ones after
    ``<sos>`` (words and ``<eos>``), padding excluded, as in the captioning loss.
    """
    counts = torch.bincount(train_tokens[:, 1:][train_tokens[:, 1:] != PAD], minlength=vocab_size).double() + 1
    counts[PAD] = 0  # never predicted
    log_p = (counts / counts.sum()).log()
    targets = test_tokens[:, 1:][test_tokens[:, 1:] != PAD]
    return float(-log_p[targets].mean())


def _captioning(task: Captioning, backbone, dataset: Dataset, train: Dataset, batch_size: int, device
                ) -> PretextScore:
    loss, n, tokens = 0.0, 0, []
    for (images, inputs), targets in _batches(task, dataset, batch_size, device):
        logits, _ = task.head(task.encode(backbone, images), inputs)
        loss += F.cross_entropy(logits.float().transpose(1, 2), targets[:, 1:], ignore_index=PAD,
                                reduction='sum').item()
        n += int((targets[:, 1:] != PAD).sum())
        tokens.append(targets.cpu())
    train_tokens = task.vocab.encode_batch(_utterances(train))
    width = max(t.shape[1] for t in tokens)
    test_tokens = torch.cat([F.pad(t, (0, width - t.shape[1]), value=PAD) for t in tokens])
    unigram = unigram_cross_entropy(train_tokens, test_tokens, len(task.vocab))
    return PretextScore(task.name, 'per-token cross-entropy', loss / n, unigram, 'unigram model of the captions',
                        'below the reference', loss / n < unigram, len(dataset))


def _utterances(dataset: Dataset) -> List[str]:
    if isinstance(dataset, Subset):
        every = dataset.dataset.utterances  # computed once: a synthetic dataset renders them from its cues
        return [every[i] for i in dataset.indices]
    return list(dataset.utterances)


def _measure(task: PretextTask, backbone: nn.Module, heldout: Dataset, train: Dataset, batch_size: int,
             device: torch.device) -> PretextScore:
    args = (task, backbone, heldout)
    if isinstance(task, (ClassificationTask, Jigsaw)):
        return _classification(*args, batch_size, device)
    if isinstance(task, Colorization):
        return _colorization(*args, train, batch_size, device)
    if isinstance(task, SuperResolution):
        return _super_resolution(*args, batch_size, device)
    if isinstance(task, Captioning):
        return _captioning(*args, train, batch_size, device)
    raise TypeError(f'evaluate_pretext: no held-out measurement for task {task.name!r} ({type(task).__name__})')


@torch.no_grad()
def evaluate_pretext(model: PerceptionModel, heldout: Mapping[str, Dataset], train: Mapping[str, Dataset], *,
                     batch_size: int = 64, device: Union[str, torch.device] = 'cpu', seed: int = 0
                     ) -> List[PretextScore]:
    """Score each task of ``model`` on ``heldout[task]``, with the backbone's BatchNorm statistics of that
    task's inputs over ``train[task]`` (see the module's docstring) and, in ``extra['stored_statistics']``,
    with the model's stored ones. ``train[task]`` also gives the references that need the training data (the
    mean ab, the unigram model). The model is left in eval mode on ``device``, its statistics unchanged."""
    device = torch.device(device)
    model.to(device).eval()
    scores = []
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        for name, task in model.tasks.items():
            if name not in train:
                raise KeyError(f'evaluate_pretext: no training data for task {name!r}, needed to estimate its '
                               f'BatchNorm statistics')
            torch.manual_seed(seed)  # the same jigsaw permutations for both measurements
            stored = _measure(task, model.backbone, heldout[name], train[name], batch_size, device)
            with task_statistics(task, model.backbone, train[name], batch_size, device):
                torch.manual_seed(seed)
                score = _measure(task, model.backbone, heldout[name], train[name], batch_size, device)
            score.extra['stored_statistics'] = stored.value
            scores.append(score)
    return scores


def load_perception_model(checkpoint: Union[str, Path], samples: Optional[int] = None, split: Optional[str] = None
                          ) -> Tuple[PerceptionModel, Dict[str, Dataset], Dict[str, Dataset]]:
    """The perception model of a ``training.pretrain`` checkpoint, with its held-out and training datasets
    per task (``samples``: at most that many of each; the vocabulary is rebuilt from the full training data,
    as pre-training built it). ``split``: the held-out split to read (default: each dataset's own,
    :data:`training.pretrain.HELDOUT_SPLITS`; ``'val'`` for choices, keeping the test split for the report)."""
    from sentizoo.checkpoint import read as read_checkpoint
    from .pretrain import PretrainConfig, build_datasets, build_model_and_data
    ckpt = read_checkpoint(checkpoint)
    if 'config' not in ckpt or 'model' not in ckpt:
        raise ValueError(f'{checkpoint} is not a training.pretrain checkpoint (final.pt, last.pt or epoch_NNN.pt)')
    config = PretrainConfig(**ckpt['config'])
    model, tasks, _ = build_model_and_data(config)
    model.load_state_dict(ckpt['model'])
    limited = dataclasses.replace(config, max_samples=samples or config.max_samples)
    heldout = dict(build_datasets(limited, heldout=True, split=split))
    train = {name: dataset for name, dataset, _ in tasks}
    if samples:
        train = {name: d if len(d) <= samples else Subset(d, range(samples)) for name, d in train.items()}
    return model, heldout, train


def format_scores(scores: Sequence[PretextScore]) -> str:
    """One line: ``task value (reference name value)`` per task, accuracy beside chance where measured, and the
    value with the stored BatchNorm statistics."""
    parts = []
    for s in scores:
        text = f'{s.task} {s.value:.4g} ({s.reference_name} {s.reference:.4g}'
        if 'accuracy' in s.extra:
            text += f'; accuracy {s.extra["accuracy"]:.3f} vs {s.extra["chance_accuracy"]:.3f}'
        if 'stored_statistics' in s.extra:
            text += f'; stored BN statistics {s.extra["stored_statistics"]:.4g}'
        parts.append(text + ')')
    return ', '.join(parts)


def scores_table(scores: Mapping[str, Sequence[PretextScore]]) -> str:
    """A Markdown table of every model's scores (``{model tag: scores}``)."""
    lines = ['| model | task | metric | held-out | reference | ratio | accuracy (chance) | stored BN statistics '
             '(ratio) | goal | met |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for tag, rows in scores.items():
        for s in rows:
            accuracy = (f'{s.extra["accuracy"]:.3f} ({s.extra["chance_accuracy"]:.3f})' if 'accuracy' in s.extra
                        else '—')
            stored = s.extra.get('stored_statistics')
            stored = f'{stored:.4g} ({stored / s.reference:.2f})' if stored is not None and s.reference else '—'
            lines.append(f'| {tag.upper()} | {s.task} | {s.metric} | {s.value:.4g} | {s.reference:.4g} '
                         f'({s.reference_name}) | {s.ratio:.2f} | {accuracy} | {stored} | {s.goal} | '
                         f'{"yes" if s.passed else "**no**"} |')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m training.pretext_eval', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint', type=Path, help='a training.pretrain checkpoint (final.pt)')
    p.add_argument('--samples', type=int, default=1000, help='held-out images per task (default: 1000)')
    p.add_argument('--batch-size', type=int, default=64, help='evaluation batch size (default: 64)')
    p.add_argument('--device', default='cpu', help='cpu, cuda, cuda:1, ... (default: cpu)')
    p.add_argument('--seed', type=int, default=0, help='seed of the jigsaw permutations drawn (default: 0)')
    p.add_argument('--split', choices=('val', 'test'), help="held-out split: 'val' to make a choice (a recipe, a "
                   "learning rate), 'test' for the report (default: each dataset's held-out split, the synthetic "
                   "world's test)")
    args = p.parse_args(argv)
    try:
        model, heldout, train = load_perception_model(args.checkpoint, args.samples, args.split)
    except (OSError, ValueError) as e:
        print(f'python -m training.pretext_eval: error: {e}', file=sys.stderr)
        return 2
    scores = evaluate_pretext(model, heldout, train, batch_size=args.batch_size, device=args.device, seed=args.seed)
    split = f'the {args.split} split' if args.split else "each dataset's held-out split"
    if any(getattr(d, 'world', None) is not None for d in heldout.values()):  # the synthetic affect world's images
        print(f'SYNTHETIC: held-out images of the synthetic affect world ({split}), not real data\n')
    else:
        print(f'Held-out images: {split}\n')
    print(scores_table({model.kind: scores}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
