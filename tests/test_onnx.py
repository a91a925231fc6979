"""sentizoo.onnx: verified export and its metadata, the backend choice, the export cache (offline, tiny models).
The CLI's `predict --backend` and `export-onnx` are in test_cli.py."""
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
from helpers import TINY_LABELS, TINY_SIZE, tiny_classifier, write_hf_cache
from sentizoo.inference import load_classifier, predict
from sentizoo.saving import save_pretrained
from sentizoo.weights import sha256_file


def _local(folder: Path) -> torch.nn.Module:
    return timm.create_model(f'local-dir:{folder}', pretrained=True).eval()


def test_export_round_trip_and_metadata(tmp_path):
    model = tiny_classifier()
    written = sonnx.export_onnx(model, tmp_path / 'tiny.onnx', weights_sha256='ab' * 32)
    session = onnxruntime.InferenceSession(str(tmp_path / 'tiny.onnx'), providers=['CPUExecutionProvider'])
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert (graph_input.name, graph_input.shape) == ('images', ['batch', 3, TINY_SIZE, TINY_SIZE])
    assert (graph_output.name, graph_output.shape) == ('logits', ['batch', len(TINY_LABELS)])
    images = torch.randn(5, 3, TINY_SIZE, TINY_SIZE)  # neither the traced batch (2) nor the checked one (3)
    with torch.inference_mode():
        expected = model(images)
    got = torch.from_numpy(session.run(None, {'images': images.numpy()})[0])
    torch.testing.assert_close(got, expected, atol=sonnx.ATOL, rtol=sonnx.RTOL)

    metadata = sonnx.read_metadata(tmp_path / 'tiny.onnx')
    assert metadata == written
    assert metadata['label_names'] == TINY_LABELS and metadata['weights_sha256'] == 'ab' * 32
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
        self.inner = tiny_classifier()
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


def test_export_cache_is_keyed_by_the_weights_sha256(tiny_folder, monkeypatch):
    model = _local(tiny_folder)
    weights = tiny_folder / 'model.safetensors'
    assert sonnx.weights_file(model) == weights
    logged = []
    sonnx.load_session(model, log=logged.append)
    cached = tiny_folder / f'model.{sha256_file(weights)}.onnx'
    assert cached.is_file() and logged == [f'exporting to ONNX once, cached at {cached}']
    assert sonnx.read_metadata(cached)['weights_sha256'] == sha256_file(weights)

    def no_export(*args, **kwargs):
        raise AssertionError('exported again')

    with monkeypatch.context() as m:  # the second session comes from the cache
        m.setattr(sonnx, 'export_onnx', no_export)
        session = sonnx.load_session(model, log=logged.append)
    assert len(logged) == 1
    images = np.random.default_rng(0).standard_normal((2, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images))
    torch.testing.assert_close(torch.from_numpy(session.run(None, {'images': images})[0]), expected,
                               atol=sonnx.ATOL, rtol=sonnx.RTOL)

    cached.write_bytes(b'damaged')  # a broken cache file is exported again
    sonnx.load_session(model, log=logged.append)
    assert len(logged) == 2 and sonnx.read_metadata(cached)['weights_sha256'] == sha256_file(weights)

    save_pretrained(tiny_classifier(seed=1), tiny_folder, verbose=False)  # new weights: a new key, a new export
    sonnx.load_session(_local(tiny_folder), log=logged.append)
    assert len(logged) == 3 and (tiny_folder / f'model.{sha256_file(weights)}.onnx').is_file()


def test_predict_with_a_checkpoint_exports_once(tiny_folder, images):
    # Before the fix the checkpoint was not known as the weight file: every run exported the model again.
    checkpoint = tiny_folder / 'model.safetensors'
    assert sonnx.weights_file(load_classifier('resnet18', checkpoint)[0]) == checkpoint
    logged = []
    for _ in range(2):
        predict('resnet18', images, checkpoint=checkpoint, backend='onnxruntime', workers=0, log=logged.append)
    assert [m for m in logged if 'ONNX' in m] == [
        f'exporting to ONNX once, cached at {tiny_folder / f"model.{sha256_file(checkpoint)}.onnx"}']


def test_weights_file_of_an_hf_hub_model_is_the_cached_file(tiny_folder, isolated_zoo, monkeypatch):
    cache = isolated_zoo.parent / 'hf'
    snapshot = write_hf_cache(cache, 'me/tiny', {name: tiny_folder / name for name in ('model.safetensors', 'config.json')})
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)  # read at import, before conftest's env
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(cache))
    model = timm.create_model('hf-hub:me/tiny', pretrained=True)
    assert sonnx.weights_file(model) == snapshot / 'model.safetensors'
    assert sonnx.weights_file(tiny_classifier()) is None  # random weights: nothing to key a cache by


def test_export_cache_outside_a_read_only_weights_folder(tiny_folder, isolated_zoo, monkeypatch):
    monkeypatch.setattr(sonnx.os, 'access', lambda path, mode: False)
    assert sonnx.cache_path(tiny_folder / 'model.safetensors', 'f' * 64) == isolated_zoo / 'onnx' / f'model.{"f" * 64}.onnx'


def test_random_weights_export_without_cache_and_streams():
    logged, model = [], tiny_classifier()
    session = sonnx.load_session(model, sonnx.Threading(streams=2, spinning=True), log=logged.append)
    assert logged == ['exporting to ONNX (no weight file to cache against)']
    images = torch.randn(5, 3, TINY_SIZE, TINY_SIZE)
    with torch.inference_mode():
        expected = model(images)
    # one run; two side by side on parts of 3 and 2 images; two on parts of 2, 2 and 1: the same logits
    for threading, sizes in ((sonnx.Threading(streams=1, chunk=0), [5]), (sonnx.Threading(streams=2, chunk=0), [3, 2]),
                             (sonnx.Threading(streams=2, chunk=2), [2, 2, 1])):
        assert [len(part) for part in threading.parts(images)] == sizes
        with sonnx.session_forward(session, threading) as forward:
            torch.testing.assert_close(forward(images), expected, atol=sonnx.ATOL, rtol=sonnx.RTOL)
            torch.testing.assert_close(forward(images[:1]), expected[:1], atol=sonnx.ATOL, rtol=sonnx.RTOL)


def test_auto_falls_back_to_torch_when_the_export_disagrees(monkeypatch):
    def disagree(*args, **kwargs):
        raise sonnx.ExportMismatchError('the ONNX graph disagrees.')

    monkeypatch.setattr(sonnx, 'export_onnx', disagree)
    logged = []
    assert sonnx.backend_session('auto', tiny_classifier(), torch.device('cpu'), log=logged.append) is None
    assert logged[-1] == 'the ONNX graph disagrees. Falling back to the torch backend.'
    with pytest.raises(ValueError, match='--backend onnxruntime: the ONNX graph disagrees'):
        sonnx.backend_session('onnxruntime', tiny_classifier(), torch.device('cpu'), log=logged.append)
    assert sonnx.backend_session('torch', tiny_classifier(), torch.device('cpu')) is None
