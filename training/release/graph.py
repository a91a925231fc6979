"""The release's job graph: what runs, in which order, on how many GPUs, reading which data, writing which files.

A :class:`Job` is data: its command (``python -m training.<module> ...``), the jobs it depends on, the files it
writes (relative to the release folder, ``--out``) and its resources. :func:`build_graph` lays out the whole
release for a :class:`Spec`, in :data:`STAGES` order::

    pretrain (ST/HO/HP x arch) -> export -> verify -> downstream cells and ablations -> export fi -> verify fi
    -> report -> cards -> publish

Nothing here runs or imports torch: the plan and the executors read it.
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from sentizoo.models import ARCHS, BACKBONE_TAGS, TAGS

__all__ = ['STAGES', 'TABLES', 'DATA_FOLDERS', 'Spec', 'Job', 'build_graph', 'experiment_names', 'job_folder',
           'zoo_folder', 'pretrain_folder', 'data_folder']

STAGES = ('pretrain', 'export', 'verify', 'downstream', 'report', 'cards', 'publish')
TABLES = (1, 3, 4)
DATA_FOLDERS = {'places365': 'places365', 'vso': 'vso', 'artemis': 'artemis', 'fi': 'fi', 'emoset': 'emoset',
                'unbiasedemo': 'unbiasedemo', 'emotic': 'emotic', 'emotion6': 'emotion6', 'abstract': 'abstract'}
"""Each dataset's folder under ``--data-root`` (docs/datasets.md describes what each holds)."""
PRETRAIN_DATA = {'st': ('places365',), 'ho': ('places365',), 'hp': ('vso', 'artemis')}


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a release makes and with which resources (``python -m training.release plan/run`` options).

    ``pretrain_args``, ``downstream_configs`` and ``verify_args`` are the rehearsal's toy settings (empty for the
    real release: the paper's schedules, the shipped configs).
    """
    out: Path
    data_root: Optional[Path] = None
    archs: Tuple[str, ...] = ARCHS
    tags: Tuple[str, ...] = TAGS
    tables: Tuple[int, ...] = TABLES
    gpus: int = 8
    nodes: int = 1
    downstream_gpus: int = 1
    org: str = 'sentizoo'
    publish: bool = False
    dry_run: bool = False
    rehearsal: bool = False
    pretrain_args: Tuple[str, ...] = ()
    verify_args: Tuple[str, ...] = ()
    downstream_configs: Optional[Path] = None

    def check(self) -> 'Spec':
        """Raise ValueError naming the option when the selection cannot be made."""
        bad = [a for a in self.archs if a not in ARCHS] + [t for t in self.tags if t not in TAGS]
        if bad:
            raise ValueError(f'unknown --archs/--tags {bad}; archs: {ARCHS}, tags: {TAGS}')
        if set(self.tables) - set(TABLES):
            raise ValueError(f'--tables: choose among {TABLES}, got {self.tables}')
        needs = [t for t in BACKBONE_TAGS if t not in self.tags]
        if (self.tables or 'fi' in self.tags) and needs:
            raise ValueError(f'the downstream experiments (--tables) and the fi tag learn from the st, ho and hp '
                             f'backbones: add {needs} to --tags, or pass --tables with no value and leave out fi')
        if 'fi' in self.tags and 1 not in self.tables:
            raise ValueError('the fi tag is the amalgamation of Table 1\'s FI cell: keep 1 in --tables')
        if min(self.gpus, self.nodes, self.downstream_gpus) < 0 or self.nodes < 1:
            raise ValueError('--gpus and --downstream-gpus must be >= 0, --nodes >= 1')
        return self


@dataclasses.dataclass(frozen=True)
class Job:
    """One step of the release. ``outputs`` are files relative to the release folder; ``results`` (when set) is
    the one among them that holds the job's evaluation records (``training.model_card.validate_results``)."""
    id: str
    stage: str
    module: str
    args: Tuple[str, ...]
    deps: Tuple[str, ...] = ()
    outputs: Tuple[str, ...] = ()
    datasets: Tuple[str, ...] = ()
    gpus: int = 0
    nodes: int = 1
    distributed: bool = False
    results: Optional[str] = None
    model: Optional[str] = None  # the zoo name a job makes or checks ('senti_resnet50.hp')
    cost: Mapping[str, float] = dataclasses.field(default_factory=dict)  # what estimate.py needs to know

    @property
    def processes(self) -> int:
        """Processes per node of a distributed job: one per GPU, one on a CPU machine."""
        return max(1, self.gpus)

    def argv(self, python: str = 'python', rdzv: Optional[str] = None) -> List[str]:
        """The command line; a distributed job runs under torchrun (``rdzv``: a multi-node rendezvous host:port)."""
        if not self.distributed:
            return [python, '-m', self.module, *self.args]
        launcher = ['torchrun'] if python == 'python' else [python, '-m', 'torch.distributed.run']
        if self.nodes > 1:
            launcher += ['--nnodes', str(self.nodes), '--rdzv-backend', 'c10d', '--rdzv-endpoint', rdzv or 'HOST:29500',
                         '--rdzv-id', self.id]
        else:
            launcher += ['--standalone']
        return [*launcher, '--nproc-per-node', str(self.processes), '-m', self.module, *self.args]

    @property
    def command(self) -> str:
        """The command as a maintainer would type it (what the manifest records)."""
        return shlex.join(self.argv())

    def runnable(self) -> List[str]:
        """The command with this interpreter (the same environment as the driver)."""
        return self.argv(sys.executable)


