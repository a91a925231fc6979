"""The ``sentizoo`` command line: ``list``, ``info``, ``predict`` and ``export-onnx`` (plus the training commands).

Every subcommand is added by an ``add_<name>_parser(subparsers)`` function that registers its
arguments and ``func`` (``args -> exit code``); :func:`build_parser` collects them.
Exit codes: 0 success, 1 a failure while running (e.g. some images could not be read), 2 a usage error.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, TextIO, Tuple

__all__ = ['build_parser', 'main']

PROG = 'sentizoo'


class UsageError(Exception):
    """A bad argument (unknown model, missing path ...): reported with exit code 2."""


def _pretrained_cfg(name: str):
    """The timm pretrained config of ``name`` (tag optional), or a UsageError naming the fix."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise UsageError(f'unknown model {name!r}: `{PROG} list` shows the sentizoo models; any timm model name '
                         f'(timm.list_models()) works too.')
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as e:  # unknown tag
        raise UsageError(f'{e} `{PROG} list` shows the available tags.') from e
    if cfg is None:
        raise UsageError(f'{name!r} has no pretrained config; give a tagged name, e.g. {name}.<tag>.')
    return cfg


def _local_weights(name: str, cfg) -> Optional[str]:
    from .weights import WEIGHTS_NAME, find_local
    path = find_local(name, cfg.hf_hub_id, cfg.hf_hub_filename or WEIGHTS_NAME)
    return str(path) if path else None


def _full_name(name: str, cfg) -> str:
    return f'{name.split(".")[0]}.{cfg.tag}' if cfg.tag else name


# ---------------------------------------------------------------------------------------------- list

def _run_list(args: argparse.Namespace) -> int:
    import timm
    from timm.models import get_pretrained_cfg

    rows = [('model', 'labels', 'local weights')]
    for name in timm.list_pretrained('senti_*'):
        cfg = get_pretrained_cfg(name)
        labels = str(cfg.num_classes) if cfg.num_classes else '- (backbone)'
        rows.append((name, labels, _local_weights(name, cfg) or 'no'))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for row in rows:
        print(f'{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}')
    return 0


def add_list_parser(subparsers) -> None:
    p = subparsers.add_parser(
        'list', help='list the sentizoo models (architecture x tag) and whether their weights are local',
        description='List every senti_<arch>.<tag> model: its number of labels (backbones have none) and '
                    'the local weight file if one is in $SENTIZOO_HOME or the Hugging Face cache.')
    p.set_defaults(func=_run_list)


# ---------------------------------------------------------------------------------------------- info

def _run_info(args: argparse.Namespace) -> int:
    from .models import SHA256, stock_name
    from .weights import ChecksumMismatchError, InvalidWeightsError, WeightsNotFoundError, resolve_weights

    cfg = _pretrained_cfg(args.model)
    name = _full_name(args.model, cfg)
    senti = name.startswith('senti_')
    print(f'model: {name}')
    print(f'architecture: {cfg.architecture}' + (f' (timm {stock_name(name)})' if senti else ''))
    print(f'labels: {cfg.num_classes or "none (backbone: num_classes=0, no classifier)"}')
    if cfg.label_names:
        print(f'label names: {", ".join(cfg.label_names)}')
    code = 0
    if not senti:
        print(f'weights: resolved by timm from {cfg.hf_hub_id or cfg.url or "nowhere (no pretrained weights)"}')
    else:
        try:  # report, never download
            print(f'weights: {resolve_weights(name, cfg, download=False)}')
        except WeightsNotFoundError as e:
            where = (f'online, they download from https://huggingface.co/{cfg.hf_hub_id}' if SHA256.get(name)
                     else 'they are not published yet: produce them as below')
            print(f'weights: not available locally; {where}.\n{e}')
        except (ChecksumMismatchError, InvalidWeightsError) as e:
            print(f'weights: {e}')
            code = 1
    print('pretrained config:')
    for key, value in cfg.to_dict().items():
        if value is not None:
            print(f'  {key}: {value}')
    return code


def add_info_parser(subparsers) -> None:
    p = subparsers.add_parser(
        'info', help="show a model's config, label names and where its weights resolve from",
        description='Show the pretrained config of MODEL, its label names and where its weights come from.')
    p.add_argument('model', metavar='MODEL', help='e.g. senti_resnet50.fi (no tag: the default tag)')
    p.set_defaults(func=_run_info)


