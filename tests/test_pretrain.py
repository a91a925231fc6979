"""training.pretrain: fail-fast config, initialisation, resumable task streams, end-to-end ST/HO/HP runs
(export + timm load), exact resume, and a 2-process gloo run. Everything tiny: resnet18 at 32-64 px."""
import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

import sentizoo  # noqa: F401  (registers senti_*)
from sentizoo.checkpoint import load as load_checkpoint
from sentizoo.options import TrainOptions
from sentizoo.sampling import Stream
from training import pretrain as pt
from training.export import export

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run fastest on one thread, above all on cores shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- configuration

@pytest.mark.parametrize('kwargs, error', [
    (dict(model='xx'), r"--model must be one of \('st', 'ho', 'hp'\)"),
    (dict(model='st', arch='resnet34x'), r"--arch 'resnet34x': expected a timm architecture name"),
    (dict(model='st', arch='senti_resnet50'), r"--arch 'senti_resnet50': expected a timm architecture name without"),
    (dict(model='hp', arch='vit_tiny_patch16_224'), r'^vit_tiny_patch16_224 has feature_info reductions \[16\] in 12 '
                                                    r'entries; the pretext heads read four stages'),
    (dict(model='hp', dataset='places365'), r"--dataset 'places365' does not feed the HP tasks"),
    (dict(model='ho'), r'--data-root is required for --dataset places365: a Places365-Standard folder: '
                       r'categories_places365\.txt'),
    (dict(model='hp', data_root='/nonexistent'), r'--data-root /nonexistent is not a folder; expected a folder '
                                                 r'holding vso/'),
    (dict(model='st', dataset='synthetic', epochs=0), r'^--epochs 0 \(an integer >= 1\)$'),
    (dict(model='st', dataset='synthetic', lr_gamma=0, lr_step=0), r'^--lr-step 0 \(an integer >= 1\); --lr-gamma 0 '
                                                                   r'\(a number > 0\)$'),  # TrainOptions' checks
    (dict(model='st', dataset='synthetic', batch_size=0), r'^--batch-size must be >= 1, got 0$'),
    (dict(model='st', dataset='synthetic', init='/no/such.pth'), r'--init /no/such\.pth: no such file'),
    (dict(model='st', dataset='synthetic', resume='/no/last.pt'), r'--resume /no/last\.pt: no such checkpoint'),
])
def test_bad_config_fails_before_training(tmp_path, kwargs, error):
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        pt.pretrain(pt.PretrainConfig(out_dir=str(tmp_path / 'run'), **kwargs))
    assert not (tmp_path / 'run').exists()


def test_data_root_without_the_layout_fails_before_training(tmp_path):
    (tmp_path / 'places').mkdir()
    layout = r'train\.txt not found; expected .* or the official layout \(categories_places365\.txt'
    with pytest.raises(FileNotFoundError, match=layout):
        pt.pretrain(pt.PretrainConfig(model='ho', arch='resnet18', data_root=str(tmp_path / 'places'), init='random',
                                      out_dir=str(tmp_path / 'run')))
    assert not (tmp_path / 'run').exists()


def test_cli_reports_a_bad_config_in_one_line(capsys):
    assert pt.main(['--model', 'hp', '--dataset', 'places365']) == 2
    err = capsys.readouterr().err
    assert err == "python -m training.pretrain: error: --dataset 'places365' does not feed the HP tasks; use one " \
                  "of ('vso+artemis', 'synthetic')\n"


def test_paper_schedule_defaults():
    st = pt.PretrainConfig(model='st', dataset='synthetic').resolved()
    hp = pt.PretrainConfig(model='hp', dataset='synthetic').resolved()
    assert (st.epochs, st.lr_step, st.batch_size, st.lr, st.momentum, st.weight_decay) == (12, 4, 8, 0.01, 0.9, 1e-4)
    assert (hp.epochs, hp.lr_step, hp.batch_size, hp.lr_gamma, hp.init) == (30, 10, 32, 0.1, 'imagenet')
    assert st.command() == 'python -m training.pretrain --model st --dataset synthetic --epochs 12 --batch-size 8 ' \
                           '--lr-step 4 --out-dir runs/pretrain/st_resnet50'
    # the training loop's options: the recipe's epochs, lr and step, every other one TrainOptions' own default
    assert st.train_options('cpu') == TrainOptions(epochs=12, lr=0.01, step_size=4, checkpoint_dir=st.out_dir,
                                                   device='cpu')
    flags = pt.PretrainConfig(model='ho', dataset='synthetic', lr_gamma=0.5, save_every=3, amp='off').resolved()
    assert flags.train_options('cuda:1') == TrainOptions(epochs=30, lr=0.01, step_size=10, gamma=0.5,
                                                         checkpoint_dir=flags.out_dir, checkpoint_every=3, amp=False,
                                                         device='cuda:1')


