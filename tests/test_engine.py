"""sentizoo.engine: exact resume after kill -9, NaN handling, fail-fast checks, model selection (the CLI's
amalgamate / evaluate: test_cli.py)."""
import copy
import json
import os
import signal
import time

import pytest
import timm
import torch
from torch.utils.data import DataLoader, Dataset

import sentizoo.engine as engine
from helpers import CROSS_ARCH, Noisy, state, tiny, train_tiny, worker
from sentizoo.amalgamation import TEACHER_TAGS
from sentizoo.runtime import revert_sync_batchnorm
from sentizoo.tasks import get_task
from sentizoo.weights import WeightsNotFoundError

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.mark.parametrize('target', ['resnet18', CROSS_ARCH])
def test_resume_after_kill_9_is_bit_identical(tmp_path, monkeypatch, target):
    """The paper's setting, and a target of another architecture whose adapters (weights, BatchNorm statistics,
    momentum) must resume too."""
    full, killed = tmp_path / 'full', tmp_path / 'killed'
    # A step checkpoint after every step, and slow samples, so the kill lands mid-training.
    args = dict(checkpoint_dir=str(killed), checkpoint_every=1, delay=0.03, target=target)
    victim = worker(args)
    deadline = time.time() + 60
    while not (killed / engine.CHECKPOINT_NAME).exists():
        assert victim.poll() is None and time.time() < deadline, victim.stderr.read()
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    interrupted = state(killed)
    assert (interrupted['epoch'], interrupted['step']) < (2, 0)  # the run was cut short
    steps = []
    step = engine.Loop._train_step
    monkeypatch.setattr(engine.Loop, '_train_step', lambda self: steps.append(1) or step(self))
    train_tiny(**args)  # resumes from the victim's checkpoint ...
    assert len(steps) == 6 - interrupted['global_step']  # ... and trains only the steps that were left
    train_tiny(full, target=target)  # the uninterrupted reference

    a, b = state(full), state(killed)
    assert (b['epoch'], b['step'], b['global_step']) == (2, 0, 6)
    assert a['model'].keys() == b['model'].keys()
    adapters = [key for key in a['model'] if key.startswith('adapters.')]
    assert len(adapters) == (0 if target == 'resnet18' else 3 * 6)  # conv weight + 5 BatchNorm tensors per stage
    for key in a['model']:  # all four models (and the adapters), BatchNorm statistics included
        assert torch.equal(a['model'][key], b['model'][key]), key
    strip = lambda h: [{k: v for k, v in e.items() if k != 'seconds'} for e in json.loads(h)['epochs']]
    assert strip(a['history']) == strip(b['history'])


def test_rerun_of_finished_run_returns_without_training(tmp_path, monkeypatch):
    first = train_tiny(tmp_path, epochs=1)
    monkeypatch.setattr(engine.Loop, '_train_step', None)  # a step would crash
    again = train_tiny(tmp_path, epochs=1)
    assert again.sentizoo_history == first.sentizoo_history
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match='momentum: checkpoint 0.9, now 0.5'):  # a changed trajectory setting
        train_tiny(tmp_path, epochs=1, momentum=0.5)
    with pytest.raises(FileExistsError, match='resume=False'):
        train_tiny(tmp_path, epochs=1, resume=False)


def test_nan_loss_stops_naming_step_and_term_and_keeps_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    loader = DataLoader(Noisy(nan_index=9), batch_size=4)  # sample 9 is in batch 3
    with pytest.raises(engine.NonFiniteLossError, match=r'step 3 \(epoch 1, batch 3/3\): task/target=nan') as e:
        engine.finetune(tiny(), loader, epochs=1, checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)
    assert 'last good checkpoint' in str(e.value)
    kept = state(tmp_path)
    assert (kept['epoch'], kept['step']) == (0, 2)
    assert all(torch.isfinite(v).all() for v in kept['model'].values() if v.is_floating_point())


def test_nan_in_one_teacher_names_only_its_term():
    torch.manual_seed(0)
    teachers = {tag: tiny(3) for tag in TEACHER_TAGS}  # heads of the target's size are kept as given
    with torch.no_grad():
        teachers['ho'].fc.bias[0] = float('inf')
    loader = DataLoader(Noisy(), batch_size=4)
    with pytest.raises(engine.NonFiniteLossError, match=r'step 1 .*: task/ho=(nan|inf);') as e:
        engine.amalgamate(tiny(), loader, teachers=teachers, epochs=1, progress=False)
    assert 'task/target' not in str(e.value) and 'checkpoint_dir=None' in str(e.value)


