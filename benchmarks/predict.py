"""`sentizoo predict` vs a naive one-image-at-a-time loop, on the same generated JPEGs and the same model.

    python benchmarks/predict.py                 # the recorded run: 300 images, resnet50, 2 CPU cores
    python benchmarks/predict.py --sweep         # tuning: predict alone over batch sizes x workers
    python benchmarks/predict.py --sweep-onnx    # tuning: predict --backend onnxruntime over threading x workers

All sides load the same random ``senti_resnet50.fi`` checkpoint (written here with save_pretrained)
and are timed from model creation to the last prediction, each over all the images: the naive loop,
``sentizoo predict --backend torch`` and ``--backend onnxruntime`` (whose first run, timed separately,
exports the model into the cache beside the checkpoint). The sides alternate for ``--rounds`` rounds so
that all see the same load on a shared machine, and each side's fastest round counts. ONNX Runtime alone
(the cached graph on ready tensors at predict's batch) is measured after them.
``sentizoo predict`` runs in-process through ``sentizoo.predict``, the function behind the command (so
neither side pays the interpreter and import start-up); the naive loop is
``PIL.Image.open(path).convert('RGB')`` -> the model's timm eval transform -> ``model(x[None])`` under
``torch.no_grad``, one image at a time. Their top-1 labels are checked to agree. The process is pinned to ``--cores`` CPUs (DataLoader workers inherit the pinning)
and torch uses that many threads.
"""
import argparse
import itertools
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

import timm
from timm.data import create_transform, resolve_model_data_config

import sentizoo
from sentizoo.saving import save_pretrained

MODEL = 'senti_resnet50.fi'


def make_images(folder: Path, count: int, size=(500, 375)) -> Path:
    """``count`` photo-like JPEGs (a colour gradient under noise, different for every image) in ``folder``."""
    folder.mkdir(parents=True)
    for i in range(count):
        gradient = Image.linear_gradient('L').resize(size).rotate(i * 37 % 360, expand=False)
        noise = Image.effect_noise(size, 20 + i % 60)
        image = Image.merge('RGB', (gradient, noise, Image.blend(gradient, noise, (i % 10) / 10)))
        image.save(folder / f'{i:04d}.jpg', quality=90)
    return folder


def create(checkpoint: Path):
    return timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint))).eval()


def naive(paths: list, checkpoint: Path) -> tuple:
    start = time.perf_counter()
    model = create(checkpoint)
    transform = create_transform(**resolve_model_data_config(model))
    labels = []
    for path in paths:
        x = transform(Image.open(path).convert('RGB'))
        with torch.no_grad():
            labels.append(model.pretrained_cfg['label_names'][model(x[None]).argmax(-1).item()])
    return time.perf_counter() - start, labels


def predict(folder: Path, checkpoint: Path, batch_size=None, workers=None, *, model: str = MODEL,
            device: str = 'cpu', backend: str = 'torch') -> tuple:
    """``sentizoo.predict`` (``sentizoo predict``) with its default batch size and workers unless given."""
    sizes = {key: value for key, value in (('batch_size', batch_size), ('workers', workers)) if value is not None}
    start = time.perf_counter()
    rows = sentizoo.predict(model, folder, checkpoint=checkpoint, device=device, backend=backend, top_k=1, **sizes)
    seconds = time.perf_counter() - start
    assert all(row['error'] is None for row in rows), 'sentizoo.predict could not read some images'
    return seconds, [row['predictions'][0][0] for row in rows]


