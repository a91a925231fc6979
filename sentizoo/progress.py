"""What a training run shows and reports as it goes: the progress bar or lines, and logger hooks.

A logger (:class:`Logger`, or any object with its methods) receives, on rank 0, every step's values (the
rows of ``training.pretrain``'s ``log.csv``: step, epoch, lr, the loss and its terms, seconds into the
epoch) and every epoch's record (the entry of ``history.json``). :class:`TensorBoardLogger` writes them to
TensorBoard (``loggers=['tensorboard']``, or a ``SummaryWriter`` of your own) when it is installed.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

from .runtime import rank_world

__all__ = ['progress_mode', 'line_every', 'progress_line', 'summary', 'EpochProgress', 'show_summary', 'Logger',
           'TensorBoardLogger', 'HistoryFiles', 'as_loggers']


def progress_mode(progress: bool) -> Optional[str]:
    """How this process shows progress: ``'bar'`` (tqdm) on a terminal, ``'lines'`` in a pipe or a log file
    (one line every :func:`line_every` steps and per epoch, on stderr: no carriage returns), ``None`` when
    ``progress`` is off and on every rank but 0."""
    if not progress or rank_world()[0] != 0:
        return None
    return 'bar' if sys.stderr.isatty() else 'lines'


def line_every(steps: int) -> int:
    """Steps between two progress lines in a pipe: about ten per epoch."""
    return max(1, steps // 10)


def progress_line(text: str) -> None:
    """One progress line on stderr, flushed (readable in a pipe or a log file as it happens)."""
    print(text, file=sys.stderr, flush=True)


def summary(record: Mapping[str, Any], epochs: int, label: str = '') -> str:
    """One line per epoch: ``epoch 3/30  loss 4.12 (task/target 1.03 ...)  val accuracy 0.61``."""
    train = record['train']
    terms = ' '.join(f'{k} {v:.4g}' for k, v in train.items() if k != 'loss')
    val = ''.join(f'  val {k} {v:.4g}' for k, v in record.get('val', {}).items())
    return f'{label}epoch {record["epoch"]}/{epochs}  loss {train["loss"]:.4g} ({terms}){val}'


class EpochProgress:
    """One epoch's progress on rank 0 (a context manager): a tqdm bar with the running loss terms on a
    terminal; in a pipe or a log file, a plain line every :func:`line_every` steps but the last."""

    def __init__(self, progress: bool, desc: str, steps: int, initial: int = 0):
        from tqdm.auto import tqdm
        self.mode, self.desc, self.steps = progress_mode(progress), desc, steps
        self.bar = tqdm(total=steps, initial=initial, desc=desc, disable=self.mode != 'bar', leave=False,
                        dynamic_ncols=True)

    def update(self, step: int, means: Mapping[str, float]) -> None:
        """Step ``step`` of the epoch is done; ``means``: the running mean of each loss term."""
        terms = {name: f'{value:.4g}' for name, value in means.items()}
        self.bar.update()
        self.bar.set_postfix(terms, refresh=False)
        if self.mode == 'lines' and step % line_every(self.steps) == 0 and step < self.steps:
            progress_line(f'{self.desc}  step {step}/{self.steps}  ' + ' '.join(f'{k} {v}' for k, v in terms.items()))

    def __enter__(self) -> 'EpochProgress':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()


def show_summary(line: str, progress: bool, logger: logging.Logger) -> None:
    """An epoch's summary line: below the bar, as a plain line, or (progress off) logged on rank 0."""
    mode = progress_mode(progress)
    if mode == 'bar':
        from tqdm.auto import tqdm
        tqdm.write(line)
    elif mode == 'lines':
        progress_line(line)
    elif rank_world()[0] == 0:
        logger.info(line)


class Logger:
    """A hook into a training run, called on rank 0 only; override the methods you need.

    Pass instances as ``loggers=[...]`` to :func:`~sentizoo.engine.amalgamate`,
    :func:`~sentizoo.engine.finetune` or :class:`~sentizoo.engine.Loop`.
    """

    def start(self, global_step: int, steps_per_epoch: int) -> None:
        """Before the first step: the step the run starts after (0, or where a resumed run left off) and the
        number of steps per epoch."""

    def log_step(self, row: Mapping[str, float]) -> None:
        """After every optimizer step: ``step`` (from 1 over the whole run), ``epoch`` (from 1), ``lr``,
        ``loss``, every loss term, ``time`` (seconds since the epoch started)."""

    def log_epoch(self, record: Mapping[str, Any], history: Mapping[str, Any]) -> None:
        """After every epoch: its ``history`` record (``epoch``, ``lr``, ``train`` means, ``val`` metrics,
        ``seconds``) and the whole history so far."""

    def close(self) -> None:
        """After the last epoch (also when training stopped with an error)."""


class TensorBoardLogger(Logger):
    """Every step's values under ``train/<name>`` (x: the step) and every epoch's means and validation
    metrics under ``epoch/train/<name>`` and ``epoch/val/<name>`` (x: the epoch) in TensorBoard.

    ``writer``: a ``torch.utils.tensorboard.SummaryWriter`` (or anything with ``add_scalar`` and ``flush``);
    default a new one writing to ``log_dir``, made when training starts (on rank 0 only). That needs the
    ``tensorboard`` package, which is imported only then (and checked here, before anything trains).
    """

    def __init__(self, writer: Any = None, log_dir: Optional[str] = None):
        self.own, self.writer, self.log_dir = writer is None, writer, log_dir
        if writer is None and importlib.util.find_spec('tensorboard') is None:
            raise ImportError('the TensorBoard logger needs the tensorboard package: pip install tensorboard')

    def start(self, global_step: int, steps_per_epoch: int) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=self.log_dir)

    def log_step(self, row: Mapping[str, float]) -> None:
        for name, value in row.items():
            if name not in ('step', 'epoch', 'time'):
                self.writer.add_scalar(f'train/{name}', value, row['step'])

    def log_epoch(self, record: Mapping[str, Any], history: Mapping[str, Any]) -> None:
        for part in ('train', 'val'):
            for name, value in record.get(part, {}).items():
                self.writer.add_scalar(f'epoch/{part}/{name}', value, record['epoch'])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.flush()
        if self.own:
            self.writer.close()


class HistoryFiles(Logger):
    """The history JSON (:attr:`sentizoo.engine`'s ``model.sentizoo_history``), rewritten atomically after
    every epoch to each of ``paths``."""

    def __init__(self, paths: Sequence[Union[str, Path]]):
        self.paths = [Path(p) for p in paths]

    def log_epoch(self, record: Mapping[str, Any], history: Mapping[str, Any]) -> None:
        from .weights import atomic_write
        text = json.dumps(history, indent=2) + '\n'
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def as_loggers(loggers: Sequence[Any], log_dir: Optional[str] = None) -> List[Any]:
    """Loggers from what a caller passed: logger objects as they are, ``'tensorboard'`` (a
    :class:`TensorBoardLogger` writing under ``log_dir``), a SummaryWriter (wrapped)."""
    out: List[Any] = []
    for logger in loggers:
        if logger == 'tensorboard':
            logger = TensorBoardLogger(log_dir=log_dir)
        elif not hasattr(logger, 'log_step') and hasattr(logger, 'add_scalar'):
            logger = TensorBoardLogger(logger)
        elif not all(hasattr(logger, m) for m in ('start', 'log_step', 'log_epoch', 'close')):
            raise TypeError(f'{type(logger).__name__} is not a logger: subclass sentizoo.progress.Logger, or pass '
                            "'tensorboard' or a SummaryWriter")
        out.append(logger)
    return out

