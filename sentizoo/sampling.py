"""Reproducible sampling: which samples a process draws in which order, and with which random seeds.

* :class:`SeededSamples` draws every sample with the torch, Python and NumPy generators seeded from
  ``(seed, epoch, index)``: random augmentations do not depend on the number of workers or processes, or
  on where a run was resumed.
* :class:`EpochSampler` gives each process its share of an epoch's order, from any batch on (resume):
  :class:`~torch.utils.data.DistributedSampler`'s order (shuffled or not), or the order of the user's own
  sampler (e.g. a :class:`~torch.utils.data.WeightedRandomSampler` for imbalanced data), seeded per epoch.
* :class:`Stream` is an endless stream of batches over passes of one loader, whose whole state is its
  position; the training loop reads one stream per loader.
"""
from __future__ import annotations

import itertools
import math
import random
from typing import TYPE_CHECKING, Any, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import (DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler, Sampler,
                              SequentialSampler)

if TYPE_CHECKING:
    from .tasks import Task

__all__ = ['SeededSamples', 'EpochSampler', 'Shard', 'Stream', 'rebuild', 'mix_seed', 'check_loader', 'check_data']


def mix_seed(seed: int, *keys: int) -> int:
    """One 63-bit seed from ``seed`` and the keys (e.g. epoch and index)."""
    for key in keys:
        seed = (seed * 1_000_003 + key) % 2 ** 63
    return seed


class SeededSamples(Dataset):
    """``dataset[index]`` for keys ``(epoch, index)``, drawn with the torch (CPU), Python and NumPy generators
    seeded from ``(seed, epoch, index)``; the caller's generator states are restored afterwards.

    A key ``(epoch, index, draw)`` is seeded from ``(seed, epoch, draw)`` instead: a sampler that draws with
    replacement repeats indices within an epoch, and each draw gets its own augmentation.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, ...]) -> Any:
        epoch, index = key[:2]
        sample_seed = mix_seed(self.seed, epoch, key[2] if len(key) > 2 else index)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=()):
            torch.default_generator.manual_seed(sample_seed)
            random.seed(sample_seed)
            np.random.seed(sample_seed % 2 ** 32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class EpochSampler(Sampler):
    """Keys of this process's share of each epoch's order, from batch ``skip`` on (:meth:`start`).

    Without ``base``: :class:`~torch.utils.data.DistributedSampler`'s order, shuffled by ``seed`` and the
    epoch or not; keys ``(epoch, index)``. With ``base``, a user's sampler: its order of the epoch, dealt
    round-robin to the processes (the tail that does not fill a round is dropped, so that all processes
    take as many steps); keys ``(epoch, index, draw)``. Its order is made a function of ``(seed, epoch)``
    through its ``set_epoch`` (as DistributedSampler's) or else by seeding its ``generator`` attribute
    (RandomSampler, WeightedRandomSampler, SubsetRandomSampler): then a resumed run continues exactly.
    A sampler with neither cannot be replayed: :attr:`not_replayable` says why, and it is refused under
    several processes, which would not agree on the order.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int, rank: int, world: int,
                 base: Optional[Sampler] = None):
        self.batch_size, self.seed, self.rank, self.world, self.base = batch_size, seed, rank, world, base
        self.shard = DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        self.not_replayable: Optional[str] = None
        if base is not None and not (hasattr(base, 'set_epoch') or hasattr(base, 'generator')):
            self.not_replayable = (f'its sampler ({type(base).__name__}) has neither set_epoch() nor a generator '
                                   f'attribute, so the order of an epoch cannot be drawn again')
            if world > 1:
                raise ValueError(f'{self.not_replayable}: the {world} processes would not agree on the order. '
                                 'Give the sampler a generator or a set_epoch(epoch) method.')
        self.epoch = self.skip = 0
        self._order: List[Tuple[int, int]] = []

    def start(self, epoch: int, skip_batches: int = 0) -> None:
        """Draw epoch ``epoch``'s order and skip its first ``skip_batches`` batches."""
        self.epoch, self.skip = epoch, skip_batches * self.batch_size
        if self.base is None:
            self.shard.set_epoch(epoch)
            return
        if hasattr(self.base, 'set_epoch'):
            self.base.set_epoch(epoch)
        elif hasattr(self.base, 'generator'):
            self.base.generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        order = list(enumerate(self.base))
        self._order = order[self.rank:len(order) - len(order) % self.world:self.world]

    def epoch_length(self) -> int:
        """Keys of this process in a whole epoch."""
        return len(self.shard) if self.base is None else len(self.base) // self.world

    def __iter__(self) -> Iterator[Tuple[int, ...]]:
        if self.base is None:
            return ((self.epoch, i) for i in itertools.islice(iter(self.shard), self.skip, None))
        return ((self.epoch, int(i), draw) for draw, i in self._order[self.skip:])

    def __len__(self) -> int:
        return self.epoch_length() - self.skip


