"""Inference on image files: :func:`predict` (what ``sentizoo predict`` runs) and :func:`load_classifier`.

::

    rows = sentizoo.predict('senti_resnet50.fi', ['photos/', 'extra.jpg'], top_k=3)
    for row in rows:
        print(row['path'], row['error'] or row['predictions'])

A file that cannot be read does not stop the run: its row holds the reason in ``error`` and no predictions.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .images import ImageFiles
from .models import label_names
from .runtime import CPU_CHUNK

__all__ = ['find_pretrained_cfg', 'with_default_tag', 'load_classifier', 'image_files', 'predict']

PathLike = Union[str, 'os.PathLike[str]']
Row = Dict[str, Any]

NON_FINITE = 'the model gave non-finite logits (NaN or inf) for this image: its weights or inputs are broken'
"""The ``error`` of a row whose logits hold NaN or inf."""


def find_pretrained_cfg(name: str):
    """timm's pretrained config of ``name`` (tag optional); a ValueError naming the fix for an unknown name or
    tag, or a name without one."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise ValueError(f'unknown model {name!r}: `sentizoo list` shows the sentizoo models; any timm model name '
                         f'(timm.list_models()) works too.')
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as e:  # unknown tag
        raise ValueError(f'{e} `sentizoo list` shows the available tags.') from e
    if cfg is None:
        raise ValueError(f'{name!r} has no pretrained config; give a tagged name, e.g. {name}.<tag>.')
    return cfg


def with_default_tag(name: str, cfg) -> str:
    """``name`` with the tag of ``cfg``: ``'senti_resnet50'`` -> ``'senti_resnet50.hp'``."""
    return f'{name.split(".")[0]}.{cfg.tag}' if cfg.tag else name


def _checkpoint_classes(path: Path, classifier: str, default: int) -> Tuple[int, Optional[List[str]]]:
    """Classes of a weight file: the ``config.json`` beside it (``save_pretrained``'s), else the rows of its
    classifier weight (``default`` without one: loading then names what is missing); with the label names when
    the config has them. Config and file are checked as every zoo file is."""
    from safetensors import safe_open

    from .weights import check_safetensors, read_config

    saved = read_config(path.parent)
    if saved.get('num_classes'):
        return saved['num_classes'], saved.get('label_names')
    with safe_open(str(check_safetensors(path)), 'pt') as f:
        key = f'{classifier}.weight'
        return (f.get_slice(key).get_shape()[0] if key in f.keys() else default), None


def load_classifier(name: str, checkpoint: Optional[PathLike] = None, *, pretrained: bool = True
                    ) -> Tuple[nn.Module, Optional[str]]:
    """A classifier as the user names it, with its task when known (``(model, task)``).

    Args:
        name: a folder written by ``sentizoo amalgamate`` or :func:`~sentizoo.save_pretrained`, or such a folder
            as an ``hf-hub:`` / ``local-dir:`` name (all verified as the zoo is: a valid config.json, only
            model.safetensors, its sha256; :func:`~sentizoo.weights.load_folder`), or a timm / senti name such as
            ``senti_resnet50.fi``.
        checkpoint: with a model name, load these weights (``.safetensors``; classes and label names from the
            config.json beside it, else the classifier's size) instead of the published ones. Not with a
            folder, which holds its own weights.
        pretrained: False for random weights (testing, timing).

    Raises:
        ValueError: an unknown name, a bad checkpoint path, or a backbone (no classifier).
        WeightsNotFoundError, ChecksumMismatchError, InvalidWeightsError: the weight files (:mod:`sentizoo.weights`).
    """
    import timm

    from .weights import FOLDER_PREFIXES, load_folder, load_weights, resolve_folder

    task = None
    is_folder = name.startswith(FOLDER_PREFIXES) or Path(name).is_dir()
    if is_folder and checkpoint is not None:
        raise ValueError(f'--checkpoint {checkpoint}: MODEL {name} is a folder with its own weights; drop '
                         f'--checkpoint, or give an architecture name (e.g. resnet50) with it.')
    if is_folder:
        folder, published = resolve_folder(name)
        if pretrained:
            model, config = load_folder(folder, published)
            task = config.get('task')
        else:
            model = timm.create_model(f'local-dir:{folder}')
    else:
        cfg = find_pretrained_cfg(name)
        name = with_default_tag(name, cfg)
        if checkpoint is not None:
            checkpoint = Path(checkpoint)
            if checkpoint.suffix != '.safetensors' or not checkpoint.is_file():
                raise ValueError(f'--checkpoint {checkpoint}: expected an existing .safetensors file '
                                 f'(e.g. written by sentizoo.save_pretrained).')
            num_classes, labels = _checkpoint_classes(checkpoint, cfg.classifier, cfg.num_classes)
            model = load_weights(timm.create_model(name, num_classes=num_classes), checkpoint)
            # `file` names the weights as timm's pretrained_cfg_overlay does: the ONNX export cache keys on it
            model.pretrained_cfg = dict(model.pretrained_cfg, num_classes=num_classes, label_names=labels,
                                        file=str(checkpoint))
        elif cfg.num_classes:
            model = timm.create_model(name, pretrained=pretrained)
        else:
            model = None
    if model is None or not model.num_classes:
        raise ValueError(f'{name} is a backbone (num_classes=0): it has no classifier to predict with. '
                         f'Use a classifier tag such as {name.split(".")[0]}.fi (the 8 FI emotions), or '
                         f'fine-tune the backbone first (sentizoo.amalgamate).')
    return model, task