# --------------------------------------------------------------------------------------- initialisation

def test_init_from_torchvision_and_safetensors_files(tmp_path):
    import torchvision
    from safetensors.torch import save_file
    torch.manual_seed(1)
    reference = torchvision.models.resnet18().state_dict()  # torchvision layout, with its fc
    torch.save(reference, tmp_path / 'resnet18-tv.pth')
    save_file({k: v.contiguous() for k, v in reference.items()}, str(tmp_path / 'resnet18.safetensors'))
    for name in ('resnet18-tv.pth', 'resnet18.safetensors'):
        backbone = timm.create_model('resnet18', num_classes=0)
        assert pt.init_backbone(backbone, 'resnet18', str(tmp_path / name)) == f'ImageNet file {name}'
        assert all(torch.equal(v, reference[k]) for k, v in backbone.state_dict().items())
    with pytest.raises(ValueError, match=r'does not fit ResNet: missing \[.*wrong shape'):
        pt.init_backbone(timm.create_model('resnet50', num_classes=0), 'resnet50', str(tmp_path / 'resnet18-tv.pth'))


def test_init_random_warns_and_imagenet_offline_says_what_to_do():
    """Offline (HF_HUB_OFFLINE set after huggingface_hub was imported, as here), missing ImageNet weights fail at
    once: no download attempts (46 s here before) against a hub the user said not to ask."""
    from sentizoo.amalgamation import create_target

    backbone = timm.create_model('resnet18', num_classes=0)
    with pytest.warns(UserWarning, match='random initialisation: the paper starts every backbone from ImageNet'):
        assert pt.init_backbone(backbone, 'resnet18', 'random') == 'random'
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r'timm/resnet18\.tv_in1k .*--init FILE .* or --init random'):
        pt.init_backbone(backbone, 'resnet18', 'imagenet')  # the test zoo is offline
    with pytest.raises(OSError, match=r'resnet18\.tv_in1k is in neither .* HF_HUB_OFFLINE is set'):
        create_target('resnet18', 2, 'imagenet')
    assert time.monotonic() - start < 10


# ------------------------------------------------------------------------------------------ end to end

def tiny(kind, out_dir, **kwargs):
    """A few steps of resnet18 at 32 px on the synthetic world."""
    return pt.PretrainConfig(**{**dict(model=kind, arch='resnet18', dataset='synthetic', image_size=32, epochs=1,
                                       steps_per_epoch=2, batch_size=2, max_samples=8, workers=0, init='random',
                                       progress=False, out_dir=str(out_dir)), **kwargs})


TASKS = {'st': ('colorization', 'super_resolution'), 'ho': ('scene', 'jigsaw'), 'hp': ('anp', 'captioning')}


@pytest.mark.filterwarnings('ignore:pre-training resnet18 from a random initialisation')
@pytest.mark.parametrize('kind', ['st', 'ho', 'hp'])
def test_pretrain_export_and_load_with_timm(tmp_path, kind):
    final = pt.pretrain(tiny(kind, tmp_path / 'run'))
    assert final == tmp_path / 'run' / 'final.pt'
    ckpt = load_checkpoint(final)
    assert ckpt['tasks'] == list(TASKS[kind]) and ckpt['global_step'] == 2 and ckpt['epoch'] == 1
    assert 'optimizer' not in ckpt  # final.pt: weights + facts; last.pt resumes
    with open(tmp_path / 'run' / 'log.csv') as f:
        header = f.readline().strip().split(',')
    assert header == ['step', 'epoch', 'lr', 'loss', *TASKS[kind], 'time']
    history = json.loads((tmp_path / 'run' / 'history.json').read_text())
    assert [h['epoch'] for h in history] == [1] and (tmp_path / 'run' / 'loss.png').stat().st_size > 0

    export(final, kind)
    model = timm.create_model(f'senti_resnet18.{kind}', pretrained=True)
    backbone = {k.removeprefix('backbone.'): v for k, v in ckpt['model'].items() if k.startswith('backbone.')}
    assert model.state_dict().keys() == backbone.keys()
    assert all(torch.equal(v, backbone[k]) for k, v in model.state_dict().items())


