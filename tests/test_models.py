"""The senti_* registry: names, configs, and stock timm behaviour."""
import pytest
import timm
import torch
from timm.data import create_transform, resolve_model_data_config

import sentizoo
from sentizoo.models import ARCHS, FI_LABELS, TAGS, senti_name, stock_name

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


@pytest.mark.parametrize('arch', ARCHS)
def test_architecture_is_the_stock_one(arch):
    senti = timm.create_model(f'senti_{arch}.fi')
    stock = timm.create_model(arch, num_classes=8)
    assert type(senti) is type(stock)
    assert {k: v.shape for k, v in senti.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}
    assert senti.pretrained_cfg['architecture'] == f'senti_{arch}' and senti.pretrained_cfg['tag'] == 'fi'


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
