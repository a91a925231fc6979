"""The release, from the datasets to the published zoo and the paper's tables, in one resumable command.

    python -m training.release plan --data-root /data                       # check the data, print jobs and GPU-hours
    python -m training.release run --data-root /data --out /shared/release --executor slurm --partition gpu
    python -m training.release publish --out /shared/release --dry-run      # then without --dry-run
    python -m training.release publish --out /shared/release --write-published   # sentizoo/published.py
    python -m training.release run --rehearsal --out /tmp/rehearsal          # the whole graph at toy scale, CPU

The jobs, in order: pre-training (ST, HO, HP x each backbone), export to the zoo, verify (each zoo entry loads
through timm, equals its checkpoint, and is measured: pretext tasks on held-out images, or its Table 1 cell),
the downstream experiments (Table 1 cells, Table 3 and 4 ablations), the fi classifiers (export, verify),
``training.report``, the hub folders with their cards (``cards``) and, with ``--publish``, the upload.

``run`` is idempotent: a job whose outputs exist with the sha256 its record holds is skipped; a failed job
stops only the jobs that need it, and its log (``<out>/jobs/<id>/log.txt``) names the failure; the same command
again continues where the release stopped. ``<out>/release.json`` is the manifest: every artefact's sha256,
the command that made it, the git commit, package versions, dataset fingerprints, wall time, GPU-hours and
evaluation results; the hub folders and ``sentizoo/published.py`` are generated from it.

Exit codes: 0 done, 1 a job failed (the others that could run did), 2 a bad option or dataset (nothing ran).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from sentizoo.models import ARCHS, TAGS

from .graph import TABLES, Job, Spec, build_graph

PROG = 'python -m training.release'


# ----------------------------------------------------------------------------------------------- the spec

def spec_json(spec: Spec) -> Dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(spec).items()}


def spec_from_json(data: Dict[str, Any]) -> Spec:
    paths = {'out', 'data_root', 'downstream_configs'}
    return Spec(**{k: (Path(v) if k in paths and v is not None else tuple(v) if isinstance(v, list) else v)
                   for k, v in data.items()})


def _spec(args: argparse.Namespace) -> Spec:
    if args.rehearsal:
        from .rehearsal import REHEARSAL_ARCHS, rehearsal_spec
        return rehearsal_spec(Path(args.out), tuple(args.archs or REHEARSAL_ARCHS), tuple(args.tags),
                              tuple(args.tables))
    return Spec(out=Path(args.out).resolve(), data_root=Path(args.data_root).resolve() if args.data_root else None,
                archs=tuple(args.archs or ARCHS), tags=tuple(args.tags), tables=tuple(args.tables), gpus=args.gpus,
                nodes=args.nodes, downstream_gpus=args.downstream_gpus, org=args.org,
                publish=getattr(args, 'publish', False), dry_run=getattr(args, 'dry_run', False)).check()


# ------------------------------------------------------------------------------------------------ plan

def _plan(spec: Spec, jobs: Sequence[Job], checked: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Every job's estimate and the totals; ``checked``: the dataset check (None: published sizes)."""
    from .datasets_check import sizes_of
    from .estimate import PUBLISHED_SIZES, estimate, load_throughput
    rate = load_throughput()
    sizes = sizes_of(checked) if checked is not None else PUBLISHED_SIZES
    costs = {job.id: estimate(job, sizes, rate) for job in jobs}
    finish: Dict[str, float] = {}
    for job in jobs:  # the critical path: a job starts when its last dependency ends
        finish[job.id] = max((finish[d] for d in job.deps), default=0.0) + costs[job.id]['hours']
    return {'throughput': rate.source,
            'sizes': 'counted by the dataset check' if checked is not None else
                     'published sizes (no --data-root: the data was not checked)',
            'jobs': {j: {k: round(v, 3) for k, v in c.items()} for j, c in costs.items()},
            'gpu_hours': round(sum(c['gpu_hours'] for c in costs.values()), 1),
            'hours_one_at_a_time': round(sum(c['hours'] for c in costs.values()), 1),
            'hours_critical_path': round(max(finish.values(), default=0.0), 1)}


def _print_plan(jobs: Sequence[Job], plan: Dict[str, Any], markdown: bool) -> None:
    if markdown:
        print('| # | job | GPUs | est. GPU-hours | est. wall hours | needs |\n|---|---|---|---|---|---|')
    for i, job in enumerate(jobs, 1):
        cost = plan['jobs'][job.id]
        gpus = f'{job.gpus} x {job.nodes} node(s)' if job.nodes > 1 else str(job.gpus)
        needs = ', '.join(job.deps) if len(job.deps) <= 3 else f'{len(job.deps)} jobs ({job.deps[0]}, ...)'
        if markdown:
            print(f'| {i} | `{job.id}` | {gpus} | {cost["gpu_hours"]:.1f} | {cost["hours"]:.1f} | {needs or "-"} |')
        else:
            print(f'{i:3d}. {job.id}  [{gpus} GPUs]  est. {cost["gpu_hours"]:.2f} GPU-h, {cost["hours"]:.2f} h wall'
                  f'  (needs: {needs or "-"})\n       {job.command}')
    print(f'\ntotal: {len(jobs)} jobs, {plan["gpu_hours"]:,.1f} GPU-hours; wall {plan["hours_critical_path"]:,.1f} h '
          f'when every job starts as soon as its inputs are done ({plan["hours_one_at_a_time"]:,.1f} h one job at '
          f'a time)\nthroughput: {plan["throughput"]}\ndataset sizes: {plan["sizes"]}')


