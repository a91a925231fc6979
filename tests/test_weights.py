"""sentizoo.weights: weight resolution (SENTIZOO_HOME, HF cache, explicit file) and verification, all offline.
The writer of the zoo format, save_pretrained, is in test_saving.py."""
import os
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from helpers import write_hf_cache
from sentizoo import published
from sentizoo.models import ARCHS, BACKBONE_TAGS
from sentizoo.saving import save_pretrained
from sentizoo.weights import ChecksumMismatchError, WeightsNotFoundError, find_local, resolve_weights


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
    assert 'source repository' in message and 'not part of the pip package' in message  # what a pip user can do


def test_missing_weights_without_network_fail_fast(monkeypatch):
    # No HF_HUB_OFFLINE, but the hub's host does not resolve: still one quick error, no minute of retries.
    monkeypatch.delenv('HF_HUB_OFFLINE')
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', False)
    monkeypatch.setattr('huggingface_hub.constants.ENDPOINT', 'https://sentizoo-no-such-host.invalid')
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match='unreachable'):
        resolve_weights('senti_resnet18.hp')
    assert time.perf_counter() - start < 2.0
