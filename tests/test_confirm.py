"""The confirmatory study: its protocol (fresh seeds, sizes, decision rule), the paired statistics against known
answers and scipy, and ``confirm --quick`` end to end with ``analyse`` redoing its tables from the predictions."""
import json

import numpy as np
import pytest
import scipy.stats
import torch

from helpers import assert_edit_refused
from training import confirm, confirm_protocol, pretext_eval
from training.downstream import predictions_path
from training.paired_stats import Discordant, discordant, hierarchical_bootstrap, mcnemar_exact, sign_counts

# ------------------------------------------------------------------------------------------------ protocol


def test_the_protocol_fixes_fresh_seeds_the_sizes_and_the_decision_rule():
    protocol = confirm_protocol.load_protocol()
    seeds = confirm_protocol.protocol_seeds(protocol)
    earlier = confirm_protocol.earlier_seeds()
    assert {0, 1, 2, 100, 200} <= set(earlier)  # the exploratory study's and the demo's seeds are found
    assert not set(seeds) & set(earlier) and len(set(seeds)) == len(seeds)
    assert len(protocol['teacher_sets']) >= 3 and len(protocol['downstream']['test_seeds']) >= 5
    assert protocol['downstream']['development_seed'] not in protocol['downstream']['test_seeds']
    experiments = protocol['downstream']['experiments']
    assert all(spec['data']['n_test'] >= 5000 for spec in experiments.values())
    assert experiments['sll_512']['data']['n_train'] == 512 and experiments['sll_2048']['data']['n_train'] == 2048
    assert protocol['hypotheses']['primary'] == {'experiment': 'sll_512', 'arm': 'amalgamation',
                                                 'versus': 'hp_finetune', 'metric': 'accuracy'}
    assert {'experiment': 'sll_512', 'arm': 'amalgamation', 'versus': 'random_teachers', 'metric': 'accuracy'} in \
        protocol['hypotheses']['secondary']
    assert 'interval' in protocol['analysis']['decision_rule'] and protocol['analysis']['bootstrap']['interval'] == 0.95
    assert protocol['downstream']['arms']['random_teachers']['teachers'] == 'random'
    quick = confirm_protocol.load_protocol(quick=True)
    assert len(quick['teacher_sets']) == 2 and quick['downstream']['max_data']['n_test'] == 24
    assert quick['hypotheses'] == protocol['hypotheses']  # --quick shrinks the sizes, never the questions


@pytest.mark.parametrize('edit, problem', [
    (lambda p: p['downstream'].update(development_seed=501), 'tuning must not see a test seed'),
    (lambda p: p['downstream'].update(test_seeds=[0, 502, 503, 504, 505]), 'seeds already used by earlier configs'),
    (lambda p: p['teacher_sets'].pop('C'), 'at least 3 independent sets'),
    (lambda p: p['downstream']['experiments']['sll_512']['data'].update(n_test=1000), 'n_test: at least 5000'),
    (lambda p: p['teacher_sets']['B']['pretrain'].update(hp=301), 'every seed of the protocol is used once'),
    (lambda p: p['analysis'].pop('decision_rule'), 'decision_rule'),
    (lambda p: p['hypotheses']['primary'].update(versus='frozen_teachers'), 'must both be arms'),
], ids=['dev-seed-is-a-test-seed', 'reused-seed', 'two-sets', 'small-test-set', 'seed-twice', 'no-rule',
        'unknown-arm'])
def test_a_weakened_protocol_is_refused_naming_the_problem(tmp_path, edit, problem):
    assert_edit_refused(tmp_path, confirm_protocol.PROTOCOL, edit, confirm_protocol.load_protocol,
                        confirm_protocol.ProtocolError, problem)


# --------------------------------------------------------------------------------------------- statistics

def test_discordant_counts_by_hand():
    a = np.array([1, 1, 0, 0, 1, 0], bool)
    b = np.array([1, 0, 1, 0, 0, 0], bool)
    assert discordant(a, b) == Discordant(a_only=2, b_only=1, n=6)
    assert discordant(a, b).gain == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match='same images'):
        discordant(a, b[:5])
    assert sign_counts([0.01, 0.0, -0.02, 0.03]) == (2, 1, 1)


@pytest.mark.parametrize('a_only, b_only', [(0, 5), (5, 0), (3, 4), (40, 25), (120, 80), (700, 640), (0, 0)])
def test_mcnemar_exact_equals_scipys_binomial_test(a_only, b_only):
    expected = 1.0 if a_only + b_only == 0 else scipy.stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_exact(0, 5) == 2 / 32  # by hand: both one-sided tails of 5 fair coins