@pytest.mark.parametrize('task, targets, match', [
    ('sll', torch.zeros(12, 3), 'loader: sll task: targets must be class indices'),
    ('mll', torch.zeros(12, dtype=torch.long), r'loader: mll task: targets must be multi-hot labels of shape \(N, 3\)'),
    ('ldl', torch.ones(12, 3), 'loader: ldl task: .*row sums'),
])
def test_wrong_targets_fail_before_training(monkeypatch, task, targets, match):
    monkeypatch.setattr(engine, 'Loop', None)  # anything past the checks would crash on this
    data = torch.utils.data.TensorDataset(torch.rand(12, 3, 32, 32), targets)
    with pytest.raises(ValueError, match=match):
        engine.finetune(tiny(), DataLoader(data, batch_size=4), task=task)


def test_teachers_and_options_fail_before_training():
    loader = DataLoader(Noisy(), batch_size=4)
    with pytest.raises(ValueError, match="No sentiment-pretrained weights exist for 'resnet34'"):
        engine.amalgamate(timm.create_model('resnet34', num_classes=3), loader)
    with pytest.raises(WeightsNotFoundError, match='senti_resnet18.st'):
        engine.amalgamate(tiny(), loader)
    with pytest.raises(ValueError, match=r'epochs=0 .*lr=-1'):
        engine.finetune(tiny(), loader, epochs=0, lr=-1)
    with pytest.raises(ValueError, match=r'checkpoint_every=2 \(needs a checkpoint_dir\)'):
        engine.finetune(tiny(), loader, checkpoint_every=2)
    with pytest.raises(TypeError, match=r"Unknown option\(s\) \['learning_rate'\].*feature_stages"):
        engine.amalgamate(tiny(), loader, learning_rate=0.1)
    with pytest.raises(ValueError, match='no classifier'):
        engine.finetune(tiny(0), loader)


@pytest.mark.parametrize('task, scores', [('sll', [0.2, 0.9, 0.5]), ('mll', [0.3, 0.1, 0.2])])
def test_best_validation_epoch_is_returned(monkeypatch, task, scores):
    """The validation score is scripted; the returned weights must be those of the epoch that scored best."""
    snapshots = []

    def scripted(model, loader, task_, **kwargs):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {task_.primary_metric: scores[len(snapshots) - 1]}

    monkeypatch.setattr(engine, 'evaluate', scripted)
    loader = DataLoader(Noisy(task=task), batch_size=4, shuffle=True)
    model = engine.finetune(tiny(), loader, task=task, val_loader=loader, epochs=3, lr=0.05, progress=False)
    history = model.sentizoo_history
    assert history['best_epoch'] == 2 and [e['val'] for e in history['epochs']] == [
        {history['primary_metric']: s} for s in scores]
    assert not model.training
    assert not torch.equal(snapshots[1]['fc.weight'], snapshots[2]['fc.weight'])
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[1][key]), key


def test_data_order_and_augmentation_do_not_depend_on_workers():
    """Every sample is drawn with generators seeded from (seed, epoch, index): worker processes change nothing."""
    def run(workers):
        torch.manual_seed(0)
        loader = DataLoader(Noisy(), batch_size=4, shuffle=True, num_workers=workers)
        return engine.finetune(tiny(), loader, epochs=2, progress=False).state_dict()

    in_process, in_workers = run(0), run(2)
    assert all(torch.equal(in_process[k], in_workers[k]) for k in in_process)


def test_sync_batchnorm_is_reverted_to_plain_batchnorm():
    model = tiny().eval()
    images = torch.rand(2, 3, 32, 32)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    plain = revert_sync_batchnorm(synced)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.modules())
    assert torch.equal(plain(images), model(images))


def test_history_file_and_loss_terms(tmp_path):
    loader = DataLoader(Noisy(), batch_size=4)
    model = train_tiny(tmp_path / 'ckpt', epochs=1, history_path=tmp_path / 'h.json', logits_teachers=(),
                       teacher_task_loss=False, loss_weights={'feat/st': 2.0})
    history = json.loads((tmp_path / 'h.json').read_text())
    assert history == json.loads((tmp_path / 'ckpt' / engine.HISTORY_NAME).read_text()) == model.sentizoo_history
    train = history['epochs'][0]['train']
    assert list(train) == ['loss', 'task/target', 'feat/st', 'feat/ho', 'feat/hp']
    assert train['loss'] == pytest.approx(sum(v for k, v in train.items() if k != 'loss') + train['feat/st'])
    assert history['best_epoch'] is None  # no val_loader: the last epoch is returned
    assert engine.evaluate(model, loader, 'sll').keys() == {'accuracy'}


