"""The synthetic affect study: does this implementation of the method transfer knowledge? (results are SYNTHETIC)

    python -m training.study                    # the default study: about 45 minutes on 2 CPU cores
    python -m training.study --quick            # seconds: the smallest sizes, on test_resnet (what the tests run)
    python -m training.study --full --device cuda   # + a second label budget, the ablations, an LDL run
    python -m training.study --quick --full     # seconds: every --full experiment at the smallest sizes
    python -m training.study confirm            # the confirmatory protocol (training.confirm): hours, resumable
    python -m training.study analyse runs/confirm   # its tables, intervals and tests, from the saved predictions
    python -m training.study cross-arch --teachers ZOO   # ConvNeXt, ViT targets, ResNet-18 teachers: hours, resumable
    python -m training.study analyse runs/cross_arch     # its report from the predictions (training.cross_arch_study)

No real dataset or weight can be fetched where sentizoo is built, so the procedural affect world of
:mod:`training.datasets.synthetic` is where the paper's claim is put to the test. Its emotion label
mixes colour (what ST should learn), layout (HO) and the object with its state (HP), so each
pre-trained model can hold part of the answer. Six phases, each timed, all output under ``--out``:

1. **pretrain** ST, HO and HP (:func:`training.pretrain.pretrain`, the paper's tasks and heads, from a
   random start) on the world's training images; on a CPU side by side, one process each (``--jobs``);
2. **pretext**: each task measured on held-out images beside its reference
   (:mod:`training.pretext_eval`: chance, the trivial predictor, a unigram caption model), with the
   backbone's BatchNorm statistics of that task's inputs, and checked against the competence goals;
3. **export** the three backbones into ``<out>/zoo`` (loads with ``timm.create_model('senti_resnet18.<tag>',
   pretrained=True)`` and ``SENTIZOO_HOME=<out>/zoo``);
4. **probes**: linear probes of the hidden cues (colour, scene, ANP, emotion) on the frozen features of
   ST, HO, HP and a random network, and of emotion on ST+HO+HP together (:mod:`training.probes`);
5. **downstream**: low-label emotion classification over seeds (:mod:`training.downstream`): random
   init, HP fine-tuning, the amalgamation (the paper's loss, all four models trained) and frozen
   teachers (feature terms only); epoch chosen on validation, accuracy on test;
6. **report**: ``study.md`` (every table, the deviations from the paper, the settings), ``study.json``
   (every number), ``probes.png``, ``downstream.png`` and ``downstream_curves.png``.

The settings live in ``training/configs/study/default.json`` (printed at the start); ``--quick`` and
``--full`` merge its ``quick`` / ``full`` sections over the defaults. A stopped study continues where it
stopped: finished models from their checkpoints, finished downstream runs from their result files (when
their settings and zoo weights are the same), so ``--full`` after the default study trains only its extra
experiments. The world's rules are fixed: the study reports what it measures, including where the
amalgamation does not help.

:mod:`training.demo` is this runner at its smallest useful size (``configs/study/demo.json``: one seed, no probes,
and the check that every pretext loss is at most ``pretext_eval.max_ratio`` of its reference).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from sentizoo.models import ARCHS, BACKBONE_TAGS, tagged_name
from sentizoo.runtime import resolve_device

from .cross_arch_study import is_cross_arch_run
from .study_steps import (SYNTHETIC_BANNER, CannotResumeError, Phases, add_jobs_argument, add_run_arguments,
                          measure_pretext, parallel_jobs, pretrain_model, pretrain_models, using_zoo)

__all__ = ['STUDY_CONFIG', 'CannotResumeError', 'Phases', 'using_zoo', 'load_study_config', 'pretrain_model',
           'measure_pretext', 'run_probes', 'run_downstream', 'summarise_downstream', 'run_study', 'main']

STUDY_CONFIG = Path(__file__).parent / 'configs' / 'study' / 'default.json'


def load_study_config(path: Path = STUDY_CONFIG, quick: bool = False, full: bool = False) -> Dict[str, Any]:
    """The study's settings: ``path`` with its ``quick`` and/or ``full`` section merged over the defaults."""
    from .downstream import merge_config
    config = json.loads(Path(path).read_text())
    sections = {'full': config.pop('full', {}), 'quick': config.pop('quick', {})}
    for name, wanted in (('full', full), ('quick', quick)):
        if wanted:
            config = merge_config(config, sections[name])
    config.update(source=str(path), size='+'.join(name for name, wanted in (('quick', quick), ('full', full))
                                                 if wanted) or 'default')
    return config


