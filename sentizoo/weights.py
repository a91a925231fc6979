"""Weight files of the zoo: resolve -> verify (sha256) -> load, and the writer of the zoo format.

Resolution order for ``senti_<arch>.<tag>``:

1. an explicit file (``pretrained_cfg_overlay=dict(file=...)``),
2. ``$SENTIZOO_HOME/senti_<arch>.<tag>/model.safetensors`` (default ``~/.cache/sentizoo``),
3. the Hugging Face cache (``$HF_HUB_CACHE``),
4. the Hugging Face hub (skipped when ``HF_HUB_OFFLINE=1``).

Only safetensors files are read, so loading a weight file can never execute code.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch.nn as nn

__all__ = ['WEIGHTS_NAME', 'CONFIG_NAME', 'WeightsNotFoundError', 'ChecksumMismatchError', 'zoo_home',
           'sha256_file', 'find_local', 'resolve_weights', 'save_pretrained', 'atomic_write', 'hf_offline']

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
EXPORT_COMMAND = 'python -m training.export'
_TRUE = {'1', 'on', 'yes', 'true'}


class WeightsNotFoundError(FileNotFoundError):
    """No weight file for a model in any of the places searched."""


class ChecksumMismatchError(ValueError):
    """A weight file's sha256 differs from the recorded one (corrupt, truncated or a different checkpoint)."""


def zoo_home() -> Path:
    """The local zoo directory: ``$SENTIZOO_HOME`` or ``~/.cache/sentizoo``."""
    return Path(os.environ.get('SENTIZOO_HOME') or Path.home() / '.cache' / 'sentizoo').expanduser()


def sha256_file(path: Union[str, Path], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


def hf_offline() -> bool:
    """Whether the Hugging Face hub must not be asked (``HF_HUB_OFFLINE``)."""
    # huggingface_hub reads HF_HUB_OFFLINE once at import; honour a later change of the environment too.
    from huggingface_hub import constants
    return constants.HF_HUB_OFFLINE or os.environ.get('HF_HUB_OFFLINE', '').lower() in _TRUE


def _hf_cache_dir() -> str:
    from huggingface_hub import constants
    if os.environ.get('HF_HUB_CACHE'):
        return os.environ['HF_HUB_CACHE']
    if os.environ.get('HF_HOME'):
        return os.path.join(os.environ['HF_HOME'], 'hub')
    return constants.HF_HUB_CACHE


def _hub_unreachable(timeout: float = 1.5) -> Optional[str]:
    """Why the hub cannot be reached, or None. A quick probe: the hub client retries for a minute otherwise."""
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    result: List[Optional[str]] = [None]

    def probe() -> None:  # getaddrinfo has no timeout of its own, hence the thread
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        except OSError as e:
            result[0] = f'{type(e).__name__}: {e}'

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return f'{url.hostname} did not answer within {timeout} s'
    return result[0]


def _cfg_get(cfg: Any, key: str) -> Any:
    return cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)


def _expected_sha256(path: Path, recorded: Optional[str]) -> Optional[str]:
    """The registry's sha256 if published, else the one ``save_pretrained`` wrote beside the file."""
    if recorded:
        return recorded
    config = path.parent / CONFIG_NAME
    if config.is_file():
        try:
            return json.loads(config.read_text()).get('sha256')
        except (OSError, ValueError):
            return None
    return None


def _verify(name: str, path: Path, expected: Optional[str]) -> Path:
    if expected:
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumMismatchError(
                f'Weights for {name} at {path} fail the sha256 check: expected {expected}, got {actual}. '
                f'Delete the file to fetch it again, or pass your own checkpoint explicitly with '
                f'pretrained_cfg_overlay=dict(file=...).')
    return path


def find_local(name: str, hf_hub_id: Optional[str] = None, filename: str = WEIGHTS_NAME) -> Optional[Path]:
    """The weight file of ``name`` in ``$SENTIZOO_HOME`` or the HF cache, without verifying or downloading."""
    candidate = zoo_home() / name / filename
    if candidate.is_file():
        return candidate
    if hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(hf_hub_id, filename, cache_dir=_hf_cache_dir())
        if isinstance(cached, str):
            return Path(cached)
    return None


