"""The steps the synthetic studies and the demo are made of: pre-train a model on the synthetic world (resuming
only a run of the same settings), measure its pretext tasks, time the phases, point ``SENTIZOO_HOME`` at a zoo.

:mod:`training.study` (exploratory), :mod:`training.confirm` (confirmatory) and :mod:`training.demo` share them.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional

__all__ = ['SYNTHETIC_BANNER', 'Phases', 'using_zoo', 'pretrain_model', 'pretrain_models', 'parallel_jobs',
           'in_processes', 'CannotResumeError', 'measure_pretext', 'add_run_arguments', 'add_jobs_argument']

SYNTHETIC_BANNER = ('SYNTHETIC: every number here comes from the procedural affect world of '
                    'training.datasets.synthetic; it tests this implementation, says nothing about real visual '
                    "sentiment and is not comparable with the paper's results.")


class Phases:
    """Prints ``[k/n] title`` as each phase starts and records its wall time in :attr:`seconds`."""

    def __init__(self, total: int):
        self.total, self.seconds = total, {}

    @contextlib.contextmanager
    def __call__(self, name: str, title: str) -> Iterator[None]:
        print(f'[{len(self.seconds) + 1}/{self.total}] {title}', flush=True)
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 2)
        print(f'      done in {self.seconds[name]:.1f} s', flush=True)


@contextlib.contextmanager
def using_zoo(folder: Path) -> Iterator[None]:
    """``SENTIZOO_HOME=folder`` inside the block, restored afterwards."""
    previous = os.environ.get('SENTIZOO_HOME')
    os.environ['SENTIZOO_HOME'] = str(Path(folder).resolve())
    try:
        yield
    finally:
        if previous is None:
            del os.environ['SENTIZOO_HOME']
        else:
            os.environ['SENTIZOO_HOME'] = previous


def pretrain_model(tag: str, arch: str, out: Path, settings: Mapping[str, Any], *, seed: int,
                   device: Optional[str] = None, progress: bool = True, resume: Optional[str] = None) -> Path:
    """Pre-train the ``tag`` model on the synthetic world from a random start; returns ``final.pt``.

    ``resume='auto'`` continues from ``<out>/last.pt`` when there is one (a finished model: at once).
    """
    return _pretrain(_pretrain_config(tag, arch, out, settings, seed=seed, device=device, progress=progress,
                                      resume=resume))


def _pretrain_config(tag: str, arch: str, out: Path, settings: Mapping[str, Any], *, seed: int,
                     device: Optional[str] = None, progress: bool = True, resume: Optional[str] = None) -> Any:
    """:func:`pretrain_model`'s :class:`~training.pretrain.PretrainConfig`, after the check that a checkpoint it
    would resume comes from the same settings (:class:`CannotResumeError`)."""
    from .pretrain import PretrainConfig
    config = PretrainConfig(model=tag, arch=arch, dataset='synthetic', workers=0, seed=seed, device=device,
                            progress=progress, out_dir=str(out), resume=resume, **settings)
    if resume == 'auto' and (Path(out) / 'last.pt').is_file():
        _check_same_run(Path(out) / 'last.pt', config)
    return config


def _pretrain(config: Any) -> Path:
    from .pretrain import pretrain
    with warnings.catch_warnings():  # a random start is the point here: no ImageNet weights on a fresh machine
        warnings.filterwarnings('ignore', message='pre-training .* from a random initialisation')
        return pretrain(config)


def parallel_jobs(jobs: Optional[int], models: int, device: Optional[str] = None) -> int:
    """How many of ``models`` independent trainings run at once (:func:`in_processes`): ``jobs`` when given (at most
    ``models``); else one on a GPU or with one torch thread, and on a CPU with ``T > 1`` threads up to ``T + 1``, one
    thread each. Small models use a second thread poorly and a second process well, and the extra process keeps
    every core busy while the last model finishes (BENCHMARKS.md, "Demo")."""
    import torch

    from sentizoo.runtime import resolve_device
    if jobs is not None:
        if jobs < 1:
            raise ValueError(f'jobs must be at least 1, got {jobs}')
        return min(jobs, models)
    threads = torch.get_num_threads()
    return 1 if resolve_device(device).type != 'cpu' or threads == 1 else min(models, threads + 1)


def _with_threads(threads: int, function: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    import torch
    torch.set_num_threads(threads)
    return function(**kwargs)


def in_processes(function: Callable[..., Any], calls: Mapping[str, Mapping[str, Any]], jobs: int,
                 done: Callable[[str, Any], None], poll: Callable[[], None] = lambda: None) -> None:
    """``function(**kwargs)`` for every ``{name: kwargs}`` of ``calls``, ``jobs`` at a time, each in a worker
    process (spawned: a forked torch can hang) with an equal share of this process's torch threads; ``done(name,
    result)`` as each one ends, ``poll()`` about every second. ``function`` must be importable (module level). When
    one fails, the calls not yet started are not started and its error is raised; the running ones finish."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch
    threads = max(1, torch.get_num_threads() // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context('spawn')) as pool:
        futures = {pool.submit(_with_threads, threads, function, kwargs): name for name, kwargs in calls.items()}
        pending = set(futures)
        try:
            while pending:
                ready, pending = wait(pending, timeout=1, return_when=FIRST_COMPLETED)
                for future in ready:
                    done(futures[future], future.result())
                poll()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def pretrain_models(runs: Mapping[str, Mapping[str, Any]], *, jobs: int = 1) -> Dict[str, Path]:
    """Pre-train independent models, ``{name: keyword arguments of pretrain_model}``; returns ``{name: final.pt}``
    and prints a line as each one finishes.

    ``jobs > 1`` trains that many at once (:func:`in_processes`); one progress bar counts the steps of all of them
    (from their ``log.csv``). Every model reads only its own seed, so the weights are those of a sequential run
    with the same threads per model. Every checkpoint to resume is checked before any model trains.
    """
    from tqdm.auto import tqdm
    parallel = jobs > 1 and len(runs) > 1
    progress = {name: kwargs.get('progress', True) for name, kwargs in runs.items()}
    configs = {name: _pretrain_config(**dict(kwargs, progress=progress[name] and not parallel))
               for name, kwargs in runs.items()}
    started, finished = time.perf_counter(), {}

    def done(name: str, final: Path) -> None:
        finished[name] = final
        tqdm.write(f'      {name}: done after {time.perf_counter() - started:.0f} s ({len(finished)}/{len(runs)})')

    if not parallel:
        for name, config in configs.items():
            done(name, _pretrain(config))
        return finished
    with _StepsBar(configs.values(), any(progress.values()), f'pre-training {len(runs)} models, {jobs} at a time'
                   ) as bar:
        in_processes(_pretrain, {name: {'config': config} for name, config in configs.items()}, jobs, done,
                     bar.refresh)
    return {name: finished[name] for name in runs}


class _StepsBar:
    """The steps of pre-training runs in other processes, read from the last row of each ``log.csv``: a tqdm bar
    on a terminal, a line every tenth of the total in a pipe (:func:`sentizoo.progress.progress_mode`)."""

    def __init__(self, configs: Any, progress: bool, desc: str):
        from tqdm.auto import tqdm

        from sentizoo.progress import progress_mode
        self.folders, self.desc = [Path(c.out_dir) for c in configs], desc
        planned = [c.epochs * c.steps_per_epoch if c.steps_per_epoch else None for c in configs]
        self.total = None if None in planned else sum(planned)
        self.mode, self.next_line, self.steps = progress_mode(progress), 1, 0
        self.bar = tqdm(total=self.total, desc=desc, unit='step', disable=self.mode != 'bar', leave=False,
                        dynamic_ncols=True)

    @staticmethod
    def _last_step(folder: Path) -> int:
        try:
            with open(folder / 'log.csv', 'rb') as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 512))
                lines = f.read().split(b'\n')[:-1]  # the last piece may be a row still being written
        except OSError:
            return 0
        heads = [line.split(b',', 1)[0] for line in lines]
        return next((int(h) for h in reversed(heads) if h.isdigit()), 0)

    def refresh(self) -> None:
        steps = sum(self._last_step(folder) for folder in self.folders)
        self.bar.update(steps - self.steps)
        self.steps = steps
        if self.mode == 'lines' and self.total and steps * 10 >= self.next_line * self.total and steps < self.total:
            from sentizoo.progress import progress_line
            progress_line(f'{self.desc}  step {steps}/{self.total}')
            self.next_line = steps * 10 // self.total + 1

    def __enter__(self) -> '_StepsBar':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()


