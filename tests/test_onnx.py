"""sentizoo.onnx: verified export and its metadata, the backend choice, the export cache (offline, tiny models).
The CLI's `predict --backend` and `export-onnx` are in test_cli.py."""
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch
from timm.data import resolve_model_data_config

import sentizoo.onnx as sonnx
from helpers import MODEL, TINY_LABELS, TINY_SIZE, tiny_classifier, write_hf_cache
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


def _cached(model, folder: Path) -> Path:
    weights = sonnx.weights_file(model)
    return folder / sonnx.cache_name(model, weights, sha256_file(weights))


def test_export_cache_is_keyed_by_the_weights_sha256(tiny_folder, monkeypatch):
    model = _local(tiny_folder)
    weights = tiny_folder / 'model.safetensors'
    assert sonnx.weights_file(model) == weights
    logged = []
    sonnx.load_session(model, log=logged.append)
    cached = _cached(model, tiny_folder)
    assert cached.is_file() and logged == [f'exported to ONNX once, cached at {cached}']
    assert sonnx.read_metadata(cached)['weights_sha256'] == sha256_file(weights)

    def no_export(*args, **kwargs):
        raise AssertionError('exported again')

    with monkeypatch.context() as m:  # the second session comes from the cache
        m.setattr(sonnx, '_verified_graph', no_export)
        session = sonnx.load_session(model, log=logged.append)
    assert len(logged) == 1
    images = np.random.default_rng(0).standard_normal((2, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images))
    torch.testing.assert_close(torch.from_numpy(session.run(None, {'images': images})[0]), expected,
                               atol=sonnx.ATOL, rtol=sonnx.RTOL)

    cached.write_bytes(b'damaged')  # a broken cache file is exported again
    sonnx.load_session(model, log=logged.append)
    assert logged[1:] == [f'the cached ONNX graph {cached} cannot be read; exporting the model again',
                          f'exported to ONNX once, cached at {cached}']
    assert sonnx.read_metadata(cached)['weights_sha256'] == sha256_file(weights)

    save_pretrained(tiny_classifier(seed=1), tiny_folder, verbose=False)  # new weights: a new key, a new export
    sonnx.load_session(_local(tiny_folder), log=logged.append)
    assert len(logged) == 4 and _cached(_local(tiny_folder), tiny_folder).is_file()


def test_cache_key_names_the_architecture_weights_and_preprocessing(tmp_path):
    # Two architectures whose state dicts have the same keys and shapes load one checkpoint; before, the cache
    # was keyed by the weights alone and the second reused the first's graph (probabilities 0.012 off).
    mixnet, tf_mixnet = (timm.create_model(name, num_classes=4) for name in ('mixnet_s', 'tf_mixnet_s'))
    weights, sha = tmp_path / 'model.safetensors', 'ab' * 32
    assert sonnx.cache_name(mixnet, weights, sha) != sonnx.cache_name(tf_mixnet, weights, sha)
    small = timm.create_model('mixnet_s', num_classes=4, pretrained_cfg_overlay=dict(input_size=(3, 64, 64)))
    assert sonnx.cache_name(small, weights, sha) != sonnx.cache_name(mixnet, weights, sha)
    assert sonnx.cache_name(mixnet, weights, 'cd' * 32) != sonnx.cache_name(mixnet, weights, sha)
    assert sonnx.cache_name(timm.create_model('mixnet_s', num_classes=4), weights, sha) == sonnx.cache_name(
        mixnet, weights, sha)


def test_a_cached_graph_is_used_only_if_it_computes_the_model(tiny_folder):
    """A graph of other weights, its weights_sha256 rewritten to this model's and copied to its cache path, is
    caught by the probe batch and exported again; before, predict answered with the other model's labels."""
    model = _local(tiny_folder)
    cached = _cached(model, tiny_folder)
    sonnx.export_onnx(tiny_classifier(seed=1), cached, weights_sha256=sha256_file(tiny_folder / 'model.safetensors'))
    logged = []
    session = sonnx.load_session(model, log=logged.append)
    assert len(logged) == 2 and logged[0].startswith(
        f'the cached ONNX graph {cached} does not compute this model (max abs difference ')
    assert logged[1] == f'exported to ONNX once, cached at {cached}'
    images = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.inference_mode():
        expected = model(images)
    torch.testing.assert_close(torch.from_numpy(session.run(None, {'images': images.numpy()})[0]), expected,
                               atol=sonnx.ATOL, rtol=sonnx.RTOL)


def test_predict_with_a_checkpoint_exports_once(tiny_folder, images):
    # Before the fix the checkpoint was not known as the weight file: every run exported the model again.
    checkpoint = tiny_folder / 'model.safetensors'
    assert sonnx.weights_file(load_classifier('resnet18', checkpoint)[0]) == checkpoint
    logged = []
    for _ in range(2):
        predict('resnet18', images, checkpoint=checkpoint, backend='onnxruntime', workers=0, log=logged.append)
    model = load_classifier('resnet18', checkpoint)[0]
    assert [m for m in logged if 'ONNX' in m] == [f'exported to ONNX once, cached at {_cached(model, tiny_folder)}']


def test_weights_file_of_an_hf_hub_model_is_the_cached_file(tiny_folder, isolated_zoo, monkeypatch):
    cache = isolated_zoo.parent / 'hf'
    files = {name: tiny_folder / name for name in ('model.safetensors', 'config.json')}
    snapshot = write_hf_cache(cache, 'me/tiny', files)
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)  # read at import, before conftest's env
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(cache))
    model = timm.create_model('hf-hub:me/tiny', pretrained=True)
    assert sonnx.weights_file(model) == snapshot / 'model.safetensors'
    assert sonnx.weights_file(tiny_classifier()) is None  # random weights: nothing to key a cache by


