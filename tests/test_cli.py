"""The sentizoo CLI (the sentizoo/cli/ package), in-process through main(argv) and once through `python -m sentizoo`:
predict, list, info, export-onnx, amalgamate, evaluate and their errors. The fixtures (weights_dir, zoo, images, bomb_limit, tiny_folder) are in conftest.py."""
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.data import create_transform, resolve_model_data_config
from torch.utils.data import DataLoader

import sentizoo.engine as engine
import sentizoo.onnx as sonnx
from helpers import BAD, MODEL, TINY_LABELS, TINY_SIZE, write_hf_cache, write_images, write_ldl_csv
from sentizoo.amalgamation import TEACHER_TAGS
from sentizoo.cli import main
from sentizoo.images import load_image
from sentizoo.models import FI_LABELS
from sentizoo.saving import save_pretrained
from sentizoo.weights import sha256_file


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _expected_probabilities(path: Path) -> torch.Tensor:
    model = timm.create_model(MODEL, pretrained=True).eval()
    x = create_transform(**resolve_model_data_config(model))(load_image(path))
    with torch.inference_mode():
        return model(x[None]).softmax(-1)[0]


def test_predict_json_rows_errors_and_exit_code(capsys, zoo, images, bomb_limit):
    code, out, err = _run(capsys, 'predict', MODEL, images, '--format', 'json', '--top-k', 3, '--workers', 0,
                          '--batch-size', 2)
    assert code == 1
    rows = json.loads(out)
    assert [Path(r['path']).name for r in rows] == ['a_gradient.jpg', 'b_alpha.png', 'bomb.png', 'empty.jpg',
                                                     'noise.jpg', 'text.jpg', 'truncated.jpg']
    for row in rows:
        name = Path(row['path']).name
        if name in BAD:
            assert row['predictions'] == [] and BAD[name] in row['error']
            assert f'error: Cannot load image {row["path"]}' in err
        else:
            assert row['error'] is None
            probs = [p['probability'] for p in row['predictions']]
            assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
            assert all(p['label'] in FI_LABELS for p in row['predictions'])
    assert '3 images predicted, 4 failed' in err
    # the rows are the model's own softmax on load_image + the model's timm transform
    expected = _expected_probabilities(images / 'sub' / 'noise.jpg')
    got = {p['label']: p['probability'] for p in rows[4]['predictions']}
    top = expected.topk(3)
    assert list(got) == [FI_LABELS[i] for i in top.indices]
    assert list(got.values()) == pytest.approx(top.values.tolist(), abs=1e-5)


def test_predict_only_good_files_in_workers_csv(capsys, zoo, images, tmp_path):
    good = [images / 'a_gradient.jpg', images / 'b_alpha.png', images / 'sub']
    output = tmp_path / 'out.csv'
    code, out, _ = _run(capsys, 'predict', MODEL, *good, '--format', 'csv', '--top-k', 20, '--workers', 1,
                        '--output', output)
    assert code == 0 and out == ''
    rows = list(csv.DictReader(io.StringIO(output.read_text())))
    assert [Path(r['path']).name for r in rows] == ['a_gradient.jpg', 'b_alpha.png', 'noise.jpg']
    assert list(rows[0]) == ['path', *[f'{f}_{i}' for i in range(1, 9) for f in ('label', 'probability')], 'error']
    for row in rows:  # top-k capped at the 8 classes: all of them, summing to 1
        assert sorted(row[f'label_{i}'] for i in range(1, 9)) == sorted(FI_LABELS) and row['error'] == ''
        assert sum(float(row[f'probability_{i}']) for i in range(1, 9)) == pytest.approx(1, abs=1e-5)


def test_predict_table_and_checkpoint(capsys, images, weights_dir):
    # --checkpoint needs nothing in the zoo; the bad rows say ERROR
    code, out, err = _run(capsys, 'predict', MODEL, images / 'a_gradient.jpg', images / 'text.jpg',
                          '--checkpoint', weights_dir / 'model.safetensors', '--top-k', 2, '--workers', 0)
    assert code == 1
    header, first, second = out.splitlines()
    assert header.split() == ['path', 'top-1', 'top-2']
    label1, p1, label2, p2 = first.split()[1:]
    assert {label1, label2} <= set(FI_LABELS) and 1 >= float(p1) >= float(p2) > 0
    assert second.split()[:2] == [str(images / 'text.jpg'), 'ERROR:']


