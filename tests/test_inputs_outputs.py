"""Inputs and outputs of the command line and of a user's own model: bad training files found before the first
step, predictions written safely whatever the labels or logits hold, training failures told in one line, and a
model trained here described by what it was trained with (issue 23)."""
import csv
import errno
import io
import json
import os
from pathlib import Path

import pytest
import timm
import torch

import sentizoo.engine as engine
from helpers import write_images
from sentizoo.cli import main
from sentizoo.saving import save_pretrained

TRAIN = ['--batch-size', '4', '--workers', '0', '--img-size', '32', '--no-progress', '--epochs', '1',
         '--baseline', '--init', 'random']


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- training data: every file's header is checked before the first step -----------------------------------

@pytest.mark.parametrize('layout', ['folder', 'csv'])
def test_an_empty_training_image_is_refused_before_the_first_step(capsys, tmp_path, tiny_resnet18, monkeypatch,
                                                                   layout):
    write_images(tmp_path / 'images')
    (tmp_path / 'images' / 'joy' / '1.jpg').write_bytes(b'')
    (tmp_path / 'images' / 'rage' / '2.jpg').write_text('not an image')
    data = tmp_path / 'images'
    if layout == 'csv':
        data = tmp_path / 'labels.csv'
        data.write_text('path,calm,joy,rage\n' + ''.join(f'images/{name}/{i}.jpg,{int(name == "calm")},'
                                                          f'{int(name == "joy")},{int(name == "rage")}\n'
                                                          for name in ('calm', 'joy', 'rage') for i in range(4)))
    monkeypatch.setattr(engine.Loop, '_train_step', None)  # a step would crash
    code, _, err = _run(capsys, 'amalgamate', 'resnet18', data, '--output', tmp_path / 'out', *TRAIN,
                        *(['--task', 'mll'] if layout == 'csv' else []))
    assert code == 2 and len(err.splitlines()) == 1 and '2 problem(s)' in err
    assert f'{tmp_path / "images" / "joy" / "1.jpg"}: the file is empty (0 bytes)' in err
    assert f'{tmp_path / "images" / "rage" / "2.jpg"}: not an image file' in err


# --- predict's output: what a spreadsheet or a JSON parser reads, and never over the model -----------------

def _save_classifier(folder: Path, labels, broken: bool = False) -> Path:
    """resnet18 (64 px, seeded) with these labels in the zoo format; ``broken``: NaN weights in its head."""
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=len(labels))
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 64, 64))
    if broken:
        torch.nn.init.constant_(model.fc.weight, float('nan'))
    save_pretrained(model, folder, label_names=labels, verbose=False)
    return folder


def _photos(root: Path, names) -> Path:
    from PIL import Image
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new('RGB', (40, 32), (40 * i, 90, 200 - 40 * i)).save(root / name, format='PNG')
    return root


def test_csv_cells_that_would_run_as_formulas_are_neutralised(capsys, tmp_path, monkeypatch):
    labels = ['=HYPERLINK("http://x")', '+1', '-2', '@SUM(1)', 'calm']
    model = _save_classifier(tmp_path / 'model', labels)
    names = ["=cmd|' C calc'!A0.png", '=1+1.png', '@SUM(1+1).png', '+cmd.png', '-x.png', '\tt.png', '\rr.png',
             'plain.png']
    monkeypatch.chdir(_photos(tmp_path / 'photos', names))
    code, out, _ = _run(capsys, 'predict', model, '--format', 'csv', '--top-k', 5, '--workers', 0, '--backend', 'torch',
                        '--', *names)
    rows = list(csv.reader(io.StringIO(out, newline='')))
    assert code == 0 and [row[0] for row in rows[1:]] == [("'" + name if name != 'plain.png' else name)
                                                          for name in names]
    for row in rows[1:]:
        assert sorted(row[1:-1:2]) == sorted(["'" + label if label != 'calm' else label for label in labels])


