import pytest
import timm
import torch
import torch.nn as nn

from sentizoo.stages import stage_channels, stage_features, stage_indices, stage_reductions

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


def _module_output(model, name, x):
    """What the submodule ``name`` returns during ``model(x)``."""
    out = []
    hook = model.get_submodule(name).register_forward_hook(lambda m, i, o: out.append(o))
    model(x)
    hook.remove()
    return out[0]


@pytest.mark.parametrize('arch,indices,reductions', [
    ('test_convnext', (1, 2, 3), (8, 16, 32)),     # feature_info: 4 stages at 4..32
    ('test_efficientnet', (2, 3, 4), (8, 16, 32)),  # 5 entries from the stem's 2
    ('levit_128s', (0, 1, 2), (16, 32, 64)),        # three reductions only, none below 16
])
def test_hierarchical_taps_are_the_last_feature_info_entry_of_the_three_largest_reductions(arch, indices,
                                                                                            reductions):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=5, **({'img_size': 64} if arch.startswith('levit') else {})).eval()
    x = torch.randn(2, 3, 64, 64)
    assert stage_indices(model) == indices and stage_reductions(model) == reductions
    assert stage_channels(model) == tuple(model.feature_info[i]['num_chs'] for i in indices)
    feats, logits = stage_features(model, x)
    assert torch.equal(logits, model(x))
    for feat, i, r in zip(feats, indices, reductions):
        assert feat.shape == (2, model.feature_info[i]['num_chs'], -(-64 // r), -(-64 // r))
        if not arch.startswith('levit'):  # its stages return tokens; timm reshapes them
            assert torch.equal(feat, _module_output(model, model.feature_info[i]['module'], x))


def test_plain_vit_taps_are_three_evenly_spaced_blocks_as_maps():
    torch.manual_seed(0)
    model = timm.create_model('test_vit', num_classes=5, img_size=32).eval()  # 6 blocks, 64 wide, patch 16
    x = torch.randn(2, 3, 32, 32)
    assert stage_indices(model) == (1, 3, 5) and stage_reductions(model) == (16, 16, 16)
    feats, logits = stage_features(model, x)
    assert torch.equal(logits, model(x))
    for feat, block in zip(feats, (1, 3, 5)):
        tokens = _module_output(model, f'blocks.{block}', x)[:, model.num_prefix_tokens:]  # class token dropped
        assert torch.equal(feat, tokens.transpose(1, 2).reshape(2, 64, 2, 2))
    depth = lambda n: stage_indices(timm.create_model('test_vit', depth=n))  # noqa: E731
    assert (depth(12), depth(4), depth(3)) == ((3, 7, 11), (0, 2, 3), (0, 1, 2))


class _Stub(nn.Module):
    """Stands in for a timm model with the given ``feature_info`` reductions."""

    def __init__(self, reductions, intermediates=True):
        super().__init__()
        self.feature_info = [dict(num_chs=8, reduction=r, module=f'b{i}') for i, r in enumerate(reductions)]
        if intermediates:
            self.forward_intermediates = lambda x, **kw: (x, [x[:, :4]] * 3)  # 4 channels, not feature_info's 8
        self.forward_head = lambda x: x
        self.pretrained_cfg = dict(architecture='stubnet')


def test_unsupported_models_are_refused():
    with pytest.raises(ValueError, match='^Sequential has no forward_intermediates and no feature_info, .*timm model'
                                         '.*unwrap DistributedDataParallel'):
        stage_features(nn.Sequential(nn.Conv2d(3, 3, 1)), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match='^stubnet has no forward_intermediates, which amalgamation needs'):
        stage_channels(_Stub((4, 8, 16), intermediates=False))
    with pytest.raises(ValueError, match=r'^stubnet has feature_info reductions \[8, 16\] in 4 entries; .*three'):
        stage_indices(_Stub((8, 8, 16, 16)))
    with pytest.raises(ValueError, match=r'reductions \[16\] in 2 entries'):
        stage_indices(_Stub((16, 16)))
    with pytest.raises(ValueError, match=r'stubnet: forward_intermediates index 0 gave a tap of shape \(1, 4, 8, 8\), '
                                         'feature_info says 8 channels'):
        stage_features(_Stub((4, 8, 16)), torch.randn(1, 8, 8, 8))
