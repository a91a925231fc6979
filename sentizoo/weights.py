"""Weight files of the zoo: resolve -> verify (sha256) -> load (the writer is :mod:`sentizoo.saving`).

Resolution order for ``senti_<arch>.<tag>``:

1. an explicit file (``pretrained_cfg_overlay=dict(file=...)``),
2. ``$SENTIZOO_HOME/senti_<arch>.<tag>/model.safetensors`` (default ``~/.cache/sentizoo``),
3. the Hugging Face cache (``$HF_HUB_CACHE``),
4. the Hugging Face hub (skipped when ``HF_HUB_OFFLINE=1``).

A folder, a ``local-dir:`` or an ``hf-hub:`` name resolves to a folder (:func:`resolve_folder`) that
:func:`load_folder` verifies the same way. Only safetensors files are read, so loading a weight file can never
execute code, and every file is checked against the sha256 that the published table
(:data:`sentizoo.published.SHA256`) or the config.json beside it records.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import secrets
import stat
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch.nn as nn

from .published import HUB_ORG, SHA256

__all__ = ['WEIGHTS_NAME', 'CONFIG_NAME', 'WeightsNotFoundError', 'ChecksumMismatchError', 'InvalidWeightsError',
           'WEIGHTS_ERRORS', 'zoo_home', 'sha256_file', 'read_config', 'check_safetensors', 'load_weights',
           'weights_mismatch', 'UnverifiedWeightsWarning', 'resolve_folder', 'load_folder', 'find_local',
           'resolve_weights', 'atomic_write', 'remove_stale_temps', 'hf_offline', 'FOLDER_PREFIXES']

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
FOLDER_PREFIXES = ('local-dir:', 'hf-hub:')
"""The prefixes of a name that gives weights by their folder (:func:`resolve_folder`), not by a registered name."""
# What a user of the pip package can run is the zoo; producing weights needs the source repository's training/.
_PRODUCE = ('weights are produced by training with the sentizoo source repository (its training/ folder, not part '
            'of the pip package: `python -m training.export --checkpoint CKPT --tag ...`, or `python -m '
            'training.demo --arch ARCH` for small synthetic ones; without --arch the demo trains a tiny test_resnet)')
_TRUE = {'1', 'on', 'yes', 'true'}


class WeightsNotFoundError(FileNotFoundError):
    """No weight file for a model in any of the places searched."""


class ChecksumMismatchError(ValueError):
    """A weight file's sha256 differs from the recorded one (corrupt, truncated or a different checkpoint)."""


class InvalidWeightsError(ValueError):
    """A weight file or its config.json exists but cannot be used: unreadable, malformed, not safetensors, or
    keys and shapes that do not fit the model. The message names the file and what is wrong."""


class UnverifiedWeightsWarning(UserWarning):
    """Weights load whose sha256 nothing records (a config.json without ``sha256``): they cannot be verified."""


WEIGHTS_ERRORS = (WeightsNotFoundError, ChecksumMismatchError, InvalidWeightsError)
"""Everything resolving or loading weights raises for a problem of the files (not of the code)."""


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


def _hf_cache_dir(cache_dir: Union[str, Path, None] = None) -> str:
    """``cache_dir`` if given (timm's ``create_model(cache_dir=...)``), else the Hugging Face cache in use."""
    from huggingface_hub import constants
    if cache_dir:
        return str(cache_dir)
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


def _unreadable(path: Path, e: OSError) -> InvalidWeightsError:
    if isinstance(e, PermissionError):
        return InvalidWeightsError(f'{path}: permission denied; ask its owner to make it readable '
                                   f'(chmod a+r), or copy the folder.')
    return InvalidWeightsError(f'{path}: cannot be read ({e.strerror or e}).')