def test_a_label_with_a_lone_surrogate_is_written_escaped(capsys, tmp_path):
    model = _save_classifier(tmp_path / 'model', ['calm', 'ha\ud800ppy'])
    photos = _photos(tmp_path / 'photos', ['a.png'])
    out = tmp_path / 'out.csv'
    code, _, err = _run(capsys, 'predict', model, photos, '--format', 'csv', '--output', out, '--workers', 0,
                        '--backend', 'torch')
    assert code == 0 and '1 images predicted, 0 failed' in err
    [row] = list(csv.DictReader(out.open(encoding='utf-8')))
    assert {row['label_1'], row['label_2']} == {'calm', 'ha\\ud800ppy'}


def test_nan_logits_are_error_rows_in_valid_json(capsys, tmp_path):
    model = _save_classifier(tmp_path / 'model', ['calm', 'joy', 'rage'], broken=True)
    photos = _photos(tmp_path / 'photos', ['a.png', 'b.png'])
    out = tmp_path / 'out.json'
    code, _, err = _run(capsys, 'predict', model, photos, '--format', 'json', '--output', out, '--workers', 0,
                        '--backend', 'torch')

    def refuse(constant):
        raise ValueError(f'{constant} is not JSON')

    rows = json.loads(out.read_text(), parse_constant=refuse)
    assert code == 1 and '0 images predicted, 2 failed' in err and 'non-finite logits' in err
    assert [(row['predictions'], row['error'].split(':')[0]) for row in rows] == [
        ([], 'the model gave non-finite logits (NaN or inf) for this image')] * 2


@pytest.mark.parametrize('own', ['model.safetensors', 'config.json'])
def test_predict_refuses_to_write_over_the_models_own_files(capsys, tmp_path, own):
    model = _save_classifier(tmp_path / 'model', ['calm', 'joy'])
    before = (model / own).read_bytes()
    photos = _photos(tmp_path / 'photos', ['a.png'])
    code, _, err = _run(capsys, 'predict', model, photos, '--output', model / own, '--workers', 0)
    assert code == 2 and f'--output {model / own} is a file of the model {model} itself' in err
    code, _, err = _run(capsys, 'predict', 'resnet18', photos, '--checkpoint', model / 'model.safetensors',
                        '--output', model / own, '--workers', 0)
    assert code == 2 and 'is a file of the model resnet18 itself' in err
    assert (model / own).read_bytes() == before


# --- training failures: one line, nothing lost, the same command resumes (and says so) ---------------------

def _fail_second_write(monkeypatch, error):
    """The second checkpoint write (epoch 2's last.pt) fails with ``error``, as on a full disk or a read-only folder."""
    import sentizoo.checkpoint as checkpoint
    calls, write = [], checkpoint.atomic_write

    def failing(path, writer):
        calls.append(path)
        if len(calls) == 2:
            raise error
        return write(path, writer)

    monkeypatch.setattr(checkpoint, 'atomic_write', failing)


@pytest.mark.usefixtures('one_thread')
@pytest.mark.parametrize('error, why', [
    (RuntimeError('[enforce fail at inline_container.cc:603] . unexpected pos 128 vs 64\nfile write failed'),
     'file write failed'),  # how torch.save reports a full disk
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), 'Permission denied')], ids=['disk full', 'read-only'])
def test_a_checkpoint_that_cannot_be_written_stops_in_one_line_and_the_rerun_resumes(capsys, tmp_path, tiny_resnet18,
                                                                                    monkeypatch, error, why):
    write_images(tmp_path / 'data')
    run = ['amalgamate', 'resnet18', tmp_path / 'data', '--output', tmp_path / 'out', *TRAIN[:6], '--epochs', 2,
           '--baseline', '--init', 'random']
    assert _run(capsys, *run[:4], tmp_path / 'reference', *run[5:])[0] == 0  # the uninterrupted run
    with monkeypatch.context() as patch:
        _fail_second_write(patch, error)
        code, _, err = _run(capsys, *run)
    checkpoints = tmp_path / 'out' / 'checkpoints'
    last = err.splitlines()[-1]  # below the progress lines
    assert code == 1 and 'Traceback' not in err and f'error: cannot write {checkpoints / "last.pt"} ({why})' in last
    assert last.endswith(f'rerun the same command to resume from the last one in {checkpoints}.')
    assert torch.load(checkpoints / 'last.pt', weights_only=True)['epoch'] == 1  # epoch 1's, intact
    code, _, err = _run(capsys, *run)
    assert code == 0 and f'resuming from {checkpoints / "last.pt"}: 1/2 epochs done' in err
    assert (tmp_path / 'out' / 'model.safetensors').read_bytes() == (tmp_path / 'reference' / 'model.safetensors'
                                                                     ).read_bytes()