# ------------------------------------------------------------------------------------------------- probes

def run_probes(arch: str, image_size: int, settings: Mapping[str, Any], device: Optional[str] = None
               ) -> Dict[str, Dict[str, float]]:
    """Probe every cue on the features of a random backbone, ST, HO and HP (from the zoo in
    ``SENTIZOO_HOME``), emotion on ST+HO+HP together; plus the true cues and chance as references. Features are
    extracted on ``device`` (default: this process's GPU if any, else the CPU, as the other phases)."""
    import timm

    from sentizoo.amalgamation import load_teachers

    from .datasets.synthetic import SyntheticImages
    from .probes import (chance_row, cue_features, cue_targets, extract_features, heldout_view, join_features,
                         joint_name, probe_all)

    transform, resize = heldout_view(image_size)
    data = {split: SyntheticImages(settings[f'n_{split}'], split, transform, seed=settings['seed'], size=resize)
            for split in ('train', 'test')}
    cues = {split: [d.cues(i) for i in range(len(d))] for split, d in data.items()}
    targets = {split: cue_targets(c) for split, c in cues.items()}
    torch.manual_seed(settings['seed'])
    backbones = {'random': timm.create_model(arch, num_classes=0)}
    backbones.update(load_teachers(arch, 0, BACKBONE_TAGS))
    features = {name: tuple(extract_features(model, data[split], device=resolve_device(device))
                                for split in ('train', 'test'))
                for name, model in backbones.items()}
    features['true cues'] = tuple(cue_features(cues[split]) for split in ('train', 'test'))
    report = lambda name: print(f'      probing {name} features', flush=True)  # noqa: E731
    table = probe_all(features, targets['train'], targets['test'], progress=report)
    joint = {joint_name(BACKBONE_TAGS): join_features(features, BACKBONE_TAGS)}
    table.update(probe_all(joint, targets['train'], targets['test'], cues=('emotion',), progress=report))
    table['chance'] = chance_row(targets['train'], targets['test'])
    return table


def _cue_label(cue: str, separator: str) -> str:
    """``temperature (R²)``, ``scene (acc.)``: a probed cue with its score."""
    from .probes import PROBES
    return f'{cue}{separator}({"R²" if PROBES[cue] == "r2" else "acc."})'


def probes_markdown(table: Mapping[str, Mapping[str, float]]) -> str:
    from .probes import PROBES
    header = '| features | ' + ' | '.join(_cue_label(cue, ' ') for cue in PROBES)
    lines = [header + ' |', '|---' * (len(PROBES) + 1) + '|']
    for name, row in table.items():
        label = name.upper() if name in BACKBONE_TAGS else name
        lines.append(f'| {label} | ' + ' | '.join(f'{row[c]:.3f}' if c in row else '—' for c in PROBES) + ' |')
    return '\n'.join(lines)


