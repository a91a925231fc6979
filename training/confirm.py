"""The confirmatory synthetic study: a protocol fixed before its runs, and its analysis (results are SYNTHETIC).

    python -m training.study confirm                    # the protocol: about 14 hours on 2 CPU cores, resumable
    python -m training.study confirm --device cuda      # one shot on a GPU
    python -m training.study confirm --quick            # a minute or two: every arm and control at toy sizes
    python -m training.study analyse runs/confirm       # every table, interval and test, from the saved predictions

The exploratory study (``python -m training.study``) found the amalgamation +1.9 points over HP fine-tuning on
one set of teachers and three seeds, after a second look. This study asks the same question once more under a
protocol committed before any of its runs (``training/configs/study/confirm.json``, explained in
docs/confirmatory_study.md):

1. **pretrain** three independent teacher sets (ST, HO and HP each from its own seed, the exploratory recipe);
2. **pretext**: each model's pretext tasks on held-out test images, beside their references (reported, never
   used to choose: no teacher is retrained);
3. **zoos**: per teacher set, three zoos of ``senti_<arch>.{st,ho,hp}``: the pre-trained teachers, randomly
   initialised ones (the control: same architecture and loss, no pre-training) and HP in all three slots;
4. **tune**: every arm over the same small grid (learning rate x epochs) on the validation images of a
   development seed that no test run uses; the best setting per arm is then held fixed;
5. **test**: every arm on every (teacher set, test seed) cell, each with 5,000 test images whose per-image
   outputs are saved; every target starts from its cell's HP backbone, with the same head, so two arms of a
   cell differ only in what they learn from;
6. **analyse**: per-image paired comparisons, McNemar's exact test per cell, and a hierarchical bootstrap over
   teacher sets x seeds x images for the mean gain with its 95% interval, judged by the protocol's rule.

Everything lands under ``--out`` and a stopped run continues where it stopped: models from their checkpoints,
runs from their result files (same settings, same weight files).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from sentizoo.models import BACKBONE_TAGS

from .confirm_protocol import PROTOCOL, TEACHER_ZOOS, ProtocolError, load_protocol, planned_cells
from .study_steps import add_jobs_argument, add_run_arguments, parallel_jobs

__all__ = ['build_zoos', 'choose_settings', 'run_confirm', 'paired_cell', 'judge_gain', 'analyse', 'render_markdown',
           'main']

# ---------------------------------------------------------------------------------------------- the teachers

def _pretrain_sets(config: Mapping[str, Any], out: Path, device: Optional[str], progress: bool,
                   jobs: Optional[int]) -> Dict[str, Dict[str, Path]]:
    from .study_steps import pretrain_models
    p, runs = config['pretrain'], {}
    for name, teacher_set in config['teacher_sets'].items():
        for tag in BACKBONE_TAGS:
            runs[f'{name}/{tag}'] = dict(tag=tag, arch=config['arch'], out=out / 'pretrain' / name / tag,
                                         settings=dict(p['common'], **p[tag], image_size=config['image_size']),
                                         seed=teacher_set['pretrain'][tag], device=device, progress=progress,
                                         resume='auto')
    checkpoints: Dict[str, Dict[str, Path]] = {}
    for key, final in pretrain_models(runs, jobs=parallel_jobs(jobs, len(runs), device)).items():
        name, tag = key.split('/')
        checkpoints.setdefault(name, {})[tag] = final
    return checkpoints


def _pretext_scores(config: Mapping[str, Any], checkpoints: Mapping[str, Mapping[str, Path]], out: Path,
                    device: Optional[str]) -> Dict[str, Dict[str, list]]:
    """Each set's pretext scores on test images, kept in ``<out>/pretext.json`` by checkpoint sha256."""
    from sentizoo.weights import sha256_file

    from .study_steps import measure_pretext
    path, e = out / 'pretext.json', config['pretext_eval']
    saved = json.loads(path.read_text()) if path.is_file() else {}
    scores: Dict[str, Dict[str, list]] = {}
    for name, tags in checkpoints.items():
        for tag, checkpoint in tags.items():
            key, digest = f'{name}/{tag}', sha256_file(checkpoint)
            if saved.get(key, {}).get('sha256') != digest:
                rows = measure_pretext(checkpoint, e['samples'], e['batch_size'], device)
                saved[key] = {'sha256': digest, 'scores': [dict(vars(s), ratio=s.ratio) for s in rows]}
                path.write_text(json.dumps(saved, indent=1) + '\n')
            scores.setdefault(name, {})[tag] = saved[key]['scores']
    return scores


