"""The configs of the downstream experiments (:mod:`training.downstream`): reading (``extends``), the Table 1 configs
that are no files, and the check of every key before anything runs.

A config (JSON, ``training/configs/``) names one experiment: ``arch``, ``dataset``, ``task`` and its ``runs``, each
a fine-tuning or an amalgamation with the ablation switches of Tables 3 and 4. ``"extends": "<file>"`` reads a base
config first (relative to the file); the file's keys replace the base's, dictionaries merge key by key except
``runs``, which is replaced whole.

Two optional keys teach a target of another architecture (:mod:`sentizoo.adapters`): ``"teachers"``, the zoo
architecture whose ``senti_<teachers>.{st,ho,hp}`` teach it (``arch`` may then be any timm model, started from
``random`` or ``imagenet``; ``"teachers"`` equal to ``arch``: the model's own ST, HO and HP that ``training.export``
wrote into the zoo, whose tags it may start from), and ``"model_kwargs"``, the target's ``timm.create_model``
arguments (``{"img_size": 64}`` for a ViT at 64 px). Absent, they are absent from the validated config too, so a
result file written before they existed is still reused.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from sentizoo.models import ARCHS
from sentizoo.tasks import DOWNSTREAM_TASKS

__all__ = ['CONFIG_DIR', 'SYNTHETIC', 'MODES', 'ABLATION', 'ConfigError', 'merge_config', 'table1_configs',
           'config_names', 'load_config', 'validate_config']

CONFIG_DIR = Path(__file__).parent / 'configs'
SYNTHETIC = 'synthetic'
MODES = ('finetune', 'amalgamate')
ABLATION = ('feature_stages', 'logits_teachers', 'teacher_task_loss', 'freeze_teachers', 'loss_weights')
_SET_BY_RUNNER = ('checkpoint_dir', 'history_path', 'device', 'progress', 'resume', 'checkpoint_every')
# The schedule a paper table's config trains with unless it says otherwise: TrainOptions' defaults, which are the
# paper's; written into the config so that every result file states it.
_PAPER_SCHEDULE = ('epochs', 'lr', 'momentum', 'weight_decay', 'step_size', 'gamma', 'seed')
_SYNTHETIC_DATA = {'n_train': 1000, 'n_val': 200, 'n_test': 400, 'seed': 0}
_DEFAULTS: Dict[str, Any] = {'description': '', 'table': None, 'data_root': None, 'data': {}, 'image_size': 224,
                             'batch_size': 32, 'eval_batch_size': None, 'workers': None, 'checkpoints': True,
                             'predictions': False, 'train': {}}
_REQUIRED = ('arch', 'dataset', 'task', 'runs')
_OPTIONAL = ('teachers', 'model_kwargs')  # teaching another architecture; left out of the config when not given
_CROSS_ARCH_INITS = ('random', 'imagenet')  # the zoo tags' backbones are the teachers' architecture, not the target's


class ConfigError(ValueError):
    """A config is invalid; the message lists every problem, each with its key and the file."""


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


def _check_run(name: str, run: Any, problems: List[str], cross_arch: bool = False) -> None:
    from sentizoo.amalgamation import TARGET_INITS, TEACHER_TAGS
    from sentizoo.options import is_number
    from sentizoo.stages import AMALGAMATION_STAGES

    where = f'runs.{name}'
    if not isinstance(run, Mapping):
        problems.append(f'{where}: a run is an object like {{"mode": "finetune", "init": "imagenet"}}, got {run!r}')
        return
    unknown = sorted(set(run) - {'mode', 'init', *ABLATION})
    if unknown:
        problems.append(f'{where}: unknown key(s) {unknown}; a run has mode, init and, for amalgamate, '
                        f'{list(ABLATION)}')
    mode, init = run.get('mode'), run.get('init')
    if mode not in MODES:
        problems.append(f'{where}.mode: one of {MODES}, got {mode!r}')
    if cross_arch and init not in _CROSS_ARCH_INITS:
        problems.append(f'{where}.init: one of {_CROSS_ARCH_INITS} for a target taught by another architecture '
                        f'("teachers"), got {init!r}')
    elif not isinstance(init, str) or (init not in TARGET_INITS and not Path(init).is_file()):
        problems.append(f'{where}.init: one of {TARGET_INITS} (a zoo tag: senti_<arch>.<tag>) or an existing weight '
                        f'file, got {init!r}')
    if mode == 'finetune' and set(run) & set(ABLATION):
        problems.append(f'{where}: {sorted(set(run) & set(ABLATION))} only apply to "mode": "amalgamate"')
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


def _check_teachers(c: Mapping[str, Any], problems: List[str]) -> None:
    """``teachers`` names a zoo architecture or ``arch`` itself, and ``arch`` a timm model (problems appended)."""
    import timm

    if c['teachers'] not in (*ARCHS, c.get('arch')):
        problems.append(f'teachers: one of {ARCHS} (the zoo architecture that teaches the target) or the target\'s '
                        f'own arch (its ST, HO and HP from training.export), got {c["teachers"]!r}')
    if 'arch' in c and not (isinstance(c['arch'], str) and timm.is_model(c['arch'])):
        problems.append(f'arch: a timm model name (timm.list_models()), got {c["arch"]!r}')


def validate_config(config: Mapping[str, Any], source: str = 'config') -> Dict[str, Any]:
    """Check every key of ``config`` and fill in the defaults; raises :class:`ConfigError` listing all problems."""
    from sentizoo.options import is_int

    from .datasets.emotion import DATASET_NAMES

    problems: List[str] = [f'missing required key "{key}"' for key in _REQUIRED if key not in config]
    known = {*_REQUIRED, *_OPTIONAL, *_DEFAULTS, 'name', 'source'}
    unknown = sorted(set(config) - known)
    if unknown:
        problems.append(f'unknown key(s) {unknown}; a config has {sorted(known - {"source"})}')
    c = merge_config(_DEFAULTS, config)
    cross_arch = c.get('teachers') not in (None, c.get('arch'))
    if c.get('teachers') is not None:
        _check_teachers(c, problems)
    elif 'arch' in c and c['arch'] not in ARCHS:
        problems.append(f'arch: one of {ARCHS}, got {c["arch"]!r} (another timm model needs "teachers": one of '
                        'those architectures, or its own name when training.export wrote its ST, HO and HP)')
    if not isinstance(c.get('model_kwargs', {}), Mapping):
        problems.append(f'model_kwargs: an object of timm.create_model arguments, got {c["model_kwargs"]!r}')
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
            _check_run(name, run, problems, cross_arch)
    if problems:
        raise ConfigError(f'{source}: invalid downstream config:\n  - ' + '\n  - '.join(problems))
    if c['eval_batch_size'] is None:
        c['eval_batch_size'] = c['batch_size']
    return c