def plot_probes(table: Mapping[str, Mapping[str, float]], path: Path) -> None:
    """A heat map of the probe table (rows: feature sets, columns: cues), labelled SYNTHETIC."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    from .probes import PROBES
    rows = list(table)
    values = np.array([[table[r].get(c, np.nan) for c in PROBES] for r in rows])
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.6))
    image = ax.imshow(values, cmap='viridis', vmin=0, vmax=1, aspect='auto')
    ax.set_xticks(range(len(PROBES)), [_cue_label(cue, '\n') for cue in PROBES], fontsize=8)
    ax.set_yticks(range(len(rows)), [r.upper() if r in BACKBONE_TAGS else r for r in rows], fontsize=8)
    for (i, j), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=7, color='white' if v < 0.6 else 'black')
    fig.colorbar(image, ax=ax, fraction=0.03)
    ax.set_title('Linear probes of frozen features (SYNTHETIC affect world, held-out images)', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- downstream

def run_downstream(arch: str, settings: Mapping[str, Any], out: Path, device: Optional[str] = None,
                   progress: bool = True) -> List[Dict[str, Any]]:
    """Every experiment of ``settings['experiments']`` once per seed (:func:`training.downstream.run_experiment`,
    teachers from ``SENTIZOO_HOME``); returns the result dicts. ``settings['max_data']`` (``--quick``) caps the
    number of images of each split in every experiment. A run already finished under ``out`` with the same
    settings and the same zoo weights is reused, so a stopped study, or ``--full`` after the default study,
    trains only what is missing."""
    from .downstream import merge_config, run_experiment
    cap = settings.get('max_data', {})
    written = []
    for experiment, spec in settings['experiments'].items():
        data = {k: min(v, cap[k]) if k in cap else v for k, v in spec['data'].items()}
        for seed in settings['seeds']:
            config = merge_config(settings['common'], {k: v for k, v in spec.items() if k != 'data'})
            config.update(name=f'study_{experiment}_seed{seed}', source=f'study:{experiment}', arch=arch,
                          dataset='synthetic', data=dict(data, seed=seed),
                          train=dict(config['train'], seed=seed))
            if arch not in ARCHS:  # another timm architecture: its own models, exported into the zoo, teach it
                config['teachers'] = arch
            print(f'      {experiment}, seed {seed}: {", ".join(spec["runs"])}', flush=True)
            written += run_experiment(config, out=out, device=device, progress=progress, reuse=True)
    return [json.loads(path.read_text()) for path in written]


def summarise_downstream(results: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """``{experiment: {run: {'mean', 'std', 'values', 'metric', 'best_epochs', 'epochs'}}}`` over seeds.

    ``std`` is the sample standard deviation (0 with one seed).
    """
    summary: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for r in results:
        experiment = r['config']['source'].split(':', 1)[1]
        cell = summary.setdefault(experiment, {}).setdefault(r['run'], {
            'metric': r['primary_metric'], 'values': [], 'best_epochs': [],
            'epochs': len(r['history']['epochs']), 'higher_is_better': r['higher_is_better']})
        cell['values'].append(r['test'][r['primary_metric']])
        cell['best_epochs'].append(r['best_epoch'])
    for runs in summary.values():
        for cell in runs.values():
            cell['mean'] = statistics.fmean(cell['values'])
            cell['std'] = statistics.stdev(cell['values']) if len(cell['values']) > 1 else 0.0
    return summary


def downstream_markdown(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """A table per experiment: each method's test metric, as mean ± std and per seed when there are several."""
    blocks = []
    for experiment, runs in summary.items():
        first = next(iter(runs.values()))
        metric, better = first['metric'], 'higher' if first['higher_is_better'] else 'lower'
        if len(first['values']) == 1:
            lines = [f'**{experiment}** (test {metric}, {better} is better, one seed; SYNTHETIC)', '',
                     f'| method | {metric} | selected epoch (of {first["epochs"]}) |', '|---|---|---|']
            lines += [f'| {run} | {cell["values"][0]:.4f} | {cell["best_epochs"][0]} |' for run, cell in runs.items()]
            blocks.append('\n'.join(lines))
            continue
        lines = [f'**{experiment}** (test {metric}, {better} is better, mean ± std over seeds; SYNTHETIC)', '',
                 f'| method | {metric} | per seed | selected epochs (of {first["epochs"]}) |',
                 '|---|---|---|---|']
        for run, cell in runs.items():
            lines.append(f'| {run} | {cell["mean"]:.4f} ± {cell["std"]:.4f} | '
                         f'{", ".join(f"{v:.4f}" for v in cell["values"])} | '
                         f'{", ".join(str(e) for e in cell["best_epochs"])} |')
        blocks.append('\n'.join(lines))
    return '\n\n'.join(blocks)


