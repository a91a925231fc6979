"""The ``sentizoo`` command line: ``list``, ``info``, ``predict`` and ``export-onnx`` (plus the training commands).

Every subcommand is added by an ``add_<name>_parser(subparsers)`` function (one module per group: :mod:`.zoo`,
:mod:`.predict`, :mod:`.train`) that registers its arguments and ``func`` (``args -> exit code``);
:func:`build_parser` collects them. Exit codes: 0 success, 1 a failure while running (e.g. some images could not be
read), 2 a usage error.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Optional, Sequence

from .common import PROG, UsageError
from .predict import add_export_onnx_parser, add_predict_parser
from .train import add_amalgamate_parser, add_evaluate_parser
from .zoo import add_info_parser, add_list_parser

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    """The ``sentizoo`` parser with every subcommand."""
    from ..version import __version__

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
    if kind.type == 'meta':
        raise UsageError(f'--device {device}: meta tensors hold no data, so nothing can be computed; use cpu or cuda.')
    try:
        torch.empty(1, device=kind)
    except RuntimeError as e:  # a device type this build or machine lacks (mps, xpu ...)
        raise UsageError(f'--device {device} cannot be used here ({str(e).splitlines()[0]}); use cpu.') from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (argparse exits with 2 on malformed arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, 'workers', 0) is None:
        from ..images import default_workers
        args.workers = default_workers()
    with warnings.catch_warnings():
        # one line each, as the errors (`sentizoo predict: warning: ...`), not Python's two lines with the source
        warnings.showwarning = lambda message, *_: print(f'{PROG} {args.command}: warning: {message}', file=sys.stderr)
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
