"""Weight resolution, verification and the zoo format (all offline)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from conftest import write_hf_cache
from sentizoo import published
from sentizoo.models import ARCHS, BACKBONE_TAGS, FI_LABELS
from sentizoo.saving import save_pretrained
from sentizoo.weights import ChecksumMismatchError, WeightsNotFoundError, find_local, resolve_weights, sha256_file


def assert_same_state(model, path):
    saved = load_file(str(path))
    state = model.state_dict()
    assert saved.keys() == state.keys()
    for key, tensor in saved.items():
        assert torch.equal(state[key], tensor), key


@pytest.mark.parametrize('arch', ARCHS)
def test_every_arch_and_tag_round_trips_through_sentizoo_home(arch, isolated_zoo):
    torch.manual_seed(0)
    backbone_dir = isolated_zoo / f'senti_{arch}.hp'
    save_pretrained(timm.create_model(f'senti_{arch}.hp'), backbone_dir, verbose=False)
    for tag in ('ho', 'st'):  # the three backbones share one architecture: link instead of re-saving
        (isolated_zoo / f'senti_{arch}.{tag}').mkdir()
        for name in ('model.safetensors', 'config.json'):
            os.link(backbone_dir / name, isolated_zoo / f'senti_{arch}.{tag}' / name)
    save_pretrained(timm.create_model(f'senti_{arch}.fi'), isolated_zoo / f'senti_{arch}.fi', verbose=False)
    for tag in BACKBONE_TAGS + ('fi',):
        model = timm.create_model(f'senti_{arch}.{tag}', pretrained=True)
        assert model.pretrained_cfg['file'] == str(isolated_zoo / f'senti_{arch}.{tag}' / 'model.safetensors')
        assert_same_state(model, model.pretrained_cfg['file'])
        assert model.num_classes == (8 if tag == 'fi' else 0)


def test_pretrained_with_new_head_keeps_backbone(isolated_zoo):
    save_pretrained(timm.create_model('senti_resnet18.hp'), isolated_zoo / 'senti_resnet18.hp', verbose=False)
    saved = load_file(str(isolated_zoo / 'senti_resnet18.hp' / 'model.safetensors'))
    model = timm.create_model('senti_resnet18', pretrained=True, num_classes=5)
    assert model.fc.out_features == 5
    assert torch.equal(model.layer4[1].conv2.weight, saved['layer4.1.conv2.weight'])


def test_save_pretrained_writes_stock_timm_config(tmp_path):
    model = timm.create_model('senti_resnet18.fi')
    digest = save_pretrained(model, tmp_path, verbose=False)
    config = json.loads((tmp_path / 'config.json').read_text())
    assert config['architecture'] == 'resnet18' and config['num_classes'] == 8
    assert config['label_names'] == list(FI_LABELS) and config['sha256'] == digest
    assert config['pretrained_cfg']['input_size'] == [3, 224, 224] and 'file' not in config['pretrained_cfg']
    assert digest == sha256_file(tmp_path / 'model.safetensors')
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temporary files left behind
    with pytest.raises(ValueError, match='3 entries but the model has 8 classes'):
        save_pretrained(model, tmp_path, label_names=['a', 'b', 'c'])


def test_hf_cache_is_used_offline(isolated_zoo, tmp_path):
    model = timm.create_model('senti_resnet18.st')
    save_pretrained(model, tmp_path / 'export', verbose=False)
    cache = Path(os.environ['HF_HUB_CACHE'])
    write_hf_cache(cache, 'sentizoo/senti_resnet18.st', {'model.safetensors': tmp_path / 'export' / 'model.safetensors'})
    loaded = timm.create_model('senti_resnet18.st', pretrained=True)
    assert Path(loaded.pretrained_cfg['file']).is_relative_to(cache)
    assert_same_state(model, loaded.pretrained_cfg['file'])


def test_sentizoo_home_wins_over_hf_cache(isolated_zoo, tmp_path):
    save_pretrained(timm.create_model('senti_resnet18.ho'), isolated_zoo / 'senti_resnet18.ho', verbose=False)
    save_file({'x': torch.zeros(1)}, tmp_path / 'model.safetensors')
    write_hf_cache(os.environ['HF_HUB_CACHE'], 'sentizoo/senti_resnet18.ho', {'model.safetensors': tmp_path / 'model.safetensors'})
    assert find_local('senti_resnet18.ho', 'sentizoo/senti_resnet18.ho') == isolated_zoo / 'senti_resnet18.ho' / 'model.safetensors'


def test_explicit_file_wins_and_must_be_safetensors(isolated_zoo, tmp_path):
    model = timm.create_model('senti_resnet18.hp')
    save_file(model.state_dict(), tmp_path / 'mine.safetensors')
    loaded = timm.create_model('senti_resnet18', pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / 'mine.safetensors')))
    assert_same_state(loaded, tmp_path / 'mine.safetensors')
    torch.save(model.state_dict(), tmp_path / 'mine.pth')
    with pytest.raises(ValueError, match=r'mine\.pth: only \.safetensors'):
        timm.create_model('senti_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'mine.pth')))
    with pytest.raises(WeightsNotFoundError, match='nope.safetensors'):
        timm.create_model('senti_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'nope.safetensors')))


def test_sha256_mismatch_is_refused(isolated_zoo, monkeypatch):
    folder = isolated_zoo / 'senti_resnet18.hp'
    actual = save_pretrained(timm.create_model('senti_resnet18.hp'), folder, verbose=False)
    monkeypatch.setitem(published.SHA256, 'senti_resnet18.hp', '0' * 64)
    with pytest.raises(ChecksumMismatchError) as err:
        timm.create_model('senti_resnet18', pretrained=True)
    message = str(err.value)
    assert str(folder / 'model.safetensors') in message and '0' * 64 in message and actual in message
    monkeypatch.setitem(published.SHA256, 'senti_resnet18.hp', actual)
    timm.create_model('senti_resnet18', pretrained=True)  # the published checksum passes


def test_corrupted_local_file_is_refused_by_its_recorded_sha256(isolated_zoo):
    folder = isolated_zoo / 'senti_resnet18.hp'
    save_pretrained(timm.create_model('senti_resnet18.hp'), folder, verbose=False)
    with open(folder / 'model.safetensors', 'r+b') as f:
        f.seek(-4, os.SEEK_END)
        f.write(b'\x00\x01\x02\x03')
    with pytest.raises(ChecksumMismatchError, match='fail the sha256 check'):
        timm.create_model('senti_resnet18', pretrained=True)


def test_missing_weights_fail_fast_with_one_actionable_message(isolated_zoo):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        timm.create_model('senti_resnet50.ho', pretrained=True)
    elapsed = time.perf_counter() - start
    message = str(err.value)
    assert elapsed < 2.0, f'took {elapsed:.1f} s'
    assert str(isolated_zoo / 'senti_resnet50.ho' / 'model.safetensors') in message
    assert os.environ['HF_HUB_CACHE'] in message and 'HF_HUB_OFFLINE=1' in message
    assert 'SENTIZOO_HOME' in message and 'python -m training.export' in message


def test_missing_weights_without_network_fail_fast(monkeypatch):
    # No HF_HUB_OFFLINE, but the hub's host does not resolve: still one quick error, no minute of retries.
    monkeypatch.delenv('HF_HUB_OFFLINE')
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', False)
    monkeypatch.setattr('huggingface_hub.constants.ENDPOINT', 'https://sentizoo-no-such-host.invalid')
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match='unreachable'):
        resolve_weights('senti_resnet18.hp')
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize('kwargs, expected', [
    ({}, ['ResNet', '8', '3', '3x224x224', 'amusement']),
    # what stock timm needs to rebuild a changed model travels: model_args, the input channels of the data config
    (dict(in_chans=1, num_classes=6, label_names=list('abcdef')), ['ResNet', '6', '1', '1x224x224', 'a']),
])
def test_stock_timm_loads_hf_hub_folder_without_sentizoo(tmp_path, kwargs, expected):
    label_names = kwargs.pop('label_names', None)
    model = timm.create_model('senti_resnet18.fi', **kwargs)
    save_pretrained(model, tmp_path / 'export', label_names=label_names, verbose=False)
    cache = tmp_path / 'hf'
    write_hf_cache(cache, 'sentizoo/senti_resnet18.fi',
                   {n: tmp_path / 'export' / n for n in ('model.safetensors', 'config.json')})
    script = (
        'import sys, timm, torch\n'
        'from safetensors.torch import load_file\n'
        'm = timm.create_model("hf-hub:sentizoo/senti_resnet18.fi", pretrained=True)\n'
        'assert "sentizoo" not in sys.modules\n'
        f'saved = load_file({str(tmp_path / "export" / "model.safetensors")!r})\n'
        'assert m.state_dict().keys() == saved.keys()\n'
        'assert all(torch.equal(m.state_dict()[k], v) for k, v in saved.items())\n'
        'size = "x".join(map(str, timm.data.resolve_model_data_config(m)["input_size"]))\n'
        'print(type(m).__name__, m.num_classes, m.conv1.in_channels, size, m.pretrained_cfg["label_names"][0])\n')
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache))
    out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == expected
