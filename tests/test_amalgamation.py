"""sentizoo.amalgamation: the paper's loss and its options, frozen teachers, loading the teachers from the zoo, the
target's initialisation and the amalgamator_senti_* entries of the timm registry."""
import time

import pytest
import timm
import torch
import torch.nn.functional as F

from sentizoo.amalgamation import Amalgamator, init_target_from, load_teachers
from sentizoo.tasks import get_task
from sentizoo.saving import save_pretrained
from sentizoo.weights import WeightsNotFoundError, zoo_home

NUM_CLASSES = 3
FULL_TERMS = {'task/target', 'task/st', 'task/ho', 'task/hp', 'feat/st', 'feat/ho', 'feat/hp', 'logits/hp'}


def _resnet(seed, num_classes=NUM_CLASSES, arch='resnet18'):
    torch.manual_seed(seed)
    return timm.create_model(arch, num_classes=num_classes)


def _teachers(num_classes=0, tags=('st', 'ho', 'hp')):
    """Random stand-ins for the zoo backbones (num_classes=0 like the published .st/.ho/.hp)."""
    return {tag: _resnet(i + 1, num_classes) for i, tag in enumerate(tags)}


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=g), torch.tensor([0, 2])


def _hand_forward(m, x):
    """A timm ResNet written out layer by layer: (layer2, layer3, layer4 outputs), logits."""
    x = m.layer1(m.maxpool(m.act1(m.bn1(m.conv1(x)))))
    f1 = m.layer2(x)
    f2 = m.layer3(f1)
    f3 = m.layer4(f2)
    return (f1, f2, f3), m.fc(m.global_pool(f3))


def _ce(logits, y):
    return -logits.log_softmax(1)[torch.arange(len(y)), y].mean()


def _mse(a, b):
    return ((a - b) ** 2).sum() / a.numel()


def _grads(model):
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return grads


def test_loss_is_the_papers_and_gradients_reach_every_model(batch):
    x, y = batch
    # one model after the other, like the hand computation (side by side: float rounding aside, test_branches)
    model = Amalgamator(_resnet(0), _teachers(), side_by_side=False)
    assert model.term_names == ['task/target', 'task/st', 'task/ho', 'task/hp', 'feat/st', 'feat/ho', 'feat/hp',
                                'logits/hp']
    assert all(t.num_classes == NUM_CLASSES for t in model.teachers.values())  # fresh heads of the target's size
    out = model.train()(x, y)
    out.loss.backward()
    ours = _grads(model)

    (b1, b2, b3), lb = _hand_forward(model.target, x)
    (st1, _, _), lst = _hand_forward(model.teachers['st'], x)
    (_, ho2, _), lho = _hand_forward(model.teachers['ho'], x)
    (_, _, hp3), lhp = _hand_forward(model.teachers['hp'], x)
    hand = (_ce(lb, y) + _ce(lst, y) + _ce(lho, y) + _ce(lhp, y)
            + _mse(b1, st1) + _mse(b2, ho2) + _mse(b3, hp3) + _mse(lb, lhp))
    hand.backward()
    theirs = _grads(model)

    assert list(out.terms) == model.term_names
    torch.testing.assert_close(out.loss, hand)
    torch.testing.assert_close(out.loss, sum(out.terms.values()))
    torch.testing.assert_close(out.terms['feat/ho'], _mse(b2, ho2))
    torch.testing.assert_close(out.logits, lb)
    assert all(v.requires_grad for v in out.terms.values())
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-6)
    for tag in ('st', 'ho', 'hp'):  # nothing detached, nothing frozen: every teacher learns
        assert ours[f'teachers.{tag}.conv1.weight'].abs().sum() > 0
        assert ours[f'teachers.{tag}.fc.weight'].abs().sum() > 0


@pytest.fixture(scope='module')
def reference():
    """Target, teachers (heads already reset) and the full configuration's terms, computed once."""
    x, y = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2])
    target, teachers = _resnet(0), _teachers()
    full = Amalgamator(target, teachers).train()(x, y).terms
    return x, y, target, teachers, {k: v.detach() for k, v in full.items()}


