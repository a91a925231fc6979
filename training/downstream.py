"""Downstream experiments of the paper (Tables 1, 3 and 4): baseline and amalgamation runs from one config.

    python -m training.downstream --config table1_resnet50_fi_sll --data-root /data/FI
    python -m training.downstream --config training/configs/synthetic_ablation_tiny.json --out results/
    python -m training.downstream --config ... --run amalgamation --device cuda:1

A config (JSON, ``training/configs/``) names one experiment: ``arch``, ``dataset``, ``task`` and its
``runs``, each a plain fine-tuning (``"mode": "finetune"``, :func:`sentizoo.engine.finetune`; the paper's
baseline starts from ImageNet) or an amalgamation (``"mode": "amalgamate"``,
:func:`sentizoo.engine.amalgamate`; the official target starts from the HP backbone, the teachers come
from the zoo by tag) with the ablation switches of Tables 3 and 4. ``"extends": "<file>"`` reads a base
config first (relative to the file); the file's keys replace the base's, dictionaries merge key by key
except ``runs``, which is replaced whole. Every key is checked, and the datasets, initial weights and
teachers are loaded, before anything trains. The 30 configs of Table 1, ``table1_<arch>_<dataset>_<task>``, are
no files: each is ``_paper.json`` on one cell of the paper's table (:func:`table1_configs`).

The protocol is the paper's (:func:`sentizoo.datasets.paper_data_config`, the ``senti_*`` weights' own
preprocessing): train images resized to a square of ``floor(image_size / 0.875)`` (256 for 224), randomly
cropped to ``image_size`` and flipped; evaluation resized the same way and centre-cropped; SGD lr 1e-3,
momentum 0.9, weight decay 1e-4, 30 epochs, lr /10 every 10 (``train``, any
:class:`~sentizoo.options.TrainOptions` field); the epoch is selected on the validation split, the test
split is evaluated once, with the selected weights.

Each run writes ``<out>/<experiment>/<run>.json`` (the config, the per-epoch history, the selected epoch,
the validation and test metrics, wall time, versions, ``synthetic``) and, with ``"checkpoints": true``,
its checkpoints in ``<out>/<experiment>/<run>/``, from which a rerun resumes; with ``"predictions": true``, the
test split's per-image outputs in ``<out>/<experiment>/<run>.predictions.npz`` (:func:`save_predictions`). With
``--reuse`` a run whose
result file was written with the same config and the same weight files (by sha256: the target's start and
every teacher, recorded in the file's ``weights``) is not trained again, so a stopped series of experiments
continues where it stopped. ``python -m training.report <out>`` renders them.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from sentizoo.models import ARCHS, BACKBONE_TAGS
from sentizoo.tasks import DOWNSTREAM_TASKS

from .provenance import versions

__all__ = ['FORMAT', 'CONFIG_DIR', 'ConfigError', 'merge_config', 'load_config', 'validate_config', 'split_transforms',
           'table1_configs', 'config_names', 'build_splits', 'init_weights', 'run_teachers', 'weight_files',
           'build_target', 'predictions_path', 'save_predictions', 'run_experiment', 'main']

FORMAT = 'sentizoo.downstream/1'
"""``format`` of every result file (what :mod:`training.report` reads)."""
CONFIG_DIR = Path(__file__).parent / 'configs'
SYNTHETIC = 'synthetic'
MODES = ('finetune', 'amalgamate')
_ABLATION = ('feature_stages', 'logits_teachers', 'teacher_task_loss', 'freeze_teachers', 'loss_weights')
_SET_BY_RUNNER = ('checkpoint_dir', 'history_path', 'device', 'progress', 'resume', 'checkpoint_every')
# The schedule a paper table's config trains with unless it says otherwise: TrainOptions' defaults, which are the
# paper's; written into the config so that every result file states it.
_PAPER_SCHEDULE = ('epochs', 'lr', 'momentum', 'weight_decay', 'step_size', 'gamma', 'seed')
_SYNTHETIC_DATA = {'n_train': 1000, 'n_val': 200, 'n_test': 400, 'seed': 0}
_DEFAULTS: Dict[str, Any] = {'description': '', 'table': None, 'data_root': None, 'data': {}, 'image_size': 224,
                             'batch_size': 32, 'eval_batch_size': None, 'workers': None, 'checkpoints': True,
                             'predictions': False, 'train': {}}
_REQUIRED = ('arch', 'dataset', 'task', 'runs')

_logger = logging.getLogger('training.downstream')


class ConfigError(ValueError):
    """A config is invalid; the message lists every problem, each with its key and the file."""


# ------------------------------------------------------------------------------------------- configuration

def merge_config(base: Mapping[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    """``override`` on top of ``base``: objects merge key by key, except ``runs``, which is replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        if key != 'runs' and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            value = merge_config(merged[key], value)
        merged[key] = copy.deepcopy(value)
    return merged