def read_config(folder: Union[str, Path]) -> Dict[str, Any]:
    """The ``config.json`` of a zoo folder, ``{}`` if there is none.

    Raises:
        InvalidWeightsError: it exists but is unreadable, not a JSON object, or its ``sha256`` is malformed
            (a broken config must not switch the checksum off).
    """
    path = Path(folder) / CONFIG_NAME
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except OSError as e:
        raise _unreadable(path, e) from None
    except ValueError as e:
        raise InvalidWeightsError(f'{path} is not valid JSON ({e}); restore it or write the folder again with '
                                  f'sentizoo.save_pretrained.') from None
    if not isinstance(config, dict):
        raise InvalidWeightsError(f'{path} holds a JSON {type(config).__name__}, not an object; restore it or write '
                                  f'the folder again with sentizoo.save_pretrained.')
    digest = config.get('sha256')
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                   and all(c in '0123456789abcdef' for c in digest)):
        raise InvalidWeightsError(f'{path}: "sha256" must be 64 lower-case hex digits; got {digest!r}.')
    for cfg in (config, config.get('pretrained_cfg') or {}):  # timm reads either; a wrong list must not pass
        labels, classes = cfg.get('label_names'), cfg.get('num_classes', config.get('num_classes'))
        if labels is not None and not (isinstance(labels, list) and all(isinstance(n, str) for n in labels)
                                       and (classes is None or len(labels) == classes)):
            raise InvalidWeightsError(f'{path}: "label_names" must be a list of {classes} names, one per class; got '
                                      f'{len(labels) if isinstance(labels, list) else repr(labels)}.')
    return config


def _expected_sha256(path: Path, recorded: Optional[str]) -> Optional[str]:
    """The registry's sha256 if published, else the one ``save_pretrained`` wrote beside the file (a config.json
    without one: an :class:`UnverifiedWeightsWarning` naming it)."""
    if recorded:
        return recorded
    config = read_config(path.parent)
    if config and not config.get('sha256'):
        warnings.warn(f'{path.parent / CONFIG_NAME} records no "sha256": {path} is loaded unverified (write the '
                      f'folder with sentizoo.save_pretrained to record it).', UnverifiedWeightsWarning, stacklevel=3)
    return config.get('sha256')


def check_safetensors(path: Union[str, Path]) -> Path:
    """``path`` if it is a readable, complete safetensors file (header and data); else InvalidWeightsError
    naming the file (a pickle renamed ``.safetensors``, a truncated download, garbage)."""
    from safetensors import safe_open
    path = Path(path)
    try:
        with safe_open(path, framework='pt'):
            pass
    except OSError as e:
        raise _unreadable(path, e) from None
    except Exception as e:  # SafetensorError and friends: the file is not what its name says
        raise InvalidWeightsError(f'{path} is not a valid safetensors file ({str(e).splitlines()[0]}); only '
                                  f'safetensors weights are loaded: write them with '
                                  f'safetensors.torch.save_file or sentizoo.save_pretrained.') from None
    return path


def load_weights(model: nn.Module, path: Union[str, Path], sha256: Optional[str] = None) -> nn.Module:
    """Load the safetensors file ``path`` into ``model`` (strict) after the checks every zoo file gets: a
    complete safetensors file, with the sha256 ``sha256`` (the published one) or else the one a config.json
    beside it records.

    Raises:
        ChecksumMismatchError: the sha256 differs from the recorded one.
        InvalidWeightsError: (one line) the file or its config is unreadable or malformed, or its keys or
            shapes do not fit ``model``.
    """
    from safetensors.torch import load_file
    path = Path(path)
    state = load_file(_verify(str(path), path, _expected_sha256(path, sha256)))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise weights_mismatch(path, e) from None
    return model