class CannotResumeError(ValueError):
    """A checkpoint under ``--out`` that this study cannot continue (other settings, an earlier format)."""


def _check_same_run(checkpoint: Path, config: Any) -> None:
    """Refuse to continue a checkpoint made with other settings (a finished one would be reused as it is) or in a
    format this version cannot resume."""
    from sentizoo.checkpoint import load as load_checkpoint
    try:
        saved = load_checkpoint(checkpoint)['config']
    except ValueError as e:
        raise CannotResumeError(f'{e} Or pass another --out.') from e
    wanted = dataclasses.asdict(config.resolved())
    changed = sorted(k for k in wanted if k not in ('resume', 'progress', 'device') and saved.get(k) != wanted[k])
    if changed:
        raise CannotResumeError(f'{checkpoint} was pre-trained with other settings ({", ".join(changed)}); delete '
                                f'{checkpoint.parent} or pass another --out to pre-train with these')


def measure_pretext(checkpoint: Path, samples: int, batch_size: int, device: Optional[str] = None) -> list:
    """The held-out :class:`~training.pretext_eval.PretextScore` of each task of a pre-trained model, measured on
    ``device`` (default: this process's GPU if any, else the CPU, as pre-training and the downstream runs)."""
    from sentizoo.runtime import resolve_device

    from .pretext_eval import evaluate_pretext, load_perception_model
    model, heldout, train = load_perception_model(checkpoint, samples)
    return evaluate_pretext(model, heldout, train, batch_size=batch_size, device=str(resolve_device(device)))


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--threads`` and ``--no-progress`` (``progress``): how every study's command line runs."""
    parser.add_argument('--device', help="cpu, cuda, cuda:1, ... (default: this process's GPU if any, else CPU)")
    parser.add_argument('--threads', type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bars')


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
    return value


def add_jobs_argument(parser: argparse.ArgumentParser, what: str = 'models pre-trained') -> None:
    """``--jobs``: how many trainings run at once (:func:`parallel_jobs`); ``what`` names them in the help."""
    parser.add_argument('--jobs', type=_at_least_one,
                        help=f'{what} at once, each in its own process with a share of the threads (default: on a '
                             f'CPU with T > 1 torch threads, up to T + 1 with one thread each; else 1)')
