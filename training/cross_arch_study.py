"""Cross-architecture amalgamation on the synthetic world: do targets of other families learn from ResNet teachers?
(results are SYNTHETIC)

    python -m training.study cross-arch --teachers ZOO --out runs/cross_arch   # hours on 2 CPU cores, resumable
    python -m training.study cross-arch --teachers ZOO --quick                  # seconds: toy sizes (the tests)
    python -m training.study analyse runs/cross_arch                            # the report again, from the predictions

``ZOO`` is a folder holding ``senti_resnet18.{st,ho,hp}`` in the layout ``SENTIZOO_HOME`` uses (another study's
``zoo``, e.g. one teacher set of the confirmatory study), so the teachers are those a study pre-trained. The
settings are ``training/configs/study/cross_arch.json`` (docs/cross_arch_study.md explains them):

1. for each target of another family (ConvNeXt, ViT) and each seed, the same downstream world (512 labels, 5,000
   test images) is learned twice from the same random start: **alone** (plain fine-tuning) and **amalgamated**
   with the three teachers (the paper's loss; adapters map the target's taps onto the teachers',
   :mod:`sentizoo.adapters`), with one recipe for both;
2. every run saves its per-image test predictions (:func:`training.downstream.save_predictions`);
3. per target, the analysis of the confirmatory study: per-image paired comparison and McNemar's exact test per
   run pair, and the mean gain over seeds with a bootstrap interval over seeds x images
   (:func:`training.confirm.judge_gain`), written to ``<out>/cross_arch.md`` and ``cross_arch.json``.

A stopped run continues where it stopped: each finished run is reused from its result file when its settings and
its weight files (the teachers', by sha256) are the same.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from sentizoo.models import BACKBONE_TAGS

from .study_steps import add_run_arguments

__all__ = ['CROSS_ARCH', 'SETTINGS_NAME', 'MINIMUMS', 'CrossArchError', 'load_cross_arch', 'check_teacher_zoo',
           'planned_cells', 'cell_config', 'run_cross_arch', 'analyse', 'render_markdown', 'main']

CROSS_ARCH = Path(__file__).parent / 'configs' / 'study' / 'cross_arch.json'
SETTINGS_NAME = 'cross_arch_settings.json'
"""The settings a run used, in its ``--out`` folder: what :func:`analyse` reads and how ``analyse`` knows the folder."""
MINIMUMS = {'targets': 2, 'seeds': 3, 'n_test': 5000}
"""What the settings file must at least hold (``--quick`` shrinks the sizes, never the file)."""


class CrossArchError(ValueError):
    """The settings or the teacher zoo are unusable; the message names the file or folder and the fix."""


def _fresh_seed_problems(config: Mapping[str, Any], source: Path) -> List[str]:
    """The seeds of ``config`` that another study config (the confirmatory protocol's own included) already uses."""
    from .confirm_protocol import PROTOCOL, earlier_seeds, protocol_seeds
    used = earlier_seeds(exclude=source)
    for seed in protocol_seeds(json.loads(PROTOCOL.read_text())):
        used.setdefault(seed, []).append(PROTOCOL.name)
    reused = {s: sorted(set(files)) for s, files in used.items() if s in set(config['seeds'])}
    return [f'seeds already used by other configs: {reused}; this study needs fresh ones'] if reused else []


def load_cross_arch(path: Path = CROSS_ARCH, quick: bool = False) -> Dict[str, Any]:
    """The settings at ``path``, checked (fresh seeds, at least 2 targets of other families, 3 seeds and 5,000 test
    images); ``quick`` merges the file's ``quick`` section over them afterwards."""
    from .downstream import merge_config
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CrossArchError(f'{path}: {e}') from None
    smaller = config.pop('quick', {})
    problems = [f'missing required key "{k}"' for k in ('teachers', 'targets', 'seeds', 'arms', 'comparison',
                                                         'downstream', 'analysis') if k not in config]
    if not problems:
        problems += _fresh_seed_problems(config, Path(path))
        if len(config['targets']) < MINIMUMS['targets'] or config['teachers'] in config['targets']:
            problems.append(f'targets: at least {MINIMUMS["targets"]} architectures other than the teachers\'')
        if len(set(config['seeds'])) < MINIMUMS['seeds']:
            problems.append(f'seeds: at least {MINIMUMS["seeds"]} distinct seeds')
        if config['downstream']['data']['n_test'] < MINIMUMS['n_test']:
            problems.append(f'downstream.data.n_test: at least {MINIMUMS["n_test"]}')
        if {config['comparison']['arm'], config['comparison']['versus']} != set(config['arms']):
            problems.append(f'comparison: its arm and versus are the two arms {sorted(config["arms"])}')
    if problems:
        raise CrossArchError(f'{path}: invalid settings:\n  - ' + '\n  - '.join(problems))
    if quick:
        config = merge_config(config, smaller)
    config.update(source=str(path), size='quick' if quick else 'full')
    return config


def check_teacher_zoo(folder: Path, arch: str) -> Path:
    """``folder`` resolved, once it holds ``senti_<arch>.{st,ho,hp}/model.safetensors`` (the layout of
    ``SENTIZOO_HOME``); a :class:`CrossArchError` naming what is missing otherwise."""
    folder = Path(folder).resolve()
    missing = [f'senti_{arch}.{tag}/model.safetensors' for tag in BACKBONE_TAGS
               if not (folder / f'senti_{arch}.{tag}' / 'model.safetensors').is_file()]
    if missing:
        raise CrossArchError(f'--teachers {folder}: missing {", ".join(missing)}; pass the zoo folder of a study '
                             f'(e.g. <study out>/zoo) that holds senti_{arch}.st, .ho and .hp')
    return folder


def planned_cells(config: Mapping[str, Any]) -> Iterator[Tuple[str, int]]:
    """``(target, seed)`` of every pair of runs, seed by seed, so that a stopped run has every target's first seeds."""
    for seed in config['seeds']:
        for target in config['targets']:
            yield target, seed


def _cell_name(target: str, seed: int) -> str:
    return f'{target}_seed{seed}'


def cell_config(config: Mapping[str, Any], target: str, seed: int) -> Dict[str, Any]:
    """The :mod:`training.downstream` config of one cell: both arms of ``target`` on the world of ``seed``, which
    also seeds the training (so both arms start from the same random target and head)."""
    from .downstream import merge_config
    d = config['downstream']
    cap = d.get('max_data', {})
    c = merge_config(d['common'], {'runs': config['arms']})
    c.update(name=_cell_name(target, seed), source=f'cross_arch:{target}', arch=target, dataset='synthetic',
             task=d['task'], teachers=config['teachers'], model_kwargs=dict(config['targets'][target]),
             data={**{k: min(v, cap.get(k, v)) for k, v in d['data'].items()}, 'seed': seed},
             train=dict(c.get('train', {}), seed=seed))
    return c


def run_cross_arch(out: Path, teachers: Path, config: Optional[Mapping[str, Any]] = None, *, quick: bool = False,
                   device: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Every planned cell (reusing finished runs), then :func:`analyse`; returns the analysis."""
    from .downstream import run_experiment
    from .study_steps import SYNTHETIC_BANNER, using_zoo

    config = dict(config) if config is not None else load_cross_arch(quick=quick)
    zoo = check_teacher_zoo(teachers, config['teachers'])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS_NAME).write_text(json.dumps(config, indent=1) + '\n')
    cells = list(planned_cells(config))
    print(f'{SYNTHETIC_BANNER}\n\nSettings: {config["source"]} ({config["size"]}); teachers: senti_'
          f'{config["teachers"]}.{{st,ho,hp}} from {zoo}\n{len(cells)} cells x {len(config["arms"])} arms', flush=True)
    started = time.perf_counter()
    with using_zoo(zoo):
        for i, (target, seed) in enumerate(cells, 1):
            print(f'[{i}/{len(cells)}] {target}, seed {seed}: {", ".join(config["arms"])}', flush=True)
            for path in run_experiment(cell_config(config, target, seed), out=out / 'results', device=device,
                                       progress=progress, reuse=True):
                r = json.loads(path.read_text())
                print(f'      {r["run"]}: test accuracy {r["test"]["accuracy"]:.4f} (epoch {r["best_epoch"]}), '
                      f'{r["wall_seconds"]:.0f} s', flush=True)
    record = analyse(out)
    print(f'Done in {(time.perf_counter() - started) / 60:.1f} min. Report: {out / "cross_arch.md"}', flush=True)
    return record


# --------------------------------------------------------------------------------------------- the analysis

def _target_record(config: Mapping[str, Any], out: Path, target: str) -> Dict[str, Any]:
    from .confirm import judge_gain, paired_cell
    arm, versus = config['comparison']['arm'], config['comparison']['versus']
    rows, pairs, seconds = [], [], {arm: 0.0, versus: 0.0}
    for seed in config['seeds']:
        folder = out / 'results' / _cell_name(target, seed)
        paths = {a: folder / f'{a}.json' for a in (arm, versus)}
        if not all(p.is_file() for p in paths.values()):
            continue
        pair, row = paired_cell(paths)
        walls = {a: json.loads(p.read_text())['wall_seconds'] for a, p in paths.items()}
        for a, wall in walls.items():
            seconds[a] += wall
        pairs.append(pair)
        rows.append({'seed': seed, **row, 'wall_seconds': walls})
    record: Dict[str, Any] = {'target': target, 'model_kwargs': config['targets'][target], 'cells': rows,
                              'found': len(rows), 'expected': len(config['seeds']), 'wall_seconds': seconds}
    if rows:
        record.update(judge_gain({target: pairs}, config['analysis']['bootstrap']))
        for a in (arm, versus):
            record[f'mean_{a}'] = sum(r[a] for r in rows) / len(rows)
    if len(rows) < len(config['seeds']):
        record['verdict'] = f'incomplete ({len(rows)} of {len(config["seeds"])} seeds)'
    return record


def analyse(out: Path) -> Dict[str, Any]:
    """Per target, from the per-image predictions under ``<out>/results`` and the settings in
    ``<out>/cross_arch_settings.json``: every run pair's accuracies, gain, discordant images and McNemar p, the mean
    gain with its bootstrap interval (partial, and marked incomplete, while seeds are missing), the runs' wall time;
    writes ``cross_arch.json`` and ``cross_arch.md`` and returns the record."""
    out = Path(out)
    config = json.loads((out / SETTINGS_NAME).read_text())
    targets = [_target_record(config, out, target) for target in config['targets']]
    record = {'synthetic': True, 'settings': config['source'], 'size': config['size'], 'teachers': config['teachers'],
              'comparison': config['comparison'], 'targets': targets,
              'wall_seconds': sum(sum(t['wall_seconds'].values()) for t in targets)}
    (out / 'cross_arch.json').write_text(json.dumps(record, indent=1) + '\n')
    (out / 'cross_arch.md').write_text(render_markdown(record, config))
    return record


def render_markdown(record: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """``cross_arch.md``: the gain per target first, then every run pair, the wall time and the settings."""
    from .study_steps import SYNTHETIC_BANNER
    arm, versus = config['comparison']['arm'], config['comparison']['versus']
    lines = ['# Cross-architecture amalgamation (SYNTHETIC)', '', SYNTHETIC_BANNER, '',
             f'Settings: `{config["source"]}` ({config["size"]}). Teachers: senti_{config["teachers"]}.{{st,ho,hp}}. '
             f'Both arms start from the same random target on each seed. Recipe: {config.get("recipe", "")}',
             f'Decision rule: {config["analysis"]["decision_rule"]}.', '',
             f'## Gain per target ({arm} - {versus}, test accuracy)', '',
             f'| target | seeds | {versus} | {arm} | mean gain (points) | 95% interval | seeds + / 0 / - | verdict |',
             '|---|---|---|---|---|---|---|---|']
    for t in record['targets']:
        if 'mean_gain' in t:
            s = t['signs']
            lines.append(f'| {t["target"]} | {t["found"]} of {t["expected"]} | {t[f"mean_{versus}"]:.4f} | '
                         f'{t[f"mean_{arm}"]:.4f} | {100 * t["mean_gain"]:+.2f} | [{100 * t["low"]:+.2f}, '
                         f'{100 * t["high"]:+.2f}] | {s["positive"]} / {s["zero"]} / {s["negative"]} | '
                         f'**{t["verdict"]}** |')
        else:
            lines.append(f'| {t["target"]} | 0 of {t["expected"]} | — | — | — | — | — | {t["verdict"]} |')
    lines += ['', '## Every run pair (same test images)', '',
              f'| target | seed | {versus} | {arm} | gain (points) | only {arm} | only {versus} | McNemar p | '
              f'wall {versus} (s) | wall {arm} (s) |', '|---|---|---|---|---|---|---|---|---|---|']
    for t in record['targets']:
        for r in t['cells']:
            lines.append(f'| {t["target"]} | {r["seed"]} | {r[versus]:.4f} | {r[arm]:.4f} | {100 * r["gain"]:+.2f} | '
                         f'{r["a_only"]} | {r["b_only"]} | {r["mcnemar_p"]:.3g} | {r["wall_seconds"][versus]:.0f} | '
                         f'{r["wall_seconds"][arm]:.0f} |')
    lines += ['', f'Wall time of the runs: {record["wall_seconds"]:.0f} s ({record["wall_seconds"] / 3600:.2f} h), '
                  'summed over the result files.', '', '## Settings', '', '```json',
              json.dumps(config, indent=1), '```']
    return '\n'.join(lines) + '\n'


def is_cross_arch_run(folder: Path) -> bool:
    """Whether ``folder`` is the ``--out`` of a cross-arch run (what ``python -m training.study analyse`` asks)."""
    return (Path(folder) / SETTINGS_NAME).is_file()


# ------------------------------------------------------------------------------------------------------ CLI

def main(argv: Optional[Sequence[str]] = None) -> int:
    """``cross-arch``, and ``analyse`` of a cross-arch folder: subcommands of ``python -m training.study``."""
    p = argparse.ArgumentParser(prog='python -m training.study', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    c = sub.add_parser('cross-arch', help='targets of other families, alone vs amalgamated (resumable)')
    c.add_argument('--teachers', type=Path, required=True, help='zoo folder holding senti_resnet18.{st,ho,hp} (the '
                                                                'SENTIZOO_HOME layout, e.g. <study out>/zoo)')
    c.add_argument('--out', type=Path, default=Path('runs/cross_arch'), help='output folder (default: '
                                                                            'runs/cross_arch)')
    c.add_argument('--config', type=Path, default=CROSS_ARCH, help='settings file (default: cross_arch.json in '
                                                                   'training/configs/study/)')
    c.add_argument('--quick', action='store_true', help='toy sizes: seconds (what the tests run)')
    add_run_arguments(c)
    a = sub.add_parser('analyse', help='recompute the report from the saved predictions')
    a.add_argument('out', type=Path, help=f'the folder of a cross-arch run (holds {SETTINGS_NAME} and results/)')
    args = p.parse_args(argv)
    try:
        if args.command == 'analyse':
            analyse(args.out)
            print((args.out / 'cross_arch.md').read_text())
            return 0
        if args.threads:
            torch.set_num_threads(args.threads)
        config = load_cross_arch(args.config, args.quick)
        run_cross_arch(args.out, args.teachers, config, device=args.device, progress=args.progress)
    except CrossArchError as e:
        print(f'python -m training.study {args.command}: error: {e}', file=sys.stderr)
        return 2
    return 0
