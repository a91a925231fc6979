import pytest
import timm
import torch
import torch.nn as nn

from sentizoo.stages import stage_channels, stage_features

# The official slices (docs/method.md, "Stages"): the taps are the ends of the last three.
VGG_SLICES = {'vgg16_bn': (0, 13, 23, 33, 43), 'vgg19_bn': (0, 13, 26, 39, 52)}


def _model(arch):
    # a small pre-logits MLP keeps VGG cheap; the conv features (what is tapped) are the real ones
    kwargs = dict(mlp_ratio=1 / 64) if arch.startswith('vgg') else {}
    torch.manual_seed(0)
    return timm.create_model(arch, num_classes=5, **kwargs).eval()


def _reference(model, x):
    """Taps written out by hand: manual slicing for VGG, forward hooks on layer2-4 for ResNet."""
    name = model.pretrained_cfg['architecture']
    if name in VGG_SLICES:
        bounds, feats = VGG_SLICES[name], []
        for start, stop in zip(bounds, bounds[1:]):
            x = model.features[start:stop](x)
            feats.append(x)
        return feats[1:], model.forward_head(model.features[bounds[-1]:](x))
    feats = []
    hooks = [getattr(model, f'layer{i}').register_forward_hook(lambda m, i, o: feats.append(o)) for i in (2, 3, 4)]
    logits = model(x)
    for h in hooks:
        h.remove()
    return feats, logits


def _count_calls(module):
    calls = []
    return calls, module.register_forward_hook(lambda *a: calls.append(1))


@pytest.mark.parametrize('arch,channels,sizes', [
    ('resnet18', (128, 256, 512), (8, 4, 2)),
    ('resnet50', (512, 1024, 2048), (8, 4, 2)),
    ('vgg16_bn', (256, 512, 512), (16, 8, 4)),
    ('vgg19_bn', (256, 512, 512), (16, 8, 4)),
])
def test_taps_equal_the_official_stage_outputs(arch, channels, sizes):
    model = _model(arch)
    x = torch.randn(2, 3, 64, 64)
    stem = model.features[0] if arch.startswith('vgg') else model.conv1
    calls, hook = _count_calls(stem)
    feats, logits = stage_features(model, x)
    hook.remove()
    assert len(calls) == 1  # one forward pass gives the taps and the logits
    ref_feats, ref_logits = _reference(model, x)
    assert stage_channels(model) == channels
    for f, r, c, s in zip(feats, ref_feats, channels, sizes):
        assert f.shape == (2, c, s, s)
        assert torch.equal(f, r)
        assert f.min() >= 0  # post-activation
    assert torch.equal(logits, ref_logits) and logits.shape == (2, 5)


def test_stage_subsets_and_early_stop():
    model = _model('resnet18')
    x = torch.randn(1, 3, 32, 32)
    full, logits = stage_features(model, x)
    calls, hook = _count_calls(model.layer4)
    feats, none = stage_features(model, x, stages=(1,), with_logits=False)
    assert none is None and len(feats) == 1 and torch.equal(feats[0], full[0])
    assert not calls  # stopped after layer2
    hook.remove()
    feats, logits2 = stage_features(model, x, stages=(3, 2))
    assert torch.equal(feats[0], full[2]) and torch.equal(feats[1], full[1]) and torch.equal(logits, logits2)
    feats, logits3 = stage_features(model, x, stages=())
    assert feats == [] and torch.equal(logits3, logits)
    with pytest.raises(ValueError, match=r'subset of \(1, 2, 3\)'):
        stage_features(model, x, stages=(0, 1))
    with pytest.raises(ValueError, match='non-empty unless with_logits'):
        stage_features(model, x, stages=(), with_logits=False)


@pytest.mark.parametrize('arch', ['resnet18', 'vgg16_bn'])
def test_channels_last_and_autocast(arch):
    model = _model(arch)
    x = torch.randn(2, 3, 32, 32)
    ref_feats, ref_logits = _reference(model, x)
    model_cl = model.to(memory_format=torch.channels_last)
    feats, logits = stage_features(model_cl, x.to(memory_format=torch.channels_last))
    for f, r in zip(feats, ref_feats):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        feats, logits = stage_features(model_cl, x)
        ref_feats, ref_logits = _reference(model_cl, x)
    assert feats[0].dtype == torch.bfloat16
    for f, r in zip(feats + [logits], ref_feats + [ref_logits]):
        assert torch.equal(f, r)


def test_training_mode_and_gradients():
    model = _model('resnet18').train()
    x = torch.randn(2, 3, 32, 32)
    feats, logits = stage_features(model, x)
    (sum(f.mean() for f in feats) + logits.sum()).backward()
    assert model.conv1.weight.grad.abs().sum() > 0 and model.fc.weight.grad.abs().sum() > 0


def test_unsupported_models_are_refused():
    with pytest.raises(ValueError, match='timm ResNet and VGG.*got Sequential'):
        stage_features(nn.Sequential(nn.Conv2d(3, 3, 1)), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match='got MobileNetV3'):
        stage_channels(timm.create_model('mobilenetv3_small_050'))