def cmd_plan(args: argparse.Namespace) -> int:
    from .datasets_check import check_datasets
    spec = _spec(args)
    jobs = build_graph(spec)
    checked = check_datasets(spec, jobs) if spec.data_root else None
    _print_plan(jobs, _plan(spec, jobs, checked), args.markdown)
    return 0


# ------------------------------------------------------------------------------------------------- run

def _header(spec: Spec, jobs: Sequence[Job], checked: Dict[str, Any]) -> Dict[str, Any]:
    return {'spec': spec_json(spec), 'datasets': checked, 'plan': _plan(spec, jobs, checked)}


def _backend(args: argparse.Namespace) -> Any:
    from .executors import LocalBackend, SubmititBackend
    if args.executor == 'local':
        return LocalBackend()
    options = {'partition': args.partition, 'timeout_min': int(args.time_limit * 60),
               'max_num_timeout': args.max_requeues, 'signal_delay_s': args.signal_delay}
    return SubmititBackend('slurm' if args.executor == 'slurm' else 'local', options)


def check_loads(zoo: Path, names: Sequence[str]) -> None:
    """``timm.create_model(name, pretrained=True)`` for each name, with ``SENTIZOO_HOME=zoo``."""
    import os

    import timm

    import sentizoo  # noqa: F401  (registers senti_*)
    os.environ['SENTIZOO_HOME'] = str(zoo)
    for name in names:
        timm.create_model(name, pretrained=True)
        print(f'loaded {name} with timm.create_model(..., pretrained=True), SENTIZOO_HOME={zoo}', flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from .datasets_check import check_datasets
    from .executors import run_graph
    from .manifest import write_manifest
    spec = _spec(args)
    jobs = build_graph(spec)
    checked = check_datasets(spec, jobs)
    header = _header(spec, jobs, checked)
    write_manifest(spec.out, jobs, header)
    print(f'release of {len(jobs)} jobs into {spec.out} ({args.executor}); estimate: '
          f'{header["plan"]["gpu_hours"]:,.1f} GPU-hours', flush=True)
    state = run_graph(jobs, spec.out, _backend(args), on_change=lambda: write_manifest(spec.out, jobs, header),
                      poll_s=args.poll)
    manifest = write_manifest(spec.out, jobs, header)
    failed = [j for j, s in state.items() if s == 'failed']
    if failed:
        print(f'{PROG} run: {len(failed)} job(s) failed: {", ".join(failed)}; their logs are in '
              f'{spec.out / "jobs"}; fix the cause and run the same command again', file=sys.stderr)
        return 1
    if spec.rehearsal:
        check_loads(spec.out / 'zoo', list(manifest['models']))
    print(f'done: {spec.out / "release.json"}', flush=True)
    return 0


# ------------------------------------------------------------------------------------ publish, job steps

def cmd_publish(args: argparse.Namespace) -> int:
    from .hub import manifest_sha256, publish, render_published
    from .manifest import read_manifest
    out = Path(args.out)
    manifest = read_manifest(out)
    if args.write_published:
        path = Path(args.write_published)
        path.write_text(render_published(path.read_text(), manifest_sha256(manifest)))
        print(f'wrote the sha256 of {len(manifest["models"])} model(s) into {path}')
        return 0
    uploaded = publish(out, manifest, org=args.org, dry_run=args.dry_run)
    print(f'{"would publish" if args.dry_run else "published"} {len(uploaded)} repositories: {", ".join(uploaded)}')
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .manifest import write_json
    from .verify import verify
    checked = verify(args.name, Path(args.checkpoint), Path(args.zoo), cell=args.cell and Path(args.cell),
                     samples=args.samples, batch_size=args.batch_size, device=args.device, rehearsal=args.rehearsal)
    write_json(Path(args.json), checked)
    print(f'{args.name}: loads, equals {args.checkpoint}; {len(checked["results"])} result(s) -> {args.json}')
    return 0


def cmd_cards(args: argparse.Namespace) -> int:
    from .hub import write_hub_folders
    from .manifest import read_manifest, write_manifest
    out = Path(args.out)
    current = read_manifest(out)
    jobs = build_graph(spec_from_json(current['spec']))
    header = {k: current[k] for k in ('spec', 'datasets', 'plan')}
    folders = write_hub_folders(out, write_manifest(out, jobs, header), jobs)
    print(f'wrote {len(folders)} hub folder(s) under {out / "hub"}')
    return 0


# ------------------------------------------------------------------------------------------------- CLI

def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument('--archs', nargs='+', choices=ARCHS, help=f'backbones (default: all: {" ".join(ARCHS)}; the '
                                                            'rehearsal: resnet18)')
    p.add_argument('--tags', nargs='+', choices=TAGS, default=list(TAGS), help='zoo tags to make (default: all)')
    p.add_argument('--tables', nargs='*', type=int, choices=TABLES, default=list(TABLES),
                   help='downstream experiments: Table 1 cells, Table 3 (resnet50), Table 4 (default: all; none: '
                        'pass --tables alone)')
    p.add_argument('--gpus', type=int, default=8, help='GPUs per node of a pre-training job (default: 8)')
    p.add_argument('--nodes', type=int, default=1, help='nodes of a pre-training job (default: 1)')
    p.add_argument('--downstream-gpus', type=int, default=1, help='GPUs of a downstream job (default: 1)')
    p.add_argument('--org', default='sentizoo', help='hub organisation of the repositories (default: sentizoo)')
    p.add_argument('--out', default='release', help='release folder: runs, zoo, results, hub, logs, release.json '
                                                    '(on a file system every node sees)')
    p.add_argument('--rehearsal', action='store_true', help='miniature generated datasets under <out>/data, toy '
                                                            'settings, CPU: the whole graph in minutes')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('plan', help='check the datasets, print the job graph with GPUs, GPU-hours and wall time',
                       description='Check every dataset the selected jobs read (with the training readers) and '
                                   'print the jobs in order with their command, GPUs and estimated GPU-hours. '
                                   'Without --data-root the data is not checked and published sizes are used.')
    p.add_argument('--data-root', help='folder holding places365/, vso/, artemis/, fi/, ... (docs/datasets.md)')
    p.add_argument('--markdown', action='store_true', help='a Markdown table instead of the commands')
    _selection(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser('run', help='run the release (skips what is done and verified; rerun to continue)')
    p.add_argument('--data-root', help='folder holding places365/, vso/, artemis/, fi/, ... (docs/datasets.md)')
    p.add_argument('--executor', choices=('local', 'slurm', 'submitit-local'), default='local',
                   help='local: one job after another on this machine, under torchrun; slurm: submitit jobs with '
                        'dependencies, requeued on pre-emption or timeout; submitit-local: the slurm path through '
                        'submitit.LocalExecutor on this machine (testing)')
    p.add_argument('--partition', help='Slurm partition')
    p.add_argument('--time-limit', type=float, default=72.0, help='time limit of each job, hours (default: 72); a '
                                                                  'job that reaches it requeues and resumes')
    p.add_argument('--max-requeues', type=int, default=3, help='requeues after a timeout per job (default: 3)')
    p.add_argument('--signal-delay', type=int, default=120, help='seconds before the time limit at which a job '
                                                                 'is told to stop and requeue (default: 120)')
    p.add_argument('--publish', action='store_true', help='end with the upload (after the checks in README)')
    p.add_argument('--dry-run', action='store_true', help='with --publish: list what would be uploaded')
    p.add_argument('--poll', type=float, default=10.0, help='seconds between looks at running jobs (default: 10)')
    _selection(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser('publish', help='upload the hub folders (one commit per repository), or write published.py')
    p.add_argument('--out', required=True, help='the release folder')
    p.add_argument('--org', default='sentizoo', help='hub organisation (default: sentizoo)')
    p.add_argument('--dry-run', action='store_true', help='list what would be uploaded, upload nothing')
    p.add_argument('--write-published', nargs='?', const=str(Path(__file__).resolve().parents[2] / 'sentizoo' /
                                                               'published.py'), metavar='PATH',
                   help='instead of uploading, write the manifest\'s sha256 into PATH (default: this checkout\'s '
                        'sentizoo/published.py)')
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser('verify', help='(a job of the graph) check a zoo entry against its checkpoint and measure it')
    p.add_argument('--name', required=True, help='senti_<arch>.<tag>')
    p.add_argument('--checkpoint', required=True, help='the checkpoint it was exported from')
    p.add_argument('--zoo', required=True, help='the release\'s zoo folder')
    p.add_argument('--json', required=True, help='where to write the results')
    p.add_argument('--cell', help='a classifier: the downstream result file of its Table 1 cell')
    p.add_argument('--samples', type=int, default=1000, help='held-out images per pretext task (default: 1000)')
    p.add_argument('--batch-size', type=int, default=64, help='evaluation batch size (default: 64)')
    p.add_argument('--device', help='default: cuda if available, else cpu')
    p.add_argument('--rehearsal', action='store_true', help='mark the results synthetic (miniature data)')
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser('cards', help='(a job of the graph) write the hub folders from the manifest')
    p.add_argument('--out', required=True, help='the release folder')
    p.set_defaults(func=cmd_cards)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .datasets_check import DatasetCheckError
    from .hub import PublishError
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DatasetCheckError, PublishError, ValueError, FileNotFoundError) as e:
        print(f'{PROG} {args.command}: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
