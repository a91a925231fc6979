"""training.downstream: config validation (fail fast, every problem named), the shipped configs against the
paper's tables, the evaluation transform, and a tiny Table-3-style ablation end to end on synthetic data."""
import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

import sentizoo  # noqa: F401  (registers senti_*)
from sentizoo.saving import save_pretrained
from sentizoo.weights import WeightsNotFoundError, sha256_file, zoo_home
from training import downstream as ds
from training import paper_results as paper
from training.report import load_results, render

TINY = 'synthetic_ablation_tiny'


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _minimal(**extra):
    return {'arch': 'resnet18', 'dataset': 'synthetic', 'task': 'sll',
            'runs': {'baseline': {'mode': 'finetune', 'init': 'random'}}, **extra}


def _fill_zoo(arch: str = 'resnet18', tags=('st', 'ho', 'hp')) -> None:
    torch.manual_seed(0)
    for tag in tags:
        save_pretrained(timm.create_model(f'senti_{arch}.{tag}'), zoo_home() / f'senti_{arch}.{tag}')


# ------------------------------------------------------------------------------------------ validation

@pytest.mark.parametrize('change, message', [
    (dict(arch='resnet34'), "arch: one of ('vgg16_bn', 'vgg19_bn', 'resnet18', 'resnet50', 'resnet101'), got 'resnet34'"),
    (dict(dataset='imagenet'), "dataset: one of ('fi', 'emoset', 'unbiasedemo', 'emotic', 'emotion6', 'abstract', "
                               "'synthetic'), got 'imagenet'"),
    (dict(task='regression'), "task: one of ('sll', 'mll', 'ldl'), got 'regression'"),
    (dict(epochs=3), "unknown key(s) ['epochs']"),
    (dict(batch_size=0), 'batch_size: an integer >= 1, got 0'),
    (dict(train={'lr': -1}), "train: Invalid training options: lr=-1 (a number > 0)."),
    (dict(train={'device': 'cpu'}), "train: an object with keys among"),
    (dict(data={'n_train': 0}), 'data.n_train: an integer >= 1, got 0'),
    (dict(data={'n_trian': 5}), "data: unknown synthetic key(s) ['n_trian']"),
    (dict(runs={}), 'runs: a non-empty object of run name -> run, got {}'),
    (dict(runs={'a': {'mode': 'distill', 'init': 'hp'}}), "runs.a.mode: one of ('finetune', 'amalgamate'), got 'distill'"),
    (dict(runs={'a': {'mode': 'finetune', 'init': 'places'}}), "runs.a.init: one of ('st', 'ho', 'hp', 'imagenet', 'random')"),
    (dict(runs={'a': {'mode': 'finetune', 'init': 'hp', 'feature_stages': [1]}}),
     "runs.a: ['feature_stages'] only apply to \"mode\": \"amalgamate\""),
    (dict(runs={'a': {'mode': 'amalgamate', 'init': 'hp', 'feature_stages': [0, 4]}}),
     'runs.a.feature_stages: a list, subset of [1, 2, 3], got [0, 4]'),
    (dict(runs={'a': {'mode': 'amalgamate', 'init': 'hp', 'logits_teachers': 'hp'}}),
     "runs.a.logits_teachers: a list, subset of ['st', 'ho', 'hp'], got 'hp'"),
    (dict(runs={'a': {'mode': 'amalgamate', 'init': 'hp', 'teacher_task_loss': 'no'}}),
     "runs.a.teacher_task_loss: true or false, got 'no'"),
    (dict(runs={'a': {'mode': 'amalgamate', 'init': 'hp', 'lr': 0.1}}), "runs.a: unknown key(s) ['lr']"),
    # JSON true is a Python bool, which is an int: it must not pass as a size or a weight
    (dict(eval_batch_size=True), 'eval_batch_size: null or an integer >= 1, got True'),
    (dict(data={'n_test': True}), 'data.n_test: an integer >= 1, got True'),
    (dict(runs={'a': {'mode': 'amalgamate', 'init': 'hp', 'loss_weights': {'feat/st': True}}}),
     "runs.a.loss_weights: an object of term -> number, e.g. {\"feat/st\": 0.5}, got {'feat/st': True}"),
])
def test_invalid_config_names_the_key_and_the_file(tmp_path, change, message):
    path = _write(tmp_path / 'bad.json', {**_minimal(), **change})
    with pytest.raises(ds.ConfigError) as info:
        ds.load_config(path)
    assert str(info.value).startswith(f'{path}: invalid downstream config:')
    assert message in str(info.value)