def _read(path: Path, seen: Sequence[Path] = ()) -> Dict[str, Any]:
    if path in seen:
        raise ConfigError(f'{path}: "extends" loops back to itself ({" -> ".join(map(str, (*seen, path)))}).')
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f'{path}: no such config file.') from None
    except json.JSONDecodeError as e:
        raise ConfigError(f'{path}: not valid JSON ({e}).') from None
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: a config is a JSON object, got {type(data).__name__}.')
    base = data.pop('extends', None)
    if base is None:
        return data
    return merge_config(_read((path.parent / base).resolve(), (*seen, path)), data)


def table1_configs() -> Dict[str, Dict[str, Any]]:
    """The configs of Table 1 by name, ``table1_<arch>_<dataset>_<task>``: the paper's protocol
    (``_paper.json``) on each (arch, dataset, task) cell of the paper's table, in its order."""
    from . import paper_results as paper
    return {f'table1_{arch}_{dataset}_{task}': {'extends': '_paper.json', 'table': 1, 'arch': arch,
                                                 'dataset': dataset, 'task': task}
            for dataset, task, _ in paper.TABLE1_ROWS for arch in paper.ARCHS}


def config_names() -> List[str]:
    """Every shipped config that :func:`load_config` takes by name: the files of :data:`CONFIG_DIR` (but the
    ``_`` bases) and :func:`table1_configs`."""
    files = [p.stem for p in sorted(CONFIG_DIR.glob('*.json')) if not p.stem.startswith('_')]
    return [*table1_configs(), *files]


def load_config(path: Union[str, Path]) -> Dict[str, Any]:
    """Read, resolve (``extends``) and validate the config at ``path``; a bare name is looked up in
    :data:`CONFIG_DIR`, then in :func:`table1_configs`. Returns the complete config (defaults filled in) with
    ``name`` (default: the file's stem) and ``source``."""
    path = Path(path)
    if not path.is_file() and not path.suffix:
        generated = table1_configs().get(str(path))
        if generated is not None:
            data = dict(generated, name=str(path), source=str(path))
            data = merge_config(_read(CONFIG_DIR / data.pop('extends')), data)
            return validate_config(data, str(path))
        path = CONFIG_DIR / f'{path}.json'
    data = _read(path.resolve())
    data.setdefault('name', path.stem)
    data['source'] = str(path)
    return validate_config(data, str(path))


def _check_run(name: str, run: Any, problems: List[str]) -> None:
    from sentizoo.amalgamation import TARGET_INITS, TEACHER_TAGS
    from sentizoo.options import is_number
    from sentizoo.stages import AMALGAMATION_STAGES

    where = f'runs.{name}'
    if not isinstance(run, Mapping):
        problems.append(f'{where}: a run is an object like {{"mode": "finetune", "init": "imagenet"}}, got {run!r}')
        return
    unknown = sorted(set(run) - {'mode', 'init', *_ABLATION})
    if unknown:
        problems.append(f'{where}: unknown key(s) {unknown}; a run has mode, init and, for amalgamate, '
                        f'{list(_ABLATION)}')
    mode, init = run.get('mode'), run.get('init')
    if mode not in MODES:
        problems.append(f'{where}.mode: one of {MODES}, got {mode!r}')
    if not isinstance(init, str) or (init not in TARGET_INITS and not Path(init).is_file()):
        problems.append(f'{where}.init: one of {TARGET_INITS} (a zoo tag: senti_<arch>.<tag>) or an existing weight '
                        f'file, got {init!r}')
    if mode == 'finetune' and set(run) & set(_ABLATION):
        problems.append(f'{where}: {sorted(set(run) & set(_ABLATION))} only apply to "mode": "amalgamate"')
    for key, allowed in (('feature_stages', AMALGAMATION_STAGES), ('logits_teachers', TEACHER_TAGS)):
        value = run.get(key, [])
        if not isinstance(value, list) or not all(v in allowed for v in value):
            problems.append(f'{where}.{key}: a list, subset of {list(allowed)}, got {value!r}')
    for flag in ('teacher_task_loss', 'freeze_teachers'):
        if not isinstance(run.get(flag, False), bool):
            problems.append(f'{where}.{flag}: true or false, got {run[flag]!r}')
    weights = run.get('loss_weights', {})
    if not isinstance(weights, Mapping) or not all(is_number(v) for v in weights.values()):
        problems.append(f'{where}.loss_weights: an object of term -> number, e.g. {{"feat/st": 0.5}}, got {weights!r}')


