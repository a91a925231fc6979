"""Linear probes: which of the affect world's hidden cues can be read off a frozen backbone's features?

The paper's premise is that ST holds low-level stimuli (colour), HO the holistic layout (scene) and HP
high-level semantics (objects and their states), and that together they hold what emotion needs. On
the synthetic affect world (:mod:`training.datasets.synthetic`) every cue of every image is known, so
the premise can be tested directly: a linear model is fitted on frozen features of training images
and scored on held-out ones.

* **Features**: the three stage taps of :func:`sentizoo.stages.stage_features` (ResNet ``layer2``-``layer4``),
  each mean-pooled over its positions, concatenated (resnet18: 128 + 256 + 512 = 896 values), then
  standardised with the training images' mean and standard deviation.
* **Probes** (scikit-learn, closed form, so fast and deterministic; the ridge strength is chosen among
  0.1 ... 10^4 by efficient leave-one-out on the training images only): ridge regression for the colour
  cues (temperature, saturation, brightness; R^2 on the held-out images, 0 = no better than their
  mean), a ridge classifier (least squares on +-1 class codes) for the classes (scene, ANP, SLL
  emotion; held-out accuracy; chance = the most frequent training class's share).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

__all__ = ['PROBES', 'COLOUR_CUES', 'CLASS_CUES', 'cue_targets', 'cue_features', 'extract_features', 'fit_probe',
           'probe_all', 'majority_share', 'chance_row', 'standardise', 'heldout_view', 'joint_name',
           'join_features', 'budget_probes']

COLOUR_CUES = ('temperature', 'saturation', 'brightness')
CLASS_CUES = ('scene', 'anp', 'emotion')
PROBES = {**{cue: 'r2' for cue in COLOUR_CUES}, **{cue: 'accuracy' for cue in CLASS_CUES}}
"""Each probed cue and its held-out score."""
_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def cue_targets(cues: Sequence[Any]) -> Dict[str, np.ndarray]:
    """``{cue name: values}`` of :data:`PROBES` for a list of :class:`~training.datasets.synthetic.Cues`."""
    return {name: np.array([getattr(c, name) for c in cues], dtype=np.float64 if name in COLOUR_CUES else np.int64)
            for name in PROBES}


def cue_features(cues: Sequence[Any]) -> np.ndarray:
    """The true cues as features (the colour values and one-hot layout, noun and adjective): the ceiling
    of what a backbone's features can give a linear probe."""
    from .datasets.synthetic import ADJECTIVES, HORIZONS, NOUNS, TEXTURES
    columns = [np.array([[c.temperature, c.saturation, c.brightness] for c in cues])]
    for name, size in (('horizon', len(HORIZONS)), ('texture', len(TEXTURES)), ('noun', len(NOUNS)),
                       ('adjective', len(ADJECTIVES))):
        columns.append(np.eye(size)[[getattr(c, name) for c in cues]])
    # ANP and scene are products of their parts: a linear probe needs the pairs one-hot as well
    columns.append(np.eye(len(NOUNS) * len(ADJECTIVES))[[c.anp for c in cues]])
    columns.append(np.eye(len(HORIZONS) * len(TEXTURES))[[c.scene for c in cues]])
    return np.concatenate(columns, 1)


@torch.no_grad()
def extract_features(backbone: nn.Module, dataset: Dataset, *, batch_size: int = 128,
                     device: Union[str, torch.device] = 'cpu') -> np.ndarray:
    """(N, C1 + C2 + C3) mean-pooled stage taps of ``backbone`` (a timm ResNet/VGG) over ``dataset``'s images
    (the first item of each sample, normalised as the model expects)."""
    from sentizoo.stages import stage_features
    backbone.to(device).eval()
    rows = []
    for images, *_ in DataLoader(dataset, batch_size=batch_size):
        taps, _ = stage_features(backbone, images.to(device), with_logits=False)
        rows.append(torch.cat([t.float().mean((2, 3)) for t in taps], 1).cpu())
    return torch.cat(rows).numpy().astype(np.float64)


