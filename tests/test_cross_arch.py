"""Teachers of another architecture on every interface: amalgamate(teachers='<arch>'), the CLI's --teachers, the
hub and the registry; the target's init and its provenance; adapters trained but never saved."""
import json
import os

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import hubconf
import sentizoo.engine as engine
from helpers import CROSS_ARCH, TINY, Noisy, state, tiny, tiny_target, write_hf_cache, write_images
from sentizoo.amalgamation import TEACHER_TAGS, create_target, default_target_init, target_weights
from sentizoo.cli import main
from sentizoo.cross_arch import same_architecture
from sentizoo.models import stock_name
from sentizoo.saving import save_pretrained

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture
def tiny_resnets(monkeypatch, isolated_zoo):
    """Every resnet18/50 timm creates is cut to :data:`helpers.TINY`; the zoo holds tiny senti_resnet18 teachers."""
    create = timm.create_model
    monkeypatch.setattr(timm, 'create_model', lambda name, *args, **kwargs: create(
        name, *args, **{**(TINY if stock_name(name) in ('resnet18', 'resnet50') else {}), **kwargs}))
    torch.manual_seed(0)
    for tag in TEACHER_TAGS:
        save_pretrained(tiny(0), isolated_zoo / f'senti_resnet18.{tag}', verbose=False)


def test_amalgamate_with_an_architecture_name_trains_adapters_but_keeps_the_plain_target(tmp_path, tiny_resnets):
    torch.manual_seed(0)
    target = tiny_target(CROSS_ARCH)
    start = {k: v.clone() for k, v in target.state_dict().items()}
    data = Noisy(n=8)
    val = DataLoader(torch.utils.data.TensorDataset(data.images, data.targets), batch_size=4)
    trained = engine.amalgamate(target, DataLoader(data, batch_size=4), teachers='resnet18', val_loader=val,
                                epochs=1, lr=1e-12, checkpoint_dir=tmp_path / 'run', progress=False)
    # the target kept its own weights (teachers of another architecture: target_init='given'), as recorded
    assert all(torch.allclose(trained.state_dict()[k], v, atol=1e-8) for k, v in start.items() if 'running' not in k)
    ckpt = state(tmp_path / 'run')
    assert {k: json.loads(ckpt['fingerprint'])[k] for k in ('teachers', 'target_init')} == {
        'teachers': 'senti_resnet18', 'target_init': 'given'}
    # the adapters trained with the run and are in its checkpoint, never in the kept model
    adapters = sorted({k.split('.')[1] for k in ckpt['model'] if k.startswith('adapters.')})
    assert adapters == ['ho', 'hp', 'st']
    plain = timm.create_model(CROSS_ARCH, num_classes=3, img_size=32).state_dict().keys()
    assert trained.state_dict().keys() == plain == load_file(tmp_path / 'run' / engine.BEST_NAME).keys()
    save_pretrained(trained, tmp_path / 'saved', verbose=False)
    reloaded = timm.create_model(CROSS_ARCH, num_classes=3, img_size=32, pretrained=True, pretrained_cfg_overlay=dict(
        file=str(tmp_path / 'saved' / 'model.safetensors'), num_classes=3))  # stock timm loading, strict
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), trained.state_dict().values()))