@pytest.mark.usefixtures('one_thread')
def test_ctrl_c_during_amalgamate_is_one_line_and_the_rerun_says_where_it_resumes(capsys, tmp_path, tiny_resnet18,
                                                                                 monkeypatch):
    write_images(tmp_path / 'data')
    run = ['amalgamate', 'resnet18', tmp_path / 'data', '--output', tmp_path / 'out', *TRAIN[:6], '--epochs', 2,
           '--baseline', '--init', 'random', '--checkpoint-every', 1]
    step = engine.Loop._train_step

    def interrupted(loop):
        if loop.global_step == 4:  # the second step of epoch 2 (3 steps of 4 images each epoch)
            raise KeyboardInterrupt
        return step(loop)

    with monkeypatch.context() as patch:
        patch.setattr(engine.Loop, '_train_step', interrupted)
        code, _, err = _run(capsys, *run)
    checkpoints = tmp_path / 'out' / 'checkpoints'
    assert code == 130 and err.splitlines()[-1] == ('sentizoo amalgamate: interrupted. Rerun the same command to '
                                                    f'resume from the last checkpoint in {checkpoints}.')
    assert 'Traceback' not in err
    code, _, err = _run(capsys, *run)
    assert code == 0 and f'resuming from {checkpoints / "last.pt"}: 1/2 epochs and 1/3 steps done' in err


def test_more_classes_than_outputs_are_refused_before_the_first_step(tmp_path, monkeypatch):
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    from helpers import tiny
    from sentizoo.amalgamation import TEACHER_TAGS

    write_images(tmp_path, classes=('calm', 'joy', 'rage', 'awe'), per_class=2)
    loader = DataLoader(ImageFolder(str(tmp_path), ToTensor()), batch_size=4)  # the first batch is calm and joy
    monkeypatch.setattr(engine.Loop, '_train_step', None)  # a step would crash
    with pytest.raises(ValueError, match=r'^loader: sll task: targets must be class indices .* in \[0, 2\); got '
                                         r'values in \[0, 3\]'):
        engine.amalgamate(tiny(2), loader, teachers={tag: tiny(0) for tag in TEACHER_TAGS}, epochs=1, progress=False)


# --- a user's own model: described by what it was trained with ----------------------------------------------

@pytest.mark.usefixtures('one_thread')
def test_a_fine_tuned_model_is_saved_with_its_own_preprocessing_and_no_borrowed_licence_or_tag(tmp_path):
    from timm.data import resolve_model_data_config
    from torch.utils.data import DataLoader

    from helpers import TINY
    from sentizoo.datasets import image_folder, paper_data_config, train_transform
    from sentizoo.weights import load_folder

    write_images(tmp_path / 'data')
    loader = DataLoader(image_folder(tmp_path / 'data', train_transform(paper_data_config(32))), batch_size=4)
    model = timm.create_model('resnet18.a1_in1k', num_classes=3, **TINY)  # timm's cfg: bicubic, crop 0.95, apache-2.0
    model = engine.finetune(model, loader, epochs=1, progress=False)
    save_pretrained(model, tmp_path / 'mine', verbose=False)
    cfg = json.loads((tmp_path / 'mine' / 'config.json').read_text())['pretrained_cfg']
    assert {k: cfg.get(k) for k in ('input_size', 'interpolation', 'crop_pct', 'crop_mode')} == {
        'input_size': [3, 32, 32], 'interpolation': 'bilinear', 'crop_pct': 0.875, 'crop_mode': 'squash'}
    assert not {'tag', 'license', 'origin_url', 'paper_ids', 'test_input_size', 'test_crop_pct'} & set(cfg)
    data = resolve_model_data_config(load_folder(tmp_path / 'mine')[0])
    assert (data['input_size'], data['interpolation'], data['crop_pct']) == ((3, 32, 32), 'bilinear', 0.875)


