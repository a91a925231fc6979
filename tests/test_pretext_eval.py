"""Held-out pretext measurements (training.pretext_eval) against values computed by hand: chance, the trivial
colorization and super-resolution predictors, the unigram caption model, and the models' own scores."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from training import pretext_eval as pe
from training.datasets.common import pretrain_transform
from training.datasets.synthetic import SyntheticImages, SyntheticScenes
from training.perception import build_perception_model
from training.pretext.base import imagenet_normalize
from training.pretext.captioning import EOS, PAD, SOS
from training.pretext.colorization import rgb_to_lab


def test_unigram_cross_entropy_by_hand():
    # vocabulary: pad, sos, eos, unk, w4, w5; predicted training tokens: w4 x2, w5 x1, eos x2
    train = torch.tensor([[SOS, 4, 5, EOS], [SOS, 4, EOS, PAD]])
    test = torch.tensor([[SOS, 5, EOS]])
    counts = {1: 1, 2: 3, 3: 1, 4: 3, 5: 2}  # add-one over the 5 tokens that can be predicted (pad cannot)
    expected = -(math.log(counts[5] / 10) + math.log(counts[EOS] / 10)) / 2
    assert pe.unigram_cross_entropy(train, test, vocab_size=6) == pytest.approx(expected)


def test_classification_scores_equal_the_models_own_cross_entropy_and_accuracy():
    torch.manual_seed(0)
    model = build_perception_model('ho', 'resnet18', scene={'classes': 12}, jigsaw={'permutations': 10, 'tile': 8})
    transform = pretrain_transform(32, normalize=False, train=False)
    scenes = SyntheticScenes(n=10, split='test', transform=transform, size=37)
    images = SyntheticImages(n=10, split='test', transform=transform, size=37)
    train = {'scene': scenes, 'jigsaw': images}
    scores = pe.evaluate_pretext(model, {'scene': scenes, 'jigsaw': images}, train, batch_size=4, seed=7)
    scene, jigsaw = scores
    with torch.no_grad():
        x = torch.stack([scenes[i][0] for i in range(10)])
        y = torch.tensor([scenes[i][1] for i in range(10)])
        stored = model.tasks['scene'](model.backbone, imagenet_normalize(x))
        with pe.task_statistics(model.tasks['scene'], model.backbone, scenes, 4, torch.device('cpu')):
            logits = model.tasks['scene'](model.backbone, imagenet_normalize(x))
    assert scene.extra['stored_statistics'] == pytest.approx(F.cross_entropy(stored, y).item(), rel=1e-5)
    assert scene.value == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert scene.extra['accuracy'] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert (scene.reference, scene.extra['chance_accuracy']) == (pytest.approx(math.log(12)), pytest.approx(1 / 12))
    assert scene.passed == (scene.extra['accuracy'] >= 5 / 12 and scene.value <= 0.7 * math.log(12))
    assert jigsaw.reference == pytest.approx(math.log(10)) and jigsaw.samples == 10
    again = pe.evaluate_pretext(model, {'scene': scenes, 'jigsaw': images}, train, batch_size=4, seed=7)[1]
    assert again.value == jigsaw.value  # the permutations are drawn from the seeded generator
    assert not model.training


def _uniform(rgb, n=3, size=32):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(n, 3, size, size).clone()


def test_trivial_references_by_hand():
    torch.manual_seed(0)
    model = build_perception_model('st', 'resnet18')
    red, blue = _uniform((1.0, 0.0, 0.0)), _uniform((0.0, 0.0, 1.0))
    half = torch.zeros(2, 3, 32, 32)
    half[..., 16:] = 1.0  # black left half, white right half: 8 px blocks of the 8 px input keep the edge
    scores = pe.evaluate_pretext(model, {'colorization': TensorDataset(blue), 'super_resolution': TensorDataset(half)},
                                 {'colorization': TensorDataset(red), 'super_resolution': TensorDataset(half)},
                                 batch_size=2)
    colorization, sr = scores
    ab = lambda rgb: (rgb_to_lab(rgb[:1, :, :1, :1])[0, 1:, 0, 0] + 127) / 255  # noqa: E731
    assert colorization.reference == pytest.approx(((ab(red) - ab(blue)) ** 2).mean().item(), rel=1e-5)
    assert sr.reference == pytest.approx(0.25, abs=1e-6)  # every pixel is 0 or 1, the input's mean is 0.5
    assert 0 < sr.extra['bilinear_mse'] < 0.25
    with torch.no_grad():
        task = model.tasks['colorization']
        l_input, target = task.prepare(blue)
        expected = F.mse_loss(task(model.backbone, l_input), target).item()
    assert colorization.extra['stored_statistics'] == pytest.approx(expected, rel=1e-5)
    assert colorization.passed == (colorization.value <= 0.8 * colorization.reference)


def test_scores_table_and_line_show_value_and_reference():
    score = pe.PretextScore('anp', 'cross-entropy', 1.0, math.log(36), 'chance (ln 36)', 'goal', True, 5,
                            {'accuracy': 0.5, 'chance_accuracy': 1 / 36, 'stored_statistics': 1.7918})
    assert score.ratio == pytest.approx(1 / math.log(36))
    assert pe.format_scores([score]) == ('anp 1 (chance (ln 36) 3.584; accuracy 0.500 vs 0.028; '
                                         'stored BN statistics 1.792)')
    row = pe.scores_table({'hp': [score]}).splitlines()[2]
    assert row.startswith('| HP | anp | cross-entropy | 1 | 3.584 (chance (ln 36)) | 0.28 | 0.500 (0.028) | '
                          '1.792 (0.50) |')


def _norms(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_task_statistics_are_the_inputs_population_statistics_and_are_restored():
    torch.manual_seed(0)
    model = build_perception_model('st', 'resnet18')
    backbone, task = model.backbone, model.tasks['super_resolution']
    images = torch.rand(6, 3, 32, 32)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with torch.no_grad(), pe.task_statistics(task, backbone, TensorDataset(images), 3, torch.device('cpu')):
        assert not backbone.training
        small, _ = task.prepare(images)
        first = backbone.bn1(backbone.conv1(small))  # eval mode: normalised by the re-estimated statistics
        conv = backbone.conv1(small)
        halves = [conv[:3], conv[3:]]  # two batches of 3: the average of their means and unbiased variances
        mean = sum(h.mean((0, 2, 3)) for h in halves) / 2
        var = sum(h.transpose(0, 1).flatten(1).var(1) for h in halves) / 2
        assert torch.allclose(backbone.bn1.running_mean, mean, atol=1e-5)
        assert torch.allclose(backbone.bn1.running_var, var, rtol=1e-4)
        expected = (conv - mean.view(1, -1, 1, 1)) / (var.view(1, -1, 1, 1) + backbone.bn1.eps).sqrt()
        expected = expected * backbone.bn1.weight.view(1, -1, 1, 1) + backbone.bn1.bias.view(1, -1, 1, 1)
        assert torch.allclose(first, expected, atol=1e-4)
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the stored statistics are back, bit for bit
    assert all(m.momentum == 0.1 for m in _norms(backbone))


def test_the_goal_is_judged_with_the_tasks_statistics_not_the_stored_blend():
    torch.manual_seed(0)
    model = build_perception_model('st', 'resnet18')
    images = TensorDataset(torch.rand(4, 3, 32, 32))
    data = {'colorization': images, 'super_resolution': images}
    clean = pe.evaluate_pretext(model, data, data, batch_size=4)
    for m in _norms(model.backbone):  # stored statistics no task's inputs have: the blend of other inputs
        m.running_mean.add_(3.0)
        m.running_var.mul_(50.0)
    skewed = pe.evaluate_pretext(model, data, data, batch_size=4)
    for a, b in zip(clean, skewed):
        assert b.value == pytest.approx(a.value, rel=1e-5)  # re-estimated from the task's inputs either way
    colorization = clean[0], skewed[0]  # its head reads every stage, so the stored statistics show
    assert colorization[1].extra['stored_statistics'] != pytest.approx(colorization[0].extra['stored_statistics'],
                                                                      rel=1e-3)


def test_evaluation_needs_each_tasks_training_data():
    model = build_perception_model('st', 'resnet18')
    images = TensorDataset(torch.rand(2, 3, 32, 32))
    with pytest.raises(KeyError, match='super_resolution'):
        pe.evaluate_pretext(model, {'colorization': images, 'super_resolution': images}, {'colorization': images})
