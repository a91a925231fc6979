"""sentizoo.onnx: verified export and its metadata, the predict backends, the export cache (offline, tiny models)."""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch
from timm.data import resolve_model_data_config

import sentizoo.onnx as sonnx
from sentizoo.cli import main
from sentizoo.saving import save_pretrained
from sentizoo.weights import sha256_file
from test_cli import BAD, MODEL, bomb_limit, images, weights_dir, zoo  # noqa: F401  (fixtures)

LABELS = ['calm', 'happy', 'sad', 'tense']
SIZE = 64


def _tiny(seed: int = 0) -> torch.nn.Module:
    """resnet18 with 4 labelled classes at 64 px, random (seeded) weights."""
    torch.manual_seed(seed)
    model = timm.create_model('resnet18', num_classes=len(LABELS))
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, SIZE, SIZE), label_names=LABELS)
    return model.eval()


@pytest.fixture
def folder(tmp_path) -> Path:
    """A zoo folder (as `sentizoo amalgamate` writes it) of the tiny model."""
    save_pretrained(_tiny(), tmp_path / 'tiny', verbose=False)
    return tmp_path / 'tiny'


def _local(folder: Path) -> torch.nn.Module:
    return timm.create_model(f'local-dir:{folder}', pretrained=True).eval()


def test_export_round_trip_and_metadata(tmp_path):
    model = _tiny()
    written = sonnx.export_onnx(model, tmp_path / 'tiny.onnx', weights_sha256='ab' * 32)
    session = onnxruntime.InferenceSession(str(tmp_path / 'tiny.onnx'), providers=['CPUExecutionProvider'])
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert (graph_input.name, graph_input.shape) == ('images', ['batch', 3, SIZE, SIZE])
    assert (graph_output.name, graph_output.shape) == ('logits', ['batch', len(LABELS)])
    images = torch.randn(5, 3, SIZE, SIZE)  # neither the traced batch (2) nor the checked one (3)
    with torch.inference_mode():
        expected = model(images)
    got = torch.from_numpy(session.run(None, {'images': images.numpy()})[0])
    torch.testing.assert_close(got, expected, atol=sonnx.ATOL, rtol=sonnx.RTOL)

    metadata = sonnx.read_metadata(tmp_path / 'tiny.onnx')
    assert metadata == written
    assert metadata['label_names'] == LABELS and metadata['weights_sha256'] == 'ab' * 32
    config = resolve_model_data_config(model)
    assert metadata['data_config'] == {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    assert metadata['opset'] == sonnx.DEFAULT_OPSET
    assert [o.version for o in onnx.load(str(tmp_path / 'tiny.onnx')).opset_import if o.domain == ''] == [17]
    assert metadata['tolerance'] == {'atol': sonnx.ATOL, 'rtol': sonnx.RTOL}
    assert 0 <= metadata['max_abs_diff'] <= sonnx.ATOL


class ExportsWrong(torch.nn.Module):
    """Computes something else while being exported (``+ 0.01``, or one logit less): the graph cannot match."""

    def __init__(self, drop_a_logit: bool = False):
        super().__init__()
        self.inner = _tiny()
        self.pretrained_cfg = self.inner.pretrained_cfg
        self.num_classes = self.inner.num_classes
        self.drop_a_logit = drop_a_logit

    def forward(self, x):
        logits = self.inner(x)
        if not torch.onnx.is_in_onnx_export():
            return logits
        return logits[:, 1:] if self.drop_a_logit else logits + 1e-2


def test_export_refuses_a_graph_that_disagrees(tmp_path):
    tolerance = r'\(tolerance 0\.0001 \+ 0\.001 x \|eager\|\)'
    with pytest.raises(sonnx.ExportMismatchError, match=rf'batch of 3: max abs difference 0\.01 {tolerance}; nothing '):
        sonnx.export_onnx(ExportsWrong(), tmp_path / 'wrong.onnx')
    with pytest.raises(sonnx.ExportMismatchError, match=r'output shape \(3, 3\) instead of \(3, 4\); nothing was'):
        sonnx.export_onnx(ExportsWrong(drop_a_logit=True), tmp_path / 'wrong.onnx')
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_resolve_backend_with_and_without_onnxruntime(monkeypatch):
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    assert sonnx.resolve_backend('auto', cpu) == 'onnxruntime'
    assert sonnx.resolve_backend('auto', cuda) == 'torch'
    assert sonnx.resolve_backend('torch', cpu) == 'torch'
    assert sonnx.resolve_backend('onnxruntime', cpu) == 'onnxruntime'
    with pytest.raises(ValueError, match='runs on the CPU.*--device cpu'):
        sonnx.resolve_backend('onnxruntime', cuda)
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # `import onnxruntime` now raises ImportError
    assert sonnx.resolve_backend('auto', cpu) == 'torch'
    with pytest.raises(ValueError, match=r'not installed; pip install "sentizoo\[onnx\]"'):
        sonnx.resolve_backend('onnxruntime', cpu)


def test_export_cache_is_keyed_by_the_weights_sha256(folder, monkeypatch):
    model = _local(folder)
    weights = folder / 'model.safetensors'
    assert sonnx.weights_file(model) == weights
    logged = []
    sonnx.load_session(model, log=logged.append)
    cached = folder / f'model.{sha256_file(weights)}.onnx'
    assert cached.is_file() and logged == [f'exporting to ONNX once, cached at {cached}']
    assert sonnx.read_metadata(cached)['weights_sha256'] == sha256_file(weights)

    def no_export(*args, **kwargs):
        raise AssertionError('exported again')

    with monkeypatch.context() as m:  # the second session comes from the cache
        m.setattr(sonnx, 'export_onnx', no_export)
        session = sonnx.load_session(model, log=logged.append)
    assert len(logged) == 1
    images = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images))
    torch.testing.assert_close(torch.from_numpy(session.run(None, {'images': images})[0]), expected,
                               atol=sonnx.ATOL, rtol=sonnx.RTOL)

    cached.write_bytes(b'damaged')  # a broken cache file is exported again
    sonnx.load_session(model, log=logged.append)
    assert len(logged) == 2 and sonnx.read_metadata(cached)['weights_sha256'] == sha256_file(weights)

    save_pretrained(_tiny(seed=1), folder, verbose=False)  # new weights: a new key, a new export
    sonnx.load_session(_local(folder), log=logged.append)
    assert len(logged) == 3 and (folder / f'model.{sha256_file(weights)}.onnx').is_file()