# ------------------------------------------------------------------------------------------- predict

def _checkpoint_classes(path: Path, classifier: str, default: int) -> Tuple[int, Optional[List[str]]]:
    """Classes of a weight file: the ``config.json`` beside it (``save_pretrained``'s), else the rows of its
    classifier weight (``default`` without one: loading then names what is missing); with the label names when
    the config has them. Config and file are checked as every zoo file is."""
    from safetensors import safe_open

    from .weights import check_safetensors, read_config

    saved = read_config(path.parent)
    if saved.get('num_classes'):
        return saved['num_classes'], saved.get('label_names')
    with safe_open(str(check_safetensors(path)), 'pt') as f:
        key = f'{classifier}.weight'
        return (f.get_slice(key).get_shape()[0] if key in f.keys() else default), None


# MODEL and --checkpoint of predict, evaluate and export-onnx: all three load through _create_classifier
_MODEL_HELP = ('a classifier: a folder written by `sentizoo amalgamate` (or save_pretrained), an hf-hub: or local-dir: '
               'name, senti_<arch>.fi, or any timm model name (with --checkpoint: its weights)')
_CHECKPOINT_HELP = ('with a model name: load these weights (.safetensors; classes and label names from the config.json '
                    'beside it, else the classifier\'s size) instead of the published ones')


def _create_classifier(args: argparse.Namespace):
    """MODEL as the user has it, with its task when known: a zoo folder (written by ``sentizoo amalgamate`` or
    ``save_pretrained``; verified as the zoo is: a valid config.json, only model.safetensors, its sha256), an
    ``hf-hub:`` / ``local-dir:`` name, or a timm / senti name (``--checkpoint``: its weights, verified, with the
    classes and label names the file carries). A UsageError for a backbone, a bad checkpoint path or an
    unknown name."""
    import timm

    from .weights import load_folder, load_weights

    task, name = None, args.model
    if Path(name).is_dir():
        model, config = load_folder(name)
        task = config.get('task')
    elif name.startswith(('hf-hub:', 'local-dir:')):
        model = timm.create_model(name, pretrained=not args.no_pretrained)
    else:
        cfg = _pretrained_cfg(name)
        name = _full_name(name, cfg)
        if args.checkpoint is not None:
            if args.checkpoint.suffix != '.safetensors' or not args.checkpoint.is_file():
                raise UsageError(f'--checkpoint {args.checkpoint}: expected an existing .safetensors file '
                                 f'(e.g. written by sentizoo.save_pretrained).')
            num_classes, labels = _checkpoint_classes(args.checkpoint, cfg.classifier, cfg.num_classes)
            model = load_weights(timm.create_model(name, num_classes=num_classes), args.checkpoint)
            model.pretrained_cfg = dict(model.pretrained_cfg, num_classes=num_classes, label_names=labels)
        elif cfg.num_classes:
            model = timm.create_model(name, pretrained=not args.no_pretrained)
        else:
            model = None
    if model is None or not model.num_classes:
        raise UsageError(f'{name} is a backbone (num_classes=0): it has no classifier to predict with. '
                         f'Use a classifier tag such as {name.split(".")[0]}.fi (the 8 FI emotions), or '
                         f'fine-tune the backbone first (sentizoo.amalgamate).')
    return model, task


def _label_names(model) -> List[str]:
    names = model.pretrained_cfg.get('label_names')
    if names and len(names) == model.num_classes:
        return list(names)
    return [str(i) for i in range(model.num_classes)]


# Images per forward on CPU: larger batches spill the activations out of the caches and run slower per image.
_CPU_CHUNK = 4


@contextmanager
def _forward_function(model, device) -> Iterator[Callable]:
    """``images -> logits``. On CPU the batch is cut into chunks of ``_CPU_CHUNK`` images, run by one
    single-threaded forward per torch thread side by side: this scales across cores better than one
    multi-threaded forward and collapses far less when other processes share the cores (BENCHMARKS.md)."""
    import torch

    if device.type != 'cpu':
        yield model
        return
    threads = torch.get_num_threads()

    def forward(images):
        with torch.inference_mode():  # thread-local: entered in each pool thread
            return model(images)

    torch.set_num_threads(1)  # new threads take this process-wide setting
    try:
        with ThreadPoolExecutor(threads) as pool:
            yield lambda images: torch.cat(list(pool.map(forward, images.split(_CPU_CHUNK))))
    finally:
        torch.set_num_threads(threads)