def test_every_problem_is_reported_at_once(tmp_path):
    path = _write(tmp_path / 'bad.json', {'arch': 'resnet34', 'runs': {'a': {'mode': 'x', 'init': 'hp'}}})
    problems = str(pytest.raises(ds.ConfigError, ds.load_config, path).value).splitlines()[1:]
    assert problems == ['  - missing required key "dataset"', '  - missing required key "task"',
                        "  - arch: one of ('vgg16_bn', 'vgg19_bn', 'resnet18', 'resnet50', 'resnet101'), got 'resnet34' "
                        '(another timm model needs "teachers": one of those architectures, or its own name when '
                        'training.export wrote its ST, HO and HP)',
                        "  - runs.a.mode: one of ('finetune', 'amalgamate'), got 'x'"]


def test_unreadable_configs(tmp_path):
    (tmp_path / 'broken.json').write_text('{"arch": ')
    with pytest.raises(ds.ConfigError, match=r'broken\.json: not valid JSON'):
        ds.load_config(tmp_path / 'broken.json')
    with pytest.raises(ds.ConfigError, match=r'missing\.json: no such config file'):
        ds.load_config(tmp_path / 'missing.json')
    _write(tmp_path / 'a.json', {'extends': 'b.json'})
    _write(tmp_path / 'b.json', {'extends': 'a.json'})
    with pytest.raises(ds.ConfigError, match='"extends" loops back to itself'):
        ds.load_config(tmp_path / 'a.json')


def test_extends_merges_objects_and_replaces_runs(tmp_path):
    _write(tmp_path / 'base.json', _minimal(train={'epochs': 30, 'lr': 0.001}, data={'n_train': 50},
                                            runs={'x': {'mode': 'finetune', 'init': 'random'}}))
    path = _write(tmp_path / 'child.json', {'extends': 'base.json', 'train': {'epochs': 2}, 'data': {'n_val': 3},
                                            'runs': {'y': {'mode': 'amalgamate', 'init': 'hp'}}})
    c = ds.load_config(path)
    assert c['name'] == 'child' and c['source'] == str(path)
    assert c['train'] == {'epochs': 2, 'lr': 0.001}
    assert c['data'] == {'n_train': 50, 'n_val': 3, 'n_test': 400, 'seed': 0}
    assert c['runs'] == {'y': {'mode': 'amalgamate', 'init': 'hp'}}
    assert (c['image_size'], c['batch_size'], c['eval_batch_size'], c['checkpoints']) == (224, 32, 32, True)


def test_shipped_configs_cover_the_papers_tables():
    configs = {name: ds.load_config(name) for name in ds.config_names()}
    table1 = {(c['dataset'], c['task'], c['arch']) for c in configs.values() if c['table'] == 1}
    assert table1 == {(d, t, a) for d, t, _ in paper.TABLE1_ROWS for a in paper.ARCHS}
    assert len(table1) == 30
    for c in configs.values():
        if c['table'] == 1:  # the paper's protocol
            assert c['runs'] == {'baseline': {'mode': 'finetune', 'init': 'imagenet'},
                                 'amalgamation': {'mode': 'amalgamate', 'init': 'hp', 'feature_stages': [1, 2, 3],
                                                  'logits_teachers': ['hp'], 'teacher_task_loss': True}}
            assert (c['image_size'], c['batch_size'], c['train']) == (224, 32, dict(
                epochs=30, lr=1e-3, momentum=0.9, weight_decay=1e-4, step_size=10, gamma=0.1, seed=0))
    t3 = configs['table3_resnet50_fi_sll']
    assert list(t3['runs']) == list(paper.TABLE3_ROWS) == list(paper.TABLE3)
    assert t3['runs']['feat_ho'] == {'mode': 'amalgamate', 'init': 'hp', 'feature_stages': [2], 'logits_teachers': []}
    assert {(c['arch'], run) for c in configs.values() if c['table'] == 4 for run in c['runs']} == set(paper.TABLE4)
    assert configs['table4_vgg16_bn_fi_sll']['runs']['without_tl']['teacher_task_loss'] is False


# ---------------------------------------------------------------------------------------- data, models

