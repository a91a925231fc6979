"""Atomic training checkpoints and the state needed for an exact resume.

A checkpoint is a plain ``dict`` of tensors, numbers, strings, lists and dicts saved with
``torch.save`` and read back with ``torch.load(weights_only=True)``, so reading one can never run
code. Writes go to a temporary file in the same folder, are fsynced and then renamed over the
target, so a crash (or ``kill -9``) leaves either the previous checkpoint or the new one, never a
truncated file.

:func:`rng_state` / :func:`set_rng_state` capture every random stream a training step touches
(Python, NumPy, torch CPU and CUDA); NumPy's state is stored as tensors because the safe unpickler
does not accept arrays.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch

from sentizoo.weights import atomic_write  # temp file + fsync + rename

__all__ = ['save_checkpoint', 'load_checkpoint', 'read_state_dict', 'rng_state', 'set_rng_state']

PathLike = Union[str, Path]


def save_checkpoint(state: Mapping[str, Any], path: PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = 'cpu') -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a pickle with code, a truncated file, not a checkpoint at all
        raise ValueError(f'{path} is not a readable training checkpoint ({type(e).__name__}: {e}); '
                         f'pass a file written by python -m training.pretrain') from e


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
        state = load_checkpoint(source)
    keys = (key,) if key else ('state_dict', 'model', 'module')
    state = next((state[k] for k in keys if isinstance(state.get(k), Mapping)), state)
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'{source if not isinstance(source, Mapping) else "the checkpoint"}: not a state dict of '
                         f'tensors' + (f' under {key!r}' if key else ''))
    return {k.removeprefix('module.'): v for k, v in state.items()}


def rng_state() -> Dict[str, Any]:
    """The state of every random generator a training step may draw from."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generators saved by :func:`rng_state`."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
