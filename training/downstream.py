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

from sentizoo.models import BACKBONE_TAGS

from .downstream_config import (ABLATION, CONFIG_DIR, SYNTHETIC, ConfigError, config_names, load_config, merge_config,
                                table1_configs, validate_config)
from .provenance import versions

__all__ = ['FORMAT', 'CONFIG_DIR', 'ConfigError', 'merge_config', 'load_config', 'validate_config', 'split_transforms',
           'table1_configs', 'config_names', 'build_splits', 'init_weights', 'run_teachers', 'weight_files',
           'teachers_arch', 'build_target', 'predictions_path', 'save_predictions', 'correct_per_image',
           'run_experiment', 'main']

FORMAT = 'sentizoo.downstream/1'
"""``format`` of every result file (what :mod:`training.report` reads)."""
_logger = logging.getLogger('training.downstream')


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


def teachers_arch(c: Mapping[str, Any]) -> str:
    """The zoo architecture whose ``senti_<arch>.{st,ho,hp}`` teach config ``c``'s target: its ``teachers``, else
    the target's own."""
    return c.get('teachers') or c['arch']


def weight_files(c: Mapping[str, Any], name: str) -> Dict[str, str]:
    """The sha256 of every weight file run ``name`` of config ``c`` starts from or learns from: ``'init'`` (a zoo
    tag's or a file's; ``'random'`` and ``'imagenet'`` are fixed by their name) and each teacher's tag."""
    from sentizoo.amalgamation import teacher_name
    from sentizoo.weights import resolve_weights, sha256_file
    run, arch = c['runs'][name], c['arch']
    files: Dict[str, Path] = {}
    if run['init'] in BACKBONE_TAGS:
        files['init'] = resolve_weights(teacher_name(arch, run['init']))
    elif run['init'] not in ('random', 'imagenet'):
        files['init'] = Path(run['init'])
    files.update({tag: resolve_weights(teacher_name(teachers_arch(c), tag)) for tag in sorted(run_teachers(run))})
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


def correct_per_image(result: Path) -> 'Any':
    """Per test image, whether the run whose result file is ``result`` classified it right (a boolean array, in the
    split's order), checked against the accuracy the result file reports."""
    import numpy as np

    saved = np.load(predictions_path(result))
    correct = saved['prediction'] == saved['target']
    reported = json.loads(Path(result).read_text())['test']['accuracy']
    if abs(correct.mean() - reported) > 1e-9:
        raise ValueError(f'{predictions_path(result)}: accuracy {correct.mean():.6f} from the predictions, '
                         f'{reported:.6f} in {Path(result).name}: the files do not belong together')
    return correct


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


def build_target(arch: str, init: str, num_classes: int, seed: int = 0,
                 model_kwargs: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """The model to fine-tune: ``arch`` with a fresh ``num_classes`` head (seeded) and its backbone from
    ``init``: one of :data:`~sentizoo.amalgamation.TARGET_INITS` (a zoo tag, ``'hp'`` being the official
    amalgamation target; ``'imagenet'``, torchvision's weights; ``'random'``), built as the library and the CLI build
    it (:func:`sentizoo.amalgamation.create_target`, with ``model_kwargs`` for ``timm.create_model``), or a weight
    file, read as pre-training reads ``--init FILE`` (:func:`training.pretrain.init_backbone`)."""
    import timm

    from sentizoo.amalgamation import TARGET_INITS, create_target
    torch.manual_seed(seed)
    if init in TARGET_INITS:
        return create_target(arch, num_classes, init, **(model_kwargs or {}))
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
        targets = {name: build_target(c['arch'], c['runs'][name]['init'], num_classes, seed, c.get('model_kwargs'))
                   for name in todo}
        for tag in sorted({t for name in todo for t in run_teachers(c['runs'][name])}):
            load_teachers(teachers_arch(c), num_classes, (tag,))  # one at a time: only whether it loads matters here

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
            options.update({k: run[k] for k in ABLATION if k in run})
            model = amalgamate(targets.pop(name), loaders['train'], task=c['task'], val_loader=loaders['val'],
                               teachers=c.get('teachers'), target_init='given', **options)  # init set the target
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
