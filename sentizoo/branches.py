"""Independent branches of one training step (the four models of an amalgamation) run side by side.

On a CPU, one forward/backward with several intra-op threads synchronises them at every op, and the many
small ops of a CNN (BatchNorm, ReLU, additions, their backward) scale poorly. Independent models instead
run one per worker thread, each single-threaded, and never wait for each other (the figures of an
amalgamation step: BENCHMARKS.md, "Amalgamation step").

:func:`run_branches` runs each branch's forward in a worker (one intra-op thread, the caller's grad mode)
and passes all outputs through one autograd node, :class:`_Join`, whose backward runs each branch's
backward in the workers too; ``loss.backward()`` is called as usual. Branches must not share parameters
or tensors that require grad. The numbers equal a sequential run's up to the float summation order of
multi-threaded kernels; double backward (``create_graph``) and ``retain_graph`` are not supported.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence

import torch

__all__ = ['run_branches', 'side_by_side_default']

Branch = Callable[[], Sequence[Optional[torch.Tensor]]]

_pools: Dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def side_by_side_default(device: torch.device) -> bool:
    """Whether branches run side by side when not told: on CPU, with 2+ torch threads, without CPU
    autocast (thread-local, so the workers would not see it), outside ``torch.distributed``
    (DistributedDataParallel's gradient hooks expect one backward on one thread)."""
    return (device.type == 'cpu' and torch.get_num_threads() > 1 and not torch.is_autocast_enabled('cpu')
            and not (torch.distributed.is_available() and torch.distributed.is_initialized()))


def run_branches(branches: Sequence[Branch], side_by_side: bool) -> List[List[Optional[torch.Tensor]]]:
    """The outputs of each branch (a callable returning a sequence of tensors or ``None``).

    ``side_by_side=False`` calls them in order on this thread. ``side_by_side=True`` calls them in
    ``min(torch threads, branches)`` worker threads of one intra-op thread each, and routes the outputs
    through one autograd node so that the backward of each branch also runs in the workers.
    """
    if not side_by_side or len(branches) < 2:
        return [list(branch()) for branch in branches]
    workers = min(torch.get_num_threads(), len(branches))
    outputs = [list(out) for out in _map(workers, branches)]
    flat = [t for out in outputs for t in out if t is not None]
    grads_needed = [t.requires_grad for t in flat]
    if not torch.is_grad_enabled() or not any(grads_needed):
        return outputs
    # Leaves stand in for the outputs in the caller's graph; the outputs' own graphs are run by _Join.
    leaves = [t.detach().requires_grad_(needed) for t, needed in zip(flat, grads_needed)]
    joined = iter(_Join.apply(partial(_map, workers), outputs, *leaves))
    return [[None if t is None else next(joined) for t in out] for out in outputs]


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix='sentizoo-branch')
        return _pools[workers]


def _map(workers: int, fns: Sequence[Callable[[], object]]) -> list:
    """``[fn() for fn in fns]`` in the worker threads, each with one intra-op thread and this grad mode; a
    single function runs here with every thread (e.g. the backward of a target beside frozen teachers)."""
    if len(fns) < 2:
        return [fn() for fn in fns]
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()

    def call(fn):
        torch.set_num_threads(1)  # this worker's OpenMP/MKL setting is thread-local
        with torch.set_grad_enabled(grad):
            return fn()
    try:
        return list(_pool(workers).map(call, fns))
    finally:
        torch.set_num_threads(threads)  # set_num_threads also sets the default of threads started later


class _Join(torch.autograd.Function):
    """Identity on the leaves; its backward runs each branch's backward with the leaves' gradients."""

    @staticmethod
    def forward(ctx, run, outputs, *leaves):
        ctx.run, ctx.outputs = run, outputs
        joined = tuple(leaf.view_as(leaf) for leaf in leaves)
        ctx.mark_non_differentiable(*(out for out, leaf in zip(joined, leaves) if not leaf.requires_grad))
        return joined

    @staticmethod
    def backward(ctx, *grads):
        grads_left, jobs = iter(grads), []
        for out in ctx.outputs:
            pairs = [(t, next(grads_left)) for t in out if t is not None]
            pairs = [(t, g) for t, g in pairs if g is not None and t.requires_grad]
            if pairs:
                jobs.append(partial(torch.autograd.backward, [t for t, _ in pairs], [g for _, g in pairs]))
        ctx.run(jobs)
        ctx.outputs = None  # free the branches' graphs
        return (None, None) + (None,) * len(grads)