def _cells(sets, seeds, a_only, b_only, n=5000):
    return {f'S{s}': [Discordant(a_only, b_only, n) for _ in range(seeds)] for s in range(sets)}


def test_bootstrap_interval_excludes_zero_for_a_known_effect_and_covers_zero_without_one():
    effect = hierarchical_bootstrap(_cells(3, 5, 300, 200), replicates=4000, seed=1)
    assert effect.mean == pytest.approx(0.02) and 0 < effect.low < 0.02 < effect.high and effect.excludes_zero()
    none = hierarchical_bootstrap(_cells(3, 5, 250, 250), replicates=4000, seed=1)
    assert none.mean == 0 and none.low < 0 < none.high and not none.excludes_zero()
    negative = hierarchical_bootstrap(_cells(3, 5, 200, 300), replicates=4000, seed=1)
    assert negative.high < 0


def test_bootstrap_spread_between_cells_widens_the_interval():
    """Set-level variance (one set gains, another loses) must show in the interval, not be averaged away."""
    same = hierarchical_bootstrap({'A': [Discordant(250, 200, 5000)] * 5, 'B': [Discordant(250, 200, 5000)] * 5,
                                   'C': [Discordant(250, 200, 5000)] * 5}, replicates=4000, seed=2)
    spread = hierarchical_bootstrap({'A': [Discordant(450, 200, 5000)] * 5, 'B': [Discordant(250, 200, 5000)] * 5,
                                     'C': [Discordant(50, 200, 5000)] * 5}, replicates=4000, seed=2)
    assert same.mean == pytest.approx(spread.mean)
    assert spread.high - spread.low > 3 * (same.high - same.low) and not spread.excludes_zero()


def test_image_level_resampling_by_counts_matches_resampling_images_one_by_one():
    rng = np.random.default_rng(0)
    diffs = np.array([1] * 30 + [-1] * 18 + [0] * 152)  # one cell of 200 images
    naive = np.array([rng.choice(diffs, diffs.size).mean() for _ in range(4000)])
    counted = hierarchical_bootstrap({'A': [Discordant(30, 18, 200)]}, replicates=4000, seed=3).replicates
    assert counted.mean() == pytest.approx(naive.mean(), abs=0.003)
    assert counted.std() == pytest.approx(naive.std(), rel=0.08)
    assert counted.std() == pytest.approx(np.sqrt((48 / 200 - (12 / 200) ** 2) / 200), rel=0.08)  # by hand


# ---------------------------------------------------------------------------------------- end to end, --quick

@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('confirm')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('HF_HUB_OFFLINE', '1')
        record = confirm.run_confirm(out, quick=True, progress=False, jobs=2)  # the CPU default: in processes
    return out, record


@pytest.mark.slow
def test_quick_runs_every_arm_and_control_with_per_image_predictions(quick_run):
    out, record = quick_run
    protocol = confirm_protocol.load_protocol(quick=True)
    cells = list(confirm_protocol.planned_cells(protocol))
    assert {arm for *_, arm in cells} == {'hp_finetune', 'amalgamation', 'random_teachers', 'hp_teachers'}
    assert sum(arm == 'hp_teachers' for *_, arm in cells) == 2 * 2  # its two seeds in each of the two sets
    for experiment, teacher_set, seed, arm in cells:
        path = out / 'results' / f'{experiment}_{teacher_set}_seed{seed}' / f'{arm}.json'
        result = json.loads(path.read_text())
        saved = np.load(predictions_path(path))
        assert saved['target'].shape == saved['prediction'].shape == (24,) and saved['logits'].shape == (24, 8)
        assert (saved['prediction'] == saved['target']).mean() == pytest.approx(result['test']['accuracy'])
        chosen = record['chosen_settings'][arm]
        assert (result['config']['train']['lr'], result['config']['train']['epochs']) == (chosen['lr'],
                                                                                            chosen['epochs'])
    # the arms of a cell start from the same target and differ in their teachers only
    cell = {arm: json.loads((out / 'results' / 'sll_512_A_seed501' / f'{arm}.json').read_text())['weights']
            for arm in ('hp_finetune', 'amalgamation', 'random_teachers', 'hp_teachers')}
    assert len({w['init'] for w in cell.values()}) == 1 and set(cell['hp_finetune']) == {'init'}
    assert cell['amalgamation']['hp'] == cell['hp_teachers']['hp'] == cell['hp_teachers']['st'] == \
        cell['hp_teachers']['ho']
    assert not {cell['random_teachers'][t] for t in ('st', 'ho', 'hp')} & {cell['amalgamation'][t] for t in
                                                                            ('st', 'ho', 'hp')}
    assert cell['amalgamation']['st'] != cell['amalgamation']['hp']
    # every grid point was tried for every arm on the development seed, never on a test seed
    tuned = sorted(p.parent.name for p in (out / 'tuning').glob('*/*.json'))
    assert len(tuned) == 4 * 4 and all('_seed500_' in name for name in tuned)
    assert set(record['pretext']) == {f'{s}/{t}' for s in 'AB' for t in ('st', 'ho', 'hp')}


