import math

import pytest
import torch

from sentizoo.tasks import LDL, MLL, SLL, get_task


def _accumulate(task_name, logits, target, sizes):
    """Metrics fed in batches of the given sizes (which must cover all samples)."""
    assert sum(sizes) == len(logits)
    acc = get_task(task_name).metrics()
    for chunk_logits, chunk_target in zip(logits.split(sizes), target.split(sizes)):
        acc.update(chunk_logits, chunk_target)
    return acc.compute()


def _assert_same(a, b, tol=1e-12):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=tol, rel=tol), k


def test_get_task():
    assert isinstance(get_task('SLL'), SLL) and isinstance(get_task('mll'), MLL) and isinstance(get_task('ldl'), LDL)
    assert get_task(get_task('ldl')) is get_task('ldl')
    with pytest.raises(ValueError, match='sll, mll, ldl'):
        get_task('regression')
    assert (get_task('sll').primary_metric, get_task('sll').higher_is_better) == ('accuracy', True)
    assert (get_task('mll').primary_metric, get_task('mll').higher_is_better) == ('hamming_loss', False)
    assert (get_task('ldl').primary_metric, get_task('ldl').higher_is_better) == ('kl', False)


# --- SLL -----------------------------------------------------------------------------------------------

def test_sll_loss_predict_accuracy():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [0.5, 0.2, 0.1]])
    target = torch.tensor([0, 2, 2, 1])
    task = get_task('sll')
    hand = -sum(torch.log_softmax(logits[i], 0)[target[i]] for i in range(4)) / 4
    assert task.loss(logits, target).item() == pytest.approx(hand.item(), rel=1e-6)
    assert task.predict(logits).tolist() == [0, 1, 2, 0]
    for sizes in ([4], [1, 1, 1, 1], [3, 1]):
        assert _accumulate('sll', logits, target, sizes) == {'accuracy': 0.5}


def test_sll_check_target():
    task = get_task('sll')
    task.check_target(torch.tensor([0, 7]), 8)
    with pytest.raises(ValueError, match=r'shape \(N,\).*got .*shape \(2, 8\)'):
        task.check_target(torch.zeros(2, 8, dtype=torch.long), 8)
    with pytest.raises(ValueError, match='torch.float32'):
        task.check_target(torch.tensor([0.0, 1.0]), 8)
    with pytest.raises(ValueError, match=r'in \[0, 8\); got values in \[0, 8\]'):
        task.check_target(torch.tensor([0, 8]), 8)


