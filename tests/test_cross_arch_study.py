"""The cross-architecture study (``python -m training.study cross-arch``): its settings (fresh seeds, sizes), the
downstream configs that teach another architecture, the analysis on hand-made predictions, and ``--quick`` end to
end on a random teacher zoo, resumed and re-analysed from its saved predictions."""
import json

import numpy as np
import pytest
import timm
import torch

from helpers import assert_edit_refused
from sentizoo.saving import save_pretrained
from training import confirm_protocol, cross_arch_study as xa, study
from training.downstream import predictions_path, save_predictions, validate_config
from training.paired_stats import Discordant, hierarchical_bootstrap

# ------------------------------------------------------------------------------------------------ settings


def test_the_settings_use_fresh_seeds_two_other_families_and_large_test_sets():
    config = xa.load_cross_arch()
    earlier = confirm_protocol.earlier_seeds(exclude=xa.CROSS_ARCH)
    confirm = confirm_protocol.protocol_seeds(confirm_protocol.load_protocol())
    assert {0, 1, 2, 100} <= set(earlier) and 501 in confirm  # the other studies' seeds are found
    assert not set(config['seeds']) & (set(earlier) | set(confirm)) and len(set(config['seeds'])) >= 3
    assert config['teachers'] == 'resnet18' and {'convnext_atto', 'vit_tiny_patch16_224'} <= set(config['targets'])
    assert config['downstream']['data'] == {'n_train': 512, 'n_val': 500, 'n_test': 5000}
    assert {arm['init'] for arm in config['arms'].values()} == {'random'}
    assert xa.load_cross_arch(quick=True)['comparison'] == config['comparison']


@pytest.mark.parametrize('edit, problem', [
    (lambda c: c.update(seeds=[601, 602, 501]), 'seeds already used by other configs'),
    (lambda c: c.update(seeds=[601, 602]), 'at least 3 distinct seeds'),
    (lambda c: c['downstream']['data'].update(n_test=1000), 'n_test: at least 5000'),
    (lambda c: c['targets'].pop('convnext_atto'), 'at least 2 architectures'),
], ids=['confirm-seed', 'two-seeds', 'small-test-set', 'one-target'])
def test_weakened_settings_are_refused_naming_the_problem(tmp_path, edit, problem):
    assert_edit_refused(tmp_path, xa.CROSS_ARCH, edit, xa.load_cross_arch, xa.CrossArchError, problem)


def test_a_cell_is_a_downstream_config_that_teaches_another_architecture():
    config = xa.load_cross_arch()
    c = validate_config(xa.cell_config(config, 'vit_tiny_patch16_224', 602))
    assert (c['arch'], c['teachers'], c['model_kwargs']) == ('vit_tiny_patch16_224', 'resnet18', {'img_size': 64})
    assert c['data']['seed'] == c['train']['seed'] == 602 and c['predictions'] and set(c['runs']) == set(config['arms'])
    plain = validate_config({'arch': 'resnet18', 'dataset': 'synthetic', 'task': 'sll',
                             'runs': {'a': {'mode': 'finetune', 'init': 'random'}}})
    assert not {'teachers', 'model_kwargs'} & set(plain)  # earlier result files keep matching their configs
    bad = dict(c, teachers='convnext_atto', runs={'a': {'mode': 'amalgamate', 'init': 'hp'}})
    with pytest.raises(ValueError) as e:
        validate_config(bad)
    assert 'teachers: one of' in str(e.value) and "runs.a.init: one of ('random', 'imagenet')" in str(e.value)
    with pytest.raises(ValueError, match='needs "teachers"'):
        validate_config(dict(plain, arch='convnext_atto'))
    own = validate_config(dict(plain, arch='test_resnet', teachers='test_resnet',  # its own exported models
                               runs={'a': {'mode': 'amalgamate', 'init': 'hp'}}))
    assert own['teachers'] == own['arch'] == 'test_resnet' and own['runs']['a']['init'] == 'hp'


# ------------------------------------------------------------------------------ the analysis, by hand

def _write_run(path, correct, wall):
    """A result file and its predictions: 10 images of class 0, predicted 0 where ``correct``, else 1."""
    correct = np.array(correct, bool)
    logits = torch.zeros(len(correct), 8)
    logits[torch.arange(len(correct)), torch.from_numpy((~correct).astype(np.int64))] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    save_predictions(predictions_path(path), [(logits, torch.zeros(len(correct), dtype=torch.long))])
    path.write_text(json.dumps({'test': {'accuracy': float(correct.mean())}, 'wall_seconds': wall}))