def onnx_model_only(checkpoint: Path, batch_size: int, images: int) -> float:
    """Images/s of ONNX Runtime alone (the cached export, predict's threading) on ready tensors at ``batch_size``."""
    from sentizoo.onnx import load_session, session_forward
    session = load_session(create(checkpoint), log=lambda message: None)
    x = torch.randn(batch_size, 3, 224, 224)
    with session_forward(session) as forward:
        forward(x)  # warm-up
        start = time.perf_counter()
        for _ in range(-(-images // batch_size)):
            forward(x)
        return -(-images // batch_size) * batch_size / (time.perf_counter() - start)


def sweep_onnx(folder: Path, checkpoint: Path, images: int, cores: int, rounds: int) -> None:
    """``sentizoo predict --backend onnxruntime`` per runtime threading x decoding workers, all settings
    alternating for ``rounds`` rounds (fastest round counts), then the runtime alone per threading."""
    import sentizoo.onnx as sonnx
    Threading = sonnx.Threading
    settings = [Threading(streams=1, intra_op=cores, chunk=0), Threading(streams=1, intra_op=cores, spinning=True, chunk=0),
                Threading(streams=cores, intra_op=1, chunk=0), Threading(streams=cores, intra_op=1, chunk=4),
                Threading(streams=1, intra_op=1, chunk=0)]
    runs = list(itertools.product(settings, range(cores + 1)))
    best = dict.fromkeys(runs, float('inf'))
    for _, (threading, workers) in itertools.product(range(rounds), runs):
        sonnx.THREADING = threading
        best[threading, workers] = min(best[threading, workers],
                                       predict(folder, checkpoint, workers=workers, backend='onnxruntime')[0])
    for threading in settings:
        sonnx.THREADING = threading
        rates = ', '.join(f'{workers} workers {images / best[threading, workers]:6.2f}' for workers in range(cores + 1))
        print(f'{threading}: predict {rates}; runtime alone {onnx_model_only(checkpoint, 32, 96):6.2f} images/s',
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=300)
    parser.add_argument('--rounds', type=int, default=2, help='alternating runs of each side over all images')
    parser.add_argument('--cores', type=int, default=2)
    parser.add_argument('--batch-size', type=int, help='default: the CLI default')
    parser.add_argument('--workers', type=int, help='default: the CLI default')
    parser.add_argument('--sweep', action='store_true', help='predict only, once, over batch sizes x workers')
    parser.add_argument('--sweep-onnx', action='store_true',
                        help='predict --backend onnxruntime only, over runtime threading x workers, --rounds rounds')
    args = parser.parse_args()

    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
    torch.set_num_threads(args.cores)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = make_images(tmp / 'images', args.images)
        save_pretrained(timm.create_model(MODEL), tmp / 'weights', verbose=False)
        checkpoint = tmp / 'weights' / 'model.safetensors'
        print(f'{platform.machine()}, {args.cores} cores, torch {torch.__version__}, timm {timm.__version__}; '
              f'{args.images} JPEGs 500x375, {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}')
        if args.sweep:
            for batch_size, workers in itertools.product((8, 16, 32, 64), (0, 1, 2)):
                seconds, _ = predict(folder, checkpoint, batch_size, workers)
                print(f'batch {batch_size:>3} workers {workers}: {args.images / seconds:6.2f} images/s', flush=True)
            return
        first_onnx_s, _ = predict(folder, checkpoint, args.batch_size, args.workers,
                                  backend='onnxruntime')  # exports once, into the cache beside the checkpoint
        if args.sweep_onnx:
            sweep_onnx(folder, checkpoint, args.images, args.cores, args.rounds)
            return
        sides = {'naive loop': lambda: naive(sorted(folder.iterdir()), checkpoint),
                 **{f'predict ({backend})': lambda backend=backend: predict(
                     folder, checkpoint, args.batch_size, args.workers, backend=backend)
                    for backend in ('torch', 'onnxruntime')}}
        best = dict.fromkeys(sides, float('inf'))
        labels = {}
        for _ in range(args.rounds):
            for side, run in sides.items():
                seconds, labels[side] = run()
                best[side] = min(best[side], seconds)
        alone = onnx_model_only(checkpoint, args.batch_size or 32, args.images)
        workers = 'default' if args.workers is None else args.workers
        settings = f'batch {args.batch_size or "default"}, workers {workers}'
        for side, seconds in best.items():
            print(f'{side + ":":<24}{seconds:7.1f} s  {args.images / seconds:6.2f} images/s  '
                  f'{best["naive loop"] / seconds:.2f}x naive, top-1 agreement with naive '
                  f'{sum(a == b for a, b in zip(labels["naive loop"], labels[side], strict=True)) / args.images:.1%}')
        print(f'settings: {settings}; first onnxruntime run, export included: {first_onnx_s:.1f} s; '
              f'ONNX Runtime alone at batch {args.batch_size or 32}: {alone:.2f} images/s, predict (onnxruntime) '
              f'reaches {args.images / best["predict (onnxruntime)"] / alone:.0%} of it; '
              f'load average after {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
    main()
