"""sentizoo.saving: save_pretrained writes stock timm's config.json, which stock timm loads from an HF-hub folder
without sentizoo."""
import json
import os
import subprocess
import sys

import pytest
import timm

from helpers import write_hf_cache
from sentizoo.models import FI_LABELS
from sentizoo.saving import save_pretrained
from sentizoo.weights import sha256_file


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
