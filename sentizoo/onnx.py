"""ONNX export of timm classifiers and the ONNX Runtime forward of ``sentizoo predict``.

* :func:`export_onnx` writes a graph with a dynamic batch at the model's input size, with the label
  names and preprocessing in its metadata, after checking its outputs against eager PyTorch: a graph
  that disagrees is never written (:class:`ExportMismatchError`).
* :func:`read_metadata` reads that metadata back.
* :func:`backend_session` and :func:`session_forward` serve ``sentizoo predict --backend``: the export is
  cached beside the model's weight file, keyed by its architecture, the file's sha256 and its preprocessing,
  so only the first run exports. A cached graph is used only after it computes the model on a probe batch
  (the export's check): a stale or forged file is exported again. The cache is an optimisation: where it
  cannot be written (a read-only shared zoo, a full disk), the graph goes to the per-user cache
  (``$XDG_CACHE_HOME/sentizoo/onnx``), else stays in memory.

``onnx`` and ``onnxruntime`` (``pip install "sentizoo[onnx]"``) are imported on first use only.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .models import label_names
from .runtime import CPU_CHUNK
from .version import __version__
from .weights import WEIGHTS_NAME, atomic_write, sha256_file

__all__ = ['BACKENDS', 'DEFAULT_OPSET', 'ATOL', 'RTOL', 'ExportMismatchError', 'export_onnx', 'read_metadata',
           'onnxruntime_available', 'resolve_backend', 'weights_file', 'cache_name', 'cache_folders', 'Threading',
           'THREADING',
           'load_session', 'backend_session', 'session_forward']

BACKENDS = ('auto', 'torch', 'onnxruntime')
DEFAULT_OPSET = 17
ATOL, RTOL = 1e-4, 1e-3
"""The export passes when every output satisfies ``|onnx - eager| <= ATOL + RTOL * |eager|`` (logits)."""

INPUT, OUTPUT = 'images', 'logits'
_CHECK_BATCH = 3  # the check runs another batch size than the traced one (2): the batch axis must be dynamic
_INSTALL = 'pip install "sentizoo[onnx]"'


class ExportMismatchError(RuntimeError):
    """The exported graph's outputs differ from eager PyTorch beyond the tolerance; nothing was written."""


def _data_config(model: nn.Module) -> Dict[str, Any]:
    from timm.data import resolve_model_data_config
    config = resolve_model_data_config(model)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _max_excess(got: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> tuple:
    """How far ``got`` is outside ``atol + rtol * |expected|`` (<= 0: inside), and the max abs difference."""
    diff = (got - expected).abs()
    return float((diff - atol - rtol * expected.abs()).max()), float(diff.max())


def _opsets() -> range:
    """The opsets torch's TorchScript exporter writes."""
    from torch.onnx import _constants
    return range(_constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET + 1)


def _export_graph(model: nn.Module, input_size: tuple, opset: int) -> bytes:
    example = torch.zeros(2, *input_size, device=next(model.parameters()).device)
    graph = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) needs no onnxscript; torch warns that it is deprecated.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(model, (example,), graph, dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: 'batch'}, OUTPUT: {0: 'batch'}})
    return graph.getvalue()