def _path_text(path: Path) -> str:
    """``path`` as text that any output encoding holds: bytes of a file name that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(path).decode('utf-8', 'backslashreplace')


def _backend_forward(model, device, backend: str):
    """The forward of ``--backend``: an ONNX Runtime session (:mod:`sentizoo.onnx`) or eager PyTorch."""
    from .onnx import backend_session, session_forward
    try:
        session = backend_session(backend, model, device,
                                  log=lambda message: print(f'{PROG} predict: {message}', file=sys.stderr))
    except ValueError as e:
        raise UsageError(str(e)) from e
    return _forward_function(model, device) if session is None else session_forward(session)


def _predict_rows(model, dataset, args: argparse.Namespace) -> List[dict]:
    """One row per file of ``dataset``, in order: ``{'path', 'predictions': [(label, probability)], 'error'}``."""
    import torch
    from tqdm import tqdm

    from .data import collate_images

    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    model = model.eval().to(device, memory_format=torch.channels_last)
    labels = _label_names(model)
    k = min(args.top_k, len(labels))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                                         collate_fn=collate_images, pin_memory=device.type == 'cuda')
    rows: List[Optional[dict]] = [None] * len(dataset)
    with tqdm(total=len(dataset), unit='img', desc=f'{PROG} predict', file=sys.stderr, disable=None) as bar, \
            _backend_forward(model, device, args.backend) as forward, torch.inference_mode():
        for batch in loader:
            for index, error in batch.failures:
                bar.write(f'{PROG} predict: error: {error}', file=sys.stderr)
                rows[index] = dict(path=_path_text(dataset.files[index]), predictions=[], error=error.reason)
            if batch.images is not None:
                images = batch.images.to(device, non_blocking=True, memory_format=torch.channels_last)
                top = forward(images).float().softmax(dim=-1).topk(k, dim=-1)
                for index, probs, classes in zip(batch.indices, top.values.tolist(), top.indices.tolist()):
                    rows[index] = dict(path=_path_text(dataset.files[index]), error=None,
                                       predictions=[(labels[c], p) for c, p in zip(classes, probs)])
            bar.update(len(batch.indices) + len(batch.failures))
    return rows


def _write_json(rows: List[dict], k: int, out: TextIO) -> None:
    json.dump([dict(path=row['path'], predictions=[dict(label=label, probability=p) for label, p in
                                                    row['predictions']], error=row['error']) for row in rows],
              out, indent=2)
    out.write('\n')


def _write_csv(rows: List[dict], k: int, out: TextIO) -> None:
    writer = csv.writer(out)
    writer.writerow(['path', *[f'{field}_{i}' for i in range(1, k + 1) for field in ('label', 'probability')],
                     'error'])
    for row in rows:
        cells = [cell for label, p in row['predictions'] for cell in (label, f'{p:.6f}')]
        writer.writerow([row['path'], *cells, *[''] * (2 * k - len(cells)), row['error'] or ''])


def _write_table(rows: List[dict], k: int, out: TextIO) -> None:
    header = ['path', *[f'top-{i}' for i in range(1, k + 1)]]
    cells = [[row['path'], *(f'{label} {p:.3f}' for label, p in row['predictions'])] for row in rows]
    widths = [max(len(line[i]) for line in [header, *cells] if i < len(line)) for i in range(k + 1)]
    for line, row in zip([header, *cells], [None, *rows]):
        if row is not None and row['error']:
            line = [line[0], f'ERROR: {row["error"]}']
        out.write('  '.join(f'{cell:<{width}}' for cell, width in zip(line, widths)).rstrip() + '\n')


_WRITERS = {'table': _write_table, 'json': _write_json, 'csv': _write_csv}


def _check_output(path: Path) -> None:
    """A UsageError now, before any work, if ``--output`` could not be written at the end."""
    path = path.resolve()
    if path.is_dir():
        raise UsageError(f'--output {path} is a directory; give a file name.')
    if path.exists() and not path.is_file():  # a device or pipe: written in place
        if not os.access(path, os.W_OK):
            raise UsageError(f'--output {path}: permission denied.')
    elif not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
        raise UsageError(f'--output {path}: cannot create files in {path.parent} (missing or not writable).')


def _write_output(rows: List[dict], k: int, args: argparse.Namespace) -> bool:
    """Write the rows to ``--output`` (atomically, so an old file is replaced only by a complete one) or
    stdout. If ``--output`` fails (e.g. a full disk), the rows go to stdout instead; returns False then."""
    from .weights import atomic_write
    write = _WRITERS[args.format]

    def write_file(path: str) -> None:
        with open(path, 'w', newline='', encoding='utf-8') as out:
            write(rows, k, out)

    if args.output is not None:
        try:
            target = args.output.resolve()  # through a symbolic link, which stays
            if target.exists() and not target.is_file():
                write_file(target)
            else:
                atomic_write(target, write_file)
            return True
        except OSError as e:
            print(f'{PROG} predict: error: cannot write --output {args.output} ({e.strerror or e}); the results '
                  f'follow on stdout instead.', file=sys.stderr)
    write(rows, k, sys.stdout)
    return args.output is None  # False: --output failed


def _run_predict(args: argparse.Namespace) -> int:
    from .data import ImageFiles
    from .datasets import eval_transform
    from .weights import WEIGHTS_ERRORS

    if args.top_k < 1 or args.batch_size < 1 or args.workers < 0:
        raise UsageError('--top-k and --batch-size must be >= 1 and --workers >= 0.')
    try:
        dataset = ImageFiles(args.paths)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    if not len(dataset):
        raise UsageError(f'no image files in {", ".join(map(str, args.paths))}.')
    if args.output is not None:
        _check_output(args.output)
    try:
        model, _ = _create_classifier(args)
    except WEIGHTS_ERRORS as e:
        print(f'{PROG} predict: error: {e}', file=sys.stderr)
        return 1
    dataset.transform = eval_transform(_data_config(model, None))
    rows = _predict_rows(model, dataset, args)
    written = _write_output(rows, min(args.top_k, model.num_classes), args)
    failed = sum(row['error'] is not None for row in rows)
    print(f'{PROG} predict: {len(rows) - failed} images predicted, {failed} failed', file=sys.stderr)
    return 1 if failed or not written else 0


def add_predict_parser(subparsers) -> None:
    from .onnx import BACKENDS
    p = subparsers.add_parser(
        'predict', help='top-k labels with probabilities for image files and folders',
        description='Predict the top-k labels of every image in PATHS (files, and folders searched recursively) '
                    'with a classifier such as senti_resnet50.fi. Bad files are reported on stderr and as error '
                    'rows; the others are still predicted, and the exit code is 1 if any file failed.')
    p.add_argument('model', metavar='MODEL', help=_MODEL_HELP)
    p.add_argument('paths', metavar='PATHS', nargs='+', type=Path, help='image files and/or folders')
    p.add_argument('--top-k', type=int, default=3, help='labels per image (default: 3)')
    p.add_argument('--batch-size', type=int, default=32, help='images per forward pass (default: 32)')
    p.add_argument('--workers', type=int,
                   help='processes decoding images beside the model; 0 decodes in the main process '
                        '(default: the CPU cores, up to 8)')
    p.add_argument('--device', help='torch device (default: cuda if available, else cpu)')
    p.add_argument('--backend', choices=BACKENDS, default='auto',
                   help='auto (default): ONNX Runtime on the CPU when the [onnx] extra is installed (the first run '
                        'exports the model, cached beside its weights), PyTorch otherwise and on CUDA')
    p.add_argument('--format', choices=sorted(_WRITERS), default='table', help='output format (default: table)')
    p.add_argument('--output', type=Path, help='write the results to this file instead of stdout')
    weights = p.add_mutually_exclusive_group()
    weights.add_argument('--checkpoint', type=Path, metavar='FILE', help=_CHECKPOINT_HELP)
    weights.add_argument('--no-pretrained', action='store_true', help='random weights (testing, timing)')
    p.set_defaults(func=_run_predict)


# ------------------------------------------------------------------------------- amalgamate / evaluate

def _check_writable_dir(path: Path, flag: str) -> None:
    """Create the folder ``path`` now, so that a training run cannot fail at its end for want of it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f'{flag} {path}: cannot create the folder ({e.strerror or e}).') from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f'{flag} {path}: the folder is not writable.')