@pytest.mark.slow
def test_analyse_redoes_every_table_from_the_saved_predictions(quick_run, capsys):
    out, record = quick_run
    primary = record['comparisons'][0]
    assert primary['role'] == 'primary' and primary['found'] == primary['expected'] == 4
    assert primary['verdict'] in ('supported', 'contradicted', 'not supported')
    assert primary['mean_gain'] == pytest.approx(np.mean([c['gain'] for c in primary['cells']]))
    assert primary['low'] <= primary['mean_gain'] <= primary['high']
    report = (out / 'confirm.md').read_text()
    (out / 'confirm.md').unlink()
    (out / 'confirm.json').unlink()
    assert confirm.main(['analyse', str(out)]) == 0
    assert (out / 'confirm.md').read_text() == report and capsys.readouterr().out.startswith('# Confirmatory')
    assert json.loads((out / 'confirm.json').read_text()) == json.loads(json.dumps(record))

    # a missing run: no verdict; a predictions file of another run: refused by name
    path = out / 'results' / 'sll_512_B_seed502' / 'amalgamation.json'
    moved = path.with_suffix('.bak')
    path.rename(moved)
    try:
        assert confirm.analyse(out)['comparisons'][0]['verdict'] == 'incomplete (3 of 4 cells)'
    finally:
        moved.rename(path)
    other = predictions_path(out / 'results' / 'sll_512_A_seed501' / 'amalgamation.json')
    original = predictions_path(path).read_bytes()
    saved = dict(np.load(other))
    saved['prediction'] = (saved['target'] + 1) % 8  # every image wrong
    with open(predictions_path(path), 'wb') as f:
        np.savez_compressed(f, **saved)
    try:
        with pytest.raises(ValueError, match='do not belong together'):
            confirm.analyse(out)
    finally:
        predictions_path(path).write_bytes(original)


@pytest.mark.slow
def test_a_second_quick_run_trains_nothing(quick_run):
    out, record = quick_run
    files = sorted((out / 'results').glob('*/*.json')) + sorted((out / 'tuning').glob('*/*.json'))
    before = {p: p.stat().st_mtime_ns for p in files}
    again = confirm.run_confirm(out, quick=True, progress=False, jobs=1)
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert again['comparisons'] == record['comparisons']


@pytest.mark.slow
def test_runs_in_worker_processes_equal_runs_in_this_one(quick_run, tmp_path):
    """The quick run trained 2 at a time, one thread each: the same runs here, on one thread, give the same
    predictions bit for bit."""
    out, record = quick_run
    config = json.loads((out / 'protocol.json').read_text())
    zoos = {kind: out / 'zoo' / 'A' / kind for kind in confirm_protocol.TEACHER_ZOOS}
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))
    try:
        for arm in ('hp_finetune', 'amalgamation'):
            confirm._run(config, zoos, 'sll_512', arm, 501, record['chosen_settings'][arm], tmp_path,
                         'sll_512_A_seed501', None, False)
            here = np.load(predictions_path(tmp_path / 'sll_512_A_seed501' / f'{arm}.json'))
            there = np.load(predictions_path(out / 'results' / 'sll_512_A_seed501' / f'{arm}.json'))
            assert all(np.array_equal(here[k], there[k]) for k in ('target', 'prediction', 'logits')), arm
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_pretext_eval_reads_the_validation_split_for_choices(quick_run, capsys):
    out, _ = quick_run
    checkpoint = out / 'pretrain' / 'A' / 'hp' / 'final.pt'
    _, val, _ = pretext_eval.load_perception_model(checkpoint, 4, split='val')
    _, test, _ = pretext_eval.load_perception_model(checkpoint, 4)
    assert {d.split for d in val.values()} == {'val'} and {d.split for d in test.values()} == {'test'}
    assert not np.array_equal(np.asarray(val['anp'][0][0]), np.asarray(test['anp'][0][0]))
    assert pretext_eval.main([str(checkpoint), '--samples', '4', '--batch-size', '4', '--split', 'val']) == 0
    assert '(the val split)' in capsys.readouterr().out.splitlines()[0]