def _own_run(folder: Path) -> Path:
    """A classifier as `sentizoo amalgamate --output` writes it: 32 px, its description, its labels."""
    from sentizoo.datasets import paper_data_config
    from sentizoo.saving import trained_cfg

    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=3)
    model.pretrained_cfg = dict(trained_cfg(model.pretrained_cfg, paper_data_config(32)),
                                description='resnet18 fine-tuned on moods (sll), starting from random.')
    save_pretrained(model, folder, label_names=['calm', 'joy', 'rage'], verbose=False)
    return folder / 'model.safetensors'


def test_export_writes_what_the_run_recorded_under_a_users_own_tag_and_dataset(tmp_path, capsys):
    from training.export import main as export_main

    weights = _own_run(tmp_path / 'run')
    assert export_main(['--checkpoint', str(weights), '--tag', 'moods', '--arch', 'resnet18', '--dataset', 'Moods',
                        '--out', str(tmp_path / 'moods')]) == 0
    card = (tmp_path / 'moods' / 'README.md').read_text()
    assert 'resnet18 fine-tuned on moods (sll), starting from random.' in card and 'fine-tuned on FI' not in card
    assert 'datasets:\n- Moods\n' in card and '**Dataset:** Moods' in card and 'Image size: 32 x 32' in card
    cfg = json.loads((tmp_path / 'moods' / 'config.json').read_text())['pretrained_cfg']
    assert cfg['tag'] == 'moods' and cfg['input_size'] == [3, 32, 32] and 'hf_hub_id' not in cfg
    assert export_main(['--checkpoint', str(weights), '--tag', 'fi', '--arch', 'resnet18', '--out',
                        str(tmp_path / 'fi')]) == 0  # the zoo's tag on other data: nothing borrowed from FI
    card = (tmp_path / 'fi' / 'README.md').read_text()
    assert 'fine-tuned on FI' not in card and 'datasets:' not in card and '(Flickr' not in card
    assert 'resnet18 fine-tuned on moods (sll)' in card and '**Dataset:** not recorded in the checkpoint' in card
    assert 'Image size: 32 x 32' in card


def test_export_takes_a_downstream_result_file_and_refuses_others_in_one_line(tmp_path, capsys):
    from training.export import main as export_main

    weights = _own_run(tmp_path / 'run')
    result = tmp_path / 'amalgamation.json'  # what training.downstream writes for a run (the keys export reads)
    result.write_text(json.dumps({'format': 'sentizoo.downstream/1', 'experiment': 'moods_resnet18', 'run':
                                  'amalgamation', 'dataset': 'moods', 'task': 'sll', 'synthetic': False,
                                  'test': {'accuracy': 0.625}}))
    assert export_main(['--checkpoint', str(weights), '--tag', 'moods', '--arch', 'resnet18', '--out',
                        str(tmp_path / 'out'), '--results', str(result)]) == 0
    card = (tmp_path / 'out' / 'README.md').read_text()
    assert f'| moods | test | sll | accuracy | 0.625 | {result} (moods_resnet18/amalgamation) |' in card
    (tmp_path / 'other.json').write_text('{"accuracy": 0.6}')
    code = export_main(['--checkpoint', str(weights), '--tag', 'moods', '--arch', 'resnet18', '--out',
                        str(tmp_path / 'out'), '--results', str(tmp_path / 'other.json')])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and f'error: {tmp_path / "other.json"}: expected a JSON list' in err


def test_info_takes_a_folder_that_predict_takes_and_verifies_it_alike(capsys, tmp_path):
    model = _save_classifier(tmp_path / 'model', ['calm', 'joy'])
    code, out, _ = _run(capsys, 'info', model)
    assert code == 0 and f'model: {model}\n' in out and 'architecture: resnet18\n' in out
    assert 'labels: 2\nlabel names: calm, joy\n' in out
    assert f'weights: {model / "model.safetensors"} (sha256 verified)' in out
    assert '  input_size: (3, 64, 64)' in out
    data = bytearray((model / 'model.safetensors').read_bytes())
    data[-1] ^= 1
    (model / 'model.safetensors').write_bytes(bytes(data))
    code, out, err = _run(capsys, 'info', model)
    assert code == 1 and 'sha256' in err and err.count('\n') == 1
