"""Pretext training steps (ST, HO, HP) vs a plain classification step, and the Places-style loader rate.

    python benchmarks/pretext.py [--archs resnet18 resnet50] [--size 224] [--batch 4] [--rounds 3]

1. For each backbone: the time of one training step (forward, backward, SGD update) of a
   plain classifier (backbone + GAP + Linear, cross-entropy) and of the ST, HO and HP perception
   models, on the same batch size and input size, in one process. Each pretext step consumes one
   batch per task, as in pre-training. Ratios are per model vs the plain step. A second table splits
   each pretext step: each task's forward + backward alone, the SGD update, and the head sizes.
2. Data loading: ~200 JPEGs of 256x256 written in the official Places365 layout (devkit lists +
   data_256/), read by ``training.datasets.places365.Places365`` with the paper's augmentation
   through a DataLoader with 2 workers; images/s vs the images/s the HO step consumes (2 tasks x batch
   per step).

CPU only unless ``--device cuda``. Prints a Markdown section for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # training/ of the checkout

from sentizoo.runtime import sgd  # noqa: E402  (the optimizer of the training loop)


def fastest_steps(steps: Dict[str, Callable[[], None]], rounds: int,
                  synchronize: Callable[[], None] = lambda: None) -> Dict[str, float]:
    """Seconds per step of each function: one warm-up each, then ``rounds`` rounds in which every
    function runs once (interleaved, so all see the same background load); the fastest round counts.
    ``synchronize`` waits for the device (``torch.cuda.synchronize`` on a GPU)."""
    for step in steps.values():
        step()  # warm-up: allocations, lazy initialisation
    synchronize()
    best = {name: float('inf') for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            synchronize()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def _plain_step(arch: str, batch: int, size: int, device: torch.device) -> Callable[[], None]:
    import timm
    model = timm.create_model(arch, num_classes=365).to(device).train()
    opt = sgd(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(batch, 3, size, size, device=device), torch.randint(0, 365, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def _pretext_steps(kind: str, arch: str, batch: int, size: int, device: torch.device
                   ) -> Tuple[Dict[str, Callable[[], None]], Dict[str, int]]:
    """The full training step of ``kind`` and its parts (each task's forward + backward, the SGD update),
    and the parameter count of the backbone and of each task head."""
    from torch.utils.data import DataLoader

    from sentizoo.runtime import to_device
    from sentizoo.sampling import Stream
    from training.pretrain import PretrainConfig, build_model_and_data
    config = PretrainConfig(model=kind, arch=arch, dataset='synthetic', image_size=size, batch_size=batch,
                            max_samples=max(batch, 64), workers=0, init='random').resolved()
    model, tasks, _ = build_model_and_data(config)
    model.to(device).train()
    loaders = [DataLoader(data, batch, shuffle=True, drop_last=True, collate_fn=collate) for _, data, collate in tasks]
    batches = [to_device(Stream(loader, seed=0).next(), device) for loader in loaders]
    opt = sgd(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        loss, _ = model.training_step(*batches)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def task_step(name: str, batch_: Any) -> Callable[[], None]:
        return lambda: model.tasks[name].step(model.backbone, batch_).backward()

    parts = {kind: step, **{f'{kind}:{name}': task_step(name, b) for name, b in zip(model.tasks, batches)},
             f'{kind}:sgd': opt.step}
    params = {'backbone': sum(p.numel() for p in model.backbone.parameters()),
              **{name: sum(p.numel() for p in task.parameters()) for name, task in model.tasks.items()}}
    return parts, params


def write_places(root: Path, n: int = 204) -> int:
    """``n`` 256x256 JPEGs (synthetic scenes) in the official Places365 layout; returns the count."""
    from training.datasets.miniature import PLACES_CATEGORIES, write_places365_official
    from training.datasets.synthetic import AffectWorld
    per_class = -(-n // len(PLACES_CATEGORIES))
    truth = write_places365_official(root, per_class=per_class, val_per_class=1)
    world = AffectWorld(seed=0, size=256)
    for i, (path, _) in enumerate(truth['train']):
        world.sample(i)[0].save(path, quality=90)  # realistic 256 px content instead of the 8 px fixture
    return len(truth['train'])


def loader_rate(root: Path, batch: int, workers: int, passes: int = 2) -> float:
    """Images/s of the Places365 reader + the paper's augmentation through a DataLoader."""
    from torch.utils.data import DataLoader
    from training.datasets.common import pretrain_transform
    from training.datasets.places365 import Places365
    dataset = Places365(root, 'train', transform=pretrain_transform())
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    next(iter(loader))  # start the workers
    t0, seen = time.perf_counter(), 0
    for _ in range(passes):
        for images, _ in loader:
            seen += images.shape[0]
    return seen / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--archs', nargs='+', default=['resnet18', 'resnet50'])
    p.add_argument('--size', type=int, default=224,
                   help="input (crop) size of every step; the paper's 224 (jigsaw: 64 px tiles of 192 px)")
    p.add_argument('--batch', type=int, default=4, help='batch per task')
    p.add_argument('--rounds', type=int, default=3, help='timed rounds (each step once per round) after 1 warm-up')
    p.add_argument('--threads', type=int, default=1, help='torch threads (1: steadiest on shared cores)')
    p.add_argument('--images', type=int, default=204, help='JPEGs for the loader measurement')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--device', default='cpu')
    args = p.parse_args()
    if args.images < 32:
        p.error('--images must be at least 32: the loader is timed in batches of 32')
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: List[str] = []
    ho_rate: Dict[str, float] = {}
    breakdown: List[str] = []
    for arch in args.archs:
        steps, params = {'plain': _plain_step(arch, args.batch, args.size, device)}, {}
        for kind in ('st', 'ho', 'hp'):
            parts, params[kind] = _pretext_steps(kind, arch, args.batch, args.size, device)
            steps.update(parts)
        seconds = fastest_steps(steps, args.rounds)
        ho_rate[arch] = 2 * args.batch / seconds['ho']  # HO reads one Places batch per task
        rows.append(f'| {arch} | plain classification (GAP + Linear, CE) | {seconds["plain"] * 1000:.0f} | 1.00 |')
        for kind in ('st', 'ho', 'hp'):
            ratio = seconds[kind] / seconds['plain']
            rows.append(f'| {arch} | {kind.upper()} | {seconds[kind] * 1000:.0f} | {ratio:.2f} |')
            tasks = [k for k in params[kind] if k != 'backbone']
            breakdown.append(f'| {arch} | {kind.upper()} | {params[kind]["backbone"] / 1e6:.1f}M | ' + ', '.join(
                f'{t} {params[kind][t] / 1e6:.2f}M: {seconds[f"{kind}:{t}"] * 1000:.0f} ms' for t in tasks)
                + f' | {seconds[f"{kind}:sgd"] * 1000:.0f} |')
        print('\n'.join(rows[-4:]), file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix='places_bench_'))
    try:
        n = write_places(tmp, args.images)
        rate = loader_rate(tmp, 32, args.workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    command = ' '.join(['python', 'benchmarks/pretext.py', *sys.argv[1:]])
    print(f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs; '
          f'Python {platform.python_version()}, torch {torch.__version__}; {args.threads} torch thread(s), '
          f'device {device}. Command: `{command}`. Batch {args.batch} per task, {args.size} px input, '
          f'fastest of {args.rounds} interleaved rounds after 1 warm-up, synthetic data already in memory.\n')
    print('| Backbone | Step | ms / step | vs plain |\n|---|---|---|---|')
    print('\n'.join(rows))
    print('\nWhere a pretext step goes: parameters of the backbone and of each task head; each task\'s forward + '
          'backward alone; the SGD update of all parameters.\n')
    print('| Backbone | Model | backbone params | per task: head params: fwd+bwd | SGD update ms |\n'
          '|---|---|---|---|---|')
    print('\n'.join(breakdown))
    print(f'\nPlaces365 loader ({n} JPEGs 256x256, official devkit layout, `Places365` + resize 256 + random crop '
          f'224 + flip + ToTensor, batch 32, {args.workers} workers): {rate:.0f} images/s. The HO step at '
          f'{args.size} px consumes ' + ', '.join(f'{r:.1f} images/s ({a})' for a, r in ho_rate.items()) + '.')


if __name__ == '__main__':
    main()