@pytest.mark.filterwarnings('ignore:pre-training convnext_atto from a random initialisation')
def test_any_timm_backbone_pretrains_and_loads_back_as_a_teacher(tmp_path, isolated_zoo):
    """convnext_atto, outside the senti_* registry: pre-trained, exported (as senti_convnext_atto.hp, into
    $SENTIZOO_HOME), and loaded back through local-dir:, hf-hub: and load_teachers."""
    from helpers import write_hf_cache
    from sentizoo.amalgamation import load_teachers
    from sentizoo.weights import WeightsNotFoundError, load_folder, resolve_folder

    final = pt.pretrain(tiny('hp', tmp_path / 'run', arch='convnext_atto', steps_per_epoch=1))
    trained = {k.removeprefix('backbone.'): v for k, v in load_checkpoint(final)['model'].items()
               if k.startswith('backbone.')}
    name, folder, _ = export(final, 'hp', verbose=False)
    assert (name, folder) == ('senti_convnext_atto.hp', isolated_zoo / 'senti_convnext_atto.hp')
    assert "timm.create_model('hf-hub:sentizoo/senti_convnext_atto.hp'" in (folder / 'README.md').read_text()
    write_hf_cache(os.environ['HF_HUB_CACHE'], 'me/senti_convnext_atto.hp',
                   {f: folder / f for f in ('config.json', 'model.safetensors')})
    for source in (f'local-dir:{folder}', 'hf-hub:me/senti_convnext_atto.hp'):
        model, config = load_folder(*resolve_folder(source))
        assert config['architecture'] == 'convnext_atto' and model.state_dict().keys() == trained.keys()
        assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    for teachers in ('convnext_atto', 'hf-hub:me/senti_convnext_atto'):
        teacher = load_teachers(teachers, 3, tags=('hp',))['hp']  # the backbone with a fresh 3-way head
        assert teacher.num_classes == 3 and all(torch.equal(v, teacher.state_dict()[k]) for k, v in trained.items())
    with pytest.raises(WeightsNotFoundError, match=r'senti_convnext_atto\.st: no such folder.* python -m '
                                                   r'training\.pretrain --model st --arch convnext_atto'):
        load_teachers('convnext_atto', 3)  # only HP was exported: the error says how to make ST


class Crash(Exception):
    pass


@pytest.mark.filterwarnings('ignore:pre-training resnet18 from a random initialisation')
def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    config = dict(epochs=2, save_every=1)
    straight = load_checkpoint(pt.pretrain(tiny('ho', tmp_path / 'a', **config)))

    calls, next_batch = [0], Stream.next

    def crash_in_step_3(stream):  # two streams: calls 5 and 6 load step 3 (epoch 2, after a checkpoint)
        calls[0] += 1
        if calls[0] == 5:
            raise Crash
        return next_batch(stream)

    monkeypatch.setattr(Stream, 'next', crash_in_step_3)
    with pytest.raises(Crash):
        pt.pretrain(tiny('ho', tmp_path / 'b', **config))
    assert load_checkpoint(tmp_path / 'b' / 'last.pt')['global_step'] == 2
    monkeypatch.setattr(Stream, 'next', next_batch)
    resumed = load_checkpoint(pt.pretrain(tiny('ho', tmp_path / 'b', resume='auto', **config)))
    assert resumed['global_step'] == straight['global_step'] == 4
    assert all(torch.equal(v, straight['model'][k]) for k, v in resumed['model'].items())  # bit-identical
    logs = [(tmp_path / run / 'log.csv').read_text().splitlines() for run in 'ab']
    assert [r.rsplit(',', 1)[0] for r in logs[0]] == [r.rsplit(',', 1)[0] for r in logs[1]]  # same losses, no dup
    with pytest.raises(ValueError, match=r'other settings \(seed: checkpoint 0, now 1\)'):
        pt.pretrain(tiny('ho', tmp_path / 'b', resume=str(tmp_path / 'b' / 'last.pt'), seed=1))


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_gloo_run(tmp_path):
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(_free_port()),
           '-m', 'training.pretrain', '--model', 'st', '--arch', 'resnet18', '--dataset', 'synthetic',
           '--image-size', '32', '--epochs', '1', '--steps-per-epoch', '2', '--batch-size', '2', '--max-samples', '8',
           '--workers', '0', '--init', 'random', '--no-progress', '--out-dir', str(out)]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / 'final.pt')
    assert ckpt['world_size'] == 2 and ckpt['global_step'] == 2
    assert len((out / 'log.csv').read_text().splitlines()) == 3  # header + 2 steps, written once (rank 0)
    assert proc.stdout.strip().splitlines()[-1] == str(out / 'final.pt')  # printed by rank 0 only


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit):
        pt.parse_args(['--help'])
    text = capsys.readouterr().out
    for phrase in ('torchrun', 'colorization + super-resolution', 'paper: ST 12, HO/HP 30', '--resume', 'vso/'):
        assert phrase in text