def test_metrics_compute_before_update_and_reset():
    acc = get_task('sll').metrics()
    with pytest.raises(ValueError, match='before any update'):
        acc.compute()
    acc.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    acc.reset()
    acc.update(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert acc.compute() == {'accuracy': 0.0}


# --- MLL -----------------------------------------------------------------------------------------------

def _mll_data(n=37, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g).round(decimals=1)  # rounding creates ties for the ranking loss
    target = (torch.rand(n, c, generator=g) < 0.35).long()
    target[:, 4] = 0                       # a label never true ...
    logits[:, 4] = -torch.rand(n, generator=g) - 0.1  # ... and never predicted: F1 0/0 -> 0
    target[0] = 0                          # a sample without positives, one with only positives
    target[1] = 1
    return logits, target


def test_mll_metrics_match_sklearn_over_uneven_batches():
    metrics = pytest.importorskip('sklearn.metrics')
    logits, target = _mll_data()
    pred = (torch.sigmoid(logits) > 0.5).long()
    expected = {
        'hamming_loss': metrics.hamming_loss(target.numpy(), pred.numpy()),
        'ranking_loss': metrics.label_ranking_loss(target.numpy(), logits.numpy()),
        'micro_f1': metrics.f1_score(target.numpy(), pred.numpy(), average='micro', zero_division=0),
        'macro_f1': metrics.f1_score(target.numpy(), pred.numpy(), average='macro', zero_division=0),
    }
    assert expected['ranking_loss'] > 0 and 0 < expected['macro_f1'] < expected['micro_f1']
    for sizes in ([37], [1] * 37, [5, 16, 9, 7]):
        _assert_same(_accumulate('mll', logits, target, sizes), expected)
    assert torch.equal(get_task('mll').predict(logits), pred)


def test_mll_f1_with_no_positives_at_all_is_zero():
    pytest.importorskip('sklearn')
    from sklearn.metrics import f1_score
    target = torch.zeros(3, 4, dtype=torch.long)
    logits = -torch.ones(3, 4)
    result = _accumulate('mll', logits, target, [2, 1])
    assert result['micro_f1'] == f1_score(target, target, average='micro', zero_division=0) == 0.0
    assert result['macro_f1'] == 0.0 and result['hamming_loss'] == 0.0 and result['ranking_loss'] == 0.0


def test_mll_loss_is_bce_with_logits():
    logits, target = _mll_data(n=5)
    s = torch.sigmoid(logits)
    hand = -(target * s.log() + (1 - target) * (1 - s).log()).mean()
    assert get_task('mll').loss(logits, target).item() == pytest.approx(hand.item(), rel=1e-5)
    assert get_task('mll').loss(logits, target.bool()).item() == pytest.approx(hand.item(), rel=1e-5)


def test_mll_check_target():
    task = get_task('mll')
    task.check_target(torch.tensor([[0, 1, 1]]).bool(), 3)
    task.check_target(torch.tensor([[0.0, 1.0, 1.0]]), 3)
    with pytest.raises(ValueError, match=r'shape \(N, 26\).*got shape \(4,\) for a model with 26 outputs'):
        task.check_target(torch.tensor([0, 3, 1, 2]), 26)
    with pytest.raises(ValueError, match='values other than 0 and 1'):
        task.check_target(torch.tensor([[0.0, 0.5, 1.0]]), 3)


# --- LDL -----------------------------------------------------------------------------------------------

def test_ldl_metrics_by_hand():
    # p = truth, q = prediction; logits = log q, so softmax(logits) = q.
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    q = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]], dtype=torch.float64)
    # Sample 1: p - q = (0, .25, -.25), p + q = (1, .75, .25). Sample 2: p == q (distances 0, similarities 1).
    chebyshev = (0.25 + 0) / 2
    clark = (math.sqrt(0 + 0.0625 / 0.5625 + 0.0625 / 0.0625) + 0) / 2  # sqrt(10/9) / 2
    canberra = ((0 + 0.25 / 0.75 + 0.25 / 0.25) + 0) / 2                 # (4/3) / 2
    kl = (0.5 * math.log(0.5 / 0.5) + 0.5 * math.log(0.5 / 0.25) + 0) / 2  # the p = 0 term is 0
    cosine = ((0.25 + 0.125) / (math.sqrt(0.5) * math.sqrt(0.375)) + 1) / 2
    intersection = ((0.5 + 0.25 + 0.0) + 1) / 2
    expected = dict(chebyshev=chebyshev, clark=clark, canberra=canberra, kl=kl, cosine=cosine,
                    intersection=intersection)
    assert clark == pytest.approx(math.sqrt(10) / 6) and kl == pytest.approx(math.log(2) / 4)
    for sizes in ([2], [1, 1]):
        _assert_same(_accumulate('ldl', q.log(), p, sizes), expected, tol=1e-9)
    # the loss is the same KL, averaged over the batch
    assert get_task('ldl').loss(q.log(), p).item() == pytest.approx(kl, rel=1e-12)
    assert torch.allclose(get_task('ldl').predict(q.log()), q)


def test_ldl_metrics_guard_zeros_and_batch_invariance():
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 3 + [[0.25] * 4] * 4)
    logits = torch.tensor([[1000.0, 0.0, 0.0, 0.0]] * 3 + [[0.0, 1.0, 2.0, 3.0]] * 4)  # q = one-hot: p + q = 0 at 0s
    whole = _accumulate('ldl', logits, p, [7])
    assert all(math.isfinite(v) for v in whole.values())
    _assert_same(_accumulate('ldl', logits, p, [1] * 7), whole)
    _assert_same(_accumulate('ldl', logits, p, [4, 3]), whole)
    first = _accumulate('ldl', logits[:3], p[:3], [3])
    assert first['chebyshev'] == 0 and first['canberra'] == 0 and first['clark'] == 0
    assert first['kl'] == pytest.approx(0, abs=1e-10) and first['cosine'] == pytest.approx(1)


