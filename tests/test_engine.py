"""sentizoo.engine: exact resume after kill -9, NaN handling, fail-fast checks, model selection, CLI."""
import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import sentizoo.engine as engine
from sentizoo.amalgamation import TEACHER_TAGS
from sentizoo.cli import main as cli_main
from sentizoo.runtime import revert_sync_batchnorm
from sentizoo.tasks import get_task
from sentizoo.saving import save_pretrained
from sentizoo.weights import WeightsNotFoundError

TESTS = Path(__file__).resolve().parent
# Runs one tiny training in a fresh interpreter: python -c WORKER '<json kwargs of train_tiny>'.
WORKER = ('import json, sys; sys.path.insert(0, {tests!r}); import torch; torch.set_num_threads(1); '
          'from test_engine import train_tiny; train_tiny(**json.loads(sys.argv[1]))').format(tests=str(TESTS))


TINY = dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64))
"""timm resnet18 cut to one block per stage and 8-64 channels (64-channel stem): a run takes about a second on a CPU."""


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as in the worker processes: the same kernels and summation order for bit-identical
    comparisons, and no slowdown from oversubscribed cores (these models are far too small to gain from two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(num_classes: int = 3, group_norm: bool = False) -> torch.nn.Module:
    kwargs = dict(norm_layer=lambda c, **kw: torch.nn.GroupNorm(4, c, **kw)) if group_norm else {}
    return timm.create_model('resnet18', num_classes=num_classes, **TINY, **kwargs)


class Noisy(Dataset):
    """Fixed 32 px images plus random noise drawn per access (a random augmentation), SLL or MLL targets."""

    def __init__(self, n: int = 12, num_classes: int = 3, task: str = 'sll', delay: float = 0.0, nan_index=None):
        self.images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        labels = torch.arange(n) % num_classes
        self.targets = labels if task == 'sll' else torch.nn.functional.one_hot(labels, num_classes).float()
        self.delay, self.nan_index = delay, nan_index

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        time.sleep(self.delay)
        image = self.images[i] + 0.1 * torch.randn(3, 32, 32)
        return (image * float('nan') if i == self.nan_index else image), self.targets[i]


def train_tiny(checkpoint_dir=None, epochs=2, batch_size=4, group_norm=False, delay=0.0, validate=False,
               **options):
    """amalgamate a tiny target with tiny teachers on Noisy(12); the same weights for the same arguments.
    ``validate``: select on the noise-free images."""
    torch.manual_seed(0)
    target = tiny(group_norm=group_norm)
    teachers = {tag: tiny(0, group_norm) for tag in TEACHER_TAGS}
    data = Noisy(delay=delay)
    val = DataLoader(torch.utils.data.TensorDataset(data.images, data.targets), batch_size=batch_size)
    return engine.amalgamate(target, DataLoader(data, batch_size=batch_size, shuffle=True), teachers=teachers,
                             val_loader=val if validate else None, epochs=epochs, checkpoint_dir=checkpoint_dir,
                             progress=False, **options)


def state(path: Path) -> dict:
    return torch.load(path / engine.CHECKPOINT_NAME, weights_only=True)


def worker(args: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', WORKER, json.dumps(args)], stderr=subprocess.PIPE, text=True)


def test_resume_after_kill_9_is_bit_identical(tmp_path, monkeypatch):
    full, killed = tmp_path / 'full', tmp_path / 'killed'
    # A step checkpoint after every step, and slow samples, so the kill lands mid-training.
    args = dict(checkpoint_dir=str(killed), checkpoint_every=1, delay=0.03)
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
    train_tiny(full)  # the uninterrupted reference

    a, b = state(full), state(killed)
    assert (b['epoch'], b['step'], b['global_step']) == (2, 0, 6)
    assert a['model'].keys() == b['model'].keys()
    for key in a['model']:  # all four models, BatchNorm statistics included
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
    with pytest.raises(ValueError, match='checkpoint_every needs a checkpoint_dir'):
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


# --- CLI -----------------------------------------------------------------------------------------------

def write_images(root: Path, classes=('calm', 'joy', 'rage'), per_class: int = 4) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((40, 48, 3)) * 80 + 80 * c).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f'{i}.jpg')


