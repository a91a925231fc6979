"""``torchrun`` helpers: process-group set-up from the environment and rank queries.

``torchrun --nproc_per_node N -m training.pretrain ...`` sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; without them everything here degrades to a single process with no process group.
"""
from __future__ import annotations

import os
from typing import Any, List

import torch
import torch.distributed as dist

__all__ = ['init_distributed', 'is_distributed', 'rank', 'world_size', 'is_main_process', 'all_gather_objects',
           'cleanup']


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def init_distributed(device: torch.device) -> bool:
    """Join the process group described by the ``torchrun`` environment (NCCL on CUDA, gloo otherwise).

    Returns True when this call created the group (the caller then destroys it with :func:`cleanup`);
    False when not launched by ``torchrun`` or when a group already exists.
    """
    if int(os.environ.get('WORLD_SIZE', '1')) <= 1 or is_distributed():
        return False
    dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    return True


def all_gather_objects(obj: Any) -> List[Any]:
    """``obj`` of every rank, in rank order (a one-element list when not distributed)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