@pytest.mark.filterwarnings('ignore:pre-training resnet18 from a random initialisation')
def test_non_finite_loss_stops_with_the_engine_error(tmp_path, monkeypatch):
    from sentizoo.engine import NonFiniteLossError
    from training.pretext.jigsaw import Jigsaw
    monkeypatch.setattr(Jigsaw, 'loss', lambda self, logits, index: logits.sum() * float('nan'))
    with pytest.raises(NonFiniteLossError, match=r'Non-finite loss at step 1 \(epoch 1, batch 1/2\): jigsaw=nan'):
        pt.pretrain(tiny('ho', tmp_path / 'run'))


@pytest.mark.filterwarnings('ignore:pre-training resnet18 from a random initialisation')
def test_loggers_get_the_rows_of_log_csv_and_history_json(tmp_path):
    from helpers import Recorder
    recorder = Recorder()
    pt.pretrain(tiny('hp', tmp_path / 'run', epochs=2, log_every=2, steps_per_epoch=3), loggers=[recorder])
    with open(tmp_path / 'run' / 'log.csv') as f:
        csv_rows = list(csv.DictReader(f))
    assert [r['step'] for r in csv_rows] == ['2', '3', '4', '6']  # every 2nd step and each epoch's last
    by_step = {r['step']: r for r in recorder.rows}
    assert [{k: str(v) for k, v in by_step[int(r['step'])].items()} for r in csv_rows] == csv_rows
    history = json.loads((tmp_path / 'run' / 'history.json').read_text())
    assert [dict(epoch=r['epoch'], lr=r['lr'], steps=3, **r['train']) for r in recorder.records] == history
    assert history[0]['loss'] == pytest.approx(sum(by_step[s]['loss'] for s in (1, 2, 3)) / 3, rel=1e-12)


@pytest.mark.filterwarnings('ignore:pre-training resnet18 from a random initialisation')
def test_progress_in_a_pipe_is_plain_lines(tmp_path, capsys):
    """stderr is not a terminal here: no carriage-return bar, plain lines (steps, then the epoch's summary)."""
    pt.pretrain(tiny('ho', tmp_path / 'run', progress=True, steps_per_epoch=3))
    err = capsys.readouterr().err
    assert '\r' not in err
    lines = [line.split('  ')[:2] for line in err.splitlines() if line.startswith('HO epoch')]
    assert lines[:2] == [['HO epoch 1/1', f'step {s}/3'] for s in (1, 2)] and len(lines) == 3
    assert lines[2][1].startswith('loss ') and '(scene ' in lines[2][1]


# the held-out split the study and training.pretext_eval measure on
def test_heldout_pretraining_data_is_another_split_centre_cropped():
    config = pt.PretrainConfig(model='ho', arch='resnet18', dataset='synthetic', image_size=32, max_samples=4).resolved()
    train, heldout = dict(pt.build_datasets(config)), dict(pt.build_datasets(config, heldout=True))
    assert (train['scene'].split, heldout['scene'].split) == ('train', 'test')
    first, second = heldout['scene'][0], heldout['scene'][0]
    assert torch.equal(first[0], second[0])  # no random crop or flip
    assert not torch.equal(train['scene'][0][0], first[0])
