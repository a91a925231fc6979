"""Render downstream results as Markdown tables in the paper's layouts, with the paper's numbers beside ours.

    python -m training.report results/                 # -> results/report/report.md + one PNG per experiment
    python -m training.report results/ --out docs/results

Reads every ``*.json`` result of :mod:`training.downstream` under the folder (other JSON files are skipped)
and writes:

* **Table 1 layout**: rows dataset / task / metric, a column per backbone; each cell is
  ``baseline → amalgamation`` from the runs named ``baseline`` and ``amalgamation``, with the paper's
  pair (:mod:`training.paper_results`) in the column beside it;
* **Table 3 layout** (experiments with ``"table": 3``): one row per ablation run, and **Table 4 layout**
  (``"table": 4``): one row per run, a column per backbone, both in percent as the paper prints them;
* **per experiment**: every run's test metrics, selected epoch and wall time, and a PNG (as the paper's
  Fig. 4: the target's training loss per epoch, baseline vs amalgamation; and the validation metric per
  epoch, with the selected epoch marked).

Results on synthetic data are reported in their own sections, headed SYNTHETIC, and never beside the
paper's numbers. When a slot has several results, the most recently finished one is shown.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import paper_results as paper
from .downstream import FORMAT

__all__ = ['load_results', 'table1', 'table3', 'table4', 'runs_table', 'plot_experiment', 'render', 'main']

_logger = logging.getLogger('training.report')
ARROW = '→'
SYNTHETIC_NOTE = ('**SYNTHETIC** data (the procedural affect world of `training.datasets.synthetic`): these numbers '
                  'test the pipeline and say nothing about real visual sentiment; they are not comparable with the '
                  "paper's.")
_ARCH_LABELS = {'vgg16_bn': 'VGG16-BN', 'vgg19_bn': 'VGG19-BN', 'resnet18': 'ResNet18', 'resnet50': 'ResNet50',
                'resnet101': 'ResNet101'}
PathLike = Union[str, Path]
Result = Dict[str, Any]


def load_results(folder: PathLike) -> List[Result]:
    """Every downstream result file under ``folder`` (recursively), oldest first."""
    results = []
    for path in sorted(Path(folder).rglob('*.json')):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            _logger.warning('skipping %s: %s', path, e)
            continue
        if isinstance(data, dict) and data.get('format') == FORMAT:
            data['path'] = str(path)
            results.append(data)
    return sorted(results, key=lambda r: r.get('finished', ''))


def _latest(results: Iterable[Result], key: Callable[[Result], Any]) -> Dict[Any, Result]:
    """One result per key, the last finished (``results`` is sorted oldest first)."""
    return {key(r): r for r in results}


def _metric_label(metric: str) -> str:
    arrow = '↓' if metric in paper.LOWER_IS_BETTER else '↑'
    return f'{paper.METRIC_LABELS.get(metric, metric)} {arrow}'


def _pair(before: Optional[float], after: Optional[float]) -> str:
    if before is None and after is None:
        return '—'
    return f' {ARROW} '.join('—' if v is None else f'{v:.3f}' for v in (before, after))


def _md(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)


def _archs(results: Iterable[Result]) -> List[str]:
    present = {r['arch'] for r in results}
    return [a for a in paper.ARCHS if a in present] + sorted(present - set(paper.ARCHS))


def _arch_columns(archs: Sequence[str], with_paper: bool) -> List[str]:
    labels = [_ARCH_LABELS.get(arch, arch) for arch in archs]
    return [f'{label} ({who})' for label in labels for who in (('ours', 'paper') if with_paper else ('ours',))]


def _test(result: Optional[Result], metric: str) -> Optional[float]:
    return None if result is None else result['test'].get(metric)


def table1(results: Sequence[Result], synthetic: bool) -> Optional[str]:
    """Table 1's layout for the ``baseline``/``amalgamation`` runs; the paper's pairs beside ours unless
    ``synthetic``. None when there is nothing to show."""
    runs = [r for r in results if r['synthetic'] == synthetic and r['run'] in ('baseline', 'amalgamation')]
    if not runs:
        return None
    slots = _latest(runs, lambda r: (r['dataset'], r['task'], r['arch'], r['run']))
    archs = _archs(runs)
    order = [(d, t) for d, t, _ in paper.TABLE1_ROWS]
    pairs = sorted({(r['dataset'], r['task']) for r in runs},
                   key=lambda p: (order.index(p) if p in order else len(order), p))
    header = ['Dataset', 'Task', 'Metric'] + _arch_columns(archs, not synthetic)
    rows = []
    for dataset, task in pairs:
        for metric in paper.TASK_METRICS[task]:
            row = [paper.DATASET_LABELS.get(dataset, dataset), task.upper(), _metric_label(metric)]
            for arch in archs:
                row.append(_pair(*(_test(slots.get((dataset, task, arch, run)), metric)
                                   for run in ('baseline', 'amalgamation'))))
                if not synthetic:
                    row.append(_pair(*paper.TABLE1.get((dataset, task, metric, arch), (None, None))))
            rows.append(row)
    return _md(header, rows)


def _table_groups(results: Iterable[Result], synthetic: bool, table: int, key: Callable[[Result], Tuple[str, ...]]
                  ) -> List[Tuple[Tuple[str, ...], List[Result]]]:
    """The results of ``"table": table`` experiments (real or synthetic) grouped by ``key``, sorted by it."""
    groups: Dict[Tuple[str, ...], List[Result]] = defaultdict(list)
    for r in results:
        if r['synthetic'] == synthetic and r.get('table') == table:
            groups[key(r)].append(r)
    return sorted(groups.items())


def table3(results: Sequence[Result], synthetic: bool) -> List[str]:
    """Table 3's layout, one table per (arch, dataset, task) of ``"table": 3`` experiments; accuracy in percent
    (the primary metric for other tasks, as is)."""
    tables = []
    for (arch, dataset, task), group in _table_groups(results, synthetic, 3,
                                                      lambda r: (r['arch'], r['dataset'], r['task'])):
        slots = _latest(group, lambda r: r['run'])
        names = [n for n in paper.TABLE3_ROWS if n in slots] + [n for n in slots if n not in paper.TABLE3_ROWS]
        metric = group[0]['primary_metric']
        scale, digits = (100, 2) if metric == 'accuracy' else (1, 3)
        with_paper = not synthetic and (arch, dataset, task) == ('resnet50', 'fi', 'sll')
        header = ['Run', 'Regularisation', f'{_metric_label(metric)} (ours)'] + (['paper'] if with_paper else [])
        rows = []
        for name in names:
            row = [name, paper.TABLE3_ROWS.get(name, ''), f'{slots[name]["test"][metric] * scale:.{digits}f}']
            if with_paper:
                row.append(f'{paper.TABLE3[name] * 100:.2f}' if name in paper.TABLE3 else '—')
            rows.append(row)
        title = f'{_ARCH_LABELS.get(arch, arch)}, {paper.DATASET_LABELS.get(dataset, dataset)} ({task.upper()})'
        tables.append(f'{title}\n\n{_md(header, rows)}')
    return tables


def table4(results: Sequence[Result], synthetic: bool) -> List[str]:
    """Table 4's layout (``"table": 4`` experiments): a row per run, a column per backbone, in percent."""
    tables = []
    for (dataset, task), group in _table_groups(results, synthetic, 4, lambda r: (r['dataset'], r['task'])):
        slots = _latest(group, lambda r: (r['arch'], r['run']))
        archs = _archs(group)
        names = [n for n in paper.TABLE4_ROWS if any(k[1] == n for k in slots)]
        names += sorted({k[1] for k in slots} - set(names))
        with_paper = not synthetic and (dataset, task) == ('fi', 'sll')
        header = ['Run'] + _arch_columns(archs, with_paper)
        rows = []
        for name in names:
            row = [paper.TABLE4_ROWS.get(name, name)]
            for arch in archs:
                result = slots.get((arch, name))
                row.append('—' if result is None else f'{result["test"][result["primary_metric"]] * 100:.2f}')
                if with_paper:
                    value = paper.TABLE4.get((arch, name))
                    row.append('—' if value is None else f'{value * 100:.2f}')
            rows.append(row)
        title = f'{paper.DATASET_LABELS.get(dataset, dataset)} ({task.upper()}), primary metric in percent'
        tables.append(f'{title}\n\n{_md(header, rows)}')
    return tables