def image_files(paths: Union[PathLike, Iterable[PathLike]]) -> ImageFiles:
    """The image files of ``paths`` (files, and folders searched recursively) as a dataset.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: no image file at all.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    dataset = ImageFiles(paths)
    if not len(dataset):
        raise ValueError(f'no image files in {", ".join(map(str, paths))}.')
    return dataset


@contextmanager
def _forward_function(model: nn.Module, device: torch.device) -> Iterator[Callable]:
    """``images -> logits``, in channels_last. On CPU the batch is cut into chunks of ``CPU_CHUNK`` images, run
    by one single-threaded forward per torch thread side by side: this scales across cores better than one
    multi-threaded forward and collapses far less when other processes share the cores (BENCHMARKS.md)."""
    def forward(images):
        with torch.inference_mode():  # thread-local: entered in each pool thread
            return model(images.contiguous(memory_format=torch.channels_last))

    if device.type != 'cpu':
        yield forward
        return
    threads = torch.get_num_threads()

    torch.set_num_threads(1)  # new threads take this process-wide setting
    try:
        with ThreadPoolExecutor(threads) as pool:
            yield lambda images: torch.cat(list(pool.map(forward, images.split(CPU_CHUNK))))
    finally:
        torch.set_num_threads(threads)


def _backend_forward(model: nn.Module, device: torch.device, backend: str, log: Callable[[str], None]):
    """The forward of ``backend``: an ONNX Runtime session (:mod:`sentizoo.onnx`) or eager PyTorch."""
    from .onnx import backend_session, session_forward
    session = backend_session(backend, model, device, log=log)
    return _forward_function(model, device) if session is None else session_forward(session)


def _path_text(path: Path) -> str:
    """``path`` as text that any output encoding holds: bytes of a file name that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(path).decode('utf-8', 'backslashreplace')


def _escaped(text: str) -> str:
    """``text`` (a label, an error) as text that any output encoding holds: a lone surrogate (JSON allows one in a
    config's label names) becomes ``\\udNNN``."""
    return text.encode('utf-8', 'backslashreplace').decode('utf-8')


