import threading
from contextlib import contextmanager

import pytest
import timm
import torch

from sentizoo.amalgamation import Amalgamator
from sentizoo.branches import run_branches, side_by_side_default


@contextmanager
def torch_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def two_threads():
    with torch_threads(2):
        yield


def _amalgamator(side_by_side, tags=('st', 'ho', 'hp'), vit_target=False, **kwargs):
    torch.manual_seed(0)
    num_classes = 3 if kwargs.get('freeze_teachers') else 0  # frozen teachers come with trained heads
    teachers = {tag: timm.create_model('resnet18', num_classes=num_classes) for tag in tags}
    target = (timm.create_model('test_vit', num_classes=3, img_size=32) if vit_target
              else timm.create_model('resnet18', num_classes=3))
    return Amalgamator(target, teachers, side_by_side=side_by_side, **kwargs).train()


@pytest.mark.parametrize('kwargs', [{}, dict(freeze_teachers=True),
                                    dict(teacher_task_loss=False, feature_stages=(1, 3), tags=('st', 'hp')),
                                    dict(vit_target=True)])
def test_side_by_side_gives_the_same_loss_and_gradients(kwargs):
    """Side by side (each model on one thread) equals one model after the other on one thread, bit for bit; with
    a ViT target the adapters run in the target's branch."""
    x, y = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 2])
    results = []
    for side_by_side, threads in ((False, 1), (True, 2)):
        with torch_threads(threads):
            model = _amalgamator(side_by_side, **kwargs)
            out = model(x, y)
            out.loss.backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (seq, seq_grads), (par, par_grads) = results
    torch.testing.assert_close(par.loss, seq.loss, rtol=0, atol=0)
    torch.testing.assert_close(par.terms, seq.terms, rtol=0, atol=0)
    assert [n for n, g in par_grads.items() if g is None] == [n for n, g in seq_grads.items() if g is None]
    assert sum(g is not None for g in par_grads.values()) > 60  # the target and the trainable teachers
    assert sum(n.startswith('adapters.') and g is not None for n, g in par_grads.items()) == (
        9 if kwargs.get('vit_target') else 0)  # conv weight, BatchNorm weight and bias per stage
    for name, grad in seq_grads.items():
        if grad is not None:
            torch.testing.assert_close(par_grads[name], grad, rtol=0, atol=0, msg=name)


def _recording_branch(scale, log):
    """A branch y = scale * w * x that logs the thread and torch threads of its forward and backward."""
    w = torch.full((3,), float(scale), requires_grad=True)

    def record(kind):
        log.append((kind, scale, threading.get_ident(), torch.get_num_threads()))
    w.register_hook(lambda grad: record('backward'))  # runs on the thread that computes w's gradient

    def branch():
        record('forward')
        return [w * torch.arange(3.0), None]
    return w, branch


def test_branches_run_in_single_threaded_workers_forward_and_backward(two_threads):
    log = []
    (w1, b1), (w2, b2) = _recording_branch(1, log), _recording_branch(2, log)
    (y1, none), (y2, _) = run_branches([b1, b2], side_by_side=True)
    assert none is None
    (y1.sum() + 10 * y2.sum()).backward()
    torch.testing.assert_close(w1.grad, torch.arange(3.0))  # d/dw of sum(w * x) = x
    torch.testing.assert_close(w2.grad, 10 * torch.arange(3.0))
    main = threading.get_ident()
    assert sorted(kind for kind, *_ in log) == ['backward', 'backward', 'forward', 'forward']
    assert all(thread != main and threads == 1 for _, _, thread, threads in log)
    assert torch.get_num_threads() == 2  # the caller's setting is back


def test_sequential_branches_run_here_and_grad_mode_is_the_callers(two_threads):
    log = []
    (_, b1), (_, b2) = _recording_branch(1, log), _recording_branch(2, log)
    outs = run_branches([b1, b2], side_by_side=False)
    assert {thread for _, _, thread, _ in log} == {threading.get_ident()}
    assert all(out[0].requires_grad for out in outs)
    with torch.no_grad():
        outs = run_branches([b1, b2], side_by_side=True)
    assert not any(out[0].requires_grad for out in outs)


def test_an_error_in_a_branch_reaches_the_caller(two_threads):
    def broken():
        raise RuntimeError('branch 2 failed')
    with pytest.raises(RuntimeError, match='branch 2 failed'):
        run_branches([lambda: [torch.zeros(1)], broken], side_by_side=True)


def test_side_by_side_default():
    with torch_threads(2):
        assert side_by_side_default(torch.device('cpu'))
        assert not side_by_side_default(torch.device('cuda'))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert not side_by_side_default(torch.device('cpu'))
    with torch_threads(1):
        assert not side_by_side_default(torch.device('cpu'))