def _open_labelled(path: Path, transform=None):
    from .datasets import open_dataset
    try:
        return open_dataset(path, transform)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e


def _task_for(path: Path, task: Optional[str]) -> str:
    if task is None and not path.is_dir():
        raise UsageError(f'{path} is a CSV of label vectors: pass --task mll (0/1 labels) or --task ldl '
                         f'(distributions).')
    return task or 'sll'


def _loader(dataset, args: argparse.Namespace, shuffle: bool):
    import torch
    from torch.utils.data import DataLoader
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=shuffle, num_workers=args.workers,
                      persistent_workers=args.workers > 0, pin_memory=torch.cuda.is_available())


def _data_config(model, img_size: Optional[int]) -> dict:
    """The model's own data config (a ``senti_*`` model's or a trained folder's is the paper's preprocessing)."""
    from timm.data import resolve_model_data_config
    config = resolve_model_data_config(model)
    if img_size:
        config['input_size'] = (config['input_size'][0], img_size, img_size)
    return config


def _create_target(args: argparse.Namespace, num_classes: int) -> Tuple[Any, str]:
    """The target with a fresh head (a zoo VGG with the paper's head), its backbone initialised as ``--init``
    says, and the name of the weights it starts from (``senti_resnet50.hp``, ``resnet50.tv_in1k``, ``random``)."""
    import timm

    from .amalgamation import init_target_from
    from .models import ARCHS, imagenet_name, paper_arch, senti_name, stock_name

    arch = stock_name(args.model)
    if not timm.is_model(arch):
        raise UsageError(f'unknown architecture {args.model!r}; e.g. resnet50 or senti_resnet50.')
    init = args.init or ('imagenet' if args.baseline else 'hp')
    target = timm.create_model(paper_arch(arch), num_classes=num_classes)
    if init == 'hp':
        try:
            name = f'{senti_name(arch)}.hp'
        except ValueError as e:
            raise UsageError(f'--init hp: {e}') from e
    elif init == 'imagenet':  # torchvision's weights, as the paper and training.pretrain (others: timm's default)
        name = imagenet_name(arch) if arch in ARCHS else arch
    else:
        return target, 'random'
    return init_target_from(target, timm.create_model(name, pretrained=True)), name