def build_zoos(config: Mapping[str, Any], checkpoints: Mapping[str, Mapping[str, Path]], out: Path
               ) -> Dict[str, Dict[str, Path]]:
    """``{set: {zoo kind: folder}}``: per teacher set, the pre-trained teachers, random ones (each from its own
    seed) and HP in all three slots, each folder a zoo of ``senti_<arch>.{st,ho,hp}``. Deterministic, so a
    rerun writes the same files (and the same sha256) again."""
    import timm

    from sentizoo.saving import save_pretrained

    from .export import export
    arch, zoos = config['arch'], {}
    for name, tags in checkpoints.items():
        folders = {kind: out / 'zoo' / name / kind for kind in TEACHER_ZOOS}
        with contextlib.redirect_stdout(io.StringIO()):  # export prints the registry line for maintainers
            for tag in BACKBONE_TAGS:
                export(tags[tag], tag, out=folders['pretrained'] / f'senti_{arch}.{tag}')
            hp = folders['pretrained'] / f'senti_{arch}.hp' / 'model.safetensors'
            for tag in BACKBONE_TAGS:
                export(hp, tag, arch=arch, out=folders['hp'] / f'senti_{arch}.{tag}')
                torch.manual_seed(config['teacher_sets'][name]['random'][tag])
                save_pretrained(timm.create_model(f'senti_{arch}.{tag}', num_classes=0),
                                folders['random'] / f'senti_{arch}.{tag}', verbose=False)
        zoos[name] = folders
    return zoos


# ------------------------------------------------------------------------------------------------- the runs

def _run(config: Mapping[str, Any], zoos: Mapping[str, Path], experiment: str, arm: str, seed: int,
         setting: Mapping[str, Any], out: Path, name: str, device: Optional[str], progress: bool) -> Dict[str, Any]:
    """One arm on one downstream world; returns its result (reused when it finished before)."""
    from .downstream import merge_config, run_experiment
    from .study_steps import using_zoo
    d = config['downstream']
    spec, teachers = d['experiments'][experiment], d['arms'][arm]['teachers']
    cap = d.get('max_data', {})
    # every arm of a cell starts from the cell's HP backbone through the same path, so the same target
    start = zoos['pretrained'] / f'senti_{config["arch"]}.hp' / 'model.safetensors'
    run = dict(d['arms'][arm]['run'], init=str(start))
    epochs = setting['epochs']
    c = merge_config(d['common'], {'task': spec['task'], 'runs': {arm: run}})
    c.update(name=name, source=f'confirm:{experiment}', arch=config['arch'], dataset='synthetic',
             data={**{k: min(v, cap.get(k, v)) for k, v in spec['data'].items()}, 'seed': seed},
             train={'epochs': epochs, 'lr': setting['lr'], 'seed': seed,
                    'step_size': max(1, round(d['tuning']['step_fraction'] * epochs))})
    with using_zoo(zoos[teachers or 'pretrained']):
        [path] = run_experiment(c, out=out, device=device, progress=progress, reuse=True)
    return json.loads(path.read_text())


def _grid(config: Mapping[str, Any]) -> List[Dict[str, Any]]:
    grid = config['downstream']['tuning']['grid']
    return [{'lr': lr, 'epochs': epochs} for lr in grid['lr'] for epochs in grid['epochs']]


