"""training.export: checkpoint -> zoo files that timm loads, the model card, and --push (offline)."""
import json
import re
from pathlib import Path

import pytest
import timm
import torch
import yaml

import sentizoo  # noqa: F401  (registers senti_*)
from sentizoo import checkpoint
from training.model_card import TEMPLATE, render_card
from training.export import export, find_prefix, main, push_to_hub

PRETRAIN_CONFIG = {'model': 'st', 'arch': 'resnet18', 'dataset': 'synthetic', 'lr': 0.0137, 'momentum': 0.87,
                   'weight_decay': 3e-5, 'lr_gamma': 0.3, 'lr_step': 5, 'epochs': 3, 'batch_size': 6,
                   'image_size': 48, 'seed': 4242}


def _pretrain_checkpoint(path: Path, kind: str = 'st') -> dict:
    """A checkpoint in training.pretrain's format: backbone under 'backbone.', plus pretext-head tensors."""
    torch.manual_seed(0)
    backbone = timm.create_model('resnet18', num_classes=0)
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state['head.conv.weight'] = torch.randn(2, 512, 3, 3)
    history = {'best_epoch': None, 'epochs': [{'epoch': 3, 'lr': 0.0137, 'train': {'loss': 0.91827, kind: 0.5511}}]}
    checkpoint.save({'trainer': 'training.pretrain', 'model': state, 'config': dict(PRETRAIN_CONFIG, model=kind),
                     'history': json.dumps(history), 'epoch': 3, 'step': 0, 'global_step': 51, 'world_size': 1,
                     'init': 'random', 'precision': 'fp32',
                     'command': f'python -m training.pretrain --model {kind} --seed 4242'}, path)
    return backbone.state_dict()


def test_backbone_export_loads_with_timm(tmp_path, isolated_zoo, capsys):
    expected = _pretrain_checkpoint(tmp_path / 'final.pt')
    name, folder, sha = export(tmp_path / 'final.pt', 'st')
    assert name == 'senti_resnet18.st' and folder == isolated_zoo / 'senti_resnet18.st'
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert f"'senti_resnet18.st': '{sha}'" in capsys.readouterr().out
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
    _pretrain_checkpoint(tmp_path / 'ho.pt', kind='ho')
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
    _pretrain_checkpoint(tmp_path / 'final.pt')
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


NUMBER = re.compile(r'(?<![\w.-])\d+(?:\.\d+)?(?:e-?\d+)?')


def _stats(name: str, num_classes: int, size: int):
    """Params (M) and GMACs counted here on a real CPU model, independently of the card's meta-device count."""
    from torch.utils.flop_counter import FlopCounterMode
    model = timm.create_model(name.split('.')[0], num_classes=num_classes).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}', f'{counter.get_total_flops() / 2e9:.2f}'


def _allowed_numbers(*given: str) -> set:
    from training.model_card import _CLASSIFY, _FINETUNE
    return set(NUMBER.findall(' '.join([TEMPLATE.read_text(), _CLASSIFY, _FINETUNE, *given])))


def test_card_states_only_numbers_it_was_given(tmp_path):
    _pretrain_checkpoint(tmp_path / 'final.pt')
    results = [{'dataset': 'FI', 'split': 'test', 'task': 'sll', 'metric': 'accuracy', 'value': 61.73},
               {'dataset': 'Emotion6', 'task': 'ldl', 'metric': 'kl', 'value': 0.3141, 'synthetic': True}]
    (tmp_path / 'results.json').write_text(json.dumps({'results': results}))
    main(['--checkpoint', str(tmp_path / 'final.pt'), '--tag', 'st', '--results', str(tmp_path / 'results.json')])
    card = (sentizoo.zoo_home() / 'senti_resnet18.st' / 'README.md').read_text()
    given = json.dumps([PRETRAIN_CONFIG, results]) + ' 1 3 51 17 0.9183 0.5511 1e-05 3e-05 0.0137'  # + checkpoint facts
    params, gmacs = _stats('senti_resnet18', 0, 48)  # the backbone at the size it was pre-trained at
    allowed = _allowed_numbers(given, params, gmacs) | {
        torch.__version__.split('+')[0], timm.__version__, sentizoo.__version__}
    stated = set(NUMBER.findall(card))
    assert stated - allowed == set(), card
    assert {'61.73', '0.3141', '4242', '0.0137', params, gmacs} <= stated
    assert f'Params (M): {params}' in card and f'GMACs: {gmacs}' in card and 'Image size: 48 x 48' in card
    meta = yaml.safe_load(card.split('---')[1])
    assert meta['license'] == 'cc-by-nc-4.0' and meta['pipeline_tag'] == 'image-feature-extraction'
    assert 'datasets' not in meta and 'base_model' not in meta  # synthetic data, random initialisation
    # model-index: the measured FI result only; the synthetic one stays in the table
    assert meta['model-index'][0]['results'] == [{'task': {'type': 'image-classification'},
                                                  'dataset': {'name': 'FI', 'type': 'fi', 'split': 'test'},
                                                  'metrics': [{'type': 'accuracy', 'value': 61.73}]}]
    assert '| Emotion6 (synthetic) |' in card and 'Synthetic demo weights' in card
    assert '### Feature map extraction' in card and '### Image embeddings' in card