def test_evaluate_checks_the_targets_of_every_batch():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    images = torch.rand(4, 1, 2, 2)
    batches = [(images, torch.tensor([0, 1, 2, 0])), (images, torch.tensor([[0], [1], [2], [0]]))]
    assert engine.evaluate(model, batches[:1], 'sll')['accuracy'] <= 1
    # (N, 1) class indices would broadcast against (N,) predictions into an (N, N) comparison: "accuracy" 4/4 * N
    with pytest.raises(ValueError, match=r'sll task: targets must be class indices of shape \(N,\).*\(4, 1\)'):
        engine.evaluate(model, batches, 'sll')


def test_training_checks_the_target_shape_of_every_batch():
    """The first batch is fine, a later one holds (N, 1) distributions: KL would broadcast them silently."""
    class LaterBad(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            target = torch.tensor([0.2, 0.3, 0.5]) if i < 4 else torch.tensor([1.0])
            return torch.rand(3, 32, 32), target

    with pytest.raises(ValueError, match=r'ldl task: targets must be distributions of shape \(N, 3\); got shape \(4, 1\)'):
        engine.finetune(tiny(), DataLoader(LaterBad(), batch_size=4), task='ldl', epochs=1, progress=False)


def test_evaluate_computes_metrics_in_fp32_inside_autocast():
    """Logits 1 + 1e-3 * noise tie in bf16 (8 bits of mantissa); evaluate scores the fp32 logits even when the
    caller runs it under bf16 autocast."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 6)
    with torch.no_grad():
        model.weight.mul_(1e-3)
        model.bias.fill_(1.0)
    images = torch.randn(32, 8)
    targets = (torch.rand(32, 6) > 0.5).float()
    expected = get_task('mll').metrics()
    expected.update(model(images).detach(), targets)
    batches = [(images[:16], targets[:16]), (images[16:], targets[16:])]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert model(images).dtype == torch.bfloat16  # the caller's autocast is on
        scores = engine.evaluate(model, batches, 'mll')
    assert scores == pytest.approx(expected.compute(), rel=1e-12, abs=1e-12)


def test_progress_in_a_pipe_is_one_line_per_epoch_and_some_steps(capsys):
    """stderr is not a terminal here (a pipe or a log file): plain lines, no bar, no logging set-up needed."""
    loader = DataLoader(Noisy(n=40), batch_size=2, shuffle=True)  # 20 steps: a line every 2
    engine.finetune(tiny(), loader, epochs=2, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert '\r' not in ''.join(lines)
    steps = [line.split('  ')[:2] for line in lines if '  step ' in line]
    assert steps == [[f'epoch {e}/2', f'step {s}/20'] for e in (1, 2) for s in range(2, 20, 2)]
    assert [line.split('  ')[0] for line in lines if '  loss ' in line and 'step' not in line] == ['epoch 1/2',
                                                                                                  'epoch 2/2']


@pytest.mark.parametrize('target_init', ['hp', 'given'])
def test_target_starts_from_the_hp_backbone_by_default(target_init):
    torch.manual_seed(0)
    target = tiny()
    teachers = {tag: tiny(0) for tag in TEACHER_TAGS}
    start = copy.deepcopy(teachers['hp'] if target_init == 'hp' else target).state_dict()
    own_head = target.fc.weight.clone()
    loader = DataLoader(Noisy(n=4), batch_size=4)
    trained = engine.amalgamate(target, loader, teachers=teachers, epochs=1, lr=1e-12, progress=False,
                                target_init=target_init)
    weights = [k for k in start if k.endswith('conv1.weight')]
    assert weights and all(torch.allclose(trained.state_dict()[k], start[k], atol=1e-8) for k in weights)
    assert torch.allclose(trained.fc.weight, own_head, atol=1e-8)  # the head is the target's own either way


def test_target_init_hp_needs_the_hp_teacher():
    teachers = {'st': tiny(0)}
    loader = DataLoader(Noisy(n=4), batch_size=4)
    with pytest.raises(ValueError, match="target_init='given'"):
        engine.amalgamate(tiny(), loader, teachers=teachers, feature_stages=(1,), logits_teachers=(), epochs=1,
                          progress=False)
    with pytest.raises(ValueError, match="'hp' .* or 'given'"):
        engine.amalgamate(tiny(), loader, teachers=teachers, target_init='imagenet')