def _checked_train(train: Any, table: Optional[int], problems: List[str]) -> Any:
    """``train`` checked as :class:`~sentizoo.options.TrainOptions` (problems appended); a paper table's with the
    paper's schedule filled in."""
    from sentizoo.options import TrainOptions

    fields = {f.name for f in dataclasses.fields(TrainOptions)} - set(_SET_BY_RUNNER)
    if not isinstance(train, Mapping) or set(train) - fields:
        problems.append(f'train: an object with keys among {sorted(fields)}, got {train!r}')
        return train
    try:
        TrainOptions(**train)
    except ValueError as e:
        problems.append(f'train: {e}')
    if table is None:
        return train
    return {**{f.name: f.default for f in dataclasses.fields(TrainOptions) if f.name in _PAPER_SCHEDULE}, **train}


def validate_config(config: Mapping[str, Any], source: str = 'config') -> Dict[str, Any]:
    """Check every key of ``config`` and fill in the defaults; raises :class:`ConfigError` listing all problems."""
    from sentizoo.options import is_int

    from .datasets.emotion import DATASET_NAMES

    problems: List[str] = [f'missing required key "{key}"' for key in _REQUIRED if key not in config]
    known = {*_REQUIRED, *_DEFAULTS, 'name', 'source'}
    unknown = sorted(set(config) - known)
    if unknown:
        problems.append(f'unknown key(s) {unknown}; a config has {sorted(known - {"source"})}')
    c = merge_config(_DEFAULTS, config)
    if 'arch' in c and c['arch'] not in ARCHS:
        problems.append(f'arch: one of {ARCHS}, got {c["arch"]!r}')
    if 'dataset' in c and c['dataset'] not in (*DATASET_NAMES, SYNTHETIC):
        problems.append(f'dataset: one of {(*DATASET_NAMES, SYNTHETIC)}, got {c["dataset"]!r}')
    if 'task' in c and c['task'] not in DOWNSTREAM_TASKS:
        problems.append(f'task: one of {tuple(DOWNSTREAM_TASKS)}, got {c["task"]!r}')
    if c['workers'] is None:  # what the machine has: more workers than cores only compete with the model
        from sentizoo.images import default_workers
        c['workers'] = default_workers()
    for key, low in (('image_size', 16), ('batch_size', 1), ('workers', 0)):
        if not is_int(c[key], low):
            problems.append(f'{key}: an integer >= {low}, got {c[key]!r}')
    if c['eval_batch_size'] is not None and not is_int(c['eval_batch_size'], 1):
        problems.append(f'eval_batch_size: null or an integer >= 1, got {c["eval_batch_size"]!r}')
    for flag in ('checkpoints', 'predictions'):
        if not isinstance(c[flag], bool):
            problems.append(f'{flag}: true or false, got {c[flag]!r}')
    if not isinstance(c['data'], Mapping):
        problems.append(f'data: an object, got {c["data"]!r}')
    elif c.get('dataset') == SYNTHETIC:
        c['data'] = {**_SYNTHETIC_DATA, **c['data']}
        bad = sorted(set(c['data']) - set(_SYNTHETIC_DATA))
        if bad:
            problems.append(f'data: unknown synthetic key(s) {bad}; use {sorted(_SYNTHETIC_DATA)}')
        problems += [f'data.{k}: an integer >= 1, got {v!r}' for k, v in c['data'].items()
                     if k.startswith('n_') and not is_int(v, 1)]
    if c['data_root'] is not None and not isinstance(c['data_root'], str):
        problems.append(f'data_root: a folder path, got {c["data_root"]!r}')
    c['train'] = _checked_train(c['train'], c['table'], problems)
    runs = c.get('runs')
    if 'runs' in c and not (isinstance(runs, Mapping) and runs):
        problems.append(f'runs: a non-empty object of run name -> run, got {runs!r}')
    elif runs:
        for name, run in runs.items():
            _check_run(name, run, problems)
    if problems:
        raise ConfigError(f'{source}: invalid downstream config:\n  - ' + '\n  - '.join(problems))
    if c['eval_batch_size'] is None:
        c['eval_batch_size'] = c['batch_size']
    return c


