"""The senti_* registry: names, configs, and stock timm behaviour."""
import json

import pytest
import timm
import torch
from timm.data import create_transform, resolve_model_data_config
from timm.models.vgg import VGG

import sentizoo
from sentizoo.models import ARCHS, FI_LABELS, TAGS, PaperVGG, senti_name, stock_name

SMALL = (3, 64, 64)


def test_registry_lists_every_arch_and_tag():
    assert sorted(timm.list_models('senti_*')) == sorted(f'senti_{a}' for a in ARCHS)
    assert sorted(timm.list_pretrained('senti_*')) == sorted(f'senti_{a}.{t}' for a in ARCHS for t in TAGS)
    assert sentizoo.list_models() == timm.list_models('senti_*')


@pytest.mark.parametrize('arch', ARCHS)
def test_default_tag_is_hp_backbone(arch):
    cfg = timm.models.get_pretrained_cfg(f'senti_{arch}')
    assert cfg.tag == 'hp' and cfg.num_classes == 0
    assert cfg.hf_hub_id == f'sentizoo/senti_{arch}.hp' and cfg.hf_hub_filename == 'model.safetensors'
    assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875 and cfg.interpolation == 'bilinear'
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    fi = timm.models.get_pretrained_cfg(f'senti_{arch}.fi')
    assert fi.num_classes == 8 and tuple(fi.label_names) == FI_LABELS


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize('arch', [a for a in ARCHS if a.startswith('resnet')])
def test_resnets_are_the_stock_architecture(arch):
    senti = timm.create_model(f'senti_{arch}.fi')
    stock = timm.create_model(arch, num_classes=8)
    assert type(senti) is type(stock) and _shapes(senti) == _shapes(stock)
    assert senti.pretrained_cfg['architecture'] == f'senti_{arch}' and senti.pretrained_cfg['tag'] == 'fi'


@pytest.mark.parametrize('arch', ['vgg16_bn', 'vgg19_bn'])
def test_vggs_have_the_papers_head(arch):
    """timm's conv features, then global average pooling and one Linear(512, classes): no fc6/fc7 ConvMlp."""
    torch.manual_seed(0)
    senti = timm.create_model(f'senti_{arch}.fi').eval()
    stock = timm.create_model(arch, num_classes=8)
    features = {k: s for k, s in _shapes(stock).items() if k.startswith('features.')}
    assert isinstance(senti, VGG) and _shapes(senti) == {**features, 'head.fc.weight': (8, 512), 'head.fc.bias': (8,)}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(senti(x), senti.head.fc(senti.features(x).mean((2, 3))))
    assert senti.num_features == senti.head_hidden_size == 512
    assert timm.create_model(f'senti_{arch}')(x).shape == (2, 512)  # the backbone: pooled conv features
    millions = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (senti, stock)]
    assert millions[0] < 21 and millions[1] > 130  # fc6/fc7 alone are ~120M


def test_vgg_experiments_use_the_papers_head(tmp_path):
    from sentizoo.amalgamation import create_amalgamator, init_target_from
    from sentizoo.saving import save_pretrained
    from training.downstream import build_target

    module = create_amalgamator('vgg16_bn', num_classes=3, pretrained=False, side_by_side=False)
    assert all(isinstance(m, PaperVGG) for m in (module.target, *module.teachers.values()))
    assert isinstance(build_target('vgg16_bn', 'random', 3), PaperVGG)
    # ImageNet (stock layout, with fc6/fc7) into the paper's VGG: the conv features come, fc6/fc7 stay out
    stock = timm.create_model('vgg16_bn')
    target = init_target_from(timm.create_model('senti_vgg16_bn', num_classes=3), stock)
    assert torch.equal(target.features[0].weight, stock.features[0].weight)
    # saved under its senti name (stock timm has no such head); loads back wherever sentizoo is imported
    save_pretrained(target, tmp_path / 'vgg', verbose=False)
    assert json.loads((tmp_path / 'vgg' / 'config.json').read_text())['architecture'] == 'senti_vgg16_bn'
    again = timm.create_model(f'local-dir:{tmp_path / "vgg"}', pretrained=True)
    assert isinstance(again, PaperVGG) and torch.equal(again.head.fc.weight, target.head.fc.weight)


def test_num_classes_resets_the_head():
    model = timm.create_model('senti_resnet18.fi', num_classes=3)
    assert model.num_classes == 3 and model(torch.randn(2, *SMALL)).shape == (2, 3)
    backbone = timm.create_model('senti_resnet18')
    assert backbone(torch.randn(2, *SMALL)).shape == (2, 512)


def test_features_only_and_forward_intermediates_match_stock():
    torch.manual_seed(0)
    senti = timm.create_model('senti_resnet18', features_only=True, out_indices=(2, 3, 4)).eval()
    stock = timm.create_model('resnet18', features_only=True, out_indices=(2, 3, 4)).eval()
    stock.load_state_dict(senti.state_dict())
    x = torch.randn(1, *SMALL)
    for a, b in zip(senti(x), stock(x)):
        assert torch.equal(a, b)
    assert [f.shape[1] for f in senti(x)] == [128, 256, 512]
    model = timm.create_model('senti_vgg16_bn').eval()
    final, intermediates = model.forward_intermediates(torch.randn(1, 3, 32, 32))
    assert len(intermediates) > 0 and final.shape[1] == 512


def test_data_config_and_transform():
    model = timm.create_model('senti_resnet50')
    config = resolve_model_data_config(model)
    assert config['input_size'] == (3, 224, 224) and config['crop_pct'] == 0.875
    transform = create_transform(**config)
    from PIL import Image
    assert transform(Image.new('RGB', (500, 375))).shape == (3, 224, 224)


@pytest.mark.parametrize('given, expected', [
    ('resnet50', 'senti_resnet50'), ('senti_vgg19_bn.st', 'senti_vgg19_bn'), ('senti_resnet101', 'senti_resnet101')])
def test_senti_name(given, expected):
    assert senti_name(given) == expected
    assert stock_name(expected) == given.split('.')[0].removeprefix('senti_')


def test_senti_name_of_models_and_unsupported():
    assert senti_name(timm.create_model('resnet18')) == 'senti_resnet18'
    with pytest.raises(ValueError, match='efficientnet_b0'):
        senti_name('efficientnet_b0')
    with pytest.raises(ValueError, match='not a timm model'):
        senti_name(torch.nn.Linear(2, 2))