def predict(model: Union[str, nn.Module], paths: Union[PathLike, Sequence[PathLike], ImageFiles], *, top_k: int = 3,
            batch_size: int = 32, workers: Optional[int] = None, device: Optional[str] = None,
            backend: str = 'auto', checkpoint: Optional[PathLike] = None, progress: bool = False,
            log: Optional[Callable[[str], None]] = None) -> List[Row]:
    """The top-k labels of every image in ``paths``, with their probabilities; one row per file, in order.

    Args:
        model: a classifier (timm model with ``num_classes``; put in eval mode on ``device``) or a name that
            :func:`load_classifier` loads (a zoo folder, ``senti_resnet50.fi``, ``hf-hub:...``).
        paths: image files and folders (searched recursively; hidden files skipped), or an
            :class:`~sentizoo.images.ImageFiles` dataset.
        top_k: labels per image (at most the model's classes).
        batch_size: images per forward pass.
        workers: processes decoding images beside the model (0: in this process; default: the CPU cores, up
            to 8).
        device: torch device (default: cuda if available, else cpu).
        backend: ``'auto'`` (ONNX Runtime on the CPU when the [onnx] extra is installed: the first run exports
            the model, cached beside its weights; PyTorch otherwise), ``'torch'`` or ``'onnxruntime'``.
        checkpoint: with a model name, its weights (see :func:`load_classifier`).
        progress: a progress bar on stderr (when it is a terminal).
        log: called with each message (a file that failed, an ONNX export); default: none.

    Returns:
        ``[{'path': str, 'predictions': [(label, probability), ...], 'error': None or the reason}]``; a file
        that cannot be read keeps its row, with ``predictions=[]``. The image is preprocessed with the
        model's own data config (a ``senti_*`` model's: the paper's evaluation transform).

    Raises:
        ValueError: bad arguments, no image files, a model name that is not a classifier, an unusable backend.
        FileNotFoundError: a path does not exist (:class:`~sentizoo.weights.WeightsNotFoundError`: weights).
    """
    from .images import default_workers

    workers = default_workers() if workers is None else workers
    if top_k < 1 or batch_size < 1 or workers < 0:
        raise ValueError(f'top_k and batch_size must be >= 1 and workers >= 0; got {top_k}, {batch_size}, {workers}.')
    dataset = paths if isinstance(paths, ImageFiles) else image_files(paths)
    if isinstance(model, str):
        model, _ = load_classifier(model, checkpoint)
    return _predict_rows(model, dataset, top_k, batch_size, workers, device, backend, progress, log or _quiet)


def _quiet(message: str) -> None:
    """The default ``log`` of :func:`predict`: the rows hold every failure already."""


def _predict_rows(model: nn.Module, dataset: ImageFiles, top_k: int, batch_size: int, workers: int,
                  device: Optional[str], backend: str, progress: bool, log: Callable[[str], None]) -> List[Row]:
    from timm.data import resolve_model_data_config
    from tqdm import tqdm

    from .datasets import eval_transform
    from .images import collate_images

    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    model = model.eval().to(device, memory_format=torch.channels_last)
    dataset.transform = eval_transform(resolve_model_data_config(model))
    labels = [_escaped(str(name)) for name in label_names(model) or range(model.num_classes)]
    k = min(top_k, len(labels))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_images, pin_memory=device.type == 'cuda')
    rows: List[Optional[Row]] = [None] * len(dataset)
    with tqdm(total=len(dataset), unit='img', desc='sentizoo predict', file=sys.stderr,
              disable=None if progress else True) as bar, \
            _backend_forward(model, device, backend, log) as forward, torch.inference_mode():
        for batch in loader:
            failures = [(index, error.reason, str(error)) for index, error in batch.failures]
            if batch.images is not None:
                # NCHW as decoded: each backend takes its own layout (ONNX Runtime NCHW, PyTorch channels_last)
                probs = forward(batch.images.to(device, non_blocking=True)).float().softmax(dim=-1)
                finite = probs.isfinite().all(dim=-1).tolist()
                top = probs.topk(k, dim=-1)
                for index, ok, values, classes in zip(batch.indices, finite, top.values.tolist(), top.indices.tolist()):
                    if ok:
                        rows[index] = dict(path=_path_text(dataset.files[index]), error=None,
                                           predictions=[(labels[c], p) for c, p in zip(classes, values)])
                    else:  # NaN is no probability (nor valid JSON): the row says what happened instead
                        failures.append((index, NON_FINITE, f'{dataset.files[index]}: {NON_FINITE}'))
            for index, reason, message in failures:
                log(f'error: {message}')
                rows[index] = dict(path=_path_text(dataset.files[index]), predictions=[], error=_escaped(reason))
            bar.update(len(batch.indices) + len(batch.failures))
    return rows