# -------------------------------------------------------------------------------------------- data, models

def split_transforms(image_size: int) -> Dict[str, Any]:
    """``{'train', 'val', 'test'}`` transforms: the paper's preprocessing at ``image_size``, built by
    :mod:`sentizoo.datasets` from the same data config the ``senti_*`` weights and the CLI use."""
    from sentizoo.datasets import eval_transform, paper_data_config, train_transform

    config = paper_data_config(image_size)
    return {'train': train_transform(config), 'val': eval_transform(config), 'test': eval_transform(config)}


def build_splits(config: Mapping[str, Any], data_root: Optional[str] = None) -> Dict[str, Dataset]:
    """``{'train', 'val', 'test'}`` datasets of a validated config, with the paper's transforms."""
    from sentizoo.datasets import paper_data_config, resize_size
    transforms = split_transforms(config['image_size'])
    if config['dataset'] == SYNTHETIC:
        from .datasets.synthetic import SyntheticEmotion
        d = config['data']
        size = resize_size(paper_data_config(config['image_size']))
        return {split: SyntheticEmotion(d[f'n_{split}'], split, transform, seed=d['seed'], size=size,
                                        view=config['task'])
                for split, transform in transforms.items()}
    from .datasets.emotion import get_dataset
    root = data_root or config['data_root']
    if not root:
        raise ConfigError(f'{config["source"]}: dataset {config["dataset"]!r} needs its folder: pass --data-root '
                          '(docs/datasets.md describes each layout) or set "data_root" in the config.')
    return {split: get_dataset(config['dataset'], root, split, transform, config['task'], **config['data'])
            for split, transform in transforms.items()}


def init_weights(arch: str, init: str) -> str:
    """The weights a run's ``init`` names: ``'senti_resnet50.hp'``, ``'resnet50.tv_in1k'``, ``'random'`` or the file."""
    from sentizoo.amalgamation import TARGET_INITS, target_weights
    return target_weights(arch, init) if init in TARGET_INITS else init


def run_teachers(run: Mapping[str, Any]) -> Tuple[str, ...]:
    """The teacher tags a run learns from: none for a fine-tuning, those its amalgamation terms use otherwise."""
    from sentizoo.amalgamation import needed_teachers
    if run['mode'] != 'amalgamate':
        return ()
    return needed_teachers(**{k: run[k] for k in ('feature_stages', 'logits_teachers') if k in run})


def weight_files(c: Mapping[str, Any], name: str) -> Dict[str, str]:
    """The sha256 of every weight file run ``name`` of config ``c`` starts from or learns from: ``'init'`` (a zoo
    tag's or a file's; ``'random'`` and ``'imagenet'`` are fixed by their name) and each teacher's tag."""
    from sentizoo.weights import resolve_weights, sha256_file
    run, arch = c['runs'][name], c['arch']
    files: Dict[str, Path] = {}
    if run['init'] in BACKBONE_TAGS:
        files['init'] = resolve_weights(f'senti_{arch}.{run["init"]}')
    elif run['init'] not in ('random', 'imagenet'):
        files['init'] = Path(run['init'])
    files.update({tag: resolve_weights(f'senti_{arch}.{tag}') for tag in sorted(run_teachers(run))})
    return {key: sha256_file(path) for key, path in files.items()}


def predictions_path(result: Path) -> Path:
    """Where the per-image test outputs of the run whose result file is ``result`` are kept."""
    return result.with_name(f'{result.stem}.predictions.npz')


