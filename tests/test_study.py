"""training.study --quick end to end (files written, tables parsed back) and its settings file."""
import json
import re

import pytest
import timm
import torch

from training import study, study_steps


def test_settings_merge_quick_and_full_over_the_defaults():
    default = study.load_study_config()
    assert default['arch'] == 'resnet18' and len(default['downstream']['seeds']) >= 3
    assert set(default['downstream']['experiments']) == {'sll_512'}
    runs = default['downstream']['experiments']['sll_512']['runs']
    assert {k: (v['mode'], v['init']) for k, v in runs.items()} == {
        'random_init': ('finetune', 'random'), 'hp_finetune': ('finetune', 'hp'),
        'amalgamation': ('amalgamate', 'hp'), 'frozen_teachers': ('amalgamate', 'hp')}
    full = study.load_study_config(full=True)
    assert {'sll_512', 'sll_2048', 'ablations_512', 'ldl_512'} == set(full['downstream']['experiments'])
    quick = study.load_study_config(quick=True)
    assert quick['image_size'] == 32 and quick['pretrain']['common']['lr'] == default['pretrain']['common']['lr']
    assert quick['downstream']['experiments'] == default['downstream']['experiments']  # only the sizes shrink
    assert 'quick' not in quick and 'full' not in quick and quick['size'] == 'quick'
    both = study.load_study_config(quick=True, full=True)
    assert both['downstream']['experiments'] == full['downstream']['experiments'] and both['size'] == 'quick+full'
    assert both['downstream']['max_data'] == quick['downstream']['max_data']


def _table_rows(markdown: str, header_start: str):
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        rows.append([cell.strip() for cell in line.strip('|').split('|')])
    return rows


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path, capsys, monkeypatch, isolated_zoo):
    """``--quick --full``: every experiment of the full study (the ablations and LDL too) at the smallest sizes."""
    out = tmp_path / 'study'
    record = study.run_study(out, quick=True, full=True, progress=False, jobs=1)
    printed = capsys.readouterr().out
    assert printed.startswith('SYNTHETIC: ') and 'Settings (' in printed and '[6/6] Drawing the figures' in printed

    files = {p.name for p in out.iterdir()}
    assert {'study.md', 'study.json', 'probes.png', 'downstream.png', 'downstream_curves.png', 'zoo'} <= files
    for png in ('probes.png', 'downstream.png', 'downstream_curves.png'):
        assert (out / png).read_bytes()[:4] == b'\x89PNG'
    saved = json.loads((out / 'study.json').read_text())
    assert saved['synthetic'] is True and list(saved['seconds']) == ['pretrain', 'pretext', 'export', 'probes',
                                                                    'downstream', 'report']
    assert saved['device'] == 'cpu' and set(saved['versions']) == {'python', 'torch', 'torchvision', 'timm', 'sentizoo'}

    # pretext: one row per task with its reference, parsed back from study.md
    md = (out / 'study.md').read_text()
    assert md.startswith('# Synthetic affect study (SYNTHETIC)')
    pretext = _table_rows(md, '| model | task |')
    assert [(r[0], r[1]) for r in pretext] == [('ST', 'colorization'), ('ST', 'super_resolution'), ('HO', 'scene'),
                                               ('HO', 'jigsaw'), ('HP', 'anp'), ('HP', 'captioning')]
    for row, score in zip(pretext, [s for tag in ('st', 'ho', 'hp') for s in saved['pretext'][tag]]):
        assert float(row[3]) == pytest.approx(score['value'], rel=1e-3)
        assert float(row[7].split()[0]) == pytest.approx(score['extra']['stored_statistics'], rel=1e-3)
    assert saved['pretext']['ho'][0]['reference'] == pytest.approx(2.4849, abs=1e-4)  # ln 12 scenes

    # probes: the four backbones, the true cues, ST+HO+HP (emotion only) and chance
    probes = _table_rows(md, '| features |')
    assert [r[0] for r in probes] == ['random', 'ST', 'HO', 'HP', 'true cues', 'ST+HO+HP', 'chance']
    joint = record['probes']['ST+HO+HP']['emotion']
    assert probes[5][1:6] == ['—'] * 5 and probes[5][6] == f'{joint:.3f}'  # as printed (0.1875 -> 0.188)
    assert float(probes[4][4]) > 0.9  # the true scene probes to ~1

    # downstream: mean ± std over the two quick seeds, equal to the result files, for every experiment
    methods = ['random_init', 'hp_finetune', 'amalgamation', 'frozen_teachers']
    expected = {'sll_512': methods, 'sll_2048': methods, 'ldl_512': methods[:3],
                'ablations_512': ['features_only', 'logits_only', 'no_teacher_task_loss']}
    assert {k: list(v) for k, v in record['downstream'].items()} == expected
    for experiment, runs in expected.items():
        rows = _table_rows(md.split(f'**{experiment}**', 1)[1], '| method |')
        assert [r[0] for r in rows] == runs
        for row in rows:
            result = [json.loads((out / 'results' / f'study_{experiment}_seed{s}' / f'{row[0]}.json').read_text())
                      for s in (0, 1)]
            assert result[0]['config']['data']['n_train'] == 16  # --quick caps every experiment's data
            values = [r['test'][r['primary_metric']] for r in result]
            mean, std = (float(x) for x in re.match(r'([\d.]+) ± ([\d.]+)', row[1]).groups())
            assert mean == pytest.approx(sum(values) / 2, abs=1e-4)  # printed with 4 decimals
            assert std == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-4)
    assert record['downstream']['ldl_512']['amalgamation']['metric'] == 'kl' and '(test kl, lower is better' in md

    # the same measurement from the command line, on one checkpoint
    from training import pretext_eval
    assert pretext_eval.main([str(out / 'pretrain' / 'ho' / 'final.pt'), '--samples', '4', '--batch-size', '4']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('SYNTHETIC: ') and [r.split(' | ')[1] for r in lines[4:]] == ['scene', 'jigsaw']
    assert pretext_eval.main([str(tmp_path / 'missing.pt')]) == 2 and 'missing.pt' in capsys.readouterr().err

    # the zoo loads like published weights (--quick's test_resnet, outside the zoo's five: timm's local-dir:)
    monkeypatch.setenv('SENTIZOO_HOME', str(out / 'zoo'))
    assert timm.create_model(f'local-dir:{out / "zoo" / "senti_test_resnet.ho"}', pretrained=True).num_classes == 0

    # run again on the same --out: every model and every downstream run is reused, nothing trains
    def no_training(*args, **kwargs):
        raise AssertionError('trained again')
    monkeypatch.setattr('sentizoo.engine.finetune', no_training)
    monkeypatch.setattr('sentizoo.engine.amalgamate', no_training)
    again = study.run_study(out, quick=True, full=True, progress=False, jobs=1)
    assert again['downstream'] == record['downstream'] and again['pretext'] == record['pretext']


def test_probes_run_on_the_device_the_other_phases_use(monkeypatch):
    """No ``--device``: the probes' features are extracted on this process's GPU, as pre-training and the
    downstream runs use it, not always on the CPU."""
    seen = []

    class Stop(Exception):
        pass

    def extract_features(model, dataset, *, device):
        seen.append(torch.device(device))
        raise Stop
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda index: None)
    monkeypatch.setattr(timm, 'create_model', lambda *args, **kwargs: torch.nn.Identity())
    monkeypatch.setattr('training.probes.extract_features', extract_features)
    with pytest.raises(Stop):
        study.run_probes('resnet18', 32, {'n_train': 4, 'n_test': 4, 'seed': 0})
    assert seen == [torch.device('cuda', 0)]