def test_ldl_metrics_exact_for_tiny_probabilities():
    """p = 0 and 0 < q < 1e-12 is a full |p-q|/(p+q) = 1 in Clark and Canberra; KL has no capped term."""
    q_small = 3.5e-13
    p = torch.tensor([[0.0, 0.5, 0.5]], dtype=torch.float64)
    q = torch.tensor([[q_small, 0.5, 0.5 - q_small]], dtype=torch.float64)
    result = _accumulate('ldl', q.log(), p, [1])
    ratio = q_small / (1 - q_small)  # the third class: |0.5 - (0.5 - q)| / (1 - q)
    assert result['clark'] == pytest.approx(math.sqrt(1 + ratio ** 2), rel=1e-12)  # 0.346 with a 1e-12 floor
    assert result['canberra'] == pytest.approx(1 + ratio, rel=1e-12)
    # KL with a truth far from the prediction: each term p log(p/q) in full (log(q + 1e-12) capped it at ~27.6)
    p = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    logits = torch.tensor([[0.0, 100.0]], dtype=torch.float64)
    assert _accumulate('ldl', logits, p, [1])['kl'] == pytest.approx(100 + math.log1p(math.exp(-100)), rel=1e-12)


def test_ldl_check_target():
    task = get_task('ldl')
    task.check_target(torch.tensor([[0.2, 0.8]]), 2)
    with pytest.raises(ValueError, match='float dtype.*torch.int64'):
        task.check_target(torch.tensor([[0, 1]]), 2)
    with pytest.raises(ValueError, match='negative'):
        task.check_target(torch.tensor([[-0.2, 1.2]]), 2)
    with pytest.raises(ValueError, match=r'row sums in \[3, 7\].*target.sum\(1, keepdim=True\)'):
        task.check_target(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 2)
    with pytest.raises(ValueError, match=r'\(N, 7\).*got shape \(1, 2\)'):
        task.check_target(torch.tensor([[0.2, 0.8]]), 7)


@pytest.mark.parametrize('task', ['sll', 'mll', 'ldl'])
def test_sync_sums_the_state_over_processes(monkeypatch, task):
    """Two ranks, each with part of the data, end with the metrics of all of it (all_reduce simulated)."""
    import torch.distributed as dist
    logits, target = _mll_data()
    target = {'sll': target.argmax(1), 'mll': target, 'ldl': torch.softmax(target.double() * 3, 1)}[task]
    whole = _accumulate(task, logits, target, [37])
    ranks = [get_task(task).metrics() for _ in range(2)]
    for acc, chunk_logits, chunk_target in zip(ranks, logits.split([30, 7]), target.split([30, 7])):
        acc.update(chunk_logits, chunk_target)
        acc.sync()  # no process group: nothing to do
    states = [acc._state.clone() for acc in ranks]
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    for rank, acc in enumerate(ranks):
        monkeypatch.setattr(dist, 'all_reduce', lambda t: t.add_(states[1 - rank]))
        acc.sync()
        _assert_same(acc.compute(), whole)


@pytest.mark.parametrize('name, good, bad, match', [
    ('sll', torch.tensor([0, 1, 2, 0]), torch.zeros(4, 1, dtype=torch.long), r'sll task: .*shape \(4, 1\)'),
    ('sll', torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2]), r'3 targets for 4 outputs'),
    ('sll', torch.tensor([0, 1, 2, 0]), torch.tensor([0.0, 1.0, 2.0, 0.0]), 'integer dtype.*torch.float32'),
    ('mll', torch.tensor([[0, 1, 1]] * 4), torch.ones(4, 1), r'mll task: .*\(N, 3\).*shape \(4, 1\)'),
    ('ldl', torch.full((4, 3), 1 / 3), torch.ones(4, 1), r'ldl task: .*\(N, 3\).*shape \(4, 1\)'),
    ('ldl', torch.full((4, 3), 1 / 3), torch.ones(4, 3, dtype=torch.long), 'float dtype.*torch.int64'),
])
def test_metrics_update_checks_target(name, good, bad, match):
    """The metrics are public API used on their own: a target that would broadcast is refused, not scored, with
    the message the training loop gives."""
    logits = torch.randn(4, 3)
    scores = get_task(name).metrics()
    scores.update(logits, good)
    with pytest.raises(ValueError, match=match):
        scores.update(logits, bad)