def majority_share(train: np.ndarray, test: np.ndarray) -> float:
    """Held-out accuracy of always answering the most frequent training class."""
    values, counts = np.unique(train, return_counts=True)
    return float(np.mean(test == values[counts.argmax()]))


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Both scaled with the training features' mean and standard deviation. A feature's deviation is floored
    at 1% of the median one, so a channel (nearly) constant on the training images cannot blow up on others."""
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.maximum(std, 0.01 * np.median(std) + 1e-12)
    return (x_train - mean) / std, (x_test - mean) / std


def fit_probe(kind: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
              ) -> float:
    """Fit a linear probe on standardised training features; its held-out R^2 (``kind='r2'``) or accuracy."""
    from sklearn.linear_model import RidgeClassifierCV, RidgeCV
    if kind == 'r2':
        probe = RidgeCV(alphas=_ALPHAS)
    elif kind == 'accuracy':
        if len(np.unique(y_train)) < 2:  # nothing to learn: the probe can only answer the one class
            return majority_share(y_train, y_test)
        probe = RidgeClassifierCV(alphas=_ALPHAS)
    else:
        raise ValueError(f"kind must be 'r2' or 'accuracy', got {kind!r}")
    x_train, x_test = standardise(x_train, x_test)
    return float(probe.fit(x_train, y_train).score(x_test, y_test))


FeatureSets = Mapping[str, Tuple[np.ndarray, np.ndarray]]


def probe_all(features: FeatureSets, train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
              cues: Sequence[str] = tuple(PROBES), progress: Callable[[str], None] = lambda _: None
              ) -> Dict[str, Dict[str, float]]:
    """``{feature set: {cue: held-out score}}`` for every ``(train, test)`` feature pair in ``features``."""
    table: Dict[str, Dict[str, float]] = {}
    for name, (x_train, x_test) in features.items():
        progress(name)
        table[name] = {cue: fit_probe(PROBES[cue], x_train, train[cue], x_test, test[cue]) for cue in cues}
    return table


def chance_row(train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """What a probe that ignores the image scores: R^2 0 (the mean) and the majority class's share."""
    return {cue: 0.0 if PROBES[cue] == 'r2' else majority_share(train[cue], test[cue]) for cue in PROBES}


def heldout_view(image_size: int) -> Tuple[Callable, int]:
    """``(transform, render size)`` of the world's images as every evaluation sees them: rendered at the paper's
    resize for ``image_size`` and centre-cropped (:func:`training.downstream.split_transforms`)."""
    from sentizoo.datasets import paper_data_config, resize_size

    from .downstream import split_transforms
    return split_transforms(image_size)['test'], resize_size(paper_data_config(image_size))


def joint_name(tags: Sequence[str]) -> str:
    """The row name of several feature sets side by side, e.g. ``ST+HO+HP``."""
    return '+'.join(t.upper() for t in tags)


def join_features(features: FeatureSets, tags: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """The ``(train, test)`` features of ``tags`` concatenated, split by split."""
    return tuple(np.concatenate(parts, 1) for parts in zip(*(features[t] for t in tags)))


def budget_probes(arch: str, image_size: int, n_train: int, n_test: int, seeds: Sequence[int],
                  device: str = 'cpu') -> Dict[int, Dict[str, float]]:
    """Emotion probes of the zoo's ST, HO, HP backbones (``SENTIZOO_HOME``) and of the three together, fitted on
    the ``n_train`` labelled training images of each downstream seed and scored on its ``n_test`` test images:
    what the frozen teachers give a linear classifier at a fine-tuning run's label budget."""
    import timm

    from sentizoo.amalgamation import TEACHER_TAGS

    from .datasets.synthetic import SyntheticEmotion
    transform, size = heldout_view(image_size)
    models = {tag: timm.create_model(f'senti_{arch}.{tag}', pretrained=True) for tag in TEACHER_TAGS}
    table = {}
    for seed in seeds:
        data = [SyntheticEmotion(n, split, transform, seed=seed, size=size)
                for split, n in (('train', n_train), ('test', n_test))]
        train, test = ({'emotion': np.array(d.targets)} for d in data)
        features = {tag: tuple(extract_features(m, d, device=device) for d in data) for tag, m in models.items()}
        features[joint_name(TEACHER_TAGS)] = join_features(features, TEACHER_TAGS)
        probed = probe_all(features, train, test, cues=('emotion',))
        table[seed] = {name: row['emotion'] for name, row in probed.items()}
    return table


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    import os
    p = argparse.ArgumentParser(prog='python -m training.probes', description=budget_probes.__doc__ + (
        ' The images are the synthetic affect world\'s (SYNTHETIC), as in python -m training.study.'))
    p.add_argument('--zoo', required=True, help='zoo folder holding senti_<arch>.{st,ho,hp} (e.g. runs/study/zoo)')
    p.add_argument('--arch', default='resnet18', help='backbone (default: resnet18)')
    p.add_argument('--image-size', type=int, default=64, help='crop size (default: 64, the study\'s)')
    p.add_argument('--n-train', type=int, default=512, help='labelled training images (default: 512)')
    p.add_argument('--n-test', type=int, default=1000, help='test images (default: 1000)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='downstream seeds (default: 0 1 2)')
    args = p.parse_args(argv)
    os.environ['SENTIZOO_HOME'] = os.path.abspath(args.zoo)
    table = budget_probes(args.arch, args.image_size, args.n_train, args.n_test, args.seeds)
    names = list(next(iter(table.values())))
    print(f'SYNTHETIC: emotion probes on the synthetic affect world, {args.n_train} labelled images per seed, '
          f'{args.n_test} test images (held-out accuracy)\n')
    print(f'| seed | {" | ".join(n.upper() for n in names)} |\n|---' + '|---' * len(names) + '|')
    for seed, row in table.items():
        print(f'| {seed} | ' + ' | '.join(f'{row[n]:.3f}' for n in names) + ' |')
    print('| mean | ' + ' | '.join(f'{np.mean([r[n] for r in table.values()]):.3f}' for n in names) + ' |')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