def job_folder(out: Path, job_id: str) -> Path:
    """Where a job keeps its log, its record and its submission: ``<out>/jobs/<id>/``."""
    return Path(out) / 'jobs' / job_id


def zoo_folder(name: str) -> str:
    return f'zoo/{name}'


def pretrain_folder(tag: str, arch: str) -> str:
    return f'runs/pretrain/{tag}_{arch}'


def data_folder(spec: Spec, dataset: str) -> str:
    return str((spec.data_root or Path('DATA')) / DATA_FOLDERS[dataset])


def experiment_names(tables: Tuple[int, ...], arch: str) -> List[str]:
    """The downstream experiments of ``arch`` for ``tables``: Table 1's cells, Table 3 (resnet50), Table 4."""
    from ..downstream import table1_configs
    names = [n for n in table1_configs() if n.startswith(f'table1_{arch}_')] if 1 in tables else []
    names += [f'table3_{arch}_fi_sll'] if 3 in tables and arch == 'resnet50' else []
    return names + ([f'table4_{arch}_fi_sll'] if 4 in tables else [])


def _experiments(spec: Spec, arch: str) -> Dict[str, Dict[str, object]]:
    """The downstream configs of ``arch`` the release runs, by name (validated configs)."""
    from ..downstream import load_config
    source = spec.downstream_configs
    return {n: load_config(source / f'{n}.json' if source else n) for n in experiment_names(spec.tables, arch)}