def choose_settings(results: Mapping[str, Sequence[Tuple[Mapping[str, Any], Mapping[str, Any]]]]
                    ) -> Dict[str, Dict[str, Any]]:
    """Per arm, the grid point whose run scored best on validation (``results``: ``{arm: [(setting, result),
    ...]}`` in grid order; the earlier point wins a tie)."""
    chosen = {}
    for arm, rows in results.items():
        best = None
        for setting, result in rows:
            value = result['val'][result['primary_metric']]
            if best is None or (value > best[1] if result['higher_is_better'] else value < best[1]):
                best = (setting, value)
        chosen[arm] = dict(best[0], val=best[1])
    return chosen


def _run_all(calls: Mapping[str, Mapping[str, Any]], jobs: int) -> Dict[str, Dict[str, Any]]:
    """:func:`_run` for each ``{label: its keyword arguments}``, ``jobs`` at a time (:func:`~training.study_steps.
    in_processes`); a line per run as it starts (one at a time) or ends (in parallel). Returns ``{label: result}``."""
    from .study_steps import in_processes
    results: Dict[str, Dict[str, Any]] = {}
    if jobs <= 1:
        for i, (label, kwargs) in enumerate(calls.items(), 1):
            print(f'      [{i}/{len(calls)}] {label}', flush=True)
            results[label] = _run(**kwargs)
        return results

    def done(label: str, result: Dict[str, Any]) -> None:
        results[label] = result
        print(f'      [{len(results)}/{len(calls)}] {label}: done', flush=True)
    in_processes(_run, {label: dict(kwargs, progress=False) for label, kwargs in calls.items()}, jobs, done)
    return results


def _tune(config, zoos, out, device, progress, jobs) -> Dict[str, Dict[str, Any]]:
    d = config['downstream']
    experiment, seed, teacher_set = d['tuning']['experiment'], d['development_seed'], d['development_teacher_set']
    calls = {f'{arm}: lr {setting["lr"]}, {setting["epochs"]} epochs (seed {seed}, set {teacher_set})': dict(
        config=config, zoos=zoos[teacher_set], experiment=experiment, arm=arm, seed=seed, setting=setting,
        out=out / 'tuning', name=f'{experiment}_{teacher_set}_seed{seed}_lr{setting["lr"]}_ep{setting["epochs"]}',
        device=device, progress=progress) for arm in d['experiments'][experiment]['arms'] for setting in _grid(config)}
    results = _run_all(calls, parallel_jobs(jobs, len(calls), device))
    rows: Dict[str, list] = {}
    for label, kwargs in calls.items():  # in grid order, whatever order the runs ended in
        rows.setdefault(kwargs['arm'], []).append((kwargs['setting'], results[label]))
    chosen = choose_settings(rows)
    (out / 'chosen_settings.json').write_text(json.dumps(chosen, indent=1) + '\n')
    return chosen