def save_predictions(path: Path, outputs: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write the test split's per-image outputs, in the split's order, compactly and atomically: ``target``,
    ``prediction`` (the argmax of the fp32 logits: what accuracy scored) and ``logits`` (float16)."""
    import numpy as np

    from sentizoo.weights import atomic_write
    logits = torch.cat([o[0] for o in outputs])
    arrays = {'target': torch.cat([o[1] for o in outputs]).numpy(), 'prediction': logits.argmax(1).short().numpy(),
              'logits': logits.half().numpy()}

    def write(tmp: str) -> None:
        with open(tmp, 'wb') as f:  # a file object: given a name, numpy would append '.npz' to it
            np.savez_compressed(f, **arrays)
    atomic_write(path, write)


def _finished(path: Path, c: Mapping[str, Any], weights: Mapping[str, str]) -> bool:
    """Whether ``path`` is the result of this config's run with these weight files (and, when the config keeps
    them, its per-image predictions are there)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if c['predictions'] and not predictions_path(path).is_file():
        return False
    return saved.get('config') == json.loads(json.dumps(c)) and saved.get('weights') == dict(weights)


def build_target(arch: str, init: str, num_classes: int, seed: int = 0) -> nn.Module:
    """The model to fine-tune: ``arch`` with a fresh ``num_classes`` head (seeded) and its backbone from
    ``init``: one of :data:`~sentizoo.amalgamation.TARGET_INITS` (a zoo tag, ``'hp'`` being the official
    amalgamation target; ``'imagenet'``, torchvision's weights; ``'random'``), built as the library and the CLI build
    it (:func:`sentizoo.amalgamation.create_target`), or a weight file, read as pre-training reads ``--init FILE``
    (:func:`training.pretrain.init_backbone`)."""
    import timm

    from sentizoo.amalgamation import TARGET_INITS, create_target
    torch.manual_seed(seed)
    if init in TARGET_INITS:
        return create_target(arch, num_classes, init)
    from .pretrain import init_backbone
    model = timm.create_model(f'senti_{arch}', num_classes=0)
    init_backbone(model, arch, init)
    model.reset_classifier(num_classes)
    return model


# ----------------------------------------------------------------------------------------------- running

def _result(c: Mapping[str, Any], name: str, history: Dict[str, Any], test: Dict[str, float], seconds: float,
            samples: Dict[str, int], weights: Mapping[str, str]) -> Dict[str, Any]:
    """The result file of run ``name`` of config ``c`` (what :mod:`training.report` reads)."""
    run, best = c['runs'][name], history['best_epoch']
    return {'format': FORMAT, 'experiment': c['name'], 'run': name, 'mode': run['mode'], 'init': run['init'],
            'init_weights': init_weights(c['arch'], run['init']), 'weights': dict(weights),
            'table': c['table'], 'arch': c['arch'], 'dataset': c['dataset'], 'task': c['task'],
            'synthetic': c['dataset'] == SYNTHETIC, 'best_epoch': best,
            'val': history['epochs'][best - 1]['val'] if best else None, 'test': test,
            'primary_metric': history['primary_metric'], 'higher_is_better': history['higher_is_better'],
            'wall_seconds': round(seconds, 3), 'samples': samples,
            'history': history, 'config': c, 'versions': versions(),
            'command': shlex.join(['python', '-m', 'training.downstream', '--config', c['source'], '--run', name]),
            'finished': datetime.now(timezone.utc).isoformat(timespec='milliseconds')}