def test_card_without_results_has_no_numbers_but_the_facts():
    card = render_card('senti_resnet50.fi', repo_id='sentizoo/senti_resnet50.fi', architecture='resnet50',
                       description='FI classifier.', recipe=[('Seed', 'seven')], commands=['python -m x'],
                       num_classes=8, base_model='sentizoo/senti_resnet50.hp')
    assert set(NUMBER.findall(card)) <= _allowed_numbers(*_stats('senti_resnet50', 8, 224))
    assert 'model-index' not in card and 'No evaluation has been recorded' in card
    meta = yaml.safe_load(card.split('---')[1])
    assert (meta['pipeline_tag'], meta['datasets'], meta['base_model']) == (
        'image-classification', ['fi'], 'sentizoo/senti_resnet50.hp')
    assert "labels = model.pretrained_cfg['label_names']" in card  # classification usage for a classifier
    with pytest.raises(ValueError, match=r"missing \['value'\]"):
        render_card('n', repo_id='r', architecture='a', description='d', recipe=[], commands=[],
                    results=[{'dataset': 'FI', 'metric': 'accuracy'}])


def test_committed_model_cards_are_current_and_hold_no_numbers():
    import sentizoo
    from training.model_card import CARDS, planned_card
    names = sentizoo.list_models(pretrained=True)
    assert sorted(p.stem for p in CARDS.glob('senti_*.md')) == sorted(names)
    for name in names:
        card = (CARDS / f'{name}.md').read_text(encoding='utf-8')
        assert card == planned_card(name), f'{name}.md is stale: run python -m training.model_card'
        assert 'Not published yet' in card and 'model-index' not in card
        assert 'No evaluation has been recorded' in card
        meta = yaml.safe_load(card.split('---')[1])
        backbone = name.split('.')[1] in ('st', 'ho', 'hp')
        assert meta['pipeline_tag'] == ('image-feature-extraction' if backbone else 'image-classification')
        assert meta['base_model'] == (f'timm/{name[6:].split(".")[0]}.tv_in1k' if backbone
                                      else f'sentizoo/{name.split(".")[0]}.hp')


def test_model_card_main_writes_into_a_new_folder(tmp_path):
    import sentizoo
    from training.model_card import main as card_main, planned_card
    out = tmp_path / 'cards'
    assert card_main(['--out', str(out)]) == 0
    names = sentizoo.list_models(pretrained=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(f'{n}.md' for n in names)
    assert (out / f'{names[0]}.md').read_text(encoding='utf-8') == planned_card(names[0])


def test_the_published_table_has_the_line_export_names():
    from sentizoo.models import ARCHS, TAGS
    from sentizoo.published import SHA256
    from training.export import published_line

    assert list(SHA256) == [f'senti_{arch}.{tag}' for arch in ARCHS for tag in TAGS]  # one line per weight file
    path, number = published_line('senti_resnet50.fi').split(':')
    line = (Path(__file__).resolve().parents[1] / path).read_text().splitlines()[int(number) - 1]
    assert line.strip() == "'senti_resnet50.fi': None,"