def _trained_cfg(model, data_config: dict, init: str, teachers: List[str], description: str) -> dict:
    """The pretrained config of a model trained here: the preprocessing and input size it was trained with and
    the licence of the weights it derives from (the senti weights' CC BY-NC 4.0 once one took part)."""
    from timm.models import get_pretrained_cfg

    from .models import senti_name

    # built afresh: nothing of the init's own cfg (tag, licence, paper, test-time size and crop) carries over
    cfg = {k: model.pretrained_cfg.get(k) for k in ('architecture', 'first_conv', 'classifier')}
    cfg.update(description=description, **data_config)
    if teachers or init.startswith('senti_'):
        senti = get_pretrained_cfg(f'{senti_name(model)}.hp')
        cfg.update(license=senti.license, paper_name=senti.paper_name, origin_url=senti.origin_url)
    elif init != 'random':
        cfg.update(license=get_pretrained_cfg(init).license)
    return cfg


def _run_amalgamate(args: argparse.Namespace) -> int:
    import torch

    from .amalgamation import needed_teachers
    from .datasets import eval_transform, paper_data_config, train_transform
    from .engine import NonFiniteLossError, amalgamate, finetune
    from .models import senti_name
    from .weights import WEIGHTS_ERRORS, save_pretrained

    for folder, flag in ((args.output, '--output'), (args.checkpoint_dir, '--checkpoint-dir')):
        if folder is not None:
            _check_writable_dir(folder, flag)
    train_set = _open_labelled(args.train)
    task = _task_for(args.train, args.task)
    val_set = _open_labelled(args.val) if args.val else None
    labels = train_set.label_names
    if val_set is not None and val_set.label_names != labels:
        raise UsageError(f'--val {args.val} has labels {val_set.label_names[:8]}, the training data {labels[:8]}.')
    options = dict(task=task, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                   weight_decay=args.weight_decay, step_size=args.step_size, gamma=args.gamma, seed=args.seed,
                   device=args.device, amp=not args.no_amp, channels_last=False if args.no_channels_last else None,
                   sync_batchnorm=args.sync_batchnorm,
                   progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
                   checkpoint_dir=args.checkpoint_dir or args.output / 'checkpoints')
    if not args.baseline:
        options.update(feature_stages=args.feature_stages, logits_teachers=args.logits_teachers,
                       teacher_task_loss=not args.no_teacher_task_loss, freeze_teachers=args.freeze_teachers,
                       target_init='given')  # --init already chose the target's weights
    try:
        torch.manual_seed(args.seed)  # before the target's new head is drawn: same seed, same weights
        model, init = _create_target(args, len(labels))
        config = paper_data_config(args.img_size or 224)  # the paper's protocol, whatever timm's cfg of the arch
        train_set.transform = train_transform(config)
        val_loader = None
        if val_set is not None:
            val_set.transform = eval_transform(config)
            val_loader = _loader(val_set, args, shuffle=False)
        teachers = [] if args.baseline else [f'{senti_name(model)}.{t}' for t in needed_teachers(
            args.feature_stages, args.logits_teachers)]
        model = (finetune if args.baseline else amalgamate)(model, _loader(train_set, args, shuffle=True),
                                                            val_loader=val_loader, **options)
    except (*WEIGHTS_ERRORS, NonFiniteLossError) as e:
        print(f'{PROG} amalgamate: error: {e}', file=sys.stderr)
        return 1
    except (ValueError, FileExistsError) as e:  # data or options that do not fit, found before training
        raise UsageError(str(e)) from e
    if int(os.environ.get('RANK', '0')) == 0:
        how = f'amalgamated with {", ".join(teachers)}' if teachers else 'fine-tuned'
        description = (f'{model.pretrained_cfg["architecture"]} {how} on {args.train.name} ({task}), '
                       f'starting from {init}.')
        model.pretrained_cfg = _trained_cfg(model, config, init, teachers, description)
        provenance = dict(task=task, init=init, teachers=teachers)
        try:
            save_pretrained(model, args.output, label_names=labels, extra_config=provenance)
            history = dict(model.sentizoo_history, **provenance)
            (args.output / 'history.json').write_text(json.dumps(history, indent=2) + '\n')
        except OSError as e:
            print(f'{PROG} amalgamate: error: cannot write {args.output} ({e.strerror or e}); the trained model '
                  f'is safe in {options["checkpoint_dir"]}: fix the cause and rerun the same command to write '
                  f'it (nothing is trained again).', file=sys.stderr)
            return 1
        best = model.sentizoo_history['best_epoch']
        print(f'{PROG} amalgamate: wrote {args.output}' + (f' (best epoch {best} on --val)' if best else ''),
              file=sys.stderr)
    return 0


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--task', choices=('sll', 'mll', 'ldl'),
                   help='sll for a folder of class folders (default); mll or ldl for a CSV (required)')
    p.add_argument('--batch-size', type=int, default=32, help='images per step and process (default: 32)')
    p.add_argument('--workers', type=int, help='DataLoader worker processes (default: the CPU cores, up to 8)')
    p.add_argument('--img-size', type=int, help='input size (default: the model\'s, 224)')
    p.add_argument('--device', help='torch device (default: this process\'s GPU if any, else cpu)')
    p.add_argument('--no-channels-last', action='store_true',
                   help='keep the contiguous memory format (channels_last is used on CUDA only anyway)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')