def build_graph(spec: Spec) -> List[Job]:
    """Every job of the release, in :data:`STAGES` order (a job comes after all it depends on)."""
    out, py = Path(spec.out), 'training.release'
    jobs: List[Job] = []
    for tag in (t for t in BACKBONE_TAGS if t in spec.tags):
        for arch in spec.archs:
            folder = pretrain_folder(tag, arch)
            # HP reads <root>/vso and <root>/artemis; ST and HO one Places365 folder
            root = (spec.data_root or Path('DATA')) if tag == 'hp' else data_folder(spec, 'places365')
            args = ('--model', tag, '--arch', arch, '--data-root', str(root), '--out-dir', str(out / folder),
                    '--resume', 'auto', '--save-every', '1000', '--no-progress', *spec.pretrain_args)
            jobs.append(Job(f'pretrain.{tag}_{arch}', 'pretrain', 'training.pretrain', args,
                            outputs=(f'{folder}/final.pt',), datasets=PRETRAIN_DATA[tag], gpus=spec.gpus,
                            nodes=spec.nodes, distributed=True, cost={'tag': tag, 'arch': arch}))
    backbones = [(j.cost['tag'], j.cost['arch']) for j in jobs]
    for tag, arch in backbones:
        name = f'senti_{arch}.{tag}'
        jobs.append(Job(f'export.{tag}_{arch}', 'export', 'training.export',
                        ('--checkpoint', str(out / pretrain_folder(tag, arch) / 'final.pt'), '--tag', tag,
                         '--out', str(out / zoo_folder(name))),
                        deps=(f'pretrain.{tag}_{arch}',), outputs=_zoo_files(name), model=name))
    for tag, arch in backbones:
        name, evaluation = f'senti_{arch}.{tag}', f'eval/{tag}_{arch}.json'
        jobs.append(Job(f'verify.{tag}_{arch}', 'verify', py,
                        ('verify', '--name', name, '--checkpoint', str(out / pretrain_folder(tag, arch) / 'final.pt'),
                         '--zoo', str(out / 'zoo'), '--json', str(out / evaluation), *spec.verify_args),
                        deps=(f'export.{tag}_{arch}',), outputs=(evaluation,), datasets=PRETRAIN_DATA[tag],
                        gpus=min(1, spec.gpus), results=evaluation, model=name, cost={'tag': tag, 'arch': arch}))
    jobs += _downstream(spec)
    results = [j for j in jobs if j.stage == 'downstream']
    if results:
        jobs.append(Job('report', 'report', 'training.report',
                        (str(out / 'results'), '--out', str(out / 'report'), *(['--synthetic'] * spec.rehearsal)),
                        deps=tuple(j.id for j in results), outputs=('report/report.md',)))
    models = [j for j in jobs if j.stage == 'verify']
    if models:
        jobs.append(Job('cards', 'cards', py, ('cards', '--out', str(out)), deps=tuple(j.id for j in models),
                        outputs=tuple(f'hub/{j.model}/{f}' for j in models for f in ('model.safetensors',
                                                                                      'config.json', 'README.md'))))
        if spec.publish:
            jobs.append(Job('publish', 'publish', py, ('publish', '--out', str(out), '--org', spec.org,
                                                       *(['--dry-run'] * spec.dry_run)),
                            deps=('cards', *(['report'] * bool(results)))))
    return jobs


def _zoo_files(name: str) -> Tuple[str, ...]:
    return tuple(f'{zoo_folder(name)}/{f}' for f in ('model.safetensors', 'config.json'))


def _downstream(spec: Spec) -> List[Job]:
    """Table 1 cells and the Table 3/4 ablations of every arch, then the fi classifier from Table 1's FI cell."""
    out, jobs, fi = Path(spec.out), [], []
    for arch in spec.archs:
        teachers = tuple(f'verify.{t}_{arch}' for t in BACKBONE_TAGS)
        for name, config in _experiments(spec, arch).items():
            dataset = config['dataset']
            source = str(spec.downstream_configs / f'{name}.json') if spec.downstream_configs else name
            outputs = tuple(f'results/{name}/{run}.json' for run in config['runs'])
            if name == f'table1_{arch}_fi_sll':
                outputs += (f'results/{name}/amalgamation/best.safetensors',)
            jobs.append(Job(f'downstream.{name}', 'downstream', 'training.downstream',
                            ('--config', source, '--data-root', data_folder(spec, dataset), '--zoo', str(out / 'zoo'),
                             '--out', str(out / 'results'), '--reuse', '--no-progress'),
                            deps=teachers, outputs=outputs, datasets=(dataset,), gpus=spec.downstream_gpus,
                            distributed=True, cost={'arch': arch, 'config': name}))
        if 'fi' in spec.tags:
            cell, name = f'table1_{arch}_fi_sll', f'senti_{arch}.fi'
            best = out / 'results' / cell / 'amalgamation' / 'best.safetensors'
            fi.append(Job(f'export.fi_{arch}', 'export', 'training.export',
                          ('--checkpoint', str(best), '--tag', 'fi', '--arch', arch, '--out', str(out / zoo_folder(name))),
                          deps=(f'downstream.{cell}',), outputs=_zoo_files(name), model=name))
            fi.append(Job(f'verify.fi_{arch}', 'verify', 'training.release',
                          ('verify', '--name', name, '--checkpoint', str(best), '--zoo', str(out / 'zoo'),
                           '--json', str(out / 'eval' / f'fi_{arch}.json'),
                           '--cell', str(out / 'results' / cell / 'amalgamation.json'), *spec.verify_args),
                          deps=(f'export.fi_{arch}',), outputs=(f'eval/fi_{arch}.json',),
                          results=f'eval/fi_{arch}.json', model=name))
    return jobs + fi