class Shard(Sampler):
    """Indices ``rank, rank + world, ...``: an unpadded shard, so summed metrics count every sample once."""

    def __init__(self, size: int, rank: int, world: int):
        self.indices = range(rank, size, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def rebuild(loader: DataLoader, sampler: Sampler, dataset: Optional[Dataset] = None,
            generator: Optional[torch.Generator] = None) -> DataLoader:
    """A DataLoader like ``loader`` (batching, workers, collate) drawing from ``sampler``."""
    return DataLoader(dataset if dataset is not None else loader.dataset, batch_size=loader.batch_size,
                      sampler=sampler, generator=generator, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, drop_last=loader.drop_last, timeout=loader.timeout,
                      worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
                      prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers)


def custom_sampler(loader: DataLoader) -> Optional[Sampler]:
    """The loader's own sampler, or None when it is the one ``shuffle=True/False`` makes."""
    return None if isinstance(loader.sampler, (RandomSampler, SequentialSampler)) else loader.sampler


class Stream:
    """An endless stream of batches from ``loader``: passes over its dataset one after another.

    The loader's dataset, batch size, ``drop_last``, workers and ``collate_fn`` are used; the order is
    :class:`EpochSampler`'s (``shuffle`` or the loader's own sampler) for this process, each sample seeded by
    :class:`SeededSamples`. The position (pass number, batches consumed) is the whole state, so
    :meth:`state_dict` / :meth:`load_state_dict` resume the stream at the exact next batch.
    """

    def __init__(self, loader: DataLoader, seed: int, rank: int = 0, world: int = 1, name: str = 'loader'):
        self.name = name
        shuffle = isinstance(loader.sampler, RandomSampler)
        self.sampler = EpochSampler(len(loader.dataset), loader.batch_size, shuffle, seed, rank, world,
                                    custom_sampler(loader))
        # A private generator, seeded per pass: creating an iterator then draws no number from the global one
        # (worker seeds are unused: every sample is seeded by SeededSamples).
        self.loader = rebuild(loader, self.sampler, SeededSamples(loader.dataset, seed), torch.Generator())
        per_process = self.sampler.epoch_length()
        divide = math.floor if loader.drop_last else math.ceil
        self.batches_per_pass = divide(per_process / loader.batch_size)
        if self.batches_per_pass == 0:
            raise ValueError(f'{name}: {len(loader.dataset)} samples give {per_process} per process, fewer than '
                             f'the batch size {loader.batch_size}; lower the batch size or add data')
        self.epoch, self.position = 0, 0
        self._iterator: Optional[Iterator] = None

    def _start_pass(self) -> None:
        self.sampler.start(self.epoch, self.position)
        self.loader.generator.manual_seed(self.epoch)
        self._iterator = iter(self.loader)

    def next(self) -> Any:
        """The next batch (a new pass starts after the last batch of the previous one)."""
        if self.position >= self.batches_per_pass:
            self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self._start_pass()
        self.position += 1
        batch = next(self._iterator)
        if self.position == self.batches_per_pass:  # the pass is done: its workers end now, not at the next pass
            self._iterator = None
        return batch

    def state_dict(self) -> Mapping[str, int]:
        return {'epoch': self.epoch, 'position': self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.position, self._iterator = int(state['epoch']), int(state['position']), None


def describe_loaders(loaders: Sequence[DataLoader]) -> Mapping[str, List[Any]]:
    """What a resumed run must share with its checkpoint about its loaders (JSON-ready)."""
    def order(loader: DataLoader) -> Any:
        base = custom_sampler(loader)
        return isinstance(loader.sampler, RandomSampler) if base is None else type(base).__name__
    return {'batch_size': [loader.batch_size for loader in loaders],
            'dataset_size': [len(loader.dataset) for loader in loaders],
            'shuffle': [order(loader) for loader in loaders], 'drop_last': [loader.drop_last for loader in loaders]}


# --- checks of a loader before training ----------------------------------------------------------------

def check_loader(name: str, loader: Any, task: Task, outputs: int) -> None:
    """The loader's structure and its first sample, collated as a batch of one."""
    if not isinstance(loader, DataLoader):
        raise ValueError(f'{name} must be a torch.utils.data.DataLoader; got {type(loader).__name__}.')
    if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        raise ValueError(f'{name}: the engine needs a map-style dataset and DataLoader(batch_size=...), because '
                         'it shards and seeds the sample order itself (no IterableDataset or batch_sampler).')
    if len(loader.dataset) == 0:
        raise ValueError(f'{name}: the dataset is empty.')
    check_labels(name, loader.dataset, task, outputs)
    batch = loader.collate_fn([SeededSamples(loader.dataset, 0)[(0, 0)]])
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError(f'{name} must yield (images, targets) pairs; its first batch is a '
                         f'{type(batch).__name__}' + (f' of {len(batch)} items.' if hasattr(batch, '__len__') else '.'))
    images, targets = batch
    if not (isinstance(images, torch.Tensor) and images.ndim == 4 and images.is_floating_point()):
        raise ValueError(f'{name}: images must be float tensors (N, C, H, W); the first batch has '
                         f'{type(images).__name__} {tuple(getattr(images, "shape", ()))}.')
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f'{name}: targets must be tensors; the first batch has {type(targets).__name__}.')
    try:
        task.check_target(targets, outputs)
    except ValueError as e:
        raise ValueError(f'{name}: {e}') from None


def check_labels(name: str, dataset: Dataset, task: Task, outputs: int) -> None:
    """Every label row of a dataset, before any image is read: one that can check them itself (``check_labels``,
    e.g. :class:`sentizoo.datasets.LabelledImages`, which also checks its image files), or one that lists them
    all in ``targets`` (torchvision's ``ImageFolder``: a class index beyond the model's outputs would stop
    training mid-epoch)."""
    check = getattr(dataset, 'check_labels', None)
    targets = None if callable(check) else _listed_targets(dataset)
    try:
        if callable(check):
            check(task, outputs)
        elif targets is not None:
            task.check_target(targets, outputs)
    except ValueError as e:
        raise ValueError(f'{name}: {e}') from None


def _listed_targets(dataset: Dataset) -> Optional[torch.Tensor]:
    """``dataset.targets`` as one tensor when it holds the target of every sample as the dataset yields it (no
    ``target_transform``); else None, and only the first batch is checked."""
    targets = getattr(dataset, 'targets', None)
    if (not isinstance(targets, (list, tuple, torch.Tensor)) or len(targets) != len(dataset)
            or getattr(dataset, 'target_transform', None) is not None):
        return None
    try:
        return torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError):  # not labels of one shape
        return None


def check_data(model: nn.Module, loader: DataLoader, val_loader: Optional[DataLoader], task: Task) -> None:
    """``loader`` and ``val_loader`` against ``model``'s outputs and ``task`` (:func:`check_loader`)."""
    from .amalgamation import num_outputs
    outputs = num_outputs(model, f'model ({type(model).__name__})')
    check_loader('loader', loader, task, outputs)
    if val_loader is not None:
        check_loader('val_loader', val_loader, task, outputs)