def test_predict_usage_errors(capsys, zoo, images, tmp_path):
    code, _, err = _run(capsys, 'predict', 'senti_resnet18.hp', images)
    assert code == 2 and 'no classifier' in err and 'senti_resnet18.fi' in err
    code, _, err = _run(capsys, 'predict', MODEL, images, tmp_path / 'missing')
    assert code == 2 and str(tmp_path / 'missing') in err
    code, _, err = _run(capsys, 'predict', 'no_such_model', images)
    assert code == 2 and 'unknown model' in err
    code, _, err = _run(capsys, 'predict', MODEL, images, '--checkpoint', tmp_path / 'model.pth')
    assert code == 2 and '.safetensors' in err
    (tmp_path / 'empty_dir').mkdir()
    code, _, err = _run(capsys, 'predict', MODEL, tmp_path / 'empty_dir')
    assert code == 2 and 'no image files' in err
    with pytest.raises(SystemExit) as info:  # argparse: malformed arguments
        main(['predict', MODEL, str(images), '--format', 'xml'])
    assert info.value.code == 2


def test_predict_without_weights_names_the_fix(capsys, images):
    code, out, err = _run(capsys, 'predict', 'senti_resnet50.fi', images / 'a_gradient.jpg')
    assert code == 1 and out == '' and 'No weights found for senti_resnet50.fi' in err and 'SENTIZOO_HOME' in err
    assert 'python -m training.demo --arch ARCH` for small synthetic ones' in err  # the demo's default is test_resnet


def test_list_and_info(capsys, zoo):
    code, out, _ = _run(capsys, 'list')
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert code == 0 and len(lines) == 20
    assert lines[MODEL].split()[1:] == ['8', str(zoo / MODEL / 'model.safetensors')]
    assert lines['senti_resnet50.hp'].split()[1:] == ['-', '(backbone)', 'no']

    code, out, _ = _run(capsys, 'info', 'senti_resnet18.fi')
    assert code == 0 and f'weights: {zoo / MODEL / "model.safetensors"}' in out
    assert f'label names: {", ".join(FI_LABELS)}' in out and 'crop_pct: 0.875' in out
    code, out, _ = _run(capsys, 'info', 'senti_resnet50')  # default tag, weights missing
    assert code == 0 and 'model: senti_resnet50.hp' in out and 'no classifier' in out
    assert 'No weights found for senti_resnet50.hp' in out
    code, _, err = _run(capsys, 'info', 'senti_resnet50.zz')
    assert code == 2 and 'Invalid pretrained tag' in err


def test_info_reports_a_checksum_mismatch(capsys, isolated_zoo):
    folder = isolated_zoo / 'senti_resnet18.st'
    folder.mkdir(parents=True)
    (folder / 'model.safetensors').write_bytes(b'not the published file')
    (folder / 'config.json').write_text(json.dumps({'sha256': '0' * 64}))
    code, out, _ = _run(capsys, 'info', 'senti_resnet18.st')
    assert code == 1 and f'expected {"0" * 64}' in out and str(folder / 'model.safetensors') in out


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(['--help'])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert all(command in out for command in ('list', 'info', 'predict', 'amalgamate', 'evaluate'))


def test_python_m_sentizoo(zoo, images):
    result = subprocess.run([sys.executable, '-m', 'sentizoo', 'predict', MODEL, str(images / 'sub'),
                             str(images / 'empty.jpg'), '--format', 'json', '--workers', '1'],
                            capture_output=True, text=True, env=os.environ, timeout=120)
    assert result.returncode == 1, result.stderr
    good, bad = json.loads(result.stdout)
    assert len(good['predictions']) == 3 and bad['error'] == 'the file is empty (0 bytes)'


def test_predict_takes_folders_hub_names_and_checkpoints_of_any_size(capsys, images, tmp_path, monkeypatch):
    """A 3-class model saved by save_pretrained (what `sentizoo amalgamate` writes) predicts the same from its
    folder, a local-dir: or hf-hub: name, and a timm name + its weight file, with its own label names."""
    torch.manual_seed(0)
    folder = tmp_path / 'moods'
    save_pretrained(timm.create_model('resnet18', num_classes=3), folder, label_names=['calm', 'joy', 'rage'],
                    verbose=False)
    cache = tmp_path / 'hf'
    write_hf_cache(cache, 'someone/moods', {n: folder / n for n in ('model.safetensors', 'config.json')})
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))  # sentizoo reads the environment, timm the constant
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(cache))
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
    outputs = []
    for model in (folder, f'local-dir:{folder}', 'hf-hub:someone/moods', 'resnet18'):
        extra = ['--checkpoint', folder / 'model.safetensors'] if model == 'resnet18' else []
        code, out, err = _run(capsys, 'predict', model, images / 'a_gradient.jpg', '--format', 'json', '--workers', 0,
                              *extra)
        assert code == 0, err
        outputs.append(json.loads(out))
    assert outputs[0] == outputs[1] == outputs[2] == outputs[3]
    assert {p['label'] for p in outputs[0][0]['predictions']} == {'calm', 'joy', 'rage'}
    # a bare weight file: its classifier gives the number of classes, the labels are indices
    (tmp_path / 'bare').mkdir()
    (tmp_path / 'bare' / 'w.safetensors').write_bytes((folder / 'model.safetensors').read_bytes())
    code, out, _ = _run(capsys, 'predict', 'resnet18', images / 'a_gradient.jpg', '--format', 'json', '--workers', 0,
                        '--checkpoint', tmp_path / 'bare' / 'w.safetensors')
    assert code == 0 and [p['probability'] for p in json.loads(out)[0]['predictions']] == [
        p['probability'] for p in outputs[0][0]['predictions']]
    assert {p['label'] for p in json.loads(out)[0]['predictions']} == {'0', '1', '2'}


