"""sentizoo.amalgamation: the paper's loss and its options, frozen teachers, loading the teachers from the zoo, the
target's initialisation and the amalgamator_senti_* entries of the timm registry."""
import time

import pytest
import timm
import torch
import torch.nn.functional as F

from sentizoo.amalgamation import Amalgamator, init_target_from, load_teachers
from sentizoo.stages import stage_features
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


def test_loss_is_the_papers_bit_for_bit_and_gradients_reach_every_model(batch):
    """Teachers of the target's architecture (the paper's setting): no adapter, and the loss, every term and every
    gradient are the paper's formula on the raw taps, bit for bit (the ops and order of the code before adapters)."""
    x, y = batch
    # one model after the other, like the hand computation (side by side: float rounding aside, test_branches)
    model = Amalgamator(_resnet(0), _teachers(), side_by_side=False)
    assert model.term_names == ['task/target', 'task/st', 'task/ho', 'task/hp', 'feat/st', 'feat/ho', 'feat/hp',
                                'logits/hp']
    assert all(t.num_classes == NUM_CLASSES for t in model.teachers.values())  # fresh heads of the target's size
    assert len(model.adapters) == 0 and not any('adapters' in k for k in model.state_dict())
    out = model.train()(x, y)
    out.loss.backward()
    ours = _grads(model)

    (b1, b2, b3), lb = _hand_forward(model.target, x)
    (st1, _, _), lst = _hand_forward(model.teachers['st'], x)
    (_, ho2, _), lho = _hand_forward(model.teachers['ho'], x)
    (_, _, hp3), lhp = _hand_forward(model.teachers['hp'], x)
    loss = model.task.loss
    terms = {'task/target': loss(lb, y), 'task/st': loss(lst, y), 'task/ho': loss(lho, y), 'task/hp': loss(lhp, y),
             'feat/st': F.mse_loss(b1, st1), 'feat/ho': F.mse_loss(b2, ho2), 'feat/hp': F.mse_loss(b3, hp3),
             'logits/hp': F.mse_loss(lb, lhp)}
    hand = sum(1.0 * value for value in terms.values())
    hand.backward()
    theirs = _grads(model)

    assert list(out.terms) == model.term_names
    assert all(torch.equal(out.terms[name], value) for name, value in terms.items())
    assert torch.equal(out.loss, hand) and torch.equal(out.logits, lb)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)
    # the terms are the paper's, written out: cross-entropy and element-mean squared errors
    paper = (_ce(lb, y) + _ce(lst, y) + _ce(lho, y) + _ce(lhp, y)
             + _mse(b1, st1) + _mse(b2, ho2) + _mse(b3, hp3) + _mse(lb, lhp))
    torch.testing.assert_close(out.loss, paper)
    torch.testing.assert_close(out.terms['feat/ho'], _mse(b2, ho2))
    assert all(v.requires_grad for v in out.terms.values())
    for tag in ('st', 'ho', 'hp'):  # nothing detached, nothing frozen: every teacher learns
        assert ours[f'teachers.{tag}.conv1.weight'].abs().sum() > 0
        assert ours[f'teachers.{tag}.fc.weight'].abs().sum() > 0


@pytest.mark.usefixtures('one_thread')
def test_adapters_bridge_channels_and_map_sizes(batch):
    """A ViT target (64 channels, 2x2 maps at 32 px) taught by resnet18s (128/256/512 channels on 4x4/2x2/1x1):
    each target tap goes through 1x1 conv + BatchNorm to the teacher's channels, then a bilinear resize to its
    map; the adapters train with the target and are not part of it."""
    x, y = batch
    torch.manual_seed(0)
    target = timm.create_model('test_vit', num_classes=NUM_CLASSES, img_size=32)
    model = Amalgamator(target, _teachers(), side_by_side=False).train()
    shapes = {tag: (type(a[0]).__name__, tuple(a[0].weight.shape), type(a[1]).__name__)
              for tag, a in model.adapters.items()}
    assert shapes == {tag: ('Conv2d', (channels, 64, 1, 1), 'BatchNorm2d')
                      for tag, channels in (('st', 128), ('ho', 256), ('hp', 512))}
    assert all(a[0].bias is None for a in model.adapters.values())
    out = model(x, y)
    taps, _ = stage_features(model.target, x)
    for stage, tag in enumerate(('st', 'ho', 'hp'), 1):
        theirs = stage_features(model.teachers[tag], x, (stage,), with_logits=False)[0][0]
        ours = model.adapters[tag](taps[stage - 1])
        assert ours.shape[-2:] == (2, 2) and theirs.shape[-2:] == {1: (4, 4), 2: (2, 2), 3: (1, 1)}[stage]
        expected = F.mse_loss(F.interpolate(ours, size=theirs.shape[-2:], mode='bilinear', align_corners=False),
                              theirs)
        torch.testing.assert_close(out.terms[f'feat/{tag}'], expected)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapters.parameters())
    assert model.target.patch_embed.proj.weight.grad.abs().sum() > 0
    assert not any('adapters' in k for k in model.target.state_dict())
    assert any(k.startswith('adapters.st.1.running_mean') for k in model.state_dict())  # checkpoints keep them
    assert torch.equal(model.eval()(x), model.target(x))  # inference: the target alone


def test_adapters_only_where_a_stage_differs():
    """resnet18 target: an ST of resnet50 (512 channels at stage 1, not 128) gets an adapter, HO and HP of resnet18
    do not; an HP with the target's 512 channels at stage 3 but another reduction (VGG: 16, not 32) gets one too."""
    model = Amalgamator(_resnet(0), {**_teachers(tags=('ho', 'hp')), 'st': _resnet(1, 0, 'resnet50')})
    assert list(model.adapters) == ['st'] and model.adapters['st'][0].weight.shape == (512, 128, 1, 1)
    vgg = timm.create_model('vgg11', num_classes=0, mlp_ratio=1 / 64)  # stage taps: 256/512/512 at 4/8/16
    model = Amalgamator(_resnet(0), {'st': _resnet(1), 'ho': _resnet(2), 'hp': vgg}, side_by_side=False)
    assert list(model.adapters) == ['hp'] and model.adapters['hp'][0].weight.shape == (512, 512, 1, 1)


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
    with pytest.raises(ValueError, match="No sentiment-pretrained weights exist for 'test_convnext'.* e.g. "
                                         "teachers='resnet50'"):
        Amalgamator(timm.create_model('test_convnext', num_classes=3))


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