_DATA_HELP = ('DATA is a folder of class folders (single-label, classes in sorted order: root/<class>/*.jpg) or a '
              'CSV file with a header "path,<label 1>,...,<label C>" and one row per image: its path (relative '
              'to the CSV) and C numbers, 0/1 labels (--task mll) or a distribution (--task ldl).')


def add_amalgamate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        'amalgamate', help='fine-tune a target with the ST/HO/HP teachers (the paper\'s amalgamation)',
        description='Fine-tune a target of architecture MODEL on TRAIN while the sentiment-pretrained ST, HO and '
                    'HP teachers (senti_<arch>.st/.ho/.hp from the zoo) train beside it with the paper\'s loss; '
                    'keep the epoch that scores best on --val and write it to --output in the zoo format '
                    '(model.safetensors + config.json, loadable by `sentizoo evaluate OUTPUT`), with '
                    'history.json. Checkpoints go to OUTPUT/checkpoints after every epoch; rerunning the same '
                    'command resumes. Defaults are the paper\'s (SGD lr 1e-3, momentum 0.9, weight decay 1e-4, '
                    '30 epochs, lr x0.1 every 10). Under torchrun every process runs this command. ' + _DATA_HELP)
    p.add_argument('model', metavar='MODEL', help='architecture: resnet18/50/101, vgg16_bn, vgg19_bn (or senti_*)')
    p.add_argument('train', metavar='TRAIN', type=Path, help='training data (see DATA above)')
    p.add_argument('--val', type=Path, metavar='DATA', help='validation data for model selection (not the test set)')
    p.add_argument('--output', type=Path, required=True, metavar='DIR', help='where to write the trained target')
    p.add_argument('--baseline', action='store_true',
                   help='plain fine-tuning without teachers (the paper\'s baseline)')
    p.add_argument('--init', metavar='{hp,imagenet,random}', choices=('hp', 'imagenet', 'random'),
                   help='target initialisation: hp = the senti HP backbone (default, official), imagenet = '
                        'torchvision\'s ImageNet weights, timm\'s <arch>.tv_in1k (default with --baseline, as in '
                        'the paper), random')
    _add_data_arguments(p)
    p.add_argument('--no-amp', action='store_true', help='train without bf16 autocast on CUDA (evaluation is fp32)')
    p.add_argument('--epochs', type=int, default=30, help='(default: 30)')
    p.add_argument('--lr', type=float, default=1e-3, help='SGD learning rate (default: 1e-3)')
    p.add_argument('--momentum', type=float, default=0.9, help='(default: 0.9)')
    p.add_argument('--weight-decay', type=float, default=1e-4, help='(default: 1e-4)')
    p.add_argument('--step-size', type=int, default=10, help='epochs between lr decays (default: 10)')
    p.add_argument('--gamma', type=float, default=0.1, help='lr decay factor (default: 0.1)')
    p.add_argument('--seed', type=int, default=0, help='(default: 0)')
    p.add_argument('--checkpoint-dir', type=Path, metavar='DIR', help='(default: OUTPUT/checkpoints)')
    p.add_argument('--checkpoint-every', type=int, metavar='N', help='also checkpoint every N steps')
    p.add_argument('--sync-batchnorm', action='store_true',
                   help='under torchrun on GPUs: BatchNorm statistics over the global batch')
    ablation = p.add_argument_group('ablations (paper Tables 3 and 4)')
    ablation.add_argument('--feature-stages', type=int, nargs='*', choices=(1, 2, 3), default=[1, 2, 3],
                          metavar='K',
                          help='target stages regularised towards ST (1), HO (2), HP (3) (default: 1 2 3)')
    ablation.add_argument('--logits-teachers', nargs='*', choices=('st', 'ho', 'hp'), default=['hp'],
                          metavar='T', help='teachers whose logits regularise the target\'s (default: hp)')
    ablation.add_argument('--no-teacher-task-loss', action='store_true', help='drop the teachers\' task losses')
    ablation.add_argument('--freeze-teachers', action='store_true', help='teachers fixed, in eval mode (faster)')
    p.set_defaults(func=_run_amalgamate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .engine import evaluate
    from .weights import WEIGHTS_ERRORS

    if args.output is not None:
        _check_output(args.output)
    try:
        model, saved_task = _create_classifier(args)
    except WEIGHTS_ERRORS as e:
        print(f'{PROG} evaluate: error: {e}', file=sys.stderr)
        return 1
    task = _task_for(args.data, args.task or saved_task)
    from .datasets import eval_transform
    dataset = _open_labelled(args.data, eval_transform(_data_config(model, args.img_size)))
    if len(dataset.label_names) != model.num_classes:
        raise UsageError(f'{args.data} has {len(dataset.label_names)} labels, the model {model.num_classes} outputs.')
    try:
        metrics = evaluate(model, _loader(dataset, args, shuffle=False), task, device=args.device,
                           channels_last=False if args.no_channels_last else None, progress=not args.no_progress)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if int(os.environ.get('RANK', '0')) != 0:
        return 0
    text = (json.dumps(metrics, indent=2) if args.format == 'json'
            else ''.join(f'{name:<14}{value:.6f}\n' for name, value in metrics.items()))
    if args.output:
        args.output.write_text(text.rstrip('\n') + '\n')
    else:
        print(text.rstrip('\n'))
    return 0


def add_evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        'evaluate', help='score a classifier on a labelled image folder or CSV',
        description='Compute the task\'s metrics (sll: accuracy; mll: Hamming loss, ranking loss, micro/macro F1; '
                    'ldl: Chebyshev, Clark, Canberra, KL, Cosine, Intersection) of MODEL on DATA, with the '
                    'evaluation transform (resize, center crop). MODEL is a folder written by `sentizoo amalgamate` '
                    '(its task is remembered) or a classifier name such as senti_resnet50.fi. ' + _DATA_HELP)
    p.add_argument('model', metavar='MODEL', help=_MODEL_HELP)
    p.add_argument('data', metavar='DATA', type=Path, help='labelled images (see DATA above)')
    _add_data_arguments(p)
    p.add_argument('--format', choices=('table', 'json'), default='table', help='output format (default: table)')
    p.add_argument('--output', type=Path, help='write the metrics to this file instead of stdout')
    p.add_argument('--checkpoint', type=Path, metavar='FILE', help=_CHECKPOINT_HELP)
    p.set_defaults(func=_run_evaluate, no_pretrained=False)