def plot_downstream(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], results: Sequence[Mapping[str, Any]],
                    out: Path) -> List[Path]:
    """``downstream.png`` (the test metric per method: one dot per seed, the mean as a bar with ± std) and
    ``downstream_curves.png`` (the validation metric per epoch, mean over seeds, per method)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(summary)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.6), squeeze=False)
    for ax, (experiment, runs) in zip(axes[0], summary.items()):
        names = list(runs)
        means = [runs[r]['mean'] for r in names]
        ax.bar(range(len(names)), means, yerr=[runs[r]['std'] for r in names], color='#9ecae1', capsize=4)
        for i, r in enumerate(names):
            ax.scatter([i] * len(runs[r]['values']), runs[r]['values'], color='#08519c', s=14, zorder=3)
        low = min(min(runs[r]['values']) for r in names)
        ax.set_ylim(max(0.0, low - 0.05), max(max(runs[r]['values']) for r in names) + 0.03)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set(title=f'{experiment} (SYNTHETIC)', ylabel=f'test {next(iter(runs.values()))["metric"]}')
    fig.tight_layout()
    bars = out / 'downstream.png'
    fig.savefig(bars, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.4), squeeze=False)
    for ax, experiment in zip(axes[0], summary):
        curves: Dict[str, List[List[float]]] = {}
        for r in results:
            if r['config']['source'] == f'study:{experiment}':
                metric = r['primary_metric']
                curves.setdefault(r['run'], []).append([e['val'][metric] for e in r['history']['epochs']])
        for run, rows in curves.items():
            ax.plot(range(1, len(rows[0]) + 1), np.mean(rows, 0), label=run)
        ax.set(title=f'{experiment}: validation (SYNTHETIC)', xlabel='epoch', ylabel=f'val {metric}')
        ax.legend(fontsize=7)
    fig.tight_layout()
    curves_path = out / 'downstream_curves.png'
    fig.savefig(curves_path, dpi=110)
    plt.close(fig)
    return [bars, curves_path]


# ------------------------------------------------------------------------------------------------- the study

def run_study(out: Path = Path('runs/study'), config: Optional[Mapping[str, Any]] = None, *, quick: bool = False,
              full: bool = False, device: Optional[str] = None, progress: bool = True,
              zoo: Optional[Path] = None, jobs: Optional[int] = None) -> Dict[str, Any]:
    """Run the phases; returns what ``<out>/study.json`` holds. The study and, at its own size, the demo
    (:mod:`training.demo`) are this runner: a config without ``probes`` skips that phase, and a
    ``pretext_eval.max_ratio`` is checked and printed. ``zoo``: where the backbones go (default ``<out>/zoo``);
    ``jobs``: models pre-trained at once (default: :func:`~training.study_steps.parallel_jobs`)."""
    from .export import export
    from .pretext_eval import scores_table
    from .provenance import versions

    config = dict(config) if config is not None else load_study_config(quick=quick, full=full)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    zoo, arch, size = Path(zoo) if zoo is not None else out / 'zoo', config['arch'], config['image_size']
    settings = '\n'.join(f'  {k}: {json.dumps(v)}' for k, v in config.items() if k not in ('deviations', 'description'))
    print(f'{SYNTHETIC_BANNER}\n\nSettings ({config["source"]}):\n{settings}\n', flush=True)
    phase = Phases(6 if 'probes' in config else 5)
    p, jobs = config['pretrain'], parallel_jobs(jobs, len(BACKBONE_TAGS), device)
    with phase('pretrain', f'Pre-training ST, HO and HP {arch} on the synthetic pretext tasks ({size} px)'):
        # a study stopped mid-way picks each model up from its last checkpoint
        checkpoints = pretrain_models({tag: dict(tag=tag, arch=arch, out=out / 'pretrain' / tag,
                                                 settings=dict(p['common'], **p[tag], image_size=size), seed=p['seed'],
                                                 device=device, progress=progress, resume='auto')
                                       for tag in BACKBONE_TAGS}, jobs=jobs)
    pretext: Dict[str, list] = {}
    with phase('pretext', 'Measuring each pretext task on held-out images, beside its reference'):
        e = config['pretext_eval']
        for tag in BACKBONE_TAGS:
            pretext[tag] = measure_pretext(checkpoints[tag], e['samples'], e['batch_size'], device)
        print(scores_table(pretext), flush=True)
        if 'max_ratio' in e:
            print(learning_line(pretext, e['max_ratio']), flush=True)
    with phase('export', f'Exporting the backbones into the zoo {zoo}'):
        for tag in BACKBONE_TAGS:
            exported = export(checkpoints[tag], tag, out=zoo / tagged_name(arch, tag), verbose=False)
            print(f'      {exported.name}: {exported.folder} (sha256 {exported.sha256[:12]}…)', flush=True)
    probes = None
    with using_zoo(zoo):
        if 'probes' in config:
            with phase('probes', 'Linear probes of the hidden cues on frozen features'):
                probes = run_probes(arch, size, config['probes'], device)
                print(probes_markdown(probes), flush=True)
        with phase('downstream', 'Emotion classification with few labels, over seeds'):
            results = run_downstream(arch, config['downstream'], out / 'results', device, progress)
            summary = summarise_downstream(results)
            print(downstream_markdown(summary), flush=True)
    with phase('report', 'Drawing the figures'):
        figures = []
        if probes is not None:
            figures.append(out / 'probes.png')
            plot_probes(probes, figures[0])
        figures += plot_downstream(summary, results, out)
    record = {'synthetic': True, 'note': SYNTHETIC_BANNER, 'config': config,
              'pretext': {tag: [dict(vars(s), ratio=s.ratio) for s in scores] for tag, scores in pretext.items()},
              'pretext_goals_met': all(s.passed for scores in pretext.values() for s in scores),
              'probes': probes, 'downstream': summary, 'seconds': phase.seconds,
              'total_seconds': round(sum(phase.seconds.values()), 2), 'threads': torch.get_num_threads(), 'jobs': jobs,
              'device': str(resolve_device(device)), 'versions': versions()}
    (out / 'study.md').write_text(render_markdown(record, scores_table(pretext), figures))
    (out / 'study.json').write_text(json.dumps(record, indent=1) + '\n')
    print('Phase times: ' + ', '.join(f'{k} {v:.0f} s' for k, v in phase.seconds.items())
          + f'; total {record["total_seconds"] / 60:.1f} min. Report: {out / "study.md"}', flush=True)
    return record


def learning_line(pretext: Mapping[str, Sequence[Any]], max_ratio: float) -> str:
    """Whether every pretext task's held-out loss is at most ``max_ratio`` times its reference, and which are
    not: the sign that each model learned its tasks."""
    above = [f'{tag.upper()} {s.task} {s.ratio:.2f}x' for tag, scores in pretext.items() for s in scores
             if s.ratio > max_ratio]
    verdict = 'yes' if not above else 'NO (' + ', '.join(above) + ')'
    return f'Every pretext task at most {max_ratio:g}x its reference (learned): {verdict}'


def render_markdown(record: Mapping[str, Any], pretext_table: str, figures: Sequence[Path]) -> str:
    """``study.md``: the banner, every table, the phase times, the deviations and the settings."""
    config = record['config']
    deviations = '\n'.join(f'- {d}' for d in config.get('deviations', []))
    times = ', '.join(f'{k} {v:.0f} s' for k, v in record['seconds'].items())
    probes = ('' if record['probes'] is None else '## Linear probes of the hidden cues (held-out images; R² for '
              f"colour, accuracy for classes)\n\n{probes_markdown(record['probes'])}\n\n")
    return f"""# Synthetic affect study (SYNTHETIC)

