"""The options of a training run (:class:`TrainOptions`): the paper's defaults live here and only here."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, List, Mapping, Optional, Tuple, Union

__all__ = ['TrainOptions', 'is_int', 'is_number', 'option_problems', 'train_options']


@dataclasses.dataclass
class TrainOptions:
    """Options of the training loop (keyword arguments of :func:`~sentizoo.engine.amalgamate` and
    :func:`~sentizoo.engine.finetune`).

    Attributes:
        epochs: training epochs (paper: 30).
        lr, momentum, weight_decay: SGD (paper: 1e-3, 0.9, 1e-4; weight decay on every parameter).
        step_size, gamma: StepLR, stepped once per epoch (paper: 10, 0.1).
        seed: seeds model heads, data order and per-sample augmentation.
        checkpoint_dir: folder for ``last.pt``, ``best.safetensors``, ``history.json``; resumed from when it
            holds a checkpoint.
        checkpoint_every: also checkpoint every N optimizer steps (needs ``checkpoint_dir``).
        resume: continue from ``checkpoint_dir/last.pt`` when it exists; False refuses to overwrite one.
            The resumed run must have the same options except ``epochs`` and ``lr`` (e.g. lowered after a
            :class:`~sentizoo.engine.NonFiniteLossError`; the schedule continues from the new base lr).
        history_path: also write the history JSON here.
        device: e.g. ``'cuda:1'``; default this process's GPU (``LOCAL_RANK``) if any, else the CPU.
        amp: bf16 autocast on CUDA for the training steps (no effect on the CPU); ``'bf16'``: on any device,
            the CPU too; False: fp32. Validation always runs in fp32.
        channels_last: convert the models and the images to channels_last; ``None`` (default): on CUDA only,
            where convolutions are made for that layout (the CPU's figures: BENCHMARKS.md).
        sync_batchnorm: under DDP, normalise with the statistics of the global batch (SyncBatchNorm, CUDA
            only); the returned model has plain BatchNorm layers again.
        progress: on rank 0, a progress bar with the running loss terms on a terminal; in a pipe or a log
            file, plain lines on stderr instead (about ten per epoch, and the epoch's summary).
    """

    epochs: int = 30
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    step_size: int = 10
    gamma: float = 0.1
    seed: int = 0
    checkpoint_dir: Optional[str] = None
    checkpoint_every: Optional[int] = None
    resume: bool = True
    history_path: Optional[str] = None
    device: Optional[str] = None
    amp: Union[bool, str] = True
    channels_last: Optional[bool] = None
    sync_batchnorm: bool = False
    progress: bool = True

    # options that shape the trajectory: a resumed run must use the same values (lr and epochs may change)
    _TRAJECTORY = ('momentum', 'weight_decay', 'step_size', 'gamma', 'seed', 'amp', 'channels_last',
                   'sync_batchnorm')

    def __post_init__(self) -> None:
        for name in ('checkpoint_dir', 'history_path', 'device'):
            value = getattr(self, name)
            setattr(self, name, None if value is None else str(value))
        problems = option_problems(vars(self))
        if problems:
            raise ValueError('Invalid training options: ' + '; '.join(f'{name}={getattr(self, name)!r} ({why})'
                                                                       for name, why in problems) + '.')

    def trajectory(self) -> dict:
        """The options a resumed run must share with its checkpoint for an exact continuation."""
        return {k: getattr(self, k) for k in self._TRAJECTORY}


def option_problems(options: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """``(name, what it must be)`` of every invalid option in ``options`` (:class:`TrainOptions` fields; those
    missing are not checked): the checks :class:`TrainOptions` makes, for a caller that names the options its own
    way (``training.pretrain``'s flags) and reports them in its words."""
    def given(name: str, ok: Callable[[Any], bool], why: str) -> List[Tuple[str, str]]:
        return [(name, why)] if name in options and not ok(options[name]) else []

    problems = [p for name, ok, why in (
        ('epochs', lambda v: is_int(v, 1), 'an integer >= 1'),
        ('step_size', lambda v: is_int(v, 1), 'an integer >= 1'),
        ('seed', lambda v: is_int(v, 0), 'an integer >= 0'),
        ('checkpoint_every', lambda v: v is None or is_int(v, 1), 'None or an integer >= 1'),
        ('lr', lambda v: is_number(v) and v > 0, 'a number > 0'),
        ('momentum', lambda v: is_number(v) and v >= 0, 'a number >= 0'),
        ('weight_decay', lambda v: is_number(v) and v >= 0, 'a number >= 0'),
        ('gamma', lambda v: is_number(v) and v > 0, 'a number > 0'),
        ('amp', lambda v: isinstance(v, bool) or v == 'bf16', "True, False or 'bf16'"),
    ) for p in given(name, ok, why)]
    if options.get('checkpoint_every') is not None and options.get('checkpoint_dir') is None:
        problems.append(('checkpoint_every', 'needs a checkpoint_dir'))
    return problems


def is_int(value: Any, minimum: int) -> bool:
    """``value`` is an int (not a bool, which JSON ``true`` becomes) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_number(value: Any) -> bool:
    """``value`` is a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def train_options(options: Mapping[str, Any], also_valid: Tuple[str, ...] = ()) -> TrainOptions:
    """:class:`TrainOptions` from keyword arguments; an unknown name is a TypeError that lists the valid ones
    (``also_valid``: the other keyword arguments the caller accepts, for the message)."""
    known = [f.name for f in dataclasses.fields(TrainOptions)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f'Unknown option(s) {unknown}; training options are {known}'
                        + (f', amalgamation options {list(also_valid)}' if also_valid else '') + '.')
    return TrainOptions(**options)