def test_cli_help_and_bad_settings_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        study.main(['--help'])
    assert e.value.code == 0 and '--quick' in capsys.readouterr().out
    bad = tmp_path / 'bad.json'
    bad.write_text('{not json')
    assert study.main(['--config', str(bad), '--out', str(tmp_path / 'out')]) == 2
    assert f'{bad}' in capsys.readouterr().err and not (tmp_path / 'out').exists()


def test_a_stopped_study_reuses_a_finished_model_only_with_the_same_settings(tmp_path):
    settings = {'init': 'random', 'image_size': 32, 'batch_size': 2, 'epochs': 1, 'steps_per_epoch': 1,
                'max_samples': 4}
    final = study.pretrain_model('st', 'resnet18', tmp_path, settings, seed=0, progress=False, resume='auto')
    log = (tmp_path / 'log.csv').read_text()
    again = study.pretrain_model('st', 'resnet18', tmp_path, settings, seed=0, progress=False, resume='auto')
    assert again == final and (tmp_path / 'log.csv').read_text() == log  # nothing trained again (times differ)
    with pytest.raises(ValueError, match=r'other settings \(lr, steps_per_epoch\)'):
        study.pretrain_model('st', 'resnet18', tmp_path, dict(settings, lr=0.1, steps_per_epoch=2), seed=0,
                             progress=False, resume='auto')


def test_a_checkpoint_of_another_format_stops_the_study_with_one_line(tmp_path, capsys):
    from sentizoo import checkpoint
    last = tmp_path / 'pretrain' / 'st' / 'last.pt'
    last.parent.mkdir(parents=True)
    torch.save({'format': 'sentizoo.pretrain/1', 'config': {}, 'model': {}}, last)
    assert study.main(['--quick', '--out', str(tmp_path), '--no-progress']) == 2
    err = capsys.readouterr().err
    assert err.startswith('python -m training.study: error: ') and err.count('\n') == 1
    assert f'{last} is not a sentizoo training checkpoint' in err and 'Or pass another --out.' in err
    assert checkpoint.FORMAT in err