def test_output_into_a_closed_pipe_exits_quietly(zoo):
    """`sentizoo list | head -0`: the reader is gone before anything is written; no traceback."""
    proc = subprocess.Popen([sys.executable, '-m', 'sentizoo', 'list'], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert 'Traceback' not in err and 'BrokenPipeError' not in err, err


# ---------------------------------------------------------- predict --backend and export-onnx (sentizoo.onnx)

def _predict(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, json.loads(out), [line for line in err.splitlines() if 'exported to ONNX' not in line]


def test_predict_rows_identical_across_backends(capsys, zoo, images, bomb_limit):
    argv = ('predict', MODEL, images, '--format', 'json', '--top-k', 3, '--workers', 0, '--batch-size', 2)
    code_torch, rows_torch, err_torch = _predict(capsys, *argv, '--backend', 'torch')
    code_ort, rows_ort, err_ort = _predict(capsys, *argv, '--backend', 'onnxruntime')
    assert code_torch == code_ort == 1 and err_torch == err_ort and len(rows_torch) == 7
    for torch_row, ort_row in zip(rows_torch, rows_ort, strict=True):
        assert ort_row['path'] == torch_row['path'] and ort_row['error'] == torch_row['error']
        assert Path(torch_row['path']).name in BAD or torch_row['error'] is None
        assert [p['label'] for p in ort_row['predictions']] == [p['label'] for p in torch_row['predictions']]
        assert [p['probability'] for p in ort_row['predictions']] == pytest.approx(
            [p['probability'] for p in torch_row['predictions']], abs=1e-6)
    weights = zoo / MODEL / 'model.safetensors'
    cached = zoo / MODEL / sonnx.cache_name(timm.create_model(MODEL, pretrained=True), weights, sha256_file(weights))
    assert cached.is_file()
    mtime = cached.stat().st_mtime_ns
    code_auto, rows_auto, _ = _predict(capsys, *argv)  # auto: ONNX Runtime, from the cache
    assert (code_auto, rows_auto) == (code_ort, rows_ort) and cached.stat().st_mtime_ns == mtime


def test_predict_backend_usage_errors(capsys, zoo, images, monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    code = main(['predict', MODEL, str(images / 'a_gradient.jpg'), '--backend', 'onnxruntime', '--workers', '0'])
    assert code == 2 and 'pip install "sentizoo[onnx]"' in capsys.readouterr().err
    assert main(['export-onnx', MODEL, str(images / 'out.onnx')]) == 2
    assert 'pip install "sentizoo[onnx]"' in capsys.readouterr().err and not (images / 'out.onnx').exists()


def test_export_onnx_command(capsys, tiny_folder, tmp_path):
    assert main(['export-onnx', str(tiny_folder), str(tmp_path / 'out.onnx')]) == 0
    assert f'wrote {tmp_path / "out.onnx"} (opset 17, input [3, {TINY_SIZE}, {TINY_SIZE}]' in capsys.readouterr().err
    metadata = sonnx.read_metadata(tmp_path / 'out.onnx')
    assert metadata['label_names'] == TINY_LABELS and metadata['model'] == str(tiny_folder)
    assert metadata['weights_sha256'] == sha256_file(tiny_folder / 'model.safetensors')
    assert main(['export-onnx', f'local-dir:{tiny_folder}', str(tmp_path / 'local.onnx')]) == 0
    assert sonnx.read_metadata(tmp_path / 'local.onnx')['data_config'] == metadata['data_config']
    assert main(['export-onnx', str(tiny_folder), str(tmp_path / 'out.txt')]) == 2
    assert '.onnx file' in capsys.readouterr().err
    assert main(['export-onnx', 'senti_resnet18.fi', str(tmp_path / 'fi.onnx')]) == 1  # no weights in the zoo
    assert 'No weights found for senti_resnet18.fi' in capsys.readouterr().err


# --- amalgamate / evaluate ----------------------------------------------------------------------------

@pytest.mark.usefixtures('one_thread')
def test_cli_amalgamate_and_evaluate_image_folder(tmp_path, isolated_zoo, capsys, tiny_resnet18):
    torch.manual_seed(0)
    for tag in TEACHER_TAGS:  # the zoo holds (tiny) senti_resnet18 backbones
        save_pretrained(timm.create_model('resnet18', num_classes=0), isolated_zoo / f'senti_resnet18.{tag}',
                        verbose=False)
    write_images(tmp_path / 'data')
    out = tmp_path / 'out'
    common = ['--batch-size', '4', '--workers', '0', '--img-size', '32', '--no-progress']
    assert main(['amalgamate', 'resnet18', str(tmp_path / 'data'), '--val', str(tmp_path / 'data'), '--output',
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
    assert main(['evaluate', str(out), str(tmp_path / 'data'), '--format', 'json', *common]) == 0
    best = history['epochs'][history['best_epoch'] - 1]['val']
    assert json.loads(capsys.readouterr().out) == pytest.approx(best)


@pytest.mark.usefixtures('one_thread')
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
    assert main(['amalgamate', 'resnet18', data, '--baseline', '--init', 'random', '--epochs', '1',
                     '--output', str(out), *common]) == 0
    capsys.readouterr()
    assert main(['evaluate', str(out), data, *common[:-2]]) == 0  # the task comes from the saved config
    table = capsys.readouterr().out
    assert [line.split()[0] for line in table.splitlines()] == ['hamming_loss', 'ranking_loss', 'micro_f1', 'macro_f1']
    # errors before training: a CSV without --task, labels outside 0/1 for mll, a missing folder
    assert main(['amalgamate', 'resnet18', data, '--baseline', '--output', str(out), *common[:-2]]) == 2
    assert 'pass --task mll' in capsys.readouterr().err
    assert main(['evaluate', str(out), str(tmp_path / 'images'), *common]) == 2
    assert 'mll task: targets must be multi-hot' in capsys.readouterr().err
    assert main(['evaluate', str(out), str(tmp_path / 'nowhere'), *common]) == 2
    assert 'does not exist' in capsys.readouterr().err


def _cli_baseline(data: Path, out: Path, *extra: str) -> None:
    assert main(['amalgamate', 'resnet18', str(data), '--baseline', '--epochs', '1', '--output', str(out),
                     '--batch-size', '4', '--workers', '0', '--img-size', '32', '--no-progress', '--task', 'ldl',
                     *extra]) == 0


@pytest.mark.usefixtures('one_thread')
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
    assert main(['evaluate', str(out), str(data), '--format', 'json', '--workers', '0', '--no-progress']) == 0
    cli = json.loads(capsys.readouterr().out)

    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    transform = create_transform(**resolve_data_config(model=model))
    python = engine.evaluate(model, DataLoader(image_csv(data, transform), batch_size=32), 'ldl')  # the CLI's batch
    training = engine.evaluate(model, DataLoader(image_csv(data, split_transforms(32)['test']), batch_size=32), 'ldl')
    assert cli == python == training
    cfg = model.pretrained_cfg
    assert (cfg['crop_mode'], cfg['crop_pct'], cfg['interpolation'], tuple(cfg['input_size'])) == ('squash', 0.875,
                                                                                                     'bilinear', (3, 32, 32))


@pytest.mark.usefixtures('one_thread')
def test_cli_runs_with_the_same_seed_are_bit_identical(tmp_path, tiny_resnet18):
    data = write_ldl_csv(tmp_path)
    for run in ('a', 'b'):
        _cli_baseline(data, tmp_path / run, '--init', 'random', '--seed', '3')
    assert (tmp_path / 'a' / 'model.safetensors').read_bytes() == (tmp_path / 'b' / 'model.safetensors').read_bytes()


@pytest.mark.usefixtures('one_thread')
def test_cli_baseline_starts_from_torchvision_imagenet_weights(tmp_path, monkeypatch, tiny_resnet18):
    """--baseline (--init imagenet) loads timm's resnet18.tv_in1k, the weights of the paper and training.pretrain,
    and names them in history.json and config.json; its licence is theirs."""
    from safetensors.torch import save_file

    cache = tmp_path / 'hf'
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))  # as a user's environment sets both
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



def test_cli_choices_are_the_librarys_names():
    """--init and --task offer what the library defines (TARGET_INITS, DOWNSTREAM_TASKS), not a copy of them."""
    from sentizoo.amalgamation import TARGET_INITS
    from sentizoo.cli import build_parser
    from sentizoo.tasks import DOWNSTREAM_TASKS

    commands = next(a for a in build_parser()._actions if a.choices and 'amalgamate' in a.choices).choices
    options = {command: {o: a.choices for a in commands[command]._actions for o in a.option_strings}
               for command in ('amalgamate', 'evaluate')}
    assert tuple(options['amalgamate']['--init']) == TARGET_INITS
    assert tuple(options['amalgamate']['--task']) == tuple(options['evaluate']['--task']) == tuple(DOWNSTREAM_TASKS)
