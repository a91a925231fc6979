"""``sentizoo predict`` (through :func:`sentizoo.inference.predict`) and ``sentizoo export-onnx``."""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import List, TextIO

from .common import (PROG, UsageError, add_classifier_parser, check_output, create_classifier, usage_errors,
                     write_results)

__all__ = ['add_predict_parser', 'add_export_onnx_parser']


def _write_json(rows: List[dict], k: int, out: TextIO) -> None:
    json.dump([dict(path=row['path'], predictions=[dict(label=label, probability=p) for label, p in
                                                    row['predictions']], error=row['error']) for row in rows],
              out, indent=2, allow_nan=False)  # NaN is not JSON: predict turns such rows into errors
    out.write('\n')


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_STARTS = ('=', '+', '-', '@', '\t', '\r')


def _text_cell(text: str) -> str:
    """A text cell (file name, label, error) that no spreadsheet runs: a formula start gets a leading ``'``,
    as OWASP recommends."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _write_csv(rows: List[dict], k: int, out: TextIO) -> None:
    writer = csv.writer(out)
    writer.writerow(['path', *[f'{field}_{i}' for i in range(1, k + 1) for field in ('label', 'probability')],
                     'error'])
    for row in rows:
        cells = [cell for label, p in row['predictions'] for cell in (_text_cell(label), f'{p:.6f}')]
        writer.writerow([_text_cell(row['path']), *cells, *[''] * (2 * k - len(cells)),
                         _text_cell(row['error'] or '')])


def _write_table(rows: List[dict], k: int, out: TextIO) -> None:
    header = ['path', *[f'top-{i}' for i in range(1, k + 1)]]
    cells = [[row['path'], *(f'{label} {p:.3f}' for label, p in row['predictions'])] for row in rows]
    widths = [max(len(line[i]) for line in [header, *cells] if i < len(line)) for i in range(k + 1)]
    for line, row in zip([header, *cells], [None, *rows]):
        if row is not None and row['error']:
            line = [line[0], f'ERROR: {row["error"]}']
        out.write('  '.join(f'{cell:<{width}}' for cell, width in zip(line, widths)).rstrip() + '\n')


_WRITERS = {'table': _write_table, 'json': _write_json, 'csv': _write_csv}


def _write_output(rows: List[dict], k: int, args: argparse.Namespace) -> bool:
    """Write the rows to ``--output`` or stdout (:func:`~.common.write_results`); False if ``--output`` failed."""
    return write_results(args.output, lambda out: _WRITERS[args.format](rows, k, out), 'predict')


def _check_not_the_model(output: Path, name: str, model) -> None:
    """A UsageError if ``--output`` is one of the model's own files: its weights, their config.json, or any file of
    a MODEL folder (writing there would replace the model with the predictions)."""
    from ..onnx import weights_file
    from ..weights import CONFIG_NAME

    weights = weights_file(model)
    own = {weights, weights.parent / CONFIG_NAME} if weights else set()
    if Path(name).is_dir():
        own.update(Path(name).iterdir())
    if output.resolve() in {path.resolve() for path in own}:
        raise UsageError(f'--output {output} is a file of the model {name} itself; write the results elsewhere.')


def _run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..inference import image_files, predict
    from ..weights import WEIGHTS_ERRORS

    if args.top_k < 1 or args.batch_size < 1 or args.workers < 0:
        raise UsageError('--top-k and --batch-size must be >= 1 and --workers >= 0.')
    with usage_errors(FileNotFoundError):
        dataset = image_files(args.paths)
    if args.output is not None:
        check_output(args.output)
    try:
        model, _ = create_classifier(args)
        if args.output is not None:
            _check_not_the_model(args.output, args.model, model)
        with usage_errors():  # --backend that cannot run here
            rows = predict(model, dataset, top_k=args.top_k, batch_size=args.batch_size, workers=args.workers,
                           device=args.device, backend=args.backend, progress=True,
                           log=lambda message: tqdm.write(f'{PROG} predict: {message}', file=sys.stderr))
    except WEIGHTS_ERRORS as e:
        print(f'{PROG} predict: error: {e}', file=sys.stderr)
        return 1
    written = _write_output(rows, min(args.top_k, model.num_classes), args)
    failed = sum(row['error'] is not None for row in rows)
    print(f'{PROG} predict: {len(rows) - failed} images predicted, {failed} failed', file=sys.stderr)
    return 1 if failed or not written else 0


def add_predict_parser(subparsers) -> None:
    from ..onnx import BACKENDS
    p = add_classifier_parser(
        subparsers, 'predict', random_weights=True, help='top-k labels with probabilities for image files and folders',
        description='Predict the top-k labels of every image in PATHS (files, and folders searched recursively) '
                    'with a classifier such as senti_resnet50.fi. Bad files are reported on stderr and as error '
                    'rows; the others are still predicted, and the exit code is 1 if any file failed.')
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
    p.set_defaults(func=_run_predict)


def _run_export_onnx(args: argparse.Namespace) -> int:
    from ..onnx import ATOL, RTOL, ExportMismatchError, export_onnx, onnxruntime_available, weights_file
    from ..weights import WEIGHTS_ERRORS, sha256_file

    if not onnxruntime_available():
        raise UsageError('onnx and onnxruntime are not installed: pip install "sentizoo[onnx]".')
    if args.output.suffix != '.onnx' or not args.output.parent.is_dir() or args.output.is_dir():
        raise UsageError(f'OUTPUT {args.output}: expected a .onnx file in an existing folder.')
    try:
        model, _ = create_classifier(args)
        weights = weights_file(model)  # provenance: the graph names the weight file it was made from
        with usage_errors():  # an --opset that torch cannot write
            metadata = export_onnx(model, args.output, opset=args.opset, name=args.model,
                                   weights_sha256=sha256_file(weights) if weights else None)
    except (*WEIGHTS_ERRORS, ExportMismatchError) as e:
        print(f'{PROG} export-onnx: error: {e}', file=sys.stderr)
        return 1
    except OSError as e:
        print(f'{PROG} export-onnx: error: cannot write {args.output} ({e.strerror or e}).', file=sys.stderr)
        return 1
    print(f'{PROG} export-onnx: wrote {args.output} (opset {args.opset}, input {metadata["data_config"]["input_size"]},'
          f' max abs difference to PyTorch {metadata["max_abs_diff"]:.2g}, tolerance {ATOL:g} + {RTOL:g} x |logit|)',
          file=sys.stderr)
    return 0


def add_export_onnx_parser(subparsers) -> None:
    from ..onnx import DEFAULT_OPSET
    p = add_classifier_parser(
        subparsers, 'export-onnx',
        help='export a classifier to ONNX (dynamic batch, labels and preprocessing in its metadata)',
        description='Export MODEL to OUTPUT (.onnx): input "images" (float32 NCHW, dynamic batch, the model\'s input '
                    'size), output "logits"; the metadata holds the label names, the timm data config and the '
                    'opset. The graph is checked against eager PyTorch on a batch and not written if it disagrees. '
                    'Needs the [onnx] extra.')
    p.add_argument('output', metavar='OUTPUT', type=Path, help='the .onnx file to write')
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset (default: %(default)s)')
    p.set_defaults(func=_run_export_onnx)