# ---------------------------------------------------------------------------------------------- export-onnx

def _run_export_onnx(args: argparse.Namespace) -> int:
    from .onnx import ATOL, RTOL, ExportMismatchError, export_onnx, onnxruntime_available
    from .weights import WEIGHTS_ERRORS

    if not onnxruntime_available():
        raise UsageError('onnx and onnxruntime are not installed: pip install "sentizoo[onnx]".')
    if args.output.suffix != '.onnx' or not args.output.parent.is_dir():
        raise UsageError(f'OUTPUT {args.output}: expected a .onnx file in an existing folder.')
    try:
        model, _ = _create_classifier(args)
        metadata = export_onnx(model, args.output, opset=args.opset, name=args.model)
    except (*WEIGHTS_ERRORS, ExportMismatchError) as e:
        print(f'{PROG} export-onnx: error: {e}', file=sys.stderr)
        return 1
    print(f'{PROG} export-onnx: wrote {args.output} (opset {args.opset}, input {metadata["data_config"]["input_size"]},'
          f' max abs difference to PyTorch {metadata["max_abs_diff"]:.2g}, tolerance {ATOL:g} + {RTOL:g} x |logit|)',
          file=sys.stderr)
    return 0


def add_export_onnx_parser(subparsers) -> None:
    from .onnx import DEFAULT_OPSET
    p = subparsers.add_parser(
        'export-onnx', help='export a classifier to ONNX (dynamic batch, labels and preprocessing in its metadata)',
        description='Export MODEL to OUTPUT (.onnx): input "images" (float32 NCHW, dynamic batch, the model\'s input '
                    'size), output "logits"; the metadata holds the label names, the timm data config and the '
                    'opset. The graph is checked against eager PyTorch on a batch and not written if it disagrees. '
                    'Needs the [onnx] extra.')
    p.add_argument('model', metavar='MODEL', help=_MODEL_HELP)
    p.add_argument('output', metavar='OUTPUT', type=Path, help='the .onnx file to write')
    p.add_argument('--checkpoint', type=Path, metavar='FILE', help=_CHECKPOINT_HELP)
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset (default: %(default)s)')
    p.set_defaults(func=_run_export_onnx, no_pretrained=False)