{SYNTHETIC_BANNER}

## Pretext tasks on held-out images

{pretext_table}

Each task is measured with the backbone's BatchNorm statistics re-estimated from that task's training inputs, as
training normalised each task's batches by their own statistics; "stored BN statistics" is the score with the
statistics the exported model carries, which average both tasks' inputs.

All goals met: {'yes' if record['pretext_goals_met'] else '**no**'}.

{probes}## Downstream, over seeds

{downstream_markdown(record['downstream'])}

Figures: {', '.join(f.name for f in figures)}.

## Run

Phase times ({record['threads']} torch threads, device {record['device']}): {times}.

## Deviations from the paper

{deviations}

## Settings

```json
{json.dumps({k: v for k, v in config.items() if k != 'deviations'}, indent=1)}
```
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == 'cross-arch' or argv[:1] == ['analyse'] and len(argv) == 2 and is_cross_arch_run(argv[1]):
        from .cross_arch_study import main as cross_arch_main
        return cross_arch_main(argv)
    if argv and argv[0] in ('confirm', 'analyse'):  # the confirmatory study's subcommands
        from .confirm import main as confirm_main
        return confirm_main(argv)
    p = argparse.ArgumentParser(prog='python -m training.study', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', type=Path, default=Path('runs/study'), help='output folder (default: runs/study)')
    p.add_argument('--config', type=Path, default=STUDY_CONFIG, help=f'settings file (default: {STUDY_CONFIG.name} '
                                                                     'in training/configs/study/)')
    p.add_argument('--quick', action='store_true', help='the smallest sizes: seconds instead of minutes (with '
                                                        '--full: every --full experiment at these sizes, a smoke test)')
    p.add_argument('--full', action='store_true', help='also a second label budget, the ablations of Tables 3 '
                                                       'and 4 and an LDL run (hours on a CPU; a GPU recommended)')
    add_run_arguments(p)
    add_jobs_argument(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = load_study_config(args.config, args.quick, args.full)
    except (OSError, ValueError) as e:
        print(f'python -m training.study: error: {args.config}: {e}', file=sys.stderr)
        return 2
    try:
        run_study(args.out, config, quick=args.quick, full=args.full, device=args.device, progress=args.progress,
                  jobs=args.jobs)
    except CannotResumeError as e:  # before any training: one line, as for a bad settings file
        print(f'python -m training.study: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