def run_confirm(out: Path = Path('runs/confirm'), config: Optional[Mapping[str, Any]] = None, *, quick: bool = False,
                device: Optional[str] = None, progress: bool = True, jobs: Optional[int] = None) -> Dict[str, Any]:
    """Run the protocol's phases, then :func:`analyse`; returns the analysis. ``jobs``: teacher models, then
    downstream runs, trained at once (default: :func:`~training.study_steps.parallel_jobs`)."""
    from .pretext_eval import PretextScore, scores_table
    from .study_steps import SYNTHETIC_BANNER, Phases

    config = dict(config) if config is not None else load_protocol(quick=quick)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'protocol.json').write_text(json.dumps(config, indent=1) + '\n')  # what analyse reads
    print(f'{SYNTHETIC_BANNER}\n\nProtocol: {config["source"]} ({config["size"]})\n', flush=True)
    phase = Phases(6)
    with phase('pretrain', f'Pre-training {len(config["teacher_sets"])} teacher sets (ST, HO, HP each)'):
        checkpoints = _pretrain_sets(config, out, device, progress, jobs)
    with phase('pretext', 'Measuring every pretext task on held-out test images'):
        pretext = _pretext_scores(config, checkpoints, out, device)
        for name, tags in pretext.items():
            table = {tag: [PretextScore(**{k: v for k, v in s.items() if k != 'ratio'}) for s in rows]
                     for tag, rows in tags.items()}
            print(f'teacher set {name}:\n{scores_table(table)}', flush=True)
    with phase('zoos', 'Writing the zoos: pre-trained, random and HP-only teachers'):
        zoos = build_zoos(config, checkpoints, out)
    with phase('tune', 'Tuning every arm on the development seed (validation images)'):
        chosen = _tune(config, zoos, out, device, progress, jobs)
        print('      chosen: ' + '; '.join(f'{arm} lr {s["lr"]}, {s["epochs"]} epochs (val {s["val"]:.4f})'
                                           for arm, s in chosen.items()), flush=True)
    cells = list(planned_cells(config))
    with phase('test', f'Testing: {len(cells)} runs with per-image predictions'):
        calls = {f'{experiment}, set {teacher_set}, seed {seed}: {arm}': dict(
            config=config, zoos=zoos[teacher_set], experiment=experiment, arm=arm, seed=seed, setting=chosen[arm],
            out=out / 'results', name=f'{experiment}_{teacher_set}_seed{seed}', device=device, progress=progress)
            for experiment, teacher_set, seed, arm in cells}
        _run_all(calls, parallel_jobs(jobs, len(calls), device))
    with phase('analyse', 'Paired per-image analysis'):
        analysis = analyse(out)
    print(f'Report: {out / "confirm.md"}', flush=True)
    return analysis


# --------------------------------------------------------------------------------------------- the analysis

def paired_cell(runs: Mapping[str, Path]) -> Tuple[Any, Dict[str, Any]]:
    """Two runs on the same test images, ``{arm: result file, versus: result file}`` (the arm first): their
    :class:`~training.paired_stats.Discordant` images and the cell's row (each run's test accuracy, the gain,
    the discordant counts, McNemar's exact p), from the saved per-image predictions."""
    from .downstream import correct_per_image
    from .paired_stats import discordant, mcnemar_exact
    (arm, a), (versus, b) = runs.items()
    pair = discordant(correct_per_image(a), correct_per_image(b))
    accuracy = [json.loads(Path(p).read_text())['test']['accuracy'] for p in (a, b)]
    return pair, {arm: accuracy[0], versus: accuracy[1], 'gain': pair.gain, 'a_only': pair.a_only,
                  'b_only': pair.b_only, 'n': pair.n, 'mcnemar_p': mcnemar_exact(pair.a_only, pair.b_only)}


def judge_gain(cells: Mapping[str, Sequence[Any]], bootstrap: Mapping[str, Any]) -> Dict[str, Any]:
    """The mean gain over ``cells`` (``{group: [Discordant per seed]}``) with its hierarchical bootstrap interval
    (``bootstrap``: ``replicates``, ``seed``, ``interval``), the signs of the cells' gains, and the protocol's
    verdict: supported when the interval lies above 0, contradicted below, else not supported."""
    from .paired_stats import hierarchical_bootstrap, sign_counts
    result = hierarchical_bootstrap(cells, bootstrap['replicates'], bootstrap['seed'], bootstrap['interval'])
    gains = [pair.gain for pairs in cells.values() for pair in pairs]
    return dict(mean_gain=result.mean, low=result.low, high=result.high,
                signs=dict(zip(('positive', 'zero', 'negative'), sign_counts(gains))),
                verdict='supported' if result.low > 0 else 'contradicted' if result.high < 0 else 'not supported')


