"""training.demo in its reduced mode (--quick), end to end: the printed table, the zoo it writes (files that
load through timm and SENTIZOO_HOME), the plots and the phase timings."""
import json
import os

import timm
import torch
from safetensors.torch import load_file

import sentizoo  # noqa: F401  (registers senti_*)
from sentizoo.models import BACKBONE_TAGS
from training import demo


def test_quick_demo_end_to_end(tmp_path, capsys, monkeypatch, isolated_zoo):
    out = tmp_path / 'demo'
    summary = demo.run_demo(out, quick=True, progress=False)
    printed = capsys.readouterr().out

    # the side-by-side table, labelled synthetic, with the three rows
    assert 'SYNTHETIC results (resnet18, SLL' in printed and summary['table'] in printed
    rows = summary['table'].splitlines()[2:]
    assert [row.split(' | ')[0] for row in rows] == ['| baseline', '| hp_finetune', '| amalgamation']
    assert [(r['mode'], r['init']) for r in summary['results']] == [('finetune', 'random'), ('finetune', 'hp'),
                                                                    ('amalgamate', 'hp')]
    assert all(r['synthetic'] and len(r['history']['epochs']) == 2 for r in summary['results'])
    terms = set(summary['results'][2]['history']['epochs'][0]['train'])
    assert {'feat/st', 'feat/ho', 'feat/hp', 'logits/hp', 'task/st'} <= terms  # the full method ran

    # each pretext task measured on held-out images, beside its reference
    assert "ST on held-out images: colorization " in printed and "(training-set mean ab " in printed
    assert "super_resolution " in printed and "(the input's mean colour " in printed
    assert 'HO on held-out images: scene ' in printed and '(chance (ln 12) 2.485; accuracy ' in printed
    assert '(chance (ln 1000) 6.908; accuracy ' in printed and '(chance (ln 36) 3.584; accuracy ' in printed
    assert 'captioning ' in printed and '(unigram model of the captions ' in printed

    # the zoo: exported files that load through SENTIZOO_HOME, weights unchanged
    zoo = out / 'zoo'
    assert os.environ['SENTIZOO_HOME'] == str(isolated_zoo)  # restored after the demo
    monkeypatch.setenv('SENTIZOO_HOME', str(zoo))
    for tag in BACKBONE_TAGS:
        folder = zoo / f'senti_resnet18.{tag}'
        assert {'model.safetensors', 'config.json', 'README.md'} <= {p.name for p in folder.iterdir()}
        assert json.loads((folder / 'config.json').read_text())['architecture'] == 'resnet18'
        model = timm.create_model(f'senti_resnet18.{tag}', pretrained=True)
        saved = load_file(folder / 'model.safetensors')
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, saved[name], rtol=0, atol=0)

    # the plot, the sample sheet, the report and the timings
    assert (out / 'report' / 'demo.png').read_bytes()[:4] == b'\x89PNG'
    assert (out / 'synthetic_samples.png').read_bytes()[:4] == b'\x89PNG'
    assert '### demo (SYNTHETIC)' in (out / 'report' / 'report.md').read_text()
    timings = json.loads((out / 'timings.json').read_text())
    assert list(timings['seconds']) == ['data', 'pretrain', 'export', 'load', 'finetune', 'report']
    assert timings['quick'] is True and timings['total_seconds'] > 0
    assert printed.rstrip().splitlines()[-1].startswith('Phase times: data ')


def test_demo_pretrains_with_each_models_study_settings_and_fewer_steps():
    from training.study import load_study_config
    study = load_study_config()['pretrain']
    for tag in BACKBONE_TAGS:
        settings = demo.pretrain_settings(tag)
        wanted = dict(study['common'], **study[tag])
        wanted['steps_per_epoch'] = demo.PRETRAIN_STEPS[tag]
        assert {k: settings[k] for k in wanted if k != 'max_samples'} == {k: v for k, v in wanted.items()
                                                                           if k != 'max_samples'}
        assert settings['max_samples'] == settings['epochs'] * settings['steps_per_epoch'] * settings['batch_size']
