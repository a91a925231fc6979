"""Training checkpoints: one format for every run of the training loop, its random state, atomic writes.

A checkpoint is a plain ``dict`` of tensors, numbers, strings, lists and dicts saved with ``torch.save``
and read back with ``torch.load(weights_only=True)``, so reading one can never run code. Writes go to a
temporary file in the same folder, are fsynced and then renamed over the target, so a crash (or
``kill -9``) leaves either the previous checkpoint or the new one, never a truncated file.

Format :data:`FORMAT` (written by :class:`sentizoo.engine.Loop`): ``format``, ``fingerprint`` (JSON: what a
resumed run must share), ``epoch``, ``step`` (in the epoch), ``global_step``, ``model``, ``history`` (JSON),
the running epoch sums (``term_names``, ``sums``, ``seen``), ``streams`` (each loader's position) and the
caller's facts (e.g. ``training.pretrain``'s ``config``); a resumable one also holds ``optimizer``,
``scheduler`` and ``rng`` (every rank's Python, NumPy, torch and CUDA generator states).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import numpy as np
import torch

from .weights import atomic_write  # temp file + fsync + rename

__all__ = ['FORMAT', 'CHECKPOINT_NAME', 'CheckpointWriteError', 'save', 'save_weights', 'load', 'read',
           'read_state_dict', 'rng_state', 'set_rng_state']

FORMAT = 'sentizoo.checkpoint/2'
CHECKPOINT_NAME = 'last.pt'

PathLike = Union[str, Path]


class CheckpointWriteError(OSError):
    """A checkpoint file could not be written (a full disk, a folder made read-only); the file it was to replace is
    intact, so a rerun resumes from it."""


def _write(path: Path, write: Callable[[str], None]) -> Path:
    """``atomic_write``, with any failure (torch reports a full disk as a RuntimeError) a CheckpointWriteError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except (OSError, RuntimeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[-1]
        raise CheckpointWriteError(f'cannot write {path} ({why}); the checkpoint it would replace is intact') from e
    return path


def save(state: Mapping[str, Any], path: PathLike) -> Path:
    """Write ``state`` (stamped with :data:`FORMAT`) to ``path`` atomically; returns the path.

    Raises:
        CheckpointWriteError: the file could not be written; an earlier one at ``path`` is kept.
    """
    return _write(Path(path), lambda tmp: torch.save({**state, 'format': FORMAT}, tmp))


def save_weights(tensors: Mapping[str, torch.Tensor], path: PathLike) -> Path:
    """Write ``tensors`` to the ``.safetensors`` file ``path`` atomically, failing as :func:`save` does."""
    from safetensors.torch import save_file
    return _write(Path(path), lambda tmp: save_file(dict(tensors), tmp))


def read(path: PathLike) -> Any:
    """Whatever a torch checkpoint file holds, read safely (``weights_only=True``), e.g. another trainer's
    state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # a pickle with code, a truncated file, not a checkpoint at all
        raise ValueError(f'{path} is not a readable checkpoint ({type(e).__name__}: {e}); delete it to start '
                         'afresh') from e


def _check_format(state: Any, path: PathLike) -> None:
    found = state.get('format') if isinstance(state, Mapping) else None
    if found != FORMAT:
        raise ValueError(f'{path} is not a sentizoo training checkpoint (format {found!r}, expected {FORMAT!r})')


def load(path: PathLike, *, resumable: bool = False) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save` (``weights_only=True``: no code runs).

    Raises FileNotFoundError, or ValueError for an unreadable file, another file, and,
    with ``resumable``, a checkpoint without the optimizer state (a final weights file).
    """
    state = read(path)
    _check_format(state, path)
    if resumable and 'optimizer' not in state:
        raise ValueError(f'{path} holds the weights of a finished run, not a resumable checkpoint: resume from '
                         f'{CHECKPOINT_NAME} (or an epoch_NNN.pt copy)')
    return state


def read_state_dict(source: Union[PathLike, Mapping[str, Any]], key: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, a torch state dict / checkpoint file, or a loaded checkpoint.

    A checkpoint may wrap the state dict: ``key`` names the entry, else the first of ``state_dict``,
    ``model``, ``module`` that is a mapping. A DDP ``module.`` prefix is dropped.
    """
    if isinstance(source, Mapping):
        state: Any = source
    elif Path(source).suffix == '.safetensors':
        from safetensors.torch import load_file
        state = load_file(str(source))
    else:
        state = read(source)
    keys = (key,) if key else ('state_dict', 'model', 'module')
    state = next((state[k] for k in keys if isinstance(state.get(k), Mapping)), state)
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'{source if not isinstance(source, Mapping) else "the checkpoint"}: not a state dict of '
                         f'tensors' + (f' under {key!r}' if key else ''))
    return {k.removeprefix('module.'): v for k, v in state.items()}


def rng_state(device: torch.device) -> Dict[str, Any]:
    """The state of every random generator a training step may draw from: Python, NumPy, torch (CPU) and
    ``device``'s CUDA generator. NumPy's state is stored as tensors: the safe unpickler takes no arrays."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'torch': torch.get_rng_state(),
    }
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore generators saved by :func:`rng_state`."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and device.type == 'cuda':
        torch.cuda.set_rng_state(state['cuda'], device)