@pytest.fixture
def tiny_resnet18(monkeypatch):
    """Every timm resnet18 the CLI creates (targets, zoo teachers, saved folders) is the tiny one."""
    create = timm.create_model
    monkeypatch.setattr(timm, 'create_model', lambda name, *args, **kwargs: create(name, *args, **TINY, **kwargs))


def test_cli_amalgamate_and_evaluate_image_folder(tmp_path, isolated_zoo, capsys, tiny_resnet18):
    torch.manual_seed(0)
    for tag in TEACHER_TAGS:  # the zoo holds (tiny) senti_resnet18 backbones
        save_pretrained(timm.create_model('resnet18', num_classes=0), isolated_zoo / f'senti_resnet18.{tag}',
                        verbose=False)
    write_images(tmp_path / 'data')
    out = tmp_path / 'out'
    common = ['--batch-size', '4', '--workers', '0', '--img-size', '32', '--no-progress']
    assert cli_main(['amalgamate', 'resnet18', str(tmp_path / 'data'), '--val', str(tmp_path / 'data'), '--output',
                     str(out), '--epochs', '2', *common]) == 0
    history = json.loads((out / 'history.json').read_text())
    assert history['best_epoch'] in (1, 2) and 'feat/ho' in history['epochs'][0]['train']
    config = json.loads((out / 'config.json').read_text())
    assert config['label_names'] == ['calm', 'joy', 'rage']
    # provenance: the senti licence, the init and teachers, the paper's preprocessing at the trained size
    assert config['init'] == history['init'] == 'senti_resnet18.hp'
    assert config['teachers'] == [f'senti_resnet18.{t}' for t in ('st', 'ho', 'hp')]
    cfg = config['pretrained_cfg']
    assert (cfg['license'], cfg['crop_mode'], cfg['crop_pct'], cfg['interpolation'], cfg['input_size']) == (
        'cc-by-nc-4.0', 'squash', 0.875, 'bilinear', [3, 32, 32])
    assert not {'tag', 'test_input_size', 'test_crop_pct'} & set(cfg) and 'a1_in1k' not in json.dumps(config)
    assert (out / 'checkpoints' / engine.CHECKPOINT_NAME).is_file()
    capsys.readouterr()
    assert cli_main(['evaluate', str(out), str(tmp_path / 'data'), '--format', 'json', *common]) == 0
    best = history['epochs'][history['best_epoch'] - 1]['val']
    assert json.loads(capsys.readouterr().out) == pytest.approx(best)


def test_cli_baseline_mll_csv_and_errors(tmp_path, capsys, tiny_resnet18):
    write_images(tmp_path / 'images')
    with open(tmp_path / 'labels.csv', 'w', newline='') as f:
        rows = csv.writer(f)
        rows.writerow(['path', 'calm', 'joy', 'rage'])
        for c, name in enumerate(('calm', 'joy', 'rage')):
            for i in range(4):
                rows.writerow([f'images/{name}/{i}.jpg'] + [int(j == c or j == (c + i) % 3) for j in range(3)])
    out, data = tmp_path / 'out', str(tmp_path / 'labels.csv')
    common = ['--batch-size', '4', '--workers', '0', '--img-size', '32', '--no-progress', '--task', 'mll']
    assert cli_main(['amalgamate', 'resnet18', data, '--baseline', '--init', 'random', '--epochs', '1',
                     '--output', str(out), *common]) == 0
    capsys.readouterr()
    assert cli_main(['evaluate', str(out), data, *common[:-2]]) == 0  # the task comes from the saved config
    table = capsys.readouterr().out
    assert [line.split()[0] for line in table.splitlines()] == ['hamming_loss', 'ranking_loss', 'micro_f1', 'macro_f1']
    # errors before training: a CSV without --task, labels outside 0/1 for mll, a missing folder
    assert cli_main(['amalgamate', 'resnet18', data, '--baseline', '--output', str(out), *common[:-2]]) == 2
    assert 'pass --task mll' in capsys.readouterr().err
    assert cli_main(['evaluate', str(out), str(tmp_path / 'images'), *common]) == 2
    assert 'mll task: targets must be multi-hot' in capsys.readouterr().err
    assert cli_main(['evaluate', str(out), str(tmp_path / 'nowhere'), *common]) == 2
    assert 'does not exist' in capsys.readouterr().err


