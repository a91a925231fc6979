"""Where and how a training step runs: processes, devices, precision, memory format, batches, optimiser (and the
CPU chunk of an inference forward).

Used by :mod:`sentizoo.engine` (training and evaluation) and by the training scripts; nothing here knows
about models, tasks or data.
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ['CPU_CHUNK', 'rank_world', 'all_gather', 'resolve_device', 'process_group', 'autocast',
           'use_channels_last', 'to_device', 'batch_size', 'distribute', 'sgd', 'rebase_lr', 'revert_sync_batchnorm']

CPU_CHUNK = 4
"""Images per forward pass of one CPU thread at inference (both backends of ``sentizoo predict``): larger
chunks spill the activations out of the caches and run slower per image."""


def rank_world() -> Tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather(obj: Any) -> List[Any]:
    """``obj`` of every rank, in rank order (a one-element list in a single process). Collective."""
    world = rank_world()[1]
    if world == 1:
        return [obj]
    out: List[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def resolve_device(device: Optional[str]) -> torch.device:
    """``device`` as given, else this process's GPU (``LOCAL_RANK`` under torchrun), else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        local = int(os.environ.get('LOCAL_RANK', 0))
        torch.cuda.set_device(local)
        return torch.device('cuda', local)
    return torch.device('cpu')


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``PORT``;
    NCCL on CUDA, else gloo) for the duration, unless there is none (a single process) or the caller already
    created one (which it then keeps)."""
    create = dist.is_available() and not dist.is_initialized() and int(os.environ.get('WORLD_SIZE', '1')) > 1
    if create:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    try:
        yield
    finally:
        if create:
            dist.destroy_process_group()


def autocast(device: torch.device, amp: Union[bool, str]) -> ContextManager:
    """The mixed precision of a training step: ``True``: bf16 on CUDA where supported, fp32 elsewhere;
    ``'bf16'``: bf16 on any device (the CPU too); ``False``: fp32."""
    if amp == 'bf16' or (amp is True and device.type == 'cuda' and torch.cuda.is_bf16_supported()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def use_channels_last(flag: Optional[bool], device: torch.device) -> bool:
    """channels_last as asked; ``None``: on CUDA only (on the CPU it measured slower, BENCHMARKS.md)."""
    return device.type == 'cuda' if flag is None else flag


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """``batch`` (a tensor, or lists, tuples and mappings of them) on ``device``; image batches (4-d float
    tensors) in channels_last when asked. Anything else is returned as it is."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    return batch


def batch_size(batch: Any) -> int:
    """Samples in a batch (a tensor, or lists, tuples and mappings of them): the length of its first tensor."""
    while not isinstance(batch, torch.Tensor):
        batch = next(iter(batch.values() if isinstance(batch, Mapping) else batch))
    return len(batch)


def distribute(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel when this process is one of several, else itself.

    A module whose step leaves some parameters without a gradient says so with a true
    ``has_unused_parameters`` attribute (DDP then looks for them every step, which costs time).
    """
    if rank_world()[1] == 1:
        return module
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device] if device.type == 'cuda' else None,
        find_unused_parameters=getattr(module, 'has_unused_parameters', False))


def sgd(params: Any, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with the fused kernel where the parameters' device has one (CPU and CUDA), else the default.

    The fused kernel updates each parameter in one pass without temporaries. On a 2-core CPU it updates
    94M parameters (momentum + weight decay) in 47 ms against 802 ms for ``foreach`` and 177 ms for the
    for-loop, whose temporaries of hundreds of MB are fresh pages every step (BENCHMARKS.md).
    """
    params = list(params)
    try:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    except RuntimeError:  # a device or dtype without a fused kernel
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def rebase_lr(scheduler: torch.optim.lr_scheduler.LRScheduler, lr: float) -> float:
    """Rescale a schedule (e.g. restored from a checkpoint) to the base ``lr``; returns the base lr it had."""
    old = scheduler.base_lrs[0]
    if lr != old:
        groups = scheduler.optimizer.param_groups
        for group in groups:
            group['lr'] *= lr / old
            group['initial_lr'] = lr
        scheduler.base_lrs = [lr] * len(groups)
        scheduler._last_lr = [group['lr'] for group in groups]
    return old


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """SyncBatchNorm layers back to BatchNorm2d (same parameters and buffers)."""
    if isinstance(module, nn.SyncBatchNorm):
        state = module.state_dict()
        plain = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, device=next(iter(state.values())).device)
        plain.load_state_dict(state)
        return plain.train(module.training)
    for name, child in module.named_children():
        setattr(module, name, revert_sync_batchnorm(child))
    return module