def _difference(model: nn.Module, session, input_size: tuple, atol: float, rtol: float) -> Tuple[Optional[str], float]:
    """Run ``session`` (ONNX Runtime) and ``model`` eagerly on one seeded batch of :data:`_CHECK_BATCH` images:
    ``(None, max abs difference)`` within the tolerance, else ``(how they differ, max abs difference)``."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(_CHECK_BATCH, *input_size, generator=generator)
    got = torch.from_numpy(session.run(None, {INPUT: images.numpy()})[0])
    with torch.inference_mode():
        expected = model(images.to(next(model.parameters()).device)).float().cpu()
    if got.shape != expected.shape:
        return f'output shape {tuple(got.shape)} instead of {tuple(expected.shape)}', float('inf')
    excess, max_diff = _max_excess(got, expected, atol, rtol)
    if excess <= 0:
        return None, max_diff
    return f'max abs difference {max_diff:.3g} (tolerance {atol:g} + {rtol:g} x |eager|)', max_diff


def export_onnx(model: nn.Module, path: Union[str, Path], *, opset: int = DEFAULT_OPSET,
                weights_sha256: Optional[str] = None, name: Optional[str] = None, atol: float = ATOL,
                rtol: float = RTOL) -> Dict[str, Any]:
    """Export a timm model to ``path`` (ONNX), verified against eager PyTorch; returns the metadata written.

    The graph takes ``images`` (float32, NCHW, dynamic batch, the model's ``input_size``) and returns
    ``logits``. Its metadata (:func:`read_metadata`) holds the model name, label names, the timm data
    config (input size, interpolation, mean, std, crop), the opset, the weights' sha256 (if given) and the
    verification: the max abs difference to eager PyTorch on a seeded batch of 3, which must stay within
    ``atol + rtol * |eager|``. The file is written atomically, and only when the check passes.

    Raises:
        ExportMismatchError: the graph disagrees with the model (nothing is written).
        ValueError: an opset that torch cannot write.
        OSError: ``path`` cannot be written.
    """
    graph, metadata = _verified_graph(model, opset=opset, weights_sha256=weights_sha256, name=name, atol=atol,
                                      rtol=rtol)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(graph))
    return metadata


def _verified_graph(model: nn.Module, *, opset: int = DEFAULT_OPSET, weights_sha256: Optional[str] = None,
                    name: Optional[str] = None, atol: float = ATOL, rtol: float = RTOL) -> Tuple[bytes, Dict]:
    """The serialized graph of :func:`export_onnx` (in memory) and its metadata."""
    import onnx

    if opset not in _opsets():
        raise ValueError(f'--opset {opset}: torch exports opsets {_opsets().start} to {_opsets().stop - 1}.')
    model = model.eval()
    data_config = _data_config(model)
    input_size = tuple(data_config['input_size'])
    metadata = dict(model=name or model.pretrained_cfg.get('architecture', type(model).__name__),
                    label_names=label_names(model), data_config=data_config, opset=opset,
                    weights_sha256=weights_sha256, tolerance=dict(atol=atol, rtol=rtol),
                    sentizoo_version=__version__)
    exported = _export_graph(model, input_size, opset)
    session = _session(exported, Threading(streams=1))
    difference, metadata['max_abs_diff'] = _difference(model, session, input_size, atol, rtol)
    if difference:
        raise ExportMismatchError(f'the ONNX graph disagrees with eager PyTorch on a batch of {_CHECK_BATCH}: '
                                  f'{difference}; nothing was written. Use the torch backend for this model.')
    graph = onnx.load_from_string(exported)
    onnx.helper.set_model_props(graph, {key: json.dumps(value) for key, value in metadata.items()})
    return graph.SerializeToString(), metadata


def _decode(props: Mapping[str, str]) -> Dict[str, Any]:
    return {key: json.loads(value) for key, value in props.items()}


def read_metadata(path: Union[str, Path]) -> Dict[str, Any]:
    """The metadata :func:`export_onnx` wrote into ``path`` (JSON values decoded)."""
    import onnx
    return _decode({prop.key: prop.value for prop in onnx.load(str(path)).metadata_props})


def onnxruntime_available() -> bool:
    """Whether the ``[onnx]`` extra is installed (``onnx`` and ``onnxruntime`` import)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """``'torch'`` or ``'onnxruntime'`` for ``--backend`` (``auto``: ONNX Runtime on CPU when installed).

    Raises:
        ValueError: ``onnxruntime`` asked for but not installed, or on a device other than the CPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f'--backend {backend}: expected one of {", ".join(BACKENDS)}.')
    if backend == 'torch':
        return 'torch'
    if backend == 'auto':
        return 'onnxruntime' if device.type == 'cpu' and onnxruntime_available() else 'torch'
    if device.type != 'cpu':
        raise ValueError(f'--backend onnxruntime runs on the CPU, not {device}: pass --device cpu or '
                         f'--backend torch.')
    if not onnxruntime_available():
        raise ValueError(f'--backend onnxruntime: onnx and onnxruntime are not installed; {_INSTALL}, or use '
                         f'--backend torch.')
    return 'onnxruntime'


def weights_file(model: nn.Module) -> Optional[Path]:
    """The safetensors file ``model`` was loaded from (explicit file, zoo, ``local-dir:``, ``hf-hub:`` cache),
    or None when unknown (e.g. random weights)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if cfg.get('file'):
        path = Path(cfg['file'])
        path = path / WEIGHTS_NAME if path.is_dir() else path  # local-dir: names the folder
    elif cfg.get('source') == 'hf-hub' and cfg.get('hf_hub_id'):
        from huggingface_hub import try_to_load_from_cache

        from .weights import _hf_cache_dir
        repo, _, revision = cfg['hf_hub_id'].partition('@')
        cached = try_to_load_from_cache(repo, WEIGHTS_NAME, cache_dir=_hf_cache_dir(), revision=revision or None)
        path = Path(cached) if isinstance(cached, str) else None
    else:
        return None
    return path if path is not None and path.suffix == '.safetensors' and path.is_file() else None


def cache_name(model: nn.Module, weights: Path, sha256: str) -> str:
    """The file name of ``model``'s cached export: ``<weights stem>.<key>.onnx``, the key a digest of what the
    graph computes from: the architecture, the weights (their sha256), the preprocessing and the classes."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    what = dict(architecture=cfg.get('architecture', type(model).__name__), weights_sha256=sha256,
                data_config=_data_config(model), num_classes=getattr(model, 'num_classes', None))
    return f'{weights.stem}.{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]}.onnx'


def cache_folders(weights: Path) -> List[Path]:
    """Where exports of ``weights`` are cached, in order of preference: beside them, then the per-user cache
    (``$XDG_CACHE_HOME/sentizoo/onnx``, default ``~/.cache/sentizoo/onnx``) for a folder that cannot be written."""
    user = Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache').expanduser() / 'sentizoo' / 'onnx'
    return [weights.parent, user]


@dataclass(frozen=True)
class Threading:
    """How the ONNX Runtime forward shares the cores with predict's decoding workers.

    ``streams`` runs of one session side by side (0: one per torch thread), with ``intra_op`` threads each
    (0: torch's thread count divided by the streams), on parts of ``chunk`` images of the batch (0: the
    batch cut into one equal part per stream); ``spinning``: idle runtime threads busy-wait for work instead
    of sleeping (ONNX Runtime's own default).
    """
    streams: int = 0
    intra_op: int = 0
    spinning: bool = False
    chunk: int = CPU_CHUNK

    def stream_count(self) -> int:
        return self.streams or torch.get_num_threads()

    def parts(self, images: torch.Tensor) -> tuple:
        """The parts of a batch that run separately, in order."""
        return images.split(self.chunk) if self.chunk else images.tensor_split(min(self.stream_count(), len(images)))

    def threads(self) -> int:
        return self.intra_op or max(1, torch.get_num_threads() // self.stream_count())


THREADING = Threading()
"""The default of ``sentizoo predict``: one single-threaded run per torch thread, each taking
:data:`~sentizoo.runtime.CPU_CHUNK`-image parts of the batch in turn, no spinning: the fastest of the settings
measured, for the runtime alone and for predict with its decoding workers (BENCHMARKS.md, Predict)."""


def _session(source: Union[str, Path, bytes], threading: Threading):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threading.threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry('session.intra_op.allow_spinning', '1' if threading.spinning else '0')
    return onnxruntime.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                        providers=['CPUExecutionProvider'])


def _cached_session(path: Path, model: nn.Module, sha256: str, threading: Threading,
                    log: Callable[[str], None]):
    """The session of the cached export at ``path`` if it computes ``model`` (its metadata names the weights and
    preprocessing, and its output on the probe batch of the export's check is within the tolerance), else None
    (``log`` says why a file that exists is not used)."""
    if not path.is_file():
        return None
    try:
        session = _session(path, threading)
        metadata = _decode(session.get_modelmeta().custom_metadata_map)
    except Exception:  # a damaged file (onnxruntime raises its own exception types)
        log(f'the cached ONNX graph {path} cannot be read; exporting the model again')
        return None
    data_config = _data_config(model)
    difference = ('its metadata names other weights or preprocessing'
                  if metadata.get('weights_sha256') != sha256 or metadata.get('data_config') != data_config
                  else _difference(model, session, tuple(data_config['input_size']), ATOL, RTOL)[0])
    if difference:
        log(f'the cached ONNX graph {path} does not compute this model ({difference}); exporting it again')
        return None
    return session


def load_session(model: nn.Module, threading: Optional[Threading] = None,
                 log: Callable[[str], None] = print):
    """An ONNX Runtime session computing ``model``: a cached export of it (:func:`cache_name`,
    :func:`cache_folders`), checked against the model before use, or a new export on a miss.

    The new export is cached in the first folder that can be written; if none can, or ``model`` has no known
    weight file (e.g. random weights), it stays in memory. ``threading``: default :data:`THREADING`. ``log``
    reports an export, where it went and why a cache was not used, in one line each.
    """
    threading = threading or THREADING
    weights = weights_file(model)
    if weights is None:
        log('exporting to ONNX in memory (no weight file to cache against)')
        return _session(_verified_graph(model)[0], threading)
    sha256 = sha256_file(weights)
    paths = [folder / cache_name(model, weights, sha256) for folder in cache_folders(weights)]
    for path in paths:
        session = _cached_session(path, model, sha256, threading, log)
        if session is not None:
            return session
    graph, _ = _verified_graph(model, weights_sha256=sha256)
    failed = []
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(graph))
        except OSError as e:  # read-only, full, or a folder in the way: the cache is only an optimisation
            failed.append(f'{path}: {e.strerror or e}')
            continue
        log(f'exported to ONNX once, cached at {path}' + (f' (cannot write {"; ".join(failed)})' if failed else ''))
        return _session(path, threading)
    log(f'exported to ONNX in memory, not cached (cannot write {"; ".join(failed)})')
    return _session(graph, threading)


def backend_session(backend: str, model: nn.Module, device: torch.device,
                    log: Callable[[str], None] = print):
    """The ONNX Runtime session for ``--backend`` (:func:`resolve_backend`), or None for PyTorch.

    With ``auto`` an export that fails its check falls back to PyTorch (``log`` says why).

    Raises:
        ValueError: a usage error (see :func:`resolve_backend`), or ``onnxruntime`` asked for explicitly
            and the export disagrees with the model.
    """
    if resolve_backend(backend, device) == 'torch':
        return None
    try:
        return load_session(model, log=log)
    except ExportMismatchError as e:
        if backend != 'auto':
            raise ValueError(f'--backend onnxruntime: {e}') from e
        log(f'{e} Falling back to the torch backend.')
        return None


@contextmanager
def session_forward(session, threading: Optional[Threading] = None) -> Iterator[Callable]:
    """``images -> logits`` computed by an ONNX Runtime ``session`` on the CPU: the runs of
    :meth:`Threading.parts` side by side in ``threading.stream_count()`` threads (default: :data:`THREADING`)."""
    threading = threading or THREADING

    def run(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {INPUT: images.float().contiguous().cpu().numpy()})[0])

    with ThreadPoolExecutor(threading.stream_count()) as pool:  # the runtime releases the GIL while it computes
        yield lambda images: torch.cat(list(pool.map(run, threading.parts(images))))
