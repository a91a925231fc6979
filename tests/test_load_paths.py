"""Every way of naming a model loads verified weights, and every failure to load is one line.

A folder, ``local-dir:`` and ``hf-hub:`` names go through :func:`sentizoo.weights.load_folder` (safetensors only, the
sha256 of the published table or of the config.json beside the weights); ``--checkpoint`` with a folder is refused;
a config.json's own preprocessing wins over the registry's. The fixtures (tiny_folder, images ...) are in conftest.py.
"""
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from helpers import TINY_LABELS, tiny_classifier, write_hf_cache, write_images
from sentizoo import published
from sentizoo.cli import main
from sentizoo.inference import load_classifier
from sentizoo.saving import save_pretrained
from sentizoo.weights import (ChecksumMismatchError, InvalidWeightsError, UnverifiedWeightsWarning,
                              WeightsNotFoundError)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    assert 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.fixture
def offline_hub(isolated_zoo, monkeypatch) -> Path:
    """The HF cache of this test, offline (huggingface_hub reads both at import, before conftest's environment)."""
    cache = isolated_zoo.parent / 'hf'
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(cache))
    return cache


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps(dict(config, **changes)))


def test_local_dir_checks_the_sha256_its_config_records(tiny_folder, capsys, images):
    save_file(tiny_classifier(seed=1).state_dict(), tiny_folder / 'model.safetensors')  # other weights, same config
    with pytest.raises(ChecksumMismatchError, match='fail the sha256 check'):
        load_classifier(f'local-dir:{tiny_folder}')
    code, out, err = _run(capsys, 'predict', f'local-dir:{tiny_folder}', images / 'a_gradient.jpg', '--workers', 0)
    assert code == 1 and out == '' and str(tiny_folder / 'model.safetensors') in _one_line(err)


def test_hf_hub_checks_the_cached_files_and_the_published_sha256(tiny_folder, offline_hub, monkeypatch):
    files = {name: tiny_folder / name for name in ('model.safetensors', 'config.json')}
    snapshot = write_hf_cache(offline_hub, 'sentizoo/senti_resnet18.fi', files)
    assert load_classifier('hf-hub:sentizoo/senti_resnet18.fi')[0].num_classes == len(TINY_LABELS)
    blob = (snapshot / 'model.safetensors').resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1  # one byte flipped in the cache
    blob.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match='fail the sha256 check'):
        load_classifier('hf-hub:sentizoo/senti_resnet18.fi')
    # the published table wins over a config.json that matches the file
    save_pretrained(tiny_classifier(seed=1), tiny_folder, verbose=False)
    write_hf_cache(offline_hub, 'sentizoo/senti_resnet18.fi', files, revision='b' * 40)
    load_classifier('hf-hub:sentizoo/senti_resnet18.fi')
    monkeypatch.setitem(published.SHA256, 'senti_resnet18.fi', '0' * 64)
    with pytest.raises(ChecksumMismatchError, match=f'expected {"0" * 64}'):
        load_classifier('hf-hub:sentizoo/senti_resnet18.fi')


def test_a_folder_with_only_a_pickle_is_refused(tiny_folder, offline_hub):
    torch.save(tiny_classifier().state_dict(), tiny_folder / 'pytorch_model.bin')
    write_hf_cache(offline_hub, 'me/pickled', {n: tiny_folder / n for n in ('config.json', 'pytorch_model.bin')})
    (tiny_folder / 'model.safetensors').unlink()
    for name in (f'local-dir:{tiny_folder}', 'hf-hub:me/pickled'):
        with pytest.raises(InvalidWeightsError, match=r'has no model\.safetensors \(only pytorch_model\.bin'):
            load_classifier(name)


def test_checkpoint_with_a_folder_is_refused(capsys, tiny_folder, images):
    # before, --checkpoint (even a missing file) was ignored and the folder's own weights predicted
    write_images(tiny_folder.parent / 'data', classes=TINY_LABELS, per_class=1)
    for command in (['predict', tiny_folder, images / 'a_gradient.jpg'],
                    ['evaluate', tiny_folder, tiny_folder.parent / 'data'],
                    ['predict', f'local-dir:{tiny_folder}', images / 'a_gradient.jpg']):
        code, _, err = _run(capsys, *command, '--checkpoint', '/nonexistent.safetensors')
        assert code == 2 and 'is a folder with its own weights; drop --checkpoint' in _one_line(err)