def _comparison(config: Mapping[str, Any], out: Path, hypothesis: Mapping[str, Any]) -> Dict[str, Any]:
    d = config['downstream']
    arm, versus, experiment = hypothesis['arm'], hypothesis['versus'], hypothesis['experiment']
    seeds = [s for s in d['test_seeds'] if all(s in d['arms'][a].get('seeds', d['test_seeds']) for a in (arm, versus))]
    cells: Dict[str, list] = {}
    rows, expected = [], 0
    for teacher_set in config['teacher_sets']:
        for seed in seeds:
            expected += 1
            folder = out / 'results' / f'{experiment}_{teacher_set}_seed{seed}'
            paths = {a: folder / f'{a}.json' for a in (arm, versus)}
            if not all(p.is_file() for p in paths.values()):
                continue
            pair, row = paired_cell(paths)
            cells.setdefault(teacher_set, []).append(pair)
            rows.append({'teacher_set': teacher_set, 'seed': seed, **row})
    found = len(rows)
    record: Dict[str, Any] = dict(hypothesis, cells=rows, found=found, expected=expected)
    if found < expected:
        record['verdict'] = f'incomplete ({found} of {expected} cells)'
        return record
    record.update(judge_gain(cells, config['analysis']['bootstrap']))
    return record


def analyse(out: Path) -> Dict[str, Any]:
    """Every comparison of the protocol saved in ``<out>/protocol.json``, from the per-image predictions under
    ``<out>/results``; writes ``confirm.json`` and ``confirm.md`` and returns the record. A comparison whose runs
    are not all there says so instead of giving a verdict."""
    out = Path(out)
    config = json.loads((out / 'protocol.json').read_text())
    h = config['hypotheses']
    named = [('primary', h['primary'])] + [('secondary', x) for x in h.get('secondary', [])] + \
        [('descriptive', x) for x in h.get('descriptive', [])]
    comparisons = [dict(_comparison(config, out, hypothesis), role=role) for role, hypothesis in named]
    chosen = out / 'chosen_settings.json'
    record = {'synthetic': True, 'protocol': config['source'], 'size': config['size'],
              'chosen_settings': json.loads(chosen.read_text()) if chosen.is_file() else None,
              'arms': _arm_means(config, out), 'comparisons': comparisons,
              'pretext': json.loads((out / 'pretext.json').read_text()) if (out / 'pretext.json').is_file() else {}}
    (out / 'confirm.json').write_text(json.dumps(record, indent=1) + '\n')
    (out / 'confirm.md').write_text(render_markdown(record, config))
    return record


def _arm_means(config: Mapping[str, Any], out: Path) -> Dict[str, Dict[str, Any]]:
    """``{experiment: {arm: {'mean', 'std', 'runs', 'seconds'}}}``: test accuracy over the finished cells."""
    table: Dict[str, Dict[str, Any]] = {}
    for experiment, teacher_set, seed, arm in planned_cells(config):
        path = out / 'results' / f'{experiment}_{teacher_set}_seed{seed}' / f'{arm}.json'
        if path.is_file():
            result = json.loads(path.read_text())
            cell = table.setdefault(experiment, {}).setdefault(arm, {'values': [], 'seconds': 0.0})
            cell['values'].append(result['test']['accuracy'])
            cell['seconds'] += result['wall_seconds']
    for arms in table.values():
        for cell in arms.values():
            values = cell.pop('values')
            cell.update(runs=len(values), mean=statistics.fmean(values),
                        std=statistics.stdev(values) if len(values) > 1 else 0.0)
    return table


