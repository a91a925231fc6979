"""Linear probes (training.probes) on sets where the answer is known: the true cues probe to ~1, a constant
backbone to chance; the feature extractor pools the three stage taps."""
import numpy as np
import pytest
import timm
import torch

from training import probes
from training.datasets.synthetic import AffectWorld


@pytest.fixture(scope='module')
def world_cues():
    world = AffectWorld(seed=3)
    return [world.cues(i) for i in range(600)], [world.cues(10_000 + i) for i in range(300)]


def test_true_cues_probe_to_one_and_constant_features_to_chance(world_cues):
    train_cues, test_cues = world_cues
    train, test = probes.cue_targets(train_cues), probes.cue_targets(test_cues)
    oracle = probes.probe_all({'cues': (probes.cue_features(train_cues), probes.cue_features(test_cues))}, train, test)
    for cue in ('temperature', 'saturation', 'brightness', 'scene', 'anp'):
        assert oracle['cues'][cue] > 0.97, (cue, oracle['cues'][cue])
    assert 0.125 < oracle['cues']['emotion'] < 1.0  # label noise and a non-linear rule: above chance, below 1

    constant = probes.probe_all({'constant': (np.ones((600, 5)), np.ones((300, 5)))}, train, test)['constant']
    chance = probes.chance_row(train, test)
    for cue in ('scene', 'anp', 'emotion'):
        assert constant[cue] == pytest.approx(chance[cue], abs=1e-12)  # the majority class, nothing else
    for cue in probes.COLOUR_CUES:
        assert constant[cue] <= 0.0 and chance[cue] == 0.0  # the training mean: R^2 of at most 0 on new images


def test_majority_share_and_chance_row_by_hand():
    train, test = np.array([2, 2, 1, 0]), np.array([2, 1, 1, 2, 0])
    assert probes.majority_share(train, test) == pytest.approx(2 / 5)
    row = probes.chance_row({'temperature': np.zeros(4), 'saturation': np.zeros(4), 'brightness': np.zeros(4),
                             'scene': train, 'anp': train, 'emotion': train},
                            {'temperature': np.zeros(5), 'saturation': np.zeros(5), 'brightness': np.zeros(5),
                             'scene': test, 'anp': test, 'emotion': test})
    assert row == {'temperature': 0.0, 'saturation': 0.0, 'brightness': 0.0, 'scene': 0.4, 'anp': 0.4,
                   'emotion': 0.4}


def test_standardise_floors_near_constant_features():
    x_train = np.array([[0.0, 1.0], [2.0, 1.0 + 1e-9], [4.0, 1.0]])
    x_test = np.array([[2.0, 2.0]])
    a, b = probes.standardise(x_train, x_test)
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(a[:, 0].std(), 1)
    assert abs(b[0, 1]) < 1e3  # without the floor: (2 - 1) / 4.7e-10 ~ 2e9


def test_fit_probe_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'r2' or 'accuracy'"):
        probes.fit_probe('auc', np.ones((4, 2)), np.arange(4), np.ones((2, 2)), np.arange(2))


def test_extract_features_pools_the_three_stage_taps():
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=0)
    images = torch.rand(5, 3, 32, 32)
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(5))
    features = probes.extract_features(model, dataset, batch_size=2)
    assert features.shape == (5, 128 + 256 + 512) and features.dtype == np.float64
    with torch.no_grad():
        taps = model.eval().forward_intermediates(images, indices=[2, 3, 4], intermediates_only=True)
    expected = torch.cat([t.mean((2, 3)) for t in taps], 1).double().numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_budget_probes_command_prints_each_seed_and_the_mean(tmp_path, capsys, monkeypatch):
    import sentizoo
    torch.manual_seed(0)
    for tag in ('st', 'ho', 'hp'):
        sentizoo.save_pretrained(timm.create_model(f'senti_resnet18.{tag}'), tmp_path / f'senti_resnet18.{tag}')
    monkeypatch.setenv('SENTIZOO_HOME', str(tmp_path))  # restored after the test; main sets it to --zoo
    capsys.readouterr()  # save_pretrained's own lines
    code = probes.main(['--zoo', str(tmp_path), '--image-size', '32', '--n-train', '40', '--n-test', '16',
                        '--seeds', '0', '1'])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0].startswith('SYNTHETIC: ') and lines[2] == '| seed | ST | HO | HP | ST+HO+HP |'
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in lines[4:]]
    assert [r[0] for r in rows] == ['0', '1', 'mean']
    per_seed = np.array([[float(v) for v in r[1:]] for r in rows[:2]])
    assert ((per_seed >= 0) & (per_seed <= 1)).all()
    np.testing.assert_allclose([float(v) for v in rows[2][1:]], per_seed.mean(0), atol=1e-3)
