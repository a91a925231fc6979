"""Scoring a model on a dataset: :func:`evaluate`, the task's metrics over every sample of a loader, once, also under
``torchrun`` (what the training loop validates with, and what ``sentizoo evaluate`` runs)."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .progress import progress_mode
from .runtime import rank_world, resolve_device, to_device, use_channels_last
from .sampling import Shard, check_labels, rebuild
from .tasks import Task, get_task

__all__ = ['evaluate']


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, task: Union[str, Task] = 'sll', *, device: Optional[str] = None,
             channels_last: Optional[bool] = None, progress: bool = False,
             outputs: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None) -> Dict[str, float]:
    """The task's metrics of ``model`` over ``loader`` (every sample once, also under torchrun).

    ``outputs``: a list that receives each batch's ``(fp32 logits, targets)`` on the CPU, in the loader's order
    (this process's share under torchrun), for per-sample analyses without a second pass.

    The model is moved to ``device`` and put in eval mode. It runs in fp32, with autocast switched off even
    inside a caller's autocast: bf16 logits tie, which moves the ranking loss by ~1e-3, the size of the
    paper's gaps. The targets of every batch are checked against the logits (``task.check_target``).
    """
    task = get_task(task)
    if getattr(model, 'num_classes', 0):  # labels and files checked before any image is read
        check_labels('loader', loader.dataset, task, model.num_classes)
    device = resolve_device(device)
    model.to(device).eval()
    channels_last = use_channels_last(channels_last, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    rank, world = rank_world()
    if world > 1:
        if len(loader.dataset) < world:
            raise ValueError(f'evaluate: {len(loader.dataset)} samples cannot be shared by {world} processes.')
        loader = rebuild(loader, Shard(len(loader.dataset), rank, world))
    from tqdm.auto import tqdm
    metrics = task.metrics()
    for images, targets in tqdm(loader, desc='evaluate', leave=False, disable=progress_mode(progress) != 'bar'):
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=False):
            logits = model(to_device(images, device, channels_last)).float()
        task.check_target(targets, logits.shape[1])
        metrics.update(logits, targets)
        if outputs is not None:
            outputs.append((logits.cpu(), targets.cpu()))
    metrics.sync()
    return metrics.compute()