def test_analysis_numbers_by_hand(tmp_path):
    config = xa.load_cross_arch()
    (tmp_path / xa.SETTINGS_NAME).write_text(json.dumps(config))
    results = tmp_path / 'results'
    # seed 601: amalgamation right on images 0-6, alone on 0-1 -> 5 only amalgamation, 0 only alone
    _write_run(results / 'convnext_atto_seed601' / 'amalgamation.json', [1] * 7 + [0] * 3, 30.0)
    _write_run(results / 'convnext_atto_seed601' / 'alone.json', [1] * 2 + [0] * 8, 10.0)
    # seed 602: amalgamation right on 0-3, alone on 0-4 -> 0 only amalgamation, 1 only alone
    _write_run(results / 'convnext_atto_seed602' / 'amalgamation.json', [1] * 4 + [0] * 6, 31.0)
    _write_run(results / 'convnext_atto_seed602' / 'alone.json', [1] * 5 + [0] * 5, 11.0)
    record = xa.analyse(tmp_path)
    convnext, vit = record['targets']
    first, second = convnext['cells']
    assert (first['a_only'], first['b_only'], first['gain'], first['mcnemar_p']) == (5, 0, 0.5, 2 / 32)
    assert (second['a_only'], second['b_only'], second['gain'], second['mcnemar_p']) == (0, 1, -0.1, 1.0)
    assert (first['amalgamation'], first['alone']) == (0.7, 0.2)
    assert convnext['mean_gain'] == pytest.approx(0.2) and convnext['signs'] == {'positive': 1, 'zero': 0,
                                                                                  'negative': 1}
    b = config['analysis']['bootstrap']
    expected = hierarchical_bootstrap({'convnext_atto': [Discordant(5, 0, 10), Discordant(0, 1, 10)]},
                                      b['replicates'], b['seed'], b['interval'])
    assert (convnext['low'], convnext['high']) == (expected.low, expected.high)
    assert convnext['verdict'] == 'incomplete (2 of 3 seeds)' and convnext['wall_seconds'] == {
        'amalgamation': 61.0, 'alone': 21.0}
    assert vit['found'] == 0 and 'mean_gain' not in vit and record['wall_seconds'] == 82.0
    report = (tmp_path / 'cross_arch.md').read_text()
    assert '| convnext_atto | 2 of 3 | 0.3500 | 0.5500 | +20.00 |' in report
    assert '| convnext_atto | 601 | 0.2000 | 0.7000 | +50.00 | 5 | 0 | 0.0625 | 10 | 30 |' in report


# ---------------------------------------------------------------------------------------- end to end, --quick

@pytest.fixture(scope='module')
def teacher_zoo(tmp_path_factory):
    """Random ResNet-18 ST, HO and HP in the SENTIZOO_HOME layout: what another study's zoo folder holds."""
    folder = tmp_path_factory.mktemp('teachers')
    for seed, tag in enumerate(('st', 'ho', 'hp')):
        torch.manual_seed(seed)
        save_pretrained(timm.create_model(f'senti_resnet18.{tag}', num_classes=0), folder / f'senti_resnet18.{tag}',
                        verbose=False)
    return folder


@pytest.mark.slow
def test_quick_runs_both_targets_resumes_and_reanalyses(tmp_path, teacher_zoo, capsys, one_thread):
    out = tmp_path / 'xarch'
    args = ['cross-arch', '--teachers', str(teacher_zoo), '--out', str(out), '--quick', '--no-progress']
    assert study.main(args) == 0
    quick = xa.load_cross_arch(quick=True)
    results = sorted((out / 'results').glob('*/*.json'))
    assert [p.relative_to(out / 'results').as_posix() for p in results] == [
        f'{t}_seed601/{arm}.json' for t in sorted(quick['targets']) for arm in ('alone', 'amalgamation')]
    for path in results:
        result = json.loads(path.read_text())
        saved = np.load(predictions_path(path))
        assert saved['prediction'].shape == (24,) and (saved['prediction'] == saved['target']).mean() == \
            pytest.approx(result['test']['accuracy'])
    amalgamated = json.loads((out / 'results' / 'convnext_atto_seed601' / 'amalgamation.json').read_text())
    assert set(amalgamated['weights']) == {'st', 'ho', 'hp'}  # the zoo's teachers, by sha256
    record = json.loads((out / 'cross_arch.json').read_text())
    assert all(t['found'] == 1 and t['verdict'] in ('supported', 'contradicted', 'not supported')
               for t in record['targets'])
    assert 'test accuracy' in capsys.readouterr().out

    before = {p: p.stat().st_mtime_ns for p in results}
    assert study.main(args) == 0  # a second call trains nothing
    assert {p: p.stat().st_mtime_ns for p in results} == before
    assert json.loads((out / 'cross_arch.json').read_text()) == record

    report = (out / 'cross_arch.md').read_text()
    (out / 'cross_arch.md').unlink()
    capsys.readouterr()
    assert study.main(['analyse', str(out)]) == 0  # from the saved predictions alone
    assert (out / 'cross_arch.md').read_text() == report and capsys.readouterr().out.startswith('# Cross-arch')


def test_a_teacher_zoo_without_the_three_teachers_is_one_clear_error(tmp_path, capsys):
    (tmp_path / 'senti_resnet18.st').mkdir()
    assert study.main(['cross-arch', '--teachers', str(tmp_path), '--out', str(tmp_path / 'o'), '--quick']) == 2
    err = capsys.readouterr().err
    assert 'senti_resnet18.ho/model.safetensors' in err and str(tmp_path) in err and len(err.splitlines()) == 1