def test_a_checkpoint_of_other_settings_is_refused_before_any_model_trains(tmp_path, capsys):
    """The resume check of every model comes first: HP's stale checkpoint stops the study before ST trains."""
    last = tmp_path / 'pretrain' / 'hp' / 'last.pt'
    last.parent.mkdir(parents=True)
    torch.save({'format': 'sentizoo.pretrain/1', 'config': {}, 'model': {}}, last)
    assert study.main(['--quick', '--out', str(tmp_path), '--no-progress', '--jobs', '1']) == 2
    assert f'{last} is not a sentizoo training checkpoint' in capsys.readouterr().err
    assert not (tmp_path / 'pretrain' / 'st').exists() and not (tmp_path / 'pretrain' / 'ho').exists()


def test_parallel_jobs_default_to_one_more_process_than_cpu_threads(capsys):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert study_steps.parallel_jobs(None, 3, 'cpu') == 3 and study_steps.parallel_jobs(None, 9, 'cpu') == 3
        torch.set_num_threads(8)
        assert study_steps.parallel_jobs(None, 3, 'cpu') == 3  # never more processes than models
        torch.set_num_threads(1)
        assert study_steps.parallel_jobs(None, 3, 'cpu') == 1  # --threads 1: one core, one model at a time
    finally:
        torch.set_num_threads(threads)
    assert study_steps.parallel_jobs(None, 3, 'cuda') == 1  # one GPU: one model at a time
    assert study_steps.parallel_jobs(2, 9, 'cpu') == 2 and study_steps.parallel_jobs(5, 3, 'cuda') == 3
    with pytest.raises(ValueError, match='at least 1'):
        study_steps.parallel_jobs(0, 3)
    with pytest.raises(SystemExit) as e:
        study.main(['--quick', '--jobs', '0'])
    assert e.value.code == 2 and '--jobs: must be at least 1, got 0' in capsys.readouterr().err


def test_models_pretrained_in_parallel_equal_those_pretrained_one_after_the_other(tmp_path, capsys):
    from sentizoo import checkpoint
    settings = {'init': 'random', 'image_size': 32, 'batch_size': 2, 'epochs': 1, 'steps_per_epoch': 2,
                'max_samples': 4}

    def runs(folder):
        return {tag: dict(tag=tag, arch='test_resnet', out=folder / tag, settings=settings, seed=3, progress=False)
                for tag in ('st', 'hp')}

    threads = torch.get_num_threads()
    parallel = study_steps.pretrain_models(runs(tmp_path / 'parallel'), jobs=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and {line.split(':')[0].strip() for line in lines} == {'st', 'hp'}
    assert lines[-1].endswith('(2/2)')
    torch.set_num_threads(max(1, threads // 2))  # the share of each worker
    try:
        sequential = study_steps.pretrain_models(runs(tmp_path / 'sequential'), jobs=1)
    finally:
        torch.set_num_threads(threads)
    assert list(parallel) == list(sequential) == ['st', 'hp']
    for tag in parallel:
        a, b = checkpoint.load(parallel[tag])['model'], checkpoint.load(sequential[tag])['model']
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), tag


def test_the_parallel_progress_counts_the_steps_in_every_log_csv(tmp_path, capsys):
    import types
    folders = [tmp_path / 'st', tmp_path / 'ho', tmp_path / 'hp']
    configs = [types.SimpleNamespace(out_dir=str(f), epochs=2, steps_per_epoch=10) for f in folders]
    folders[0].mkdir()
    (folders[0] / 'log.csv').write_text('step,epoch,loss\n1,1,0.5\n2,1,0.4\n3,1,0.3\n')
    folders[1].mkdir()
    (folders[1] / 'log.csv').write_text('step,epoch,loss\n1,1,0.5\n2,1,0.4\n13')  # a row still being written
    with study_steps._StepsBar(configs, True, 'pre-training') as bar:  # stderr is no terminal here: lines
        assert bar.total == 60 and bar.mode == 'lines'
        bar.refresh()  # 3 + 2 + 0 (no log.csv yet) of 60 steps
        assert bar.steps == 5 and capsys.readouterr().err == ''
        (folders[2] / 'log.csv').parent.mkdir()
        (folders[2] / 'log.csv').write_text('step,epoch,loss\n' + ''.join(f'{i},1,0.1\n' for i in range(1, 8)))
        bar.refresh()  # 12 of 60: past a tenth, one line
        bar.refresh()
        assert bar.steps == 12 and capsys.readouterr().err == 'pre-training  step 12/60\n'
    unknown = [types.SimpleNamespace(out_dir=str(folders[0]), epochs=2, steps_per_epoch=None)]
    assert study_steps._StepsBar(unknown, False, 'x').total is None
