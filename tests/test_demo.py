"""training.demo in its reduced mode (--quick), end to end: the synthetic study's runner at the demo's size (the
printed tables, the zoo it writes, which loads through timm and SENTIZOO_HOME, study.md and study.json), and the
demo's settings against the study's."""
import json
import os
import types

import pytest
import timm
import torch
from safetensors.torch import load_file

import sentizoo  # noqa: F401  (registers senti_*)
from sentizoo.models import BACKBONE_TAGS
from training import demo, study, study_steps


def test_quick_demo_is_the_study_runner_end_to_end(tmp_path, capsys, isolated_zoo):
    out = tmp_path / 'demo'
    record = demo.run_demo(out, quick=True, progress=False)
    printed = capsys.readouterr().out

    # the study's phases without the probes, its tables and its report files
    assert printed.startswith('Sample images of the synthetic affect world (seed 7)') and 'SYNTHETIC: ' in printed
    assert list(record['seconds']) == ['pretrain', 'pretext', 'export', 'downstream', 'report']
    assert '[5/5] Drawing the figures' in printed and record['probes'] is None
    # by default the three models pre-train at once on the CPU, each reported as it finishes
    assert record['jobs'] == study_steps.parallel_jobs(None, 3) and record['jobs'] > 1
    assert all(f'      {tag}: done after ' in printed for tag in BACKBONE_TAGS) and '(3/3)' in printed
    assert json.loads((out / 'study.json').read_text())['downstream'] == record['downstream']
    md = (out / 'study.md').read_text()
    assert md.startswith('# Synthetic affect study (SYNTHETIC)') and 'Linear probes' not in md
    assert 'Figures: downstream.png, downstream_curves.png.' in md
    for png in ('synthetic_samples.png', 'downstream.png', 'downstream_curves.png'):
        assert (out / png).read_bytes()[:4] == b'\x89PNG'

    # each pretext task beside its reference, and the learning check (nothing is learned in 2 steps)
    assert [(s['task'], s['reference_name']) for tag in BACKBONE_TAGS for s in record['pretext'][tag]] == [
        ('colorization', 'training-set mean ab'), ('super_resolution', "the input's mean colour"),
        ('scene', 'chance (ln 12)'), ('jigsaw', 'chance (ln 1000)'), ('anp', 'chance (ln 36)'),
        ('captioning', 'unigram model of the captions')]
    assert 'Every pretext task at most 0.85x its reference (learned): ' in printed

    # one seed of the three runs, each its own table row, the full method in the amalgamation
    runs = record['downstream']['sll_512']
    assert list(runs) == ['random_init', 'hp_finetune', 'amalgamation']
    assert '**sll_512** (test accuracy, higher is better, one seed; SYNTHETIC)' in printed
    for name, cell in runs.items():
        assert f'| {name} | {cell["values"][0]:.4f} | {cell["best_epochs"][0]} |' in printed
    result = json.loads((out / 'results' / 'study_sll_512_seed7' / 'amalgamation.json').read_text())
    assert result['synthetic'] and len(result['history']['epochs']) == 2
    assert {'feat/st', 'feat/ho', 'feat/hp', 'logits/hp', 'task/st'} <= set(result['history']['epochs'][0]['train'])

    # the zoo: exported folders of the demo's timm architecture (outside the zoo's five) that load through timm's
    # local-dir:, as the last printed line says, weights unchanged
    zoo = out / 'zoo'
    assert os.environ['SENTIZOO_HOME'] == str(isolated_zoo)  # restored after the demo
    assert f"timm.create_model('local-dir:{zoo.resolve()}/senti_test_resnet.hp', pretrained=True)" in printed
    for tag in BACKBONE_TAGS:
        folder = zoo / f'senti_test_resnet.{tag}'
        assert f'senti_test_resnet.{tag}: {folder} (sha256 ' in printed
        assert {'model.safetensors', 'config.json', 'README.md'} <= {p.name for p in folder.iterdir()}
        model = timm.create_model(f'local-dir:{folder}', pretrained=True)
        saved = load_file(folder / 'model.safetensors')
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, saved[name], rtol=0, atol=0)
    assert 'to publish it' not in printed  # export's line for maintainers is not the demo's


def test_learning_line_names_every_task_above_the_ratio():
    score = lambda task, value, reference: types.SimpleNamespace(task=task, ratio=value / reference)  # noqa: E731
    pretext = {'st': [score('colorization', 0.87, 1.0), score('super_resolution', 0.5, 1.0)],
               'hp': [score('anp', 3.28, 3.584), score('captioning', 0.65, 3.04)]}
    assert study.learning_line(pretext, 0.85) == ('Every pretext task at most 0.85x its reference (learned): '
                                                  'NO (ST colorization 0.87x, HP anp 0.92x)')
    assert study.learning_line(pretext, 0.95).endswith('(learned): yes')


def test_demo_settings_are_a_study_at_a_smaller_size():
    full, small = study.load_study_config(), demo.demo_config()
    assert set(small) <= set(full)  # no setting the study lacks
    assert small['arch'] == 'test_resnet' and demo.demo_config(arch='resnet18')['arch'] == full['arch']
    assert small['downstream']['seeds'] == [7] and small['pretrain']['seed'] == 7  # a world no study uses
    assert 7 not in full['downstream']['seeds'] and full['pretrain']['seed'] != 7
    assert small['downstream']['experiments']['sll_512']['runs'] == {
        name: run for name, run in full['downstream']['experiments']['sll_512']['runs'].items()
        if name != 'frozen_teachers'}
    for tag in BACKBONE_TAGS:  # the study's batch, epochs and start, with fewer steps, every image seen once
        ours, study_settings = ({k: v for k, v in dict(c['pretrain']['common'], **c['pretrain'][tag]).items()
                                 if k not in ('steps_per_epoch', 'max_samples', 'lr', 'lr_step', 'channels_last')}
                                for c in (small, full))
        assert ours == study_settings
        s = dict(small['pretrain']['common'], **small['pretrain'][tag])
        assert s['steps_per_epoch'] < full['pretrain'][tag]['steps_per_epoch']
        assert s['max_samples'] == s['epochs'] * s['steps_per_epoch'] * s['batch_size']
    assert demo.demo_config(seed=3)['downstream']['seeds'] == [3] and demo.demo_config(seed=3)['pretrain']['seed'] == 3


def test_a_bad_arch_fails_in_one_line_before_anything_is_written(tmp_path, capsys):
    """Before, ``--arch foo`` drew the sample sheet, then died in pre-training with a traceback."""
    with pytest.raises(SystemExit) as info:
        demo.main(['--arch', 'foo', '--quick', '--out', str(tmp_path / 'demo'), '--no-progress'])
    assert info.value.code == 2 and "--arch 'foo': expected a timm architecture name" in capsys.readouterr().err
    assert not (tmp_path / 'demo').exists()