# ---------------------------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    """The ``sentizoo`` parser with every subcommand."""
    from .version import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, description='sentizoo: sentiment-oriented pre-trained models for visual sentiment analysis. '
                               f'`{PROG} COMMAND --help` explains each command.')
    parser.add_argument('--version', action='version', version=f'{PROG} {__version__}')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for add in (add_list_parser, add_info_parser, add_predict_parser, add_amalgamate_parser, add_evaluate_parser,
                add_export_onnx_parser):
        add(subparsers)
    return parser


def _check_device(device: str) -> None:
    """A UsageError for a ``--device`` that torch cannot use on this machine."""
    import torch
    try:
        kind = torch.device(device)
    except RuntimeError as e:
        raise UsageError(f'--device {device!r} is not a torch device ({str(e).splitlines()[0]}); e.g. cpu, cuda, '
                         f'cuda:1.') from None
    if kind.type == 'cuda' and not torch.cuda.is_available():
        raise UsageError(f'--device {device}: CUDA is not available here (no GPU, driver or CUDA build of torch); '
                         f'use --device cpu.')
    if kind.type == 'cuda' and kind.index is not None and kind.index >= torch.cuda.device_count():
        raise UsageError(f'--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s).')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (argparse exits with 2 on malformed arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, 'workers', 0) is None:
        from .data import default_workers
        args.workers = default_workers()
    try:
        if getattr(args, 'device', None) is not None:
            _check_device(args.device)
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe then raises where it is handled
        return code
    except UsageError as e:
        print(f'{PROG} {args.command}: error: {e}', file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`sentizoo list | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at the exit flush
        return 1
