"""training.perception: the ST / HO / HP models (backbone + two pretext tasks), built, stepped and loaded.

Tiny everywhere: resnet18 at 32-64 px, batch 1-2, small heads."""
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from training.perception import PERCEPTION_TASKS, build_perception_model, load_backbone
from training.pretext.captioning import Vocabulary

CAPTIONS = ['a jagged red star above a dark field', 'a smooth blue circle under a warm sky']
VOCAB = Vocabulary.build(CAPTIONS, min_freq=1)
TINY = {'st': dict(colorization=dict(width=8)),
        'ho': dict(scene=dict(classes=5), jigsaw=dict(permutations=6, tile=16)),
        'hp': dict(anp=dict(classes=['a_b', 'c_d', 'e_f']),
                   captioning=dict(vocab=VOCAB, embed_dim=8, hidden_dim=16, attention_dim=8))}


def _images(n, size):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(size))


def _batches(kind, n=2, size=64):
    x = _images(n, size)
    labels = torch.arange(n) % 3
    return {'st': (x, x), 'ho': ((x, labels), x),
            'hp': ((x, labels), VOCAB.collate(list(zip(x, CAPTIONS * n))[:n]))}[kind]


@pytest.mark.parametrize('kind', ['st', 'ho', 'hp'])
def test_training_step_sums_both_task_losses_with_gradients(kind):
    torch.manual_seed(0)
    model = build_perception_model(kind, 'resnet18', **TINY[kind])
    assert tuple(model.tasks) == PERCEPTION_TASKS[kind]
    loss, terms = model.training_step(*_batches(kind))
    assert tuple(terms) == PERCEPTION_TASKS[kind]
    assert loss.dim() == 0 and torch.isfinite(loss) and all(torch.isfinite(t) and t > 0 for t in terms.values())
    torch.testing.assert_close(loss, sum(terms.values()))
    loss.backward()
    for part in (model.backbone, *model.tasks.values()):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize('kind, size', [('st', 256), ('ho', 64), ('hp', 64)])
def test_batch_size_one(kind, size):
    # ST at 256 px: its super-resolution input (size / 4) must leave layer4 more than one value per channel
    # for train-mode BatchNorm; the other tasks get by with 64 px.
    torch.manual_seed(0)
    model = build_perception_model(kind, 'resnet18', **TINY[kind])
    loss, _ = model(*_batches(kind, n=1, size=size))
    loss.backward()
    assert torch.isfinite(loss)


def test_backbone_is_the_exported_timm_model_and_heads_sit_beside_it():
    model = build_perception_model('hp', 'resnet18', **TINY['hp'])
    reference = timm.create_model('resnet18', num_classes=0).state_dict()
    assert model.backbone.state_dict().keys() == reference.keys()
    keys = model.state_dict().keys()
    assert {k for k in keys if k.startswith('backbone.')} == {f'backbone.{k}' for k in reference}
    assert {k.split('.')[1] for k in keys if not k.startswith('backbone.')} == {'anp', 'captioning'}
    assert model.collate_fns == (None, VOCAB.collate)


def test_vgg_backbone_stages():
    model = build_perception_model('st', 'vgg16_bn', colorization=dict(width=4))
    assert [conv.in_channels for conv in model.tasks['colorization'].head.reduce] == [128, 256, 512, 512]
    assert model.tasks['super_resolution'].head.body[0].in_channels == 512
    x = _images(2, 64)  # super-resolution input 16 px: VGG's stage taps go down to 1/16
    colorization, sr = model.tasks.values()
    assert colorization(model.backbone, colorization.prepare(x)[0]).shape == (2, 2, 64, 64)
    assert sr(model.backbone, sr.prepare(x)[0]).shape == (2, 3, 64, 64)


def test_hp_step_from_a_dataloader_with_the_vocabulary_collate():
    model = build_perception_model('hp', 'resnet18', **TINY['hp'])
    images = _images(2, 64)
    anp = DataLoader(list(zip(images, torch.tensor([0, 2]))), batch_size=2)
    captions = DataLoader(list(zip(images, CAPTIONS)), batch_size=2, collate_fn=model.collate_fns[1])
    loss, terms = model.training_step(next(iter(anp)), next(iter(captions)))
    assert torch.isfinite(loss) and set(terms) == {'anp', 'captioning'}


def test_pretrained_backbone(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model('resnet18', num_classes=1000)  # with its classifier, as ImageNet weights come
    path = tmp_path / 'resnet18.safetensors'
    save_file(source.state_dict(), str(path))
    model = build_perception_model('st', 'resnet18', pretrained_backbone=path, **TINY['st'])
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k
    with pytest.raises(ValueError, match=r'resnet18\.safetensors does not fit ResNet: missing \[.*bn3.*wrong shape'):
        build_perception_model('st', 'resnet50', pretrained_backbone=path)
    other = timm.create_model('resnet18', num_classes=0)
    load_backbone(other, model.backbone.state_dict())
    assert torch.equal(other.conv1.weight, source.conv1.weight)


def test_build_errors():
    with pytest.raises(ValueError, match=r"kind must be one of \('st', 'ho', 'hp'\), got 'xx'"):
        build_perception_model('xx', 'resnet18')
    with pytest.raises(ValueError, match=r"the ST model has the tasks .*got options for \['scene'\]"):
        build_perception_model('st', 'resnet18', scene=dict(classes=3))
    with pytest.raises(TypeError, match=r"anp task: missing a required argument: 'classes'.*anp=dict"):
        build_perception_model('hp', 'resnet18', captioning=dict(vocab=VOCAB))
    with pytest.raises(ValueError, match='one batch per task'):
        build_perception_model('st', 'resnet18', **TINY['st']).training_step(_images(1, 32))
