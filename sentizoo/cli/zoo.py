"""``sentizoo list`` and ``sentizoo info``: what the zoo holds and where each model's weights resolve from."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from .common import PROG, usage_errors

__all__ = ['add_list_parser', 'add_info_parser']


def _local_weights(name: str, cfg) -> Optional[str]:
    from ..weights import WEIGHTS_NAME, find_local
    path = find_local(name, cfg.hf_hub_id, cfg.hf_hub_filename or WEIGHTS_NAME)
    return str(path) if path else None


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


def _print_cfg(cfg: dict) -> None:
    print('pretrained config:')
    for key, value in cfg.items():
        if value is not None:
            print(f'  {key}: {value}')


def _folder_info(folder: Path) -> int:
    """``info`` of a folder that ``predict`` takes (``save_pretrained``'s), verified as predict verifies it."""
    from ..weights import WEIGHTS_ERRORS, WEIGHTS_NAME, load_folder
    try:
        model, config = load_folder(folder)
    except WEIGHTS_ERRORS as e:
        print(f'{PROG} info: error: {e}', file=sys.stderr)
        return 1
    cfg = model.pretrained_cfg
    print(f'model: {folder}')
    print(f'architecture: {cfg.get("architecture")}')
    print(f'labels: {model.num_classes or "none (backbone: num_classes=0, no classifier)"}')
    if cfg.get('label_names'):
        print(f'label names: {", ".join(cfg["label_names"])}')
    if config.get('task'):
        print(f'task: {config["task"]}')
    verified = 'sha256 verified' if config.get('sha256') else 'no sha256 recorded in its config.json'
    print(f'weights: {folder / WEIGHTS_NAME} ({verified})')
    _print_cfg(cfg)
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from ..inference import find_pretrained_cfg, with_default_tag
    from ..models import stock_name
    from ..published import SHA256
    from ..weights import ChecksumMismatchError, InvalidWeightsError, WeightsNotFoundError, resolve_weights

    if Path(args.model).is_dir():
        return _folder_info(Path(args.model))
    with usage_errors():
        cfg = find_pretrained_cfg(args.model)
    name = with_default_tag(args.model, cfg)
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
    _print_cfg(cfg.to_dict())
    return code


def add_info_parser(subparsers) -> None:
    p = subparsers.add_parser(
        'info', help="show a model's config, label names and where its weights resolve from",
        description='Show the pretrained config of MODEL, its label names and where its weights come from.')
    p.add_argument('model', metavar='MODEL', help='e.g. senti_resnet50.fi (no tag: the default tag), or a folder that '
                                                 'predict takes (written by sentizoo amalgamate or save_pretrained)')
    p.set_defaults(func=_run_info)