def test_weights_file_of_an_hf_hub_model_is_the_cached_file(folder, isolated_zoo, monkeypatch):
    from conftest import write_hf_cache
    cache = isolated_zoo.parent / 'hf'
    snapshot = write_hf_cache(cache, 'me/tiny', {name: folder / name for name in ('model.safetensors', 'config.json')})
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)  # read at import, before conftest's env
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(cache))
    model = timm.create_model('hf-hub:me/tiny', pretrained=True)
    assert sonnx.weights_file(model) == snapshot / 'model.safetensors'
    assert sonnx.weights_file(_tiny()) is None  # random weights: nothing to key a cache by


def test_export_cache_outside_a_read_only_weights_folder(folder, isolated_zoo, monkeypatch):
    monkeypatch.setattr(sonnx.os, 'access', lambda path, mode: False)
    assert sonnx.cache_path(folder / 'model.safetensors', 'f' * 64) == isolated_zoo / 'onnx' / f'model.{"f" * 64}.onnx'


def test_random_weights_export_without_cache_and_streams():
    logged, model = [], _tiny()
    session = sonnx.load_session(model, sonnx.Threading(streams=2, spinning=True), log=logged.append)
    assert logged == ['exporting to ONNX (no weight file to cache against)']
    images = torch.randn(5, 3, SIZE, SIZE)
    with torch.inference_mode():
        expected = model(images)
    for streams in (1, 2):  # two side-by-side runs on parts of 3 and 2 images: the same logits
        with sonnx.session_forward(session, streams) as forward:
            torch.testing.assert_close(forward(images), expected, atol=sonnx.ATOL, rtol=sonnx.RTOL)
            torch.testing.assert_close(forward(images[:1]), expected[:1], atol=sonnx.ATOL, rtol=sonnx.RTOL)


def test_auto_falls_back_to_torch_when_the_export_disagrees(monkeypatch):
    def disagree(*args, **kwargs):
        raise sonnx.ExportMismatchError('the ONNX graph disagrees.')

    monkeypatch.setattr(sonnx, 'export_onnx', disagree)
    logged = []
    assert sonnx.backend_session('auto', _tiny(), torch.device('cpu'), log=logged.append) is None
    assert logged[-1] == 'the ONNX graph disagrees. Falling back to the torch backend.'
    with pytest.raises(ValueError, match='--backend onnxruntime: the ONNX graph disagrees'):
        sonnx.backend_session('onnxruntime', _tiny(), torch.device('cpu'), log=logged.append)
    assert sonnx.backend_session('torch', _tiny(), torch.device('cpu')) is None


def _predict(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, json.loads(out), [line for line in err.splitlines() if 'exporting to ONNX' not in line]


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
    cached = zoo / MODEL / f'model.{sha256_file(zoo / MODEL / "model.safetensors")}.onnx'
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


def test_export_onnx_command(capsys, folder, tmp_path):
    assert main(['export-onnx', str(folder), str(tmp_path / 'out.onnx')]) == 0
    assert f'wrote {tmp_path / "out.onnx"} (opset 17, input [3, {SIZE}, {SIZE}]' in capsys.readouterr().err
    metadata = sonnx.read_metadata(tmp_path / 'out.onnx')
    assert metadata['label_names'] == LABELS and metadata['model'] == str(folder)
    assert main(['export-onnx', f'local-dir:{folder}', str(tmp_path / 'local.onnx')]) == 0
    assert sonnx.read_metadata(tmp_path / 'local.onnx')['data_config'] == metadata['data_config']
    assert main(['export-onnx', str(folder), str(tmp_path / 'out.txt')]) == 2
    assert '.onnx file' in capsys.readouterr().err
    assert main(['export-onnx', 'senti_resnet18.fi', str(tmp_path / 'fi.onnx')]) == 1  # no weights in the zoo
    assert 'No weights found for senti_resnet18.fi' in capsys.readouterr().err