def runs_table(results: Sequence[Result]) -> str:
    """One row per run: mode, initialisation, selected epoch, every test metric of the task, wall time."""
    metrics = [m for m in paper.TASK_METRICS.get(results[0]['task'], ()) if all(m in r['test'] for r in results)]
    header = ['Run', 'Mode', 'Init', 'Best epoch'] + [f'{_metric_label(m)} (test)' for m in metrics] + ['Wall (s)']
    rows = [[r['run'], r['mode'], r['init'], f'{r["best_epoch"]}/{len(r["history"]["epochs"])}']
            + [f'{r["test"][m]:.4f}' for m in metrics] + [f'{r["wall_seconds"]:.1f}'] for r in results]
    return _md(header, rows)


def plot_experiment(results: Sequence[Result], path: PathLike) -> Path:
    """Two panels like the paper's Fig. 4: the target's training task loss per epoch (every run) and the
    validation primary metric per epoch, the selected epoch marked. Returns ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    metric = results[0]['primary_metric']
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in results:
        epochs = r['history']['epochs']
        xs = [e['epoch'] for e in epochs]
        line, = ax_loss.plot(xs, [e['train'].get('task/target', e['train']['loss']) for e in epochs], marker='o',
                             label=f'{r["run"]} ({r["mode"]})')
        if all('val' in e for e in epochs):
            ax_val.plot(xs, [e['val'][metric] for e in epochs], marker='o', color=line.get_color(), label=r['run'])
            if r['best_epoch']:
                ax_val.scatter([r['best_epoch']], [epochs[r['best_epoch'] - 1]['val'][metric]], s=120,
                               facecolors='none', edgecolors=line.get_color(), zorder=3)
    ax_loss.set(xlabel='epoch', ylabel='training loss of the target (task term)', title='Training loss')
    ax_val.set(xlabel='epoch', ylabel=f'validation {metric}', title=f'Validation {metric} (circle: selected epoch)')
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    r0 = results[0]
    fig.suptitle(f'{r0["experiment"]}: {r0["arch"]} on {paper.DATASET_LABELS.get(r0["dataset"], r0["dataset"])} '
                 f'({r0["task"].upper()})' + ('  [SYNTHETIC data]' if r0['synthetic'] else ''))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(folder: PathLike, out: Optional[PathLike] = None, plots: bool = True, synthetic: bool = False) -> Path:
    """Write ``report.md`` (and the plots) for the results under ``folder`` into ``out`` (default
    ``<folder>/report``); returns the report's path. ``synthetic``: report every result as SYNTHETIC, never beside
    the paper's numbers (the release rehearsal's miniature datasets, which are not the real ones)."""
    results = [dict(r, synthetic=True) if synthetic else r for r in load_results(folder)]
    out = Path(out) if out is not None else Path(folder) / 'report'
    out.mkdir(parents=True, exist_ok=True)
    parts = ['# Downstream results', '',
             f'{len(results)} run(s) from `{folder}`. Cells read `baseline {ARROW} amalgamation`; the paper\'s '
             'numbers are transcribed from its Tables 1, 3 and 4 (`training/paper_results.py`). Metrics on the test '
             'split, for the epoch selected on the validation split.']
    if not results:
        parts += ['', f'No result files (format `{FORMAT}`) found.']
    for synthetic in (False, True):
        section = [(title, body) for title, body in (
            ('Table 1 layout', table1(results, synthetic)),
            ('Table 3 layout (ablation of the regularisers)', '\n\n'.join(table3(results, synthetic))),
            ('Table 4 layout (teacher task loss)', '\n\n'.join(table4(results, synthetic)))) if body]
        if section:
            parts += ['', '## ' + ('SYNTHETIC data' if synthetic else 'Real data')]
            if synthetic:
                parts += ['', SYNTHETIC_NOTE]
            for title, body in section:
                parts += ['', f'### {title}', '', body]
    by_experiment: Dict[str, List[Result]] = defaultdict(list)
    for r in _latest(results, lambda r: (r['experiment'], r['run'])).values():
        by_experiment[r['experiment']].append(r)
    if by_experiment:
        parts += ['', '## Runs']
    for name, group in sorted(by_experiment.items()):
        r0 = group[0]
        parts += ['', f'### {name}' + (' (SYNTHETIC)' if r0['synthetic'] else ''), '',
                  f'{r0["arch"]}, {paper.DATASET_LABELS.get(r0["dataset"], r0["dataset"])}, {r0["task"].upper()}; '
                  f'samples {r0.get("samples", {})}.', '', runs_table(group)]
        if plots:
            png = plot_experiment(group, out / f'{name}.png')
            parts += ['', f'![{name}]({png.name})']
    report = out / 'report.md'
    report.write_text('\n'.join(parts) + '\n', encoding='utf-8')
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m training.report', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('results', help='folder of result JSON files (searched recursively)')
    p.add_argument('--out', help='output folder (default: <results>/report)')
    p.add_argument('--no-plots', dest='plots', action='store_false', help='skip the PNG plots')
    p.add_argument('--synthetic', action='store_true', help='report every result as SYNTHETIC (data that is not the '
                                                            'real datasets, such as the release rehearsal\'s)')
    args = p.parse_args(argv)
    if not Path(args.results).is_dir():
        print(f'python -m training.report: error: {args.results} is not a folder', file=sys.stderr)
        return 2
    report = render(args.results, args.out, args.plots, args.synthetic)
    print(report.read_text(encoding='utf-8'))
    print(f'written: {report}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