@pytest.mark.parametrize('tags,kwargs,removed,added', [
    (('ho', 'hp'), dict(feature_stages=(2, 3)), {'feat/st', 'task/st'}, set()),
    (('st',), dict(feature_stages=(1,), logits_teachers=()),
     {'task/ho', 'task/hp', 'feat/ho', 'feat/hp', 'logits/hp'}, set()),
    (('st', 'ho', 'hp'), dict(logits_teachers=('st', 'ho', 'hp')), set(), {'logits/st', 'logits/ho'}),
    (('st', 'ho', 'hp'), dict(feature_stages=(), logits_teachers=('st', 'ho', 'hp')),
     {'feat/st', 'feat/ho', 'feat/hp'}, {'logits/st', 'logits/ho'}),
    (('st', 'ho', 'hp'), dict(teacher_task_loss=False), {'task/st', 'task/ho', 'task/hp'}, set()),
    ((), dict(feature_stages=(), logits_teachers=()), FULL_TERMS - {'task/target'}, set()),
    (('st', 'ho', 'hp'), dict(loss_weights={'feat/ho': 0.0, 'logits/hp': 2.0}), set(), set()),
])
def test_each_option_changes_exactly_its_terms(reference, tags, kwargs, removed, added):
    x, y, target, teachers, full = reference
    model = Amalgamator(target, {t: teachers[t] for t in tags}, **kwargs).train()
    out = model(x, y)
    assert set(out.terms) == (FULL_TERMS - removed) | added
    for name in FULL_TERMS - removed:  # the terms that stay are unchanged
        torch.testing.assert_close(out.terms[name], full[name])
    for name in added:
        torch.testing.assert_close(out.terms[name], _mse(target(x), teachers[name[len('logits/'):]](x)))
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert model.has_unused_parameters == bool(unused)  # e.g. ST's layer3, layer4 and head without its task loss
    weights = kwargs.get('loss_weights', {})
    torch.testing.assert_close(out.loss, sum(weights.get(k, 1.0) * v for k, v in out.terms.items()))
    if not tags:  # no teacher: plain fine-tuning
        torch.testing.assert_close(out.loss, F.cross_entropy(target(x), y))


def test_frozen_teachers_stay_unchanged_and_stop_early(batch):
    x, y = batch
    teachers = _teachers()
    teachers['hp'].reset_classifier(NUM_CLASSES)  # a trained head of the right size may give logits when frozen
    model = Amalgamator(_resnet(0), teachers, freeze_teachers=True).train()
    assert all(not t.training for t in model.teachers.values()) and model.target.training
    assert not any(p.requires_grad for p in model.teachers.parameters())
    before = {k: v.clone() for k, v in model.teachers.state_dict().items()}
    target_before = model.target.conv1.weight.clone()
    calls = []
    hook = model.teachers['st'].layer3.register_forward_hook(lambda *a: calls.append(1))
    out = model(x, y)
    hook.remove()
    assert not calls  # ST gives stage 1 only: its forward stops after layer2
    assert set(out.terms) == FULL_TERMS - {'task/st', 'task/ho', 'task/hp'}
    with torch.no_grad():
        (st1, _, _), _ = _hand_forward(model.teachers['st'], x)
        b1 = _hand_forward(model.target, x)[0][0]
    torch.testing.assert_close(out.terms['feat/st'], _mse(b1, st1))  # eval-mode teacher features
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    out.loss.backward()
    opt.step()
    after = model.teachers.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert not torch.equal(model.target.conv1.weight, target_before)


def test_frozen_teacher_with_a_fresh_head_cannot_give_logits():
    with pytest.raises(ValueError, match=r"\['hp'\] got a fresh, untrained head.*logits_teachers=\(\)"):
        Amalgamator(_resnet(0), _teachers(), freeze_teachers=True)
    Amalgamator(_resnet(0), _teachers(), freeze_teachers=True, logits_teachers=())


def test_eval_runs_the_target_only(batch):
    x, y = batch
    model = Amalgamator(_resnet(0), _teachers()).eval()
    calls = []
    for t in model.teachers.values():
        t.register_forward_hook(lambda *a: calls.append(1))
    assert torch.equal(model(x), model.target(x)) and not calls
    with pytest.raises(ValueError, match=r'needs targets: forward\(images, targets\)'):
        model.train()(x)


@pytest.mark.parametrize('task,labels', [
    ('mll', torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])),
    ('ldl', torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])),
])
def test_other_tasks_use_their_loss(batch, task, labels):
    x, _ = batch
    model = Amalgamator(_resnet(0), _teachers(), task).train()
    out = model(x, labels)
    assert set(out.terms) == FULL_TERMS and torch.isfinite(out.loss)
    torch.testing.assert_close(out.terms['task/target'], get_task(task).loss(out.logits, labels))
    # logits regularisation compares raw logits (for LDL too, not the softmax outputs)
    torch.testing.assert_close(out.terms['logits/hp'], _mse(out.logits, model.teachers['hp'](x)))