def write_ldl_csv(root: Path) -> Path:
    """An LDL CSV over :func:`write_images`'s non-square (48x40) images: continuous metrics show any change
    in preprocessing."""
    write_images(root / 'images')
    rng = np.random.default_rng(1)
    with open(root / 'labels.csv', 'w', newline='') as f:
        rows = csv.writer(f)
        rows.writerow(['path', 'calm', 'joy', 'rage'])
        for name in ('calm', 'joy', 'rage'):
            for i in range(4):
                votes = rng.integers(1, 10, 3)
                rows.writerow([f'images/{name}/{i}.jpg', *(votes / votes.sum()).tolist()])
    return root / 'labels.csv'


def _cli_baseline(data: Path, out: Path, *extra: str) -> None:
    assert cli_main(['amalgamate', 'resnet18', str(data), '--baseline', '--epochs', '1', '--output', str(out),
                     '--batch-size', '4', '--workers', '0', '--img-size', '32', '--no-progress', '--task', 'ldl',
                     *extra]) == 0


def test_one_preprocessing_path_cli_python_and_training(tmp_path, capsys, tiny_resnet18):
    """`sentizoo evaluate`, sentizoo.evaluate with timm's transform of the saved model and training/'s
    evaluation transform score the same model on non-square images identically."""
    from timm.data import create_transform, resolve_data_config

    from sentizoo.datasets import image_csv
    from training.downstream import split_transforms

    data = write_ldl_csv(tmp_path)
    out = tmp_path / 'out'
    _cli_baseline(data, out, '--init', 'random')
    capsys.readouterr()
    assert cli_main(['evaluate', str(out), str(data), '--format', 'json', '--workers', '0', '--no-progress']) == 0
    cli = json.loads(capsys.readouterr().out)

    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    transform = create_transform(**resolve_data_config(model=model))
    python = engine.evaluate(model, DataLoader(image_csv(data, transform), batch_size=32), 'ldl')  # the CLI's batch
    training = engine.evaluate(model, DataLoader(image_csv(data, split_transforms(32)['test']), batch_size=32), 'ldl')
    assert cli == python == training
    cfg = model.pretrained_cfg
    assert (cfg['crop_mode'], cfg['crop_pct'], cfg['interpolation'], tuple(cfg['input_size'])) == ('squash', 0.875,
                                                                                                     'bilinear', (3, 32, 32))


def test_cli_runs_with_the_same_seed_are_bit_identical(tmp_path, tiny_resnet18):
    data = write_ldl_csv(tmp_path)
    for run in ('a', 'b'):
        _cli_baseline(data, tmp_path / run, '--init', 'random', '--seed', '3')
    assert (tmp_path / 'a' / 'model.safetensors').read_bytes() == (tmp_path / 'b' / 'model.safetensors').read_bytes()


def test_cli_baseline_starts_from_torchvision_imagenet_weights(tmp_path, monkeypatch, tiny_resnet18):
    """--baseline (--init imagenet) loads timm's resnet18.tv_in1k, the weights of the paper and training.pretrain,
    and names them in history.json and config.json; its licence is theirs."""
    from conftest import write_hf_cache
    from safetensors.torch import save_file

    cache = tmp_path / 'hf'
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(cache))
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
    torch.manual_seed(0)
    imagenet = timm.create_model('resnet18')  # tiny, 1000 classes
    save_file(imagenet.state_dict(), tmp_path / 'model.safetensors')
    write_hf_cache(cache, 'timm/resnet18.tv_in1k', {'model.safetensors': tmp_path / 'model.safetensors'})
    data = write_ldl_csv(tmp_path)
    _cli_baseline(data, tmp_path / 'out', '--lr', '1e-12')
    history = json.loads((tmp_path / 'out' / 'history.json').read_text())
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert history['init'] == config['init'] == 'resnet18.tv_in1k' and config['teachers'] == []
    assert config['pretrained_cfg']['license'] == 'bsd-3-clause'
    trained = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True)
    torch.testing.assert_close(trained.conv1.weight, imagenet.conv1.weight, atol=1e-6, rtol=0)


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
