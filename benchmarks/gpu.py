"""The GPU figures in one command (at most 8 minutes on one GPU), as a "## GPU" section of BENCHMARKS.md and as
``benchmarks/gpu.json`` (what ``python -m training.release plan`` estimates GPU-hours from).

    python benchmarks/gpu.py            # on a machine with a CUDA GPU; writes the section and gpu.json
    python benchmarks/gpu.py --smoke    # tiny sizes on the CPU in seconds (the tests run it); writes nothing

1. Plain fine-tuning of resnet50: images/s of the training step (bf16 autocast, channels_last, fused SGD;
   the anchor is ~2.5k images/s on an A100).
2. The amalgamation step (four models, the paper's loss) and the frozen-teacher step as ratios of the plain
   step (benchmarks/amalgamation.py's steps, same batch).
3. ``sentizoo predict`` (in-process, torch backend, on generated 500x375 JPEGs) vs the model alone at
   predict's batch on tensors already on the GPU, the way predict runs it (fp32, channels_last).
4. The ST, HO and HP pretext steps vs a plain classification step (benchmarks/pretext.py's steps, fp32 as
   training.pretrain runs them).
5. The Places-style data loader (benchmarks/pretext.py): images/s per CPU worker.

Every step is timed as the fastest of a few interleaved rounds after a warm-up (benchmarks/pretext.py's
``fastest_steps``, synchronising the GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks

from amalgamation import _step_fn, write_section  # noqa: E402
from predict import make_images, predict  # noqa: E402
from pretext import _pretext_steps, _plain_step, fastest_steps, loader_rate, write_places  # noqa: E402

SIZES = {  # per mode: model, batches, input size, timed rounds, predict images, loader images and workers
    'full': dict(arch='resnet50', batch=128, size=224, rounds=5, pretext_batch=32, predict_batch=32, images=2000,
                 places=408, workers=(1, min(8, os.cpu_count() or 1))),
    'smoke': dict(arch='resnet18', batch=2, size=64, rounds=1, pretext_batch=2, predict_batch=4, images=4,
                  places=32, workers=(1,)),
}


def training_steps(arch: str, batch: int, size: int, device: str) -> Dict[str, Callable[[], None]]:
    """Plain, amalgamation (exact) and frozen-teacher steps of ``arch``, bf16 + channels_last on CUDA."""
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 8, (batch,), device=device)
    steps = {mode: _step_fn(arch, mode, device, channels_last=True, optimizer='fused', side_by_side=True)
             for mode in ('plain', 'exact', 'frozen')}
    return {mode: (lambda step=step: step(x, y)) for mode, step in steps.items()}


def model_only(arch: str, batch: int, size: int, device: str) -> Callable[[], None]:
    """One forward of predict's batch the way predict runs it on a GPU (fp32, channels_last, inference mode)."""
    import timm
    model = timm.create_model(arch, num_classes=8).eval().to(device, memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def forward() -> None:
        with torch.inference_mode():
            model(x)
    return forward


def predict_rate(arch: str, images: int, batch: int, device: str, tmp: Path) -> float:
    """Images/s of ``sentizoo predict`` over ``images`` generated JPEGs, model creation included."""
    import timm

    from sentizoo.saving import save_pretrained
    name = f'senti_{arch}.fi'
    folder = make_images(tmp / 'predict', images)
    save_pretrained(timm.create_model(name), tmp / 'weights', verbose=False)
    seconds, _ = predict(folder, tmp / 'weights' / 'model.safetensors', model=name,
                         batch_size=batch, device=device, backend='torch', workers=0 if device == 'cpu' else None)
    return images / seconds


GPU_JSON = Path(__file__).resolve().parent / 'gpu.json'


def run(sizes: dict, device: str, figures: Dict[str, Any]) -> List[str]:
    """Measure everything; the Markdown lines of the section. ``figures`` gets the training throughput and step
    ratios (the keys ``training.release.estimate`` reads)."""
    sync = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)
    arch, batch, size, rounds = sizes['arch'], sizes['batch'], sizes['size'], sizes['rounds']
    lines = ['| measurement | value |', '|---|---|']

    def row(name: str, value: str) -> None:
        lines.append(f'| {name} | {value} |')
        print(lines[-1], flush=True)

    start = time.perf_counter()

    precision = 'bf16 autocast' if device.startswith('cuda') else 'fp32'
    train = fastest_steps(training_steps(arch, batch, size, device), rounds, sync)
    row(f'{arch} plain fine-tuning step, batch {batch}, {size} px ({precision}, channels_last)',
        f'{batch / train["plain"]:.0f} images/s')
    figures.update(arch=arch, plain_images_per_second=round(batch / train['plain'], 1),
                   amalgamation_vs_plain=round(train['exact'] / train['plain'], 3),
                   frozen_vs_plain=round(train['frozen'] / train['plain'], 3))
    for mode, what in (('exact', 'amalgamation step (exact)'), ('frozen', 'frozen-teacher step')):
        row(f'{what} vs plain', f'{train[mode] / train["plain"]:.2f}x')

    with tempfile.TemporaryDirectory() as tmp:
        predict_batch = sizes['predict_batch']
        forward = fastest_steps({'model': model_only(arch, predict_batch, 224, device)}, rounds, sync)['model']
        predicted = predict_rate(arch, sizes['images'], predict_batch, device, Path(tmp))
    row(f'{arch} model only, batch {predict_batch}, 224 px (fp32, channels_last)',
        f'{predict_batch / forward:.0f} images/s')
    row(f'`sentizoo predict` over {sizes["images"]} JPEGs 500x375, batch {predict_batch} (torch backend)',
        f'{predicted:.0f} images/s = {predicted * forward / predict_batch:.0%} of model only')

    steps = {'plain': _plain_step(arch, sizes['pretext_batch'], size, torch.device(device))}
    for kind in ('st', 'ho', 'hp'):
        steps[kind] = _pretext_steps(kind, arch, sizes['pretext_batch'], size, torch.device(device))[0][kind]
    pretext = fastest_steps(steps, rounds, sync)
    for kind in ('st', 'ho', 'hp'):
        row(f'{kind.upper()} pretext step vs plain (batch {sizes["pretext_batch"]} per task, fp32)',
            f'{pretext[kind] / pretext["plain"]:.2f}x')
    figures['pretext_vs_plain'] = {kind: round(pretext[kind] / pretext['plain'], 3) for kind in ('st', 'ho', 'hp')}

    root = Path(tempfile.mkdtemp(prefix='gpu_bench_places_'))
    try:
        count = write_places(root, sizes['places'])
        for workers in sizes['workers']:
            rate = loader_rate(root, min(32, count), workers)
            row(f'Places loader ({count} JPEGs 256x256, paper augmentation), {workers} worker(s)',
                f'{rate:.0f} images/s = {rate / workers:.0f} per worker')
    finally:
        shutil.rmtree(root, ignore_errors=True)
    row('wall time of this run', f'{time.perf_counter() - start:.0f} s')
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--smoke', action='store_true', help='tiny sizes on the CPU; BENCHMARKS.md is not written')
    p.add_argument('--device', help='default: cuda (cpu with --smoke)')
    args = p.parse_args()
    device = args.device or ('cpu' if args.smoke else 'cuda')
    if device.startswith('cuda') and not torch.cuda.is_available():
        p.error('no CUDA device: run on a GPU machine, or pass --smoke for the CPU smoke run')
    torch.manual_seed(0)
    what = torch.cuda.get_device_name() if device.startswith('cuda') else f'CPU, {torch.get_num_threads()} threads'
    header = (f'Machine: {what}, {os.cpu_count()} CPU cores; Python {platform.python_version()}, torch '
              f'{torch.__version__}. Command: `python benchmarks/gpu.py{" --smoke" if args.smoke else ""}` '
              f'({time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}).')
    figures: Dict[str, Any] = {'device': what, 'date': time.strftime('%Y-%m-%d', time.gmtime()),
                               'command': f'python benchmarks/gpu.py{" --smoke" if args.smoke else ""}'}
    lines = run(SIZES['smoke' if args.smoke else 'full'], device, figures)
    section = '\n'.join(['## GPU', '', header, '', *lines]) + '\n'
    print(section)
    print(json.dumps(figures))
    if not args.smoke:
        write_section(section)
        GPU_JSON.write_text(json.dumps(figures, indent=2) + '\n')


if __name__ == '__main__':
    main()