def test_construction_errors():
    with pytest.raises(ValueError, match=r"teacher 'st' \(ResNet\) has 512 channels at stage 1, the target "
                                         r"\(ResNet\) 128"):
        Amalgamator(_resnet(0), {**_teachers(tags=('ho', 'hp')), 'st': _resnet(1, 0, 'resnet50')})
    with pytest.raises(ValueError, match=r"need \['ho', 'hp', 'st'\]: missing \['ho'\]"):
        Amalgamator(_resnet(0), _teachers(tags=('st', 'hp')))
    with pytest.raises(ValueError, match=r"\['st'\] used by no term"):
        Amalgamator(_resnet(0), _teachers(), feature_stages=(2, 3))
    with pytest.raises(ValueError, match=r"unknown tags \['xx'\]"):
        Amalgamator(_resnet(0), {**_teachers(), 'xx': _resnet(5)})
    with pytest.raises(ValueError, match='target has no classifier'):
        Amalgamator(_resnet(0, 0), _teachers())
    with pytest.raises(ValueError, match=r"loss_weights has terms \['feat/st'\].*its terms are"):
        Amalgamator(_resnet(0), _teachers(tags=('ho', 'hp')), feature_stages=(2, 3), loss_weights={'feat/st': 2})
    with pytest.raises(ValueError, match='feature_stages must be a subset'):
        Amalgamator(_resnet(0), _teachers(), feature_stages=(0, 1))


def test_teachers_load_from_the_zoo(isolated_zoo):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError):
        Amalgamator(_resnet(0))  # empty zoo, hub offline: fails fast
    assert time.perf_counter() - start < 5
    saved = _teachers()
    for tag, teacher in saved.items():
        save_pretrained(teacher, zoo_home() / f'senti_resnet18.{tag}', verbose=False)
    loaded = load_teachers('resnet18', NUM_CLASSES)
    assert list(loaded) == ['st', 'ho', 'hp']
    for tag, teacher in loaded.items():
        assert teacher.num_classes == NUM_CLASSES
        assert torch.equal(teacher.layer4[1].conv2.weight, saved[tag].layer4[1].conv2.weight)
    model = Amalgamator(_resnet(0), feature_stages=(3,), logits_teachers=())  # loads only what its terms need
    assert list(model.teachers) == ['hp']
    assert torch.equal(model.teachers['hp'].conv1.weight, saved['hp'].conv1.weight)


def test_init_target_from_copies_the_backbone_and_keeps_the_head():
    target, source = _resnet(0), _resnet(1, num_classes=0)
    fc = target.fc.weight.clone()
    assert init_target_from(target, source) is target
    assert torch.equal(target.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(target.bn1.running_var, source.bn1.running_var)
    assert torch.equal(target.fc.weight, fc)
    with pytest.raises(ValueError, match='does not match the target backbone'):
        init_target_from(target, _resnet(1, 0, 'resnet50'))


def test_amalgamator_in_the_timm_registry(isolated_zoo):
    """amalgamator_senti_<arch>: teachers by tag, target from HP, every option a keyword, a cfg that says what
    it is; 'senti_*' still lists only the backbones."""
    from sentizoo.models import ARCHS
    assert sorted(timm.list_models('amalgamator_*')) == sorted(f'amalgamator_senti_{a}' for a in ARCHS)
    assert sorted(timm.list_models('senti_*')) == sorted(f'senti_{a}' for a in ARCHS)
    torch.manual_seed(0)
    for tag in ('ho', 'hp'):
        save_pretrained(timm.create_model(f'senti_resnet18.{tag}'), isolated_zoo / f'senti_resnet18.{tag}',
                        verbose=False)
    module = timm.create_model('amalgamator_senti_resnet18', pretrained=True, num_classes=5, task='ldl',
                               feature_stages=(2, 3), loss_weights={'feat/ho': 0.5}, side_by_side=False)
    hp = timm.create_model('senti_resnet18.hp', pretrained=True)
    assert torch.equal(module.target.layer3[0].conv1.weight, hp.layer3[0].conv1.weight)
    ho = timm.create_model('senti_resnet18.ho', pretrained=True)
    assert torch.equal(module.teachers['ho'].layer1[0].conv1.weight, ho.layer1[0].conv1.weight)
    assert sorted(module.teachers) == ['ho', 'hp'] and module.task.name == 'ldl' and module.target.num_classes == 5
    assert module.loss_weights['feat/ho'] == 0.5 and module.side_by_side is False
    cfg = module.pretrained_cfg
    assert cfg['architecture'] == 'amalgamator_senti_resnet18' and cfg['license'] == 'cc-by-nc-4.0'
    assert 'senti_resnet18.hp' in cfg['description'] and cfg['classifier'] == 'target.fc'
