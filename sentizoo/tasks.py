"""Downstream learning tasks of the paper: losses, predictions and metrics, in torch only.

* ``sll`` single-label learning: cross-entropy; accuracy.
* ``mll`` multi-label learning: BCE with logits; a label is predicted where ``sigmoid(logit) > 0.5``;
  Hamming loss, label ranking loss, micro-F1 and macro-F1 with scikit-learn's definitions.
* ``ldl`` label distribution learning: the prediction is ``softmax(logits)``; loss KL(truth || prediction);
  Chebyshev, Clark, Canberra, KL, Cosine and Intersection between truth ``p`` and prediction ``q``.

Every metric accumulator keeps sums only (counts, per-sample metric sums), so results do not depend on
how the data is cut into batches (batch size 1, a last partial batch) and the state can be summed over
processes with :meth:`Metrics.sync`::

    task = get_task('mll')
    task.check_target(labels, num_outputs=26)
    loss = task.loss(logits, labels)
    scores = task.metrics()
    scores.update(logits, labels)   # once per batch
    scores.compute()                # {'hamming_loss': ..., 'ranking_loss': ..., 'micro_f1': ..., 'macro_f1': ...}
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ['Task', 'Metrics', 'SLL', 'MLL', 'LDL', 'DOWNSTREAM_TASKS', 'get_task']


class Metrics(ABC):
    """Accumulates a task's metrics over batches; :meth:`compute` returns python floats.

    The state is one float64 vector of sums, created on the device of the first batch.
    """

    def __init__(self, task: 'Task') -> None:
        self.task = task
        self._state: Optional[torch.Tensor] = None

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: ``logits`` (N, C) as the model outputs them, ``target`` as the task expects.

        Raises ValueError when ``target``'s shape or dtype does not fit (:meth:`Task.check_format`): a wrong
        shape would broadcast and be scored silently.
        """
        self.task.check_format(target, logits.shape[-1], len(logits))
        sums = self._batch_sums(logits.detach().double(), target.detach())
        self._state = sums if self._state is None else self._state + sums

    def compute(self) -> Dict[str, float]:
        """The metrics over every sample seen so far."""
        if self._state is None:
            raise ValueError(f'{type(self).__name__}.compute() called before any update(): no samples to score.')
        return {k: float(v) for k, v in self._finalize(self._state).items()}

    def reset(self) -> None:
        self._state = None

    def sync(self) -> None:
        """Sum the state over all processes of the default group (no-op outside torch.distributed).

        Every process must have called :meth:`update` at least once.
        """
        if self._state is not None and dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._state)

    @abstractmethod
    def _batch_sums(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The sums one batch adds to the state (float64 vector)."""

    @abstractmethod
    def _finalize(self, state: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Metrics from the accumulated sums."""


class Task(ABC):
    """One downstream learning task: how to score logits against targets."""

    name: str
    primary_metric: str
    higher_is_better: bool
    """Direction of :attr:`primary_metric` (for model selection on a validation set)."""
    target_ndim: int = 2
    expected_shape: str = 'of shape (N, {C})'
    expected_dtype: str = ''
    """The dtype rule of :meth:`check_format`, in words (empty: any real dtype)."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar training loss, averaged over the batch."""

    @abstractmethod
    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Predictions from logits (class indices, multi-hot labels or distributions)."""

    @abstractmethod
    def metrics(self) -> Metrics:
        """A fresh metric accumulator."""

    @abstractmethod
    def check_target(self, target: torch.Tensor, num_outputs: int) -> None:
        """Raise ValueError, naming expected and actual shape/dtype/values, if ``target`` does not fit."""

    def check_format(self, target: torch.Tensor, num_outputs: int, batch_size: Optional[int] = None) -> None:
        """The shape and dtype part of :meth:`check_target`, without looking at the values (no device sync):
        cheap enough for every training step and every metric update, where a wrong shape would broadcast
        silently. ``batch_size``: the number of outputs the targets must match, when known."""
        expected = self.expected_shape.format(C=num_outputs)
        if target.ndim != self.target_ndim or (self.target_ndim == 2 and target.shape[1] != num_outputs):
            self._fail(target, expected, f'shape {tuple(target.shape)} for a model with {num_outputs} outputs')
        if batch_size is not None and len(target) != batch_size:
            self._fail(target, expected, f'{len(target)} targets for {batch_size} outputs')
        if target.is_complex() or not self._dtype_fits(target.dtype):
            self._fail(target, f'{expected} {self.expected_dtype}', f'dtype {target.dtype}')

    def _dtype_fits(self, dtype: torch.dtype) -> bool:
        return True

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'

    def _fail(self, target: torch.Tensor, expected: str, problem: str) -> None:
        raise ValueError(f'{self.name} task: targets must be {expected}; got {problem} '
                         f'(shape {tuple(target.shape)}, dtype {target.dtype}).')


# --- single-label --------------------------------------------------------------------------------------

class _SLLMetrics(Metrics):
    def _batch_sums(self, logits, target):
        correct = (logits.argmax(1) == target).sum().double()
        return torch.stack([correct, logits.new_tensor(float(len(target)))])

    def _finalize(self, state):
        return {'accuracy': state[0] / state[1]}


class SLL(Task):
    """Single-label classification: targets are class indices (N,) of an integer dtype."""

    name = 'sll'
    primary_metric = 'accuracy'
    higher_is_better = True
    target_ndim = 1
    expected_shape = 'class indices of shape (N,)'
    expected_dtype = 'with an integer dtype'

    def loss(self, logits, target):
        return F.cross_entropy(logits, target)

    def predict(self, logits):
        return logits.argmax(1)

    def metrics(self):
        return _SLLMetrics(self)

    def _dtype_fits(self, dtype):
        return not dtype.is_floating_point and dtype != torch.bool

    def check_target(self, target, num_outputs):
        expected = f'class indices of shape (N,) with an integer dtype, in [0, {num_outputs})'
        self.check_format(target, num_outputs)
        if target.numel() and (target.min() < 0 or target.max() >= num_outputs):
            self._fail(target, expected, f'values in [{int(target.min())}, {int(target.max())}]')


# --- multi-label ---------------------------------------------------------------------------------------

class _MLLMetrics(Metrics):
    """State: [mismatches, samples, ranking-loss sum, tp(C), fp(C), fn(C)]."""

    def _batch_sums(self, logits, target):
        truth = target.bool()
        pred = torch.sigmoid(logits) > 0.5
        tp = (pred & truth).sum(0)
        fp = (pred & ~truth).sum(0)
        fn = (~pred & truth).sum(0)
        # sklearn label_ranking_loss: pairs (positive i, negative j) with score_i <= score_j (ties count),
        # over |positives| * |negatives|; samples with no positive or no negative label score 0.
        wrong = (logits.unsqueeze(2) <= logits.unsqueeze(1)) & truth.unsqueeze(2) & ~truth.unsqueeze(1)
        n_pos = truth.sum(1).double()
        pairs = n_pos * (truth.shape[1] - n_pos)
        ranking = torch.where(pairs > 0, wrong.sum((1, 2)).double() / pairs.clamp_min(1), 0.0)
        head = torch.stack([(pred != truth).sum().double(), logits.new_tensor(float(truth.shape[0])), ranking.sum()])
        return torch.cat([head, tp.double(), fp.double(), fn.double()])

    def _finalize(self, state):
        mismatches, n, ranking = state[:3]
        tp, fp, fn = state[3:].view(3, -1)

        def f1(tp, fp, fn):  # sklearn with zero_division=0 (its default): 0 where 2tp + fp + fn == 0
            denom = 2 * tp + fp + fn
            return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), 0.0)

        return {
            'hamming_loss': mismatches / (n * tp.numel()),
            'ranking_loss': ranking / n,
            'micro_f1': f1(tp.sum(), fp.sum(), fn.sum()),
            'macro_f1': f1(tp, fp, fn).mean(),
        }


class MLL(Task):
    """Multi-label classification: targets are multi-hot (N, C) of 0/1 values (bool, integer or float).

    Metrics follow scikit-learn: ``hamming_loss``; ``ranking_loss`` = ``label_ranking_loss`` on the raw
    logits (ties between a positive and a negative count as wrongly ordered; a sample with no positive or
    no negative label scores 0); ``micro_f1`` / ``macro_f1`` = ``f1_score(average=...)`` with
    ``zero_division=0`` (sklearn's default value): an F1 whose denominator ``2tp + fp + fn`` is zero is 0,
    and such labels still count in the macro average.
    """

    name = 'mll'
    primary_metric = 'hamming_loss'
    higher_is_better = False
    expected_shape = 'multi-hot labels of shape (N, {C})'

    def loss(self, logits, target):
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))

    def predict(self, logits):
        """Multi-hot int64 predictions: 1 where ``sigmoid(logits) > 0.5``."""
        return (torch.sigmoid(logits) > 0.5).long()

    def metrics(self):
        return _MLLMetrics(self)

    def check_target(self, target, num_outputs):
        expected = f'multi-hot labels of shape (N, {num_outputs}) with values 0/1'
        self.check_format(target, num_outputs)
        if not ((target == 0) | (target == 1)).all():
            self._fail(target, expected, 'values other than 0 and 1')


# --- label distribution --------------------------------------------------------------------------------

_LDL_NAMES = ('chebyshev', 'clark', 'canberra', 'kl', 'cosine', 'intersection')


class _LDLMetrics(Metrics):
    """State: [samples, per-metric sums in _LDL_NAMES order]."""

    def _batch_sums(self, logits, target):
        p, q = target.double(), torch.softmax(logits, 1)
        diff, total = p - q, p + q
        # |p-q|/(p+q) with the true denominator wherever it is positive; 0 for a class where both are 0
        ratio = torch.where(total > 0, diff.abs() / total.where(total > 0, 1.0), 0.0)
        per_sample = torch.stack([
            diff.abs().amax(1),
            ratio.square().sum(1).sqrt(),
            ratio.sum(1),
            (torch.xlogy(p, p) - p * torch.log_softmax(logits, 1)).sum(1),  # exact: no epsilon in the logs
            (p * q).sum(1) / (p.norm(dim=1) * q.norm(dim=1)),
            torch.minimum(p, q).sum(1),
        ])
        return torch.cat([p.new_tensor([float(p.shape[0])]), per_sample.sum(1)])

    def _finalize(self, state):
        return dict(zip(_LDL_NAMES, state[1:] / state[0]))


class LDL(Task):
    """Label distribution learning: targets are distributions (N, C), non-negative, rows summing to 1.

    The model's output is ``softmax(logits)``. Loss: ``KL(truth || softmax(logits))`` averaged over the
    batch (terms with truth 0 contribute 0). Metrics, averaged over samples, with ``p`` the truth and ``q``
    the prediction: Chebyshev ``max|p-q|``, Clark ``sqrt(sum((p-q)^2/(p+q)^2))``, Canberra
    ``sum(|p-q|/(p+q))`` (a class where ``p`` and ``q`` are both 0 adds 0; any other uses its true ``p+q``,
    however small), KL ``sum(p*(log p - log_softmax(logits)))`` from the log-probabilities, with ``0 log 0 = 0``
    (no epsilon, so no term is capped), Cosine ``p.q/(|p||q|)`` and Intersection ``sum(min(p,q))``.
    Lower is better for the first four, higher for the last two.
    """

    name = 'ldl'
    primary_metric = 'kl'
    higher_is_better = False
    expected_shape = 'distributions of shape (N, {C})'
    expected_dtype = 'with a float dtype'

    def loss(self, logits, target):
        return F.kl_div(F.log_softmax(logits, 1), target.to(logits.dtype), reduction='batchmean')

    def predict(self, logits):
        return torch.softmax(logits, 1)

    def metrics(self):
        return _LDLMetrics(self)

    def _dtype_fits(self, dtype):
        return dtype.is_floating_point

    def check_target(self, target, num_outputs):
        expected = f'distributions of shape (N, {num_outputs}), float, non-negative, rows summing to 1'
        self.check_format(target, num_outputs)
        if (target < 0).any():
            self._fail(target, expected, 'negative values')
        sums = target.double().sum(1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            self._fail(target, expected, f'row sums in [{float(sums.min()):.4g}, {float(sums.max()):.4g}] '
                                         '(normalise vote counts with target / target.sum(1, keepdim=True))')


DOWNSTREAM_TASKS = {task.name: task for task in (SLL(), MLL(), LDL())}


def get_task(name: Union[str, Task]) -> Task:
    """The task called ``name`` (``'sll'``, ``'mll'`` or ``'ldl'``, any case); a Task is returned as is."""
    if isinstance(name, Task):
        return name
    try:
        return DOWNSTREAM_TASKS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f'Unknown task {name!r}; choose one of {", ".join(DOWNSTREAM_TASKS)}.') from None