def render_markdown(record: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """``confirm.md``: the verdicts first, then every cell, the arms, the chosen settings."""
    from .study_steps import SYNTHETIC_BANNER
    lines = ['# Confirmatory synthetic study (SYNTHETIC)', '', SYNTHETIC_BANNER, '',
             f'Protocol: `{config["source"]}` ({config["size"]}). Decision rule: {config["analysis"]["decision_rule"]}',
             '', '## Verdicts', '',
             '| role | comparison | experiment | mean gain (points) | 95% interval | cells + / 0 / - | verdict |',
             '|---|---|---|---|---|---|---|']
    for c in record['comparisons']:
        what = f'{c["arm"]} - {c["versus"]}'
        if 'mean_gain' in c:
            s = c['signs']
            lines.append(f'| {c["role"]} | {what} | {c["experiment"]} | {100 * c["mean_gain"]:+.2f} | '
                         f'[{100 * c["low"]:+.2f}, {100 * c["high"]:+.2f}] | {s["positive"]} / {s["zero"]} / '
                         f'{s["negative"]} | **{c["verdict"]}** |')
        else:
            lines.append(f'| {c["role"]} | {what} | {c["experiment"]} | — | — | — | {c["verdict"]} |')
    lines += ['', '## Test accuracy per arm (mean ± std over cells)', '', '| experiment | arm | runs | accuracy | '
              'compute (s) |', '|---|---|---|---|---|']
    for experiment, arms in record['arms'].items():
        for arm, cell in arms.items():
            lines.append(f'| {experiment} | {arm} | {cell["runs"]} | {cell["mean"]:.4f} ± {cell["std"]:.4f} | '
                         f'{cell["seconds"]:.0f} |')
    for c in record['comparisons']:
        lines += ['', f'## {c["role"]}: {c["arm"]} - {c["versus"]} ({c["experiment"]}), per cell', '',
                  f'| set | seed | {c["arm"]} | {c["versus"]} | gain (points) | only {c["arm"]} | only {c["versus"]} '
                  '| McNemar p |', '|---|---|---|---|---|---|---|---|']
        for r in c['cells']:
            lines.append(f'| {r["teacher_set"]} | {r["seed"]} | {r[c["arm"]]:.4f} | {r[c["versus"]]:.4f} | '
                         f'{100 * r["gain"]:+.2f} | {r["a_only"]} | {r["b_only"]} | {r["mcnemar_p"]:.3g} |')
    if record['chosen_settings']:
        lines += ['', '## Settings chosen on the development seed (validation accuracy)', '',
                  '| arm | lr | epochs | validation |', '|---|---|---|---|']
        lines += [f'| {arm} | {s["lr"]} | {s["epochs"]} | {s["val"]:.4f} |'
                  for arm, s in record['chosen_settings'].items()]
    return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------------------------------------------ CLI

def main(argv: Optional[Sequence[str]] = None) -> int:
    """``confirm`` and ``analyse``, the subcommands of ``python -m training.study``."""
    p = argparse.ArgumentParser(prog='python -m training.study', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    c = sub.add_parser('confirm', help='run the confirmatory protocol (resumable)')
    c.add_argument('--out', type=Path, default=Path('runs/confirm'), help='output folder (default: runs/confirm)')
    c.add_argument('--protocol', type=Path, default=PROTOCOL, help='protocol file (default: confirm.json in '
                                                                   'training/configs/study/)')
    c.add_argument('--quick', action='store_true', help='every arm and control at toy sizes (what the tests run)')
    add_run_arguments(c)
    add_jobs_argument(c, 'teacher models pre-trained, then downstream runs trained,')
    a = sub.add_parser('analyse', help='recompute every table, interval and test from the saved predictions')
    a.add_argument('out', type=Path, help='the folder of a confirm run (holds protocol.json and results/)')
    args = p.parse_args(argv)
    try:
        if args.command == 'analyse':
            if not (args.out / 'protocol.json').is_file():
                raise ProtocolError(f'{args.out}: no protocol.json: not the folder of a confirm run')
            print((args.out / 'confirm.md').read_text() if analyse(args.out) else '')
            return 0
        if args.threads:
            torch.set_num_threads(args.threads)
        config = load_protocol(args.protocol, args.quick)
        run_confirm(args.out, config, device=args.device, progress=args.progress, jobs=args.jobs)
    except ProtocolError as e:
        print(f'python -m training.study {args.command}: error: {e}', file=sys.stderr)
        return 2
    return 0