def test_a_config_without_sha256_warns_once_naming_it(tiny_folder, capsys, images):
    for recorded in ({'sha256': None}, {}):
        config = json.loads((tiny_folder / 'config.json').read_text())
        config.pop('sha256', None)
        (tiny_folder / 'config.json').write_text(json.dumps(dict(config, **recorded)))
        with pytest.warns(UnverifiedWeightsWarning, match=f'{tiny_folder / "config.json"} records no "sha256"') as got:
            load_classifier(str(tiny_folder))
        assert len(got) == 1
    code, _, err = _run(capsys, 'predict', tiny_folder, images / 'a_gradient.jpg', '--workers', 0, '--backend',
                        'torch')
    assert code == 0 and f'sentizoo predict: warning: {tiny_folder / "config.json"} records no "sha256"' in err


def test_label_names_of_the_wrong_length_are_refused(tiny_folder):
    _edit_config(tiny_folder, label_names=TINY_LABELS[:3])
    with pytest.raises(InvalidWeightsError, match=rf'{tiny_folder / "config.json"}: "label_names" must be a list of 4'):
        load_classifier(f'local-dir:{tiny_folder}')


def test_load_failures_are_one_line(capsys, tiny_folder, tmp_path, images, offline_hub):
    image = images / 'a_gradient.jpg'
    code, _, err = _run(capsys, 'predict', f'local-dir:{tmp_path / "missing"}', image)
    assert code == 1 and 'missing: no such folder' in _one_line(err)
    code, _, err = _run(capsys, 'predict', 'hf-hub:me/absent', image)
    assert code == 1 and 'hf-hub:me/absent: not in the Hugging Face cache' in _one_line(err)
    (tmp_path / 'broken').mkdir()
    shutil.copy(tiny_folder / 'model.safetensors', tmp_path / 'broken')
    (tmp_path / 'broken' / 'config.json').write_text('{"architecture": ')
    code, _, err = _run(capsys, 'predict', f'local-dir:{tmp_path / "broken"}', image)
    assert code == 1 and f'{tmp_path / "broken" / "config.json"} is not valid JSON' in _one_line(err)
    code, _, err = _run(capsys, 'predict', tiny_folder, image, '--device', 'meta')
    assert code == 2 and '--device meta' in _one_line(err)
    (tmp_path / 'out.onnx').mkdir()
    code, _, err = _run(capsys, 'export-onnx', tiny_folder, tmp_path / 'out.onnx')
    assert code == 2 and 'expected a .onnx file' in _one_line(err)
    code, _, err = _run(capsys, 'export-onnx', tiny_folder, tmp_path / 'new.onnx', '--opset', 99)
    assert code == 2 and '--opset 99: torch exports opsets' in _one_line(err) and not (tmp_path / 'new.onnx').exists()


def test_evaluate_output_to_a_full_disk(capsys, tiny_folder, tmp_path):
    write_images(tmp_path / 'data', classes=TINY_LABELS, per_class=1)
    code, out, err = _run(capsys, 'evaluate', tiny_folder, tmp_path / 'data', '--output', '/dev/full', '--workers', 0,
                          '--no-progress')
    assert code == 1 and 'cannot write --output /dev/full (No space left on device)' in _one_line(err)
    assert out.split()[0] == 'accuracy'  # the metrics are not lost


def test_baseline_offline_without_imagenet_weights(capsys, tmp_path, offline_hub):
    write_images(tmp_path / 'data', per_class=1)
    code, _, err = _run(capsys, 'amalgamate', 'resnet18', tmp_path / 'data', '--baseline', '--output', tmp_path / 'out',
                        '--workers', 0, '--no-progress')
    assert code == 1 and '--init imagenet: cannot load resnet18.tv_in1k' in _one_line(err)


def test_the_weights_own_config_wins_for_preprocessing(isolated_zoo):
    model = timm.create_model('senti_resnet18.hp', pretrained_cfg_overlay=dict(input_size=(3, 32, 32), crop_pct=1.0))
    save_pretrained(model, isolated_zoo / 'senti_resnet18.hp', verbose=False)
    loaded = timm.create_model('senti_resnet18.hp', pretrained=True)  # the registry says 224 and 0.875
    assert loaded.pretrained_cfg['input_size'] == (3, 32, 32) and loaded.pretrained_cfg['crop_pct'] == 1.0
    assert timm.data.resolve_model_data_config(loaded)['input_size'] == (3, 32, 32)


def test_timm_cache_dir_is_honoured(tmp_path, isolated_zoo):
    save_pretrained(timm.create_model('senti_resnet18.st'), tmp_path / 'st', verbose=False)
    weights = tmp_path / 'st' / 'model.safetensors'
    write_hf_cache(tmp_path / 'mine', 'sentizoo/senti_resnet18.st', {'model.safetensors': weights})
    with pytest.raises(WeightsNotFoundError):
        timm.create_model('senti_resnet18.st', pretrained=True)
    loaded = timm.create_model('senti_resnet18.st', pretrained=True, cache_dir=tmp_path / 'mine')
    assert Path(loaded.pretrained_cfg['file']).is_relative_to(tmp_path / 'mine')