def resolve_weights(name: str, cfg: Any = None, sha256: Optional[str] = None, download: bool = True) -> Path:
    """Path of the verified safetensors file for ``name`` (``'senti_resnet50.hp'``).

    Args:
        name: the tagged model name.
        cfg: its pretrained config (``PretrainedCfg`` or dict); looked up in timm's registry if omitted.
        sha256: the published checksum; ``None`` uses the registry's (``sentizoo.models.SHA256``), else the
            one recorded in a local config.json.
        download: try the Hugging Face hub when nothing is local (``False``: report only, never download).

    Raises:
        WeightsNotFoundError: nothing found; the message lists every place searched and how to fix it.
        ChecksumMismatchError: a file was found but its sha256 is not the expected one.
    """
    if cfg is None:
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(name)
    if sha256 is None:
        from .models import SHA256  # deferred: models imports this module
        sha256 = SHA256.get(name)
    explicit = _cfg_get(cfg, 'file')
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f'Weight file for {name} does not exist: {path} (from pretrained_cfg file=).')
        if path.suffix != '.safetensors':
            raise ValueError(f'{path}: only .safetensors weight files are loaded (pickle files can run code). '
                             f'Convert it with safetensors.torch.save_file(state_dict, "model.safetensors").')
        return path

    hf_hub_id = _cfg_get(cfg, 'hf_hub_id')
    filename = _cfg_get(cfg, 'hf_hub_filename') or WEIGHTS_NAME
    local = find_local(name, hf_hub_id, filename)
    if local is not None:
        return _verify(name, local, _expected_sha256(local, sha256))

    searched: List[str] = [f'$SENTIZOO_HOME: {zoo_home() / name / filename} (missing)']
    if hf_hub_id:
        searched.append(f'Hugging Face cache {_hf_cache_dir()}: {hf_hub_id}/{filename} (not cached)')
        if not download:
            searched.append('Hugging Face hub: not asked (download=False)')
        elif hf_offline():
            searched.append('Hugging Face hub: skipped, HF_HUB_OFFLINE=1')
        elif unreachable := _hub_unreachable():
            searched.append(f'Hugging Face hub: unreachable ({unreachable})')
        else:
            from huggingface_hub import hf_hub_download
            try:
                path = Path(hf_hub_download(hf_hub_id, filename, cache_dir=_hf_cache_dir(), etag_timeout=5))
            except Exception as e:  # any failure to reach or read the hub becomes one actionable message
                searched.append(f'Hugging Face hub {hf_hub_id}: {type(e).__name__}: {str(e).splitlines()[0]}')
            else:
                return _verify(name, path, sha256)
    places = '\n'.join(f'  - {s}' for s in searched)
    raise WeightsNotFoundError(
        f'No weights found for {name}. Searched:\n{places}\n'
        f'Fix: put {filename} (and config.json) in {zoo_home() / name}/ or point SENTIZOO_HOME at a folder '
        f'holding {name}/{filename}; produce them with `{EXPORT_COMMAND} --checkpoint CKPT --tag ...` '
        f'(or `python -m training.demo` for small synthetic ones); or pass pretrained_cfg_overlay=dict(file=...)'
        + ('; or, with network access, unset HF_HUB_OFFLINE to download from the hub.' if hf_offline() else '.'))


def _config_for(model: nn.Module, label_names: Optional[Sequence[str]], extra: Optional[Dict[str, Any]]) -> Dict:
    """timm's own ``config.json`` for ``model`` (``save_config_for_hf``: ``model_args``, ``global_pool``, the data
    config at the model's input channels ...) with the stock architecture name, so stock timm rebuilds it; a
    VGG with the paper's head (:class:`~sentizoo.models.PaperVGG`) keeps its ``senti_`` name, which needs
    ``import sentizoo``."""
    from timm.models._hub import save_config_for_hf

    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if not cfg.get('architecture'):
        raise ValueError(f'{type(model).__name__} has no pretrained_cfg["architecture"]: save_pretrained writes '
                         f'timm models (create them with timm.create_model).')
    from .models import PaperVGG, stock_name  # deferred: models imports this module
    label_names = list(label_names) if label_names is not None else cfg.get('label_names')
    num_classes = getattr(model, 'num_classes', cfg.get('num_classes'))
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(f'label_names has {len(label_names)} entries but the model has {num_classes} classes.')
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONFIG_NAME
        save_config_for_hf(model, str(path), model_config=dict(label_names=label_names) if label_names else None)
        config = json.loads(path.read_text())
    if not isinstance(model, PaperVGG):  # the stock name loads even without `import sentizoo`
        config['architecture'] = stock_name(config['architecture'])
    config.update(extra or {})
    return config


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A reader (or a process killed mid-write) sees the old file or the new one, never half of one.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_pretrained(model: nn.Module, folder: Union[str, Path], *, label_names: Optional[Sequence[str]] = None,
                    extra_config: Optional[Dict[str, Any]] = None, verbose: bool = True) -> str:
    """Write ``model`` in the zoo format: ``model.safetensors`` + timm ``config.json``. Returns the sha256.

    The config names the stock timm architecture, so ``timm.create_model('hf-hub:<repo>', pretrained=True)``
    loads an uploaded folder without sentizoo installed. Both files are written atomically.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = _config_for(model, label_names, extra_config)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS_NAME
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={'format': 'pt'}))
    digest = sha256_file(weights)
    config['sha256'] = digest
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + '\n'))
    if verbose:
        print(f'{weights}  sha256={digest}')
    return digest