def weights_mismatch(path: Union[str, Path], error: RuntimeError) -> InvalidWeightsError:
    """torch's multi-line ``load_state_dict`` error as one line naming the file."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = ' '.join(lines[1:] or lines)
    detail = detail if len(detail) <= 400 else detail[:400] + ' ...'
    return InvalidWeightsError(f'{path} does not fit the model: {detail} (a checkpoint of another architecture '
                               f'or number of classes?)')


def resolve_folder(name: Union[str, Path], cache_dir: Union[str, Path, None] = None,
                   download: bool = True) -> Tuple[Path, Optional[str]]:
    """``(folder, published sha256 or None)`` of a folder, ``local-dir:FOLDER`` or ``hf-hub:ORG/NAME[@REVISION]``
    (its snapshot in the Hugging Face cache, ``cache_dir`` or ``$HF_HUB_CACHE``; downloaded when missing unless
    ``download=False`` or ``HF_HUB_OFFLINE=1``). Nothing is verified here: :func:`load_folder` does it.

    Raises:
        WeightsNotFoundError: (one line) the folder does not exist, or the repo is neither cached nor downloadable.
    """
    name = str(name)
    if not name.startswith('hf-hub:'):
        folder = Path(name.removeprefix('local-dir:')).expanduser()
        if not folder.is_dir():
            raise WeightsNotFoundError(f'{name}: no such folder; expected a folder written by sentizoo.save_pretrained '
                                       f'(model.safetensors + config.json).')
        return folder, None
    repo = name.removeprefix('hf-hub:')
    repo_id, _, revision = repo.partition('@')
    org, _, model = repo_id.partition('/')
    published = SHA256.get(model) if org == HUB_ORG else None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    cache = _hf_cache_dir(cache_dir)
    folder = None
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        path = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision or None)
        if not isinstance(path, str):
            why = 'HF_HUB_OFFLINE=1' if hf_offline() else None if download else 'download=False'
            if why is None and (unreachable := _hub_unreachable()):
                why = f'the hub is unreachable ({unreachable})'
            if why:
                if folder is not None:  # the config is cached: load_folder names what the folder holds
                    break
                raise WeightsNotFoundError(f'{name}: not in the Hugging Face cache {cache} and not downloaded '
                                           f'({why}); download it once online, or use local-dir:FOLDER.')
            try:
                path = hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache, etag_timeout=5)
            except Exception as e:  # any failure to reach or read the hub becomes one line
                raise WeightsNotFoundError(f'{name}: cannot download {filename} ({type(e).__name__}: '
                                           f'{str(e).splitlines()[0]}).') from None
        folder = Path(path).parent
    return folder, published


def load_folder(folder: Union[str, Path], sha256: Optional[str] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """``(model, config)`` from a folder written by :func:`save_pretrained`, verified as the zoo is: a valid
    config.json, only ``model.safetensors`` (never a pickle), its sha256 checked (``sha256``: the published one,
    else the one config.json records)."""
    import timm

    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsNotFoundError(f'{folder}: no such folder.')
    config = read_config(folder)
    if not config:
        raise InvalidWeightsError(f'{folder} has no {CONFIG_NAME}; expected a folder written by '
                                  f'sentizoo.save_pretrained (`sentizoo amalgamate --output`).')
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        others = sorted(p.name for p in folder.glob('*.bin')) + sorted(p.name for p in folder.glob('*.pt*'))
        raise InvalidWeightsError(f'{folder} has no {WEIGHTS_NAME}' + (f' (only {", ".join(others)}: pickle files, '
                                  'which can run code, are not loaded)' if others else '') + '.')
    model = timm.create_model(f'local-dir:{folder.resolve()}', pretrained=False)
    return load_weights(model, weights, sha256), config


def _verify(name: str, path: Path, expected: Optional[str]) -> Path:
    """``path`` if its sha256 is ``expected`` (when given) and it is a complete safetensors file."""
    if expected:
        try:
            actual = sha256_file(path)
        except OSError as e:
            raise _unreadable(path, e) from None
        if actual != expected:
            raise ChecksumMismatchError(
                f'Weights for {name} at {path} fail the sha256 check: expected {expected}, got {actual}. '
                f'Delete the file to fetch it again, or pass your own checkpoint explicitly with '
                f'pretrained_cfg_overlay=dict(file=...).')
    return check_safetensors(path)


def find_local(name: str, hf_hub_id: Optional[str] = None, filename: str = WEIGHTS_NAME,
               cache_dir: Union[str, Path, None] = None) -> Optional[Path]:
    """The weight file of ``name`` in ``$SENTIZOO_HOME`` or the HF cache (``cache_dir``: another one), without
    verifying or downloading."""
    candidate = zoo_home() / name / filename
    if candidate.is_file():
        return candidate
    if hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(hf_hub_id, filename, cache_dir=_hf_cache_dir(cache_dir))
        if isinstance(cached, str):
            return Path(cached)
    return None


def _explicit_file(name: str, path: Path, sha256: Optional[str]) -> Path:
    """The file given by ``pretrained_cfg`` ``file=``, verified; it must exist and be safetensors."""
    if not path.is_file():
        raise WeightsNotFoundError(f'Weight file for {name} does not exist: {path} (from pretrained_cfg file=).')
    if path.suffix != '.safetensors':
        raise InvalidWeightsError(f'{path}: only .safetensors weight files are loaded (pickle files can run '
                                  f'code). Convert it with safetensors.torch.save_file(state_dict, '
                                  f'"model.safetensors").')
    return _verify(name, path, _expected_sha256(path, sha256))


def resolve_weights(name: str, cfg: Any = None, sha256: Optional[str] = None, download: bool = True,
                    cache_dir: Union[str, Path, None] = None) -> Path:
    """Path of the verified safetensors file for ``name`` (``'senti_resnet50.hp'``).

    Args:
        name: the tagged model name.
        cfg: its pretrained config (``PretrainedCfg`` or dict); looked up in timm's registry if omitted.
        sha256: the published checksum; ``None`` uses the registry's (:data:`sentizoo.published.SHA256`), else the
            one recorded in a local config.json.
        download: try the Hugging Face hub when nothing is local (``False``: report only, never download).
        cache_dir: the Hugging Face cache to use instead of ``$HF_HUB_CACHE`` (timm's ``cache_dir=``).

    Raises:
        WeightsNotFoundError: nothing found; the message lists every place searched and how to fix it.
        ChecksumMismatchError: a file was found but its sha256 is not the expected one.
        InvalidWeightsError: the file or its config.json is unreadable or malformed, or not safetensors.
    """
    if cfg is None:
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(name)
    if sha256 is None:
        sha256 = SHA256.get(name)
    explicit = _cfg_get(cfg, 'file')
    if explicit:
        return _explicit_file(name, Path(explicit).expanduser(), sha256)

    hf_hub_id = _cfg_get(cfg, 'hf_hub_id')
    filename = _cfg_get(cfg, 'hf_hub_filename') or WEIGHTS_NAME
    local = find_local(name, hf_hub_id, filename, cache_dir)
    if local is not None:
        return _verify(name, local, _expected_sha256(local, sha256))

    searched: List[str] = [f'$SENTIZOO_HOME: {zoo_home() / name / filename} (missing)']
    if hf_hub_id:
        searched.append(f'Hugging Face cache {_hf_cache_dir(cache_dir)}: {hf_hub_id}/{filename} (not cached)')
        if not download:
            searched.append('Hugging Face hub: not asked (download=False)')
        elif hf_offline():
            searched.append('Hugging Face hub: skipped, HF_HUB_OFFLINE=1')
        elif unreachable := _hub_unreachable():
            searched.append(f'Hugging Face hub: unreachable ({unreachable})')
        else:
            from huggingface_hub import hf_hub_download
            try:
                path = Path(hf_hub_download(hf_hub_id, filename, cache_dir=_hf_cache_dir(cache_dir),
                                            etag_timeout=5))
            except Exception as e:  # any failure to reach or read the hub becomes one actionable message
                searched.append(f'Hugging Face hub {hf_hub_id}: {type(e).__name__}: {str(e).splitlines()[0]}')
            else:
                return _verify(name, path, sha256)
    places = '\n'.join(f'  - {s}' for s in searched)
    raise WeightsNotFoundError(
        f'No weights found for {name}. Searched:\n{places}\n'
        f'Fix: put {filename} (and config.json) in {zoo_home() / name}/ or point SENTIZOO_HOME at a folder '
        f'holding {name}/{filename}; or pass pretrained_cfg_overlay=dict(file=...)'
        + ('. No checkpoint of it is published yet: ' + _PRODUCE + '.' if not sha256  # published sha256: on the hub
           else '; or, with network access, unset HF_HUB_OFFLINE to download from the hub.' if hf_offline() else '.'))


def _temp_name(path: Path) -> str:
    return f'.{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp'


def remove_stale_temps(path: Path) -> List[Path]:
    """Delete the temporary files that :func:`atomic_write` left beside ``path`` in processes that no longer
    run (killed mid-write). Returns the files deleted."""
    removed = []
    for tmp in path.parent.glob(f'.{glob.escape(path.name)}.*.tmp'):
        pid = tmp.name[len(path.name) + 2:].split('.')[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A reader (or a process killed mid-write) sees the old file or the new one, never half of one. The file
    gets the permissions of any new file (0666 less the umask); temporary files of killed writers are
    removed first (:func:`remove_stale_temps`).
    """
    remove_stale_temps(path)
    tmp = path.parent / _temp_name(path)
    # Created 0666 less the umask (mkstemp's is 0600); restored after `write`, as writers such as safetensors'
    # save_file replace the file with a 0600 one. A second user of a shared zoo could not read 0600 files.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        write(str(tmp))
        os.chmod(tmp, mode)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