def run_experiment(config: Union[str, Path, Mapping[str, Any]], *, out: Union[str, Path] = 'results',
                   data_root: Optional[str] = None, runs: Optional[Sequence[str]] = None,
                   device: Optional[str] = None, progress: bool = True, reuse: bool = False) -> List[Path]:
    """Run the runs of an experiment (all, or those named in ``runs``); returns their result files.

    ``config`` is a config file (or a name in :data:`CONFIG_DIR`) or a config mapping (validated here).
    Everything that can fail before training (the config, the datasets, the initial weights, the teachers)
    is checked for every run first. ``reuse``: a run whose result file is already there, written with the same
    config and weight files (:func:`weight_files`), is returned as it is instead of trained again.
    """
    from sentizoo.amalgamation import load_teachers
    from sentizoo.engine import amalgamate, evaluate, finetune

    c = load_config(config) if isinstance(config, (str, Path)) else validate_config(
        {'name': 'experiment', 'source': '<dict>', **config}, config.get('source', '<dict>'))
    selected = list(c['runs']) if runs is None else list(runs)
    missing = [r for r in selected if r not in c['runs']]
    if missing:
        raise ConfigError(f'{c["source"]}: no run(s) {missing}; the config has {list(c["runs"])}.')
    folder = Path(out) / c['name']
    weights = {name: weight_files(c, name) for name in selected}
    finished = {name for name in selected if reuse and _finished(folder / f'{name}.json', c, weights[name])}
    todo = [name for name in selected if name not in finished]
    if todo:  # the data and models only for runs that train: resuming a long series stays cheap
        data = build_splits(c, data_root)
        num_classes = len(data['train'].classes)
        loaders = {split: DataLoader(ds, batch_size=c['batch_size'] if split == 'train' else c['eval_batch_size'],
                                     shuffle=split == 'train', num_workers=c['workers'])
                   for split, ds in data.items()}
        seed = c['train'].get('seed', 0)
        # Fail fast: every run's initial model and teachers load before the first one trains.
        targets = {name: build_target(c['arch'], c['runs'][name]['init'], num_classes, seed) for name in todo}
        for tag in sorted({t for name in todo for t in run_teachers(c['runs'][name])}):
            load_teachers(c['arch'], num_classes, (tag,))  # one at a time: only whether it loads matters here

    written = []
    for name in selected:
        run, path = c['runs'][name], folder / f'{name}.json'
        if name in finished:
            _logger.info('%s/%s: finished before with this config and these weights, reused: %s', c['name'], name, path)
            written.append(path)
            continue
        started = time.perf_counter()
        options = dict(c['train'], device=device, progress=progress)
        if c['checkpoints']:
            options['checkpoint_dir'] = str(folder / name)
        if run['mode'] == 'amalgamate':
            options.update({k: run[k] for k in _ABLATION if k in run})
            model = amalgamate(targets.pop(name), loaders['train'], task=c['task'], val_loader=loaders['val'],
                               target_init='given', **options)  # the run's init already set the target
        else:
            model = finetune(targets.pop(name), loaders['train'], task=c['task'], val_loader=loaders['val'],
                             **options)
        outputs: List[Tuple[torch.Tensor, torch.Tensor]] = []
        test = evaluate(model, loaders['test'], c['task'], device=device, channels_last=c['train'].get('channels_last'),
                        outputs=outputs if c['predictions'] else None)
        path.parent.mkdir(parents=True, exist_ok=True)
        if c['predictions']:
            save_predictions(predictions_path(path), outputs)
        result = _result(c, name, model.sentizoo_history, test, time.perf_counter() - started,
                         {split: len(ds) for split, ds in data.items()}, weights[name])
        path.write_text(json.dumps(result, indent=2) + '\n')
        _logger.info('%s/%s: best epoch %s, test %s = %.4f (%.1f s) -> %s', c['name'], name, result['best_epoch'],
                     result['primary_metric'], test[result['primary_metric']], result['wall_seconds'], path)
        written.append(path)
    return written


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='python -m training.downstream', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', required=True, help='config file, or the name of one in training/configs/')
    p.add_argument('--data-root', help='the dataset folder (overrides the config\'s data_root)')
    p.add_argument('--out', default='results', help='results folder (default: results/)')
    p.add_argument('--run', action='append', dest='runs', help='run only this run of the config (repeatable)')
    p.add_argument('--device', help='cpu, cuda, cuda:1, ... (default: this process\'s GPU if any, else CPU)')
    p.add_argument('--zoo', help='zoo folder holding the teachers (sets SENTIZOO_HOME for this run)')
    p.add_argument('--check', action='store_true', help='only validate the config and exit')
    p.add_argument('--reuse', action='store_true', help='skip a run whose result file under --out was written with '
                                                        'the same config and the same weight files (by sha256)')
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bars')
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    if args.zoo:
        os.environ['SENTIZOO_HOME'] = str(Path(args.zoo).resolve())
    try:
        if args.check:
            config = load_config(args.config)
            print(f'{config["source"]}: valid ({", ".join(config["runs"])})')
            return 0
        run_experiment(args.config, out=args.out, data_root=args.data_root, runs=args.runs, device=args.device,
                       progress=args.progress, reuse=args.reuse)
    except (ConfigError, FileNotFoundError) as e:  # includes WeightsNotFoundError
        print(f'python -m training.downstream: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