def test_cli_amalgamates_any_timm_target_with_teachers_of_another_architecture(tmp_path, capsys, tiny_resnets):
    write_images(tmp_path / 'data')
    out = tmp_path / 'out'
    common = ['--batch-size', '4', '--workers', '0', '--img-size', '32', '--no-progress']
    assert main(['amalgamate', 'test_convnext', str(tmp_path / 'data'), '--output', str(out), '--epochs', '1',
                 '--teachers', 'senti_resnet18', *common]) == 0
    config, history = json.loads((out / 'config.json').read_text()), json.loads((out / 'history.json').read_text())
    # provenance: random init (timm's test_convnext weights are not in this test's cache), the zoo's teachers
    assert config['init'] == history['init'] == 'random'
    assert config['teachers'] == history['teachers'] == [f'senti_resnet18.{t}' for t in TEACHER_TAGS]
    cfg = config['pretrained_cfg']
    assert (config['architecture'], cfg['license']) == ('test_convnext', 'cc-by-nc-4.0')
    assert 'test_convnext amalgamated with senti_resnet18.st' in cfg['description']
    assert not any('adapters' in k for k in load_file(out / 'model.safetensors'))
    reloaded = timm.create_model(f'local-dir:{out}', pretrained=True)  # stock timm, from config.json
    assert type(reloaded).__name__ == 'ConvNeXt' and reloaded.num_classes == 3
    capsys.readouterr()
    assert main(['evaluate', str(out), str(tmp_path / 'data'), *common]) == 0
    # without --teachers a target outside the zoo has no teachers of its own
    assert main(['amalgamate', 'test_convnext', str(tmp_path / 'data'), '--output', str(tmp_path / 'o2'), *common]) == 2
    assert "No sentiment-pretrained weights exist for 'test_convnext'" in capsys.readouterr().err
    assert main(['amalgamate', 'resnet18', str(tmp_path / 'data'), '--baseline', '--teachers', 'resnet50',
                 '--output', str(tmp_path / 'o3'), *common]) == 2
    assert '--teachers with --baseline' in capsys.readouterr().err


def test_cli_builds_a_fixed_size_target_for_img_size(tmp_path, capsys, tiny_resnets, monkeypatch):
    """A ViT takes one input size: before, --img-size 32 ended the run in timm's assertion (224 px expected)."""
    create = timm.create_model  # tiny_resnets' patched one; the ViT is cut to 3 blocks of 32 channels too
    monkeypatch.setattr(timm, 'create_model', lambda name, *args, **kwargs: create(name, *args, **{
        **(dict(depth=3, embed_dim=32, num_heads=2) if name == 'vit_tiny_patch16_224' else {}), **kwargs}))
    write_images(tmp_path / 'data')
    out = tmp_path / 'out'
    common = ['--batch-size', '4', '--workers', '0', '--img-size', '32', '--no-progress']
    assert main(['amalgamate', 'vit_tiny_patch16_224', str(tmp_path / 'data'), '--output', str(out),
                 '--epochs', '1', '--teachers', 'senti_resnet18', *common]) == 0
    config = json.loads((out / 'config.json').read_text())
    assert config['model_args']['img_size'] == [32, 32] and config['pretrained_cfg']['input_size'] == [3, 32, 32]
    reloaded = timm.create_model(f'local-dir:{out}', pretrained=True)  # stock timm builds it at 32 px
    assert reloaded.patch_embed.img_size == (32, 32)
    assert main(['evaluate', str(out), str(tmp_path / 'data'), *common]) == 0


@pytest.fixture
def test_convnext_teachers(isolated_zoo):
    """ST, HO and HP folders of test_convnext, outside the zoo's five, as training.export writes them."""
    torch.manual_seed(0)
    for tag in TEACHER_TAGS:
        save_pretrained(timm.create_model('test_convnext', num_classes=0), isolated_zoo / f'senti_test_convnext.{tag}',
                        verbose=False)


def test_cli_takes_teachers_pretrained_outside_the_zoo(tmp_path, capsys, tiny_resnets, isolated_zoo,
                                                        test_convnext_teachers):
    """Teachers exported by training.export for a timm architecture outside the zoo: before, the CLI refused them
    ("No sentiment-pretrained weights exist for 'test_convnext'") though the library loads them."""
    write_images(tmp_path / 'data')
    common = ['--batch-size', '4', '--workers', '0', '--img-size', '32', '--no-progress', '--epochs', '1']
    for teachers, out in (('test_convnext', tmp_path / 'o1'), (f'local-dir:{isolated_zoo}/senti_test_convnext',
                                                               tmp_path / 'o2')):
        assert main(['amalgamate', 'resnet18', str(tmp_path / 'data'), '--teachers', teachers, '--init', 'random',
                     '--output', str(out), *common]) == 0, capsys.readouterr().err
        config = json.loads((out / 'config.json').read_text())
        prefix = 'senti_test_convnext' if teachers == 'test_convnext' else teachers
        assert config['teachers'] == [f'{prefix}.{t}' for t in TEACHER_TAGS]
        assert config['pretrained_cfg']['license'] == 'cc-by-nc-4.0'