def test_an_unwritable_cache_falls_back_to_the_user_cache_then_memory(tiny_folder, tmp_path, monkeypatch):
    """The cache is an optimisation: a folder at the cache path, a full disk, ... never stop predict."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    model = _local(tiny_folder)
    beside, user = _cached(model, tiny_folder), _cached(model, tmp_path / 'xdg' / 'sentizoo' / 'onnx')
    beside.mkdir()  # a folder where the file goes
    logged = []
    sonnx.load_session(model, log=logged.append)
    assert logged == [f'exported to ONNX once, cached at {user} (cannot write {beside}: Is a directory)']
    sonnx.load_session(model, log=logged.append)  # found in the user cache
    assert len(logged) == 1
    user.unlink()
    write = sonnx.atomic_write

    def full_disk(path, writer):
        def fill(tmp):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(path, fill)  # the real atomic write, on a disk that is full

    monkeypatch.setattr(sonnx, 'atomic_write', full_disk)
    session = sonnx.load_session(model, log=logged.append)
    full = 'No space left on device'
    assert logged[1] == f'exported to ONNX in memory, not cached (cannot write {beside}: {full}; {user}: {full})'
    assert list(user.parent.iterdir()) == []  # no partial file left
    images = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.inference_mode():
        expected = model(images)
    torch.testing.assert_close(torch.from_numpy(session.run(None, {'images': images.numpy()})[0]), expected,
                               atol=sonnx.ATOL, rtol=sonnx.RTOL)


def test_random_weights_export_without_cache_and_streams():
    logged, model = [], tiny_classifier()
    session = sonnx.load_session(model, sonnx.Threading(streams=2, spinning=True), log=logged.append)
    assert logged == ['exporting to ONNX in memory (no weight file to cache against)']
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

    monkeypatch.setattr(sonnx, '_verified_graph', disagree)
    logged = []
    assert sonnx.backend_session('auto', tiny_classifier(), torch.device('cpu'), log=logged.append) is None
    assert logged[-1] == 'the ONNX graph disagrees. Falling back to the torch backend.'
    with pytest.raises(ValueError, match='--backend onnxruntime: the ONNX graph disagrees'):
        sonnx.backend_session('onnxruntime', tiny_classifier(), torch.device('cpu'), log=logged.append)
    assert sonnx.backend_session('torch', tiny_classifier(), torch.device('cpu')) is None


# Runs `sentizoo predict` as another user (nobody) when this process is root, else as this user. The interpreter may
# live where only root can read its standard library (a private home): what predict imports from it is imported
# first, by a prediction of a tiny random model, then the process drops root and runs the command.
# The same command runs first as root on a writable copy, so that every lazy import happens before the switch:
# nobody may not be able to read the checkout or its virtual environment (a 0700 temporary clone in CI).
AS_ANOTHER_USER = '''
import contextlib, io, os, sys
sys.path.insert(0, sys.argv[1])
from sentizoo.cli import main
warm_up, argv = sys.argv[2], sys.argv[3:]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    assert main([argv[0], warm_up, *argv[2:]]) == 0
if os.geteuid() == 0:
    try:
        os.setgid(65534)
        os.setuid(65534)
    except OSError:
        sys.exit(77)
sys.exit(main(sys.argv[3:]))
'''


def test_predict_on_a_read_only_shared_zoo_as_another_user(weights_dir, images):
    """A shared zoo that the user cannot write: before, the ONNX cache ended predict in a PermissionError."""
    root = Path(tempfile.mkdtemp(prefix='sentizoo-shared-'))  # not under pytest's private tmp: others may enter
    try:
        zoo, cache = root / 'zoo', root / 'cache'
        torch.manual_seed(0)
        save_pretrained(timm.create_model(MODEL, pretrained_cfg_overlay=dict(input_size=(3, 64, 64))), zoo / MODEL,
                        verbose=False)
        shutil.copytree(zoo / MODEL, root / 'writable-copy')
        shutil.copy(images / 'a_gradient.jpg', root / 'a.jpg')
        cache.mkdir(mode=0o777)
        cache.chmod(0o777)
        for path in (zoo / MODEL, zoo, root):
            path.chmod(0o555)
        env = dict(os.environ, SENTIZOO_HOME=str(zoo), XDG_CACHE_HOME=str(cache), HOME=str(root / 'no-home'),
                   HF_HUB_CACHE=str(root / 'no-hf'))
        result = subprocess.run([sys.executable, '-c', AS_ANOTHER_USER, str(Path(__file__).parent),
                                 str(root / 'writable-copy'),
                                 'predict', MODEL, str(root / 'a.jpg'), '--format', 'json', '--workers', '0',
                                 '--backend', 'onnxruntime'], env=env, capture_output=True, text=True, timeout=300,
                                cwd=root)  # user nobody can enter it; CI's 0700 clone may be closed to nobody
        if result.returncode == 77:
            pytest.skip('cannot switch to the unprivileged user nobody (65534) here')
        assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr
        assert len(json.loads(result.stdout)[0]['predictions']) == 3
        (line,) = [line for line in result.stderr.splitlines() if 'ONNX' in line]
        assert line.startswith(f'sentizoo predict: exported to ONNX once, cached at {cache / "sentizoo" / "onnx"}/')
        assert f'(cannot write {zoo / MODEL}/' in line and ': Permission denied)' in line
        assert not list((zoo / MODEL).glob('*.onnx'))
    finally:
        for path in (root, zoo, zoo / MODEL):
            path.chmod(0o755)
        shutil.rmtree(root)
