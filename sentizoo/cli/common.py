"""What the subcommands share: the usage error, checks of paths and flags, MODEL and DATA loading."""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, TextIO, Tuple, Type

__all__ = ['PROG', 'UsageError', 'usage_errors', 'DATA_HELP', 'add_classifier_parser',
           'create_classifier',
           'check_output', 'write_results', 'check_writable_dir', 'add_data_arguments', 'open_labelled', 'task_for',
           'loader', 'data_config']

PROG = 'sentizoo'


class UsageError(Exception):
    """A bad argument (unknown model, missing path ...): reported with exit code 2."""


@contextmanager
def usage_errors(*kinds: Type[Exception]) -> Iterator[None]:
    """A ValueError (or one of ``kinds``) raised inside becomes a :class:`UsageError`; the errors of weight files
    (some are ValueErrors) pass through, for the caller to report with exit code 1."""
    from ..weights import WEIGHTS_ERRORS
    try:
        yield
    except WEIGHTS_ERRORS:
        raise
    except (ValueError, *kinds) as e:
        raise UsageError(str(e)) from e


# MODEL and --checkpoint of predict, evaluate and export-onnx: all three load through create_classifier
_MODEL_HELP = ('a classifier: a folder written by `sentizoo amalgamate` (or save_pretrained), an hf-hub: or local-dir: '
              'name, senti_<arch>.fi, or any timm model name (with --checkpoint: its weights)')
_CHECKPOINT_HELP = ('with a model name: load these weights (.safetensors; classes and label names from the config.json '
                   'beside it, else the classifier\'s size) instead of the published ones')
DATA_HELP = ('DATA is a folder of class folders (single-label, classes in sorted order: root/<class>/*.jpg) or a '
             'CSV file with a header "path,<label 1>,...,<label C>" and one row per image: its path (relative '
             'to the CSV) and C numbers, 0/1 labels (--task mll) or a distribution (--task ldl).')


def add_classifier_parser(subparsers, name: str, *, random_weights: bool = False,
                          **kwargs: str) -> argparse.ArgumentParser:
    """The parser of a subcommand that takes MODEL, a classifier, and ``--checkpoint`` (both loaded by
    :func:`create_classifier`); ``random_weights``: also ``--no-pretrained``, instead of ``--checkpoint``."""
    p = subparsers.add_parser(name, **kwargs)
    p.add_argument('model', metavar='MODEL', help=_MODEL_HELP)
    weights = p.add_mutually_exclusive_group() if random_weights else p
    weights.add_argument('--checkpoint', type=Path, metavar='FILE', help=_CHECKPOINT_HELP)
    if random_weights:
        weights.add_argument('--no-pretrained', action='store_true', help='random weights (testing, timing)')
    else:
        p.set_defaults(no_pretrained=False)
    return p


def create_classifier(args: argparse.Namespace) -> Tuple[object, Optional[str]]:
    """MODEL (and ``--checkpoint``) as :func:`sentizoo.inference.load_classifier` loads it: ``(model, task)``."""
    from ..inference import load_classifier
    with usage_errors():
        return load_classifier(args.model, args.checkpoint, pretrained=not args.no_pretrained)


def check_output(path: Path) -> None:
    """A UsageError now, before any work, if ``--output`` could not be written at the end."""
    path = path.resolve()
    if path.is_dir():
        raise UsageError(f'--output {path} is a directory; give a file name.')
    if path.exists() and not path.is_file():  # a device or pipe: written in place
        if not os.access(path, os.W_OK):
            raise UsageError(f'--output {path}: permission denied.')
    elif not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
        raise UsageError(f'--output {path}: cannot create files in {path.parent} (missing or not writable).')


def write_results(output: Optional[Path], write: Callable[[TextIO], None], command: str) -> bool:
    """``write`` the results to ``--output``, atomically (a temporary file beside it, then renamed: an old file is
    replaced only by a complete one; a device or pipe is written in place), or to stdout without ``--output``.
    If ``--output`` fails (e.g. a full disk), one line says so and the results go to stdout; returns False then."""
    from ..weights import atomic_write

    def write_file(path: str) -> None:
        with open(path, 'w', newline='', encoding='utf-8') as out:
            write(out)

    if output is not None:
        try:
            target = output.resolve()  # through a symbolic link, which stays
            if target.exists() and not target.is_file():
                write_file(str(target))
            else:
                atomic_write(target, write_file)
            return True
        except OSError as e:
            print(f'{PROG} {command}: error: cannot write --output {output} ({e.strerror or e}); the results '
                  f'follow on stdout instead.', file=sys.stderr)
    write(sys.stdout)
    return output is None  # False: --output failed


def check_writable_dir(path: Path, flag: str) -> None:
    """Create the folder ``path`` now, so that a training run cannot fail at its end for want of it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f'{flag} {path}: cannot create the folder ({e.strerror or e}).') from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f'{flag} {path}: the folder is not writable.')


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The data and device options of amalgamate and evaluate (device, memory format and progress: the
    :class:`~sentizoo.options.TrainOptions` fields, which both front doors take)."""
    from ..options import TrainOptions
    from ..tasks import DOWNSTREAM_TASKS
    from .arguments import add_dataclass_arguments

    p.add_argument('--task', choices=tuple(DOWNSTREAM_TASKS),
                   help='sll for a folder of class folders (default); mll or ldl for a CSV (required)')
    p.add_argument('--batch-size', type=int, default=32, help='images per step and process (default: 32)')
    p.add_argument('--workers', type=int, help='DataLoader worker processes (default: the CPU cores, up to 8)')
    p.add_argument('--img-size', type=int, help='input size (default: the model\'s, 224)')
    add_dataclass_arguments(p, TrainOptions, {
        'device': 'torch device (default: this process\'s GPU if any, else cpu)',
        'channels_last': 'the channels_last memory format (default: on CUDA only; --no-channels-last keeps the '
                         'contiguous one)',
        'progress': 'a progress bar (default: on)'})


def open_labelled(path: Path, transform=None):
    """The labelled dataset at ``path`` (:func:`sentizoo.datasets.open_dataset`); a UsageError if it is unusable."""
    from ..datasets import open_dataset
    with usage_errors(FileNotFoundError):
        return open_dataset(path, transform)


def task_for(path: Path, task: Optional[str]) -> str:
    """``--task``, which a CSV needs (a folder of class folders is single-label)."""
    if task is None and not path.is_dir():
        raise UsageError(f'{path} is a CSV of label vectors: pass --task mll (0/1 labels) or --task ldl '
                         f'(distributions).')
    return task or 'sll'


def loader(dataset, args: argparse.Namespace, shuffle: bool):
    import torch
    from torch.utils.data import DataLoader
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=shuffle, num_workers=args.workers,
                      persistent_workers=args.workers > 0, pin_memory=torch.cuda.is_available())


def data_config(model, img_size: Optional[int]) -> dict:
    """The model's own data config (a ``senti_*`` model's or a trained folder's is the paper's preprocessing)."""
    from timm.data import resolve_model_data_config
    config = resolve_model_data_config(model)
    if img_size:
        config['input_size'] = (config['input_size'][0], img_size, img_size)
    return config
