"""GPU-hours and wall time of each release job, from measured throughput.

The rate of a plain training step (images/s per GPU, resnet50, 224 px, bf16) comes from, in this order:

1. ``benchmarks/gpu.json``, which ``python benchmarks/gpu.py`` writes when it runs on a GPU (with its own
   measured pretext and amalgamation step ratios);
2. the public anchor :data:`PUBLIC_ANCHOR`: NVIDIA's published ResNet-50 v1.5 training throughput on one A100
   with automatic mixed precision (about 2,500 images/s), scaled by the step ratios this project measured
   (BENCHMARKS.md, "Pretext training step" and "Amalgamation step", resnet50).

Other backbones scale by their GMACs (``training.model_card.model_stats``). A pre-training epoch is one pass over
the larger of its two task datasets, and a pretext step costs ``ratio`` plain steps of its batch; a downstream
run costs ``epochs x train images`` plain steps (times the amalgamation ratio) plus one forward (a third of a
step) of the validation images every epoch and of the test images once. Jobs are assumed to scale linearly
with their GPUs. The dataset sizes are counted by the plan's dataset check; without ``--data-root`` the
published sizes (:data:`PUBLISHED_SIZES`) stand in.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, Mapping

from .graph import Job

__all__ = ['Throughput', 'PUBLIC_ANCHOR', 'GPU_JSON', 'PUBLISHED_SIZES', 'load_throughput', 'estimate']

GPU_JSON = Path(__file__).resolve().parents[2] / 'benchmarks' / 'gpu.json'
FORWARD = 1 / 3  # a forward pass, as a share of a training step (forward + backward ~ 3 forwards)
CPU_JOB_HOURS = {'export': 0.02, 'verify': 0.05, 'report': 0.02, 'cards': 0.1, 'publish': 0.2}
"""Wall hours of the short jobs (reading and writing files, a few thousand forward passes)."""


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Images/s of a plain training step of ``arch`` on one GPU, and the other steps as ratios of it."""
    images_per_second: float
    arch: str
    pretext: Mapping[str, float]
    amalgamation: float
    source: str


PUBLIC_ANCHOR = Throughput(
    images_per_second=2500.0, arch='resnet50', pretext={'st': 1.75, 'ho': 1.96, 'hp': 2.20}, amalgamation=3.89,
    source='public anchor: ResNet-50 v1.5 training on one A100 with AMP, about 2,500 images/s (NVIDIA '
           'DeepLearningExamples, PyTorch ResNet50 v1.5 performance tables), scaled by the step ratios measured '
           'in BENCHMARKS.md (resnet50, CPU: pretext ST 1.75x, HO 1.96x, HP 2.20x; amalgamation 3.89x)')

PUBLISHED_SIZES: Dict[str, Dict[str, int]] = {
    'places365': {'train': 1_803_460, 'val': 36_500},  # docs/datasets.md
    'vso': {'train': 400_000, 'test': 100_000},  # an assumption (the CC subset is not counted in print)
    'artemis': {'train': 386_481, 'val': 22_734, 'test': 45_469},  # 454,684 annotations split 85/5/10 by artwork
    'fi': {'train': 18_646, 'val': 1_166, 'test': 3_496},  # 23,308 images, 80/5/15
    'unbiasedemo': {'train': 2_192, 'val': 244, 'test': 609},  # 3,045 images, 72/8/20
    'emotic': {'train': 16_500, 'val': 2_357, 'test': 4_714},  # 23,571 images, 70/10/20
    'emotion6': {'train': 1_426, 'val': 158, 'test': 396},  # 1,980 images, 72/8/20
    'abstract': {'train': 201, 'val': 23, 'test': 56},  # 280 paintings, 72/8/20
}
"""Split sizes from the datasets' papers and docs/datasets.md, for a plan made without the data."""


def load_throughput(path: Path = GPU_JSON) -> Throughput:
    """The GPU figures of ``benchmarks/gpu.py`` when it has written ``path``, else :data:`PUBLIC_ANCHOR`."""
    if not path.is_file():
        return PUBLIC_ANCHOR
    figures = json.loads(path.read_text())
    return Throughput(images_per_second=figures['plain_images_per_second'], arch=figures['arch'],
                      pretext=figures['pretext_vs_plain'], amalgamation=figures['amalgamation_vs_plain'],
                      source=f'measured: {path.name} ({figures["device"]}, {figures["date"]})')


def _scale(arch: str, reference: str) -> float:
    """How many times slower ``arch`` trains than ``reference`` (their GMACs at 224 px)."""
    from ..model_card import model_stats
    return model_stats(f'senti_{arch}', 0, 224)[1] / model_stats(f'senti_{reference}', 0, 224)[1]


def estimate(job: Job, sizes: Mapping[str, Mapping[str, int]], rate: Throughput) -> Dict[str, float]:
    """``{'gpu_hours', 'hours'}`` of ``job`` with datasets of ``sizes`` (``{dataset: {split: images}}``)."""
    if job.stage == 'pretrain':
        from ..pretrain import SCHEDULES
        tag, arch = job.cost['tag'], job.cost['arch']
        epochs = SCHEDULES[tag][0]
        images = max(sizes[d]['train'] for d in job.datasets)
        seconds = epochs * images * rate.pretext[tag] * _scale(arch, rate.arch) / rate.images_per_second
    elif job.stage == 'downstream':
        seconds = _downstream_seconds(job, sizes, rate)
    else:
        hours = CPU_JOB_HOURS[job.stage]
        return {'gpu_hours': hours * job.gpus * job.nodes, 'hours': hours}
    gpus = max(1, job.gpus) * job.nodes
    return {'gpu_hours': seconds / 3600, 'hours': seconds / 3600 / gpus}


def _downstream_seconds(job: Job, sizes: Mapping[str, Mapping[str, int]], rate: Throughput) -> float:
    from ..downstream import load_config
    config = load_config(job.args[job.args.index('--config') + 1])
    split = sizes[config['dataset']]
    epochs = config['train'].get('epochs', 30)
    steps = 0.0
    for run in config['runs'].values():
        ratio = rate.amalgamation if run['mode'] == 'amalgamate' else 1.0
        steps += epochs * (split['train'] * ratio + split['val'] * FORWARD) + split['test'] * FORWARD
    return steps * _scale(job.cost['arch'], rate.arch) / rate.images_per_second
