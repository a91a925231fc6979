"""training.export: checkpoint -> zoo files that timm loads, --push (offline), and the line of the published table
it names. The model card it writes is tested in test_model_card.py."""
import json
from pathlib import Path

import pytest
import timm
import torch

import sentizoo  # noqa: F401  (registers senti_*)
from helpers import write_pretrain_checkpoint
from training.export import export, find_prefix, main, push_to_hub


def test_backbone_export_loads_with_timm(tmp_path, isolated_zoo, capsys):
    expected = write_pretrain_checkpoint(tmp_path / 'final.pt')
    name, folder, sha = export(tmp_path / 'final.pt', 'st')
    assert name == 'senti_resnet18.st' and folder == isolated_zoo / 'senti_resnet18.st'
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert f"'senti_resnet18.st': '{sha}'" in capsys.readouterr().out
    quiet = export(tmp_path / 'final.pt', 'st', out=tmp_path / 'quiet', verbose=False)  # the studies' export
    assert quiet.sha256 == sha and capsys.readouterr().out == ''
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'resnet18' and config['num_classes'] == 0 and config['sha256'] == sha
    cfg = config['pretrained_cfg']  # the size it was pre-trained at, with the paper's preprocessing and licence
    assert (cfg['input_size'], cfg['crop_mode'], cfg['license']) == ([3, 48, 48], 'squash', 'cc-by-nc-4.0')
    model = timm.create_model('senti_resnet18.st', pretrained=True)
    assert model.state_dict().keys() == expected.keys()  # backbone only: the pretext head is gone
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def test_classifier_export_picks_the_target(tmp_path):
    torch.manual_seed(0)
    target, teacher = (timm.create_model('resnet18', num_classes=8) for _ in range(2))
    state = {**{f'target.{k}': v for k, v in target.state_dict().items()},
             **{f'teachers.hp.{k}': v for k, v in teacher.state_dict().items()}}
    torch.save({'model': state, 'label_names': list('abcdefgh')}, tmp_path / 'amalgamated.pt')  # another trainer's
    with pytest.raises(ValueError, match=r"several models .*'target\.', 'teachers\.hp\.'.*--prefix"):
        export(tmp_path / 'amalgamated.pt', 'fi', arch='resnet18')
    export(tmp_path / 'amalgamated.pt', 'fi', arch='resnet18', prefix='target.')
    model = timm.create_model('senti_resnet18.fi', pretrained=True)
    assert model.num_classes == 8 and torch.equal(model.fc.weight, target.fc.weight)
    config = json.loads((sentizoo.zoo_home() / 'senti_resnet18.fi' / 'config.json').read_text())
    assert config['label_names'] == list('abcdefgh')


def test_wrong_checkpoint_is_refused(tmp_path):
    write_pretrain_checkpoint(tmp_path / 'ho.pt', kind='ho')
    with pytest.raises(ValueError, match='HO pre-training checkpoint.*--tag ho'):
        export(tmp_path / 'ho.pt', 'st')
    with pytest.raises(ValueError, match='trained with resnet18'):
        export(tmp_path / 'ho.pt', 'ho', arch='resnet50')
    with pytest.raises(ValueError, match='no complete ResNet'):
        find_prefix({'conv1.weight': torch.zeros(1)}, timm.create_model('resnet18', num_classes=0))


class FakeHfApi:
    calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(('create_repo', repo_id, kwargs))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        self.calls.append(('upload_folder', repo_id, sorted(p.name for p in Path(folder_path).iterdir())))


def test_push_uploads_the_exported_folder(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, 'HfApi', FakeHfApi)
    write_pretrain_checkpoint(tmp_path / 'final.pt')
    out = tmp_path / 'export'
    assert main(['--checkpoint', str(tmp_path / 'final.pt'), '--tag', 'st', '--out', str(out), '--push',
                 '--dry-run']) == 0
    assert FakeHfApi.calls == []
    assert 'would upload to https://huggingface.co/sentizoo/senti_resnet18.st: README.md, config.json, ' \
           'model.safetensors' in capsys.readouterr().out
    assert main(['--checkpoint', str(tmp_path / 'final.pt'), '--tag', 'st', '--out', str(out), '--push',
                 '--repo-id', 'me/test']) == 0
    files = ['README.md', 'config.json', 'model.safetensors']
    assert FakeHfApi.calls == [('create_repo', 'me/test', {'repo_type': 'model', 'exist_ok': True}),
                               ('upload_folder', 'me/test', files)]
    assert push_to_hub(out, 'x/y', dry_run=True) == files
    with pytest.raises(SystemExit):
        main(['--checkpoint', 'x.pt', '--tag', 'st', '--dry-run'])  # --dry-run without --push


def test_the_published_table_has_the_line_export_names():
    from sentizoo.models import ARCHS, TAGS
    from sentizoo.published import SHA256
    from training.export import published_line

    assert list(SHA256) == [f'senti_{arch}.{tag}' for arch in ARCHS for tag in TAGS]  # one line per weight file
    path, number = published_line('senti_resnet50.fi').split(':')
    line = (Path(__file__).resolve().parents[1] / path).read_text().splitlines()[int(number) - 1]
    assert line.strip() == "'senti_resnet50.fi': None,"