def test_eval_transform_resizes_then_centre_crops():
    pixels = torch.arange(16 * 16 * 3).remainder(256).to(torch.uint8).reshape(16, 16, 3)
    image = Image.fromarray(pixels.numpy())
    out = ds.split_transforms(14)['test'](image)  # resize to floor(14 / 0.875) = 16, its own size: the identity
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = (pixels[1:15, 1:15].permute(2, 0, 1).float() / 255 - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(out, expected)


def test_synthetic_datasets_follow_the_protocol():
    c = ds.validate_config(_minimal(image_size=28, data={'n_train': 3, 'n_val': 2, 'n_test': 1}))
    data = ds.build_splits(c)
    assert {k: len(v) for k, v in data.items()} == {'train': 3, 'val': 2, 'test': 1}
    assert data['train'].world.size == 32  # images made at 28 * 256 / 224, then cropped to 28
    image, label = data['val'][0]
    assert image.shape == (3, 28, 28) and 0 <= label < 8
    torch.testing.assert_close(data['val'][0][0], image)  # evaluation is deterministic


def test_real_dataset_needs_its_folder():
    c = ds.validate_config({**_minimal(), 'dataset': 'fi', 'source': 'x.json'})
    with pytest.raises(ds.ConfigError, match=r'x\.json: dataset .fi. needs its folder: pass --data-root'):
        ds.build_splits(c)


def test_build_target_from_the_zoo_and_random():
    _fill_zoo(tags=('hp',))
    hp = timm.create_model('senti_resnet18.hp', pretrained=True)
    target = ds.build_target('resnet18', 'hp', num_classes=5)
    assert target.num_classes == 5
    torch.testing.assert_close(target.layer4[0].conv1.weight, hp.layer4[0].conv1.weight)
    assert [ds.init_weights('vgg16_bn', init) for init in ('imagenet', 'ho', 'random')] == [
        'vgg16_bn.tv_in1k', 'senti_vgg16_bn.ho', 'random']  # the paper's ImageNet start: torchvision's weights
    a, b = (ds.build_target('resnet18', 'random', 5, seed=3) for _ in range(2))
    torch.testing.assert_close(a.fc.weight, b.fc.weight)  # seeded


# ------------------------------------------------------------------------------------------ end to end

def test_tiny_ablation_end_to_end(tmp_path):
    _fill_zoo()
    paths = ds.run_experiment(TINY, out=tmp_path, progress=False)
    assert [p.name for p in paths] == ['none.json', 'feat_all.json', 'logits_hp.json']
    results = {r['run']: r for r in load_results(tmp_path)}
    terms = {}
    for name, r in results.items():
        assert r['synthetic'] is True and r['table'] == 3 and r['experiment'] == TINY
        assert r['init_weights'] == {'hp': 'senti_resnet18.hp', 'random': 'random'}[r['init']]
        assert r['samples'] == {'train': 16, 'val': 8, 'test': 8}
        assert len(r['history']['epochs']) == 2 and r['best_epoch'] in (1, 2)
        assert r['val'] == r['history']['epochs'][r['best_epoch'] - 1]['val']
        assert (8 * r['test']['accuracy']).is_integer() and 0 <= r['test']['accuracy'] <= 1
        terms[name] = set(r['history']['epochs'][0]['train']) - {'loss'}
    assert terms == {'none': {'task/target'},
                     'feat_all': {'task/target', 'task/st', 'task/ho', 'task/hp', 'feat/st', 'feat/ho', 'feat/hp'},
                     'logits_hp': {'task/target', 'task/hp', 'logits/hp'}}
    report = render(tmp_path).read_text()
    assert '## SYNTHETIC data' in report and '(paper)' not in report and '## Real data' not in report
    assert '| feat_all | feature reg: ST + HO + HP | ' in report


def test_reuse_trains_again_only_what_changed(tmp_path, monkeypatch):
    _fill_zoo()
    first = {p.name: json.loads(p.read_text()) for p in ds.run_experiment(TINY, out=tmp_path, progress=False)}
    zoo_sha = {tag: sha256_file(zoo_home() / f'senti_resnet18.{tag}' / 'model.safetensors')
               for tag in ('st', 'ho', 'hp')}
    assert first['none.json']['weights'] == {}  # a random start: no weight file
    assert first['feat_all.json']['weights'] == {'init': zoo_sha['hp'], **zoo_sha}
    assert first['logits_hp.json']['weights'] == {'init': zoo_sha['hp'], 'hp': zoo_sha['hp']}

    def no_training(*args, **kwargs):
        raise AssertionError('trained again')
    with monkeypatch.context() as m:
        m.setattr('sentizoo.engine.finetune', no_training)
        m.setattr('sentizoo.engine.amalgamate', no_training)
        again = ds.run_experiment(TINY, out=tmp_path, progress=False, reuse=True)
    assert [json.loads(p.read_text()) for p in again] == list(first.values())

    torch.manual_seed(1)  # new ST weights: only the run that learns from ST trains again
    save_pretrained(timm.create_model('senti_resnet18.st'), zoo_home() / 'senti_resnet18.st')
    third = {p.name: json.loads(p.read_text()) for p in ds.run_experiment(TINY, out=tmp_path, progress=False,
                                                                          reuse=True)}
    assert [n for n in third if third[n]['finished'] != first[n]['finished']] == ['feat_all.json']
    assert third['feat_all.json']['weights']['st'] != zoo_sha['st']

    changed = _write(tmp_path / 'changed.json', dict(json.loads((ds.CONFIG_DIR / f'{TINY}.json').read_text()),
                                                     name=TINY, train={'epochs': 1, 'lr': 0.001, 'seed': 0}))
    fourth = ds.run_experiment(changed, out=tmp_path, progress=False, reuse=True, runs=['none'])
    assert json.loads(fourth[0].read_text())['finished'] != first['none.json']['finished']  # another config


def test_missing_teachers_fail_before_any_training(tmp_path):
    _fill_zoo(tags=('hp',))  # the amalgamation runs also need st and ho
    with pytest.raises(WeightsNotFoundError, match='No weights found for senti_resnet18.ho'):
        ds.run_experiment(TINY, out=tmp_path / 'out', progress=False)
    assert not (tmp_path / 'out').exists()  # not even the baseline ran


def test_cli(tmp_path, capsys):
    assert ds.main(['--config', TINY, '--check']) == 0
    assert capsys.readouterr().out.endswith('synthetic_ablation_tiny.json: valid (none, feat_all, logits_hp)\n')
    bad = _write(tmp_path / 'bad.json', _minimal(arch='alexnet'))
    assert ds.main(['--config', str(bad), '--out', str(tmp_path / 'out')]) == 2
    assert "arch: one of" in capsys.readouterr().err
    assert ds.main(['--config', TINY, '--run', 'nope', '--out', str(tmp_path / 'out')]) == 2
    assert "no run(s) ['nope']; the config has ['none', 'feat_all', 'logits_hp']" in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_table1_configs_are_generated_from_the_papers_cells(capsys):
    assert not list(ds.CONFIG_DIR.glob('table1_*'))  # no file per cell: _paper.json on (arch, dataset, task)
    c = ds.load_config('table1_vgg16_bn_emotion6_ldl')
    assert (c['name'], c['source'], c['table']) == ('table1_vgg16_bn_emotion6_ldl', 'table1_vgg16_bn_emotion6_ldl', 1)
    assert (c['arch'], c['dataset'], c['task']) == ('vgg16_bn', 'emotion6', 'ldl')
    assert c['train']['lr'] == 1e-3 and c['train']['epochs'] == 30  # the paper's schedule: TrainOptions' defaults
    assert ds.main(['--config', 'table1_resnet50_fi_sll', '--check']) == 0
    assert 'valid (baseline, amalgamation)' in capsys.readouterr().out


def test_imagenet_start_is_the_librarys(tmp_path, monkeypatch):
    """--init imagenet has one code path: a downstream run's target is create_target's (the CLI baseline's), head
    included, and pre-training's backbone gets the same weights."""
    from safetensors.torch import save_file

    from helpers import write_hf_cache
    from sentizoo.amalgamation import create_target
    from training.pretrain import init_backbone

    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hf'))  # as a user's environment sets both
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
    torch.manual_seed(0)
    imagenet = timm.create_model('resnet18').state_dict()
    save_file(imagenet, tmp_path / 'model.safetensors')
    write_hf_cache(tmp_path / 'hf', 'timm/resnet18.tv_in1k', {'model.safetensors': tmp_path / 'model.safetensors'})
    target = ds.build_target('resnet18', 'imagenet', 5, seed=3)
    torch.manual_seed(3)
    library = create_target('resnet18', 5, 'imagenet').state_dict()
    assert all(torch.equal(v, library[k]) for k, v in target.state_dict().items())
    backbone = timm.create_model('senti_resnet18', num_classes=0)
    assert init_backbone(backbone, 'resnet18', 'imagenet') == 'ImageNet (torchvision weights, timm/resnet18.tv_in1k)'
    assert all(torch.equal(v, imagenet[k]) and torch.equal(v, library[k]) for k, v in backbone.state_dict().items())