def test_a_target_outside_the_zoo_starts_from_its_own_exported_hp_backbone(tmp_path, capsys, isolated_zoo,
                                                                            test_convnext_teachers):
    """Before, create_target('test_convnext', n, 'hp'), and so the CLI's default init for a target taught by its own
    architecture's teachers (and the demo on test_resnet), raised "No sentiment-pretrained weights exist"."""
    hp = load_file(isolated_zoo / 'senti_test_convnext.hp' / 'model.safetensors')
    assert target_weights('test_convnext', 'hp') == 'senti_test_convnext.hp'
    target = create_target('test_convnext', 3, 'hp')
    assert target.num_classes == 3
    for name, value in hp.items():
        torch.testing.assert_close(target.state_dict()[name], value, rtol=0, atol=0)
    write_images(tmp_path / 'data')
    assert main(['amalgamate', 'test_convnext', str(tmp_path / 'data'), '--teachers', 'test_convnext', '--batch-size',
                 '4', '--workers', '0', '--img-size', '32', '--no-progress', '--epochs', '1', '--output',
                 str(tmp_path / 'out')]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / 'out' / 'config.json').read_text())['init'] == 'senti_test_convnext.hp'


def test_hub_and_registry_take_teachers_of_another_architecture(tiny_resnets):
    module = hubconf.amalgamator('test_convnext', teachers='resnet18', pretrained=False, num_classes=3)
    assert type(module.target).__name__ == 'ConvNeXt' and module.target.num_classes == 3
    assert sorted(module.adapters) == ['ho', 'st']  # test_convnext's 64-channel stage 3 matches tiny resnet18's
    module = timm.create_model('amalgamator_senti_resnet18', teachers='resnet50', pretrained=False, num_classes=3)
    assert module.teachers['hp'].layer4[0].conv3.weight.shape[0] == 256 and sorted(module.adapters) == [
        'ho', 'hp', 'st']  # resnet50's bottleneck stages (64/128/256 wide, tiny) vs the resnet18 target's 16/32/64
    assert 'senti_resnet50.st/.ho/.hp' in module.pretrained_cfg['description']


def test_default_target_init_is_the_targets_own_cached_weights_else_random(isolated_zoo):
    assert default_target_init('resnet50') == default_target_init('resnet50', 'senti_resnet50') == 'hp'
    assert default_target_init('test_convnext', 'resnet18') == 'random'  # an empty cache: nothing is downloaded
    torch.manual_seed(0)
    weights = isolated_zoo.parent / 'test_convnext.safetensors'
    save_pretrained(timm.create_model('test_convnext'), weights.parent / 'tc', verbose=False)
    write_hf_cache(os.environ['HF_HUB_CACHE'], 'timm/test_convnext.r160_in1k',
                   {'model.safetensors': weights.parent / 'tc' / 'model.safetensors'})
    assert default_target_init('test_convnext', 'resnet18') == 'imagenet'
    teachers = {'hp': tiny(0)}
    assert same_architecture(tiny(), teachers) and not same_architecture(tiny_target(CROSS_ARCH), teachers)
    # teachers named by their folders (load_teachers' local-dir: / hf-hub: names): the architecture is the last part
    assert same_architecture('convnext_atto', 'hf-hub:me/senti_convnext_atto')
    assert same_architecture('convnext_atto', 'local-dir:runs/zoo/senti_convnext_atto')
    assert default_target_init('convnext_atto', 'local-dir:zoo/senti_convnext_atto') == 'hp'
