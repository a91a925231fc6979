"""The writer of the zoo format: :func:`save_pretrained` (``model.safetensors`` + timm ``config.json``).

Apart from :mod:`sentizoo.weights` (reading) because it needs :mod:`sentizoo.models` (which architecture name a
config may carry), and models needs the reader: one module each keeps the imports acyclic.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch.nn as nn

from .models import PaperVGG, stock_name
from .weights import CONFIG_NAME, WEIGHTS_NAME, atomic_write, sha256_file

__all__ = ['save_pretrained', 'trained_cfg']

# What a pretrained_cfg says about the architecture (kept for weights trained from it), and its preprocessing.
_STRUCTURE_KEYS = ('architecture', 'first_conv', 'classifier', 'num_classes', 'label_names', 'fixed_input_size')
_DATA_KEYS = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std')


def trained_cfg(cfg: Dict[str, Any], data_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The pretrained_cfg of weights trained from those of ``cfg``: its architecture keys, the preprocessing they
    were trained with (``data_config``; ``cfg``'s own when unknown), and nothing that names the weights they
    started from (tag, licence, paper, hub repo, file, test-time size and crop)."""
    data = {k: data_config[k] for k in _DATA_KEYS if k in data_config} if data_config else {}
    return {**{k: cfg[k] for k in _STRUCTURE_KEYS + _DATA_KEYS if cfg.get(k) is not None}, **data}


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
