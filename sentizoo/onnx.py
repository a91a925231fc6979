"""ONNX export of timm classifiers and the ONNX Runtime forward of ``sentizoo predict``.

* :func:`export_onnx` writes a graph with a dynamic batch at the model's input size, with the label
  names and preprocessing in its metadata, after checking its outputs against eager PyTorch: a graph
  that disagrees is never written (:class:`ExportMismatchError`).
* :func:`read_metadata` reads that metadata back.
* :func:`backend_session` and :func:`session_forward` serve ``sentizoo predict --backend``: the export is
  cached beside the model's weight file, keyed by the file's sha256, so only the first run exports.

``onnx`` and ``onnxruntime`` (``pip install "sentizoo[onnx]"``) are imported on first use only.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Union

import torch
import torch.nn as nn

from .version import __version__
from .weights import WEIGHTS_NAME, atomic_write, sha256_file, zoo_home

__all__ = ['BACKENDS', 'DEFAULT_OPSET', 'ATOL', 'RTOL', 'ExportMismatchError', 'export_onnx', 'read_metadata',
           'onnxruntime_available', 'resolve_backend', 'weights_file', 'cache_path', 'Threading', 'THREADING',
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


def _label_names(model: nn.Module) -> Optional[list]:
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    return list(names) if names and len(names) == getattr(model, 'num_classes', None) else None


def _max_excess(got: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> tuple:
    """How far ``got`` is outside ``atol + rtol * |expected|`` (<= 0: inside), and the max abs difference."""
    diff = (got - expected).abs()
    return float((diff - atol - rtol * expected.abs()).max()), float(diff.max())


def _export_graph(model: nn.Module, path: str, input_size: tuple, opset: int) -> None:
    example = torch.zeros(2, *input_size, device=next(model.parameters()).device)
    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) needs no onnxscript; torch warns that it is deprecated.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(model, (example,), path, dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: 'batch'}, OUTPUT: {0: 'batch'}})


def _check(model: nn.Module, graph: bytes, input_size: tuple, atol: float, rtol: float) -> float:
    """Run ``graph`` in ONNX Runtime and ``model`` eagerly on one seeded batch; the max abs difference.

    Raises:
        ExportMismatchError: an output is outside the tolerance.
    """
    import onnxruntime
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(_CHECK_BATCH, *input_size, generator=generator)
    session = onnxruntime.InferenceSession(graph, providers=['CPUExecutionProvider'])
    got = torch.from_numpy(session.run(None, {INPUT: images.numpy()})[0])
    with torch.inference_mode():
        expected = model(images.to(next(model.parameters()).device)).float().cpu()
    if got.shape != expected.shape:
        difference = f'output shape {tuple(got.shape)} instead of {tuple(expected.shape)}'
    else:
        excess, max_diff = _max_excess(got, expected, atol, rtol)
        if excess <= 0:
            return max_diff
        difference = f'max abs difference {max_diff:.3g} (tolerance {atol:g} + {rtol:g} x |eager|)'
    raise ExportMismatchError(f'the ONNX graph disagrees with eager PyTorch on a batch of {_CHECK_BATCH}: '
                              f'{difference}; nothing was written. Use the torch backend for this model.')


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
    """
    import onnx

    path = Path(path)
    model = model.eval()
    data_config = _data_config(model)
    input_size = tuple(data_config['input_size'])
    metadata = dict(model=name or model.pretrained_cfg.get('architecture', type(model).__name__),
                    label_names=_label_names(model), data_config=data_config, opset=opset,
                    weights_sha256=weights_sha256, tolerance=dict(atol=atol, rtol=rtol),
                    sentizoo_version=__version__)

    def write(tmp: str) -> None:
        _export_graph(model, tmp, input_size, opset)
        graph = onnx.load(tmp)
        metadata['max_abs_diff'] = _check(model, graph.SerializeToString(), input_size, atol, rtol)
        onnx.helper.set_model_props(graph, {key: json.dumps(value) for key, value in metadata.items()})
        onnx.save(graph, tmp)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return metadata


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


def cache_path(weights: Path, sha256: str) -> Path:
    """Where the export of ``weights`` is cached: beside them (``model.<sha256>.onnx``), or in
    ``$SENTIZOO_HOME/onnx/`` when their folder is not writable."""
    folder = weights.parent if os.access(weights.parent, os.W_OK) else zoo_home() / 'onnx'
    return folder / f'{weights.stem}.{sha256}.onnx'


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
    chunk: int = 4

    def stream_count(self) -> int:
        return self.streams or torch.get_num_threads()

    def parts(self, images: torch.Tensor) -> tuple:
        """The parts of a batch that run separately, in order."""
        return images.split(self.chunk) if self.chunk else images.tensor_split(min(self.stream_count(), len(images)))

    def threads(self) -> int:
        return self.intra_op or max(1, torch.get_num_threads() // self.stream_count())


THREADING = Threading()
"""The default of ``sentizoo predict``: one single-threaded run per torch thread, each taking 4-image parts of
the batch in turn, no spinning. On 2 cores the runtime alone ran 46.3 images/s, vs 44.3 with one half of the
batch per run and 43.3 with one 2-thread run, and predict was fastest with it at the default 2 decoding
workers (BENCHMARKS.md, Predict)."""


def _session(source: Union[str, Path, bytes], threading: Threading):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threading.threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry('session.intra_op.allow_spinning', '1' if threading.spinning else '0')
    return onnxruntime.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                        providers=['CPUExecutionProvider'])


def _cached_session(path: Path, sha256: str, data_config: Dict[str, Any], threading: Threading):
    """The session of a cached export made from the same weights and preprocessing, else None."""
    if not path.is_file():
        return None
    try:
        session = _session(path, threading)
    except Exception:  # a damaged cache file (onnxruntime raises its own exception types): export again
        return None
    metadata = _decode(session.get_modelmeta().custom_metadata_map)
    current = metadata.get('weights_sha256') == sha256 and metadata.get('data_config') == data_config
    return session if current else None


def load_session(model: nn.Module, threading: Optional[Threading] = None,
                 log: Callable[[str], None] = print):
    """An ONNX Runtime session computing ``model``: the cached export of its weights, exported on a miss.

    The cache is keyed by the sha256 of the weight file (:func:`weights_file`, :func:`cache_path`); a
    model without a known weight file is exported to a temporary file each time. ``threading``: default
    :data:`THREADING`. ``log`` reports an export.
    """
    threading = threading or THREADING
    weights = weights_file(model)
    if weights is None:
        log('exporting to ONNX (no weight file to cache against)')
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(model, Path(tmp) / 'model.onnx')
            return _session((Path(tmp) / 'model.onnx').read_bytes(), threading)
    sha256 = sha256_file(weights)
    path = cache_path(weights, sha256)
    session = _cached_session(path, sha256, _data_config(model), threading)
    if session is None:
        log(f'exporting to ONNX once, cached at {path}')
        export_onnx(model, path, weights_sha256=sha256)
        session = _session(path, threading)
    return session


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
